"""Bad input: each is refused with a clear error (commands: one line naming the file or setting, exit code 2, no
traceback) instead of a traceback or a plausible wrong result."""
import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import open_clip_spike  # noqa: F401
from open_clip_spike import train as spike_train
from timm_spike.layers.guards import MAX_TIME_STEPS, finite_checks

from fault_helpers import FASHION_MNIST, ROOT, train_cmd

TINY = 'SpikeCLIP-Tiny'


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, tiny):
    """A truncated safetensors file, a truncated .pt, a .pt with pickled code, int32 weights."""
    d = tmp_path_factory.mktemp('bad-ckpt')
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file(sd, d / 'good.safetensors')
    data = (d / 'good.safetensors').read_bytes()
    (d / 'truncated.safetensors').write_bytes(data[:len(data) // 2])
    torch.save(sd, d / 'good.pt')
    data = (d / 'good.pt').read_bytes()
    (d / 'truncated.pt').write_bytes(data[:len(data) // 2])

    class Code:
        def __reduce__(self):
            return (os.getcwd, ())
    torch.save({'state_dict': Code()}, d / 'pickled.pt')
    save_file({k: (v.to(torch.int32) if k == 'logit_scale' else v) for k, v in sd.items()}, d / 'int32.safetensors')
    return d


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Images

@pytest.mark.parametrize('value, kind', [(float('nan'), 'NaN'), (float('inf'), 'inf')])
def test_non_finite_images_are_refused(tiny, fault_log, value, kind):
    fault_log.tried(f'{kind} pixels', 'SpikeCLIP.encode_image')
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 4, 4] = value
    x[2] = value
    with pytest.raises(ValueError, match=rf'image: {1 + 3 * 32 * 32} non-finite values .*in 2 of 3 samples '
                                         rf'\(index 1, 2\)'):
        tiny.encode_image(x)
    with finite_checks(False):  # the documented way out: then it runs (and a NaN image embeds like any other)
        assert torch.isfinite(tiny.encode_image(x)).all()
    fault_log.survived()


def test_integer_images_are_refused_and_half_converted(tiny, fault_log):
    fault_log.tried('uint8 / fp16 images', 'SpikeCLIP.encode_image')
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match='dtype torch.uint8 is not floating point. Images must be preprocessed'):
        tiny.encode_image((x * 255).to(torch.uint8))
    half = x.half()
    with torch.no_grad():
        assert torch.equal(tiny.encode_image(half), tiny.encode_image(half.float()))
    fault_log.survived()


def test_time_dimension_must_equal_T(tiny, fault_log):
    fault_log.tried('5-D input with 3 time steps, T=4', 'SpikeCLIP.encode_image')
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match='runs T=4 time steps, but the input has 3'):
        tiny.encode_image(x.unsqueeze(0).expand(3, *x.shape))
    with torch.no_grad():  # an encoded sequence of the right length is the direct encoding of the image
        assert torch.allclose(tiny.encode_image(x.unsqueeze(0).expand(4, *x.shape).contiguous()),
                              tiny.encode_image(x), atol=1e-5)
    fault_log.survived()


def test_huge_T_is_refused_before_allocation(fault_log, capsys):
    fault_log.tried('T = 10**6', 'create_model, spikeclip zeroshot --T')
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f'T=1000000 exceeds the supported maximum of {MAX_TIME_STEPS}'):
        open_clip.create_model(TINY, T=10 ** 6)
    from open_clip_spike.cli.zeroshot import main as zeroshot_main
    assert zeroshot_main(['--model', TINY, '--dataset', str(FASHION_MNIST), '--T', str(10 ** 6)]) == 2
    _one_line_error(capsys, 'T=1000000 exceeds')
    assert time.perf_counter() - start < 5  # was 65 s of work before an allocator error
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints

def test_int32_weights_are_refused_by_name(bad_files, fault_log):
    fault_log.tried('int32 logit_scale in a checkpoint', 'open_clip.create_model(pretrained=...)')
    with pytest.raises(ValueError, match='logit_scale: int32 vs model float32'):
        open_clip.create_model(TINY, pretrained=str(bad_files / 'int32.safetensors'))
    fault_log.survived()


