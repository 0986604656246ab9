"""T at inference (zero-shot, energy) and the ``spikeclip sweep-t`` accuracy/energy sweep, on SpikeCLIP-Tiny."""
import csv
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import open_clip
from open_clip_spike.cli import main as cli_main
from open_clip_spike.experiments.sweep import SweepPoint, pareto_front, sweep_t, write_sweep
from open_clip_spike.zero_shot import check_inference_T, zeroshot

from ..conftest import FASHION_MNIST, TINY


@pytest.fixture
def trained_checkpoint(tmp_path, calibrated_tiny_model):
    """SpikeCLIP-Tiny (T=4) with real BN statistics, saved as safetensors: its neurons fire in eval mode."""
    path = os.fspath(tmp_path / 'tiny_t4.safetensors')
    save_file(calibrated_tiny_model.state_dict(), path)
    return path, calibrated_tiny_model


def _weighted_checkpoint(tmp_path):
    model = open_clip.create_model(TINY, readout='weighted').eval()
    path = os.fspath(tmp_path / 'tiny_weighted.safetensors')
    save_file(model.state_dict(), path)
    cfg = dict(open_clip.get_model_config(TINY), readout='weighted')
    folder = tmp_path / 'weighted_dir'
    folder.mkdir()
    (folder / 'open_clip_config.json').write_text(json.dumps(dict(model_cfg=cfg)))
    save_file(model.state_dict(), os.fspath(folder / 'open_clip_model.safetensors'))
    return path, f'local-dir:{folder}'


def test_check_inference_T():
    assert check_inference_T(TINY, None) == {}
    assert check_inference_T(TINY, 2) == {'T': 2}
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match='integer >= 1'):
            check_inference_T(TINY, bad)
    with pytest.raises(ValueError, match='not a SpikeCLIP'):
        check_inference_T('SpikeCLIP-DemoTeacher', 2)
    with pytest.raises(ValueError, match='Unknown model'):
        check_inference_T('no-such-model', 2)


def test_checkpoint_trained_at_T4_runs_at_other_T(trained_checkpoint, images):
    path, model4 = trained_checkpoint
    model2 = open_clip.create_model(TINY, pretrained=path, **check_inference_T(TINY, 2)).eval()
    assert model4.T == 4 and model2.T == 2 and model2.visual.trunk.T == 2
    sd4, sd2 = model4.state_dict(), model2.state_dict()
    assert sd4.keys() == sd2.keys() and all(torch.equal(sd4[k], sd2[k]) for k in sd4)  # same weights
    with torch.no_grad():
        f4, f2 = model4.encode_image(images), model2.encode_image(images)
        again = model2.encode_image(images)
    assert f2.shape == f4.shape
    assert not torch.allclose(f2, f4)  # two time steps are not four
    assert torch.equal(f2, again)  # neurons start from rest on every call
    model1 = open_clip.create_model(TINY, pretrained=path, T=1).eval()
    with torch.no_grad():
        f1 = model1.encode_image(images)
    assert not torch.allclose(f1, f2)


def test_weighted_readout_refuses_another_T(tmp_path):
    path, local_dir = _weighted_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="readout='weighted'.*T=4.*cannot run at T=2"):
        check_inference_T(local_dir, 2)
    # without the check, loading fails with a shape mismatch of the readout weights
    with pytest.raises(ValueError, match='readout.logits'):
        open_clip.create_model(TINY, readout='weighted', T=2, pretrained=path)
    assert check_inference_T(local_dir, 4) == {'T': 4}  # its own T is fine
    with pytest.raises(ValueError, match="readout='weighted'"):
        zeroshot(local_dir, None, FASHION_MNIST, classnames='fashion_mnist', limit=4, progress=False, T=2)


