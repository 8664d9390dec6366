"""One solver per method on the engine, and the one way to train any of them."""

from ootrain.methods.rsr import (SlicedSolver, SlicedReRunLoss, plan_pass)
from ootrain.methods.gradual import (AssignmentSolver, FitLoss, GradualConfig, RoundResult, train_gradual)
from ootrain.methods.otgan import (OTGANConfig, WARM_START_METHODS, Critic, make_generator, make_critic, train_otgan, array_sampler, energy_step, data_sampler)
from ootrain.methods.wgan import (WGANConfig, Regulariser, make_wgan_critic, gradient_penalty, critic_loss, train_wgan_gp)
from ootrain.methods.potgan import (MATCHINGS, POTConfig, POTRegulariser, match)
from ootrain.methods.train import (RSRRun, GANRun, GAN_METHODS, make_optimizer, open_shared_store, train_rsr, train_potgan)

__all__ = ['SlicedSolver', 'SlicedReRunLoss', 'plan_pass', 'AssignmentSolver', 'FitLoss', 'GradualConfig', 'RoundResult', 'train_gradual', 'OTGANConfig', 'WARM_START_METHODS', 'Critic', 'make_generator', 'make_critic', 'train_otgan', 'array_sampler', 'energy_step', 'data_sampler', 'WGANConfig', 'Regulariser', 'make_wgan_critic', 'gradient_penalty', 'critic_loss', 'train_wgan_gp', 'MATCHINGS', 'POTConfig', 'POTRegulariser', 'match', 'RSRRun', 'GANRun', 'GAN_METHODS', 'make_optimizer', 'open_shared_store', 'train_rsr', 'train_potgan']
