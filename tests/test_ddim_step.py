"""fastgen.functional.ddim_step: every implementation against the reference, the reference
against the textbook formula, autograd (incl. double backward), out=, bad input, opcheck and
torch.compile."""
import math

import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.functional import ddim_step
from fastgen.ops.ddim_step import ddim_coefficients, ddim_step_reference

from helpers import assert_close

FAST_IMPLS = [
    pytest.param(name, marks=pytest.mark.skipif(not backend.impl_available(name, "cpu")[0],
                                                 reason=backend.impl_available(name, "cpu")[1] or "n/a"))
    for name in ("cpp", "triton")
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def make(shape, dtype=torch.float32, layout="contiguous", seed=0):
    """A random tensor of `shape` in the requested memory layout (values don't depend on layout)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    if layout == "contiguous":
        return base
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # non-contiguous, dense: a permuted buffer
        return base.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # non-dense: every other element of a bigger buffer
        big = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        big[..., ::2] = base
        return big[..., ::2]
    if layout == "expanded":  # stride-0 batch dim (overlapping memory)
        return base[:1].expand(shape)
    raise ValueError(layout)


def textbook_ddim(x, e, a_t, a_p, eta, noise, clip):
    """The DDIM update exactly as written in the papers / diffusers, in float64."""
    x, e = x.double(), e.double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    a_t = torch.as_tensor(a_t, dtype=torch.float64).reshape(shape if torch.as_tensor(a_t).dim() else ())
    a_p = torch.as_tensor(a_p, dtype=torch.float64).reshape(shape if torch.as_tensor(a_p).dim() else ())
    x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
    sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    out = a_p.sqrt() * x0 + (1 - a_p - sigma**2).clamp_min(0).sqrt() * e
    if noise is not None:
        out = out + sigma * noise.double()
    return out, x0


# ------------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_reference_matches_textbook_formula(eta, clip):
    x, e, n = make((4, 3, 6, 6)), make((4, 3, 6, 6), seed=1), make((4, 3, 6, 6), seed=2)
    a_t, a_p = f64([0.05, 0.3, 0.6, 0.9]), f64([0.2, 0.5, 0.61, 0.999])
    xp, x0 = ddim_step_reference(x, e, a_t, a_p, eta, n, clip)
    ep, e0 = textbook_ddim(x, e, a_t, a_p, eta, n, clip)
    assert_close(xp, ep.float(), what="x_prev", rtol=2e-6, atol=2e-6)
    assert_close(x0, e0.float(), what="x0", rtol=2e-6, atol=2e-6)


def test_stable_direction_coefficient_beats_naive_fp32():
    """Few-step jumps (a_t << a_p): the cancellation-free direction coefficient stays accurate in
    fp32 (as the kernels evaluate in-kernel alphas), where the textbook sqrt(1 - a_p - sigma^2)
    evaluated in fp32 loses most of its digits."""
    at32, ap32, eta = torch.tensor(0.0047), torch.tensor(0.9991), 1.0
    exact = ddim_coefficients(at32.double(), ap32.double(), eta)[3].item()
    ours = ddim_coefficients(at32, ap32, eta, dtype=torch.float32)[3].item()
    sig2 = eta**2 * (1 - ap32) / (1 - at32) * (1 - at32 / ap32)
    naive = (1 - ap32 - sig2).clamp_min(0).sqrt().item()
    assert abs(ours - exact) / exact < 1e-6
    assert abs(naive - exact) / exact > 1e-4


# ------------------------------------------------------------------------ fast impls == reference
CASES = [
    # shape, layout, per-sample alphas, eta, clip
    ((2, 3, 5, 7), "contiguous", False, 0.0, None),
    ((2, 3, 5, 7), "channels_last", True, 0.5, None),
    ((2, 3, 5, 7), "transposed", True, 1.0, True),
    ((2, 3, 5, 7), "strided", False, 0.3, 0.8),
    ((3, 2, 4, 5), "expanded", True, 0.0, None),
    ((1, 4, 8, 8), "contiguous", True, 1.0, None),  # batch 1
    ((0, 4, 8, 8), "contiguous", False, 0.5, None),  # empty
    ((5, 1, 1, 1), "contiguous", True, 0.0, True),
    ((3, 1000), "contiguous", True, 0.7, None),  # rows longer than a vector / a Triton block
    ((7,), "contiguous", True, 1.0, None),
    ((), "contiguous", False, 0.5, None),  # 0-d x_t with scalar alphas
    ((2, 3, 33), "strided", True, 0.0, 2.0),
]


def _alphas(shape, per_sample):
    n = shape[0] if len(shape) else 1
    if per_sample and len(shape):
        a_t = torch.linspace(0.05, 0.8, n, dtype=torch.float64)
        return a_t, (a_t + 0.15).clamp(max=1.0)
    return 0.35, 0.55


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,per_sample,eta,clip", CASES)
def test_fast_impl_matches_reference(impl, dtype, shape, layout, per_sample, eta, clip):
    x = make(shape, dtype, layout, seed=1)
    e = make(shape, dtype, "contiguous" if layout == "expanded" else layout, seed=2)
    noise = make(shape, dtype, seed=3) if eta > 0 else None
    a_t, a_p = _alphas(shape, per_sample)
    got = ddim_step(x, e, a_t, a_p, eta, noise, clip, impl=impl)
    want = ddim_step(x, e, a_t, a_p, eta, noise, clip, impl="torch")
    for g, w, name in zip(got, want, ("x_prev", "x0_pred")):
        assert g.dtype == dtype and g.shape == x.shape
        assert_close(g, w, dtype, what=f"{impl} {name}")
    if layout == "channels_last":
        assert got.x_prev.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("alpha_dtype", [torch.float64, torch.float32])
def test_alpha_forms_agree(impl, alpha_dtype):
    """float, 0-d tensor and per-sample tensor holding the same value give the same result."""
    x, e = make((3, 2, 4, 4)), make((3, 2, 4, 4), seed=1)
    a = ddim_step(x, e, 0.25, 0.6, impl=impl)
    b = ddim_step(x, e, torch.tensor(0.25, dtype=alpha_dtype), torch.tensor(0.6, dtype=alpha_dtype), impl=impl)
    c = ddim_step(x, e, torch.full((3,), 0.25, dtype=alpha_dtype), torch.full((3,), 0.6, dtype=alpha_dtype), impl=impl)
    tol = 1e-6 if alpha_dtype == torch.float64 else 1e-5
    for u, v in ((a, b), (a, c)):
        assert_close(u.x_prev, v.x_prev, rtol=tol, atol=tol, what="x_prev")


def test_mixed_layouts_and_half_precision_per_sample():
    """x channels_last, eps strided, noise transposed: one fused pass still matches."""
    if not backend.impl_available("cpp", "cpu")[0]:
        pytest.skip("no C++ extension")
    shape = (3, 4, 6, 5)
    x, e, n = make(shape, layout="channels_last"), make(shape, layout="strided", seed=1), make(shape, layout="transposed", seed=2)
    a_t, a_p = f64([0.1, 0.4, 0.7]), f64([0.3, 0.5, 0.75])
    got = ddim_step(x, e, a_t, a_p, 0.8, n, impl="cpp")
    want = ddim_step_reference(x, e, a_t, a_p, 0.8, n)
    assert_close(got.x_prev, want[0], what="x_prev")
    assert_close(got.x0_pred, want[1], what="x0")


def test_eta_zero_ignores_noise_and_generator_reproducible():
    x, e = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    a = ddim_step(x, e, 0.3, 0.5, 0.0, noise=torch.randn_like(x))
    b = ddim_step(x, e, 0.3, 0.5, 0.0)
    assert torch.equal(a.x_prev, b.x_prev)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    c = ddim_step(x, e, 0.3, 0.5, 1.0, generator=g1)
    d = ddim_step(x, e, 0.3, 0.5, 1.0, generator=g2)
    assert torch.equal(c.x_prev, d.x_prev)
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    assert_close(c.x_prev, ddim_step_reference(x, e, f64(0.3), f64(0.5), 1.0, n)[0], what="x_prev")


def test_ddpm_limit_eta1_is_posterior_mean_plus_posterior_std():
    """eta = 1 with consecutive alphas is DDPM ancestral sampling: mean and std of the posterior
    q(x_{t-1} | x_t, x0) (Ho et al., eq. 6-7)."""
    a_t, a_p = 0.5, 0.6
    beta_t = 1 - a_t / a_p
    x, e = make((4, 8)), make((4, 8), seed=1)
    n = make((4, 8), seed=2)
    out = ddim_step(x, e, a_t, a_p, 1.0, n)
    x0 = (x.double() - math.sqrt(1 - a_t) * e.double()) / math.sqrt(a_t)
    mean = (math.sqrt(a_p) * beta_t / (1 - a_t)) * x0 + (math.sqrt(1 - beta_t) * (1 - a_p) / (1 - a_t)) * x.double()
    std = math.sqrt((1 - a_p) / (1 - a_t) * beta_t)
    assert_close(out.x_prev.double(), mean + std * n.double(), rtol=1e-5, atol=1e-5, what="ddpm")


# ------------------------------------------------------------------------ out=
@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "strided"])
def test_out_variant(impl, out_layout):
    shape = (2, 3, 4, 5)
    x, e, n = make(shape), make(shape, seed=1), make(shape, seed=2)
    a_t, a_p = f64([0.2, 0.6]), f64([0.5, 0.7])
    want = ddim_step_reference(x, e, a_t, a_p, 0.5, n, 1.0)
    xp, x0 = make(shape, layout=out_layout, seed=5), make(shape, layout=out_layout, seed=6)
    res = ddim_step(x, e, a_t, a_p, 0.5, n, True, out=(xp, x0), impl=impl)
    assert res.x_prev is xp and res.x0_pred is x0
    assert_close(xp, want[0], what="x_prev")
    assert_close(x0, want[1], what="x0")


@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
def test_out_may_alias_x_t(impl):
    """The sampler-loop idiom: write x_prev over x_t's own buffer."""
    x, e = make((2, 3, 8, 8)), make((2, 3, 8, 8), seed=1)
    want = ddim_step_reference(x, e, f64(0.3), f64(0.6))
    buf, x0 = x.clone(), torch.empty_like(x)
    ddim_step(buf, e, 0.3, 0.6, out=(buf, x0), impl=impl)
    assert_close(buf, want[0], what="x_prev")
    assert_close(x0, want[1], what="x0")


def test_out_errors():
    x, e = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    with pytest.raises(ValueError, match=r"out\[0\] \(x_prev\) has shape"):
        ddim_step(x, e, 0.3, 0.6, out=(torch.empty(2, 3, 4), torch.empty_like(x)))
    with pytest.raises(TypeError, match="out must be a pair"):
        ddim_step(x, e, 0.3, 0.6, out=torch.empty_like(x))
    with pytest.raises(TypeError, match=r"out\[1\] \(x0_pred\) has dtype"):
        ddim_step(x, e, 0.3, 0.6, out=(torch.empty_like(x), torch.empty_like(x, dtype=torch.half)))
    with pytest.raises(RuntimeError, match="out= does not support automatic differentiation"):
        ddim_step(x.requires_grad_(), e, 0.3, 0.6, out=(torch.empty_like(x), torch.empty_like(x)))



@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
def test_out_overlap_errors(impl):
    x, e = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    buf = torch.empty(2 * x.numel())
    with pytest.raises(RuntimeError, match=r"out\[0\] \(x_prev\) and out\[1\] \(x0_pred\) overlap"):
        ddim_step(x, e, 0.3, 0.6, out=(buf[: x.numel()].view_as(x), buf[1: x.numel() + 1].view_as(x)), impl=impl)
    big = torch.randn(x.numel() + 1)
    xs = big[: x.numel()].view_as(x)
    with pytest.raises(RuntimeError, match=r"out\[0\] \(x_prev\) partially overlaps x_t"):
        ddim_step(xs, e, 0.3, 0.6, out=(big[1:].view_as(x), torch.empty_like(x)), impl=impl)


# ------------------------------------------------------------------------ autograd
def _grads(impl, x, e, n, a_t, a_p, eta, clip, use_x0=True):
    xs = [t.detach().clone().requires_grad_() for t in (x, e, n)]
    out = ddim_step(xs[0], xs[1], a_t, a_p, eta, xs[2], clip, impl=impl)
    w1 = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
    loss = (out.x_prev.float() * w1).sum()
    if use_x0:
        loss = loss + (out.x0_pred.float() * w1.flip(-1)).square().sum()
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("clip", [None, 0.7])
@pytest.mark.parametrize("use_x0", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_matches_reference(impl, clip, use_x0, layout):
    shape = (3, 2, 5, 4)
    x, e, n = make(shape, layout=layout), make(shape, layout=layout, seed=1), make(shape, seed=2)
    a_t, a_p = f64([0.2, 0.5, 0.7]), f64([0.4, 0.55, 0.9])
    got = _grads(impl, x, e, n, a_t, a_p, 0.6, clip, use_x0)
    want = _grads("torch", x, e, n, a_t, a_p, 0.6, clip, use_x0)
    for g, w, name in zip(got, want, ("x_t", "eps", "noise")):
        assert_close(g, w, what=f"d{name}", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("clip", [None, 0.7])
def test_double_backward_matches_reference(impl, clip):
    """Gradient of a gradient: d/dv <J^T v, u> through the fused backward op."""
    shape = (2, 3, 4, 4)
    x, e, n = make(shape), make(shape, seed=1), make(shape, seed=2)
    a_t, a_p = f64([0.3, 0.6]), f64([0.5, 0.8])
    v1, v2, u = make(shape, seed=3), make(shape, seed=4), make(shape, seed=5)

    def run(impl):
        xs = [t.clone().requires_grad_() for t in (x, e, n)]
        vs = [t.clone().requires_grad_() for t in (v1, v2)]
        out = ddim_step(*xs[:2], a_t, a_p, 0.6, xs[2], clip, impl=impl)
        gx, ge, gn = torch.autograd.grad(out, xs, vs, create_graph=True)
        return torch.autograd.grad((gx * u).sum() + (ge * u.flip(0)).sum() + (gn * u).sum(), vs)

    for g, w in zip(run(impl), run("torch")):
        assert_close(g, w, what="double backward", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradcheck_and_gradgradcheck(impl):
    """The op is (piecewise) linear, so fp32 finite differences with a large step are exact up to
    rounding; the fused kernels support fp32/fp16/bf16 only (no float64)."""
    shape = (2, 3, 3)
    x, e, n = (make(shape, seed=s).requires_grad_() for s in range(3))
    a_t, a_p = f64([0.3, 0.6]), f64([0.5, 0.8])

    def fn(x, e, n):
        return tuple(ddim_step(x, e, a_t, a_p, 0.5, n, impl=impl))

    kw = dict(eps=1e-2, atol=2e-3, rtol=2e-3, nondet_tol=0.0)
    assert torch.autograd.gradcheck(fn, (x, e, n), **kw)
    assert torch.autograd.gradgradcheck(fn, (x, e, n), **kw)


def test_alpha_gradients_use_reference():
    x, e = make((2, 3)), make((2, 3), seed=1)
    a_t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = ddim_step(x, e, a_t, 0.6)  # auto: falls back to the differentiable reference
    (g,) = torch.autograd.grad(out.x_prev.sum(), a_t)
    assert torch.isfinite(g)
    with pytest.raises(fastgen.BackendUnavailableError, match="only computed by impl='torch'"):
        ddim_step(x, e, a_t, 0.6, impl="cpp")


# ------------------------------------------------------------------------ bad input
BAD = [
    (dict(eps=torch.randn(2, 3, 4)), ValueError, "eps has shape"),
    (dict(eps=torch.randn(2, 3, 4, 4, dtype=torch.float16)), TypeError, "eps has dtype"),
    (dict(eps=torch.randn(2, 3, 4, 4, device="meta")), ValueError, "eps is on meta"),
    (dict(x_t=torch.randint(0, 3, (2, 3, 4, 4))), TypeError, "x_t has dtype"),
    (dict(x_t=[1.0, 2.0]), TypeError, "x_t must be a torch.Tensor"),
    (dict(alpha_bar_t=0.0), ValueError, "alpha_bar_t must be in"),
    (dict(alpha_bar_t=1.5), ValueError, "alpha_bar_t must be in"),
    (dict(alpha_bar_prev=float("nan")), ValueError, "alpha_bar_prev must be in"),
    (dict(alpha_bar_t="0.5"), TypeError, "alpha_bar_t must be a float or a tensor"),
    (dict(alpha_bar_t=torch.full((3,), 0.5)), ValueError, r"alpha_bar_t must be a scalar or have shape \[N\]"),
    (dict(alpha_bar_prev=torch.full((2, 1), 0.5)), ValueError, r"alpha_bar_prev must be a scalar or have shape \[N\]"),
    (dict(alpha_bar_t=torch.tensor([1, 1])), TypeError, "alpha_bar_t must be a floating-point tensor"),
    (dict(alpha_bar_t=torch.full((2,), 0.5, device="meta")), ValueError, "alpha_bar_t is on meta"),
    (dict(eta=1.5), ValueError, "eta must be in"),
    (dict(eta=-0.1), ValueError, "eta must be in"),
    (dict(eta=0.5, alpha_bar_t=0.7, alpha_bar_prev=0.5), ValueError, "alpha_bar_prev must be >= alpha_bar_t"),
    (dict(clip_denoised=-1.0), ValueError, "clip_denoised must be in"),
    (dict(noise=torch.randn(2, 3, 4), eta=0.5), ValueError, "noise has shape"),
    (dict(impl="cuda"), ValueError, "impl must be one of"),
]


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_input_is_a_clear_error(impl, kwargs, exc, msg):
    args = dict(x_t=torch.randn(2, 3, 4, 4), eps=torch.randn(2, 3, 4, 4), alpha_bar_t=0.3, alpha_bar_prev=0.6,
                impl=impl)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        ddim_step(**args)


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("bad", [0.0, 1.2])
def test_bad_tensor_alpha_values(impl, bad):
    x, e = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"alpha_bar_t must be in \(0, 1\]"):
        ddim_step(x, e, f64([0.3, bad, 0.5]), 0.9, impl=impl)
    with pytest.raises(ValueError, match=r"alpha_bar_prev must be in \(0, 1\]"):
        ddim_step(x, e, 0.3, f64(bad), impl=impl)


@pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="no C++ extension")
def test_raw_op_checks_name_arguments():
    """The C++ layer checks on its own (users may call torch.ops.fastgen.* directly)."""
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="eps has shape"):
        torch.ops.fastgen.ddim_step(x, torch.randn(3, 2), f64(0.3), f64(0.5), 0.0, None, 0.0)
    with pytest.raises(TypeError, match="x_t has dtype Double"):
        torch.ops.fastgen.ddim_step(x.double(), x.double(), f64(0.3), f64(0.5), 0.0, None, 0.0)
    with pytest.raises(ValueError, match="eta must be in"):
        torch.ops.fastgen.ddim_step(x, x, f64(0.3), f64(0.5), 2.0, None, 0.0)
    with pytest.raises(ValueError, match=r"alpha_bar_prev must be a scalar or have shape \[N\]"):
        torch.ops.fastgen.ddim_step(x, x, f64(0.3), f64([0.5, 0.5, 0.5]), 0.0, None, 0.0)
    with pytest.raises(ValueError, match="grad_x0 has shape"):
        torch.ops.fastgen.ddim_step_backward(None, torch.randn(3), x, x, f64(0.3), f64(0.5), 0.0, 0.0, False)


# ------------------------------------------------------------------------ custom-op machinery
def _opcheck_samples():
    x, e, n = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1), make((2, 3, 4, 4), seed=2)
    cl = make((2, 3, 4, 4), layout="channels_last")
    a_t, a_p = f64([0.3, 0.5]), f64([0.6, 0.7])
    return [
        (x, e, f64(0.3), f64(0.6), 0.0, None, 0.0),
        (x.clone().requires_grad_(), e.clone().requires_grad_(), a_t, a_p, 0.5, n.clone().requires_grad_(), 1.0),
        (cl.requires_grad_(), e, f64(0.3), f64(0.6), 1.0, n, 0.0),
        (x.half(), e.half(), a_t.float(), a_p.float(), 0.2, n.half(), 0.5),
    ]


@pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="no C++ extension")
@pytest.mark.parametrize("i", range(4))
def test_opcheck_cpp_ops(i):
    args = _opcheck_samples()[i]
    torch.library.opcheck(torch.ops.fastgen.ddim_step.default, args)
    x = args[0].detach()
    outs = (torch.empty_like(x), torch.empty_like(x))
    torch.library.opcheck(torch.ops.fastgen.ddim_step_out.default, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                                                         for a in args) + outs)
    g = torch.randn_like(x).requires_grad_()
    bw_args = (g, None if i % 2 else torch.randn_like(x), args[0].detach(), args[1].detach(), args[2], args[3],
               args[4], args[6], i % 2 == 1)
    torch.library.opcheck(torch.ops.fastgen.ddim_step_backward.default, bw_args)


@pytest.mark.skipif(not backend.impl_available("triton", "cpu")[0], reason="no Triton interpreter")
@pytest.mark.parametrize("i", range(4))
def test_opcheck_triton_ops_eager_parts(i):
    """On CPU the Triton ops run under the interpreter, which reads data pointers, so fake-tensor
    tracing (test_faketensor, test_aot_dispatch_*) of a triton_op needs a GPU: that part of
    opcheck runs in tests/test_gpu.py."""
    from fastgen.ops.ddim_step import _triton_ops

    fwd, _, bwd = _triton_ops()
    args = _opcheck_samples()[i]
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(fwd, args, test_utils=utils)
    x = args[0].detach()
    bw_args = (torch.randn_like(x), None, x, args[1].detach(), args[2], args[3], args[4], args[6], True)
    torch.library.opcheck(bwd, bw_args, test_utils=utils)


@pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="no C++ extension")
def test_torch_compile_fullgraph_sampler_loop_no_recompiles():
    """A compiled 4-step DDIM loop: fullgraph (no graph breaks), equal to eager, and tensor alphas
    are graph inputs, so new alpha values do not recompile."""
    from torch._dynamo.testing import CompileCounterWithBackend

    schedule = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)

    def loop(x, eps, sched):
        for i in range(3, -1, -1):
            x, _ = ddim_step(x, eps * (i + 1), sched[i], sched[i + 1])
        return x

    x, e = make((2, 3, 8, 8)), make((2, 3, 8, 8), seed=1)
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("inductor")
    compiled = torch.compile(loop, backend=cnt, fullgraph=True)
    assert_close(compiled(x, e, schedule), loop(x, e, schedule), what="compiled loop")
    assert_close(compiled(x, e, schedule.flip(0) * 0.9 + 0.05), loop(x, e, schedule.flip(0) * 0.9 + 0.05), what="2nd")
    assert cnt.frame_count == 1


@pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="no C++ extension")
def test_torch_compile_fullgraph_backward():
    def loss_fn(x, e, n):
        out = ddim_step(x, e, torch.tensor([0.3, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.8], dtype=torch.float64),
                        0.5, n, 1.0)
        return out.x_prev.square().sum() + out.x0_pred.sum()

    x, e, n = (make((2, 3, 5, 5), seed=s).requires_grad_() for s in range(3))
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, e, n), (x, e, n))
    with backend.use_backend("torch"):
        want = torch.autograd.grad(loss_fn(x, e, n), (x, e, n))
    for g, w in zip(got, want):
        assert_close(g, w, what="compiled grad", rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- streaming stores
_STREAM_SCRIPT = r"""
import torch
from fastgen import _extension
from fastgen.functional import ddim_step
from fastgen.ops.ddim_step import ddim_step_reference
assert _extension.load().cpu_stream_threshold() == 0, "FASTGEN_CPU_STREAM_BYTES not honoured"
tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for shape in ((3, 5, 17, 23), (2, 1025), (1, 1)):
        x = torch.randn(shape, generator=g).to(dtype)
        e = torch.randn(shape, generator=g).to(dtype)
        n = torch.randn(shape, generator=g).to(dtype)
        a_t, a_p = torch.tensor([0.3, 0.5, 0.7][: shape[0]]), torch.tensor([0.45, 0.6, 0.9][: shape[0]])
        for eta, noise, clip in ((0.0, None, None), (1.0, n, 1.0)):
            rp, r0 = ddim_step_reference(x, e, a_t, a_p, eta, noise, 1.0 if clip else 0.0)
            xp, x0 = ddim_step(x, e, a_t, a_p, eta, noise, clip, impl="cpp")
            # unaligned destinations: views at an odd element offset into bigger buffers
            bp = torch.full((x.numel() + 3,), float("nan"), dtype=dtype)
            b0 = torch.full((x.numel() + 5,), float("nan"), dtype=dtype)
            op, o0 = bp[1:1 + x.numel()].view(shape), b0[3:3 + x.numel()].view(shape)
            ddim_step(x, e, a_t, a_p, eta, noise, clip, impl="cpp", out=(op, o0))
            for got, ref in ((xp, rp), (x0, r0), (op, rp), (o0, r0)):
                torch.testing.assert_close(got, ref, rtol=tol[dtype], atol=tol[dtype])
            assert bp[0].isnan() and bp[-2:].isnan().all() and b0[:3].isnan().all() and b0[-2:].isnan().all()
            # in place over x_t (the sampler-loop idiom)
            xi = x.clone()
            ddim_step(xi, e, a_t, a_p, eta, noise, clip, impl="cpp", out=(xi, torch.empty_like(x)))
            torch.testing.assert_close(xi, rp, rtol=tol[dtype], atol=tol[dtype])
            # backward (fused kernel, streaming too)
            xr, er = x.float().clone().requires_grad_(), e.float().clone().requires_grad_()
            xc, ec = x.float().clone().requires_grad_(), e.float().clone().requires_grad_()
            gp, g0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            ref = ddim_step_reference(xr, er, a_t, a_p, eta, None if noise is None else noise.float(), 1.0 if clip else 0.0)
            got = ddim_step(xc, ec, a_t, a_p, eta, None if noise is None else noise.float(), clip, impl="cpp")
            torch.autograd.backward(ref, (gp, g0))
            torch.autograd.backward(got, (gp, g0))
            torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ec.grad, er.grad, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="C++ extension not available")
def test_cpp_streaming_store_path_matches_reference():
    """Large working sets are written with non-temporal stores; force that path on small inputs."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FASTGEN_CPU_STREAM_BYTES="0")
    proc = subprocess.run([sys.executable, "-c", _STREAM_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
