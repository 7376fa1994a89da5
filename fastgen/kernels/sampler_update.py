"""Triton kernel of the coefficient-driven sampler update (csrc/include/fastgen/sampler.h).

One program handles BLOCK contiguous elements of dense tensors that share one batch-outer
layout, viewed as a [BLOCK // 4, 4] tile: row j is Philox group g = pid * BLOCK / 4 + j, so one
Philox4x32-10 call feeds the four elements of a row (no redundant Philox work) and the loads and
stores stay contiguous. The coefficient sets live in a device fp32 [rows, 12] tensor (one row
per sample, or a single row), so the kernel never needs a host value and is traceable by
torch.compile (torch.library.triton_op + wrap_triton below).

The noise (NOISE_MODE 2) is fastgen's stream (csrc/include/fastgen/philox.h,
fastgen/ops/_philox.py): the integer part is bit-exact with the C++/CUDA kernels; log and
sin/cos are Triton's (libdevice on GPUs), the angle reduced to [-pi/4, pi/4] first so the fp32
product 2*pi*u does not cost accuracy.
"""
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .philox import split64, philox4x32_10, to_unit

NUM_COEFFS = 12
_BLOCK = 1024

@triton.jit
def _sincos_2pi(u):
    """(cos, sin)(2 pi u) for u in [0, 1]: quadrant q = rint(4u), t = u - q/4 (exact), then
    cos/sin of 2 pi t in [-pi/4, pi/4] rotated by q quarter turns (as philox::sincos_2pi)."""
    qf = (4.0 * u + 0.5).to(tl.int32).to(tl.float32)
    t = 6.283185307179586 * (u - 0.25 * qf)
    c = tl.cos(t)
    s = tl.sin(t)
    q = qf.to(tl.int32) & 3
    odd = (q & 1) != 0
    cc = tl.where(odd, s, c)
    ss = tl.where(odd, c, s)
    cos_v = tl.where((q == 1) | (q == 2), -cc, cc)
    sin_v = tl.where(q >= 2, -ss, ss)
    return cos_v, sin_v


@triton.jit
def _normal4(g, seed_lo, seed_hi, off_lo, off_hi):
    """The four normals of Philox groups g (int64 tensor): fp32 tensors z0..z3 shaped like g."""
    c0 = g.to(tl.uint32)  # truncation: the low half
    c1 = (g >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    rad0 = tl.sqrt_rn(-2.0 * tl.log(to_unit(r0)))
    rad1 = tl.sqrt_rn(-2.0 * tl.log(to_unit(r2)))
    cos0, sin0 = _sincos_2pi(to_unit(r1))
    cos1, sin1 = _sincos_2pi(to_unit(r3))
    return rad0 * cos0, rad0 * sin0, rad1 * cos1, rad1 * sin1


@triton.jit
def philox_normal_kernel(out_ptr, numel, seed_lo, seed_hi, off_lo, off_hi, BLOCK: tl.constexpr):
    """The stream itself (for tests / noise_like on GPUs): out[i] = element i, fp32."""
    pid = tl.program_id(0).to(tl.int64)
    g = pid * (BLOCK // 4) + tl.arange(0, BLOCK // 4).to(tl.int64)
    lane = tl.arange(0, 4)[None, :]
    offs = g[:, None] * 4 + lane
    mask = offs < numel
    z0, z1, z2, z3 = _normal4(g, seed_lo, seed_hi, off_lo, off_hi)
    z = tl.where(lane == 0, z0[:, None], tl.where(lane == 1, z1[:, None], tl.where(lane == 2, z2[:, None], z3[:, None])))
    tl.store(out_ptr + offs, z, mask=mask)


@triton.jit
def _coeff(c_ptr, row, k: tl.constexpr, mask, PER_SAMPLE: tl.constexpr):
    if PER_SAMPLE:
        return tl.load(c_ptr + row * 12 + k, mask=mask, other=0.0)
    else:
        return tl.load(c_ptr + k)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "guidance"])
