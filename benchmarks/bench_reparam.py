"""reparameterize: the VAE posterior sample + KL (in-kernel Philox noise) against what VAE code writes
in PyTorch, eager and torch.compile:

    std = torch.exp(0.5 * logvar); z = mu + std * torch.randn_like(std)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)

* ``fwd``: z and kl. ``fwd+bwd``: and the gradients w.r.t. mu and logvar of ``<z, gz> + <kl, gk>``.

The baselines draw their noise with torch's randn (as users write it); the equality check first
runs the formula with fastgen's noise (``noise_like``) and compares. Sizes: a latent-diffusion
latent batch (64, 4, 32, 32), a larger one (16, 4, 128, 128), and an MLP VAE's (1024, 128).
"""
import pytest
import torch

from fastgen import backend
from fastgen.functional import reparameterize
from fastgen.ops.sampler_update import noise_like
from harness import assert_outputs_close, compare

SHAPES = [(64, 4, 32, 32), (16, 4, 128, 128), (1024, 128)]
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
SEED = 77


def eager(mu, logvar, noise=None):
    std = torch.exp(0.5 * logvar)
    z = mu + std * (torch.randn_like(std) if noise is None else noise)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    return z, kl


def _runner(fn, mu, lv, gz, gk, mode):
    if mode == "fwd":
        return lambda: tuple(fn(mu, lv))

    def run():
        z, kl = fn(mu, lv)
        return (z.detach(), kl.detach()) + torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (mu, lv))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_reparameterize_fp32(benchmark, device, shape, mode):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=g).to(dev).requires_grad_(mode != "fwd")
    lv = (torch.randn(shape, generator=g) * 0.5 - 1).to(dev).requires_grad_(mode != "fwd")
    gz, gk = torch.randn(shape, generator=g).to(dev), torch.rand(shape[0], generator=g).to(dev)
    fast = _runner(lambda a, b: reparameterize(a, b, seed=SEED), mu, lv, gz, gk, mode)
    same_noise = noise_like(mu.detach(), SEED)
    assert_outputs_close(fast(), _runner(lambda a, b: eager(a, b, same_noise), mu, lv, gz, gk, mode)(), 1e-5, 1e-4,
                         "fastgen vs eager with fastgen's noise")
    baselines = {"eager": _runner(eager, mu, lv, gz, gk, mode)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = _runner(torch.compile(eager), mu, lv, gz, gk, mode)
    n = mu.numel() * 4
    nbytes = {"fwd": 3 * n, "fwd+bwd": 8 * n}[mode]  # fwd: read mu, logvar, write z; bwd: + read gz, write 2
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, check_against=None,
                   unchecked=("eager", "compile"), group=f"reparameterize {mode} fp32 {shape}")
    info.update(impl=backend.resolve("reparameterize", dev), mode=mode)
