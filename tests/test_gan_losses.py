"""GAN losses and regularisers against hand-written formulas (values and gradients)."""
import math

import pytest
import torch
from torch import nn

from fastgen.gan import (LOSSES, acgan_loss, clip_weights_, d_loss, g_loss, infogan_categorical_loss,
                         infogan_continuous_loss, r1_penalty, r2_penalty, spectral_norm)

D64 = torch.float64


def _sig(x):
    return 1 / (1 + torch.exp(-x))


REFERENCE = {  # kind: (D loss, G loss) written from the papers' definitions
    "minimax": (lambda r, f: -torch.log(_sig(r)) - torch.log(1 - _sig(f)), lambda f: torch.log(1 - _sig(f))),
    "nonsaturating": (lambda r, f: -torch.log(_sig(r)) - torch.log(1 - _sig(f)), lambda f: -torch.log(_sig(f))),
    "wasserstein": (lambda r, f: f - r, lambda f: -f),
    "hinge": (lambda r, f: torch.clamp(1 - r, min=0) + torch.clamp(1 + f, min=0), lambda f: -f),
    "lsgan": (lambda r, f: 0.5 * (r - 1) ** 2 + 0.5 * f ** 2, lambda f: 0.5 * (f - 1) ** 2),
}


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_match_formulas_values_and_grads(kind):
    r = torch.randn(7, 1, dtype=D64, requires_grad=True)
    f = torch.randn(7, 1, dtype=D64, requires_grad=True)
    dref, gref = REFERENCE[kind]
    got, want = d_loss(kind, r, f), dref(r, f)
    torch.testing.assert_close(got, want)
    ga = torch.autograd.grad(got.sum(), (r, f))
    gb = torch.autograd.grad(want.sum(), (r, f))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    got, want = g_loss(kind, f), gref(f)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), f)[0], torch.autograd.grad(want.sum(), f)[0])


def test_loss_kind_is_checked():
    with pytest.raises(ValueError, match="loss kind"):
        d_loss("wgan", torch.zeros(1), torch.zeros(1))


def test_r1_r2_penalties():
    x = torch.randn(3, 2, 4, 4, dtype=D64, requires_grad=True)
    w = torch.randn(2, 4, 4, dtype=D64)
    logits = (x * w).sum(dim=[1, 2, 3]) + x.square().sum(dim=[1, 2, 3])
    want = (w + 2 * x.detach()).square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(r1_penalty(logits, x), want)
    torch.testing.assert_close(r2_penalty(logits, x), want)
    # differentiable: the penalty's gradient w.r.t. x is 2 * 2 * (w + 2x)
    g, = torch.autograd.grad(r1_penalty((x * w).sum(dim=[1, 2, 3]) + x.square().sum(dim=[1, 2, 3]), x).sum(), x)
    torch.testing.assert_close(g, 4 * (w + 2 * x.detach()))
    with pytest.raises(ValueError, match="require grad"):
        r2_penalty(logits, x.detach())


def test_acgan_and_infogan_terms():
    logits = torch.randn(5, 4, dtype=D64)
    y = torch.tensor([0, 3, 1, 1, 2])
    want = -torch.log_softmax(logits, dim=1)[torch.arange(5), y]
    torch.testing.assert_close(acgan_loss(logits, y), want)
    torch.testing.assert_close(infogan_categorical_loss(logits, y), want)
    mean, log_std, c = torch.randn(5, 2, dtype=D64), torch.randn(5, 2, dtype=D64), torch.randn(5, 2, dtype=D64)
    nll = -torch.distributions.Normal(mean, log_std.exp()).log_prob(c).sum(dim=1)
    torch.testing.assert_close(infogan_continuous_loss(mean, log_std, c), nll)


def test_weight_clipping_and_spectral_norm():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10)
    clip_weights_(m, 0.01)
    assert max(float(p.abs().max()) for p in m.parameters()) <= 0.01
    with pytest.raises(ValueError):
        clip_weights_(m, 0)
    sn = spectral_norm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(5, 7)))
    sn.train()
    for _ in range(30):  # power iterations converge
        sn[1](torch.randn(2, 5))
    sigma = torch.linalg.matrix_norm(sn[1].weight.detach(), ord=2)
    assert abs(float(sigma) - 1) < 1e-2
    assert spectral_norm(sn) is sn  # idempotent
    assert math.isfinite(float(sn[0](torch.randn(1, 3, 5, 5)).sum()))
