"""The sampling loop: :func:`sample` draws samples from a diffusion model with any fastgen sampler.

    x = fastgen.sample(model, (16, 4, 64, 64), sampler="dpmpp_2m", steps=20,
                       guidance_scale=4.0, class_labels=labels, null_label=1000)

Per step: one model forward (conditional and unconditional halves batched together under
classifier-free guidance) and one fused sampler update (the guidance combination happens inside
that kernel). The loop reuses its output buffers (two sample buffers used in turn and a ring of
three x0 buffers, which no sampler's history can alias) and checks the sample stays finite.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Union

import torch

from .samplers import DDPMSampler, Sampler, get_sampler

__all__ = ["sample", "NonFiniteSampleError"]


class NonFiniteSampleError(FloatingPointError):
    """The sample became NaN/inf during sampling (the message names the step and timestep)."""


def _model_device(model) -> Optional[torch.device]:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def _shape_arg(shape) -> tuple:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"shape must be a non-empty tuple of ints (batch first), got {shape!r}")
    if any(int(s) < 0 for s in shape) or int(shape[0]) < 1:
        raise ValueError(f"shape must have a batch size >= 1 and no negative sizes, got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _labels_arg(labels, n: int, device, name: str) -> torch.Tensor:
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        return torch.full((n,), int(labels), dtype=torch.long, device=device)
    if isinstance(labels, (list, tuple)):
        labels = torch.tensor(labels, dtype=torch.long)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an int, a sequence of ints or an integer tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() == 0:
        labels = labels.expand(n)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one label per sample), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def _initial_noise(shape, generator, device, dtype) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def sample(model, shape, *, sampler: Union[str, Sampler] = "ddim", steps: int = 50, schedule=None,
           guidance_scale: float = 1.0, class_labels=None, null_label=None,
           generator: Optional[torch.Generator] = None, device: Union[str, torch.device, None] = None,
           dtype: torch.dtype = torch.float32, progress: bool = True, return_intermediates: bool = False,
           model_kwargs: Optional[Dict[str, Any]] = None, sampler_kwargs: Optional[Dict[str, Any]] = None,
           initial_noise: Optional[torch.Tensor] = None, check_finite: bool = True):
    """Draw samples from a diffusion model.

    Args:
        model: called as ``model(x_in, t, **model_kwargs)`` (plus ``class_labels=`` when labels are
            given) with ``x_in`` the sampler's scaled input ``[B, ...]`` and ``t`` the timestep
            repeated to ``[B]``; returns the prediction (the sampler's ``prediction_type``), with
            ``2C`` channels for learned-variance models (the variance half is used by
            ``DDPMSampler(variance_type="learned_range")`` and dropped for other samplers).
        shape: the sample shape, batch first.
        sampler: a registry name (see :data:`fastgen.diffusion.samplers.SAMPLERS`) or a sampler object.
        steps: number of inference steps (``set_timesteps(steps)``; Heun evaluates the model
            ``2 steps - 1`` times).
        schedule: a ``DiscreteSchedule`` (or a ``VPSDE``/``VESDE`` for the SDE samplers) for a
            sampler given by name; ``sampler_kwargs`` are its other constructor arguments.
        guidance_scale: classifier-free guidance weight ``s`` (1: none). With ``s != 1`` the
            conditional and unconditional passes are ONE forward of batch ``2B`` (labels
            ``cat([class_labels, null_label])``; tensor ``model_kwargs`` with batch ``B`` are
            repeated); the step combines ``uncond + s (cond - uncond)`` inside the fused kernel.
        class_labels: ``[B]`` integer labels (or one int) passed as ``class_labels=``.
        null_label: the "no class" label of the unconditional pass (needed for guidance).
        generator: RNG of the initial noise and of stochastic steps (seeds the in-kernel noise).
        device: where to sample (default: the model's parameters' device, else CPU).
        dtype: the sample dtype. progress: show a tqdm progress bar.
        return_intermediates: also return ``{"timesteps", "samples", "pred_original_samples"}``
            (lists, one entry per step; buffers are then not reused).
        initial_noise: the starting standard-normal noise (scaled by ``init_noise_sigma``).
        check_finite: raise :class:`NonFiniteSampleError` naming the step and timestep when the
            sample becomes NaN/inf (on CUDA checked once at the end, without per-step syncs).

    Returns:
        The final sample ``[B, ...]`` (and the intermediates dict when asked).
    """
    shape = _shape_arg(shape)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) or not math.isfinite(
            guidance_scale):
        raise TypeError(f"guidance_scale must be a finite real number, got {guidance_scale!r}")
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    if isinstance(sampler, Sampler):
        if schedule is not None or sampler_kwargs:
            raise ValueError("schedule= and sampler_kwargs= are only used with a sampler name, not a sampler object")
        smp = sampler
    elif isinstance(sampler, str):
        smp = get_sampler(sampler, schedule, **(sampler_kwargs or {}))
    else:
        raise TypeError(f"sampler must be a name or a fastgen Sampler, got {type(sampler).__name__}")

    device = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
    B = shape[0]
    g = float(guidance_scale)
    cfg = g != 1.0
    labels = None
    if class_labels is not None:
        labels = _labels_arg(class_labels, B, device, "class_labels")
    if cfg:
        if labels is None:
            raise ValueError("guidance_scale != 1 needs class_labels (the conditional pass) and null_label")
        if null_label is None:
            raise ValueError("guidance_scale != 1 needs null_label (the label of the unconditional pass)")
        labels = torch.cat([labels, _labels_arg(null_label, B, device, "null_label")])
    kw = dict(model_kwargs or {})
    if "class_labels" in kw:
        raise ValueError("pass class labels as class_labels=, not inside model_kwargs")
    if cfg:
        kw = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B else v)
              for k, v in kw.items()}
    if labels is not None:
        kw["class_labels"] = labels
    mb = 2 * B if cfg else B

    smp.set_timesteps(int(steps), device=device)
    if initial_noise is not None:
        if not isinstance(initial_noise, torch.Tensor) or tuple(initial_noise.shape) != shape:
            raise ValueError(f"initial_noise must be a tensor of shape {shape}")
        x = initial_noise.to(device=device, dtype=dtype) * smp.init_noise_sigma
    else:
        x = _initial_noise(shape, generator, device, dtype) * smp.init_noise_sigma

    C = shape[1] if len(shape) > 1 else None
    keep_var = isinstance(smp, DDPMSampler) and smp.variance_type == "learned_range"
    reuse = not return_intermediates
    xbufs = [x, torch.empty_like(x)] if reuse else None
    x0bufs = [torch.empty_like(x) for _ in range(3)] if reuse else None
    inter = {"timesteps": [], "samples": [], "pred_original_samples": []} if return_intermediates else None
    deferred = []  # CUDA: per-step finiteness flags, checked at the end (no per-step sync)

    from tqdm.auto import tqdm

    timesteps = smp.timesteps
    ts_host = list(smp._ts_host)
    with torch.no_grad():
        bar = tqdm(total=len(ts_host), disable=not progress, desc=f"sampling ({type(smp).__name__})", leave=False)
        try:
            for i, t in enumerate(timesteps):
                x = smp.prepare_sample(x, t, generator=generator)
                x_in = smp.scale_model_input(x, t)
                if cfg:
                    x_in = torch.cat([x_in, x_in])
                t_batch = t.reshape(1).expand(mb).contiguous()
                out = model(x_in, t_batch, **kw)
                if not isinstance(out, torch.Tensor):
                    out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
                if out.dtype != x.dtype:
                    out = out.to(x.dtype)
                if C is not None and not keep_var and out.dim() == x.dim() and out.shape[1] == 2 * C:
                    out = out[:, :C]  # learned variance channels, unused by this sampler
                uncond = None
                if cfg:
                    out, uncond = out[:B], out[B:]
                o = None
                if reuse:
                    o = (xbufs[1] if x.data_ptr() == xbufs[0].data_ptr() else xbufs[0], x0bufs[i % 3])
                res = smp.step(out, t, x, generator=generator, uncond=uncond, guidance_scale=g, out=o)
                x = res.prev_sample
                if check_finite:
                    if x.device.type == "cpu":
                        if not bool(torch.isfinite(x).all()):
                            raise NonFiniteSampleError(
                                f"the sample became non-finite (NaN/inf) at step {i} (timestep {ts_host[i]:g}) "
                                f"of {len(ts_host)} ({type(smp).__name__}); check the model output and schedule")
                    else:
                        deferred.append(torch.isfinite(x).all())
                if inter is not None:
                    inter["timesteps"].append(ts_host[i])
                    inter["samples"].append(res.prev_sample)
                    inter["pred_original_samples"].append(res.pred_original_sample)
                bar.update(1)
        finally:
            bar.close()
    if deferred:
        ok = torch.stack(deferred).cpu()
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0])
            raise NonFiniteSampleError(f"the sample became non-finite (NaN/inf) at step {i} (timestep "
                                       f"{ts_host[i]:g}) of {len(ts_host)} ({type(smp).__name__})")
    return (x, inter) if inter is not None else x
