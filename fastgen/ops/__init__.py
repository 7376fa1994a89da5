"""One module per fused op: reference, custom-op registration, autograd and dispatch.

Importing this package loads the compiled extension (building it just in time if needed) and
registers every op's fake kernel and autograd formula.
"""
from .adain import adain, adain_reference
from .attention import attention, attention_reference
from .bias_act import bias_act, bias_act_reference
from .ddim_step import DDIMStepOutput, ddim_coefficients, ddim_step, ddim_step_reference
from .diffusion_loss import diffusion_loss, diffusion_loss_coefficients, diffusion_loss_reference
from .grad_penalty import (grad_norm_penalty, grad_norm_penalty_reference, gradient_penalty,
                           gradient_penalty_reference)
from .group_norm import group_norm, group_norm_reference
from .modulate_weight import modulate_weight, modulate_weight_reference
from .modulated_bias_act import modulated_bias_act, modulated_bias_act_reference
from .reparam import ReparamOutput, reparameterize, reparameterize_reference
from .q_sample import QSampleOutput, q_sample, q_sample_coefficients, q_sample_reference
from .sampler_update import (COEFF_NAMES, SamplerUpdateOutput, sampler_coeffs, sampler_update,
                             sampler_update_reference)
from .upfirdn2d import upfirdn2d, upfirdn2d_reference

__all__ = ["adain", "adain_reference", "attention", "attention_reference", "bias_act", "bias_act_reference", "DDIMStepOutput", "ddim_coefficients", "ddim_step", "ddim_step_reference",
           "QSampleOutput", "q_sample", "ReparamOutput", "reparameterize", "reparameterize_reference", "q_sample_coefficients", "q_sample_reference",
           "diffusion_loss", "diffusion_loss_coefficients", "diffusion_loss_reference",
           "group_norm", "group_norm_reference", "grad_norm_penalty", "grad_norm_penalty_reference",
           "gradient_penalty", "gradient_penalty_reference", "modulated_bias_act", "modulated_bias_act_reference", "modulate_weight",
           "modulate_weight_reference",
           "upfirdn2d", "upfirdn2d_reference",
           "COEFF_NAMES", "SamplerUpdateOutput", "sampler_coeffs", "sampler_update", "sampler_update_reference"]
