"""Mode-collapse diagnostics for GAN training.

* :func:`pairwise_diversity` / :func:`relative_diversity`: the mean pairwise L2 distance between
  generated images, and its ratio to a batch of real images' (a collapsed generator scores near 0;
  a healthy one near 1).
* :func:`class_coverage`: how a classifier sees a batch of generated images: the classes present,
  their histogram, the share classified confidently, and — for class-conditional samples — the
  share classified as the class they were generated for.
* :class:`SmallClassifier` / :func:`train_classifier`: a small CNN to judge samples of a labelled
  dataset (e.g. the embedded shapes) with.

:class:`fastgen.train.GANTrainer` logs these every ``diagnostics_every`` steps.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


def pairwise_diversity(images: torch.Tensor) -> float:
    """Mean L2 distance between the distinct pairs of images ``(N >= 2, ...)``."""
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] < 2:
        raise ValueError("pairwise_diversity: images must be a tensor of at least 2 images")
    flat = images.detach().float().flatten(1)
    d = torch.cdist(flat, flat)
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


def relative_diversity(fake: torch.Tensor, real: torch.Tensor) -> float:
    """``pairwise_diversity(fake) / pairwise_diversity(real)``."""
    r = pairwise_diversity(real)
    return pairwise_diversity(fake) / r if r > 0 else float("nan")


@torch.no_grad()
def class_coverage(images: torch.Tensor, classifier: nn.Module, num_classes: int,
                   labels: Optional[torch.Tensor] = None, confidence: float = 0.9) -> Dict[str, object]:
    """How ``classifier`` sees ``images``: ``coverage`` (classes predicted at least once), ``histogram``,
    ``confident`` (share with max probability > ``confidence``) and, given the generation ``labels``,
    ``accuracy`` (share predicted as their label)."""
    was = classifier.training
    classifier.eval()
    try:
        p = classifier(images.clamp(-1, 1)).softmax(dim=1)
    finally:
        classifier.train(was)
    pred = p.argmax(dim=1)
    out = {"coverage": int(pred.unique().numel()),
           "histogram": torch.bincount(pred, minlength=num_classes).tolist(),
           "confident": float((p.max(dim=1).values > confidence).float().mean())}
    if labels is not None:
        out["accuracy"] = float((pred.cpu() == labels.cpu()).float().mean())
    return out


class SmallClassifier(nn.Module):
    """A small CNN classifier for images in [-1, 1] (two conv blocks, global pooling, a linear head)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                    nn.MaxPool2d(2)]

        self.net = nn.Sequential(*block(in_channels, width), *block(width, 2 * width),
                                 nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 1500,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> SmallClassifier:
    """Fit a :class:`SmallClassifier` on ``images`` ``(N, C, H, W)`` / ``labels`` ``(N,)`` (Adam)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = SmallClassifier(images.shape[1], num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(clf(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()
