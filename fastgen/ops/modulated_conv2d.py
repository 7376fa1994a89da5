r"""Resampling and style-modulated convolutions (StyleGAN2), composed from fastgen's
:func:`~fastgen.ops.conv2d.conv2d` / :func:`~fastgen.ops.conv2d.conv_transpose2d` (the library's
convolutions, with every gradient order on its own kernels) and the fused
:func:`~fastgen.ops.upfirdn2d.upfirdn2d`.

``conv2d_resample(x, w, f, up, down, padding)`` is, by definition, "upsample x by zero insertion
(``up``), zero-pad it once (``padding`` plus what centres the FIR filter f), filter with f and
correlate with w (both 'valid'), keep every ``down``-th output": a 3x3 conv with ``up=2`` doubles
the size, with ``down=2`` halves it, and the FIR filter removes the aliasing of the resampling.
It is computed the cheap way round: for ``up`` a transposed convolution at the low resolution and
then the FIR filter (instead of a convolution at the high resolution); for ``down`` the FIR filter
then a strided convolution (only the kept outputs).

``modulated_conv2d(x, weight, styles)`` is StyleGAN2's weight modulation / demodulation:
``w'[n, o, i] = weight[o, i] * styles[n, i] * d[n, o]`` with
``d[n, o] = 1 / sqrt(sum_{i, k} (weight[o, i, k] styles[n, i])^2 + eps)``. Two formulations:
``fused_modconv=False`` scales the input channels (``x * styles``), runs one batched convolution
with the shared weight and scales the output channels by d (on CPU the fastest; in a synthesis
layer the d scale is fused into the epilogue, :func:`~fastgen.ops.modulated_bias_act`);
``fused_modconv=True`` builds the per-sample weights in one fused op
(:func:`~fastgen.ops.modulate_weight.modulate_weight`) and runs one grouped convolution (groups = N).
"""
from __future__ import annotations

from typing import Optional

import torch

from .conv2d import conv2d, conv_transpose2d
from .modulate_weight import modulate_weight
from .upfirdn2d import _pair, filter_size, parse_padding, upfirdn2d


