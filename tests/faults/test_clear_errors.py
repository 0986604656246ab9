"""Errors of the input files and of the machine, in the commands that are not training: bad images in a zero-shot
folder, class names that do not fit the dataset, an output path under a regular file, a full disk and a folder
that may not be written. Each is one line naming the file, exit code 2, and nothing half-written is left.

A full disk and a read-only folder are simulated by making the write raise what the system raises (as root,
permissions do not stop writes); the messages were also checked by hand on a full and a read-only tmpfs."""
import errno
import json
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

import open_clip_spike  # noqa: F401
from open_clip_spike.cli.errors import error_line

from fault_helpers import FASHION_MNIST
from test_bad_input import _one_line_error

TINY = 'SpikeCLIP-Tiny'


@pytest.fixture
def image_folder(tmp_path):
    """A two-class ImageFolder of small PNGs."""
    rng = np.random.default_rng(0)
    for cls in ('cat', 'dog'):
        (tmp_path / 'imgs' / cls).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / 'imgs' / cls / f'{i}.png')
    return tmp_path / 'imgs'


def _zeroshot(*argv):
    from open_clip_spike.cli.zeroshot import main
    return main(['--model', TINY, '--no-progress', *argv])


def test_corrupt_jpeg_names_the_file(image_folder, capsys, fault_log):
    fault_log.tried('corrupt JPEG in a zero-shot folder', 'spikeclip zeroshot')
    buf = image_folder / 'cat' / 'a.jpg'
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, quality=90)
    data = buf.read_bytes()
    buf.write_bytes(data[:len(data) // 2])  # truncated: PIL's 'image file is truncated'
    assert _zeroshot('--dataset', str(image_folder)) == 2
    _one_line_error(capsys, f'{buf} cannot be read as an image', 'replace or remove the file')
    fault_log.survived()


def test_decompression_bomb_names_the_file_and_the_limit(image_folder, capsys, monkeypatch, fault_log):
    fault_log.tried('image over PIL\'s decompression-bomb limit in a zero-shot folder', 'spikeclip zeroshot')
    # a 20000x20000 PNG against PIL's default limit costs 50 MB and seconds to write: the same error at a lower limit
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
    path = image_folder / 'cat' / '0.png'
    assert _zeroshot('--dataset', str(image_folder)) == 2
    _one_line_error(capsys, f'{path}: image of 1024 pixels exceeds PIL\'s limit', 'PIL.Image.MAX_IMAGE_PIXELS = 100')
    fault_log.survived()


def test_class_names_must_fit_the_dataset(tmp_path, capsys, fault_log):
    fault_log.tried('2000 class names on 10-class Fashion-MNIST', 'spikeclip zeroshot')
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'class {i}\n' for i in range(2000)))
    assert _zeroshot('--dataset', str(FASHION_MNIST), '--classnames', str(names), '--limit', '4') == 2
    _one_line_error(capsys, '2000 class names for', 'with 10 classes: give one name per class')
    fault_log.survived()


def test_output_under_a_regular_file(tmp_path, capsys, fault_log):
    fault_log.tried('--out afile/x.nir under a regular file', 'spikeclip export-nir')
    from open_clip_spike.cli.export_nir import main
    (tmp_path / 'afile').write_text('not a folder')
    assert main(['sew_resnet18_clip', '--stem-only', '--out', str(tmp_path / 'afile' / 'x.nir')]) == 2
    _one_line_error(capsys, f'{tmp_path / "afile"} is a file, not a folder')
    fault_log.survived()


def _full_disk_safetensors(monkeypatch):
    """safetensors' writer on a full disk: its SafetensorError text, as safetensors 0.8 words it."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        open(filename, 'wb').write(b'\0' * 16)  # part written, then the disk is full
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
    monkeypatch.setattr(safetensors.torch, 'save_file', save_file)


def test_full_disk_during_checkpoint_export(tmp_path, monkeypatch, fault_log):
    fault_log.tried('full disk (ENOSPC)', 'export_checkpoint (safetensors export of a .pt)')
    import torch
    from open_clip_spike.checkpoint import export_checkpoint
    torch.save({'epoch': 1, 'state_dict': {'w': torch.ones(3)}}, tmp_path / 'epoch_1.pt')
    _full_disk_safetensors(monkeypatch)
    out = tmp_path / 'out' / 'epoch_1.safetensors'
    with pytest.raises(OSError) as info:
        export_checkpoint(str(tmp_path / 'epoch_1.pt'), str(out))
    assert info.value.errno == errno.ENOSPC
    assert error_line(info.value) == (f'no space left on device while writing {out}: free some space or write the '
                                      f'output elsewhere')
    assert os.listdir(tmp_path / 'out') == []  # the temporary file is gone
    fault_log.survived()


def _energy_report(path):
    path.write_text(json.dumps({
        'model': 'spikingformer_clip', 'T': 4, 'input_size': [3, 32, 32], 'sample': 'image', 'data': 'test',
        'energy_mj_per_image': 0.01, 'ann_energy_mj_per_image': 0.08,
        'constants': {'e_mac_pj': 4.6, 'e_ac_pj': 0.9, 'source': 'Horowitz 2014'}, 'layers': []}))
    return path


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    import open_clip
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('tiny') / 'tiny.safetensors'
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TINY).state_dict().items()}, path)
    return path


@pytest.mark.parametrize('fault', ['full disk', 'read-only folder'])
def test_push_to_a_full_or_read_only_folder(tiny_checkpoint, tmp_path, capsys, monkeypatch, fault_log, fault):
    what = {'full disk': 'full disk (ENOSPC)', 'read-only folder': 'folder without write permission (EACCES)'}
    fault_log.tried(what[fault], 'spikeclip push --local-dir')
    from open_clip_spike.cli.push import main
    report = _energy_report(tmp_path / 'energy.json')
    out = tmp_path / 'pub' / 'repo'
    if fault == 'full disk':
        _full_disk_safetensors(monkeypatch)
        needle = f'no space left on device while writing {out / "open_clip_model.safetensors"}'
    else:
        def mkdtemp(prefix=None, dir=None, **kw):  # what a folder without write permission answers
            raise PermissionError(errno.EACCES, 'Permission denied', os.path.join(dir, f'{prefix}abc'))
        monkeypatch.setattr(tempfile, 'mkdtemp', mkdtemp)
        needle = f'permission denied: {out}: choose a folder you may write'
    assert main([TINY, '--checkpoint', str(tiny_checkpoint), '--local-dir', str(out), '--no-verify',
                 '--energy-report', str(report)]) == 2
    _one_line_error(capsys, needle)
    assert os.listdir(tmp_path / 'pub') == []  # no temporary folder or file left
    fault_log.survived()


def test_full_disk_during_nir_export(tmp_path, capsys, monkeypatch, fault_log):
    fault_log.tried('full disk (h5py errno 28)', 'spikeclip export-nir')
    import nir
    from open_clip_spike.cli.export_nir import main

    def write(path, graph):  # h5py's wording: the errno is in the text only
        open(path, 'wb').write(b'\x89HDF')
        raise OSError(f"Unable to synchronously create file (unable to open file: name = '{path}', errno = 28, "
                      f"error message = 'No space left on device', flags = 13, o_flags = 242)")
    monkeypatch.setattr(nir, 'write', write)
    out = tmp_path / 'nir' / 'stem.nir'
    assert main(['sew_resnet18_clip', '--stem-only', '--out', str(out)]) == 2
    _one_line_error(capsys, 'no space left on device: free some space or write the output elsewhere')
    assert os.listdir(out.parent) == []
    fault_log.survived()
