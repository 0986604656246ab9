"""Spikformer from spikingjelly's model zoo behind timm's API (timm_spike.models.spikformer), and its SpikeCLIP config."""
import pytest
import timm
import torch

import timm_spike  # noqa: F401  (registers the models)
from timm_spike.energy import energy_report, firing_rates
from timm_spike.layers import is_spiking_neuron

# Spikformer paper (Zhou et al. 2023), in millions: 4-384 on CIFAR-10, 8-384 on ImageNet
PUBLISHED_PARAMS = {'spikformer_4_384': 9.32, 'spikformer_8_384': 16.81}


def tiny(**kw):
    args = dict(embed_dim=32, depth=1, num_heads=4, T=2, num_classes=5)
    args.update(kw)
    return timm.create_model('spikformer_4_384', **args)


def test_registered_and_published_sizes():
    assert {'spikformer_4_384', 'spikformer_8_384', 'spikformer_clip'} <= set(timm.list_models('spikformer*'))
    for name, millions in PUBLISHED_PARAMS.items():
        with torch.device('meta'):
            model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.02)
    with torch.device('meta'):
        clip = timm.create_model('spikformer_clip')
    assert clip.num_classes == 512 and clip.T == 4 and clip.pretrained_cfg['input_size'] == (3, 32, 32)


def test_timm_api_shapes():
    model = tiny().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        seq = model.forward_features_seq(x)
        assert seq.shape == (2, 3, 32, 8, 8)  # [T, B, C, H/4, W/4]
        feats = model.forward_features(x)
        assert feats.shape == (3, 32, 8, 8) and torch.equal(feats, seq.mean(0))
        assert model(x).shape == (3, 5)
        assert torch.equal(model.forward_head(seq), model(x))
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
        assert model.forward_head(feats, pre_logits=True).shape == (3, 32)
        model.reset_classifier(0)
        assert model(x).shape == (3, 32) and model.num_features == model.head_hidden_size == 32
        model.reset_classifier(0, global_pool='')
        assert model(x).shape == (3, 32, 8, 8)
    with pytest.raises(ValueError, match='needs num_classes=0'):
        model.reset_classifier(7, global_pool='')
    with pytest.raises(ValueError, match='does not match the model input'):
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match='lif_cfg cannot change'):
        tiny(lif_cfg=dict(tau=3.0))
    features = timm.create_model('spikformer_4_384', features_only=True, embed_dim=32, num_heads=4, T=2)
    assert [f.shape for f in features(x)] == [(3, 32, 8, 8)] * 3  # the last 3 of tokenizer + 4 blocks
    model.set_grad_checkpointing(True)  # the neurons start from rest at every call: a recompute is exact
    assert model.grad_checkpointing


def test_neurons_start_from_rest_every_forward():
    model = tiny(embed_dim=64).eval()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bn:  # BN stats that let the neurons fire (random init in eval mode is nearly silent)
        m.running_var.fill_(0.05)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[2:3])
    assert torch.equal(a, b)  # spikingjelly's LIFNode would carry its potential over; these start from rest
    assert torch.allclose(a[2:3], single, atol=1e-5)  # nothing leaks across the batch
    rates = firing_rates(model, x)
    assert len(rates) == sum(is_spiking_neuron(m) for m in model.modules())
    assert max(rates.values()) > 0


def test_other_T_and_weighted_readout():
    mean4 = tiny(T=4).eval()
    mean2 = tiny(T=2).eval()
    mean2.load_state_dict(mean4.state_dict())  # no weight depends on T
    with torch.no_grad():
        assert mean2(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    weighted = tiny(T=4, readout='weighted')
    with pytest.raises(RuntimeError, match='readout.logits'):
        tiny(T=2, readout='weighted').load_state_dict(weighted.state_dict())


def test_energy_report_counts_the_first_conv_as_macs():
    model = tiny(embed_dim=64).eval()
    report = energy_report(model, torch.randn(2, 3, 32, 32), progress=False)
    first = report.layers[0]
    assert first.sops == 0 and first.macs > 0  # real-valued image into the first conv
    assert report.T == 2 and report.energy_mj > 0
    # the direct-encoded image is the same at every step: the first conv runs (and is counted) once, not T times
    conv = model.patch_embed.stages[0].conv_bn.block[0]
    assert first.macs == 32 * 32 * conv.out_channels * conv.in_channels * 9


def test_first_conv_once_gives_the_same_outputs_and_gradients():
    model = tiny().train()
    x = torch.randn(3, 3, 32, 32)
    twin = tiny().train()
    twin.load_state_dict(model.state_dict())
    out = model(x)  # [B, C, H, W]: expanded over T, the first conv runs once
    ref = twin(x.unsqueeze(0).repeat(2, 1, 1, 1, 1))  # a real [T, B, ...] sequence: the conv runs T times
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), name


def test_spikeclip_config_uses_spikformer():
    import open_clip
    import open_clip_spike  # noqa: F401
    from open_clip_spike.model import SpikeCLIP
    with torch.device('meta'):
        model = open_clip.create_model('SpikeCLIP-Spikformer-4-384', device='meta')
    assert isinstance(model, SpikeCLIP)
    assert type(model.visual.trunk).__name__ == 'Spikformer' and model.visual.trunk.num_classes == 512
    # a small variant (same config, smaller tower) runs end to end
    cfg = open_clip.get_model_config('SpikeCLIP-Spikformer-4-384')
    vision = dict(cfg['vision_cfg'], timm_model_kwargs=dict(embed_dim=32, depth=1, num_heads=4))
    small = open_clip.create_model('SpikeCLIP-Spikformer-4-384', vision_cfg=vision,
                                   text_cfg=dict(cfg['text_cfg'], width=64, hidden_dim=128)).eval()
    with torch.no_grad():
        emb = small.encode_image(torch.randn(2, 3, 32, 32))
    assert emb.shape == (2, 512) and small.visual.trunk.T == 4
