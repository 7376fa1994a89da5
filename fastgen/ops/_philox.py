"""Pure-PyTorch reference of fastgen's in-kernel noise stream (csrc/include/fastgen/philox.h).

Element ``i`` of a call with ``(seed, offset)`` (``i`` = position in the output's memory order;
tensors are dense with the batch outermost) is::

    r    = Philox4x32-10(counter = (g_lo, g_hi, offset_lo, offset_hi), key = (seed_lo, seed_hi)),
           g = i >> 2, lane = i & 3
    u_k  = ((r_k >> 8) + 0.5) * 2^-24              (evaluated in float32, like the kernels)
    lanes 0, 1:  sqrt(-2 ln u_0) * (cos, sin)(2 pi u_1)
    lanes 2, 3:  sqrt(-2 ln u_2) * (cos, sin)(2 pi u_3)

``seed`` and ``offset`` are 64-bit; negative Python ints are taken modulo 2^64 (the int64 of
the op schemas reinterpreted as uint64). The integer part here is bit-exact with the C++,
CUDA and Triton kernels; the float part uses float64 ``log``/``cos``/``sin`` rounded once to
float32, so the kernels (polynomials on CPU, libm-quality functions on GPUs) agree with it to
~1e-6 absolute, not bitwise.

uint32 values are held in int64 tensors throughout (torch has no full uint32 arithmetic).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * m, with a in [0, 2^32) (int64 tensor) and
    m < 2^32. The multiplier is split into 16-bit halves so no partial product exceeds 2^48."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo                                   # < 2^48
    p_hi = a * m_hi                                   # < 2^48; product = p_hi * 2^16 + p_lo
    t = p_lo + ((p_hi & 0xFFFF) << 16)                # < 2^49
    return (p_hi >> 16) + (t >> 32), t & _MASK32


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32 with 10 rounds (Random123), vectorised.

    ``counter``: int64 tensor [..., 4] of uint32 values; ``key``: int64 tensor [..., 2] of uint32
    values, broadcastable against ``counter[..., :2]``. Returns int64 [..., 4] (uint32 values).
    """
    counter = torch.as_tensor(counter, dtype=torch.int64)
    key = torch.as_tensor(key, dtype=torch.int64, device=counter.device)
    if counter.shape[-1] != 4 or key.shape[-1] != 2:
        raise ValueError(f"philox4x32_10: counter must be [..., 4] and key [..., 2], got "
                         f"{tuple(counter.shape)} and {tuple(key.shape)}")
    c0, c1, c2, c3 = (counter[..., j] & _MASK32 for j in range(4))
    k0, k1 = key[..., 0] & _MASK32, key[..., 1] & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + W0) & _MASK32
        k1 = (k1 + W1) & _MASK32
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def split64(v: int) -> tuple[int, int]:
    v = int(v) & _MASK64
    return v & _MASK32, v >> 32


def philox_uniform_bits(num_groups: int, seed: int, offset: int, device=None) -> torch.Tensor:
    """The raw Philox outputs r of groups 0 .. num_groups-1: int64 [num_groups, 4] (uint32 values)."""
    g = torch.arange(num_groups, dtype=torch.int64, device=device)
    o_lo, o_hi = split64(offset)
    s_lo, s_hi = split64(seed)
    ctr = torch.stack([g & _MASK32, g >> 32, torch.full_like(g, o_lo), torch.full_like(g, o_hi)], dim=-1)
    key = torch.tensor([s_lo, s_hi], dtype=torch.int64, device=device)
    return philox4x32_10(ctr, key)


def to_unit(r: torch.Tensor) -> torch.Tensor:
    """u = ((r >> 8) + 0.5) * 2^-24 in float32, exactly as the kernels evaluate it (float32 adds
    round half-to-even above 2^23, so u can be exactly 1.0 for r >> 8 = 2^24 - 1)."""
    return ((r >> 8).to(torch.float32) + 0.5) * 5.9604644775390625e-08


def philox_normal(numel: int, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """Elements 0 .. numel-1 of the stream for (seed, offset): float32 [numel]."""
    numel = int(numel)
    if numel < 0:
        raise ValueError(f"philox_normal: numel must be >= 0, got {numel}")
    groups = (numel + 3) // 4
    r = philox_uniform_bits(groups, seed, offset, device)
    u = to_unit(r).double()                               # [G, 4]
    rad0 = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    rad1 = torch.sqrt(-2.0 * torch.log(u[:, 2]))
    a0 = (2.0 * math.pi) * u[:, 1]
    a1 = (2.0 * math.pi) * u[:, 3]
    z = torch.stack([rad0 * torch.cos(a0), rad0 * torch.sin(a0), rad1 * torch.cos(a1), rad1 * torch.sin(a1)], dim=-1)
    return z.reshape(-1)[:numel].to(torch.float32)


def philox_normal_like(t: torch.Tensor, seed: int, offset: int = 0,
                       dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
    """A tensor shaped like ``t`` whose memory-order element i is the stream's element i.

    The layout is ``torch.empty_like(t)``'s: ``t``'s own strides when ``t`` is dense (contiguous,
    channels_last, any permutation), contiguous otherwise. Values are computed in float32 and then
    cast to ``dtype`` (default float32).
    """
    out = torch.empty_like(t, dtype=torch.float32)
    n = out.numel()
    if n:
        z = philox_normal(n, seed, offset, device=out.device)
        # empty_like of a dense tensor is dense with storage offset 0: its memory is [0, n)
        out.as_strided((n,), (1,), 0).copy_(z)
    return out if dtype in (None, torch.float32) else out.to(dtype)
