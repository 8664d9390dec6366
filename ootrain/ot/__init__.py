"""OT kernels usable alone: costs, targets, the c-transform (also sharded over Dask tasks),
sliced W2, Sinkhorn (in memory and streamed), semi-discrete OT (and its 1-D closed form), sort.

One cost registry (:mod:`ootrain.ot.costs`) and one backend vocabulary
(:mod:`ootrain.ot.backends`) serve every kernel.
"""

# The function ``sinkhorn`` is not re-exported: its name is that of the module
# ``ootrain.ot.sinkhorn``, which it would hide (same care for any name equal to a submodule).
from ootrain.ot.costs import (COSTS, Cost, parse_cost)
from ootrain.ot.backends import (BACKENDS, SOFT_BACKENDS, keops_available, faiss_available)
from ootrain.ot.targets import (TargetSource, as_source)
from ootrain.ot.ctransform import (KEOPS_MAX_TARGETS, resolve_backend, c_transform, merge_argmin, soft_c_transform, soft_mass, soft_cost, soft_assign, soft_transform)
from ootrain.ot.sharded import (SHARD_SHARE, plan_shards, argmin_tasks, sharded_c_transform)
from ootrain.ot.sliced import (random_directions, wasserstein_1d, sliced_wasserstein, quantile_targets, real_slice_bounds, quantile_targets_range, w2_from_targets, algorithm2_directions)
from ootrain.ot.sinkhorn import (SINKHORN_BACKENDS, DENSE_MAX_ENTRIES, STAGE_ITERS, SinkhornResult, cost_gradients, EnergyDistanceResult, ENERGY_TERMS, energy_distance, energy_distance_gradients, envelope_rows, StreamedSinkhornResult, sinkhorn_streamed, StreamedEnergyDistance, energy_distance_streamed)
from ootrain.ot.semidiscrete import (SemiDiscreteOT)
from ootrain.ot.monotone import (is_monotone_cost, streamed_quantiles, monotone_potentials)

__all__ = ['COSTS', 'Cost', 'parse_cost', 'BACKENDS', 'SOFT_BACKENDS', 'keops_available', 'faiss_available', 'TargetSource', 'as_source', 'KEOPS_MAX_TARGETS', 'resolve_backend', 'c_transform', 'merge_argmin', 'soft_c_transform', 'soft_mass', 'soft_cost', 'soft_assign', 'soft_transform', 'SHARD_SHARE', 'plan_shards', 'argmin_tasks', 'sharded_c_transform', 'random_directions', 'wasserstein_1d', 'sliced_wasserstein', 'quantile_targets', 'real_slice_bounds', 'quantile_targets_range', 'w2_from_targets', 'algorithm2_directions', 'SINKHORN_BACKENDS', 'DENSE_MAX_ENTRIES', 'STAGE_ITERS', 'SinkhornResult', 'cost_gradients', 'EnergyDistanceResult', 'ENERGY_TERMS', 'energy_distance', 'energy_distance_gradients', 'envelope_rows', 'StreamedSinkhornResult', 'sinkhorn_streamed', 'StreamedEnergyDistance', 'energy_distance_streamed', 'SemiDiscreteOT', 'is_monotone_cost', 'streamed_quantiles', 'monotone_potentials']
