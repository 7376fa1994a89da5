"""The sampling loop: :func:`sample` draws samples from a diffusion model with any fastgen sampler.

    x = fastgen.sample(model, (16, 4, 64, 64), sampler="dpmpp_2m", steps=20,
                       guidance_scale=4.0, class_labels=labels, null_label=1000)

Per step: one model forward (conditional and unconditional halves batched together under
classifier-free guidance) and one fused sampler update (the guidance combination happens inside
that kernel). The loop reuses its output buffers (two sample buffers used in turn and a ring of
three x0 buffers, which no sampler's history can alias) and checks the sample stays finite.

CUDA graphs (``cuda_graph=True``, CUDA only): for the launch-bound small-batch case, one sampling
step -- the model forward (with the CFG ``cat`` and the label batch), the fused update, the history
bookkeeping and the finiteness flag -- is captured once into a CUDA graph over static buffers and
then replayed for every step. The per-step data (the fp32 coefficient row, the input scale of the
sigma-space samplers, the timestep, the step index) lives in one device table uploaded before the
loop; before each replay one device-to-device copy puts that step's row into the static row
buffer the graph reads (no host sync per step; one at the end for the finiteness check).

Graph-captured samplers (one graph each unless noted; the coefficient rows make every step of a
sampler the same kernel sequence):

* ``DDPMSampler`` (fixed_small / fixed_small_log / fixed_large / learned_range), ``DDIMSampler``
  (any ``eta``), ``EulerAncestralSampler``, ``EulerMaruyamaSampler``: stochastic steps draw their
  noise with ``torch.randn`` inside the graph and pass it as ``noise`` (steps without noise, e.g.
  the last DDPM step, have ``c_n = 0`` and add nothing). The noise comes from ``generator`` when it
  is a CUDA generator on the sampling device (registered with the graph), else from a CUDA
  generator seeded from ``generator`` (CPU), else from torch's default CUDA generator: samples
  are reproducible for a seeded generator, but the noise stream differs from eager sampling
  (which uses in-kernel Philox noise with a CPU generator, and draws no warm-up noise).
* ``EulerSampler``, ``ProbabilityFlowSampler``: deterministic, one graph.
* ``DPMSolverMultistepSampler`` (2M/3M): one graph that always passes the x0 history as
  ``h1``/``h2`` (zero-initialised buffers; the lower-order first/final steps have ``c_h1 = c_h2 = 0``
  in their rows) and shifts the history inside the graph.
* ``HeunSampler`` without churn: two graphs, the Euler stage (which also keeps ``x`` and ``x0``
  for the correction) and the correction stage (``h1``, ``h2``), replayed alternately.

Sampled eagerly, with one RuntimeWarning: ``HeunSampler`` with EDM churn (``s_churn > 0``: noise
injected by ``prepare_sample`` at some steps only), samplers with ``thresholding=True`` (dynamic
thresholding reads per-sample quantiles back to the host every step) and sampler subclasses
other than the built-in ones (their ``_step`` structure is unknown).

The model must be capturable (no host syncs such as ``.item()``/``.cpu()``, no data-dependent
shapes, no CPU tensors created per call) and should be in eval mode; under ``torch.autocast`` use
``cache_enabled=False``. The graph is warmed up (3 calls per graph, on a side stream) and captured
on each ``sample`` call, so the model is called from Python 4 times per graph, not once per step.
Deterministic samplers give the eager result up to fp32 rounding (the sigma-space input scaling is
``x * fp32(1 / s)`` on device, as eager CUDA computes ``x / s``).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Any, Dict, Optional, Union

import torch

from .. import backend
from .samplers import (DDIMSampler, DDPMSampler, DPMSolverMultistepSampler, EulerAncestralSampler,
                       EulerMaruyamaSampler, EulerSampler, HeunSampler, ProbabilityFlowSampler, Sampler, get_sampler)

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


def _model_output(out, x: torch.Tensor, C: Optional[int], keep_var: bool) -> torch.Tensor:
    """The model's prediction as a tensor of x's dtype (learned-variance channels dropped unless used)."""
    if not isinstance(out, torch.Tensor):
        out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
    if out.dtype != x.dtype:
        out = out.to(x.dtype)
    if C is not None and not keep_var and out.dim() == x.dim() and out.shape[1] == 2 * C:
        out = out[:, :C]  # learned variance channels, unused by this sampler
    return out


def _initial_noise(shape, generator, device, dtype) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def sample(model, shape, *, sampler: Union[str, Sampler] = "ddim", steps: int = 50, schedule=None,
           guidance_scale: float = 1.0, class_labels=None, null_label=None,
           generator: Optional[torch.Generator] = None, device: Union[str, torch.device, None] = None,
           dtype: torch.dtype = torch.float32, progress: bool = True, return_intermediates: bool = False,
           model_kwargs: Optional[Dict[str, Any]] = None, sampler_kwargs: Optional[Dict[str, Any]] = None,
           initial_noise: Optional[torch.Tensor] = None, check_finite: bool = True, cuda_graph: bool = False):
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
        cuda_graph: CUDA only (ValueError otherwise): capture one step (model forward, CFG batching
            and fused update) in a CUDA graph and replay it for every step, for small batches whose
            steps are launch-bound. See the module docstring for which samplers are captured (the
            others sample eagerly with a warning) and what the model must allow.

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
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")

    if isinstance(sampler, Sampler):
        if schedule is not None or sampler_kwargs:
            raise ValueError("schedule= and sampler_kwargs= are only used with a sampler name, not a sampler object")
        smp = sampler
    elif isinstance(sampler, str):
        smp = get_sampler(sampler, schedule, **(sampler_kwargs or {}))
    else:
        raise TypeError(f"sampler must be a name or a fastgen Sampler, got {type(sampler).__name__}")

    device = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
    if cuda_graph and device.type not in _GRAPH_DEVICE_TYPES:
        raise ValueError(f"cuda_graph=True needs a CUDA device (CUDA graphs), but sampling runs on {device}; "
                         "pass device='cuda' (or a model on the GPU), or cuda_graph=False")
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
    if cuda_graph:
        why = _graph_unsupported(smp)
        if why is None:
            return _sample_cuda_graph(model, smp, x, kw, B=B, mb=mb, cfg=cfg, g=g, C=C, keep_var=keep_var,
                                      generator=generator, progress=progress,
                                      return_intermediates=return_intermediates, check_finite=check_finite)
        warnings.warn(f"sample(cuda_graph=True): {why}; sampling without a CUDA graph", RuntimeWarning, stacklevel=2)
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
                out = _model_output(model(x_in, t_batch, **kw), x, C, keep_var)
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


# --------------------------------------------------------------------------------------------
# CUDA-graph sampling
# --------------------------------------------------------------------------------------------
# exact types: a subclass may override _step / prepare_sample with a structure we cannot know
_GRAPH_SAMPLERS = (DDPMSampler, DDIMSampler, EulerSampler, EulerAncestralSampler, HeunSampler,
                   DPMSolverMultistepSampler, EulerMaruyamaSampler, ProbabilityFlowSampler)
_GRAPH_WARMUP = 3
_GRAPH_DEVICE_TYPES = ("cuda",)  # (tests add "cpu" with the capture helpers below replaced by fakes)
# per-step device row: the 12 coefficients, then these
_COL_INV_SCALE, _COL_T, _COL_STEP, _ROW = 12, 13, 14, 15
_SEED_HIGH = 2**63 - 1


def _graph_unsupported(smp: Sampler) -> Optional[str]:
    """Why ``smp`` (after set_timesteps) is sampled eagerly under cuda_graph=True; None: captured."""
    if type(smp) not in _GRAPH_SAMPLERS:
        return (f"{type(smp).__name__} is not one of fastgen's built-in samplers (its step structure is unknown "
                "to the graph capture)")
    if smp.thresholding:
        return ("dynamic thresholding (thresholding=True) reads per-sample quantiles back to the host every step, "
                "which a CUDA graph cannot capture")
    if isinstance(smp, HeunSampler) and any(c != 0.0 for c in smp._churn):
        return "HeunSampler with EDM churn (s_churn > 0) injects noise at some steps only (prepare_sample)"
    return None


def _step_table(smp: Sampler, device: torch.device) -> torch.Tensor:
    """Device fp32 [steps, 15]: each step's coefficient row, fp32 reciprocal of the input scale (1:
    none), timestep and index. The coefficient values are those the eager CUDA op uses (fp32 of
    the float64 rows); the reciprocal is what eager CUDA's ``x / s`` multiplies by."""
    n = len(smp._ts_host)
    tab = torch.zeros(n, _ROW, dtype=torch.float64)
    tab[:, :12] = torch.stack([r.reshape(12) for r in smp._rows])
    if smp._in_scale is not None:
        s32 = torch.tensor(smp._in_scale, dtype=torch.float64).to(torch.float32)
        tab[:, _COL_INV_SCALE] = (1.0 / s32).to(torch.float64)  # fp32 division
    else:
        tab[:, _COL_INV_SCALE] = 1.0
    tab[:, _COL_T] = torch.tensor(smp._ts_host, dtype=torch.float64)
    tab[:, _COL_STEP] = torch.arange(n, dtype=torch.float64)
    return tab.to(torch.float32).to(device)


