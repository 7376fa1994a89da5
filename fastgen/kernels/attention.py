"""Triton flash-attention kernels (FlashAttention-2 scheme) for fastgen.functional.attention.

    S = q k^T * scale + mask,   P = softmax(S) (rows),   out = dropout(P) v,   lse = logsumexp(S)

Tensors are (B, H, N, D) with any strides (the head dim need not be unit-stride); the additive
mask is (B, H, N_q, N_kv) with any strides (0 on broadcast dims), in q's dtype, -inf allowed.
Softmax runs in base 2 (scale and mask pre-multiplied by log2 e; exp2 is one instruction).

Forward (``_fwd_kernel``, one program per (block of BLOCK_M query rows, batch x head)): the query
tile stays in registers while K/V tiles of BLOCK_N keys stream past: S tile = q k^T (tensor cores,
fp32 accumulate), online softmax (running max m, running sum l, the accumulator rescaled by
exp2(m_old - m_new)), acc += P v. The N_q x N_kv matrix is never written; out = acc / l and the
log-sum-exp (natural log, fp32, (B, H, N_q)) are stored for the backward. A row whose keys are all
masked gives out = 0 and lse = +inf (so the backward's recomputed P is 0 there).

Backward (recompute; no atomics, deterministic):
  ``delta = rowsum(dO * out)`` (fp32, one small torch op: O(N D)),
  ``_bwd_dkdv_kernel``: one program per (block of BLOCK_N keys, batch x head) keeps k, v, dk, dv
      in registers and loops over all query tiles: P = exp2(S - lse), dv += P^T dO,
      dP = dO v^T, dS = P (dP - delta), dk += dS^T q;
  ``_bwd_dq_kernel``: one program per (query block, batch x head) loops over key tiles:
      dq += dS k.
Dropout: keep(i, j) is drawn in-kernel from fastgen's Philox stream, identically in the forward
and both backward kernels (and in fastgen.ops.attention.dropout_keep_mask, the reference): for
global row r = (b H + h) N_q + i and column quad c = j // 4, Philox4x32-10 with counter
(c, r_lo, r_hi, 0) and key (seed_lo, seed_hi) gives four uint32 words; word j % 4 is mapped to
u in (0, 1] and keep = u >= p. Kept weights are scaled by 1 / (1 - p); l (and lse) are those of
the undropped P, as in FlashAttention.

Head dims: D and D_v are runtime values padded to powers of two >= 16 (BLOCK_D, BLOCK_DV; loads
masked), so 40 or 80 work. Ragged sequence tails are masked. Block sizes are autotuned per
(N_q, N_kv, head dims, dtype) on GPUs; under TRITON_INTERPRET=1 one small config is used.
fp32 inputs use IEEE fp32 dot products (no TF32), half inputs fp16/bf16 tensor-core dots with fp32
accumulation; P and dS are rounded to the input dtype before their dots, as in FlashAttention.
"""
import os

import torch
import triton
import triton.language as tl

from .philox import philox4x32_10, split64, to_unit

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def _configs(big_m, big_n):
    if _INTERPRET:
        return [triton.Config({big_m: 16, big_n: 16}, num_warps=1, num_stages=1)]
    return [triton.Config({big_m: bm, big_n: bn}, num_warps=w, num_stages=s)
            for bm in (64, 128) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3)
            if not (bm == 128 and bn == 128 and s == 3)]


def _prune(configs, named_args, **kwargs):
    """Drop tiles too large for the head dim (register/shared-memory pressure at D = 256)."""
    args = {**named_args, **kwargs}
    d = max(args.get("BLOCK_D", 16), args.get("BLOCK_DV", 16))
    keep = [c for c in configs if d <= 128 or (c.kwargs.get("BLOCK_M", 64) * c.kwargs.get("BLOCK_N", 64) <= 64 * 64)]
    return keep or configs[:1]


