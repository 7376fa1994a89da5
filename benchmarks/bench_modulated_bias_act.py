"""modulated_bias_act: StyleGAN2's synthesis-layer epilogue (non-fused modulated conv: demodulation
scale, noise injection, bias, leaky ReLU with gain sqrt 2, clamp 256) against what StyleGAN2 code
writes in plain PyTorch, eager and torch.compile, on the same inputs:

    x = x * d[:, :, None, None] + noise * strength
    y = clamp(F.leaky_relu(x + b[None, :, None, None], 0.2) * sqrt(2), -256, 256)

* ``fwd``: y.
* ``fwd+bwd``: y and the gradients w.r.t. x, b, d (the demodulation coefficients, which depend on
  the style) and the layer's scalar noise strength for a fixed upstream grad. The noise itself is
  a buffer (no grad), as in StyleGAN2.
* ``double-bwd``: the path-length-regularisation pattern: g = d<y, gy>/dx with create_graph, then
  the second-order VJP d<g, u>/d(x, b, d, strength) for a fixed cotangent u, i.e. forward, first
  order and second order in one call (torch.compile is not a baseline: inductor has no double
  backward).

Shapes (fp32 NCHW, batch 16): (16, 512, 32, 32) (a 32x32 synthesis layer) and (16, 128, 128, 128)
(a 128x128 layer at 1/4 of StyleGAN2's width); scale (N, C), noise (N, 1, H, W), scalar strength.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import modulated_bias_act
from harness import compare

SHAPES = [(16, 512, 32, 32), (16, 128, 128, 128)]
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
_SQRT2 = math.sqrt(2)


def eager(x, b, d, noise, strength):
    x = x * d[:, :, None, None] + noise * strength
    return torch.clamp(F.leaky_relu(x + b[None, :, None, None], 0.2) * _SQRT2, -256, 256)


def fused(x, b, d, noise, strength):
    return modulated_bias_act(x, b, scale=d, noise=noise, noise_strength=strength, act="lrelu", clamp=256.0)


def _runner(fn, args, gy, gu, mode):
    x, b, d, noise, strength = args
    if mode == "fwd":
        return lambda: fn(x, b, d, noise, strength)

    def run():
        y = fn(x, b, d, noise, strength)
        if mode == "fwd+bwd":
            return (y.detach(),) + tuple(torch.autograd.grad(y, (x, b, d, strength), gy))
        gx, = torch.autograd.grad(y, x, gy, create_graph=True)
        return (gx.detach(),) + tuple(torch.autograd.grad(gx, (x, b, d, strength), gu, allow_unused=True))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "double-bwd"])
def test_modulated_bias_act_fp32(benchmark, device, shape, mode):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    grad = mode != "fwd"
    x = torch.randn(shape, generator=g).to(dev).requires_grad_(grad)
    b = (0.1 * torch.randn(c, generator=g)).to(dev).requires_grad_(grad)
    d = (0.5 + torch.rand(n, c, generator=g)).to(dev).requires_grad_(grad)  # demodulation coefficients
    noise = torch.randn(n, 1, h, w, generator=g).to(dev)
    strength = torch.tensor(0.1).to(dev).requires_grad_(grad)
    gy = torch.randn(shape, generator=g).to(dev)
    gu = torch.randn(shape, generator=g).to(dev)
    args = (x, b, d, noise, strength)
    fast = _runner(fused, args, gy, gu, mode)
    baselines = {"eager": _runner(eager, args, gy, gu, mode)}
    if not getattr(benchmark, "disabled", False) and mode != "double-bwd":
        torch._dynamo.reset()
        baselines["compile"] = _runner(torch.compile(eager), args, gy, gu, mode)
    nx = x.numel() * 4
    # bytes the fused passes move: fwd x, y; bwd + g, x, dx; double backward + g, x, u, dx
    nbytes = {"fwd": 2 * nx, "fwd+bwd": 5 * nx, "double-bwd": 9 * nx}[mode] + noise.numel() * 4 * (1 if mode == "fwd" else 2)
    # dd and dstrength sum 1024-16384 (resp. 8M) products: compared relative to their size
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, rtol=1e-4, atol=2e-3,
                   group=f"modulated_bias_act {mode} fp32 {shape}")
    info.update(impl=backend.resolve("modulated_bias_act", dev), mode=mode, shape=list(shape))
