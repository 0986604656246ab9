"""SpikeCLIP's towers for deployment (open_clip_spike.export, ``spikeclip export-onnx``): torch.export,
torch.compile(fullgraph=True) and ONNX run by onnxruntime give eager PyTorch's embeddings; bad input is one line
and exit 2, and nothing is left half-written.

SpikeCLIP-Tiny here; both towers of every SpikeCLIP config run in the hosts' sweep (tests/hosts/test_export_sweep.py).
"""
import os

import pytest
import torch
from safetensors.torch import save_file

import open_clip
import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs)
from open_clip_spike import export as oexp
from open_clip_spike.cli import export_onnx as cli
from timm_spike.export import export_program, run_onnx

TINY = 'SpikeCLIP-Tiny'


@pytest.fixture
def tiny_model():
    """SpikeCLIP-Tiny at T=2 (the graphs unroll T steps per neuron layer: half the export time of its T=4)."""
    return open_clip.create_model(TINY, T=2).eval()


def test_tower_modules_are_encode_image_and_encode_text(calibrated_tiny_model, images):
    model = calibrated_tiny_model
    tokens = oexp.example_inputs(model, 'text', batch=2)
    assert tokens.shape == (2, model.context_length) and tokens.dtype == torch.int64
    with torch.no_grad():
        for normalize in (False, True):
            torch.testing.assert_close(oexp.tower_module(model, 'image', normalize)(images),
                                       model.encode_image(images, normalize=normalize), rtol=0, atol=0)
            torch.testing.assert_close(oexp.tower_module(model, 'text', normalize)(tokens),
                                       model.encode_text(tokens, normalize=normalize), rtol=0, atol=0)
    with pytest.raises(ValueError, match="Unknown tower 'audio'"):
        oexp.tower_module(model, 'audio')
    with pytest.raises(ValueError, match='is not a SpikeCLIP'):
        oexp.tower_module(torch.nn.Linear(2, 2), 'image')


def test_both_towers_torch_export_and_compile_equal_eager(calibrated_tiny_model, images):
    model = calibrated_tiny_model
    programs = oexp.export_towers(model, 'both', normalize=True)
    tokens = open_clip.get_tokenizer(TINY)(['a shirt', 'a shoe', 'a bag'])
    with torch.no_grad():
        want_img = model.encode_image(images, normalize=True)
        want_txt = model.encode_text(tokens, normalize=True)
    assert (want_img[0] - want_img[1]).abs().max() > 1e-3 and (want_txt[0] - want_txt[1]).abs().max() > 1e-3
    torch.testing.assert_close(programs['image'].module()(images), want_img, rtol=1e-5, atol=1e-6)  # batch 4
    torch.testing.assert_close(programs['text'].module()(tokens), want_txt, rtol=1e-5, atol=1e-6)  # batch 3
    image_tower = oexp.tower_module(model, 'image', normalize=True)
    compiled = torch.compile(image_tower, fullgraph=True, backend='aot_eager')  # inductor: in the hosts' sweep
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), want_img, rtol=1e-5, atol=1e-6)
    # the eager guard still refuses what the exported graph would embed
    bad = images.clone()
    bad[2, 0, 0, 0] = float('inf')
    with pytest.raises(ValueError, match=r'1 non-finite values \(0 NaN, 1 inf\)'):
        model.encode_image(bad)


