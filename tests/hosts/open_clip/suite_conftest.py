"""conftest for open_clip's own tests (``tests/`` of the installed open_clip_torch's sdist), run over SpikeCLIP.

``run_open_clip_suite.py`` copies this file as ``conftest.py`` next to open_clip's tests (in a cache folder, never
into this repository). It

- imports ``open_clip_spike`` first, so the model list that ``test_inference.py`` builds from
  ``open_clip.list_models()`` at import holds every SpikeCLIP config;
- keeps ``test_inference_with_data`` for the SpikeCLIP configs (the runner makes their reference outputs first,
  in another process, with open_clip's ``util_test.create_test_data``);
- runs the training-loop tests of ``test_training_simple.py`` on each SpikeCLIP config: their ``main([...])``
  call is run with ``--model <config>`` instead of the ANN each test names, and ``test_training`` once more with
  ``--grad-checkpointing``; on a CPU without native bf16 with ``--precision fp32`` (``default_precision``, what
  ``spikeclip train`` does there: the tests' default ``amp`` would emulate bf16), everything else unchanged;
- makes two of open_clip's silent fallbacks fail or skip loudly: a tower that refuses ``set_grad_checkpointing``
  (open_clip logs a warning and goes on) fails the grad-checkpointing run, and ``--torchscript`` (open_clip
  catches the scripting error and trains unscripted) is skipped with the reason scripting fails;
- deselects the tests that are about other models or need the network (``NOT_APPLICABLE``), and skips, with the
  reason, what cannot apply to a spiking model (``SKIPS``).

``$OPEN_CLIP_SPIKE_SUITE_MODELS`` (comma-separated fnmatch patterns) narrows the configs, and
``$OPEN_CLIP_SPIKE_SUITE_TRAIN_MODELS`` narrows those the training-loop tests run on (default: all of them).
"""
import fnmatch
import logging
import os
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

import open_clip
import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs with open_clip)
from timm_spike.utils import tune_allocator
from open_clip_spike import list_spikeclip_models
from open_clip_spike.train.main import default_precision

tune_allocator()  # as the spikeclip commands run: glibc keeps freed tensor memory for reuse

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or max(1, min(2, os.cpu_count() or 1))))

# test file -> why none of its tests are about this project's models (they are deselected, not skipped).
NOT_APPLICABLE: Dict[str, str] = {
    'test_download_pretrained.py': 'downloads open_clip\'s pretrained weights (network; not a model test)',
    'test_hf_model.py': 'Hugging Face transformers text towers (open_clip\'s HFTextEncoder), none in SpikeCLIP',
    'test_inference_simple.py': 'ViT-B-32 / roberta with pretrained weights from the network',
    'test_num_shards.py': 'webdataset shard counting (data loading, no model)',
    'test_wds.py': 'webdataset loading (data loading, no model)',
}
# training tests that are about one ANN's own parts (deselected): test -> reason
NOT_APPLICABLE_TRAINING: Dict[str, str] = {
    'test_training_coca': 'CoCa\'s captioning decoder and loss; SpikeCLIP has no text decoder',
}
# training tests run on each SpikeCLIP config (test -> what it checks beyond a training step)
TRAINING_TESTS = {
    'test_training': 'one epoch of open_clip_train (CLIP loss, save, zero-shot hook)',
    'test_training_mt5': 'text tower locked with --lock-text-unlocked-layers 2',
    'test_training_unfreezing_vit': 'image tower locked with --lock-image-unlocked-groups 5, --accum-freq 2',
    'test_training_clip_with_jit': '--torchscript',
}
GRAD_CHECKPOINTING = 'grad-checkpointing'

# (test pattern, model pattern) -> reason: what cannot apply to a SpikeCLIP config.
SKIPS: Dict[tuple, str] = {
    ('test_training_mt5', 'SpikeCLIP-DemoTeacher'):
        "the ANN teacher's text tower is open_clip's own TextTransformer, whose lock() asserts freeze_layer_norm "
        "('Unfreezing LayerNorm is not supported'), which the test (written for an HF text tower, mt5) does not "
        "pass; it fails the same on open_clip's own CLIP configs",
}

_GC_REFUSED = 'grad checkpointing not supported'


class _SubclassOf:
    """Equal to a class and to its subclasses, for ``type(model) in [open_clip.CLIP, open_clip.CustomTextCLIP]``.

    ``test_inference.py`` compares exact types and takes every other class for CoCa (whose forward always returns
    a dict). SpikeCLIP is a ``CustomTextCLIP`` subclass with the same ``output_dict`` contract, so with this the
    test runs its tuple-vs-dict comparison on it instead of asserting a dict from a tuple-returning model.
    """

    def __init__(self, cls: type):
        self.cls = cls

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, type) and issubclass(other, self.cls)

    def __hash__(self) -> int:
        return hash(self.cls)


