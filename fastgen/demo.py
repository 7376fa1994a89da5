"""A tiny DDIM sampling demo that runs in seconds on a laptop CPU (``python -m fastgen demo``).

What it does:

* builds an **embedded dataset**: 64 small procedural RGB images in [-1, 1] (discs, squares,
  rings and diagonal stripes in saturated colours on contrasting backgrounds), drawn with torch
  from a fixed seed by :func:`fastgen.data.make_shapes` — no downloads, no files;
* uses the Stable Diffusion "scaled linear" noise schedule (1000 training steps) and DDIM
  timesteps with diffusers' "leading" spacing and ``final_alpha_cumprod = 1``;
* denoises with the **closed-form optimal (Bayes) denoiser of that dataset**: the posterior mean
  ``E[x0 | x_t]`` of the empirical data distribution, a softmax over the dataset images.

That denoiser is the exact score of the empirical distribution, so the sampler reproduces
(memorises) dataset images: samples land on, or very near, one of the 64 pictures. The demo
therefore shows the *sampler* — fastgen's fused ``ddim_step`` in a real sampling loop with reused
buffers, checked against the textbook PyTorch update on identical inputs — not a learned model
(trained U-Nets come with later parts of fastgen).

Reported numbers (returned by :func:`run_demo` and printed by the CLI):

* ``max_abs_diff``: max |fused - plain| over the final samples of the two loops, and
  ``max_abs_diff_trajectory``: the same over every step's ``x_prev`` and ``x0_pred`` (the stronger
  check: the final step returns the Bayes x0 estimate, which snaps both loops onto the same
  dataset image and hides small differences);
* ``fused_update_ms`` / ``plain_update_ms``: mean time per step of the update alone (the
  denoiser and the noise draw are excluded), and ``*_median`` the median step (robust to a busy
  machine; at the default sizes an update takes tens of microseconds, so these are dominated by
  per-call overheads, not memory bandwidth — see ``benchmarks/`` for kernel speed);
* ``nn_distance``: mean over samples of the per-pixel RMS distance to the nearest dataset image.
  It is near 0 for a correct run. Because the last step jumps to ``alpha_bar = 1`` and returns
  the Bayes x0 estimate, which is very sharp at the smallest noise level, this mostly checks the
  update's arithmetic and that the trajectory stayed on the data; random images score ~0.8-1.3.
  ``distinct_neighbours`` (how many different dataset images were hit) hints at diversity.
"""
from __future__ import annotations

import math
import statistics
import time
from numbers import Integral, Real
from pathlib import Path
from typing import Optional

import torch

from . import backend, functional, images
from .images import image_grid  # noqa: F401  (part of this module's API before fastgen.images)
from .data import DATASET_SEED, make_shapes

DATASET_SIZE = 64
NUM_TRAIN_TIMESTEPS = 1000
SIZES = (16, 32, 64)
UPSCALE = 4
PAD = 2  # pixels between grid cells, after upscaling


# ----------------------------------------------------------------------------- dataset
def make_dataset(size: int = 32, count: int = DATASET_SIZE, seed: int = DATASET_SEED) -> torch.Tensor:
    """The embedded dataset: ``count`` procedural RGB images, float32 ``[count, 3, size, size]`` in [-1, 1].

    Image ``i`` is shape ``SHAPE_CLASSES[i % 4]`` (disc, square, ring or diagonal stripes) with random
    centre, extent, orientation and two different palette colours: the images of
    :func:`fastgen.data.make_shapes` (see there), without the labels.
    """
    return make_shapes(size, count, seed)[0]


