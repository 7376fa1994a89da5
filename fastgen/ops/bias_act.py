r"""Fused bias + activation + gain + clamp (StyleGAN2's ``bias_act``), with every order of gradient.

    y = clamp(act(x + b) * gain, -clamp, clamp)          (b broadcast along ``dim``)

Activations (name: default alpha, default gain): ``linear`` (-, 1), ``relu`` (-, sqrt 2), ``lrelu``
(0.2, sqrt 2), ``tanh`` (-, 1), ``sigmoid`` (-, 1), ``elu`` (1, 1), ``selu`` (-, 1), ``silu`` /
``swish`` (-, sqrt 2), ``gelu`` (erf; -, 1). The gains are StyleGAN2's (they keep the activations'
variance near 1 under equalized learning rate).

Gradients are fused at every order that GANs need: with z = x + b, m = [|act(z) gain| <= clamp],
    first order    dx = g gain act'(z) m,              db = sum of dx over all dims but ``dim``
    second order   (the gradient of that, for R1 / WGAN-GP through the discriminator)
                   d g = u gain act'(z) m,  dz = u g gain act''(z) m
which are the op ``bias_act_grad`` at ``order`` 1 and 2, one pass each. Piecewise-linear
activations (linear, relu, lrelu) have act'' = 0: their second order is a single order-1 pass
(d g) and no dz. The third derivative (the gradient of an order-2 pass) is computed with torch ops
from the reference's derivatives, so any order works.

Implementations (fastgen.backend): ``cpp`` (CPU: csrc/cpu/bias_act.cpp, vectorised per ISA),
``triton`` (CUDA: fastgen/kernels/bias_act.py), ``torch`` (:func:`bias_act_reference`).
Storage fp32/fp16/bf16 with fp32 math; float64 runs the reference. NCHW-contiguous and
channels_last (``dim=1``) inputs are processed in their memory order; other layouts are made
contiguous.
"""
from __future__ import annotations

import functools
import math
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _extension, backend
from . import _common as C

OP = "bias_act"
_SQRT2 = math.sqrt(2.0)
# name: (kernel code, default alpha, default gain, whether act'' is nonzero)
ACTIVATIONS = {
    "linear": (0, 0.0, 1.0, False), "relu": (1, 0.0, _SQRT2, False), "lrelu": (2, 0.2, _SQRT2, False),
    "tanh": (3, 0.0, 1.0, True), "sigmoid": (4, 0.0, 1.0, True), "elu": (5, 1.0, 1.0, True),
    "selu": (6, 0.0, 1.0, True), "silu": (7, 0.0, _SQRT2, True), "swish": (7, 0.0, _SQRT2, True),
    "gelu": (8, 0.0, 1.0, True),
}
_NAMES = {code: name for name, (code, *_) in ACTIVATIONS.items() if name != "swish"}
_SELU_L, _SELU_A = 1.0507009873554805, 1.6732632423543772

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="StyleGAN2 bias + activation + gain + clamp with fused first and second order gradients",
    )
)


# ----------------------------------------------------------------------------- reference
def _act_torch(z: torch.Tensor, code: int, alpha: float) -> torch.Tensor:
    name = _NAMES[code]
    if name == "linear":
        return z
    if name == "relu":
        return F.relu(z)
    if name == "lrelu":
        return F.leaky_relu(z, alpha)
    if name == "elu":
        return F.elu(z, alpha)
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "selu": F.selu, "silu": F.silu, "gelu": F.gelu}[name](z)


def _act_derivative(z: torch.Tensor, code: int, alpha: float, order: int) -> torch.Tensor:
    """act'(z) (order 1) or act''(z) (order 2) as differentiable torch ops (the kernels' formulas)."""
    name = _NAMES[code]
    pos = z > 0
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    if name == "linear":
        return one if order == 1 else zero
    if name in ("relu", "lrelu"):
        neg = alpha if name == "lrelu" else 0.0
        return torch.where(pos, one, one * neg) if order == 1 else zero
    if name == "tanh":
        t = torch.tanh(z)
        return 1 - t * t if order == 1 else -2 * t * (1 - t * t)
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s) if order == 1 else s * (1 - s) * (1 - 2 * s)
    if name in ("elu", "selu"):
        lam, al = (_SELU_L, _SELU_A) if name == "selu" else (1.0, alpha)
        e = torch.exp(torch.clamp(z, max=0.0))
        return torch.where(pos, lam * one, lam * al * e) if order == 1 else torch.where(pos, zero, lam * al * e)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s)) if order == 1 else s * (1 - s) * (2 + z * (1 - 2 * s))
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # gelu
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi if order == 1 else phi * (2 - z * z)


