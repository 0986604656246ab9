"""NIR export of SpikeCLIP: the spiking MLP text tower (input: token embeddings), a whole SpikeCLIP as two graphs,
agreement in spikingjelly and snnTorch (spikes per layer, embeddings, zero-shot top-1)."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

nir = pytest.importorskip('nir')
pytest.importorskip('nirtorch')


from open_clip_spike import SpikeCLIP, SpikingTextMLP  # noqa: E402
from open_clip_spike import nir as onir  # noqa: E402
from timm_spike import nir as tnir  # noqa: E402

IMG = 16
TEXT_CFG = dict(context_length=8, vocab_size=100, width=16, hidden_dim=64)


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Data-calibrated BN statistics and affine parameters that make every image-tower layer fire."""
    g = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
        for bn in bns:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.8, 1.6, generator=g))
            bn.bias.copy_(torch.empty_like(bn.bias).uniform_(0.3, 1.0, generator=g))
    return model.eval()


@pytest.fixture(scope='module')
def clip_model():
    torch.manual_seed(0)
    m = SpikeCLIP(embed_dim=32, T=4, readout='weighted', text_cfg=TEXT_CFG,
                  vision_cfg=dict(timm_model_name='sew_resnet18_clip', timm_model_kwargs=dict(layers=(1, 1, 1, 1)),
                                  image_size=IMG, timm_proj='linear'))
    with torch.no_grad():  # a non-uniform readout over T, the same in both towers' metadata
        m.visual.trunk.readout.logits.copy_(torch.tensor([0.2, -0.4, 0.6, 0.1]))
        m.text.readout.logits.copy_(torch.tensor([0.5, 0.0, -0.3, 0.2]))
    calibrate_bn(m.visual.trunk, torch.randn(8, 3, IMG, IMG))
    return m.eval()


@pytest.fixture(scope='module')
def clip_files(clip_model, tmp_path_factory):
    return onir.save_spikeclip_nir(clip_model, tmp_path_factory.mktemp('nir') / 'clip.nir', model_name='tiny')


@pytest.fixture(scope='module')
def prompts():
    return torch.randint(1, TEXT_CFG['vocab_size'], (10, 6), generator=torch.Generator().manual_seed(2))


def test_two_files_with_metadata(clip_model, clip_files):
    assert {k: os.path.basename(v) for k, v in clip_files.items()} == {'image': 'clip.image.nir',
                                                                        'text': 'clip.text.nir'}
    text = tnir.nir_metadata(tnir.read_nir(clip_files['text']))
    image = tnir.nir_metadata(tnir.read_nir(clip_files['image']))
    assert text['tower'] == 'text' and image['tower'] == 'image'
    assert text['model_name'] == 'tiny/text' and text['clip_model'] == 'tiny'
    assert text['T'] == image['T'] == 4
    assert 'token embeddings, not token ids' in text['input'] and 'not part of the graph' in text['input']
    assert list(text['input_shape']) == [8 * 16]
    assert (text['context_length'], text['embed_width'], text['vocab_size'], text['pad_id']) == (8, 16, 100, 0)
    np.testing.assert_allclose(text['readout_weights'],
                               clip_model.text.readout.logits.softmax(0).detach().numpy(), rtol=1e-6)
    assert text['neuron_map'] == {'lif1': 'lif1', 'lif2': 'lif2'}
    assert image['clip_logit_scale'] == pytest.approx(1 / 0.07, rel=1e-5)
    g = tnir.read_nir(clip_files['text'])
    assert [type(g.nodes[k]).__name__ for k in ('lif1', 'fc1', 'lif2', 'fc2')] == ['LIF', 'Affine', 'LIF', 'Affine']
    assert sorted(g.edges) == sorted([('x', 'lif1'), ('lif1', 'fc1'), ('fc1', 'lif2'), ('lif2', 'fc2'),
                                      ('fc2', 'output')])
    # the image tower's extra projection (timm_proj='linear', no bias) follows the head
    gi = tnir.read_nir(clip_files['image'])
    assert isinstance(gi.nodes['proj'], nir.Linear) and gi.nodes['proj'].weight.shape == (32, 512)


@pytest.mark.parametrize('loader', ['spikingjelly', 'snntorch'])
def test_text_tower_spikes_and_embeddings_agree(clip_model, clip_files, prompts, loader):
    if loader == 'snntorch':
        pytest.importorskip('snntorch')
    text = clip_model.text
    ref = tnir.project_spikes(text, lambda: text(prompts))
    run = getattr(tnir, f'load_{loader}')(clip_files['text']).run(text.embed(prompts))
    cmp = tnir.compare_runs(ref, run)
    assert set(cmp['layers']) == {'lif1', 'lif2'}
    for name, layer in cmp['layers'].items():
        assert 0.02 < layer['spikes_ref'] / layer['numel'] < 0.8, name
        assert layer['identical'] == 1.0, (name, layer)
    assert cmp['max_abs_diff'] < 1e-5


