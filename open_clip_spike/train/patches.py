"""Every patch of open_clip_train that the SpikeCLIP integration needs, each with its reason.

Written for open_clip_torch ``UPSTREAM_VERSION`` (the one constant of ``open_clip_spike.patches``, which also holds
the library's patch of open_clip's factory); ``patched_open_clip_train`` applies them for one run and undoes them
on exit. No upstream issue or pull request proposes to retire any of them yet, unless one is named at the patch.
"""
import contextlib
import functools
import inspect
import logging
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from open_clip_spike.patches import UPSTREAM_VERSION, check_upstream_version

from .data import tolerant_csv_patches
from .resume import ResumeState
from .safety import step_enumerate

__all__ = ['UPSTREAM_VERSION', 'log_patches', 'patched_open_clip_train', 'patched_upstream_loop', 'quiet_torch_logs',
           'resume_patches', 'speed_patches', 'zero_shot_names']

_logger = logging.getLogger(__name__)



class _CpuSafeDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that accepts ``device_ids=[cpu]`` (dropped, as PyTorch requires on CPU) and leaves a module without
    trainable parameters (the frozen teacher) unwrapped (DDP refuses it and it has nothing to synchronise)."""

    def __new__(cls, module: nn.Module, *args, **kwargs):
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return super().__new__(cls)

    def __init__(self, module: nn.Module, device_ids: Optional[list] = None, **kwargs):
        if device_ids and all(torch.device(d).type == 'cpu' for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """open_clip_train.zero_shot.accuracy without float(ndarray) (an error from numpy 2.4 on) and with k
    capped at the number of classes (upstream's topk(5) fails with fewer than 5 classes)."""
    k_max = min(max(topk), output.shape[1])
    pred = output.topk(k_max, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:min(k, k_max)].reshape(-1).float().sum().item() for k in topk]


def _tar_file_expander_without_eof(expander):
    params = inspect.signature(expander).parameters
    if 'eof_value' not in params:
        return expander
    return functools.partial(expander, eof_value=None)


