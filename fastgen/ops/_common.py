"""Helpers shared by the op files: argument checks with clear messages, layouts, tolerances."""
from __future__ import annotations

import math
from numbers import Real

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_tensor(t, name: str, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgen.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float_dtype(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastgen.{op}: {name} has dtype {t.dtype}; supported are float32, float16 and bfloat16"
        )


def check_same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str, op: str) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"fastgen.{op}: {name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"fastgen.{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"fastgen.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_real(v, name: str, op: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"fastgen.{op}: {name} must be a real number, got {type(v).__name__}")
    f = float(v)
    bad = math.isnan(f)
    if lo is not None:
        bad = bad or (f <= lo if lo_open else f < lo)
    if hi is not None:
        bad = bad or f > hi
    if bad:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}]"
        raise ValueError(f"fastgen.{op}: {name} must be in {lo_s}, {hi_s}; got {v!r}")
    return f


def empty_output_like(x: torch.Tensor) -> torch.Tensor:
    """Mirror of csrc/ops_common.h empty_output_like: x's dense layout if the batch dim is
    outermost in memory (contiguous, channels_last, ...), contiguous otherwise."""
    out = torch.empty_like(x)
    if batch_outer_dense(out):
        return out
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def batch_outer_dense(t: torch.Tensor) -> bool:
    """True if ``t`` (assumed dense, e.g. from empty_like) keeps the batch dim outermost."""
    if t.dim() == 0 or t.numel() == 0 or t.shape[0] == 1:
        return True
    return t.stride(0) * t.shape[0] == t.numel()


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (any permutation of a contiguous layout)."""
    if t.numel() <= 1:
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for s, n in dims:
        if s != expected:
            return False
        expected *= n
    return True


def layout_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``ref``'s strides (copied only if needed)."""
    if t.stride() == ref.stride():
        return t
    r = torch.empty_like(ref)
    r.copy_(t)
    return r


def _byte_span(t: torch.Tensor) -> tuple[int, int] | None:
    """[first, last+1) byte addresses ``t`` can touch (None if empty)."""
    if t.numel() == 0:
        return None
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        if stride >= 0:
            hi += (size - 1) * stride
        else:
            lo += (size - 1) * stride
    start = t.data_ptr()
    return start + lo * t.element_size(), start + (hi + 1) * t.element_size()


def check_out_overlap(outs: dict, ins: dict, op: str) -> None:
    """out= tensors must not overlap each other, nor partially overlap an input (writing into the
    identical tensor is fine for elementwise ops). Conservative: compares byte ranges, so two
    interleaved views of one buffer count as overlapping."""
    spans = {k: _byte_span(v) for k, v in outs.items()}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = spans[a], spans[b]
            if sa and sb and sa[0] < sb[1] and sb[0] < sa[1]:
                raise RuntimeError(f"fastgen.{op}: {a} and {b} overlap in memory")
    for k, o in outs.items():
        so = spans[k]
        for name, t in ins.items():
            st = _byte_span(t) if t is not None else None
            if not (so and st and so[0] < st[1] and st[0] < so[1]):
                continue
            same = o.data_ptr() == t.data_ptr() and o.stride() == t.stride() and o.shape == t.shape
            if not same:
                raise RuntimeError(f"fastgen.{op}: {k} partially overlaps {name} in memory (writing over an "
                                   "input is only allowed into the identical tensor)")


def triton_kernels(op: str):
    """The module fastgen.kernels.<op> (Triton kernels), or a BackendUnavailableError saying why
    it cannot be imported (no triton, a broken install)."""
    import importlib

    from .. import backend

    try:
        return importlib.import_module(f"fastgen.kernels.{op}")
    except ImportError as exc:
        raise backend.BackendUnavailableError(
            f"fastgen.{op}: impl='triton' is not available: the Triton kernels could not be imported "
            f"({type(exc).__name__}: {exc})") from exc
