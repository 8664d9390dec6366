"""Models: the zoo (MLPs, ``module:factory`` loading), the VAE, the latent forest."""

from ootrain.models.zoo import (ACTIVATIONS, EMBEDDINGS, GENERATORS, MLP, Identity, RandomFeatures, build_model, generate, parameter_ema, load_checkpoint, save_checkpoint, seeded)
from ootrain.models.vae import (LOGVAR_MIN, LOGVAR_MAX, LOG_SIGMA_MIN, LOG_SIGMA_MAX, VAE, VAEConfig, MeanEncoder, kl_divergence, make_vae, train_vae, frozen_encoder, reconstruction_error)
from ootrain.models.forest import (MAX_DEPTH, LatentTransformForest)

__all__ = ['ACTIVATIONS', 'EMBEDDINGS', 'GENERATORS', 'MLP', 'Identity', 'RandomFeatures', 'build_model', 'generate', 'parameter_ema', 'load_checkpoint', 'save_checkpoint', 'seeded', 'LOGVAR_MIN', 'LOGVAR_MAX', 'LOG_SIGMA_MIN', 'LOG_SIGMA_MAX', 'VAE', 'VAEConfig', 'MeanEncoder', 'kl_divergence', 'make_vae', 'train_vae', 'frozen_encoder', 'reconstruction_error', 'MAX_DEPTH', 'LatentTransformForest']
