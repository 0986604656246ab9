"""NIR export of SEW-ResNet towers: BN folding, graph structure, files, refusals, and agreement of the spikes
re-run in spikingjelly and snnTorch with this project's own forward (tiny configs, random weights)."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

nir = pytest.importorskip('nir')
pytest.importorskip('nirtorch')

import timm  # noqa: E402
import timm_spike  # noqa: E402,F401
from timm_spike import nir as tnir  # noqa: E402

IMG = 16


def calibrate_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN data-calibrated running statistics and affine parameters that make the LIFs fire often.

    BN folding is then exercised for real (running mean/var far from 0/1), and every layer has spikes to compare.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(8, model.in_chans, *model.img_size, generator=g))
        for bn in bns:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.8, 1.6, generator=g))
            bn.bias.copy_(torch.empty_like(bn.bias).uniform_(0.3, 1.0, generator=g))
    return model.eval()


def tiny_sew(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    args = dict(layers=(1, 1, 1, 1), img_size=IMG, num_classes=8, T=4)
    args.update(kwargs)
    return calibrate_bn(timm.create_model('sew_resnet18_clip', **args))


@pytest.fixture(scope='module')
def sew():
    return tiny_sew()


@pytest.fixture(scope='module')
def sew_file(sew, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('nir') / 'sew.nir')
    tnir.save_nir(sew, path)
    return path


@pytest.fixture(scope='module')
def images():
    return torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


def test_fold_conv_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 8, 8)
    folded = tnir.fold_conv_bn(conv, bn)
    assert folded.bias is not None
    torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_graph_structure_bn_folded_residuals_as_edges(sew):
    g = tnir.export_nir(sew)
    kinds = {type(n).__name__ for n in g.nodes.values()}
    assert kinds == {'Input', 'Output', 'Conv2d', 'LIF', 'AvgPool2d', 'Flatten', 'Affine'}
    lifs = [k for k, n in g.nodes.items() if isinstance(n, nir.LIF)]
    assert len(lifs) == sum(1 for m in sew.modules() if type(m).__name__ == 'StatelessLIFNode') == 12
    # every conv carries its folded BN: the weights are conv * gamma / sqrt(var + eps)
    bn = sew.layer1[0].bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    expect = (sew.layer1[0].conv1.weight.detach() * scale.view(-1, 1, 1, 1)).numpy()
    np.testing.assert_allclose(g.nodes['layer1_0_conv1'].weight, expect, rtol=1e-5, atol=1e-6)
    expect_b = (bn.bias - bn.running_mean * scale).detach().numpy()
    np.testing.assert_allclose(g.nodes['layer1_0_conv1'].bias, expect_b, rtol=1e-5, atol=1e-6)
    # the ADD of block layer1.0 (no downsample): its input (sn1) and its branch (layer1.0.sn2) both feed the
    # next block's two paths; NIR sums edges into a node
    into = {dst: sorted(src for src, d in g.edges if d == dst) for _, dst in g.edges}
    assert into['layer2_0_conv1'] == ['layer1_0_sn2', 'sn1']
    assert into['layer2_0_downsample_0'] == ['layer1_0_sn2', 'sn1']
    assert into['pool'] == ['layer4_0_downsample_sn', 'layer4_0_sn2']
    # the project's LIF (tau 2, threshold 1, hard reset to 0, decay_input) in NIR's form with dt
    for k in lifs:
        n = g.nodes[k]
        assert np.allclose(n.tau, 2.0 * tnir.NIR_DT) and np.allclose(n.r, 1.0)
        assert np.allclose(n.v_threshold, 1.0) and np.allclose(n.v_reset, 0.0) and np.allclose(n.v_leak, 0.0)
    assert g.nodes['layer4_0_sn2'].v_threshold.shape == (512, 2, 2)  # 16x16 input, three stride-2 stages
    assert list(g.nodes['pool'].kernel_size) == [2, 2]  # the mean over all tokens


def test_lif_mapping_without_decay_input():
    p = tnir.lif_to_nir(timm_spike.LIFConfig(tau=3.0, decay_input=False, v_threshold=0.5), dt=1e-3)
    assert p == dict(tau=3e-3, r=3.0, v_leak=0.0, v_threshold=0.5, v_reset=0.0)


def test_file_round_trip_and_metadata(sew, sew_file):
    g = tnir.read_nir(sew_file)
    ref = tnir.export_nir(sew)
    assert set(g.nodes) == set(ref.nodes)
    assert sorted(g.edges) == sorted(ref.edges)
    for k, n in ref.nodes.items():
        if hasattr(n, 'weight'):
            np.testing.assert_array_equal(g.nodes[k].weight, n.weight)
    md = tnir.nir_metadata(g)
    assert md['format'] == 'spikeclip-nir' and md['format_version'] == 1
    assert md['model_name'] == 'sew_resnet18_clip' and md['tower'] == 'image'
    assert md['T'] == 4 and md['dt'] == pytest.approx(1e-4)
    assert md['producer'] == f'spikeclip {tnir._project_version()}'
    assert (md['lif_tau'], md['lif_v_threshold'], md['lif_v_reset'], md['lif_decay_input']) == (2.0, 1.0, 0.0, True)
    assert list(md['input_shape']) == [3, IMG, IMG] and 'direct encoding' in md['input']
    np.testing.assert_allclose(md['readout_weights'], [0.25] * 4)
    assert md['neuron_map']['layer2_0_downsample_sn'] == 'layer2.0.downsample_sn'
    assert md['bn_folded'] is True
    assert g.nodes['layer1_0_sn1'].metadata == {'module': 'layer1.0.sn1'}


@pytest.mark.parametrize('loader', ['spikingjelly', 'snntorch'])
def test_simulators_reproduce_spikes_layer_by_layer(sew, sew_file, images, loader):
    if loader == 'snntorch':
        snntorch = pytest.importorskip('snntorch')
    sim = getattr(tnir, f'load_{loader}')(sew_file)
    if loader == 'snntorch':
        assert all(isinstance(m, snntorch.Leaky) for m in sim.neurons.values())  # snnTorch's own neuron
    ref = tnir.project_spikes(sew, lambda: sew(images))
    run = sim.run(images)
    assert run[0].shape == (3, 8)
    cmp = tnir.compare_runs(ref, run)
    assert len(cmp['layers']) == 12
    for name, layer in cmp['layers'].items():
        rate = layer['spikes_ref'] / layer['numel']
        assert 0.05 < rate < 0.8, (name, rate)  # every layer fires: the comparison is not of silence
        assert layer['identical'] == 1.0, (name, layer)
    assert cmp['max_abs_diff'] < 1e-5
    # a second run starts from rest again
    torch.testing.assert_close(sim.run(images)[0], run[0])


def test_weighted_readout_and_T_in_metadata():
    m = tiny_sew(readout='weighted')
    with torch.no_grad():
        m.readout.logits.copy_(torch.tensor([0.3, -0.2, 0.9, 0.0]))
    g = tnir.export_nir(m)
    md = tnir.nir_metadata(g)
    np.testing.assert_allclose(md['readout_weights'], m.readout.logits.softmax(0).detach().numpy(), rtol=1e-6)
    x = torch.randn(2, 3, IMG, IMG)
    cmp = tnir.compare_runs(tnir.project_spikes(m, lambda: m(x)), tnir.load_spikingjelly(g).run(x))
    assert cmp['min_identical'] == 1.0 and cmp['max_abs_diff'] < 1e-5
    with pytest.raises(ValueError, match='built for T=4'):
        tnir.export_nir(m, T=2)
    assert tnir.nir_metadata(tnir.export_nir(tiny_sew(), T=8))['T'] == 8


def test_stem_only_of_an_imagenet_stem():
    torch.manual_seed(0)
    m = calibrate_bn(timm.create_model('sew_resnet18', layers=(1, 1, 1, 1), img_size=32, num_classes=0))
    with pytest.raises(ValueError, match="'maxpool' is a max-pool"):
        tnir.export_nir(m)
    g = tnir.export_nir(m, stem_only=True)
    assert tnir.nir_metadata(g)['tower'] == 'image-stem'
    assert [k for k, n in g.nodes.items() if isinstance(n, nir.LIF)] == ['sn1']
    x = torch.randn(2, 3, 32, 32)
    ref = tnir.project_spikes(m, lambda: m(x))
    out, spikes = tnir.load_spikingjelly(g).run(x)
    assert set(spikes) == {'sn1'}
    assert torch.equal(spikes['sn1'], ref[1]['sn1'])
    torch.testing.assert_close(out, ref[1]['sn1'].mean(0))


@pytest.mark.parametrize('name,kwargs,layer', [
    ('spikingformer_clip', dict(embed_dim=32, depth=1, num_heads=2), 'blocks.0.attn'),
    ('spikformer_clip', dict(embed_dim=32, depth=1, num_heads=2), 'blocks.0.attn'),
    ('sdt_clip', dict(embed_dim=32, depth=1, num_heads=2), 'blocks.0.attn'),
    ('qkformer_clip', dict(embed_dim=32, depths=(1, 1, 1), num_heads=2), 'stage1.0.attn'),
])
def test_attention_towers_refused_with_layer_named(name, kwargs, layer, tmp_path):
    m = timm.create_model(name, **kwargs)
    out = tmp_path / 'x.nir'
    with pytest.raises(ValueError, match=rf"layer '{layer}' .*self-attention.*product of two signals"):
        tnir.save_nir(m, out)
    with pytest.raises(ValueError, match='max-pool'):
        tnir.export_nir(m, stem_only=True)
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_and_connection_and_soft_reset_refused():
    with pytest.raises(ValueError, match=r"cnf='AND'.*'layer1.0'.*product"):
        tnir.export_nir(tiny_sew(cnf='AND'))
    with pytest.raises(ValueError, match="'sn1' uses a soft reset"):
        tnir.export_nir(tiny_sew(lif_cfg=dict(v_reset=None)))


def test_malformed_files_give_clear_errors(sew_file, tmp_path):
    with pytest.raises(FileNotFoundError, match='No NIR file'):
        tnir.read_nir(tmp_path / 'missing.nir')
    text = tmp_path / 'text.nir'
    text.write_text('not a graph')
    with pytest.raises(ValueError, match='no HDF5 signature'):
        tnir.read_nir(text)
    data = open(sew_file, 'rb').read()
    cut = tmp_path / 'cut.nir'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='truncated or damaged'):
        tnir.read_nir(cut)
    with pytest.raises(ValueError, match='truncated or damaged'):
        tnir.load_snntorch(cut)
    foreign = tmp_path / 'foreign.nir'
    nir.write(str(foreign), nir.NIRGraph.from_list(nir.Affine(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))))
    with pytest.raises(ValueError, match='not one exported by spikeclip'):
        tnir.read_nir(foreign)
    assert isinstance(tnir.read_nir(foreign, require_metadata=False), nir.NIRGraph)


def test_write_is_atomic(sew, tmp_path, monkeypatch):
    path = tmp_path / 'out.nir'
    path.write_bytes(b'old')
    g = tnir.export_nir(sew)

    def broken_write(filename, graph):
        with open(filename, 'wb') as f:
            f.write(b'\x89HDF partial')
        raise OSError('disk full')

    monkeypatch.setattr(tnir.nir, 'write', broken_write)
    with pytest.raises(OSError, match='disk full'):
        tnir.write_nir(g, path)
    assert path.read_bytes() == b'old' and sorted(os.listdir(tmp_path)) == ['out.nir']
