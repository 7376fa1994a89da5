r"""Fused GroupNorm + per-(N, C) scale/shift modulation + activation (the U-Net ResNet block's
``norm -> (1 + scale) * . + shift -> SiLU``, ADM / "scale-shift" time conditioning).

    mean, var = per (n, group) over the group's (C / G) * spatial elements (biased var, as nn.GroupNorm)
    z = ((x - mean) / sqrt(var + eps) * weight[c] + bias[c]) * (1 + scale[n, c]) + shift[n, c]
    y = act(z),  act in {None, "silu", "gelu" (exact erf GELU, F.gelu's default)}

Statistics are fp32 for every storage dtype; float64 inputs run the reference (in float64).

Implementations (see fastgen.backend):
  torch   group_norm_reference — F.group_norm, then the modulation and activation (the oracle)
  cpp     torch.ops.fastgen.group_norm{,_backward} — C++ CPU kernels and CUDA kernels (fastgen._C;
          csrc/cpu/group_norm.cpp, csrc/cuda/group_norm.cu; CUDA only in CUDA builds)
  triton  torch.ops.fastgen.group_norm{,_backward}_triton — Triton kernels (fastgen.kernels.group_norm)
The fused forward folds everything into a per-(n, c) affine, y = act(A x + B) with
A = rstd w (1 + s) and B = (b - mean rstd w) (1 + s) + t, and saves only mean / rstd (N, G).
The fused backward computes, per (n, c), S1 = sum gz and S2 = sum gz xhat (gz = gy act'(z)),
from which every grad follows: g_shift = S1, g_scale = w S2 + b S1, g_bias = sum_n (1 + s) S1,
g_weight = sum_n (1 + s) S2, and gx = k1[n, c] gz + k2[n, g] (x - mean) + k3[n, g].
Double backward: the backward op's own autograd formula differentiates the reference's first
backward (so gradient penalties through this op work, at reference speed for the second order).
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

OP = "group_norm"
ACTIVATIONS = {None: 0, "silu": 1, "gelu": 2}
_ACT_NAMES = {0: None, 1: "silu", 2: "gelu"}

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        # cpp on CUDA tensors: the CUDA kernels of csrc/cuda/group_norm.cu, when fastgen._C was built
        # with CUDA (backend.impl_available says why not otherwise); Triton where it was not
        preference={"cpu": ("cpp",), "cuda": ("cpp", "triton")},
        notes="fused GroupNorm + (1 + scale) / shift modulation + SiLU / GELU, and its backward",
    )
)


# ----------------------------------------------------------------------------- reference
def group_norm_reference(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *, activation: Optional[str] = None,
                         scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain differentiable PyTorch: ``F.group_norm`` then ``* (1 + scale) + shift`` then the activation.

    fp16/bf16 inputs are computed in fp32 and cast back; float64 stays float64. scale / shift are
    (N, C) or (N, C, 1, 1) (any trailing singleton dims)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(ct)
    w = weight.to(ct) if weight is not None else None
    b = bias.to(ct) if bias is not None else None
    z = F.group_norm(xf, num_groups, w, b, eps)
    view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if scale is not None:
        z = z * (1 + scale.to(ct).reshape(view))
    if shift is not None:
        z = z + shift.to(ct).reshape(view)
    if activation == "silu":
        z = F.silu(z)
    elif activation == "gelu":
        z = F.gelu(z)
    return z.to(x.dtype)


# ----------------------------------------------------------------------------- fake kernels
def _kernel_layout_empty(x: torch.Tensor) -> torch.Tensor:
    """Mirror of the C++ layer: channels_last 4-d x keeps its layout, anything else is contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x, memory_format=torch.channels_last)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_forward(x, num_groups, weight, bias, scale, shift, eps, act):
    n = x.shape[0]
    stats = x.new_empty((n, num_groups), dtype=torch.float32)
    return _kernel_layout_empty(x), stats, stats.clone()


def _bwd_outputs(x, weight, bias, scale, shift, needs, empty_x):
    need_x, need_w, need_b, need_s, need_t = needs

    def one(t, need):
        if t is None:
            return x.new_empty((0,))
        return torch.empty(t.shape, dtype=t.dtype, device=t.device) if need else t.new_empty((0,))

    gx = empty_x(x) if need_x else x.new_empty((0,))
    return gx, one(weight, need_w), one(bias, need_b), one(scale, need_s), one(shift, need_t)


def _fake_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, eps, act, need_x, need_weight,
                   need_bias, need_scale, need_shift):
    return _bwd_outputs(x, weight, bias, scale, shift, (need_x, need_weight, need_bias, need_scale, need_shift),
                        _kernel_layout_empty)


