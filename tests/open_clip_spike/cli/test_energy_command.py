"""``spikeclip energy``: a SpikeCLIP (both towers) or a timm backbone, errors as one line and exit code 2."""
import json

import open_clip
import pytest

import open_clip_spike  # noqa: F401
from open_clip_spike.cli import main as cli_main
from open_clip_spike.data import get_templates

TT = 'SpikeCLIP-Tiny-TextTransformer'


def test_cli_spikeclip(tmp_path, capsys):
    rc = cli_main(['energy', 'SpikeCLIP-Tiny', '--T', '2', '--data', 'skimage', '--max-samples', '3',
                   '--batch-size', '3', '--teacher', 'SpikeCLIP-DemoTeacher', '--no-progress', '--out', str(tmp_path)])
    assert rc == 0
    d = json.loads((tmp_path / 'energy.json').read_text())
    for key in ('model', 'T', 'input_size', 'energy_mj_per_image', 'ann_energy_mj_per_image', 'constants', 'layers'):
        assert key in d
    assert d['model'] == 'SpikeCLIP-Tiny' and d['T'] == 2 and d['num_samples'] == 3
    assert d['text']['num_samples'] == 8 and d['text']['energy_mj_per_prompt'] > 0  # 8 bundled photo names
    assert d['ratios']['snn_over_teacher'] > 0 and d['text']['ratios']['snn_over_teacher'] > 0
    assert any('No checkpoint' in n for n in d['notes'])
    from open_clip_spike.hub import validate_energy_report
    assert validate_energy_report(str(tmp_path / 'energy.json'))['energy_mj_per_image'] == d['energy_mj_per_image']
    for png in ('energy.png', 'energy_text.png'):
        assert (tmp_path / png).read_bytes()[:4] == b'\x89PNG'
    out = capsys.readouterr().out
    assert 'image tower' in out and 'text tower' in out and 'SNN/teacher' in out


def test_cli_timm_model_and_errors(tmp_path, capsys):
    assert cli_main(['energy', 'spikingformer_clip', '--T', '1', '--max-samples', '1', '--batch-size', '1',
                     '--no-progress', '--out', str(tmp_path / 'timm')]) == 0
    assert json.loads((tmp_path / 'timm' / 'energy.json').read_text())['model'] == 'spikingformer_clip'
    assert cli_main(['energy', 'SpikeCLIP-DemoTeacher', '--out', str(tmp_path / 'x')]) == 2
    assert 'not a SpikeCLIP' in capsys.readouterr().err
    assert cli_main(['energy', 'SpikeCLIP-Tiny', '--checkpoint', 'm.bin', '--out', str(tmp_path / 'x')]) == 2
    assert '.safetensors' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert cli_main(['energy', 'SpikeCLIP-Tiny', '--data', str(tmp_path / 'empty'), '--out', str(tmp_path / 'x')]) == 2
    assert 'Empty dataset' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_cli_spikeclip_on_idx_fashion_mnist(tmp_path):
    from pathlib import Path
    idx = Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist'
    rc = cli_main(['energy', 'SpikeCLIP-Tiny', '--T', '2', '--data', str(idx), '--classnames', 'fashion_mnist',
                   '--max-samples', '2', '--batch-size', '2', '--no-progress', '--out', str(tmp_path)])
    assert rc == 0
    d = json.loads((tmp_path / 'energy.json').read_text())
    assert d['num_samples'] == 2 and 'IDXDataset' in d['data'] and 'test split' in d['data']
    # the prompts: every class name in every template of the class-name set (the resolver every command uses)
    assert d['text']['num_samples'] == 10 * len(get_templates('fashion_mnist')) and 'T-shirt/top' in d['text']['data']


def test_cli_on_a_published_folder(tmp_path):
    """local-dir: folders written by open_clip_spike.hub load with their weights (no BN calibration), through
    spikeclip energy (open_clip layout, both towers) and timm_spike.energy.timm_model_energy (timm layout)."""
    from open_clip_spike.hub import write_hub_folder
    from timm_spike.energy import timm_model_energy, write_report
    model = open_clip.create_model('SpikeCLIP-Tiny')
    folder = write_hub_folder(tmp_path / 'repo', model, 'SpikeCLIP-Tiny')
    args = ['--T', '2', '--max-samples', '2', '--batch-size', '2', '--no-progress']
    assert cli_main(['energy', f'local-dir:{folder}', *args, '--out', str(tmp_path / 'a')]) == 0
    write_report(timm_model_energy(f'local-dir:{folder}', T=2, max_samples=2, batch_size=2, progress=False),
                 str(tmp_path / 'b'))
    a = json.loads((tmp_path / 'a' / 'energy.json').read_text())
    b = json.loads((tmp_path / 'b' / 'energy.json').read_text())
    assert a['text']['num_samples'] == 8 and b['num_samples'] == 2
    for d in (a, b):
        assert not any('calibrated' in n or 'No checkpoint' in n for n in d['notes'])
    # same image tower, same photos, same weights: the same operations layer by layer
    assert [l['sops'] for l in a['layers']] == pytest.approx([l['sops'] for l in b['layers']], rel=1e-9)


def test_spiking_transformer_text_tower(tmp_path):
    rc = cli_main(['energy', TT, '--T', '2', '--data', 'skimage', '--max-samples', '2', '--batch-size', '2',
                   '--no-progress', '--out', str(tmp_path)])
    assert rc == 0
    d = json.loads((tmp_path / 'energy.json').read_text())['text']
    assert d['T'] == 2 and d['energy_mj_per_prompt'] > 0 and d['totals']['sops'] > 0
    rates = {n['name']: n['firing_rate'] for n in d['neurons']}
    assert len(rates) == 14 and 'blocks.1.attn.q_lif' in rates
    assert all(0 <= v <= 1 for v in rates.values()) and d['mean_firing_rate'] > 0
