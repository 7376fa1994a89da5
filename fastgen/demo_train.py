"""``fastgen demo``: train a small diffusion model and a small GAN on the embedded dataset for a few
minutes, sample them, and measure how much faster fastgen's fused path runs than plain PyTorch here.

Nothing is downloaded. The steps:

1. the embedded dataset: procedural discs, squares, rings and stripes with their class labels
   (:func:`fastgen.data.shapes_dataset`), 16x16 by default;
2. a class-conditional diffusion model, fastgen's tiny U-Net preset (1.2M parameters at 16 px),
   trained with :class:`fastgen.train.DiffusionTrainer` (AdamW, warm-up, EMA, gradient clipping)
   for about 60% of the time budget, with a tqdm bar;
3. a class-conditional DCGAN (projection discriminator with spectral norm, hinge loss, EMA of G:
   :class:`fastgen.gan.GANTraining` through :class:`fastgen.train.GANTrainer`) for about a quarter;
4. samples: the diffusion model's EMA weights with DDIM (every step one fused ``sampler_update``,
   classifier-free guidance inside the kernel) and the GAN's EMA generator, one row per class:
   ``samples.png``; the training losses: ``losses.png`` (drawn with Pillow);
5. the speed comparison: a diffusion training step, the DDIM sampling run and a GAN training step,
   each timed on fresh copies of the same networks with fastgen's default dispatch and under
   ``fastgen.use_backend("torch")`` (the same model on plain PyTorch ops), taking turns, medians.
   The ratio is what this machine measured, whatever it is: on a CPU most of a small U-Net's time
   is convolutions, which are oneDNN's in both paths, so expect a modest number there
   (docs/performance.md).

:func:`run_training_demo` returns everything it measured; :func:`format_training_summary` is what the
command prints. ``max_steps`` (the CLI's hidden ``--max-steps``) caps the training steps and
shrinks the measurements, for tests.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from numbers import Integral, Real
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from . import backend
from .demo import DemoArgumentError

DEFAULT_MINUTES = 3.0
SPLIT = {"diffusion": 0.6, "gan": 0.25}  # of the budget; the rest: sampling and the speed comparison
DATASET_COUNT = 2048
BATCH = 64
SAMPLE_STEPS = 25
GUIDANCE = 2.0
TRAIN_SIZES = (8, 16, 32)


# ----------------------------------------------------------------------------- settings
def validate_train_args(minutes, size, device, seed, max_steps=None, threads=None) -> torch.device:
    """Check the settings (DemoArgumentError naming the argument); return the torch device."""
    if isinstance(minutes, bool) or not isinstance(minutes, Real) or not math.isfinite(minutes) or \
            not 0 < minutes <= 24 * 60:
        raise DemoArgumentError("minutes", f"must be a number in (0, 1440]; got {minutes!r}")
    if isinstance(size, bool) or not isinstance(size, Integral) or size not in TRAIN_SIZES:
        raise DemoArgumentError("size", f"must be one of {', '.join(map(str, TRAIN_SIZES))} for the training demo; "
                                        f"got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise DemoArgumentError("seed", f"must be an integer >= 0; got {seed!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, Integral) or max_steps < 1):
        raise DemoArgumentError("max_steps", f"must be an integer >= 1; got {max_steps!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1):
        raise DemoArgumentError("threads", f"must be an integer >= 1; got {threads!r}")
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DemoArgumentError("device", f"must be cpu or cuda; got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DemoArgumentError("device", f"must be cpu or cuda; got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DemoArgumentError("device", f"is {device!r} but no CUDA GPU is available on this machine "
                                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DemoArgumentError("device", f"is {device!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return dev


# ----------------------------------------------------------------------------- models
def make_diffusion(size: int, num_classes: int, seed: int):
    """fastgen's tiny class-conditional U-Net in a DDPM objective (linear schedule, eps prediction)."""
    from .diffusion import GaussianDiffusion, make_schedule
    from .models.unet import UNet

    torch.manual_seed(seed)
    model = UNet.from_preset("tiny", image_size=size, num_classes=num_classes)
    return GaussianDiffusion(model, make_schedule("linear"), num_classes=num_classes, p_uncond=0.1)


def make_diffusion_trainer(data, size: int, seed: int, device: torch.device, ema: bool = True, batch: int = BATCH):
    from .train import DiffusionTrainer

    diffusion = make_diffusion(size, data.num_classes, seed)
    return DiffusionTrainer(diffusion, data, batch_size=batch, lr=1e-3, warmup_steps=50, grad_clip=1.0,
                            ema_decay=0.999 if ema else None, seed=seed, log_every=0, progress=False,
                            guidance_scale=GUIDANCE, device=device)


