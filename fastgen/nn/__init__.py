"""fastgen.nn: modules built on fastgen's fused ops, drop-in for the torch modules they replace.

* :class:`GroupNormAct` — ``nn.GroupNorm`` (+ ADM scale/shift modulation) (+ SiLU/GELU) in one
  fused op; same parameters and state_dict keys as ``nn.GroupNorm``.
* :class:`TimestepEmbedding`, :func:`timestep_embedding` — sinusoidal timestep embedding + MLP
  (diffusers-compatible layer names and conventions).
* :class:`Attention` (multi-head self/cross attention, fused QKV, optional QK-norm) and
  :class:`SelfAttention2d` (SAGAN) — on :func:`fastgen.functional.attention`, twice differentiable.
* :class:`BiasAct` — learned bias + activation + gain (+ clamp) in one fused op (StyleGAN2's
  ``bias_act``), twice differentiable with fused kernels.
* :class:`Conv2d` — ``nn.Conv2d`` whose gradients of every order (R1 / WGAN-GP through a
  discriminator) run on the convolution library's own kernels (:func:`fastgen.functional.conv2d`).
* :class:`AdaIN` — StyleGAN's style block: (y_s, y_b) = A(w), then fused adaptive instance norm.
* StyleGAN blocks: :class:`EqualizedLinear`, :class:`EqualizedConv2d` (equalized learning rate,
  fused bias + activation, FIR up/down-sampling), :class:`MappingNetwork`, :class:`SynthesisLayer`
  (modulated conv + fused demodulation / noise / bias / lrelu), :class:`ToRGBLayer`,
  :class:`AdaINLayer` (StyleGAN v1), :class:`MinibatchStdDev`.
* U-Net blocks: :class:`ResBlock` (scale-shift norm), :class:`AttentionBlock` (also exported as
  :class:`SpatialSelfAttention`: GroupNorm, attention over H*W, projection, residual),
  :class:`Downsample`, :class:`Upsample`.
"""
from .activation import AdaIN, BiasAct
from .attention import Attention, SelfAttention2d
from .conv import Conv2d
from .embedding import TimestepEmbedding, timestep_embedding
from .norm import GroupNormAct
from .stylegan import (AdaINLayer, EqualizedConv2d, EqualizedLinear, MappingNetwork, MinibatchStdDev, SynthesisLayer,
                       ToRGBLayer, normalize_2nd_moment)
from .unet_blocks import AttentionBlock, Downsample, ResBlock, Upsample

SpatialSelfAttention = AttentionBlock  # the name the attention issue uses for feature-map self-attention

__all__ = ["AdaIN", "BiasAct", "Conv2d", "Attention", "SelfAttention2d", "SpatialSelfAttention", "AttentionBlock", "ResBlock", "Downsample",
           "Upsample", "GroupNormAct", "TimestepEmbedding", "timestep_embedding", "EqualizedLinear", "EqualizedConv2d",
           "MappingNetwork", "SynthesisLayer", "ToRGBLayer", "AdaINLayer", "MinibatchStdDev", "normalize_2nd_moment"]
