"""The fused forward-diffusion sample (training input) and training target, in one pass.

    x_t    = sqrt(ab) * x0 + sqrt(1 - ab) * noise
    target = noise                                    (prediction_type="epsilon")
             x0                                       ("sample")
             sqrt(ab) * noise - sqrt(1 - ab) * x0     ("v_prediction", Salimans & Ho 2022)

with ab = alpha_bar (a float, a 0-d tensor or one value per sample). One read of x0 and noise, one
write of x_t (and of the v target). For "epsilon" and "sample" the target *is* the ``noise`` /
``x0`` tensor (no copy), as in diffusers' training scripts.

Kernels compute the general per-sample 2x2 linear map ``(out1, out2) = M (u, v)`` with
``M = [[a, b], [c, d]]`` (coefficients in float64 on the host, fp32 in the kernel). The op is
linear, so its backward is the same kernel with ``M`` transposed, and the backward of that is
``M`` again: every derivative order runs on the fused kernel.

Implementations (see fastgen.backend):
  torch   q_sample_reference — differentiable PyTorch (also w.r.t. a tensor alpha_bar)
  cpp     torch.ops.fastgen.q_sample{,_out,_linear} — C++ CPU kernel (fastgen._C)
  triton  torch.ops.fastgen.q_sample_triton, q_sample_linear_triton — Triton kernels
"""
from __future__ import annotations

import functools
from numbers import Real
from typing import NamedTuple, Optional

import torch

from .. import _extension, backend
from . import _common as C

OP = "q_sample"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        # the C++ op has a CPU kernel only; on GPUs the Triton kernel runs
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        notes="fused forward-diffusion sample x_t and training target (eps / x0 / v) in one pass",
    )
)


class QSampleOutput(NamedTuple):
    """What :func:`q_sample` returns with a ``prediction_type`` (``x_t, target = q_sample(...)``)."""

    x_t: torch.Tensor
    target: torch.Tensor


# ----------------------------------------------------------------------------- reference
def q_sample_coefficients(alpha_bar, prediction_type: Optional[str] = None, dtype: torch.dtype = torch.float64):
    """``(a, b, c, d)`` with ``x_t = a x0 + b noise`` and ``target = c x0 + d noise``, shaped like
    ``alpha_bar`` and computed in ``dtype`` (c = d = 0 without a prediction type)."""
    ab = torch.as_tensor(alpha_bar).to(dtype)
    a, b = ab.sqrt(), (1.0 - ab).sqrt()
    zero, one = torch.zeros_like(ab), torch.ones_like(ab)
    if prediction_type is None:
        return a, b, zero, zero
    return {
        "epsilon": (a, b, zero, one),
        "sample": (a, b, one, zero),
        "v_prediction": (a, b, -b, a),
    }[prediction_type]


def per_sample_view(c: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d or [N] coefficient on x's device in ``dtype``, broadcastable against x."""
    c = c.to(device=x.device, dtype=dtype)
    if c.dim() == 1:
        c = c.reshape((-1,) + (1,) * (x.dim() - 1))
    return c


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 math for fp32/fp16/bf16 storage (float64 stays float64, for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def q_sample_reference(x0: torch.Tensor, noise: torch.Tensor, alpha_bar, prediction_type: Optional[str] = None):
    """Plain PyTorch q_sample (the oracle and the fallback): coefficients in float64, math in fp32.

    Returns ``x_t``, or ``QSampleOutput(x_t, target)`` with a prediction type. Differentiable
    w.r.t. every tensor argument, alpha_bar included.
    """
    ct = compute_dtype(x0.dtype)
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64) if not isinstance(alpha_bar, torch.Tensor) else alpha_bar
    sa = per_sample_view(ab.to(torch.float64).sqrt(), x0, ct)
    sb = per_sample_view((1.0 - ab.to(torch.float64)).sqrt(), x0, ct)
    x, n = x0.to(ct), noise.to(ct)
    x_t = (sa * x + sb * n).to(x0.dtype)
    if prediction_type is None:
        return x_t
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x0
    else:  # v = sqrt(ab) * noise - sqrt(1 - ab) * x0
        target = (sa * n - sb * x).to(x0.dtype)
    return QSampleOutput(x_t, target)


# ----------------------------------------------------------------------------- fake kernels
def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,))


