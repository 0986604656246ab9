"""``spikeclip bench --sparse``: event-driven inference against dense inference and against the ANN twin.

For each tower it times, round by round and interleaved (so a slow patch of a shared machine hits every variant
alike), inference without autograd of:

- the dense SNN: the model as trained, every layer dense (T time steps);
- the event-driven SNN: its inference form (``timm_spike.layers.inference_form``: BatchNorm folded, spike-input
  layers computed from the spikes that fired), under the default kernel switch 'auto';
- the same with torch's operators instead of the compiled kernels (``spike_kernels.native_kernels(False)``), the
  fallback where no C compiler exists;
- the ANN twin: the same network with every neuron replaced by its input (``timm_spike.energy.ann_equivalent``), at
  T=1 and the same batch.

Each figure is the median of the per-round ratios with its sign-test interval (``bench.median_interval``): the
speed-up of event-driven over dense, and the event-driven SNN's time over the ANN twin's (at most 1.0: the SNN is
no slower than its ANN twin). A trained student (``--checkpoint``) runs at its own firing rates on real images;
untrained towers are first calibrated to a realistic rate (``timm_spike.energy.calibrate_firing_rates``: the bias
of the layer driving each neuron set so it fires at ``rate`` on the bench's inputs). A sweep over rates shows
where 'auto' switches a layer to dense.
"""
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from timm_spike.energy import ann_equivalent, calibrate_firing_rates
from timm_spike.layers import inference_form, spike_counts, spike_kernel
from timm_spike.layers import spike_kernels

from .timing import LoadMonitor, machine_info, median_interval

__all__ = ['SparseBenchConfig', 'run_sparse_bench', 'sparse_markdown', 'sparse_agreement']

_logger = logging.getLogger(__name__)

VARIANTS = ('dense', 'sparse', 'sparse-torch', 'ann')


@dataclass
class SparseBenchConfig:
    """What the event-driven bench measures.

    Args:
        student: A trained SpikeCLIP checkpoint (safetensors) measured at its own rates; None to skip.
        student_model: Its open_clip config.
        data: Images for the student and for calibration: an IDX folder (Fashion-MNIST), ImageFolder or 'skimage'.
        models: Untrained towers measured at the calibrated ``rate``: 'spikingformer_clip' (timm) and/or open_clip
            SpikeCLIP configs (both towers).
        batch_sizes: Batches timed (throughput and latency).
        rounds: Timed rounds (every variant once per round, interleaved); one untimed round first.
        rate: Firing rate the untrained towers are calibrated to.
        sweep_rates: Rates of the sweep (on ``sweep_model``'s image tower); empty to skip.
        sweep_model: The timm model of the sweep.
        sweep_batch: Batch of the sweep.
        threads: torch threads.
        quick: Tiny towers, small batches, two rounds: a smoke run of seconds.
    """
    student: Optional[str] = None
    student_model: str = 'SpikeCLIP-Tiny'
    data: str = 'skimage'
    models: Sequence[str] = ('spikingformer_clip', 'SpikeCLIP-Spikingformer-4-384')
    batch_sizes: Sequence[int] = (256, 1)
    rounds: int = 7
    rate: float = 0.04
    sweep_rates: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
    sweep_model: str = 'spikingformer_clip'
    sweep_batch: int = 32
    threads: int = 2
    quick: bool = False
    model_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **overrides) -> 'SparseBenchConfig':
        base = dict(models=('spikingformer_clip', 'SpikeCLIP-Tiny'), batch_sizes=(8, 1), rounds=2,
                    sweep_rates=(0.02, 0.3), sweep_batch=4, quick=True,
                    model_kwargs={'spikingformer_clip': dict(embed_dim=32, depth=1, num_heads=4, stem='cifar_light')})
        base.update(overrides)
        return cls(**base)


