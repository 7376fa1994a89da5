"""Shared test utilities: tolerances by dtype and a comparison with a readable mismatch report."""
from __future__ import annotations

import torch

# (rtol, atol) per dtype for fused-vs-reference comparisons. fp32 is tight: the kernels do the
# same fp32 math as the reference, up to operation order / FMA contraction.
TOL = {
    torch.float32: (1e-6, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, what: str = "", rtol=None, atol=None):
    """torch.testing.assert_close with dtype-based tolerances and a report of the worst element."""
    dtype = dtype or expected.dtype
    r, a = TOL.get(dtype, (1e-6, 1e-6))
    rtol = r if rtol is None else rtol
    atol = a if atol is None else atol
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as exc:
        diff = (actual.double() - expected.double()).abs()
        i = int(diff.flatten().argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), actual.shape)) if actual.dim() else ()
        raise AssertionError(
            f"{what}: max |diff| {diff.max().item():.3e} at {idx}: actual {actual.flatten()[i].item()!r} vs "
            f"expected {expected.flatten()[i].item()!r} (rtol={rtol}, atol={atol}, dtype={dtype})\n{exc}"
        ) from None
