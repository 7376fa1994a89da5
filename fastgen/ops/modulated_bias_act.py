r"""StyleGAN's synthesis-layer epilogue in one pass: demodulation scale, noise injection, bias,
activation, gain and clamp.

    z[n, c, p] = x[n, c, p] * scale[n, c] + noise[n, ., p] * noise_strength[c] + b[c]
    y          = clamp(act(z) * gain, -clamp, clamp)

``x`` is the output of a (modulated) convolution, ``scale`` the per-(sample, output channel)
demodulation coefficients of StyleGAN2's non-fused modulated conv (None: 1), ``noise`` per-pixel
noise shared by the channels ((N, 1, *spatial), StyleGAN's B-scaled noise inputs; also (1, 1, ...)
for constant noise or (N, C, ...) per channel), ``noise_strength`` the learned per-channel (C,) or
per-layer scalar factor (None: 1). The activations, their default gains and the clamp are
:func:`fastgen.functional.bias_act`'s (``lrelu`` with gain sqrt 2 in StyleGAN).

Eager PyTorch spends one pass per term (x * scale, noise * strength, the add, + b, the activation,
* gain, the clamp); this is one read of x (and noise) and one write of y. Gradients w.r.t. x, b,
scale, noise and noise_strength; differentiable to any order (path-length regularisation
differentiates the generator twice).

Implementations (fastgen.backend): ``cpp`` (CPU: csrc/cpu/modulated_bias_act.cpp), ``triton`` (CUDA:
fastgen/kernels/modulated_bias_act.py), ``torch`` (:func:`modulated_bias_act_reference`); float64
and empty inputs run the reference, and calls with neither scale nor noise run ``bias_act``. The
backward is one fused pass (dx and the reductions for b, scale, noise_strength and noise, only for
the inputs that need grad, deterministic); the double backward is a second fused pass on CPU (the
closed form of :func:`_double_backward_torch`; torch ops for the Triton ops), and higher orders
differentiate that closed form. NCHW-contiguous and channels-last inputs run in their memory order.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from .. import _extension, backend
from . import _common as C
from .bias_act import _NAMES as _ACT_NAMES
from .bias_act import ACTIVATIONS, _act_derivative, _mask_gain, _params, bias_act, bias_act_reference

OP = "modulated_bias_act"
_ACT_SECOND = {code: second for code, _, _, second in ACTIVATIONS.values()}  # act'' != 0

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="StyleGAN synthesis epilogue: demodulation scale + noise injection + bias + activation + gain + clamp",
    )
)


# ----------------------------------------------------------------------------- reference
def modulated_bias_act_reference(x: torch.Tensor, b: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                                 noise: Optional[torch.Tensor] = None, noise_strength: Optional[torch.Tensor] = None,
                                 act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
                                 clamp: Optional[float] = None) -> torch.Tensor:
    """Plain differentiable PyTorch (fp32 math for half inputs, float64 stays float64)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[:2]
    tail = (1,) * (x.dim() - 2)
    z = x.to(ct)
    if scale is not None:
        z = z * scale.to(ct).reshape(n, c, *tail)
    if noise is not None:
        nz = noise.to(ct)
        if noise_strength is not None:
            s = noise_strength.to(ct)
            nz = nz * (s.reshape(1, c, *tail) if s.numel() == c and c != 1 else s.reshape((1,) * x.dim()))
        z = z + nz
    return bias_act_reference(z, b, 1, act, alpha, gain, clamp).to(x.dtype)


# ----------------------------------------------------------------------------- layouts and fakes
def _cl_dense(t: torch.Tensor) -> bool:
    """Channels innermost and dense: memory order (N, *spatial, C) (channels_last, channels_last_3d, ...)."""
    return t.dim() >= 3 and t.permute(0, *range(2, t.dim()), 1).is_contiguous()


def _processing_cl(x: torch.Tensor) -> bool:
    """Whether the kernels run x as rows of C channels with channels-last outputs (mirror of
    csrc/ops_modulated_bias_act.cpp: x with no spatial extent is rows of C too, but its outputs are
    plain contiguous)."""
    return math.prod(x.shape[2:]) != 1 and not x.is_contiguous() and _cl_dense(x)


def _empty_layout(shape, cl: bool, dtype, device) -> torch.Tensor:
    if cl:
        n, c, *spatial = shape
        return torch.empty((n, *spatial, c), dtype=dtype, device=device).movedim(-1, 1)
    return torch.empty(shape, dtype=dtype, device=device)