def _fake_q_sample(x0, noise, alpha_bar, prediction_type=None):
    x_t = C.empty_output_like(x0)
    return x_t, (torch.empty_like(x_t) if prediction_type is not None else _empty(x0))


def _fake_q_sample_out(x0, noise, alpha_bar, prediction_type, x_t, target):
    return None


def _fake_linear(u, v, alpha_bar, prediction_type, transpose, need_first, need_second):
    ref = u if u is not None else v
    o1 = C.empty_output_like(ref) if need_first else None
    if need_second:
        o2 = torch.empty_like(o1) if need_first else C.empty_output_like(ref)
    else:
        o2 = _empty(ref)
    return (o1 if o1 is not None else _empty(ref)), o2


def _register_cpp_ops() -> bool:
    if _extension.load() is None:
        return False
    torch.library.register_fake("fastgen::q_sample")(_fake_q_sample)
    torch.library.register_fake("fastgen::q_sample_out")(_fake_q_sample_out)
    torch.library.register_fake("fastgen::q_sample_linear")(_fake_linear)
    # autograd of the C++ ops is registered in C++ (csrc/ops_diffusion_loss.cpp)
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


# ----------------------------------------------------------------------------- triton ops
_TRITON_BLOCK = 1024


def _device_coeffs(alpha_bar: torch.Tensor, prediction_type, transpose: bool, x: torch.Tensor) -> torch.Tensor:
    """The per-sample matrix (or its transpose) as a contiguous fp32 [N, 4] tensor on x's device."""
    n = x.shape[0] if x.dim() else 1
    a, b, c, d = q_sample_coefficients(alpha_bar.to(x.device), prediction_type)
    if transpose:
        b, c = c, b
    m = torch.stack([a, b, c, d], dim=-1).to(torch.float32)
    return m.reshape(1, 4).expand(n, 4).contiguous() if m.dim() == 1 else m.contiguous()


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton importable)."""
    import triton
    from torch.library import triton_op, wrap_triton

    from ..kernels.diffusion_loss import lin2_kernel

    def launch(u, v, alpha_bar, prediction_type, transpose, need1, need2):
        ref = u if u is not None else v
        o1 = C.empty_output_like(ref) if need1 else None
        o2 = (torch.empty_like(o1) if need1 else C.empty_output_like(ref)) if need2 else None
        lay = o1 if o1 is not None else o2
        if lay is not None and lay.numel() > 0:
            uc = C.layout_like(u, lay) if u is not None else lay
            vc = C.layout_like(v, lay) if v is not None else lay
            coeffs = _device_coeffs(alpha_bar, prediction_type, transpose, ref)
            numel = lay.numel()
            per_sample = numel // (ref.shape[0] if ref.dim() else 1)
            wrap_triton(lin2_kernel)[(triton.cdiv(numel, _TRITON_BLOCK),)](
                uc, vc, o1 if o1 is not None else lay, o2 if o2 is not None else lay, coeffs, numel, per_sample,
                HAS_U=u is not None, HAS_V=v is not None, OUT1=need1, OUT2=need2, BLOCK=_TRITON_BLOCK,
                num_warps=4)
        return (o1 if o1 is not None else _empty(ref)), (o2 if o2 is not None else _empty(ref))

    @triton_op("fastgen::q_sample_triton", mutates_args=())
    def q_sample_triton(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                        prediction_type: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(x0, noise, alpha_bar, prediction_type, False, True, prediction_type is not None)

    @triton_op("fastgen::q_sample_linear_triton", mutates_args=())
    def q_sample_linear_triton(u: Optional[torch.Tensor], v: Optional[torch.Tensor], alpha_bar: torch.Tensor,
                               prediction_type: Optional[str], transpose: bool, need_first: bool,
                               need_second: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(u, v, alpha_bar, prediction_type, transpose, need_first, need_second)

    _register_autograd("q_sample_triton", "q_sample_linear_triton")
    return q_sample_triton, q_sample_linear_triton


def _register_autograd(fwd_name: str, lin_name: str) -> None:
    """Autograd of the Triton ops (the C++ ops have the same formulas in csrc/ops_diffusion_loss.cpp):
    the backward of ``M (u, v)`` is ``M^T (g1, g2)``, the linear op with ``transpose`` flipped."""
    lin = getattr(torch.ops.fastgen, lin_name).default

    def setup_fwd(ctx, inputs, output):
        x0, noise, ab, pt = inputs
        ctx.save_for_backward(ab)
        ctx.pt = pt

    def backward_fwd(ctx, g1, g2):
        (ab,) = ctx.saved_tensors
        need_x, need_n = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.pt is None:
            g2 = None  # the second output is an empty placeholder
        if not (need_x or need_n) or (g1 is None and g2 is None):
            return None, None, None, None
        dx, dn = lin(g1, g2, ab, ctx.pt, True, need_x, need_n)
        return (dx if need_x else None), (dn if need_n else None), None, None

    def setup_lin(ctx, inputs, output):
        u, v, ab, pt, transpose, need1, need2 = inputs
        ctx.save_for_backward(ab)
        ctx.pt, ctx.transpose, ctx.need = pt, transpose, (need1, need2)

    def backward_lin(ctx, g1, g2):
        (ab,) = ctx.saved_tensors
        g1 = g1 if ctx.need[0] else None
        g2 = g2 if ctx.need[1] else None
        need_u, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_u or need_v) or (g1 is None and g2 is None):
            return (None,) * 7
        du, dv = lin(g1, g2, ab, ctx.pt, not ctx.transpose, need_u, need_v)
        return ((du if need_u else None), (dv if need_v else None)) + (None,) * 5

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{lin_name}", backward_lin, setup_context=setup_lin)


# ----------------------------------------------------------------------------- public entry
def param_arg(v, name: str, x: torch.Tensor, op: str, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> torch.Tensor:
    """A float or tensor per-sample parameter as a 0-d / [N] floating tensor, with checks naming
    ``name`` (shape, dtype, device; a float's value against [lo, hi])."""
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise TypeError(f"fastgen.{op}: {name} must be a floating-point tensor, got {v.dtype}")
        if not (v.dim() == 0 or (v.dim() == 1 and x.dim() >= 1 and v.shape[0] == x.shape[0])):
            n = x.shape[0] if x.dim() else "(0-d input: only scalars)"
            raise ValueError(f"fastgen.{op}: {name} must be a scalar or have shape [N] with N = {n}; "
                             f"got shape {tuple(v.shape)}")
        if v.device != x.device and not (v.dim() == 0 and v.device.type == "cpu"):
            raise ValueError(f"fastgen.{op}: {name} is on {v.device} but the inputs are on {x.device}")
        return v
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"fastgen.{op}: {name} must be a float or a tensor, got {type(v).__name__}")
    C.check_real(v, name, op, lo=lo, hi=hi, lo_open=lo_open)
    return torch.tensor(float(v), dtype=torch.float64)


