"""Evaluation: ring mode metrics, Parzen-window densities."""

from ootrain.eval.ring import (ring8_modes, ring_metrics, PACGAN_N_SAMPLES)
from ootrain.eval.parzen import (parzen_log_density, parzen_reverse_kl, scott_bandwidth, gaussian_kl)

__all__ = ['ring8_modes', 'ring_metrics', 'PACGAN_N_SAMPLES', 'parzen_log_density', 'parzen_reverse_kl', 'scott_bandwidth', 'gaussian_kl']
