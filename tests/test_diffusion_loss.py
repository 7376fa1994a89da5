"""fastgen.ops.diffusion_loss: the reference against the losses as the papers write them (min-SNR,
EDM), every implementation against the reference (forward, backward, double backward), layouts,
dtypes, determinism, empty batches, bad input, opcheck and torch.compile."""
import math

import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.ops.diffusion_loss import diffusion_loss, diffusion_loss_coefficients, diffusion_loss_reference
from fastgen.ops.q_sample import q_sample

from helpers import assert_close

HAVE_CPP = backend.impl_available("cpp", "cpu")[0]
HAVE_TRITON = backend.impl_available("triton", "cpu")[0]
FAST_IMPLS = [
    pytest.param(name, marks=pytest.mark.skipif(not backend.impl_available(name, "cpu")[0],
                                                 reason=backend.impl_available(name, "cpu")[1] or "n/a"))
    for name in ("cpp", "triton")
]
PTS = ["epsilon", "sample", "v_prediction", "edm"]
WTS = ["uniform", "min_snr", "edm", "tensor"]
REDS = ["mean", "sum", "none"]
# loss: fp32 math on identical inputs, only the summation order differs
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def make(shape, dtype=torch.float32, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    if layout == "contiguous":
        return base
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return base.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        big = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        big[..., ::2] = base
        return big[..., ::2]
    if layout == "expanded":
        return base[:1].expand(shape)
    raise ValueError(layout)


def level(pt, n, per_sample=True):
    """Noise-level keyword arguments: per-sample alpha_bar (sigma for EDM) spanning the range."""
    if pt == "edm":
        return dict(sigma=torch.logspace(-2, 1.9, n, dtype=torch.float64) if per_sample else 1.3)
    return dict(alpha_bar=torch.linspace(0.02, 0.98, n, dtype=torch.float64) if per_sample else 0.35)


def weighting_arg(wt, n):
    return torch.linspace(0.5, 2.0, n) if wt == "tensor" else wt


def inputs(shape, dtype=torch.float32, layout="contiguous"):
    return tuple(make(shape, dtype, layout if i != 1 or layout != "expanded" else "contiguous", seed=i)
                 for i in range(3))


# ------------------------------------------------------------------------ the reference vs the papers
def test_min_snr_weights_match_the_paper_and_diffusers():
    """Hang et al. 2023 / diffusers' train_text_to_image: snr = ab / (1 - ab), weights
    min(snr, gamma) / snr (epsilon), / (snr + 1) (v), min(snr, gamma) (x0)."""
    ab = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    snr = ab / (1 - ab)
    gamma = 5.0
    clipped = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    for pt, want in (("epsilon", clipped / snr), ("v_prediction", clipped / (snr + 1)), ("sample", clipped)):
        _, _, w = diffusion_loss_coefficients(pt, "min_snr", alpha_bar=ab, min_snr_gamma=gamma)
        torch.testing.assert_close(w, want, rtol=1e-12, atol=1e-12)
    # the stable forms at the ends of [0, 1] are the limits
    ends = f64([0.0, 1.0])
    assert diffusion_loss_coefficients("epsilon", "min_snr", alpha_bar=ends)[2].tolist() == [1.0, 0.0]
    assert diffusion_loss_coefficients("v_prediction", "min_snr", alpha_bar=ends)[2].tolist() == [0.0, 0.0]
    assert diffusion_loss_coefficients("sample", "min_snr", alpha_bar=ends)[2].tolist() == [0.0, 5.0]


def _denoised(pt, F, x0, noise, ab=None, sigma=None, sd=0.5):
    """The denoised estimate D implied by the network output F (how samplers use it), float64."""
    if pt == "edm":
        s = sigma.reshape(-1, 1, 1, 1)
        x = x0 + s * noise
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * F
    a = ab.reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if pt == "epsilon":
        return (x_t - (1 - a).sqrt() * F) / a.sqrt()
    if pt == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * F
    return F


@pytest.mark.parametrize("pt", PTS)
@pytest.mark.parametrize("wt", ["edm", "min_snr"])
def test_weightings_are_weights_on_the_x0_error(pt, wt):
    """Every weighting is W(sigma) ||D - x0||^2 with D the denoised estimate of the prediction:
    EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, the EDM loss itself for
    prediction_type='edm') and min-SNR's min(SNR, gamma); SNR = 1 / sigma^2 = ab / (1 - ab)."""
    n, sd, gamma = 4, 0.5, 5.0
    x0, noise, F = (make((n, 3, 5, 5), seed=s).double() for s in range(3))
    kw = level(pt, n)
    sigma = kw["sigma"] if pt == "edm" else ((1 - kw["alpha_bar"]) / kw["alpha_bar"]).sqrt()
    D = _denoised(pt, F, x0, noise, ab=kw.get("alpha_bar"), sigma=kw.get("sigma"), sd=sd)
    W = (sigma**2 + sd**2) / (sigma * sd) ** 2 if wt == "edm" else torch.clamp(1 / sigma**2, max=gamma)
    want = W * ((D - x0) ** 2).mean(dim=(1, 2, 3))
    got = diffusion_loss_reference(F, x0, noise, prediction_type=pt, weighting=wt, min_snr_gamma=gamma,
                                   sigma_data=sd, reduction="none", **kw)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_edm_loss_is_unweighted_mse_of_F():
    """lambda c_out^2 = 1: for prediction_type='edm' the EDM weighting and uniform agree, and equal
    EDM's loss lambda ||c_skip x + c_out F - x0||^2 (reference in float64, fused ops in fp32)."""
    n, sd = 5, 0.5
    x0, noise, F = (make((n, 3, 6, 5), seed=s).double() for s in range(3))
    sigma = torch.logspace(-2, 2, n, dtype=torch.float64)
    D = _denoised("edm", F, x0, noise, sigma=sigma, sd=sd)
    lam = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1, 1)
    edm = (lam * (D - x0) ** 2).mean(dim=(1, 2, 3)).mean()
    for wt in ("edm", "uniform"):
        got = diffusion_loss_reference(F, x0, noise, prediction_type="edm", sigma=sigma, weighting=wt)
        torch.testing.assert_close(got, edm, rtol=1e-10, atol=0)
    if HAVE_CPP:
        got = diffusion_loss(F.float(), x0.float(), noise.float(), prediction_type="edm", sigma=sigma, impl="cpp")
        torch.testing.assert_close(got.double(), edm, rtol=1e-5, atol=0)


