r"""upfirdn2d: upsample by zero insertion, pad (or crop), FIR-filter, downsample — StyleGAN2's
resampling primitive (blur, 2x up, 2x down), as one op.

For x of shape (N, C, H, W), a filter f (2-D (fh, fw), or 1-D (ft,) meaning the separable filter
f[:, None] * f[None, :]), integer factors up = (ux, uy), down = (dx, dy) and padding
(px0, px1, py0, py1) (negative values crop):

    1. upsample: u[i * uy, j * ux] = x[i, j], all other u entries 0     (H uy, W ux)
    2. pad:      p = u padded with py0/py1 rows and px0/px1 columns of zeros (cropped if negative)
    3. filter:   q = p convolved ("valid") with f * gain  (a true convolution: f is flipped, unless
                 flip_filter=True, which correlates)                       (a 1-D f: gain ** 0.5 per axis)
    4. down:     y[i, j] = q[i * dy, j * dx]

Output size: H_out = (H uy + py0 + py1 - fh) // dy + 1 (likewise W_out), which must be >= 1.

The op is linear in x, so its gradient is upfirdn2d again (up and down swapped, the filter flipped,
padding mirrored): every order of autograd stays on the same kernels. The filter is a fixed
buffer, not differentiated.
"""
from __future__ import annotations

import functools
import math
from numbers import Integral, Real
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import _extension, backend
from . import _common as C

OP = "upfirdn2d"

IntOrPair = Union[int, Sequence[int]]

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="StyleGAN2's upsample + pad + FIR filter + downsample (blur, 2x up/down), every order of autograd",
    )
)


# ----------------------------------------------------------------------------- argument parsing
def _pair(v, name: str, lo: int) -> tuple[int, int]:
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, Integral) and not isinstance(e, bool)
                                                              for e in v):
        v = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"fastgen.{OP}: {name} must be an int or a pair (x, y) of ints, got {v!r}")
    if min(v) < lo:
        raise ValueError(f"fastgen.{OP}: {name} must be >= {lo}, got {v!r}")
    return v


def parse_padding(padding) -> tuple[int, int, int, int]:
    """int p -> (p, p, p, p); (px, py) -> (px, px, py, py); (px0, px1, py0, py1) as is."""
    ok = lambda e: isinstance(e, Integral) and not isinstance(e, bool)  # noqa: E731
    if ok(padding):
        p = int(padding)
        return p, p, p, p
    if isinstance(padding, (tuple, list)) and all(ok(e) for e in padding):
        if len(padding) == 2:
            return int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1])
        if len(padding) == 4:
            return tuple(int(e) for e in padding)  # type: ignore[return-value]
    raise TypeError(f"fastgen.{OP}: padding must be an int, (px, py) or (px0, px1, py0, py1) of ints, got "
                    f"{padding!r}")


def filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    """(fw, fh) of a filter (None: the 1x1 identity)."""
    if f is None:
        return 1, 1
    return (f.shape[-1], f.shape[0]) if f.dim() == 2 else (f.shape[0], f.shape[0])


