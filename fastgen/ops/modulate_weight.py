r"""Per-sample modulated (and demodulated) convolution weights: StyleGAN2's "fused modconv".

    out[n, o, i, ky, kx] = weight[o, i, ky, kx] * styles[n, i] * d[n, o]
    d[n, o] = 1 / sqrt(sum_{i, ky, kx} (weight[o, i, ky, kx] styles[n, i])^2 + eps)   (1 without demodulation)

so that one grouped convolution (groups = N) with these weights computes every sample's modulated
convolution (:func:`fastgen.functional.modulated_conv2d` with ``fused_modconv=True``). Eager
PyTorch writes the (N, O, I, kh, kw) tensor several times (the product, its square for the norms,
the rescaled copy) and its backward several more; here the forward is one write of the output
(the (N, O) coefficients d come from one small matmul ``styles^2 @ (sum_k weight^2)^T``) and the
backward one pass over the incoming gradient G:

    t[n, o] = sum G a,  a = weight styles;   ga = d G - t d^3 a
    grad_weight[o, i, k] = sum_n ga styles[n, i],   grad_styles[n, i] = sum_{o, k} ga weight[o, i, k]

Implementations: ``cpp`` (CPU: csrc/cpu/modulate_weight.cpp), ``triton`` (CUDA:
fastgen/kernels/modulate_weight.py), ``torch`` (:func:`modulate_weight_reference`). The second
derivative (path-length regularisation through a fused-modconv generator) differentiates the
reference's first derivative (torch.func.vjp).
"""
from __future__ import annotations

import functools
import math
from numbers import Real
from typing import Optional

import torch

from .. import _extension, backend
from . import _common as C

OP = "modulate_weight"

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="StyleGAN2 per-sample weight modulation + demodulation (grouped fused modconv), fused backward",
    )
)


def modulate_weight_reference(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                              eps: float = 1e-8) -> torch.Tensor:
    """Plain differentiable PyTorch (fp32 math for half weights; float64 stays float64)."""
    ct = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(ct).unsqueeze(0) * styles.to(ct)[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + eps).rsqrt()
    return w.to(weight.dtype)


def _coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float) -> torch.Tensor:
    wsq = weight.float().square().sum(dim=[2, 3])
    return (styles.float().square() @ wsq.t() + eps).rsqrt().contiguous()


# ----------------------------------------------------------------------------- custom ops
def _fake(weight, styles, demodulate, eps):
    return weight.new_empty((styles.shape[0],) + tuple(weight.shape))


def _fake_backward(grad, weight, styles, demodulate, eps):
    return torch.empty_like(weight, memory_format=torch.contiguous_format), torch.empty_like(styles)


def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    bwd = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        weight, styles, demodulate, eps = inputs
        ctx.save_for_backward(weight, styles)
        ctx.params = (demodulate, eps)

    def backward_fwd(ctx, g):
        weight, styles = ctx.saved_tensors
        gw, gs = bwd(g.contiguous(), weight, styles, *ctx.params)
        return (gw if ctx.needs_input_grad[0] else None, gs if ctx.needs_input_grad[1] else None, None, None)

    def setup_bwd(ctx, inputs, output):
        grad, weight, styles, demodulate, eps = inputs
        ctx.save_for_backward(grad, weight, styles)
        ctx.params = (demodulate, eps)

    def backward_bwd(ctx, ggw, ggs):
        """The backward's backward: differentiate the reference's first derivative."""
        grad, weight, styles = ctx.saved_tensors
        demodulate, eps = ctx.params
        ct = torch.float64 if weight.dtype == torch.float64 else torch.float32

        def first(g, w, s):
            _, vjp = torch.func.vjp(lambda w_, s_: modulate_weight_reference(w_, s_, demodulate, eps), w, s)
            return vjp(g)

        prim = (grad.to(ct), weight.to(ct), styles.to(ct))
        _, vjp2 = torch.func.vjp(first, *prim)
        ups = (torch.zeros_like(prim[1]) if ggw is None else ggw.to(ct),
               torch.zeros_like(prim[2]) if ggs is None else ggs.to(ct))
        dg, dw, ds = vjp2(ups)
        need = ctx.needs_input_grad
        return (dg.to(grad.dtype) if need[0] else None, dw.to(weight.dtype) if need[1] else None,
                ds.to(styles.dtype) if need[2] else None, None, None)

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, OP):
        return False
    torch.library.register_fake(f"fastgen::{OP}")(_fake)
    torch.library.register_fake(f"fastgen::{OP}_backward")(_fake_backward)
    _register_autograd(OP, f"{OP}_backward")
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op("fastgen::modulate_weight_triton", mutates_args=())
    def modulate_weight_triton(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                               eps: float) -> torch.Tensor:
        d = _coefficients(weight, styles, eps) if demodulate else None
        return K.modulate_weight_forward(weight.contiguous(), styles.float().contiguous(), d)

    @triton_op("fastgen::modulate_weight_triton_backward", mutates_args=())
    def modulate_weight_triton_backward(grad: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                                        demodulate: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        d = _coefficients(weight, styles, eps) if demodulate else None
        gw, gs = K.modulate_weight_backward(grad.contiguous(), weight.contiguous(), styles.float().contiguous(), d)
        return gw.to(weight.dtype), gs.to(styles.dtype)

    modulate_weight_triton.register_fake(_fake)
    modulate_weight_triton_backward.register_fake(_fake_backward)
    _register_autograd("modulate_weight_triton", "modulate_weight_triton_backward")
    return modulate_weight_triton


# ----------------------------------------------------------------------------- public entry
def _check(weight, styles, eps):
    C.check_tensor(weight, "weight", OP)
    C.check_tensor(styles, "styles", OP)
    if weight.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: weight has dtype {weight.dtype}; supported are float32, float16, bfloat16 "
                        "(and float64, which runs the reference)")
    if not styles.is_floating_point():
        raise TypeError(f"fastgen.{OP}: styles must be a floating-point tensor, got {styles.dtype}")
    if weight.dim() != 4:
        raise ValueError(f"fastgen.{OP}: weight must have shape (O, I, kh, kw), got {tuple(weight.shape)}")
    if styles.dim() != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"fastgen.{OP}: styles must have shape (N, I) with I = weight.shape[1] = {weight.shape[1]}, "
                         f"got {tuple(styles.shape)}")
    if styles.device != weight.device:
        raise ValueError(f"fastgen.{OP}: styles is on {styles.device} but weight is on {weight.device}")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"fastgen.{OP}: eps must be a finite number >= 0, got {eps!r}")


def modulate_weight(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True, eps: float = 1e-8, *,
                    impl: Optional[str] = None) -> torch.Tensor:
    """Per-sample modulated (and demodulated) weights ``(N, O, I, kh, kw)`` in one pass.

    Args:
        weight: ``(O, I, kh, kw)`` float32/float16/bfloat16 (float64 runs the reference).
        styles: ``(N, I)`` per-sample input-channel scales (any float dtype; fp32 math).
        demodulate: scale each (n, o) filter to unit L2 norm (``eps`` inside the square root).
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns weight's dtype; differentiable w.r.t. weight and styles (any order).
    """
    _check(weight, styles, eps)
    name = backend.resolve(OP, weight.device, impl)
    if name == "torch" or weight.dtype == torch.float64 or weight.numel() == 0 or styles.shape[0] == 0:
        return modulate_weight_reference(weight, styles, demodulate, eps)
    if name == "cpp":
        return torch.ops.fastgen.modulate_weight(weight, styles, bool(demodulate), float(eps))
    return _triton_ops()(weight, styles, bool(demodulate), float(eps))
