"""The fused CPU LIF must be spikingjelly's LIFNode in everything but speed."""
import itertools
import logging
import os
import shutil

import pytest
import timm
import torch
from spikingjelly.activation_based import neuron, surrogate

import timm_spike  # noqa: F401  (registers the models)
from timm_spike.energy import firing_rates
from timm_spike.layers import LIFConfig, StatelessLIFNode, create_lif, create_surrogate, is_spiking_neuron, lif_impl
from timm_spike.layers import fused_lif
from timm_spike.layers.fused_lif import FusedLIFParams, lif_multi_step_fused


@pytest.fixture
def eager():
    """Run the fused kernels eagerly: same math, no compile time for the many configurations below."""
    before = fused_lif._compile_enabled
    fused_lif.set_fused_compile(False)
    yield
    fused_lif.set_fused_compile(before)


def _inputs(shape=(4, 3, 50), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + 0.6  # plenty of spikes and of near-threshold potentials
    upstream = torch.randn(shape, generator=g)
    return x, upstream


def _reference(x, upstream, cfg: LIFConfig):
    ref = neuron.LIFNode(tau=cfg.tau, decay_input=cfg.decay_input, v_threshold=cfg.v_threshold,
                         v_reset=cfg.v_reset, detach_reset=cfg.detach_reset, step_mode='m',
                         surrogate_function=create_surrogate(cfg.surrogate, cfg.surrogate_alpha))
    x = x.clone().requires_grad_()
    s = ref(x)
    (s * upstream).sum().backward()
    return s.detach(), x.grad


def _fused(x, upstream, cfg: LIFConfig):
    lif = create_lif(cfg)
    x = x.clone().requires_grad_()
    with lif_impl('fused'):
        s = lif(x)
    (s * upstream).sum().backward()
    return s.detach(), x.grad


CONFIGS = [
    LIFConfig(tau=tau, v_reset=v_reset, detach_reset=detach, decay_input=decay, surrogate=sg)
    for tau, v_reset, detach, decay, sg in itertools.product(
        (2.0, 3.0), (0.0, None, -0.2), (True, False), (True, False), ('sigmoid', 'atan', 'erf'))
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: f'tau{c.tau}-reset{c.v_reset}-detach{c.detach_reset}'
                                                     f'-decay{c.decay_input}-{c.surrogate}')
def test_same_spikes_and_gradients_as_spikingjelly(cfg, eager):
    x, up = _inputs()
    s_ref, g_ref = _reference(x, up, cfg)
    s, g = _fused(x, up, cfg)
    assert 0.05 < s_ref.mean() < 0.95  # a meaningful comparison: both spikes and silences
    assert torch.equal(s, s_ref)
    assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    assert g.abs().sum() > 0


HAS_CXX = any(shutil.which(c) for c in (os.environ.get('CXX', ''), 'g++', 'clang++', 'c++') if c)


@pytest.mark.skipif(not HAS_CXX, reason='torch.compile on the CPU needs a C++ compiler (eager fallback tested below)')
@pytest.mark.parametrize('cfg', [LIFConfig(), LIFConfig(v_reset=None, detach_reset=False, decay_input=False,
                                                          surrogate='atan', v_threshold=0.5)])
def test_compiled_matches_spikingjelly(cfg, monkeypatch):
    # The compiled kernel (the one users get), for both reset kinds and both charge equations. A compile failure
    # earlier in this process (e.g. a cache race with another process compiling) switches the process to eager;
    # start this test from a clean state so it tests compiling itself.
    monkeypatch.setattr(fused_lif, '_compile_failed', False)
    monkeypatch.setattr(fused_lif, '_compile_enabled', True)  # the suite runs eagerly elsewhere (tests/conftest.py)
    assert fused_lif.fused_compile_enabled()
    x, up = _inputs((4, 2, 16, 40))
    s_ref, g_ref = _reference(x, up, cfg)
    s, g = _fused(x, up, cfg)
    assert torch.equal(s, s_ref)
    assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), lif_impl('fused'):  # the inference kernel (no potentials kept)
        assert torch.equal(create_lif(cfg)(x), s_ref)
    assert fused_lif.fused_compile_enabled(), 'compiling fell back to eager on this machine'


def test_bfloat16_input(eager):
    # bf16 currents, fp32 membrane potentials (spikingjelly's CPU LIFNode would keep them in bf16): the spikes
    # are those of the fp32 neuron on the same (bf16-representable) currents.
    x, up = _inputs()
    xb, upb = x.bfloat16(), up.bfloat16()
    s_ref, g_ref = _reference(xb.float(), upb.float(), LIFConfig())
    s, g = _fused(xb, upb, LIFConfig())
    assert s.dtype == g.dtype == torch.bfloat16
    assert torch.equal(s.float(), s_ref)
    assert torch.allclose(g.float(), g_ref, rtol=1e-2, atol=1e-3)


def test_saves_one_tensor_for_backward(eager):
    # The fused neuron keeps only the charged potentials (one tensor of the input's size); spikingjelly's
    # CPU autograd loop keeps two input-sized tensors' worth (per step: the surrogate's input and the spike).
    def saved(impl):
        shapes = []

        def pack(t):
            shapes.append(t.shape)
            return t

        x = torch.randn(4, 3, 10, requires_grad=True)
        lif = create_lif()
        with lif_impl(impl), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lif(x)
        return shapes

    assert saved('fused') == [torch.Size([4, 30])]
    assert sum(s.numel() for s in saved('spikingjelly')) == 2 * 4 * 30


