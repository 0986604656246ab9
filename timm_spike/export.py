"""Deployment formats of timm_spike models: ``torch.export``, ONNX (PyTorch's exporter built on it) and the check
that onnxruntime computes what eager PyTorch does.

Every registered model exports as it is, in eval mode, with the plain calls::

    program = torch.export.export(model.eval(), (x,))
    torch.onnx.export(model.eval(), (x,), 'model.onnx', dynamo=True)
    torch.compile(model.eval(), fullgraph=True)

The functions here wrap them with a dynamic batch dimension, eval mode and no autograd, an atomic write and the
comparison with eager. The graph is the whole spiking network for the model's fixed T: the time loop of each LIF
layer is unrolled (T steps of charge, fire and reset), every call starts from the resting potential, and spikes
are float masks, so any runtime of ordinary tensor ops runs it (no SNN runtime needed). T is part of the graph: a
model exported at T=4 runs 4 steps.

The input guards (``timm_spike.layers.guards``) check values in eager mode only: whether every pixel is finite
cannot be decided while tracing with symbolic tensors, so an exported graph computes on NaN images without a word
(check inputs before calling a runtime). Shape and dtype checks run while tracing: a wrongly timed or integer
example input is refused at export.
"""
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .utils import atomic_path

__all__ = ['MAX_BATCH', 'example_input', 'export_program', 'save_onnx', 'run_onnx', 'onnx_max_abs_diff', 'eager_outputs']

MAX_BATCH = 4096  # upper bound of the dynamic batch dimension (torch.export needs one; ONNX keeps it symbolic)

Args = Tuple[torch.Tensor, ...]


@contextmanager
def _inference(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without autograd, its training flags restored on exit."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes.items():
            m.training = training


def _as_args(args: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Args:
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError('example inputs must be a tensor or a tuple of tensors')
    return args


def _batch_shapes(args: Args, dynamic_batch: bool) -> Optional[Tuple[Dict[int, Any], ...]]:
    if not dynamic_batch:
        return None
    if any(a.ndim == 0 for a in args):
        raise ValueError('dynamic_batch needs a batch dimension on every input; pass dynamic_batch=False')
    if any(a.shape[0] < 2 for a in args):
        # torch.export specialises sizes 0 and 1: a batch of one would fix the graph's batch to 1
        raise ValueError(f'export with a dynamic batch needs example inputs with a batch of at least 2 (got '
                         f'{[tuple(a.shape) for a in args]}); repeat the example or pass dynamic_batch=False')
    batch = torch.export.Dim('batch', min=1, max=MAX_BATCH)
    return tuple({0: batch} for _ in args)


def example_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``batch`` images drawn from N(0, 1) (normalised pixels) of the model's ``pretrained_cfg['input_size']``."""
    size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
    if size is None:
        raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size; pass example inputs yourself')
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *size, generator=g).to(p.device, p.dtype)


def export_program(model: nn.Module, args: Union[torch.Tensor, Sequence[torch.Tensor]],
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode (an inference graph).

    Args:
        model: A timm_spike model or any module built of its layers (e.g. a SpikeCLIP tower).
        args: Example inputs (a tensor or a tuple of tensors); with ``dynamic_batch`` a batch of at least 2.
        dynamic_batch: Make the first dimension of every input symbolic (1 to ``MAX_BATCH``).

    Returns:
        The ``ExportedProgram``; ``program.module()`` runs it.
    """
    args = _as_args(args)
    with _inference(model):
        return torch.export.export(model, args, dynamic_shapes=_batch_shapes(args, dynamic_batch))


def save_onnx(model: nn.Module, args: Union[torch.Tensor, Sequence[torch.Tensor]], path: Union[str, os.PathLike],
              dynamic_batch: bool = True, input_names: Optional[Sequence[str]] = None,
              output_names: Optional[Sequence[str]] = None, opset_version: Optional[int] = None) -> str:
    """Export ``model`` to an ONNX file with ``torch.onnx.export(..., dynamo=True)`` in eval mode.

    The file is written through a temporary file in the same folder and renamed at the end: a failed export leaves
    no file behind. The weights are stored inside the file (no external data files).

    Args:
        model: A timm_spike model or a module built of its layers.
        args: Example inputs; with ``dynamic_batch`` a batch of at least 2.
        path: The ``.onnx`` file to write.
        dynamic_batch: Keep the batch dimension of every input symbolic in the graph.
        input_names, output_names: Names of the graph's inputs and outputs.
        opset_version: ONNX opset (default: the exporter's).

    Returns:
        The path written.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f'ONNX export needs the onnx and onnxscript packages ({e.name} is missing): '
                          f"pip install 'spikeclip[export]'") from e
    args = _as_args(args)
    path = os.fspath(path)
    with _inference(model):
        program = torch.onnx.export(
            model, args, dynamo=True, dynamic_shapes=_batch_shapes(args, dynamic_batch), input_names=input_names,
            output_names=output_names, opset_version=opset_version, verbose=False)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def run_onnx(path: Union[str, os.PathLike], args: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """Run an ONNX file with onnxruntime on the CPU; its outputs as tensors."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running ONNX files needs onnxruntime: pip install 'spikeclip[export]'") from e
    session = ort.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), _as_args(args))}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def eager_outputs(model: nn.Module, args: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """The model's outputs in eval mode (a tensor, or the tensors of a tuple / list / dict output), on the CPU."""
    with _inference(model):
        out = model(*_as_args(args))
    if isinstance(out, dict):
        out = list(out.values())
    return [t.detach().cpu() for t in (out if isinstance(out, (tuple, list)) else [out])]


def onnx_max_abs_diff(path: Union[str, os.PathLike], model: nn.Module,
                      args: Union[torch.Tensor, Sequence[torch.Tensor]]) -> float:
    """Largest absolute difference between onnxruntime's outputs of ``path`` and the eager model's on ``args``."""
    got = run_onnx(path, args)
    want = eager_outputs(model, args)
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        raise ValueError(f'the ONNX file {os.fspath(path)} gives outputs of shapes {[tuple(g.shape) for g in got]}, '
                         f'the model {[tuple(w.shape) for w in want]}: it was exported from another model')
    return max(float((g.float() - w.float()).abs().max()) if g.numel() else 0.0 for g, w in zip(got, want))