def test_reference_loss_is_what_users_write():
    n = 4
    m, x0, noise = (make((n, 3, 5, 5), seed=s) for s in range(3))
    ab = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    a = ab.float().reshape(-1, 1, 1, 1)
    target = a.sqrt() * noise - (1 - a).sqrt() * x0
    snr = ab / (1 - ab)
    w = (torch.clamp(snr, max=5.0) / (snr + 1)).float()
    want = (w * ((m - target) ** 2).mean(dim=(1, 2, 3))).mean()
    got = diffusion_loss_reference(m, x0, noise, ab, prediction_type="v_prediction", weighting="min_snr")
    assert_close(got, want, rtol=1e-6, atol=1e-7, what="loss")


# ------------------------------------------------------------------------ fast impls == reference
def _loss_and_grad(impl, m, x0, noise, **kw):
    mm = m.detach().clone().requires_grad_()
    loss = diffusion_loss(mm, x0, noise, impl=impl, **kw)
    gout = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape) if loss.dim() else torch.tensor(0.7)
    (g,) = torch.autograd.grad(loss, mm, gout)
    return loss.detach(), g


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("pt", PTS)
@pytest.mark.parametrize("wt", WTS)
def test_every_prediction_weighting_reduction(impl, pt, wt):
    n = 3
    m, x0, noise = inputs((n, 3, 7, 5))
    for red in REDS if impl == "cpp" or wt == "min_snr" else ["mean"]:
        kw = dict(prediction_type=pt, weighting=weighting_arg(wt, n), reduction=red, **level(pt, n))
        loss, g = _loss_and_grad(impl, m, x0, noise, **kw)
        rloss, rg = _loss_and_grad("torch", m, x0, noise, **kw)
        assert loss.dtype == torch.float32 and loss.shape == rloss.shape == ((n,) if red == "none" else ())
        assert_close(loss, rloss, what=f"{impl} loss {red}", **LOSS_TOL)
        assert_close(g, rg, what=f"{impl} dm {red}", rtol=1e-5, atol=1e-7)


