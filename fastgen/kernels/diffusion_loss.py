"""Triton kernels of the diffusion training ops (q_sample, diffusion_loss).

All tensors are dense, share one layout and keep the batch dimension outermost in memory, so
element ``i`` belongs to sample ``i // per_sample``. Per-sample coefficients arrive as small fp32
tensors on the same device (computed by the launchers with torch ops: no host syncs, traceable).

* ``lin2_kernel``: ``out1 = a u + b v``, ``out2 = c u + d v`` (q_sample, its backward, any order).
* ``loss_fwd_kernel``: one program per (sample, block of ``BLOCK`` elements) writes the fp32 sum of
  ``(m - p x0 - q noise)^2`` over its block into a ``[N, num_blocks]`` buffer (no atomics); the
  launcher reduces that buffer in float64 in a fixed order, so results are reproducible.
* ``loss_bwd_kernel``: elementwise ``dm = k r``, ``dx0 = kp r``, ``dnoise = kq r``.
"""
import triton
import triton.language as tl


@triton.jit
def lin2_kernel(u_ptr, v_ptr, o1_ptr, o2_ptr, c_ptr, numel, per_sample,
                HAS_U: tl.constexpr, HAS_V: tl.constexpr, OUT1: tl.constexpr, OUT2: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    cb = c_ptr + (offs // per_sample) * 4
    a = tl.load(cb, mask=mask, other=0.0)
    b = tl.load(cb + 1, mask=mask, other=0.0)
    c = tl.load(cb + 2, mask=mask, other=0.0)
    d = tl.load(cb + 3, mask=mask, other=0.0)
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_V:
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OUT1:
        if HAS_U and HAS_V:
            r1 = a * u + b * v
        elif HAS_U:
            r1 = a * u
        else:
            r1 = b * v
        tl.store(o1_ptr + offs, r1.to(o1_ptr.dtype.element_ty), mask=mask)
    if OUT2:
        if HAS_U and HAS_V:
            r2 = c * u + d * v
        elif HAS_U:
            r2 = c * u
        else:
            r2 = d * v
        tl.store(o2_ptr + offs, r2.to(o2_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual(m_ptr, x_ptr, n_ptr, offs, mask, p, q, HAS_X0: tl.constexpr, HAS_N: tl.constexpr):
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_X0 and HAS_N:
        t = p * tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) + \
            q * tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = m - t
    elif HAS_X0:
        r = m - p * tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif HAS_N:
        r = m - q * tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        r = m
    return r


@triton.jit
def loss_fwd_kernel(m_ptr, x_ptr, n_ptr, pq_ptr, part_ptr, per_sample, num_blocks,
                    HAS_X0: tl.constexpr, HAS_N: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    s = pid // num_blocks
    blk = pid - s * num_blocks
    idx = blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < per_sample
    offs = s * per_sample + idx
    p = tl.load(pq_ptr + 2 * s)
    q = tl.load(pq_ptr + 2 * s + 1)
    r = _residual(m_ptr, x_ptr, n_ptr, offs, mask, p, q, HAS_X0, HAS_N)
    r = tl.where(mask, r, 0.0)
    tl.store(part_ptr + pid, tl.sum(r * r, axis=0))


@triton.jit
def loss_bwd_kernel(m_ptr, x_ptr, n_ptr, dm_ptr, dx_ptr, dn_ptr, pq_ptr, k_ptr, numel, per_sample,
                    HAS_X0: tl.constexpr, HAS_N: tl.constexpr, NEED_M: tl.constexpr, NEED_X0: tl.constexpr,
                    NEED_N: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    s = offs // per_sample
    p = tl.load(pq_ptr + 2 * s, mask=mask, other=0.0)
    q = tl.load(pq_ptr + 2 * s + 1, mask=mask, other=0.0)
    r = _residual(m_ptr, x_ptr, n_ptr, offs, mask, p, q, HAS_X0, HAS_N)
    if NEED_M:
        k = tl.load(k_ptr + 3 * s, mask=mask, other=0.0)
        tl.store(dm_ptr + offs, (k * r).to(dm_ptr.dtype.element_ty), mask=mask)
    if NEED_X0:
        kp = tl.load(k_ptr + 3 * s + 1, mask=mask, other=0.0)
        tl.store(dx_ptr + offs, (kp * r).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_N:
        kq = tl.load(k_ptr + 3 * s + 2, mask=mask, other=0.0)
        tl.store(dn_ptr + offs, (kq * r).to(dn_ptr.dtype.element_ty), mask=mask)
