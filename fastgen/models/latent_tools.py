r"""Latent-space tools: interpolation and attribute-vector arithmetic.

    zs = slerp(z0, z1, torch.linspace(0, 1, 8))        # [8, *z0.shape]: a spherical path
    grid = interpolate(vae, z0, z1, steps=8)           # decoded, ready for save_image_grid(grid, ncols=8)
    v = attribute_vector(latents, has_attribute)       # mean(with) - mean(without)
    z_edit = apply_attribute(z, v, strength=1.5)

They work on any latents: a VAE's ``z`` (decode with ``vae.decode``), a latent-diffusion model's
scaled latents (``ldm.decode``), and a diffusion model's initial noise, where the "decoder" is a
deterministic sampler run from that noise, e.g.
``interpolate(lambda x_T: ldm.sample(len(x_T), sampler="ddim", initial_noise=x_T, progress=False), n0, n1)``
(slerp is the classic choice there: a Gaussian sample's norm concentrates around ``sqrt(D)``, and
the straight line between two such samples passes through low-norm latents the model never saw).

Conventions: a latent tensor with two or more dimensions is a batch (first dimension); a 1-D tensor
is one vector. Spherical interpolation is per sample over all the other dimensions flattened.
"""
from __future__ import annotations

import numbers
from typing import Callable, Union

import torch

__all__ = ["lerp", "slerp", "interpolate", "attribute_vector", "apply_attribute"]

TLike = Union[float, torch.Tensor]


def _check_pair(z0, z1) -> None:
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {z.dtype}")
        if z.dim() == 0 or z.numel() == 0:
            raise ValueError(f"{name} must be a non-empty tensor with at least one dimension, "
                             f"got shape {tuple(z.shape)}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.device != z1.device:
        raise ValueError(f"z0 and z1 must be on the same device, got {z0.device} and {z1.device}")


def _t_arg(t: TLike, like: torch.Tensor):
    """(t as a float64 tensor [T] on like's device, whether t was a scalar)."""
    if isinstance(t, bool):
        raise TypeError("t must be a float or a 1-D tensor of floats, got a bool")
    if isinstance(t, numbers.Real):
        tt, scalar = torch.tensor([float(t)], dtype=torch.float64), True
    elif isinstance(t, torch.Tensor):
        if t.dim() > 1:
            raise ValueError(f"t must be a float or a 1-D tensor, got shape {tuple(t.shape)}")
        scalar = t.dim() == 0
        tt = t.detach().reshape(-1).to("cpu", torch.float64)
    else:
        raise TypeError(f"t must be a float or a 1-D tensor, got {type(t).__name__}")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError("t must be finite")
    return tt.to(like.device), scalar


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _view_t(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * z.dim())


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: TLike) -> torch.Tensor:
    """Linear interpolation ``(1 - t) z0 + t z1``. ``t``: a float (result shaped like ``z0``) or a 1-D
    tensor of T values (result ``[T, *z0.shape]``). Values outside [0, 1] extrapolate."""
    _check_pair(z0, z1)
    tt, scalar = _t_arg(t, z0)
    ct = _compute_dtype(z0)
    a, b = z0.to(ct), z1.to(ct)
    tv = _view_t(tt.to(ct), a)
    out = ((1 - tv) * a + tv * b).to(z0.dtype)
    return out[0] if scalar else out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: TLike, *, parallel_threshold: float = 0.9995) -> torch.Tensor:
    r"""Spherical linear interpolation (Shoemake 1985; for generative latents White 2016):
    ``sin((1 - t) W) / sin W * z0 + sin(t W) / sin W * z1`` with ``W`` the angle between ``z0`` and
    ``z1``, per sample over the flattened non-batch dimensions (a 1-D input is one vector).

    For unit vectors the path stays on the unit sphere at constant angular speed; for other norms
    the norm varies smoothly between the endpoints' norms. Where ``|cos W| > parallel_threshold``
    (nearly parallel or antiparallel vectors, where ``sin W`` vanishes and the great circle is
    ill-defined) that sample falls back to :func:`lerp`. Coefficients are computed in float32
    (float64 for float64 inputs). ``t`` as in :func:`lerp`.
    """
    _check_pair(z0, z1)
    if isinstance(parallel_threshold, bool) or not isinstance(parallel_threshold, numbers.Real) or \
            not 0.0 < parallel_threshold < 1.0:
        raise ValueError(f"parallel_threshold must be a number in (0, 1), got {parallel_threshold!r}")
    tt, scalar = _t_arg(t, z0)
    ct = _compute_dtype(z0)
    a, b = z0.to(ct), z1.to(ct)
    batched = a.dim() >= 2
    fa = a.flatten(1) if batched else a.reshape(1, -1)
    fb = b.flatten(1) if batched else b.reshape(1, -1)
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    denom = na * nb
    cos = torch.where(denom > 0, (fa * fb).sum(1) / denom.clamp_min(torch.finfo(ct).tiny), torch.ones_like(denom))
    cos = cos.clamp(-1.0, 1.0)
    omega = torch.arccos(cos)                      # [B]
    sin_o = torch.sin(omega)
    use_lerp = cos.abs() > parallel_threshold      # also zero vectors (cos := 1)
    tc = tt.to(ct).unsqueeze(1)                    # [T, 1]
    safe_sin = torch.where(use_lerp, torch.ones_like(sin_o), sin_o)
    ca = torch.sin((1 - tc) * omega) / safe_sin    # [T, B]
    cb = torch.sin(tc * omega) / safe_sin
    ca = torch.where(use_lerp, 1 - tc, ca)
    cb = torch.where(use_lerp, tc.expand_as(cb), cb)
    shape = (tt.shape[0],) + ((a.shape[0],) + (1,) * (a.dim() - 1) if batched else (1,) * a.dim())
    out = (ca.reshape(shape) * a + cb.reshape(shape) * b).to(z0.dtype)
    return out[0] if scalar else out


