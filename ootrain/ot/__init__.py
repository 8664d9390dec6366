"""OT kernels usable alone: costs and the c-transform, sliced W2, Sinkhorn, semi-discrete OT, sort."""

# The function ``sinkhorn`` is not re-exported: its name is that of the module
# ``ootrain.ot.sinkhorn``, which it would hide.
from ootrain.ot.ctransform import (COSTS, BACKENDS, KEOPS_MAX_TARGETS, Cost, parse_cost, TargetSource, as_source, resolve_backend, c_transform, soft_c_transform, soft_mass, soft_cost, soft_assign)
from ootrain.ot.sliced import (random_directions, wasserstein_1d, sliced_wasserstein, quantile_targets, real_slice_bounds, quantile_targets_range, w2_from_targets, algorithm2_directions)
from ootrain.ot.sinkhorn import (SINKHORN_COSTS, SINKHORN_BACKENDS, DENSE_MAX_ENTRIES, STAGE_ITERS, SinkhornResult, cost_gradients, EnergyDistanceResult, ENERGY_TERMS, energy_distance, energy_distance_gradients)
from ootrain.ot.semidiscrete import (SemiDiscreteOT)

__all__ = ['COSTS', 'BACKENDS', 'KEOPS_MAX_TARGETS', 'Cost', 'parse_cost', 'TargetSource', 'as_source', 'resolve_backend', 'c_transform', 'soft_c_transform', 'soft_mass', 'soft_cost', 'soft_assign', 'random_directions', 'wasserstein_1d', 'sliced_wasserstein', 'quantile_targets', 'real_slice_bounds', 'quantile_targets_range', 'w2_from_targets', 'algorithm2_directions', 'SINKHORN_COSTS', 'SINKHORN_BACKENDS', 'DENSE_MAX_ENTRIES', 'STAGE_ITERS', 'SinkhornResult', 'cost_gradients', 'EnergyDistanceResult', 'ENERGY_TERMS', 'energy_distance', 'energy_distance_gradients', 'SemiDiscreteOT']
