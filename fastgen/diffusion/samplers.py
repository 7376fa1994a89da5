"""Diffusion samplers on the fused :func:`fastgen.functional.sampler_update` kernel.

Every sampler has diffusers' scheduler interface::

    sampler = DDIMSampler(schedule, prediction_type="epsilon")
    sampler.set_timesteps(50)
    x = torch.randn(shape, generator=g) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        x = sampler.prepare_sample(x, t, generator=g)   # identity except Heun with churn
        m = model(sampler.scale_model_input(x, t), t)
        x = sampler.step(m, t, x, generator=g).prev_sample

and each ``step`` is ONE call of the fused update

    m      = model_output            (or uncond + s (model_output - uncond): classifier-free guidance)
    x0     = scale * clamp(a_x x + a_m m, -clip, clip)
    x_prev = c_x x + c_0 x0 + c_m m + c_h1 h1 + c_h2 h2 + c_n sv noise

whose per-step coefficients are computed on the host in float64 by :meth:`Sampler.set_timesteps`
(``step`` only picks the precomputed row). Multistep and second-order samplers pass their
history (previous x0 predictions, the sample a Heun step started from) as ``h1``/``h2``.
Stochastic samplers either take ``noise=`` or generate the noise inside the kernel (a Philox
stream whose seed is drawn from ``generator``, a CPU ``torch.Generator`` or torch's default
one; a CUDA generator makes the step draw ``torch.randn`` instead).

Extras of ``step`` over diffusers: ``uncond=``/``guidance_scale=`` (the guidance combination
happens inside the kernel), ``noise=`` (explicit noise, e.g. to reproduce another
implementation's stream), ``out=(prev_sample, pred_original_sample)`` buffers (``out[0]`` may
be ``sample`` itself; a buffer that aliases a history tensor the sampler still needs is replaced
by a fresh tensor, so the result is always correct), and every sampler returns
``pred_original_sample`` (diffusers' DPM-Solver returns only ``prev_sample``).

Samplers (registry :data:`SAMPLERS`, factory :func:`get_sampler`):

=====================  ===================================================================
``ddpm``               :class:`DDPMSampler` (fixed_small / fixed_large / learned_range)
``ddim``               :class:`DDIMSampler` (``eta`` in [0, 1])
``euler``              :class:`EulerSampler` (diffusers ``EulerDiscreteScheduler``)
``euler_ancestral``    :class:`EulerAncestralSampler` (``EulerAncestralDiscreteScheduler``)
``heun``               :class:`HeunSampler` (``HeunDiscreteScheduler``; EDM churn options)
``dpmpp_2m``           :class:`DPMSolverMultistepSampler` with ``solver_order=2``
``dpmpp_3m``           :class:`DPMSolverMultistepSampler` with ``solver_order=3``
``euler_maruyama``     :class:`EulerMaruyamaSampler` (reverse SDE of a ``VPSDE``/``VESDE``)
``pf_ode``             :class:`ProbabilityFlowSampler` (probability-flow ODE, Euler)
=====================  ===================================================================

Differences from diffusers (all documented at the classes): ``clip_sample`` defaults to False
everywhere (diffusers' DDPM/DDIM default to True); all samplers share the default schedule
``linear 1e-4..0.02`` (diffusers' Heun uses 0.00085..0.012); ``EulerAncestralSampler`` also
offers ``use_karras_sigmas``; coefficients are float64 on the host (diffusers: float32), so
trajectories agree to fp32 rounding (~1e-6 relative), not bit for bit.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import backend
from ..ops.sampler_update import COEFF_NAMES, SamplerUpdateOutput, sampler_coeffs, sampler_update
from .schedules import VESDE, VPSDE, DiscreteSchedule, _np_linspace, karras_sigmas, make_schedule

__all__ = [
    "SamplerOutput",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "EulerSampler",
    "EulerAncestralSampler",
    "HeunSampler",
    "DPMSolverMultistepSampler",
    "EulerMaruyamaSampler",
    "ProbabilityFlowSampler",
    "SAMPLERS",
    "get_sampler",
]

SamplerOutput = SamplerUpdateOutput  # (prev_sample, pred_original_sample), a NamedTuple

_IDX = {k: i for i, k in enumerate(COEFF_NAMES)}
_OP = "sampler_update"
_SEED_HIGH = 2**63 - 1
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_F64 = torch.float64


# --------------------------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------------------------
def _check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def _check_float(name: str, v, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, allow_inf: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    f = float(v)
    if math.isnan(f) or (math.isinf(f) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {f}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {f}")
    if hi is not None and f > hi:
        raise ValueError(f"{name} must be <= {hi}, got {f}")
    return f


def _check_int(name: str, v, lo: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def _check_choice(name: str, v, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v


_SCHEDULE_KW = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr")


def _build_schedule(schedule, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                    rescale_betas_zero_snr) -> DiscreteSchedule:
    """A DiscreteSchedule from ``schedule`` or from diffusers-style schedule kwargs (not both)."""
    kw = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
              beta_schedule=beta_schedule, trained_betas=trained_betas, rescale_betas_zero_snr=rescale_betas_zero_snr)
    given = [k for k, v in kw.items() if v is not None]
    if schedule is not None:
        if not isinstance(schedule, DiscreteSchedule):
            raise TypeError(f"schedule must be a fastgen.diffusion.DiscreteSchedule, got {type(schedule).__name__}")
        if given:
            raise TypeError(f"pass either schedule= or schedule keyword arguments ({', '.join(given)}), not both")
        return schedule
    if trained_betas is not None:
        return make_schedule("custom", betas=torch.as_tensor(trained_betas, dtype=torch.float32),
                             rescale_zero_terminal_snr=bool(rescale_betas_zero_snr))
    return make_schedule(
        "linear" if beta_schedule is None else beta_schedule,
        1000 if num_train_timesteps is None else num_train_timesteps,
        1e-4 if beta_start is None else beta_start,
        0.02 if beta_end is None else beta_end,
        rescale_zero_terminal_snr=bool(rescale_betas_zero_snr),
    )


def _row(**kw) -> torch.Tensor:
    """One float64 coefficient row [12]."""
    return sampler_coeffs(**kw)


def _x0_coeffs_vp(prediction_type: str, ab: float) -> Tuple[float, float]:
    """(a_x, a_m) of x0 for a variance-preserving sample at alpha_bar ``ab`` (inf where undefined)."""
    if prediction_type == "epsilon":
        if ab <= 0:
            return math.inf, math.inf
        return 1.0 / math.sqrt(ab), -math.sqrt(1.0 - ab) / math.sqrt(ab)
    if prediction_type == "sample":
        return 0.0, 1.0
    return math.sqrt(ab), -math.sqrt(1.0 - ab)  # v_prediction


def _x0_coeffs_ve(prediction_type: str, sigma: float) -> Tuple[float, float]:
    """(a_x, a_m) of x0 for a variance-exploding sample ``x = x0 + sigma eps`` (Euler/Heun's input)."""
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "sample":
        return 0.0, 1.0
    return 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)  # v_prediction


