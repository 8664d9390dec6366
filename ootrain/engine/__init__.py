"""Run → Solve → ReRun for any method: the step, resume, the determinism check."""

from ootrain.engine.core import (Engine, EngineConfig, Method, Plan, Population, Solver, SolveContext, ReRunLoss, CotangentLoss, StepResult, GeneratorMethod, NondeterministicModelError, NonFiniteError, Sampler, standard_normal, latent_key, rank_world, frozen_parameters, describe_array)

__all__ = ['Engine', 'EngineConfig', 'Method', 'Plan', 'Population', 'Solver', 'SolveContext', 'ReRunLoss', 'CotangentLoss', 'StepResult', 'GeneratorMethod', 'NondeterministicModelError', 'NonFiniteError', 'Sampler', 'standard_normal', 'latent_key', 'rank_world', 'frozen_parameters', 'describe_array']
