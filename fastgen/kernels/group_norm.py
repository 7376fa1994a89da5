"""Triton kernels of the fused group_norm op: GroupNorm + ADM-style per-(N, C) modulation + activation.

    z = ((x - mean) * rstd * w[c] + b[c]) * (1 + scale[n, c]) + shift[n, c],    y = act(z)

x is a contiguous (N, C, *spatial) tensor, HW = prod(spatial) (1 when there is none), and group g
of sample n is the contiguous run of M = (C / G) * HW elements starting at (n * C + g * C/G) * HW.
All math is fp32; weight/bias/scale/shift may have any float dtype (they are loaded and cast).

Forward (``gn_fwd_kernel``, one program per (n, g)):
  pass 1  statistics over the group's flattened M elements in BLOCK tiles. Each tile's count, mean
          and centred sum of squares are merged into running ones (Chan et al.'s parallel Welford
          update), so x is read once for the statistics and the variance has no sum-of-squares
          cancellation (|mean| >> std stays accurate).
  pass 2  per channel block the folded coefficients a = rstd w (1 + s), c = b (1 + s) + t, then
          y = act((x - mean) a + c) over a [BLOCK_C, BLOCK_HW] tile (channels x spatial), so the
          per-channel parameters are loaded once per channel, not gathered per element, and small
          HW (even HW = 1) still fills the tile with several channels.
Backward (``gn_bwd_kernel``, one program per (n, g)):
  pass 1  recompute xhat = (x - mean) rstd and z, gz = gy act'(z); per-channel sums
          S1 = sum gz, S2 = sum gz xhat (written to fp32 (N, C) buffers) and the group sums
          m1 = sum_c a_c S1_c / M, m2 = sum_c a_c S2_c / M with a_c = w (1 + s).
  pass 2  (only when x needs a gradient) gx = rstd (a_c gz - m1 - xhat m2), gz recomputed.
  The parameter gradients follow from S1, S2 with tiny torch ops on (N, C) tensors:
  g_shift = S1, g_scale = w S2 + b S1, g_bias = sum_n (1 + s) S1, g_weight = sum_n (1 + s) S2.

Split forward (``gn_stats_kernel`` + torch merge + ``gn_apply_kernel``): when N * G programs would
leave most SMs of a GPU idle and the groups are large, each group is cut into SPLIT chunks of whole
BLOCK tiles; program (group, k) writes its chunk's (count, mean, M2), the chunks are merged with
Chan's formula on the tiny (N * G, SPLIT) tensor by torch, and the output pass runs over the same
chunks in flattened tiles (per-element channel index i // HW, the per-channel parameters gathered).

Limits: the backward has no split (one program per group: N * G programs; with few samples and huge
groups a large GPU is under-filled). Tile sizes and the split are chosen by heuristics, not
autotuned. Counts are fp32 (exact up to 2^24 elements per group).
"""
import torch
import triton
import triton.language as tl

ACT_IDENTITY = 0
ACT_SILU = 1
ACT_GELU = 2

_MAX_BLOCK = 4096  # elements per tile (statistics pass and [BLOCK_C, BLOCK_HW] tiles)


# ------------------------------------------------------------------------------------ helpers
@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        y = z * tl.sigmoid(z)
    elif ACT == 2:
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    else:
        y = z
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """d act / dz (only called for ACT 1 and 2)."""
    if ACT == 1:
        sg = tl.sigmoid(z)
        d = sg * (1.0 + z * (1.0 - sg))
    else:
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        d = cdf + z * (0.3989422804014327 * tl.exp(-0.5 * z * z))
    return d


@triton.jit
def _channel_params(w_ptr, b_ptr, s_ptr, t_ptr, c, nc, cmask,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr):
    """fp32 w, b, (1 + s), t of channels c (int64 vector; nc = n * C + c for the (N, C) tensors);
    the identity values where a tensor is absent."""
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cmask, other=1.0).to(tl.float32)
    else:
        w = tl.full(c.shape, 1.0, tl.float32)
    if HAS_B:
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(c.shape, tl.float32)
    if HAS_S:
        s1 = 1.0 + tl.load(s_ptr + nc, mask=cmask, other=0.0).to(tl.float32)
    else:
        s1 = tl.full(c.shape, 1.0, tl.float32)
    if HAS_T:
        t = tl.load(t_ptr + nc, mask=cmask, other=0.0).to(tl.float32)
    else:
        t = tl.zeros(c.shape, tl.float32)
    return w, b, s1, t