def _interp(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``np.interp(t, arange(len(table)), table)`` in float64 (t within [0, len - 1])."""
    t = t.to(_F64)
    n = table.numel()
    lo = torch.floor(t).to(torch.long).clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = t - lo.to(_F64)
    return torch.where(frac == 0, table[lo], table[lo] + frac * (table[hi] - table[lo]))


def _sigma_to_t(sigmas: torch.Tensor, log_table: torch.Tensor) -> torch.Tensor:
    """diffusers' ``_sigma_to_t`` (log-sigma interpolation, clamped to the table)."""
    ls = torch.log(sigmas.to(_F64).clamp(min=1e-10))
    n = log_table.numel()
    lo = ((log_table[None, :] <= ls[:, None]).sum(dim=1) - 1).clamp(0, n - 2)
    low, high = log_table[lo], log_table[lo + 1]
    w = ((low - ls) / (low - high)).clamp(0, 1)
    return (1 - w) * lo.to(_F64) + w * (lo + 1).to(_F64)


class _SigmaTables:
    """The float32 sigma table diffusers' sigma-space schedulers build from ``alphas_cumprod``."""

    def __init__(self, schedule: DiscreteSchedule):
        ab = schedule.alphas_cumprod.to(torch.float32).clone()
        if schedule.zero_terminal_snr:
            ab[-1] = 2.0**-24  # as diffusers' Euler/DPM schedulers with rescale_betas_zero_snr
        sig = ((1 - ab) / ab) ** 0.5
        self.sigmas = sig.to(_F64)  # float32 values
        self.log_sigmas = torch.log(sig).to(_F64)


def _spacing_timesteps_float(T: int, n: int, spacing: str, steps_offset: int) -> torch.Tensor:
    """Float32 timesteps of diffusers' sigma-space schedulers (Euler/Heun): linspace is *not* rounded."""
    if spacing == "linspace":
        return _np_linspace(0.0, T - 1.0, n).to(torch.float32).flip(0)
    if spacing == "leading":
        ratio = T // n
        return (torch.arange(n - 1, -1, -1, dtype=_F64) * ratio).to(torch.float32) + float(steps_offset)
    ratio = T / n
    delta = (T + (-ratio)) - T
    vals = torch.round(T + torch.arange(n, dtype=_F64) * delta)
    return (vals - 1).to(torch.float32)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------
class Sampler:
    """Base of fastgen's samplers: step bookkeeping, thresholding and the fused-update call.

    Subclasses implement ``_setup(n)`` (fill ``self._rows``: one float64 ``[12]`` coefficient row
    per step, ``self._noisy``: whether a step adds noise, ``self.timesteps``) and ``_step``.

    Attributes:
        timesteps: the model timesteps, descending (int64 for discrete-time samplers, float32
            for sigma-space and SDE samplers), on the ``device`` given to ``set_timesteps``.
        num_inference_steps: number of *model evaluations* per sample is ``len(timesteps)``.
        init_noise_sigma: standard deviation of the initial noise.
        order: 1, or 2 for Heun (diffusers' attribute).
        impl: forced implementation of the fused op (``"torch"``, ``"cpp"``, ``"triton"``) or None.
    """

    order = 1
    prediction_types: Tuple[str, ...] = _PREDICTION_TYPES

    def __init__(self, *, prediction_type: str = "epsilon", clip_sample: bool = False,
                 clip_sample_range: float = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0, impl: Optional[str] = None):
        self.prediction_type = _check_choice("prediction_type", prediction_type, self.prediction_types)
        self.clip_sample = _check_bool("clip_sample", clip_sample)
        self.clip_sample_range = _check_float("clip_sample_range", clip_sample_range, lo=0.0, lo_open=True)
        self.thresholding = _check_bool("thresholding", thresholding)
        self.dynamic_thresholding_ratio = _check_float("dynamic_thresholding_ratio", dynamic_thresholding_ratio,
                                                       lo=0.0, hi=1.0)
        self.sample_max_value = _check_float("sample_max_value", sample_max_value, lo=1.0)
        if impl is not None and impl not in ("torch", "cpp", "triton", "auto"):
            raise ValueError(f"impl must be None, 'auto', 'torch', 'cpp' or 'triton', got {impl!r}")
        self.impl = impl
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self.init_noise_sigma: float = 1.0
        self._rows: List[torch.Tensor] = []
        self._noisy: List[bool] = []
        self._ts_host: List[float] = []
        self._in_scale: Optional[List[float]] = None  # per-step 1 / sqrt(sigma^2 + 1) of scale_model_input
        self._step_index: Optional[int] = None

    # ---------------------------------------------------------------- public API
    @property
    def clip(self) -> float:
        """The static x0 clamp (inf: none)."""
        return self.clip_sample_range if (self.clip_sample and not self.thresholding) else math.inf

    @property
    def step_index(self) -> Optional[int]:
        """Index of the next step into ``timesteps`` (None before the first step)."""
        return self._step_index

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Choose the inference timesteps and precompute every step's coefficients (host, float64)."""
        n = _check_int("num_inference_steps", num_inference_steps, 1)
        self._rows, self._noisy = [], []
        self._setup(n)
        ts = self.timesteps
        self._ts_host = [float(v) for v in ts.tolist()]
        self.timesteps = ts.to(device) if device is not None else ts
        self._step_index = None
        self._reset_state()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model input at ``timestep``: ``sample`` itself, or ``sample / sqrt(sigma^2 + 1)`` for
        the sigma-space samplers (Euler, Euler-ancestral, Heun), as diffusers."""
        if self._in_scale is None:
            return sample
        i = self._index(timestep, advance=False)
        return sample / self._in_scale[i]

    def prepare_sample(self, sample: torch.Tensor, timestep=None, generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
        """Hook to call before the model at each step; returns the sample to evaluate the model at.
        The identity for every sampler except :class:`HeunSampler` with EDM churn."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, *, noise: Optional[torch.Tensor] = None,
             uncond: Optional[torch.Tensor] = None, guidance_scale: float = 1.0,
             out: Optional[Sequence[torch.Tensor]] = None, return_dict: bool = True):
        """One sampler step (one fused-kernel call).

        Args:
            model_output: the network output at ``timestep`` (the conditional one when guiding).
            timestep: an element of ``self.timesteps`` (steps are counted internally, as diffusers
                does; a host timestep that does not match the counter re-synchronises it).
            sample: the current sample ``x_t``.
            generator: the RNG of stochastic steps (in-kernel noise seeded from it).
            noise: explicit standard-normal noise for a stochastic step (shape of ``sample``).
            uncond, guidance_scale: classifier-free guidance, ``m = uncond + s (model_output - uncond)``.
            out: ``(prev_sample, pred_original_sample)`` buffers to write into.
            return_dict: False returns a plain ``(prev_sample, pred_original_sample)`` tuple.

        Returns:
            ``SamplerOutput(prev_sample, pred_original_sample)``.
        """
        i = self._index(timestep, advance=True)
        res = self._step(i, model_output, sample, generator, noise, uncond, guidance_scale, out)
        self._step_index = i + 1
        return res if return_dict else (res[0], res[1])

    def __len__(self) -> int:
        return 0 if self.timesteps is None else len(self._ts_host)

    def __repr__(self) -> str:
        n = self.num_inference_steps
        return f"{type(self).__name__}(prediction_type={self.prediction_type!r}, num_inference_steps={n})"

    # ---------------------------------------------------------------- subclass hooks
    def _setup(self, n: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reset_state(self) -> None:
        pass

    def _step(self, i, model_output, sample, generator, noise, uncond, g, out) -> SamplerOutput:
        return self._update(self._rows[i], sample, model_output, uncond=uncond, g=g, noise=noise,
                            generator=generator, out=out, stochastic=self._noisy[i])

    # ---------------------------------------------------------------- internals
    def _lookup(self, timestep) -> int:
        v = float(timestep)
        idx = [k for k, t in enumerate(self._ts_host) if t == v]
        if not idx:
            raise ValueError(f"{type(self).__name__}.step: timestep {v:g} is not one of sampler.timesteps")
        return idx[0]

    def _index(self, timestep, advance: bool) -> int:
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before stepping")
        i = self._step_index
        if i is None:
            i = 0 if timestep is None else self._lookup(timestep)
            self._step_index = i
            return i
        if timestep is not None:
            if isinstance(timestep, torch.Tensor):
                host = timestep.device.type == "cpu"
                if host and (i >= len(self._ts_host) or float(timestep) != self._ts_host[i]):
                    i = self._resync(timestep)
            elif i >= len(self._ts_host) or float(timestep) != self._ts_host[i]:
                i = self._resync(timestep)
        if i >= len(self._ts_host):
            raise RuntimeError(f"{type(self).__name__}: all {len(self._ts_host)} steps were taken; call "
                               "set_timesteps() again to sample anew")
        return i

    def _resync(self, timestep) -> int:
        i = self._lookup(timestep)
        self._step_index = i
        self._reset_state()
        return i

    def _raw_x0(self, row, x, m, uncond, g):
        """x0 before clamping, in fp32 (for dynamic thresholding)."""
        mf = m.float()
        if uncond is not None:
            mf = uncond.float() + g * (mf - uncond.float())
        return float(row[_IDX["a_x"]]) * x.float() + float(row[_IDX["a_m"]]) * mf

    def _threshold_row(self, row, x, m, uncond, g) -> torch.Tensor:
        """Per-sample rows with clip = s and scale = 1 / s (Imagen's dynamic thresholding)."""
        raw = self._raw_x0(row, x, m, uncond, g)
        n = raw.shape[0]
        s = torch.quantile(raw.reshape(n, -1).abs(), self.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1.0, max=self.sample_max_value).to(device="cpu", dtype=_F64)
        rows = row.expand(n, len(COEFF_NAMES)).clone()
        rows[:, _IDX["clip"]] = s
        rows[:, _IDX["scale"]] = 1.0 / s
        return rows

    def _update(self, row, x, m, *, uncond=None, g=1.0, h1=None, h2=None, noise=None, var=None, generator=None,
                out=None, stochastic=False, protect=()) -> SamplerOutput:
        """The fused update with one coefficient row (direct custom-op call when the C++ kernel runs)."""
        if self.thresholding:
            row = self._threshold_row(row, x, m, uncond, g)
        if out is not None:
            out = self._safe_out(out, protect)
        mode, seed = 0, 0
        if stochastic:
            if noise is not None:
                mode = 1
            elif generator is not None and generator.device.type != "cpu":
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                mode = 1
            else:
                mode = 2
        else:
            noise = var = None
        fast = (backend.resolve(_OP, x.device, self.impl) == "cpp" and m.shape == x.shape
                and not (torch.is_grad_enabled() and (x.requires_grad or m.requires_grad)))
        if not fast:
            return sampler_update(x, m, row, uncond=uncond, guidance_scale=g, h1=h1, h2=h2, noise=noise,
                                  var_values=var, generator=generator, out=out, impl=self.impl)
        if mode == 2:
            seed = int(torch.randint(0, _SEED_HIGH, (), generator=generator))
        g = float(g)
        if out is None:
            xp, x0 = torch.ops.fastgen.sampler_update(x, m, row, uncond, g, h1, h2, noise, var, mode, seed, 0)
            return SamplerOutput(xp, x0)
        torch.ops.fastgen.sampler_update_out(x, m, row, uncond, g, h1, h2, noise, var, mode, seed, 0, out[0], out[1])
        return SamplerOutput(out[0], out[1])

    @staticmethod
    def _safe_out(out, protect) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replace an out buffer that aliases a tensor the sampler must keep for later steps."""
        if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
            raise TypeError("out must be a pair of tensors (prev_sample, pred_original_sample)")
        if not protect:
            return out
        o0, o1 = out
        ptrs = {t.data_ptr() for t in protect if t is not None}
        if o0.data_ptr() in ptrs:
            o0 = torch.empty_like(o0)
        if o1.data_ptr() in ptrs:
            o1 = torch.empty_like(o1)
        return o0, o1

    def _check_x0_coeffs(self, a_x: float, a_m: float, t) -> None:
        if not (math.isfinite(a_x) and math.isfinite(a_m)):
            raise ValueError(f"{type(self).__name__}: prediction_type={self.prediction_type!r} cannot recover x0 at "
                             f"timestep {t} (alpha_bar = 0, zero terminal SNR); use prediction_type='v_prediction'")


# --------------------------------------------------------------------------------------------
# discrete-time VP samplers
# --------------------------------------------------------------------------------------------
class _DiscreteSampler(Sampler):
    def __init__(self, schedule=None, *, num_train_timesteps=None, beta_start=None, beta_end=None, beta_schedule=None,
                 trained_betas=None, rescale_betas_zero_snr=None, timestep_spacing: str = "leading",
                 steps_offset: int = 0, **kw):
        super().__init__(**kw)
        self.schedule = _build_schedule(schedule, num_train_timesteps, beta_start, beta_end, beta_schedule,
                                        trained_betas, rescale_betas_zero_snr)
        self.timestep_spacing = _check_choice("timestep_spacing", timestep_spacing, ("leading", "trailing", "linspace"))
        self.steps_offset = _check_int("steps_offset", steps_offset, 0)

    def _discrete_timesteps(self, n: int) -> torch.Tensor:
        return self.schedule.timesteps(n, self.timestep_spacing, self.steps_offset)


class DDPMSampler(_DiscreteSampler):
    """Ancestral DDPM sampling (Ho et al. 2020; improved DDPM's learned variance), as diffusers'
    ``DDPMScheduler``.

    Args:
        schedule: a :class:`DiscreteSchedule`, or diffusers-style ``num_train_timesteps``,
            ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``,
            ``rescale_betas_zero_snr`` (default: linear 1e-4..0.02, 1000 steps).
        variance_type: ``"fixed_small"`` (posterior variance; ``"fixed_small_log"`` is the same
            noise), ``"fixed_large"`` (beta_t) or ``"learned_range"`` (the model outputs ``2C``
            channels ``[eps, v]``; the noise std is ``exp(0.5 (v' log beta_t + (1 - v') log
            var_post))`` with ``v' = (v + 1) / 2``, evaluated inside the kernel).
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        timestep_spacing, steps_offset: as diffusers (default ``"leading"``, 0).
        clip_sample, clip_sample_range: clamp x0 (default off; diffusers' default is on).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding
            (costs one extra pass to find the per-sample quantile).

    No noise is added at ``t = 0`` (diffusers' rule). With learned_range and guidance, the
    variance channels of the conditional output are used.
    """

    _VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "learned_range")

    def __init__(self, schedule=None, *, variance_type: str = "fixed_small", **kw):
        super().__init__(schedule, **kw)
        self.variance_type = _check_choice("variance_type", variance_type, self._VARIANCES)

    def _setup(self, n: int) -> None:
        s = self.schedule
        ts = self._discrete_timesteps(n)
        tl = ts.tolist()
        for k, t in enumerate(tl):
            prev = tl[k + 1] if k + 1 < len(tl) else -1
            ab = float(s.alphas_cumprod[t])
            ab_p = float(s.alphas_cumprod[prev]) if prev >= 0 else 1.0
            a_x, a_m = _x0_coeffs_vp(self.prediction_type, ab)
            self._check_x0_coeffs(a_x, a_m, t)
            cur_alpha = ab / ab_p
            cur_beta = 1.0 - cur_alpha
            c_0 = math.sqrt(ab_p) * cur_beta / (1.0 - ab)
            c_x = math.sqrt(cur_alpha) * (1.0 - ab_p) / (1.0 - ab)
            var = max((1.0 - ab_p) / (1.0 - ab) * cur_beta, 1e-20)
            kw = dict(a_x=a_x, a_m=a_m, clip=self.clip, c_x=c_x, c_0=c_0)
            noisy = t > 0
            if noisy:
                if self.variance_type == "learned_range":
                    kw.update(c_n=1.0, lv_lo=math.log(var), lv_hi=math.log(cur_beta))
                elif self.variance_type == "fixed_large":
                    kw.update(c_n=math.sqrt(cur_beta))
                else:
                    kw.update(c_n=math.sqrt(var))
            self._rows.append(_row(**kw))
            self._noisy.append(noisy)
        self.timesteps = ts
        self.num_inference_steps = n
        self.init_noise_sigma = 1.0

    def _step(self, i, model_output, sample, generator, noise, uncond, g, out):
        var = None
        if self.variance_type == "learned_range":
            c = sample.shape[1]
            if model_output.dim() < 2 or model_output.shape[1] != 2 * c:
                raise ValueError(f"DDPMSampler(variance_type='learned_range'): model_output must have 2 * C = {2 * c} "
                                 f"channels [eps, v], got shape {tuple(model_output.shape)}")
            model_output, var = model_output[:, :c], model_output[:, c:]
            if uncond is not None:
                uncond = uncond[:, :c]
        return self._update(self._rows[i], sample, model_output, uncond=uncond, g=g, noise=noise, var=var,
                            generator=generator, out=out, stochastic=self._noisy[i])


class DDIMSampler(_DiscreteSampler):
    """DDIM (Song et al. 2021) with stochasticity ``eta`` (0: deterministic, 1: DDPM-like), as
    diffusers' ``DDIMScheduler``.

    Args (besides those of :class:`DDPMSampler`'s schedule/prediction/clipping options):
        eta: in [0, 1].
        set_alpha_to_one: the final step goes to alpha_bar = 1 (else ``alphas_cumprod[0]``).
        use_clipped_model_output: re-derive eps from the clipped x0 (diffusers' step option).

    As diffusers, the previous timestep is ``t - T // num_inference_steps`` for every spacing.
    """

    def __init__(self, schedule=None, *, eta: float = 0.0, set_alpha_to_one: bool = True,
                 use_clipped_model_output: bool = False, **kw):
        super().__init__(schedule, **kw)
        self.eta = _check_float("eta", eta, lo=0.0, hi=1.0)
        self.set_alpha_to_one = _check_bool("set_alpha_to_one", set_alpha_to_one)
        self.use_clipped_model_output = _check_bool("use_clipped_model_output", use_clipped_model_output)

    def _setup(self, n: int) -> None:
        s = self.schedule
        T = s.num_train_timesteps
        ts = self._discrete_timesteps(n)
        final = 1.0 if self.set_alpha_to_one else float(s.alphas_cumprod[0])
        for t in ts.tolist():
            prev = t - T // n
            ab = float(s.alphas_cumprod[t])
            ab_p = float(s.alphas_cumprod[prev]) if prev >= 0 else final
            a_x, a_m = _x0_coeffs_vp(self.prediction_type, ab)
            self._check_x0_coeffs(a_x, a_m, t)
            bt = 1.0 - ab
            var = (1.0 - ab_p) / bt * (1.0 - ab / ab_p)
            std = self.eta * math.sqrt(max(var, 0.0))
            d = math.sqrt(max(1.0 - ab_p - std * std, 0.0))
            c_0, c_x, c_m = math.sqrt(ab_p), 0.0, 0.0
            if self.use_clipped_model_output or self.prediction_type == "sample":
                if bt <= 0:
                    raise ValueError("DDIMSampler: eps cannot be re-derived at alpha_bar = 1")
                # eps = (x - sqrt(ab) x0') / sqrt(1 - ab), x0' the clipped (or raw "sample") x0
                if self.use_clipped_model_output:
                    c_x, c_0 = d / math.sqrt(bt), c_0 - d * math.sqrt(ab) / math.sqrt(bt)
                else:
                    c_x, c_m = d / math.sqrt(bt), -d * math.sqrt(ab) / math.sqrt(bt)
            elif self.prediction_type == "epsilon":
                c_m = d
            else:  # v: eps = sqrt(ab) m + sqrt(1 - ab) x
                c_m, c_x = d * math.sqrt(ab), d * math.sqrt(bt)
            noisy = self.eta > 0 and std > 0
            self._rows.append(_row(a_x=a_x, a_m=a_m, clip=self.clip, c_x=c_x, c_0=c_0, c_m=c_m,
                                   c_n=std if noisy else 0.0))
            self._noisy.append(noisy)
        self.timesteps = ts
        self.num_inference_steps = n
        self.init_noise_sigma = 1.0


# --------------------------------------------------------------------------------------------
# sigma-space samplers (k-diffusion / diffusers' Euler family)
# --------------------------------------------------------------------------------------------
class _SigmaSampler(_DiscreteSampler):
    """Samplers on ``x = x0 + sigma eps`` (the VP sample times ``sqrt(sigma^2 + 1)``)."""

    def __init__(self, schedule=None, *, use_karras_sigmas: bool = False, timestep_spacing: str = "linspace", **kw):
        super().__init__(schedule, timestep_spacing=timestep_spacing, **kw)
        self.use_karras_sigmas = _check_bool("use_karras_sigmas", use_karras_sigmas)
        self._tables = _SigmaTables(self.schedule)

    def _sigmas(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(timesteps float32 [n], sigmas float64 [n + 1] with a final 0), as diffusers' Euler."""
        T = self.schedule.num_train_timesteps
        ts = _spacing_timesteps_float(T, n, self.timestep_spacing, self.steps_offset)
        if float(ts.max()) > T - 1 or float(ts.min()) < 0:
            raise ValueError(f"timesteps {ts.tolist()} fall outside [0, {T - 1}] (steps_offset={self.steps_offset})")
        sig = _interp(ts.to(_F64), self._tables.sigmas)
        if self.use_karras_sigmas:
            lo, hi = float(sig[-1]), float(sig[0])
            sig = karras_sigmas(n, lo, hi) if n > 1 else torch.tensor([hi], dtype=_F64)
            ts = _sigma_to_t(sig, self._tables.log_sigmas).to(torch.float32)
        sig = torch.cat([sig.to(torch.float32).to(_F64), torch.zeros(1, dtype=_F64)])
        return ts, sig

    def _set_init_sigma(self, smax: float) -> None:
        self.init_noise_sigma = smax if self.timestep_spacing in ("linspace", "trailing") else math.sqrt(smax**2 + 1)


class EulerSampler(_SigmaSampler):
    """Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022), as diffusers'
    ``EulerDiscreteScheduler`` (``interpolation_type="linear"``, ``final_sigmas_type="zero"``).

    The sample lives in the variance-exploding parameterisation: start from
    ``randn * init_noise_sigma`` and feed the model ``scale_model_input(x, t) = x / sqrt(sigma^2 + 1)``.

    Args: schedule options, ``prediction_type``, ``timestep_spacing`` (default ``"linspace"``:
    fractional timesteps), ``steps_offset``, ``use_karras_sigmas``, ``clip_sample`` (an
    extension: clamps the x0 the derivative is built from).
    """

    def _setup(self, n: int) -> None:
        ts, sig = self._sigmas(n)
        self._in_scale = []
        for k in range(n):
            s, s_next = float(sig[k]), float(sig[k + 1])
            a_x, a_m = _x0_coeffs_ve(self.prediction_type, s)
            dt = s_next - s
            self._rows.append(_row(a_x=a_x, a_m=a_m, clip=self.clip, c_x=1.0 + dt / s, c_0=-dt / s))
            self._noisy.append(False)
            self._in_scale.append(math.sqrt(s * s + 1.0))
        self.sigmas = sig
        self.timesteps = ts
        self.num_inference_steps = n
        self._set_init_sigma(float(sig.max()))


class EulerAncestralSampler(_SigmaSampler):
    """Ancestral Euler sampling (k-diffusion's ``sample_euler_ancestral``), as diffusers'
    ``EulerAncestralDiscreteScheduler``: an Euler step to ``sigma_down`` plus fresh noise of std
    ``sigma_up`` (``sigma_up^2 + sigma_down^2 = sigma_next^2``), the noise generated inside the
    kernel unless ``noise=`` is given. ``prediction_type`` "epsilon" or "v_prediction" (diffusers
    has no "sample"); ``use_karras_sigmas`` is an extension (diffusers' ancestral scheduler lacks it).
    """

    prediction_types = ("epsilon", "v_prediction")

    def _setup(self, n: int) -> None:
        ts, sig = self._sigmas(n)
        self._in_scale = []
        for k in range(n):
            s, s_to = float(sig[k]), float(sig[k + 1])
            a_x, a_m = _x0_coeffs_ve(self.prediction_type, s)
            up = math.sqrt(max(s_to**2 * (s**2 - s_to**2) / s**2, 0.0))
            down = math.sqrt(max(s_to**2 - up**2, 0.0))
            dt = down - s
            self._rows.append(_row(a_x=a_x, a_m=a_m, clip=self.clip, c_x=1.0 + dt / s, c_0=-dt / s, c_n=up))
            self._noisy.append(up > 0)
            self._in_scale.append(math.sqrt(s * s + 1.0))
        self.sigmas = sig
        self.timesteps = ts
        self.num_inference_steps = n
        self._set_init_sigma(float(sig.max()))


class HeunSampler(_SigmaSampler):
    """Heun's 2nd-order method (EDM, Karras et al. 2022 Alg. 1/2), as diffusers'
    ``HeunDiscreteScheduler``: ``timesteps`` holds ``2n - 1`` model evaluations
    ``[t0, t1, t1, ..., t_{n-1}, t_{n-1}]``; each step but the last is an Euler stage followed by a
    correction stage, the last one (to sigma = 0) is a single Euler stage.

    Both stages are one fused call: the correction computes
    ``x_next = x_orig + dt/2 (d1 + d2)`` with ``d1 = (x_orig - x0_1) / sigma`` and
    ``d2 = (x - x0_2) / sigma_next``, linear in ``(x, x0_2, h1 = x_orig, h2 = x0_1)``.

    EDM churn (``s_churn > 0``): at a first stage with ``s_tmin <= sigma <= s_tmax`` the noise
    level is raised to ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(s_churn / n, sqrt(2) - 1)``,
    by ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise eps``. That injection is a separate
    elementwise op, :meth:`prepare_sample`, which must be called before the model (``sample()``
    does); the first stage then runs at ``sigma_hat`` (its ``timesteps`` entry is
    ``sigma_to_t(sigma_hat)``, and ``scale_model_input`` uses ``sigma_hat``).

    Args: schedule options, ``prediction_type``, ``timestep_spacing`` (default "linspace"),
    ``steps_offset``, ``use_karras_sigmas``, ``clip_sample``/``clip_sample_range``,
    ``s_churn`` (0), ``s_tmin`` (0), ``s_tmax`` (inf), ``s_noise`` (1).
    """

    order = 2

    def __init__(self, schedule=None, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0, **kw):
        super().__init__(schedule, **kw)
        self.s_churn = _check_float("s_churn", s_churn, lo=0.0)
        self.s_tmin = _check_float("s_tmin", s_tmin, lo=0.0)
        self.s_tmax = _check_float("s_tmax", s_tmax, lo=0.0, allow_inf=True)
        self.s_noise = _check_float("s_noise", s_noise, lo=0.0)
        self._x_orig = self._x0_first = None
        self._churned = -1

    def _setup(self, n: int) -> None:
        ts, sig = self._sigmas(n)
        gamma_max = math.sqrt(2.0) - 1.0
        self._in_scale, self._stage, self._churn = [], [], []
        tl = []
        for k in range(n):
            s, s_next = float(sig[k]), float(sig[k + 1])
            gamma = min(self.s_churn / n, gamma_max) if (self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax) else 0.0
            s_hat = s * (gamma + 1.0)
            t_k = float(ts[k])
            if gamma > 0:
                t_k = float(_sigma_to_t(torch.tensor([s_hat]), self._tables.log_sigmas).to(torch.float32))
            dt = s_next - s_hat
            # first (Euler) stage at sigma_hat
            a_x, a_m = _x0_coeffs_ve(self.prediction_type, s_hat)
            self._rows.append(_row(a_x=a_x, a_m=a_m, clip=self.clip, c_x=1.0 + dt / s_hat, c_0=-dt / s_hat))
            self._noisy.append(False)
            self._in_scale.append(math.sqrt(s_hat * s_hat + 1.0))
            self._stage.append(1 if s_next > 0 else 0)  # 0: final Euler step, no correction
            self._churn.append(math.sqrt(s_hat**2 - s**2) * self.s_noise if gamma > 0 else 0.0)
            tl.append(t_k)
            if s_next > 0:
                # correction stage at sigma_next
                a_x, a_m = _x0_coeffs_ve(self.prediction_type, s_next)
                h = 0.5 * dt
                self._rows.append(_row(a_x=a_x, a_m=a_m, clip=self.clip, c_x=h / s_next, c_0=-h / s_next,
                                       c_h1=1.0 + h / s_hat, c_h2=-h / s_hat))
                self._noisy.append(False)
                self._in_scale.append(math.sqrt(s_next * s_next + 1.0))
                self._stage.append(2)
                self._churn.append(0.0)
                tl.append(float(ts[k + 1]))
        self.sigmas = sig
        self.timesteps = torch.tensor(tl, dtype=torch.float32)
        self.num_inference_steps = n
        self._set_init_sigma(float(sig.max()))

    def _reset_state(self) -> None:
        self._x_orig = self._x0_first = None
        self._churned = -1

    def _lookup(self, timestep) -> int:
        v = float(timestep)
        idx = [k for k, t in enumerate(self._ts_host) if t == v and self._stage[k] != 2]
        if not idx:
            raise ValueError(f"HeunSampler.step: timestep {v:g} is not a first-stage timestep of sampler.timesteps")
        return idx[0]

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next step is a first (Euler) stage (diffusers' name)."""
        return self._x_orig is None

    def prepare_sample(self, sample, timestep=None, generator=None):
        """EDM churn: ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise eps`` at a churned first stage
        (an extra elementwise op); the identity otherwise."""
        i = self._index(timestep, advance=False)
        c = self._churn[i]
        if c == 0.0:
            return sample
        eps = torch.randn(sample.shape, generator=generator, dtype=sample.dtype,
                          device=generator.device if generator is not None else sample.device).to(sample.device)
        self._churned = i
        return sample + c * eps

    def _step(self, i, model_output, sample, generator, noise, uncond, g, out):
        stage = self._stage[i]
        row = self._rows[i]
        if stage == 2:
            if self._x_orig is None:
                raise RuntimeError("HeunSampler: correction stage without a first stage (call step at every timestep)")
            res = self._update(row, sample, model_output, uncond=uncond, g=g, h1=self._x_orig, h2=self._x0_first,
                               out=out)
            self._x_orig = self._x0_first = None
            return res
        if self._churn[i] != 0.0 and self._churned != i:
            raise RuntimeError("HeunSampler with s_churn > 0: call sampler.prepare_sample(sample, t, generator) before "
                               "the model at each step (it injects the churn noise)")
        res = self._update(row, sample, model_output, uncond=uncond, g=g, out=out,
                           protect=(sample,) if stage == 1 else ())
        if stage == 1:
            self._x_orig, self._x0_first = sample, res.pred_original_sample
        return res


class DPMSolverMultistepSampler(_SigmaSampler):
    """DPM-Solver++ multistep (Lu et al. 2022), 2M (midpoint) and 3M, as diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint",
    final_sigmas_type="zero")``.

    Works on the VP sample (``init_noise_sigma = 1``, no input scaling). The history of x0
    predictions (already thresholded/clipped) is passed to the kernel as ``h1``/``h2``, so a step
    reads x, the model output and ``solver_order - 1`` earlier x0's and writes x_prev and x0.

    Args: schedule options, ``solver_order`` (2 or 3; 1 is DPM-Solver++ 1 = DDIM), ``prediction_type``,
    ``timestep_spacing`` (default "linspace"), ``steps_offset``, ``lower_order_final`` (True:
    lower orders for the last steps when there are fewer than 15), ``use_karras_sigmas``,
    ``thresholding`` options, ``clip_sample`` (an extension).
    """

    def __init__(self, schedule=None, *, solver_order: int = 2, algorithm_type: str = "dpmsolver++",
                 solver_type: str = "midpoint", lower_order_final: bool = True, **kw):
        super().__init__(schedule, **kw)
        self.solver_order = _check_int("solver_order", solver_order, 1)
        if self.solver_order > 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order}")
        _check_choice("algorithm_type", algorithm_type, ("dpmsolver++",))
        _check_choice("solver_type", solver_type, ("midpoint",))
        self.algorithm_type, self.solver_type = algorithm_type, solver_type
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        self._hist: List[torch.Tensor] = []

    def _setup(self, n: int) -> None:
        s = self.schedule
        T = s.num_train_timesteps
        sp = self.timestep_spacing
        if sp == "linspace":
            ts = torch.round(_np_linspace(0.0, T - 1.0, n + 1)).flip(0)[:-1].to(torch.long)
        elif sp == "leading":
            ratio = T // (n + 1)
            ts = (torch.arange(n, -1, -1, dtype=torch.long) * ratio)[:-1] + self.steps_offset
        else:
            ts = s.timesteps(n, "trailing")
        if int(ts.max()) > T - 1:
            raise ValueError(f"timesteps exceed num_train_timesteps - 1 = {T - 1}")
        table = self._tables.sigmas
        if self.use_karras_sigmas:
            sig = karras_sigmas(n, float(table[0]), float(table[-1])) if n > 1 else table[-1:].clone()
            tf = _sigma_to_t(sig, self._tables.log_sigmas)
            ts = (tf if s.kind == "cosine" else torch.round(tf)).to(torch.long)
        else:
            sig = table[ts]
        sig = torch.cat([sig.to(torch.float32).to(_F64), torch.zeros(1, dtype=_F64)])
        if bool((sig[1:] >= sig[:-1]).any()):  # h = 0: the solver's steps divide by it
            raise ValueError(f"num_inference_steps={n} is too many for num_train_timesteps={T} with "
                             f"timestep_spacing={sp!r}: the timesteps repeat (use at most {T - 1} steps, "
                             f"or timestep_spacing='trailing' for up to {T})")
        self.sigmas = sig

        def al_sg(sigma):
            a = 1.0 / math.sqrt(sigma * sigma + 1.0)
            return a, sigma * a

        def lam(sigma):
            a, sg = al_sg(sigma)
            return math.log(a) - math.log(sg)

        nsteps = len(ts)
        self._orders = []
        for i in range(nsteps):
            sg0 = float(sig[i])
            a_s0, s_s0 = al_sg(sg0)
            if self.prediction_type == "epsilon":
                a_x, a_m = 1.0 / a_s0, -s_s0 / a_s0
            elif self.prediction_type == "sample":
                a_x, a_m = 0.0, 1.0
            else:
                a_x, a_m = a_s0, -s_s0
            lower_final = i == nsteps - 1  # final_sigmas_type="zero": always first order at the end
            lower_second = i == nsteps - 2 and self.lower_order_final and nsteps < 15
            lon = min(i, self.solver_order)
            if self.solver_order == 1 or lon < 1 or lower_final:
                order = 1
            elif self.solver_order == 2 or lon < 2 or lower_second:
                order = 2
            else:
                order = 3
            st = float(sig[i + 1])
            a_t, s_t = al_sg(st)
            kw = dict(a_x=a_x, a_m=a_m, clip=self.clip)
            if st == 0.0:  # h = inf: x_prev = x0 (alpha_t = 1)
                kw.update(c_0=a_t)
                order = 1
            else:
                h = lam(st) - lam(sg0)
                em = math.expm1(-h)  # exp(-h) - 1
                kw["c_x"] = s_t / s_s0
                if order == 1:
                    kw["c_0"] = -a_t * em
                elif order == 2:
                    r0 = (lam(sg0) - lam(float(sig[i - 1]))) / h
                    # D0 = m0, D1 = (m0 - m1) / r0; x = c_x x - a_t em D0 - 0.5 a_t em D1
                    kw["c_0"] = -a_t * em * (1.0 + 0.5 / r0)
                    kw["c_h1"] = 0.5 * a_t * em / r0
                else:
                    l0, l1, l2 = lam(sg0), lam(float(sig[i - 1])), lam(float(sig[i - 2]))
                    r0, r1 = (l0 - l1) / h, (l1 - l2) / h
                    d10 = (1.0 / r0, -1.0 / r0, 0.0)
                    d11 = (0.0, 1.0 / r1, -1.0 / r1)
                    diff = tuple(p - q for p, q in zip(d10, d11))
                    D1 = tuple(p + r0 / (r0 + r1) * q for p, q in zip(d10, diff))
                    D2 = tuple(q / (r0 + r1) for q in diff)
                    cA = -a_t * em
                    cB = a_t * (em / h + 1.0)
                    cC = -a_t * ((em + h) / (h * h) - 0.5)
                    c = [cA * (1.0 if j == 0 else 0.0) + cB * D1[j] + cC * D2[j] for j in range(3)]
                    kw.update(c_0=c[0], c_h1=c[1], c_h2=c[2])
            self._orders.append(order)
            self._rows.append(_row(**kw))
            self._noisy.append(False)
        self.timesteps = ts
        self.num_inference_steps = nsteps
        self.init_noise_sigma = 1.0

    def _reset_state(self) -> None:
        self._hist = []  # previous x0 predictions, newest first

    def _step(self, i, model_output, sample, generator, noise, uncond, g, out):
        order = self._orders[i]
        hist = self._hist
        if len(hist) < order - 1:
            raise RuntimeError(f"DPMSolverMultistepSampler: step {i} needs {order - 1} earlier x0 predictions; "
                               "call step at every timestep from the first one")
        h1 = hist[0] if order >= 2 else None
        h2 = hist[1] if order >= 3 else None
        # x0's still needed after this step (besides the new one) must not be overwritten by out=
        res = self._update(self._rows[i], sample, model_output, uncond=uncond, g=g, h1=h1, h2=h2, out=out,
                           protect=tuple(hist[: max(self.solver_order - 2, 0)]))
        # keep the newest solver_order - 1 x0's
        self._hist = ([res.pred_original_sample] + hist)[: max(self.solver_order - 1, 0)]
        return res


# --------------------------------------------------------------------------------------------
# score-SDE samplers (continuous time)
# --------------------------------------------------------------------------------------------
class _SDESampler(Sampler):
    prediction_types = ("epsilon",)

    def __init__(self, sde=None, *, sampling_eps: Optional[float] = None, denoise_final: bool = True,
                 discrete_time: Optional[int] = None, prediction_type: str = "epsilon", impl: Optional[str] = None):
        super().__init__(prediction_type=prediction_type, impl=impl)
        if sde is None:
            sde = VPSDE()
        elif isinstance(sde, DiscreteSchedule):
            if discrete_time is None:
                discrete_time = sde.num_train_timesteps
            sde = VPSDE.from_discrete(sde)
        self.discrete_time = None if discrete_time is None else _check_int("discrete_time", discrete_time, 1)
        if not isinstance(sde, (VPSDE, VESDE)):
            raise TypeError(f"sde must be a VPSDE, a VESDE or a linear DiscreteSchedule, got {type(sde).__name__}")
        self.sde = sde
        T = sde.T if isinstance(sde, VPSDE) else 1.0
        default_eps = 1e-3 if isinstance(sde, VPSDE) else 1e-5
        self.sampling_eps = _check_float("sampling_eps", default_eps if sampling_eps is None else sampling_eps,
                                         lo=0.0, lo_open=True)
        if self.sampling_eps >= T:
            raise ValueError(f"sampling_eps must be < T = {T}, got {self.sampling_eps}")
        self.T = T
        self.denoise_final = _check_bool("denoise_final", denoise_final)

    def _coefs(self, t: float) -> Tuple[float, float, float, float]:
        """(mean coefficient m, std s, drift factor f (f(x) = f x), diffusion g^2) at t."""
        tt = torch.tensor(t, dtype=_F64)
        m, s = (float(v) for v in self.sde.marginal(tt))
        if isinstance(self.sde, VPSDE):
            b = float(self.sde.beta(tt))
            return m, s, -0.5 * b, b
        g = float(self.sde.sigma(tt)) * math.sqrt(2.0 * math.log(self.sde.sigma_max / self.sde.sigma_min))
        return m, s, 0.0, g * g

    def _setup(self, n: int) -> None:
        grid = torch.linspace(self.T, self.sampling_eps, n + 1, dtype=_F64)
        for k in range(n):
            t, dt = float(grid[k]), float(grid[k] - grid[k + 1])
            m, s, f, g2 = self._coefs(t)
            # reverse-time drift: f x - c g^2 score, score = -eps / s
            c_x = 1.0 - f * dt
            c_m = -self._score_weight * g2 * dt / s
            noisy = self._stochastic and not (self.denoise_final and k == n - 1)
            self._rows.append(_row(a_x=1.0 / m, a_m=-s / m, c_x=c_x, c_m=c_m,
                                   c_n=math.sqrt(g2 * dt) if noisy else 0.0))
            self._noisy.append(noisy)
        ts = grid[:-1]
        if self.discrete_time is not None:  # discrete label i <-> t = (i + 1) / N
            ts = ts * self.discrete_time - 1.0
        self.timesteps = ts.to(torch.float32)
        self.num_inference_steps = n
        self.init_noise_sigma = float(self.sde.marginal(torch.tensor(self.T, dtype=_F64))[1])


class EulerMaruyamaSampler(_SDESampler):
    """Euler-Maruyama on the reverse-time SDE of a :class:`VPSDE` / :class:`VESDE` (Song et al. 2021):
    ``x <- x - [f(x, t) - g(t)^2 score] dt + g(t) sqrt(dt) z`` with ``score = -eps / std(t)``
    (the model predicts eps). Times run on ``linspace(T, sampling_eps, n + 1)``; ``timesteps`` are
    the continuous times of the n model evaluations (the model gets ``t`` as a float). With
    ``denoise_final`` (default) the last step adds no noise (the "x_mean" of the reference code).
    A linear :class:`DiscreteSchedule` is accepted and converted with ``VPSDE.from_discrete``; the
    model then gets discrete-scale timesteps ``t N - 1`` (``discrete_time=N``, which can also be
    given explicitly) so that a network trained on integer timesteps can be used.
    """

    _stochastic = True
    _score_weight = 1.0


class ProbabilityFlowSampler(_SDESampler):
    """Euler on the probability-flow ODE ``dx = [f(x, t) - g(t)^2 score / 2] dt`` of a
    :class:`VPSDE` / :class:`VESDE`, the model predicting eps (``score = -eps / std(t)``).
    Deterministic; arguments as :class:`EulerMaruyamaSampler`."""

    _stochastic = False
    _score_weight = 0.5


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def _dpmpp(order):
    def make(schedule=None, **kw):
        if "solver_order" in kw:
            raise TypeError(f"solver_order is fixed by the sampler name (dpmpp_{order}m); use "
                            "DPMSolverMultistepSampler directly to choose it")
        return DPMSolverMultistepSampler(schedule, solver_order=order, **kw)

    return make


SAMPLERS: Dict[str, object] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_ancestral": EulerAncestralSampler,
    "heun": HeunSampler,
    "dpmpp_2m": _dpmpp(2),
    "dpmpp_3m": _dpmpp(3),
    "euler_maruyama": EulerMaruyamaSampler,
    "pf_ode": ProbabilityFlowSampler,
}


def get_sampler(name: str, schedule=None, **kwargs) -> Sampler:
    """Build a sampler by registry name (see :data:`SAMPLERS`).

    ``schedule`` is a :class:`DiscreteSchedule` (or None: the sampler's default / the schedule
    keyword arguments), or for ``euler_maruyama``/``pf_ode`` a ``VPSDE``/``VESDE``. Unknown names
    raise ValueError; unknown or bad keyword arguments raise TypeError/ValueError naming them.
    """
    if not isinstance(name, str):
        raise TypeError(f"sampler name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    try:
        return SAMPLERS[key](schedule, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"sampler {key!r}: {e}") from None
        raise
