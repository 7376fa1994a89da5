"""adain: fastgen's fused AdaIN (on the group_norm kernels) against StyleGAN's AdaIN in plain
PyTorch, ``F.instance_norm(x) * y_s[..., None, None] + y_b[..., None, None]``, eager and
torch.compile, fp32 NCHW.

* ``fwd``: y. ``fwd+bwd``: y and the grads of x, y_s and y_b for a fixed upstream grad.
Sizes (the issue's): a 16x16 StyleGAN layer (16, 512, 16, 16) and a 128x128 one (16, 64, 128, 128).
"""
import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import adain
from harness import compare

SHAPES = {"16px": (16, 512, 16, 16), "128px": (16, 64, 128, 128)}
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def eager(x, s, b):
    return F.instance_norm(x, eps=1e-5) * s[:, :, None, None] + b[:, :, None, None]


def _runner(fn, args, gy, mode):
    if mode == "fwd":
        return lambda: fn(*args)

    def run():
        y = fn(*args)
        return (y.detach(),) + tuple(torch.autograd.grad(y, args, gy))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_adain_fp32(benchmark, device, size, mode):
    dev = torch.device(device)
    shape = SHAPES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev)
    s = (1 + 0.2 * torch.randn(shape[:2], generator=g)).to(dev)
    b = (0.2 * torch.randn(shape[:2], generator=g)).to(dev)
    args = tuple(t.requires_grad_(mode != "fwd") for t in (x, s, b))
    gy = torch.randn(shape, generator=g).to(dev)
    fast = _runner(adain, args, gy, mode)
    baselines = {"eager": _runner(eager, args, gy, mode)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = _runner(torch.compile(eager), args, gy, mode)
    n = x.numel() * 4
    info = compare(benchmark, fast, baselines, device=dev, nbytes=2 * n if mode == "fwd" else 5 * n, rtol=1e-4,
                   atol=1e-3, group=f"adain {mode} fp32 {size} {shape}")
    info.update(impl=backend.resolve("group_norm", dev), mode=mode)
