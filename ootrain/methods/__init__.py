"""One solver per method on the engine, and the one way to train any of them."""

from ootrain.methods.rsr import (RSR, SlicedSolver, SlicedReRunLoss, plan_pass)
from ootrain.methods.gradual import (AssignmentSolver, FitLoss, GradualConfig, OTSFIT)
from ootrain.methods.otgan import (OTGANConfig, WARM_START_METHODS, Critic, make_generator, make_critic, OTGAN, EnergySolver, energy_step)
from ootrain.methods.wgan import (WGANConfig, Regulariser, make_wgan_critic, gradient_penalty, critic_loss, CriticSolver, GeneratorSolver, WGANGP)
from ootrain.methods.potgan import (MATCHINGS, GAN_METHODS, POTConfig, POTRegulariser, match, build_potgan)
from ootrain.methods.training import (TrainResult, train, open_shared_store, make_optimizer, estimate_step_bytes)

__all__ = ['RSR', 'SlicedSolver', 'SlicedReRunLoss', 'plan_pass', 'AssignmentSolver', 'FitLoss', 'GradualConfig', 'OTSFIT', 'OTGANConfig', 'WARM_START_METHODS', 'Critic', 'make_generator', 'make_critic', 'OTGAN', 'EnergySolver', 'energy_step', 'WGANConfig', 'Regulariser', 'make_wgan_critic', 'gradient_penalty', 'critic_loss', 'CriticSolver', 'GeneratorSolver', 'WGANGP', 'MATCHINGS', 'GAN_METHODS', 'POTConfig', 'POTRegulariser', 'match', 'build_potgan', 'TrainResult', 'train', 'open_shared_store', 'make_optimizer', 'estimate_step_bytes']
