"""Triton kernels of reparameterize (fastgen/ops/reparam.py).

Rows are samples ((N, M) in memory order). One program handles CHUNK elements of one row, as
[BLOCK / 4, 4] tiles of Philox groups (element i = 4 g + lane of fastgen's stream, so the noise is
generated once per group of four, as in the other kernels), masked to its range. The forward
writes z and a per-(row, chunk) KL partial (summed in fp64 afterwards: deterministic, no atomics).
"""
import torch
import triton
import triton.language as tl

from .philox import split64
from .sampler_update import _normal4

_BLOCK = 1024
_CHUNK = 16 * _BLOCK


@triton.jit
def _tile(lo, start, BLOCK: tl.constexpr):
    """Tile `start / BLOCK` of the group-aligned tiles from group lo // 4 on (contiguous, disjoint)."""
    g = lo // 4 + start // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    lane = tl.arange(0, 4)[None, :]
    return g, g[:, None] * 4 + lane, lane


@triton.jit
def _eps(noise_ptr, g, offs, lane, mask, seed_lo, seed_hi, off_lo, off_hi, HAS_NOISE: tl.constexpr):
    if HAS_NOISE:
        e = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        z0, z1, z2, z3 = _normal4(g, seed_lo, seed_hi, off_lo, off_hi)
        e = tl.where(lane == 0, z0[:, None], tl.where(lane == 1, z1[:, None],
                                                      tl.where(lane == 2, z2[:, None], z3[:, None])))
    return e


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _forward_kernel(mu_ptr, lv_ptr, noise_ptr, z_ptr, part_ptr, M, P, seed_lo, seed_hi, off_lo, off_hi,
                    HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    lo = row * M + c * CHUNK
    hi = tl.minimum(lo + CHUNK, row * M + M)
    acc = tl.zeros([BLOCK // 4, 4], tl.float32)
    for start in range(0, CHUNK + 4, BLOCK):
        g, offs, lane = _tile(lo, start, BLOCK)
        mask = (offs >= lo) & (offs < hi)
        m = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lv = tl.load(lv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        e = _eps(noise_ptr, g, offs, lane, mask, seed_lo, seed_hi, off_lo, off_hi, HAS_NOISE)
        s = tl.exp(0.5 * lv)
        tl.store(z_ptr + offs, (m + s * e).to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, m * m + s * s - 1.0 - lv, 0.0)
    tl.store(part_ptr + row * P + c, 0.5 * tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _backward_kernel(gz_ptr, gkl_ptr, mu_ptr, lv_ptr, noise_ptr, dmu_ptr, dlv_ptr, M, seed_lo, seed_hi, off_lo,
                     off_hi, HAS_GZ: tl.constexpr, HAS_GKL: tl.constexpr, HAS_NOISE: tl.constexpr,
                     BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    lo = row * M + c * CHUNK
    hi = tl.minimum(lo + CHUNK, row * M + M)
    gk = tl.load(gkl_ptr + row) if HAS_GKL else 0.0
    for start in range(0, CHUNK + 4, BLOCK):
        g, offs, lane = _tile(lo, start, BLOCK)
        mask = (offs >= lo) & (offs < hi)
        m = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lv = tl.load(lv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.exp(0.5 * lv)
        dm = gk * m
        dl = 0.5 * gk * (s * s - 1.0)
        if HAS_GZ:
            gz = tl.load(gz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            e = _eps(noise_ptr, g, offs, lane, mask, seed_lo, seed_hi, off_lo, off_hi, HAS_NOISE)
            dm += gz
            dl += 0.5 * gz * e * s
        tl.store(dmu_ptr + offs, dm.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(dlv_ptr + offs, dl.to(dlv_ptr.dtype.element_ty), mask=mask)


def _grid(n, m):
    return n, max(1, triton.cdiv(m, _CHUNK))


def reparam_forward(mu, lv, noise, seed, offset):
    n = mu.shape[0]
    m = mu.numel() // n if n else 0
    z = torch.empty_like(mu)
    grid = _grid(n, m)
    part = torch.zeros(grid, dtype=torch.float32, device=mu.device)
    if mu.numel():
        s_lo, s_hi = split64(seed)
        o_lo, o_hi = split64(offset)
        _forward_kernel[grid](mu, lv, noise if noise is not None else mu, z, part, m, grid[1], s_lo, s_hi, o_lo, o_hi,
                              HAS_NOISE=noise is not None, BLOCK=_BLOCK, CHUNK=_CHUNK)
    return z, part.double().sum(dim=1).float()


def reparam_backward(gz, gkl, mu, lv, noise, seed, offset):
    n = mu.shape[0]
    m = mu.numel() // n if n else 0
    dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
    if mu.numel():
        s_lo, s_hi = split64(seed)
        o_lo, o_hi = split64(offset)
        _backward_kernel[_grid(n, m)](gz if gz is not None else mu, gkl if gkl is not None else mu, mu, lv,
                                      noise if noise is not None else mu, dmu, dlv, m, s_lo, s_hi, o_lo, o_hi,
                                      HAS_GZ=gz is not None, HAS_GKL=gkl is not None, HAS_NOISE=noise is not None,
                                      BLOCK=_BLOCK, CHUNK=_CHUNK)
    return dmu, dlv