# ----------------------------------------------------------------------------- autograd
def _double_backward(saved, G, eps, act, ups, need):
    """Grads of <backward(gy, x, w, b, s, t), ups> w.r.t. (gy, x, w, b, s, t): the VJP of the
    reference's first backward. torch.func treats the six inputs as independent (plain
    autograd.grad would also follow paths between them, e.g. a gy that depends on x through y, and
    count those twice) and composes with autograd, so further orders work as well."""
    present = [i for i, v in enumerate(saved) if v is not None]  # indices into (gy, x, w, b, s, t)
    diff = [j for j, u in enumerate(ups) if u is not None and saved[j + 1] is not None]  # into (x, w, b, s, t)
    if not diff:
        return [None] * 6

    def first(*values):
        full = [None] * 6
        for i, v in zip(present, values):
            full[i] = v

        def forward(*d):
            args = full[1:]
            for j, v in zip(diff, d):
                args[j] = v
            xx, ww, bb, ss, tt = args
            return group_norm_reference(xx, G, ww, bb, eps, activation=_ACT_NAMES[act], scale=ss, shift=tt)

        y, vjp_y = torch.func.vjp(forward, *[full[j + 1] for j in diff])
        return vjp_y(full[0].to(y.dtype))

    firsts, vjp_first = torch.func.vjp(first, *[saved[i] for i in present])
    grads = vjp_first(tuple(ups[j].to(f.dtype) for j, f in zip(diff, firsts)))
    res = [None] * 6
    for i, g in zip(present, grads):
        if need[i]:
            res[i] = g.to(saved[i].dtype)
    return res


def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    """Autograd of a (forward, backward) op pair: the forward's backward is the fused backward op;
    the backward op's own backward (double backward) differentiates the reference."""
    bwd = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        x, G, w, b, s, t, eps, act = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, mean, rstd, w, b, s, t)
        ctx.params = (G, eps, act)
        ctx.mark_non_differentiable(mean, rstd)

    def backward_fwd(ctx, gy, _gmean, _grstd):
        x, mean, rstd, w, b, s, t = ctx.saved_tensors
        G, eps, act = ctx.params
        need = ctx.needs_input_grad
        needs = (need[0], need[2] and w is not None, need[3] and b is not None, need[4] and s is not None,
                 need[5] and t is not None)
        if gy is None or not any(needs):
            return (None,) * 8
        outs = bwd(gy, x, mean, rstd, G, w, b, s, t, eps, act, *needs)
        gx, gw, gb, gs, gt = (o if nd else None for o, nd in zip(outs, needs))
        return gx, None, gw, gb, gs, gt, None, None

    def setup_bwd(ctx, inputs, output):
        gy, x, mean, rstd, G, w, b, s, t, eps, act, *needs = inputs
        ctx.save_for_backward(gy, x, w, b, s, t)
        ctx.params = (G, eps, act)
        ctx.needs = tuple(needs)

    def backward_bwd(ctx, ugx, ugw, ugb, ugs, ugt):
        saved = ctx.saved_tensors
        G, eps, act = ctx.params
        ups = [u if nd else None for u, nd in zip((ugx, ugw, ugb, ugs, ugt), ctx.needs)]
        ni = ctx.needs_input_grad  # gy, x, mean, rstd, G, w, b, s, t, eps, act, needs...
        need = (ni[0], ni[1], ni[5], ni[6], ni[7], ni[8])
        res = [None] * 16
        if all(u is None for u in ups) or not any(need):
            return tuple(res)
        d = _double_backward(saved, G, eps, act, ups, need)
        for slot, g in zip((0, 1, 5, 6, 7, 8), d):
            res[slot] = g
        return tuple(res)

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, "group_norm"):
        return False
    torch.library.register_fake("fastgen::group_norm")(_fake_forward)
    torch.library.register_fake("fastgen::group_norm_backward")(_fake_backward)
    _register_autograd("group_norm", "group_norm_backward")
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


