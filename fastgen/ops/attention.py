r"""Scaled dot-product attention with ``torch.nn.functional.scaled_dot_product_attention``'s
semantics, as a custom op whose gradient is itself differentiable (gradient penalties through
self-attention discriminators need the second order, which torch's fused SDPA kernels lack).

    out = softmax(q k^T * scale + mask) v        (scale default 1 / sqrt(head_dim))

``mask``: boolean (True = attend) or additive float, broadcastable to ``(B, H, N_q, N_kv)``. A query
row with every key masked gives 0 (as torch's SDPA), not NaN.

Implementations (see fastgen.backend):
  triton  (CUDA default) FlashAttention-2 kernels of fastgen.kernels.attention: tiled forward with
          online softmax storing the log-sum-exp, recomputing backward (dK/dV and dQ kernels),
          in-kernel dropout; O(N) extra memory in both directions. Ops
          ``torch.ops.fastgen.attention_triton`` / ``attention_backward_triton``. Not for float64,
          head dims > 256 or masks that require grad (those run the reference).
  cpp     (CPU default) the op ``torch.ops.fastgen.attention`` with ``tiled=True`` runs fastgen's own
          tiled flash-attention kernel ``torch.ops.fastgen.attention_tiled`` (csrc/cpu/attention.cpp:
          online softmax over key tiles, fp32 math, O(N) extra memory, any head dims incl. D_v != D,
          strided q/k/v read in place) and ``attention_backward`` its fused FlashAttention-2 style
          backward ``attention_tiled_backward`` (P recomputed from the saved log-sum-exp). lse is in
          ATen's convention (fp32, natural log, (B, H, N_q); +inf for fully masked rows), so either
          backward can consume either forward's (out, lse). float64 runs the torch path.
  torch   on CPU the op runs ATen's fused flash-attention CPU kernel (tiled, online softmax, O(N)
          extra memory; it saves the log-sum-exp) and ``attention_backward`` its fused backward; on
          other devices (and for a value head dim different from the query's) it calls the public
          SDPA and recomputes the forward in the backward.
  Dropout on CPU runs the reference (O(N^2) memory). Every backward op's own autograd takes the
  VJP of :func:`attention_reference`'s first backward (with the same dropout mask), so
  ``create_graph=True`` works (double backward and higher, at reference cost: O(N^2) memory).
  attention_reference — the oracle: explicit softmax in fp32 (float64 stays float64); also the
          path for masks that require grad.

CPU dispatch rule (auto): the tiled kernels for float32 / float16 / bfloat16 whenever the extension
is built, ATen's for float64. Measured on a 2-core Zen5 (AVX-512), medians of interleaved runs
(benchmarks/bench_attention_cpu_tiled.py; docs/performance.md has the table): the tiled forward
was 1.9-2.7x and the tiled backward 1.5-2.5x faster than ATen's flash kernels at every shape
tried, 1 and 2 threads -- diffusion U-Net and SAGAN self-attention (N = 64 .. 4096, D = 32 .. 128),
cross-attention (N_kv = 16, 77), tiny shapes (N < 40) -- and more for float16 (ATen's CPU kernel
has no fast float16 path). No shape class lost, so the rule has no size threshold;
``impl="torch"`` still forces ATen.

Dropout masks come from fastgen's counter-based Philox stream keyed by a 64-bit seed (drawn from
``generator`` per call), so the CPU reference and the GPU kernels drop the same weights for the
same seed (:func:`dropout_keep_mask`).
"""
from __future__ import annotations

import functools
import math
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _extension, backend
from . import _common as C
from . import _philox

OP = "attention"
LAYOUTS = ("bhnd", "bnhd")

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")},
        notes="scaled dot-product attention (SDPA semantics) with a twice-differentiable backward",
        impl_devices={"cpp": ("cpu",)},
    )
)


# ----------------------------------------------------------------------------- reference
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _softmax_probs(q, k, mask, scale, ct):
    """The attention weights P in ``ct`` (fully masked rows all 0), as the reference computes them."""
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(ct)
    m = s.detach().amax(dim=-1, keepdim=True)  # softmax is shift-invariant: no gradient through m
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))  # masked rows: exp(-inf) = 0
    denom = p.sum(dim=-1, keepdim=True)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


def dropout_seed(generator: Optional[torch.Generator] = None) -> int:
    """A 63-bit seed for the dropout stream, drawn from ``generator`` (default: torch's CPU generator)."""
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, device=dev))


