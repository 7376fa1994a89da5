"""Slow (``-m slow``, minutes on CPU): the tiny U-Net learns the embedded dataset.

A class-conditional tiny U-Net is trained with :class:`fastgen.train.DiffusionTrainer` on the
embedded shapes dataset at 16x16 (four classes: disc, square, ring, stripes). A small CNN
classifier is trained on a separate draw of the same dataset (different seed) and must recognise
held-out real images almost perfectly. The diffusion model then samples images per class with
DDIM (x0 clamped to the data range, as the trainer's sample grids) + classifier-free guidance, and
the classifier judges them:

* accuracy: the share of samples whose predicted class is the class they were generated for;
* confidence: the share classified with probability > 0.9;
* coverage: the number of classes among the predictions of unguided, unconditional samples.

Run: ``python -m pytest -m slow tests/test_train_slow.py -s`` (prints the figures).
"""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from fastgen.demo import make_dataset
from fastgen.diffusion import GaussianDiffusion
from fastgen.gan.diagnostics import train_classifier as fit_classifier
from fastgen.models.unet import UNet
from fastgen.train import DiffusionTrainer

SIZE, CLASSES = 16, 4


def shapes(count: int, seed: int):
    return make_dataset(SIZE, count, seed=seed), torch.arange(count) % CLASSES


def train_classifier(steps: int = 1500, seed: int = 0) -> tuple[nn.Module, float]:
    """A CNN on one draw of the dataset; returns it and its accuracy on another (held-out) draw."""
    x, y = shapes(16384, seed=1001)  # small discs and rotated squares differ by a few pixels: much data
    xt, yt = shapes(1024, seed=2002)
    clf = fit_classifier(x, y, CLASSES, steps=steps, batch_size=128, lr=2e-3, seed=seed)
    with torch.no_grad():
        acc = float((clf(xt).argmax(1) == yt).float().mean())
    return clf, acc


def train_diffusion(steps: int, seed: int = 0, batch_size: int = 64, bf16: bool = False):
    torch.manual_seed(seed)
    model = UNet.from_preset("tiny", image_size=SIZE, num_classes=CLASSES)
    diffusion = GaussianDiffusion(model, num_classes=CLASSES, p_uncond=0.1)
    x, y = shapes(4096, seed=20240607)
    trainer = DiffusionTrainer(diffusion, torch.utils.data.TensorDataset(x, y), batch_size=batch_size, lr=1e-3,
                               warmup_steps=100, ema_decay=0.999, grad_clip=1.0, bf16=bf16, seed=seed,
                               log_every=100, progress=False)
    t0 = time.perf_counter()
    trainer.train(steps)
    return trainer, time.perf_counter() - t0


def judge(trainer: DiffusionTrainer, clf: nn.Module, per_class: int = 32, guidance: float = 2.0) -> dict:
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    cond = trainer.sample(len(labels), class_labels=labels, steps=50, guidance_scale=guidance, seed=1)
    uncond = trainer.sample(len(labels), class_labels=torch.full_like(labels, CLASSES), steps=50,
                            guidance_scale=1.0, seed=2)  # the null class: the unconditional model
    with torch.no_grad():
        p = clf(cond.clamp(-1, 1)).softmax(1)
        pu = clf(uncond.clamp(-1, 1)).softmax(1)
    return {
        "accuracy": float((p.argmax(1) == labels).float().mean()),
        "confident": float((p.max(1).values > 0.9).float().mean()),
        "per_class_accuracy": [float((p.argmax(1) == labels)[labels == c].float().mean()) for c in range(CLASSES)],
        "uncond_coverage": int(pu.argmax(1).unique().numel()),
        "uncond_confident": float((pu.max(1).values > 0.9).float().mean()),
        "uncond_class_counts": torch.bincount(pu.argmax(1), minlength=CLASSES).tolist(),
    }


@pytest.mark.slow
def test_tiny_unet_learns_the_embedded_dataset():
    clf, clf_acc = train_classifier()
    print(f"\nclassifier held-out accuracy: {clf_acc:.4f}")
    assert clf_acc >= 0.97  # the rest are tiny discs/squares that are ambiguous at 16x16
    trainer, seconds = train_diffusion(steps=1500)
    losses = [r["loss"] for r in trainer.history]
    print(f"diffusion: {trainer.step_count} steps in {seconds:.0f} s ({trainer.step_count / seconds:.2f} it/s), "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    m = judge(trainer, clf)
    print("sample metrics:", m)
    assert losses[-1] < 0.5 * losses[0]
    # measured (2 threads, Zen 5): accuracy 0.76 after 1500 steps (0.73 after 3000; chance is 0.25),
    # discs and stripes ~0.9-1.0, squares ~0.6, rings ~0.3-0.5 (thin rings at 16 px come out
    # broken); confident ~0.9; every class among the unconditional samples
    assert m["accuracy"] >= 0.6, m
    assert m["confident"] >= 0.8, m
    assert m["uncond_coverage"] == CLASSES, m