def setup_filter(f, device=None, normalize: bool = True, flip_filter: bool = False, gain: float = 1.0,
                 separable: Optional[bool] = None) -> torch.Tensor:
    """A filter tensor for :func:`upfirdn2d` from a list / array / tensor (e.g. ``[1, 3, 3, 1]``).

    normalize: scale to sum 1 (over the 2-D filter). flip_filter: flip it. gain: overall gain
    (a 1-D filter gets ``gain ** 0.5``, so the separable 2-D filter has ``gain``).
    separable: keep a 1-D filter 1-D (default: yes when it is 1-D and has at least 2 taps);
    False expands it to the outer product.
    Returns a float32 tensor, 1-D (separable) or 2-D.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.dim() not in (0, 1, 2) or f.numel() == 0 or not torch.isfinite(f).all():
        raise ValueError(f"fastgen.setup_filter: f must be a non-empty finite 0-, 1- or 2-D filter, got shape "
                         f"{tuple(f.shape)}")
    if f.dim() == 0:
        f = f[None]
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 2
    if f.dim() == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:  # the 2-D filter sums to 1 (a separable 1-D f: its outer product does)
        if f.sum() == 0:
            raise ValueError("fastgen.setup_filter: cannot normalize a filter that sums to 0")
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    f = f * (gain ** (f.dim() / 2))
    return f.to(device=device) if device is not None else f


def output_size(h: int, w: int, fw: int, fh: int, up, down, pad) -> tuple[int, int]:
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    return (h * uy + py0 + py1 - fh) // dy + 1, (w * ux + px0 + px1 - fw) // dx + 1


def _check(x, f, up, down, padding, gain):
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if x.dim() != 4:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if f is not None:
        C.check_tensor(f, "f", OP)
        if not f.is_floating_point():
            raise TypeError(f"fastgen.{OP}: f must be a floating-point tensor, got {f.dtype}")
        if f.dim() not in (1, 2) or f.numel() == 0:
            raise ValueError(f"fastgen.{OP}: f must be a non-empty 1-D (separable) or 2-D filter, got shape "
                             f"{tuple(f.shape)}")
        if f.device != x.device:
            raise ValueError(f"fastgen.{OP}: f is on {f.device} but x is on {x.device}")
        if f.requires_grad:
            raise ValueError(f"fastgen.{OP}: f must not require grad (the filter is a fixed buffer; detach it)")
    up, down, pad = _pair(up, "up", 1), _pair(down, "down", 1), parse_padding(padding)
    if isinstance(gain, bool) or not isinstance(gain, Real) or not math.isfinite(gain):
        raise ValueError(f"fastgen.{OP}: gain must be a finite number, got {gain!r}")
    fw, fh = filter_size(f)
    ho, wo = output_size(x.shape[2], x.shape[3], fw, fh, up, down, pad)
    if ho < 1 or wo < 1:
        raise ValueError(f"fastgen.{OP}: the output would be empty ({ho} x {wo}) for x of shape {tuple(x.shape)}, "
                         f"filter {fh} x {fw}, up {up}, down {down}, padding {pad}")
    return up, down, pad, float(gain)


# ----------------------------------------------------------------------------- reference
def _window(z: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """Entries [start, start + length) of z along dim, zeros where that leaves z."""
    lo, hi = max(start, 0), min(start + length, z.shape[dim])
    if lo == 0 and hi == z.shape[dim] and start == 0 and length == z.shape[dim]:
        return z
    if hi <= lo:  # nothing of z is inside: all zeros (still connected to z's graph)
        z, before, after = z.narrow(dim, 0, 0), length, 0
    else:
        z, before, after = z.narrow(dim, lo, hi - lo), lo - start, start + length - hi
    if before or after:
        z = F.pad(z, [before, after] if dim == 3 else [0, 0, before, after])
    return z


def upfirdn2d_reference(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 1, down: IntOrPair = 1,
                        padding=0, flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Plain differentiable PyTorch (fp32 math for half inputs; float64 stays float64).

    The filter always runs as one depthwise (``groups=C``) convolution with the 2-D filter (a 1-D f
    as its outer product). Upsampling without downsampling is one ``conv_transpose2d`` with stride
    ``up`` (it skips the inserted zeros), then a crop/pad of the edges if the padding asks for more
    than its own symmetric crop; everything else is zero insertion by reshape + pad, pad/crop, and
    ``conv2d`` with stride ``down`` (only the kept outputs are computed).

    Measured before choosing this (the repository's 2-core AMD EPYC CPU, torch 2.13, fp32 NCHW,
    filter [1, 3, 3, 1], one thread, contiguous depthwise weights): one 2-D depthwise conv2d beats two
    1-D passes (separable) — (16, 256, 64, 64) 2x down 93 vs 174 ms, blur with padding 2 180 vs
    315 ms; the same held for 6-, 8- and 12-tap filters (fewer passes over memory matter more than
    the extra taps). For 2x upsampling, conv_transpose2d with the 2-D filter beats zero insertion +
    conv2d: (16, 512, 16, 16) 43 vs 102 ms (separable: 182), (16, 128, 64, 64) 180 vs 421 ms.
    Flattening N*C into the batch with a single channel was 2-4x slower than ``groups=C``. The
    depthwise weight is a contiguous ``repeat`` as in StyleGAN2-ADA's reference (a stride-0
    ``expand`` measured the same or, in one conv2d-with-grad case, slower).
    """
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up, "up", 1), _pair(down, "down", 1), parse_padding(padding)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c, h, w = x.shape
    z = x.to(ct)
    if c == 0:  # no channels: conv2d refuses groups=0; an empty result (still connected to x)
        ho, wo = output_size(h, w, *filter_size(f), (ux, uy), (dx, dy), (px0, px1, py0, py1))
        return (z.new_zeros((n, 0, ho, wo)) + z.sum()).to(x.dtype)
    if f is not None:
        f = f.to(ct)
        k = (torch.outer(f, f) if f.dim() == 1 else f) * gain  # the convolution kernel
        fh, fw = k.shape
    if f is not None and (ux > 1 or uy > 1) and dx == 1 and dy == 1:
        # conv_transpose2d(x, k, stride=up)[o] = sum_t k[t] x[(o - t) / up]: the full convolution of
        # the zero-inserted x, of length (H - 1) up + fh; y[o] is its entry o + fh - 1 - py0. Its
        # `padding` crops symmetrically; F.pad does the rest (negative: crop).
        wt = k.flip([0, 1]) if flip_filter else k
        sy, sx = fh - 1 - py0, fw - 1 - px0
        ho, wo = output_size(h, w, fw, fh, (ux, uy), (dx, dy), (px0, px1, py0, py1))
        fully, fullx = (h - 1) * uy + fh, (w - 1) * ux + fw
        cy, cx = max(0, min(sy, fully - sy - ho)), max(0, min(sx, fullx - sx - wo))
        z = F.conv_transpose2d(z, wt[None, None].repeat(c, 1, 1, 1), stride=(uy, ux), padding=(cy, cx), groups=c)
        z = _window(_window(z, 2, sy - cy, ho), 3, sx - cx, wo)
        return z.to(x.dtype)
    if ux > 1 or uy > 1:
        z = F.pad(z.reshape(n, c, h, 1, w, 1), [0, ux - 1, 0, 0, 0, uy - 1]).reshape(n, c, h * uy, w * ux)
    z = F.pad(z, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    z = z[:, :, max(-py0, 0):z.shape[2] - max(-py1, 0), max(-px0, 0):z.shape[3] - max(-px1, 0)]
    if f is None:
        return z[:, :, ::dy, ::dx].mul(gain).to(x.dtype)
    wc = k if flip_filter else k.flip([0, 1])  # conv2d correlates; a convolution flips the filter
    z = F.conv2d(z, wc[None, None].repeat(c, 1, 1, 1), stride=(dy, dx), groups=c)
    return z.to(x.dtype)


# ----------------------------------------------------------------------------- custom ops
# Both fast ops share the schema
#   (x, f?, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) -> y
# and the output layout rule of csrc/ops_upfirdn2d.cpp: a channels_last y for channels-last x (or
# any x whose channel stride is 1 but whose W stride is not), a contiguous y otherwise.
def _out_memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.shape[3] == 1 or x.stride(3) == 1:
        return torch.contiguous_format
    if x.shape[1] == 1 or x.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _fake(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
    fw, fh = filter_size(f)
    ho, wo = output_size(x.shape[2], x.shape[3], fw, fh, (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1))
    return torch.empty((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype, device=x.device,
                       memory_format=_out_memory_format(x))


def grad_args(in_hw, out_hw, fw: int, fh: int, up, down, pad, flip: bool):
    """The upfirdn2d arguments of the gradient w.r.t. x: the op is linear,
    y[o] = gain sum_a k[a] x[(o d + a - p0) / u], so dx[i] = gain sum_o k[i u + p0 - o d] dy[o], which
    is upfirdn2d of dy with up and down swapped, the other flip (k flipped), leading padding
    f - 1 - p0, and the trailing padding that makes the output exactly H x W:
    H u - Ho d + p0 - u + 1 (per axis). Returns (up, down, padding, flip)."""
    (h, w), (ho, wo) = in_hw, out_hw
    (ux, uy), (dx, dy), (px0, _, py0, _) = up, down, pad
    gpad = (fw - 1 - px0, w * ux - wo * dx + px0 - ux + 1, fh - 1 - py0, h * uy - ho * dy + py0 - uy + 1)
    return (dx, dy), (ux, uy), gpad, not flip


def _check_op_args(x, f, up, down, pad, gain) -> None:
    """The checks of csrc/ops_upfirdn2d.cpp, for direct calls of the Triton op."""
    if x.dim() != 4:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 and float64")
    if f is not None:
        if not f.is_floating_point():
            raise TypeError(f"fastgen.{OP}: f must be a floating-point tensor, got {f.dtype}")
        if f.dim() not in (1, 2) or f.numel() == 0:
            raise ValueError(f"fastgen.{OP}: f must be a non-empty 1-D (separable) or 2-D filter, got shape "
                             f"{tuple(f.shape)}")
        if f.device != x.device:
            raise ValueError(f"fastgen.{OP}: f is on {f.device} but x is on {x.device}")
    if min(up) < 1 or min(down) < 1:
        raise ValueError(f"fastgen.{OP}: up and down must be >= 1, got up {up}, down {down}")
    if not math.isfinite(gain):
        raise ValueError(f"fastgen.{OP}: gain must be finite, got {gain}")
    fw, fh = filter_size(f)
    ho, wo = output_size(x.shape[2], x.shape[3], fw, fh, up, down, pad)
    if ho < 1 or wo < 1:
        raise ValueError(f"fastgen.{OP}: the output would be empty ({ho} x {wo}) for x of shape {tuple(x.shape)}, "
                         f"filter {fh} x {fw}, up {up}, down {down}, padding {pad}")


def _register_autograd(name: str) -> None:
    """The backward of the op is the op itself (see grad_args), so every order stays on it."""
    op = getattr(torch.ops.fastgen, name).default

    def setup_context(ctx, inputs, output):
        x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain = inputs
        ctx.save_for_backward(f)
        ctx.params = ((upx, upy), (downx, downy), (padx0, padx1, pady0, pady1), flip, gain)
        ctx.in_hw = (x.shape[2], x.shape[3])

    def backward(ctx, gy):
        f, = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            raise RuntimeError(f"fastgen.{OP}: the filter f is not differentiated; pass a tensor that does not "
                               "require grad")
        up, down, pad, flip, gain = ctx.params
        fw, fh = filter_size(f)
        (gux, guy), (gdx, gdy), gpad, gflip = grad_args(ctx.in_hw, (gy.shape[2], gy.shape[3]), fw, fh, up, down, pad,
                                                        flip)
        dx = op(gy, f, gux, guy, gdx, gdy, *gpad, gflip, gain)
        return (dx,) + (None,) * 11

    torch.library.register_autograd(f"fastgen::{name}", backward, setup_context=setup_context)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, OP):
        return False
    torch.library.register_fake(f"fastgen::{OP}")(_fake)
    _register_autograd(OP)
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom op on first use (needs triton and fastgen.kernels.upfirdn2d)."""
    K = C.triton_kernels(OP)
    from torch.library import triton_op

    @triton_op("fastgen::upfirdn2d_triton", mutates_args=())
    def upfirdn2d_triton(x: torch.Tensor, f: Optional[torch.Tensor], upx: int, upy: int, downx: int, downy: int,
                         padx0: int, padx1: int, pady0: int, pady1: int, flip: bool, gain: float) -> torch.Tensor:
        _check_op_args(x, f, (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1), gain)
        return K.upfirdn2d(x, f, (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1), flip, gain,
                           _out_memory_format(x))

    upfirdn2d_triton.register_fake(_fake)
    _register_autograd("upfirdn2d_triton")
    return upfirdn2d_triton


# ----------------------------------------------------------------------------- public entry
def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 1, down: IntOrPair = 1, padding=0,
              flip_filter: bool = False, gain: float = 1.0, *, impl: Optional[str] = None) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample ``x`` in one op.

    Args:
        x: ``(N, C, H, W)`` float32/float16/bfloat16 (float64 runs the reference), NCHW or channels_last.
        f: the filter, 2-D ``(fh, fw)`` or 1-D ``(ft,)`` (separable), e.g. from :func:`setup_filter`;
            None: identity. Not differentiated (a fixed buffer).
        up, down: integer factors, an int or ``(x, y)``.
        padding: int, ``(px, py)`` or ``(px0, px1, py0, py1)`` in upsampled pixels; negative crops.
        flip_filter: correlate instead of convolve. gain: multiplies the output.
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns ``(N, C, H_out, W_out)`` in x's dtype; differentiable w.r.t. x to any order.
    """
    up, down, pad, gain = _check(x, f, up, down, padding, gain)
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.dtype == torch.float64 or x.numel() == 0:
        return upfirdn2d_reference(x, f, up, down, pad, flip_filter, gain)
    args = (x, f, *up, *down, *pad, bool(flip_filter), gain)
    if name == "cpp":
        return torch.ops.fastgen.upfirdn2d(*args)
    return _triton_ops()(*args)


# ----------------------------------------------------------------------------- helpers (StyleGAN2's)
def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding=0, flip_filter: bool = False, gain: float = 1.0,
             *, impl: Optional[str] = None) -> torch.Tensor:
    """Filter x with f; ``padding`` is added to the 'same' padding (so 0 keeps the size)."""
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOrPair = 2, padding=0, flip_filter: bool = False,
               gain: float = 1.0, *, impl: Optional[str] = None) -> torch.Tensor:
    """Upsample by ``up`` with the FIR filter f (output H up, W up for padding 0); the filter gain is
    multiplied by up_x * up_y so a normalized f keeps the mean."""
    ux, uy = _pair(up, "up", 1)
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + (fw + ux - 1) // 2, px1 + (fw - ux) // 2, py0 + (fh + uy - 1) // 2, py1 + (fh - uy) // 2]
    return upfirdn2d(x, f, up=(ux, uy), padding=pad, flip_filter=flip_filter, gain=gain * ux * uy, impl=impl)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntOrPair = 2, padding=0,
                 flip_filter: bool = False, gain: float = 1.0, *, impl: Optional[str] = None) -> torch.Tensor:
    """Filter with f then keep every ``down``-th pixel (output H / down, W / down for padding 0)."""
    dx, dy = _pair(down, "down", 1)
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + (fw - dx + 1) // 2, px1 + (fw - dx) // 2, py0 + (fh - dy + 1) // 2, py1 + (fh - dy) // 2]
    return upfirdn2d(x, f, down=(dx, dy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)
