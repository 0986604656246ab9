"""Energy accounting for spiking models: firing rates (more to come: MACs, SOPs, energy)."""
from .firing import FiringRateRecorder, firing_rates