def _fake(x, b, scale, noise, noise_strength, act, alpha, gain, clamp):
    return _empty_layout(x.shape, _processing_cl(x), x.dtype, x.device)


def _fake_backward(grad, x, b, scale, noise, noise_strength, act, alpha, gain, clamp, need_x, need_b, need_scale,
                   need_noise, need_strength):
    cl = _processing_cl(x)

    def one(t, need, layout_cl=False):
        if t is None or not need:
            return x.new_empty((0,))
        return _empty_layout(t.shape, layout_cl, t.dtype, t.device)

    dx = _empty_layout(x.shape, cl, x.dtype, x.device) if need_x else x.new_empty((0,))
    dn = one(noise, need_noise, cl and noise is not None and noise.shape[1] > 1)
    return dx, one(b, need_b), one(scale, need_scale), dn, one(noise_strength, need_strength)


# ----------------------------------------------------------------------------- autograd
def _double_backward_torch(saved, params, ups, need):
    """Grads of <backward(g, x, b, scale, noise, strength), ups> w.r.t. (g, x, b, scale, noise,
    strength), in closed form with torch ops. With z = x s + noise st + b, k = gain act'(z) m (m the
    clamp mask, piecewise constant), k2 = gain act''(z) m, the backward's outputs are
    dx = g k s, db = sum g k, dscale = sum_p g k x, dnoise = sum g k st, dstrength = sum g k noise, so
    with W = U_x s + U_b + U_s x + U_n st + U_st noise (the cotangents broadcast to x's shape),
    q = g k and e = g k2 W:

        d g = k W                       d x = q U_s + e s          d b = sum e
        d scale = sum_p (q U_x + e x)   d noise = sum (q U_st + e st)   d strength = sum (q U_n + e noise)

    (e = 0 for linear / relu / lrelu). Differentiable torch ops throughout (act' and act'' are
    bias_act's differentiable formulas), so third and higher orders follow by autograd; each input is
    treated as independent (no path between g and x is followed twice)."""
    g, x, b, scale, noise, strength = saved
    u_x, u_b, u_s, u_n, u_st = ups
    if not any(need) or all(u is None for u in ups):
        return [None] * 6
    act, alpha, gain, clamp = params
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[:2]
    tail = (1,) * (x.dim() - 2)
    spatial = tuple(range(2, x.dim()))
    xf, gf = x.to(ct), g.to(ct)
    sv = scale.to(ct).reshape(n, c, *tail) if scale is not None else None
    z = xf if sv is None else xf * sv
    nf = stv = None
    if noise is not None:
        nf = noise.to(ct)
        if strength is not None:
            t = strength.to(ct)
            stv = t.reshape(1, c, *tail) if t.numel() == c and c != 1 else t.reshape((1,) * x.dim())
        z = z + (nf if stv is None else nf * stv)
    if b is not None:
        z = z + b.to(ct).reshape(1, c, *tail)
    mg = _mask_gain(z, act, alpha, gain, clamp)
    k = mg * _act_derivative(z, act, alpha, 1)
    # W: the cotangents of the backward's five outputs, broadcast to x's shape
    terms = []
    if u_x is not None:
        terms.append(u_x.to(ct) if sv is None else u_x.to(ct) * sv)
    if u_b is not None:
        terms.append(u_b.to(ct).reshape(1, c, *tail))
    usv = u_s.to(ct).reshape(n, c, *tail) if u_s is not None else None
    if usv is not None:
        terms.append(usv * xf)
    if u_n is not None:
        terms.append(u_n.to(ct) if stv is None else u_n.to(ct) * stv)
    ustv = None
    if u_st is not None:
        t = u_st.to(ct)
        ustv = t.reshape(1, c, *tail) if t.numel() == c and c != 1 else t.reshape((1,) * x.dim())
        terms.append(ustv * nf)
    W = terms[0]
    for t in terms[1:]:
        W = W + t
    second = _ACT_SECOND[act]
    q = gf * k
    e = gf * (mg * _act_derivative(z, act, alpha, 2)) * W if second else None
    res = [None] * 6
    if need[0]:
        res[0] = (k * W).to(g.dtype)
    if need[1]:
        parts = ([q * usv] if usv is not None else []) + ([e if sv is None else e * sv] if e is not None else [])
        res[1] = (sum(parts[1:], parts[0]) if parts else torch.zeros_like(xf)).to(x.dtype)
    if need[2] and b is not None:
        res[2] = (e.sum(dim=(0, *spatial)) if e is not None else torch.zeros(c, dtype=ct, device=x.device)).to(b.dtype)
    if need[3] and scale is not None:
        parts = ([q * u_x.to(ct)] if u_x is not None else []) + ([e * xf] if e is not None else [])
        t = sum(parts[1:], parts[0]).sum(dim=spatial) if parts else torch.zeros((n, c), dtype=ct, device=x.device)
        res[3] = t.reshape(scale.shape).to(scale.dtype)
    if need[4] and noise is not None:
        parts = ([q * ustv] if ustv is not None else []) + ([e if stv is None else e * stv] if e is not None else [])
        t = sum(parts[1:], parts[0]) if parts else torch.zeros_like(xf)
        res[4] = t.sum_to_size(noise.shape).to(noise.dtype)
    if need[5] and strength is not None:
        parts = ([q * u_n.to(ct)] if u_n is not None else []) + ([e * nf] if e is not None else [])
        t = sum(parts[1:], parts[0]) if parts else torch.zeros_like(xf)
        t = t.sum(dim=(0, *spatial)) if strength.numel() == c and c != 1 else t.sum()
        res[5] = t.reshape(strength.shape).to(strength.dtype)
    return res


