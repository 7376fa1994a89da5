"""sampler_update: the one fused update every diffusion sampler step is made of.

Per element (coefficients per sample, computed on the host by the samplers in
:mod:`fastgen.diffusion.samplers`; order :data:`COEFF_NAMES`, as csrc/include/fastgen/sampler.h)::

    m      = model_output                   (or uncond + s * (model_output - uncond): guidance)
    x0     = scale * clamp(a_x * x + a_m * m, -clip, clip)        (clip = inf: no clamp)
    x_prev = c_x * x + c_0 * x0 + c_m * m + c_h1 * h1 + c_h2 * h2 + c_n * sv * noise
    sv     = 1, or exp(0.5 * (lv_lo + (v + 1) / 2 * (lv_hi - lv_lo)))   (learned-range variance v)

DDPM (fixed or learned variance), DDIM(eta), Euler, Euler-ancestral, Heun, DPM-Solver++ 2M/3M
and Euler-Maruyama / probability-flow steps are all this map. One pass reads x, the model
output(s), the history tensors and writes ``x_prev`` and ``x0``; the classifier-free-guidance
combination happens in the same pass, and the noise of stochastic steps is generated inside the
kernel from a counter-based Philox stream (no noise tensor is written or read).

Implementations:
  torch   :func:`sampler_update_reference` (plain PyTorch; the noise stream from fastgen.ops._philox)
  cpp     torch.ops.fastgen.sampler_update{,_out} (C++ CPU kernel; CUDA kernel in CUDA builds)
  triton  torch.ops.fastgen.sampler_update{,_out}_triton
"""
from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple, Optional, Sequence

import torch

from .. import _extension, backend
from . import _common as C

OP = "sampler_update"

COEFF_NAMES = ("a_x", "a_m", "clip", "scale", "c_x", "c_0", "c_m", "c_h1", "c_h2", "c_n", "lv_lo", "lv_hi")
_IDX = {k: i for i, k in enumerate(COEFF_NAMES)}
_DEFAULTS = {"clip": math.inf, "scale": 1.0}

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("cpp", "triton")},
        notes="fused sampler step (guidance, x0 prediction, history, in-kernel Philox noise)",
    )
)


