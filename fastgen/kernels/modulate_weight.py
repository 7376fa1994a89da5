"""Triton kernels of modulate_weight (fastgen/ops/modulate_weight.py).

Rows are the (n, o) filters of the output, each ``R = I K`` contiguous values (K = kh kw); element
j of a row belongs to input channel j // K. fp32 math, storage dtype in and out; d is the (N, O)
fp32 demodulation table (None: no demodulation).

* forward: a 2-D grid (rows, row blocks): ``out = w[o] s[n, j // K] d[n, o]``.
* backward, three deterministic passes over G (no atomics):
  ``t[n, o] = sum_j G w s`` (one program per row); ``gw[o, j] = sum_n ga s`` (programs over
  (o, row block), looping over n); ``gs[n, i] = sum_{o, k} ga w`` (programs over (n, block of i),
  looping over o), with ``ga = d G - t d^3 w s``.
"""
import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _forward_kernel(w_ptr, s_ptr, d_ptr, out_ptr, O, I, K, R, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = j < R
    n = r // O
    o = r % O
    f = tl.load(s_ptr + n * I + j // K, mask=m, other=0.0)
    if HAS_D:
        f = f * tl.load(d_ptr + r)
    w = tl.load(w_ptr + o * R + j, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * R + j, (w * f).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _t_kernel(g_ptr, w_ptr, s_ptr, t_ptr, O, I, K, R, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    n = r // O
    o = r % O
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, R, BLOCK):
        j = start + tl.arange(0, BLOCK)
        m = j < R
        g = tl.load(g_ptr + r * R + j, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + o * R + j, mask=m, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + n * I + j // K, mask=m, other=0.0)
        acc += g * w * s
    tl.store(t_ptr + r, tl.sum(acc, axis=0))


@triton.jit
def _gw_kernel(g_ptr, w_ptr, s_ptr, d_ptr, t_ptr, gw_ptr, N, O, I, K, R, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = j < R
    w = tl.load(w_ptr + o * R + j, mask=m, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    for n in range(0, N):
        r = n * O + o
        s = tl.load(s_ptr + n * I + j // K, mask=m, other=0.0)
        g = tl.load(g_ptr + r * R + j, mask=m, other=0.0).to(tl.float32)
        if HAS_D:
            d = tl.load(d_ptr + r)
            c = tl.load(t_ptr + r) * d * d * d
            ga = d * g - c * w * s
        else:
            ga = g
        acc += ga * s
    tl.store(gw_ptr + o * R + j, acc, mask=m)


@triton.jit
def _gs_kernel(g_ptr, w_ptr, s_ptr, d_ptr, t_ptr, gs_ptr, O, I, K, R, HAS_D: tl.constexpr, BLOCK_I: tl.constexpr,
               BLOCK_K: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    k = tl.arange(0, BLOCK_K)
    mi = i < I
    m = mi[:, None] & (k[None, :] < K)
    jj = i[:, None] * K + k[None, :]
    s = tl.load(s_ptr + n * I + i, mask=mi, other=0.0)
    acc = tl.zeros([BLOCK_I], tl.float32)
    for o in range(0, O):
        r = n * O + o
        w = tl.load(w_ptr + o * R + jj, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + r * R + jj, mask=m, other=0.0).to(tl.float32)
        if HAS_D:
            d = tl.load(d_ptr + r)
            c = tl.load(t_ptr + r) * d * d * d
            ga = d * g - c * w * s[:, None]
        else:
            ga = g
        acc += tl.sum(ga * w, axis=1)
    tl.store(gs_ptr + n * I + i, acc, mask=mi)


def modulate_weight_forward(w: torch.Tensor, s: torch.Tensor, d):
    """w (O, I, kh, kw) contiguous, s (N, I) fp32 contiguous, d (N, O) fp32 or None."""
    o_, i_, kh, kw = w.shape
    n_ = s.shape[0]
    out = torch.empty((n_, o_, i_, kh, kw), dtype=w.dtype, device=w.device)
    r_ = i_ * kh * kw
    if out.numel():
        grid = (n_ * o_, triton.cdiv(r_, _BLOCK))
        _forward_kernel[grid](w, s, d if d is not None else s, out, o_, i_, kh * kw, r_, HAS_D=d is not None,
                              BLOCK=_BLOCK)
    return out


def modulate_weight_backward(g: torch.Tensor, w: torch.Tensor, s: torch.Tensor, d):
    """Returns (gw fp32 (O, I, kh, kw), gs fp32 (N, I))."""
    o_, i_, kh, kw = w.shape
    n_ = s.shape[0]
    k_ = kh * kw
    r_ = i_ * k_
    gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    gs = torch.zeros((n_, i_), dtype=torch.float32, device=w.device)
    if g.numel() == 0:
        return gw, gs
    has_d = d is not None
    t = torch.empty((n_, o_), dtype=torch.float32, device=w.device)
    if has_d:
        _t_kernel[(n_ * o_,)](g, w, s, t, o_, i_, k_, r_, BLOCK=_BLOCK)
    dd = d if has_d else t
    _gw_kernel[(o_, triton.cdiv(r_, _BLOCK))](g, w, s, dd, t, gw, n_, o_, i_, k_, r_, HAS_D=has_d, BLOCK=_BLOCK)
    block_k = triton.next_power_of_2(k_)
    block_i = max(1, min(triton.next_power_of_2(i_), 2048 // block_k))
    _gs_kernel[(n_, triton.cdiv(i_, block_i))](g, w, s, dd, t, gs, o_, i_, k_, r_, HAS_D=has_d, BLOCK_I=block_i,
                                               BLOCK_K=block_k)
    return gw, gs
