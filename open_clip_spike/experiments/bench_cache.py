"""``spikeclip bench-cache``: epoch time of distillation with the teacher-feature cache vs without, in one run.

For each teacher/student pair, two runs of ``spikeclip train`` (stage 1, image and text alignment) on the same
Fashion-MNIST subset, one after the other in this process's children: without the cache, then with
``--spike-teacher-cache`` (its first epoch fills the cache, the later ones read it). The epoch times come from
the runs' ``spike_epochs.jsonl``; the figure is

    cache ratio = median epoch time with a filled cache / median epoch time without the cache (epochs >= 2)

(the first epoch of either run also pays start-up costs such as compiling the fused neuron). The fill epoch's
time against the uncached epoch shows what writing the cache costs.

Pairs: ``demo`` = the demo's teacher (``SpikeCLIP-DemoTeacher``, 32x32) and student (``SpikeCLIP-Tiny``);
``paper`` = the paper's (``ViT-B-16`` at 224x224, ``SpikeCLIP-Spikingformer-4-384``). Teachers get randomly
initialised weights (seeded) unless ``--teacher-pretrained`` names weights: the timing does not depend on them.
Like ``spikeclip bench``, it records the machine and the load average and says when it ran under load.
"""
import json
import logging
import os
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Optional

import torch


from .bench import fmt_value, fmt_load

__all__ = ['PAIRS', 'bench_teacher_cache', 'to_markdown']

_logger = logging.getLogger(__name__)

PAIRS = {
    'demo': dict(teacher='SpikeCLIP-DemoTeacher', student='SpikeCLIP-Tiny'),
    'paper': dict(teacher='ViT-B-16', student='SpikeCLIP-Spikingformer-4-384'),
}


def _teacher_weights(name: str, work: str, pretrained: Optional[str]) -> str:
    if pretrained:
        return pretrained
    import open_clip

    import open_clip_spike  # noqa: F401
    from timm_spike.utils import save_safetensors
    path = os.path.join(work, f'{name}-random.safetensors')
    torch.manual_seed(0)
    sd = open_clip.create_model(name).state_dict()
    save_safetensors({k: v.contiguous() for k, v in sd.items()}, path)  # with its digest, like every weight file
    return path


def _train(args: List[str], threads: int, timeout: float) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-m', 'open_clip_spike.train', *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f'spikeclip train failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')


def _epochs(log_dir: str) -> List[Dict[str, Any]]:
    with open(os.path.join(log_dir, 'spike_epochs.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def bench_teacher_cache(
        pair: str,
        csv: str,
        work: str,
        epochs: int = 3,
        batch_size: int = 32,
        threads: int = 2,
        workers: int = 1,
        teacher_pretrained: Optional[str] = None,
        timeout: float = 3600,
        device: str = 'cpu',
        precision: str = 'fp32',
) -> Dict[str, Any]:
    """Time ``epochs`` epochs of stage 1 without and with the teacher cache; return the per-epoch figures."""
    if epochs < 2:
        raise ValueError('epochs must be >= 2: the first epoch of the cached run fills the cache')
    spec = PAIRS[pair]
    weights = _teacher_weights(spec['teacher'], work, teacher_pretrained)
    common = [
        '--model', spec['student'], '--distill-model', spec['teacher'], '--distill-pretrained', weights,
        '--train-data', csv, '--dataset-type', 'csv', '--csv-img-key', 'filepath', '--csv-caption-key', 'title',
        '--batch-size', str(batch_size), '--workers', str(workers), '--epochs', str(epochs), '--device', device,
        '--precision', precision, '--lr', '5e-3', '--warmup', '0', '--report-to', 'none', '--save-frequency', '0',
        '--spike-logs', os.path.join(work, 'logs'), '--log-every-n-steps', '1000']
    runs = {}
    for variant in ('no_cache', 'cache'):
        name = f'{pair}-{variant}'
        extra = ['--spike-teacher-cache', os.path.join(work, f'{pair}-cache')] if variant == 'cache' else []
        _logger.info('%s: %d epochs of stage 1 (%s)', name, epochs, ' '.join(extra) or 'no cache')
        _train(common + ['--name', name] + extra, threads, timeout)
        runs[variant] = _epochs(os.path.join(work, 'logs', name))
    plain = [r['seconds'] for r in runs['no_cache']]
    cached = [r['seconds'] for r in runs['cache']]
    steady_plain, steady_cached = statistics.median(plain[1:]), statistics.median(cached[1:])
    return dict(
        pair=pair, teacher=spec['teacher'], student=spec['student'], epochs=epochs, batch_size=batch_size,
        device=device, precision=precision,
        epoch_s_no_cache=plain, epoch_s_cache=cached, cache_stats=[r.get('teacher_cache') for r in runs['cache']],
        ratio=steady_cached / steady_plain, fill_ratio=cached[0] / plain[0],
    )


def to_markdown(result: Dict[str, Any]) -> str:
    m, load = result['machine'], result['load']
    lines = [
        f'Machine: {m["cpu"]} ({m["cpu_count"]} CPUs); torch {m["torch"]}, {m["torch_threads"]} threads. '
        f'{result["images"]} training images; load average before {fmt_load(load["loadavg_before"])}, after '
        f'{fmt_load(load["loadavg_after"])}; other processes used '
        f'{fmt_value(100 * load.get("other_processes_cpu_share", float("nan")), ".0f")}% of the CPUs.', '']
    if load['under_load']:
        lines += ['**WARNING: measured under load (other processes were using the CPUs); re-run on an idle '
                  'machine.**', '']
    lines += ['| pair (teacher -> student) | batch | epoch s, no cache | epoch s, cache (fill, then hits) | '
              'cache ratio | fill epoch ratio |', '|---|---|---|---|---|---|']
    for r in result['rows']:
        fmt = ', '.join(f'{s:.1f}' for s in r['epoch_s_no_cache'])
        fmt_c = ', '.join(f'{s:.1f}' for s in r['epoch_s_cache'])
        lines.append(f'| {r["pair"]} ({r["teacher"]} -> {r["student"]}) | {r["batch_size"]} | {fmt} | {fmt_c} | '
                     f'**{r["ratio"]:.2f}** | {r["fill_ratio"]:.2f} |')
    lines += ['', 'cache ratio = median epoch time with a filled cache / without it (epochs >= 2; target <= 0.6).']
    return '\n'.join(lines) + '\n'
