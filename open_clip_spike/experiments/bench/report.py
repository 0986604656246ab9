"""The report as Markdown."""
import math
from typing import Any, Dict, Optional



from .config import ANN, ANN_TB, _split_impl
from .profile import _GEMM_KINDS


def fmt_value(v, spec='.2f'):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


PEAK_TARGET = 0.8  # below this share of the measured GEMM rate, the report names the variant


def _variant_label(impl: str, batch: int) -> str:
    if impl == ANN:
        return 'ANN (identity neurons)'
    if impl == ANN_TB:
        return f'ANN at batch T x B = {batch}'
    base = _split_impl(impl)[0]
    return f"SNN, {base} LIF{', bf16 autocast' if base != impl else ''}"


def _why_below_peak(profile: Dict[str, Any], peak: Optional[float]) -> str:
    """One sentence from a step's profile: the kinds of op that take time without FLOPs, and the GEMMs' own rate."""
    kinds = profile['kinds']
    idle = sorted(((k, v['time_share']) for k, v in kinds.items() if k not in _GEMM_KINDS and v['time_share'] >= 0.02),
                  key=lambda kv: -kv[1])
    parts = [f"{k} {100 * share:.0f}% of the time with no counted FLOPs" for k, share in idle]
    for k in _GEMM_KINDS:
        v = kinds.get(k)
        if v and v['time_share'] > 0 and peak:
            rate = v['gflop'] / (v['time_share'] * profile['wall_s'])
            parts.append(f"{k} {100 * v['time_share']:.0f}% of the time at {rate:.0f} GFLOP/s "
                         f"({rate / peak:.2f} of peak)")
    return '; '.join(parts)


def _overhead_cell(row: Dict[str, Any], key: str) -> str:
    """The round-by-round median and its interval where measured (``1.03 (0.99-1.06)``), else the ratio of
    medians."""
    if row.get(f'{key}_paired') is None:
        return fmt_value(row.get(key))
    lo, hi = row[f'{key}_ci']
    return f"{row[f'{key}_paired']:.2f} ({lo:.2f}-{hi:.2f})"