def _images(data: str, preprocess, n: int) -> torch.Tensor:
    """n preprocessed images of ``data`` (repeated when it holds fewer)."""
    from open_clip_spike.energy import _images as energy_images
    ds, _ = energy_images(data, 'test', preprocess)
    xs = [ds[i % len(ds)][0] for i in range(n)]
    return torch.stack(xs)


def _time_rounds(variants: Dict[str, Tuple[Callable[[], Any], Any]], rounds: int) -> Dict[str, List[float]]:
    """Seconds of each variant's call per round, interleaved; one untimed warm-up round."""
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for key, (fn, context) in variants.items():
                with context():
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                if r:
                    times[key].append(elapsed)
    return times


def _ratio_stats(num: List[float], den: List[float]) -> Dict[str, Any]:
    per_round = [a / b for a, b in zip(num, den)]
    lo, hi = median_interval(per_round)
    return dict(median=statistics.median(per_round), low=lo, high=hi, per_round=per_round)


def _measure_tower(name: str, model: nn.Module, ann: nn.Module, inputs: torch.Tensor, forward: Callable,
                   rounds: int) -> Dict[str, Any]:
    fused = inference_form(model, 'cpu')
    variants = {
        'dense': (lambda: forward(model, inputs), lambda: spike_kernel('dense')),
        'sparse': (lambda: forward(fused, inputs), lambda: spike_kernel('auto')),
        'sparse-torch': (lambda: forward(fused, inputs), _torch_ops),
        'ann': (lambda: forward(ann, inputs), lambda: spike_kernel('dense')),
    }
    with torch.inference_mode():  # the answers agree (recorded), and the event-driven path's rates
        ref, out = forward(model, inputs).float(), forward(fused, inputs).float()
    times = _time_rounds(variants, rounds)
    res = dict(tower=name, batch=len(inputs), seconds={k: statistics.median(v) for k, v in times.items()},
               rounds={k: v for k, v in times.items()},
               speedup_over_dense=_ratio_stats(times['dense'], times['sparse']),
               torch_ops_speedup_over_dense=_ratio_stats(times['dense'], times['sparse-torch']),
               snn_over_ann=_ratio_stats(times['sparse'], times['ann']),
               dense_snn_over_ann=_ratio_stats(times['dense'], times['ann']),
               max_abs_diff=float((out - ref).abs().max()),
               cosine_min=float(torch.nn.functional.cosine_similarity(out, ref, dim=-1).min()))
    _logger.info('%s batch %d: dense %.4f s, event-driven %.4f s (x%.2f), ANN twin %.4f s (SNN/ANN %.2f)', name,
                 len(inputs), res['seconds']['dense'], res['seconds']['sparse'],
                 res['speedup_over_dense']['median'], res['seconds']['ann'], res['snn_over_ann']['median'])
    return res


def sparse_agreement(
        model_name: str,
        checkpoint: Optional[str],
        data: str,
        classnames: str = 'fashion_mnist',
        limit: Optional[int] = None,
        batch_size: int = 250,
) -> Dict[str, Any]:
    """Zero-shot answers of a SpikeCLIP dense (as trained) and event-driven (its inference form, 'auto'), over a
    dataset: top-1 of each, the fraction of images with the same prediction, the largest embedding difference,
    and the spikes at every event-driven layer's input in the event-driven run against its dense run (a
    neuron whose potential lands on the threshold can flip through float32 summation order or BatchNorm
    folding; the counts say how many did, net).
    """
    import open_clip
    import open_clip_spike  # noqa: F401
    from torch.utils.data import Subset
    from open_clip_spike.data import build_dataset
    from open_clip_spike.zero_shot import resolve_classnames_templates
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    ds = build_dataset(data, 'test', preprocess)
    names, templates = resolve_classnames_templates(classnames, None, data, ds)
    if limit:
        ds = Subset(ds, range(min(limit, len(ds))))
    fused = inference_form(model, 'cpu')
    with torch.inference_mode():
        return _agreement(model, fused, tokenizer, ds, names, templates, batch_size, model_name, checkpoint, data)