class SamplerUpdateOutput(NamedTuple):
    """What :func:`sampler_update` returns (diffusers' names: prev_sample, pred_original_sample)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def sampler_coeffs(batch_size: Optional[int] = None, **coeffs) -> torch.Tensor:
    """Build the float64 coefficient tensor: ``[12]``, or ``[N, 12]`` when any value is per sample.

    Each keyword of :data:`COEFF_NAMES` takes a float or a length-N sequence/tensor; missing ones are
    0, except ``clip`` (inf: no clamp) and ``scale`` (1).
    """
    for k in coeffs:
        if k not in _IDX:
            raise TypeError(f"fastgen.sampler_coeffs: unknown coefficient {k!r} (known: {', '.join(COEFF_NAMES)})")
    n = batch_size
    vals = {}
    for k, v in coeffs.items():
        t = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
        if t.dim() > 1:
            raise ValueError(f"fastgen.sampler_coeffs: {k} must be a scalar or 1-d, got shape {tuple(t.shape)}")
        if t.dim() == 1:
            if n is not None and t.shape[0] != n:
                raise ValueError(f"fastgen.sampler_coeffs: {k} has {t.shape[0]} values but the batch has {n}")
            n = t.shape[0]
        vals[k] = t
    if n is None:
        out = torch.zeros(len(COEFF_NAMES), dtype=torch.float64)
    else:
        out = torch.zeros(n, len(COEFF_NAMES), dtype=torch.float64)
    for k, d in _DEFAULTS.items():
        out[..., _IDX[k]] = d
    for k, t in vals.items():
        out[..., _IDX[k]] = t
    return out


def _col(coeffs: torch.Tensor, name: str, x: torch.Tensor) -> torch.Tensor:
    """One coefficient as fp32 broadcastable against x (0-d, or [N, 1, ...])."""
    c = coeffs[..., _IDX[name]].to(device=x.device, dtype=torch.float32)
    if coeffs.dim() == 2:
        c = c.reshape((coeffs.shape[0],) + (1,) * (x.dim() - 1))
    return c


def noise_like(x: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    """The normal noise fastgen's kernels generate for (seed, offset), laid out like their output
    for ``x`` (element i of the output's memory order is the stream's element i)."""
    from ._philox import philox_normal_like

    return philox_normal_like(C.empty_output_like(x), seed, offset).to(x.dtype)


def sampler_update_reference(x, model_output, coeffs, *, uncond=None, guidance_scale: float = 1.0, h1=None, h2=None,
                             noise=None, var_values=None) -> SamplerUpdateOutput:
    """Plain-PyTorch definition (fp32 math; differentiable in every tensor, coeffs included)."""
    f32 = torch.float32
    col = lambda k: _col(coeffs, k, x)  # noqa: E731
    m = model_output.to(f32)
    if uncond is not None:
        u = uncond.to(f32)
        m = u + guidance_scale * (m - u)
    xf = x.to(f32)
    clip = col("clip")
    raw = col("a_x") * xf + col("a_m") * m
    x0 = torch.maximum(torch.minimum(raw, clip), -clip) * col("scale")
    out = col("c_x") * xf + col("c_0") * x0 + col("c_m") * m
    if h1 is not None:
        out = out + col("c_h1") * h1.to(f32)
    if h2 is not None:
        out = out + col("c_h2") * h2.to(f32)
    if noise is not None:
        n = noise.to(f32)
        if var_values is not None:
            lo, hi = col("lv_lo"), col("lv_hi")
            n = n * torch.exp(0.5 * (lo + (var_values.to(f32) + 1.0) * 0.5 * (hi - lo)))
        out = out + col("c_n") * n
    return SamplerUpdateOutput(out.to(x.dtype), x0.to(x.dtype))


# ----------------------------------------------------------------------------- custom ops
def _fake_forward(x, model_output, coeffs, uncond, guidance, h1, h2, noise, var_values, noise_mode, seed, offset):
    xp = C.empty_output_like(x)
    return xp, torch.empty_like(xp)


def _fake_out(x, model_output, coeffs, uncond, guidance, h1, h2, noise, var_values, noise_mode, seed, offset,
              x_prev, x0):
    return None


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, "sampler_update"):
        return False
    torch.library.register_fake("fastgen::sampler_update")(_fake_forward)
    torch.library.register_fake("fastgen::sampler_update_out")(_fake_out)
    # autograd of the C++ op is registered in C++ (csrc/ops_sampler.cpp)
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


def _backward(x, m, coeffs, u, g, noise, var, mode, seed, offset, gp, g0, needs):
    """Gradients of the map (the C++ autograd's formulas, for the Triton op): linear in every
    tensor input up to the clamp mask, so built from differentiable torch ops."""
    f32 = torch.float32
    col = lambda k: _col(coeffs, k, x)  # noqa: E731
    t = None
    if gp is not None:
        t = gp.to(f32) * col("c_0")
    if g0 is not None:
        t = g0.to(f32) if t is None else t + g0.to(f32)
    if t is not None:
        t = t * col("scale")
        with torch.no_grad():  # the clamp's 0/1 mask (piecewise constant: no graph; ones where clip = inf)
            mf = m.to(f32) if u is None else u.to(f32) + g * (m.to(f32) - u.to(f32))
            keep = ((col("a_x") * x.to(f32) + col("a_m") * mf).abs() <= col("clip")).to(f32)
        t = t * keep

    def lin(kg, kt):
        r = gp.to(f32) * col(kg) if gp is not None else torch.zeros_like(x, dtype=f32)
        return r + t * col(kt) if t is not None else r

    dx = lin("c_x", "a_x").to(x.dtype) if needs["x"] else None
    dM = lin("c_m", "a_m") if needs["m"] or needs["u"] else None
    dm = (dM * g if u is not None else dM).to(x.dtype) if needs["m"] else None
    du = (dM * (1.0 - g)).to(x.dtype) if needs["u"] else None
    gpf = gp.to(f32) if gp is not None else torch.zeros_like(x, dtype=f32)
    dh1 = (gpf * col("c_h1")).to(x.dtype) if needs["h1"] else None
    dh2 = (gpf * col("c_h2")).to(x.dtype) if needs["h2"] else None
    dn = dv = None
    if mode != 0 and (needs["noise"] or needs["var"]):
        gn = gpf * col("c_n")
        sv = None
        if var is not None:
            lo, hi = col("lv_lo"), col("lv_hi")
            sv = torch.exp(0.5 * (lo + (var.to(f32) + 1.0) * 0.5 * (hi - lo)))
        if needs["noise"]:
            dn = (gn * sv if sv is not None else gn).to(x.dtype)
        if needs["var"]:
            n = noise if mode == 1 else noise_like(x, seed, offset)
            dv = (gn * n.to(f32) * sv * 0.25 * (col("lv_hi") - col("lv_lo"))).to(x.dtype)
    return dx, dm, du, dh1, dh2, dn, dv


def _triton_ops():
    """The Triton custom ops (defined on first use), with their autograd."""
    global _TRITON
    if _TRITON is None:
        from ..kernels.sampler_update import register_triton_ops

        fwd, out = register_triton_ops()
        torch.library.register_autograd("fastgen::sampler_update_triton", _triton_backward,
                                        setup_context=_triton_setup)
        _TRITON = (fwd, out)
    return _TRITON


_TRITON = None


def _triton_setup(ctx, inputs, output):
    x, m, coeffs, u, g, h1, h2, noise, var, mode, seed, offset = inputs
    ctx.save_for_backward(x, m, u, noise, var)
    ctx.coeffs, ctx.g, ctx.mode, ctx.seed, ctx.offset = coeffs, g, mode, seed, offset
    ctx.present = (h1 is not None, h2 is not None)


def _triton_backward(ctx, gp, g0):
    x, m, u, noise, var = ctx.saved_tensors
    ni = ctx.needs_input_grad
    needs = {"x": ni[0], "m": ni[1], "u": ni[3], "h1": ni[5], "h2": ni[6], "noise": ni[7], "var": ni[8]}
    dx, dm, du, dh1, dh2, dn, dv = _backward(x, m, ctx.coeffs, u, ctx.g, noise, var, ctx.mode, ctx.seed,
                                             ctx.offset, gp, g0, needs)
    return dx, dm, None, du, None, dh1, dh2, dn, dv, None, None, None


# ----------------------------------------------------------------------------- public API
_SEED_HIGH = 2**63 - 1


def _coeffs_arg(coeffs, x: torch.Tensor) -> torch.Tensor:
    """Type, shape and device of coeffs (cheap; values: :func:`_check_coeff_values`)."""
    if not isinstance(coeffs, torch.Tensor):
        raise TypeError(f"fastgen.{OP}: coeffs must be a tensor (build it with fastgen.ops.sampler_coeffs), "
                        f"got {type(coeffs).__name__}")
    if coeffs.dtype not in (torch.float64, torch.float32):
        raise TypeError(f"fastgen.{OP}: coeffs must be float64 or float32, got {coeffs.dtype}")
    n = len(COEFF_NAMES)
    shape = coeffs.shape
    if not (shape == (n,) or (len(shape) == 2 and x.dim() >= 1 and shape == (x.shape[0], n))):
        raise ValueError(f"fastgen.{OP}: coeffs must have shape [{n}] or [N, {n}] with N = x.shape[0] "
                         f"({x.shape[0] if x.dim() else 1}), got {tuple(shape)}")
    if coeffs.device.type != "cpu":
        raise ValueError(f"fastgen.{OP}: coeffs must be a host (CPU) tensor, got one on {coeffs.device}")
    return coeffs


def _check_coeff_values(coeffs: torch.Tensor) -> None:
    """The value checks the C++ op makes itself (same messages), for the other implementations."""
    c = coeffs.detach()
    clip = c[..., _IDX["clip"]]
    if not bool((clip > 0).all()):
        raise ValueError(f"fastgen.{OP}: coeffs[..., clip] must be > 0 (inf: no clamp), got {clip.tolist()}")
    rest = torch.cat([c[..., :_IDX["clip"]], c[..., _IDX["clip"] + 1:]], dim=-1)
    if not bool(torch.isfinite(rest).all()):
        raise ValueError(f"fastgen.{OP}: a coefficient is not finite (only clip may be inf): {c.tolist()}")


_CN = _IDX["c_n"]


def _any_noise(coeffs: torch.Tensor) -> bool:
    if coeffs.dim() == 1:
        return coeffs[_CN].item() != 0.0
    return bool(coeffs[:, _CN].any())


def _draw_seed(generator: Optional[torch.Generator]) -> int:
    return int(torch.randint(0, _SEED_HIGH, (), generator=generator))


def sampler_update(x: torch.Tensor, model_output: torch.Tensor, coeffs: torch.Tensor, *,
                   uncond: Optional[torch.Tensor] = None, guidance_scale: float = 1.0,
                   h1: Optional[torch.Tensor] = None, h2: Optional[torch.Tensor] = None,
                   noise: Optional[torch.Tensor] = None, var_values: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None, seed: Optional[int] = None, offset: int = 0,
                   out: Optional[Sequence[torch.Tensor]] = None, impl: Optional[str] = None) -> SamplerUpdateOutput:
    """One fused sampler step (see the module docstring for the map).

    Args:
        x: the current sample, any shape with the batch first; float32/float16/bfloat16.
        model_output: the network output (the conditional one when guiding), like ``x``.
        coeffs: host float64/float32 ``[12]`` or ``[N, 12]`` (:func:`sampler_coeffs`).
        uncond, guidance_scale: classifier-free guidance, ``m = uncond + s (model_output - uncond)``.
        h1, h2: history tensors of multistep/second-order samplers (``h2`` needs ``h1``).
        noise: the noise of a stochastic step; when omitted and some ``c_n != 0``, normal noise is
            generated inside the kernel from fastgen's Philox stream at (``seed``, ``offset``); the
            seed is drawn from ``generator`` (a CPU generator, or torch's default) when not given.
            With a CUDA ``generator`` the noise is drawn with ``torch.randn`` instead. Under
            ``torch.compile`` the coefficients are not inspected: a stochastic step there needs
            ``noise=`` or ``seed=`` (a deterministic one needs neither).
        var_values: the learned-range variance output ``v`` in [-1, 1] (improved DDPM), scaling
            the noise by ``exp(0.5 (lv_lo + (v + 1)/2 (lv_hi - lv_lo)))``.
        out: optional ``(prev_sample, pred_original_sample)`` buffers (``out[0]`` may be ``x``).
        impl: force ``"torch"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``SamplerUpdateOutput(prev_sample, pred_original_sample)``, laid out like ``x`` when it is
        dense with the batch outermost. Noise terms are dropped where every ``c_n`` is 0.
    """
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES:
        C.check_float_dtype(x, "x", OP)
    C.check_tensor(model_output, "model_output", OP)
    C.check_same(model_output, x, "model_output", "x", OP)
    coeffs = _coeffs_arg(coeffs, x)
    for t, nm in ((uncond, "uncond"), (h1, "h1"), (h2, "h2"), (noise, "noise"), (var_values, "var_values")):
        if t is not None:
            C.check_tensor(t, nm, OP)
            C.check_same(t, x, nm, "x", OP)
    if h2 is not None and h1 is None:
        raise ValueError(f"fastgen.{OP}: h2 needs h1")
    if guidance_scale.__class__ is not float:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
            raise TypeError(f"fastgen.{OP}: guidance_scale must be a finite real number, got {guidance_scale!r}")
        guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale):
        raise TypeError(f"fastgen.{OP}: guidance_scale must be a finite real number, got {guidance_scale!r}")
    g = guidance_scale
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"fastgen.{OP}: generator must be a torch.Generator, got {type(generator).__name__}")
    if offset.__class__ is not int or not 0 <= offset < 2**63:
        raise ValueError(f"fastgen.{OP}: offset must be an int in [0, 2**63), got {offset!r}")
    if seed is not None and (seed.__class__ is not int or not 0 <= seed < 2**63):
        raise ValueError(f"fastgen.{OP}: seed must be an int in [0, 2**63), got {seed!r}")

    if C.is_compiling():  # coefficient values are not inspected while tracing
        stochastic = noise is not None or seed is not None
    else:
        stochastic = _any_noise(coeffs)
    mode = 0
    if stochastic:
        if noise is not None:
            mode = 1
        elif generator is not None and generator.device.type != "cpu":
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            mode = 1
        else:
            mode = 2
            if seed is None:
                seed = _draw_seed(generator)
    else:
        noise = var_values = None
    seed = 0 if seed is None else seed

    choice = backend.forced_backend() if impl is None else impl
    name = backend.resolve(OP, x.device, impl)
    if name != "torch" and torch.is_grad_enabled() and coeffs.requires_grad:
        if choice not in ("auto", None):
            raise backend.BackendUnavailableError(
                f"fastgen.{OP}: gradients w.r.t. coeffs are only computed by impl='torch' (impl={choice!r} was forced)")
        name = "torch"
    if name != "cpp" and not C.is_compiling():
        _check_coeff_values(coeffs)
    args = (x, model_output, coeffs, uncond, g, h1, h2, noise, var_values, mode, seed, offset)

    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
            raise TypeError(f"fastgen.{OP}: out must be a pair of tensors (prev_sample, pred_original_sample)")
        xp, x0 = out
        C.check_same(xp, x, "out[0] (prev_sample)", "x", OP)
        C.check_same(x0, x, "out[1] (pred_original_sample)", "x", OP)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, model_output, uncond, h1, h2, noise, var_values)):
            raise RuntimeError(f"fastgen.{OP}: out= does not support automatic differentiation "
                               "(an input requires grad); call it without out=")
        if name != "cpp" and not C.is_compiling():
            C.check_out_overlap({"out[0] (prev_sample)": xp, "out[1] (pred_original_sample)": x0},
                                {"x": x, "model_output": model_output, "uncond": uncond, "h1": h1, "h2": h2,
                                 "noise": noise, "var_values": var_values}, OP)
        if name == "cpp":
            torch.ops.fastgen.sampler_update_out(*args, xp, x0)
        elif name == "triton":
            _triton_ops()[1](*args, xp, x0)
        else:
            rp, r0 = _reference_call(*args)
            xp.copy_(rp)
            x0.copy_(r0)
        return SamplerUpdateOutput(xp, x0)

    if name == "cpp":
        xp, x0 = torch.ops.fastgen.sampler_update(*args)
    elif name == "triton":
        xp, x0 = _triton_ops()[0](*args)
    else:
        xp, x0 = _reference_call(*args)
    return SamplerUpdateOutput(xp, x0)


def _reference_call(x, m, coeffs, u, g, h1, h2, noise, var, mode, seed, offset):
    if mode == 0 and not C.is_compiling() and bool((coeffs.detach()[..., _IDX["c_n"]] != 0).any()):
        raise ValueError(f"fastgen.{OP}: coeffs has c_n != 0 but there is no noise source: pass noise= or seed= "
                         "(under torch.compile the coefficients are not inspected)")
    if mode == 2:
        noise = noise_like(x, seed, offset)
    return sampler_update_reference(x, m, coeffs, uncond=u, guidance_scale=g, h1=h1, h2=h2,
                                    noise=noise if mode else None, var_values=var if mode else None)
