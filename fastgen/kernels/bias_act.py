"""Triton kernel of bias_act (fastgen/ops/bias_act.py) and of its order-1 / order-2 gradients.

One program handles BLOCK consecutive elements of x in its memory order (NCHW-contiguous, or
channels_last with the bias along channels: then inner = 1); element i has bias channel
(i // inner) % C. fp32 math, storage dtype in and out.

    MODE 0   y   = clamp(act(z) gain)                      z = x + b
    MODE 1   out = g gain act'(z) m                        m = [|act(z) gain| <= clamp]
    MODE 2   out = g g2 gain act''(z) m
Activation codes as csrc/cpu/bias_act.h.
"""
import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    """act(z), act'(z) or act''(z) (ORDER 0, 1, 2)."""
    pos = z > 0.0
    one = tl.full(z.shape, 1.0, tl.float32)
    zero = tl.zeros(z.shape, tl.float32)
    if ACT == 0:  # linear
        r = z if ORDER == 0 else (one if ORDER == 1 else zero)
    elif ACT == 1:  # relu
        r = tl.where(pos, z, 0.0) if ORDER == 0 else (tl.where(pos, 1.0, 0.0) if ORDER == 1 else zero)
    elif ACT == 2:  # lrelu
        r = tl.where(pos, z, alpha * z) if ORDER == 0 else (tl.where(pos, 1.0, alpha) * one if ORDER == 1 else zero)
    elif ACT == 3:  # tanh = 2 sigmoid(2z) - 1, odd polynomial near 0 (no cancellation)
        z2 = z * z
        small = z * (1.0 + z2 * (-0.333333333 + z2 * (0.133333333 + z2 * (-0.0539682540 + z2 * 0.0218694885))))
        t = tl.where(tl.abs(z) < 0.125, small, 2.0 * _sigmoid(2.0 * z) - 1.0)
        r = t if ORDER == 0 else (1.0 - t * t if ORDER == 1 else -2.0 * t * (1.0 - t * t))
    elif ACT == 4:  # sigmoid
        s = _sigmoid(z)
        r = s if ORDER == 0 else (s * (1.0 - s) if ORDER == 1 else s * (1.0 - s) * (1.0 - 2.0 * s))
    elif ACT == 5 or ACT == 6:  # elu, selu
        lam = 1.0507009873554805 if ACT == 6 else 1.0
        al = 1.6732632423543772 if ACT == 6 else alpha
        e = tl.exp(tl.minimum(z, 0.0))
        if ORDER == 0:
            r = lam * tl.where(pos, z, al * (e - 1.0))
        elif ORDER == 1:
            r = lam * tl.where(pos, 1.0, al * e)
        else:
            r = tl.where(pos, 0.0, lam * al * e)
    elif ACT == 7:  # silu
        s = _sigmoid(z)
        if ORDER == 0:
            r = z * s
        elif ORDER == 1:
            r = s * (1.0 + z * (1.0 - s))
        else:
            r = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:  # gelu (erf)
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        phi = 0.3989422804014327 * tl.exp(-0.5 * z * z)
        r = z * cdf if ORDER == 0 else (cdf + z * phi if ORDER == 1 else phi * (2.0 - z * z))
    return r


@triton.jit
def bias_act_kernel(x_ptr, b_ptr, g_ptr, g2_ptr, out_ptr, numel, C, inner, alpha, gain, clamp,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + (offs // inner) % C, mask=mask, other=0.0).to(tl.float32)
    y = _act(z, alpha, ACT, 0) * gain
    if MODE == 0:
        out = tl.where(clamp >= 0.0, tl.minimum(tl.maximum(y, -clamp), clamp), y)
    else:
        k = tl.where((clamp < 0.0) | (tl.abs(y) <= clamp), gain, 0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if MODE == 1:
            out = g * k * _act(z, alpha, ACT, 1)
        else:
            g2 = tl.load(g2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            out = g * g2 * k * _act(z, alpha, ACT, 2)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def bias_act(x, b, g, g2, dim, act, alpha, gain, clamp, mode, memory_format, block: int = _BLOCK):
    """Launch one pass (mode 0 forward, 1 / 2 gradient orders); returns the output in ``memory_format``."""
    from torch.library import wrap_triton

    x = x.contiguous(memory_format=memory_format)
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    if memory_format == torch.channels_last:
        c, inner = x.shape[1], 1
    else:
        c = x.shape[dim]
        inner = 1
        for s in x.shape[dim + 1:]:
            inner *= s
    bf = b.contiguous() if b is not None else x
    gc = g.contiguous(memory_format=memory_format) if g is not None else x
    g2c = g2.contiguous(memory_format=memory_format) if g2 is not None else x
    wrap_triton(bias_act_kernel)[(triton.cdiv(numel, block),)](
        x, bf, gc, g2c, out, numel, c, inner, float(alpha), float(gain), float(clamp),
        HAS_BIAS=b is not None, ACT=act, MODE=mode, BLOCK=block)
    return out