def _fake_double_backward(grad, x, b, scale, noise, noise_strength, u_x, u_b, u_scale, u_noise, u_strength, act,
                          alpha, gain, clamp, need_grad, need_x, need_b, need_scale, need_noise, need_strength):
    dg = _empty_layout(x.shape, _processing_cl(x), x.dtype, x.device) if need_grad else x.new_empty((0,))
    return (dg, *_fake_backward(grad, x, b, scale, noise, noise_strength, act, alpha, gain, clamp, need_x, need_b,
                                need_scale, need_noise, need_strength))


def _register_autograd(fwd_name: str, bwd_name: str, bwd2_name: Optional[str] = None, ns: str = "fastgen") -> None:
    """Autograd of the op chain forward -> backward [-> double backward]: the forward's backward is
    the fused backward op; the backward op's backward is the fused double-backward op when there is
    one (``bwd2_name``), else the closed form in torch ops (:func:`_double_backward_torch`); the
    double-backward op's backward (third order and up) is the VJP of that closed form. (``ns``: the
    tests register the same formulas on a float64 reference op pair for gradgradcheck.)"""
    lib = getattr(torch.ops, ns)
    bwd = getattr(lib, bwd_name).default
    bwd2 = getattr(lib, bwd2_name).default if bwd2_name else None

    def setup_fwd(ctx, inputs, output):
        x, b, scale, noise, strength, act, alpha, gain, clamp = inputs
        ctx.save_for_backward(x, b, scale, noise, strength)
        ctx.params = (act, alpha, gain, clamp)

    def backward_fwd(ctx, gy):
        saved = ctx.saved_tensors
        need = tuple(bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:5], saved))
        if gy is None or not any(need):
            return (None,) * 9
        outs = bwd(gy, *saved, *ctx.params, *need)
        return tuple(o if nd else None for o, nd in zip(outs, need)) + (None,) * 4

    def setup_bwd(ctx, inputs, output):
        g, x, b, scale, noise, strength, act, alpha, gain, clamp, *needs = inputs
        ctx.save_for_backward(g, x, b, scale, noise, strength)
        ctx.params = (act, alpha, gain, clamp)
        ctx.needs = tuple(needs)

    def backward_bwd(ctx, *ups):
        saved = ctx.saved_tensors
        ups = [u if nd and t is not None else None for u, nd, t in zip(ups, ctx.needs, saved[1:])]
        need = tuple(bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:6], saved))
        res = [None] * 15
        if all(u is None for u in ups) or not any(need):
            return tuple(res)
        if bwd2 is not None:
            outs = bwd2(*saved, *ups, *ctx.params, *need)
            res[:6] = [o if nd else None for o, nd in zip(outs, need)]
        else:
            res[:6] = _double_backward_torch(saved, ctx.params, ups, need)
        return tuple(res)

    torch.library.register_autograd(f"{ns}::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"{ns}::{bwd_name}", backward_bwd, setup_context=setup_bwd)
    if bwd2 is None:
        return

    def setup_bwd2(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:11])  # g, x, b, scale, noise, strength, u_x, u_b, u_scale, u_noise, u_strength
        ctx.params = tuple(inputs[11:15])
        ctx.needs = tuple(inputs[15:])

    def backward_bwd2(ctx, *vs):
        """Third order: the VJP of the closed form of the double backward w.r.t. its 11 tensor inputs."""
        saved = ctx.saved_tensors
        outs = [i for i in range(6) if vs[i] is not None and ctx.needs[i] and saved[i] is not None]
        present = [i for i, t in enumerate(saved) if t is not None]
        res = [None] * 21
        if not outs or not any(ctx.needs_input_grad[i] for i in present):
            return tuple(res)

        def f(*vals):
            full = [None] * 11
            for i, v in zip(present, vals):
                full[i] = v
            d = _double_backward_torch(full[:6], ctx.params, full[6:], [i in outs for i in range(6)])
            return tuple(d[i] for i in outs)

        firsts, vjp = torch.func.vjp(f, *[saved[i] for i in present])
        grads = vjp(tuple(vs[i].to(o.dtype) for i, o in zip(outs, firsts)))
        for i, g in zip(present, grads):
            if ctx.needs_input_grad[i]:
                res[i] = g.to(saved[i].dtype)
        return tuple(res)

    torch.library.register_autograd(f"{ns}::{bwd2_name}", backward_bwd2, setup_context=setup_bwd2)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, OP):
        return False
    torch.library.register_fake(f"fastgen::{OP}")(_fake)
    torch.library.register_fake(f"fastgen::{OP}_backward")(_fake_backward)
    torch.library.register_fake(f"fastgen::{OP}_double_backward")(_fake_double_backward)
    _register_autograd(OP, f"{OP}_backward", f"{OP}_double_backward")
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


