"""Run → Solve → ReRun for any method: the step, resume, the determinism check; where Solve's
Dask task graphs run (:mod:`ootrain.engine.compute`)."""

from ootrain.engine.compute import Compute, StoreArray
from ootrain.engine.core import (Engine, EngineConfig, Method, Plan, Population, Solver, SolveContext, RunObserver, ReRunLoss, CotangentLoss, StepResult, GeneratorMethod, NondeterministicModelError, NonFiniteError, Sampler, standard_normal, latent_key, rank_world, frozen_parameters, describe_array, resolve_device, module_device, place, to_cpu, run_leaves_cores)

__all__ = ['Engine', 'EngineConfig', 'Method', 'Plan', 'Population', 'Solver', 'SolveContext', 'RunObserver', 'ReRunLoss', 'CotangentLoss', 'StepResult', 'GeneratorMethod', 'NondeterministicModelError', 'NonFiniteError', 'Sampler', 'standard_normal', 'latent_key', 'rank_world', 'frozen_parameters', 'describe_array', 'resolve_device', 'module_device', 'place', 'to_cpu', 'run_leaves_cores', 'Compute', 'StoreArray']
