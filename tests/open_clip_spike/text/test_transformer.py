"""The spiking transformer text tower (open_clip_spike.text.transformer) and its choice by config."""
import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from open_clip_spike import MODEL_CONFIG_DIR, SpikeCLIP, SpikingTextMLP, SpikingTextTransformer
from open_clip_spike.energy import spikeclip_energy_report
from open_clip_spike.loss import AlignmentLoss
from open_clip_spike.text import SpikingTextCfg
from timm_spike.energy import calibrate_bn

TT = 'SpikeCLIP-Tiny-TextTransformer'
PAPER_TT = 'SpikeCLIP-Spikingformer-4-384-TextTransformer'
PAPER_TEXT_PARAMS = 38_201_856  # stated in the README: 25.30M token embedding + 4 blocks of 3.16M + projection
PROMPTS = ['a photo of a cat.', 'a photo of a dog.', 'a blurry photo of a truck.', 'a frog', 'a ship at sea.']


def _cfg(name):
    with open(MODEL_CONFIG_DIR / f'{name}.json') as f:
        return json.load(f)


def _tower(**kw):
    """A small tower on CLIP's vocabulary (so the real tokenizer feeds it)."""
    args = dict(width=32, layers=1, heads=2, mlp_ratio=2., output_dim=16, T=2)
    args.update(kw)
    return SpikingTextTransformer(**args)


@pytest.fixture
def tok():
    return open_clip.get_tokenizer(TT)


@pytest.fixture
def model(tok):
    """SpikeCLIP-Tiny-TextTransformer, text BatchNorm statistics from a batch of prompts, eval mode."""
    m = open_clip.create_model(TT)
    calibrate_bn(m.text, [tok(PROMPTS + [p.upper() for p in PROMPTS])])
    return m.eval()


def _neuron_rates(module, fn):
    rates = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: rates.__setitem__(n, o.mean().item()))
             for n, m in module.named_modules() if type(m).__name__ == 'StatelessLIFNode']
    with torch.no_grad():
        fn()
    for h in hooks:
        h.remove()
    return rates


def test_configs_build_via_open_clip(tok):
    assert {TT, PAPER_TT} <= set(open_clip.list_models())
    model, _, preprocess = open_clip.create_model_and_transforms(TT)
    assert isinstance(model, SpikeCLIP) and isinstance(model.text, SpikingTextTransformer)
    text = model.text
    assert (text.width, text.layers, len(text.blocks), text.T, text.context_length) == (128, 2, 2, 4, 20)
    assert text.blocks[0].attn.num_heads == 4 and text.blocks[0].mlp.fc1_conv.out_channels == 512
    assert model.visual.trunk.embed_dim == 128  # the image tower of SpikeCLIP-Tiny
    assert model.context_length == 20 and model.vocab_size == 49408
    assert preprocess.transforms[1].size == (32, 32)
    assert tok.context_length == 20 and tuple(tok(PROMPTS).shape) == (5, 20)
    out = model.eval()(torch.randn(2, 3, 32, 32), tok(PROMPTS[:2]))
    assert tuple(out[0].shape) == tuple(out[1].shape) == (2, 512)
    assert torch.allclose(out[1].norm(dim=-1), torch.ones(2))
    # the MLP configs still build the MLP
    assert isinstance(open_clip.create_model('SpikeCLIP-Tiny').text, SpikingTextMLP)


def test_paper_config_parameter_count():
    with torch.device('meta'):
        model = open_clip.create_model(PAPER_TT, device='meta')
        paper = open_clip.create_model('SpikeCLIP-Spikingformer-4-384', device='meta')
    V, L, W, D, H = 49408, 20, 512, 512, 4 * 512
    # q, k, v (no bias) + proj convs, 4 BNs of the attention; fc1, fc2 convs + their BNs
    block = 3 * W * W + (W * W + W) + 4 * 2 * W + (W * H + H) + 2 * H + (H * W + W) + 2 * W
    n_text = sum(p.numel() for p in model.text.parameters())
    assert n_text == V * W + L * W + 4 * block + W * D + D == PAPER_TEXT_PARAMS
    assert len(model.text.blocks) == 4 and model.text.blocks[0].attn.num_heads == 8
    assert sum(p.numel() for p in model.visual.parameters()) == sum(p.numel() for p in paper.visual.parameters())


