"""Drop-in: ``fastgen.optimize`` on a diffusers ``UNet2DModel`` (google/ddpm-cifar10-32's
architecture: sample_size 32, block_out_channels (128, 256, 256, 256), 2 layers per block,
attention at 16 px; random weights, nothing downloaded) against the same diffusers model
unchanged, and ``torch.compile(backend="fastgen")`` against ``torch.compile()`` (inductor).

* ``forward``: one UNet forward at batch 16 (eval, no grad).
* ``ddim_50``: 50-step DDIM sampling with diffusers' ``DDIMScheduler`` (fastgen.optimize swaps the
  UNet's blocks and the scheduler's step), batch 1 (50 forwards per call).
* ``compile_forward``: the batch-16 forward compiled with backend="fastgen" vs inductor; compile
  times in extra_info.

With ``--benchmark-disable`` (equivalence only) the UNet is a small one (sample 16, channels
(32, 64), batch 2, 3 DDIM steps, and only the fastgen-compiled model is compiled), so the
equivalence run takes seconds, not the minutes that inductor needs for the CIFAR network.
"""
import time

import pytest
import torch

import fastgen
from harness import compare

diffusers = pytest.importorskip("diffusers")


def _unet(big: bool):
    torch.manual_seed(0)
    if big:
        m = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3,
                                  block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    else:
        m = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                  layers_per_block=1, norm_num_groups=8,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return m.eval()


def _setup(benchmark, batch):
    big = not getattr(benchmark, "disabled", False)
    m = _unet(big)
    size = m.config.sample_size
    x = torch.randn(batch if big else 2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return big, m, x


def test_optimize_forward(benchmark):
    big, m, x = _setup(benchmark, 16)
    opt, rep = fastgen.optimize(m, report=True)
    t = torch.tensor(500)

    def run(model):
        def f():
            with torch.no_grad():
                return model(x, t).sample
        return f

    info = compare(benchmark, run(opt), {"eager": run(m)}, device=torch.device("cpu"), rtol=1e-4, atol=1e-4,
                   heavy=True, group=f"diffusers UNet2DModel forward batch {x.shape[0]}: fastgen.optimize vs diffusers")
    info.update(case="forward", batch=x.shape[0], big=big, replaced=len(rep.replaced))


def test_optimize_ddim_50(benchmark):
    big, m, x = _setup(benchmark, 1)
    steps = 50 if big else 3
    sched = diffusers.DDIMScheduler(clip_sample=False)
    opt = fastgen.optimize(m)
    opt_sched = fastgen.optimize(diffusers.DDIMScheduler(clip_sample=False))

    def run(model, s):
        def f():
            s.set_timesteps(steps)
            sample = x.clone()
            with torch.no_grad():
                for t in s.timesteps:
                    sample = s.step(model(sample, t).sample, t, sample).prev_sample
            return sample
        return f

    info = compare(benchmark, run(opt, opt_sched), {"eager": run(m, sched)}, device=torch.device("cpu"), rtol=1e-4,
                   atol=1e-4, heavy=True, group=f"diffusers UNet2DModel {steps}-step DDIM batch {x.shape[0]}")
    assert opt_sched.__dict__["_fastgen_opt"]["active"]  # the fused sampler update ran
    info.update(case="ddim", steps=steps, batch=x.shape[0], big=big)


def test_compile_forward(benchmark):
    big, m, x = _setup(benchmark, 16)
    t = torch.tensor(500)
    torch._dynamo.reset()

    def compiled(backend):
        c = torch.compile(m, backend=backend)
        t0 = time.perf_counter()
        with torch.no_grad():
            c(x, t)
        return c, time.perf_counter() - t0

    fg, fg_s = compiled("fastgen")

    def run(model):
        def f():
            with torch.no_grad():
                return model(x, t).sample
        return f

    baselines = {"eager": run(m)}
    ind_s = None
    if big:  # inductor's compile of the CIFAR network takes minutes on 2 cores: timed runs only
        ind, ind_s = compiled("inductor")
        baselines["compile"] = run(ind)
    info = compare(benchmark, run(fg), baselines, device=torch.device("cpu"), rtol=1e-4, atol=1e-4, heavy=True,
                   group=f"diffusers UNet2DModel forward batch {x.shape[0]}: compile(backend='fastgen') vs compile()")
    from fastgen.compile_backend import LAST_STATS

    info.update(case="compile_forward", batch=x.shape[0], big=big, fastgen_compile_s=round(fg_s, 1),
                inductor_compile_s=None if ind_s is None else round(ind_s, 1), rewrites=dict(LAST_STATS))


class _UserAdaIN(torch.nn.Module):
    """A StyleGAN-v1 style block as users write it in plain PyTorch: conv, lrelu, then AdaIN from a
    style vector (InstanceNorm2d child + per-(sample, channel) scale and bias)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.act = torch.nn.LeakyReLU(0.2)
        self.norm = torch.nn.InstanceNorm2d(channels)
        self.style = torch.nn.Linear(w_dim, 2 * channels)

    def forward(self, x, w):
        s, b = self.style(w).chunk(2, dim=1)
        return (1 + s[:, :, None, None]) * self.norm(self.act(self.conv(x))) + b[:, :, None, None]


@pytest.mark.parametrize("shape", [(16, 512, 16, 16), (16, 64, 128, 128)], ids=["16x512x16x16", "16x64x128x128"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_optimize_adain_block(benchmark, shape, mode):
    """fastgen.optimize on a user's AdaIN block (the norm(x) * a + b pattern -> fused adain, conv+lrelu
    -> nothing: they are not in a Sequential) vs the same block unoptimized; the adain op's own shapes."""
    if getattr(benchmark, "disabled", False):
        shape = (2, 8, 8, 8)
    n, c, h, w_ = shape
    torch.manual_seed(0)
    m = _UserAdaIN(c, 64)
    opt = fastgen.optimize(m, inplace=False)
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(n, c, h, w_, generator=g), torch.randn(n, 64, generator=g)

    def run(model):
        def f():
            if mode == "fwd":
                with torch.no_grad():
                    return model(x, w)
            xi = x.detach().requires_grad_(True)
            y = model(xi, w)
            gx, = torch.autograd.grad(y.square().sum(), xi)
            return y.detach(), gx
        return f

    info = compare(benchmark, run(opt), {"eager": run(m)}, device=torch.device("cpu"), rtol=1e-4, atol=1e-4,
                   group=f"user AdaIN block {mode} {shape}: fastgen.optimize vs eager")
    info.update(case="adain_block", mode=mode, shape=list(shape))
