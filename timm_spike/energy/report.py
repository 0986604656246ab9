"""The energy report: one schema for the CLI, the Hub model card and checkpoint metadata.

Convention of Spikformer / Spikingformer / Spike-driven Transformer (45 nm constants of Horowitz, ISSCC 2014):
``E = E_MAC * MACs + E_AC * SOPs``, where MACs are the multiply-accumulates of layers fed by real values and
SOPs (synaptic operations) = firing rate of a layer's input spikes x its dense MACs over all time steps.
"""
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from ..utils import atomic_write

__all__ = ['EnergyConstants', 'LayerEnergy', 'TeacherEnergy', 'EnergyReport', 'SCHEMA']

SCHEMA = 'spikeclip.energy/1'
_PJ_TO_MJ = 1e-9


@dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation. The defaults are the only place the 45 nm figures live in this project."""
    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    source: str = 'Horowitz, ISSCC 2014: 45 nm CMOS, 32-bit float (MAC 4.6 pJ, AC 0.9 pJ)'

    def __post_init__(self):
        for name in ('e_mac_pj', 'e_ac_pj'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be a finite, non-negative number of picojoules, got {value!r}')

    def energy_mj(self, macs: float, sops: float = 0.) -> float:
        """Energy in millijoules of ``macs`` multiply-accumulates and ``sops`` accumulates."""
        return (self.e_mac_pj * macs + self.e_ac_pj * sops) * _PJ_TO_MJ


@dataclass
class LayerEnergy:
    """Operations of one layer, per sample (image or prompt), summed over the time steps that ran.

    ``input`` is 'real' (all MACs), 'spikes' (all SOPs) or 'mixed' (spikes on some batches only);
    ``firing_rate`` is the effective firing rate of the input spikes, sops / dense_macs (None when real).
    """
    name: str
    ops: str
    input: str
    firing_rate: Optional[float]
    dense_macs: float
    macs: float
    sops: float
    energy_mj: float


@dataclass
class TeacherEnergy:
    """An ANN teacher counted dense (every MAC at E_MAC) at its own input size."""
    model: str
    input_size: List[int]
    macs: float
    energy_mj: float


@dataclass
class EnergyReport:
    """Firing rates, operations and energy of one spiking model (or tower), per sample.

    ``to_dict`` names the per-sample energies after the sample kind, e.g. ``energy_mj_per_image``;
    ``ann_*`` figures are the same network with every neuron replaced by its real input, run once (T=1).
    """
    model: str
    T: int
    input_size: List[int]
    data: str
    num_samples: int
    constants: EnergyConstants
    layers: List[LayerEnergy]
    neurons: Dict[str, float]
    ann_macs: float
    sample: str = 'image'
    teacher: Optional[TeacherEnergy] = None
    notes: List[str] = field(default_factory=list)
    # measured seconds per sample of this model run dense, event-driven and as its ANN twin (``measure.time_per_sample``)
    timing: Optional[Dict[str, Any]] = None

    @property
    def macs(self) -> float:
        return sum(l.macs for l in self.layers)

    @property
    def sops(self) -> float:
        return sum(l.sops for l in self.layers)

    @property
    def dense_macs(self) -> float:
        return sum(l.dense_macs for l in self.layers)

    @property
    def energy_mj(self) -> float:
        return self.constants.energy_mj(self.macs, self.sops)

    @property
    def ann_energy_mj(self) -> float:
        return self.constants.energy_mj(self.ann_macs)

    @property
    def mean_firing_rate(self) -> Optional[float]:
        """Mean over neuron layers of their output firing rates (spikes per neuron per time step)."""
        rates = [r for r in self.neurons.values() if not math.isnan(r)]
        return sum(rates) / len(rates) if rates else None

    @property
    def ratios(self) -> Dict[str, Optional[float]]:
        e = self.energy_mj
        return {
            'snn_over_ann': e / self.ann_energy_mj if self.ann_energy_mj else None,
            'snn_over_teacher': e / self.teacher.energy_mj if self.teacher and self.teacher.energy_mj else None,
        }

    def to_dict(self) -> Dict[str, Any]:
        s = self.sample
        return {
            'schema': SCHEMA,
            'model': self.model,
            'T': self.T,
            'input_size': list(self.input_size),
            'data': self.data,
            'num_samples': self.num_samples,
            'sample': s,
            f'energy_mj_per_{s}': self.energy_mj,
            f'ann_energy_mj_per_{s}': self.ann_energy_mj,
            f'teacher_energy_mj_per_{s}': self.teacher.energy_mj if self.teacher else None,
            'ratios': self.ratios,
            'totals': {'macs': self.macs, 'sops': self.sops, 'dense_macs': self.dense_macs,
                       'ann_macs': self.ann_macs},
            'mean_firing_rate': self.mean_firing_rate,
            'constants': asdict(self.constants),
            'layers': [asdict(l) for l in self.layers],
            'neurons': [{'name': k, 'firing_rate': v} for k, v in self.neurons.items()],
            'teacher': asdict(self.teacher) if self.teacher else None,
            'notes': list(self.notes),
            f'time_s_per_{s}': dict(self.timing) if self.timing else None,
        }

    def summary(self) -> Dict[str, Any]:
        """Headline figures as a flat dict of JSON scalars, for a model card or checkpoint metadata."""
        s, r = self.sample, self.ratios
        return {
            'energy_schema': SCHEMA, 'energy_model': self.model, 'energy_T': self.T,
            'energy_input_size': 'x'.join(map(str, self.input_size)), 'energy_data': self.data,
            'energy_num_samples': self.num_samples,
            f'energy_mj_per_{s}': self.energy_mj, f'ann_energy_mj_per_{s}': self.ann_energy_mj,
            'snn_over_ann': r['snn_over_ann'], 'snn_over_teacher': r['snn_over_teacher'],
            'teacher': self.teacher.model if self.teacher else None, 'mean_firing_rate': self.mean_firing_rate,
            'e_mac_pj': self.constants.e_mac_pj, 'e_ac_pj': self.constants.e_ac_pj,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'EnergyReport':
        if d.get('schema') != SCHEMA:
            raise ValueError(f"Not an energy report of schema {SCHEMA!r} (found schema {d.get('schema')!r})")
        layer_keys = {f.name for f in fields(LayerEnergy)}
        return cls(
            model=d['model'], T=d['T'], input_size=list(d['input_size']), data=d['data'],
            num_samples=d['num_samples'], sample=d['sample'],
            constants=EnergyConstants(**d['constants']),
            layers=[LayerEnergy(**{k: l[k] for k in layer_keys}) for l in d['layers']],
            neurons={n['name']: n['firing_rate'] for n in d['neurons']},
            ann_macs=d['totals']['ann_macs'],
            teacher=TeacherEnergy(**d['teacher']) if d.get('teacher') else None,
            notes=list(d.get('notes', [])),
            timing=d.get(f"time_s_per_{d['sample']}"),
        )

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str) -> str:
        """Write the report as JSON (to a temporary file first, then renamed: never half-written)."""
        atomic_write(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, path: str) -> 'EnergyReport':
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def table(self, max_layers: Optional[int] = None) -> str:
        """A readable, fixed-width summary: header, one row per layer, totals and ratios."""
        s = self.sample
        lines = [
            f'{self.model}: T={self.T}, input {"x".join(map(str, self.input_size))}, '
            f'{self.num_samples} {s}s from {self.data}',
            f'constants: E_MAC={self.constants.e_mac_pj} pJ, E_AC={self.constants.e_ac_pj} pJ',
            '',
            f'{"layer":<34} {"input":<6} {"rate":>6} {"MACs":>11} {"SOPs":>11} {"energy mJ":>10}',
        ]
        rows = self.layers if max_layers is None else self.layers[:max_layers]
        for l in rows:
            rate = '-' if l.firing_rate is None else f'{l.firing_rate:.3f}'
            lines.append(f'{l.name[:34]:<34} {l.input:<6} {rate:>6} {l.macs:>11.4g} {l.sops:>11.4g} '
                         f'{l.energy_mj:>10.4g}')
        if len(rows) < len(self.layers):
            lines.append(f'... ({len(self.layers) - len(rows)} more layers in the JSON)')
        mfr = self.mean_firing_rate
        r = self.ratios
        lines += [
            '',
            f'total per {s}: {self.macs:.4g} MACs + {self.sops:.4g} SOPs = {self.energy_mj:.4g} mJ'
            f'   (mean firing rate {"-" if mfr is None else f"{mfr:.3f}"} over {len(self.neurons)} neuron layers)',
            f'ANN of equal shape (T=1, all MACs): {self.ann_macs:.4g} MACs = {self.ann_energy_mj:.4g} mJ'
            f'   SNN/ANN = {r["snn_over_ann"]:.3f}' if r['snn_over_ann'] is not None else
            f'ANN of equal shape: {self.ann_macs:.4g} MACs',
        ]
        if self.teacher:
            lines.append(f'teacher {self.teacher.model} ({"x".join(map(str, self.teacher.input_size))}): '
                         f'{self.teacher.macs:.4g} MACs = {self.teacher.energy_mj:.4g} mJ'
                         f'   SNN/teacher = {r["snn_over_teacher"]:.4f}')
        if self.timing:
            t = self.timing
            lines.append(f'measured time per {s} (batch {t["batch"]}, {t["threads"]} threads, {t["device"]}): '
                         f'dense SNN {t["dense_snn"] * 1e3:.3g} ms, event-driven SNN {t["sparse_snn"] * 1e3:.3g} ms, '
                         f'ANN twin {t["ann_twin"] * 1e3:.3g} ms   (event-driven speed-up: {t["dense_snn"] / t["sparse_snn"]:.2f}x '
                         f'over dense, {t["ann_twin"] / t["sparse_snn"]:.2f}x over the ANN twin)')
        return '\n'.join(lines)
