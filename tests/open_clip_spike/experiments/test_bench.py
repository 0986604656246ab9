"""`spikeclip bench --quick` runs end to end and its numbers are consistent with each other."""
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from open_clip_spike.cli.bench import main as bench_main
from open_clip_spike.experiments import bench
from timm_spike.layers import is_spiking_neuron
from timm_spike.layers.fused_lif import fused_compile_enabled, set_fused_compile


def test_quick_bench_writes_consistent_report(tmp_path):
    out = tmp_path / 'bench'
    rc = bench_main(['--quick', '--models', 'spikingformer_clip', '--T', '1', '2', '--impls', 'fused',
                     '--repeats', '1', '--no-compile-cost', '--out', str(out)])
    assert rc == 0
    result = json.loads((out / 'bench.json').read_text())
    md = (out / 'bench.md').read_text()
    assert result['machine']['spikingjelly'] == importlib.metadata.version('spikingjelly')
    rows = result['rows']
    B = result['config']['batch_size']
    assert [(r['T'], r['impl'], r['batch_size']) for r in rows] == [
        (1, 'ann', B), (1, 'fused', B), (2, 'ann-TxB', 2 * B), (2, 'fused', B)]
    by = {(r['T'], r['impl']): r for r in rows}
    ann, ann2, snn1, snn2 = by[(1, 'ann')], by[(2, 'ann-TxB')], by[(1, 'fused')], by[(2, 'fused')]
    assert ann['train_overhead'] == pytest.approx(1.0) and ann['infer_overhead'] == pytest.approx(1.0)
    for r in rows:
        assert r['train_img_s'] == pytest.approx(r['batch_size'] / r['train_s'])
        assert r['latency_b1_ms'] > 0 and r['peak_train_mb'] > 0
        assert len(r['train_times_s']) == 1 and r['train_s'] == pytest.approx(r['train_times_s'][0])
    # each T timed in its own process, against the ANN timed there
    assert result['config']['isolate_T'] and snn1['ann_train_s'] == pytest.approx(ann['train_s'])
    for r in (snn1, snn2):
        assert r['train_overhead'] == pytest.approx(r['train_s'] / (r['T'] * r['ann_train_s']))
        assert r['infer_overhead'] == pytest.approx(r['infer_s'] / (r['T'] * r['ann_infer_s']))
        assert r['train_faults_mb'] >= 0
    # the fair baseline: the ANN at batch T x B (T=1: the ANN itself)
    assert 'train_overhead' not in ann2
    assert snn2['train_overhead_fair'] == pytest.approx(snn2['train_s'] / ann2['train_s'])
    assert snn2['infer_overhead_fair'] == pytest.approx(snn2['infer_s'] / ann2['infer_s'])
    assert snn1['train_overhead_fair'] == pytest.approx(snn1['train_overhead'])
    # ... and round by round (one round here: the ratio of the two calls of that round, its own interval)
    fair2 = snn2['train_times_s'][0] / ann2['train_times_s'][0]
    assert snn2['train_overhead_fair_rounds'] == [pytest.approx(fair2)]
    assert snn2['train_overhead_fair_paired'] == pytest.approx(fair2)
    assert snn2['train_overhead_fair_ci'] == [pytest.approx(fair2), pytest.approx(fair2)]
    assert snn2['infer_overhead_paired'] == pytest.approx(snn2['infer_times_s'][0] / (2 * snn2['ann_infer_s']))
    assert f"{fair2:.2f} ({fair2:.2f}-{fair2:.2f})" in md

    # FLOPs: counted per variant; a training step costs more than inference, the ANN's FLOPs are linear in the
    # batch, the SNN's about linear in T (the first convolution of a direct-encoded image runs once), and neurons
    # add none
    for r in rows:
        assert r['train_gflop'] > r['infer_gflop'] > 0
        assert r['train_gflops'] == pytest.approx(r['train_gflop'] / r['train_s'])
    assert ann2['train_gflop'] == pytest.approx(2 * ann['train_gflop'], rel=1e-6)
    assert ann2['infer_gflop'] == pytest.approx(2 * ann['infer_gflop'], rel=1e-6)
    assert snn1['train_gflop'] == pytest.approx(ann['train_gflop'], rel=1e-6)
    assert 1.6 * snn1['train_gflop'] < snn2['train_gflop'] <= ann2['train_gflop']
    assert 1.6 * snn1['infer_gflop'] < snn2['infer_gflop'] <= ann2['infer_gflop']
    # ... and are set against the GEMM peak measured in the same run
    gemm = result['gemm']
    assert gemm['start']['n'] == 1024 and len(gemm['start']['gflops']) == 3 and gemm['peak_gflops'] > 0
    for r in rows:
        assert r['train_peak_fraction'] == pytest.approx(r['train_gflops'] / gemm['peak_gflops'])
        assert r['infer_peak_fraction'] == pytest.approx(r['infer_gflops'] / gemm['peak_gflops'])

    # one step per kind profiled: time and FLOPs split by kind of op, each split summing to one
    prof = result['profile']['spikingformer_clip']
    assert set(prof) == {'ann@T=1', 'fused@T=2'}
    for p in prof.values():
        for kind in ('train', 'infer'):
            kinds = p[kind]['kinds']
            assert sum(v['time_share'] for v in kinds.values()) == pytest.approx(1.0)
            assert sum(v['flop_share'] for v in kinds.values()) == pytest.approx(1.0)
            assert kinds['convolution']['flop_share'] > 0.9  # a conv tokenizer and conv MLPs
            assert p[kind]['top_ops'] and p[kind]['wall_s'] > 0
    assert 'fused LIF (compiled)' in prof['fused@T=2']['train']['kinds'] or not result['machine']['fused_compiled']
    assert 'optimizer' in prof['ann@T=1']['train']['kinds']
    assert 'optimizer' not in prof['ann@T=1']['infer']['kinds']
    assert result['compile'] is None

    ck = [r for r in rows if 'ckpt_memory_cut' in r]
    assert [(r['T'], r['impl']) for r in ck] == [(2, 'fused')]
    assert ck[0]['peak_train_ckpt_mb'] == pytest.approx((1 - ck[0]['ckpt_memory_cut']) * ck[0]['peak_train_mb'])
    m = result['machine']
    assert m['torch'] == torch.__version__ and m['torch_threads'] == 2 and m['cpu_count'] >= 1
    assert isinstance(result['load']['under_load'], bool) and len(result['load']['loadavg_before']) == 3
    neuron = result['neuron']
    # both timings are reported; their order is not asserted: one repeat of a tiny layer is noise (a clean-clone
    # CI run measured forward 18.5 ns against forward+backward 4.9), and timings do not belong in tests
    assert [r['impl'] for r in neuron] == ['fused']
    assert 0 < neuron[0]['fwd_bwd_ns_per_elem'] < float('inf') and 0 < neuron[0]['fwd_ns_per_elem'] < float('inf')
    assert '### spikingformer_clip' in md and 'ANN (identity neurons)' in md and 'SNN, fused LIF' in md
    assert f'ANN at batch T x B = {2 * B}' in md and 'Dense GEMM peak' in md and 'train GFLOP/s' in md
    assert 'Profile of one training step, SNN, fused LIF, T=2' in md and 'its own fresh process' in md
    assert ('WARNING: measured under load' in md) == result['load']['under_load']


