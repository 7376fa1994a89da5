"""Noise schedules for diffusion models (pure PyTorch, float64).

Discrete-time variance-preserving schedules (:class:`DiscreteSchedule`, built by
:func:`make_schedule`) reproduce diffusers' ``DDPMScheduler``/``DDIMScheduler`` tables
bit-for-bit, inference timestep spacings reproduce ``DDIMScheduler.set_timesteps``, and the
sigma helpers reproduce ``EulerDiscreteScheduler`` (``t_to_sigma``/``sigma_to_t``,
:func:`karras_sigmas`, :func:`exponential_sigmas`). :class:`VPSDE` and :class:`VESDE` are the
continuous-time SDEs of Song et al. (2021).

Precision
---------
diffusers computes the built-in beta schedules, ``alphas = 1 - betas`` and
``alphas_cumprod = cumprod(alphas)`` in float32. To give the same coefficients (and hence the
same samples) a :class:`DiscreteSchedule` performs those three steps in the dtype of its
*source* betas (float32 for the built-in kinds, the given dtype for custom float32/float64
betas) and stores the results converted to float64; everything derived from them (sigmas,
SNR, ...) is then computed in float64.

Conventions
-----------
* Discrete timesteps are integers ``t`` in ``[0, T-1]``; ``alphas_cumprod[t]`` is the signal
  level *after* ``t + 1`` noising steps. ``t = -1`` means "clean data" (``alpha_bar = 1``),
  the ``final_alpha_cumprod`` DDIM uses with ``set_alpha_to_one=True``.
* ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` is the noise level of the variance-exploding
  view ``x / sqrt(alpha_bar) = x0 + sigma * eps`` used by EDM / k-diffusion samplers.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Optional, Tuple

import torch

__all__ = [
    "DiscreteSchedule",
    "make_schedule",
    "karras_sigmas",
    "exponential_sigmas",
    "VPSDE",
    "VESDE",
]

_KINDS = ("linear", "scaled_linear", "cosine", "sigmoid", "custom")
_KIND_ALIASES = {"squaredcos_cap_v2": "cosine"}  # diffusers' name for the cosine schedule
_SPACINGS = ("leading", "trailing", "linspace")
_F64 = torch.float64


# --------------------------------------------------------------------------------------------
# argument checking helpers
# --------------------------------------------------------------------------------------------
def _int_arg(name: str, value, minimum: Optional[int] = None) -> int:
    """Return ``value`` as a Python int, or raise TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _float_arg(name: str, value) -> float:
    """Return ``value`` as a finite Python float, or raise TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _float_tensor(name: str, value, default_dtype=_F64) -> torch.Tensor:
    """``value`` as a floating tensor: floating tensors keep their dtype, the rest become float64."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be real, got dtype {value.dtype}")
        return value if value.is_floating_point() else value.to(default_dtype)
    try:
        if hasattr(value, "dtype") and hasattr(value, "shape"):  # numpy array/scalar: keep float dtype
            arr = torch.as_tensor(value)
            if arr.is_floating_point():
                return arr
            if arr.dtype != torch.bool and not arr.is_complex():
                return arr.to(default_dtype)
        return torch.as_tensor(value, dtype=default_dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}") from e


def _np_linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """float64 linspace evaluated exactly as ``numpy.linspace`` does (``i * step + start``, last
    element set to ``stop``), so rounding it reproduces diffusers' numpy-based timesteps."""
    if num == 1:
        return torch.tensor([float(start)], dtype=_F64)
    step = (stop - start) / (num - 1)
    y = torch.arange(num, dtype=_F64) * step + start
    y[-1] = stop
    return y


def _broadcast_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape ``t.shape`` so it broadcasts against ``x``
    (trailing singleton dims), in ``x``'s dtype and device."""
    coef = coef.to(device=x.device, dtype=x.dtype if x.is_floating_point() else coef.dtype)
    if 0 < coef.dim() < x.dim():
        coef = coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))
    return coef