def _seeded_sample_shuffle(get_wds_dataset):
    """upstream's ``get_wds_dataset`` with the training samples' shuffle seeded by ``--seed`` and the epoch.

    Upstream seeds the shard shuffle (its ``detshuffle2``) but not the sample shuffle after it (``wds.shuffle``,
    whose seed comes from the clock and the pid): the order of the samples, and so the trained weights, changed from
    run to run, and a resumed run could not repeat the one it replaced. The same stage is used for both here.
    """
    def wrapped(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        from webdataset.filters import FilterFunction, _shuffle

        import open_clip_train.data as oc_data
        info = get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        if not is_train:
            return info
        outer = info.dataloader  # a WebLoader: a pipeline around a DataLoader around the dataset's pipeline
        seeded = 0
        for stages in [outer.pipeline] + [getattr(s.dataset, 'pipeline', []) for s in outer.pipeline
                                          if hasattr(s, 'dataset')]:
            for i, stage in enumerate(stages):
                if isinstance(stage, FilterFunction) and stage.f is _shuffle:
                    bufsize, initial = (list(stage.args) + [stage.kw.get('bufsize'), stage.kw.get('initial')])[:2]
                    stages[i] = oc_data.detshuffle2(bufsize=bufsize, initial=initial, seed=args.seed,
                                                    epoch=info.shared_epoch)
                    seeded += 1
        if not seeded:
            _logger.warning('open_clip_train.data.get_wds_dataset has no sample shuffle stage to seed; the order '
                            'of webdataset samples may differ between runs')
        return info
    return wrapped


class _FusedAdamWOnCpu:
    """``torch.optim`` as open_clip_train's ``main`` sees it, with AdamW's fused kernel on CPU parameters.

    Upstream builds ``optim.AdamW`` without ``fused``/``foreach``; on the CPU PyTorch then takes its per-parameter
    loop (about a tenth of a step of the demo's teacher), while ``fused=True`` is one kernel over all of them.
    """

    def __getattr__(self, name):
        return getattr(torch.optim, name)

    @staticmethod
    def AdamW(params, *args, **kwargs):
        groups = [dict(g, params=list(g['params'])) if isinstance(g, dict) else g for g in params]
        tensors = [p for g in groups for p in (g['params'] if isinstance(g, dict) else [g])]
        if 'fused' not in kwargs and 'foreach' not in kwargs and tensors and all(
                p.device.type == 'cpu' and p.dtype in (torch.float32, torch.float64) for p in tensors):
            kwargs['fused'] = True
        return torch.optim.AdamW(groups, *args, **kwargs)


def log_patches() -> list:
    """Patches of open_clip_train's logging set-up."""
    import open_clip_train.main as oc_main
    return [(oc_main, 'setup_logging', _quiet_setup_logging(oc_main.setup_logging))]


@contextlib.contextmanager
def quiet_torch_logs():
    """Only `log_patches`, for a command that runs open_clip_train's ``main`` unpatched otherwise."""
    with _applied(log_patches()):
        yield


def speed_patches() -> list:
    """Patches that only make open_clip_train faster (same method, same results up to rounding)."""
    import open_clip_train.main as oc_main
    return [(oc_main, 'optim', _FusedAdamWOnCpu())]


def resume_patches(state: ResumeState) -> list:
    """The patches behind exact resumption (``open_clip_spike.train.resume``): (module, attribute, value)."""
    import open_clip_train.main as oc_main
    import open_clip_train.train as oc_train
    state.torch_save = torch.save
    return [
        # train_one_epoch numbers an epoch's steps with enumerate(dataloader) from 0; a run resumed mid-epoch
        # skips the steps already trained on, so the count (and with it the learning-rate schedule and the logs)
        # must start at the resumed step (a module global shadows the builtin for that module only).
        (oc_train, 'enumerate', step_enumerate),
        # checkpoints hold no random state and torch.save writes them in place (a kill leaves a truncated file):
        # add the state and write through a temporary file (only upstream's checkpoint dicts are touched).
        (torch, 'save', functools.partial(state.save, torch.save)),
        # --resume latest takes the file that sorts last, readable or not (even upstream's own tmp.pt).
        (oc_main, 'get_latest_checkpoint', state.get_latest_checkpoint),
        # the checkpoint's random state must reach the first resumed epoch (main imported pt_load by name).
        (oc_main, 'pt_load', state.pt_load),
    ]


_MISSING = object()


@contextlib.contextmanager
def _applied(patches: list):
    saved = [(mod, name, getattr(mod, name, _MISSING)) for mod, name, _ in patches]
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        yield
    finally:
        for mod, name, value in reversed(saved):
            if value is _MISSING:
                delattr(mod, name)
            else:
                setattr(mod, name, value)


def _check_version() -> None:
    check_upstream_version('open_clip_spike.train.patches (open_clip_train)')


_TORCH_LOGGERS = ('torch',)  # torch's own loggers: torch._dynamo, torch._inductor, torch.fx, torch._subclasses...


def _quiet_setup_logging(setup_logging: Callable) -> Callable:
    """open_clip_train's ``setup_logging`` that leaves torch's loggers at the levels torch gave them.

    Upstream sets every logger that exists to the run's level (INFO), torch's compiler loggers included: a run
    whose neuron compiles prints hundreds of lines of torch._dynamo / FakeTensor internals. torch sets its loggers
    from ``$TORCH_LOGS`` (WARNING without it), so keeping torch's levels keeps what the user asked torch for.
    """
    def wrapped(log_file, level, include_host=False):
        manager = logging.root.manager
        saved = {n: lg.level for n, lg in list(manager.loggerDict.items())
                 if isinstance(lg, logging.Logger) and n.split('.')[0] in _TORCH_LOGGERS}
        setup_logging(log_file, level, include_host=include_host)
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)
    return wrapped


