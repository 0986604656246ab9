import json
import os

import pytest
import torch
import torch.nn.functional as F

import open_clip
from open_clip.model import CLIP, CustomTextCLIP
from open_clip_spike import MODEL_CONFIG_DIR, SpikeCLIP, SpikingTextMLP, list_spikeclip_models
from open_clip_spike.model import SpikingTimmModel

TINY = 'SpikeCLIP-Tiny'
PAPER = 'SpikeCLIP-Spikingformer-4-384'
TEACHER = 'SpikeCLIP-DemoTeacher'

REFERENCE_PARAMS = 56_872_376  # whole SpikeCLIP of the reference code (SpikeCLIP's public code)


def _cfg(name):
    with open(MODEL_CONFIG_DIR / f'{name}.json') as f:
        return json.load(f)


def test_configs_registered_with_open_clip():
    names = open_clip.list_models()
    for name in (PAPER, TINY, TEACHER):
        assert name in names
    # a subset: other configs (e.g. the -TextTransformer variants) ship beside these
    assert {PAPER, TINY, TEACHER, 'SpikeCLIP-Spikformer-4-384'} <= set(list_spikeclip_models()) <= set(names)
    tok = open_clip.get_tokenizer(PAPER)
    assert tok.context_length == 20
    assert tuple(tok(['a photo of a cat.']).shape) == (1, 20)


def test_paper_model_matches_reference_size():
    with torch.device('meta'):
        model = open_clip.create_model(PAPER, device='meta')
    assert isinstance(model, SpikeCLIP) and isinstance(model, CustomTextCLIP)
    assert isinstance(model.text, SpikingTextMLP) and isinstance(model.visual, SpikingTimmModel)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.01, total
    # text tower by its formula: token + position embedding, 10240->2048, 2048->512
    V, L, W, H, D = 49408, 20, 512, 2048, 512
    assert sum(p.numel() for p in model.text.parameters()) == V * W + L * W + L * W * H + H + H * D + D
    trunk = model.visual.trunk
    assert (trunk.T, trunk.embed_dim, len(trunk.blocks), trunk.img_size) == (4, 384, 4, (32, 32))
    assert model.T == 4 and model.text.T == 4
    assert model.visual.image_size == (32, 32)


def test_tiny_and_teacher_configs():
    tiny = open_clip.create_model(TINY)
    assert isinstance(tiny, SpikeCLIP) and tiny.embed_dim == 512
    assert tiny.visual.trunk.embed_dim < 384 and tiny.text.hidden_dim < 2048
    assert sum(p.numel() for p in tiny.parameters()) < 0.2 * REFERENCE_PARAMS
    teacher = open_clip.create_model(TEACHER)
    assert type(teacher) is CLIP  # an ordinary open_clip CLIP, trainable by the unmodified loop
    assert teacher.text_projection.shape[1] == 512 and teacher.visual.image_size == (32, 32)


def test_shapes_and_output_dict(tiny_model, tiny_tokenizer, images):
    text = tiny_tokenizer(['a photo of a cat.', 'a dog', 'a red car', 'shoes'])
    img = tiny_model.encode_image(images)
    txt = tiny_model.encode_text(text)
    assert img.shape == (4, 512) and txt.shape == (4, 512)
    assert torch.allclose(tiny_model.encode_image(images, normalize=True).norm(dim=-1), torch.ones(4))
    out = tiny_model(images, text)
    assert isinstance(out, tuple) and len(out) == 3
    tiny_model.output_dict = True
    out = tiny_model(images, text)
    assert set(out) == {'image_features', 'text_features', 'logit_scale'}
    assert torch.allclose(out['image_features'], F.normalize(img, dim=-1), atol=1e-6)
    assert torch.allclose(out['text_features'], F.normalize(txt, dim=-1), atol=1e-6)
    assert out['logit_scale'].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert tiny_model(image=images)['text_features'] is None


