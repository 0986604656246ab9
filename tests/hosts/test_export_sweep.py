"""Every registered timm_spike model exports with torch.export, and both towers of every SpikeCLIP config with
torch.export and to ONNX (run by onnxruntime), with eager PyTorch's outputs; torch.compile(fullgraph=True) with
inductor, the default backend, compiles the SpikeCLIP-Tiny towers.

Slow (every model at its registered size), so it runs in ``make test-hosts`` (``SPIKECLIP_HOST_SUITE=full``) only;
``make test`` runs the same checks on one tiny model per family and SpikeCLIP-Tiny (tests/timm_spike/test_export.py,
tests/open_clip_spike/test_export.py). ONNX of every registered backbone as well (its translation of the unrolled
time loop takes one to a few minutes per ImageNet-size model on two cores) with ``SPIKECLIP_EXPORT_ONNX=all``;
the SpikeCLIP image towers are the ``*_clip`` backbone of each family. ``SPIKECLIP_EXPORT_MODELS``
(comma-separated fnmatch patterns) narrows the sweep.
"""
import fnmatch
import os

import pytest
import torch
import torch.nn as nn

FULL = os.environ.get('SPIKECLIP_HOST_SUITE') == 'full'
pytestmark = pytest.mark.skipif(not FULL, reason='the export sweep runs in make test-hosts (SPIKECLIP_HOST_SUITE=full)')

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

import open_clip  # noqa: E402
import timm  # noqa: E402

import open_clip_spike  # noqa: E402,F401  (registers the SpikeCLIP configs and the timm_spike models)
from open_clip_spike import export as oexp  # noqa: E402
from timm_spike.export import example_input, export_program, onnx_max_abs_diff, save_onnx  # noqa: E402

PROJECT_MODULES = ['spikingformer', 'spikformer', 'spike_driven', 'qkformer', 'sew_resnet']
ONNX_ALL = os.environ.get('SPIKECLIP_EXPORT_ONNX') == 'all'
PATTERNS = [p for p in os.environ.get('SPIKECLIP_EXPORT_MODELS', '*').split(',') if p]


def _selected(names):
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in PATTERNS)]


MODELS = _selected(timm.list_models(module=PROJECT_MODULES))
CONFIGS = _selected(sorted(n for n in open_clip.list_models() if n.startswith('SpikeCLIP-') and n != 'SpikeCLIP-DemoTeacher'))


def _firing(model: nn.Module) -> nn.Module:
    # random init with BN's initial running stats is silent in eval mode: every input would give the same output
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(0.05)
    return model.eval()


def test_every_project_model_and_config_is_swept():
    assert len(MODELS) >= 22 or PATTERNS != ['*']
    assert len(CONFIGS) >= 8 or PATTERNS != ['*']


@pytest.mark.parametrize('name', MODELS)
def test_registered_model_exports_like_eager(name, tmp_path):
    torch.manual_seed(0)
    model = _firing(timm.create_model(name))
    x = example_input(model, batch=2)
    with torch.no_grad():
        want = model(x)
    assert (want[0] - want[1]).abs().max() > 0, 'both images give the same output: the comparison would be empty'
    program = export_program(model, x)
    torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)
    if ONNX_ALL:
        path = save_onnx(model, x, tmp_path / f'{name}.onnx')
        assert onnx_max_abs_diff(path, model, x) < 1e-4


@pytest.mark.parametrize('name', CONFIGS)
def test_spikeclip_towers_export_and_onnx_equal_eager(name, tmp_path):
    torch.manual_seed(0)
    model = _firing(open_clip.create_model(name))
    for tower, program in oexp.export_towers(model, 'both').items():
        x = oexp.example_inputs(model, tower, batch=2)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), oexp.tower_module(model, tower)(x), rtol=1e-5, atol=1e-5)
    result = oexp.save_towers_onnx(model, tmp_path / 'm.onnx', 'both', normalize=True)
    for tower, r in result.items():
        assert os.path.isfile(r['path']) and r['max_abs_diff'] < 1e-4, (tower, r)


def test_tiny_towers_compile_fullgraph_with_inductor():
    torch.manual_seed(0)
    model = _firing(open_clip.create_model('SpikeCLIP-Tiny'))
    for tower in ('image', 'text'):
        module = oexp.tower_module(model, tower, normalize=True)
        x = oexp.example_inputs(model, tower, batch=2)
        compiled = torch.compile(module, fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), module(x), rtol=1e-4, atol=1e-5)
