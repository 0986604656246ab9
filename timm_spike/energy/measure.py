"""``energy_report``: firing rates, per-layer MACs / SOPs and energy of a spiking model on real data."""
import logging
import statistics
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .counting import LayerOps, ann_equivalent, count_operations
from .firing import FiringRateRecorder
from .report import EnergyConstants, EnergyReport, LayerEnergy, TeacherEnergy

__all__ = ['energy_report', 'dense_macs', 'teacher_energy', 'layer_energies', 'model_input_size', 'time_steps']

_logger = logging.getLogger(__name__)

ForwardFn = Callable[[nn.Module, torch.Tensor], Any]

NOTES = [
    'SOPs = effective firing rate of the input spikes x dense MACs over the time steps that ran; '
    'a product of two spike tensors uses the lower of the two rates (Spikingformer).',
    'Counted: convolutions, linear layers and matmuls (incl. the spiking self-attention q (k^T v)). '
    'Not counted (convention): BatchNorm (foldable into the conv at inference), residual additions, '
    'neuron updates, pooling, the attention scale.',
    'Only what runs is counted: a direct-encoded image goes through the first tokenizer conv once, '
    'not T times (its output is the same at every step).',
    'ANN of equal shape: every neuron replaced by its real input, one time step, every op a MAC.',
]


def model_input_size(model: nn.Module) -> Optional[List[int]]:
    """[C, H, W] the model takes, from ``img_size``/``in_chans`` or timm's pretrained_cfg; None if unknown."""
    if getattr(model, 'dynamic_img_size', False):
        return None
    if hasattr(model, 'img_size') and hasattr(model, 'in_chans'):
        size = model.img_size if isinstance(model.img_size, (tuple, list)) else (model.img_size,) * 2
        return [int(model.in_chans), *map(int, size)]
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return list(cfg['input_size']) if 'input_size' in cfg else None


def time_steps(model: nn.Module) -> Optional[int]:
    """The model's number of time steps: its own ``T``, else the first submodule's (e.g. a wrapped trunk)."""
    return next((m.T for m in model.modules()
                 if isinstance(getattr(m, 'T', None), int) and not isinstance(m.T, bool)), None)


