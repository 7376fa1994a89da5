"""End to end: StyleGAN2 models on fastgen's fused kernels (the default backend) against the same
models on plain PyTorch ops (``fastgen.use_backend("torch")``: the references of bias_act,
upfirdn2d (depthwise conv2d), modulated_bias_act and adain). Convolutions are torch's in both.

* ``d_r1_step``: a discriminator step with R1 at 64px (``Discriminator.from_preset("64px")``,
  5.9M params), batch 16: logistic loss on reals and fakes plus ``gamma / 2 * ||grad_x D(x)||^2``,
  backward into D's weights (the R1 gradient is a second derivative through every D op).
* ``g_forward``: ``Generator.from_preset("64px")`` forward at batch 16 (const noise), both
  modulated-conv formulations.
* ``g_pl_step``: the generator's path-length regularisation step (batch 8): a first derivative
  through G w.r.t. the ws, then its gradient into G's weights (second order through G).

Each call takes a second or more on a CPU: ``heavy=True`` (3 rounds of one call).
"""
import pytest
import torch

import fastgen
from fastgen.gan import PathLengthPenalty, d_logistic_loss, r1_penalty
from fastgen.models import Discriminator, Generator
from harness import compare

BATCH = 16
CPU = torch.device("cpu")


def _torch_backend(fn):
    def run():
        with fastgen.use_backend("torch"):
            return fn()
    return run


def _randomise(model, seed):
    """Non-zero biases and noise strengths (zero-initialised in a fresh model) so every term counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_stylegan_d_r1_step(benchmark):
    torch.manual_seed(0)
    D = _randomise(Discriminator.from_preset("64px"), 1)
    g = torch.Generator().manual_seed(2)
    real = torch.randn(BATCH, 3, 64, 64, generator=g).clamp(-1, 1)
    fake = torch.randn(BATCH, 3, 64, 64, generator=g).clamp(-1, 1)
    probe = [D.blocks[0].fromrgb.weight, D.blocks[1].conv1.weight, D.blocks[2].skip.weight, D.fc.weight]

    def step():
        D.zero_grad(set_to_none=True)
        x = real.detach().requires_grad_(True)
        real_logits = D(x)
        loss = d_logistic_loss(real_logits, D(fake)).mean() + 5.0 * r1_penalty(real_logits, x).mean()
        loss.backward()
        return (loss.detach(),) + tuple(p.grad.clone() for p in probe)

    info = compare(benchmark, step, {"eager": _torch_backend(step)}, device=CPU, rtol=1e-3, atol=1e-4, heavy=True,
                   group=f"stylegan2 64px discriminator step with R1, batch {BATCH}")
    info.update(case="d_r1_step", batch=BATCH)


@pytest.mark.parametrize("fused_modconv", [False, True], ids=["modconv", "fused_modconv"])
def test_stylegan_g_forward(benchmark, fused_modconv):
    torch.manual_seed(0)
    G = _randomise(Generator.from_preset("64px"), 3).eval()
    z = torch.randn(BATCH, G.z_dim, generator=torch.Generator().manual_seed(4))

    def fwd():
        with torch.no_grad():
            return G(z, noise_mode="const", fused_modconv=fused_modconv)

    info = compare(benchmark, fwd, {"eager": _torch_backend(fwd)}, device=CPU, rtol=1e-4, atol=1e-4, heavy=True,
                   group=f"stylegan2 64px generator forward, batch {BATCH}, fused_modconv={fused_modconv}")
    info.update(case="g_forward", batch=BATCH, fused_modconv=fused_modconv)


def test_stylegan_g_pl_step(benchmark):
    torch.manual_seed(0)
    G = _randomise(Generator.from_preset("64px"), 5)
    z = torch.randn(BATCH // 2, G.z_dim, generator=torch.Generator().manual_seed(6))
    probe = [G.synthesis.blocks[-1].conv1.weight, G.synthesis.blocks[2].conv0.affine.weight,
             G.mapping.layers[0].weight]

    def step():
        G.zero_grad(set_to_none=True)
        pl = PathLengthPenalty()
        img, ws = G(z, noise_mode="const", return_ws=True)
        pen = pl(img, ws, generator=torch.Generator().manual_seed(7)).mean()
        pen.backward()
        return (pen.detach(),) + tuple(p.grad.clone() for p in probe)

    info = compare(benchmark, step, {"eager": _torch_backend(step)}, device=CPU, rtol=1e-3, atol=1e-4, heavy=True,
                   group=f"stylegan2 64px generator path-length step, batch {BATCH // 2}")
    info.update(case="g_pl_step", batch=BATCH // 2)