def dropout_keep_mask(shape, p: float, seed: int, device=None) -> torch.Tensor:
    """The boolean keep mask (B, H, N_q, N_kv) of the attention kernels' dropout for ``seed``:
    for global row r = (b H + h) N_q + i and column quad c = j // 4, word j % 4 of
    Philox4x32-10(counter (c, r_lo, r_hi, 0), key seed) mapped to u in (0, 1]; keep = u >= p."""
    B, H, Nq, Nk = shape
    rows = torch.arange(B * H * Nq, dtype=torch.int64, device=device)
    quads = torch.arange((Nk + 3) // 4, dtype=torch.int64, device=device)
    R, Q = rows.numel(), quads.numel()
    ctr = torch.stack([quads.expand(R, Q), (rows & 0xFFFFFFFF)[:, None].expand(R, Q),
                       (rows >> 32)[:, None].expand(R, Q), torch.zeros(R, Q, dtype=torch.int64, device=device)], -1)
    key = torch.tensor(_philox.split64(seed), dtype=torch.int64, device=device)
    u = _philox.to_unit(_philox.philox4x32_10(ctr, key)).reshape(R, Q * 4)[:, :Nk]
    return (u >= p).reshape(B, H, Nq, Nk)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                        attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                        generator: Optional[torch.Generator] = None, seed: Optional[int] = None) -> torch.Tensor:
    """softmax(q k^T scale + mask) v on ``(B, H, N, D)`` tensors, explicit, differentiable to any order.

    fp32 math for half inputs; fully masked rows give 0. ``dropout_p`` zeroes attention weights
    with :func:`dropout_keep_mask` for ``seed`` (drawn from ``generator`` when None) and rescales
    the kept ones by 1 / (1 - p), exactly as the kernels do.
    """
    ct = _compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    p = _softmax_probs(q, k, attn_mask, scale, ct)
    if dropout_p > 0:
        keep = dropout_keep_mask(p.shape, dropout_p, dropout_seed(generator) if seed is None else seed, p.device)
        p = p * keep / (1.0 - dropout_p)
    return torch.matmul(p, v.to(ct)).to(q.dtype)


# ----------------------------------------------------------------------------- custom ops
_aten = torch.ops.aten


def _unit_stride(*ts: torch.Tensor) -> tuple:
    """ATen's CPU flash kernels read rows as unit-stride: a strided head dim gives garbage (NaN)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in ts)


def _flash_cpu(q: torch.Tensor, v: torch.Tensor) -> bool:
    """ATen's flash CPU kernel runs (CPU tensors, value head dim = query head dim); else the public SDPA."""
    return q.device.type == "cpu" and v.shape[-1] == q.shape[-1]


def _register_tiled() -> bool:
    """Fake (meta) kernel of the C++ op ``fastgen::attention_tiled``, when the extension has it."""
    if _extension.load() is None or not hasattr(torch.ops.fastgen, "attention_tiled"):
        return False

    @torch.library.register_fake("fastgen::attention_tiled")
    def _(q, k, v, mask, scale):
        B, H, Nq, _ = q.shape
        return q.new_empty((B, H, Nq, v.shape[-1])), q.new_empty((B, H, Nq), dtype=torch.float32)

    @torch.library.register_fake("fastgen::attention_tiled_backward")
    def _(grad_out, q, k, v, out, lse, mask, scale):
        return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape)

    return True


_HAVE_TILED = _register_tiled()
TILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("fastgen::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                  scale: float, tiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse); ``mask`` additive in q's dtype. lse is empty where the kernel does not give one.
    ``tiled``: fastgen's C++ kernel (CPU, float32/16/bf16; the caller checks), else ATen's."""
    if tiled:
        return torch.ops.fastgen.attention_tiled(q, k, v, mask, scale)
    if _flash_cpu(q, v):
        q, k, v = _unit_stride(q, k, v)
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                      scale=scale)
        return out.contiguous(), lse.contiguous()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.contiguous(), q.new_empty((0,), dtype=torch.float32)


@_attention_op.register_fake
def _(q, k, v, mask, scale, tiled=False):
    B, H, Nq, _ = q.shape
    out = q.new_empty((B, H, Nq, v.shape[-1]))
    if tiled:
        return out, q.new_empty((B, H, Nq), dtype=torch.float32)
    lse = q.new_empty((B, H, Nq), dtype=torch.float32 if q.dtype != torch.float64 else torch.float64) \
        if _flash_cpu(q, v) else q.new_empty((0,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("fastgen::attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, mask: Optional[torch.Tensor],
                           scale: float, tiled: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tiled``: the forward was the tiled kernel; its fused backward runs (any D_v)."""
    if tiled:
        return torch.ops.fastgen.attention_tiled_backward(grad_out, q, k, v, out, lse, mask, scale)
    if _flash_cpu(q, v):  # lse from ATen's forward or the tiled one (same convention)
        q, k, v = _unit_stride(q, k, v)
        gq, gk, gv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.contiguous(), q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
        return gq.contiguous(), gk.contiguous(), gv.contiguous()
    return _math_backward(grad_out, q, k, v, mask, scale)


def _math_backward(grad_out, q, k, v, mask, scale):
    """dq, dk, dv from the recomputed weights (O(N_q N_kv) memory), for where no fused backward runs:
    dV = P^T dO, dS = P (dO V^T - rowsum(dO O)), dQ = scale dS K, dK = scale dS^T Q."""
    ct = _compute_dtype(q.dtype)
    p = _softmax_probs(q, k, mask, scale, ct)
    go = grad_out.to(ct)
    dv = torch.matmul(p.transpose(-1, -2), go)
    dp = torch.matmul(go, v.to(ct).transpose(-1, -2))
    ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, k.to(ct)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(ct)) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, mask, scale, tiled=False):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# Autograd, shared by the op pairs (fastgen::attention[_backward] and their _triton twins). Both take
