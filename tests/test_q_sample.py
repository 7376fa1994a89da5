"""fastgen.ops.q_sample: every implementation against the reference, the reference against the
textbook formula, autograd (incl. double backward), out=, bad input, opcheck."""
import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.ops.q_sample import QSampleOutput, q_sample, q_sample_coefficients, q_sample_reference

from helpers import assert_close

HAVE_CPP = backend.impl_available("cpp", "cpu")[0]
HAVE_TRITON = backend.impl_available("triton", "cpu")[0]
FAST_IMPLS = [
    pytest.param(name, marks=pytest.mark.skipif(not backend.impl_available(name, "cpu")[0],
                                                 reason=backend.impl_available(name, "cpu")[1] or "n/a"))
    for name in ("cpp", "triton")
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PTS = [None, "epsilon", "sample", "v_prediction"]


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
    if layout == "transposed":
        return base.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        big = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        big[..., ::2] = base
        return big[..., ::2]
    if layout == "expanded":
        return base[:1].expand(shape)
    raise ValueError(layout)


def textbook(x0, noise, ab, pt):
    """q(x_t | x0) sampling and the targets as written in DDPM / Salimans & Ho, float64."""
    x0, noise = x0.double(), noise.double()
    ab = torch.as_tensor(ab, dtype=torch.float64)
    if ab.dim():
        ab = ab.reshape((-1,) + (1,) * (x0.dim() - 1))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {None: None, "epsilon": noise, "sample": x0,
              "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[pt]
    return x_t, target


@pytest.mark.parametrize("pt", PTS)
def test_reference_matches_textbook(pt):
    x0, n = make((4, 3, 5, 5)), make((4, 3, 5, 5), seed=1)
    ab = f64([0.0, 0.3, 0.77, 1.0])
    got = q_sample_reference(x0, n, ab, pt)
    want = textbook(x0, n, ab, pt)
    if pt is None:
        assert_close(got, want[0].float(), what="x_t", rtol=2e-6, atol=2e-6)
    else:
        assert isinstance(got, QSampleOutput)
        assert_close(got.x_t, want[0].float(), what="x_t", rtol=2e-6, atol=2e-6)
        assert_close(got.target, want[1].float(), what="target", rtol=2e-6, atol=2e-6)


def test_coefficients_are_a_rotation_for_v():
    """(x_t, v) = R (x0, noise) with R orthogonal: x0 = sqrt(ab) x_t - sqrt(1-ab) v."""
    a, b, c, d = q_sample_coefficients(f64([0.1, 0.5, 0.95]), "v_prediction")
    assert torch.allclose(a * d - b * c, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(a * a + b * b, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(a * c + b * d, torch.zeros(3, dtype=torch.float64))


CASES = [
    # shape, layout, per-sample alpha
    ((2, 3, 5, 7), "contiguous", False),
    ((3, 3, 7, 5), "channels_last", True),
    ((2, 3, 5, 7), "transposed", True),
    ((2, 3, 5, 7), "strided", False),
    ((3, 2, 4, 5), "expanded", True),
    ((1, 4, 8, 8), "contiguous", True),  # batch 1
    ((0, 4, 8, 8), "contiguous", False),  # empty
    ((3, 1000), "contiguous", True),  # rows longer than a Triton block
    ((7,), "contiguous", True),
    ((), "contiguous", False),  # 0-d with a scalar alpha
]


def _alpha(shape, per_sample):
    n = shape[0] if len(shape) else 1
    if per_sample and len(shape):
        return torch.linspace(0.0, 1.0, n, dtype=torch.float64)  # both ends included
    return 0.35


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,per_sample", CASES)
def test_fast_impl_matches_reference(impl, dtype, shape, layout, per_sample):
    x0 = make(shape, dtype, layout, seed=1)
    n = make(shape, dtype, "contiguous" if layout == "expanded" else layout, seed=2)
    ab = _alpha(shape, per_sample)
    for pt in (None, "v_prediction", "epsilon"):
        got = q_sample(x0, n, ab, prediction_type=pt, impl=impl)
        want = q_sample(x0, n, ab, prediction_type=pt, impl="torch")
        got, want = (got, want) if pt else ((got,), (want,))
        for g, w, what in zip(got, want, ("x_t", "target")):
            assert g.dtype == dtype and g.shape == x0.shape
            assert_close(g, w, dtype, what=f"{impl} {pt} {what}")
        if layout == "channels_last":
            assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
def test_epsilon_and_sample_targets_are_the_inputs(impl):
    x0, n = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    assert q_sample(x0, n, 0.5, prediction_type="epsilon", impl=impl).target is n
    assert q_sample(x0, n, 0.5, prediction_type="sample", impl=impl).target is x0


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("alpha_dtype", [torch.float64, torch.float32])
def test_alpha_forms_agree(impl, alpha_dtype):
    x0, n = make((3, 2, 4, 4)), make((3, 2, 4, 4), seed=1)
    a = q_sample(x0, n, 0.25, prediction_type="v_prediction", impl=impl)
    b = q_sample(x0, n, torch.tensor(0.25, dtype=alpha_dtype), prediction_type="v_prediction", impl=impl)
    c = q_sample(x0, n, torch.full((3,), 0.25, dtype=alpha_dtype), prediction_type="v_prediction", impl=impl)
    for u, v in ((a, b), (a, c)):
        assert_close(u.x_t, v.x_t, what="x_t", rtol=1e-6, atol=1e-6)
        assert_close(u.target, v.target, what="target", rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ out=
@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("pt", [None, "epsilon", "v_prediction"])
def test_out_variant(impl, out_layout, pt):
    shape = (2, 3, 4, 5)
    x0, n = make(shape), make(shape, seed=1)
    ab = f64([0.2, 0.6])
    want = q_sample_reference(x0, n, ab, pt)
    bufs = make(shape, layout=out_layout, seed=5), make(shape, layout=out_layout, seed=6)
    if pt is None:
        res = q_sample(x0, n, ab, out=bufs[0], impl=impl)
        assert res is bufs[0]
        assert_close(bufs[0], want, what="x_t")
    else:
        res = q_sample(x0, n, ab, prediction_type=pt, out=bufs, impl=impl)
        assert res.x_t is bufs[0] and res.target is bufs[1]
        assert_close(bufs[0], want.x_t, what="x_t")
        assert_close(bufs[1], want.target, what="target")  # a copy, even for epsilon


@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
def test_out_may_alias_an_input(impl):
    x0, n = make((2, 3, 8, 8)), make((2, 3, 8, 8), seed=1)
    want = q_sample_reference(x0, n, 0.3, "v_prediction")
    bx, bn = x0.clone(), n.clone()
    q_sample(bx, bn, 0.3, prediction_type="v_prediction", out=(bx, bn), impl=impl)  # in place
    assert_close(bx, want.x_t, what="x_t")
    assert_close(bn, want.target, what="target")


@pytest.mark.parametrize("impl", FAST_IMPLS + ["torch"])
def test_out_errors(impl):
    x0, n = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    with pytest.raises(ValueError, match=r"out\[0\] \(x_t\) has shape"):
        q_sample(x0, n, 0.3, out=torch.empty(2, 3, 4), impl=impl)
    with pytest.raises(TypeError, match="out must be a pair of tensors"):
        q_sample(x0, n, 0.3, prediction_type="epsilon", out=torch.empty_like(x0), impl=impl)
    with pytest.raises(TypeError, match="out must be a tensor"):
        q_sample(x0, n, 0.3, out=(torch.empty_like(x0), torch.empty_like(x0)), impl=impl)
    with pytest.raises(TypeError, match=r"out\[1\] \(target\) has dtype"):
        q_sample(x0, n, 0.3, prediction_type="sample", out=(torch.empty_like(x0), torch.empty_like(x0).half()),
                 impl=impl)
    with pytest.raises(RuntimeError, match="out= does not support automatic differentiation"):
        q_sample(x0.clone().requires_grad_(), n, 0.3, out=torch.empty_like(x0), impl=impl)
    buf = torch.empty(2 * x0.numel())
    with pytest.raises(RuntimeError, match=r"out\[0\] \(x_t\) and out\[1\] \(target\) overlap"):
        q_sample(x0, n, 0.3, prediction_type="v_prediction",
                 out=(buf[: x0.numel()].view_as(x0), buf[1: x0.numel() + 1].view_as(x0)), impl=impl)
    big = torch.randn(x0.numel() + 1)
    with pytest.raises(RuntimeError, match=r"out\[0\] \(x_t\) partially overlaps x0"):
        q_sample(big[: x0.numel()].view_as(x0), n, 0.3, out=big[1:].view_as(x0), impl=impl)


# ------------------------------------------------------------------------ autograd
def _grads(impl, x0, n, ab, pt, create_graph=False):
    xs = [t.detach().clone().requires_grad_() for t in (x0, n)]
    out = q_sample(*xs, ab, prediction_type=pt, impl=impl)
    w = torch.linspace(-1, 1, x0.numel()).reshape(x0.shape)
    x_t = out if pt is None else out.x_t
    loss = (x_t.float() * w).sum()
    if pt is not None:
        loss = loss + (out.target.float() * w.flip(-1)).square().sum()
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("pt", PTS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_matches_reference(impl, pt, layout):
    shape = (3, 2, 5, 4)
    x0, n = make(shape, layout=layout), make(shape, seed=1)
    ab = f64([0.2, 0.5, 0.9])
    for g, w, name in zip(_grads(impl, x0, n, ab, pt), _grads("torch", x0, n, ab, pt), ("x0", "noise")):
        assert_close(g, w, what=f"d{name}", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_grad_of_one_input_only(impl):
    x0, n = make((2, 3, 4)), make((2, 3, 4), seed=1).requires_grad_()
    out = q_sample(x0, n, f64([0.3, 0.8]), prediction_type="v_prediction", impl=impl)
    (g,) = torch.autograd.grad(out.target.sum(), n)  # only the target used, only noise needs grad
    assert_close(g, f64([0.3, 0.8]).sqrt().float().reshape(2, 1, 1).expand(2, 3, 4), what="dnoise")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("pt", [None, "v_prediction"])
def test_double_backward_matches_reference(impl, pt):
    shape = (2, 3, 4, 4)
    x0, n = make(shape), make(shape, seed=1)
    ab = f64([0.3, 0.6])
    vs0 = [make(shape, seed=3), make(shape, seed=4)]
    u = make(shape, seed=5)

    def run(impl):
        xs = [t.clone().requires_grad_() for t in (x0, n)]
        vs = [t.clone().requires_grad_() for t in vs0]
        out = q_sample(*xs, ab, prediction_type=pt, impl=impl)
        outs = (out,) if pt is None else tuple(out)
        gx, gn = torch.autograd.grad(outs, xs, vs[: len(outs)], create_graph=True)
        return torch.autograd.grad((gx * u).sum() + (gn * u.flip(0)).sum(), vs[: len(outs)])

    for g, w in zip(run(impl), run("torch")):
        assert_close(g, w, what="double backward", rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Input #")
@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_gradcheck_and_gradgradcheck_fast(impl):
    """Linear op: fp32 central differences are exact up to rounding (kernels have no float64)."""
    x0, n = (make((2, 3, 3), seed=s).requires_grad_() for s in range(2))
    ab = f64([0.3, 0.6])

    def fn(x0, n):
        return tuple(q_sample(x0, n, ab, prediction_type="v_prediction", impl=impl))

    kw = dict(eps=1e-2, atol=2e-3, rtol=2e-3, nondet_tol=0.0)
    assert torch.autograd.gradcheck(fn, (x0, n), **kw)
    assert torch.autograd.gradgradcheck(fn, (x0, n), **kw)


def test_gradcheck_reference_float64_incl_alpha():
    x0, n = (make((2, 3, 3), seed=s).double().requires_grad_() for s in range(2))
    ab = f64([0.3, 0.6]).requires_grad_()

    def fn(x0, n, ab):
        return tuple(q_sample_reference(x0, n, ab, "v_prediction"))

    assert torch.autograd.gradcheck(fn, (x0, n, ab))
    assert torch.autograd.gradgradcheck(fn, (x0, n, ab))


def test_alpha_gradients_use_reference():
    x0, n = make((2, 3)), make((2, 3), seed=1)
    ab = f64([0.3, 0.7]).requires_grad_()
    out = q_sample(x0, n, ab, prediction_type="v_prediction")  # auto: the differentiable reference
    (g,) = torch.autograd.grad(out.x_t.sum() + out.target.sum(), ab)
    assert torch.isfinite(g).all()
    if HAVE_CPP:
        with pytest.raises(fastgen.BackendUnavailableError, match="only computed by impl='torch'"):
            q_sample(x0, n, ab, impl="cpp")


# ------------------------------------------------------------------------ bad input
BAD = [
    (dict(noise=torch.randn(2, 3, 4)), ValueError, "noise has shape"),
    (dict(noise=torch.randn(2, 3, 4, 4, dtype=torch.float16)), TypeError, "noise has dtype"),
    (dict(noise=torch.randn(2, 3, 4, 4, device="meta")), ValueError, "noise is on meta"),
    (dict(x0=torch.randn(2, 3, 4, 4, dtype=torch.float64), noise=torch.randn(2, 3, 4, 4, dtype=torch.float64)),
     TypeError, "x0 has dtype torch.float64"),
    (dict(x0=[1.0]), TypeError, "x0 must be a torch.Tensor"),
    (dict(alpha_bar=-0.1), ValueError, r"alpha_bar must be in \[0, 1\]"),
    (dict(alpha_bar=1.5), ValueError, r"alpha_bar must be in \[0, 1\]"),
    (dict(alpha_bar=float("nan")), ValueError, "alpha_bar must be in"),
    (dict(alpha_bar=f64([0.3, 1.2])), ValueError, r"alpha_bar must be in \[0, 1\]"),
    (dict(alpha_bar="0.5"), TypeError, "alpha_bar must be a float or a tensor"),
    (dict(alpha_bar=torch.full((3,), 0.5)), ValueError, r"alpha_bar must be a scalar or have shape \[N\]"),
    (dict(alpha_bar=torch.tensor([1, 1])), TypeError, "alpha_bar must be a floating-point tensor"),
    (dict(prediction_type="x0"), ValueError, "prediction_type must be one of"),
    (dict(impl="cuda"), ValueError, "impl must be one of"),
]


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_input_is_a_clear_error(impl, kwargs, exc, msg):
    args = dict(x0=torch.randn(2, 3, 4, 4), noise=torch.randn(2, 3, 4, 4), alpha_bar=0.3, impl=impl)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        q_sample(**args)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
def test_raw_op_checks_name_arguments():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="noise has shape"):
        torch.ops.fastgen.q_sample(x, torch.randn(3, 2), f64(0.3), None)
    with pytest.raises(TypeError, match="x0 has dtype Double"):
        torch.ops.fastgen.q_sample(x.double(), x.double(), f64(0.3), None)
    with pytest.raises(ValueError, match=r"alpha_bar must be in \[0, 1\]"):
        torch.ops.fastgen.q_sample(x, x, f64([0.3, -1.0]), None)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        torch.ops.fastgen.q_sample(x, x, f64(0.3), "edm")
    with pytest.raises(ValueError, match="at least one of u and v"):
        torch.ops.fastgen.q_sample_linear(None, None, f64(0.3), None, False, True, False)
    with pytest.raises(RuntimeError, match="gradients with respect to alpha_bar"):
        torch.ops.fastgen.q_sample(x.requires_grad_(), x, f64(0.3).requires_grad_(), None)


# ------------------------------------------------------------------------ custom-op machinery
def _samples():
    x0, n = make((2, 3, 4, 4)), make((2, 3, 4, 4), seed=1)
    cl = make((2, 3, 4, 4), layout="channels_last")
    ab = f64([0.3, 0.9])
    return [
        (x0, n, f64(0.3), None),
        (x0.clone().requires_grad_(), n.clone().requires_grad_(), ab, "v_prediction"),
        (cl.requires_grad_(), n, ab.float(), "epsilon"),
        (x0.bfloat16(), n.bfloat16().requires_grad_(), ab, "sample"),
    ]


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
@pytest.mark.parametrize("i", range(4))
def test_opcheck_cpp_ops(i):
    args = _samples()[i]
    torch.library.opcheck(torch.ops.fastgen.q_sample.default, args)
    x0, n = (a.detach() for a in args[:2])
    target = torch.empty_like(x0) if args[3] else None
    torch.library.opcheck(torch.ops.fastgen.q_sample_out.default, (x0, n, args[2], args[3], torch.empty_like(x0), target))
    lin_args = (args[0], None if i % 2 else args[1], args[2], args[3], i >= 2, True, i != 0)
    torch.library.opcheck(torch.ops.fastgen.q_sample_linear.default, lin_args)


@pytest.mark.skipif(not HAVE_TRITON, reason="no Triton interpreter")
@pytest.mark.parametrize("i", range(2))
def test_opcheck_triton_ops_eager_parts(i):
    """Fake-tensor tracing of a triton_op needs a GPU (tests/test_gpu.py); here schema + autograd."""
    from fastgen.ops.q_sample import _triton_ops

    fwd, lin = _triton_ops()
    args = _samples()[i + 1]
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(fwd, args, test_utils=utils)
    torch.library.opcheck(lin, (args[0], args[1], args[2], args[3], True, True, i == 0), test_utils=utils)


# ------------------------------------------------------------------------ GPU (skipped without one)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_triton_matches_reference(dtype):
    ok, why = backend.impl_available("triton", "cuda")
    if not ok:
        pytest.skip(why)
    from fastgen.ops.q_sample import _triton_ops

    dev = torch.device("cuda")
    x0 = torch.randn(4, 3, 17, 9, device=dev).to(dtype).requires_grad_()
    n = torch.randn(4, 3, 17, 9, device=dev).to(dtype)
    ab = torch.linspace(0.0, 1.0, 4, dtype=torch.float64, device=dev)  # device per-sample alphas
    got = q_sample(x0, n, ab, prediction_type="v_prediction", impl="triton")
    want = q_sample_reference(x0, n, ab, "v_prediction")
    for g, w in zip(got, want):
        assert_close(g, w, dtype, what="cuda triton")
    (gg,) = torch.autograd.grad(got.target.float().sum(), x0)
    (gw,) = torch.autograd.grad(want.target.float().sum(), x0)
    assert_close(gg, gw, dtype, what="cuda triton dx0")
    torch.library.opcheck(_triton_ops()[0], (x0.detach().requires_grad_(), n, ab, "v_prediction"))
    compiled = torch.compile(lambda x, n, a: tuple(q_sample(x, n, a, prediction_type="v_prediction")), fullgraph=True)
    for g, w in zip(compiled(x0.detach(), n, ab), want):
        assert_close(g, w.detach(), dtype, what="compiled")
