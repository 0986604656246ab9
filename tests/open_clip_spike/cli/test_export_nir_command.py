"""``spikeclip export-nir``: SpikeCLIP and backbone exports, checkpoints, and bad input (one line, exit 2, no file)."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip('nir')
pytest.importorskip('nirtorch')

import open_clip  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import open_clip_spike  # noqa: E402,F401  (registers the SpikeCLIP configs)
from open_clip_spike.cli import export_nir as cli  # noqa: E402
from timm_spike import nir as tnir  # noqa: E402

IMG = 16
TINY_CONFIG = {
    'model_class': 'SpikeCLIP', 'custom_text': True, 'embed_dim': 32, 'T': 4, 'readout': 'mean',
    'vision_cfg': {'timm_model_name': 'sew_resnet18_clip', 'timm_model_kwargs': {'layers': [1, 1, 1, 1]},
                   'timm_pool': 'avg', 'timm_proj': '', 'image_size': IMG},
    'text_cfg': dict(context_length=8, vocab_size=100, width=16, hidden_dim=64),
}


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


def test_registered_as_spikeclip_subcommand(tmp_path, capsys):
    from open_clip_spike.cli import main as cli_main
    assert cli_main(['export-nir', 'sew_resnet18_cifar', '--out', str(tmp_path / 'c.nir')]) == 0
    assert f"image: {tmp_path / 'c.nir'}" in capsys.readouterr().out
    md = tnir.nir_metadata(tnir.read_nir(tmp_path / 'c.nir'))
    assert md['model_name'] == 'sew_resnet18_cifar' and md['T'] == 4 and list(md['input_shape']) == [3, 32, 32]
