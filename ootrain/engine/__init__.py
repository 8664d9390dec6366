"""Run → Solve → ReRun for any method: the step, resume, the determinism check, cotangent mode."""

from ootrain.engine.core import (Engine, EngineConfig, Solver, SolveContext, ReRunLoss, StepResult, NondeterministicModelError, NonFiniteError, LatentSampler, standard_normal, latent_key, rank_world)
from ootrain.engine.cotangent import (Population, embed, backward_cotangents, cotangent_step, frozen_parameters)

__all__ = ['Engine', 'EngineConfig', 'Solver', 'SolveContext', 'ReRunLoss', 'StepResult', 'NondeterministicModelError', 'NonFiniteError', 'LatentSampler', 'standard_normal', 'latent_key', 'rank_world', 'Population', 'embed', 'backward_cotangents', 'cotangent_step', 'frozen_parameters']
