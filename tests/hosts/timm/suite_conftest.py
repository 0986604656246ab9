"""conftest for timm's own ``tests/test_models.py`` (from timm's sdist), run over timm_spike's models only.

``run_timm_suite.py`` copies this file as ``conftest.py`` next to timm's tests (in a cache folder, never into this
repository). It
- imports ``timm_spike`` first, so the lists that ``test_models.py`` builds from ``timm.list_models()`` at import
  hold this project's models;
- adds this project's model modules to the modules timm lists for ``forward_intermediates`` / features tests
  (``FEAT_INTER_FILTERS`` is built inside ``test_models.py``; the only hook before its use is ``list_models``);
- deselects every test item that is not about one of this project's models;
- skips, with the reason, the tests that cannot pass (``SKIPS``).
"""
import fnmatch
import os
from typing import Dict, List, Tuple

import pytest
import timm

import timm_spike  # noqa: F401  (registers the models with timm)

PROJECT_MODULES = ('spikingformer', 'spikformer', 'spike_driven', 'qkformer', 'sew_resnet')
# The modules test_models.py lists for forward_intermediates (FEAT_INTER_FILTERS); its first entry identifies it.
_FEAT_INTER_MARKER = 'vision_transformer'

# (test function pattern, model pattern) -> reason. Kept short and each with a reason a timm maintainer accepts.
_NO_TORCHSCRIPT = (
    "TorchScript cannot compile spikingjelly 2.0's modules, which every layer here is built on: the step_mode "
    "property of its base.StepModule does not script ('Can't redefine method: __step_mode_getter'), its neurons keep "
    "state in MemoryModule's dynamic attributes and dispatch in Python. torch.jit.script is deprecated in PyTorch 2.x "
    "in favour of torch.compile / torch.export, which these models support")
SKIPS: Dict[Tuple[str, str], str] = {
    ('test_model_forward_torchscript', '*'): _NO_TORCHSCRIPT,
    ('test_model_forward_fx_torchscript', '*'): _NO_TORCHSCRIPT,
}

_list_models = timm.list_models


def _list_models_with_project(*args, **kwargs) -> List[str]:
    module = kwargs.get('module', '')
    if isinstance(module, (list, tuple)) and _FEAT_INTER_MARKER in module:
        kwargs['module'] = list(module) + [m for m in PROJECT_MODULES if m not in module]
    return _list_models(*args, **kwargs)


timm.list_models = _list_models_with_project


def project_models() -> List[str]:
    """This project's registered models, optionally narrowed by ``$TIMM_SPIKE_SUITE_MODELS`` (comma-separated
    fnmatch patterns)."""
    names = _list_models(module=list(PROJECT_MODULES))
    patterns = [p for p in os.environ.get('TIMM_SPIKE_SUITE_MODELS', '').split(',') if p]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    ours = set(project_models())
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        name = params.get('model_name')
        if name not in ours:
            drop.append(item)
            continue
        test = item.originalname if hasattr(item, 'originalname') else item.name
        for (test_pat, model_pat), reason in SKIPS.items():
            if fnmatch.fnmatch(test, test_pat) and fnmatch.fnmatch(name, model_pat):
                item.add_marker(pytest.mark.skip(reason=reason))
                break
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