def test_variants_put_the_fair_baseline_before_each_T():
    cfg = bench.BenchConfig(T_values=(1, 2, 4), impls=('fused', 'spikingjelly'))
    assert bench._variants(cfg) == [(1, 'ann'), (1, 'fused'), (1, 'spikingjelly'), (2, 'ann-TxB'), (2, 'fused'),
                                    (2, 'spikingjelly'), (4, 'ann-TxB'), (4, 'fused'), (4, 'spikingjelly')]
    cfg = bench.BenchConfig(T_values=(1, 4), impls=('fused',), fair_baseline=False)
    assert bench._variants(cfg) == [(1, 'ann'), (1, 'fused'), (4, 'fused')]
    with pytest.raises(ValueError, match='optimizer'):
        bench._make_optimizer('lbfgs', [torch.zeros(1, requires_grad=True)])


def test_flops_and_gemm_peak():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    total, per_op = bench.count_flops(lambda: lin(x))
    assert total == 2 * 3 * 8 * 4 and per_op == {'addmm': total}
    total, _ = bench.count_flops(lambda: lin(x).sum().backward())
    assert total == 2 * 2 * 3 * 8 * 4  # forward and the weight's gradient (x needs none)
    peak = bench.measure_gemm_peak(n=128, repeats=2)
    assert peak['n'] == 128 and len(peak['gflops']) == 2 and peak['median_gflops'] > 0