_KEY = ["Nq", "Nk", "BLOCK_D", "BLOCK_DV", "HAS_MASK", "DROPOUT"]


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation. PRECISION "upcast": operands widened to fp32 first (exact for
    bf16 products) -- the Triton interpreter multiplies bf16 tiles wrongly (seen with triton 3.9),
    so bf16 runs this way under TRITON_INTERPRET=1 only."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _keep(rows, start_n, seed_lo, seed_hi, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The dropout keep mask of the [BLOCK_M, BLOCK_N] tile: rows = global row ids (int64),
    columns start_n .. start_n + BLOCK_N (start_n a multiple of 4). One Philox call per 4 columns."""
    quad = (start_n // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)
    c0 = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32) + quad[None, :]
    c1 = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32) + rows.to(tl.uint32)[:, None]
    c2 = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32) + (rows >> 32).to(tl.uint32)[:, None]
    c3 = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK_M, BLOCK_N])  # column 4c + w holds word w
    return to_unit(r) >= p_drop


@triton.jit
def _scores(q, k_t, mask_ptrs, rows, cols, Nq, Nk, qk_scale,
            HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """S * log2(e) of a tile: q [M, D] times k^T [D, N], plus the mask, -inf past the last key."""
    s = _dot(q, k_t, PRECISION) * qk_scale
    if HAS_MASK:
        mvals = tl.load(mask_ptrs, mask=(rows[:, None] < Nq) & (cols[None, :] < Nk), other=0.0)
        s += mvals.to(tl.float32) * 1.4426950408889634
    return tl.where(cols[None, :] < Nk, s, float("-inf"))


# ----------------------------------------------------------------------------------- forward
@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N"), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _fwd_kernel(Q, K, V, Mask, Out, Lse,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                smb, smh, smm, smn, sob, soh, som, sod,
                H, Nq, Nk, D, DV, qk_scale, seed_lo, seed_hi, p_drop,
                HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < Nq

    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    k_base = K + b * skb + h * skh + offs_d[:, None] * skd
    v_base = V + b * svb + h * svh + offs_dv[None, :] * svd
    m_base = Mask + b * smb + h * smh + rows[:, None] * smm
    grow = bh * Nq + rows  # global row ids (dropout stream)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < Nk
        k_t = tl.load(k_base + cols[None, :] * skn, mask=(offs_d[:, None] < D) & col_ok[None, :], other=0.0)
        s = _scores(q, k_t, m_base + cols[None, :] * smn, rows, cols, Nq, Nk, qk_scale, HAS_MASK, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: keep exp2 finite (0)
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _keep(grow, start_n, seed_lo, seed_hi, p_drop, BLOCK_M, BLOCK_N)
            p = tl.where(keep, p / (1.0 - p_drop), 0.0)
        v = tl.load(v_base + cols[:, None] * svn, mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
        m_i = m_new

    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(tl.where(has, l_i, 1.0))) / 1.4426950408889634, float("inf"))
    tl.store(Out + b * sob + h * soh + rows[:, None] * som + offs_dv[None, :] * sod, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(Lse + bh * Nq + rows, lse, mask=row_ok)


# ----------------------------------------------------------------------------------- backward
@triton.jit
def _probs_grad(q, k_t, v_t, do, lse2, delta, mask_ptrs, grow, rows, cols, start_n, Nq, Nk, qk_scale,
                seed_lo, seed_hi, p_drop, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For one [M, N] tile: (P after dropout, dS) with P = exp2(S log2e - lse log2e) recomputed."""
    s = _scores(q, k_t, mask_ptrs, rows, cols, Nq, Nk, qk_scale, HAS_MASK, PRECISION)
    p = tl.math.exp2(s - lse2[:, None])
    dp = _dot(do, v_t, PRECISION)
    pd = p
    if DROPOUT:
        keep = _keep(grow, start_n, seed_lo, seed_hi, p_drop, BLOCK_M, BLOCK_N)
        pd = tl.where(keep, p / (1.0 - p_drop), 0.0)
        dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
    ds = p * (dp - delta[:, None])
    return pd, ds


