r"""Gradient penalties of GAN discriminators / critics: WGAN-GP, R1, R2, DRAGAN.

    gradient_penalty(critic, real, fake, kind="wgan-gp", weight=10)   # = weight * mean_n pen_n

builds the points the penalty is evaluated at (WGAN-GP: random interpolates ``eps real + (1 - eps)
fake``, eps ~ U[0, 1] per sample; R1: the reals; R2: the fakes; DRAGAN: reals perturbed by
``0.5 std(real) U[0, 1)``), differentiates the critic there with ``create_graph=True`` (so the
penalty's gradient reaches the critic's weights: a second derivative through every layer, which
fastgen's fused ops provide), and reduces the gradient ``g`` with the fused op

    grad_norm_penalty(g, center, squared) -> pen_n = (||g_n|| - center)^2   or   ||g_n||^2 (squared)

one pass over g (per-sample sums of squares in fp32 lanes, accumulated in fp64) with a fused
backward ``d g_n = u_n k_n g_n`` (k = 2 (||g|| - c) / ||g||, or 2) — the norm, subtraction, square,
mean and their backward are otherwise six passes over a tensor the size of the critic's input.
The interpolate is one ``torch.lerp`` (already one pass). The second derivative of
grad_norm_penalty (gradgradcheck) differentiates its reference.

Implementations of grad_norm_penalty: ``cpp`` (CPU), ``triton`` (CUDA), ``torch`` (reference).
"""
from __future__ import annotations

import functools
import math
from numbers import Real
from typing import Callable, Optional

import torch

from .. import _extension, backend
from . import _common as C

OP = "grad_norm_penalty"
KINDS = ("wgan-gp", "r1", "r2", "dragan")

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="per-sample gradient-norm penalty of WGAN-GP / R1 / R2 / DRAGAN with its fused backward",
    )
)


def grad_norm_penalty_reference(grad: torch.Tensor, center: float = 1.0, squared: bool = False) -> torch.Tensor:
    """Plain differentiable PyTorch: ``(||g_n|| - center)^2`` or ``||g_n||^2`` per sample (fp32, or float64)."""
    ct = torch.float64 if grad.dtype == torch.float64 else torch.float32
    sq = grad.to(ct).flatten(1).square().sum(dim=1)
    if squared:
        return sq
    return (sq.sqrt() - center).square()


# ----------------------------------------------------------------------------- custom ops
def _fake(grad, center, squared):
    n = grad.shape[0]
    return grad.new_empty((n,), dtype=torch.float32), grad.new_empty((n,), dtype=torch.float32)


def _fake_backward(gpen, grad, norm, center, squared):
    return torch.empty_like(grad)


