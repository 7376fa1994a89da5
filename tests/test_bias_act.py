"""fastgen.functional.bias_act (StyleGAN2's fused bias + activation + gain + clamp): the C++ CPU
kernels and the Triton kernels (under TRITON_INTERPRET=1) against the float64 reference, forward
and first/second/third order gradients, layouts, dtypes, the ops' registration and bad input."""
import math
import os

import pytest
import torch

from fastgen import backend
from fastgen.functional import bias_act
from fastgen.ops.bias_act import ACTIVATIONS, bias_act_reference

from helpers import assert_close

IMPLS = [i for i in ("cpp", "triton") if backend.op_impl_available("bias_act", i, "cpu")[0]]
ACTS = [a for a in ACTIVATIONS if a != "swish"]
needs_cpp = pytest.mark.skipif("cpp" not in IMPLS, reason="fastgen._C is not built")


def _inputs(shape=(2, 6, 5, 3), dim=1, dtype=torch.float32, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    x = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    b = torch.randn(shape[dim], generator=g, dtype=torch.float64).to(dtype)
    return x.requires_grad_(), b.requires_grad_()


def _ref64(x, b, **kw):
    leaves = [t.detach().double().requires_grad_() for t in (x, b)]
    return bias_act_reference(leaves[0], leaves[1], **kw), leaves


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_forward_and_grad_match_float64_reference(impl, act, clamp):
    for layout in ("contiguous", "channels_last", "strided"):
        x, b = _inputs(layout=layout)
        y = bias_act(x, b, act=act, clamp=clamp, impl=impl)
        want, leaves = _ref64(x, b, act=act, clamp=clamp)
        assert y.shape == x.shape and y.dtype == x.dtype
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y.double(), want, rtol=1e-5, atol=2e-6, what=f"y ({layout})")
        gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        got = torch.autograd.grad(y, (x, b), gy)
        ref = torch.autograd.grad(want, leaves, gy.double())
        for name, a, r in zip(("dx", "db"), got, ref):
            assert_close(a.double(), r, rtol=1e-5, atol=1e-5, what=f"{name} ({layout})")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,dim", [((7, 33), 1), ((4, 9), -1), ((3, 5, 11), 2), ((2, 3, 4, 5), 0), ((13,), 0),
                                       ((2, 1, 3, 3), 1)])
def test_bias_along_any_dim(impl, shape, dim):
    x, b = _inputs(shape, dim=dim % len(shape))
    y = bias_act(x, b, dim=dim, act="lrelu", impl=impl)
    want, leaves = _ref64(x, b, dim=dim % len(shape), act="lrelu")
    assert_close(y.double(), want, rtol=1e-6, atol=1e-6, what="y")
    db, = torch.autograd.grad(y.sum(), b)
    assert_close(db.double(), torch.autograd.grad(want.sum(), leaves[1])[0], rtol=1e-5, atol=1e-5, what="db")


@pytest.mark.parametrize("impl", IMPLS)
def test_defaults_no_bias_and_custom_params(impl):
    x, _ = _inputs((3, 4, 2, 2))
    assert_close(bias_act(x, impl=impl), x, rtol=0, atol=0, what="linear default")
    for act, alpha, gain in (("lrelu", 0.1, 1.7), ("elu", 0.5, 2.0), ("relu", None, 1.0)):
        y = bias_act(x, None, act=act, alpha=alpha, gain=gain, impl=impl)
        want, _ = _ref64(x, torch.zeros(4), act=act, alpha=alpha, gain=gain)
        assert_close(y.double(), want, rtol=1e-6, atol=1e-6, what=act)
    # StyleGAN2's default gains: lrelu -> sqrt(2) * leaky_relu(x, 0.2)
    y = bias_act(x, None, act="lrelu", impl=impl)
    assert_close(y, torch.nn.functional.leaky_relu(x, 0.2) * math.sqrt(2), rtol=1e-6, atol=1e-6, what="lrelu gain")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision(impl, dtype, tol):
    x, b = _inputs((2, 8, 4, 4), dtype=dtype)
    for act in ("lrelu", "silu", "tanh"):
        y = bias_act(x, b, act=act, clamp=2.0, impl=impl)
        assert y.dtype == dtype
        want, leaves = _ref64(x, b, act=act, clamp=2.0)
        assert_close(y.double(), want, rtol=tol, atol=tol, what=act)
        dx, db = torch.autograd.grad(y.float().square().sum(), (x, b))
        assert dx.dtype == dtype and db.dtype == dtype and torch.isfinite(dx.float()).all()


def _orders(fn, x, b, act, clamp, n):
    """Gradients of orders 1..n of a loss nonlinear in y, each order differentiated again."""
    y = fn(x, b)
    loss = (y * y.sin()).sum()
    out = []
    grads = torch.autograd.grad(loss, (x, b), create_graph=True)
    out.append(grads)
    for _ in range(n - 1):
        s = sum((g * g.detach().cos()).sum() + g.square().sum() for g in grads)
        grads = torch.autograd.grad(s, (x, b), create_graph=True)
        out.append(grads)
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
def test_second_and_third_order_gradients(impl, act):
    x, b = _inputs((2, 4, 3, 3), seed=3)
    x64, b64 = (t.detach().double().requires_grad_() for t in (x, b))
    clamp = 1.5 if act in ("silu", "lrelu") else None
    got = _orders(lambda u, v: bias_act(u, v, act=act, clamp=clamp, impl=impl), x, b, act, clamp, 3)
    want = _orders(lambda u, v: bias_act_reference(u, v, act=act, clamp=clamp), x64, b64, act, clamp, 3)
    for order, (gs, ws) in enumerate(zip(got, want), start=1):
        for name, g, w in zip(("x", "b"), gs, ws):
            sc = max(w.abs().max().item(), 1.0)
            assert_close(g.double() / sc, w.detach() / sc, rtol=2e-5, atol=2e-5, what=f"order {order} d{name}")


