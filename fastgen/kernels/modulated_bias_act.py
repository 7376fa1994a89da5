"""Triton kernels of modulated_bias_act (fastgen/ops/modulated_bias_act.py): StyleGAN's synthesis
epilogue and its fused backward.

    z = x scale[n, c] + noise[n|0, c|0, p] strength[c] + b[c]
    y = clamp(act(z) gain, -clamp, clamp)
    backward: dz = g gain act'(z) m,  m = [|act(z) gain| <= clamp]
              dx = dz scale; sums of dz, dz x, dz noise; dnoise = dz strength (summed where noise broadcasts)

One program handles a (BLOCK_C channels x BLOCK_P positions) tile of one sample n; x is addressed
with strides (NCHW-contiguous: (C P, P, 1), channels last: (P C, 1, C)), so both layouts run in
place. fp32 math, storage dtype in and out. The backward writes per-tile partial sums
(n, position block, c) and, for noise broadcast along n or c, per-tile dnoise replicas; the
launcher adds them up with torch ops (no atomics: deterministic). Activation math is bias_act's
(`fastgen.kernels.bias_act._act`).
"""
import torch
import triton
import triton.language as tl

from .bias_act import _act


@triton.jit
def _z_tile(x_ptr, s_ptr, b_ptr, st_ptr, nz_ptr, n, cs, ps, cm, pm, C, sx_n, sx_c, sx_p, sn_n, sn_c, sn_p,
            HAS_NOISE: tl.constexpr):
    c64 = cs.to(tl.int64)
    p64 = ps.to(tl.int64)
    m = cm[:, None] & pm[None, :]
    off = n * sx_n + c64[:, None] * sx_c + p64[None, :] * sx_p
    xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + n * C + c64, mask=cm, other=0.0)
    bb = tl.load(b_ptr + c64, mask=cm, other=0.0)
    z = xv * s[:, None] + bb[:, None]
    st = tl.load(st_ptr + c64, mask=cm, other=0.0)
    if HAS_NOISE:
        nz = tl.load(nz_ptr + n * sn_n + c64[:, None] * sn_c + p64[None, :] * sn_p, mask=m, other=0.0)
        z += nz * st[:, None]
    else:
        nz = tl.zeros(z.shape, tl.float32)
    return off, m, xv, s, st, nz, z