# ----------------------------------------------------------------------------- triton ops
def _fp32_params(x, b, scale, noise, noise_strength):
    """The kernels' fp32 parameter vectors (filled when absent) and the noise as fp32 NCHW-contiguous."""
    n, c = x.shape[:2]
    f32 = dict(dtype=torch.float32, device=x.device)
    s32 = scale.reshape(n, c).to(torch.float32).contiguous() if scale is not None else torch.ones((n, c), **f32)
    b32 = b.to(torch.float32).contiguous() if b is not None else torch.zeros((c,), **f32)
    st32 = (noise_strength.reshape(-1).to(torch.float32).expand(c).contiguous() if noise_strength is not None
            else torch.ones((c,), **f32))
    n32 = noise.to(torch.float32).contiguous() if noise is not None else None
    return s32, b32, st32, n32


def _processing_x(x):
    cl = _processing_cl(x)
    return (x if cl or x.is_contiguous() else x.contiguous()), cl


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton and fastgen.kernels.modulated_bias_act)."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op(f"fastgen::{OP}_triton", mutates_args=())
    def mba_triton(x: torch.Tensor, b: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                   noise: Optional[torch.Tensor], noise_strength: Optional[torch.Tensor], act: int, alpha: float,
                   gain: float, clamp: float) -> torch.Tensor:
        xp, cl = _processing_x(x)
        out = _empty_layout(x.shape, cl, x.dtype, x.device)
        return K.forward(xp, *_fp32_params(x, b, scale, noise, noise_strength), cl, act, alpha, gain, clamp, out)

    @triton_op(f"fastgen::{OP}_backward_triton", mutates_args=())
    def mba_backward_triton(grad: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor],
                            scale: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                            noise_strength: Optional[torch.Tensor], act: int, alpha: float, gain: float, clamp: float,
                            need_x: bool, need_b: bool, need_scale: bool, need_noise: bool,
                            need_strength: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        xp, cl = _processing_x(x)
        gp = grad.contiguous(memory_format=torch.contiguous_format) if not cl else (
            grad if _cl_dense(grad) else grad.movedim(1, -1).contiguous().movedim(-1, 1))
        need_b, need_scale = need_b and b is not None, need_scale and scale is not None
        need_noise, need_strength = need_noise and noise is not None, need_strength and noise_strength is not None
        dx = _empty_layout(x.shape, cl, x.dtype, x.device) if need_x else None
        s32, b32, st32, n32 = _fp32_params(x, b, scale, noise, noise_strength)
        sums, dn = K.backward(gp, xp, s32, b32, st32, n32, cl, act, alpha, gain, clamp, dx, need_noise)
        empty = x.new_empty((0,))
        db = sums[0].sum(0).to(b.dtype) if need_b else empty
        dscale = sums[1].to(scale.dtype).reshape(scale.shape).contiguous() if need_scale else x.new_empty((0,))
        dst = x.new_empty((0,))
        if need_strength:
            t = sums[2].sum(0)
            t = t.sum().reshape(1) if noise_strength.numel() == 1 else t
            dst = t.to(noise_strength.dtype).reshape(noise_strength.shape).contiguous()
        dnoise = x.new_empty((0,))
        if need_noise:
            dnoise = _empty_layout(noise.shape, cl and noise.shape[1] > 1, noise.dtype, noise.device)
            dnoise.copy_(dn)
        return (dx if dx is not None else x.new_empty((0,))), db, dscale, dnoise, dst

    mba_triton.register_fake(_fake)
    mba_backward_triton.register_fake(_fake_backward)
    _register_autograd(f"{OP}_triton", f"{OP}_backward_triton")  # double backward: torch ops
    return mba_triton


