"""``spikeclip demo``: the whole SpikeCLIP method, end to end, on Fashion-MNIST with no network.

Stages (each skipped when its output exists, so an interrupted run picks up where it stopped; a training stage
that was cut short resumes exactly from its last finished epoch: killed at any moment and rerun with the same
command, the demo ends with the weights and results of an uninterrupted run):

0. data: Fashion-MNIST (IDX files: Debian's ``dataset-fashion-mnist``, ``--data DIR``, or torchvision's download)
   written as PNGs + a tab-separated CSV whose captions are the class names in CLIP-style templates;
1. teacher: a small ANN CLIP (``SpikeCLIP-DemoTeacher``) trained by open_clip's own training loop and loss
   (``open_clip_spike.train.upstream``: only its checkpoints are extended, for exact resumption; with ``--teacher ViT-B-16 --teacher-pretrained openai`` the paper's teacher is loaded instead);
2. align: stage 1 of the paper, ``SpikeCLIP-Tiny`` distilled to the teacher (`AlignmentLoss`);
3. dual: stage 2, dual-loss fine-tuning with the text tower frozen (`DualLoss`);
4. zero-shot top-1 / top-5 of teacher and student on the test images;
5. energy of both (the student's firing rates measured on test images);
6. the student published to a local Hub folder and loaded back through ``local-dir:`` (identical embeddings);
7. ``OUT/summary.json`` + ``OUT/summary.png`` and a table.

One module, longer than the house's ~500 lines: the demo's stages in the order they run, each a small function.
"""
import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from timm_spike.energy.plot import save_figure
from timm_spike.utils import atomic_path, atomic_write, bf16_is_native

from open_clip_spike.locking import FolderInUseError, FolderLock

__all__ = ['DemoConfig', 'run_demo', 'find_fashion_mnist', 'write_captioned_csv', 'bf16_is_native']

_logger = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
CLASSNAMES = 'fashion_mnist'  # the built-in class-name and template sets of open_clip_spike.data
# What the demo's summary checks: the student's top-1 at least 95% of the teacher's, its energy per image at most 25%
# of the teacher's, and the default run's stages within 10 minutes on 2 CPU cores.
TARGETS = dict(top1_ratio_min=0.95, energy_ratio_max=0.25, seconds_max=10 * 60)


@dataclass
class DemoConfig:
    """Settings of the demo; ``quick()`` gives the one-minute smoke run."""
    out: str = 'out/demo'
    data: Optional[str] = None
    teacher: str = 'SpikeCLIP-DemoTeacher'
    teacher_pretrained: Optional[str] = None  # a tag or file: use this teacher instead of training one
    student: str = 'SpikeCLIP-Tiny'
    # The default run fits the 10-minute budget of 2 CPU cores: a random 7,000-image subset (seeded) of the
    # 60,000 training images for the three training stages, and all 10,000 test images for the evaluation.
    train_images: Optional[int] = 7000  # None: all 60,000
    test_images: Optional[int] = None  # None: all 10,000
    energy_images: int = 1000
    teacher_epochs: int = 3
    align_epochs: int = 1
    dual_epochs: int = 1
    batch_size: int = 100
    teacher_lr: float = 5e-4
    teacher_wd: float = 0.1
    align_lr: float = 5e-3
    dual_lr: float = 5e-4
    kl_weight: float = 1.0
    rate_weight: float = 0.0  # energy-aware training: firing-rate regulariser of both stages (0: off)
    rate_target: float = 0.05
    workers: int = 1
    # Neuron implementation for every stage (timm_spike.layers.LIF_IMPLS): 'auto' = the fused, compiled LIF on the
    # CPU (same spikes and gradients as spikingjelly's LIFNode, several times faster), spikingjelly's on CUDA.
    lif_impl: str = 'auto'
    precision: str = 'fp32'
    # also evaluate teacher and student under bf16 autocast (the accuracy effect of bf16 inference; reported
    # apart, its time not counted in the run's time target). None: where bf16 runs on native kernels (oneDNN's
    # bf16 path, AVX-512 and newer); on AVX2 bf16 is emulated and slower than fp32, so it is skipped there.
    bf16_eval: Optional[bool] = None
    seed: int = 0
    progress: bool = True
    extra_train_args: List[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **kw) -> 'DemoConfig':
        base = dict(train_images=1000, test_images=300, energy_images=64, teacher_epochs=1, align_epochs=1,
                    dual_epochs=1, batch_size=64)
        base.update(kw)
        return cls(**base)


