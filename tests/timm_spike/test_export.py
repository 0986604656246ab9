"""torch.export and torch.compile(fullgraph=True) of every model family equal eager; the input guards still refuse
bad input in eager mode and stay out of the traced graph (timm_spike.export, timm_spike.layers.guards).

One tiny model per family here; every registered model at its full size (and ONNX) runs in the hosts' sweep
(tests/hosts/test_export_sweep.py).
"""
import pytest
import timm
import torch
import torch.nn as nn

import timm_spike  # noqa: F401
from timm_spike.export import export_program
from timm_spike.layers.guards import check_image

# one small model per family (T=2, 32x32 images)
TINY = {
    'spikingformer_clip': dict(embed_dim=32, depth=1, num_heads=4),
    'spikformer_4_384': dict(embed_dim=32, depth=1, num_heads=4),
    'sdt_2_512': dict(embed_dim=32, depth=1, num_heads=4),
    'qkformer_4_384': dict(embed_dim=32, depths=(1, 1, 1), num_heads=4),
    'sew_resnet18_cifar': dict(layers=(1, 1, 1, 1), stem='imagenet'),
}


def firing_model(name: str) -> nn.Module:
    """A tiny model in eval mode whose neurons fire (random init with BN's initial running stats is silent, and
    every image would get the same output: no comparison would mean anything)."""
    torch.manual_seed(0)
    model = timm.create_model(name, T=2, num_classes=5, **TINY[name])
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(0.05)
    return model.eval()


@pytest.mark.parametrize('name', sorted(TINY))
def test_torch_export_equals_eager_at_any_batch(name):
    model = firing_model(name)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    assert (want[0] - want[1]).abs().max() > 1e-3  # the images give different outputs: the spikes carry them
    program = export_program(model, x[:2])  # dynamic batch, traced at 2
    got = program.module()(x)  # run at 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(program.module()(x[:1]), want[:1], rtol=1e-5, atol=1e-6)
    assert model.training is False  # export_program restores the mode it found


def test_plain_torch_export_in_eval_mode_needs_no_helper():
    model = firing_model('spikingformer_clip')
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))  # the call a user types, grad mode on
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_equals_eager():
    # aot_eager: dynamo must capture the whole network in one graph (what fullgraph=True asserts) and AOT autograd
    # functionalise it; inductor's code generation for it runs in the hosts' sweep (minutes on two cores).
    model = firing_model('sew_resnet18_cifar')  # the SpikeCLIP-Tiny towers (Spikingformer) compile in
    x = torch.randn(2, 3, 32, 32)  # tests/open_clip_spike/test_export.py
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


class _Guarded(nn.Module):
    def forward(self, x):
        return check_image(x, T=2) * 2


def test_guards_refuse_in_eager_and_stay_out_of_traced_graphs():
    nan = torch.randn(2, 3, 4, 4)
    nan[1, 0, 0, 0] = float('nan')
    module = _Guarded()
    with pytest.raises(ValueError, match=r'1 non-finite values \(1 NaN, 0 inf\).*index 1'):
        module(nan)
    program = torch.export.export(module, (torch.randn(2, 3, 4, 4),))
    assert not any('isfinite' in str(n.target) for n in program.graph.nodes)  # no value check in the graph
    assert torch.isnan(program.module()(nan)[1, 0, 0, 0])  # the graph computes on what it is given
    with pytest.raises(ValueError, match='non-finite'):  # and eager mode still refuses after tracing
        module(nan)
    # shape and dtype checks are decided while tracing: a wrongly timed sequence cannot be exported
    with pytest.raises(ValueError, match='runs T=2 time steps'):
        torch.export.export(module, (torch.randn(3, 2, 3, 4, 4),))
    with pytest.raises(ValueError, match='not floating point'):
        torch.export.export(module, (torch.zeros(2, 3, 4, 4, dtype=torch.uint8),))
    compiled = torch.compile(module, fullgraph=True, backend='eager')
    assert torch.isnan(compiled(nan)[1, 0, 0, 0])