def test_zeroshot_and_energy_cli_at_other_T(tmp_path, trained_checkpoint, capsys):
    path, _ = trained_checkpoint
    common = ['--model', TINY, '--pretrained', path, '--dataset', os.fspath(FASHION_MNIST),
              '--classnames', 'fashion_mnist', '--templates', 'simple', '--limit', '10', '--no-progress']
    assert cli_main(['zeroshot', *common, '--T', '2', '--output', os.fspath(tmp_path / 'z2.json')]) == 0
    r2 = json.loads((tmp_path / 'z2.json').read_text())
    direct = zeroshot(TINY, path, FASHION_MNIST, classnames='fashion_mnist', templates='simple', limit=10,
                      progress=False, T=2)
    assert r2['T'] == 2 and r2['top1'] == direct['top1'] and r2['n'] == 10

    e_args = ['energy', TINY, '--checkpoint', path, '--data', os.fspath(FASHION_MNIST), '--max-samples', '4',
              '--classnames', 'fashion_mnist', '--no-progress']
    assert cli_main([*e_args, '--T', '2', '--out', os.fspath(tmp_path / 'e2')]) == 0
    assert cli_main([*e_args, '--out', os.fspath(tmp_path / 'e4')]) == 0
    e2 = json.loads((tmp_path / 'e2' / 'energy.json').read_text())
    e4 = json.loads((tmp_path / 'e4' / 'energy.json').read_text())
    assert e2['T'] == 2 and e4['T'] == 4
    assert e2['text']['T'] == 2 and e4['text']['T'] == 4  # both towers run at the asked T
    capsys.readouterr()
    _, local_dir = _weighted_checkpoint(tmp_path)
    assert cli_main(['energy', local_dir, '--T', '2', '--data', os.fspath(FASHION_MNIST), '--max-samples', '4',
                     '--classnames', 'fashion_mnist', '--out', os.fspath(tmp_path / 'ew')]) == 2
    assert "readout='weighted'" in capsys.readouterr().err
    assert not (tmp_path / 'ew').exists()


def test_pareto_front():
    def pt(T, top1, e):
        return SweepPoint(T=T, top1=top1, top5=1., n=10, energy_mj_per_image=e, sops_per_image=0.,
                          macs_per_image=0., mean_firing_rate=None)
    points = [pt(1, 0.5, 1.0), pt(2, 0.7, 2.0), pt(4, 0.6, 4.0), pt(8, 0.7, 8.0)]
    # T=4 is beaten by T=2 (more accurate, less energy); T=8 ties T=2 on accuracy at more energy
    assert pareto_front(points) == [True, True, False, False]


