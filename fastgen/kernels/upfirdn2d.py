"""Triton kernels of upfirdn2d (fastgen/ops/upfirdn2d.py): upsample by zero insertion, pad/crop,
FIR filter, downsample, computed directly (polyphase) per output tile.

In correlation form (k = the filter flipped unless flip_filter):

    y[oy, ox] = gain sum_{a, b} k[a, b] u[oy dy + a - py0, ox dx + b - px0],
    u[m, l]   = x[m / uy, l / ux] where uy | m and ux | l (and inside x), else 0.

For an output coordinate o only the taps a = a0 + t u (t < ceil(f / u)) can land on a real sample,
a0 = (p0 - o d) mod u, reading input index i0 + t with i0 = (o d + a0 - p0) / u: each program
computes that first tap and index once per output row / column of its tile and then loops over
ceil(fh / uy) x ceil(fw / ux) taps (constexpr, unrolled), loading x with masks (padding, crops and
the image border are masks) and the filter taps from global memory (cached), accumulating in fp32
(fp64 for float64). Only kept outputs are computed; nothing is materialised.

Two tilings, both reading x through its strides (no layout copies):
  * NCHW output: a [BLOCK_H, BLOCK_W] tile of one (n, c) plane (coalesced along W);
  * channels_last output: a [BLOCK_W, BLOCK_C] tile of one output row (coalesced along C).
Block sizes are autotuned per (output size, factors, filter size); the interpreter uses one small
config. All index arithmetic on possibly negative values is shifted to non-negative operands on
the host (Triton's // and % truncate like C on GPUs).
"""
import math
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
_KEY = ["Ho", "Wo", "C", "UX", "UY", "DX", "DY", "FW", "FH", "SEPARABLE"]


def _configs_nchw():
    if _INTERPRET:
        return [triton.Config({"BLOCK_H": 4, "BLOCK_W": 8}, num_warps=1)]
    return [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=w)
            for bh, bw, w in ((4, 64, 2), (8, 64, 4), (8, 128, 4), (16, 64, 4), (16, 128, 8), (32, 32, 4))]


def _configs_cl():
    if _INTERPRET:
        return [triton.Config({"BLOCK_W": 4, "BLOCK_C": 8}, num_warps=1)]
    return [triton.Config({"BLOCK_W": bw, "BLOCK_C": bc}, num_warps=w)
            for bw, bc, w in ((4, 64, 2), (8, 64, 4), (4, 128, 4), (8, 128, 4), (16, 128, 8), (32, 32, 4))]


@triton.jit
def _first_tap(o, D: tl.constexpr, U: tl.constexpr, shift, off, K):
    """First tap a0 landing on a real sample for output coordinate(s) o, and its input index i0.
    Host values: shift = (-p0) mod U, K = max(0, ceil(p0 / U)), off = K U - p0 >= 0, so every
    operand of % and // is non-negative."""
    if U == 1:
        a0 = o * 0
        i0 = o * D + off - K
    else:
        a0 = (U - (o * D + shift) % U) % U
        i0 = (o * D + a0 + off) // U - K
    return a0, i0