def _inputs(data: Union[torch.Tensor, Iterable]) -> Iterable[torch.Tensor]:
    """Batches of model inputs from a tensor, or an iterable of tensors / (input, target) pairs."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    for batch in data:
        if isinstance(batch, dict):
            raise TypeError('Batches must be tensors or (input, target) pairs, got a dict')
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _check_shape(x: torch.Tensor, input_size: Optional[Sequence[int]], model_name: str):
    if input_size is not None and list(x.shape[1:]) != list(input_size):
        raise ValueError(
            f'Wrong input size: the data gives samples of shape {list(x.shape[1:])} but {model_name} takes '
            f'{list(input_size)}; resize the data to the model (the CLI does it with the model\'s data config).')


def layer_energies(layers: Dict[str, LayerOps], num_samples: int, constants: EnergyConstants) -> List[LayerEnergy]:
    """Per-sample ``LayerEnergy`` rows from summed ``LayerOps``; layers with no operations are dropped."""
    out = []
    for name, rec in layers.items():
        if not rec.dense_macs:
            continue
        macs, sops, dense = rec.macs / num_samples, rec.sops / num_samples, rec.dense_macs / num_samples
        spiking_dense = dense - macs
        out.append(LayerEnergy(
            name=name, ops='+'.join(sorted(rec.ops)), input=rec.input,
            firing_rate=sops / spiking_dense if rec.spike_calls and spiking_dense else None,
            dense_macs=dense, macs=macs, sops=sops, energy_mj=constants.energy_mj(macs, sops)))
    return out


def dense_macs(model: nn.Module, example: torch.Tensor, forward_fn: Optional[ForwardFn] = None,
               per_layer: bool = False) -> Union[float, Dict[str, float]]:
    """Dense MACs per sample of ``forward_fn(model, example)``: every op counted as a MAC, whatever the values.

    Works on the meta device (no values are read), so a large model can be counted without running it.
    """
    layers, n = count_operations(model, [example], forward_fn, measure_spikes=False)
    per = {k: v.dense_macs / n for k, v in layers.items() if v.dense_macs}
    return per if per_layer else sum(per.values())


def teacher_energy(
        teacher: nn.Module,
        example: torch.Tensor,
        name: str,
        forward_fn: Optional[ForwardFn] = None,
        constants: Optional[EnergyConstants] = None,
) -> TeacherEnergy:
    """Energy per sample of an ANN (e.g. a CLIP teacher): every multiply-accumulate at E_MAC."""
    constants = constants or EnergyConstants()
    teacher_was_training = teacher.training
    teacher.eval()
    try:
        macs = dense_macs(teacher, example, forward_fn)
    finally:
        teacher.train(teacher_was_training)
    return TeacherEnergy(model=name, input_size=list(example.shape[1:]), macs=macs,
                         energy_mj=constants.energy_mj(macs))


def energy_report(
        model: nn.Module,
        data: Union[torch.Tensor, Iterable],
        *,
        model_name: Optional[str] = None,
        data_name: str = 'unnamed data',
        constants: Optional[EnergyConstants] = None,
        forward_fn: Optional[ForwardFn] = None,
        input_size: Optional[Sequence[int]] = None,
        sample: str = 'image',
        teacher: Optional[TeacherEnergy] = None,
        ann_model: Optional[nn.Module] = None,
        progress: bool = True,
        notes: Sequence[str] = (),
        measure_time: bool = True,
) -> EnergyReport:
    """Measure a spiking model on real data and return its energy report.

    The model runs in eval mode (restored afterwards) under spikingjelly's counting mode; firing rates,
    MACs and SOPs are summed over all batches and divided by the number of samples.

    Args:
        model: A spiking model (at least one spikingjelly neuron).
        data: A batch tensor, or an iterable (e.g. DataLoader) of tensors or (input, target) pairs.
        model_name: Name in the report (default: timm's pretrained_cfg architecture or the class name).
        data_name: What the data is, recorded in the report.
        constants: Energy per MAC / AC (default: 4.6 / 0.9 pJ).
        forward_fn: ``forward_fn(model, inputs)``; default ``model(inputs)``.
        input_size: Shape of one sample; checked against every batch (default: the model's image size).
        sample: What one sample is ('image', 'prompt'): names the per-sample keys of the JSON.
        teacher: Energy of a teacher ANN (``teacher_energy``) for the SNN/teacher ratio.
        ann_model: The ANN of equal shape (default: ``ann_equivalent(model)``).
        progress: Show a tqdm progress bar.
        notes: Extra notes recorded in the report.
        measure_time: Also time the model dense, event-driven and as its ANN twin on the first batch
            (``time_per_sample``; the report's ``time_s_per_<sample>``).

    Raises:
        ValueError: for a model without spiking neurons, an empty dataset, or samples of the wrong size.
    """
    constants = constants or EnergyConstants()
    name = model_name or (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    if input_size is None and forward_fn is None:
        input_size = model_input_size(model)
    was_training = model.training
    model.eval()
    try:
        with FiringRateRecorder(model) as rec:  # raises ValueError if the model has no spiking neurons
            first, first_batch = [], []

            def checked():
                total = len(data) if hasattr(data, '__len__') and not isinstance(data, torch.Tensor) else None
                for x in tqdm(_inputs(data), total=total, desc=f'energy {name}', disable=not progress):
                    _check_shape(x, input_size, name)
                    if not first:
                        first.append(x[:1])
                        first_batch.append(x)
                    yield x

            layers, n = count_operations(model, checked(), forward_fn)
            batch = first_batch[0] if first_batch else None
            if n == 0:
                raise ValueError(f'No data: the dataset {data_name!r} gave no samples to measure {name} on')
            rates = rec.rates()
    finally:
        model.train(was_training)
    rows = layer_energies(layers, n, constants)
    if not rows:
        raise ValueError(f'{name} ran no convolution, linear layer or matmul: nothing to count')
    ann = ann_model if ann_model is not None else ann_equivalent(model)
    ann.eval()
    ann_macs = dense_macs(ann, first[0], forward_fn)
    timing = time_per_sample(model, batch, forward_fn, ann=ann) if measure_time else None
    return EnergyReport(
        model=name, T=time_steps(model) or 1, input_size=list(input_size or first[0].shape[1:]),
        data=data_name, num_samples=n, constants=constants, layers=rows, neurons=rates, ann_macs=ann_macs,
        sample=sample, teacher=teacher, notes=NOTES + list(notes), timing=timing)


def time_per_sample(
        model: nn.Module,
        batch: torch.Tensor,
        forward_fn: Optional[ForwardFn] = None,
        ann: Optional[nn.Module] = None,
        rounds: int = 3,
) -> Dict[str, Any]:
    """Measured inference seconds per sample of ``model`` dense, in its event-driven inference form
    (``timm_spike.layers.inference_form``) and as its ANN twin (``ann_equivalent``: T=1, neurons replaced by their
    input), on one batch: the median of ``rounds`` interleaved rounds (one untimed call of each first), no autograd.
    Beside the estimated energy it says what the hardware at hand makes of the spikes' sparsity."""
    from timm_spike.layers import inference_form, spike_kernel
    forward_fn = forward_fn or (lambda m, b: m(b))
    ann = ann if ann is not None else ann_equivalent(model)
    device = next(model.parameters()).device
    with spike_kernel('auto'):
        sparse = inference_form(model.eval(), device)
    variants = {'dense_snn': (model, 'dense'), 'sparse_snn': (sparse, 'auto'), 'ann_twin': (ann.eval(), 'dense')}
    times: Dict[str, List[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for key, (m, kernel) in variants.items():
                with spike_kernel(kernel):
                    start = time.perf_counter()
                    forward_fn(m, batch)
                    if r:  # the first round warms up (compiles, allocates)
                        times[key].append(time.perf_counter() - start)
    n = len(batch)
    out: Dict[str, Any] = {k: statistics.median(v) / n for k, v in times.items()}
    out.update(batch=n, threads=torch.get_num_threads(), device=str(device), rounds=rounds)
    return out