@triton.jit
def mba_fwd_kernel(x_ptr, y_ptr, s_ptr, b_ptr, st_ptr, nz_ptr, C, P, sx_n, sx_c, sx_p, sn_n, sn_c, sn_p,
                   alpha, gain, clamp, HAS_NOISE: tl.constexpr, ACT: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = cs < C
    pm = ps < P
    off, m, xv, s, st, nz, z = _z_tile(x_ptr, s_ptr, b_ptr, st_ptr, nz_ptr, n, cs, ps, cm, pm, C, sx_n, sx_c, sx_p,
                                       sn_n, sn_c, sn_p, HAS_NOISE)
    y = _act(z, alpha, ACT, 0) * gain
    y = tl.where(clamp >= 0.0, tl.minimum(tl.maximum(y, -clamp), clamp), y)
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def mba_bwd_kernel(g_ptr, x_ptr, dx_ptr, s_ptr, b_ptr, st_ptr, nz_ptr, sdz_ptr, sdzx_ptr, sdzn_ptr, dn_ptr,
                   C, P, NPB, NCB, DN_M, sx_n, sx_c, sx_p, sn_n, sn_c, sn_p, alpha, gain, clamp,
                   HAS_NOISE: tl.constexpr, NEED_DX: tl.constexpr, DN_MODE: tl.constexpr, DN_SUM_N: tl.constexpr,
                   ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """DN_MODE 0: no dnoise; 1: noise per channel (dn = dz st); 2: noise shared by the channels
    (dn = sum over the tile's channels of dz st, one replica per channel block)."""
    n = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_p = tl.program_id(2)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = cs < C
    pm = ps < P
    off, m, xv, s, st, nz, z = _z_tile(x_ptr, s_ptr, b_ptr, st_ptr, nz_ptr, n, cs, ps, cm, pm, C, sx_n, sx_c, sx_p,
                                       sn_n, sn_c, sn_p, HAS_NOISE)
    y = _act(z, alpha, ACT, 0) * gain
    k = tl.where((clamp < 0.0) | (tl.abs(y) <= clamp), gain, 0.0)
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    dz = tl.where(m, g * k * _act(z, alpha, ACT, 1), 0.0)
    if NEED_DX:
        tl.store(dx_ptr + off, (dz * s[:, None]).to(dx_ptr.dtype.element_ty), mask=m)
    c64 = cs.to(tl.int64)
    p64 = ps.to(tl.int64)
    slot = (n * NPB + pid_p) * C + c64
    tl.store(sdz_ptr + slot, tl.sum(dz, axis=1), mask=cm)
    tl.store(sdzx_ptr + slot, tl.sum(dz * xv, axis=1), mask=cm)
    if HAS_NOISE:
        tl.store(sdzn_ptr + slot, tl.sum(dz * nz, axis=1), mask=cm)
    nd = 0 if DN_SUM_N else n  # the noise sample this tile's dnoise goes to
    rn = n if DN_SUM_N else 0  # its replica along n
    if DN_MODE == 1:  # dnoise replicas (R, Nn, C, P) contiguous
        dn_off = rn * DN_M + (nd * C + c64[:, None]) * P + p64[None, :]
        tl.store(dn_ptr + dn_off, dz * st[:, None], mask=m)
    elif DN_MODE == 2:  # (R, Nn, 1, P), replica r = rn NCB + pid_c
        dn_off = (rn * NCB + pid_c) * DN_M + nd * P + p64
        tl.store(dn_ptr + dn_off, tl.sum(dz * st[:, None], axis=0), mask=pm)


def _blocks(c: int, p: int, cl: bool) -> tuple[int, int]:
    bp = min(triton.next_power_of_2(max(p, 1)), 64 if cl else 256)
    bc = min(triton.next_power_of_2(max(c, 1)), max(1, 4096 // bp))
    return bc, bp


def _strides(c: int, p: int, cl: bool) -> tuple[int, int, int]:
    return (p * c, 1, c) if cl else (c * p, p, 1)


def _noise_strides(noise: torch.Tensor, p: int) -> tuple[int, int, int]:
    nn_, cn = noise.shape[0], noise.shape[1]
    return (cn * p if nn_ > 1 else 0, p if cn > 1 else 0, 1)


def forward(x, scale32, b32, st32, noise32, cl, act, alpha, gain, clamp, out):
    """y into ``out`` (x's processing layout). scale32 (N, C), b32 (C), st32 (C) fp32 contiguous;
    noise32 fp32 NCHW-contiguous (Nn, Cn, P) or None."""
    from torch.library import wrap_triton

    n, c = x.shape[:2]
    p = x.numel() // max(n * c, 1)
    if out.numel() == 0:
        return out
    bc, bp = _blocks(c, p, cl)
    sn = _noise_strides(noise32, p) if noise32 is not None else (0, 0, 0)
    wrap_triton(mba_fwd_kernel)[(n, triton.cdiv(c, bc), triton.cdiv(p, bp))](
        x, out, scale32, b32, st32, noise32 if noise32 is not None else x, c, p, *_strides(c, p, cl), *sn,
        float(alpha), float(gain), float(clamp), HAS_NOISE=noise32 is not None, ACT=act, BLOCK_C=bc, BLOCK_P=bp)
    return out


def backward(g, x, scale32, b32, st32, noise32, cl, act, alpha, gain, clamp, dx, need_dn):
    """Writes dx (if not None) and returns fp32 (sum dz, sum dz x, sum dz noise) per (n, c) and
    dnoise (fp32, NCHW-contiguous in noise's shape, or None)."""
    from torch.library import wrap_triton

    n, c = x.shape[:2]
    p = x.numel() // max(n * c, 1)
    bc, bp = _blocks(c, p, cl)
    npb, ncb = triton.cdiv(p, bp), triton.cdiv(c, bc)
    part = torch.zeros((3, n, npb, c), dtype=torch.float32, device=x.device)
    has_noise = noise32 is not None
    dn_mode, dn_sum_n, dn_m, reps, dn_part = 0, False, 0, 1, None
    if has_noise and need_dn:
        nn_, cn = noise32.shape[0], noise32.shape[1]
        dn_sum_n = nn_ == 1
        dn_mode = 2 if cn == 1 else 1
        dn_m = noise32.numel()
        reps = (n if dn_sum_n else 1) * (ncb if dn_mode == 2 else 1)
        dn_part = torch.empty((reps, *noise32.shape), dtype=torch.float32, device=x.device)
    if x.numel() > 0:
        sn = _noise_strides(noise32, p) if has_noise else (0, 0, 0)
        wrap_triton(mba_bwd_kernel)[(n, ncb, npb)](
            g, x, dx if dx is not None else x, scale32, b32, st32, noise32 if has_noise else x,
            part[0], part[1], part[2], dn_part if dn_part is not None else part,
            c, p, npb, ncb, dn_m, *_strides(c, p, cl), *sn, float(alpha), float(gain), float(clamp),
            HAS_NOISE=has_noise, NEED_DX=dx is not None, DN_MODE=dn_mode, DN_SUM_N=dn_sum_n, ACT=act,
            BLOCK_C=bc, BLOCK_P=bp)
    elif dn_part is not None:
        dn_part.zero_()
    sums = part.sum(dim=2)  # (3, N, C)
    dn = dn_part.sum(dim=0) if dn_part is not None else None
    return sums, dn