# ----------------------------------------------------------------------------- triton ops
def _contiguous_empty(x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton and fastgen.kernels.group_norm)."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op("fastgen::group_norm_triton", mutates_args=())
    def group_norm_triton(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor],
                          bias: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                          eps: float, act: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, mean, rstd = K.group_norm_fwd(x.contiguous(), num_groups, weight, bias, eps, act, scale, shift)
        return y, mean, rstd

    @triton_op("fastgen::group_norm_backward_triton", mutates_args=())
    def group_norm_backward_triton(grad_y: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                                   num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                   scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], eps: float, act: int,
                                   need_x: bool, need_weight: bool, need_bias: bool, need_scale: bool,
                                   need_shift: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
        needs = (need_x, need_weight, need_bias, need_scale, need_shift)
        got = K.group_norm_bwd(grad_y.contiguous(), x.contiguous(), mean, rstd, num_groups, weight, bias, act,
                               scale, shift, needs)
        empties = _bwd_outputs(x, weight, bias, scale, shift, (False,) * 5, _contiguous_empty)
        return tuple(g if g is not None else e for g, e in zip(got, empties))

    group_norm_triton.register_fake(lambda x, G, w, b, s, t, eps, act: (
        _contiguous_empty(x),) + (x.new_empty((x.shape[0], G), dtype=torch.float32),) * 2)
    group_norm_backward_triton.register_fake(
        lambda gy, x, mean, rstd, G, w, b, s, t, eps, act, *needs: _bwd_outputs(x, w, b, s, t, needs,
                                                                                 _contiguous_empty))
    _register_autograd("group_norm_triton", "group_norm_backward_triton")
    return group_norm_triton, group_norm_backward_triton


# ----------------------------------------------------------------------------- public entry
def _check_args(x, num_groups, weight, bias, eps, activation, scale, shift):
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if x.dim() < 2:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, *spatial) with at least 2 dims, got shape "
                         f"{tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"fastgen.{OP}: num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups < 1:
        raise ValueError(f"fastgen.{OP}: num_groups must be >= 1, got {num_groups}")
    n, c = x.shape[0], x.shape[1]
    if c % num_groups:
        raise ValueError(f"fastgen.{OP}: the number of channels C = {c} must be divisible by num_groups = "
                         f"{num_groups}")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (math.isfinite(float(eps)) and float(eps) > 0):
        raise ValueError(f"fastgen.{OP}: eps must be a finite number > 0, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"fastgen.{OP}: activation must be None, 'silu' or 'gelu'; got {activation!r}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is None:
            continue
        C.check_tensor(t, name, OP)
        if not t.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {t.dtype}")
        if tuple(t.shape) != (c,):
            raise ValueError(f"fastgen.{OP}: {name} must have shape (C,) = ({c},), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"fastgen.{OP}: {name} is on {t.device} but x is on {x.device}")
    out = []
    for t, name in ((scale, "scale"), (shift, "shift")):
        if t is None:
            out.append(None)
            continue
        C.check_tensor(t, name, OP)
        if not t.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {t.dtype}")
        shp = tuple(t.shape)
        if not (t.dim() >= 2 and shp[:2] == (n, c) and all(s == 1 for s in shp[2:])):
            raise ValueError(f"fastgen.{OP}: {name} must have shape (N, C) = ({n}, {c}) or (N, C, 1, 1), got {shp}")
        if t.device != x.device:
            raise ValueError(f"fastgen.{OP}: {name} is on {t.device} but x is on {x.device}")
        out.append(t.reshape(n, c) if t.dim() > 2 else t)
    return out


def group_norm(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *, activation: Optional[str] = None,
               scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
               impl: Optional[str] = None) -> torch.Tensor:
    """GroupNorm fused with ADM-style modulation and an activation:
    ``act(F.group_norm(x, num_groups, weight, bias, eps) * (1 + scale) + shift)``.

    Args:
        x: ``(N, C, *spatial)`` (spatial may be empty); float32/float16/bfloat16 (float64 runs the
            reference). NCHW-contiguous or channels_last; other layouts are made contiguous.
        num_groups: groups G, C % G == 0. weight, bias: ``(C,)`` or None, any float dtype.
        eps: added to the variance (finite, > 0).
        activation: None, ``"silu"`` or ``"gelu"`` (exact erf GELU).
        scale, shift: per-(sample, channel) modulation, ``(N, C)`` or ``(N, C, 1, 1)``, or None.
        impl: force ``"torch"``, ``"cpp"`` (CPU, and CUDA in CUDA builds) or ``"triton"`` (default: see
            fastgen.backend).

    Returns:
        y with x's shape, dtype and memory format. Differentiable w.r.t. x, weight, bias, scale and
        shift (each grad in its input's dtype), twice differentiable.
    """
    scale2, shift2 = _check_args(x, num_groups, weight, bias, eps, activation, scale, shift)
    act = ACTIVATIONS[activation]
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.dtype == torch.float64:
        return group_norm_reference(x, num_groups, weight, bias, eps, activation=activation, scale=scale2,
                                    shift=shift2)
    if name == "cpp":
        y, _, _ = torch.ops.fastgen.group_norm(x, num_groups, weight, bias, scale2, shift2, float(eps), act)
        return y
    y, _, _ = _triton_ops()[0](x, num_groups, weight, bias, scale2, shift2, float(eps), act)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y