def check_host_range(t: torch.Tensor, name: str, op: str, lo: float, hi: float | None, lo_open: bool) -> None:
    """Value check of a host tensor (tensors on a GPU are not read back: that would sync)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return
    d = t.detach().double()
    ok = (d > lo) if lo_open else (d >= lo)
    if hi is not None:
        ok = ok & (d <= hi)
    else:
        ok = ok & torch.isfinite(d)
    if not bool(ok.all()):
        bad = d[~ok].flatten()[0].item()
        rng = ("(" if lo_open else "[") + f"{lo:g}, " + (f"{hi:g}]" if hi is not None else "inf)")
        raise ValueError(f"fastgen.{op}: {name} must be in {rng}, got {bad!r}")


def _forced_or_torch(name: str, impl, what: str) -> str:
    choice = backend.forced_backend() if impl is None else impl
    if choice not in ("auto", None):
        raise backend.BackendUnavailableError(
            f"fastgen.{OP}: gradients w.r.t. {what} are only computed by impl='torch' (impl={choice!r} was forced)")
    return "torch"


def _check_cpp_device(name: str, x: torch.Tensor, op: str) -> None:
    if name == "cpp" and x.device.type != "cpu":
        raise backend.BackendUnavailableError(
            f"fastgen.{op}: impl='cpp' has only a CPU kernel for this op; on {x.device.type} use impl='triton'")


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_bar, *, prediction_type: Optional[str] = None,
             out=None, impl: Optional[str] = None):
    """Noise clean samples to level ``alpha_bar`` (and build the training target) in one pass.

    Args:
        x0: clean samples, any shape with the batch first; float32/float16/bfloat16.
        noise: standard normal noise, same shape/dtype/device as ``x0``.
        alpha_bar: cumulative alpha in [0, 1]: a float, a 0-d tensor, or an [N] tensor (one per
            sample: training draws a timestep per sample). Host (CPU) tensors are turned into
            coefficients in float64.
        prediction_type: ``None`` (return ``x_t`` only), ``"epsilon"``, ``"sample"`` or
            ``"v_prediction"`` (also return the training target).
        out: optional buffer(s) to write into: ``x_t`` alone, or ``(x_t, target)`` with a
            prediction type (then the target is written even for "epsilon"/"sample").
        impl: force ``"torch"``, ``"cpp"`` or ``"triton"`` (default: see fastgen.backend).

    Returns:
        ``x_t`` (like ``x0``, its memory format when dense), or ``QSampleOutput(x_t, target)``.
        Without ``out``, the "epsilon" target is ``noise`` itself and the "sample" target is
        ``x0`` itself (no copy). Math is fp32 inside for every storage dtype.
    """
    C.check_tensor(x0, "x0", OP)
    C.check_tensor(noise, "noise", OP)
    C.check_float_dtype(x0, "x0", OP)
    C.check_same(noise, x0, "noise", "x0", OP)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"fastgen.{OP}: prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))} "
                         f"or None; got {prediction_type!r}")
    ab = param_arg(alpha_bar, "alpha_bar", x0, OP, lo=0.0, hi=1.0)

    name = backend.resolve(OP, x0.device, impl)
    if name != "torch" and torch.is_grad_enabled() and ab.requires_grad:
        name = _forced_or_torch(name, impl, "alpha_bar")
    _check_cpp_device(name, x0, OP)
    if name != "cpp" and not C.is_compiling():
        check_host_range(ab, "alpha_bar", OP, 0.0, 1.0, False)

    if out is not None:
        return _q_sample_out(name, x0, noise, ab, prediction_type, out)

    # the kernels write a target only where it is not an input itself
    kernel_pt = prediction_type if prediction_type == "v_prediction" else None
    if name == "cpp":
        x_t, tgt = torch.ops.fastgen.q_sample(x0, noise, ab, kernel_pt)
    elif name == "triton":
        x_t, tgt = _triton_ops()[0](x0, noise, ab, kernel_pt)
    else:
        return q_sample_reference(x0, noise, ab, prediction_type)
    if prediction_type is None:
        return x_t
    target = tgt if kernel_pt else (noise if prediction_type == "epsilon" else x0)
    return QSampleOutput(x_t, target)


def _q_sample_out(name, x0, noise, ab, prediction_type, out):
    if prediction_type is None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"fastgen.{OP}: out must be a tensor (x_t) when prediction_type is None")
        x_t, target = out, None
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
            raise TypeError(f"fastgen.{OP}: with a prediction_type, out must be a pair of tensors (x_t, target)")
        x_t, target = out
    C.check_same(x_t, x0, "out[0] (x_t)", "x0", OP)
    if target is not None:
        C.check_same(target, x0, "out[1] (target)", "x0", OP)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x0, noise, ab)):
        raise RuntimeError(f"fastgen.{OP}: out= does not support automatic differentiation "
                           "(an input requires grad); call it without out=")
    outs = {"out[0] (x_t)": x_t}
    if target is not None:
        outs["out[1] (target)"] = target
    if name != "cpp" and not C.is_compiling():  # the C++ op checks this itself
        C.check_out_overlap(outs, {"x0": x0, "noise": noise}, OP)
    if name == "cpp":
        torch.ops.fastgen.q_sample_out(x0, noise, ab, prediction_type, x_t, target)
    else:
        if name == "triton":
            r1, r2 = _triton_ops()[0](x0, noise, ab, prediction_type)
        else:
            res = q_sample_reference(x0, noise, ab, prediction_type)
            r1, r2 = (res, None) if prediction_type is None else res
        x_t.copy_(r1)
        if target is not None:
            target.copy_(r2)
    return x_t if target is None else QSampleOutput(x_t, target)
