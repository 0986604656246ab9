"""Energy accounting for spiking models: firing rates, per-layer MACs / SOPs, energy reports and charts.

Convention of Spikformer / Spikingformer: E = E_MAC * MACs + E_AC * SOPs (45 nm constants, Horowitz 2014).
"""
from .calibrate import calibrate_firing_rates
from .counting import LayerOps, SpikeOpCounter, ann_equivalent, calibrate_bn, count_operations
from .firing import FiringRateRecorder, firing_rates
from .measure import dense_macs, energy_report, layer_energies, model_input_size, teacher_energy, time_steps
from .plot import plot_energy
from .report import SCHEMA, EnergyConstants, EnergyReport, LayerEnergy, TeacherEnergy
from .run import CALIBRATE_MODES, HUB_PREFIXES, image_loader, timm_model_energy, timm_teacher_energy, write_report