def test_text_cfg_round_trip_and_defaults():
    default = SpikingTextCfg()
    assert (default.arch, default.hidden_dim, default.layers, default.heads) == ('mlp', 2048, None, None)
    assert SpikingTextCfg.from_any(_cfg('SpikeCLIP-Tiny')['text_cfg']).to_dict() == dict(
        _cfg('SpikeCLIP-Tiny')['text_cfg'], arch='mlp', pad_id=0)  # no transformer keys added
    for name in ('SpikeCLIP-Tiny', 'SpikeCLIP-Spikingformer-4-384', TT, PAPER_TT):
        raw = _cfg(name)['text_cfg']
        cfg = SpikingTextCfg.from_any(raw)
        assert SpikingTextCfg.from_any(cfg.to_dict()) == cfg
        assert raw.items() <= cfg.to_dict().items()
        assert 'arch' not in cfg.tower_kwargs()
    tt = SpikingTextCfg.from_any({'arch': 'transformer'})
    assert (tt.layers, tt.heads, tt.mlp_ratio, tt.hidden_dim) == (4, 8, 4.0, None)
    assert set(tt.tower_kwargs()) == {'context_length', 'vocab_size', 'width', 'pad_id', 'layers', 'heads',
                                      'mlp_ratio'}
    # tokenizer keys open_clip reads are accepted and not passed on
    assert 'hf_tokenizer_name' not in SpikingTextCfg.from_any(dict(raw, hf_tokenizer_name='')).to_dict()


@pytest.mark.parametrize('text_cfg, message', [
    ({'arch': 'lstm'}, r"text_cfg arch 'lstm'; choose one of \['mlp', 'transformer'\]"),
    ({'heads': 8}, r"keys \['heads'\] for arch 'mlp': they belong to arch 'transformer'"),
    ({'arch': 'transformer', 'hidden_dim': 512}, r"keys \['hidden_dim'\] for arch 'transformer'.*'mlp'"),
    ({'arch': 'transformer', 'layers': 0}, 'layers must be > 0'),
    ({'arch': 'transformer', 'depth': 2}, r"Unknown SpikeCLIP text_cfg keys \['depth'\]"),
    ({'arch': 'transformer', 'width': 130, 'heads': 4}, 'width 130 must be divisible by heads 4'),
])
def test_text_cfg_errors(text_cfg, message):
    base = dict(context_length=20, vocab_size=49408, width=128)
    with pytest.raises(ValueError, match=message):
        SpikeCLIP(512, _cfg(TT)['vision_cfg'], dict(base, **text_cfg))


def test_shapes_padding_truncation_and_pooling_mask(tok):
    tower = _tower().eval()
    tokens = tok(['a cat', 'a dog', 'the cat!'])
    out = tower(tokens)
    assert tuple(out.shape) == (3, 16)
    assert torch.equal(tower(tokens[:, :7]), out)  # shorter id rows are padded as the tokenizer pads them
    with pytest.raises(ValueError, match='token ids of shape'):
        tower(tokens[None])
    with pytest.raises(ValueError, match='context length'):
        tower(open_clip.tokenize(['a cat']))  # 77 tokens: not from this model's tokenizer
    # pooling covers start-of-text .. end-of-text, including an id equal to the pad id inside the prompt
    ids = torch.tensor([[49406, 320, 0, 2368, 49407] + [0] * 15, [49406, 49407] + [0] * 18])
    _, mask = tower.embed(ids)
    assert mask.tolist()[0] == [True] * 5 + [False] * 15 and mask.sum(1).tolist() == [5, 2]
    # the pad slots do not enter the pooled mean: the result equals the masked mean of the token states
    x, _ = tower.embed(ids)
    states = tower.forward_features(x).flatten(3)  # [T, B, W, L]
    expected = tower.proj(states[..., :5].mean(-1).mean(0)[0])
    assert torch.allclose(tower(ids)[0], expected, atol=1e-6)


def test_reset_batch_and_class_order_independence(model, tok):
    tokens = tok(PROMPTS)
    rates = _neuron_rates(model.text, lambda: model.encode_text(tokens))
    assert len(rates) == 14 and all(0 <= r <= 1 for r in rates.values())
    assert min(rates[f'blocks.{i}.mlp.fc2_lif'] for i in range(2)) > 0.005, rates  # the blocks are not silent
    first = model.encode_text(tokens[:1])
    assert torch.equal(first, model.encode_text(tokens[:1]))
    model.encode_text(tok(['something else entirely', 'and more']))
    assert torch.equal(first, model.encode_text(tokens[:1]))  # nothing carried over from other calls
    batch = model.encode_text(tokens)
    alone = torch.cat([model.encode_text(tokens[i:i + 1]) for i in range(len(PROMPTS))])
    assert torch.allclose(batch, alone, atol=1e-5)
    emb = F.normalize(batch, dim=-1)
    assert (emb @ emb.T - torch.eye(len(PROMPTS))).max() < 0.99  # prompts get different embeddings
    # class embeddings as zero-shot classification builds them: any class order, any batching
    names = ['cat', 'dog', 'truck', 'frog', 'ship']
    templates = ['a photo of a {}.', 'a {}.']
    kw = dict(tokenizer=tok, templates=templates, device='cpu')
    a = open_clip.build_zero_shot_classifier(model, classnames=names, num_classes_per_batch=5, **kw)
    b = open_clip.build_zero_shot_classifier(model, classnames=names[::-1], num_classes_per_batch=2, **kw)
    assert torch.allclose(a, b.flip(1), atol=1e-5)
    # in training mode BatchNorm uses the batch's statistics: that is why class embeddings are built in eval mode
    model.text.train()
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(tokens)[:1], model.encode_text(tokens[:1]), atol=1e-3)