def test_both_towers_onnx_run_by_onnxruntime_equal_eager(calibrated_tiny_model, images, tmp_path):
    model = calibrated_tiny_model
    result = oexp.save_towers_onnx(model, tmp_path / 'onnx' / 'tiny.onnx', 'both', normalize=True)
    paths = oexp.onnx_paths(tmp_path / 'onnx' / 'tiny.onnx', 'both')
    assert {t: r['path'] for t, r in result.items()} == paths
    assert all(r['max_abs_diff'] < 1e-5 for r in result.values()), result
    assert sorted(os.listdir(tmp_path / 'onnx')) == ['tiny.image.onnx', 'tiny.text.onnx']  # no temporary left
    tokens = open_clip.get_tokenizer(TINY)(['a shirt', 'a shoe', 'a bag'])
    with torch.no_grad():
        want_img = model.encode_image(images, normalize=True)
        want_txt = model.encode_text(tokens, normalize=True)
    (got_img,) = run_onnx(paths['image'], images)  # batch 4 through a graph exported at 2: dynamic batch
    (got_txt,) = run_onnx(paths['text'], tokens)
    torch.testing.assert_close(got_img, want_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_txt, want_txt, rtol=1e-4, atol=1e-5)
    assert (got_img @ got_txt.T).argmax(1).tolist() == (want_img @ want_txt.T).argmax(1).tolist()
    import onnxruntime as ort
    session = ort.InferenceSession(paths['image'], providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image'] and session.get_inputs()[0].shape[1:] == [3, 32, 32]
    assert [o.name for o in session.get_outputs()] == ['image_features']


def test_cli_exports_a_checkpoint_and_prints_the_difference(tmp_path, capsys):
    torch.manual_seed(3)
    model = open_clip.create_model(TINY).eval()
    ckpt = tmp_path / 'tiny.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out = tmp_path / 'text.onnx'
    assert cli.main([TINY, '--checkpoint', str(ckpt), '--tower', 'text', '--out', str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'text: {out} (onnxruntime vs eager PyTorch on a check batch of 2: max abs difference ')
    assert float(line.rsplit('difference ', 1)[1].rstrip(')')) < 1e-5, line
    tokens = open_clip.get_tokenizer(TINY)(['a shirt', 'a shoe', 'a bag'])
    with torch.no_grad():
        want = model.encode_text(tokens)  # the checkpoint's weights, not the command's fresh random ones
    torch.testing.assert_close(run_onnx(out, tokens)[0], want, rtol=1e-4, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ['text.onnx', 'tiny.safetensors']


@pytest.mark.parametrize('args,message', [
    (['no_such_model'], "unknown model 'no_such_model'"),
    (['sdt_clip', '--tower', 'text'], 'use --tower image'),
    ([TINY, '--checkpoint', 'missing.safetensors'], 'Checkpoint not found'),
    ([TINY, '--batch', '1'], 'pass --batch 2 or more, or --static-batch'),
    ([TINY, '--batch', '0', '--static-batch'], '--batch must be >= 1'),
    ([TINY, '--opset', '9'], '--opset 9: torch\'s ONNX exporter writes opset 18 or later'),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / 'm.onnx'
    assert cli.main(args + ['--out', str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('spikeclip export-onnx: error: ') and message in err and '\n' not in err, err
    assert os.listdir(tmp_path) == []


def test_cli_refuses_a_folder_as_out(tmp_path, capsys):
    assert cli.main([TINY, '--out', str(tmp_path)]) == 2
    assert 'is a folder; pass a file name such as' in capsys.readouterr().err


def test_a_failing_tower_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    def fake_save_onnx(module, args, path, **kwargs):
        if isinstance(module, oexp.TextTower):
            raise ValueError('text tower failed')
        with open(path, 'wb') as f:  # stands for the image tower's file
            f.write(b'onnx')
        return path

    monkeypatch.setattr(oexp, 'save_onnx', fake_save_onnx)
    with pytest.raises(ValueError, match='text tower failed'):
        oexp.save_towers_onnx(tiny_model, tmp_path / 'm.onnx', 'both', check=False)
    assert os.listdir(tmp_path) == []  # the image file was staged, never written where asked
    result = oexp.save_towers_onnx(tiny_model, tmp_path / 'm.onnx', 'image', check=False)
    assert result == {'image': {'path': str(tmp_path / 'm.onnx'), 'max_abs_diff': None}}
    assert (tmp_path / 'm.onnx').read_bytes() == b'onnx' and os.listdir(tmp_path) == ['m.onnx']