def test_compile_probe_and_its_report():
    # the structure only, not the cost: eager kernels (compiling belongs to the subprocesses of the real probe)
    params = [bench.FusedLIFParams(), bench.FusedLIFParams(v_threshold=0.5)]
    spec = dict(T_values=[2], params=[asdict(p) for p in params], numel=256, repeats=1, threads=1)
    compiled = fused_compile_enabled()
    set_fused_compile(False)
    try:
        res = bench.probe_compile(spec)
    finally:
        set_fused_compile(compiled)
    assert [(r['T'], r['params']['v_threshold']) for r in res['rows']] == [(2, 1.0), (2, 0.5)]
    for r in res['rows']:
        assert r['compile_s'] >= 0 and r['train_first_s'] > 0 and r['infer_steady_s'] > 0
    assert res['total_compile_s'] == pytest.approx(sum(r['compile_s'] for r in res['rows']))
    # the report's section from a cold and a warm probe
    result = json.loads(json.dumps(dict(
        config=asdict(bench.BenchConfig.quick_config()), machine=bench.machine_info(1, 'cpu'),
        load=dict(loadavg_before=[0.1] * 3, loadavg_after=[0.1] * 3, under_load=False), rows=[],
        compile=dict(cold=dict(res, process_s=9.0), warm=dict(res, process_s=3.0))), default=list))
    md = bench.to_markdown(result)
    assert '### one-time compile cost of the fused LIF' in md and '| 2 | 0.5 |' in md
    assert 'cold 9.0 s, warm 3.0 s' in md


def test_ann_variant_and_errors():
    ann, make_input, loss_fn = bench.build_bench_model('spikingformer_clip', 1, 'ann', 2, quick=True)
    assert not any(is_spiking_neuron(x) for x in ann.modules()) and ann.T == 1
    out = ann(*make_input(2))
    assert out.shape == (2, 512) and loss_fn(out).ndim == 0
    snn, _, _ = bench.build_bench_model('spikingformer_clip', 2, 'fused', 2, quick=True)
    assert sum(is_spiking_neuron(x) for x in snn.modules()) == 4 + 7
    # The in-place variant switch gives the ANN's function on the SNN's weights.
    v = bench._Variants(snn)
    v.set(1, 'ann')
    snn.load_state_dict(ann.state_dict())
    x = make_input(2)
    with torch.no_grad():
        assert torch.allclose(snn.eval()(*x), ann.eval()(*x), atol=1e-6)
    v.set(2, 'fused')
    assert snn.T == 2 and sum(is_spiking_neuron(m) for m in snn.modules()) == 11
    # the whole SpikeCLIP model (both towers; its T is a read-only property following the towers')
    ann, make_input, loss_fn = bench.build_bench_model('SpikeCLIP-Spikingformer-4-384', 1, 'ann', 2, quick=True)
    assert not any(is_spiking_neuron(m) for m in ann.modules())
    assert ann.T == ann.text.T == ann.visual.trunk.T == 1
    out = ann(*make_input(2))
    assert out['image_features'].shape == out['text_features'].shape and loss_fn(out).ndim == 0
    with pytest.raises(ValueError, match='Unknown benchmark model'):
        bench.build_bench_model('resnet50', 1, 'fused', 2)
    with pytest.raises(SystemExit):
        bench_main(['--models', 'nope'])