@triton.jit
def _rows_bwd(q_base, do_base, Lse, Delta, bh, rows, offs_d, offs_dv, sqm, sqd, sdm, sdd, Nq, D, DV):
    """The backward's per-query-row inputs: q [M, D], dO [M, DV], lse * log2(e) (+inf past N_q, so
    P = 0 there) and delta [M]."""
    row_ok = rows < Nq
    q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(do_base + rows[:, None] * sdm + offs_dv[None, :] * sdd,
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse2 = tl.load(Lse + bh * Nq + rows, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bh * Nq + rows, mask=row_ok, other=0.0)
    return q, do, lse2, delta


@triton.jit
def _kv_t(k_base, v_base, cols, offs_d, offs_dv, skn, skd, svn, svd, Nk, D, DV):
    """K^T [D, N] and V^T [DV, N] tiles (zero past N_kv and the head dims)."""
    col_ok = cols < Nk
    k_t = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd,
                  mask=(offs_d[:, None] < D) & col_ok[None, :], other=0.0)
    v_t = tl.load(v_base + cols[None, :] * svn + offs_dv[:, None] * svd,
                  mask=(offs_dv[:, None] < DV) & col_ok[None, :], other=0.0)
    return k_t, v_t


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N"), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, Mask, DO, Lse, Delta, DK, DV_,
                     sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     smb, smh, smm, smn, sdb, sdh, sdm, sdd,
                     H, Nq, Nk, D, DV, qk_scale, scale, seed_lo, seed_hi, p_drop,
                     HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < Nk
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_t, v_t = _kv_t(K + b * skb + h * skh, V + b * svb + h * svh, cols, offs_d, offs_dv, skn, skd, svn, svd,
                     Nk, D, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for start_m in range(0, Nq, BLOCK_M):
        rows = start_m + offs_m
        q, do, lse2, delta = _rows_bwd(Q + b * sqb + h * sqh, DO + b * sdb + h * sdh, Lse, Delta, bh, rows, offs_d,
                                       offs_dv, sqm, sqd, sdm, sdd, Nq, D, DV)
        pd, ds = _probs_grad(q, k_t, v_t, do, lse2, delta,
                             Mask + b * smb + h * smh + rows[:, None] * smm + cols[None, :] * smn,
                             bh * Nq + rows, rows, cols, pid_n * BLOCK_N, Nq, Nk, qk_scale, seed_lo, seed_hi, p_drop,
                             HAS_MASK, DROPOUT, PRECISION, BLOCK_M, BLOCK_N)
        dv += _dot(tl.trans(pd.to(do.dtype)), do, PRECISION)
        dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION)
    dk *= scale
    # DK and DV_ are contiguous (B, H, Nk, D[v])
    tl.store(DK + (bh * Nk + cols[:, None]) * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=col_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + (bh * Nk + cols[:, None]) * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=col_ok[:, None] & (offs_dv[None, :] < DV))


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N"), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _bwd_dq_kernel(Q, K, V, Mask, DO, Lse, Delta, DQ,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   smb, smh, smm, smn, sdb, sdh, sdm, sdd,
                   H, Nq, Nk, D, DV, qk_scale, scale, seed_lo, seed_hi, p_drop,
                   HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Nq
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, do, lse2, delta = _rows_bwd(Q + b * sqb + h * sqh, DO + b * sdb + h * sdh, Lse, Delta, bh, rows, offs_d,
                                   offs_dv, sqm, sqd, sdm, sdd, Nq, D, DV)
    m_base = Mask + b * smb + h * smh + rows[:, None] * smm
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        cols = start_n + offs_n
        k_t, v_t = _kv_t(K + b * skb + h * skh, V + b * svb + h * svh, cols, offs_d, offs_dv, skn, skd, svn, svd,
                         Nk, D, DV)
        _, ds = _probs_grad(q, k_t, v_t, do, lse2, delta, m_base + cols[None, :] * smn, bh * Nq + rows, rows, cols,
                            start_n, Nq, Nk, qk_scale, seed_lo, seed_hi, p_drop,
                            HAS_MASK, DROPOUT, PRECISION, BLOCK_M, BLOCK_N)
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), PRECISION)
    dq *= scale
    tl.store(DQ + (bh * Nq + rows[:, None]) * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------------- launchers
def _launch(kernel, grid, *args, **kw):
    from torch.library import wrap_triton

    return wrap_triton(kernel)[grid](*args, **kw)


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "ieee"  # no TF32: fp32 inputs get fp32 products
    return "upcast" if _INTERPRET and dtype == torch.bfloat16 else "tf32"  # (half dots ignore it)


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _mask_args(mask, q, k):
    """The mask tensor (a dummy pointer when absent) and its (b, h, m, n) strides after broadcasting."""
    if mask is None:
        return q, (0, 0, 0, 0)
    full = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return full, tuple(full.stride())


def _common(q, k, v, mask, scale, dropout_p, seed):
    B, H, Nq, D = q.shape
    Nk, DV = k.shape[2], v.shape[3]
    if B * H > 65535:
        raise ValueError(f"fastgen.attention (triton): batch x heads = {B * H} exceeds the grid limit 65535")
    m, mstrides = _mask_args(mask, q, k)
    s_lo, s_hi = split64(seed)
    meta = dict(HAS_MASK=mask is not None, DROPOUT=dropout_p > 0,
                PRECISION=_precision(q.dtype),
                BLOCK_D=_block_d(D), BLOCK_DV=_block_d(DV))
    scalars = (H, Nq, Nk, D, DV)
    return m, mstrides, scalars, (s_lo, s_hi, float(dropout_p)), meta, float(scale) * LOG2E


def attention_fwd(q, k, v, mask, scale: float, dropout_p: float = 0.0, seed: int = 0):
    """(out (B, H, N_q, D_v) contiguous in q's dtype, lse (B, H, N_q) fp32)."""
    B, H, Nq, _ = q.shape
    out = torch.empty((B, H, Nq, v.shape[3]), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    m, ms, scalars, rng, meta, qk_scale = _common(q, k, v, mask, scale, dropout_p, seed)
    grid = lambda meta_: (triton.cdiv(Nq, meta_["BLOCK_M"]), B * H)  # noqa: E731
    _launch(_fwd_kernel, grid, q, k, v, m, out, lse, *q.stride(), *k.stride(), *v.stride(), *ms, *out.stride(),
            *scalars, qk_scale, *rng, **meta)
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, mask, scale: float, dropout_p: float = 0.0, seed: int = 0):
    """(dq, dk, dv), contiguous, in the inputs' dtypes."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if Nq == 0 or Nk == 0 or B * H == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O), (B, H, Nq) fp32
    m, ms, scalars, rng, meta, qk_scale = _common(q, k, v, mask, scale, dropout_p, seed)
    args = (*q.stride(), *k.stride(), *v.stride(), *ms, *grad_out.stride(), *scalars, qk_scale, float(scale), *rng)
    _launch(_bwd_dkdv_kernel, lambda meta_: (triton.cdiv(Nk, meta_["BLOCK_N"]), B * H),
            q, k, v, m, grad_out, lse, delta, dk, dv, *args, **meta)
    _launch(_bwd_dq_kernel, lambda meta_: (triton.cdiv(Nq, meta_["BLOCK_M"]), B * H),
            q, k, v, m, grad_out, lse, delta, dq, *args, **meta)
    return dq, dk, dv
