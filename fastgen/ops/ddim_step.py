"""The fused DDIM / DDPM-ancestral update: x0 prediction and x_{t-1} in one pass.

    x0     = clamp((x_t - sqrt(1 - a_t) * eps) / sqrt(a_t), -clip, clip)
    sigma  = eta * sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    x_prev = sqrt(a_p) * x0 + sqrt(1 - a_p - sigma^2) * eps + sigma * noise

with a_t = alpha_bar_t and a_p = alpha_bar_prev (scalars, or one per sample). eta = 0 is DDIM,
eta = 1 is DDPM ancestral sampling with the posterior variance. The direction coefficient is
computed in a cancellation-free form (see csrc/include/fastgen/ddim.h), so large few-step jumps
stay exact in fp32.

Implementations (see fastgen.backend):
  torch   ddim_step_reference — differentiable PyTorch, also w.r.t. the alphas
  cpp     torch.ops.fastgen.ddim_step{,_out,_backward} — C++ CPU kernel / CUDA kernel (fastgen._C)
  triton  torch.ops.fastgen.ddim_step_triton{,_out,_backward} — Triton kernels (torch.library.triton_op)

The custom ops have fake kernels and autograd formulas; their backward is a fused op too, and
that backward is differentiable again (double backward), through the forward kernel itself:
the adjoint of the update's linear part is the update.
"""
from __future__ import annotations

import functools
from numbers import Real
from typing import NamedTuple, Optional

import torch

from .. import _extension, backend
from . import _common as C

OP = "ddim_step"

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        # On GPUs the CUDA kernel and the Triton kernel are both bandwidth-bound one-pass kernels;
        # the CUDA kernel takes host-scalar alphas as precomputed coefficients (no H2D copies).
        preference={"cpu": ("cpp",), "cuda": ("cpp", "triton")},
        notes="fused DDIM/DDPM update (x_prev and x0_pred in one pass)",
    )
)


class DDIMStepOutput(NamedTuple):
    """What :func:`ddim_step` returns (a tuple: ``x_prev, x0_pred = ddim_step(...)`` works)."""

    x_prev: torch.Tensor
    x0_pred: torch.Tensor


# ----------------------------------------------------------------------------- reference
def ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta: float, dtype: torch.dtype = torch.float64):
    """The five update coefficients, shaped like the alphas, computed in ``dtype``.

    Returns ``(sqrt(1 - a_t), 1 / sqrt(a_t), sqrt(a_p), dir, sigma)`` where
    ``dir = sqrt(1 - a_p - sigma^2)`` is computed without cancellation. The C++ kernels use
    float64 for host alphas; in-kernel (device/per-sample) alphas are evaluated in float32.
    """
    a_t = torch.as_tensor(alpha_bar_t).to(dtype)
    a_p = torch.as_tensor(alpha_bar_prev).to(device=a_t.device, dtype=dtype)
    om_t, om_p = 1.0 - a_t, 1.0 - a_p
    eta2 = float(eta) ** 2
    denom = a_p * om_t
    stochastic = (denom > 0) & (eta2 > 0)
    safe = torch.where(stochastic, denom, torch.ones_like(denom))
    var = torch.where(stochastic, eta2 * om_p * (a_p - a_t) / safe, torch.zeros_like(denom))
    dir2 = torch.where(stochastic, om_p * ((1.0 - eta2) * a_p * om_t + eta2 * a_t * om_p) / safe, om_p)
    return om_t.sqrt(), a_t.rsqrt(), a_p.sqrt(), dir2.clamp_min(0).sqrt(), var.clamp_min(0).sqrt()


