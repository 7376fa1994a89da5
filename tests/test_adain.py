"""fastgen.functional.adain (StyleGAN's AdaIN on the fused group_norm kernels) against the textbook
formula: forward, gradients for x and both style tensors, second order with a loss nonlinear in
y, layouts, dtypes, the AdaIN module and bad input."""
import pytest
import torch

from fastgen import backend
from fastgen.functional import adain
from fastgen.nn import AdaIN
from fastgen.ops.adain import adain_reference

from helpers import assert_close

IMPLS = ["torch"] + [i for i in ("cpp", "triton") if backend.op_impl_available("group_norm", i, "cpu")[0]]


def _inputs(shape=(3, 5, 6, 4), dtype=torch.float32, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    s = (1 + 0.5 * torch.randn(shape[:2], generator=g, dtype=torch.float64)).to(dtype)
    b = torch.randn(shape[:2], generator=g, dtype=torch.float64).to(dtype)
    return tuple(t.requires_grad_() for t in (x, s, b))


def _textbook(x, s, b, eps=1e-5):
    """float64, written out: per-(n, c) mean and biased std over the spatial positions."""
    x, s, b = (t.detach().double().requires_grad_() for t in (x, s, b))
    flat = x.flatten(2)
    mu = flat.mean(-1)
    sigma = ((flat - mu[..., None]) ** 2).mean(-1).add(eps).sqrt()
    shape = x.shape[:2] + (1,) * (x.dim() - 2)
    return s.reshape(shape) * (x - mu.reshape(shape)) / sigma.reshape(shape) + b.reshape(shape), (x, s, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_textbook_formula(impl, layout):
    x, s, b = _inputs(layout=layout)
    y = adain(x, s, b, impl=impl)
    want, leaves = _textbook(x, s, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y.double(), want, rtol=1e-5, atol=1e-5, what="y")
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for name, a, r in zip(("x", "style_scale", "style_bias"), torch.autograd.grad(y, (x, s, b), gy),
                          torch.autograd.grad(want, leaves, gy.double())):
        assert_close(a.double(), r, rtol=1e-4, atol=1e-4, what=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_second_order_with_nonlinear_loss(impl):
    x, s, b = _inputs((2, 3, 5, 5), seed=2)

    def penalty(fn, leaves):
        y = fn(*leaves)
        gx, = torch.autograd.grad((y * y.sin()).sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(gx.square().sum(), leaves)

    want_leaves = tuple(t.detach().double().requires_grad_() for t in (x, s, b))
    got = penalty(lambda *a: adain(*a, impl=impl), (x, s, b))
    want = penalty(adain_reference, want_leaves)
    for name, a, r in zip(("x", "style_scale", "style_bias"), got, want):
        sc = max(r.abs().max().item(), 1.0)
        assert_close(a.double() / sc, r / sc, rtol=1e-4, atol=1e-4, what=f"second-order d{name}")


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision(dtype, tol):
    x, s, b = _inputs((2, 4, 8, 8), dtype=dtype)
    y = adain(x, s, b)
    assert y.dtype == dtype
    want, _ = _textbook(x, s, b)
    assert_close(y.double(), want, rtol=tol, atol=tol, what="y")


def test_float64_gradgradcheck_and_1d_spatial():
    x, s, b = _inputs((2, 3, 7), dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda *a: adain(*a), (x, s, b))
    x, s, b = _inputs((2, 3, 7))
    assert_close(adain(x, s, b).double(), _textbook(x, s, b)[0], rtol=1e-5, atol=1e-5, what="1-d")


def test_module_starts_as_instance_norm_and_learns_styles():
    torch.manual_seed(0)
    m = AdaIN(6, w_dim=8)
    x = torch.randn(4, 6, 5, 5)
    w = torch.randn(4, 8)
    with torch.no_grad():
        m.affine.weight.zero_()  # styles = the initial bias: y_s = 1, y_b = 0
    assert_close(m(x, w), torch.nn.functional.instance_norm(x, eps=1e-5), rtol=1e-5, atol=1e-5, what="init")
    torch.nn.init.normal_(m.affine.weight)
    m(x, w).square().mean().backward()
    assert m.affine.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,exc,match", [
    (dict(style_scale=torch.ones(2, 5)), ValueError, r"style_scale must have shape \(N, C\)"),
    (dict(style_bias=torch.ones(3, 4, 2)), ValueError, "style_bias must have shape"),
    (dict(x=torch.randn(3, 4)), ValueError, "at least one spatial dim"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    (dict(style_scale=torch.ones(3, 4, dtype=torch.int64)), TypeError, "style_scale must be a floating-point"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    args = dict(x=torch.randn(3, 4, 5, 5), style_scale=torch.ones(3, 4), style_bias=torch.zeros(3, 4), eps=1e-5)
    args.update(kw)
    with pytest.raises(exc, match=match):
        adain(**args)
