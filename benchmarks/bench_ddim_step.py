"""ddim_step: the fused DDIM update against the same update written in plain PyTorch (eager, and
torch.compile of it), on the same inputs.

Sizes: (16,4,64,64) fp32 fits in cache; (16,4,256,256) fp32 (4 tensors x 16.8 MB) is DRAM-sized.
``fastgen-out`` is the sampler-loop form (``out=`` buffers reused across steps); ``fastgen`` allocates
its two outputs like the baselines do (on CPU a fresh large output costs page faults, see
docs/performance.md).
"""
import pytest
import torch

from fastgen import backend
from fastgen.functional import ddim_step
from harness import compare

SIZES = {"cache": (16, 4, 64, 64), "dram": (16, 4, 256, 256)}
A_T, A_P = 0.35, 0.55


def eager_ddim(x, eps, a_t, a_p, eta=0.0, noise=None):
    """The update as a user writes it in PyTorch (diffusers' DDIMScheduler.step arithmetic)."""
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
    x_prev = a_p**0.5 * x0 + (1 - a_p - sigma**2) ** 0.5 * eps
    if noise is not None and eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", ["fastgen-out", "fastgen"])
def test_ddim_step_fp32(benchmark, device, size, variant):
    dev = torch.device(device)
    shape = SIZES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev)
    eps = torch.randn(shape, generator=g).to(dev)
    a_t = torch.tensor(A_T, dtype=torch.float64)  # how a scheduler holds them: host tensors, no syncs
    a_p = torch.tensor(A_P, dtype=torch.float64)
    impl = backend.resolve("ddim_step", dev)
    if variant == "fastgen-out":
        bufs = (torch.empty_like(x), torch.empty_like(x))
        fn = lambda: ddim_step(x, eps, a_t, a_p, out=bufs)  # noqa: E731
    else:
        fn = lambda: ddim_step(x, eps, a_t, a_p)  # noqa: E731
    baselines = {"eager": lambda: eager_ddim(x, eps, A_T, A_P)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = torch.compile(lambda: eager_ddim(x, eps, A_T, A_P))
    info = compare(benchmark, fn, baselines, device=dev, nbytes=4 * x.numel() * x.element_size(),
                   rtol=1e-6, atol=2e-6, group=f"ddim_step fp32 {size} {tuple(shape)}")
    info.update(impl=impl, variant=variant, shape=list(shape))


@pytest.mark.parametrize("device", DEVICES)
def test_ddim_step_ddpm_bf16_per_sample(benchmark, device):
    """DDPM ancestral step (eta=1, given noise) in bf16 with per-sample alphas, DRAM-sized."""
    dev = torch.device(device)
    shape = SIZES["dram"]
    g = torch.Generator().manual_seed(1)
    x, eps, noise = (torch.randn(shape, generator=g).to(dev, torch.bfloat16) for _ in range(3))
    a_t = torch.linspace(0.2, 0.5, shape[0], dtype=torch.float64)
    a_p = a_t + 0.05
    if dev.type == "cuda":
        a_t, a_p = a_t.to(dev), a_p.to(dev)
    bufs = (torch.empty_like(x), torch.empty_like(x))
    col = (-1, 1, 1, 1)

    def eager():
        at, ap = a_t.view(col).float(), a_p.view(col).float()
        x0 = (x.float() - (1 - at).sqrt() * eps.float()) / at.sqrt()
        sigma = ((1 - ap) / (1 - at) * (1 - at / ap)).sqrt()
        xp = ap.sqrt() * x0 + (1 - ap - sigma**2).sqrt() * eps.float() + sigma * noise.float()
        return xp.to(torch.bfloat16), x0.to(torch.bfloat16)

    info = compare(benchmark, lambda: ddim_step(x, eps, a_t, a_p, 1.0, noise, out=bufs), {"eager": eager},
                   device=dev, nbytes=5 * x.numel() * x.element_size(), rtol=1.6e-2, atol=1.6e-2,
                   group=f"ddim_step ddpm bf16 per-sample {tuple(shape)}")
    info.update(impl=backend.resolve("ddim_step", dev), variant="fastgen-out")
