"""NIR export of SpikeCLIP: the spiking MLP text tower (input: token embeddings), a whole SpikeCLIP as two graphs,
agreement in spikingjelly and snnTorch (spikes per layer, embeddings, zero-shot top-1), and ``spikeclip export-nir``."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

nir = pytest.importorskip('nir')
pytest.importorskip('nirtorch')

import open_clip  # noqa: E402
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import open_clip_spike  # noqa: E402
from open_clip_spike import SpikeCLIP, SpikingTextMLP  # noqa: E402
from open_clip_spike import nir as onir  # noqa: E402
from open_clip_spike.cli import export_nir as cli  # noqa: E402
from timm_spike import nir as tnir  # noqa: E402

IMG = 16
TEXT_CFG = dict(context_length=8, vocab_size=100, width=16, hidden_dim=64)
TINY_CONFIG = {
    'model_class': 'SpikeCLIP', 'custom_text': True, 'embed_dim': 32, 'T': 4, 'readout': 'mean',
    'vision_cfg': {'timm_model_name': 'sew_resnet18_clip', 'timm_model_kwargs': {'layers': [1, 1, 1, 1]},
                   'timm_pool': 'avg', 'timm_proj': '', 'image_size': IMG},
    'text_cfg': TEXT_CFG,
}


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


# ---- the command ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_config_name(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'SpikeCLIP-NIRTest.json'
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(path))
    return 'SpikeCLIP-NIRTest'


def test_cli_spikeclip_both_towers_with_checkpoint(tiny_config_name, tmp_path, capsys):
    torch.manual_seed(5)
    model = open_clip.create_model(tiny_config_name)
    ckpt = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    rc = cli.main([tiny_config_name, '--checkpoint', str(ckpt), '--T', '2', '--out', str(tmp_path / 'm.nir')])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"text: {tmp_path / 'm.text.nir'}" in out
    g = tnir.read_nir(tmp_path / 'm.text.nir')
    np.testing.assert_array_equal(g.nodes['fc2'].weight, model.text.fc2.weight.detach().numpy())
    md = tnir.nir_metadata(g)
    assert md['T'] == 2 and md['model_name'] == f'{tiny_config_name}/text'
    assert tnir.nir_metadata(tnir.read_nir(tmp_path / 'm.image.nir'))['timm_model_name'] == 'sew_resnet18_clip'
    rc = cli.main([tiny_config_name, '--tower', 'text', '--out', str(tmp_path / 'only.nir')])
    assert rc == 0 and os.path.exists(tmp_path / 'only.nir')


@pytest.mark.parametrize('args,message', [
    (['spikformer_clip'], "layer 'blocks.0.attn'"),
    (['no_such_model'], "unknown model 'no_such_model'"),
    (['sew_resnet18_clip', '--tower', 'text'], 'use --tower image'),
    (['sew_resnet18', ], "'maxpool' is a max-pool"),
    (['sew_resnet18_clip', '--checkpoint', 'missing.safetensors'], 'Checkpoint not found'),
    (['sew_resnet18_clip', '--T', '0'], '--T must be >= 1'),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(args + ['--out', 'out.nir'])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith('spikeclip export-nir: error: ') and message in err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert os.listdir(tmp_path) == []


def test_cli_checkpoint_of_another_model(tmp_path, capsys):
    bad = tmp_path / 'bad.safetensors'
    save_file({'conv1.weight': torch.zeros(3)}, str(bad))
    assert cli.main(['sew_resnet18_cifar', '--checkpoint', str(bad), '--out', str(tmp_path / 'o.nir')]) == 2
    err = capsys.readouterr().err
    assert 'does not fit this model' in err and err.count('\n') == 1
    assert not os.path.exists(tmp_path / 'o.nir')
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00' * 100)
    assert cli.main(['sew_resnet18_cifar', '--checkpoint', str(garbage), '--out', str(tmp_path / 'o.nir')]) == 2
    assert 'Could not read checkpoint' in capsys.readouterr().err


def test_cli_backbone_and_stem_only(tmp_path):
    assert cli.main(['sew_resnet18', '--stem-only', '--out', str(tmp_path / 'stem.nir')]) == 0
    md = tnir.nir_metadata(tnir.read_nir(tmp_path / 'stem.nir'))
    assert md['tower'] == 'image-stem' and md['model_name'] == 'sew_resnet18'