def sampler_update_kernel(x_ptr, m_ptr, u_ptr, h1_ptr, h2_ptr, n_ptr, v_ptr, xp_ptr, x0_ptr, c_ptr,
                          numel, per_sample, guidance, seed_lo, seed_hi, off_lo, off_hi,
                          PER_SAMPLE: tl.constexpr, GUIDE: tl.constexpr, NH: tl.constexpr,
                          NOISE_MODE: tl.constexpr, VAR: tl.constexpr, CLIP: tl.constexpr,
                          BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    g = pid * (BLOCK // 4) + tl.arange(0, BLOCK // 4).to(tl.int64)  # Philox groups of this tile
    lane = tl.arange(0, 4)[None, :]
    offs = g[:, None] * 4 + lane                                      # [BLOCK // 4, 4] elements
    mask = offs < numel
    if PER_SAMPLE:
        row = offs // per_sample
    else:
        row = 0
    a_x = _coeff(c_ptr, row, 0, mask, PER_SAMPLE)
    a_m = _coeff(c_ptr, row, 1, mask, PER_SAMPLE)
    scale = _coeff(c_ptr, row, 3, mask, PER_SAMPLE)
    c_x = _coeff(c_ptr, row, 4, mask, PER_SAMPLE)
    c_0 = _coeff(c_ptr, row, 5, mask, PER_SAMPLE)
    c_m = _coeff(c_ptr, row, 6, mask, PER_SAMPLE)

    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GUIDE:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = u + guidance * (m - u)
    x0 = a_x * x + a_m * m
    if CLIP:
        clip = _coeff(c_ptr, row, 2, mask, PER_SAMPLE)
        # comparisons are false for NaN, so NaN propagates (clip = inf: no clamp)
        x0 = tl.where(x0 > clip, clip, tl.where(x0 < -clip, -clip, x0))
    x0 = scale * x0
    out = c_x * x + c_0 * x0 + c_m * m
    if NH >= 1:
        c_h1 = _coeff(c_ptr, row, 7, mask, PER_SAMPLE)
        out += c_h1 * tl.load(h1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NH >= 2:
        c_h2 = _coeff(c_ptr, row, 8, mask, PER_SAMPLE)
        out += c_h2 * tl.load(h2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NOISE_MODE != 0:
        c_n = _coeff(c_ptr, row, 9, mask, PER_SAMPLE)
        if NOISE_MODE == 1:
            nz = tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            z0, z1, z2, z3 = _normal4(g, seed_lo, seed_hi, off_lo, off_hi)
            nz = tl.where(lane == 0, z0[:, None],
                          tl.where(lane == 1, z1[:, None], tl.where(lane == 2, z2[:, None], z3[:, None])))
        if VAR:
            lv_lo = _coeff(c_ptr, row, 10, mask, PER_SAMPLE)
            lv_hi = _coeff(c_ptr, row, 11, mask, PER_SAMPLE)
            lv_half = 0.25 * (lv_hi - lv_lo)
            lv_mid = 0.5 * lv_lo + lv_half
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            nz = nz * tl.exp(lv_mid + lv_half * v)  # exp(0.5 (lo + (v + 1) / 2 (hi - lo)))
        out += c_n * nz
    tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)
    tl.store(xp_ptr + offs, out.to(xp_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------- launchers
def _launch(kernel, grid, *args, **kw):
    from torch.library import wrap_triton

    return wrap_triton(kernel)[grid](*args, **kw)


def launch_sampler_update(x, m, coeffs_dev, uncond, guidance, h1, h2, noise, var, noise_mode, seed, offset,
                          x_prev, x0, *, clip: bool = True, block: int = _BLOCK) -> None:
    """Launch the kernel. Every tensor is dense in the same batch-outer layout as ``x_prev`` (same
    strides), outputs are preallocated; ``coeffs_dev`` is a contiguous fp32 tensor on x's device,
    [12] / [1, 12] (one set) or [N, 12] (per sample). ``clip=False`` skips the clamp (valid when
    every clip coefficient is +inf; the clamp with +inf is a no-op anyway). Absent optional
    tensors are None; ``noise`` is read only for noise_mode 1, ``var`` only for noise_mode != 0.
    """
    numel = x.numel()
    if numel == 0:
        return
    n = x.shape[0] if x.dim() else 1
    per_sample_coeffs = coeffs_dev.dim() == 2 and coeffs_dev.shape[0] > 1
    per_sample = max(numel // max(n, 1), 1)
    nh = 2 if h2 is not None else (1 if h1 is not None else 0)
    if nh == 2 and h1 is None:
        raise ValueError("fastgen.sampler_update: h2 needs h1")
    mode = int(noise_mode)
    use_var = var is not None and mode != 0
    s_lo, s_hi = split64(seed)
    o_lo, o_hi = split64(offset)
    grid = (triton.cdiv(numel, block),)
    _launch(sampler_update_kernel, grid,
            x, m, uncond if uncond is not None else x, h1 if h1 is not None else x,
            h2 if h2 is not None else x, noise if mode == 1 else x, var if use_var else x,
            x_prev, x0, coeffs_dev, numel, per_sample, float(guidance), s_lo, s_hi, o_lo, o_hi,
            PER_SAMPLE=per_sample_coeffs, GUIDE=uncond is not None, NH=nh, NOISE_MODE=mode, VAR=use_var,
            CLIP=bool(clip), BLOCK=block, num_warps=4)


def launch_philox_normal(out: torch.Tensor, seed: int, offset: int, block: int = _BLOCK) -> torch.Tensor:
    """Fill the fp32 tensor ``out`` (memory order, must be dense) with the stream."""
    numel = out.numel()
    if numel:
        s_lo, s_hi = split64(seed)
        o_lo, o_hi = split64(offset)
        _launch(philox_normal_kernel, (triton.cdiv(numel, block),), out, numel, s_lo, s_hi, o_lo, o_hi,
                BLOCK=block, num_warps=4)
    return out


# ----------------------------------------------------------------------------------- custom ops
_OP = "fastgen.sampler_update: "


def _concrete(t: torch.Tensor) -> bool:
    """True when t's values can be read (eager, not a fake tensor inside torch.compile)."""
    from torch._subclasses.fake_tensor import is_fake

    return not torch.compiler.is_compiling() and not is_fake(t)


def _check_like(t, x, name):
    if t is None:
        return
    if t.shape != x.shape:
        raise ValueError(f"{_OP}{name} has shape {tuple(t.shape)} but x has shape {tuple(x.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{_OP}{name} has dtype {t.dtype} but x has dtype {x.dtype}")
    if t.device != x.device:
        raise ValueError(f"{_OP}{name} is on {t.device} but x is on {x.device}")


def _check_args(x, m, uncond, h1, h2, noise, var, noise_mode):
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{_OP}x has dtype {x.dtype}; supported dtypes are float32, float16 and bfloat16")
    for t, name in ((m, "model_output"), (uncond, "uncond"), (h1, "h1"), (h2, "h2"), (noise, "noise"),
                    (var, "var_values")):
        _check_like(t, x, name)
    if h2 is not None and h1 is None:
        raise ValueError(f"{_OP}h2 needs h1")
    if noise_mode not in (0, 1, 2):
        raise ValueError(f"{_OP}noise_mode must be 0, 1 or 2, got {noise_mode}")
    if (noise is not None) != (noise_mode == 1):
        raise ValueError(_OP + ("noise_mode 1 needs a noise tensor" if noise_mode == 1
                                else "noise is given but noise_mode is not 1"))
    if var is not None and noise_mode == 0:
        raise ValueError(f"{_OP}var_values scale the noise: they need noise_mode 1 or 2")


def device_coeffs(coeffs: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(coefficients as a contiguous fp32 [rows, 12] tensor on x's device, whether to clamp).

    Host coefficients (float64/float32, [12] or [N, 12]) are checked like the C++ op does (clip > 0,
    the others finite) when their values can be read; device ones are taken as they are.
    """
    if coeffs.dtype not in (torch.float64, torch.float32):
        raise TypeError(f"{_OP}coeffs must be float64 or float32, got {coeffs.dtype}")
    n = x.shape[0] if x.dim() else 1
    ok = coeffs.shape == (NUM_COEFFS,) or (coeffs.dim() == 2 and coeffs.shape[1] == NUM_COEFFS and x.dim() >= 1
                                            and coeffs.shape[0] == n)
    if not ok:
        raise ValueError(f"{_OP}coeffs must have shape [{NUM_COEFFS}] or [N, {NUM_COEFFS}] with N = x.shape[0] "
                         f"({n}), got {list(coeffs.shape)}")
    if coeffs.device.type != "cpu" and coeffs.device != x.device:
        raise ValueError(f"{_OP}coeffs is on {coeffs.device} but x is on {x.device} (pass host coeffs)")
    clip = True
    if coeffs.device.type == "cpu" and _concrete(coeffs):
        c = coeffs.detach().double().reshape(-1, NUM_COEFFS)
        cl = c[:, 2]
        if bool((~(cl > 0)).any()):
            r = int((~(cl > 0)).nonzero()[0, 0])
            raise ValueError(f"{_OP}coeffs[..., clip] must be > 0 (inf: no clamp), got {cl[r].item()} (row {r})")
        other = torch.cat([c[:, :2], c[:, 3:]], dim=1)
        if not bool(torch.isfinite(other).all()):
            r, k = (int(v) for v in (~torch.isfinite(other)).nonzero()[0])
            k = k if k < 2 else k + 1
            raise ValueError(f"{_OP}coefficient {k} of row {r} is not finite ({c[r, k].item()})")
        clip = bool(torch.isfinite(cl).any())
    dev = coeffs.detach().to(device=x.device, dtype=torch.float32).reshape(-1, NUM_COEFFS).contiguous()
    return dev, clip


def _is_dense(t: torch.Tensor) -> bool:
    from ..ops import _common as C

    return C.is_dense(t) and C.batch_outer_dense(t)


def _forward_into(x, m, coeffs, uncond, guidance, h1, h2, noise, var, noise_mode, seed, offset, x_prev, x0):
    from ..ops import _common as C

    cdev, clip = device_coeffs(coeffs, x)
    if x.numel() == 0:
        return

    def lay(t):
        return C.layout_like(t, x_prev) if t is not None else None

    launch_sampler_update(lay(x), lay(m), cdev, lay(uncond), guidance, lay(h1), lay(h2),
                          lay(noise) if noise_mode == 1 else None, lay(var) if noise_mode != 0 else None,
                          noise_mode, seed, offset, x_prev, x0, clip=clip)


@functools.lru_cache(maxsize=None)
def register_triton_ops():
    """Define ``fastgen::sampler_update_triton`` and ``fastgen::sampler_update_out_triton``
    (torch.library.triton_op, same arguments as the C++ schemas) once; returns both op callables.
    Autograd is registered by fastgen.ops.sampler_update."""
    from torch.library import triton_op

    from ..ops import _common as C

    @triton_op("fastgen::sampler_update_triton", mutates_args=())
    def sampler_update_triton(x: torch.Tensor, model_output: torch.Tensor, coeffs: torch.Tensor,
                              uncond: Optional[torch.Tensor], guidance: float, h1: Optional[torch.Tensor],
                              h2: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                              var_values: Optional[torch.Tensor], noise_mode: int, seed: int,
                              offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_args(x, model_output, uncond, h1, h2, noise, var_values, noise_mode)
        x_prev = C.empty_output_like(x)
        x0 = torch.empty_like(x_prev)
        _forward_into(x, model_output, coeffs, uncond, guidance, h1, h2, noise, var_values, noise_mode, seed,
                      offset, x_prev, x0)
        return x_prev, x0

    @triton_op("fastgen::sampler_update_out_triton", mutates_args=("x_prev", "x0"))
    def sampler_update_out_triton(x: torch.Tensor, model_output: torch.Tensor, coeffs: torch.Tensor,
                                  uncond: Optional[torch.Tensor], guidance: float, h1: Optional[torch.Tensor],
                                  h2: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                                  var_values: Optional[torch.Tensor], noise_mode: int, seed: int, offset: int,
                                  x_prev: torch.Tensor, x0: torch.Tensor) -> None:
        _check_args(x, model_output, uncond, h1, h2, noise, var_values, noise_mode)
        _check_like(x_prev, x, "out[0] (x_prev)")
        _check_like(x0, x, "out[1] (x0)")
        if x_prev.stride() == x0.stride() and _is_dense(x_prev):
            _forward_into(x, model_output, coeffs, uncond, guidance, h1, h2, noise, var_values, noise_mode, seed,
                          offset, x_prev, x0)
        else:
            tp = C.empty_output_like(x)
            t0 = torch.empty_like(tp)
            _forward_into(x, model_output, coeffs, uncond, guidance, h1, h2, noise, var_values, noise_mode, seed,
                          offset, tp, t0)
            x_prev.copy_(tp)
            x0.copy_(t0)

    return sampler_update_triton, sampler_update_out_triton