@pytest.mark.parametrize('command', ['zeroshot', 'sweep-t', 'energy'])
@pytest.mark.parametrize('file, message', [
    ('truncated.safetensors', 'it may be truncated'),
    ('truncated.pt', 'it may be truncated'),
    ('pickled.pt', 'holds pickled Python objects besides tensors'),
    ('missing.safetensors', 'Checkpoint not found'),
])
def test_bad_checkpoint_is_one_line(bad_files, tmp_path, capsys, fault_log, command, file, message):
    fault_log.tried(f'{file} checkpoint', f'spikeclip {command}')
    path = str(bad_files / file)
    if command == 'zeroshot':
        from open_clip_spike.cli.zeroshot import main
        argv = ['--model', TINY, '--pretrained', path, '--dataset', str(FASHION_MNIST)]
    elif command == 'sweep-t':
        from open_clip_spike.cli.sweep_t import main
        argv = ['--model', TINY, '--pretrained', path, '--dataset', str(FASHION_MNIST), '--out', str(tmp_path)]
    else:
        from open_clip_spike.cli.energy import main
        argv = [TINY, '--checkpoint', path, '--out', str(tmp_path)]
        if file.endswith('.pt'):  # energy loads safetensors only, and says so
            message = 'only .safetensors files are loaded (pickles can run code)'
    assert main(argv) == 2
    _one_line_error(capsys, path, message)
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Commands: paths and numbers before any model is built

@pytest.mark.parametrize('change, message', [
    ({'--epochs': '0'}, '--epochs must be >= 1, got 0'),
    ({'--train-data': '/nonexistent/train.csv'}, "--train-data '/nonexistent/train.csv': no such file"),
    ({'--distill-pretrained': '/nonexistent/t.safetensors'}, "--distill-pretrained '/nonexistent/t.safetensors'"),
    ({'--resume': 'latest'}, 'holds no checkpoint to resume from'),
])
def test_train_refuses_bad_settings_first(digits, tmp_path, capsys, monkeypatch, fault_log, change, message):
    fault_log.tried(' '.join(f'{k} {v}' for k, v in change.items()), 'spikeclip train')
    monkeypatch.setattr(open_clip, 'create_model_and_transforms',
                        lambda *a, **k: pytest.fail('a model was built before the settings were checked'))
    cmd = train_cmd(digits, tmp_path / 'logs', 'never')[3:]
    for flag, value in change.items():
        if flag in cmd:
            i = cmd.index(flag)
            del cmd[i:i + 2]
        cmd += [flag, value]
    assert spike_train.main(cmd) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / 'logs' / 'never').exists()
    fault_log.survived()


def test_demo_refuses_bad_numbers_first(tmp_path, capsys, fault_log):
    fault_log.tried('--batch-size 0', 'spikeclip demo')
    from open_clip_spike.cli.demo import main
    out = tmp_path / 'd'
    assert main(['--quick', '--out', str(out), '--data', str(FASHION_MNIST), '--batch-size', '0',
                 '--no-progress']) == 2
    _one_line_error(capsys, '--batch-size must be an integer >= 1, got 0')
    assert not out.exists()  # nothing recorded: the corrected rerun is not refused
    fault_log.survived()


def test_bad_model_config_env_is_one_line(fault_log):
    fault_log.tried('SPIKECLIP_MODEL_CONFIGS=/nonexistent', 'spikeclip info (import time)')
    env = dict(os.environ, SPIKECLIP_MODEL_CONFIGS='/nonexistent')
    proc = subprocess.run([sys.executable, '-c', 'import sys; from open_clip_spike.cli import main; sys.exit(main())',
                           'info', 'spikingformer_clip'],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "$SPIKECLIP_MODEL_CONFIGS names '/nonexistent', which does not exist" in lines[0]
    fault_log.survived()
