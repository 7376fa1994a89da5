"""GAN losses, regularisers and training recipes.

* :mod:`fastgen.gan.losses` — logistic (minimax / non-saturating) losses, R1, path-length penalty.
* :class:`GANRecipe` — the base of the training recipes (networks, optimizers, EMA, per-step logic,
  data-parallel helpers), driven by :class:`fastgen.train.GANTrainer`.
* :class:`StyleGANTraining` — StyleGAN2's recipe: lazy R1 and path-length regularisation, style
  mixing, Adam with lazy-regularisation-corrected hyper-parameters, generator EMA.
"""
from .losses import PathLengthPenalty, d_logistic_loss, g_nonsaturating_loss, r1_penalty
from .recipe import GANRecipe
from .stylegan import StyleGANTraining, ema_beta

__all__ = ["PathLengthPenalty", "d_logistic_loss", "g_nonsaturating_loss", "r1_penalty", "StyleGANTraining", "ema_beta", "GANRecipe"]