class DemoError(RuntimeError):
    """A stage of the demo failed; the message names the stage and its log."""


# ---------------------------------------------------------------------------------------------------------------
# Stage 0: data


def find_fashion_mnist(data: Optional[str], download_root: Optional[str] = None) -> str:
    """The folder holding Fashion-MNIST's IDX files: ``data``, Debian's package, or a torchvision download."""
    from open_clip_spike.data.idx import is_idx_dir

    if data is not None:
        if not is_idx_dir(data):
            raise FileNotFoundError(
                f'{data} holds no Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], '
                f't10k-...); pass the folder that holds them')
        return data
    if is_idx_dir(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    if download_root is not None:
        try:  # needs a network; torchvision writes the same IDX files under FashionMNIST/raw
            import torchvision
            torchvision.datasets.FashionMNIST(download_root, train=True, download=True)
            torchvision.datasets.FashionMNIST(download_root, train=False, download=True)
            raw = os.path.join(download_root, 'FashionMNIST', 'raw')
            if is_idx_dir(raw):
                return raw
        except Exception as e:  # no network: fall through to the explanation below
            _logger.info('torchvision download of Fashion-MNIST failed: %s', e)
    raise FileNotFoundError(
        'Fashion-MNIST not found. Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in '
        f'{DEBIAN_FASHION_MNIST}), or pass --data DIR with its IDX files, or run with a network so torchvision '
        'can download it')


def write_captioned_csv(idx_dir: str, split: str, out_dir: str, limit: Optional[int] = None, seed: int = 0,
                        progress: bool = True) -> str:
    """Write the images of an IDX split as PNGs and a tab-separated CSV (``filepath``, ``title``).

    Each caption is the image's class name in one of the class set's prompt templates, drawn at random (seeded).
    The CSV is written last and atomically, so its presence means the split is complete.
    """
    from PIL import Image

    from open_clip_spike.data import get_classnames, get_templates
    from open_clip_spike.data.idx import IDXDataset

    classnames, templates = get_classnames(CLASSNAMES), get_templates(CLASSNAMES)
    csv_path = os.path.join(out_dir, f'{split}.csv')
    if os.path.exists(csv_path):
        return csv_path
    ds = IDXDataset(idx_dir, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    rng = np.random.default_rng(seed)
    if n < len(ds):  # a random subset (seeded)
        order = rng.permutation(len(ds))[:n]
    else:
        order = np.arange(n)
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    rows = ['filepath\ttitle']
    for i in tqdm(order, desc=f'data: {split} images -> PNG', unit='img', mininterval=1.0, disable=not progress):
        image, label = ds[int(i)]
        path = os.path.join(img_dir, f'{int(i):05d}.png')
        if not os.path.exists(path):  # written whole or not at all, so an existing PNG is complete
            with atomic_path(path) as tmp:
                (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).save(tmp, 'PNG')
        caption = templates[rng.integers(len(templates))].format(classnames[int(label)])
        rows.append(f'{os.path.abspath(path)}\t{caption}')
    atomic_write(csv_path, ('\n'.join(rows) + '\n').encode())
    return csv_path


# ---------------------------------------------------------------------------------------------------------------
# Training stages: open_clip_train's loop run in this process (an interpreter per stage would cost each stage the
# imports and the fused LIF's compile again), its output to the stage's log and a progress bar fed by that log.

_PROGRESS = re.compile(r'Train Epoch: (\d+) \[\s*(\d+)/(\d+)')
_LOSS = re.compile(r'Loss: ([0-9.]+)')


class _StageOutput(io.TextIOBase):
    """stdout/stderr of a stage: every line to the log file, progress lines to the bar."""

    def __init__(self, log, bar, epochs: int):
        self.log, self.bar, self.epochs, self.buf = log, bar, epochs, ''

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        self.log.flush()  # the log is the place to watch a long stage
        self.buf += s
        *lines, self.buf = self.buf.split('\n')
        for line in lines:
            m = _PROGRESS.search(line)
            if m:
                epoch, done, total = int(m[1]), int(m[2]), max(int(m[3]), 1)
                self.bar.n = min(self.epochs, epoch + done / total)
                loss = _LOSS.search(line)
                if loss:
                    self.bar.set_postfix_str(f'loss {float(loss[1]):.4f}', refresh=False)
                self.bar.refresh()
        return len(s)


def _run_logged(entry: str, argv: List[str], log_path: str, desc: str, epochs: int, progress: bool) -> None:
    """Run a training entry point (``open_clip_spike.train`` or ``.train.upstream``) on ``argv`` in this process,
    its output to ``log_path``. Ctrl-C is re-raised once the loop has shut down (its epoch checkpoints are whole)."""
    from open_clip_spike.train.inprocess import run_in_process

    with open(log_path, 'a') as log, tqdm(total=epochs, desc=desc, unit='epoch', disable=not progress,
                                          bar_format='{l_bar}{bar}| {n:.2f}/{total} epochs [{elapsed}{postfix}]') as bar:
        log.write(f'$ python -m {entry} ' + ' '.join(argv) + '\n')
        rc = run_in_process(entry, argv, _StageOutput(log, bar, epochs))
    if rc == 130:
        raise KeyboardInterrupt
    if rc == 75:  # open_clip_spike.train.safety.PREEMPTED_EXIT: a checkpoint was written on SIGTERM / SIGUSR1
        raise DemoError(f'{desc} preempted: its checkpoint is written; rerun the same command to continue')
    if rc != 0:
        raise DemoError(f'{desc} failed (exit code {rc}); see {log_path}')


def _latest_epoch_checkpoint(run_dir: str) -> Optional[str]:
    ckpts = sorted(Path(run_dir, 'checkpoints').glob('epoch_*.pt'), key=lambda p: int(p.stem.split('_')[1]))
    return str(ckpts[-1]) if ckpts else None


def _train(cfg: DemoConfig, runs: str, name: str, entry: str, entry_args: List[str], model: str, csv: str, epochs: int,
           lr: float, n_train: int, desc: str, wd: float = 0.0) -> str:
    """Run one training stage; return its final weights as safetensors (exported from the last epoch)."""
    from open_clip_spike.checkpoint import export_checkpoint

    run_dir = os.path.join(runs, name)
    final = os.path.join(cfg.out, f'{name}.safetensors')
    args = [
        '--model', model, '--train-data', csv, '--dataset-type', 'csv', '--csv-separator', '\t',
        '--csv-img-key', 'filepath', '--csv-caption-key', 'title', '--train-num-samples', str(n_train),
        '--batch-size', str(cfg.batch_size), '--epochs', str(epochs), '--lr', str(lr), '--wd', str(wd),
        '--warmup', str(max(1, min(100, epochs * (n_train // cfg.batch_size) // 10))), '--workers', str(cfg.workers),
        '--precision', cfg.precision, '--seed', str(cfg.seed), '--save-frequency', '1',
        '--log-every-n-steps', '5', '--name', name, '--logs', runs, '--device', 'cpu',
    ]
    # The command is the same on every rerun: an interrupted stage continues exactly from its last finished epoch
    # (open_clip_spike.train.resume), one killed in its first epoch starts again.
    _run_logged(entry, entry_args + args + cfg.extra_train_args, os.path.join(cfg.out, f'{name}.log'), desc, epochs,
                cfg.progress)
    last = _latest_epoch_checkpoint(run_dir)
    if last is None or int(Path(last).stem.split('_')[1]) < epochs:
        raise DemoError(f'{desc}: no checkpoint of epoch {epochs} in {run_dir}/checkpoints; see {cfg.out}/{name}.log')
    exported = export_checkpoint(last)  # weights only, no pickle, for every later stage
    with atomic_path(final) as tmp:
        shutil.copyfile(exported, tmp)
    return final


# ---------------------------------------------------------------------------------------------------------------
# The run


class _Stages:
    """Stage bookkeeping: skip finished stages, time the others, persist them in OUT/stages.json.

    Each stage records the settings its output depends on, and the finish time of the stages it reads. A rerun
    skips a stage only when its output exists and both still match, so changing e.g. ``--test-images`` reruns
    the evaluations, and a retrained stage reruns everything after it. Settings are recorded when a stage finishes,
    so a stage that failed binds nothing. A training stage is resumable (its epoch checkpoints), so they must come
    from the same settings: a change is refused with the differences listed rather than resumed into a mixed run
    (here for a finished stage; for an unfinished one by the command record of ``open_clip_spike.train.resume``).
    """

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(out, 'stages.json')
        raw = json.loads(Path(self.path).read_text()) if os.path.exists(self.path) else {}
        # an entry that is not a record (a foreign or damaged file) is dropped: that stage reruns
        self.records: Dict[str, Dict[str, Any]] = {k: v for k, v in raw.items() if isinstance(v, dict)}

    @property
    def times(self) -> Dict[str, float]:
        return {k: r['seconds'] for k, r in self.records.items() if r.get('seconds') is not None}

    def _key(self, settings: Dict[str, Any], after: Sequence[str]) -> Dict[str, Any]:
        key = json.loads(json.dumps(settings, default=str))  # as it reads back from stages.json
        for name in after:
            key[f'after {name}'] = self.records.get(name, {}).get('finished')
        return key

    def _save(self):
        _write_json(self.path, self.records)

    def run(self, name: str, output: str, fn, *args, settings: Optional[Dict[str, Any]] = None,
            after: Sequence[str] = (), resumable: bool = False, **kwargs):
        key = self._key(settings or {}, after)
        rec = self.records.get(name)
        old = None if rec is None else rec.get('key')
        same = rec is not None and (old is None or old == key)
        if same and rec.get('seconds') is not None and os.path.exists(output):
            _logger.info('stage %s: done already (%s), skipped', name, output)
            print(f'[{name}] done already ({output}, {rec["seconds"]:.0f} s), skipped')
            return output
        if rec is not None and not same and resumable:
            diff = ', '.join(f'{k}: {old.get(k)!r} -> {key.get(k)!r}' for k in sorted(set(old) | set(key))
                             if old.get(k) != key.get(k))
            raise DemoError(
                f'stage {name} in {self.out} was run with other settings ({diff}); its checkpoints cannot be '
                f'resumed with these. Use a new --out, or delete {os.path.join(self.out, "runs", name)} and '
                f'{output} to train it again')
        # Recorded only when the stage finishes: a stage that failed (e.g. on a bad setting) binds nothing, so the
        # corrected rerun is not refused. A training stage's unfinished checkpoints are guarded by its own command
        # record (open_clip_spike.train.resume), which refuses other settings with the differences listed.
        t0 = time.time()
        print(f'[{name}] ...', flush=True)
        result = fn(*args, **kwargs)
        self.records[name] = dict(key=key, seconds=time.time() - t0, finished=time.time())
        self._save()
        print(f'[{name}] done in {self.records[name]["seconds"]:.1f} s', flush=True)
        return result


def _zeroshot(model: str, pretrained: Optional[str], idx_dir: str, limit: Optional[int], output: str,
              progress: bool, precision: str = 'fp32') -> str:
    from open_clip_spike.zero_shot import zeroshot

    zeroshot(model, pretrained, dataset=idx_dir, classnames=CLASSNAMES, templates=CLASSNAMES, split='test',
             batch_size=256, limit=limit, output=output, progress=progress, precision=precision)
    return output


def _energy(cfg: DemoConfig, student_ckpt: str, idx_dir: str, output: str) -> str:
    import open_clip

    from open_clip_spike.data import get_classnames, get_templates
    from open_clip_spike.data.idx import IDXDataset
    from open_clip_spike.energy import class_prompts, clip_teacher_energy, spikeclip_energy_report
    from timm_spike.energy.plot import plot_energy

    model, _, preprocess = open_clip.create_model_and_transforms(cfg.student, pretrained=student_ckpt)
    model.eval()
    ds = IDXDataset(idx_dir, 'test', transform=preprocess)
    ds = torch.utils.data.Subset(ds, range(min(cfg.energy_images, len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=100)
    prompts = class_prompts(get_classnames(CLASSNAMES), get_templates(CLASSNAMES))
    tokens = open_clip.get_tokenizer(cfg.student)(prompts)
    teacher = clip_teacher_energy(cfg.teacher, prompts)
    report = spikeclip_energy_report(
        model, loader, tokens, model_name=cfg.student, data_name=f'Fashion-MNIST test ({len(ds)} images)',
        prompts_name=f'Fashion-MNIST class prompts ({len(prompts)})', teacher=teacher, progress=cfg.progress)
    folder = os.path.dirname(output)
    plot_energy(report.image, os.path.join(folder, 'energy.png'))
    _write_json(output, report.to_dict())
    print(report.table())
    return output


def _publish(cfg: DemoConfig, student_ckpt: str, energy_json: str, zs: Dict[str, Any], hub_dir: str,
             output: str) -> str:
    import open_clip

    from open_clip_spike.hub import write_hub_folder

    model, _, _ = open_clip.create_model_and_transforms(cfg.student, pretrained=student_ckpt)
    write_hub_folder(
        hub_dir, model.eval(), cfg.student, energy_report=json.loads(Path(energy_json).read_text()),
        zeroshot_results={'Fashion-MNIST test': {'top1': zs['top1'], 'top5': zs['top5']}},
        training=dict(teacher=cfg.teacher, stages='alignment pre-training -> dual-loss fine-tuning',
                      align_epochs=cfg.align_epochs, dual_epochs=cfg.dual_epochs, data='Fashion-MNIST'),
        overwrite=True, verify=True)
    same = embeddings_identical(model, f'local-dir:{hub_dir}', cfg.student)
    if not same:
        raise DemoError(f'the model loaded back from {hub_dir} gives different embeddings')
    _write_json(output, dict(hub_dir=hub_dir, loaded_as=f'local-dir:{hub_dir}', identical_embeddings=same))
    return output


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


@torch.no_grad()
def embeddings_identical(model: torch.nn.Module, loaded_name: str, tokenizer_name: str) -> bool:
    """True when ``loaded_name`` (e.g. ``local-dir:...``) gives exactly the embeddings of ``model``."""
    import open_clip

    loaded = open_clip.create_model(loaded_name).eval()
    g = torch.Generator().manual_seed(0)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(4, 3, *size, generator=g)
    tokens = open_clip.get_tokenizer(tokenizer_name)(['a photo of a coat.', 'a photo of a bag.'])
    return (torch.equal(model.encode_image(images), loaded.encode_image(images))
            and torch.equal(model.encode_text(tokens), loaded.encode_text(tokens)))


def _plot_summary(summary: Dict[str, Any], energy: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw=dict(width_ratios=[1, 1, 2.4]))
    names = ['teacher (ANN)', 'student (SNN)']
    colors = ['#7f7f7f', '#1f77b4']
    acc = [100 * summary['teacher_top1'], 100 * summary['student_top1']]
    axes[0].bar(names, acc, color=colors)
    axes[0].set_ylabel('zero-shot top-1 (%)')
    axes[0].set_title('Fashion-MNIST test accuracy')
    for i, v in enumerate(acc):
        axes[0].text(i, v, f'{v:.1f}', ha='center', va='bottom')
    en = [1e3 * summary['teacher_energy_mj'], 1e3 * summary['student_energy_mj']]
    axes[1].bar(names, en, color=colors)
    axes[1].set_ylabel('energy per image (uJ)')
    axes[1].set_title(f"image encoder energy (student / teacher = {summary['energy_ratio']:.2f})")
    for i, v in enumerate(en):
        axes[1].text(i, v, f'{v:.1f}', ha='center', va='bottom')
    rates = {n['name'].removeprefix('trunk.'): n['firing_rate'] for n in energy.get('neurons') or []}
    axes[2].bar(range(len(rates)), list(rates.values()), color='#1f77b4')
    axes[2].set_xticks(range(len(rates)))
    axes[2].set_xticklabels(list(rates), rotation=60, ha='right', fontsize=7)
    axes[2].set_ylabel('firing rate (spikes / neuron / step)')
    axes[2].set_title('student image tower: firing rate per neuron layer')
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def validate_config(cfg: DemoConfig) -> None:
    """Numbers and paths of the settings, checked before any stage runs (a ``ValueError`` names the setting)."""
    for name, low in (('teacher_epochs', 1), ('align_epochs', 1), ('dual_epochs', 1), ('batch_size', 1),
                      ('energy_images', 1), ('workers', 0), ('train_images', 1), ('test_images', 1)):
        value = getattr(cfg, name)
        if value is None and name in ('train_images', 'test_images'):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'--{name.replace("_", "-")} must be an integer >= {low}, got {value!r}')
    for name in ('teacher_lr', 'teacher_wd', 'align_lr', 'dual_lr', 'kl_weight', 'rate_weight'):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise ValueError(f'--{name.replace("_", "-")} must be a finite number >= 0, got {value!r}')
    if not 0 <= cfg.rate_target <= 1:
        raise ValueError(f'--rate-target is a firing rate in [0, 1], got {cfg.rate_target!r}')
    if cfg.train_images is not None and cfg.train_images < cfg.batch_size:
        raise ValueError(f'--train-images {cfg.train_images} is smaller than --batch-size {cfg.batch_size}: '
                         f'no full training batch')
    if cfg.teacher_pretrained and (os.sep in cfg.teacher_pretrained or cfg.teacher_pretrained.endswith(
            ('.pt', '.pth', '.bin', '.safetensors'))) and not os.path.isfile(cfg.teacher_pretrained):
        raise FileNotFoundError(f'--teacher-pretrained {cfg.teacher_pretrained}: no such file')
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f'--out {cfg.out} is a file; it must be a folder')


def run_demo(cfg: DemoConfig) -> Dict[str, Any]:
    """Run every stage (skipping finished ones) and return the summary (also written to OUT/summary.json)."""
    from timm_spike.layers import LIF_IMPL_ENV, LIF_IMPLS, lif_impl

    if cfg.bf16_eval is None:
        cfg = replace(cfg, bf16_eval=bf16_is_native())
    if cfg.lif_impl not in LIF_IMPLS:
        raise ValueError(f'Unknown lif_impl {cfg.lif_impl!r}; choose one of {LIF_IMPLS}')
    validate_config(cfg)
    previous = os.environ.get(LIF_IMPL_ENV)
    os.environ[LIF_IMPL_ENV] = cfg.lif_impl  # and any process a stage starts
    try:
        # one demo per output folder at a time (the kernel releases the lock when the process ends)
        with _locked_out(cfg.out), lif_impl(cfg.lif_impl):  # this process
            return _run_demo(cfg)
    finally:
        if previous is None:
            os.environ.pop(LIF_IMPL_ENV, None)
        else:
            os.environ[LIF_IMPL_ENV] = previous


def _locked_out(out: str) -> FolderLock:
    try:
        return FolderLock(out, 'spikeclip demo').acquire()
    except FolderInUseError as e:
        raise DemoError(f'{e} (--out)') from None


def _run_demo(cfg: DemoConfig) -> Dict[str, Any]:
    out = cfg.out
    os.makedirs(out, exist_ok=True)
    stages = _Stages(out)
    runs = os.path.join(out, 'runs')
    idx_dir = find_fashion_mnist(cfg.data, download_root=os.path.join(out, 'torchvision'))
    data_dir = os.path.join(out, 'data')
    # What each stage's output depends on (besides the stages it reads, listed in ``after``).
    c = asdict(cfg)
    common = {k: c[k] for k in ('batch_size', 'precision', 'seed', 'extra_train_args')}
    teacher_id = dict(teacher=cfg.teacher, teacher_pretrained=cfg.teacher_pretrained)
    teacher_after = () if cfg.teacher_pretrained else ('teacher',)
    student_train = dict(common, **teacher_id, student=cfg.student, lif_impl=cfg.lif_impl,
                         rate_weight=cfg.rate_weight, rate_target=cfg.rate_target)
    csv = stages.run('data', os.path.join(data_dir, 'train.csv'), write_captioned_csv,
                     idx_dir, 'train', data_dir, cfg.train_images, cfg.seed, cfg.progress,
                     settings=dict(data=idx_dir, train_images=cfg.train_images, seed=cfg.seed))
    n_train = sum(1 for _ in open(csv)) - 1

    if cfg.teacher_pretrained:
        teacher_ckpt = cfg.teacher_pretrained
    else:
        teacher_ckpt = stages.run(
            'teacher', os.path.join(out, 'teacher.safetensors'), _train, cfg, runs, 'teacher',
            'open_clip_spike.train.upstream', [], cfg.teacher, csv, cfg.teacher_epochs, cfg.teacher_lr, n_train,
            'stage 0: teacher (open_clip loop)', wd=cfg.teacher_wd,
            settings=dict(common, teacher=cfg.teacher, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr,
                          wd=cfg.teacher_wd), after=('data',), resumable=True)
    distill = ['--distill-model', cfg.teacher, '--distill-pretrained', teacher_ckpt]
    if cfg.rate_weight:
        distill += ['--spike-rate-weight', str(cfg.rate_weight), '--spike-rate-target', str(cfg.rate_target)]
    align = stages.run(
        'align', os.path.join(out, 'align.safetensors'), _train, cfg, runs, 'align',
        'open_clip_spike.train', ['--spike-loss', 'align'] + distill,
        cfg.student, csv, cfg.align_epochs, cfg.align_lr, n_train, 'stage 1: alignment pre-training',
        settings=dict(student_train, epochs=cfg.align_epochs, lr=cfg.align_lr),
        after=('data',) + teacher_after, resumable=True)
    student = stages.run(
        'dual', os.path.join(out, 'dual.safetensors'), _train, cfg, runs, 'dual',
        'open_clip_spike.train', ['--spike-loss', 'dual', '--spike-classnames', CLASSNAMES,
         '--spike-templates', CLASSNAMES, '--kl-weight', str(cfg.kl_weight), '--pretrained', align] + distill,
        cfg.student, csv, cfg.dual_epochs, cfg.dual_lr, n_train, 'stage 2: dual-loss fine-tuning',
        settings=dict(student_train, epochs=cfg.dual_epochs, lr=cfg.dual_lr, kl_weight=cfg.kl_weight),
        after=('data', 'align') + teacher_after, resumable=True)

    test = dict(test_images=cfg.test_images, data=idx_dir)
    zs_t = stages.run('zeroshot_teacher', os.path.join(out, 'zeroshot_teacher.json'), _zeroshot, cfg.teacher,
                      teacher_ckpt, idx_dir, cfg.test_images, os.path.join(out, 'zeroshot_teacher.json'), cfg.progress,
                      settings=dict(test, **teacher_id), after=teacher_after)
    zs_s = stages.run('zeroshot_student', os.path.join(out, 'zeroshot_student.json'), _zeroshot, cfg.student,
                      student, idx_dir, cfg.test_images, os.path.join(out, 'zeroshot_student.json'), cfg.progress,
                      settings=dict(test, lif_impl=cfg.lif_impl), after=('dual',))
    bf16 = {}
    if cfg.bf16_eval:
        for who, model, ckpt in (('teacher', cfg.teacher, teacher_ckpt), ('student', cfg.student, student)):
            path = os.path.join(out, f'zeroshot_{who}_bf16.json')
            stages.run(f'zeroshot_{who}_bf16', path, _zeroshot, model, ckpt, idx_dir, cfg.test_images, path,
                       cfg.progress, 'bf16', settings=dict(test, **teacher_id, lif_impl=cfg.lif_impl),
                       after=teacher_after if who == 'teacher' else ('dual',))
            bf16[who] = json.loads(Path(path).read_text())
    energy_json = os.path.join(out, 'energy', 'energy.json')
    os.makedirs(os.path.dirname(energy_json), exist_ok=True)
    stages.run('energy', energy_json, _energy, cfg, student, idx_dir, energy_json,
               settings=dict(energy_images=cfg.energy_images, data=idx_dir, **teacher_id), after=('dual',))
    zs_teacher, zs_student = (json.loads(Path(p).read_text()) for p in (zs_t, zs_s))
    hub_dir = os.path.join(out, 'hub')
    publish_json = os.path.join(out, 'publish.json')
    stages.run('publish', publish_json, _publish, cfg, student, energy_json, zs_student, hub_dir, publish_json,
               after=('dual', 'energy', 'zeroshot_student'))
    published = json.loads(Path(publish_json).read_text())

    energy = json.loads(Path(energy_json).read_text())
    teacher_energy = (energy.get('teacher') or {}).get('energy_mj')
    summary = dict(
        teacher=cfg.teacher, student=cfg.student, T=energy.get('T'),
        test_images=zs_student['n'],
        teacher_top1=zs_teacher['top1'], teacher_top5=zs_teacher['top5'],
        student_top1=zs_student['top1'], student_top5=zs_student['top5'],
        top1_ratio=zs_student['top1'] / max(zs_teacher['top1'], 1e-12),
        teacher_energy_mj=teacher_energy, student_energy_mj=energy['energy_mj_per_image'],
        student_ann_energy_mj=energy['ann_energy_mj_per_image'],
        energy_ratio=energy['energy_mj_per_image'] / teacher_energy if teacher_energy else None,
        student_mean_firing_rate=energy.get('mean_firing_rate'),
        hub_roundtrip_identical=published['identical_embeddings'], hub_dir=hub_dir,
        seconds=sum(v for k, v in stages.times.items() if not k.endswith('_bf16')),
        stage_seconds=dict(stages.times), config=asdict(cfg), targets=TARGETS,
    )
    if bf16:
        summary['bf16_inference'] = dict(
            teacher_top1=bf16['teacher']['top1'], student_top1=bf16['student']['top1'],
            teacher_top1_change=bf16['teacher']['top1'] - zs_teacher['top1'],
            student_top1_change=bf16['student']['top1'] - zs_student['top1'],
            # the evaluations' own wall times (classifier + images), fp32 vs bf16 autocast
            student_seconds_fp32=zs_student.get('seconds'), student_seconds_bf16=bf16['student'].get('seconds'),
        )
    summary['targets_met'] = dict(
        top1=summary['top1_ratio'] >= TARGETS['top1_ratio_min'],
        energy=summary['energy_ratio'] is not None and summary['energy_ratio'] <= TARGETS['energy_ratio_max'],
        time=summary['seconds'] <= TARGETS['seconds_max'],
    )
    _write_json(os.path.join(out, 'summary.json'), summary)
    _plot_summary(summary, energy, os.path.join(out, 'summary.png'))
    print(format_summary(summary))
    return summary


def format_summary(s: Dict[str, Any]) -> str:
    ok = lambda b: 'met' if b else 'NOT met'  # noqa: E731
    tm = s['targets_met']
    lines = [
        '',
        f"SpikeCLIP demo on Fashion-MNIST ({s['test_images']} test images), T={s['T']}",
        f"{'':24}{'teacher (ANN)':>16}{'student (SNN)':>16}{'ratio':>10}",
        f"{'zero-shot top-1':24}{100 * s['teacher_top1']:>15.2f}%{100 * s['student_top1']:>15.2f}%"
        f"{s['top1_ratio']:>10.3f}   target >= {TARGETS['top1_ratio_min']}: {ok(tm['top1'])}",
        f"{'zero-shot top-5':24}{100 * s['teacher_top5']:>15.2f}%{100 * s['student_top5']:>15.2f}%",
        f"{'energy / image (uJ)':24}{1e3 * (s['teacher_energy_mj'] or float('nan')):>16.2f}"
        f"{1e3 * s['student_energy_mj']:>16.2f}{(s['energy_ratio'] or float('nan')):>10.3f}"
        f"   target <= {TARGETS['energy_ratio_max']}: {ok(tm['energy'])}",
        f"{'student as ANN (uJ)':24}{'':>16}{1e3 * s['student_ann_energy_mj']:>16.2f}",
        f"{'time (s)':24}{s['seconds']:>16.0f}   target <= {TARGETS['seconds_max']}: {ok(tm['time'])}   "
        + ', '.join(f'{k} {v:.0f}' for k, v in s['stage_seconds'].items()),
        f"hub round trip: identical embeddings = {s['hub_roundtrip_identical']}",
    ]
    b = s.get('bf16_inference')
    if b:
        secs = ''
        if b.get('student_seconds_fp32') and b.get('student_seconds_bf16'):
            secs = (f"; student evaluation {b['student_seconds_fp32']:.0f} s fp32, "
                    f"{b['student_seconds_bf16']:.0f} s bf16")
        lines.insert(-2, f"{'bf16 autocast top-1':24}{100 * b['teacher_top1']:>15.2f}%"
                         f"{100 * b['student_top1']:>15.2f}%   change vs fp32: teacher "
                         f"{100 * b['teacher_top1_change']:+.2f}, student {100 * b['student_top1_change']:+.2f} "
                         f"points{secs}")
    return '\n'.join(lines)