def make_gan_trainer(data, size: int, seed: int, device: torch.device, ema: bool = True, batch: int = BATCH):
    """A class-conditional DCGAN: projection D with spectral norm, hinge loss, TTUR, EMA of G (decay
    0.99: a run of a few hundred steps would only show the early weights through a 0.999 EMA)."""
    from .gan import GANTraining
    from .models import DCGANDiscriminator, DCGANGenerator
    from .train import GANTrainer

    torch.manual_seed(seed)
    c = data.num_classes
    G = DCGANGenerator(z_dim=64, img_resolution=size, base_channels=32, c_dim=c).to(device)
    D = DCGANDiscriminator(img_resolution=size, base_channels=32, c_dim=c, cond="projection", norm="none",
                           spectral_norm=True).to(device)
    recipe = GANTraining(G, D, batch_size=batch, loss="hinge", g_lr=2e-4, d_lr=4e-4, betas=(0.0, 0.9),
                         ema_decay=0.99 if ema else None, generator=torch.Generator().manual_seed(seed))
    return GANTrainer(recipe, data, batch_size=batch, seed=seed, log_every=0, progress=False)


# ----------------------------------------------------------------------------- the loops
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_for(name: str, step: Callable[[], Dict[str, torch.Tensor]], seconds: float,
              max_steps: Optional[int] = None, progress: bool = True) -> List[Dict[str, float]]:
    """Call ``step()`` (one optimisation step, returning its losses) until ``seconds`` have passed
    (at least one step) or ``max_steps`` steps ran, with a tqdm bar over the time budget. Returns
    one record per step: ``{"step": k, "<loss>": value, ...}``."""
    from tqdm.auto import tqdm

    history: List[Dict[str, float]] = []
    limit = max_steps if max_steps is not None else math.inf
    bar = tqdm(total=round(seconds, 1), desc=name, unit="s", disable=not progress, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}")
    t0 = last = time.perf_counter()
    try:
        while len(history) < limit and (not history or time.perf_counter() - t0 < seconds):
            losses = step()
            rec = {"step": len(history) + 1, **{k: float(v) for k, v in losses.items()}}
            history.append(rec)
            now = time.perf_counter()
            if now - last > 0.25 or len(history) == limit:
                last = now
                window = history[-20:]
                means = {k: statistics.fmean(r[k] for r in window) for k in rec
                         if k != "step" and not (k.endswith("_adv") and k[:-4] in rec)}  # d_adv = d without penalty
                bar.n = min(round(now - t0, 1), bar.total)
                bar.set_postfix_str(f"step {len(history)}, " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                                    + f", {len(history) / (now - t0):.1f} it/s")
    finally:
        bar.n = bar.total if history and len(history) < limit else bar.n
        bar.close()
    return history