CASES = [
    # shape, layout, per-sample level
    ((3, 3, 7, 5), "channels_last", True),
    ((2, 3, 5, 7), "transposed", True),
    ((2, 3, 5, 7), "strided", False),
    ((3, 2, 4, 5), "expanded", True),
    ((1, 4, 8, 8), "contiguous", True),  # batch 1
    ((2, 40000), "contiguous", True),  # several partial-sum chunks per sample (C++), blocks (Triton)
    ((7,), "contiguous", True),  # one element per sample
    ((5, 1, 1, 1), "contiguous", False),
]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,layout,per_sample", CASES)
def test_layouts_dtypes_shapes(impl, dtype, shape, layout, per_sample):
    if impl == "triton" and dtype != torch.float32 and shape[0] * math.prod(shape[1:]) > 1000:
        pytest.skip("interpreter time")
    m, x0, noise = inputs(shape, dtype, layout)
    n = shape[0]
    for pt, wt in (("v_prediction", "min_snr"), ("edm", "uniform")):
        kw = dict(prediction_type=pt, weighting=wt, **level(pt, n, per_sample))
        loss, g = _loss_and_grad(impl, m, x0, noise, **kw)
        rloss, rg = _loss_and_grad("torch", m, x0, noise, **kw)
        assert g.dtype == dtype and g.shape == m.shape
        assert_close(loss, rloss, what=f"{impl} loss", **LOSS_TOL)
        assert_close(g, rg, dtype, what=f"{impl} dm")
        if layout == "channels_last":
            assert g.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (3, 0, 2)])
def test_empty_batch_and_empty_samples(impl, shape):
    """N = 0: the sum is 0 and the mean is defined as 0 (not NaN); 'none' is [0]. Samples without
    elements have loss 0. Gradients are empty / zero, never NaN."""
    m, x0, noise = inputs(shape)
    n = shape[0]
    for red, want_shape in (("sum", ()), ("mean", ()), ("none", (n,))):
        mm = m.clone().requires_grad_()
        loss = diffusion_loss(mm, x0, noise, torch.full((n,), 0.5, dtype=torch.float64), prediction_type="v_prediction",
                              weighting="min_snr", reduction=red, impl=impl)
        assert loss.shape == want_shape and not loss.isnan().any() and (loss == 0).all()
        (g,) = torch.autograd.grad(loss.sum(), mm)
        assert g.shape == m.shape and not g.isnan().any()


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_scalar_and_per_sample_levels_agree(impl):
    m, x0, noise = inputs((3, 2, 4, 4))
    for pt, key, v in (("v_prediction", "alpha_bar", 0.3), ("edm", "sigma", 2.5)):
        a = diffusion_loss(m, x0, noise, prediction_type=pt, weighting="min_snr", impl=impl, **{key: v})
        b = diffusion_loss(m, x0, noise, prediction_type=pt, weighting="min_snr", impl=impl, **{key: f64(v)})
        c = diffusion_loss(m, x0, noise, prediction_type=pt, weighting="min_snr", impl=impl,
                           **{key: torch.full((3,), v)})
        assert_close(a, b, what="0-d", rtol=0, atol=0)
        assert_close(a, c, what="[N]", rtol=1e-6, atol=0)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
def test_cpp_loss_is_deterministic_and_independent_of_thread_count():
    m, x0, noise = inputs((6, 3, 97, 101))  # 29391 elements per sample: two partial-sum chunks each
    ab = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    kw = dict(prediction_type="v_prediction", weighting="min_snr", reduction="none")
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3, 1):
            torch.set_num_threads(t)
            results.append(diffusion_loss(m, x0, noise, ab, impl="cpp", **kw))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert torch.equal(r, results[0])
    # and accurate: fp64 accumulation against a float64 evaluation
    want = diffusion_loss_reference(m.double(), x0.double(), noise.double(), ab, **kw)
    assert_close(results[0].double(), want, rtol=2e-6, atol=0, what="vs float64")


