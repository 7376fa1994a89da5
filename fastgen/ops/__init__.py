"""One module per fused op: reference, custom-op registration, autograd and dispatch.

Importing this package loads the compiled extension (building it just in time if needed) and
registers every op's fake kernel and autograd formula.
"""
from .ddim_step import DDIMStepOutput, ddim_coefficients, ddim_step, ddim_step_reference

__all__ = ["DDIMStepOutput", "ddim_coefficients", "ddim_step", "ddim_step_reference"]
