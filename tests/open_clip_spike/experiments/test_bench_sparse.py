"""Event-driven inference of whole SpikeCLIPs: the same answers as dense, and the bench that measures it."""
import json
import statistics

import pytest
import torch

from open_clip_spike.cli import main
from open_clip_spike.experiments.bench.sparse import sparse_agreement
from open_clip_spike.zero_shot import zeroshot

FMNIST = 'tests/fixtures/fashion_mnist'


def test_demo_student_answers_the_same_event_driven(quick_demo):
    student = str(quick_demo.out / 'dual.safetensors')
    r = sparse_agreement('SpikeCLIP-Tiny', student, FMNIST, limit=50, batch_size=25)
    assert r['n'] == 50
    assert r['top1_sparse'] == r['top1_dense']
    assert r['same_prediction'] >= 0.999
    assert r['embedding_max_abs_diff'] < 1e-4 and r['embedding_min_cosine'] > 0.9999
    assert r['classifier_max_abs_diff'] < 1e-4
    layers = r['image_layer_spikes']
    assert len(layers) == 8  # tokenizer stages 1-4, qkv, proj, fc1, fc2
    assert sum(v['dense'] for v in layers.values()) > 1000  # spikes were compared (the quick student fires little)
    for name, v in layers.items():  # flips at the threshold only: a handful, never a layer's worth
        assert abs(v['difference']) <= max(2.0, 1e-3 * v['dense']), (name, v)


def test_zeroshot_runs_event_driven_by_default(quick_demo):
    student = str(quick_demo.out / 'dual.safetensors')
    sparse = zeroshot('SpikeCLIP-Tiny', student, FMNIST, classnames='fashion_mnist', limit=20, progress=False)
    from timm_spike.layers import spike_kernel
    with spike_kernel('dense'):
        dense = zeroshot('SpikeCLIP-Tiny', student, FMNIST, classnames='fashion_mnist', limit=20, progress=False)
    assert sparse['spike_kernel'] == 'auto' and dense['spike_kernel'] == 'dense'
    assert sparse['top1'] == dense['top1'] and sparse['top5'] == dense['top5']


def test_sparse_bench_quick(tmp_path, capsys):
    out = tmp_path / 'bench'
    rc = main(['bench', '--sparse', '--quick', '--models', 'spikingformer_clip', '--batch-sizes', '4', '--rounds', '2',
               '--sweep-rates', '0.02', '0.6', '--out', str(out), '--threads', str(torch.get_num_threads())])
    assert rc == 0
    result = json.loads((out / 'sparse.json').read_text())
    md = (out / 'sparse.md').read_text()
    assert md.startswith('# Event-driven inference') and md in capsys.readouterr().out
    (tower,) = result['towers']
    assert tower['batch'] == 4 and set(tower['seconds']) == {'dense', 'sparse', 'sparse-torch', 'ann'}
    per_round = [d / s for d, s in zip(tower['rounds']['dense'], tower['rounds']['sparse'])]
    assert tower['speedup_over_dense']['median'] == pytest.approx(statistics.median(per_round))
    assert tower['max_abs_diff'] < 1e-4 and tower['cosine_min'] > 0.9999
    assert [r['rate'] for r in result['sweep']] == [0.02, 0.6]
    assert result['native_kernels'] is True
    assert 'SNN / ANN twin' in md and '| 0.6 |' in md


def test_sparse_bench_bad_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['bench', '--sparse', '--checkpoint', str(tmp_path / 'missing.safetensors')])
    assert e.value.code == 2 and 'no such file' in capsys.readouterr().err
