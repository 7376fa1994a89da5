"""bias_act: the fused bias + activation + gain (StyleGAN2's conv/FC epilogue) against what a
discriminator writes in plain PyTorch, ``F.leaky_relu(x + b[:, None, None], 0.2) * sqrt(2)`` (and
SiLU), eager and torch.compile, on the same inputs.

* ``fwd``: y.
* ``fwd+bwd``: y, dx and db for a fixed upstream grad.
* ``double-bwd``: the R1 pattern: g = d<y, gy>/dx with create_graph, then the second-order VJP
  d<g, u>/d(x, b) for a fixed cotangent u (what the gradient of a penalty on g sends back through
  this layer), i.e. forward, first order and second order in one call. (A penalty such as
  sum(g^2) would add its own passes, the same for both contenders.)

Size (the issue's): (16, 512, 32, 32) fp32 NCHW (a 32x32 discriminator block at batch 16).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import bias_act
from harness import compare

SHAPE = (16, 512, 32, 32)
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def eager(x, b, act):
    z = x + b[:, None, None]
    return F.leaky_relu(z, 0.2) * math.sqrt(2) if act == "lrelu" else F.silu(z) * math.sqrt(2)


def fused(x, b, act):
    return bias_act(x, b, act=act)


def _runner(fn, x, b, act, gy, gu, mode):
    if mode == "fwd":
        return lambda: fn(x, b, act)

    def run():
        y = fn(x, b, act)
        if mode == "fwd+bwd":
            return (y.detach(),) + tuple(torch.autograd.grad(y, (x, b), gy))
        gx, = torch.autograd.grad(y, x, gy, create_graph=True)
        return (gx.detach(),) + tuple(torch.autograd.grad(gx, (x, b), gu))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["lrelu", "silu"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "double-bwd"])
def test_bias_act_fp32(benchmark, device, act, mode):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).to(dev).requires_grad_(mode != "fwd")
    b = (0.1 * torch.randn(SHAPE[1], generator=g)).to(dev).requires_grad_(mode != "fwd")
    gy = torch.randn(SHAPE, generator=g).to(dev)
    gu = torch.randn(SHAPE, generator=g).to(dev)
    fast = _runner(fused, x, b, act, gy, gu, mode)
    baselines = {"eager": _runner(eager, x, b, act, gy, gu, mode)}
    if not getattr(benchmark, "disabled", False) and mode != "double-bwd":  # inductor has no double backward
        torch._dynamo.reset()
        compiled = torch.compile(eager)
        baselines["compile"] = _runner(compiled, x, b, act, gy, gu, mode)
    n = x.numel() * 4
    nbytes = {"fwd": 2 * n, "fwd+bwd": 5 * n, "double-bwd": 7 * n}[mode]
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, rtol=1e-4, atol=2e-3,
                   group=f"bias_act {act} {mode} fp32 {SHAPE}")
    info.update(impl=backend.resolve("bias_act", dev), act=act, mode=mode)