def test_sweep_function_and_cli(tmp_path, trained_checkpoint, capsys):
    path, model4 = trained_checkpoint
    points = sweep_t(TINY, path, FASHION_MNIST, Ts=[1, 2, 4], classnames='fashion_mnist', templates='simple',
                     limit=10, progress=False)
    assert [p.T for p in points] == [1, 2, 4]
    assert all(p.n == 10 and 0 <= p.top1 <= p.top5 <= 1 for p in points)
    energies = [p.energy_mj_per_image for p in points]
    assert all(e > 0 for e in energies)
    # more time steps, more synaptic operations (rates are per step, SOPs scale with T)
    assert energies[0] < energies[1] < energies[2]
    assert points[0].sops_per_image < points[2].sops_per_image
    assert [p.pareto for p in points] == pareto_front(points)
    # the T=4 point is the trained model's own zero-shot result
    own = zeroshot(TINY, path, FASHION_MNIST, classnames='fashion_mnist', templates='simple', limit=10,
                   progress=False)
    assert (points[2].top1, points[2].top5) == (own['top1'], own['top5'])

    out = tmp_path / 'sweep'
    assert cli_main(['sweep-t', '--model', TINY, '--pretrained', path, '--dataset', os.fspath(FASHION_MNIST),
                     '--classnames', 'fashion_mnist', '--templates', 'simple', '--limit', '10', '--T', '2', '1',
                     '--out', os.fspath(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert '| 2 |' in printed and 'sweep_t.png' in printed
    data = json.loads((out / 'sweep_t.json').read_text())
    assert data['model'] == TINY and [p['T'] for p in data['points']] == [2, 1]  # in the order given
    assert [p['energy_mj_per_image'] for p in data['points']] == pytest.approx(energies[1::-1])
    assert [p['top1'] for p in data['points']] == [points[1].top1, points[0].top1]
    rows = list(csv.DictReader((out / 'sweep_t.csv').open()))
    assert [int(r['T']) for r in rows] == [2, 1]
    assert float(rows[0]['energy_mj_per_image']) == pytest.approx(energies[1])
    md = (out / 'sweep_t.md').read_text()
    assert md.count('\n| ') == 3  # header + 2 rows (the separator starts with '|---')
    assert (out / 'sweep_t.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(os.listdir(out)) == ['sweep_t.csv', 'sweep_t.json', 'sweep_t.md', 'sweep_t.png']


def test_sweep_errors(tmp_path, trained_checkpoint, capsys):
    path, _ = trained_checkpoint
    with pytest.raises(ValueError, match='repeated'):
        sweep_t(TINY, path, FASHION_MNIST, Ts=[2, 2], classnames='fashion_mnist')
    with pytest.raises(ValueError, match='non-empty'):
        sweep_t(TINY, path, FASHION_MNIST, Ts=[], classnames='fashion_mnist')
    with pytest.raises(ValueError, match='integer >= 1'):
        sweep_t(TINY, path, FASHION_MNIST, Ts=[0, 2], classnames='fashion_mnist')
    with pytest.raises(ValueError, match='No sweep points'):
        write_sweep([], tmp_path / 'x')
    _, local_dir = _weighted_checkpoint(tmp_path)
    out = tmp_path / 'refused'
    base = ['sweep-t', '--dataset', os.fspath(FASHION_MNIST), '--classnames', 'fashion_mnist', '--limit', '4',
            '--out', os.fspath(out), '--no-progress']
    assert cli_main([*base, '--model', local_dir, '--T', '2', '4']) == 2
    assert "readout='weighted'" in capsys.readouterr().err
    assert cli_main([*base, '--model', TINY]) == 2
    assert '--pretrained is required' in capsys.readouterr().err
    assert cli_main([*base, '--model', TINY, '--pretrained', os.fspath(tmp_path / 'missing.safetensors')]) == 2
    assert 'not found' in capsys.readouterr().err
    assert not out.exists()


def test_sweep_cli_several_checkpoints(tmp_path, trained_checkpoint, capsys):
    path, model = trained_checkpoint
    quiet = {k: v.clone() for k, v in model.state_dict().items()}
    for k in quiet:
        if k.endswith('running_var'):
            quiet[k] *= 4  # wider BN statistics: smaller normalised inputs, fewer spikes
    quiet_path = os.fspath(tmp_path / 'quiet.safetensors')
    save_file(quiet, quiet_path)
    out = tmp_path / 'two'
    base = ['sweep-t', '--model', TINY, '--dataset', os.fspath(FASHION_MNIST), '--classnames', 'fashion_mnist',
            '--templates', 'simple', '--limit', '6', '--T', '1', '2', '--out', os.fspath(out), '--no-progress']
    assert cli_main([*base, '--pretrained', path, quiet_path, '--labels', 'base']) == 2
    assert 'one distinct name per --pretrained' in capsys.readouterr().err and not out.exists()
    assert cli_main([*base, '--pretrained', path, quiet_path]) == 0
    points = json.loads((out / 'sweep_t.json').read_text())['points']
    assert [(p['label'], p['T']) for p in points] == [('tiny_t4', 1), ('tiny_t4', 2), ('quiet', 1), ('quiet', 2)]
    by = {(p['label'], p['T']): p for p in points}
    for T in (1, 2):
        assert by[('quiet', T)]['sops_per_image'] < by[('tiny_t4', T)]['sops_per_image']
    md = (out / 'sweep_t.md').read_text()
    assert '| checkpoint | T |' in md and md.count('| quiet |') == 2
    rows = list(csv.DictReader((out / 'sweep_t.csv').open()))
    assert [r['label'] for r in rows] == ['tiny_t4', 'tiny_t4', 'quiet', 'quiet']
