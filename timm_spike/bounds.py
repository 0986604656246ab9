"""Bounded before allocated: check a model config's types by key and estimate its size on the meta device before
the model is built for real.

A config from a file (a Hub folder's ``open_clip_config.json``, a user's model config) can ask for a network
that takes minutes and tens of GB to build (depth 10,000), or pass a string where a number goes. `check_types`
names the key of a value whose type differs from the one the reference configs use; `check_size` builds the
model on the meta device (no memory, no values) and counts its parameters and the bytes of one sample's layer
outputs (a forward on the meta device), against limits the user can raise:

- ``SPIKECLIP_MAX_PARAMS`` (default 1e9 parameters: 4 GB of float32 weights),
- ``SPIKECLIP_MAX_ACTIVATION_BYTES`` (default 8 GiB of layer outputs per sample).

Building 10,000 blocks even on the meta device takes long, so repeated blocks are not built one by one: every
depth (``depth``, ``layers``, ``num_layers``: an int, or each int of a list) above 2 is built at 1 and at 2, and
the size is extrapolated linearly (blocks of one stage are alike, so this is exact for the parameters).
"""
import copy
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

import torch
import torch.nn as nn

__all__ = ['MAX_PARAMS_ENV', 'MAX_ACTIVATION_ENV', 'DEFAULT_MAX_PARAMS', 'DEFAULT_MAX_ACTIVATION_BYTES',
           'ConfigTypeError', 'ModelTooLargeError', 'check_size', 'check_types', 'config_types', 'estimate_size',
           'size_limits', 'check_numbers_not_strings', 'check_timm_model_args', 'install_timm_config_check']

MAX_PARAMS_ENV = 'SPIKECLIP_MAX_PARAMS'
MAX_ACTIVATION_ENV = 'SPIKECLIP_MAX_ACTIVATION_BYTES'
DEFAULT_MAX_PARAMS = 10 ** 9
DEFAULT_MAX_ACTIVATION_BYTES = 8 * 2 ** 30
DEPTH_KEYS = ('depth', 'layers', 'num_layers')

Path = Tuple[Any, ...]


class ConfigTypeError(ValueError):
    """A config value of the wrong type, named by its key."""


class ModelTooLargeError(ValueError):
    """A config whose model would exceed the parameter or activation limit."""


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return 'bool'
    if isinstance(v, int):
        return 'int'
    if isinstance(v, float):
        return 'float'
    if isinstance(v, str):
        return 'str'
    if isinstance(v, (list, tuple)):
        return 'list'
    if isinstance(v, Mapping):
        return 'dict'
    return 'null' if v is None else type(v).__name__


