"""End to end: the CIFAR-size U-Net (``UNet.from_preset("cifar10")``, DDPM's 35.7M-parameter
network) at batch 16, on fastgen's fused kernels (the default backend) against the same model on
plain PyTorch ops (``fastgen.use_backend("torch")``: reference GroupNorm + modulation + SiLU,
reference sampler update and loss). Convolutions and attention are torch's in both.

* ``sample_step``: one DDIM sampling step (model forward + fused update), NCHW and channels_last
  (both contenders in the same layout); 50 DDIM steps cost 50x this.
* ``train_step``: GaussianDiffusion loss forward + backward (the optimizer step is the same code
  in both and left out).

Each call takes seconds on a CPU, so these run with ``heavy=True`` (3 rounds of one call).
"""
import pytest
import torch

import fastgen
from fastgen.diffusion import DDIMSampler, GaussianDiffusion, make_schedule
from fastgen.models import UNet
from harness import compare

BATCH = 16


def _model(memory_format=torch.contiguous_format, train=False):
    torch.manual_seed(0)
    m = UNet.from_preset("cifar10", dropout=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero weights everywhere (the zero-initialised output convs would hide the network)
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    m.train(train)
    return m.to(memory_format=memory_format)


def _torch_backend(fn):
    def run():
        with fastgen.use_backend("torch"):
            return fn()
    return run


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_unet_sample_step(benchmark, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = _model(fmt)
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(memory_format=fmt)
    smp = DDIMSampler()
    smp.set_timesteps(50)
    k = 10
    t = smp.timesteps[k]

    def step():
        with torch.no_grad():
            smp._step_index = k
            return smp.step(m(x, t), t, x).prev_sample

    info = compare(benchmark, step, {"eager": _torch_backend(step)}, device=torch.device("cpu"), rtol=1e-4,
                   atol=1e-4, heavy=True, group=f"unet cifar10 ddim step batch {BATCH} {layout}")
    info.update(case="sample_step", layout=layout, batch=BATCH)
    if "fastgen_ms" in info:
        info["fastgen_50_steps_s"] = round(50 * info["fastgen_ms"] / 1e3, 1)
        info["eager_50_steps_s"] = round(50 * info["eager_ms"] / 1e3, 1)


def test_unet_train_step(benchmark):
    m = _model(train=True)
    diff = GaussianDiffusion(m, make_schedule("linear"))
    x0 = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    probe = [m.out_conv.weight, m.input_blocks[1][0].in_norm.weight, m.middle[1].qkv.weight]

    def step():
        m.zero_grad(set_to_none=True)
        loss = diff.loss(x0, generator=torch.Generator().manual_seed(3))
        loss.backward()
        return (loss.detach(),) + tuple(p.grad.clone() for p in probe)

    info = compare(benchmark, step, {"eager": _torch_backend(step)}, device=torch.device("cpu"), rtol=1e-3,
                   atol=1e-4, heavy=True, group=f"unet cifar10 train step (loss fwd+bwd) batch {BATCH}")
    info.update(case="train_step", batch=BATCH)
