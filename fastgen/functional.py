"""Public functional API: one function per fused op.

Each function validates its arguments (errors name the argument), picks an implementation
(see :mod:`fastgen.backend`; ``impl=`` forces one) and calls the op.
"""
from .ops.adain import adain
from .ops.attention import attention
from .ops.bias_act import bias_act
from .ops.conv2d import conv2d, conv_transpose2d
from .ops.ddim_step import DDIMStepOutput, ddim_step
from .ops.diffusion_loss import diffusion_loss
from .ops.grad_penalty import grad_norm_penalty, gradient_penalty
from .ops.group_norm import group_norm
from .ops.modulated_bias_act import modulated_bias_act
from .ops.modulate_weight import modulate_weight
from .ops.modulated_conv2d import conv2d_resample, demodulation_coefficients, modulated_conv2d
from .ops.q_sample import QSampleOutput, q_sample
from .ops.reparam import ReparamOutput, reparameterize
from .ops.sampler_update import SamplerUpdateOutput, sampler_coeffs, sampler_update
from .ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["adain", "attention", "bias_act", "DDIMStepOutput", "ddim_step", "QSampleOutput", "q_sample", "ReparamOutput", "reparameterize", "diffusion_loss", "group_norm", "grad_norm_penalty", "gradient_penalty",
           "conv2d", "conv_transpose2d", "modulated_bias_act", "modulate_weight", "conv2d_resample", "modulated_conv2d", "demodulation_coefficients", "upfirdn2d", "setup_filter", "upsample2d", "downsample2d", "filter2d",
           "SamplerUpdateOutput", "sampler_coeffs", "sampler_update"]