def _nodes(cfg: Mapping[str, Any]) -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) of every node of a config, parents before children (list elements under ``KEY[]``)."""
    def walk(node: Any, key: str):
        yield key, node
        t = _type_name(node)
        if t == 'dict':
            for k, v in node.items():
                yield from walk(v, f'{key}.{k}' if key else str(k))
        elif t == 'list':
            for v in node:
                yield from walk(v, f'{key}[]')

    for k, v in cfg.items():
        yield from walk(v, str(k))


def config_types(configs: Iterable[Mapping[str, Any]]) -> Dict[str, Set[str]]:
    """The value types each dotted key has in reference configs (list elements under ``KEY[]``)."""
    types: Dict[str, Set[str]] = {}
    for cfg in configs:
        for key, node in _nodes(cfg):
            types.setdefault(key, set()).add(_type_name(node))
    return types


_WORDS = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false', 'list': 'a list'}


def check_types(cfg: Mapping[str, Any], reference: Mapping[str, Set[str]], where: str = 'model config') -> None:
    """Raise `ConfigTypeError` naming the first key whose value's type the reference configs never use there.

    Only keys the reference gives numbers, booleans or lists are checked (an int stands for a float);
    keys it does not know pass (the model's own checks see them).
    """
    for key, node in _nodes(cfg):
        expected = reference.get(key)
        t = _type_name(node)
        if expected and expected <= {'int', 'float', 'bool', 'list'}:  # keys the reference gives strings pass
            if not (t in expected or (t == 'int' and 'float' in expected)):
                want = ' or '.join(_WORDS[e] for e in sorted(expected))
                raise ConfigTypeError(f'{where}: {key} must be {want}, got {node!r} ({t})')


def size_limits(max_params: Optional[float] = None, max_activation_bytes: Optional[float] = None) -> Tuple[int, int]:
    """The limits in force: the arguments, else ``$SPIKECLIP_MAX_PARAMS`` / ``$SPIKECLIP_MAX_ACTIVATION_BYTES``,
    else the defaults."""
    def pick(value, env, default):
        if value is None:
            text = os.environ.get(env)
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f'${env}={text!r} is not a number (e.g. 2e9)') from None
        return int(value)
    return (pick(max_params, MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS),
            pick(max_activation_bytes, MAX_ACTIVATION_ENV, DEFAULT_MAX_ACTIVATION_BYTES))


def _depth_slots(cfg: Any, path: Path = ()) -> List[Tuple[Path, int]]:
    slots = []
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if k in DEPTH_KEYS and isinstance(v, int) and not isinstance(v, bool) and v > 2:
                slots.append(((*path, k), v))
            elif k in DEPTH_KEYS and isinstance(v, (list, tuple)):
                slots += [((*path, k, i), d) for i, d in enumerate(v)
                          if isinstance(d, int) and not isinstance(d, bool) and d > 2]
            else:
                slots += _depth_slots(v, (*path, k))
    return slots


def _set(cfg: Dict[str, Any], path: Path, value: int) -> None:
    node = cfg
    for k in path[:-1]:
        node = node[k]
    if isinstance(node, tuple):  # pragma: no cover - JSON configs hold lists
        raise TypeError('tuple in config')
    node[path[-1]] = value


def _measure(build: Callable[[Dict[str, Any]], nn.Module], cfg: Dict[str, Any],
             forward: Optional[Callable[[nn.Module], Any]]) -> Tuple[int, Optional[int]]:
    with torch.device('meta'):
        model = build(cfg)
    params = sum(p.numel() for p in model.parameters())
    if forward is None:
        return params, None
    total = [0]

    def hook(module, inputs, output):
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model.eval()
            forward(model)
    except Exception:  # an op without a meta kernel: no activation estimate for this model
        return params, None
    finally:
        for h in handles:
            h.remove()
    return params, total[0]


def estimate_size(build: Callable[[Dict[str, Any]], nn.Module], cfg: Mapping[str, Any],
                  forward: Optional[Callable[[nn.Module], Any]] = None) -> Tuple[int, Optional[int]]:
    """Parameters and bytes of one sample's layer outputs of ``build(cfg)``, built on the meta device.

    Depths above 2 are extrapolated from builds at 1 and 2 (see the module's doc). ``forward(model)`` runs one
    sample on the meta device; None, or a forward that fails there, gives no activation estimate (None).
    """
    slots = _depth_slots(cfg)
    base = copy.deepcopy(dict(cfg))
    for path, _ in slots:
        _set(base, path, 1)
    base_p, base_a = _measure(build, base, forward)
    params, acts = base_p, base_a
    for path, depth in slots:
        one_more = copy.deepcopy(base)
        _set(one_more, path, 2)
        p2, a2 = _measure(build, one_more, forward)
        params += (depth - 1) * (p2 - base_p)
        acts = None if acts is None or a2 is None else acts + (depth - 1) * (a2 - base_a)
    return params, acts


def check_size(build: Callable[[Dict[str, Any]], nn.Module], cfg: Mapping[str, Any], where: str = 'model config',
               forward: Optional[Callable[[nn.Module], Any]] = None, max_params: Optional[float] = None,
               max_activation_bytes: Optional[float] = None) -> Tuple[int, Optional[int]]:
    """Raise `ModelTooLargeError` (one line, with the limit and how to raise it) when ``build(cfg)`` would be
    larger than the limits (`size_limits`); return the estimate."""
    limit_p, limit_a = size_limits(max_params, max_activation_bytes)
    params, _ = estimate_size(build, cfg)  # parameters first: no forward for a model already refused
    if params > limit_p:
        raise ModelTooLargeError(
            f'{where} asks for {params:.3g} parameters ({4 * params / 1e9:.3g} GB in float32), over the limit of '
            f'{limit_p:.3g}: check its sizes (depth, widths), or raise ${MAX_PARAMS_ENV} if it is meant')
    acts = None
    if forward is not None:
        _, acts = estimate_size(build, cfg, forward)
        if acts is not None and acts > limit_a:
            raise ModelTooLargeError(
                f'{where} needs about {acts / 2 ** 30:.3g} GiB of layer outputs per sample, over the limit of '
                f'{limit_a / 2 ** 30:.3g} GiB: check its sizes (depth, widths, image size, T), or raise '
                f'${MAX_ACTIVATION_ENV} if it is meant')
    return params, acts


def check_numbers_not_strings(cfg: Mapping[str, Any], where: str = 'model config') -> None:
    """Raise `ConfigTypeError` naming the first key whose value is a number written as a string (``"4"``)."""
    def walk(node: Any, key: str):
        if isinstance(node, str):
            try:
                float(node)
            except ValueError:
                return
            if node.strip().lower() not in ('nan', 'inf', '-inf', 'infinity'):
                raise ConfigTypeError(f'{where}: {key} must be a number, got {node!r} (a string)')
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f'{key}.{k}' if key else str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, f'{key}[]')
    walk(dict(cfg), '')


_timm_checked: Dict[str, Tuple[int, Optional[int]]] = {}


def check_timm_model_args(model_name: str, model_args: Mapping[str, Any], input_size=None,
                          where: str = 'config.json') -> Tuple[int, Optional[int]]:
    """Check the ``model_args`` of a timm ``config.json`` (a ``local-dir:`` / ``hf-hub:`` model) before timm
    builds it: no number written as a string, size on the meta device within `size_limits`."""
    import json

    import timm
    key = json.dumps([model_name, model_args, input_size, size_limits()], sort_keys=True, default=str)
    if key in _timm_checked:
        return _timm_checked[key]
    check_numbers_not_strings(model_args, f'{where} model_args')
    size = tuple(input_size or (3, 224, 224))

    def forward(model):
        model(torch.empty(1, *size, device='meta'))

    result = check_size(lambda kw: timm.create_model(model_name, pretrained=False, **kw), dict(model_args),
                        f'{where} ({model_name})', forward=forward)
    _timm_checked[key] = result
    return result


def install_timm_config_check() -> None:
    """Make timm's ``local-dir:`` and ``hf-hub:`` config readers check ``model_args`` (`check_timm_model_args`)
    before timm builds the model."""
    try:
        from timm.models import _factory
    except ImportError:  # pragma: no cover
        return
    for name in ('load_model_config_from_path', 'load_model_config_from_hf'):
        load = getattr(_factory, name, None)
        if load is None or getattr(load, '_checks_size', False):
            continue

        def checked(*args, _load=load, **kwargs):
            pretrained_cfg, model_name, model_args = _load(*args, **kwargs)
            if model_args:
                source = args[0] if args else kwargs.get('model_path', kwargs.get('model_id', ''))
                input_size = (pretrained_cfg or {}).get('input_size')
                check_timm_model_args(model_name, model_args, input_size, where=f'{source}/config.json')
            return pretrained_cfg, model_name, model_args
        checked._checks_size = True
        checked.__wrapped__ = load
        setattr(_factory, name, checked)