def _agreement(model, fused, tokenizer, ds, names, templates, batch_size, model_name, checkpoint, data):
    from torch.utils.data import DataLoader
    from open_clip_spike.zero_shot import build_classifier
    with spike_kernel('dense'):
        cls_dense = build_classifier(model, tokenizer, names, templates)
    cls_sparse = build_classifier(fused, tokenizer, names, templates)
    counts = {}
    preds, feats, labels = {'dense': [], 'sparse': []}, {'dense': [], 'sparse': []}, []
    # the model as trained, dense; then its inference form under 'auto', counting the spikes of its layers
    for kernel, net, cls, kernel_used in (('dense', model, cls_dense, 'dense'), ('sparse', fused, cls_sparse, 'auto')):
        with spike_kernel(kernel_used), spike_counts(fused.visual) as counts[kernel]:
            for x, y in DataLoader(ds, batch_size=batch_size):
                f = torch.nn.functional.normalize(net.encode_image(x).float(), dim=-1)
                feats[kernel].append(f)
                preds[kernel].append((f @ cls).argmax(1))
                if kernel == 'dense':
                    labels.append(torch.as_tensor(y))
    # the inference form's own dense path, for its spikes per layer (the model as trained has no such layers)
    with spike_kernel('dense'), spike_counts(fused.visual) as counts['fused_dense']:
        for x, _ in DataLoader(ds, batch_size=batch_size):
            fused.encode_image(x)
    y = torch.cat(labels)
    pd, ps = torch.cat(preds['dense']), torch.cat(preds['sparse'])
    fd, fs = torch.cat(feats['dense']), torch.cat(feats['sparse'])
    layers = {k: dict(event_driven=counts['sparse'][k], dense=counts['fused_dense'][k],
                      difference=counts['sparse'][k] - counts['fused_dense'][k]) for k in counts['sparse']}
    return dict(model=model_name, checkpoint=checkpoint, data=data, n=len(y),
                top1_dense=float((pd == y).float().mean()), top1_sparse=float((ps == y).float().mean()),
                same_prediction=float((pd == ps).float().mean()),
                embedding_max_abs_diff=float((fd - fs).abs().max()),
                embedding_min_cosine=float((fd * fs).sum(1).min()),
                classifier_max_abs_diff=float((cls_dense - cls_sparse).abs().max()),
                image_layer_spikes=layers)


def _torch_ops():
    from contextlib import ExitStack
    stack = ExitStack()
    stack.enter_context(spike_kernel('auto'))
    stack.enter_context(spike_kernels.native_kernels(False))
    return stack


def _spikeclip_towers(arch: str, checkpoint: Optional[str], cfg: SparseBenchConfig, n: int, image: bool = True):
    """(tower name, model, ann twin, inputs, forward) for both towers of an open_clip SpikeCLIP (the text tower
    alone with ``image=False``)."""
    import open_clip
    import open_clip_spike  # noqa: F401  (registers the configs)
    from open_clip_spike.data import get_classnames, get_templates
    from open_clip_spike.energy import class_prompts
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=checkpoint,
                                                                 **cfg.model_kwargs.get(arch, {}))
    model.eval()
    images = _images(cfg.data, preprocess, n)
    names = get_classnames('fashion_mnist') if checkpoint else get_classnames('cifar10')
    prompts = class_prompts(names, get_templates('fashion_mnist' if checkpoint else 'cifar10'))
    tokens = open_clip.get_tokenizer(arch)([prompts[i % len(prompts)] for i in range(n)])
    notes = []
    if checkpoint is None:
        image_rates = calibrate_firing_rates(model.visual, images[:8], cfg.rate, steps=10)
        text_rates = calibrate_firing_rates(model.text, tokens[:32], cfg.rate, steps=10)
        notes.append(f'untrained; calibrated to rate {cfg.rate}: image {len(image_rates)} neurons, '
                     f'text {len(text_rates)} neurons')
    model.eval()
    towers = [(f'{arch} text tower', model.text, ann_equivalent(model.text).eval(), tokens, lambda m, x: m(x))]
    if image:
        towers.insert(0, (f'{arch} image tower', model.visual, ann_equivalent(model.visual).eval(), images,
                          lambda m, x: m(x)))
    return towers, notes


