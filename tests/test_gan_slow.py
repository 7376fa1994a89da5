"""Slow (``-m slow``, minutes on CPU): a class-conditional DCGAN learns the embedded dataset.

A conditional DCGAN (16x16, four shape classes; projection discriminator with spectral norm,
hinge loss) is trained with :class:`fastgen.gan.GANTraining` through :class:`fastgen.train.GANTrainer`
on the embedded shapes. The classifier of ``test_train_slow.py`` judges the samples of the EMA
generator (accuracy per requested class, confidence, coverage), and the trainer's own
mode-collapse diagnostics (relative diversity, class coverage) are checked too.

Run: ``python -m pytest -m slow tests/test_gan_slow.py -s`` (prints the figures).
"""
from __future__ import annotations

import time

import pytest
import torch

from fastgen.data import TensorImageDataset
from fastgen.gan import GANTraining
from fastgen.models import DCGANDiscriminator, DCGANGenerator
from fastgen.train import GANTrainer
from test_train_slow import CLASSES, SIZE, shapes, train_classifier


@pytest.mark.slow
def test_conditional_dcgan_learns_the_embedded_dataset():
    clf, clf_acc = train_classifier()
    print(f"\nclassifier held-out accuracy: {clf_acc:.4f}")
    assert clf_acc >= 0.97
    torch.manual_seed(0)
    G = DCGANGenerator(z_dim=64, img_resolution=SIZE, base_channels=64, c_dim=CLASSES)
    D = DCGANDiscriminator(img_resolution=SIZE, base_channels=64, c_dim=CLASSES, cond="projection", norm="none",
                           spectral_norm=True)
    recipe = GANTraining(G, D, batch_size=64, loss="hinge", g_lr=2e-4, d_lr=4e-4, betas=(0.0, 0.9), ema_decay=0.999)
    x, y = shapes(4096, seed=20240607)
    trainer = GANTrainer(recipe, TensorImageDataset(x, y), batch_size=64, progress=False, log_every=100,
                         diagnostics_every=500, classifier=clf)
    t0 = time.perf_counter()
    trainer.train(2000)
    seconds = time.perf_counter() - t0
    h = trainer.history
    print(f"dcgan: {trainer.step_count} steps in {seconds:.0f} s ({trainer.step_count / seconds:.2f} it/s); "
          f"D loss {h[0]['d']:.3f} -> {h[-1]['d']:.3f}, G loss {h[0]['g']:.3f} -> {h[-1]['g']:.3f}")
    print("diagnostics:", trainer.diagnostics_history)
    final = trainer.diagnostics(256)
    print("final (256 samples, 64 per class):", final)
    assert final["coverage"] == CLASSES, final
    assert final["accuracy"] >= 0.6, final
    assert final["diversity"] >= 0.5, final  # not collapsed
