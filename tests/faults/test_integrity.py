"""Damaged weights and the Hub folder's ownership: every weight file the project writes records the sha256 of its
tensors and is checked when loaded; ``--overwrite`` replaces only what spikeclip wrote; nothing temporary stays."""
import json
import os
import shutil

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import open_clip_spike  # noqa: F401
from open_clip_spike.checkpoint import check_checkpoint_file, export_checkpoint, load_checkpoint_file
from open_clip_spike.hub import write_hub_folder
from open_clip_spike.hub.files import MANIFEST, OPEN_CLIP_WEIGHTS, TIMM_WEIGHTS
from timm_spike.utils import DIGEST_KEY, WeightsDigestError, file_digest, tensors_digest, verify_safetensors

from fault_helpers import FASHION_MNIST
from test_bad_input import _one_line_error

TINY = 'SpikeCLIP-Tiny'


def flip_bits(path, n: int, seed: int = 0, sign: bool = False) -> None:
    """Flip ``n`` bits of the tensor data (low mantissa bits, or sign bits of float32 values) of a safetensors file."""
    data = bytearray(open(path, 'rb').read())
    start = 8 + int.from_bytes(data[:8], 'little')
    rng = np.random.default_rng(seed)
    words = rng.choice((len(data) - start) // 4, size=n, replace=False)
    for w in words:
        i = start + 4 * int(w)
        if sign:
            data[i + 3] ^= 0x80
        else:
            data[i] ^= 1 << int(rng.integers(0, 8))
    open(path, 'wb').write(bytes(data))


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


@pytest.fixture(scope='module')
def exported(tmp_path_factory, tiny):
    """A student checkpoint as the project writes it: open_clip_train's epoch_N.pt exported to safetensors."""
    d = tmp_path_factory.mktemp('integrity')
    torch.save({'epoch': 2, 'state_dict': tiny.state_dict()}, d / 'epoch_2.pt')
    return export_checkpoint(str(d / 'epoch_2.pt'), str(d / 'dual.safetensors'))


def test_digest_of_tensors_equals_digest_of_file(exported, tiny, tmp_path):
    with safe_open(exported, framework='pt') as f:
        recorded = f.metadata()[DIGEST_KEY]
    assert file_digest(exported) == (recorded, recorded)
    assert recorded == tensors_digest({k: v.contiguous() for k, v in tiny.state_dict().items()})
    # every dtype and 0-d tensors hash the same from torch and from the file
    odd = {'b': torch.tensor(True), 'h': torch.randn(3, 2).half(), 'bf': torch.randn(5).bfloat16(),
           'i': torch.arange(7), 'e': torch.zeros(0, 4)}
    from timm_spike.utils import save_safetensors
    digest = save_safetensors(odd, tmp_path / 'odd.safetensors')
    assert file_digest(tmp_path / 'odd.safetensors') == (digest, digest)
    assert verify_safetensors(tmp_path / 'odd.safetensors') is True


@pytest.mark.parametrize('flips, sign', [(2000, False), (400, True)])
def test_flipped_student_is_refused(exported, tmp_path, capsys, fault_log, flips, sign):
    what = f'{flips} {"sign" if sign else "low-bit"} flips in a copy of a student safetensors'
    fault_log.tried(what, 'load_checkpoint_file, create_model(pretrained=...), spikeclip zeroshot')
    bad = tmp_path / 'dual.safetensors'
    shutil.copy(exported, bad)
    flip_bits(bad, flips, sign=sign)
    for load in (check_checkpoint_file, load_checkpoint_file,
                 lambda p: open_clip.create_model(TINY, pretrained=str(p))):
        with pytest.raises(WeightsDigestError, match=f'{bad} is damaged: its tensors do not match the sha256'):
            load(bad)
    from open_clip_spike.cli.zeroshot import main
    assert main(['--model', TINY, '--pretrained', str(bad), '--dataset', str(FASHION_MNIST), '--limit', '8',
                 '--no-progress']) == 2
    _one_line_error(capsys, str(bad), 'is damaged', 'copy, download or export it again')
    load_checkpoint_file(exported)  # the undamaged file loads
    fault_log.survived()


def test_files_without_digest_still_load(tiny, tmp_path):
    path = tmp_path / 'elsewhere.safetensors'
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, path)
    assert verify_safetensors(path) is None
    sd = load_checkpoint_file(path)
    assert torch.equal(sd['logit_scale'], tiny.state_dict()['logit_scale'])
    open_clip.create_model(TINY, pretrained=str(path))


