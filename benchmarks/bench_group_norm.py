"""group_norm: the fused GroupNorm (+ scale/shift modulation) + SiLU against what a U-Net ResNet
block writes in plain PyTorch, ``F.silu(F.group_norm(x, 32, w, b) * (1 + scale) + shift)`` (or
without the modulation), eager and torch.compile, on the same inputs.

* ``fwd``: the output only (inference / sampling).
* ``fwd+bwd``: y and the grads of x, weight, bias (and scale, shift) for a fixed upstream grad.

Sizes: (8, 256, 32, 32) and (16, 128, 64, 64), 32 groups, fp32, NCHW.
"""
import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import group_norm
from harness import compare

SHAPES = {"small": (8, 256, 32, 32), "large": (16, 128, 64, 64)}
G = 32

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _inputs(shape, dev, mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(shape, generator=g).to(dev)
    w = (1 + 0.1 * torch.randn(c, generator=g)).to(dev)
    b = (0.1 * torch.randn(c, generator=g)).to(dev)
    s = (0.1 * torch.randn(n, c, generator=g)).to(dev) if mod else None
    t = (0.1 * torch.randn(n, c, generator=g)).to(dev) if mod else None
    return x, w, b, s, t


def eager_block(x, w, b, s, t):
    """What diffusers' ResnetBlock2D (time_embedding_norm="scale_shift") computes."""
    h = F.group_norm(x, G, w, b, 1e-5)
    if s is not None:
        h = h * (1 + s[:, :, None, None]) + t[:, :, None, None]
    return F.silu(h)


def fused_block(x, w, b, s, t):
    return group_norm(x, G, w, b, 1e-5, activation="silu", scale=s, shift=t)


def _with_grads(fn, args, gy):
    leaves = [a for a in args if a is not None and a.requires_grad]

    def run():
        y = fn(*args)
        return (y.detach(),) + tuple(torch.autograd.grad(y, leaves, gy))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("mod", [True, False], ids=["scale_shift", "plain"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_group_norm_silu_fp32(benchmark, device, size, mod, mode):
    dev = torch.device(device)
    shape = SHAPES[size]
    args = _inputs(shape, dev, mod)
    if mode == "fwd":
        fast = lambda: fused_block(*args)  # noqa: E731
        baselines = {"eager": lambda: eager_block(*args)}
        if not getattr(benchmark, "disabled", False):
            torch._dynamo.reset()
            compiled = torch.compile(eager_block)
            baselines["compile"] = lambda: compiled(*args)
        nbytes = 2 * args[0].numel() * 4
    else:
        args = tuple(a.requires_grad_() if a is not None else None for a in args)
        gy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dev)
        fast = _with_grads(fused_block, args, gy)
        baselines = {"eager": _with_grads(eager_block, args, gy)}
        if not getattr(benchmark, "disabled", False):
            torch._dynamo.reset()
            compiled = torch.compile(eager_block)
            baselines["compile"] = _with_grads(compiled, args, gy)
        nbytes = 5 * args[0].numel() * 4  # fwd: x, y; bwd: x, gy, gx
    # fwd+bwd: weight/bias grads are sums over N*H*W elements (|g| up to ~600 here); eager itself is
    # 2e-4 off float64 there, so near-zero entries need an absolute tolerance of that order
    atol = 1e-4 if mode == "fwd" else 1e-3
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, rtol=1e-4, atol=atol,
                   group=f"group_norm+{'scale_shift+' if mod else ''}silu {mode} fp32 {size} {tuple(shape)}")
    info.update(impl=backend.resolve("group_norm", dev), shape=list(shape), scale_shift=mod, mode=mode)
