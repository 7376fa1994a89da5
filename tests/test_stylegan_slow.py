"""Slow (``-m slow``, minutes on CPU): a class-conditional StyleGAN2 learns the embedded dataset.

A small conditional StyleGAN2 (16x16, four shape classes) is trained with
:class:`fastgen.gan.StyleGANTraining` (non-saturating loss, lazy R1, path-length regularisation,
style mixing, EMA generator) on the embedded shapes dataset. The CNN classifier of
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

CFG = dict(img_resolution=SIZE, z_dim=64, w_dim=64, channel_base=1024, channel_max=64, mapping_layers=2, c_dim=CLASSES)


def train_stylegan(steps: int, batch_size: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    G, D = Generator(**CFG), Discriminator(**{k: v for k, v in CFG.items() if k not in ("z_dim", "w_dim",
                                                                                        "mapping_layers")})
    x, y = shapes(4096, seed=20240607)
    rec = StyleGANTraining(G, D, batch_size=batch_size, lr=0.002, r1_gamma=0.1, r1_interval=16, pl_weight=2.0,
                           ema_kimg=batch_size * 10 / 1000, generator=torch.Generator().manual_seed(seed))
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


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known failure, measured 2026-12-05: after 1500 steps the EMA generator ignores the class "
    "(accuracy 0.25, every label drawn as a disc, coverage 2/4, relative diversity 0.14-0.20; D loss "
    "0.95 -> 0.22, G loss 1.46 -> 4.05). Without path-length regularisation and with r1_gamma 0.1 or "
    "1.0 it still ignores the class (accuracy 0.25 / 0.26); with D's lr at a quarter it draws two of "
    "the four classes (accuracy 0.50, diversity 0.13-0.22); the unconditional network also collapses "
    "(D wins, no stripes). The conditioning is wired (w, the images "
    "and D's logits change with c); the cause is not found yet. strict: a fix makes this xfail fail, "
    "so remove the marker then."))
def test_conditional_stylegan2_learns_the_embedded_dataset():
    clf, clf_acc = train_classifier()
    print(f"\nclassifier held-out accuracy: {clf_acc:.4f}")
    assert clf_acc >= 0.97
    rec, hist, seconds = train_stylegan(steps=1500)
    n = len(hist)
    avg = lambda k, part: sum(h[k] for h in part if k in h) / max(1, sum(k in h for h in part))  # noqa: E731
    print(f"stylegan2: {n} steps in {seconds:.0f} s ({n / seconds:.2f} it/s); "
          f"D loss {avg('d', hist[:100]):.3f} -> {avg('d', hist[-100:]):.3f}, "
          f"G loss {avg('g', hist[:100]):.3f} -> {avg('g', hist[-100:]):.3f}, "
          f"path length mean {float(rec.pl.pl_mean):.3f}")
    assert all(all(v == v for v in h.values()) for h in hist)  # no NaN
    m = judge(rec, clf)
    print("sample metrics:", m)
    assert m["coverage"] == CLASSES, m
    assert m["accuracy"] >= 0.6, m
    assert min(m["relative_diversity"]) >= 0.3, m  # no class collapsed to a few images
