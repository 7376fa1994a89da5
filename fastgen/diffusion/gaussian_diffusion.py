"""Training wrapper for a denoising diffusion model: :class:`GaussianDiffusion`.

    diffusion = GaussianDiffusion(unet, make_schedule("cosine"), num_classes=1000, learn_sigma=True)
    loss = diffusion.loss(x0, class_labels=y)        # q_sample + model + fused MSE (+ VLB)
    loss.backward()
    images = diffusion.sample((16, 3, 64, 64), sampler="ddpm", steps=250, class_labels=y, guidance_scale=3.0)

The noising (``fastgen.functional.q_sample``) and the weighted MSE (``fastgen.functional.diffusion_loss``)
run on fastgen's fused kernels; the improved-DDPM variational term of ``learn_sigma=True`` is plain
PyTorch (it touches only the variance channels' graph).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from ..functional import diffusion_loss, q_sample
from .schedules import DiscreteSchedule, make_schedule

__all__ = ["GaussianDiffusion", "normal_kl", "discretized_gaussian_log_likelihood"]

_LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale_sq, bin_width: float = 2.0 / 255.0) -> torch.Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` in [-1, 1] quantised to 256 levels under
    ``N(mean, exp(log_scale_sq))``, integrated over each level's bin (the edge bins extend to
    +-inf). Uses the exact normal CDF (``torch.special.ndtr``/``log_ndtr``; improved-diffusion uses a
    tanh approximation)."""
    half = 0.5 * bin_width
    inv_std = torch.exp(-0.5 * log_scale_sq)
    centered = x - mean
    plus_in = inv_std * (centered + half)
    min_in = inv_std * (centered - half)
    log_cdf_plus = torch.special.log_ndtr(plus_in)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
    delta = torch.special.ndtr(plus_in) - torch.special.ndtr(min_in)
    log_delta = torch.log(delta.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion(torch.nn.Module):
    """A denoising network plus its noise schedule: the DDPM training loss and sampling.

    Args:
        model: ``model(x_t, t, class_labels=...)`` (``class_labels`` only when labels are given)
            returning the prediction ``[N, C, ...]``, or ``[N, 2C, ...]`` (prediction, variance
            interpolation ``v`` in [-1, 1]) with ``learn_sigma=True``.
        schedule: a :class:`DiscreteSchedule` (default ``make_schedule("linear")``, T = 1000).
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        loss_weighting: ``"uniform"``, ``"min_snr"`` (min-SNR-gamma, Hang et al. 2023) or a
            float tensor ``[T]`` of per-timestep weights (looked up at the drawn ``t``).
        min_snr_gamma: gamma of min-SNR weighting.
        num_classes: number of classes of a class-conditional model; the null (unconditional)
            class id is ``num_classes`` (the model needs ``num_classes + 1`` embeddings).
        p_uncond: probability of replacing a label by the null class during training
            (classifier-free guidance dropout), in [0, 1].
        learn_sigma: the model also predicts the variance (improved DDPM's learned range); the loss
            becomes the hybrid ``L_simple + vlb_weight * L_vlb``.
        vlb_weight: lambda of the hybrid loss. ``L_vlb`` (bits/dim) is estimated as ``T * L_t``
            with ``L_t`` the sampled timestep's term (the sum over the T terms with one sampled),
            so ``T = 1000`` with ``vlb_weight = 0.001`` adds exactly ``L_t``, as improved-diffusion's
            ``mse + vb``. The mean of ``p(x_{t-1} | x_t)`` is built from the stop-gradient
            prediction, so ``L_vlb`` trains the variance only.

    ``forward`` is :meth:`loss`.
    """

    def __init__(self, model: torch.nn.Module, schedule: Optional[DiscreteSchedule] = None, *,
                 prediction_type: str = "epsilon", loss_weighting: Union[str, torch.Tensor] = "uniform",
                 min_snr_gamma: float = 5.0, num_classes: Optional[int] = None, p_uncond: float = 0.1,
                 learn_sigma: bool = False, vlb_weight: float = 0.001):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        self.model = model
        if schedule is None:
            schedule = make_schedule("linear")
        if not isinstance(schedule, DiscreteSchedule):
            raise TypeError(f"schedule must be a fastgen.diffusion.DiscreteSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}")
        self.prediction_type = prediction_type
        T = schedule.num_train_timesteps
        if isinstance(loss_weighting, torch.Tensor):
            w = loss_weighting.detach().to("cpu", torch.float64)
            if w.shape != (T,):
                raise ValueError(f"loss_weighting as a tensor must have shape [T] = [{T}], got {tuple(w.shape)}")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError("loss_weighting must be finite and >= 0")
            self._weights = w
            self.loss_weighting = "tensor"
        elif loss_weighting in ("uniform", "min_snr"):
            self._weights = None
            self.loss_weighting = loss_weighting
        else:
            raise ValueError(f"loss_weighting must be 'uniform', 'min_snr' or a [T] tensor, got {loss_weighting!r}")
        if isinstance(min_snr_gamma, bool) or not isinstance(min_snr_gamma, numbers.Real) or not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be a number > 0, got {min_snr_gamma!r}")
        self.min_snr_gamma = float(min_snr_gamma)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, numbers.Real) or not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
        self.p_uncond = float(p_uncond)
        if not isinstance(learn_sigma, bool):
            raise TypeError(f"learn_sigma must be a bool, got {type(learn_sigma).__name__}")
        self.learn_sigma = learn_sigma
        if isinstance(vlb_weight, bool) or not isinstance(vlb_weight, numbers.Real) or not vlb_weight >= 0:
            raise ValueError(f"vlb_weight must be a number >= 0, got {vlb_weight!r}")
        self.vlb_weight = float(vlb_weight)
        self._vlb_tables()

    @property
    def null_class(self) -> Optional[int]:
        """The label of the unconditional pass (``num_classes``), or None for an unconditional model."""
        return self.num_classes

    # ------------------------------------------------------------------ VLB tables (float64, host)
    def _vlb_tables(self) -> None:
        s = self.schedule
        ab = s.alphas_cumprod
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        betas = s.betas
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        # log of the posterior variance, clipped at t = 0 (where it is 0) to its t = 1 value
        if s.num_train_timesteps > 1:
            post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        else:
            post_log_var = torch.log(betas)
        self._t_ab, self._t_ab_prev, self._t_betas = ab, ab_prev, betas
        self._t_post_log_var = post_log_var
        self._t_c1 = betas * ab_prev.sqrt() / (1.0 - ab)  # posterior mean = c1 x0 + c2 x_t
        self._t_c2 = (1.0 - ab_prev) * (1.0 - betas).sqrt() / (1.0 - ab)

    # ------------------------------------------------------------------ helpers
    def _col(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = table[t.cpu()].to(device=like.device, dtype=torch.float32)
        return v.reshape((-1,) + (1,) * (like.dim() - 1))

    def _x0_from(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self._col(self._t_ab, t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
        if self.prediction_type == "sample":
            return out
        return ab.sqrt() * x_t - (1 - ab).sqrt() * out

    def vlb_terms(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor,
                  var_values: torch.Tensor) -> torch.Tensor:
        """Per-sample ``L_t`` in bits/dim: ``KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t))`` for t > 0 and
        the discretised-Gaussian decoder NLL ``-log p(x0|x1)`` for t = 0. ``p``'s mean is built from
        ``prediction`` (pass it detached for the hybrid loss), its log variance interpolates
        ``[log posterior variance (clipped), log beta_t]`` with ``(var_values + 1) / 2``."""
        f32 = torch.float32
        x0f, xtf = x0.to(f32), x_t.to(f32)
        pred_x0 = self._x0_from(prediction.to(f32), xtf, t)
        c1, c2 = self._col(self._t_c1, t, xtf), self._col(self._t_c2, t, xtf)
        true_mean = c1 * x0f + c2 * xtf
        true_log_var = self._col(self._t_post_log_var, t, xtf)
        model_mean = c1 * pred_x0 + c2 * xtf
        min_log = true_log_var
        max_log = self._col(torch.log(self._t_betas), t, xtf)
        frac = (var_values.to(f32) + 1.0) / 2.0
        model_log_var = frac * max_log + (1.0 - frac) * min_log
        n = x0.shape[0]
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).reshape(n, -1).mean(dim=1) / _LOG2
        nll = -discretized_gaussian_log_likelihood(x0f, model_mean, model_log_var).reshape(n, -1).mean(dim=1) / _LOG2
        return torch.where(t.to(kl.device) == 0, nll, kl)

    def _labels(self, class_labels, n: int, device, generator, label_drop=None) -> Optional[torch.Tensor]:
        if class_labels is None:
            return None
        if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point() or \
                class_labels.dtype == torch.bool or class_labels.shape != (n,):
            raise ValueError(f"class_labels must be an integer tensor of shape [{n}], got "
                             f"{getattr(class_labels, 'dtype', type(class_labels).__name__)} "
                             f"{tuple(getattr(class_labels, 'shape', ()))}")
        labels = class_labels.to(device=device, dtype=torch.long)
        if self.num_classes is None:
            return labels
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"class_labels must be in [0, num_classes={self.num_classes}] (num_classes = the null "
                             f"class), got values in [{int(labels.min())}, {int(labels.max())}]")
        if label_drop is not None:
            if not isinstance(label_drop, torch.Tensor) or label_drop.dtype != torch.bool or label_drop.shape != (n,):
                raise ValueError(f"label_drop must be a bool tensor of shape [{n}]")
            drop = label_drop.to(device)
        elif self.training and self.p_uncond > 0:
            gdev = generator.device if generator is not None else device
            drop = (torch.rand(n, generator=generator, device=gdev) < self.p_uncond).to(device)
        else:
            return labels
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    # ------------------------------------------------------------------ training
    def loss(self, x0: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, *, label_drop: Optional[torch.Tensor] = None,
             return_terms: bool = False):
        """The training loss of a batch of clean samples ``x0`` (mean over the batch).

        Args:
            x0: clean data ``[N, C, ...]`` (in [-1, 1] for the learned-sigma decoder NLL).
            class_labels: ``[N]`` integer labels; in training mode each is replaced by the null
                class with probability ``p_uncond`` (when ``num_classes`` is set).
            generator: RNG for ``t``, ``noise`` and the label dropout.
            t: ``[N]`` integer timesteps (default: uniform over ``[0, T-1]``).
            noise: the standard-normal noise (default: drawn).
            label_drop: a bool ``[N]`` mask of the labels to replace by the null class, instead of
                drawing it with ``p_uncond`` (used by trainers that draw all randomness for the
                global batch themselves, so a data-parallel run equals a single-process one).
            return_terms: also return ``{"loss", "mse", "vlb"}`` per-sample terms.
        """
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 2:
            raise ValueError("x0 must be a floating tensor [N, C, ...]")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        n, dev = x0.shape[0], x0.device
        T = self.schedule.num_train_timesteps
        gdev = generator.device if generator is not None else dev
        if t is None:
            t = torch.randint(0, T, (n,), generator=generator, device=gdev).to(dev)
        else:
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool or t.shape != (n,):
                raise ValueError(f"t must be an integer tensor of shape [{n}]")
            if n and (int(t.min()) < 0 or int(t.max()) >= T):
                raise ValueError(f"t must be in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
            t = t.to(device=dev, dtype=torch.long)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(dev)
        elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}")
        labels = self._labels(class_labels, n, dev, generator, label_drop)

        ab = self._t_ab[t.cpu()].to(dev)  # float64 [N]
        x_t = q_sample(x0, noise, ab)
        kw = {} if labels is None else {"class_labels": labels}
        out = self.model(x_t, t, **kw)
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
        C = x0.shape[1]
        want = 2 * C if self.learn_sigma else C
        if out.shape[0] != n or out.shape[1] != want or out.shape[2:] != x0.shape[2:]:
            raise ValueError(f"the model output must have shape {(n, want) + tuple(x0.shape[2:])} "
                             f"({'2C channels: prediction, variance' if self.learn_sigma else 'like x0'}), "
                             f"got {tuple(out.shape)}")
        pred, var = (out[:, :C], out[:, C:]) if self.learn_sigma else (out, None)
        if pred.dtype != x0.dtype:
            pred = pred.to(x0.dtype)
        weighting = self.loss_weighting
        if weighting == "tensor":
            weighting = self._weights[t.cpu()].to(device=dev, dtype=torch.float32)
        mse = diffusion_loss(pred, x0, noise, ab, prediction_type=self.prediction_type, weighting=weighting,
                             min_snr_gamma=self.min_snr_gamma, reduction="none")
        per = mse
        vlb = None
        if self.learn_sigma:
            vlb = self.vlb_terms(x0, x_t, t, pred.detach(), var)
            per = per + (self.vlb_weight * T) * vlb
        total = per.mean()
        if return_terms:
            return total, {"loss": per, "mse": mse, "vlb": vlb, "t": t}
        return total

    forward = loss

    # ------------------------------------------------------------------ sampling
    def sample(self, shape, *, sampler: str = "ddim", steps: int = 50, guidance_scale: float = 1.0,
               class_labels=None, generator: Optional[torch.Generator] = None, sampler_kwargs=None,
               model: Optional[torch.nn.Module] = None, **kwargs):
        """Sample with :func:`fastgen.diffusion.sample` using this schedule, prediction type and null
        class (``learn_sigma`` models use the learned variance with ``sampler="ddpm"``). ``model``
        samples with other weights of the same network (e.g. an EMA copy) instead of ``self.model``.
        Extra keyword arguments go to :func:`~fastgen.diffusion.sample`."""
        from .sampling import sample as _sample

        skw = dict(sampler_kwargs or {})
        if isinstance(sampler, str):
            skw.setdefault("prediction_type", self.prediction_type)
            if self.learn_sigma and sampler.lower() == "ddpm":
                skw.setdefault("variance_type", "learned_range")
        net = self.model if model is None else model
        was = net.training
        net.eval()
        try:
            return _sample(net, shape, sampler=sampler, steps=steps,
                           schedule=self.schedule if isinstance(sampler, str) else None,
                           guidance_scale=guidance_scale, class_labels=class_labels, null_label=self.null_class,
                           generator=generator, sampler_kwargs=skw if isinstance(sampler, str) else None, **kwargs)
        finally:
            net.train(was)