def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    bwd = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        grad, center, squared = inputs
        ctx.save_for_backward(grad, output[1])
        ctx.params = (center, squared)

    def backward_fwd(ctx, gpen, gnorm):
        # the second output (the norms) is saved for the backward and not differentiated: the public
        # grad_norm_penalty() returns only the penalty
        grad, norm = ctx.saved_tensors
        return bwd(gpen, grad, norm, *ctx.params), None, None

    def setup_bwd(ctx, inputs, output):
        gpen, grad, norm, center, squared = inputs
        ctx.save_for_backward(gpen, grad)
        ctx.params = (center, squared)

    def backward_bwd(ctx, u):
        """Second order: differentiate the reference's first derivative."""
        gpen, grad = ctx.saved_tensors
        center, squared = ctx.params

        def first(gp, g):
            _, vjp = torch.func.vjp(lambda g_: grad_norm_penalty_reference(g_, center, squared), g)
            return vjp(gp)[0]

        _, vjp2 = torch.func.vjp(first, gpen.float(), grad.float())
        d_gpen, d_grad = vjp2(u.float())
        need = ctx.needs_input_grad
        return (d_gpen if need[0] else None, d_grad.to(grad.dtype) if need[1] else None, None, None, None)

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
    K = C.triton_kernels("grad_penalty")
    from torch.library import triton_op

    @triton_op("fastgen::grad_norm_penalty_triton", mutates_args=())
    def grad_norm_penalty_triton(grad: torch.Tensor, center: float, squared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return K.norm_penalty_forward(_rows(grad), center, squared)

    @triton_op("fastgen::grad_norm_penalty_triton_backward", mutates_args=())
    def grad_norm_penalty_triton_backward(gpen: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor, center: float,
                                          squared: bool) -> torch.Tensor:
        return K.norm_penalty_backward(gpen.float().contiguous(), _rows(grad), norm.float().contiguous(), center,
                                       squared)

    grad_norm_penalty_triton.register_fake(_fake)
    grad_norm_penalty_triton_backward.register_fake(_fake_backward)
    _register_autograd("grad_norm_penalty_triton", "grad_norm_penalty_triton_backward")
    return grad_norm_penalty_triton


def _rows(grad: torch.Tensor) -> torch.Tensor:
    """grad itself when it is dense with the batch outermost (read in memory order), else contiguous."""
    return grad if (C.is_dense(grad) and C.batch_outer_dense(grad)) else grad.contiguous()


# ----------------------------------------------------------------------------- public entries
def grad_norm_penalty(grad: torch.Tensor, center: float = 1.0, squared: bool = False, *,
                      impl: Optional[str] = None) -> torch.Tensor:
    """Per-sample ``(||grad_n||_2 - center)^2`` (or ``||grad_n||^2`` with ``squared``) in one fused pass.

    Args:
        grad: ``(N, ...)`` float32/float16/bfloat16 (float64 runs the reference), any dense layout.
        center: the target norm of the two-sided penalty (WGAN-GP: 1).
        squared: the squared norm instead (R1 / R2).
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).
    Returns ``(N,)`` float32 (float64 for float64 grad); differentiable w.r.t. grad (any order).
    """
    C.check_tensor(grad, "grad", OP)
    if grad.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: grad has dtype {grad.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if grad.dim() < 1:
        raise ValueError(f"fastgen.{OP}: grad must have a batch dimension, got shape {tuple(grad.shape)}")
    if isinstance(center, bool) or not isinstance(center, Real) or not math.isfinite(center):
        raise ValueError(f"fastgen.{OP}: center must be a finite number, got {center!r}")
    name = backend.resolve(OP, grad.device, impl)
    if name == "torch" or grad.dtype == torch.float64 or grad.numel() == 0:
        return grad_norm_penalty_reference(grad, float(center), bool(squared))
    if name == "cpp":
        return torch.ops.fastgen.grad_norm_penalty(grad, float(center), bool(squared))[0]
    return _triton_ops()(grad, float(center), bool(squared))[0]


def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: Optional[torch.Tensor] = None, *,
                     kind: str = "wgan-gp", weight: float = 10.0, center: float = 1.0,
                     labels: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                     reduction: str = "mean", impl: Optional[str] = None) -> torch.Tensor:
    """A gradient penalty of ``critic`` (see the module docstring), differentiable into its weights.

    Args:
        critic: ``critic(x)`` or, with ``labels``, ``critic(x, labels)``; returns logits/scores (N, ...)
            (a tuple / object with a ``logits`` attribute: its first / logits entry).
        real, fake: ``(N, C, H, W)`` batches (fake is needed by ``wgan-gp`` and ``r2``; detach it
            from the generator).
        kind: ``"wgan-gp"`` (interpolates, (||g|| - center)^2), ``"r1"`` (reals, ||g||^2), ``"r2"``
            (fakes, ||g||^2) or ``"dragan"`` (perturbed reals, (||g|| - center)^2).
        weight: multiplies the penalty (WGAN-GP: 10; R1: gamma / 2).
        generator: the random interpolation / perturbation draws.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (per sample).
        impl: the grad_norm_penalty implementation.
    """
    if kind not in KINDS:
        raise ValueError(f"gradient_penalty: kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"gradient_penalty: reduction must be 'mean' or 'none', got {reduction!r}")
    C.check_tensor(real, "real", "gradient_penalty")
    if kind in ("wgan-gp", "r2"):
        if fake is None:
            raise ValueError(f"gradient_penalty: kind={kind!r} needs fake")
        C.check_tensor(fake, "fake", "gradient_penalty")
        if fake.shape != real.shape:
            raise ValueError(f"gradient_penalty: fake has shape {tuple(fake.shape)} but real {tuple(real.shape)}")
    real = real.detach()
    n = real.shape[0]
    bshape = (n,) + (1,) * (real.dim() - 1)
    if kind == "wgan-gp":
        eps = torch.rand(bshape, generator=generator).to(real.device, real.dtype)  # fp32 draws for every dtype
        x = torch.lerp(fake.detach().to(real.dtype), real, eps)
    elif kind == "dragan":
        u = torch.rand(real.shape, generator=generator).to(real.device, real.dtype)
        x = real + 0.5 * real.std() * u
    else:
        x = real if kind == "r1" else fake.detach()
    x = x.detach().requires_grad_(True)
    out = critic(x) if labels is None else critic(x, labels)
    out = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    g, = torch.autograd.grad(out.sum(), x, create_graph=True)
    pen = grad_norm_penalty(g, center, squared=kind in ("r1", "r2"), impl=impl)
    pen = pen * weight
    return pen.mean() if reduction == "mean" else pen


def gradient_penalty_reference(critic, real, fake=None, *, kind="wgan-gp", weight=10.0, center=1.0, labels=None,
                               generator=None, reduction="mean"):
    """The same penalty written with plain autograd and torch norms (the oracle of the tests and the
    plain-PyTorch baseline of the benchmarks)."""
    real = real.detach()
    n = real.shape[0]
    bshape = (n,) + (1,) * (real.dim() - 1)
    if kind == "wgan-gp":
        eps = torch.rand(bshape, generator=generator).to(real.device, real.dtype)  # fp32 draws for every dtype
        x = eps * real + (1 - eps) * fake.detach().to(real.dtype)
    elif kind == "dragan":
        u = torch.rand(real.shape, generator=generator).to(real.device, real.dtype)
        x = real + 0.5 * real.std() * u
    else:
        x = real if kind == "r1" else fake.detach()
    x = x.detach().requires_grad_(True)
    out = critic(x) if labels is None else critic(x, labels)
    out = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    g, = torch.autograd.grad(out.sum(), x, create_graph=True)
    norm = g.flatten(1).norm(2, dim=1)
    pen = norm.square() if kind in ("r1", "r2") else (norm - center).square()
    pen = pen * weight
    return pen.mean() if reduction == "mean" else pen
