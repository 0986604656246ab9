"""Activation checkpointing must cut the peak training memory (measured, not assumed) and keep the gradients."""
import timm
import torch

import timm_spike  # noqa: F401
from timm_spike.layers import StatelessLIFNode

SMALL = dict(embed_dim=64, depth=4, num_heads=4)  # spikingformer_clip's layout (32x32, 4 blocks), narrower


def test_checkpointing_cuts_peak_memory_at_T8():
    # Measured in a subprocess (fresh allocator, fixed mmap threshold): peak resident set during one step.
    from open_clip_spike.bench import peak_train_memory_many
    spec = dict(model='spikingformer_clip', T=8, impl='fused', batch_size=4, model_kwargs=SMALL)
    results = peak_train_memory_many([dict(spec, grad_checkpointing=ck) for ck in (False, True)], timeout=600)
    peaks = dict(zip((False, True), results))
    plain, ckpt = peaks[False]['peak_bytes'], peaks[True]['peak_bytes']
    # Activations of this model at T=8, batch 4 are about 95 MB; a probe that measured nothing fails here.
    assert plain > 50 * 2 ** 20
    assert ckpt <= 0.55 * plain, f'checkpointing cut the peak only from {plain / 2**20:.0f} to {ckpt / 2**20:.0f} MB'
    # Same weights (seeded init), same batch: the same gradients.
    assert abs(peaks[True]['grad_norm'] - peaks[False]['grad_norm']) <= 1e-5 * peaks[False]['grad_norm']


def test_checkpointing_same_gradients_and_no_graph_kept_on_neurons():
    torch.manual_seed(0)
    m = timm.create_model('spikingformer_clip', T=3, embed_dim=32, depth=2, num_heads=4,
                          ).train()
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for ck in (False, True):
        m.set_grad_checkpointing(ck)
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
        # Non-reentrant checkpointing keeps a recomputed block alive while anything references its graph:
        # no neuron may hold a tensor after its call.
        for lif in m.modules():
            if isinstance(lif, StatelessLIFNode):
                assert not isinstance(lif.v, torch.Tensor) and lif.v_seq is None
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
