r"""StyleGAN's synthesis-layer epilogue in one pass: demodulation scale, noise injection, bias,
activation, gain and clamp.

    z[n, c, p] = x[n, c, p] * scale[n, c] + noise[n, ., p] * noise_strength[c] + b[c]
    y          = clamp(act(z) * gain, -clamp, clamp)

``x`` is the output of a (modulated) convolution, ``scale`` the per-(sample, output channel)
demodulation coefficients of StyleGAN2's non-fused modulated conv (None: 1), ``noise`` per-pixel
noise shared by the channels ((N, 1, *spatial), StyleGAN's B-scaled noise inputs; also (1, 1, ...)
for constant noise or (N, C, ...) per channel), ``noise_strength`` the learned per-channel (C,) or
per-layer scalar factor (None: 1). The activations, their default gains and the clamp are
:func:`fastgen.functional.bias_act`'s (``lrelu`` with gain sqrt 2 in StyleGAN).

Eager PyTorch spends one pass per term (x * scale, noise * strength, the add, + b, the activation,
* gain, the clamp); this is one read of x (and noise) and one write of y. Gradients w.r.t. x, b,
scale, noise and noise_strength; differentiable to any order (path-length regularisation
differentiates the generator twice).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import backend
from . import _common as C
from .bias_act import _params, bias_act_reference

OP = "modulated_bias_act"

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch",),
        preference={"cpu": (), "cuda": ()},
        notes="StyleGAN synthesis epilogue: demodulation scale + noise injection + bias + activation + gain + clamp",
    )
)


def modulated_bias_act_reference(x: torch.Tensor, b: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                                 noise: Optional[torch.Tensor] = None, noise_strength: Optional[torch.Tensor] = None,
                                 act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
                                 clamp: Optional[float] = None) -> torch.Tensor:
    """Plain differentiable PyTorch (fp32 math for half inputs, float64 stays float64)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[:2]
    tail = (1,) * (x.dim() - 2)
    z = x.to(ct)
    if scale is not None:
        z = z * scale.to(ct).reshape(n, c, *tail)
    if noise is not None:
        nz = noise.to(ct)
        if noise_strength is not None:
            s = noise_strength.to(ct)
            nz = nz * (s.reshape(1, c, *tail) if s.numel() == c and c != 1 else s.reshape((1,) * x.dim()))
        z = z + nz
    return bias_act_reference(z, b, 1, act, alpha, gain, clamp).to(x.dtype)


def _check(x, b, scale, noise, noise_strength):
    C.check_tensor(x, "x", OP)
    if x.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: x has dtype {x.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if x.dim() < 2:
        raise ValueError(f"fastgen.{OP}: x must have shape (N, C, *spatial), got {tuple(x.shape)}")
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    for name, t in (("b", b), ("scale", scale), ("noise", noise), ("noise_strength", noise_strength)):
        if t is None:
            continue
        C.check_tensor(t, name, OP)
        if not t.is_floating_point():
            raise TypeError(f"fastgen.{OP}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"fastgen.{OP}: {name} is on {t.device} but x is on {x.device}")
    if b is not None and tuple(b.shape) != (c,):
        raise ValueError(f"fastgen.{OP}: b must have shape (C,) = ({c},), got {tuple(b.shape)}")
    if scale is not None and tuple(scale.shape) not in ((n, c), (n, c) + (1,) * len(spatial)):
        raise ValueError(f"fastgen.{OP}: scale must have shape (N, C) = ({n}, {c}), got {tuple(scale.shape)}")
    if noise is not None:
        ok = (noise.dim() == x.dim() and noise.shape[0] in (1, n) and noise.shape[1] in (1, c)
              and tuple(noise.shape[2:]) == spatial)
        if not ok:
            raise ValueError(f"fastgen.{OP}: noise must have shape (N or 1, 1 or C, *spatial) = ({n} or 1, 1 or {c}, "
                             f"{', '.join(map(str, spatial))}), got {tuple(noise.shape)}")
    if noise_strength is not None:
        if noise is None:
            raise ValueError(f"fastgen.{OP}: noise_strength was given without noise")
        if noise_strength.numel() not in (1, c) or noise_strength.dim() > 1:
            raise ValueError(f"fastgen.{OP}: noise_strength must be a scalar tensor or have shape (C,) = ({c},), got "
                             f"{tuple(noise_strength.shape)}")


def modulated_bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, *, scale: Optional[torch.Tensor] = None,
                       noise: Optional[torch.Tensor] = None, noise_strength: Optional[torch.Tensor] = None,
                       act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None, impl: Optional[str] = None) -> torch.Tensor:
    """``clamp(act(x * scale + noise * noise_strength + b) * gain)`` in one pass (StyleGAN's
    demodulation + noise injection + bias_act epilogue).

    Args:
        x: ``(N, C, *spatial)`` float32/float16/bfloat16 (float64 runs the reference), NCHW or channels_last.
        b: ``(C,)`` bias or None.
        scale: ``(N, C)`` per-(sample, channel) factor (StyleGAN2 demodulation) or None.
        noise: ``(N | 1, 1 | C, *spatial)`` noise or None. noise_strength: scalar tensor or ``(C,)``
            (None: 1).
        act, alpha, gain, clamp: as :func:`fastgen.functional.bias_act`.
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns y with x's shape and dtype; differentiable w.r.t. x, b, scale, noise and
    noise_strength to any order.
    """
    _check(x, b, scale, noise, noise_strength)
    _params(act, alpha, gain, clamp)
    backend.resolve(OP, x.device, impl)
    return modulated_bias_act_reference(x, b, scale, noise, noise_strength, act, alpha, gain, clamp)
