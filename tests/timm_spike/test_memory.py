"""Activation checkpointing keeps the gradients and leaves no graph on the neurons (the peak-memory cut is measured
by the bench's probe: tests/open_clip_spike/experiments/test_bench_memory.py)."""
import timm
import torch

import timm_spike  # noqa: F401
from timm_spike.layers import StatelessLIFNode

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