def to_markdown(result: Dict[str, Any]) -> str:
    """The report as Markdown: machine, load and GEMM peak, then per model a speed table, a compute table and
    the profile of one step, then the compile cost of the fused neuron."""
    m, load, cfg = result['machine'], result['load'], result['config']
    gemm = result.get('gemm') or {}
    peak = gemm.get('peak_gflops')
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m.get('gpu', m['device'])}; torch {m['torch']}, "
        f"{m['torch_threads']} threads, spikingjelly {m['spikingjelly']}; fused LIF compiled: {m['fused_compiled']}; "
        f"denormals flushed to zero: {m.get('flush_denormal')}.",
        f"Batch {cfg['batch_size']}, {cfg.get('optimizer', 'adamw')} (lr 0), median of {cfg['repeats']} interleaved "
        f"calls; load average before {fmt_load(load.get('loadavg_before'))}, after {fmt_load(load.get('loadavg_after'))}; "
        f"other processes used {fmt_value(100 * load['other_processes_cpu_share'] if load.get('other_processes_cpu_share') is not None else None, '.0f')}% of the CPUs.",
    ]
    if peak:
        lines.append(
            f"Dense GEMM peak (fp32 {gemm['start']['n']}x{gemm['start']['n']} matmul, {gemm['start']['threads']} "
            f"threads, median): **{peak:.0f} GFLOP/s** (start of the run {gemm['start']['median_gflops']:.0f}, end "
            f"{gemm['end']['median_gflops']:.0f}).")
    if load.get('under_load'):
        lines.append('')
        lines.append('**WARNING: measured under load (other processes were using the CPUs); SNN timings are '
                     'unreliable. Re-run on an idle machine.**')
    if cfg.get('quick'):
        lines.append('')
        lines.append('(--quick smoke run: tiny models, not representative figures.)')
    if result.get('neuron'):
        n0 = result['neuron'][0]
        lines += ['', f"### one LIF layer ({n0['numel']:,} neurons, T={n0['T']})", '',
                  '| LIF | forward+backward ns/element | forward ns/element |', '|---|---|---|']
        lines += [f"| {r['impl']} | {r['fwd_bwd_ns_per_elem']:.2f} | {r['fwd_ns_per_elem']:.2f} |"
                  for r in result['neuron']]
    for name in dict.fromkeys(r['model'] for r in result['rows']):
        rows = [r for r in result['rows'] if r['model'] == name]
        lines += ['', f'### {name}', '',
                  '| variant | T | train img/s | train overhead | fair | infer img/s | infer overhead | fair '
                  '| latency b1 (ms) | peak train MB | memory vs ANN | ckpt MB (cut) |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            ck = (f"{fmt_value(r['peak_train_ckpt_mb'], '.0f')} ({100 * r['ckpt_memory_cut']:.0f}%)"
                  if r.get('ckpt_memory_cut') is not None else '-')
            lines.append(
                f"| {_variant_label(r['impl'], r['batch_size'])} | {r['T']} | {fmt_value(r['train_img_s'], '.1f')} "
                f"| {_overhead_cell(r, 'train_overhead')} | {_overhead_cell(r, 'train_overhead_fair')} "
                f"| {fmt_value(r['infer_img_s'], '.1f')} | {_overhead_cell(r, 'infer_overhead')} "
                f"| {_overhead_cell(r, 'infer_overhead_fair')} | {fmt_value(r['latency_b1_ms'], '.1f')} "
                f"| {fmt_value(r.get('peak_train_mb'), '.0f')} | {fmt_value(r.get('memory_vs_ann'))} | {ck} |")
        if any('train_gflop' in r for r in rows):
            lines += ['', '| variant | T | train GFLOP/step | train GFLOP/s | of peak | infer GFLOP/batch '
                          '| infer GFLOP/s | of peak | fresh memory touched per train step (MB) |',
                      '|---|---|---|---|---|---|---|---|---|']
            for r in rows:
                lines.append(
                    f"| {_variant_label(r['impl'], r['batch_size'])} | {r['T']} | {fmt_value(r.get('train_gflop'), '.4g')} "
                    f"| {fmt_value(r.get('train_gflops'), '.4g')} | {fmt_value(r.get('train_peak_fraction'))} "
                    f"| {fmt_value(r.get('infer_gflop'), '.4g')} | {fmt_value(r.get('infer_gflops'), '.4g')} "
                    f"| {fmt_value(r.get('infer_peak_fraction'))} | {fmt_value(r.get('train_faults_mb'), '.0f')} |")
            below = [r for r in rows if any((r.get(f'{k}_peak_fraction') or 1) < PEAK_TARGET for k in ('train', 'infer'))]
            if below and peak:
                lines.append('')
                lines.append(f'Below {PEAK_TARGET} of the GEMM peak: ' + ', '.join(
                    f"{_variant_label(r['impl'], r['batch_size'])} T={r['T']}" for r in below) + '.')
        prof = (result.get('profile') or {}).get(name)
        if prof:
            for label, p in prof.items():
                for kind in ('train', 'infer'):
                    pk = p[kind]
                    lines += ['', f"Profile of one {'training step' if kind == 'train' else 'inference call'}, "
                                  f"{_variant_label(p['impl'], cfg['batch_size'])}, T={p['T']} "
                                  f"({pk['gflop']:.1f} GFLOP in {pk['wall_s']:.2f} s under the profiler): "
                                  + (_why_below_peak(pk, peak) or '-') + '.', '',
                              '| kind of op | time share | FLOP share |', '|---|---|---|']
                    lines += [f"| {k} | {100 * v['time_share']:.1f}% | {100 * v['flop_share']:.1f}% |"
                              for k, v in pk['kinds'].items()]
                    lines.append('')
                    lines.append('Top ops by self time: ' + ', '.join(
                        f"`{o['name'][:48]}` {100 * o['time_share']:.0f}% ({o['calls']} calls)" for o in pk['top_ops']) + '.')
        fused_first = [max(0.0, r['first_train_call_s'] - r['train_s']) for r in rows
                       if _split_impl(r['impl'])[0] in ('fused', 'auto')]
        if fused_first:
            lines.append('')
            lines.append(f'First-call extra time of the fused variants in this run (compilation with the inductor '
                         f'cache as this machine has it, plus first-touch costs): up to {max(fused_first):.1f} s.')
    comp = result.get('compile')
    if comp:
        lines += ['', '### one-time compile cost of the fused LIF', '',
                  'Fresh processes with a new inductor cache: cold = empty cache, warm = the cache the cold run '
                  'filled. Per T and neuron constants: first call minus the steady call (training: forward and '
                  'backward kernels; inference: the forward-only kernel).', '',
                  '| T | threshold | cold s | warm s |', '|---|---|---|---|']
        for c, w in zip(comp['cold']['rows'], comp['warm']['rows']):
            lines.append(f"| {c['T']} | {c['params']['v_threshold']:g} | {c['compile_s']:.1f} | {w['compile_s']:.1f} |")
        lines.append(f"| all | | **{comp['cold']['total_compile_s']:.1f}** | **{comp['warm']['total_compile_s']:.1f}** |")
        lines.append('')
        lines.append(f"Whole probe process (imports, compiles, calls): cold {comp['cold']['process_s']:.1f} s, warm "
                     f"{comp['warm']['process_s']:.1f} s; compiled: {comp['cold']['compiled']}.")
    for name, why in result.get('skipped', {}).items():
        lines += ['', f'### {name}', '', f'skipped: {why}']
    if cfg.get('isolate_T'):
        lines += ['', 'Each T was timed in its own fresh process with the ANN at batch B and T x B beside it; its '
                      'overheads are against the ANN timed there (the ANN row above is the first process\'s).']
    lines += ['', 'overhead = SNN time / (T x ANN time at batch B); fair = SNN time / ANN time at batch T x B (the '
                  'same activations, one optimizer step), each the median over the rounds of the ratio of two calls '
                  'timed in the same round, with a distribution-free interval that holds the median with at least '
                  '90% (with 7 rounds or fewer, their range); memory = peak extra memory of a training step; of peak = '
                  'GFLOP/s achieved / the dense GEMM peak above (FLOPs by torch FlopCounterMode: matmuls and '
                  'convolutions, forward and backward); fresh memory touched = minor page faults of the timed call '
                  '(memory the allocator took from the kernel anew, which the kernel zeroes first).']
    return '\n'.join(lines) + '\n'


def fmt_load(v):
    return '-' if not v else '/'.join(f'{x:.2f}' for x in v)