def _fused_update_out(impl: str, x, m, coeffs, u, g, h1, h2, noise, var, mode, xp, x0) -> None:
    """The fused update into (xp, x0) with device fp32 coefficients (no host sync, no host data)."""
    if impl == "cpp":
        torch.ops.fastgen.sampler_update_out(x, m, coeffs, u, g, h1, h2, noise, var, mode, 0, 0, xp, x0)
    elif impl == "triton":
        from ..ops.sampler_update import _triton_ops

        _triton_ops()[1](x, m, coeffs, u, g, h1, h2, noise, var, mode, 0, 0, xp, x0)
    else:
        from ..ops.sampler_update import sampler_update_reference

        rp, r0 = sampler_update_reference(x, m, coeffs, uncond=u, guidance_scale=g, h1=h1, h2=h2,
                                          noise=noise if mode else None, var_values=var if mode else None)
        xp.copy_(rp)
        x0.copy_(r0)


def _graph_noise_generator(generator: Optional[torch.Generator], device: torch.device) -> Optional[torch.Generator]:
    """The CUDA generator the graph draws its noise from (None: torch's default one of ``device``)."""
    if generator is None:
        return None
    gd = generator.device
    if gd.type == "cuda" and (gd.index if gd.index is not None else torch.cuda.current_device()) == device.index:
        return generator
    # a CPU generator (or one on another GPU): seed a CUDA generator from it (reproducible)
    seed = int(torch.randint(0, _SEED_HIGH, (), generator=generator, device=gd))
    return torch.Generator(device=device).manual_seed(seed)