def _median_times(fns: Dict[str, Callable[[], object]], rounds: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per call of each function, the functions taking turns (a busy machine's drift
    hits both alike), after one warm-up call each."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class _Backend:
    """Run a callable under ``fastgen.use_backend(name)`` (None: fastgen's automatic dispatch)."""

    def __init__(self, fn: Callable, name: Optional[str]):
        self.fn, self.name = fn, name

    def __call__(self):
        if self.name is None:
            return self.fn()
        from . import use_backend

        with use_backend(self.name):
            return self.fn()


def measure_speed(data, size: int, seed: int, device: torch.device, *, rounds: int, sample_images: int,
                  sample_steps: int, diffusion_model=None, batch: int = BATCH) -> Dict[str, Dict[str, float]]:
    """fastgen's default dispatch vs ``use_backend("torch")`` on identical fresh copies of the demo's
    networks: one diffusion training step, one DDIM sampling run (``sample_images`` images,
    ``sample_steps`` steps, CFG; the trained U-Net when given) and one GAN training step. Returns
    ``{case: {"fastgen_s", "torch_s", "speedup"}}``."""
    out: Dict[str, Dict[str, float]] = {}

    def record(case, t):
        out[case] = {"fastgen_s": t["fastgen"], "torch_s": t["torch"], "speedup": t["torch"] / t["fastgen"]}

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        a = make_diffusion_trainer(data, size, seed, device, ema=False, batch=batch)
        b = make_diffusion_trainer(data, size, seed, device, ema=False, batch=batch)
        record("diffusion training step", _median_times(
            {"fastgen": _Backend(a.step, None), "torch": _Backend(b.step, "torch")}, rounds, device))
        diffusion = diffusion_model if diffusion_model is not None else a.diffusion
        labels = torch.arange(sample_images) % data.num_classes

        def sample():
            with torch.no_grad():
                return diffusion.sample((sample_images,) + tuple(data[0][0].shape), sampler="ddim",
                                        steps=sample_steps, guidance_scale=GUIDANCE, class_labels=labels,
                                        generator=torch.Generator(device).manual_seed(seed), progress=False)
        record(f"DDIM sampling ({sample_images} images, {sample_steps} steps, CFG)", _median_times(
            {"fastgen": _Backend(sample, None), "torch": _Backend(sample, "torch")}, max(1, rounds // 2), device))
        ga = make_gan_trainer(data, size, seed, device, ema=False, batch=batch)
        gb = make_gan_trainer(data, size, seed, device, ema=False, batch=batch)
        record("GAN training step", _median_times(
            {"fastgen": _Backend(ga.step, None), "torch": _Backend(gb.step, "torch")}, rounds, device))
    return out


# ----------------------------------------------------------------------------- pictures
def _label_panel(pixels: torch.Tensor, title: str):
    """A PIL image: ``title`` above a uint8 [H, W, 3] grid."""
    from PIL import Image, ImageDraw

    from .images import pil_font as _font

    grid = Image.fromarray(pixels.numpy())
    font = _font(14)
    img = Image.new("RGB", (max(grid.width, 10 + int(ImageDraw.Draw(grid).textlength(title, font=font))),
                            grid.height + 24), "white")
    ImageDraw.Draw(img).text((4, 4), title, fill="black", font=font)
    img.paste(grid, (0, 24))
    return img


def save_samples_png(panels: Dict[str, torch.Tensor], path: Union[str, Path], ncols: int) -> tuple:
    """Sample grids side by side, each titled, as one PNG; returns (width, height)."""
    from PIL import Image

    from .images import image_grid, save_png
    from .images import pil_to_pixels as _to_tensor

    ims = [_label_panel(image_grid(x, upscale=max(1, 64 // x.shape[-1]), ncols=ncols), t) for t, x in panels.items()]
    gap = 16
    canvas = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), max(i.height for i in ims)), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return save_png(_to_tensor(canvas), path)


def save_loss_png(panels: Dict[str, tuple], path: Union[str, Path]) -> tuple:
    """Loss curves side by side as one PNG: ``{panel title: ({curve name: [(step, value), ...]}, log_y)}``."""
    from PIL import Image

    from .images import line_plot, save_png
    from .images import pil_to_pixels as _to_tensor

    ims = [line_plot(curves, title=title, xlabel="step", log_y=log_y) for title, (curves, log_y) in panels.items()]
    canvas = Image.new("RGB", (sum(i.width for i in ims), max(i.height for i in ims)), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width
    return save_png(_to_tensor(canvas), path)


def _smooth(values: List[float], k: int) -> List[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _curves(history: List[Dict[str, float]], keys: List[str]) -> Dict[str, List[tuple]]:
    k = max(1, len(history) // 50)
    steps = [r["step"] for r in history]
    return {f"{key} (mean of {k})" if k > 1 else key: list(zip(steps, _smooth([r[key] for r in history], k)))
            for key in keys if history and key in history[0]}


# ----------------------------------------------------------------------------- the demo
def run_training_demo(minutes: float = DEFAULT_MINUTES, out: Union[str, Path] = "fastgen_demo", *,
                      size: int = 16, device=None, seed: int = 0, max_steps: Optional[int] = None,
                      threads: Optional[int] = None, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train, sample, plot and compare (see the module docstring). ``out``: the output folder
    (created). Returns a dict of what was done and measured (``format_training_summary`` prints it);
    it is also written to ``out/summary.json``."""
    dev = validate_train_args(minutes, size, device, seed, max_steps, threads)
    if threads is not None:
        torch.set_num_threads(threads)
    from .data import shapes_dataset
    from .images import save_image_grid  # noqa: F401  (Pillow present? fail before training, not after)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoArgumentError("out", f"{str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    budget = 60.0 * float(minutes)
    quick = max_steps is not None
    batch = 16 if quick else BATCH  # tests: small batches
    t_start = time.perf_counter()

    log(f"fastgen demo: {minutes:g} min on {dev} ({_threads(torch.get_num_threads())}); fused kernels: "
        f"group_norm={backend.resolve('group_norm', dev)}, sampler_update={backend.resolve('sampler_update', dev)}, "
        f"bias_act={backend.resolve('bias_act', dev)}")
    busy = _busy_warning(dev)
    if busy:
        log(busy)
    data = shapes_dataset(size, count=128 if quick else DATASET_COUNT, seed=seed + 1)
    log(f"  data: {len(data)} embedded {size}x{size} images of {data.num_classes} classes "
        "(disc, square, ring, stripes), generated in-process")

    dt = make_diffusion_trainer(data, size, seed, dev, batch=batch)
    n_params = sum(p.numel() for p in dt.model.parameters())
    diff_hist = train_for(f"diffusion U-Net ({n_params / 1e6:.2f}M)", lambda: {"loss": dt.step()},
                          budget * SPLIT["diffusion"], max_steps, progress)
    gt = make_gan_trainer(data, size, seed, dev, batch=batch)
    gan_hist = train_for("DCGAN", gt.step, budget * SPLIT["gan"], max_steps, progress)
    t_trained = time.perf_counter()

    n_img = 2 * data.num_classes if quick else 4 * data.num_classes
    steps = 2 if quick else SAMPLE_STEPS
    labels = torch.arange(n_img) % data.num_classes
    t0 = time.perf_counter()
    with torch.no_grad():
        diff_samples = dt.diffusion.sample((n_img,) + dt.image_shape, sampler="ddim", steps=steps,
                                           guidance_scale=GUIDANCE, class_labels=labels,
                                           generator=torch.Generator(dev).manual_seed(seed),
                                           model=dt.sampling_model(), progress=progress)
    _sync(dev)
    sample_s = time.perf_counter() - t0
    gan_samples = gt.sample(n_img, labels=labels, seed=seed)
    samples_png = out / "samples.png"
    # one column per class (labels cycle), so each row shows disc, square, ring, stripes
    samples_size = save_samples_png({f"diffusion (DDIM {steps} steps, CFG {GUIDANCE:g})": diff_samples.cpu(),
                                     "DCGAN (EMA generator)": gan_samples.cpu()}, samples_png, data.num_classes)
    losses_png = out / "losses.png"
    losses_size = save_loss_png({"diffusion U-Net: loss (log scale)": (_curves(diff_hist, ["loss"]), True),
                                 "DCGAN: hinge losses of D and G": (_curves(gan_hist, ["d", "g"]), False)}, losses_png)

    log("  measuring fastgen vs plain PyTorch (use_backend('torch')) on fresh copies of the networks ...")
    speed = measure_speed(data, size, seed, dev, rounds=1 if quick else 5, sample_images=n_img,
                          sample_steps=steps, diffusion_model=dt.diffusion, batch=batch)
    result = {
        "device": str(dev), "threads": torch.get_num_threads(), "minutes": float(minutes), "size": size,
        "seed": seed, "busy": busy, "out": str(out), "samples_png": str(samples_png), "samples_png_size": list(samples_size),
        "losses_png": str(losses_png), "losses_png_size": list(losses_size),
        "diffusion": {"params": n_params, "steps": len(diff_hist), "batch": batch,
                      "first_loss": _window_mean(diff_hist[:20], "loss"), "last_loss": _window_mean(diff_hist[-20:], "loss")},
        "gan": {"steps": len(gan_hist), "batch": batch,
                "last_d": _window_mean(gan_hist[-20:], "d"), "last_g": _window_mean(gan_hist[-20:], "g")},
        "sampling_s": sample_s, "sample_steps": steps, "train_s": t_trained - t_start,
        "speed": speed, "total_s": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _busy_warning(dev: torch.device) -> Optional[str]:
    """A warning when other processes already keep the CPUs busy: OpenMP threads that wait for a
    descheduled peer make every parallel region slow, by 10x and more, and the timings noisy."""
    import os

    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if dev.type == "cpu" and load > cores:
        return (f"  warning: this machine is busy (load average {load:.1f} on {cores} cores): training will be slower "
                f"and the timings noisy; --threads 1 suffers least from the contention")
    return None


def _window_mean(hist: List[Dict[str, float]], key: str) -> Optional[float]:
    vals = [r[key] for r in hist if key in r]
    return statistics.fmean(vals) if vals else None


def _threads(n: int) -> str:
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def format_training_summary(r: dict) -> str:
    d, g = r["diffusion"], r["gan"]
    lines = [
        f"fastgen demo: done in {r['total_s']:.0f} s on {r['device']} ({_threads(r['threads'])})",
        f"  diffusion U-Net ({d['params'] / 1e6:.2f}M params): {d['steps']} steps of batch {d['batch']}, "
        f"loss {d['first_loss']:.4f} -> {d['last_loss']:.4f} (means of the first and last 20 steps)",
        f"  DCGAN: {g['steps']} steps of batch {g['batch']}, last D loss {g['last_d']:.4f}, G loss {g['last_g']:.4f}",
        f"  wrote {r['samples_png']} ({r['samples_png_size'][0]}x{r['samples_png_size'][1]}; one column per class) "
        f"and {r['losses_png']}",
        "  fastgen vs the same networks on plain PyTorch ops (fastgen.use_backend('torch')), medians, this machine:",
    ]
    for case, s in r["speed"].items():
        lines.append(f"    {case}: {_fmt_s(s['fastgen_s'])} vs {_fmt_s(s['torch_s'])} -> {s['speedup']:.2f}x")
    if r["device"].startswith("cpu"):
        lines.append("  (on CPUs most of these steps is convolution, the same oneDNN kernels in both paths; the "
                     "fused ops' own speedups: `fastgen bench`, docs/performance.md)")
    return "\n".join(lines)
