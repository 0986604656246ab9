import copy
import json

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import timm_spike
from timm_spike.layers import StatelessLIFNode
from timm_spike.models.spikingformer import Spikingformer

PUBLISHED_PARAMS = {  # REFERENCE section 5 (Spikingformer paper), in millions
    'spikingformer_8_384': 16.81,
    'spikingformer_8_512': 29.68,
    'spikingformer_8_768': 66.34,
    'spikingformer_4_384': 9.32,
    'spikingformer_4_256': 4.15,
    'spikingformer_2_384': 5.76,
}
ALL = sorted(PUBLISHED_PARAMS) + ['spikingformer_clip']


def tiny(**kw):
    """A small Spikingformer for fast tests (CIFAR stem, 32x32)."""
    args = dict(embed_dim=32, depth=2, num_heads=4, T=2, num_classes=5)
    args.update(kw)
    return timm.create_model('spikingformer_4_256', **args)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_all_registered():
    assert sorted(timm.list_models('spikingformer*')) == ALL


@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS))
def test_param_counts_match_published(name):
    with torch.device('meta'):
        m = timm.create_model(name)
    assert abs(n_params(m) / 1e6 - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.01


def test_clip_encoder_matches_reference_tower():
    with torch.device('meta'):
        m = timm.create_model('spikingformer_clip')
    # Reference SpikeCLIP image tower: 9,513,396 = stem 2,201,520 + 4 x 1,778,688 + projection 197,120
    # + 4 un-normalised readout weights (this model's default readout is the mean, with no parameters).
    assert n_params(m.patch_embed) == 2_201_520
    assert all(n_params(b) == 1_778_688 for b in m.blocks)
    assert n_params(m.head) == 197_120
    assert n_params(m) == 9_513_396 - 4
    assert m.T == 4 and m.img_size == (32, 32) and m.num_classes == 512
    assert m.blocks[0].attn.num_heads == 8


def test_clip_encoder_shapes():
    m = timm.create_model('spikingformer_clip').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        seq = m.forward_features_seq(x)
        assert seq.shape == (4, 2, 384, 8, 8)  # time-major, for energy and analysis
        feats = m.forward_features(x)
        assert feats.shape == (2, 384, 8, 8)  # timm's batch-first map (read out over time)
        assert torch.equal(feats, seq.mean(0))
        out = m(x)
        assert out.shape == (2, 512)
        assert torch.equal(m.forward_head(seq), out)  # the path forward takes
        assert torch.allclose(m.forward_head(feats), out, atol=1e-6)  # pooling and readout commute
        assert m.forward_head(feats, pre_logits=True).shape == (2, 384)
        assert m.pretrained_cfg['pool_size'] == tuple(feats.shape[-2:])
    m0 = timm.create_model('spikingformer_clip', num_classes=0).eval()
    assert m0(x).shape == (2, 384)
    assert m0.num_features == m0.head_hidden_size == 384


def test_pretrained_cfg():
    m = timm.create_model('spikingformer_clip')
    cfg = timm.data.resolve_model_data_config(m)
    assert cfg['input_size'] == (3, 32, 32)
    assert cfg['mean'] == timm.data.OPENAI_CLIP_MEAN and cfg['std'] == timm.data.OPENAI_CLIP_STD
    with torch.device('meta'):
        big = timm.create_model('spikingformer_8_512')
    assert big.pretrained_cfg['input_size'] == (3, 224, 224) and big.num_classes == 1000
    assert big.stride == 16


def test_imagenet_stem_forward():
    m = timm.create_model('spikingformer_8_384', embed_dim=32, depth=1, num_heads=4, T=1, num_classes=3)
    feats = m.forward_features_seq(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 1, 32, 14, 14)
    assert m.pretrained_cfg['pool_size'] == (14, 14)


def test_cifar_light_stem_same_tokens_fewer_flops():
    """'cifar_light' pools one stage earlier: the same 8x8 tokens and weights, the stem's 3x3 convs at
    (32, 16, 8, 8) instead of (32, 32, 16, 8) positions per side."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, 3, 32, 32)
    stem_flops, feats = {}, {}
    for stem in ('cifar', 'cifar_light'):
        m = timm.create_model('spikingformer_clip', embed_dim=64, depth=1, num_heads=4, T=2, stem=stem).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            feats[stem] = m.forward_features_seq(x)
        stem_flops[stem] = sum(fc.get_flop_counts()['SpikingTokenizer'].values())
        assert m.stride == 4 and sum(p.numel() for p in m.parameters()) == 145_608
    assert feats['cifar'].shape == feats['cifar_light'].shape == (2, 1, 64, 8, 8)
    # widths C/8..C = 8, 16, 32, 64, 64; the first conv runs once, the other four T times
    macs = lambda hw: 3 * 8 * 32 ** 2 + 2 * (8 * 16 * hw[0] ** 2 + 16 * 32 * hw[1] ** 2 + 32 * 64 * hw[2] ** 2  # noqa: E731
                                             + 64 * 64 * hw[3] ** 2)
    assert stem_flops['cifar'] == 2 * 9 * macs((32, 32, 16, 8))
    assert stem_flops['cifar_light'] == 2 * 9 * macs((32, 16, 8, 8))


def test_classifier_api():
    m = tiny()
    assert isinstance(m.get_classifier(), torch.nn.Linear) and m.get_classifier().out_features == 5
    m.reset_classifier(7)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    m.reset_classifier(0)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    m.reset_classifier(0, global_pool='')
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 32, 8, 8)
    m.reset_classifier(3)  # a classifier on an unpooled model brings back the mean over tokens
    assert m.global_pool == 'avg' and m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match='global_pool'):
        m.reset_classifier(3, global_pool='')
    with pytest.raises(ValueError, match='global_pool'):
        m.reset_classifier(3, global_pool='max')


def test_features_only_and_intermediates():
    f = timm.create_model('spikingformer_4_256', features_only=True, embed_dim=32, depth=3, num_heads=4, T=2)
    outs = f(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in outs] == [(2, 32, 8, 8)] * 3  # the last 3 of 4 levels: tokenizer + 3 blocks
    assert f.feature_info.channels() == [32] * 3 and f.feature_info.reduction() == [4] * 3
    assert f.feature_info.module_name() == ['blocks.0', 'blocks.1', 'blocks.2']
    f2 = timm.create_model('spikingformer_4_256', features_only=True, out_indices=(0, 2), embed_dim=32, depth=3,
                           num_heads=4, T=2)
    assert len(f2(torch.randn(1, 3, 32, 32))) == 2

    m = tiny(depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, indices=[0, 3])
        assert len(inter) == 2 and inter[0].shape == (2, 32, 8, 8)
        assert torch.equal(final, m.forward_features(x))
        assert torch.equal(inter[1], final)  # level 3 = the last block
        assert torch.equal(inter[0], m.patch_embed(x.unsqueeze(0), m.T).mean(0))  # level 0 = the tokenizer
        nlc = m.forward_intermediates(x, indices=1, output_fmt='NLC', intermediates_only=True)
        assert nlc[0].shape == (2, 64, 32)
    assert m.prune_intermediate_layers(indices=[2]) == [2]
    assert len(m.blocks) == 2 and isinstance(m.head, torch.nn.Identity)


def test_features_only_every_depth():
    # two blocks + the tokenizer: three feature levels (timm's default of the last 3 fits every depth)
    f = timm.create_model('spikingformer_2_384', features_only=True, embed_dim=32, num_heads=4)
    assert f.feature_info.module_name() == ['patch_embed', 'blocks.0', 'blocks.1']
    assert len(f(torch.randn(1, 3, 32, 32))) == 3
    clip = timm.create_model('spikingformer_clip', features_only=True, embed_dim=32, num_heads=4)
    assert len(clip(torch.randn(1, 3, 32, 32))) == 3  # the last 3 of its 4 blocks (out_indices for others)
    all5 = timm.create_model('spikingformer_clip', features_only=True, out_indices=(0, 1, 2, 3, 4), embed_dim=32,
                             num_heads=4)
    assert len(all5(torch.randn(1, 3, 32, 32))) == 5


def test_device_dtype_and_meta_then_to_empty():
    m = timm.create_model('spikingformer_clip', device='meta', dtype=torch.bfloat16)
    tensors = [*m.parameters(), *m.buffers()]
    assert {t.device.type for t in tensors} == {'meta'}
    assert {t.dtype for t in m.parameters()} == {torch.bfloat16}
    m.to_empty(device='cpu')
    assert {t.device.type for t in m.parameters()} == {'cpu'}
    ref = timm.create_model('spikingformer_clip')
    m.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    m.to(device='meta', dtype=torch.float64)
    m.reset_classifier(3)  # the new head follows the model's device and dtype
    assert m.head.weight.device.type == 'meta' and m.head.weight.dtype == torch.float64


def test_fx_trace_matches_eager():
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor
    m = tiny(depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    fx = create_feature_extractor(m, ['head'], tracer_kwargs=dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    with torch.no_grad():
        assert torch.equal(fx(x)['head'], m(x))
    # the neurons are single graph nodes
    targets = [n.target for n in fx.graph.nodes if n.op == 'call_module']
    assert 'patch_embed.stages.1.lif' in targets and 'blocks.0.mlp.fc1_lif' in targets


@pytest.mark.parametrize('T', [1, 3, 5])
def test_any_T(T):
    m = tiny(T=T).eval()
    assert m.forward_features_seq(torch.randn(2, 3, 32, 32)).shape[0] == T
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_encoded_sequence_input():
    m = tiny(T=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # A pre-encoded [T, B, C, H, W] sequence of the same image equals direct encoding.
        assert torch.allclose(m(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)), m(x), atol=1e-6)


def test_weighted_readout():
    m = tiny(readout='weighted', T=3).eval()
    ref = tiny(T=3).eval()
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith('readout')})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-6)  # starts as the mean
        m.readout.logits.copy_(torch.tensor([0., 0., 50.]))
        feats = m.forward_features_seq(x)
        last = m.head(feats[-1].flatten(2).mean(2))
        assert torch.allclose(m(x), last, atol=1e-5)  # normalised: all weight on the last step
    assert 'readout.logits' in m.no_weight_decay()
    m.T = 4
    with pytest.raises(ValueError, match="built for T=3"):
        m(x)


def test_reset_state_and_batch_invariance():
    m = tiny(depth=2).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        full = m(x)
        assert torch.equal(m(x), full)  # twice: no membrane potential carried over
        for i in range(6):
            assert torch.allclose(m(x[i:i + 1]), full[i:i + 1], atol=1e-5)
        other = torch.cat([torch.randn(3, 3, 32, 32), x[2:3]])
        assert torch.allclose(m(other)[-1], full[2], atol=1e-5)
    for mod in m.modules():
        if isinstance(mod, StatelessLIFNode):
            assert mod.step_mode == 'm'


def test_training_step_lowers_loss_and_grads_reach_stem():
    m = tiny(depth=1, T=2).train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for step in range(20):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            g = m.patch_embed.stages[0].conv.weight.grad
            assert g is not None and g.abs().sum() > 0  # surrogate gradients flow through every LIF
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}


def test_grad_checkpointing_same_gradients_and_bn_statistics():
    m = tiny(depth=2).train()
    x = torch.randn(4, 3, 32, 32)
    start = copy.deepcopy(m.state_dict())
    grads, stats = [], []
    for ckpt in (False, True):
        m.load_state_dict(start)
        m.set_grad_checkpointing(ckpt)
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
        stats.append(_bn_stats(m))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    # One training step updates BatchNorm's running statistics once, with or without checkpointing: the
    # recompute in backward must not apply the momentum a second time (it would with a plain checkpoint).
    assert len(stats[0]) > 10 and all(v.item() == 1 for k, v in stats[1].items() if 'num_batches' in k)
    for k in stats[0]:
        assert torch.allclose(stats[0][k], stats[1][k], atol=1e-6), k
    means = [v for k, v in stats[0].items() if k.endswith('running_mean')]
    assert means and all(v.abs().sum() > 0 for v in means)  # the step did update them (they start at zero)


def test_group_matcher_and_optimizer_factory():
    m = tiny()
    groups = timm.models.group_parameters(m, m.group_matcher(coarse=True))
    assert len(groups) == 1 + 2 + 1  # stem, 2 blocks, the rest (readout/head)
    assert all(n.startswith('patch_embed.') for n in groups[0])
    opt = timm.optim.create_optimizer_v2(m, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert len(opt.param_groups) > 1


def test_neuron_config():
    m = tiny(lif_cfg=dict(tau=3, surrogate='atan', v_threshold=0.8))
    lifs = [mod for mod in m.modules() if isinstance(mod, StatelessLIFNode)]
    assert lifs and all(l.tau == 3.0 and isinstance(l.tau, float) for l in lifs)
    assert all(type(l.surrogate_function).__name__ == 'ATan' for l in lifs)
    # the attention LIF keeps its own threshold (0.5), the others take the configured one
    assert m.blocks[0].attn.attn_lif.v_threshold == 0.5 and m.blocks[0].mlp.fc1_lif.v_threshold == 0.8
    default = tiny()
    l0 = default.blocks[0].mlp.fc1_lif
    assert (l0.tau, l0.v_threshold, l0.v_reset, l0.detach_reset) == (2.0, 1.0, 0.0, True)
    assert type(l0.surrogate_function).__name__ == 'Sigmoid' and l0.surrogate_function.alpha == 4.0


def test_pool_order_real_runs():
    m = tiny(pool_order='real').eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(T=0), 'T'),
    (dict(T=2.5), 'T'),
    (dict(readout='median'), 'readout'),
    (dict(stem='huge'), 'stem'),
    (dict(pool_order='sideways'), 'pool_order'),
    (dict(lif_cfg=dict(surrogate='relu')), 'surrogate'),
    (dict(lif_cfg=dict(taus=2.0)), 'taus'),
    (dict(img_size=30), 'multiples of 4'),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_input():
    m = tiny().eval()
    with pytest.raises(ValueError, match='input channels'):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='does not match the model input size 32x32'):
        m(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match='shape'):
        m(torch.randn(3, 32, 32))
    dyn = tiny(dynamic_img_size=True).eval()
    assert dyn(torch.randn(1, 3, 48, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match='multiples of 4'):
        dyn(torch.randn(1, 3, 30, 32))


def test_load_local_safetensors(tmp_path):
    src = tiny().eval()
    path = tmp_path / 'w.safetensors'
    save_file(src.state_dict(), str(path))
    m = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))


def test_load_local_dir(tmp_path):
    src = timm.create_model('spikingformer_clip', depth=1).eval()
    timm.models.save_for_hf(src, str(tmp_path), model_args=dict(depth=1))
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['architecture'] == 'spikingformer_clip'
    m = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))


def test_checkpoint_of_other_config_is_refused(tmp_path):
    path = tmp_path / 'other.safetensors'
    save_file(tiny(embed_dim=64).state_dict(), str(path))
    with pytest.raises(ValueError, match=r'shape mismatches: .*patch_embed\.stages\.0\.conv\.weight'):
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
    save_file(tiny(depth=1).state_dict(), str(path))
    with pytest.raises(ValueError, match=r'missing keys: blocks\.1\.'):
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5))


def test_reference_key_names_are_mapped(tmp_path):
    src = tiny().eval()
    sd = {}
    for k, v in src.state_dict().items():  # rename to Spikingformer's repository layout
        k = k.replace('blocks.', 'block.').replace('.mlp.fc1_', '.mlp.mlp1_').replace('.mlp.fc2_', '.mlp.mlp2_')
        k = k.replace('patch_embed.stages.0.', 'patch_embed.proj_')
        for i in range(1, 5):
            k = k.replace(f'patch_embed.stages.{i}.', f'patch_embed.proj{i}_')
        sd['module.' + k] = v
    path = tmp_path / 'ref.safetensors'
    save_file(sd, str(path))
    m = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=5)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))


def test_isinstance_and_package_exports():
    assert isinstance(tiny(), Spikingformer)
    assert timm_spike.LIFConfig().tau == 2.0
