"""upfirdn2d (StyleGAN2's resampling): fastgen's fused kernels against the plain-PyTorch reference
(``upfirdn2d_reference``: one depthwise conv2d with the 2-D filter, conv_transpose2d for the
upsampling) eager and under torch.compile, on the same inputs, fp32 NCHW, filter [1, 3, 3, 1].

Cases (StyleGAN2 at batch 16):
* ``upsample2d`` (16, 512, 16, 16) -> 32 and (16, 128, 64, 64) -> 128 (synthesis network);
* ``downsample2d`` (16, 256, 64, 64) and (16, 512, 32, 32) (discriminator skip / residual path);
* ``blur`` (16, 256, 64, 64) with padding 2 (-> 65 x 65): the blur in front of a 3x3 stride-2
  conv in the discriminator (conv2d_resample with down=2).

Modes: ``fwd``; ``fwd+bwd`` (y and dx for a fixed upstream grad); ``double-bwd`` on the blur: the
R1 pattern, g = d<y, gy>/dx with create_graph, then the second-order VJP d<g, u>/dgy for a fixed
cotangent u (the op is linear, so this is how a penalty's gradient flows back through it), i.e.
forward, backward and double backward in one call.
"""
import pytest
import torch

from fastgen import backend
from fastgen.functional import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from harness import compare

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]

CASES = {
    "upsample2d-16x512x16x16": ((16, 512, 16, 16), lambda x, f, impl: upsample2d(x, f, impl=impl)),
    "upsample2d-16x128x64x64": ((16, 128, 64, 64), lambda x, f, impl: upsample2d(x, f, impl=impl)),
    "downsample2d-16x256x64x64": ((16, 256, 64, 64), lambda x, f, impl: downsample2d(x, f, impl=impl)),
    "downsample2d-16x512x32x32": ((16, 512, 32, 32), lambda x, f, impl: downsample2d(x, f, impl=impl)),
    "blur-pad2-16x256x64x64": ((16, 256, 64, 64), lambda x, f, impl: upfirdn2d(x, f, padding=2, impl=impl)),
}


def _runner(fn, x, gy, u, mode):
    if mode == "fwd":
        return lambda: fn(x)

    def run():
        y = fn(x)
        if mode == "fwd+bwd":
            return y.detach(), torch.autograd.grad(y, x, gy)[0]
        g = gy.clone().requires_grad_()
        gx, = torch.autograd.grad(y, x, g, create_graph=True)
        return gx.detach(), torch.autograd.grad(gx, g, u)[0]
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,mode", [(c, m) for c in CASES for m in ("fwd", "fwd+bwd")]
                         + [("blur-pad2-16x256x64x64", "double-bwd")])
def test_upfirdn2d_fp32(benchmark, device, case, mode):
    dev = torch.device(device)
    shape, op = CASES[case]
    f = setup_filter([1, 3, 3, 1], device=dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev).requires_grad_(mode != "fwd")
    with torch.no_grad():
        y0 = op(x, f, "torch")
    gy = torch.randn(y0.shape, generator=g).to(dev)
    u = torch.randn(shape, generator=g).to(dev)
    fast = _runner(lambda t: op(t, f, None), x, gy, u, mode)
    eager_fn = lambda t: op(t, f, "torch")  # noqa: E731  (upfirdn2d_reference, plain PyTorch)
    baselines = {"eager": _runner(eager_fn, x, gy, u, mode)}
    if not getattr(benchmark, "disabled", False) and mode != "double-bwd":  # inductor has no double backward
        torch._dynamo.reset()
        baselines["compile"] = _runner(torch.compile(eager_fn), x, gy, u, mode)
    n = (x.numel() + y0.numel()) * 4
    nbytes = {"fwd": n, "fwd+bwd": 2 * n, "double-bwd": 3 * n}[mode]
    info = compare(benchmark, fast, baselines, device=dev, nbytes=nbytes, rtol=1e-4, atol=1e-5,
                   group=f"upfirdn2d {case} {mode} fp32")
    info.update(impl=backend.resolve("upfirdn2d", dev), mode=mode, shape=list(shape), out_shape=list(y0.shape))


def test_filter2d_is_the_same_op():
    """filter2d keeps the size (its padding is added to the 'same' padding): the benchmark's blur
    with padding 2 on a 4-tap filter equals filter2d with padding (0, 1, 0, 1)."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(filter2d(x, f, padding=(0, 1, 0, 1)), upfirdn2d(x, f, padding=2))