# ----------------------------------------------------------------------------- schedule
def scaled_linear_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                                 beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" schedule: betas linear in sqrt space; alpha_bar in float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """DDIM timesteps with "leading" spacing (as diffusers): ``arange(steps) * (T // steps)``, reversed."""
    return (torch.arange(steps, dtype=torch.int64) * (num_train_timesteps // steps)).flip(0)


def step_alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(alpha_bar_t, alpha_bar_prev)`` per step as 0-d float64 CPU tensors (host scalars).

    ``alpha_bar_prev`` is the schedule at the next (smaller) timestep, and 1.0 after the last one
    (``final_alpha_cumprod = 1``: the last step returns the x0 prediction).
    """
    ts = timesteps.tolist()
    one = torch.tensor(1.0, dtype=torch.float64)
    return [(alphas_cumprod[t], alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else one) for i, t in enumerate(ts)]


# ----------------------------------------------------------------------------- denoiser
class BayesDenoiser:
    """The optimal (posterior-mean) denoiser of an empirical image distribution.

    For ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` with ``x0`` uniform over the dataset images ``x_i``:

        x0_hat(x_t) = sum_i softmax_i(-||x_t - sqrt(a) x_i||^2 / (2 (1 - a))) x_i
        eps_hat     = (x_t - sqrt(a) x0_hat) / sqrt(1 - a)

    The squared distances are expanded as ``||x_t||^2 - 2 sqrt(a) x_t.x_i + a ||x_i||^2`` so one
    matmul does the work (float32). The ``||x_t||^2`` term is the same for every ``i`` in a row and
    cancels in the softmax, so it is left out: that avoids a large float32 cancellation at small
    noise levels without changing the result.
    """

    def __init__(self, images: torch.Tensor):
        self.shape = images.shape[1:]
        self.data = images.reshape(images.shape[0], -1).float().contiguous()  # [M, D]
        self.data_sq = (self.data * self.data).sum(dim=1)  # [M]

    def __call__(self, x_t: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps_hat, x0_hat)`` for a batch ``x_t`` at cumulative alpha ``alpha_bar`` (a float)."""
        n = x_t.shape[0]
        flat = x_t.reshape(n, -1).float()
        sa, var = math.sqrt(alpha_bar), 1.0 - alpha_bar
        # -(||x||^2 - 2 sqrt(a) x.x_i + a ||x_i||^2) / (2 var), without the row-constant ||x||^2
        logits = torch.addmm(self.data_sq, flat, self.data.t(), beta=-alpha_bar, alpha=2.0 * sa)
        logits.mul_(0.5 / var)
        weights = torch.softmax(logits, dim=1)
        x0 = weights @ self.data
        eps = (flat - sa * x0) / math.sqrt(var)
        return eps.view_as(x_t).to(x_t.dtype), x0.view_as(x_t).to(x_t.dtype)


# ----------------------------------------------------------------------------- plain update
def plain_ddim_update(x_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_p: float, eta: float,
                      noise: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook DDIM update in plain PyTorch (what a sampler without fastgen does).

        x0     = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
        sigma  = eta sqrt((1 - a_p) / (1 - a_t) (1 - a_t / a_p))
        x_prev = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps + sigma noise
    """
    x0 = (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p))
    x_prev = math.sqrt(a_p) * x0 + math.sqrt(max(1.0 - a_p - sigma * sigma, 0.0)) * eps
    if noise is not None and sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


# ----------------------------------------------------------------------------- quality check
def nearest_neighbours(samples: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the per-pixel RMS distance to its nearest dataset image, and that image's index."""
    s = samples.reshape(samples.shape[0], -1).double()
    d = data.reshape(data.shape[0], -1).double()
    dist2 = torch.cdist(s, d).pow(2) / s.shape[1]
    best, idx = dist2.min(dim=1)
    return best.clamp_min(0).sqrt(), idx


def nearest_neighbour_distance(samples: torch.Tensor, data: torch.Tensor) -> float:
    """Mean over samples of the per-pixel RMS distance to the nearest dataset image."""
    return float(nearest_neighbours(samples, data)[0].mean())


# ----------------------------------------------------------------------------- image output
def save_png(samples: torch.Tensor, neighbours: torch.Tensor, path: Path) -> tuple[int, int]:
    """Save ``[samples | nearest dataset images]`` side by side as a PNG; return (width, height)."""
    left, right = image_grid(samples, UPSCALE, PAD), image_grid(neighbours, UPSCALE, PAD)
    gap = torch.full((left.shape[0], 8, 3), 255, dtype=torch.uint8)
    return images.save_png(torch.cat([left, gap, right], dim=1), path)


# ----------------------------------------------------------------------------- the demo
class DemoArgumentError(ValueError):
    """A bad demo setting; ``argument`` is the parameter's name (e.g. ``"num_images"``)."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument} {message}")
        self.argument = argument


def validate_args(steps, num_images, size, eta, impl=None) -> None:
    """Raise :class:`DemoArgumentError` (a ValueError naming the argument) for bad settings."""
    def bad_int(v):
        return isinstance(v, bool) or not isinstance(v, Integral)

    if bad_int(steps) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise DemoArgumentError("steps", f"must be an integer in [1, {NUM_TRAIN_TIMESTEPS}]; got {steps!r}")
    if bad_int(num_images) or num_images < 1:
        raise DemoArgumentError("num_images", f"must be an integer >= 1; got {num_images!r}")
    if bad_int(size) or size not in SIZES:
        raise DemoArgumentError("size", f"must be one of {', '.join(map(str, SIZES))}; got {size!r}")
    if isinstance(eta, bool) or not isinstance(eta, Real) or not 0.0 <= float(eta) <= 1.0:
        raise DemoArgumentError("eta", f"must be a number in [0, 1]; got {eta!r}")
    choices = backend.IMPLS + ("auto",)
    if impl is not None and impl not in choices:
        raise DemoArgumentError("impl", f"must be one of {', '.join(choices)} or None; got {impl!r}")


def run_demo(steps: int = 25, num_images: int = 16, size: int = 32, eta: float = 0.0, seed: int = 0,
             out: Optional[str | Path] = "fastgen_demo.png", impl: Optional[str] = None) -> dict:
    """Sample ``num_images`` images with DDIM twice: fastgen's fused update and plain PyTorch.

    The two samplers advance in lockstep from the same ``x_T`` (``torch.Generator`` seeded with
    ``seed``), each on its own state with its own denoiser call. For ``eta > 0`` one noise tensor
    per step is drawn from a second generator (seeded ``seed + 1``) and given to both updates —
    to fastgen explicitly as ``noise=`` — so they see identical inputs. The fused sampler reuses
    three preallocated buffers (x, x_prev, x0_pred; no allocation in the update); the plain one
    allocates like ordinary PyTorch code. Only the updates are timed. ``out=None`` skips the PNG.

    Returns a dict: ``impl`` (what ``ddim_step`` resolved to on CPU), ``png`` (path or None),
    ``image_size`` ((width, height) or None), ``max_abs_diff``, ``max_abs_diff_trajectory``,
    ``fused_update_ms``, ``plain_update_ms`` (means), ``fused_update_ms_median``,
    ``plain_update_ms_median``, ``speedup`` (of the means), ``denoiser_ms``, ``nn_distance``,
    ``nn_distance_max``, ``distinct_neighbours``, ``samples`` (the fused loop's final
    ``[N, 3, size, size]`` tensor) and the settings.

    Raises:
        DemoArgumentError: a bad setting (a ValueError; the message names the argument).
        fastgen.BackendUnavailableError: ``impl`` forces an implementation that cannot run here.
    """
    validate_args(steps, num_images, size, eta, impl)
    eta = float(eta)
    impl_used = backend.resolve("ddim_step", torch.device("cpu"), impl)

    data = make_dataset(size)
    denoise = BayesDenoiser(data)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    timesteps = ddim_timesteps(steps)
    pairs = step_alphas(alphas_cumprod, timesteps)
    floats = [(float(a), float(p)) for a, p in pairs]  # host copies for the plain loop / denoiser

    shape = (num_images, 3, size, size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    # Warm up both updates once (first-call dispatch overheads are not per-step costs).
    wx, we = torch.zeros(shape), torch.zeros(shape)
    functional.ddim_step(wx, we, pairs[0][0], pairs[0][1], eta=eta, noise=we,
                         out=(torch.empty(shape), torch.empty(shape)), impl=impl)
    plain_ddim_update(wx, we, floats[0][0], floats[0][1], eta, we)

    # Both loops advance in lockstep, each on its own state with its own denoiser call, so every
    # step's outputs can be compared; each update is timed on its own.
    x, buf_prev, buf_x0 = x_T.clone(), torch.empty(shape), torch.empty(shape)  # fastgen: reused buffers
    y = x_T.clone()  # plain PyTorch: a fresh tensor per step, as a sampler without fastgen does
    noise = torch.empty(shape) if eta > 0 else None
    g_noise = torch.Generator().manual_seed(seed + 1)
    fused_s, plain_s, denoise_s = [], [], []  # per-step seconds
    max_diff_traj = 0.0
    for (a_t, a_p), (ft, fp) in zip(pairs, floats):
        t0 = time.perf_counter()
        eps_x, _ = denoise(x, ft)
        denoise_s.append(time.perf_counter() - t0)
        eps_y, _ = denoise(y, ft)
        if noise is not None:  # one draw per step, the same noise for both updates
            torch.randn(shape, generator=g_noise, out=noise)

        t0 = time.perf_counter()
        functional.ddim_step(x, eps_x, a_t, a_p, eta=eta, noise=noise, out=(buf_prev, buf_x0), impl=impl)
        t1 = time.perf_counter()
        y, y0 = plain_ddim_update(y, eps_y, ft, fp, eta, noise)
        t2 = time.perf_counter()
        fused_s.append(t1 - t0)
        plain_s.append(t2 - t1)

        max_diff_traj = max(max_diff_traj, float((buf_prev - y).abs().max()), float((buf_x0 - y0).abs().max()))
        x, buf_prev = buf_prev, x  # x_prev becomes the next x_t; the old x_t is the next output buffer
    fused, plain = x, y

    dists, idx = nearest_neighbours(fused, data)
    png, image_size = None, None
    if out is not None:
        png = Path(out)
        image_size = save_png(fused, data[idx], png)
    fused_ms, plain_ms = 1e3 * sum(fused_s) / steps, 1e3 * sum(plain_s) / steps
    return {
        "impl": impl_used,
        "png": str(png) if png is not None else None,
        "image_size": image_size,
        "steps": steps,
        "num_images": num_images,
        "size": size,
        "eta": eta,
        "seed": seed,
        "max_abs_diff": float((fused - plain).abs().max()),
        "max_abs_diff_trajectory": max_diff_traj,
        "fused_update_ms": fused_ms,
        "plain_update_ms": plain_ms,
        "speedup": plain_ms / fused_ms if fused_ms > 0 else float("inf"),
        "fused_update_ms_median": 1e3 * statistics.median(fused_s),
        "plain_update_ms_median": 1e3 * statistics.median(plain_s),
        "denoiser_ms": 1e3 * sum(denoise_s) / steps,
        "nn_distance": float(dists.mean()),
        "nn_distance_max": float(dists.max()),
        "distinct_neighbours": int(idx.unique().numel()),
        "threads": torch.get_num_threads(),
        "samples": fused,
    }


def format_summary(result: dict) -> str:
    """The human-readable summary the CLI prints for a :func:`run_demo` result."""
    n, s = result["num_images"], result["size"]
    lines = [
        f"fastgen demo: DDIM, {result['steps']} steps, eta={result['eta']:g}, {n} images of {s}x{s}, "
        f"seed {result['seed']}, {result['threads']} threads",
        "  denoiser: closed-form Bayes denoiser of the embedded 64-image dataset "
        "(exact score: shows the sampler, not a learned model)",
        f"  ddim_step implementation on CPU: {result['impl']}",
    ]
    if result["png"]:
        w, h = result["image_size"]
        lines.append(f"  saved {result['png']} ({w}x{h}; left: samples, right: their nearest dataset images)")
    lines += [
        f"  update time per step (mean / median): fastgen {result['fused_update_ms'] * 1e3:.1f} / "
        f"{result['fused_update_ms_median'] * 1e3:.1f} us, plain PyTorch {result['plain_update_ms'] * 1e3:.1f} / "
        f"{result['plain_update_ms_median'] * 1e3:.1f} us (speedup of means {result['speedup']:.2f}x); "
        f"denoiser {result['denoiser_ms'] * 1e3:.1f} us (not timed in the update)",
        f"  max |fastgen - plain PyTorch|: final samples {result['max_abs_diff']:.3e}, "
        f"any step's x_prev/x0_pred {result['max_abs_diff_trajectory']:.3e}",
        f"  nearest-dataset-image distance (per-pixel RMS, in [-1, 1] units): mean {result['nn_distance']:.4f}, "
        f"max {result['nn_distance_max']:.4f}; {result['distinct_neighbours']} distinct dataset images hit",
    ]
    return "\n".join(lines)
