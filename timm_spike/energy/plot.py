"""A PNG chart of an energy report: firing rate per neuron layer, energy per compute layer."""
import io
from typing import Optional

from ..utils import atomic_write
from .report import EnergyReport

__all__ = ['plot_energy', 'save_figure']


def plot_energy(report: EnergyReport, path: str, title: Optional[str] = None) -> str:
    """Write a two-panel PNG chart of ``report`` to ``path`` (headless; needs matplotlib).

    Top: output firing rate of every neuron layer. Bottom: energy of every compute layer, split into the
    MAC part (real-valued input) and the SOP part (spike input), in millijoules per sample.
    """
    try:
        import matplotlib
        matplotlib.use('Agg')  # headless: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("The energy chart needs matplotlib: pip install 'spikeclip[plot]'") from e

    c = report.constants
    neurons = list(report.neurons.items())
    layers = report.layers
    width = max(8., 0.22 * max(len(neurons), len(layers)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 8), constrained_layout=True)
    ax1.bar(range(len(neurons)), [r for _, r in neurons], color='tab:orange')
    ax1.set_xticks(range(len(neurons)), [n for n, _ in neurons], rotation=90, fontsize=6)
    ax1.set_ylabel('firing rate\n(spikes / neuron / step)')
    data = report.data if len(report.data) <= 50 else report.data[:47] + '...'
    ax1.set_title(title or f'{report.model}: T={report.T}, {report.num_samples} {report.sample}s from {data}')

    mac_mj = [c.energy_mj(l.macs) for l in layers]
    sop_mj = [c.energy_mj(0., l.sops) for l in layers]
    x = range(len(layers))
    ax2.bar(x, mac_mj, label=f'MACs x {c.e_mac_pj} pJ (real input)', color='tab:red')
    ax2.bar(x, sop_mj, bottom=mac_mj, label=f'SOPs x {c.e_ac_pj} pJ (spike input)', color='tab:blue')
    ax2.set_xticks(list(x), [l.name for l in layers], rotation=90, fontsize=6)
    ax2.set_ylabel(f'energy (mJ / {report.sample})')
    ax2.set_title(f'total {report.energy_mj:.4g} mJ / {report.sample}; ANN of equal shape '
                  f'{report.ann_energy_mj:.4g} mJ' + (f'; teacher {report.teacher.energy_mj:.4g} mJ'
                                                       if report.teacher else ''))
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Write a matplotlib figure as PNG through a temporary file (never a half-written chart), then close it."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path