# ------------------------------------------------------------------------ autograd
def _all_grads(impl, m, x0, noise, reduction="mean", **kw):
    ts = [t.detach().clone().requires_grad_() for t in (m, x0, noise)]
    loss = diffusion_loss(*ts, reduction=reduction, impl=impl, **kw)
    grads = torch.autograd.grad(loss.sum() * 1.3, ts, allow_unused=True)  # the reference skips unused inputs
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, ts)]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("pt", PTS)
def test_grads_wrt_x0_and_noise(impl, pt):
    m, x0, noise = inputs((3, 2, 5, 4))
    kw = dict(prediction_type=pt, weighting="min_snr", **level(pt, 3))
    for g, w, name in zip(_all_grads(impl, m, x0, noise, **kw), _all_grads("torch", m, x0, noise, **kw),
                          ("model_output", "x0", "noise")):
        assert_close(g, w, what=f"d{name}", rtol=1e-5, atol=1e-7)


def _double_backward(impl, m, x0, noise, reduction, **kw):
    """d/d(inputs, grad_output) of <grad of the loss, u>: second order through the backward op."""
    ts = [t.detach().clone().requires_grad_() for t in (m, x0, noise)]
    loss = diffusion_loss(*ts, reduction=reduction, impl=impl, **kw)
    gout = (torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape) if loss.dim() else torch.tensor(0.8))
    gout.requires_grad_()
    grads = torch.autograd.grad(loss, ts, gout, create_graph=True, allow_unused=True)
    us = [make(m.shape, seed=10 + i) for i in range(3)]
    total = sum((g * u).sum() for g, u in zip(grads, us) if g is not None)
    seconds = torch.autograd.grad(total, ts + [gout], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(seconds, ts + [gout])]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("pt,reduction", [("v_prediction", "mean"), ("edm", "none"), ("epsilon", "sum")])
