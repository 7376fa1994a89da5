"""Public functional API: one function per fused op.

Each function validates its arguments (errors name the argument), picks an implementation
(see :mod:`fastgen.backend`; ``impl=`` forces one) and calls the op.
"""
from .ops.ddim_step import DDIMStepOutput, ddim_step

__all__ = ["DDIMStepOutput", "ddim_step"]