@triton.jit
def _chunk_stats(xb, start, end, BLOCK: tl.constexpr):
    """(count, mean, centred sum of squares) of xb[start:end] in fp32: BLOCK tiles, each tile's
    mean and centred M2 merged into the running ones with Chan et al.'s parallel update."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([], tl.float32)
    mean = tl.zeros([], tl.float32)
    m2 = tl.zeros([], tl.float32)
    for i in range(start, end, BLOCK):
        idx = i + offs
        mask = idx < end
        xv = tl.load(xb + idx, mask=mask, other=0.0).to(tl.float32)
        nb = tl.minimum(end - i, BLOCK).to(tl.float32)
        tmean = tl.sum(xv, axis=0) / nb
        d = tl.where(mask, xv - tmean, 0.0)
        tm2 = tl.sum(d * d, axis=0)
        tot = cnt + nb
        delta = tmean - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + tm2 + delta * delta * (cnt * (nb / tot))
        cnt = tot
    return cnt, mean, m2


# ------------------------------------------------------------------------------------ kernels
@triton.jit
def gn_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, s_ptr, t_ptr, mean_ptr, rstd_ptr,
                  C, HW, G, CPG, eps,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr,
                  ACT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # = n * G + g
    n = pid // G
    g = pid - n * G
    M = CPG * HW
    c_first = g * CPG                             # first channel of the group
    base = (n * C + c_first) * HW                 # the group is x[base : base + M]

    # pass 1: statistics, tile by tile, merged with Chan's parallel update
    cnt, mean, m2 = _chunk_stats(x_ptr + base, 0, M, BLOCK)
    var = tl.maximum(m2 / cnt, 0.0)
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)

    # pass 2: y = act((x - mean) * a + c) over [BLOCK_C, BLOCK_HW] tiles
    cc = tl.arange(0, BLOCK_C)
    hh = tl.arange(0, BLOCK_HW)
    for c0 in range(0, CPG, BLOCK_C):
        cl = c0 + cc                               # channel within the group
        cmask = cl < CPG
        c = (c_first + cl).to(tl.int64)
        w, b, s1, t = _channel_params(w_ptr, b_ptr, s_ptr, t_ptr, c, n * C + c, cmask,
                                      HAS_W, HAS_B, HAS_S, HAS_T)
        a = (rstd * w * s1)[:, None]
        sh = (b * s1 + t)[:, None]
        row = base + cl.to(tl.int64)[:, None] * HW
        for h0 in range(0, HW, BLOCK_HW):
            h = h0 + hh
            mask = cmask[:, None] & (h < HW)[None, :]
            ptr = row + h[None, :]
            xv = tl.load(x_ptr + ptr, mask=mask, other=0.0).to(tl.float32)
            y = _act((xv - mean) * a + sh, ACT)
            tl.store(y_ptr + ptr, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_stats_kernel(x_ptr, part_ptr, C, HW, G, CPG, CHUNK, SPLIT, BLOCK: tl.constexpr):
    """Split statistics: program (group, k) writes (count, mean, M2) of the group's elements
    [k * CHUNK, (k + 1) * CHUNK) to part[(group * SPLIT + k) * 3 : +3]."""
    pid = tl.program_id(0).to(tl.int64)          # = (n * G + g) * SPLIT + k
    grp = pid // SPLIT
    k = pid - grp * SPLIT
    n = grp // G
    g = grp - n * G
    M = CPG * HW
    base = (n * C + g * CPG) * HW
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, M)
    cnt, mean, m2 = _chunk_stats(x_ptr + base, start, end, BLOCK)
    tl.store(part_ptr + pid * 3, cnt)
    tl.store(part_ptr + pid * 3 + 1, mean)
    tl.store(part_ptr + pid * 3 + 2, m2)


@triton.jit
def gn_apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, s_ptr, t_ptr, mean_ptr, rstd_ptr, C, HW, G, CPG, CHUNK, SPLIT,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr,
                    ACT: tl.constexpr, BLOCK: tl.constexpr):
    """Split output pass: program (group, k) writes y over the group's elements
    [k * CHUNK, (k + 1) * CHUNK), flattened BLOCK tiles, channel of element i = i // HW."""
    pid = tl.program_id(0).to(tl.int64)
    grp = pid // SPLIT
    k = pid - grp * SPLIT
    n = grp // G
    g = grp - n * G
    M = CPG * HW
    c_first = g * CPG
    base = (n * C + c_first) * HW
    mean = tl.load(mean_ptr + grp)
    rstd = tl.load(rstd_ptr + grp)
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, M)
    offs = tl.arange(0, BLOCK)
    for i in range(start, end, BLOCK):
        idx = i + offs
        mask = idx < end
        c = c_first + idx // HW
        w, b, s1, t = _channel_params(w_ptr, b_ptr, s_ptr, t_ptr, c, n * C + c, mask, HAS_W, HAS_B, HAS_S, HAS_T)
        xv = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        y = _act((xv - mean) * (rstd * w * s1) + (b * s1 + t), ACT)
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_bwd_kernel(gy_ptr, x_ptr, gx_ptr, w_ptr, b_ptr, s_ptr, t_ptr, mean_ptr, rstd_ptr, s1_ptr, s2_ptr,
                  C, HW, G, CPG, inv_m,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr,
                  ACT: tl.constexpr, NEED_X: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # = n * G + g
    n = pid // G
    g = pid - n * G
    c_first = g * CPG
    base = (n * C + c_first) * HW
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    cc = tl.arange(0, BLOCK_C)
    hh = tl.arange(0, BLOCK_HW)

    # pass 1: per-channel S1 = sum gz, S2 = sum gz * xhat; group sums of a * S1, a * S2
    g1 = tl.zeros([], tl.float32)
    g2 = tl.zeros([], tl.float32)
    for c0 in range(0, CPG, BLOCK_C):
        cl = c0 + cc
        cmask = cl < CPG
        c = (c_first + cl).to(tl.int64)
        nc = n * C + c
        w, b, s1, t = _channel_params(w_ptr, b_ptr, s_ptr, t_ptr, c, nc, cmask, HAS_W, HAS_B, HAS_S, HAS_T)
        a = w * s1                                  # d z / d xhat
        sh = b * s1 + t
        row = base + cl.to(tl.int64)[:, None] * HW
        acc1 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
        acc2 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
        for h0 in range(0, HW, BLOCK_HW):
            h = h0 + hh
            mask = cmask[:, None] & (h < HW)[None, :]
            ptr = row + h[None, :]
            xhat = (tl.load(x_ptr + ptr, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
            gz = tl.load(gy_ptr + ptr, mask=mask, other=0.0).to(tl.float32)
            if ACT != 0:
                gz = gz * _act_grad(xhat * a[:, None] + sh[:, None], ACT)
            gz = tl.where(mask, gz, 0.0)
            acc1 += gz
            acc2 += gz * xhat
        cs1 = tl.sum(acc1, axis=1)
        cs2 = tl.sum(acc2, axis=1)
        tl.store(s1_ptr + nc, cs1, mask=cmask)
        tl.store(s2_ptr + nc, cs2, mask=cmask)
        g1 += tl.sum(tl.where(cmask, a * cs1, 0.0), axis=0)
        g2 += tl.sum(tl.where(cmask, a * cs2, 0.0), axis=0)

    # pass 2: gx = rstd * (a * gz - mean_g(a gz) - xhat * mean_g(a gz xhat))
    if NEED_X:
        m1 = g1 * inv_m
        m2 = g2 * inv_m
        for c0 in range(0, CPG, BLOCK_C):
            cl = c0 + cc
            cmask = cl < CPG
            c = (c_first + cl).to(tl.int64)
            w, b, s1, t = _channel_params(w_ptr, b_ptr, s_ptr, t_ptr, c, n * C + c, cmask,
                                          HAS_W, HAS_B, HAS_S, HAS_T)
            a = (w * s1)[:, None]
            sh = (b * s1 + t)[:, None]
            row = base + cl.to(tl.int64)[:, None] * HW
            for h0 in range(0, HW, BLOCK_HW):
                h = h0 + hh
                mask = cmask[:, None] & (h < HW)[None, :]
                ptr = row + h[None, :]
                xhat = (tl.load(x_ptr + ptr, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
                gz = tl.load(gy_ptr + ptr, mask=mask, other=0.0).to(tl.float32)
                if ACT != 0:
                    gz = gz * _act_grad(xhat * a + sh, ACT)
                gx = rstd * (a * gz - m1 - xhat * m2)
                tl.store(gx_ptr + ptr, gx.to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------- launchers
def _launch(kernel, grid, *args, **kw):
    from torch.library import wrap_triton

    return wrap_triton(kernel)[grid](*args, **kw)


def _tiles(cpg: int, hw: int, max_block: int = _MAX_BLOCK) -> tuple[int, int, int]:
    """(BLOCK, BLOCK_C, BLOCK_HW): the statistics tile over the group's M = cpg * hw elements, and
    the [channels, spatial] tile of the per-channel passes, both at most max_block elements."""
    m = cpg * hw
    block = min(triton.next_power_of_2(max(m, 1)), max_block)
    block_hw = min(triton.next_power_of_2(max(hw, 1)), max_block)
    block_c = max(1, min(triton.next_power_of_2(max(cpg, 1)), max_block // block_hw))
    return block, block_c, block_hw


def _num_warps(block: int) -> int:
    return 8 if block >= 2048 else (4 if block >= 256 else 2)


def _dims(x: torch.Tensor, num_groups: int) -> tuple[int, int, int, int]:
    if x.dim() < 2:
        raise ValueError(f"fastgen.group_norm: x must have shape (N, C, *spatial), got {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"fastgen.group_norm: C = {c} is not divisible by num_groups = {num_groups}")
    hw = 1
    for s in x.shape[2:]:
        hw *= s
    return n, c, hw, c // num_groups


def _opt(t):
    return None if t is None else t.contiguous()


def _auto_split(x: torch.Tensor, groups: int, m: int, block: int) -> int:
    """Programs per group for the forward: 1 (one fused kernel) unless the N * G group programs
    would leave most of a GPU's SMs idle and the groups are large enough to share out."""
    if not x.is_cuda or m < 8 * block:
        return 1
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    if groups >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, groups), m // (4 * block)))


def group_norm_fwd(x, num_groups, weight, bias, eps, act, scale, shift, *, max_block: int = _MAX_BLOCK,
                   split: int | None = None):
    """y (x's dtype and shape, contiguous), mean (N, G) fp32, rstd (N, G) fp32.

    ``split``: programs per group (None: automatic). 1 runs the fused one-program-per-group kernel;
    more run a split statistics kernel, a tiny torch merge of the partial (count, mean, M2) and a
    split output kernel (for few, large groups on a big GPU)."""
    G = int(num_groups)
    n, c, hw, cpg = _dims(x, G)
    x = x.contiguous()
    weight, bias, scale, shift = _opt(weight), _opt(bias), _opt(scale), _opt(shift)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    mean = torch.empty((n, G), dtype=torch.float32, device=x.device)
    rstd = torch.empty((n, G), dtype=torch.float32, device=x.device)
    if n == 0:
        return y, mean, rstd
    if hw == 0:  # empty groups: nothing to write in y; statistics of an empty set
        mean.zero_()
        rstd.fill_(1.0 / float(eps) ** 0.5 if eps > 0 else float("inf"))
        return y, mean, rstd
    m = cpg * hw
    block, block_c, block_hw = _tiles(cpg, hw, max_block)
    params = (weight if weight is not None else x, bias if bias is not None else x,
              scale if scale is not None else x, shift if shift is not None else x)
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_S=scale is not None,
                 HAS_T=shift is not None, ACT=int(act))
    nsplit = _auto_split(x, n * G, m, block) if split is None else max(1, int(split))
    chunk = triton.cdiv(triton.cdiv(m, nsplit), block) * block  # whole tiles per chunk
    nsplit = triton.cdiv(m, chunk)
    if nsplit == 1:
        _launch(gn_fwd_kernel, (n * G,), x, y, *params, mean, rstd, c, hw, G, cpg, float(eps), **flags,
                BLOCK=block, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=_num_warps(block))
        return y, mean, rstd
    part = torch.empty((n * G, nsplit, 3), dtype=torch.float32, device=x.device)
    _launch(gn_stats_kernel, (n * G * nsplit,), x, part, c, hw, G, cpg, chunk, nsplit,
            BLOCK=block, num_warps=_num_warps(block))
    cnt, mu, m2 = part.unbind(-1)                                   # (N * G, SPLIT) each
    tot = cnt.sum(1)
    gmean = (cnt * mu).sum(1) / tot
    gm2 = m2.sum(1) + (cnt * (mu - gmean[:, None]).square()).sum(1)  # Chan merge of the chunks
    mean.copy_(gmean.view(n, G))
    rstd.copy_(torch.rsqrt((gm2 / tot).clamp_min(0) + float(eps)).view(n, G))
    _launch(gn_apply_kernel, (n * G * nsplit,), x, y, *params, mean, rstd, c, hw, G, cpg, chunk, nsplit,
            **flags, BLOCK=block, num_warps=_num_warps(block))
    return y, mean, rstd


def group_norm_bwd(grad_y, x, mean, rstd, num_groups, weight, bias, act, scale, shift, needs,
                   *, max_block: int = _MAX_BLOCK):
    """needs = (x, weight, bias, scale, shift) booleans; returns (gx, gw, gb, gscale, gshift) with
    None where not needed; each grad in its input's dtype and shape; fp32 accumulation."""
    need_x, need_w, need_b, need_s, need_t = (bool(v) for v in needs)
    # an absent (None) input has no gradient, whatever ``needs`` says
    need_w, need_b = need_w and weight is not None, need_b and bias is not None
    need_s, need_t = need_s and scale is not None, need_t and shift is not None
    G = int(num_groups)
    n, c, hw, cpg = _dims(x, G)
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    mean = mean.contiguous().float()
    rstd = rstd.contiguous().float()
    weight, bias, scale, shift = _opt(weight), _opt(bias), _opt(scale), _opt(shift)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
    s1 = torch.zeros((n, c), dtype=torch.float32, device=x.device)   # sum gz        per (n, c)
    s2 = torch.zeros((n, c), dtype=torch.float32, device=x.device)   # sum gz * xhat per (n, c)
    if n > 0 and hw > 0 and (need_x or need_w or need_b or need_s or need_t):
        _, block_c, block_hw = _tiles(cpg, hw, max_block)
        _launch(gn_bwd_kernel, (n * G,), grad_y, x, gx if gx is not None else x,
                weight if weight is not None else x, bias if bias is not None else x,
                scale if scale is not None else x, shift if shift is not None else x, mean, rstd, s1, s2,
                c, hw, G, cpg, 1.0 / (cpg * hw),
                HAS_W=weight is not None, HAS_B=bias is not None, HAS_S=scale is not None,
                HAS_T=shift is not None, ACT=int(act), NEED_X=need_x, BLOCK_C=block_c, BLOCK_HW=block_hw,
                num_warps=_num_warps(block_c * block_hw))
    elif need_x:
        gx.zero_()
    one_s = 1.0 + scale.float() if scale is not None else None        # (N, C)
    gw = gb = gs = gt = None
    if need_w:
        gw = (s2 * one_s if one_s is not None else s2).sum(0).to(weight.dtype)
    if need_b:
        gb = (s1 * one_s if one_s is not None else s1).sum(0).to(bias.dtype)
    if need_s:
        gs = s2 * weight.float() if weight is not None else s2.clone()
        if bias is not None:
            gs = gs + s1 * bias.float()
        gs = gs.to(scale.dtype)
    if need_t:
        gt = s1.to(shift.dtype)
    return gx, gw, gb, gs, gt
