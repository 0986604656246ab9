"""``spikeclip ablate``: the grid, the generated configs, and a tiny end-to-end run on the committed subset."""
import json
import os
from pathlib import Path

import open_clip
import pytest

from open_clip_spike.cli.ablate import main as ablate_main
from open_clip_spike.experiments import ablate
from open_clip_spike.factory import CONFIG_PATH_ENV

FIXTURE = str(Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist')


def test_grids():
    paper = ablate.ablation_grid('paper')
    assert paper[:len(ablate.IMAGE_TOWERS)] == [(i, 'mlp') for i in ablate.IMAGE_TOWERS]
    assert paper[len(ablate.IMAGE_TOWERS):] == [('spikingformer', 'transformer')]
    assert len(ablate.ablation_grid('full')) == len(ablate.IMAGE_TOWERS) * len(ablate.TEXT_TOWERS)
    assert ablate.ablation_grid('paper', ['sdt', 'qkformer'], ['transformer']) == [('sdt', 'transformer'),
                                                                                   ('qkformer', 'transformer')]
    with pytest.raises(ValueError, match=r"Unknown image towers \['vgg'\]"):
        ablate.ablation_grid('paper', ['vgg'])
    with pytest.raises(ValueError, match='Unknown grid'):
        ablate.ablation_grid('half')


def test_configs_swap_only_the_towers_and_build(tmp_path, monkeypatch):
    pairs = ablate.ablation_grid('full')
    names = ablate.write_ablation_configs(pairs, str(tmp_path))
    tiny = json.loads((ablate.MODEL_CONFIG_DIR / 'SpikeCLIP-Tiny.json').read_text())
    open_clip.add_model_config(tmp_path)
    for (image, text), name in zip(pairs, names):
        cfg = json.loads((tmp_path / f'{name}.json').read_text())
        assert {k: v for k, v in cfg.items() if k not in ('vision_cfg', 'text_cfg')} == \
            {k: v for k, v in tiny.items() if k not in ('vision_cfg', 'text_cfg')}
        assert cfg['vision_cfg']['timm_model_name'] == ablate.IMAGE_TOWERS[image][0]
        assert (cfg['text_cfg'].get('arch', 'mlp')) == text
        params = ablate._params(name)
        assert params['image'] > 1e5 and params['text'] > 1e6
    # the configs reach subprocesses through the environment; a missing folder there is a clear error
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path / 'missing'))
    from open_clip_spike.factory import register_model_configs
    with pytest.raises(FileNotFoundError, match='does not exist'):
        register_model_configs()


def test_tiny_ablation_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_PATH_ENV, '')
    out = tmp_path / 'abl'
    args = ['--out', str(out), '--image-towers', 'spikingformer', '--T', '1', '4', '--eval-images', '40',
            '--data', FIXTURE, '--train-images', '100', '--teacher-epochs', '1', '--batch-size', '50',
            '--energy-images', '16', '--no-progress']
    assert ablate_main(args) == 0
    result = json.loads((out / 'ablation.json').read_text())
    rows = result['rows']
    assert [(r['image_tower'], r['text_tower'], r['T']) for r in rows] == [
        ('spikingformer', 'mlp', 1), ('spikingformer', 'mlp', 4),
        ('spikingformer', 'transformer', 1), ('spikingformer', 'transformer', 4)]
    for r in rows:
        assert 0 <= r['top1'] <= r['top5'] <= 1 and r['n'] == 40 and r['energy_uj_per_image'] > 0
    # fewer time steps, fewer synaptic operations
    assert rows[0]['sops_per_image'] < rows[1]['sops_per_image']
    assert rows[0]['text_params'] != rows[2]['text_params']
    md = (out / 'ablation.md').read_text()
    assert md.count('| spikingformer |') == 4 and (out / 'ablation.png').stat().st_size > 10_000
    # the second pair reused the teacher the first one trained
    assert not (out / 'runs' / 'spikingformer+transformer' / 'teacher.safetensors').exists()
    # a finished ablation reruns from its outputs without training
    assert ablate_main(args) == 0
    assert json.loads((out / 'ablation.json').read_text())['rows'] == rows