def test_zero_shot_top1_agrees(clip_model, clip_files, prompts):
    pytest.importorskip('snntorch')
    images = torch.randn(12, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img_ref = F.normalize(clip_model.encode_image(images), dim=-1)
        txt_ref = F.normalize(clip_model.encode_text(prompts), dim=-1)
    top1_ref = (img_ref @ txt_ref.T).argmax(-1)
    ref_spikes = tnir.project_spikes(clip_model.visual, lambda: clip_model.visual(images), prefix='trunk.')
    runs = {}
    for name in ('spikingjelly', 'snntorch'):
        load = getattr(tnir, f'load_{name}')
        runs[name] = load(clip_files['image']).run(images)
        img = F.normalize(runs[name][0], dim=-1)
        txt = F.normalize(load(clip_files['text']).run(clip_model.text.embed(prompts))[0], dim=-1)
        assert (txt - txt_ref).abs().max() < 1e-5  # no BN in the text tower: the same spikes, the same floats
        # BN folded into the convolutions rounds differently in float32 (about 1e-7 relative): a membrane that
        # close to the threshold flips a spike, which can spread downstream. Bounded, not exact:
        cmp = tnir.compare_runs(ref_spikes, runs[name])
        assert cmp['min_identical'] > 0.99, cmp['layers']
        assert ((img @ txt.T).argmax(-1) == top1_ref).float().mean() >= 0.9
    # the two simulators run the same folded graph: they agree with each other spike for spike
    between = tnir.compare_runs(runs['spikingjelly'], runs['snntorch'])
    assert between['min_identical'] == 1.0 and between['max_abs_diff'] < 1e-5


def test_standalone_text_tower_and_text_transformer_refused(tmp_path):
    torch.manual_seed(0)
    tower = SpikingTextMLP(output_dim=12, T=2, **TEXT_CFG).eval()
    g = onir.export_text_nir(tower)
    assert tnir.nir_metadata(g)['T'] == 2
    ids = torch.randint(1, 100, (3, 8))
    cmp = tnir.compare_runs(tnir.project_spikes(tower, lambda: tower(ids)),
                            tnir.load_spikingjelly(g).run(tower.embed(ids)))
    assert cmp['min_identical'] == 1.0 and cmp['max_abs_diff'] < 1e-5
    m = SpikeCLIP(embed_dim=16, T=2, vision_cfg=dict(timm_model_name='sew_resnet18_clip', image_size=IMG,
                                                      timm_model_kwargs=dict(layers=(1, 1, 1, 1))),
                  text_cfg=dict(arch='transformer', context_length=8, vocab_size=100, width=16, layers=1, heads=2))
    with pytest.raises(ValueError, match=r"SpikingTextTransformer .*layer '.*attn' is spiking self-attention"):
        onir.save_spikeclip_nir(m, tmp_path / 'x.nir')
    assert os.listdir(tmp_path) == []  # the image tower was exportable, yet nothing is written
    paths = onir.save_spikeclip_nir(m, tmp_path / 'x.nir', towers='image')
    assert paths == {'image': str(tmp_path / 'x.nir')} and tnir.read_nir(paths['image'])


def test_attention_image_tower_refused():
    m = SpikeCLIP(embed_dim=16, T=2, text_cfg=TEXT_CFG, vision_cfg=dict(
        timm_model_name='spikingformer_clip', image_size=IMG, timm_model_kwargs=dict(embed_dim=32, depth=1,
                                                                                     num_heads=2)))
    with pytest.raises(ValueError, match="layer 'blocks.0.attn'"):
        onir.export_spikeclip_nir(m, towers='image')
    assert set(onir.export_spikeclip_nir(m, towers='text')) == {'text'}
    with pytest.raises(ValueError, match='Unknown tower'):
        onir.export_spikeclip_nir(m, towers='audio')


def test_verify_spikeclip_nir_report(clip_model, clip_files, prompts):
    pytest.importorskip('snntorch')
    images = torch.randn(6, 3, IMG, IMG, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    res = onir.verify_spikeclip_nir(clip_model, clip_files, images, prompts, labels, prompts_per_class=2,
                                    batch_size=4)
    assert res['n'] == 6 and 0.0 <= res['project']['top1'] <= 1.0
    for name in ('spikingjelly', 'snntorch'):
        r = res[name]
        assert set(r['text_layers']) == {'lif1', 'lif2'} and len(r['image_layers']) == 12
        assert all(v['identical'] == 1.0 for v in r['text_layers'].values()) and r['max_text_diff'] < 1e-5
        assert all(v['identical'] > 0.99 and 0 < v['firing_rate'] < 1 for v in r['image_layers'].values())
        assert r['top1_agreement'] >= 5 / 6 and 0.0 <= r['top1'] <= 1.0
