"""Spike-driven Transformer, QKFormer and SEW-ResNet from spikingjelly's model zoo behind timm's API
(timm_spike.models.spike_driven / qkformer / sew_resnet), and their SpikeCLIP configs."""
import functools

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model import qkformer as sj_qk
from spikingjelly.activation_based.model import sew_resnet as sj_sew
from spikingjelly.activation_based.model import spike_driven_transformer as sj_sdt
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import timm_spike  # noqa: F401  (registers the models)
from timm_spike.energy import energy_report, firing_rates
from timm_spike.layers import LIFConfig, StatelessLIFNode, create_lif, is_spiking_neuron


def _zoo_sdt():
    return sj_sdt.SpikeDrivenTransformer(T=2, num_classes=5, embed_dims=32, num_heads=4, depths=1,
                                         pooling_stat='0011')


def _zoo_qkformer():
    return sj_qk.QKFormer(T=2, num_classes=5, embed_dims=32, num_heads=(4, 4, 4), depths=(1, 1, 1))


def _zoo_sew():
    net = sj_sew.SEWResNet(sj_sew.BasicBlock, [1, 1, 1, 1], num_classes=5, cnf='ADD',
                           spiking_neuron=functools.partial(create_lif, LIFConfig()))
    functional.set_step_mode(net, 'm')
    return net


# name: the CIFAR-size entry point; tiny: its smallest config; feat: [C, H, W] of its 32x32 features;
# published: entry point -> (extra kwargs, parameters in millions from the family's paper);
# zoo / zoo_kw: spikingjelly's own model and the timm arguments of the same network (ImageNet layout).
FAMILIES = {
    'sdt': dict(
        name='sdt_2_512', clip='sdt_clip', config='SpikeCLIP-SDT-4-384', cls='SpikeDrivenTransformer',
        tiny=dict(embed_dim=32, depth=1, num_heads=4), feat=(32, 8, 8),
        # Spike-driven Transformer paper: 2-512 on CIFAR (the 100-class head), 8-384 / 8-512 on ImageNet
        published={'sdt_2_512': (dict(num_classes=100), 10.28), 'sdt_8_384': ({}, 16.81),
                   'sdt_8_512': ({}, 29.68)},
        zoo=_zoo_sdt, zoo_kw=dict(embed_dim=32, depth=1, num_heads=4)),
    'qkformer': dict(
        name='qkformer_4_384', clip='qkformer_clip', config='SpikeCLIP-QKFormer-4-384', cls='QKFormer',
        tiny=dict(embed_dim=32, depths=(1, 1, 1), num_heads=4), feat=(32, 8, 8),
        # QKFormer paper: 4-384 on CIFAR (the 100-class head), 10-384 / 10-512 on ImageNet
        published={'qkformer_4_384': (dict(num_classes=100), 6.74), 'qkformer_10_384': ({}, 16.47),
                   'qkformer_10_512': ({}, 29.08)},
        zoo=_zoo_qkformer, zoo_kw=dict(embed_dim=32, depths=(1, 1, 1), num_heads=4, patch_size=16)),
    'sew': dict(
        name='sew_resnet18_cifar', clip='sew_resnet18_clip', config='SpikeCLIP-SEWResNet-18', cls='SEWResNet',
        # the ImageNet stem keeps the tiny model cheap on 32x32 images (32 -> 8 before the first stage)
        tiny=dict(layers=(1, 1, 1, 1), stem='imagenet'), feat=(512, 1, 1),
        # SEW-ResNet paper: ResNet-18 / -34 on ImageNet (1000 classes)
        published={'sew_resnet18': ({}, 11.69), 'sew_resnet34': ({}, 21.79)},
        zoo=_zoo_sew, zoo_kw=dict(layers=(1, 1, 1, 1), stem='imagenet')),
}
FAMILY_IDS = list(FAMILIES)


def tiny(family, **kw):
    f = FAMILIES[family]
    args = dict(f['tiny'], T=2, num_classes=5)
    args.update(kw)
    return timm.create_model(f['name'], **args)