def test_time_steps(model, tok):
    tokens = tok(PROMPTS[:2])
    ref = model.encode_text(tokens)
    t2 = open_clip.create_model(TT, T=2)
    t2.load_state_dict(model.state_dict())
    t2.eval()
    assert t2.text.T == 2 and t2.text.readout.T == 2 and t2.T == 2
    out = t2.encode_text(tokens)
    assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-3)
    assert tuple(_tower(T=1).eval()(tokens).shape) == (2, 16)
    weighted = _tower(readout='weighted').eval()
    weighted.T = 3
    with pytest.raises(ValueError, match="readout='weighted' was built for T=2"):
        weighted(tokens)
    with pytest.raises(ValueError, match='T'):
        _tower(T=0)


def test_training_step_lowers_alignment_loss(tok):
    model = open_clip.create_model(TT, output_dict=True).train()
    model.lock_image_tower()
    tokens = tok(PROMPTS)
    target = torch.randn(len(PROMPTS), 512, generator=torch.Generator().manual_seed(3))
    loss_fn = AlignmentLoss(image_weight=0, text_weight=1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def loss():
        out = model(None, tokens)
        return loss_fn(**out, dist_text_features=target)

    before = loss()
    before.backward()
    text = model.text
    grad = text.token_embedding.weight.grad
    used = tokens.unique()
    assert grad[used].abs().sum(1).min() > 0  # every token of the batch learns, through every block
    mask = torch.ones(grad.shape[0], dtype=torch.bool)
    mask[used] = False
    assert grad[mask].abs().sum() == 0
    assert text.pos_embed.grad.abs().sum() > 0
    # q, k, v learn through the attention LIF's surrogate gradient even while it is silent (as it mostly is at
    # init, see SpikingTextTransformer); proj_conv's weights only once it fires, so they are not checked.
    for name, p in text.named_parameters():
        if name.endswith(('q_conv.weight', 'k_conv.weight', 'v_conv.weight', 'fc1_conv.weight', 'fc2_conv.weight')):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item() - 1e-3, (before.item(), after.item())


def test_grad_checkpointing_gives_same_result(tok):
    tower = _tower(layers=2).train()
    tokens = tok(PROMPTS[:3])
    start = {k: v.clone() for k, v in tower.state_dict().items()}
    ref = tower(tokens)
    ref.square().sum().backward()
    ref_grad = tower.blocks[0].attn.q_conv.weight.grad.clone()
    ref_stats = {k: v.clone() for k, v in tower.state_dict().items() if 'running' in k or 'num_batches' in k}
    tower.load_state_dict(start)
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    out = tower(tokens)
    out.square().sum().backward()
    assert torch.equal(out, ref)
    assert torch.allclose(tower.blocks[0].attn.q_conv.weight.grad, ref_grad, atol=1e-6)
    stats = {k: v for k, v in tower.state_dict().items() if k in ref_stats}
    assert len(stats) > 4 and all(torch.allclose(stats[k], ref_stats[k], atol=1e-6) for k in stats)  # BN once
    assert tower.no_weight_decay() == {'pos_embed', 'readout.logits'}


def test_init_from_teacher(teacher_model):
    model = open_clip.create_model(TT)
    model.init_text_from_teacher(teacher_model)  # DemoTeacher: an open_clip CLIP with a 128-wide text tower
    src = teacher_model.token_embedding.weight
    dst = model.text.token_embedding.weight
    scale = dst.std() / src.std()
    assert dst.std().item() == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(dst, src * scale, rtol=1e-4, atol=1e-6)
    assert torch.allclose(model.text.pos_embed, teacher_model.positional_embedding[:20] * scale, rtol=1e-4, atol=1e-6)
    model.text.init_from_teacher(teacher_model, rescale=False)
    assert torch.equal(model.text.token_embedding.weight, src)
    with pytest.raises(ValueError, match='width'):
        _tower().init_from_teacher(teacher_model)
    with pytest.raises(ValueError, match='token_embedding'):
        model.text.init_from_teacher(torch.nn.Linear(2, 2))
    with torch.device('meta'):  # the paper config fits CLIP ViT-B/16's embeddings (shapes only)
        paper = open_clip.create_model(PAPER_TT, device='meta')
        vit = open_clip.create_model('ViT-B-16', device='meta')
    paper.init_text_from_teacher(vit, rescale=False)
    assert paper.text.pos_embed.shape == (20, 512)


def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _bn_stats(block):
    return torch.cat([m.running_mean for m in _bns(block)])


def test_lock(tok):
    model = open_clip.create_model(TT)
    model.lock_text_tower()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())
    model.train()
    assert not any(m.training for m in _bns(model.text.blocks))  # frozen statistics too
    tokens = tok(PROMPTS)
    stats = [_bn_stats(b).clone() for b in model.text.blocks]
    out = model(torch.randn(5, 3, 32, 32), tokens)
    (out[0] @ out[1].T).sum().backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert all(torch.equal(s, _bn_stats(b)) for s, b in zip(stats, model.text.blocks))
    with torch.no_grad():  # a frozen tower in training mode is batch independent again
        assert torch.allclose(model.encode_text(tokens)[:1], model.encode_text(tokens[:1]), atol=1e-5)

    model = open_clip.create_model(TT)
    model.lock_text_tower(unlocked_layers=2)  # groups: embeddings, block 0, block 1, readout + projection
    text = model.text
    assert not text.token_embedding.weight.requires_grad and not text.blocks[0].attn.q_conv.weight.requires_grad
    assert text.blocks[1].attn.q_conv.weight.requires_grad and text.proj.weight.requires_grad
    model.train()
    assert not text.blocks[0].attn.q_bn.training and text.blocks[1].attn.q_bn.training
    model.eval()
    assert not text.blocks[1].attn.q_bn.training
    model.text.lock(unlocked_layers=1, freeze_layer_norm=False)
    model.train()
    assert all(m.training for m in _bns(text.blocks))
    assert not text.blocks[1].attn.q_conv.weight.requires_grad and text.proj.weight.requires_grad


