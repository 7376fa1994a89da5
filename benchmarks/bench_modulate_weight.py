"""modulate_weight: StyleGAN2's per-sample modulated + demodulated weights (the grouped "fused
modconv") against what StyleGAN2 code writes in PyTorch, eager and torch.compile:

    w = weight[None] * styles[:, None, :, None, None]
    w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()

* ``fwd``: the (N, O, I, 3, 3) weights.
* ``fwd+bwd``: and the gradients w.r.t. weight and styles for a fixed upstream gradient.

Sizes: a 512-channel 3x3 layer (StyleGAN2 config F up to 64 px) and a 256-channel one (the
64px preset), batch 16, fp32.
"""
import pytest
import torch

from fastgen import backend
from fastgen.functional import modulate_weight
from harness import compare

SHAPES = [(16, 512, 512), (16, 256, 256)]
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def eager(weight, styles):
    w = weight[None] * styles[:, None, :, None, None]
    return w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()


def _runner(fn, weight, styles, gout, mode):
    if mode == "fwd":
        return lambda: fn(weight, styles)

    def run():
        out = fn(weight, styles)
        return (out.detach(),) + tuple(torch.autograd.grad(out, (weight, styles), gout))
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_modulate_weight_fp32(benchmark, device, shape, mode):
    dev = torch.device(device)
    n, o, i = shape
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(o, i, 3, 3, generator=g).to(dev).requires_grad_(mode != "fwd")
    styles = (torch.randn(n, i, generator=g) + 1).to(dev).requires_grad_(mode != "fwd")
    gout = torch.randn(n, o, i, 3, 3, generator=g).to(dev) if mode != "fwd" else None
    fast = _runner(lambda w, s: modulate_weight(w, s), weight, styles, gout, mode)
    baselines = {"eager": _runner(eager, weight, styles, gout, mode)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = _runner(torch.compile(eager), weight, styles, gout, mode)
    out_bytes = n * o * i * 9 * 4
    nbytes = {"fwd": out_bytes, "fwd+bwd": 3 * out_bytes}[mode]  # write out; + read G (twice if not cached)
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, rtol=1e-4, atol=1e-4,
                   group=f"modulate_weight {mode} fp32 N,O,I={shape} 3x3")
    info.update(impl=backend.resolve("modulate_weight", dev), mode=mode)