def _per_sample_view(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d or [N] coefficient, as fp32 on x's device, broadcastable against x."""
    c = c.to(device=x.device, dtype=torch.float32)
    if c.dim() == 1:
        c = c.reshape((-1,) + (1,) * (x.dim() - 1))
    return c


def ddim_step_reference(x_t, eps, alpha_bar_t, alpha_bar_prev, eta: float = 0.0, noise=None,
                        clip: float = 0.0):
    """Plain PyTorch DDIM/DDPM update (the oracle and the fallback). Math in fp32.

    ``alpha_bar_*`` are 0-d or [N] tensors (or floats); ``clip`` <= 0 means no clipping.
    Differentiable w.r.t. every tensor argument, alphas included.
    """
    s1, inv, sap, d, sig = (_per_sample_view(c, x_t) for c in ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta))
    x = x_t.float()
    e = eps.float()
    x0 = (x - s1 * e) * inv
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
    x_prev = sap * x0 + d * e
    if noise is not None and eta > 0:
        x_prev = x_prev + sig * noise.float()
    return x_prev.to(x_t.dtype), x0.to(x_t.dtype)


# ----------------------------------------------------------------------------- fake kernels
def _fake_forward(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, clip):
    x_prev = C.empty_output_like(x_t)
    return x_prev, torch.empty_like(x_prev)


def _fake_out(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, clip, x_prev, x0_pred):
    return None


def _fake_backward(grad_x_prev, grad_x0, x_t, eps, alpha_bar_t, alpha_bar_prev, eta, clip, need_noise_grad):
    dx = C.empty_output_like(x_t)
    dn = torch.empty_like(dx) if need_noise_grad else x_t.new_empty((0,))
    return dx, torch.empty_like(dx), dn


# ----------------------------------------------------------------------------- autograd
def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    """Autograd for a (forward, backward) op pair with the schemas of csrc/ops.cpp (used for the
    Triton ops; the C++ ops have the same formulas in csrc/autograd.cpp).

    The backward op's own autograd formula runs the forward op on the incoming grads (its
    adjoint; see csrc/autograd.cpp for the derivation), so gradients of gradients stay fused.
    """
    fwd_op = getattr(torch.ops.fastgen, fwd_name).default
    bwd_op = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        x_t, eps, a_t, a_p, eta, noise, clip = inputs
        ctx.save_for_backward(x_t, eps, a_t, a_p)
        ctx.eta, ctx.clip = eta, clip

    def backward_fwd(ctx, g_prev, g_x0):
        x_t, eps, a_t, a_p = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, de, dn = bwd_op(g_prev, g_x0, x_t, eps, a_t, a_p, ctx.eta, ctx.clip, bool(need[5]))
        return (dx if need[0] else None, de if need[1] else None, None, None, None,
                dn if need[5] else None, None)

    def setup_bwd(ctx, inputs, output):
        g_prev, g_x0, x_t, eps, a_t, a_p, eta, clip, need_noise_grad = inputs
        ctx.save_for_backward(x_t, eps, a_t, a_p)
        ctx.eta, ctx.clip = eta, clip

    def backward_bwd(ctx, u_dx, u_de, u_dn):
        x_t, eps, a_t, a_p = ctx.saved_tensors
        u_dx = torch.zeros_like(x_t) if u_dx is None else u_dx
        u_de = torch.zeros_like(x_t) if u_de is None else u_de
        if u_dn is not None and u_dn.shape != x_t.shape:  # dnoise was not computed (empty)
            u_dn = None
        if ctx.clip > 0:  # where the clamp was active, x0's gradient is zero: mask it out
            with torch.no_grad():
                x0 = fwd_op(x_t, eps, a_t, a_p, 0.0, None, 0.0)[1]
            s1 = _per_sample_view((1.0 - a_t.double()).sqrt(), x_t)
            u_dx = torch.where(x0.abs() <= ctx.clip, u_dx, (s1 * u_de.float()).to(x_t.dtype))
        d_gp, d_g0 = fwd_op(u_dx, u_de, a_t, a_p, ctx.eta, u_dn, 0.0)
        need = ctx.needs_input_grad
        return (d_gp if need[0] else None, d_g0 if need[1] else None) + (None,) * 7

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


def _register_cpp_ops() -> bool:
    if _extension.load() is None:
        return False
    torch.library.register_fake("fastgen::ddim_step")(_fake_forward)
    torch.library.register_fake("fastgen::ddim_step_out")(_fake_out)
    torch.library.register_fake("fastgen::ddim_step_backward")(_fake_backward)
    # autograd of the C++ ops is registered in C++ (csrc/autograd.cpp)
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