# ----------------------------------------------------------------------------- public entry
def _check(x, b, scale, noise, noise_strength):
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if x.dim() < 2:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, *spatial), got {tuple(x.shape)}")
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    for name, t in (("b", b), ("scale", scale), ("noise", noise), ("noise_strength", noise_strength)):
        if t is None:
            continue
        C.check_tensor(t, name, OP)
        if not t.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"fastgen.{OP}: {name} is on {t.device} but x is on {x.device}")
    if b is not None and tuple(b.shape) != (c,):
        raise ValueError(f"fastgen.{OP}: b must have shape (C,) = ({c},), got {tuple(b.shape)}")
    if scale is not None and tuple(scale.shape) not in ((n, c), (n, c) + (1,) * len(spatial)):
        raise ValueError(f"fastgen.{OP}: scale must have shape (N, C) = ({n}, {c}), got {tuple(scale.shape)}")
    if noise is not None:
        ok = (noise.dim() == x.dim() and noise.shape[0] in (1, n) and noise.shape[1] in (1, c)
              and tuple(noise.shape[2:]) == spatial)
        if not ok:
            raise ValueError(f"fastgen.{OP}: noise must have shape (N or 1, 1 or C, *spatial) = ({n} or 1, 1 or {c}, "
                             f"{', '.join(map(str, spatial))}), got {tuple(noise.shape)}")
    if noise_strength is not None:
        if noise is None:
            raise ValueError(f"fastgen.{OP}: noise_strength was given without noise")
        if noise_strength.numel() not in (1, c) or noise_strength.dim() > 1:
            raise ValueError(f"fastgen.{OP}: noise_strength must be a scalar tensor or have shape (C,) = ({c},), got "
                             f"{tuple(noise_strength.shape)}")


def modulated_bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, *, scale: Optional[torch.Tensor] = None,
                       noise: Optional[torch.Tensor] = None, noise_strength: Optional[torch.Tensor] = None,
                       act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None, impl: Optional[str] = None) -> torch.Tensor:
    """``clamp(act(x * scale + noise * noise_strength + b) * gain)`` in one pass (StyleGAN's
    demodulation + noise injection + bias_act epilogue).

    Args:
        x: ``(N, C, *spatial)`` float32/float16/bfloat16 (float64 runs the reference), NCHW or channels_last.
        b: ``(C,)`` bias or None.
        scale: ``(N, C)`` per-(sample, channel) factor (StyleGAN2 demodulation) or None.
        noise: ``(N | 1, 1 | C, *spatial)`` noise or None. noise_strength: scalar tensor or ``(C,)``
            (None: 1).
        act, alpha, gain, clamp: as :func:`fastgen.functional.bias_act`.
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns y with x's shape and dtype (channels-last x gives a channels-last y); differentiable
    w.r.t. x, b, scale, noise and noise_strength to any order.
    """
    _check(x, b, scale, noise, noise_strength)
    code, alpha, gain, clamp = _params(act, alpha, gain, clamp)
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.dtype == torch.float64 or x.numel() == 0:
        return modulated_bias_act_reference(x, b, scale, noise, noise_strength, act, alpha, gain,
                                            None if clamp < 0 else clamp)
    if scale is None and noise is None:  # plain bias_act: its kernels (fused 2nd order) do this
        return bias_act(x, b, 1, act, alpha, gain, None if clamp < 0 else clamp, impl=name)
    if name == "cpp":
        return torch.ops.fastgen.modulated_bias_act(x, b, scale, noise, noise_strength, code, alpha, gain, clamp)
    return _triton_ops()(x, b, scale, noise, noise_strength, code, alpha, gain, clamp)
