"""fastgen.nn: modules built on fastgen's fused ops, drop-in for the torch modules they replace.

* :class:`GroupNormAct` — ``nn.GroupNorm`` (+ ADM scale/shift modulation) (+ SiLU/GELU) in one
  fused op; same parameters and state_dict keys as ``nn.GroupNorm``.
* :class:`TimestepEmbedding`, :func:`timestep_embedding` — sinusoidal timestep embedding + MLP
  (diffusers-compatible layer names and conventions).
* :class:`Attention` (multi-head self/cross attention, fused QKV, optional QK-norm) and
  :class:`SelfAttention2d` (SAGAN) — on :func:`fastgen.functional.attention`, twice differentiable.
"""
from .attention import Attention, SelfAttention2d
from .embedding import TimestepEmbedding, timestep_embedding
from .norm import GroupNormAct

__all__ = ["Attention", "SelfAttention2d", "GroupNormAct", "TimestepEmbedding", "timestep_embedding"]
