"""End to end: latent-diffusion sampling, 50 DDIM steps of a latent U-Net plus the VAE decode, on
fastgen's fused kernels (the default backend) against the same model on plain PyTorch ops
(``fastgen.use_backend("torch")``: reference GroupNorm(+scale/shift)+SiLU, attention, sampler
update). Convolutions are torch's in both. Outputs are compared in the same run.

* ``shapes32``: the embedded dataset's LDM: VAE ``shapes32`` preset (32x32 RGB <-> 4x8x8), U-Net
  of the ``tiny`` preset built at 8x8 with 4 input channels, class-conditional with classifier-free
  guidance 3 (the cond and uncond halves in one batch of 32), batch 16.
* ``kl-f4`` (timed runs only): VAE ``kl-f4`` preset (64x64 RGB <-> 3x16x16), ``tiny`` U-Net at 16x16,
  unconditional, batch 16.

The U-Net's weights are random (``0.02 N(0, 1)``, so its zero-initialised output convolution does
not hide the network), the VAE keeps its default initialisation; each call samples from the same
seed and returns (decoded images, latents), both compared. Each call takes a second or more on a CPU:
``heavy=True`` (3 rounds of one call). With ``--benchmark-disable`` the shapes32 case checks the
equivalence on 4 samples and 5 steps only (seconds instead of minutes on a CPU).
"""
import pytest
import torch

import fastgen
from fastgen.diffusion import LatentDiffusion
from fastgen.models import UNet
from fastgen.models.vae import VAE
from harness import compare

BATCH, STEPS = 16, 50
# 50 steps of fp32 rounding differences between the fused and the reference kernels, amplified by
# the decoder: measured max abs difference ~1e-5 on the shapes32 case
TOL = dict(rtol=1e-4, atol=1e-4)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _ldm(vae_preset: str, num_classes):
    torch.manual_seed(0)
    vae = VAE.from_preset(vae_preset)
    c, h, _ = vae.latent_shape
    unet = UNet.from_preset("tiny", image_size=h, in_channels=c, num_classes=num_classes)
    _randomise(unet, 2)
    return LatentDiffusion(vae, unet, num_classes=num_classes, scale_factor=1.0).eval()


def _sampler(ldm, guidance, batch=BATCH, steps=STEPS):
    labels = torch.arange(batch) % ldm.num_classes if ldm.num_classes else None

    def run():
        return ldm.sample(batch, sampler="ddim", steps=steps, class_labels=labels, guidance_scale=guidance,
                          generator=torch.Generator().manual_seed(0), progress=False, return_latents=True)
    return run


def _torch_backend(fn):
    def run():
        with fastgen.use_backend("torch"):
            return fn()
    return run


def test_ldm_sampling_shapes32(benchmark):
    ldm = _ldm("shapes32", num_classes=4)
    if getattr(benchmark, "disabled", False):  # the fast equivalence run: 4 samples, 5 steps
        run = _sampler(ldm, guidance=3.0, batch=4, steps=5)
    else:
        run = _sampler(ldm, guidance=3.0)
    info = compare(benchmark, run, {"eager": _torch_backend(run)}, device=torch.device("cpu"), heavy=True,
                   group=f"ldm shapes32 ddim {STEPS} steps cfg batch {BATCH}", **TOL)
    info.update(case="shapes32", batch=BATCH, steps=STEPS, latent="4x8x8", image="3x32x32", guidance=3.0)


def test_ldm_sampling_kl_f4(benchmark):
    if getattr(benchmark, "disabled", False):
        pytest.skip("timed runs only (a larger model; the shapes32 case checks the equivalence)")
    ldm = _ldm("kl-f4", num_classes=None)
    run = _sampler(ldm, guidance=1.0)
    info = compare(benchmark, run, {"eager": _torch_backend(run)}, device=torch.device("cpu"), heavy=True,
                   group=f"ldm kl-f4 ddim {STEPS} steps batch {BATCH}", **TOL)
    info.update(case="kl-f4", batch=BATCH, steps=STEPS, latent="3x16x16", image="3x64x64", guidance=1.0)