def interpolate(decoder: Union[Callable, object], z0: torch.Tensor, z1: torch.Tensor, steps: int = 8, *,
                mode: str = "slerp", batch_size: int = 64) -> torch.Tensor:
    """Decode ``steps`` latents evenly spaced from ``z0`` to ``z1`` (both endpoints included).

    ``decoder``: an object with ``.decode(z)`` (a VAE, a :class:`~fastgen.diffusion.LatentDiffusion`)
    or a callable ``latents -> images`` (e.g. a deterministic sampler from initial noise).
    ``z0``/``z1``: one latent (``[C, h, w]``, or a vector ``[D]``) or a batch of B pairs (``[B, C, h, w]``,
    ``[B, D]``; the decoder's ``latent_shape`` decides when it has one). ``mode``:
    ``"slerp"`` or ``"lerp"``. Returns images ``[B * steps, ...]`` ordered pair by pair (row ``i`` of
    a grid with ``ncols=steps`` is pair ``i``'s path): ``save_image_grid(images, path, ncols=steps)``.
    Decoding runs under ``no_grad`` in chunks of ``batch_size`` latents.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if mode not in ("slerp", "lerp"):
        raise ValueError(f"mode must be 'slerp' or 'lerp', got {mode!r}")
    dec = getattr(decoder, "decode", None)
    if not callable(dec):
        if not callable(decoder):
            raise TypeError(f"decoder must have a decode() method or be callable, got {type(decoder).__name__}")
        dec = decoder
    _check_pair(z0, z1)
    if not _is_batch(decoder, z0):
        z0, z1 = z0.unsqueeze(0), z1.unsqueeze(0)
    t = torch.linspace(0.0, 1.0, int(steps), dtype=torch.float64)
    path = (slerp if mode == "slerp" else lerp)(z0, z1, t)     # [steps, B, ...]
    flat = path.transpose(0, 1).reshape((-1,) + tuple(z0.shape[1:]))  # pair by pair
    with torch.no_grad():
        chunks = [dec(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)]
    return torch.cat([c if isinstance(c, torch.Tensor) else c.sample for c in chunks])


def _is_batch(decoder, z: torch.Tensor) -> bool:
    """Whether ``z`` is a batch of latents (else one latent). With a ``decoder.latent_shape``: by
    comparing shapes; without: 2-D (vectors) and 4-D or more (maps) are batches, 1-D and 3-D single."""
    try:
        shape = getattr(decoder, "latent_shape", None)
    except ValueError:  # a LatentDiffusion that has not seen data yet
        shape = None
    if shape is not None:
        shape = tuple(shape)
        if tuple(z.shape) == shape:
            return False
        if tuple(z.shape[1:]) == shape:
            return True
        raise ValueError(f"z0 must have the decoder's latent shape {shape} (or be a batch of them), "
                         f"got {tuple(z.shape)}")
    return z.dim() == 2 or z.dim() >= 4


def attribute_vector(latents: torch.Tensor, mask) -> torch.Tensor:
    """The attribute direction ``mean(latents[mask]) - mean(latents[~mask])`` (shape ``latents.shape[1:]``).

    ``latents``: ``[N, ...]`` encodings (e.g. ``vae.encode(x).mean`` or ``ldm.encode(x)``); ``mask``:
    a bool (or 0/1 integer) tensor ``[N]`` marking the samples that have the attribute. Both groups
    must be non-empty. Means are accumulated in float32 (float64 for float64 latents)."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.dim() < 2:
        raise ValueError(f"latents must be a floating tensor [N, ...] with at least 2 dimensions, got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.shape != (latents.shape[0],):
        raise ValueError(f"mask must have shape [{latents.shape[0]}] (one flag per latent), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must be a bool tensor (or integers 0/1)")
        mask = mask.bool()
    mask = mask.to(latents.device)
    n_with = int(mask.sum())
    if n_with == 0 or n_with == mask.numel():
        raise ValueError(f"mask must mark some but not all latents (got {n_with} of {mask.numel()} with the attribute)")
    ct = _compute_dtype(latents)
    z = latents.to(ct)
    return (z[mask].mean(0) - z[~mask].mean(0)).to(latents.dtype)


def apply_attribute(z: torch.Tensor, vector: torch.Tensor, strength: TLike = 1.0) -> torch.Tensor:
    """``z + strength * vector``: move latents along an attribute direction. ``z``: ``[N, ...]`` or one
    latent shaped like ``vector``; ``strength``: a float or a per-sample tensor ``[N]`` (negative
    values remove the attribute)."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        what = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"z must be a floating tensor, got {what}")
    if not isinstance(vector, torch.Tensor) or not vector.is_floating_point():
        raise TypeError("vector must be a floating tensor (see attribute_vector)")
    if tuple(z.shape) != tuple(vector.shape) and tuple(z.shape[1:]) != tuple(vector.shape):
        raise ValueError(f"vector must have the shape of one latent: z is {tuple(z.shape)}, "
                         f"vector {tuple(vector.shape)}")
    v = vector.to(device=z.device, dtype=z.dtype)
    if isinstance(strength, bool):
        raise TypeError("strength must be a float or a tensor [N], got a bool")
    if isinstance(strength, numbers.Real):
        return z + float(strength) * v
    if not isinstance(strength, torch.Tensor):
        raise TypeError(f"strength must be a float or a tensor [N], got {type(strength).__name__}")
    if strength.dim() == 0:
        return z + strength.to(z.device, z.dtype) * v
    if tuple(z.shape) == tuple(vector.shape) or strength.shape != (z.shape[0],):
        raise ValueError(f"strength as a tensor must have shape [N] = [{z.shape[0] if z.dim() else 0}] "
                         f"(one per latent of a batch), got {tuple(strength.shape)}")
    return z + strength.to(z.device, z.dtype).reshape((-1,) + (1,) * (z.dim() - 1)) * v