# ----------------------------------------------------------------------------- triton ops
def _device_alphas(a_t: torch.Tensor, a_p: torch.Tensor, x: torch.Tensor):
    """Both alphas as contiguous fp32 [N] tensors on x's device (what the kernels read)."""
    n = x.shape[0] if x.dim() else 1

    def one(a):
        a = a.to(device=x.device, dtype=torch.float32)
        return a.reshape(1).expand(n).contiguous() if a.dim() == 0 else a.contiguous()

    return one(a_t), one(a_p)


_TRITON_BLOCK = 1024


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton importable)."""
    import triton
    from torch.library import triton_op, wrap_triton

    from ..kernels.ddim_step import ddim_bwd_kernel, ddim_fwd_kernel

    def launch_forward(x_t, eps, a_t, a_p, eta, noise, clip, x_prev, x0_pred):
        # x_prev and x0_pred share strides and are batch-outer dense
        numel = x_t.numel()
        if numel == 0:
            return
        xc, ec = C.layout_like(x_t, x_prev), C.layout_like(eps, x_prev)
        has_noise = noise is not None and eta > 0
        nc = C.layout_like(noise, x_prev) if has_noise else xc
        at, ap = _device_alphas(a_t, a_p, x_t)
        per_sample = numel // (x_t.shape[0] if x_t.dim() else 1)
        grid = (triton.cdiv(numel, _TRITON_BLOCK),)
        wrap_triton(ddim_fwd_kernel)[grid](
            xc, ec, nc, x_prev, x0_pred, at, ap, numel, per_sample, float(eta), float(clip),
            HAS_NOISE=has_noise, CLIP=clip > 0, BLOCK=_TRITON_BLOCK, num_warps=4)

    @triton_op("fastgen::ddim_step_triton", mutates_args=())
    def ddim_step_triton(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                         alpha_bar_prev: torch.Tensor, eta: float, noise: Optional[torch.Tensor],
                         clip: float) -> tuple[torch.Tensor, torch.Tensor]:
        x_prev = C.empty_output_like(x_t)
        x0_pred = torch.empty_like(x_prev)
        launch_forward(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, clip, x_prev, x0_pred)
        return x_prev, x0_pred

    @triton_op("fastgen::ddim_step_out_triton", mutates_args=("x_prev", "x0_pred"))
    def ddim_step_out_triton(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                             alpha_bar_prev: torch.Tensor, eta: float, noise: Optional[torch.Tensor],
                             clip: float, x_prev: torch.Tensor, x0_pred: torch.Tensor) -> None:
        if x_prev.stride() == x0_pred.stride() and C.is_dense(x_prev) and C.batch_outer_dense(x_prev):
            launch_forward(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, clip, x_prev, x0_pred)
        else:
            tp = C.empty_output_like(x_t)
            t0 = torch.empty_like(tp)
            launch_forward(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise, clip, tp, t0)
            x_prev.copy_(tp)
            x0_pred.copy_(t0)

    @triton_op("fastgen::ddim_step_backward_triton", mutates_args=())
    def ddim_step_backward_triton(grad_x_prev: Optional[torch.Tensor], grad_x0: Optional[torch.Tensor],
                                  x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                                  alpha_bar_prev: torch.Tensor, eta: float, clip: float,
                                  need_noise_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dx = C.empty_output_like(x_t)
        de = torch.empty_like(dx)
        dn = torch.empty_like(dx) if need_noise_grad else x_t.new_empty((0,))
        numel = x_t.numel()
        if numel == 0:
            return dx, de, dn
        xc, ec = C.layout_like(x_t, dx), C.layout_like(eps, dx)
        gp = C.layout_like(grad_x_prev, dx) if grad_x_prev is not None else xc
        g0 = C.layout_like(grad_x0, dx) if grad_x0 is not None else xc
        at, ap = _device_alphas(alpha_bar_t, alpha_bar_prev, x_t)
        per_sample = numel // (x_t.shape[0] if x_t.dim() else 1)
        grid = (triton.cdiv(numel, _TRITON_BLOCK),)
        wrap_triton(ddim_bwd_kernel)[grid](
            xc, ec, gp, g0, dx, de, dn if need_noise_grad else dx, at, ap, numel, per_sample,
            float(eta), float(clip), HAS_GP=grad_x_prev is not None, HAS_G0=grad_x0 is not None,
            NEED_DN=need_noise_grad, CLIP=clip > 0, BLOCK=_TRITON_BLOCK, num_warps=4)
        return dx, de, dn

    _register_autograd("ddim_step_triton", "ddim_step_backward_triton")
    return ddim_step_triton, ddim_step_out_triton, ddim_step_backward_triton


# ----------------------------------------------------------------------------- public entry
def _alpha_arg(v, name: str, x: torch.Tensor) -> torch.Tensor:
    """A float or tensor alpha as a 0-d / [N] floating tensor, with checks naming ``name``."""
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {v.dtype}")
        if not (v.dim() == 0 or (v.dim() == 1 and x.dim() >= 1 and v.shape[0] == x.shape[0])):
            n = x.shape[0] if x.dim() else "(x_t is 0-d: only scalars)"
            raise ValueError(
                f"fastgen.{OP}: {name} must be a scalar or have shape [N] with N = x_t.shape[0] = {n}; "
                f"got shape {tuple(v.shape)}")
        if v.device != x.device and not (v.dim() == 0 and v.device.type == "cpu"):
            raise ValueError(f"fastgen.{OP}: {name} is on {v.device} but x_t is on {x.device}")
        return v
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"fastgen.{OP}: {name} must be a float or a tensor, got {type(v).__name__}")
    C.check_real(v, name, OP, lo=0.0, hi=1.0, lo_open=True)
    return torch.tensor(float(v), dtype=torch.float64)


def _check_alpha_values(a_t: torch.Tensor, a_p: torch.Tensor, eta: float) -> None:
    """Value checks the C++ CPU path does itself; here for the torch and Triton paths."""
    for a, name in ((a_t, "alpha_bar_t"), (a_p, "alpha_bar_prev")):
        if a.device.type != "cpu":  # reading device values back would cost a sync per step
            continue
        bad = ~((a > 0) & (a <= 1))
        if bool(bad.any()):
            raise ValueError(f"fastgen.{OP}: {name} must be in (0, 1], got {a[bad].flatten()[0].item()!r}")
    if eta > 0 and a_t.device.type == "cpu" and a_p.device.type == "cpu" and bool((a_p < a_t).any()):
        raise ValueError(f"fastgen.{OP}: with eta > 0, alpha_bar_prev must be >= alpha_bar_t "
                         "(stochastic steps go towards less noise)")


def _clip_arg(clip_denoised) -> float:
    if clip_denoised is None or clip_denoised is False:
        return 0.0
    if clip_denoised is True:
        return 1.0
    return C.check_real(clip_denoised, "clip_denoised", OP, lo=0.0, lo_open=True)


def _out_arg(out, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
        raise TypeError(f"fastgen.{OP}: out must be a pair of tensors (x_prev, x0_pred)")
    C.check_same(out[0], x_t, "out[0] (x_prev)", "x_t", OP)
    C.check_same(out[1], x_t, "out[1] (x0_pred)", "x_t", OP)
    return out[0], out[1]


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev, eta: float = 0.0,
              noise: Optional[torch.Tensor] = None, clip_denoised=None, *,
              generator: Optional[torch.Generator] = None, out=None, impl: Optional[str] = None
              ) -> DDIMStepOutput:
    """One DDIM (``eta=0``) or DDPM-ancestral (``eta=1``) update, fused into one pass.

    Args:
        x_t: the noisy sample at step t, any shape with the batch first; float32/float16/bfloat16.
        eps: the model's noise prediction, same shape/dtype/device as ``x_t``.
        alpha_bar_t: cumulative alpha at t: a float, a 0-d tensor, or an [N] tensor (one per sample).
        alpha_bar_prev: cumulative alpha at the previous (less noisy) step, same forms.
        eta: stochasticity in [0, 1] (0: deterministic DDIM; 1: DDPM posterior variance).
        noise: standard normal noise for ``eta > 0``; drawn with ``generator`` when omitted.
        clip_denoised: clamp the x0 prediction to [-c, c]: ``True`` (c = 1), a float c > 0,
            or ``None``/``False`` (no clamp).
        generator: RNG for the noise when ``noise`` is not given.
        out: optional pair ``(x_prev, x0_pred)`` to write into (sampler loops reuse buffers; on
            CPU a fresh large output costs more in page faults than the whole update).
        impl: force ``"torch"``, ``"cpp"`` or ``"triton"`` (default: see fastgen.backend).

    Returns:
        ``DDIMStepOutput(x_prev, x0_pred)``, both like ``x_t`` (its memory format when dense).
        Math is fp32 inside for every input dtype.
    """
    C.check_tensor(x_t, "x_t", OP)
    C.check_tensor(eps, "eps", OP)
    C.check_float_dtype(x_t, "x_t", OP)
    C.check_same(eps, x_t, "eps", "x_t", OP)
    a_t = _alpha_arg(alpha_bar_t, "alpha_bar_t", x_t)
    a_p = _alpha_arg(alpha_bar_prev, "alpha_bar_prev", x_t)
    eta = C.check_real(eta, "eta", OP, lo=0.0, hi=1.0)
    clip = _clip_arg(clip_denoised)
    if eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        else:
            C.check_tensor(noise, "noise", OP)
            C.check_same(noise, x_t, "noise", "x_t", OP)
    elif noise is not None:
        C.check_tensor(noise, "noise", OP)
        C.check_same(noise, x_t, "noise", "x_t", OP)
        noise = None  # sigma = 0: the noise does not enter the result

    choice = backend.forced_backend() if impl is None else impl
    name = backend.resolve(OP, x_t.device, impl)
    if name != "torch" and torch.is_grad_enabled() and (a_t.requires_grad or a_p.requires_grad):
        if choice not in ("auto", None):
            raise backend.BackendUnavailableError(
                f"fastgen.{OP}: gradients w.r.t. alpha_bar_t/alpha_bar_prev are only computed by impl='torch' "
                f"(impl={choice!r} was forced)")
        name = "torch"
    if name != "cpp" and not C.is_compiling():
        _check_alpha_values(a_t, a_p, eta)

    if out is not None:
        xp, x0 = _out_arg(out, x_t)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x_t, eps, noise, a_t, a_p)):
            raise RuntimeError(f"fastgen.{OP}: out= does not support automatic differentiation "
                               "(an input requires grad); call it without out=")
        if name != "cpp" and not C.is_compiling():  # the C++ op checks this itself
            C.check_out_overlap({"out[0] (x_prev)": xp, "out[1] (x0_pred)": x0},
                                {"x_t": x_t, "eps": eps, "noise": noise}, OP)
        if name == "cpp":
            torch.ops.fastgen.ddim_step_out(x_t, eps, a_t, a_p, eta, noise, clip, xp, x0)
        elif name == "triton":
            _triton_ops()[1](x_t, eps, a_t, a_p, eta, noise, clip, xp, x0)
        else:
            rp, r0 = ddim_step_reference(x_t, eps, a_t, a_p, eta, noise, clip)
            xp.copy_(rp)
            x0.copy_(r0)
        return DDIMStepOutput(xp, x0)

    if name == "cpp":
        xp, x0 = torch.ops.fastgen.ddim_step(x_t, eps, a_t, a_p, eta, noise, clip)
    elif name == "triton":
        xp, x0 = _triton_ops()[0](x_t, eps, a_t, a_p, eta, noise, clip)
    else:
        xp, x0 = ddim_step_reference(x_t, eps, a_t, a_p, eta, noise, clip)
    return DDIMStepOutput(xp, x0)