# --------------------------------------------------------------------------------------------
# discrete VP schedule
# --------------------------------------------------------------------------------------------
class DiscreteSchedule:
    """A discrete-time variance-preserving noise schedule with ``T`` training timesteps.

    ``q(x_t | x_0) = N(sqrt(alphas_cumprod[t]) x_0, (1 - alphas_cumprod[t]) I)``.

    Parameters
    ----------
    betas : 1-D tensor or sequence of floats
        Per-step noise variances, ``0 < beta <= 1``. A float32 or float64 tensor keeps its dtype
        as the *source dtype* in which ``alphas`` and ``alphas_cumprod`` are computed (see the
        module docstring); anything else is converted to float64.
    kind : str
        Label of the schedule family (``"linear"``, ``"scaled_linear"``, ``"cosine"``,
        ``"sigmoid"`` or ``"custom"``); informational only.

    Attributes
    ----------
    num_train_timesteps : int
        ``T``.
    betas, alphas, alphas_cumprod : float64 tensor [T]
        ``alphas = 1 - betas`` and ``alphas_cumprod = cumprod(alphas)``, both evaluated in the
        source dtype and stored as float64.
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod : float64 tensor [T]
    sigmas : float64 tensor [T]
        ``sqrt((1 - ab) / ab)``, increasing; ``inf`` where ``ab == 0`` (zero terminal SNR).
    snr, log_snr : float64 tensor [T]
        ``ab / (1 - ab)`` and its log (``log(ab) - log1p(-ab)``); ``inf`` where ``ab == 1``,
        ``0`` / ``-inf`` where ``ab == 0``.
    zero_terminal_snr : bool
        Whether ``alphas_cumprod[-1] == 0``.
    kind : str
    """

    def __init__(self, betas, kind: str = "custom"):
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, got {type(kind).__name__}")
        kind = _KIND_ALIASES.get(kind, kind)
        if kind not in _KINDS:
            raise ValueError(f"unknown schedule kind={kind!r}; expected one of {_KINDS}")
        src = _float_tensor("betas", betas)
        if src.dtype not in (torch.float32, torch.float64):
            src = src.to(_F64)
        src = src.detach().to("cpu").clone().contiguous()
        if src.dim() != 1:
            raise ValueError(f"betas must be 1-D, got shape {tuple(src.shape)}")
        if src.numel() == 0:
            raise ValueError("betas must be non-empty")
        if not bool(torch.isfinite(src).all()) or not bool(((src > 0) & (src <= 1)).all()):
            bad = src[~((src > 0) & (src <= 1))]
            raise ValueError(f"betas must satisfy 0 < beta <= 1; got e.g. {bad[0].item()!r}")

        self.kind = kind
        self.num_train_timesteps = int(src.numel())
        self._betas_src = src
        alphas_src = 1.0 - src
        ab_src = torch.cumprod(alphas_src, dim=0)

        self.betas = src.to(_F64)
        self.alphas = alphas_src.to(_F64)
        self.alphas_cumprod = ab_src.to(_F64)

        ab = self.alphas_cumprod
        self.sqrt_alphas_cumprod = ab.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ab).sqrt()
        self.sigmas = ((1.0 - ab) / ab).sqrt()
        self.snr = ab / (1.0 - ab)
        self.log_snr = torch.log(ab) - torch.log1p(-ab)
        self.zero_terminal_snr = bool(ab[-1] == 0)
        self._log_sigmas = torch.log(self.sigmas)
        self._ab_ext = torch.cat([torch.ones(1, dtype=_F64), ab])  # index t + 1, t in [-1, T-1]

    def __repr__(self) -> str:
        return (
            f"DiscreteSchedule(kind={self.kind!r}, num_train_timesteps={self.num_train_timesteps}, "
            f"beta=[{self.betas[0].item():.6g}..{self.betas[-1].item():.6g}], "
            f"alpha_bar_T={self.alphas_cumprod[-1].item():.6g}, source_dtype={self._betas_src.dtype})"
        )

    # ---------------------------------------------------------------- lookups
    def alpha_bar(self, t) -> torch.Tensor:
        """``alphas_cumprod`` at integer timesteps.

        Parameters
        ----------
        t : int, sequence of ints or integer tensor (any shape)
            Timesteps in ``[-1, T-1]``. ``t = -1`` gives ``1.0``: the "previous" alpha_bar of the
            last DDIM step when ``set_alpha_to_one=True`` (this is *not* Python's negative
            indexing).

        Returns
        -------
        float64 tensor of ``t``'s shape, on ``t``'s device.

        Raises
        ------
        TypeError if ``t`` is not integral; ValueError if any ``t`` is outside ``[-1, T-1]``.
        """
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"t must be an integer timestep tensor, got dtype {t.dtype}")
            tt = t.to(torch.long)
        else:
            if isinstance(t, (bool, float)):
                raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
            tt = torch.as_tensor(t)
            if tt.is_floating_point() or tt.is_complex() or tt.dtype == torch.bool:
                raise TypeError(f"t must be integral, got {type(t).__name__} of dtype {tt.dtype}")
            tt = tt.to(torch.long)
        T = self.num_train_timesteps
        if tt.numel() and (int(tt.min()) < -1 or int(tt.max()) > T - 1):
            raise ValueError(
                f"t must be in [-1, {T - 1}] (num_train_timesteps={T}), got values in "
                f"[{int(tt.min())}, {int(tt.max())}]"
            )
        return self._ab_ext.to(tt.device)[tt + 1]

    def timesteps(
        self, num_inference_steps: int, spacing: str = "leading", steps_offset: int = 0
    ) -> torch.Tensor:
        """Inference timesteps, descending, exactly as ``DDIMScheduler.set_timesteps``.

        With ``T = num_train_timesteps`` and ``n = num_inference_steps``:

        * ``"leading"``: ``arange(n)[::-1] * (T // n) + steps_offset``.
        * ``"trailing"``: ``round(arange(T, 0, -T / n)) - 1`` (numpy float ``arange``
          semantics). Where numpy's float ``arange`` yields ``n + 1`` elements (e.g. T=1000,
          n=61) diffusers returns a spurious extra timestep ``-1``; here the first ``n`` are
          returned, which equal diffusers' first ``n``.
        * ``"linspace"``: ``round(linspace(0, T - 1, n))[::-1]`` (round half to even, as
          numpy). Note diffusers' *Euler* scheduler does not round this spacing (fractional
          timesteps); use ``t_to_sigma`` on ``linspace(0, T-1, n)`` for those.

        ``steps_offset`` is added for ``"leading"`` only (diffusers ignores it for the other
        spacings; Stable Diffusion configs use 1).

        Returns
        -------
        LongTensor [n], descending, within ``[0, T-1]``.

        Raises
        ------
        ValueError if ``num_inference_steps`` is not in ``[1, T]``, ``spacing`` is unknown,
        ``steps_offset < 0`` or leading timesteps plus ``steps_offset`` exceed ``T - 1``.
        """
        T = self.num_train_timesteps
        n = _int_arg("num_inference_steps", num_inference_steps, 1)
        if n > T:
            raise ValueError(
                f"num_inference_steps={n} cannot exceed num_train_timesteps={T}"
            )
        offset = _int_arg("steps_offset", steps_offset, 0)
        if not isinstance(spacing, str) or spacing not in _SPACINGS:
            raise ValueError(f"unknown spacing={spacing!r}; expected one of {_SPACINGS}")

        if spacing == "leading":
            ts = torch.arange(n - 1, -1, -1, dtype=torch.long) * (T // n) + offset
            if int(ts[0]) > T - 1:
                raise ValueError(
                    f"steps_offset={offset} pushes the first leading timestep to {int(ts[0])} "
                    f"> num_train_timesteps - 1 = {T - 1}"
                )
            return ts
        if spacing == "trailing":
            ratio = T / n
            # numpy's float arange: a[0] = start, a[i] = start + i * ((start + step) - start)
            delta = (T + (-ratio)) - T
            vals = T + torch.arange(n, dtype=_F64) * delta
            return torch.round(vals).to(torch.long) - 1
        # linspace
        return torch.round(_np_linspace(0.0, T - 1.0, n)).to(torch.long).flip(0)

    # ---------------------------------------------------------------- sigma <-> t
    def t_to_sigma(self, t) -> torch.Tensor:
        """Sigma at (fractional) timesteps by linear interpolation of ``sigmas`` in ``t``.

        Same as diffusers' Euler ``np.interp(t, arange(T), sigmas)``.

        Parameters
        ----------
        t : float, sequence or tensor (any shape), values in ``[0, T-1]``.

        Returns
        -------
        float64 tensor of ``t``'s shape, on ``t``'s device.

        Raises
        ------
        ValueError if any ``t`` is NaN or outside ``[0, T-1]``.
        """
        tt = _float_tensor("t", t).to(_F64)
        T = self.num_train_timesteps
        if tt.numel() and not bool(((tt >= 0) & (tt <= T - 1)).all()):
            raise ValueError(f"t must be in [0, {T - 1}] (num_train_timesteps={T})")
        sig = self.sigmas.to(tt.device)
        lo = torch.floor(tt).to(torch.long).clamp(0, T - 1)
        hi = (lo + 1).clamp(max=T - 1)
        frac = tt - lo.to(_F64)
        s_lo, s_hi = sig[lo], sig[hi]
        # exact table values at integer t (also avoids 0 * inf for a zero-terminal-SNR schedule)
        return torch.where(frac == 0, s_lo, s_lo + frac * (s_hi - s_lo))

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Continuous timestep of a noise level, by linear interpolation in ``log(sigma)``.

        Same as diffusers' ``EulerDiscreteScheduler._sigma_to_t``. Out-of-range sigmas are
        **clamped**: ``sigma <= sigmas[0]`` (including ``sigma = 0``, the final sigma of a
        sampler) gives ``t = 0``, ``sigma >= sigmas[-1]`` gives ``t = T - 1``.

        Parameters
        ----------
        sigma : float, sequence or tensor (any shape), ``>= 0``.

        Returns
        -------
        float64 tensor of ``sigma``'s shape, on ``sigma``'s device.

        Raises
        ------
        ValueError if any ``sigma`` is negative or NaN.
        """
        s = _float_tensor("sigma", sigma).to(_F64)
        if s.numel() and not bool((s >= 0).all()):
            raise ValueError("sigma must be >= 0 (and not NaN)")
        T = self.num_train_timesteps
        if T == 1:
            return torch.zeros_like(s)
        ls = self._log_sigmas.to(s.device)
        x = torch.log(s.clamp(min=1e-10))
        lo = (torch.searchsorted(ls, x.reshape(-1), right=True) - 1).clamp(0, T - 2).reshape(x.shape)
        low, high = ls[lo], ls[lo + 1]
        w = (low - x) / (low - high)
        # limits where a table end is -inf (alpha_bar == 1) or +inf (alpha_bar == 0)
        w = torch.where(torch.isinf(low), torch.ones_like(w), w)
        w = torch.where(torch.isinf(high), torch.zeros_like(w), w)
        w = torch.where(x <= low, torch.zeros_like(w), w)
        w = torch.where(x >= high, torch.ones_like(w), w)
        w = w.clamp(0, 1)
        lo_f = lo.to(_F64)
        return (1 - w) * lo_f + w * (lo_f + 1)

    # ---------------------------------------------------------------- transforms
    def rescale_zero_terminal_snr(self) -> "DiscreteSchedule":
        """A new schedule with zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise
        Schedules and Sample Steps are Flawed", Algorithm 1).

        ``sqrt(alphas_cumprod)`` is shifted so its last value is 0 and scaled so its first value
        is unchanged; betas are recomputed from it (so ``betas[-1] == 1`` and
        ``alphas_cumprod[-1] == 0``), in the source dtype, which reproduces diffusers'
        ``rescale_betas_zero_snr=True`` exactly. The result has ``sigmas[-1] = inf``; diffusers'
        Euler scheduler replaces ``alphas_cumprod[-1]`` by ``2**-24`` for that reason.

        Raises
        ------
        ValueError if ``num_train_timesteps < 2``.
        """
        T = self.num_train_timesteps
        if T < 2:
            raise ValueError(f"rescale_zero_terminal_snr needs num_train_timesteps >= 2, got {T}")
        sqrt_ab = torch.cumprod(1.0 - self._betas_src, dim=0).sqrt()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        sqrt_ab = (sqrt_ab - last) * (first / (first - last))
        ab = sqrt_ab * sqrt_ab
        alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
        betas = 1 - alphas
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(
                "rescale_zero_terminal_snr produced betas outside (0, 1] (alphas_cumprod not "
                "strictly decreasing in the source dtype)"
            )
        return DiscreteSchedule(betas, kind=self.kind)


def _cosine_betas(T: int, s: float, max_beta: float) -> torch.Tensor:
    """improved-DDPM cosine betas, evaluated like diffusers' ``betas_for_alpha_bar`` (Python
    float64 per step, stored as float32)."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_schedule(
    kind: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    betas=None,
    rescale_zero_terminal_snr: bool = False,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> DiscreteSchedule:
    """Build a :class:`DiscreteSchedule` the way diffusers' schedulers do.

    Parameters
    ----------
    kind : str
        * ``"linear"``: ``linspace(beta_start, beta_end, T)`` (DDPM).
        * ``"scaled_linear"``: ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` (Stable
          Diffusion: ``beta_start=0.00085, beta_end=0.012``).
        * ``"cosine"`` (alias ``"squaredcos_cap_v2"``): improved-DDPM, ``beta_i = min(1 -
          f((i+1)/T) / f(i/T), max_beta)`` with ``f(u) = cos((u + s) / (1 + s) * pi/2)^2``;
          ``beta_start``/``beta_end`` are ignored.
        * ``"sigmoid"``: ``sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start``
          (GeoDiff).
        * ``"custom"``: the given ``betas``; ``T = len(betas)`` and ``num_train_timesteps``,
          ``beta_start``, ``beta_end`` are ignored.

        The built-in kinds are evaluated in float32 exactly as diffusers does, so ``betas``,
        ``alphas`` and ``alphas_cumprod`` equal diffusers' values exactly (stored as float64).
    num_train_timesteps : int
        ``T >= 1``.
    beta_start, beta_end : float
        ``0 < beta_start < beta_end <= 1`` (linear, scaled_linear, sigmoid).
    betas : 1-D tensor or sequence, keyword-only
        Only with ``kind="custom"`` (required there); ``0 < beta <= 1``.
    rescale_zero_terminal_snr : bool
        Apply :meth:`DiscreteSchedule.rescale_zero_terminal_snr` (diffusers'
        ``rescale_betas_zero_snr``).
    cosine_s : float
        Offset ``s >= 0`` of the cosine schedule (0.008, fixed in diffusers).
    max_beta : float
        Cap ``0 < max_beta <= 1`` on the cosine betas.

    Raises
    ------
    TypeError / ValueError naming the offending argument.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, got {type(kind).__name__}")
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind={kind!r}; expected one of {_KINDS}")

    if kind == "custom":
        if betas is None:
            raise ValueError("kind='custom' needs betas=")
        sched = DiscreteSchedule(betas, kind="custom")
    else:
        if betas is not None:
            raise ValueError(f"betas= is only used with kind='custom', got kind={kind!r}")
        T = _int_arg("num_train_timesteps", num_train_timesteps, 1)
        if kind == "cosine":
            s = _float_arg("cosine_s", cosine_s)
            if s < 0:
                raise ValueError(f"cosine_s must be >= 0, got {s}")
            mb = _float_arg("max_beta", max_beta)
            if not 0 < mb <= 1:
                raise ValueError(f"max_beta must be in (0, 1], got {mb}")
            src = _cosine_betas(T, s, mb)
        else:
            b0 = _float_arg("beta_start", beta_start)
            b1 = _float_arg("beta_end", beta_end)
            if b0 <= 0:
                raise ValueError(f"beta_start must be > 0, got {b0}")
            if b1 <= b0:
                raise ValueError(f"beta_end must be > beta_start, got beta_start={b0}, beta_end={b1}")
            if b1 > 1:
                raise ValueError(f"beta_end must be <= 1, got {b1}")
            if kind == "linear":
                src = torch.linspace(b0, b1, T, dtype=torch.float32)
            elif kind == "scaled_linear":
                src = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
            else:  # sigmoid
                src = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float32)) * (b1 - b0) + b0
        sched = DiscreteSchedule(src, kind=kind)
    if rescale_zero_terminal_snr:
        sched = sched.rescale_zero_terminal_snr()
    return sched


# --------------------------------------------------------------------------------------------
# sigma schedules for EDM-style samplers
# --------------------------------------------------------------------------------------------
def _check_sigma_range(n, sigma_min, sigma_max) -> Tuple[int, float, float]:
    n = _int_arg("n", n, 1)
    lo = _float_arg("sigma_min", sigma_min)
    hi = _float_arg("sigma_max", sigma_max)
    if lo <= 0:
        raise ValueError(f"sigma_min must be > 0, got {lo}")
    if hi <= lo:
        raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={lo}, sigma_max={hi}")
    return n, lo, hi


def _exact_ends(sigmas: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Pin the endpoints to exactly ``sigma_max`` / ``sigma_min`` (the power/exp round trip
    is off by an ulp or so; diffusers keeps that error)."""
    sigmas[0] = hi
    if sigmas.numel() > 1:
        sigmas[-1] = lo
    return sigmas


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM (Karras et al. 2022) noise levels: ``(max^(1/rho) + i/(n-1) (min^(1/rho) -
    max^(1/rho)))^rho``, ``i = 0..n-1``.

    Returns float64 [n], DESCENDING from ``sigma_max`` to ``sigma_min`` (``n = 1`` gives
    ``[sigma_max]``); the endpoints are exactly ``sigma_max`` and ``sigma_min``. No trailing 0 is appended: samplers add their final sigma (0, or
    ``sigma_min``) themselves, as diffusers' ``final_sigmas_type`` does. Raises ValueError for
    ``n < 1``, ``sigma_min <= 0``, ``sigma_max <= sigma_min`` or ``rho <= 0``.
    """
    n, lo, hi = _check_sigma_range(n, sigma_min, sigma_max)
    r = _float_arg("rho", rho)
    if r <= 0:
        raise ValueError(f"rho must be > 0, got {r}")
    min_inv, max_inv = lo ** (1 / r), hi ** (1 / r)
    ramp = _np_linspace(0.0, 1.0, n)
    return _exact_ends((max_inv + ramp * (min_inv - max_inv)) ** r, lo, hi)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-linear noise levels ``exp(linspace(log sigma_max, log sigma_min, n))``.

    Returns float64 [n], DESCENDING, endpoints exact, no trailing 0 (see :func:`karras_sigmas`). Raises
    ValueError for ``n < 1``, ``sigma_min <= 0`` or ``sigma_max <= sigma_min``.
    """
    n, lo, hi = _check_sigma_range(n, sigma_min, sigma_max)
    return _exact_ends(torch.exp(_np_linspace(math.log(hi), math.log(lo), n)), lo, hi)