# extra arguments after ``scale``: ``tiled`` (the torch/cpp pair) or ``dropout_p, seed`` (triton).
def _register_autograd(fwd_name: str, bwd_name: str, has_dropout: bool) -> None:
    bwd_op = getattr(torch.ops.fastgen, bwd_name)

    def setup_fwd(ctx, inputs, output):
        q, k, v, mask, scale, *rest = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.scale, ctx.rest = scale, tuple(rest)
        ctx.mark_non_differentiable(lse)

    def backward_fwd(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        nones = (None,) * (2 + len(ctx.rest))
        if grad_out is None:
            return (None, None, None) + nones
        gq, gk, gv = bwd_op(grad_out, q, k, v, out, lse, mask, ctx.scale, *ctx.rest)
        return (gq, gk, gv) + nones

    def setup_bwd(ctx, inputs, output):
        grad_out, q, k, v, _out, _lse, mask, scale, *rest = inputs
        ctx.save_for_backward(grad_out, q, k, v, mask)
        ctx.scale, ctx.rest = scale, tuple(rest)

    def backward_bwd(ctx, ugq, ugk, ugv):
        """Double backward: the VJP of the reference's first backward (gq, gk, gv)(grad_out, q, k, v)
        with cotangents (ugq, ugk, ugv), same dropout mask. torch.func treats the four inputs as
        independent (plain autograd.grad would also follow paths between them, e.g. grad_out = 2 out
        depends on q, and count those twice), and composes with autograd, so higher orders work."""
        grad_out, q, k, v, mask = ctx.saved_tensors
        nones = (None,) * (4 + len(ctx.rest))
        if all(u is None for u in (ugq, ugk, ugv)) or not any(ctx.needs_input_grad[:4]):
            return (None,) * 4 + nones
        p_drop, seed = (float(ctx.rest[0]), int(ctx.rest[1])) if has_dropout else (0.0, None)
        scale = ctx.scale

        def first(go, q_, k_, v_):
            o, vjp_o = torch.func.vjp(lambda a, b, c: attention_reference(a, b, c, scale=scale, attn_mask=mask,
                                                                          dropout_p=p_drop, seed=seed), q_, k_, v_)
            return vjp_o(go.to(o.dtype))

        firsts, vjp_first = torch.func.vjp(first, grad_out, q, k, v)
        ups = tuple(torch.zeros_like(f) if u is None else u.to(f.dtype) for f, u in zip(firsts, (ugq, ugk, ugv)))
        grads = vjp_first(ups)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])) + nones

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


_register_autograd("attention", "attention_backward", has_dropout=False)


# ----------------------------------------------------------------------------- triton ops
@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton and fastgen.kernels.attention)."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op("fastgen::attention_triton", mutates_args=())
    def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                         scale: float, dropout_p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return K.attention_fwd(q, k, v, mask, scale, dropout_p, seed)

    @triton_op("fastgen::attention_backward_triton", mutates_args=())
    def attention_backward_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  out: torch.Tensor, lse: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                                  dropout_p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return K.attention_bwd(grad_out, q, k, v, out, lse, mask, scale, dropout_p, seed)

    attention_triton.register_fake(lambda q, k, v, mask, scale, p, seed: (
        q.new_empty(q.shape[:3] + v.shape[-1:]), q.new_empty(q.shape[:3], dtype=torch.float32)))
    attention_backward_triton.register_fake(lambda go, q, k, v, out, lse, mask, scale, p, seed: (
        torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device),
        torch.empty(v.shape, dtype=v.dtype, device=v.device)))
    _register_autograd("attention_triton", "attention_backward_triton", has_dropout=True)
    return attention_triton, K.MAX_HEAD_DIM


