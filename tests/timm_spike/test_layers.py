import pytest
import torch
from spikingjelly.activation_based import neuron

from timm_spike.layers import LIFConfig, TemporalReadout, create_lif


def test_stateless_lif_matches_spikingjelly_from_rest():
    x = torch.rand(4, 3, 10) * 3
    ref = neuron.LIFNode(tau=2.0, detach_reset=True, step_mode='m')
    lif = create_lif()
    assert torch.equal(lif(x), ref(x))
    # A second call starts again from rest (the plain LIFNode carries its membrane over).
    assert torch.equal(lif(x), lif(x))
    assert not torch.equal(ref(x), lif(x))


def test_lif_by_hand():
    # tau 2, threshold 1, hard reset to 0, decay_input: v <- v + (x - v) / 2, spike when v >= 1
    x = torch.tensor([[1.5], [1.5], [0.4], [2.0]])
    s = create_lif()(x)
    # v: 0.75 -> 1.125 (spike, reset) -> 0.2 -> 1.1 (spike)
    assert s.flatten().tolist() == [0., 1., 0., 1.]


def test_lif_config_validation():
    assert LIFConfig(tau=3).tau == 3.0 and isinstance(LIFConfig(tau=3).tau, float)
    with pytest.raises(ValueError, match='tau'):
        LIFConfig(tau=1.0)
    with pytest.raises(ValueError, match='surrogate'):
        LIFConfig(surrogate='nope')
    with pytest.raises(TypeError):
        LIFConfig.from_any(3)


def test_readout():
    x = torch.randn(3, 2, 4)
    assert torch.allclose(TemporalReadout(3)(x), x.mean(0))
    assert torch.allclose(TemporalReadout(7)(x), x.mean(0))  # the mean works for any T
    w = TemporalReadout(3, 'weighted')
    assert torch.allclose(w(x), x.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match='readout'):
        TemporalReadout(3, 'max')


def test_lif_impl_is_a_process_switch_not_model_config():
    from timm_spike.layers import LIF_IMPLS, get_lif_impl, lif_impl, set_lif_impl
    assert LIF_IMPLS == ('auto', 'fused', 'spikingjelly')
    before = get_lif_impl()
    with lif_impl('spikingjelly'):
        assert get_lif_impl() == 'spikingjelly'
        with lif_impl('fused'):
            assert get_lif_impl() == 'fused'
        assert get_lif_impl() == 'spikingjelly'
    assert get_lif_impl() == before
    with pytest.raises(RuntimeError), lif_impl('fused'):
        raise RuntimeError('restored on errors too')
    assert get_lif_impl() == before
    with pytest.raises(ValueError, match="Unknown LIF impl 'cuda'.*spikingjelly"):
        set_lif_impl('cuda')
    with pytest.raises(TypeError, match='takes no model'):
        set_lif_impl(create_lif())
    assert get_lif_impl() == before
    # nothing of it in the config, the module or its state
    assert 'impl' not in LIFConfig().to_dict()
    lif = create_lif()
    assert not hasattr(lif, 'impl') and 'impl' not in repr(lif) and not lif.state_dict()
    # old configs (Hub config.json files) that carry 'impl' still load
    assert LIFConfig.from_any(dict(tau=3.0, impl='fused')) == LIFConfig(tau=3.0)
    with pytest.raises(ValueError, match='run-time switch'):
        create_lif(impl='fused')


def test_lif_impl_default_from_environment(monkeypatch):
    """The default comes from $TIMM_SPIKE_LIF_IMPL when timm_spike is imported (here its config module is
    re-executed with importlib.reload, in this process: a fresh interpreter per case would cost seconds each)."""
    import importlib

    import timm_spike
    from timm_spike.layers import config
    saved = config.get_lif_impl()
    try:
        monkeypatch.delenv(config.LIF_IMPL_ENV, raising=False)
        importlib.reload(config)
        assert timm_spike.get_lif_impl() == 'auto'  # the default: fused on CPU, spikingjelly on CUDA
        monkeypatch.setenv(config.LIF_IMPL_ENV, 'spikingjelly')
        importlib.reload(config)
        assert timm_spike.get_lif_impl() == 'spikingjelly'
        monkeypatch.setenv(config.LIF_IMPL_ENV, 'gpu-magic')
        with pytest.raises(ValueError, match=r"Unknown LIF implementation in \$TIMM_SPIKE_LIF_IMPL: 'gpu-magic'"):
            importlib.reload(config)
    finally:
        monkeypatch.undo()
        importlib.reload(config)
        config.set_lif_impl(saved)


def test_auto_dispatch_by_device():
    from timm_spike.layers import lif_impl
    lif = create_lif()
    cpu, meta = torch.empty(1), torch.empty(1, device='meta')
    with lif_impl('auto'):  # fused on the CPU; on any other device spikingjelly's own kernels (CUDA/Triton)
        assert lif._use_fused(cpu) and not lif._use_fused(meta)
    with lif_impl('fused'):
        assert lif._use_fused(cpu) and lif._use_fused(meta)
        lif.store_v_seq = True  # potentials kept for inspection: only spikingjelly keeps them
        assert not lif._use_fused(cpu)
        lif.store_v_seq = False
    with lif_impl('spikingjelly'):
        assert not lif._use_fused(cpu)


def test_fused_lif_on_meta_tensors_keeps_compiling_enabled():
    # A shape-only pass (as MAC counting does) must not switch compiling off for the process.
    from timm_spike.layers import fused_lif, lif_impl
    failed_before = fused_lif._compile_failed
    with lif_impl('fused'):
        out = create_lif()(torch.empty(4, 2, 8, device='meta'))
    assert out.shape == (4, 2, 8) and out.is_meta
    assert fused_lif._compile_failed == failed_before


def test_fused_lif_under_a_dispatch_mode_runs_eagerly_and_keeps_compiling_enabled():
    # Op counters run the model under a TorchDispatchMode, where torch.compile cannot run.
    from torch.utils._python_dispatch import TorchDispatchMode
    from timm_spike.layers import fused_lif, lif_impl

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    failed_before = fused_lif._compile_failed
    x = torch.rand(4, 3, 10) * 3
    with lif_impl('spikingjelly'):
        ref = create_lif()(x)
    with lif_impl('fused'), Count():
        out = create_lif()(x)
    assert torch.equal(out, ref) and Count.n > 0
    assert fused_lif._compile_failed == failed_before


def test_checkpoint_module_updates_batchnorm_statistics_once():
    from torch.utils.checkpoint import checkpoint
    from timm_spike.layers import checkpoint_module
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh())
    x = torch.randn(16, 6, requires_grad=True)
    start = {k: v.clone() for k, v in block.state_dict().items()}

    def step(run):
        block.load_state_dict(start)
        block.zero_grad()
        out = run(x)
        out.square().sum().backward()
        return out.detach(), block[0].weight.grad.clone(), {k: v.clone() for k, v in block[1].state_dict().items()}

    ref = step(block)
    plain = step(lambda t: checkpoint(block, t, use_reentrant=False))
    ours = step(lambda t: checkpoint_module(block, t))
    assert plain[2]['num_batches_tracked'].item() == 2  # the problem: the recompute counts as a second step
    assert not torch.allclose(plain[2]['running_mean'], ref[2]['running_mean'])
    assert ref[2]['num_batches_tracked'].item() == ours[2]['num_batches_tracked'].item() == 1
    for a, b in zip(ref, ours):
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.allclose(a, b, atol=1e-6)
    block.eval()  # eval mode: no statistics to keep, the helper is a plain checkpoint
    y = checkpoint_module(block, x)
    assert torch.allclose(y, block(x))