def test_stateless_and_no_state_left_on_module(eager):
    x, _ = _inputs()
    for impl in ('fused', 'spikingjelly'):
        lif = create_lif()
        with lif_impl(impl):
            a = lif(x.requires_grad_())
            assert torch.equal(a, lif(x))  # each call starts from rest
        # No tensor (and no autograd graph) survives the call on the module.
        assert isinstance(lif.v, float) and lif.v_seq is None


def test_is_a_spikingjelly_neuron_and_monitors_find_it(eager):
    lif = create_lif()
    assert isinstance(lif, neuron.LIFNode) and is_spiking_neuron(lif)
    x = torch.randn(2, 3, 32, 32)
    m = timm.create_model('spikingformer_4_256', embed_dim=32, depth=1, num_heads=4, T=2).train()
    rates = {}
    for impl in ('spikingjelly', 'fused'):
        with lif_impl(impl):
            rates[impl] = firing_rates(m, x)
    assert len(rates['fused']) == 4 + 7  # 4 stem stages and 7 neuron layers in the block
    assert 0 < sum(rates['fused'].values())
    assert rates['fused'] == pytest.approx(rates['spikingjelly'])


def test_model_with_fused_neurons_same_outputs_and_gradients(eager):
    torch.manual_seed(0)
    m = timm.create_model('spikingformer_4_256', embed_dim=32, depth=2, num_heads=4, T=3, num_classes=5).train()
    x = torch.randn(4, 3, 32, 32)
    results = {}
    assert sum(isinstance(mod, StatelessLIFNode) for mod in m.modules()) == 4 + 2 * 7
    for impl in ('spikingjelly', 'fused', 'auto'):
        m.zero_grad()
        with lif_impl(impl):
            out = m(x)
            out.square().sum().backward()
        results[impl] = (out.detach(), [p.grad.clone() for p in m.parameters()])
    for impl in ('fused', 'auto'):
        assert torch.allclose(results[impl][0], results['spikingjelly'][0], atol=1e-5)
        for a, b in zip(results[impl][1], results['spikingjelly'][1]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_impl_is_not_model_config():
    # An old config carrying 'impl' builds the same model; the switch decides per call.
    m = timm.create_model('spikingformer_4_256', embed_dim=32, depth=1, num_heads=4, lif_cfg=dict(impl='fused'))
    ref = timm.create_model('spikingformer_4_256', embed_dim=32, depth=1, num_heads=4)
    assert m.lif_cfg == ref.lif_cfg and 'impl' not in m.lif_cfg.to_dict()
    assert m.state_dict().keys() == ref.state_dict().keys()


def test_bad_impl_is_refused():
    from timm_spike.layers import set_lif_impl
    with pytest.raises(ValueError, match="Unknown LIF impl 'cuda'.*spikingjelly"):
        set_lif_impl('cuda')
    with pytest.raises(ValueError, match='Unknown LIF impl'):
        with lif_impl('nope'):
            pass
    with pytest.raises(TypeError):
        LIFConfig(impl='fused')
    with pytest.raises(ValueError, match='floating point'):
        lif_multi_step_fused(torch.ones(2, 3, dtype=torch.long))


def test_unsupported_surrogate_falls_back_to_spikingjelly(caplog, eager):
    x, _ = _inputs()
    lif = StatelessLIFNode(tau=2.0, surrogate_function=surrogate.PiecewiseQuadratic(), detach_reset=True,
                           step_mode='m')
    ref = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.PiecewiseQuadratic(), detach_reset=True,
                         step_mode='m')
    with caplog.at_level(logging.WARNING, logger='timm_spike.layers.neuron'), lif_impl('fused'):
        assert torch.equal(lif(x), ref(x))
    assert 'PiecewiseQuadratic' in caplog.text


def test_eager_fallback_when_compiling_fails(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError('no C++ compiler found')
        return call

    monkeypatch.setattr(fused_lif, '_compiled', {})
    monkeypatch.setattr(fused_lif, '_compile_failed', False)
    monkeypatch.setattr(fused_lif, '_compile_enabled', True)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    x, up = _inputs()
    with caplog.at_level(logging.WARNING, logger='timm_spike.layers.fused_lif'):
        s, g = _fused(x, up, LIFConfig())
    assert 'running it eagerly' in caplog.text and 'no C++ compiler' in caplog.text
    assert not fused_lif.fused_compile_enabled()
    s_ref, g_ref = _reference(x, up, LIFConfig())
    assert torch.equal(s, s_ref) and torch.allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_functional_api_shapes(eager):
    p = FusedLIFParams()
    x = torch.full((3, 2, 4), 1.5)
    s = lif_multi_step_fused(x, p)
    # tau 2, hard reset: v 0.75 -> 1.125 (spike, reset) -> 0.75
    assert s.shape == x.shape and s[:, 0, 0].tolist() == [0., 1., 0.]
    assert lif_multi_step_fused(torch.empty(3, 0)).shape == (3, 0)