@triton.autotune(configs=_configs_nchw(), key=_KEY)
@triton.jit
def _upfirdn2d_nchw_kernel(x_ptr, f_ptr, y_ptr, C, H, W, Ho, Wo,
                           sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                           shift_x, off_x, k_x, shift_y, off_y, k_y, gain,
                           UX: tl.constexpr, UY: tl.constexpr, DX: tl.constexpr, DY: tl.constexpr,
                           FW: tl.constexpr, FH: tl.constexpr, TX: tl.constexpr, TY: tl.constexpr,
                           SEPARABLE: tl.constexpr, FLIP: tl.constexpr, ACC64: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(Wo, BLOCK_W)
    tiles_h = tl.cdiv(Ho, BLOCK_H)
    tw = pid % tiles_w
    rest = pid // tiles_w
    th = rest % tiles_h
    plane = rest // tiles_h
    n = (plane // C).to(tl.int64)
    c = (plane % C).to(tl.int64)
    oy = th * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    a0, i0 = _first_tap(oy, DY, UY, shift_y, off_y, k_y)
    b0, j0 = _first_tap(ox, DX, UX, shift_x, off_x, k_x)
    acc_t = tl.float64 if ACC64 else tl.float32
    xb = x_ptr + n * sxn + c * sxc
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=acc_t)
    for ty in tl.static_range(TY):
        a = a0 + ty * UY
        i = i0 + ty
        vy = (a < FH) & (i >= 0) & (i < H) & (oy < Ho)
        ka = a if FLIP else FH - 1 - a  # filter row of correlation tap a
        if SEPARABLE:
            wy = tl.load(f_ptr + ka, mask=vy, other=0.0).to(acc_t)
        for tx in tl.static_range(TX):
            b = b0 + tx * UX
            j = j0 + tx
            vx = (b < FW) & (j >= 0) & (j < W) & (ox < Wo)
            kb = b if FLIP else FW - 1 - b
            m = vy[:, None] & vx[None, :]
            if SEPARABLE:
                w = wy[:, None] * tl.load(f_ptr + kb, mask=vx, other=0.0).to(acc_t)[None, :]
            else:
                w = tl.load(f_ptr + ka[:, None] * FW + kb[None, :], mask=m, other=0.0).to(acc_t)
            xv = tl.load(xb + i[:, None].to(tl.int64) * sxh + j[None, :].to(tl.int64) * sxw, mask=m, other=0.0)
            acc += w * xv.to(acc_t)
    out = acc * gain
    ym = (oy < Ho)[:, None] & (ox < Wo)[None, :]
    yp = y_ptr + n * syn + c * syc + oy[:, None].to(tl.int64) * syh + ox[None, :].to(tl.int64) * syw
    tl.store(yp, out.to(y_ptr.dtype.element_ty), mask=ym)


@triton.autotune(configs=_configs_cl(), key=_KEY)
@triton.jit
def _upfirdn2d_cl_kernel(x_ptr, f_ptr, y_ptr, C, H, W, Ho, Wo,
                         sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                         shift_x, off_x, k_x, shift_y, off_y, k_y, gain,
                         UX: tl.constexpr, UY: tl.constexpr, DX: tl.constexpr, DY: tl.constexpr,
                         FW: tl.constexpr, FH: tl.constexpr, TX: tl.constexpr, TY: tl.constexpr,
                         SEPARABLE: tl.constexpr, FLIP: tl.constexpr, ACC64: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    tiles_c = tl.cdiv(C, BLOCK_C)
    tiles_w = tl.cdiv(Wo, BLOCK_W)
    tc = pid % tiles_c
    rest = pid // tiles_c
    tw = rest % tiles_w
    rest = rest // tiles_w
    oy = rest % Ho
    n = (rest // Ho).to(tl.int64)
    ox = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    cc = tc * BLOCK_C + tl.arange(0, BLOCK_C)
    # the row's vertical taps as [BLOCK_W] vectors (equal entries): masked loads need tensor masks
    a0, i0 = _first_tap(oy + 0 * ox, DY, UY, shift_y, off_y, k_y)
    b0, j0 = _first_tap(ox, DX, UX, shift_x, off_x, k_x)
    acc_t = tl.float64 if ACC64 else tl.float32
    xb = x_ptr + n * sxn + cc[None, :].to(tl.int64) * sxc
    vc = cc < C
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=acc_t)
    for ty in tl.static_range(TY):
        a = a0 + ty * UY
        i = i0 + ty
        vy = (a < FH) & (i >= 0) & (i < H)
        ka = a if FLIP else FH - 1 - a
        if SEPARABLE:
            wy = tl.load(f_ptr + ka, mask=vy, other=0.0).to(acc_t)
        for tx in tl.static_range(TX):
            b = b0 + tx * UX
            j = j0 + tx
            vx = (b < FW) & (j >= 0) & (j < W) & (ox < Wo) & vy
            kb = b if FLIP else FW - 1 - b
            if SEPARABLE:
                w = wy * tl.load(f_ptr + kb, mask=vx, other=0.0).to(acc_t)
            else:
                w = tl.load(f_ptr + ka * FW + kb, mask=vx, other=0.0).to(acc_t)
            m = vx[:, None] & vc[None, :]
            xv = tl.load(xb + i[:, None].to(tl.int64) * sxh + j[:, None].to(tl.int64) * sxw, mask=m, other=0.0)
            acc += w[:, None] * xv.to(acc_t)
    out = acc * gain
    ym = (ox < Wo)[:, None] & vc[None, :]
    yp = y_ptr + n * syn + oy.to(tl.int64) * syh + ox[:, None].to(tl.int64) * syw + cc[None, :].to(tl.int64) * syc
    tl.store(yp, out.to(y_ptr.dtype.element_ty), mask=ym)


def _shifts(p0: int, u: int) -> tuple[int, int, int]:
    """(shift, off, K) of _first_tap for leading padding p0 and factor u."""
    k = max(0, -(-p0 // u))
    return (-p0) % u, k * u - p0, k


def upfirdn2d(x, f, up, down, pad, flip, gain, memory_format):
    """Launch the kernel for y in ``memory_format`` (contiguous or channels_last); x in any strides."""
    from torch.library import wrap_triton

    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    acc64 = x.dtype == torch.float64
    if f is None:
        f = torch.ones(1, device=x.device)
    fw, fh = f.shape[-1], f.shape[0]
    separable = f.dim() == 1
    f = f.detach().to(torch.float64 if acc64 else torch.float32).contiguous()
    ho = (h * uy + py0 + py1 - fh) // dy + 1
    wo = (w * ux + px0 + px1 - fw) // dx + 1
    y = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if y.numel() == 0:
        return y
    if x.numel() == 0:
        return y.zero_()
    args = (x, f, y, c, h, w, ho, wo, *x.stride(), *y.stride(), *_shifts(px0, ux), *_shifts(py0, uy), float(gain))
    meta = dict(UX=ux, UY=uy, DX=dx, DY=dy, FW=fw, FH=fh, TX=math.ceil(fw / ux), TY=math.ceil(fh / uy),
                SEPARABLE=separable, FLIP=bool(flip), ACC64=acc64)
    if memory_format == torch.channels_last:
        grid = lambda m: (n * ho * triton.cdiv(wo, m["BLOCK_W"]) * triton.cdiv(c, m["BLOCK_C"]),)  # noqa: E731
        wrap_triton(_upfirdn2d_cl_kernel)[grid](*args, **meta)
    else:
        grid = lambda m: (n * c * triton.cdiv(ho, m["BLOCK_H"]) * triton.cdiv(wo, m["BLOCK_W"]),)  # noqa: E731
        wrap_triton(_upfirdn2d_nchw_kernel)[grid](*args, **meta)
    return y
