"""Triton kernels of grad_norm_penalty (fastgen/ops/grad_penalty.py).

g is read as (N, M) rows in memory order. The forward writes per-(row, chunk) partial sums of
squares (fp32 within a chunk, fp64 when the chunks are added: deterministic, no atomics); the
backward scales each row by its coefficient ``u_n k_n``.
"""
import torch
import triton
import triton.language as tl

_BLOCK = 1024
_CHUNK = 16 * _BLOCK


@triton.jit
def _sq_kernel(g_ptr, part_ptr, M, P, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, CHUNK, BLOCK):
        j = c * CHUNK + start + tl.arange(0, BLOCK)
        v = tl.load(g_ptr + n * M + j, mask=j < M, other=0.0).to(tl.float32)
        acc += v * v
    tl.store(part_ptr + n * P + c, tl.sum(acc, axis=0))


@triton.jit
def _scale_kernel(g_ptr, coef_ptr, out_ptr, M, numel, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < numel
    k = tl.load(coef_ptr + i // M, mask=m, other=0.0)
    v = tl.load(g_ptr + i, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + i, (k * v).to(out_ptr.dtype.element_ty), mask=m)


def norm_penalty_forward(g: torch.Tensor, center: float, squared: bool):
    n = g.shape[0]
    m = g.numel() // n if n else 0
    p = max(1, triton.cdiv(m, _CHUNK))
    part = torch.zeros((n, p), dtype=torch.float32, device=g.device)
    if n and m:
        _sq_kernel[(n, p)](g, part, m, p, BLOCK=_BLOCK, CHUNK=_CHUNK)
    sq = part.double().sum(dim=1)
    norm = sq.sqrt()
    pen = sq if squared else (norm - center).square()
    return pen.float(), norm.float()


def norm_penalty_backward(gpen: torch.Tensor, g: torch.Tensor, norm: torch.Tensor, center: float, squared: bool):
    if squared:
        k = torch.full_like(norm, 2.0)
    else:
        k = torch.where(norm > 0, 2.0 * (norm - center) / norm.clamp_min(1e-30), torch.zeros_like(norm))
    coef = (gpen * k).contiguous()
    out = torch.empty_like(g)
    n = g.shape[0]
    if g.numel():
        _scale_kernel[(triton.cdiv(g.numel(), _BLOCK),)](g, coef, out, g.numel() // n, g.numel(), BLOCK=_BLOCK)
    return out