def _bshape(x: torch.Tensor, dim: int) -> list[int]:
    return [x.shape[dim] if d == dim else 1 for d in range(x.dim())]


def _z(x, b, dim, ct):
    z = x.to(ct)
    return z if b is None else z + b.to(ct).reshape(_bshape(x, dim))


def bias_act_reference(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
                       alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None) -> torch.Tensor:
    """Plain differentiable PyTorch (fp32 math for half inputs, float64 stays float64)."""
    code, alpha, gain, clamp = _params(act, alpha, gain, clamp)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = _act_torch(_z(x, b, dim, ct), code, alpha) * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


def _mask_gain(z, code, alpha, gain, clamp):
    """gain * [|act(z) gain| <= clamp] (just gain without a clamp)."""
    if clamp < 0:
        return gain
    return (_act_torch(z, code, alpha) * gain).abs().le(clamp).to(z.dtype) * gain


def _grad_reference(g, x, b, g2, dim, code, alpha, gain, clamp, order):
    """The ``bias_act_grad`` op in torch ops: order 1 ``g gain act'(z) m``, 2 ``g g2 gain act''(z) m``."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = _z(x, b, dim, ct)
    k = _mask_gain(z, code, alpha, gain, clamp) * _act_derivative(z, code, alpha, order)
    out = g.to(ct) * k
    return (out if order == 1 else out * g2.to(ct)).to(x.dtype)


# ----------------------------------------------------------------------------- custom ops
def _fake(x, b, dim, act, alpha, gain, clamp):
    fmt = _memory_format(x, dim)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)


def _fake_grad(g, x, b, g2, dim, act, alpha, gain, clamp, order):
    return _fake(x, b, dim, act, alpha, gain, clamp)


def _memory_format(x, dim):
    cl = x.dim() == 4 and dim == 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _reduce_bias(dz: torch.Tensor, b: Optional[torch.Tensor], dim: int) -> Optional[torch.Tensor]:
    if b is None:
        return None
    dims = [d for d in range(dz.dim()) if d != dim]
    return (dz.sum(dim=dims, dtype=torch.float32) if dims else dz.float()).to(b.dtype)


def _register_autograd(fwd_name: str, grad_name: str) -> None:
    """Autograd of a (forward, grad) op pair. The grad op's own backward uses the grad op again
    (order 2 for dz of order 1; order 2 for dg / dg2 of order 2) and torch ops for the third
    derivative."""
    grad_op = getattr(torch.ops.fastgen, grad_name).default

    def setup_fwd(ctx, inputs, output):
        x, b, dim, act, alpha, gain, clamp = inputs
        ctx.save_for_backward(x, b)
        ctx.params = (dim, act, alpha, gain, clamp)

    def backward_fwd(ctx, gy):
        x, b = ctx.saved_tensors
        dim = ctx.params[0]
        if gy is None:
            return (None,) * 7
        dz = grad_op(gy, x, b, None, *ctx.params, 1)
        db = _reduce_bias(dz, b, dim) if ctx.needs_input_grad[1] else None
        return dz, db, None, None, None, None, None

    def setup_grad(ctx, inputs, output):
        g, x, b, g2, dim, act, alpha, gain, clamp, order = inputs
        ctx.save_for_backward(g, x, b, g2)
        ctx.params = (dim, act, alpha, gain, clamp)
        ctx.order = order

    def backward_grad(ctx, u):
        g, x, b, g2 = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.params
        need_g, need_x, need_b, need_g2 = ctx.needs_input_grad[:4]
        res = [None] * 10
        if u is None:
            return tuple(res)
        second = ACTIVATIONS[_NAMES[act]][3]
        if ctx.order == 1:
            if need_g:
                res[0] = grad_op(u, x, b, None, *ctx.params, 1)
            if (need_x or need_b) and not second:  # piecewise linear: act'' = 0; zeros without a pass
                res[1] = x.new_zeros(()).expand(x.shape) if need_x else None
                res[2] = b.new_zeros(b.shape) if need_b else None
                return tuple(res)
            dz = grad_op(u, x, b, g, *ctx.params, 2) if (need_x or need_b) else None
        else:
            if need_g:
                res[0] = grad_op(u, x, b, g2, *ctx.params, 2)
            if need_g2:
                res[3] = grad_op(u, x, b, g, *ctx.params, 2)
            dz = _third(u, g, x, b, g2, ctx.params) if (need_x or need_b) else None
        if need_x:
            res[1] = dz
        if need_b:
            res[2] = _reduce_bias(dz, b, dim)
        return tuple(res)

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{grad_name}", backward_grad, setup_context=setup_grad)


def _third(u, g, x, b, g2, params):
    """dz of an order-2 pass: u g g2 gain act'''(z) m, by differentiating the reference's act''."""
    dim, code, alpha, gain, clamp = params
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = _z(x, b, dim, ct)
    w = u.to(ct) * g.to(ct) * g2.to(ct) * _mask_gain(z, code, alpha, gain, clamp)
    _, vjp = torch.func.vjp(lambda zz: _act_derivative(zz, code, alpha, 2), z)
    return vjp(w)[0].to(x.dtype)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, "bias_act"):
        return False
    torch.library.register_fake("fastgen::bias_act")(_fake)
    torch.library.register_fake("fastgen::bias_act_grad")(_fake_grad)
    _register_autograd("bias_act", "bias_act_grad")
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton and fastgen.kernels.bias_act)."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op("fastgen::bias_act_triton", mutates_args=())
    def bias_act_triton(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: int, alpha: float, gain: float,
                        clamp: float) -> torch.Tensor:
        return K.bias_act(x, b, None, None, dim, act, alpha, gain, clamp, 0, _memory_format(x, dim))

    @triton_op("fastgen::bias_act_grad_triton", mutates_args=())
    def bias_act_grad_triton(g: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor], g2: Optional[torch.Tensor],
                             dim: int, act: int, alpha: float, gain: float, clamp: float, order: int) -> torch.Tensor:
        return K.bias_act(x, b, g, g2, dim, act, alpha, gain, clamp, order, _memory_format(x, dim))

    bias_act_triton.register_fake(_fake)
    bias_act_grad_triton.register_fake(_fake_grad)
    _register_autograd("bias_act_triton", "bias_act_grad_triton")
    return bias_act_triton


# ----------------------------------------------------------------------------- public entry
def _params(act, alpha, gain, clamp) -> tuple[int, float, float, float]:
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"fastgen.{OP}: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    code, d_alpha, d_gain, _ = ACTIVATIONS[act]
    for name, v in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v)):
            raise ValueError(f"fastgen.{OP}: {name} must be a finite number or None, got {v!r}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"fastgen.{OP}: clamp must be >= 0 or None, got {clamp!r}")
    return (code, float(d_alpha if alpha is None else alpha), float(d_gain if gain is None else gain),
            -1.0 if clamp is None else float(clamp))


def _check(x, b, dim):
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"fastgen.{OP}: dim must be an int, got {type(dim).__name__}")
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"fastgen.{OP}: dim = {dim} is out of range for x of shape {tuple(x.shape)}")
    dim %= x.dim()
    if b is not None:
        C.check_tensor(b, "b", OP)
        if not b.is_floating_point():
            raise TypeError(f"fastgen.{OP}: b must be a floating-point tensor, got {b.dtype}")
        if tuple(b.shape) != (x.shape[dim],):
            raise ValueError(f"fastgen.{OP}: b must have shape (x.shape[dim],) = ({x.shape[dim]},), got "
                             f"{tuple(b.shape)}")
        if b.device != x.device:
            raise ValueError(f"fastgen.{OP}: b is on {b.device} but x is on {x.device}")
    return dim


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None, *,
             impl: Optional[str] = None) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)`` in one pass, with fused first and second order
    gradients (StyleGAN2's ``bias_act``).

    Args:
        x: any shape; float32/float16/bfloat16 (float64 runs the reference).
        b: ``(x.shape[dim],)`` bias (any float dtype) or None.
        dim: the axis ``b`` runs along (default 1: channels).
        act: ``linear``, ``relu``, ``lrelu``, ``tanh``, ``sigmoid``, ``elu``, ``selu``, ``silu``
            (``swish``), ``gelu``.
        alpha: lrelu slope (default 0.2) / elu scale (default 1).
        gain: output scale (default: the activation's, e.g. sqrt 2 for relu, lrelu, silu).
        clamp: clamp the output to [-clamp, clamp] (None: no clamp).
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns y with x's shape and dtype (and memory format for contiguous / channels_last).
    Differentiable w.r.t. x and b to any order.
    """
    dim = _check(x, b, dim)
    code, alpha, gain, clamp = _params(act, alpha, gain, clamp)
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.dtype == torch.float64 or x.numel() == 0:
        return bias_act_reference(x, b, dim, act, alpha, gain, None if clamp < 0 else clamp)
    if name == "cpp":
        return torch.ops.fastgen.bias_act(x, b, dim, code, alpha, gain, clamp)
    return _triton_ops()(x, b, dim, code, alpha, gain, clamp)