def test_checkpoint_round_trip(tmp_path, model, tok, tiny_checkpoint):
    from safetensors.torch import save_file
    path = os.fspath(tmp_path / 'tt.safetensors')
    save_file(model.state_dict(), path)
    loaded = open_clip.create_model(TT, pretrained=path).eval()
    tokens = tok(PROMPTS)
    emb = model.encode_text(tokens)
    assert torch.equal(loaded.encode_text(tokens), emb)
    assert torch.equal(loaded.text.blocks[0].attn.q_bn.running_var, model.text.blocks[0].attn.q_bn.running_var)
    assert not torch.equal(emb, open_clip.create_model(TT).eval().encode_text(tokens))  # the weights matter
    mlp_path, _ = tiny_checkpoint  # SpikeCLIP-Tiny (MLP text tower) weights
    with pytest.raises(ValueError, match=r'another model config.*text\.'):
        open_clip.create_model(TT, pretrained=mlp_path)


def test_energy_report(model, tok):
    images = torch.randn(2, 3, 32, 32)
    calibrate_bn(model.visual, [images])
    tokens = tok(PROMPTS)
    r = spikeclip_energy_report(model, images, tokens, model_name=TT, batch_size=2, progress=False).text
    assert r.T == 4 and r.num_samples == 5 and r.input_size == [20]
    assert r.sops > 0 and r.energy_mj > 0
    assert len(r.neurons) == 14 and all(0 <= v <= 1 for v in r.neurons.values()) and r.mean_firing_rate > 0
    layers = {l.name: l for l in r.layers}
    W, D, L, T = 128, 512, 20, 4
    q = layers['blocks.0.attn.q_conv']
    assert q.input == 'spikes' and q.macs == 0 and q.dense_macs == T * L * W * W
    assert q.firing_rate == pytest.approx(r.neurons['blocks.0.attn.in_lif'])
    assert layers['blocks.1.mlp.fc2_conv'].input == 'spikes'
    assert all(l.input == 'spikes' for name, l in layers.items() if name.startswith('blocks.'))
    # the projection reads the real-valued pooled tokens: the only MACs
    assert layers['proj'].input == 'real' and layers['proj'].macs == W * D and r.macs == W * D