# --------------------------------------------------------------------------------------------
# continuous-time SDEs
# --------------------------------------------------------------------------------------------
class VPSDE:
    """Variance-preserving SDE (Song et al. 2021): ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``.

    ``beta(t) = beta_min + t / T (beta_max - beta_min)`` for ``t in [0, T]`` (samplers usually
    stop at a small ``eps > 0``). The marginal is ``x_t = m(t) x_0 + s(t) eps`` with
    ``log m(t) = -t^2 / (4T) (beta_max - beta_min) - t beta_min / 2`` and
    ``s(t) = sqrt(1 - m(t)^2)``.

    The defaults (0.1, 20) are the continuous limit of the DDPM linear schedule
    ``1e-4..0.02`` with 1000 steps (``beta_min = N beta_start``, ``beta_max = N beta_end``);
    discrete timestep ``i`` corresponds to ``t = (i + 1) / N``. See :meth:`from_discrete`.

    Time arguments ``t`` may be floats or tensors of any shape; floating tensors keep their
    dtype, everything else is float64. Results have ``t``'s shape unless stated otherwise.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.beta_min = _float_arg("beta_min", beta_min)
        self.beta_max = _float_arg("beta_max", beta_max)
        self.T = _float_arg("T", T)
        if self.beta_min < 0:
            raise ValueError(f"beta_min must be >= 0, got {self.beta_min}")
        if self.beta_max < self.beta_min or self.beta_max <= 0:
            raise ValueError(
                f"beta_max must be >= beta_min and > 0, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        if self.T <= 0:
            raise ValueError(f"T must be > 0, got {self.T}")

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"

    @classmethod
    def from_discrete(cls, schedule: DiscreteSchedule) -> "VPSDE":
        """The VP SDE whose limit a *linear* discrete schedule is: ``beta_min = N betas[0]``,
        ``beta_max = N betas[-1]``, ``T = 1``; discrete ``i`` ↔ ``t = (i + 1) / N``.

        Raises ValueError if ``schedule.kind != "linear"`` or it was rescaled to zero terminal SNR.
        """
        if not isinstance(schedule, DiscreteSchedule):
            raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
        if schedule.kind != "linear" or schedule.zero_terminal_snr:
            raise ValueError(
                f"schedule must be a linear schedule (not rescaled), got kind={schedule.kind!r}"
            )
        N = schedule.num_train_timesteps
        return cls(N * schedule.betas[0].item(), N * schedule.betas[-1].item(), 1.0)

    def beta(self, t) -> torch.Tensor:
        """``beta(t) = beta_min + t / T (beta_max - beta_min)``."""
        t = _float_tensor("t", t)
        return self.beta_min + t * ((self.beta_max - self.beta_min) / self.T)

    def log_mean_coeff(self, t) -> torch.Tensor:
        """``log m(t) = -1/2 int_0^t beta(s) ds``."""
        t = _float_tensor("t", t)
        return -0.25 * t * t * ((self.beta_max - self.beta_min) / self.T) - 0.5 * t * self.beta_min

    def marginal(self, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(m(t), s(t))``: mean coefficient and std of ``x_t | x_0``."""
        lmc = self.log_mean_coeff(t)
        return torch.exp(lmc), torch.sqrt(-torch.expm1(2.0 * lmc))

    def alpha_bar(self, t) -> torch.Tensor:
        """``m(t)^2`` (the continuous ``alphas_cumprod``)."""
        return torch.exp(2.0 * self.log_mean_coeff(t))

    def sigma(self, t) -> torch.Tensor:
        """VE-view noise level ``s(t) / m(t) = sqrt(1 / alpha_bar - 1)``."""
        return torch.sqrt(torch.expm1(-2.0 * self.log_mean_coeff(t)))

    def sde(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """Forward SDE coefficients ``(f(x, t), g(t)) = (-beta(t)/2 x, sqrt(beta(t)))``.

        ``t`` is a scalar or has shape ``[B]`` (a prefix of ``x.shape``); ``g`` is returned
        reshaped to broadcast against ``x`` (``[B, 1, ..., 1]``) in ``x``'s dtype, so
        ``x + f dt + g sqrt(dt) z`` works directly.
        """
        b = _broadcast_to(self.beta(t), x)
        return -0.5 * b * x, torch.sqrt(b)


class VESDE:
    """Variance-exploding SDE (Song et al. 2021): ``sigma(t) = sigma_min (sigma_max /
    sigma_min)^t``, ``t in [0, 1]``, ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``.

    The perturbation kernel is ``x_t = x_0 + sigma(t) eps`` (the ``sigma_min`` floor at
    ``t = 0`` follows the paper's convention).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = _float_arg("sigma_min", sigma_min)
        self.sigma_max = _float_arg("sigma_max", sigma_max)
        if self.sigma_min <= 0:
            raise ValueError(f"sigma_min must be > 0, got {self.sigma_min}")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def sigma(self, t) -> torch.Tensor:
        """``sigma_min (sigma_max / sigma_min)^t``."""
        t = _float_tensor("t", t)
        return self.sigma_min * torch.exp(t * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(1, sigma(t))`` as tensors of ``t``'s shape."""
        s = self.sigma(t)
        return torch.ones_like(s), s

    def sde(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(0, sigma(t) sqrt(2 log(sigma_max / sigma_min)))``; the drift is ``zeros_like(x)``
        and the diffusion broadcasts against ``x`` as in :meth:`VPSDE.sde`."""
        g = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), _broadcast_to(g, x)