@needs_cpp
def test_r1_penalty_through_a_small_critic():
    """The reason for the fused second order: R1 on a critic built from linear layers + bias_act."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(16, 10, requires_grad=True), torch.randn(1, 16, requires_grad=True)
    b1 = torch.randn(16, requires_grad=True)
    x = torch.randn(8, 10, requires_grad=True)

    def critic(fn):
        h = fn(x @ w1.t(), b1, act="lrelu", clamp=3.0)
        return fn(h @ w2.t(), None, act="silu").sum()

    grads = []
    for fn in (lambda *a, **k: bias_act(*a, impl="cpp", **k), bias_act_reference):
        gx, = torch.autograd.grad(critic(fn), x, create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), (w1, b1, w2)))
    for a, b_ in zip(*grads):
        assert_close(a, b_, rtol=1e-4, atol=1e-5, what="R1 grads")


def test_float64_and_empty_run_the_reference():
    x, b = _inputs((2, 3, 2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda u, v: bias_act(u, v, act="silu"), (x, b))
    assert torch.autograd.gradgradcheck(lambda u, v: bias_act(u, v, act="gelu", clamp=1.0), (x, b))
    e = bias_act(torch.empty(0, 3), torch.zeros(3), act="relu")
    assert e.shape == (0, 3)


@needs_cpp
def test_opcheck_and_compile():
    x, b = _inputs((2, 4, 3, 3))
    for act in (2, 7):
        torch.library.opcheck(torch.ops.fastgen.bias_act.default, (x, b, 1, act, 0.2, 1.4, -1.0))
        torch.library.opcheck(torch.ops.fastgen.bias_act.default, (x, None, 1, act, 0.2, 1.4, 0.5))
        g = torch.randn_like(x).requires_grad_()
        torch.library.opcheck(torch.ops.fastgen.bias_act_grad.default, (g, x, b, None, 1, act, 0.2, 1.4, -1.0, 1))
        torch.library.opcheck(torch.ops.fastgen.bias_act_grad.default,
                              (g, x, b, torch.randn_like(x), 1, act, 0.2, 1.4, 1.0, 2))
    f = torch.compile(lambda u, v: bias_act(u, v, act="lrelu", clamp=1.0, impl="cpp"), fullgraph=True)
    assert_close(f(x, b), bias_act(x, b, act="lrelu", clamp=1.0, impl="cpp"), rtol=0, atol=0, what="compiled")


@pytest.mark.skipif("triton" not in IMPLS, reason="no Triton interpreter")
def test_opcheck_triton_schema_and_autograd():
    from fastgen.ops.bias_act import _triton_ops

    x, b = _inputs((2, 4, 3, 3))
    torch.library.opcheck(_triton_ops(), (x, b, 1, 2, 0.2, 1.4, -1.0),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(act="softmax"), ValueError, "act must be one of"),
    (dict(b=torch.zeros(5)), ValueError, r"b must have shape"),
    (dict(dim=4), ValueError, "dim = 4 is out of range"),
    (dict(dim=1.0), TypeError, "dim must be an int"),
    (dict(clamp=-1.0), ValueError, "clamp must be >= 0"),
    (dict(gain=float("nan")), ValueError, "gain must be a finite number"),
    (dict(b=torch.zeros(4, dtype=torch.int64)), TypeError, "b must be a floating-point"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(exc, match=match):
        bias_act(x, **kw)


def test_integer_x_is_refused():
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        bias_act(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1", reason="triton runs on CPU here")
def test_triton_on_cpu_is_a_clear_error():
    with pytest.raises(backend.BackendUnavailableError, match="triton"):
        bias_act(torch.randn(2, 3), impl="triton")


def test_bias_act_module():
    from fastgen.nn import BiasAct

    m = BiasAct(6, "lrelu", clamp=2.0, bias_init=0.1)
    assert list(dict(m.named_parameters())) == ["bias"] and torch.equal(m.bias.detach(), torch.full((6,), 0.1))
    x = torch.randn(3, 6, 4, 4, requires_grad=True)
    want = torch.clamp(torch.nn.functional.leaky_relu(x + 0.1, 0.2) * math.sqrt(2), -2, 2)
    assert_close(m(x), want, rtol=1e-6, atol=1e-6, what="BiasAct")
    m(x).sum().backward()
    assert m.bias.grad.shape == (6,)
    feats = BiasAct(5, "silu", dim=-1)(torch.randn(4, 5))
    assert feats.shape == (4, 5)
    assert BiasAct(0, "relu").bias is None
    with pytest.raises(ValueError, match="act must be one of"):
        BiasAct(4, "mish")
