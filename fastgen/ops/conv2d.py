r"""conv2d / conv_transpose2d whose gradients of every order run on the convolution library's own
forward, backward-data and backward-weights kernels (oneDNN on CPUs, cuDNN on GPUs): the
convolution a discriminator needs under R1 or WGAN-GP, where the penalty's ``backward()``
differentiates through every convolution twice.

A convolution is the bilinear form ``<conv(x, w), gy>``; its three views

    y  = conv2d(x, w)                     (forward)
    gx = conv2d_grad_input(gy, w)         (backward-data; also conv_transpose2d)
    gw = conv2d_grad_weight(gy, x)        (backward-weights)

are three ops (``torch.ops.fastgen.conv2d``, ``conv2d_grad_input``, ``conv2d_grad_weight``, in
``csrc/ops_conv2d.cpp``), and the derivative of each is made of the other two:

    conv2d:       dx = grad_input(gy, w),   dw = grad_weight(gy, x),   db = sum(gy)
    grad_input:   d gy = conv2d(ggx, w),    dw = grad_weight(gy, ggx)
    grad_weight:  d gy = conv2d(x, ggw),    dx = grad_input(gy, ggw)

PyTorch's own double backward of a convolution gets the weight term by convolving the
batch-transposed tensors with the gradient as an (H x W)-sized stride-dilated kernel (plus
transposing copies), which oneDNN runs far slower than its backward-weights kernel; this is the
fix StyleGAN2-ADA's ``conv2d_gradfix`` made for cuDNN. The autograd is C++ so that a backward
computes only the gradients that backward asks for (R1's ``autograd.grad(D(x), x)`` computes no
weight gradients), and a first-order backward is PyTorch's single ``convolution_backward`` call.

Implementations: ``torch`` is ``F.conv2d`` / ``F.conv_transpose2d`` (the reference), ``cpp`` the
ops above (any device the extension runs on; float16/bfloat16/float32/float64).
"""
from __future__ import annotations

from numbers import Integral
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _extension, backend

OP = "conv2d"

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp"),
        preference={"cpu": ("cpp",), "cuda": ("cpp",)},
        notes="convolution whose double backward (R1 / WGAN-GP through a discriminator) runs on the backward-weights "
              "kernel instead of PyTorch's batch-transposed convolution",
    )
)


def _have_cpp_ops() -> bool:
    return _extension.load() is not None and hasattr(torch.ops.fastgen, "conv2d_grad_weight")


_HAVE_CPP_OPS = _have_cpp_ops()


def _pair(v, name: str, lo: int, op: str) -> list[int]:
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = [int(v), int(v)]
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(e, Integral) and not isinstance(e, bool) for e in v):
        v = [int(v[0]), int(v[1])]
    else:
        raise TypeError(f"fastgen.{op}: {name} must be an int or a pair of ints, got {v!r}")
    if min(v) < lo:
        raise ValueError(f"fastgen.{op}: {name} must be >= {lo}, got {v!r}")
    return v


def _check(x, weight, bias, groups, op: str) -> int:
    for t, name in ((x, "x"), (weight, "weight")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fastgen.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"fastgen.{op}: {name} must be 4-D, got shape {tuple(t.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"fastgen.{op}: x must be a floating-point tensor, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"fastgen.{op}: weight has dtype {weight.dtype} but x has dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"fastgen.{op}: weight is on {weight.device} but x is on {x.device}")
    if isinstance(groups, bool) or not isinstance(groups, Integral) or groups < 1:
        raise ValueError(f"fastgen.{op}: groups must be an int >= 1, got {groups!r}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1:
            raise ValueError(f"fastgen.{op}: bias must be a 1-D tensor or None, got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"fastgen.{op}: bias ({bias.dtype}, {bias.device}) must match x ({x.dtype}, {x.device})")
    return int(groups)


def _autocast(x, weight, bias):
    """Under ``torch.autocast`` cast the operands to its dtype, as autocast does for F.conv2d (the
    custom ops are not on autocast's lists)."""
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dt = torch.get_autocast_dtype(x.device.type)

    def cast(t):
        return t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return cast(x), cast(weight), cast(bias)


def conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1,
                     padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (PyTorch's autograd, including its double backward)."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, impl: Optional[str] = None) -> torch.Tensor:
    """Drop-in for ``F.conv2d`` (int or pair ``stride`` / ``padding`` / ``dilation``) whose gradients of
    every order run on the convolution library's forward / backward-data / backward-weights kernels.

    Args:
        x: ``(N, C_in, H, W)``. weight: ``(C_out, C_in / groups, kh, kw)``. bias: ``(C_out,)`` or None.
        impl: force ``"torch"`` (``F.conv2d``) or ``"cpp"`` (default: see fastgen.backend).
    """
    x, weight, bias = _autocast(x, weight, bias)
    groups = _check(x, weight, bias, groups, OP)
    stride, padding = _pair(stride, "stride", 1, OP), _pair(padding, "padding", 0, OP)
    dilation = _pair(dilation, "dilation", 1, OP)
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"fastgen.{OP}: x has {x.shape[1]} channels but weight of shape {tuple(weight.shape)} with "
                         f"groups={groups} expects {weight.shape[1] * groups}")
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.numel() == 0 or not _HAVE_CPP_OPS:
        return conv2d_reference(x, weight, bias, stride, padding, dilation, groups)
    return torch.ops.fastgen.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     impl: Optional[str] = None) -> torch.Tensor:
    """Drop-in for ``F.conv_transpose2d`` (same argument order): the data gradient of the convolution
    with this weight, so it shares :func:`conv2d`'s every-order gradients.

    Args:
        x: ``(N, C_in, H, W)``. weight: ``(C_in, C_out / groups, kh, kw)``. bias: ``(C_out,)`` or None.
        output_padding: extra rows / columns at the bottom / right (``< max(stride, dilation)``).
    """
    op = "conv_transpose2d"
    x, weight, bias = _autocast(x, weight, bias)
    groups = _check(x, weight, bias, groups, op)
    stride, padding = _pair(stride, "stride", 1, op), _pair(padding, "padding", 0, op)
    dilation, output_padding = _pair(dilation, "dilation", 1, op), _pair(output_padding, "output_padding", 0, op)
    if x.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ValueError(f"fastgen.{op}: x has {x.shape[1]} channels but weight has shape {tuple(weight.shape)} "
                         f"(C_in, C_out / groups, kh, kw) with groups={groups}")
    if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"fastgen.{op}: output_padding {output_padding} must be smaller than stride {stride} or "
                         f"dilation {dilation}")
    name = backend.resolve(OP, x.device, impl)
    if name == "torch" or x.numel() == 0 or not _HAVE_CPP_OPS:
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    size = [x.shape[0], weight.shape[1] * groups] + [
        (x.shape[2 + a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (weight.shape[2 + a] - 1)
        + output_padding[a] + 1 for a in range(2)]
    if min(size[2:]) < 1:
        raise ValueError(f"fastgen.{op}: the output would be empty ({size[2]} x {size[3]}) for x of shape "
                         f"{tuple(x.shape)}")
    y = torch.ops.fastgen.conv2d_grad_input(x, weight, size, stride, padding, dilation, groups)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)