def _conv_pad(x: torch.Tensor, w: torch.Tensor, pad, stride=1, groups: int = 1) -> torch.Tensor:
    px0, px1, py0, py1 = pad
    if px0 == px1 and py0 == py1 and min(pad) >= 0:
        return conv2d(x, w, stride=stride, padding=(py0, px0), groups=groups)
    return conv2d(upfirdn2d(x, None, padding=pad), w, stride=stride, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1, down: int = 1,
                    padding=0, groups: int = 1) -> torch.Tensor:
    """2-D convolution with optional FIR up/down-sampling (see the module docstring).

    Args:
        x: ``(N, C_in, H, W)``. w: ``(C_out, C_in / groups, kh, kw)``.
        f: FIR filter for the resampling (:func:`~fastgen.ops.upfirdn2d.setup_filter`); None with
            up/down > 1 means nearest-style (no filtering).
        up, down: integer factors (not both > 1). padding: int, (px, py) or (px0, px1, py0, py1),
            e.g. ``k // 2`` for a size-preserving (times up / down) layer.
    Returns ``(N, C_out, H up / down, W up / down)`` for ``padding = k // 2`` and even sizes.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ValueError(f"fastgen.conv2d_resample: w must be a (C_out, C_in / groups, kh, kw) tensor, got "
                         f"{getattr(w, 'shape', w)!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"fastgen.conv2d_resample: x must be (N, {w.shape[1] * groups}, H, W) for w of shape "
                         f"{tuple(w.shape)} and groups={groups}, got {tuple(getattr(x, 'shape', ()))}")
    (ux, uy), (dx, dy) = _pair(up, "up", 1), _pair(down, "down", 1)
    if ux != uy or dx != dy:
        raise ValueError("fastgen.conv2d_resample: up and down must be the same along x and y")
    up, down = ux, dx
    if up > 1 and down > 1:
        raise ValueError("fastgen.conv2d_resample: up and down cannot both be > 1")
    px0, px1, py0, py1 = parse_padding(padding)
    kh, kw = w.shape[2:]
    fw, fh = filter_size(f)
    if up > 1:
        # total padding of the upsampled signal: centre f (as upsample2d does) plus the conv's padding
        p = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
        if kh == 1 and kw == 1:  # a 1x1 conv commutes with the zero insertion: convolve at low resolution
            return upfirdn2d(conv2d(x, w, groups=groups), f, up=up, padding=p, gain=up * up)
        # transposed conv = zero insertion (without the trailing zeros) + 'full' correlation with the
        # flipped kernel; the FIR filter's padding takes up the difference to p
        n_out, cin_g = w.shape[0], w.shape[1]
        wt = w.reshape(groups, n_out // groups, cin_g, kh, kw).transpose(1, 2).reshape(groups * cin_g, n_out // groups,
                                                                                           kh, kw)
        y = conv_transpose2d(x, wt.flip([2, 3]), stride=up, groups=groups)
        q = [p[0] - (kw - 1), p[1] + up - kw, p[2] - (kh - 1), p[3] + up - kh]
        return upfirdn2d(y, f, padding=q, gain=up * up)
    if down > 1:
        p = [px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2, py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2]
        if kh == 1 and kw == 1:  # filter + subsample first, then the 1x1 conv on 1/down^2 of the pixels
            return conv2d(upfirdn2d(x, f, down=down, padding=p), w, groups=groups)
        return conv2d(upfirdn2d(x, f, padding=p), w, stride=down, groups=groups)
    return _conv_pad(x, w, (px0, px1, py0, py1), groups=groups)


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``d[n, o] = 1 / sqrt(sum_{i, k} (weight[o, i, k] styles[n, i])^2 + eps)`` as one small matmul:
    ``(styles^2) @ (sum_k weight^2)^T``. weight: ``(O, I, kh, kw)``; styles: ``(N, I)``. Returns ``(N, O)``."""
    wsq = weight.square().sum(dim=[2, 3])  # (O, I)
    return (styles.square() @ wsq.t() + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     up: int = 1, down: int = 1, padding=0, resample_filter: Optional[torch.Tensor] = None,
                     fused_modconv: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution.

    Args:
        x: ``(N, I, H, W)``. weight: ``(O, I, kh, kw)``. styles: ``(N, I)`` per-sample input-channel scales.
        demodulate: normalise each output channel's modulated weights to unit norm.
        up, down, padding, resample_filter: as :func:`conv2d_resample`.
        fused_modconv: per-sample weights + one grouped conv (True) or input/output scaling around one
            batched conv (False, the default: faster on CPU).
    Returns ``(N, O, H', W')``; differentiable (any order) w.r.t. x, weight and styles.
    """
    if weight.dim() != 4 or styles.dim() != 2 or x.dim() != 4:
        raise ValueError(f"fastgen.modulated_conv2d: expected x (N, I, H, W), weight (O, I, kh, kw), styles (N, I); "
                         f"got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(styles.shape)}")
    n, i = x.shape[:2]
    if weight.shape[1] != i or tuple(styles.shape) != (n, i):
        raise ValueError(f"fastgen.modulated_conv2d: styles must be (N, I) = ({n}, {i}) and weight (O, {i}, kh, kw); "
                         f"got styles {tuple(styles.shape)}, weight {tuple(weight.shape)}")
    if not fused_modconv:
        d = demodulation_coefficients(weight, styles, eps) if demodulate else None
        y = conv2d_resample(x * styles.to(x.dtype).reshape(n, i, 1, 1), weight.to(x.dtype), resample_filter, up, down,
                            padding)
        return y if d is None else y * d.to(y.dtype).reshape(n, -1, 1, 1)
    w = modulate_weight(weight.to(x.dtype), styles, demodulate, eps)  # (N, O, I, kh, kw) in one fused pass
    y = conv2d_resample(x.reshape(1, n * i, *x.shape[2:]), w.reshape(-1, i, *weight.shape[2:]),
                        resample_filter, up, down, padding, groups=n)
    return y.reshape(n, -1, *y.shape[2:])