def test_double_backward_matches_reference(impl, pt, reduction):
    m, x0, noise = inputs((3, 2, 4, 5))
    kw = dict(prediction_type=pt, weighting="min_snr", **level(pt, 3))
    got = _double_backward(impl, m, x0, noise, reduction, **kw)
    want = _double_backward("torch", m, x0, noise, reduction, **kw)
    for g, w, name in zip(got, want, ("model_output", "x0", "noise", "grad_output")):
        assert_close(g, w, what=f"d2/d{name}", rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Input #")
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_and_gradgradcheck_fast_fp32(impl, reduction):
    """The kernels run in fp32 (no float64): the loss is quadratic, so fp32 central differences
    with a large step are exact up to rounding; checked at fp32 tolerance."""
    m, x0, noise = (t.requires_grad_() for t in inputs((2, 3, 3)))
    ab = f64([0.3, 0.7])

    def fn(m, x0, noise):
        return diffusion_loss(m, x0, noise, ab, prediction_type="v_prediction", weighting="min_snr",
                              reduction=reduction, impl=impl)

    kw = dict(eps=1e-2, atol=2e-3, rtol=2e-3, nondet_tol=0.0)
    assert torch.autograd.gradcheck(fn, (m, x0, noise), **kw)
    assert torch.autograd.gradgradcheck(fn, (m, x0, noise), **kw)


@pytest.mark.parametrize("pt", PTS)
def test_gradcheck_reference_float64(pt):
    """The oracle itself, w.r.t. everything (noise levels and explicit weights included)."""
    n = 2
    m, x0, noise = (t.double().requires_grad_() for t in inputs((n, 2, 3)))
    lvl = (f64([0.4, 3.0]) if pt == "edm" else f64([0.3, 0.8])).requires_grad_()
    w = f64([0.5, 2.0]).requires_grad_()
    key = "sigma" if pt == "edm" else "alpha_bar"

    def fn(m, x0, noise, lvl, w):
        a = diffusion_loss_reference(m, x0, noise, prediction_type=pt, weighting="min_snr", reduction="none",
                                     **{key: lvl})
        b = diffusion_loss_reference(m, x0, noise, prediction_type=pt, weighting=w, **{key: lvl})
        return a, b

    assert torch.autograd.gradcheck(fn, (m, x0, noise, lvl, w))
    assert torch.autograd.gradgradcheck(fn, (m, x0, noise, lvl, w))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_learnable_weights_get_gradients(impl):
    """A weight tensor that requires grad (learned weighting): fused per-sample losses, weighted
    with autograd-visible ops."""
    m, x0, noise = inputs((3, 2, 4, 4))

    def run(impl):
        mm = m.clone().requires_grad_()
        w = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
        loss = diffusion_loss(mm, x0, noise, f64([0.2, 0.5, 0.8]), prediction_type="v_prediction", weighting=w,
                              impl=impl)
        return (loss,) + torch.autograd.grad(loss, (mm, w))

    for g, r, name in zip(run(impl), run("torch"), ("loss", "dm", "dw")):
        assert_close(g, r, what=name, rtol=1e-5, atol=1e-7)


def test_level_gradients_use_reference():
    m, x0, noise = inputs((2, 3))
    ab = f64([0.3, 0.7]).requires_grad_()
    loss = diffusion_loss(m, x0, noise, ab, prediction_type="v_prediction", weighting="min_snr")  # auto -> torch
    (g,) = torch.autograd.grad(loss, ab)
    assert torch.isfinite(g).all()
    if HAVE_CPP:
        with pytest.raises(fastgen.BackendUnavailableError, match="only computed by impl='torch'"):
            diffusion_loss(m, x0, noise, ab, impl="cpp")


# ------------------------------------------------------------------------ bad input
def _base():
    return dict(model_output=torch.randn(2, 3, 4), x0=torch.randn(2, 3, 4), noise=torch.randn(2, 3, 4),
                alpha_bar=0.5)


BAD = [
    (dict(x0=torch.randn(2, 3, 5)), ValueError, "x0 has shape"),
    (dict(noise=torch.randn(2, 3, 4, dtype=torch.float16)), TypeError, "noise has dtype"),
    (dict(noise=torch.randn(2, 3, 4, device="meta")), ValueError, "noise is on meta"),
    (dict(model_output=torch.randn(2, 3, 4).double()), TypeError, "model_output has dtype torch.float64"),
    (dict(model_output=torch.tensor(1.0), x0=torch.tensor(1.0), noise=torch.tensor(1.0)), ValueError,
     "model_output must have a batch dimension"),
    (dict(model_output=None), TypeError, "model_output must be a torch.Tensor"),
    (dict(alpha_bar=None), ValueError, "alpha_bar is required with prediction_type='epsilon'"),
    (dict(alpha_bar=1.5), ValueError, r"alpha_bar must be in \[0, 1\]"),
    (dict(alpha_bar=f64([0.5, -0.1])), ValueError, r"alpha_bar must be in \[0, 1\]"),
    (dict(alpha_bar=torch.full((3,), 0.5)), ValueError, r"alpha_bar must be a scalar or have shape \[N\]"),
    (dict(alpha_bar=torch.tensor([1, 1])), TypeError, "alpha_bar must be a floating-point tensor"),
    (dict(prediction_type="edm"), ValueError, "sigma is required with prediction_type='edm'"),
    (dict(prediction_type="edm", sigma=1.0), ValueError, "alpha_bar is not used with prediction_type='edm'"),
    (dict(sigma=1.0), ValueError, "sigma is only used with prediction_type='edm'"),
    (dict(prediction_type="edm", alpha_bar=None, sigma=0.0), ValueError, "sigma must be in"),
    (dict(prediction_type="edm", alpha_bar=None, sigma=f64([1.0, -2.0])), ValueError, "sigma must be in"),
    (dict(prediction_type="edm", alpha_bar=None, sigma=torch.ones(5)), ValueError,
     r"sigma must be a scalar or have shape \[N\]"),
    (dict(prediction_type="x0"), ValueError, "prediction_type must be one of"),
    (dict(weighting="snr"), ValueError, "weighting must be one of"),
    (dict(weighting=torch.ones(3)), ValueError, r"weighting must be a scalar or have shape \[N\]"),
    (dict(weighting=torch.tensor([1.0, float("nan")])), ValueError, "weight must be finite"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(min_snr_gamma=0.0), ValueError, "min_snr_gamma must be in"),
    (dict(min_snr_gamma=-1.0, weighting="min_snr"), ValueError, "min_snr_gamma must be in"),
    (dict(sigma_data=0.0, prediction_type="edm", alpha_bar=None, sigma=1.0), ValueError, "sigma_data must be in"),
    (dict(weighting="edm", alpha_bar=1.0, prediction_type="sample"), ValueError, "weighting='edm' is infinite"),
    (dict(impl="gpu"), ValueError, "impl must be one of"),
]


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_input_is_a_clear_error(impl, kwargs, exc, msg):
    args = _base()
    args.update(impl=impl)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        diffusion_loss(**args)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
def test_raw_op_checks_name_arguments():
    m = torch.randn(2, 3)
    ab = f64([0.3, 0.6])
    op, bwd = torch.ops.fastgen.diffusion_loss, torch.ops.fastgen.diffusion_loss_backward
    with pytest.raises(ValueError, match="noise has shape"):
        op(m, m, torch.randn(3, 2), ab, None, None, "epsilon", "uniform", 5.0, 0.5, "mean")
    with pytest.raises(TypeError, match="model_output has dtype Double"):
        op(m.double(), m.double(), m.double(), ab, None, None, "epsilon", "uniform", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        op(m, m, m, ab, None, None, "eps", "uniform", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match="weighting must be one of"):
        op(m, m, m, ab, None, None, "epsilon", "snr", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        op(m, m, m, ab, None, None, "epsilon", "uniform", 5.0, 0.5, "max")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        op(m, m, m, ab, None, None, "epsilon", "min_snr", 0.0, 0.5, "mean")
    with pytest.raises(ValueError, match="sigma is required"):
        op(m, m, m, None, None, None, "edm", "edm", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match=r"alpha_bar must be in \[0, 1\]"):
        op(m, m, m, f64([0.3, 2.0]), None, None, "epsilon", "uniform", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match="weight must be finite"):
        op(m, m, m, ab, None, torch.tensor([1.0, float("inf")]), "epsilon", "uniform", 5.0, 0.5, "mean")
    with pytest.raises(ValueError, match=r"grad must have shape \[N\]"):
        bwd(torch.ones(3), m, m, m, ab, None, None, "epsilon", "uniform", 5.0, 0.5, "none", True, False, False)
    with pytest.raises(ValueError, match=r"grad must be a scalar"):
        bwd(torch.ones(2), m, m, m, ab, None, None, "epsilon", "uniform", 5.0, 0.5, "sum", True, False, False)
    with pytest.raises(RuntimeError, match="gradients with respect to weight"):
        op(m.requires_grad_(), m, m, ab, None, torch.ones(2, requires_grad=True), "epsilon", "uniform", 5.0, 0.5,
           "mean")


# ------------------------------------------------------------------------ custom-op machinery
def _opcheck_samples():
    m, x0, noise = inputs((2, 3, 4, 4))
    cl = make((2, 3, 4, 4), layout="channels_last", seed=5)
    ab, sg = f64([0.3, 0.8]), f64([0.5, 4.0])
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        (rg(m), x0, noise, ab, None, None, "v_prediction", "min_snr", 5.0, 0.5, "mean"),
        (rg(cl), rg(x0), noise, None, sg, torch.tensor([1.0, 2.0]), "edm", "edm", 5.0, 0.5, "none"),
        (rg(m.bfloat16()), x0.bfloat16(), rg(noise.bfloat16()), f64(0.4), None, None, "epsilon", "uniform", 5.0, 0.5,
         "sum"),
        (m, x0, noise, ab.float(), None, None, "sample", "edm", 2.0, 0.7, "mean"),
    ]


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
@pytest.mark.parametrize("i", range(4))
def test_opcheck_cpp_ops(i):
    args = _opcheck_samples()[i]
    torch.library.opcheck(torch.ops.fastgen.diffusion_loss.default, args)
    g = torch.rand(2) + 0.5 if args[-1] == "none" else torch.tensor(1.7)
    m, x0, noise = args[:3]
    bw = (g.requires_grad_(), m, x0.detach(), noise.detach()) + args[3:] + (True, i % 2 == 1, i >= 2)
    torch.library.opcheck(torch.ops.fastgen.diffusion_loss_backward.default, bw)


@pytest.mark.skipif(not HAVE_TRITON, reason="no Triton interpreter")
@pytest.mark.parametrize("i", range(2))
def test_opcheck_triton_ops_eager_parts(i):
    """Fake-tensor tracing of a triton_op needs a GPU (tests/test_gpu.py); here schema + autograd."""
    from fastgen.ops.diffusion_loss import _triton_ops

    fwd, bwd = _triton_ops()
    args = _opcheck_samples()[i]
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(fwd, args, test_utils=utils)
    g = torch.rand(2) + 0.5 if args[-1] == "none" else torch.tensor(1.7)
    bw = (g, args[0], args[1].detach(), args[2]) + args[3:] + (True, True, False)
    torch.library.opcheck(bwd, bw, test_utils=utils)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
def test_torch_compile_fullgraph_training_step():
    """q_sample + a model + diffusion_loss + backward, compiled with fullgraph=True (no graph
    breaks); per-sample alpha_bar tensors are graph inputs (new timesteps do not recompile)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    weight = torch.randn(3, 3, 1, 1, requires_grad=True)

    def step(x0, noise, ab):
        x_t, target = q_sample(x0, noise, ab, prediction_type="v_prediction")
        pred = torch.nn.functional.conv2d(x_t, weight)
        return diffusion_loss(pred, x0, noise, ab, prediction_type="v_prediction", weighting="min_snr")

    x0, noise = make((4, 3, 8, 8)), make((4, 3, 8, 8), seed=1)
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=cnt, fullgraph=True)
    for ab in (torch.linspace(0.1, 0.9, 4, dtype=torch.float64), torch.linspace(0.05, 0.5, 4, dtype=torch.float64)):
        loss = compiled(x0, noise, ab)
        (g,) = torch.autograd.grad(loss, weight)
        with backend.use_backend("torch"):
            rloss = step(x0, noise, ab)
            (rg,) = torch.autograd.grad(rloss, weight)
        assert_close(loss, rloss, what="compiled loss", rtol=1e-5, atol=1e-6)
        assert_close(g, rg, what="compiled grad", rtol=1e-5, atol=1e-6)
    assert cnt.frame_count == 1


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
def test_torch_compile_inductor_forward():
    def fn(m, x0, noise, sigma):
        return diffusion_loss(m, x0, noise, prediction_type="edm", sigma=sigma, reduction="none")

    m, x0, noise = inputs((3, 2, 4, 4))
    sigma = f64([0.1, 1.0, 10.0])
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True)(m, x0, noise, sigma)
    assert_close(got, fn(m, x0, noise, sigma), what="inductor", rtol=0, atol=0)


# ------------------------------------------------------------------------ GPU (skipped without one)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pt", PTS)
def test_cuda_triton_matches_reference(dtype, pt):
    ok, why = backend.impl_available("triton", "cuda")
    if not ok:
        pytest.skip(why)
    from fastgen.ops.diffusion_loss import _triton_ops

    dev = torch.device("cuda")
    n = 5
    m, x0, noise = (t.to(dev) for t in inputs((n, 4, 33, 17), dtype))
    kw = {k: v.to(dev) for k, v in level(pt, n).items()}  # device per-sample noise levels
    kw.update(prediction_type=pt, weighting="min_snr")
    for red in REDS:
        loss, g = _loss_and_grad("triton", m, x0, noise, reduction=red, **kw)
        rloss, rg = _loss_and_grad("torch", m, x0, noise, reduction=red, **kw)
        assert_close(loss, rloss, what="cuda loss", **LOSS_TOL)
        assert_close(g, rg, dtype, what="cuda dm")
    key = "sigma" if pt == "edm" else "alpha_bar"
    args = (m.clone().requires_grad_(), x0, noise, kw.get("alpha_bar"), kw.get("sigma"), None, pt, "min_snr", 5.0,
            0.5, "mean")
    torch.library.opcheck(_triton_ops()[0], args)
    compiled = torch.compile(lambda m, x0, noise, lv: diffusion_loss(m, x0, noise, prediction_type=pt,
                                                                     **{key: lv}), fullgraph=True)
    assert_close(compiled(m, x0, noise, kw[key]), diffusion_loss_reference(m, x0, noise, prediction_type=pt,
                                                                           **{key: kw[key]}),
                 what="compiled", **LOSS_TOL)