@pytest.fixture(scope='module')
def hub_folder(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp('hub') / 'repo'
    write_hub_folder(d, tiny, TINY, verify=False)
    return d


def test_hub_folder_records_digests(hub_folder):
    for name, config in ((OPEN_CLIP_WEIGHTS, 'open_clip_config.json'), (TIMM_WEIGHTS, 'config.json')):
        recorded, computed = file_digest(hub_folder / name)
        assert recorded == computed
        assert json.loads((hub_folder / config).read_text())['spikeclip']['tensors_sha256'][name] == recorded
    manifest = json.loads((hub_folder / MANIFEST).read_text())
    assert sorted(manifest['files']) == sorted(p.name for p in hub_folder.iterdir() if p.name != MANIFEST)


def test_flipped_hub_folder_is_refused(hub_folder, tmp_path, fault_log):
    fault_log.tried('400 flips in a Hub folder\'s weights', "open_clip / timm create_model('local-dir:...')")
    bad = tmp_path / 'repo'
    shutil.copytree(hub_folder, bad)
    flip_bits(bad / OPEN_CLIP_WEIGHTS, 400)
    with pytest.raises(WeightsDigestError, match=f'{bad / OPEN_CLIP_WEIGHTS} is damaged'):
        open_clip.create_model(f'local-dir:{bad}')
    flip_bits(bad / TIMM_WEIGHTS, 400, seed=1)
    with pytest.raises(WeightsDigestError, match=f'{bad / TIMM_WEIGHTS} is damaged'):
        timm.create_model(f'local-dir:{bad}', pretrained=True)
    timm.create_model(f'local-dir:{hub_folder}', pretrained=True)  # the undamaged folder loads
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Push owns only its files

def test_overwrite_keeps_files_it_did_not_write(hub_folder, tiny, tmp_path, caplog, fault_log):
    fault_log.tried('unrelated keep3.txt and .git/ in a Hub folder', 'write_hub_folder(overwrite=True)')
    d = tmp_path / 'repo'
    shutil.copytree(hub_folder, d)
    (d / 'keep3.txt').write_text('mine')
    (d / '.git').mkdir()
    (d / '.git' / 'HEAD').write_text('ref: refs/heads/main\n')
    (d / 'pytorch_model.bin').write_bytes(b'stale pickle')  # not in the manifest: kept too, and named
    (d / 'energy.json').write_text('{}')  # a name spikeclip writes: replaced (here: dropped, no report given)
    with caplog.at_level('WARNING'):
        write_hub_folder(d, tiny, TINY, verify=False, overwrite=True)
    assert (d / 'keep3.txt').read_text() == 'mine' and (d / '.git' / 'HEAD').is_file()
    assert "kept 3 file(s) in" in caplog.text and 'keep3.txt' in caplog.text
    # a spikeclip file the new write does not make (energy.json of an earlier one) is removed
    assert not (d / 'energy.json').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['repo']  # no temporary folder left
    fault_log.survived()


def test_overwrite_through_a_symlink_leaves_no_link(hub_folder, tiny, tmp_path, fault_log):
    fault_log.tried('--local-dir a symlink, --overwrite', 'write_hub_folder')
    target = tmp_path / 'real'
    shutil.copytree(hub_folder, target)
    (target / 'keep3.txt').write_text('mine')
    link = tmp_path / 'link'
    link.symlink_to(target)
    write_hub_folder(link, tiny, TINY, verify=False, overwrite=True)
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    assert (link / OPEN_CLIP_WEIGHTS).is_file() and (target / 'keep3.txt').read_text() == 'mine'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link', 'real']  # no .link.tmp-... left
    fault_log.survived()
