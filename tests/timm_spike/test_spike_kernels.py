"""Event-driven inference: the spike-input layers' kernels compute what the dense layers compute."""
import itertools
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model

import timm_spike  # noqa: F401  (registers the models)
from timm_spike.energy import calibrate_firing_rates
from timm_spike.layers import (
    SPIKE_KERNELS, FusedLIFParams, SpikingConv2d, SpikingLinear, create_lif, get_spike_kernel, set_spike_kernel,
    spike_kernel)
from timm_spike.layers import config as layer_config
from timm_spike.layers import spike_kernels as sk
from timm_spike.layers.fused_lif import lif_multi_step_fused

IMPLS = ('native', 'torch')


def _impl(name):
    return sk.native_kernels(name == 'native')


def _currents(shape, rate_shift, seed=0):
    """Input currents whose LIF fires from never (shift -6) to every step (shift +6)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) + rate_shift


def _dense_linear(u, T, p, w, b):
    if u.shape[0] == 1:
        u = u.expand(T, *u.shape[1:])
    return F.linear(lif_multi_step_fused(u, p), w, b)


def _dense_conv(u, T, p, w, b, pool):
    if u.shape[0] == 1:
        u = u.expand(T, *u.shape[1:])
    s = lif_multi_step_fused(u, p).permute(0, 1, 4, 2, 3).flatten(0, 1)  # [T*B, C, H, W]
    if pool:
        s = F.max_pool2d(s, 3, 2, 1)
    return F.conv2d(s, w, b, padding=1).unflatten(0, u.shape[:2]).permute(0, 1, 3, 4, 2)


def test_native_kernels_compile_here():
    # the machine the suite runs on has a C compiler (inductor needs one too): the fast path must be the one tested
    assert sk.native_kernels_available()


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('T,shift,K,N', [(4, 0.0, 24, 40), (1, 0.5, 7, 3), (3, -6.0, 16, 8), (2, 6.0, 9, 64),
                                         (4, -1.2, 200, 130)])
def test_lif_linear_equals_dense(impl, T, shift, K, N):
    p = FusedLIFParams()
    u = _currents((T, 5, 3, K), shift)
    w, b = torch.randn(N, K), torch.randn(N)
    ref = _dense_linear(u, T, p, w, b)
    with _impl(impl), spike_kernel('sparse'):
        out = sk.lif_linear(u, T, p, w.t().contiguous(), b)
    assert out.shape == ref.shape == (T, 5, 3, N)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    rate = lif_multi_step_fused(u, p).mean().item()
    assert sk.last_rate() == pytest.approx(rate)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('pool', [False, True])
@pytest.mark.parametrize('T,B,H,W,shift', [(4, 2, 8, 8, 0.0), (1, 1, 5, 7, 0.5), (2, 3, 1, 1, 6.0),
                                           (3, 1, 6, 3, -6.0), (4, 2, 9, 4, -1.0)])
def test_lif_conv3x3_equals_dense(impl, pool, T, B, H, W, shift):
    C, N = 12, 20
    p = FusedLIFParams()
    u = _currents((T, B, H, W, C), shift)
    w, b = torch.randn(N, C, 3, 3), torch.randn(N)
    ref = _dense_conv(u, T, p, w, b, pool)
    w9 = w.permute(2, 3, 1, 0).reshape(9, C, N).contiguous()
    with _impl(impl), spike_kernel('sparse'):
        out = sk.lif_conv3x3(u, T, p, w9, b, pool)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_kernels_take_direct_encoding_and_strided_inputs(impl):
    T, p = 4, FusedLIFParams()
    base = _currents((1, 2, 6, 6, 10), 0.3)
    w, b = torch.randn(16, 10, 3, 3), torch.randn(16)
    w9 = w.permute(2, 3, 1, 0).reshape(9, 10, 16).contiguous()
    ref = _dense_conv(base, T, p, w, b, False)
    wide = _currents((T, 2, 6, 6, 30), 0.3)[..., ::3]  # non-contiguous channels
    with _impl(impl), spike_kernel('sparse'):
        # a one-step input (T' = 1), and the same repeated as an expanded view (time stride 0), give the same result
        torch.testing.assert_close(sk.lif_conv3x3(base, T, p, w9, b), ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sk.lif_conv3x3(base.expand(T, *base.shape[1:]), T, p, w9, b), ref,
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sk.lif_conv3x3(wide, T, p, w9, b), _dense_conv(wide, T, p, w, b, False),
                                   atol=1e-4, rtol=1e-5)
        lin = sk.lif_linear(wide.permute(0, 1, 4, 2, 3), T, p, torch.randn(6, 4), None)  # last dim strided
        assert lin.shape == (T, 2, 10, 6, 4)


@pytest.mark.parametrize('cfg', [dict(tau=3.0), dict(v_reset=None), dict(decay_input=False), dict(v_threshold=0.5)])
def test_native_spikes_equal_the_fused_lif(cfg):
    # the native neuron's spikes are the fused LIF's bit for bit (same arithmetic in the same order)
    p = FusedLIFParams(**cfg)
    u = _currents((4, 300, 37), 0.4) * 2
    idx, cnt, nnz, _ = sk._native_lif_index(sk._load(), u, 4, p, want_map=False)
    spikes = lif_multi_step_fused(u, p).reshape(4 * 300, 37)
    assert nnz == int(spikes.sum())
    assert torch.equal(cnt, spikes.sum(1).int())
    rebuilt = torch.zeros_like(spikes)
    for r in range(0, spikes.shape[0], 97):
        rebuilt[r, idx[r, :cnt[r]].long()] = 1
        assert torch.equal(rebuilt[r], spikes[r])


def test_switch_values_and_errors(monkeypatch):
    assert get_spike_kernel() == 'auto' and SPIKE_KERNELS == ('auto', 'sparse', 'dense')
    with spike_kernel('dense'):
        assert get_spike_kernel() == 'dense'
    assert get_spike_kernel() == 'auto'
    with pytest.raises(ValueError, match="Unknown spike kernel 'fast'"):
        set_spike_kernel('fast')
    monkeypatch.setenv('TIMM_SPIKE_KERNEL', 'bogus')
    with pytest.raises(ValueError, match='TIMM_SPIKE_KERNEL'):
        layer_config._check_kernel('bogus', 'spike kernel in $TIMM_SPIKE_KERNEL:')


def test_auto_runs_dense_above_the_break_even():
    lif, w, b = create_lif(), torch.randn(8, 16), torch.randn(8)
    layer = SpikingLinear(lif, w, b).eval()
    quiet, busy = _currents((4, 50, 16), -1.0), _currents((4, 50, 16), 3.0)
    with torch.no_grad():
        with spike_kernel('dense'):
            dense_busy = layer(busy)
        with spike_kernel('auto'):
            assert torch.equal(layer(busy), dense_busy)  # rate ~0.6: dense, the very same numbers
            assert sk.last_rate() > sk.SPARSE_MAX_RATE['linear']
            out = layer(quiet)
            assert sk.last_rate() < sk.SPARSE_MAX_RATE['linear']
        with spike_kernel('dense'):
            torch.testing.assert_close(out, layer(quiet), atol=1e-5, rtol=1e-5)


def test_autograd_and_other_dtypes_run_dense():
    layer = SpikingConv2d(create_lif(), torch.randn(6, 4, 3, 3), torch.randn(6), pool='spike')
    x = _currents((2, 1, 4, 8, 8), 0.5).requires_grad_()
    with spike_kernel('sparse'):
        out = layer(x)
        out.sum().backward()  # the event-driven path has no backward: training gets the dense one
    assert x.grad is not None and layer.weight.grad is not None and out.shape == (2, 1, 6, 4, 4)
    with torch.no_grad(), spike_kernel('sparse'):
        out64 = layer.double()(x.detach().double())
    assert out64.dtype == torch.float64


def test_without_a_compiler_torch_operators_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(sk, '_lib_state', 'unloaded')
    monkeypatch.setattr(sk, '_lib', None)
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('TIMM_SPIKE_CACHE', str(tmp_path / 'cache'))
    p = FusedLIFParams()
    u, w, b = _currents((4, 10, 16), -0.5), torch.randn(8, 16), torch.randn(8)
    with caplog.at_level(logging.WARNING), spike_kernel('sparse'):
        out = sk.lif_linear(u, 4, p, w.t().contiguous(), b)
    assert 'not compiled' in caplog.text and not sk.native_kernels_available()
    torch.testing.assert_close(out, _dense_linear(u, 4, p, w, b), atol=1e-5, rtol=1e-5)
    assert not list((tmp_path / 'cache').glob('*.so*'))  # nothing half-written left behind


@pytest.fixture(scope='module')
def calibrated_tower():
    """A SpikeCLIP-Tiny-shaped Spikingformer whose neurons fire at about 5% (random weights, calibrated)."""
    model = timm.create_model('spikingformer_clip', embed_dim=32, depth=1, num_heads=4, stem='cifar_light')
    calibrate_firing_rates(model, torch.randn(6, 3, 32, 32), 0.05, steps=8)
    return model.eval(), reparameterize_model(model)


def test_reparameterize_model_gives_the_inference_form(calibrated_tower):
    model, fused = calibrated_tower
    kinds = {type(m).__name__ for m in fused.modules()}
    assert {'FoldedConv2d', 'SpikingConv2d', 'SpikingLinear', 'FusedSpikingSelfAttention', 'FusedSpikingMLP'} <= kinds
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())  # a copy was fused


def test_fused_model_sparse_equals_dense(calibrated_tower):
    model, fused = calibrated_tower
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        outs = {}
        for kernel, impl in itertools.product(('dense', 'sparse'), IMPLS):
            with spike_kernel(kernel), _impl(impl):
                outs[kernel, impl] = fused(x)
    for key, out in outs.items():
        # BatchNorm folding and the summation order move the last bits only (no spike flips at these sizes)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=str(key))


def test_fused_model_is_batch_invariant_and_repeatable(calibrated_tower):
    _, fused = calibrated_tower
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad(), spike_kernel('sparse'):
        batch = fused(x)
        assert torch.equal(fused(x), batch)
        for i in (0, 3):
            # the event-driven layers' sums do not depend on the batch; the dense first convolution may (oneDNN)
            torch.testing.assert_close(fused(x[i:i + 1])[0], batch[i], atol=1e-5, rtol=0)


def test_spiking_conv_keeps_pool_order(calibrated_tower):
    torch.manual_seed(1)
    for order in ('spike', 'real'):
        model = timm.create_model('spikingformer_4_256', embed_dim=32, depth=1, num_heads=4, pool_order=order,
                                  num_classes=5)
        calibrate_firing_rates(model, torch.randn(4, 3, 32, 32), 0.05, steps=6)
        fused = reparameterize_model(model)
        pooled = [m.pool for m in fused.modules() if isinstance(m, SpikingConv2d)]
        assert pooled.count(order) == 2
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad(), spike_kernel('sparse'):
            torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('kernel', ['sparse', 'auto'])
@pytest.mark.parametrize('shift', [-0.5, 0.3, 2.5])
def test_fused_mlp_is_the_two_layers_bit_for_bit(kernel, shift):
    from timm_spike.layers import spiking_mlp
    g = torch.Generator().manual_seed(3)
    fc1 = SpikingLinear(create_lif(), torch.randn(48, 40, generator=g), torch.randn(48, generator=g) + shift)
    fc2 = SpikingLinear(create_lif(), torch.randn(24, 48, generator=g), torch.randn(24, generator=g))
    u = _currents((1, 3, 7, 40), shift).expand(4, 3, 7, 40)  # direct-encoded, time stride 0
    with torch.no_grad(), spike_kernel(kernel):
        both = fc2(fc1(u))
        fused = spiking_mlp(fc1, fc2, u)
    assert fused.shape == (4, 3, 7, 24)
    # one pass or two, sparse or (above the break-even under 'auto') dense: the very same numbers
    assert torch.equal(fused, both)


def test_spike_counts_agree_dense_and_event_driven(calibrated_tower):
    from timm_spike.layers import spike_counts
    _, fused = calibrated_tower
    x = torch.randn(4, 3, 32, 32)
    got = {}
    with torch.no_grad():
        for kernel in ('dense', 'sparse', 'auto'):
            with spike_kernel(kernel), spike_counts(fused) as got[kernel]:
                fused(x)
    assert len(got['dense']) == 8 and sum(got['dense'].values()) > 0  # stages 1-4, qkv, proj, fc1, fc2
    assert got['sparse'] == got['dense'] == got['auto']  # the neurons' spikes, whichever path ran
