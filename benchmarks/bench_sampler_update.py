"""sampler_update: one fused sampler step against the same step written in plain PyTorch (eager,
and torch.compile of it), on the same inputs.

- ``ancestral``: an Euler-ancestral step, x0 = x - sigma eps, x' = x0 + s_d (x - x0)/sigma + s_u z.
  fastgen generates z inside the kernel (Philox); the baselines draw it with ``torch.randn`` as users
  do (timed that way); equivalence is checked against the eager formula given fastgen's noise.
- ``cfg-ddim``: classifier-free guidance combine + DDIM update (eta = 0) from two model outputs.
- ``dpmpp-2m``: a DPM-Solver++(2M) step: x0 from eps, history x0 of the previous step.

Sizes: (16,4,64,64) fp32 (cache) and (16,4,256,256) fp32 (DRAM). fastgen writes into reused
``out=`` buffers (what a sampler loop does).
"""
import math

import pytest
import torch

from fastgen import backend
from fastgen.functional import sampler_coeffs, sampler_update
from fastgen.ops.sampler_update import noise_like
from harness import compare

SIZES = {"cache": (16, 4, 64, 64), "dram": (16, 4, 256, 256)}
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
SIGMA, SIGMA_NEXT = 2.0, 1.4
A_T, A_P, GUIDANCE = 0.35, 0.55, 4.0


def _inputs(shape, dev, k):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).to(dev) for _ in range(k)]


def _ancestral_consts():
    s_up = math.sqrt(SIGMA_NEXT**2 * (SIGMA**2 - SIGMA_NEXT**2) / SIGMA**2)
    s_down = math.sqrt(SIGMA_NEXT**2 - s_up**2)
    return s_up, s_down


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SIZES))
def test_sampler_update_ancestral(benchmark, device, size):
    dev = torch.device(device)
    x, eps = _inputs(SIZES[size], dev, 2)
    s_up, s_down = _ancestral_consts()
    dt = s_down - SIGMA
    # x0 = x - sigma eps;  x' = x + dt (x - x0)/sigma + s_up z = x + dt eps + s_up z
    c = sampler_coeffs(a_x=1.0, a_m=-SIGMA, c_x=1.0, c_m=dt, c_n=s_up)
    bufs = (torch.empty_like(x), torch.empty_like(x))
    gen = torch.Generator().manual_seed(1)
    seed = 12345

    def eager(z):
        x0 = x - SIGMA * eps
        d = (x - x0) / SIGMA
        return x + d * dt + z * s_up, x0

    baselines = {"eager-given-noise": lambda: eager(noise_like(x, seed)),
                 "eager": lambda: eager(torch.randn(x.shape, generator=gen, device=dev))}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        compiled = torch.compile(eager)
        baselines["compile"] = lambda: compiled(torch.randn(x.shape, generator=gen, device=dev))
    # the timed fastgen call draws a fresh seed per step from the generator (the sampler's path)
    check = {"first": True}

    def fast():
        if check["first"]:
            check["first"] = False
            return sampler_update(x, eps, c, seed=seed, out=bufs)
        return sampler_update(x, eps, c, generator=gen, out=bufs)

    info = compare(benchmark, fast, baselines, device=dev, nbytes=4 * x.numel() * 4, rtol=1e-5, atol=2e-5,
                   group=f"sampler_update ancestral fp32 {size} {SIZES[size]}", check_against="eager-given-noise",
                   unchecked=("eager", "compile"))
    info.update(impl=backend.resolve("sampler_update", dev), shape=list(SIZES[size]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SIZES))
def test_sampler_update_cfg_ddim(benchmark, device, size):
    dev = torch.device(device)
    x, cond, unc = _inputs(SIZES[size], dev, 3)
    s1, inv = math.sqrt(1 - A_T), 1 / math.sqrt(A_T)
    c = sampler_coeffs(a_x=inv, a_m=-s1 * inv, c_0=math.sqrt(A_P), c_m=math.sqrt(1 - A_P))
    bufs = (torch.empty_like(x), torch.empty_like(x))

    def eager():
        e = unc + GUIDANCE * (cond - unc)
        x0 = (x - (1 - A_T) ** 0.5 * e) / A_T**0.5
        return A_P**0.5 * x0 + (1 - A_P) ** 0.5 * e, x0

    baselines = {"eager": eager}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = torch.compile(eager)
    info = compare(benchmark, lambda: sampler_update(x, cond, c, uncond=unc, guidance_scale=GUIDANCE, out=bufs),
                   baselines, device=dev, nbytes=5 * x.numel() * 4, rtol=1e-5, atol=1e-5,
                   group=f"sampler_update cfg+ddim fp32 {size} {SIZES[size]}")
    info.update(impl=backend.resolve("sampler_update", dev), shape=list(SIZES[size]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SIZES))
def test_sampler_update_dpmpp_2m(benchmark, device, size):
    dev = torch.device(device)
    x, eps, x0_prev = _inputs(SIZES[size], dev, 3)
    # VP: alpha_t, sigma_t at s (current) and t (next), lambda = log(alpha/sigma), r = h_last / h
    a_s, a_t = math.sqrt(0.35), math.sqrt(0.55)
    s_s, s_t = math.sqrt(1 - 0.35), math.sqrt(1 - 0.55)
    h = math.log(a_t / s_t) - math.log(a_s / s_s)
    r = 0.8
    e = math.expm1(-h)
    # D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev;  x' = (s_t/s_s) x - a_t e D
    c = sampler_coeffs(a_x=1 / a_s, a_m=-s_s / a_s, c_x=s_t / s_s, c_0=-a_t * e * (1 + 0.5 / r),
                       c_h1=a_t * e * 0.5 / r)
    bufs = (torch.empty_like(x), torch.empty_like(x))

    def eager():
        x0 = (x - s_s * eps) / a_s
        d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        return (s_t / s_s) * x - a_t * e * d, x0

    baselines = {"eager": eager}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = torch.compile(eager)
    info = compare(benchmark, lambda: sampler_update(x, eps, c, h1=x0_prev, out=bufs), baselines, device=dev,
                   nbytes=5 * x.numel() * 4, rtol=1e-5, atol=1e-5,
                   group=f"sampler_update dpm++2m fp32 {size} {SIZES[size]}")
    info.update(impl=backend.resolve("sampler_update", dev), shape=list(SIZES[size]))