@contextlib.contextmanager
def zero_shot_names(classnames: Sequence[str], templates: Sequence[str]):
    """open_clip_train's zero-shot evaluation with the run's class names and templates.

    Why: ``open_clip_train.zero_shot`` builds its classifier from its module globals ``IMAGENET_CLASSNAMES`` and
    ``OPENAI_IMAGENET_TEMPLATES`` (ImageNet only); they are swapped for the evaluation and restored after it.
    """
    import open_clip_train.zero_shot as zs
    _check_version()
    saved = zs.IMAGENET_CLASSNAMES, zs.OPENAI_IMAGENET_TEMPLATES
    zs.IMAGENET_CLASSNAMES, zs.OPENAI_IMAGENET_TEMPLATES = list(classnames), list(templates)
    try:
        yield
    finally:
        zs.IMAGENET_CLASSNAMES, zs.OPENAI_IMAGENET_TEMPLATES = saved


@contextlib.contextmanager
def patched_upstream_loop(state: ResumeState):
    """Only the resume (and speed) patches: open_clip_train's own loop and losses (the demo's ANN teacher)."""
    import open_clip_train.main as oc_main
    _check_version()
    patches = resume_patches(state) + speed_patches() + log_patches() + [
        # each epoch starts from the random state the previous one ended with (saved in the checkpoint).
        (oc_main, 'train_one_epoch', state.wrap_train_one_epoch(oc_main.train_one_epoch)),
    ]
    with _applied(patches):
        yield


@contextlib.contextmanager
def patched_open_clip_train(run, state: Optional[ResumeState] = None):
    """Every patch of open_clip_train (written for open_clip_torch ``UPSTREAM_VERSION``) and why; undone on exit."""
    import open_clip_train.main as oc_main
    import open_clip_train.train as oc_train
    import open_clip_train.zero_shot as oc_zero_shot
    _check_version()
    state = state or ResumeState()
    run._upstream_zero_shot_eval = oc_train.zero_shot_eval
    run._upstream_train_one_epoch = oc_main.train_one_epoch
    patches = [
        # main imported create_loss by name: the only way to plug in AlignmentLoss / DualLoss.
        (oc_main, 'create_loss', run.create_loss),
        # to see the student and teacher (embedding check, frozen teacher, hooks, teacher-size data).
        (oc_main, 'create_model_and_transforms', run.create_model_and_transforms),
        # main DDP-wraps with device_ids=[device], which PyTorch rejects on CPU; it also wraps the frozen teacher.
        (torch.nn.parallel, 'DistributedDataParallel', _CpuSafeDDP),
        # zero-shot knows only ImageNet's class names: use the run's (train imported zero_shot_eval by name).
        (oc_train, 'zero_shot_eval', run.zero_shot_eval),
        # accuracy() calls float() on a 1-element array, an error from numpy 2.4 on.
        (oc_zero_shot, 'accuracy', _accuracy),
        # per-epoch wall time (spike_epochs.jsonl) and the teacher-feature cache; inside it, each epoch starts
        # from the random state the previous one ended with (saved in the checkpoint: exact resumption).
        (oc_main, 'train_one_epoch', state.wrap_train_one_epoch(run.train_one_epoch)),
    ] + resume_patches(state) + speed_patches() + log_patches() + tolerant_csv_patches()
    # a CSV image that cannot be read skips its sample (counted, up to --spike-max-bad-images) instead of ending
    # the run, as open_clip_train's webdataset handlers skip theirs (open_clip_spike.train.data).
    import open_clip_train.data as oc_data
    if hasattr(oc_data, 'tar_file_expander'):  # only with webdataset installed
        # webdataset >= 1.0 ends each shard with an {} marker that upstream's group_by_keys_nothrow takes for
        # a file (KeyError 'fname'); ask for no marker (webdataset < 1.0 behaviour).
        patches.append((oc_data, 'tar_file_expander', _tar_file_expander_without_eof(oc_data.tar_file_expander)))
        # the samples' shuffle seeded like the shards' (exact reruns and resumption with webdataset input).
        patches.append((oc_data, 'get_wds_dataset', _seeded_sample_shuffle(oc_data.get_wds_dataset)))
    with _applied(patches):
        yield