def _device_ctx(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _warmup(device: torch.device, fn, times: int) -> None:
    """Run ``fn()`` ``times`` times on a side stream (what capture needs first: lazy initialisation,
    cuDNN / Triton autotuning and the allocator's warm state happen outside the graph)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


def _capture(device: torch.device, fn, generator: Optional[torch.Generator]):
    """A CUDA graph of ``fn()`` (its own memory pool); ``generator``: a non-default CUDA generator
    that ``fn`` draws from (registered, so each replay advances it and draws fresh numbers)."""
    gr = torch.cuda.CUDAGraph()
    if generator is not None and generator not in torch.cuda.default_generators:
        gr.register_generator_state(generator)
    try:
        with torch.cuda.graph(gr):
            fn()
    except Exception as e:
        raise RuntimeError(
            f"sample(cuda_graph=True): capturing the sampling step in a CUDA graph failed ({type(e).__name__}: {e}). "
            "The model must be capturable: no host syncs (.item(), .cpu(), printing tensors), no data-dependent "
            "shapes, no new CPU->GPU copies per call; or use cuda_graph=False") from e
    return gr


def _sample_cuda_graph(model, smp: Sampler, x: torch.Tensor, kw: Dict[str, Any], *, B: int, mb: int, cfg: bool,
                       g: float, C: Optional[int], keep_var: bool, generator: Optional[torch.Generator],
                       progress: bool, return_intermediates: bool, check_finite: bool):
    """The sampling loop of :func:`sample` with each step replayed from a CUDA graph."""
    from tqdm.auto import tqdm

    device = x.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n = len(smp._ts_host)
    ts_host = list(smp._ts_host)
    ts_dtype = smp.timesteps.dtype
    impl = backend.resolve("sampler_update", device, smp.impl)
    stochastic = any(smp._noisy)
    mode = 1 if stochastic else 0
    scaled = smp._in_scale is not None
    heun = isinstance(smp, HeunSampler)
    order = smp.solver_order if isinstance(smp, DPMSolverMultistepSampler) else 1
    # graph kind of each step: 0 one step / Heun's Euler stage, 1 Heun's correction stage
    kinds = [1 if heun and smp._stage[i] == 2 else 0 for i in range(n)]

    with torch.no_grad(), _device_ctx(device):
        table = _step_table(smp, device)
        # static buffers (allocated outside the capture, alive until we return)
        x_init = x.contiguous()
        x_s = x_init.clone()
        xp_s = torch.empty_like(x_s)
        x0_s = torch.empty_like(x_s)
        row_s = table[0].clone()
        coef_s = row_s[:12]  # contiguous view: the fp32 [12] device coefficients the op reads
        inv_s = row_s[_COL_INV_SCALE]
        bad_s = torch.full((), math.inf, dtype=torch.float32, device=device)  # first non-finite step
        h1_s = torch.zeros_like(x_s) if order >= 2 else None
        h2_s = torch.zeros_like(x_s) if order >= 3 else None
        xorig_s = torch.zeros_like(x_s) if heun else None
        x0first_s = torch.zeros_like(x_s) if heun else None
        ngen = _graph_noise_generator(generator, device) if stochastic else None

        def step_body(kind: int) -> None:
            x_in = x_s if not scaled else (x_s.to(torch.float32) * inv_s).to(x_s.dtype)
            if cfg:
                x_in = torch.cat([x_in, x_in])
            t_b = row_s[_COL_T].to(ts_dtype).expand(mb).contiguous()
            out = _model_output(model(x_in, t_b, **kw), x_s, C, keep_var)
            uncond = var = None
            if cfg:
                out, uncond = out[:B], out[B:]
            if keep_var:
                c = x_s.shape[1]
                if out.dim() < 2 or out.shape[1] != 2 * c:
                    raise ValueError(f"DDPMSampler(variance_type='learned_range'): model_output must have 2 * C = "
                                     f"{2 * c} channels [eps, v], got shape {tuple(out.shape)}")
                out, var = out[:, :c], out[:, c:]
                if uncond is not None:
                    uncond = uncond[:, :c]
                if not stochastic:
                    var = None
            if out.shape != x_s.shape:
                raise ValueError(f"sample(cuda_graph=True): the model output has shape {tuple(out.shape)}, the sample "
                                 f"{tuple(x_s.shape)}")
            noise = (torch.randn(x_s.shape, generator=ngen, dtype=x_s.dtype, device=device) if stochastic
                     else None)
            h1, h2 = (xorig_s, x0first_s) if kind == 1 else (h1_s, h2_s)
            _fused_update_out(impl, x_s, out, coef_s, uncond, g, h1, h2, noise, var, mode, xp_s, x0_s)
            if heun and kind == 0:  # the correction stage needs the stage's start and x0
                xorig_s.copy_(x_s)
                x0first_s.copy_(x0_s)
            if h2_s is not None:
                h2_s.copy_(h1_s)
            if h1_s is not None:
                h1_s.copy_(x0_s)
            x_s.copy_(xp_s)
            if check_finite:
                cand = row_s[_COL_STEP].masked_fill(torch.isfinite(x_s).all(), math.inf)
                torch.minimum(bad_s, cand, out=bad_s)

        used = sorted(set(kinds))
        first = {k: kinds.index(k) for k in used}
        for k in used:
            row_s.copy_(table[first[k]])
            _warmup(device, lambda k=k: step_body(k), _GRAPH_WARMUP)
        graphs = {k: _capture(device, lambda k=k: step_body(k), ngen) for k in used}
        # the warm-up advanced the state: start again from the initial sample and empty history
        x_s.copy_(x_init)
        for t in (h1_s, h2_s, xorig_s, x0first_s):
            if t is not None:
                t.zero_()
        bad_s.fill_(math.inf)

        inter = {"timesteps": [], "samples": [], "pred_original_samples": []} if return_intermediates else None
        bar = tqdm(total=n, disable=not progress, desc=f"sampling ({type(smp).__name__}, CUDA graph)", leave=False)
        try:
            for i in range(n):
                row_s.copy_(table[i])  # device to device, stream-ordered before the replay
                graphs[kinds[i]].replay()
                if inter is not None:
                    inter["timesteps"].append(ts_host[i])
                    inter["samples"].append(x_s.clone())
                    inter["pred_original_samples"].append(x0_s.clone())
                bar.update(1)
        finally:
            bar.close()
        smp._step_index = n
        if check_finite:
            b = float(bad_s)  # the one host sync
            if math.isfinite(b):
                i = int(b)
                raise NonFiniteSampleError(f"the sample became non-finite (NaN/inf) at step {i} (timestep "
                                           f"{ts_host[i]:g}) of {n} ({type(smp).__name__})")
        del graphs
    return (x_s, inter) if inter is not None else x_s
