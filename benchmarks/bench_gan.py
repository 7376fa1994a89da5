"""End to end: the GAN zoo's training steps on fastgen's fused kernels (the default backend) against
the same models on plain PyTorch ops (``fastgen.use_backend("torch")``: reference bias_act,
group_norm (layer / instance norms), and the penalty written with autograd and ``torch.norm``).
Convolutions are torch's in both.

* ``wgan_gp_critic_step``: a DCGAN critic (``norm="layer"``, as WGAN-GP recommends; 0.66M params at
  32px) at 32 and 64px, batch 64: ``D(fake) - D(real) + 10 GP`` on random interpolates, backward
  into the critic (the penalty's gradient is a second derivative through every layer).
* ``r1_step``: the same critic without a norm (``norm="none"``), logistic loss + R1 (gamma 10).
* ``pix2pix_step`` / ``cyclegan_step``: one full training step of each recipe (G and D updates),
  reported as it/s.

Tolerance of the gradient checks (atol 1e-3 on gradients of magnitude ~0.5): a LeakyReLU
pre-activation within fp32 rounding of 0 can get the other slope in one contender than in the
other (measured: one element of one sample of the 32px critic), which moves that sample's input
gradient by ~1% and the weight gradients by up to 3e-4; away from such kinks the two agree to
~1e-7 (tests/test_gan_models.py checks the networks tightly on inputs without that accident).
"""
import pytest
import torch

import fastgen
from fastgen.data import shapes_edges_dataset, shapes_inverted_dataset
from fastgen.functional import gradient_penalty
from fastgen.gan import CycleGANTraining, Pix2PixTraining, d_logistic_loss
from fastgen.models import DCGANDiscriminator, PatchGANDiscriminator, ResnetGenerator, UNetGenerator
from fastgen.ops.grad_penalty import gradient_penalty_reference
from harness import compare

CPU = torch.device("cpu")
BATCH = 64


def _torch_backend(fn):
    def run():
        with fastgen.use_backend("torch"):
            return fn()
    return run


def _critic(res, norm):
    torch.manual_seed(0)
    D = DCGANDiscriminator(img_resolution=res, base_channels=64, norm=norm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial affine / bias values
        for name, p in D.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return D


def _probe(D):
    return [p for name, p in D.named_parameters() if p.dim() == 4][:2] + [list(D.parameters())[-1]]


@pytest.mark.parametrize("res", [32, 64])
def test_wgan_gp_critic_step(benchmark, res):
    D = _critic(res, "layer")
    g = torch.Generator().manual_seed(2)
    real, fake = torch.rand(BATCH, 3, res, res, generator=g) * 2 - 1, torch.rand(BATCH, 3, res, res, generator=g) * 2 - 1
    probe = _probe(D)

    def step(penalty):
        D.zero_grad(set_to_none=True)
        loss = D(fake).mean() - D(real).mean() + penalty(D, real, fake, kind="wgan-gp", weight=10.0,
                                                        generator=torch.Generator().manual_seed(3))
        loss.backward()
        return (loss.detach(),) + tuple(p.grad.clone() for p in probe)

    info = compare(benchmark, lambda: step(gradient_penalty),
                   {"eager": _torch_backend(lambda: step(gradient_penalty_reference))}, device=CPU, rtol=2e-3,
                   atol=1e-3, heavy=True, group=f"WGAN-GP critic step, DCGAN critic {res}px layer norm, batch {BATCH}")
    info.update(case="wgan_gp_critic_step", res=res, batch=BATCH,
                params=sum(p.numel() for p in D.parameters()))


@pytest.mark.parametrize("res", [32, 64])
def test_r1_step(benchmark, res):
    D = _critic(res, "none")
    g = torch.Generator().manual_seed(2)
    real, fake = torch.rand(BATCH, 3, res, res, generator=g) * 2 - 1, torch.rand(BATCH, 3, res, res, generator=g) * 2 - 1
    probe = _probe(D)

    def step(penalty):
        D.zero_grad(set_to_none=True)
        loss = d_logistic_loss(D(real), D(fake)).mean() + penalty(D, real, kind="r1", weight=5.0)
        loss.backward()
        return (loss.detach(),) + tuple(p.grad.clone() for p in probe)

    info = compare(benchmark, lambda: step(gradient_penalty),
                   {"eager": _torch_backend(lambda: step(gradient_penalty_reference))}, device=CPU, rtol=2e-3,
                   atol=1e-3, heavy=True, group=f"R1 step, DCGAN discriminator {res}px, batch {BATCH}")
    info.update(case="r1_step", res=res, batch=BATCH)


def _recipe_steps(make, data, batch):
    """Two identical recipes (same seed): their first steps (from the same state) are compared, then
    each keeps stepping for the timing."""
    x = torch.stack([data[i][0] for i in range(batch)])
    torch.manual_seed(0)
    fast = make()
    torch.manual_seed(0)
    ref = make()

    def runner(r):
        return lambda: tuple(v for _, v in sorted(r.step(x).items()))
    return runner(fast), runner(ref)


def test_pix2pix_step(benchmark):
    data = shapes_edges_dataset(64, 8)

    def make():
        G = UNetGenerator(in_channels=1, out_channels=1, img_resolution=64, base_channels=64, dropout=0.0)
        D = PatchGANDiscriminator(in_channels=2, base_channels=64, n_layers=3)
        return Pix2PixTraining(G, D, batch_size=8)

    run, ref = _recipe_steps(make, data, 8)
    info = compare(benchmark, run, {"eager": _torch_backend(ref)}, device=CPU, rtol=1e-3, atol=1e-4, heavy=True,
                   group="pix2pix training step (U-Net G, 70x70 PatchGAN), 64px, batch 8")
    if "fastgen_ms" in info:
        info.update(fastgen_it_per_s=round(1e3 / info["fastgen_ms"], 2), eager_it_per_s=round(1e3 / info["eager_ms"], 2))


def test_cyclegan_step(benchmark):
    data = shapes_inverted_dataset(64, 8)

    def make():
        mk = lambda: ResnetGenerator(base_channels=64, n_blocks=6)  # noqa: E731
        md = lambda: PatchGANDiscriminator(in_channels=3, base_channels=64, n_layers=3, norm="instance")  # noqa: E731
        return CycleGANTraining(mk(), mk(), md(), md(), batch_size=4)

    run, ref = _recipe_steps(make, data, 4)
    info = compare(benchmark, run, {"eager": _torch_backend(ref)}, device=CPU, rtol=1e-3, atol=1e-4, heavy=True,
                   group="CycleGAN training step (ResNet-6 generators, PatchGANs), 64px, batch 4")
    if "fastgen_ms" in info:
        info.update(fastgen_it_per_s=round(1e3 / info["fastgen_ms"], 2), eager_it_per_s=round(1e3 / info["eager_ms"], 2))