def make_neurons_fire(model):
    """BN stats that let the neurons fire (random init in eval mode is nearly silent)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(0.05)
    return model


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_registered_and_published_sizes(family):
    f = FAMILIES[family]
    prefix = f['name'].split('_')[0]
    assert {f['name'], f['clip'], *f['published']} <= set(timm.list_models(f'{prefix}*'))
    for name, (kw, millions) in f['published'].items():
        with torch.device('meta'):
            model = timm.create_model(name, **kw)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.02), name
    with torch.device('meta'):
        clip = timm.create_model(f['clip'])
        small = timm.create_model(f['name'])
    cfg = clip.pretrained_cfg
    assert clip.num_classes == 512 and clip.T == 4 and cfg['input_size'] == (3, 32, 32)
    assert cfg['mean'] == OPENAI_CLIP_MEAN and cfg['std'] == OPENAI_CLIP_STD
    assert sum(p.numel() for p in clip.parameters()) < 12e6  # trainable on a CPU, like spikformer_clip
    assert small.pretrained_cfg['input_size'] == (3, 32, 32) and small.img_size == (32, 32)
    for model in (clip, small):  # pretrained_cfg names the real first conv and classifier
        first = model.get_submodule(model.pretrained_cfg['first_conv'])
        assert isinstance(first, nn.Conv2d) and first.in_channels == 3
        assert model.get_submodule(model.pretrained_cfg['classifier']) is model.get_classifier()


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_timm_api_shapes(family):
    feat = FAMILIES[family]['feat']
    model = tiny(family).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        seq = model.forward_features_seq(x)
        assert seq.shape == (2, 3, *feat)  # [T, B, C, H', W'], for energy and analysis
        feats = model.forward_features(x)
        assert torch.equal(feats, seq.mean(0))  # timm's batch-first map: read out over time
        assert model(x).shape == (3, 5)
        assert torch.equal(model.forward_head(seq), model(x))  # the path forward takes
        if family != 'sdt':  # SDT spikes the pooled tokens per step (see spike_driven.py)
            assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
        assert model.forward_head(feats, pre_logits=True).shape == (3, feat[0])
        assert model.pretrained_cfg['pool_size'] == (8, 8) or family == 'sew'
        assert all(isinstance(m, StatelessLIFNode) for m in model.modules() if is_spiking_neuron(m))
        seq = x.unsqueeze(0).repeat(2, 1, 1, 1, 1)  # [T, B, C, H, W] input
        assert torch.equal(model(seq), model(x))  # direct encoding = the image at every step
        model.reset_classifier(0)
        assert model(x).shape == (3, feat[0]) and model.num_features == model.head_hidden_size == feat[0]
        model.reset_classifier(0, global_pool='')
        assert model(x).shape == (3, *feat)
        model.reset_classifier(7, global_pool='avg')
        assert model(x).shape == (3, 7) and model.get_classifier().out_features == 7
    with pytest.raises(ValueError, match='needs num_classes=0'):
        model.reset_classifier(7, global_pool='')
    with pytest.raises(ValueError, match="Unknown global_pool 'max'"):
        model.reset_classifier(7, global_pool='max')
    with pytest.raises(ValueError, match='does not match the model input 3x32x32'):
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match='does not match the model input 3x32x32'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'expected \[B, C, H, W\] images or a \[T, B, C, H, W\] sequence'):
        model(torch.randn(3, 32, 32))
    assert model.no_weight_decay() == {'readout.logits'}
    assert tiny(family, drop_rate=0.25).head_drop.p == 0.25
    gray = tiny(family, in_chans=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert gray.get_submodule(gray.pretrained_cfg['first_conv']).in_channels == 1


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_group_matcher_covers_every_parameter(family):
    model = tiny(family)
    first_conv = model.pretrained_cfg['first_conv'] + '.weight'
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sorted(n for names in groups.values() for n in names) == sorted(n for n, _ in model.named_parameters())
    assert first_conv in groups[min(groups)]  # the stem is the first group
    fine = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) > 2 and len(fine) >= len(coarse)


def test_lif_cfg_zoo_neurons_are_refused_sew_neurons_take_it():
    for family in ('sdt', 'qkformer'):
        with pytest.raises(ValueError, match='lif_cfg cannot change'):
            tiny(family, lif_cfg=dict(tau=3.0))
        tiny(family, lif_cfg=LIFConfig().to_dict())  # the defaults (SpikeCLIP always passes lif_cfg) are fine
    sew = tiny('sew', lif_cfg=dict(tau=3.0, v_threshold=0.5))
    neurons = [m for m in sew.modules() if is_spiking_neuron(m)]
    assert neurons and all(isinstance(m, StatelessLIFNode) and m.tau == 3.0 and m.v_threshold == 0.5
                           for m in neurons)
    with pytest.raises(ValueError, match='Unknown LIF parameters'):
        tiny('sew', lif_cfg=dict(tau_m=3.0))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='patch_size must be one of'):
        tiny('sdt', patch_size=3)
    with pytest.raises(ValueError, match='multiple of 8'):
        tiny('sdt', embed_dim=36, num_heads=4)
    with pytest.raises(ValueError, match='patch_size must be 4'):
        tiny('qkformer', patch_size=8)
    with pytest.raises(ValueError, match="Unknown cnf 'OR'"):
        tiny('sew', cnf='OR')
    with pytest.raises(ValueError, match="Unknown stem"):
        tiny('sew', stem='deep')
    with pytest.raises(ValueError, match='T .number of time steps. must be an integer >= 1'):
        tiny('sdt', T=0)
    with pytest.raises(ValueError, match="Unknown readout 'last'"):
        tiny('qkformer', readout='last')


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_neurons_start_from_rest_every_forward(family):
    model = make_neurons_fire(tiny(family)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
        model(torch.randn(4, 3, 32, 32) * 3)  # a different input in between leaves nothing behind
        c = model(x)
        single = model(x[2:3])
    assert torch.equal(a, b) and torch.equal(a, c)  # spikingjelly's LIFNode would carry its potential over
    assert torch.allclose(a[2:3], single, atol=1e-5)  # nothing leaks across the batch
    rates = firing_rates(model, x)
    assert len(rates) == sum(is_spiking_neuron(m) for m in model.modules())
    assert max(rates.values()) > 0 and all(0 <= r <= 1 for r in rates.values())


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_other_T_and_weighted_readout(family):
    mean2 = tiny(family, T=2).eval()
    mean1 = tiny(family, T=1).eval()
    mean1.load_state_dict(mean2.state_dict())  # no weight depends on T
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert mean1(x).shape == (2, 5) and mean1.forward_features_seq(x).shape[0] == 1
        assert mean2(x.unsqueeze(0).repeat(2, 1, 1, 1, 1)).shape == (2, 5)  # an encoded sequence of T steps
    with pytest.raises(ValueError, match='runs T=2 time steps, but the input has 3'):  # never silently 3 steps
        mean2(x.unsqueeze(0).repeat(3, 1, 1, 1, 1))
    weighted = tiny(family, T=2, readout='weighted')
    assert weighted.readout.logits.shape == (2,)
    with pytest.raises(RuntimeError, match='readout.logits'):
        tiny(family, T=1, readout='weighted').load_state_dict(weighted.state_dict())
    with pytest.raises(ValueError, match="readout='weighted' was built for T=2"):
        weighted.readout(torch.randn(3, 2, weighted.num_features))


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_training_step_lowers_the_loss_and_reaches_the_first_conv(family):
    model = tiny(family).train()
    first = model.get_submodule(model.pretrained_cfg['first_conv'])
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0  # through every neuron layer
    opt.step()
    opt.zero_grad()
    assert F.cross_entropy(model(x), y).item() < loss.item()


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_zoo_checkpoint_loads_through_pretrained_cfg_overlay(family, tmp_path):
    """A safetensors checkpoint of spikingjelly's own model loads unchanged and gives the zoo's outputs."""
    f = FAMILIES[family]
    zoo = make_neurons_fire(f['zoo']()).eval()
    path = tmp_path / 'zoo.safetensors'
    save_file(zoo.state_dict(), str(path))
    model = timm.create_model(f['name'], pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5),
                              num_classes=5, T=2, **f['zoo_kw']).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        functional.reset_net(zoo)
        if family == 'sew':  # the zoo's SEW-ResNet takes and returns sequences (logits per time step)
            expected = zoo(x.unsqueeze(0).repeat(2, 1, 1, 1, 1)).mean(0)
        else:
            expected = zoo(x)
        out = model(x)
    assert out.abs().sum() > 0 and torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_grad_checkpointing_gives_the_same_gradients(family, monkeypatch):
    import timm_spike.models._zoo as zoo_module
    calls = []
    checkpoint_module = zoo_module.checkpoint_module

    def counting_checkpoint(fn, *args):
        calls.append(fn)
        return checkpoint_module(fn, *args)
    monkeypatch.setattr(zoo_module, 'checkpoint_module', counting_checkpoint)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    grads, stats = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = make_neurons_fire(tiny(family)).train()
        first = model.get_submodule(model.pretrained_cfg['first_conv'])
        model.set_grad_checkpointing(ckpt)
        F.cross_entropy(model(x), y).backward()
        grads.append(first.weight.grad.clone())
        stats.append({k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k})
    assert len(calls) >= 2  # per level or block, only when enabled
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
    # the recompute in backward must not update BatchNorm's running statistics a second time
    assert stats[0].keys() == stats[1].keys() and len(stats[0]) > 3
    for k in stats[0]:
        assert torch.allclose(stats[0][k], stats[1][k], atol=1e-6), k


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_features_only_intermediates_and_prune(family):
    x = torch.randn(2, 3, 32, 32)
    deeper = dict(depth=2) if family == 'sdt' else {}  # tokenizer + 2 blocks: three levels
    torch.manual_seed(0)
    model = tiny(family, **deeper).eval()
    torch.manual_seed(0)
    feats = timm.create_model(FAMILIES[family]['name'], features_only=True, out_indices=(0, 1, 2),
                              **dict(FAMILIES[family]['tiny'], T=2, num_classes=5, **deeper)).eval()
    info = model.feature_info
    assert len(info) >= 3
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [i['num_chs'] for i in info]
        assert [32 // t.shape[-1] for t in inter] == [i['reduction'] for i in info]
        for a, b in zip(feats(x), inter[:3]):
            assert torch.equal(a, b)
        assert model.prune_intermediate_layers([1]) == [1]
        assert torch.equal(model.forward_features(x), inter[1])  # the trunk now ends at level 1
    assert isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_energy_report_and_firing_rates(family):
    model = make_neurons_fire(tiny(family)).eval()
    x = torch.randn(2, 3, 32, 32)
    report = energy_report(model, x, progress=False)
    first = report.layers[0]
    conv = model.get_submodule(model.pretrained_cfg['first_conv'])
    assert first.name == model.pretrained_cfg['first_conv'] and first.sops == 0  # a real-valued image: MACs
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    side = (32 + 2 * p - k) // s + 1
    assert first.macs == conv.in_channels * conv.out_channels * k * k * side ** 2  # once per image, not T times
    assert report.T == 2 and report.sops > 0 and report.energy_mj > 0
    assert report.neurons and all(0 <= r <= 1 for r in report.neurons.values())


@pytest.mark.parametrize('family', FAMILY_IDS)
def test_spikeclip_config_builds_and_encodes(family):
    import open_clip
    import open_clip_spike  # noqa: F401
    from open_clip_spike.model import SpikeCLIP
    f = FAMILIES[family]
    with torch.device('meta'):
        model = open_clip.create_model(f['config'], device='meta')
    assert isinstance(model, SpikeCLIP)
    trunk = model.visual.trunk
    assert type(trunk).__name__ == f['cls'] and trunk.num_classes == 512 and trunk.T == 4
    assert trunk.pretrained_cfg['architecture'] == f['clip']
    # the same config with a smaller image tower (and text tower) runs end to end
    cfg = open_clip.get_model_config(f['config'])
    assert cfg['text_cfg'] == open_clip.get_model_config('SpikeCLIP-Spikformer-4-384')['text_cfg']
    vision = dict(cfg['vision_cfg'], timm_model_kwargs=f['tiny'])
    small = open_clip.create_model(f['config'], vision_cfg=vision,
                                   text_cfg=dict(cfg['text_cfg'], width=64, hidden_dim=128)).eval()
    make_neurons_fire(small.visual.trunk)  # SDT's pooled tokens pass a LIF: an untrained BN leaves it silent
    text = open_clip.get_tokenizer(f['config'])(['a photo of a cat.', 'a photo of a dog.'])
    with torch.no_grad():
        img = small.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
        txt = small.encode_text(text, normalize=True)
    assert img.shape == txt.shape == (2, 512) and small.visual.trunk.T == 4
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_first_conv_runs_once_with_the_same_outputs_and_gradients():
    """A direct-encoded image goes through the first conv once; a repeated copy of it through T times."""
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    results = []
    for inp in (x, x.unsqueeze(0).repeat(2, 1, 1, 1, 1)):  # expanded view (hooked) vs real sequence
        torch.manual_seed(0)
        model = tiny('sdt').train()
        conv = model.patch_embed.stages[0][0]
        shapes = []
        handle = conv.register_forward_hook(lambda m, a, out: shapes.append(tuple(a[0].shape)))
        loss = F.cross_entropy(model(inp), y)
        loss.backward()
        handle.remove()
        results.append((shapes[0][0], loss.detach(), conv.weight.grad.clone(),
                        model.patch_embed.stages[0][1].running_var.clone()))
    (once, *a), (twice, *b) = results
    assert (once, twice) == (1, 2)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))
