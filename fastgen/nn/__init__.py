"""fastgen.nn: modules built on fastgen's fused ops, drop-in for the torch modules they replace.

* :class:`GroupNormAct` — ``nn.GroupNorm`` (+ ADM scale/shift modulation) (+ SiLU/GELU) in one
  fused op; same parameters and state_dict keys as ``nn.GroupNorm``.
"""
from .norm import GroupNormAct

__all__ = ["GroupNormAct"]
