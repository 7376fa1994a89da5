"""Slow (``-m slow``, minutes on CPU): a class-conditional StyleGAN2 learns the embedded dataset.

A small conditional StyleGAN2 (16x16, four shape classes) is trained with
:class:`fastgen.gan.StyleGANTraining` (non-saturating loss, lazy R1, EMA generator, the class
labels faded in after an unconditional start) on the embedded shapes dataset. The CNN classifier of
``test_train_slow.py`` (trained on another draw of the dataset) then judges samples of the EMA
generator:

* accuracy: the share of samples classified as the class they were generated for;
* confidence: the share classified with probability > 0.9;
* coverage: the classes present among the predictions (mode collapse would drop some);
* diversity: the mean pairwise pixel distance of samples within a class, relative to real images'.

Run: ``python -m pytest -m slow tests/test_stylegan_slow.py -s`` (prints the figures).
"""
from __future__ import annotations

import time

import pytest
import torch

from fastgen.gan import StyleGANTraining
from fastgen.models import Discriminator, Generator
from test_train_slow import CLASSES, SIZE, shapes, train_classifier

CFG = dict(img_resolution=SIZE, z_dim=64, w_dim=64, channel_base=1024, channel_max=64, mapping_layers=2, c_dim=CLASSES,
           mapping_lr=0.1)  # 10x StyleGAN2's mapping lr multiplier: at 0.01 accuracy was 0.5625, at 0.1 0.652
# StyleGAN2-ADA's small-data CIFAR settings (residual-free "orig" D, no path-length penalty, no style
# mixing), a larger lr than the paper's 0.0025 (this budget is 320 kimg, not tens of thousands),
# and the labels faded in between 16 and 64 kimg (without that the networks collapse to one image
# per class; see StyleGANTraining's cond_transition).
RECIPE = dict(lr=0.005, r1_gamma=1.0, r1_interval=16, pl_weight=0.0, style_mixing_prob=0.0,
              cond_transition=(16.0, 64.0))


def train_stylegan(steps: int, batch_size: int = 64, seed: int = 0, **recipe):
    torch.manual_seed(seed)
    G = Generator(**CFG)
    D = Discriminator(architecture="orig", **{k: v for k, v in CFG.items() if k not in ("z_dim", "w_dim",
                                                                                         "mapping_layers", "mapping_lr")})
    x, y = shapes(4096, seed=20240607)
    rec = StyleGANTraining(G, D, batch_size=batch_size, ema_kimg=batch_size * 10 / 1000,
                           generator=torch.Generator().manual_seed(seed), **{**RECIPE, **recipe})
    g = torch.Generator().manual_seed(seed + 1)
    hist = []
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        hist.append({k: float(v) for k, v in rec.step(x[idx], y[idx]).items()})
    return rec, hist, time.perf_counter() - t0


def _diversity(imgs: torch.Tensor) -> float:
    flat = imgs.flatten(1)
    d = torch.cdist(flat, flat)
    n = len(flat)
    return float(d.sum() / (n * (n - 1)))


def judge(rec: StyleGANTraining, clf, per_class: int = 64) -> dict:
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    z = torch.randn(len(labels), rec.G.z_dim, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        imgs = rec.G_ema(z, labels).clamp(-1, 1)
        p = clf(imgs).softmax(1)
    real, real_y = shapes(len(labels), seed=777)
    div = [_diversity(imgs[labels == c]) / _diversity(real[real_y == c]) for c in range(CLASSES)]
    return {
        "accuracy": float((p.argmax(1) == labels).float().mean()),
        "confident": float((p.max(1).values > 0.9).float().mean()),
        "per_class_accuracy": [round(float((p.argmax(1) == labels)[labels == c].float().mean()), 3)
                               for c in range(CLASSES)],
        "coverage": int(p.argmax(1).unique().numel()),
        "relative_diversity": [round(v, 3) for v in div],
    }


@pytest.fixture(scope="module")
def trained():
    """One training run shared by the tests below: (sample metrics, training history)."""
    clf, clf_acc = train_classifier()
    print(f"\nclassifier held-out accuracy: {clf_acc:.4f}")
    assert clf_acc >= 0.97
    rec, hist, seconds = train_stylegan(steps=5000)
    n = len(hist)
    avg = lambda k, part: sum(h[k] for h in part if k in h) / max(1, sum(k in h for h in part))  # noqa: E731
    print(f"stylegan2: {n} steps in {seconds:.0f} s ({n / seconds:.2f} it/s); "
          f"D loss {avg('d', hist[:100]):.3f} -> {avg('d', hist[-100:]):.3f}, "
          f"G loss {avg('g', hist[:100]):.3f} -> {avg('g', hist[-100:]):.3f}, "
          f"labels at full strength from step {int(RECIPE['cond_transition'][1] * 1000 / 64)}")
    m = judge(rec, clf)
    print("sample metrics:", m)
    return m, hist


@pytest.mark.slow
def test_conditional_stylegan2_covers_every_class_without_collapse(trained):
    """No per-class mode collapse (conditioned from step 0 the within-class diversity was 0.09-0.20),
    every class drawn, and well above chance (0.25) at drawing the requested class."""
    m, hist = trained
    assert all(all(v == v for v in h.values()) for h in hist)  # no NaN
    assert m["coverage"] == CLASSES, m
    assert min(m["relative_diversity"]) >= 0.3, m
    assert m["accuracy"] >= 0.45, m


@pytest.mark.slow
def test_conditional_stylegan2_draws_the_requested_class(trained):
    """Accuracy >= 0.6 (the DCGAN test's bar). Measured 2026-12-05 with this configuration through an
    experiment script (same data, seeds and judge, 1 thread): 0.652 (disc 0.67, square 0.41, ring 0.53,
    stripes 1.0); with the mapping lr multiplier at 0.01 this test run gave 0.5625."""
    m, _ = trained
    assert m["accuracy"] >= 0.6, m