# ----------------------------------------------------------------------------- public API
def _check_tensors(q, k, v, layout):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fastgen.attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"fastgen.attention: {name} must be 4-D ({layout}: "
                             f"{'(B, H, N, D)' if layout == 'bhnd' else '(B, N, H, D)'}), got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"fastgen.attention: {name} must be float32/float16/bfloat16/float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"fastgen.attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"fastgen.attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _check_shapes(q, k, v, attn_mask, scale, dropout_p):
    """Shapes (in bhnd), mask, scale and dropout."""
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        raise ValueError(f"fastgen.attention: batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1]:
        raise ValueError(f"fastgen.attention: head counts differ: q {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"fastgen.attention: q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"fastgen.attention: k and v sequence lengths differ: {k.shape[2]} vs {v.shape[2]}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale)):
        raise ValueError(f"fastgen.attention: scale must be a finite number or None, got {scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"fastgen.attention: dropout_p must be in [0, 1), got {dropout_p!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"fastgen.attention: attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"fastgen.attention: attn_mask must be bool or floating, got {attn_mask.dtype}")
        if attn_mask.device != q.device:
            raise ValueError(f"fastgen.attention: attn_mask is on {attn_mask.device}, q on {q.device}")
        target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            torch.broadcast_shapes(attn_mask.shape, target)
        except RuntimeError:
            raise ValueError(f"fastgen.attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"(B, H, N_q, N_kv) = {target}") from None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
              attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0, layout: str = "bhnd",
              generator: Optional[torch.Generator] = None, impl: Optional[str] = None) -> torch.Tensor:
    """Scaled dot-product attention, a drop-in for ``F.scaled_dot_product_attention`` that also
    supports double backward (``create_graph=True``).

    Args:
        q: queries ``(B, H, N_q, D)`` (``layout="bhnd"``) or ``(B, N_q, H, D)`` (``"bnhd"``).
        k, v: keys ``(..., N_kv, D)`` and values ``(..., N_kv, D_v)`` in the same layout; ``N_kv``
            may differ from ``N_q`` (cross-attention).
        scale: default ``1 / sqrt(D)``.
        attn_mask: bool (True = attend) or additive float, broadcastable to ``(B, H, N_q, N_kv)``.
        dropout_p: attention-weight dropout; the mask is :func:`dropout_keep_mask` for a seed drawn
            from ``generator`` (in-kernel on the Triton path, the reference on CPU).
        layout: ``"bhnd"`` or ``"bnhd"``; the output has q's layout.
        impl: force ``"cpp"`` (CPU: fastgen's tiled kernel), ``"torch"`` (ATen's flash kernel on CPU,
            SDPA elsewhere) or ``"triton"`` (CUDA; CPU tensors only under ``TRITON_INTERPRET=1``);
            default: see fastgen.backend and the module docstring.

    Returns ``(B, H, N_q, D_v)`` (or ``(B, N_q, H, D_v)``) in q's dtype.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"fastgen.attention: layout must be one of {LAYOUTS}, got {layout!r}")
    _check_tensors(q, k, v, layout)
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    _check_shapes(q, k, v, attn_mask, scale, dropout_p)
    name = backend.resolve(OP, q.device, impl)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    seed = dropout_seed(generator) if dropout_p > 0 else 0
    fused = not (q.shape[2] == 0 or (attn_mask is not None and attn_mask.requires_grad)
                 or (name != "triton" and dropout_p > 0) or (name == "triton" and not _triton_fits(q, v)))
    if k.shape[2] == 0:  # nothing to attend to: 0 (as fully masked rows), still connected to the graph
        out = v.new_zeros(q.shape[:3] + v.shape[-1:]) + 0 * (q.sum() + k.sum() + v.sum())
    elif not fused:
        out = attention_reference(q, k, v, scale=scale, attn_mask=attn_mask, dropout_p=float(dropout_p), seed=seed)
    else:
        mask = attn_mask
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
            else:
                mask = mask.to(q.dtype)
        if name == "triton":
            out = _triton_ops()[0](q, k, v, mask, scale, float(dropout_p), seed)[0]
        else:
            tiled = name == "cpp" and q.dtype in TILED_DTYPES  # float64: ATen (the module's dispatch rule)
            out = torch.ops.fastgen.attention(q, k, v, mask, scale, tiled)[0]
    return out.transpose(1, 2) if layout == "bnhd" else out


def _triton_fits(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels take these inputs (else the reference runs): not float64, head
    dims up to fastgen.kernels.attention.MAX_HEAD_DIM, batch x heads within the grid limit."""
    max_d = _triton_ops()[1]
    return (q.dtype != torch.float64 and max(q.shape[-1], v.shape[-1]) <= max_d
            and q.shape[0] * q.shape[1] <= 65535)