def test_text_tower_fires_at_init(tiny_model, tiny_tokenizer):
    # Both LIFs must spike at init, or every prompt maps to the same embedding.
    rates = {}
    for name in ('lif1', 'lif2'):
        getattr(tiny_model.text, name).register_forward_hook(
            lambda m, i, o, name=name: rates.__setitem__(name, o.mean().item()))
    emb = tiny_model.encode_text(tiny_tokenizer(['a photo of a cat.', 'a blurry photo of a truck.']), normalize=True)
    assert 0.01 < rates['lif1'] < 0.5 and 0.005 < rates['lif2'] < 0.5, rates
    assert (emb[0] @ emb[1]).item() < 0.99


def test_state_reset_same_input_alone_or_in_batch(calibrated_tiny_model, tiny_tokenizer, images):
    tiny_model = calibrated_tiny_model
    prompts = ['a photo of a cat.', 'a photo of a dog.', 'a photo of a frog.']
    tokens = tiny_tokenizer(prompts)
    first = tiny_model.encode_text(tokens[:1])
    assert torch.equal(first, tiny_model.encode_text(tokens[:1]))  # no membrane potential carried over
    batch = tiny_model.encode_text(tokens)
    assert torch.allclose(batch[0], first[0], atol=1e-5)
    alone = torch.cat([tiny_model.encode_text(tokens[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, alone, atol=1e-5)
    img_batch = tiny_model.encode_image(images)
    assert (F.normalize(img_batch, dim=-1) @ F.normalize(img_batch, dim=-1).T).min() < 0.99  # not degenerate
    img_alone = torch.cat([tiny_model.encode_image(images[i:i + 1]) for i in range(4)])
    assert torch.allclose(img_batch, img_alone, atol=1e-5)
    assert torch.equal(tiny_model.encode_image(images), img_batch)


def test_long_prompts_are_truncated(tiny_model, tiny_tokenizer):
    words = ' '.join(['very'] * 40)
    long_a = f'a photo of a {words} large cat.'
    long_b = f'a photo of a {words} small dog.'
    tokens = tiny_tokenizer([long_a, long_b])
    assert tokens.shape == (2, 20)
    emb = tiny_model.encode_text(tokens)
    # both prompts agree on their first 18 tokens, so truncation makes them identical
    assert torch.equal(emb[0], emb[1])
    with pytest.raises(ValueError, match='context length'):
        tiny_model.encode_text(open_clip.tokenize([long_a]))  # 77 tokens: not from this model's tokenizer
    # shorter token sequences are padded as the tokenizer would pad them
    short = tiny_tokenizer(['a cat'])
    assert torch.equal(tiny_model.encode_text(short[:, :6]), tiny_model.encode_text(short))


def test_lock_towers(tiny_model, tiny_tokenizer, images):
    tiny_model.train()
    tiny_model.lock_text_tower()
    assert not any(p.requires_grad for p in tiny_model.text.parameters())
    assert all(p.requires_grad for p in tiny_model.visual.parameters())
    out = tiny_model(images, tiny_tokenizer(['a', 'b', 'c', 'd']))
    (out[0] @ out[1].T).sum().backward()
    assert all(p.grad is None for p in tiny_model.text.parameters())
    assert tiny_model.visual.trunk.head.weight.grad is not None

    model = open_clip.create_model(TINY)
    model.lock_text_tower(unlocked_layers=1)
    assert not model.text.fc1.weight.requires_grad and model.text.fc2.weight.requires_grad
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())


def test_lock_image_tower_freezes_bn_stats(images):
    model = open_clip.create_model(TINY)
    model.lock_image_tower(freeze_bn_stats=True)
    model.train()
    bns = [m for m in model.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(bn.training for bn in bns)
    before = [bn.running_mean.clone() for bn in bns]
    model.encode_image(images)
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))


def test_time_steps_from_config_kwargs(images):
    model = open_clip.create_model(TINY, T=2).eval()
    assert model.T == 2 and model.visual.trunk.T == 2 and model.text.T == 2
    assert model.encode_image(images).shape == (4, 512)
    # top-level lif_cfg reaches every neuron of both towers
    from timm_spike.layers import is_spiking_neuron
    model = open_clip.create_model(TINY, lif_cfg=dict(tau=3.0))
    lifs = [m for m in model.modules() if is_spiking_neuron(m)]
    assert any(n.startswith('text.') for n, m in model.named_modules() if is_spiking_neuron(m))
    assert len(lifs) > 5 and all(m.tau == 3.0 for m in lifs)
    # a config written before the implementation became a run-time switch still loads; nothing of it is kept
    old = open_clip.create_model(TINY, lif_cfg=dict(tau=3.0, impl='spikingjelly'))
    assert old.visual.trunk.lif_cfg == model.visual.trunk.lif_cfg and not hasattr(lifs[0], 'impl')


def test_grad_checkpointing_gives_same_result(tiny_tokenizer):
    model = open_clip.create_model(TINY).train()
    tokens = tiny_tokenizer(['a photo of a cat.', 'a dog'])
    ref = model.encode_text(tokens)
    ref.square().sum().backward()
    ref_grad = model.text.fc1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model.encode_text(tokens)
    out.square().sum().backward()
    assert torch.equal(out, ref) and torch.allclose(model.text.fc1.weight.grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize('fmt', ['safetensors', 'pt', 'train_checkpoint'])
def test_checkpoint_round_trip(tmp_path, calibrated_tiny_model, tiny_tokenizer, images, fmt):
    tiny_model = calibrated_tiny_model
    with torch.no_grad():
        tiny_model.logit_scale.fill_(2.5)
    sd = tiny_model.state_dict()
    if fmt == 'safetensors':
        from safetensors.torch import save_file
        path = tmp_path / 'm.safetensors'
        save_file(sd, os.fspath(path))
    elif fmt == 'pt':
        path = tmp_path / 'm.pt'
        torch.save(sd, path)
    else:  # what open_clip_train writes (DDP prefix, optimizer state beside the weights)
        path = tmp_path / 'epoch_1.pt'
        torch.save({'epoch': 1, 'name': 'x', 'state_dict': {f'module.{k}': v for k, v in sd.items()}}, path)
    loaded, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=os.fspath(path))
    loaded.eval()
    text = tiny_tokenizer(['a photo of a cat.', 'a dog'])
    emb = tiny_model.encode_image(images)
    assert not torch.allclose(emb[0], emb[1])
    assert torch.equal(loaded.encode_image(images), emb)
    assert torch.equal(loaded.encode_text(text), tiny_model.encode_text(text))
    assert loaded.logit_scale.item() == 2.5
    assert preprocess.transforms[1].size == (32, 32)


def test_checkpoint_of_another_config_is_refused(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(ValueError, match=r'another model config.*shape mismatches.*text\.'):
        open_clip.create_model(PAPER, pretrained=path)
    with pytest.raises(ValueError, match='missing keys'):
        open_clip.create_model(TINY, T=2, readout='weighted', pretrained=path)


def test_bad_input_errors(tiny_model):
    with pytest.raises(RuntimeError, match='SpikeCLIP-Nope'):
        open_clip.create_model('SpikeCLIP-Nope')
    with pytest.raises(ValueError, match='Unknown SpikeCLIP vision_cfg keys'):
        SpikeCLIP(512, dict(_cfg(TINY)['vision_cfg'], layers=3), _cfg(TINY)['text_cfg'])
    with pytest.raises(ValueError, match='Unknown SpikeCLIP text_cfg keys'):
        SpikeCLIP(512, _cfg(TINY)['vision_cfg'], dict(_cfg(TINY)['text_cfg'], heads=8))
    vision = _cfg(TINY)['vision_cfg']
    vision['timm_model_kwargs']['T'] = 2
    with pytest.raises(ValueError, match='top level'):
        SpikeCLIP(512, vision, _cfg(TINY)['text_cfg'])
    with pytest.raises(ValueError, match='T'):
        open_clip.create_model(TINY, T=0)
    with pytest.raises(ValueError, match='token ids'):
        tiny_model.encode_text(torch.zeros(20, dtype=torch.long))


def test_other_custom_text_configs_still_build():
    # The factory patch must leave open_clip's own CustomTextCLIP configs alone.
    model = open_clip.create_model(TEACHER, force_custom_text=True)
    assert type(model) is CustomTextCLIP


def test_init_text_from_teacher(tiny_model, teacher_model):
    tiny_model.init_text_from_teacher(teacher_model)
    src = teacher_model.token_embedding.weight
    dst = tiny_model.text.token_embedding.weight
    scale = dst.std() / src.std()
    assert torch.allclose(dst, src * scale, rtol=1e-4, atol=1e-6)
    assert dst.std().item() == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(tiny_model.text.pos_embed, teacher_model.positional_embedding[:20] * scale,
                          rtol=1e-4, atol=1e-6)
    tiny_model.text.init_from_teacher(teacher_model, rescale=False)
    assert torch.equal(tiny_model.text.token_embedding.weight, src)
    paper_text = SpikingTextMLP(width=512, hidden_dim=8)
    with pytest.raises(ValueError, match='width'):
        paper_text.init_from_teacher(teacher_model)
    with pytest.raises(ValueError, match='token_embedding'):
        paper_text.init_from_teacher(torch.nn.Linear(2, 2))


def test_local_dir_config_builds_spikeclip(tmp_path, calibrated_tiny_model, tiny_tokenizer, images):
    # A config that is not a built-in (as a Hub or local-dir folder holds it) still builds SpikeCLIP.
    from safetensors.torch import save_file
    cfg = _cfg(TINY)
    cfg['T'] = 2
    (tmp_path / 'open_clip_config.json').write_text(json.dumps({'model_cfg': cfg, 'preprocess_cfg': {}}))
    model = calibrated_tiny_model
    save_file(model.state_dict(), os.fspath(tmp_path / 'open_clip_model.safetensors'))
    loaded = open_clip.create_model(f'local-dir:{tmp_path}').eval()
    assert isinstance(loaded, SpikeCLIP) and loaded.T == 2
    tok = open_clip.get_tokenizer(f'local-dir:{tmp_path}')
    assert tok.context_length == 20
    ref = open_clip.create_model(TINY, T=2)  # the same config and weights, built from the built-in name
    ref.load_state_dict(model.state_dict())
    ref.eval()
    assert torch.equal(loaded.encode_text(tok(['a cat'])), ref.encode_text(tiny_tokenizer(['a cat'])))
    assert torch.equal(loaded.encode_image(images), ref.encode_image(images))
    assert not torch.equal(loaded.encode_image(images), model.encode_image(images))  # T=2 vs T=4


def test_demo_teacher_trains_from_scratch(images):
    # The stage-0 teacher must learn with open_clip's own contrastive loss: a few steps on 8 pairs overfit them.
    from open_clip.loss import ClipLoss
    model = open_clip.create_model(TEACHER, output_dict=True).train()
    tok = open_clip.get_tokenizer(TEACHER)
    texts = tok([f'a photo of a {c}.' for c in ('cat', 'dog', 'car', 'ship', 'frog', 'bird', 'horse', 'truck')])
    x = torch.cat([images, images.flip(-1)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = ClipLoss()
    losses = []
    for _ in range(15):
        loss = loss_fn(**model(x, texts))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_paper_text_tower_fits_vit_b_16_teacher_embeddings():
    # The paper initialises the text embeddings from CLIP ViT-B/16's (shapes only: on the meta device).
    with torch.device('meta'):
        student = open_clip.create_model(PAPER, device='meta')
        teacher = open_clip.create_model('ViT-B-16', device='meta')
    student.init_text_from_teacher(teacher, rescale=False)
    assert student.text.pos_embed.shape == (20, 512) and teacher.positional_embedding.shape == (77, 512)
