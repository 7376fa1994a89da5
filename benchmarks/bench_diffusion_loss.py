"""diffusion_loss / q_sample: the fused training-side ops against the same math written in plain
PyTorch (eager, and torch.compile of it), on the same inputs.

* ``loss fwd+bwd``: the loss and d model_output (model_output requires grad), as a training step
  computes them; the baseline is what a user writes (x_t is not part of it):
  ``target = ...; loss = (w * ((m - target) ** 2).mean(dim=(1, 2, 3))).mean(); grad``.
  Per-sample alpha_bar (float64 host tensor, one timestep per sample) as in training.
* ``q_sample``: x_t and the v-prediction target in one pass vs the two eager expressions.

Sizes: (16,4,64,64) (a latent-diffusion batch) and (64,3,32,32) (CIFAR-sized pixels), fp32; one
bf16 case where the baseline upcasts like diffusers' ``F.mse_loss(pred.float(), target.float())``.
"""
import pytest
import torch

from fastgen import backend
from fastgen.ops.diffusion_loss import diffusion_loss
from fastgen.ops.q_sample import q_sample
from harness import compare

SHAPES = {"latent": (16, 4, 64, 64), "cifar": (64, 3, 32, 32)}
GAMMA = 5.0

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _inputs(shape, dtype, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, x0, noise = (torch.randn(shape, generator=g).to(dev, dtype) for _ in range(3))
    ab = torch.linspace(0.02, 0.98, shape[0], dtype=torch.float64)  # one timestep per sample
    if dev.type == "cuda":
        ab = ab.to(dev)
    return m, x0, noise, ab


def eager_loss(m, x0, noise, ab, prediction_type, weighting, upcast=False):
    """The loss as a user writes it (diffusers' train_text_to_image with min-SNR weighting)."""
    if upcast:
        m, x0, noise = m.float(), x0.float(), noise.float()
    a = ab.to(m.device, torch.float32).view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        target = noise
    else:
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    if weighting == "min_snr":
        snr = ab / (1 - ab)
        w = torch.stack([snr, GAMMA * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        w = (w / snr if prediction_type == "epsilon" else w / (snr + 1)).to(m.device, torch.float32)
        return (w * ((m - target) ** 2).mean(dim=(1, 2, 3))).mean()
    return ((m - target) ** 2).mean()


def _with_grad(loss_fn, m):
    def run():
        loss = loss_fn()
        (g,) = torch.autograd.grad(loss, m)
        return loss.detach(), g
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SHAPES))
@pytest.mark.parametrize("pt,wt", [("epsilon", "uniform"), ("v_prediction", "min_snr")])
def test_loss_fwd_bwd_fp32(benchmark, device, size, pt, wt):
    dev = torch.device(device)
    shape = SHAPES[size]
    m, x0, noise, ab = _inputs(shape, torch.float32, dev)
    m.requires_grad_()
    fast = _with_grad(lambda: diffusion_loss(m, x0, noise, ab, prediction_type=pt, weighting=wt), m)
    baselines = {"eager": _with_grad(lambda: eager_loss(m, x0, noise, ab, pt, wt), m)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        compiled = torch.compile(lambda m, x0, noise, ab: eager_loss(m, x0, noise, ab, pt, wt))
        baselines["compile"] = _with_grad(lambda: compiled(m, x0, noise, ab), m)
    n_tensors = (2 if pt == "epsilon" else 3) * 2 + 1  # fwd reads, bwd reads, d model_output
    info = compare(benchmark, fast, baselines, device=dev, nbytes=n_tensors * m.numel() * m.element_size(),
                   rtol=1e-5, atol=1e-7, group=f"diffusion_loss fwd+bwd {pt}/{wt} fp32 {size} {tuple(shape)}")
    info.update(impl=backend.resolve("diffusion_loss", dev), shape=list(shape), prediction_type=pt, weighting=wt)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_fwd_bwd_bf16(benchmark, device):
    dev = torch.device(device)
    shape = SHAPES["latent"]
    m, x0, noise, ab = _inputs(shape, torch.bfloat16, dev, seed=1)
    m.requires_grad_()
    pt, wt = "v_prediction", "min_snr"
    fast = _with_grad(lambda: diffusion_loss(m, x0, noise, ab, prediction_type=pt, weighting=wt), m)
    eager = _with_grad(lambda: eager_loss(m, x0, noise, ab, pt, wt, upcast=True), m)
    info = compare(benchmark, fast, {"eager": eager}, device=dev, nbytes=7 * m.numel() * m.element_size(),
                   rtol=1.6e-2, atol=1e-6, group=f"diffusion_loss fwd+bwd {pt}/{wt} bf16 {tuple(shape)}")
    info.update(impl=backend.resolve("diffusion_loss", dev), shape=list(shape), prediction_type=pt, weighting=wt)


def eager_q_sample_v(x0, noise, ab):
    a = ab.to(x0.device, torch.float32).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    return x_t, v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(SHAPES))
def test_q_sample_v_target_fp32(benchmark, device, size):
    dev = torch.device(device)
    shape = SHAPES[size]
    _, x0, noise, ab = _inputs(shape, torch.float32, dev, seed=2)
    fast = lambda: tuple(q_sample(x0, noise, ab, prediction_type="v_prediction"))  # noqa: E731
    baselines = {"eager": lambda: eager_q_sample_v(x0, noise, ab)}
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        baselines["compile"] = torch.compile(lambda: eager_q_sample_v(x0, noise, ab))
    info = compare(benchmark, fast, baselines, device=dev, nbytes=4 * x0.numel() * x0.element_size(),
                   rtol=1e-6, atol=2e-6, group=f"q_sample + v target fp32 {size} {tuple(shape)}")
    info.update(impl=backend.resolve("q_sample", dev), shape=list(shape))