def _image_tower_name(arch: str) -> Optional[str]:
    """The timm model an open_clip config builds its image tower with, when it passes no arguments to it."""
    import open_clip
    import open_clip_spike  # noqa: F401
    vision = (open_clip.get_model_config(arch) or {}).get('vision_cfg', {})
    return None if vision.get('timm_model_kwargs') else vision.get('timm_model_name')


def _timm_tower(name: str, cfg: SparseBenchConfig, n: int, rate: float):
    import timm
    import timm_spike  # noqa: F401
    model = timm.create_model(name, **cfg.model_kwargs.get(name, {}))
    g = torch.Generator().manual_seed(0)
    size = model.img_size
    calib = torch.randn(8 if not cfg.quick else 4, 3, *size, generator=g)
    calibrate_firing_rates(model, calib, rate, steps=10)
    x = torch.randn(n, 3, *size, generator=g)
    return model.eval(), ann_equivalent(model).eval(), x


def run_sparse_bench(cfg: SparseBenchConfig) -> Dict[str, Any]:
    torch.manual_seed(0)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    monitor = LoadMonitor()
    n_max = max(cfg.batch_sizes)
    results, notes = [], []
    native = spike_kernels.native_kernels_available()
    groups = []
    if cfg.student:
        towers, nts = _spikeclip_towers(cfg.student_model, cfg.student, cfg, n_max)
        groups.append(('student', towers))
        notes += [f'student: {cfg.student_model} from {cfg.student}, images from {cfg.data}']
    for name in cfg.models:
        if name.startswith('SpikeCLIP'):
            image = _image_tower_name(name) not in cfg.models  # the same tower measured as a timm model already
            towers, nts = _spikeclip_towers(name, None, cfg, n_max, image=image)
            notes += [f'{name}: {t}' for t in nts]
            if not image:
                notes.append(f'{name}: image tower = {_image_tower_name(name)}, measured above')
            groups.append((name, towers))
        else:
            model, ann, x = _timm_tower(name, cfg, n_max, cfg.rate)
            groups.append((name, [(f'{name} (timm)', model, ann, x, lambda m, x: m(x))]))
            notes.append(f'{name}: untrained, calibrated to rate {cfg.rate}')
    for group, towers in groups:
        for tname, model, ann, inputs, forward in towers:
            for b in cfg.batch_sizes:
                rounds = cfg.rounds if b > 1 else max(cfg.rounds, 15)  # batch-1 calls are short: more rounds
                res = _measure_tower(tname, model, ann, inputs[:b], forward, rounds)
                res['group'] = group
                results.append(res)
    sweep = []
    for rate in cfg.sweep_rates:
        model, ann, x = _timm_tower(cfg.sweep_model, cfg, cfg.sweep_batch, rate)
        fused = inference_form(model, 'cpu')
        variants = {
            'dense': (lambda: model(x), lambda: spike_kernel('dense')),
            'sparse': (lambda: fused(x), lambda: spike_kernel('sparse')),
            'auto': (lambda: fused(x), lambda: spike_kernel('auto')),
        }
        times = _time_rounds(variants, max(2, cfg.rounds // 2))
        sweep.append(dict(rate=rate, seconds={k: statistics.median(v) for k, v in times.items()},
                          sparse_speedup=_ratio_stats(times['dense'], times['sparse']),
                          auto_speedup=_ratio_stats(times['dense'], times['auto'])))
        _logger.info('rate %.2f: sparse x%.2f, auto x%.2f over dense', rate, sweep[-1]['sparse_speedup']['median'],
                     sweep[-1]['auto_speedup']['median'])
    load = monitor.result()  # the timed part; the agreement check below is not timed
    agreement = sparse_agreement(cfg.student_model, cfg.student, cfg.data) if cfg.student else None
    return dict(config=asdict(cfg), machine=machine_info(torch.get_num_threads(), 'cpu'), native_kernels=native,
                sparse_max_rate=dict(spike_kernels.SPARSE_MAX_RATE), towers=results, sweep=sweep, notes=notes,
                load=load, agreement=agreement)


def _fmt(stats: Dict[str, Any]) -> str:
    return f"{stats['median']:.2f} ({stats['low']:.2f}-{stats['high']:.2f})"


def sparse_markdown(result: Dict[str, Any]) -> str:
    m = result['machine']
    lines = [
        '# Event-driven inference',
        '',
        f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}; compiled kernels: "
        f"{'yes' if result['native_kernels'] else 'no (torch operators)'}; 'auto' runs a layer dense above rates "
        f"{result['sparse_max_rate']}. Median of the per-round ratios (90% sign-test interval).",
        '',
        '| tower | batch | dense SNN s | event-driven s | ANN twin s | event-driven / dense speed-up | '
        'torch-ops speed-up | SNN / ANN twin (time) | dense SNN / ANN |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in result['towers']:
        s = r['seconds']
        lines.append(f"| {r['tower']} | {r['batch']} | {s['dense']:.4g} | {s['sparse']:.4g} | {s['ann']:.4g} | "
                     f"{_fmt(r['speedup_over_dense'])} | {_fmt(r['torch_ops_speedup_over_dense'])} | "
                     f"{_fmt(r['snn_over_ann'])} | {_fmt(r['dense_snn_over_ann'])} |")
    if result['sweep']:
        lines += ['', f"Rate sweep ({result['config']['sweep_model']}, batch {result['config']['sweep_batch']}, "
                      'calibrated; speed-up over dense):', '',
                  '| rate | dense s | sparse s | auto s | sparse speed-up | auto speed-up |', '|---|---|---|---|---|---|']
        for r in result['sweep']:
            s = r['seconds']
            lines.append(f"| {r['rate']} | {s['dense']:.4g} | {s['sparse']:.4g} | {s['auto']:.4g} | "
                         f"{_fmt(r['sparse_speedup'])} | {_fmt(r['auto_speedup'])} |")
    lines += ['', 'Agreement (event-driven vs dense outputs): ' + ', '.join(
        f"{r['tower']} b{r['batch']}: max |diff| {r['max_abs_diff']:.2g}, min cosine {r['cosine_min']:.6f}"
        for r in result['towers'])]
    a = result.get('agreement')
    if a:
        lines += ['', f"Answers of the student ({a['model']}, {a['checkpoint']}) over {a['n']} images of {a['data']}: "
                      f"zero-shot top-1 dense {a['top1_dense']:.4f}, event-driven {a['top1_sparse']:.4f}; same "
                      f"prediction on {a['same_prediction']:.4%} of the images; normalised image embeddings within "
                      f"{a['embedding_max_abs_diff']:.2g} (min cosine {a['embedding_min_cosine']:.5f}); class "
                      f"embeddings within {a['classifier_max_abs_diff']:.2g}. Spikes per layer, event-driven vs dense "
                      '(net difference: neurons flipped at the threshold):', '',
                  '| layer | dense | event-driven | difference |', '|---|---|---|---|']
        lines += [f"| {k} | {v['dense']:.0f} | {v['event_driven']:.0f} | {v['difference']:+.0f} |"
                  for k, v in a['image_layer_spikes'].items()]
    load = result['load']
    lines += ['', f"Other processes' CPU share during the run: {load.get('other_processes_cpu_share', 0):.2f}"
                  f"{' (UNDER LOAD: figures unreliable)' if load.get('under_load') else ''}"]
    lines += [f'- {n}' for n in result['notes']]
    return '\n'.join(lines) + '\n'
