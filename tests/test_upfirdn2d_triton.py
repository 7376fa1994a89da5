"""The Triton kernels of upfirdn2d under TRITON_INTERPRET=1 (tests/conftest.py sets it): forward
against the naive formula over up/down/padding/filter shapes, both tilings (NCHW and channels_last
outputs) on strided inputs, fp16/bf16, float64, gradients of every order through the Triton op (its
backward is the op again), the op's registration and bad direct calls. Small shapes: the
interpreter is slow. torch.compile through the Triton op needs a GPU (see tests/test_gpu.py)."""
import random

import pytest
import torch

from fastgen import backend
from fastgen.functional import downsample2d, setup_filter, upfirdn2d, upsample2d
from fastgen.ops.upfirdn2d import upfirdn2d_reference

from helpers import assert_close
from test_upfirdn2d import _random_case, naive_upfirdn2d

pytestmark = pytest.mark.skipif(not backend.op_impl_available("upfirdn2d", "triton", "cpu")[0],
                                reason="no Triton interpreter (needs triton and TRITON_INTERPRET=1)")


def _op():
    from fastgen.ops.upfirdn2d import _triton_ops

    return _triton_ops()


def _tri(x, f, up, down, pad, flip=False, gain=1.0):
    return _op()(x, f, *up, *down, *pad, flip, gain)


def test_forward_against_the_naive_formula():
    """A spread of (up, down) pairs, anisotropic ones included, random filters (1-D / 2-D, odd /
    even, non-symmetric), padding (negative, asymmetric), flip and gain; fp32 and float64."""
    rng = random.Random(1)
    combos = [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (2, 2)), ((3, 1), (1, 2)), ((1, 4), (3, 1)),
              ((2, 3), (4, 2)), ((4, 2), (2, 3))]
    for up, down in combos:
        f, pad, flip, gain = _random_case(rng, up, down)
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
        want = naive_upfirdn2d(x, f, up, down, pad, flip, gain)
        what = f"up {up} down {down} f {tuple(f.shape)} pad {pad} flip {flip}"
        assert_close(_tri(x, f, up, down, pad, flip, gain), want, rtol=1e-12, atol=1e-12, what="f64 " + what)
        assert_close(_tri(x.float(), f.float(), up, down, pad, flip, gain).double(), want, rtol=1e-5, atol=1e-5,
                     what="f32 " + what)


@pytest.mark.parametrize("layout", ["channels_last", "crop view", "channel slice of channels_last"])
def test_layouts(layout):
    f = torch.tensor([1.0, -2.0, 3.5, 0.5])
    base = torch.randn(2, 5, 6, 7)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "crop view":
        x = torch.nn.functional.pad(base, [1, 2, 3, 1])[:, :, 3:-1, 1:-2]
    else:
        x = torch.randn(2, 8, 6, 7).contiguous(memory_format=torch.channels_last)[:, 1:6]
        x.copy_(base)
    for up, down, pad in (((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1))):
        y = _tri(x, f, up, down, pad, gain=0.5)
        assert_close(y.double(), naive_upfirdn2d(base, f, up, down, pad, gain=0.5), rtol=1e-5, atol=1e-5, what=layout)
        cl = layout != "crop view"
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision(dtype, tol):
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 3, 6, 5).to(dtype)
    y = upsample2d(x, f, impl="triton")
    assert y.dtype == dtype
    assert_close(y.double(), upfirdn2d_reference(x.double(), f, 2, 1, (2, 1, 2, 1), gain=4.0), rtol=tol, atol=tol,
                 what=str(dtype))


def test_gradients_every_order_through_the_triton_op():
    """First, second and third order of a loss nonlinear in y; the backward is the Triton op again."""
    f = torch.randn(3, 2, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)

    def orders(fn, t, n=3):
        y = fn(t)
        g = torch.autograd.grad((y * y.sin()).sum(), t, create_graph=True)[0]
        out = [g]
        for _ in range(n - 1):
            g = torch.autograd.grad((g * g.detach().cos()).sum() + g.square().sum(), t, create_graph=True)[0]
            out.append(g)
        return out

    up, down, pad = (2, 1), (1, 2), (1, 2, 0, 1)
    got = orders(lambda t: _tri(t, f, up, down, pad, True, 1.5), x.clone().requires_grad_())
    want = orders(lambda t: upfirdn2d_reference(t, f, up, down, pad, True, 1.5), x.clone().requires_grad_())
    for order, (g, w) in enumerate(zip(got, want), start=1):
        assert_close(g, w, rtol=1e-10, atol=1e-10, what=f"order {order}")
    x32 = torch.randn(1, 2, 8, 8, requires_grad=True)
    fs = setup_filter([1, 3, 3, 1])
    gy = torch.randn(1, 2, 4, 4)
    g_tri, = torch.autograd.grad(downsample2d(x32, fs, impl="triton"), x32, gy)
    g_ref, = torch.autograd.grad(downsample2d(x32, fs, impl="torch"), x32, gy)
    assert_close(g_tri, g_ref, rtol=1e-6, atol=1e-6, what="fp32 downsample2d grad")


def test_opcheck_schema_and_autograd():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    torch.library.opcheck(_op(), (x, setup_filter([1, 2, 1]), 2, 1, 1, 2, 1, 1, 0, 1, False, 2.0),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(3, 4, 4), None, 1, 1, 1, 1, 0, 0, 0, 0), ValueError, "x must have shape"),
    ((torch.ones(1, 1, 4, 4, dtype=torch.int64), None, 1, 1, 1, 1, 0, 0, 0, 0), TypeError, "x has dtype"),
    ((torch.randn(1, 1, 4, 4), torch.ones(2, 2, 2), 1, 1, 1, 1, 0, 0, 0, 0), ValueError, "f must be a non-empty"),
    ((torch.randn(1, 1, 4, 4), None, 0, 1, 1, 1, 0, 0, 0, 0), ValueError, "up and down must be >= 1"),
    ((torch.randn(1, 1, 4, 4), None, 1, 1, 1, 1, 0, 0, -2, -2), ValueError, "the output would be empty"),
])
def test_direct_calls_are_checked(args, exc, match):
    with pytest.raises(exc, match=match):
        _op()(*args, False, 1.0)


def test_public_api_dispatches_to_triton_when_forced():
    x = torch.randn(1, 2, 4, 4)
    f = setup_filter([1, 3, 3, 1])
    assert_close(upfirdn2d(x, f, padding=2, impl="triton"), upfirdn2d(x, f, padding=2, impl="torch"),
                 rtol=1e-6, atol=1e-6, what="forced triton")
    with backend.use_backend("triton"):
        assert upsample2d(x, f).shape == (1, 2, 8, 8)