def test_bench_cache_runs_both_variants_and_reports_the_ratio(tmp_path):
    from open_clip_spike.cli.bench_cache import main as bench_cache_main
    data = Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist'
    out = tmp_path / 'out'
    assert bench_cache_main(['--pairs', 'demo', '--images', '16', '--epochs', '2', '--batch-size', '8',
                             '--threads', '1', '--workers', '0', '--data', str(data), '--out', str(out),
                             '--work', str(tmp_path / 'work')]) == 0
    result = json.loads((out / 'bench-cache.json').read_text())
    (row,) = result['rows']
    assert len(row['epoch_s_no_cache']) == len(row['epoch_s_cache']) == 2
    assert row['ratio'] == pytest.approx(row['epoch_s_cache'][1] / row['epoch_s_no_cache'][1])
    fill, hit = row['cache_stats']
    assert fill['misses']['image'] == 16 and hit['misses'] == {'image': 0, 'text': 0}
    assert hit['hits']['image'] == 16
    md = (out / 'bench-cache.md').read_text()
    assert 'cache ratio' in md and f'{row["ratio"]:.2f}' in md


def test_bf16_variants_run_under_autocast(tmp_path):
    out = tmp_path / 'bench'
    assert bench_main(['--quick', '--models', 'text', '--T', '2', '--impls', 'fused', 'fused+bf16',
                       '--repeats', '1', '--no-memory', '--no-profile', '--no-compile-cost', '--gemm-size', '256',
                       '--out', str(out)]) == 0
    rows = json.loads((out / 'bench.json').read_text())['rows']
    assert [(r['T'], r['impl']) for r in rows] == [(1, 'ann'), (2, 'ann-TxB'), (2, 'fused'), (2, 'fused+bf16')]
    # the same matmuls under autocast: equal FLOPs
    assert rows[2]['train_gflop'] == pytest.approx(rows[3]['train_gflop'])
    assert all(r['train_img_s'] > 0 and r['infer_img_s'] > 0 for r in rows)
    assert '| SNN, fused LIF, bf16 autocast | 2 |' in (out / 'bench.md').read_text()
    with pytest.raises(SystemExit):
        bench_main(['--quick', '--impls', 'fused+fp8', '--out', str(out)])


def test_timed_rounds_interleave_and_never_time_a_call_right_after_a_bigger_one():
    seq = []
    calls = {k: (lambda k=k: seq.append(k)) for k in ('ann', 'T1', 'T8')}
    out = bench._timed_rounds(calls, repeats=2, warmup=1, device='cpu')
    # warm-up once each; then per round an untimed call of the smallest variant, then all of them in order
    assert seq == ['ann', 'T1', 'T8'] + ['ann', 'ann', 'T1', 'T8'] * 2
    assert all(len(v['times']) == 2 and v['median_s'] >= 0 and v['first_s'] is not None for v in out.values())


def test_median_interval_is_the_sign_test_interval():
    # 7 values: only the range holds the median with >= 90% (1 - 2 / 2**7); 20 values: the 6th and 15th
    assert bench.median_interval([5, 1, 7, 3, 2, 6, 4]) == (1, 7)
    assert bench.median_interval(list(range(20))) == (5, 14)
    assert bench.median_interval(list(range(20)), level=0.99) == (3, 16)
    assert bench.median_interval([2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match='at least one value'):
        bench.median_interval([])
