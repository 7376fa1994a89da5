"""modulated_conv2d: StyleGAN2's modulated (+ demodulated) 3x3 convolution, alone, on fastgen's
fused ops (the default backend: modulate_weight for the grouped "fused modconv" weights, upfirdn2d
for the 2x upsampling layer's FIR filter) against the same composite on plain PyTorch ops
(``fastgen.use_backend("torch")``: the ops' references). The convolutions are torch's in both.

Cases (batch 16, fp32, a 256-channel layer as in the 64px preset's middle resolutions):

* ``same``: 32x32 -> 32x32, ``fused_modconv`` False (styles applied to x) and True (grouped conv
  with per-sample weights);
* ``up``: 16x16 -> 32x32 (transposed conv + FIR filter), both formulations.

Modes: ``fwd``, and ``fwd+bwd`` (gradients w.r.t. x, weight and styles for a fixed upstream
gradient). The end-to-end generator / discriminator steps are in bench_stylegan.py.
"""
import pytest
import torch

import fastgen
from fastgen.functional import modulated_conv2d, setup_filter
from harness import compare

BATCH, CH = 16, 256
CASES = {"same": (32, 1), "up": (16, 2)}


def _torch_backend(fn):
    def run():
        with fastgen.use_backend("torch"):
            return fn()
    return run


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("fused_modconv", [False, True], ids=["modconv", "fused_modconv"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_modulated_conv2d(benchmark, case, fused_modconv, mode):
    size, up = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CH, size, size, generator=g).requires_grad_(mode != "fwd")
    weight = torch.randn(CH, CH, 3, 3, generator=g).requires_grad_(mode != "fwd")
    styles = (1.0 + 0.2 * torch.randn(BATCH, CH, generator=g)).requires_grad_(mode != "fwd")
    f = setup_filter([1, 3, 3, 1])
    gout = torch.randn(BATCH, CH, size * up, size * up, generator=g)

    def fn():
        out = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f,
                               fused_modconv=fused_modconv)
        if mode == "fwd":
            return out
        return (out.detach(),) + tuple(torch.autograd.grad(out, (x, weight, styles), gout))

    info = compare(benchmark, fn, {"eager": _torch_backend(fn)}, device=torch.device("cpu"), rtol=1e-4, atol=1e-3,
                   group=f"modulated_conv2d {case} fused_modconv={fused_modconv} {mode}, batch {BATCH}, {CH} ch")
    info.update(case=case, fused_modconv=fused_modconv, mode=mode)
