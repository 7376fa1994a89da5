"""GAN losses, regularisers and training recipes.

* :mod:`fastgen.gan.losses` — minimax / non-saturating / Wasserstein / hinge / least-squares losses,
  R1 / R2 and path-length penalties, InfoGAN and ACGAN terms, weight clipping, spectral norm.
* :func:`gradient_penalty` — WGAN-GP / R1 / R2 / DRAGAN through any critic, on the fused per-sample
  norm penalty (``fastgen.functional.grad_norm_penalty``).
* :class:`GANRecipe` — the base of the training recipes (networks, optimizers, EMA, per-step logic,
  data-parallel helpers), driven by :class:`fastgen.train.GANTrainer`.
* :class:`GANTraining` — DCGAN / WGAN (clip, GP) / LSGAN / hinge / R1 / conditional / ACGAN / InfoGAN.
* :class:`Pix2PixTraining`, :class:`CycleGANTraining` — paired / unpaired image-to-image translation.
* :class:`VAEGANTraining` — latent diffusion's autoencoder with adversarial loss (VAE + PatchGAN,
  L1 + KL + adversarial term with the adaptive weight).
* :mod:`fastgen.gan.diagnostics` — mode-collapse diagnostics (sample diversity, class coverage).
* :class:`StyleGANTraining` — StyleGAN2's recipe: lazy R1 and path-length regularisation, style
  mixing, Adam with lazy-regularisation-corrected hyper-parameters, generator EMA.
"""
from .losses import (LOSSES, PathLengthPenalty, acgan_loss, clip_weights_, d_logistic_loss, d_loss, g_loss,
                     g_nonsaturating_loss, infogan_categorical_loss, infogan_continuous_loss, r1_penalty, r2_penalty,
                     spectral_norm)
from ..ops.grad_penalty import KINDS as PENALTIES
from ..ops.grad_penalty import gradient_penalty
from .classic import GANTraining
from .diagnostics import SmallClassifier, class_coverage, pairwise_diversity, relative_diversity, train_classifier
from .recipe import GANRecipe
from .translation import CycleGANTraining, Pix2PixTraining
from .stylegan import StyleGANTraining, ema_beta
from .vaegan import VAEGANTraining

__all__ = ["PathLengthPenalty", "d_logistic_loss", "g_nonsaturating_loss", "r1_penalty", "LOSSES", "d_loss", "g_loss",
           "r2_penalty", "acgan_loss", "infogan_categorical_loss", "infogan_continuous_loss", "clip_weights_", "spectral_norm", "StyleGANTraining", "ema_beta", "GANRecipe",
           "gradient_penalty", "PENALTIES", "GANTraining",
           "Pix2PixTraining", "CycleGANTraining", "VAEGANTraining",
           "pairwise_diversity", "relative_diversity", "class_coverage", "SmallClassifier", "train_classifier"]