def _subclass_aware_open_clip() -> types.ModuleType:
    proxy = types.ModuleType('open_clip')
    proxy.__dict__.update(open_clip.__dict__)
    proxy.CLIP = _SubclassOf(open_clip.CLIP)
    proxy.CustomTextCLIP = _SubclassOf(open_clip.CustomTextCLIP)
    return proxy


def _patterns(var: str) -> List[str]:
    return [p for p in os.environ.get(var, '').split(',') if p]


def _select(names: List[str], var: str) -> List[str]:
    patterns = _patterns(var)
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def suite_models() -> List[str]:
    """The SpikeCLIP configs the suite runs on (``$OPEN_CLIP_SPIKE_SUITE_MODELS`` narrows them)."""
    return _select(list_spikeclip_models(), 'OPEN_CLIP_SPIKE_SUITE_MODELS')


def training_models() -> List[str]:
    return _select(suite_models(), 'OPEN_CLIP_SPIKE_SUITE_TRAIN_MODELS')


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = metafunc.function.__name__
    if Path(str(metafunc.definition.fspath)).name != 'test_training_simple.py' or name not in TRAINING_TESTS:
        return
    params = [(m, '') for m in training_models()]
    if name == 'test_training':
        params += [(m, GRAD_CHECKPOINTING) for m in training_models()]
    ids = [m + (f'+{v}' if v else '') for m, v in params]
    metafunc.parametrize('spikeclip_model', params, ids=ids, indirect=True)


def _replace_model(argv: List[str], model: str, variant: str, logs: Path) -> List[str]:
    argv = list(argv)
    argv[argv.index('--model') + 1] = model
    argv += ['--logs', str(logs)]  # a fresh folder: open_clip_train refuses (and returns) on an existing run name
    if variant == GRAD_CHECKPOINTING:
        argv.append('--grad-checkpointing')
    # The tests give no --precision, so open_clip_train trains under its default amp: bf16 autocast on a CPU. That
    # is 10-20x slower than fp32 for the spiking towers where bf16 is emulated (AVX2), and still about 10x slower
    # with AVX512-BF16 (a SpikeCLIP-Spikingformer-4-384 step of batch 4: 16-46 s); the suite tests the loop, so on a
    # CPU it runs in fp32 (amp is tested by this project's own torchrun test).
    if '--precision' not in argv and not torch.cuda.is_available():
        return ['--precision', 'fp32'] + argv
    return default_precision(argv)


class _WarningCatcher(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def spikeclip_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Runs open_clip's training tests on a SpikeCLIP config (parametrised through ``pytest_generate_tests``).

    The test module's ``main`` is replaced by a call of open_clip_train's ``main`` with ``--model`` swapped. The
    wrapper also checks what the test cannot see: the run wrote its epoch-1 checkpoint (open_clip_train's main
    logs some errors and returns instead of raising) and no tower refused grad checkpointing.
    """
    param: Optional[tuple] = getattr(request, 'param', None)
    if param is None:
        if Path(str(request.node.fspath)).name == 'test_inference.py':
            monkeypatch.setattr(request.module, 'open_clip', _subclass_aware_open_clip())
        yield None
        return
    model, variant = param
    test = request.node.originalname
    if test == 'test_training_clip_with_jit':
        from open_clip_spike.torchscript import check_torchscript
        reason = check_torchscript(open_clip.create_model(model))
        if reason is not None:
            pytest.skip(f'torch.jit.script cannot compile {model}: {reason}')
    upstream = request.module.main
    logs = tmp_path / 'logs'
    catcher = _WarningCatcher()

    def main(argv: List[str]):
        argv = _replace_model(argv, model, variant, logs)
        logging.getLogger().addHandler(catcher)
        try:
            out = upstream(argv)
        finally:
            logging.getLogger().removeHandler(catcher)
        saved = sorted(logs.glob('*/checkpoints/epoch_1.pt'))
        assert saved, f'open_clip_train returned {out!r} without saving epoch_1.pt (see its log above)'
        refused = [m for m in catcher.messages if _GC_REFUSED in m]
        assert not refused, f'a tower refused grad checkpointing: {refused[0]}'
        return out

    monkeypatch.setattr(request.module, 'main', main)
    monkeypatch.chdir(tmp_path)
    yield param


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    ours = set(suite_models())
    keep, drop = [], []
    for item in items:
        file = Path(str(item.fspath)).name
        test = getattr(item, 'originalname', item.name)
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        if file in NOT_APPLICABLE or test in NOT_APPLICABLE_TRAINING:
            drop.append(item)
            continue
        if file == 'test_inference.py':
            model = params.get('model_name')
        elif file == 'test_training_simple.py':
            model = (params.get('spikeclip_model') or (None,))[0]
        else:
            model = None
        if model not in ours:
            drop.append(item)
            continue
        for (test_pat, model_pat), reason in SKIPS.items():
            if fnmatch.fnmatch(test, test_pat) and fnmatch.fnmatch(model, model_pat):
                item.add_marker(pytest.mark.skip(reason=reason))
                break
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
