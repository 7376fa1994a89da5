"""conv2d with every gradient order on the library's kernels (``fastgen.functional.conv2d``) against
``F.conv2d`` (PyTorch's autograd, whose double backward computes the weight term as a
batch-transposed convolution), fp32 NCHW, batch 16, the StyleGAN2 64px discriminator's layers:

* ``3x3-128@64``: (16, 128, 64, 64) -> 128, stride 1, padding 1;
* ``3x3-256@32``: (16, 256, 32, 32) -> 256, stride 1, padding 1;
* ``3x3s2-128@65``: (16, 128, 65, 65) -> 256, stride 2 (after the FIR blur of a down-sampling layer).

Modes: ``fwd+bwd`` (y, dx and dw for a fixed upstream gradient: the first-order path, one
convolution_backward call for both, as PyTorch's); ``r1`` (the R1 pattern through one layer:
y = conv(x, w), g = dy/dx . gy with create_graph, then the gradient of ``<g, u>`` w.r.t. w and gy,
i.e. forward, backward-data and the double backward).
"""
import pytest
import torch
import torch.nn.functional as F

from fastgen.functional import conv2d
from harness import compare

CPU = torch.device("cpu")
CASES = {
    "3x3-128@64": ((16, 128, 64, 64), 128, 1, 1),
    "3x3-256@32": ((16, 256, 32, 32), 256, 1, 1),
    "3x3s2-128@65": ((16, 128, 65, 65), 256, 2, 0),
}


def _runner(conv, x, w, gy, u, mode):
    def run():
        xr = x.detach().requires_grad_()
        y = conv(xr, w)
        if mode == "fwd+bwd":
            return (y.detach(),) + torch.autograd.grad(y, (xr, w), gy)
        g = gy.clone().requires_grad_()
        gx, = torch.autograd.grad(y, xr, g, create_graph=True)
        return (gx.detach(),) + torch.autograd.grad(gx, (w, g), u)
    return run


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["fwd+bwd", "r1"])
def test_conv2d_fp32(benchmark, case, mode):
    shape, cout, stride, pad = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = (torch.randn(cout, shape[1], 3, 3, generator=g) / (shape[1] * 9) ** 0.5).requires_grad_()
    with torch.no_grad():
        y0 = F.conv2d(x, w, stride=stride, padding=pad)
    gy, u = torch.randn(y0.shape, generator=g), torch.randn(shape, generator=g)
    fast = _runner(lambda a, b: conv2d(a, b, stride=stride, padding=pad, impl="cpp"), x, w, gy, u, mode)
    eager = _runner(lambda a, b: F.conv2d(a, b, stride=stride, padding=pad), x, w, gy, u, mode)
    # the weight gradients are sums of 16k-65k products of unit normals (magnitude ~100-250): atol
    # 1e-2 is ~1e-4 of that, i.e. fp32 summation order
    info = compare(benchmark, fast, {"eager": eager}, device=CPU, rtol=1e-4, atol=1e-2,
                   group=f"conv2d {mode} {case}")
    info.update(case=case, mode=mode)
