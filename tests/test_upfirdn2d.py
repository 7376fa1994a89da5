"""fastgen.functional.upfirdn2d (StyleGAN2's upsample + pad + FIR filter + downsample): the C++ CPU
kernel and the reference against an independent naive formula, every up/down combination, padding
and filter shapes, layouts, dtypes, every order of gradient, the custom op's registration
(opcheck, torch.compile) and bad input. The Triton kernel: tests/test_upfirdn2d_triton.py."""
import itertools
import math
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastgen import backend
from fastgen.functional import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from fastgen.ops.upfirdn2d import grad_args, upfirdn2d_reference

from helpers import assert_close

HAVE_CPP = backend.op_impl_available("upfirdn2d", "cpp", "cpu")[0]
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="fastgen._C is not built")


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of tiny calls: one thread (on a loaded 2-core machine every parallel region of the
    reference's conv2d can wait tens of ms for a descheduled thread). test_threads_split_rows_anywhere
    covers the multi-threaded splits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip=False, gain=1.0):
    """The definition, step by step in float64: a zero canvas with x written at multiples of up, a
    bigger zero canvas holding it at the padding offset (cropped by slicing when negative), and the
    correlation with the flipped filter as one strided slice-and-add per tap."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    x = x.double()
    n, c, h, w = x.shape
    f = torch.ones(1, 1, dtype=torch.float64) if f is None else f.double()
    if f.dim() == 1:
        f = f[:, None] * f[None, :]
    fh, fw = f.shape
    u = torch.zeros(n, c, h * uy, w * ux, dtype=torch.float64)
    u[:, :, ::uy, ::ux] = x
    hp, wp = h * uy + py0 + py1, w * ux + px0 + px1
    big = torch.zeros(n, c, h * uy + abs(py0) + abs(py1), w * ux + abs(px0) + abs(px1), dtype=torch.float64)
    big[:, :, max(py0, 0):max(py0, 0) + h * uy, max(px0, 0):max(px0, 0) + w * ux] = u
    p = big[:, :, max(-py0, 0):max(-py0, 0) + hp, max(-px0, 0):max(-px0, 0) + wp]
    k = f if flip else f.flip([0, 1])
    ho, wo = (hp - fh) // dy + 1, (wp - fw) // dx + 1
    y = torch.zeros(n, c, ho, wo, dtype=torch.float64)
    for a in range(fh):
        for b in range(fw):
            y += k[a, b] * p[:, :, a:a + (ho - 1) * dy + 1:dy, b:b + (wo - 1) * dx + 1:dx]
    return y * gain


def _cpp(x, f, up, down, pad, flip=False, gain=1.0):
    return torch.ops.fastgen.upfirdn2d(x, f, *up, *down, *pad, flip, gain)


def _random_case(rng, up, down, hw=(5, 4)):
    """A random filter (1-D or 2-D, odd or even, non-symmetric), padding that keeps the output
    non-empty (often negative or asymmetric), flip and gain."""
    sep = rng.random() < 0.5
    fw = rng.randint(1, 6)
    fh = fw if sep else rng.randint(1, 6)
    f = torch.randn(fw, dtype=torch.float64) if sep else torch.randn(fh, fw, dtype=torch.float64)
    h, w = hw
    while True:
        pad = tuple(rng.randint(-3, 4) for _ in range(4))
        if (h * up[1] + pad[2] + pad[3] - fh) // down[1] >= 0 and (w * up[0] + pad[0] + pad[1] - fw) // down[0] >= 0:
            break
    return f, pad, rng.random() < 0.5, rng.choice([1.0, 0.5, -1.75])


# ----------------------------------------------------------------------------- forward
def test_naive_formula_on_a_hand_computed_case():
    x = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 1, 2, 2)  # [[1, 2], [3, 4]]
    # up 2 in x only, filter [1, 2] along x (convolution): u row 0 = [1, 0, 2, 0] -> pad 1 left
    # -> [0, 1, 0, 2, 0]; conv with [1, 2] (valid) -> [2*0+1*1, 2*1+0, 2*0+2, 2*2+0] = [1, 2, 2, 4]
    f = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = naive_upfirdn2d(x, f, up=(2, 1), pad=(1, 0, 0, 0))
    assert y.tolist() == [[[[1.0, 2.0, 2.0, 4.0], [3.0, 6.0, 4.0, 8.0]]]]
    assert_close(upfirdn2d_reference(x, f, (2, 1), 1, (1, 0, 0, 0)), y, what="reference")


def test_every_up_down_combination_against_the_naive_formula():
    """All (upx, upy, downx, downy) in {1, 2, 3, 4}^4 (anisotropic included), each with a random
    filter / padding / flip / gain: the reference (float64) and the C++ kernel (float64 and fp32)."""
    rng = random.Random(0)
    for up_down in itertools.product((1, 2, 3, 4), repeat=4):
        up, down = up_down[:2], up_down[2:]
        f, pad, flip, gain = _random_case(rng, up, down)
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
        want = naive_upfirdn2d(x, f, up, down, pad, flip, gain)
        what = f"up {up} down {down} f {tuple(f.shape)} pad {pad} flip {flip} gain {gain}"
        assert_close(upfirdn2d_reference(x, f, up, down, pad, flip, gain), want, rtol=1e-12, atol=1e-12,
                     what="reference " + what)
        if HAVE_CPP:
            assert_close(_cpp(x, f, up, down, pad, flip, gain), want, rtol=1e-12, atol=1e-12, what="cpp f64 " + what)
            got = _cpp(x.float(), f.float(), up, down, pad, flip, gain)
            assert got.dtype == torch.float32
            assert_close(got.double(), want, rtol=1e-5, atol=1e-5, what="cpp f32 " + what)


@needs_cpp
@pytest.mark.parametrize("up,down,fshape,pad", [
    ((2, 2), (1, 1), (4,), (2, 1, 2, 1)),          # upsample2d [1, 3, 3, 1]
    ((1, 1), (2, 2), (4,), (1, 1, 1, 1)),          # downsample2d
    ((1, 1), (1, 1), (4,), (2, 2, 2, 2)),          # blur before a 3x3 stride-2 conv
    ((2, 1), (1, 3), (3, 5), (0, 3, -2, 4)),       # anisotropic, 2-D odd non-square filter
    ((1, 1), (1, 1), (12,), (-3, 20, 6, -2)),      # filter larger than the input, crop + pad
    ((4, 4), (3, 3), (2, 2), (5, -4, 1, 1)),       # up and down on both axes
    ((1, 1), (10, 1), (3,), (1, 1, 1, 1)),         # a large factor (bounds-checked path)
])
def test_cpp_layouts_and_odd_shapes(up, down, fshape, pad):
    f = torch.randn(fshape, dtype=torch.float64)
    base = torch.randn(3, 5, 11, 9, dtype=torch.float64)
    want = naive_upfirdn2d(base, f, up, down, pad, False, 1.5)
    views = {
        "contiguous": base.float(),
        "channels_last": base.float().contiguous(memory_format=torch.channels_last),
        "crop view": torch.nn.functional.pad(base.float(), [1, 2, 3, 1])[:, :, 3:-1, 1:-2],
        "transposed HW": base.float().transpose(2, 3).contiguous().transpose(2, 3),
        "channel slice of channels_last": torch.randn(3, 9, 11, 9).contiguous(
            memory_format=torch.channels_last)[:, 2:7],
        "every other channel": torch.randn(3, 10, 11, 9)[:, ::2],
    }
    views["channel slice of channels_last"].copy_(base)
    views["every other channel"].copy_(base)
    for name, x in views.items():
        y = _cpp(x, f.float(), up, down, pad, False, 1.5)
        assert_close(y.double(), want, rtol=1e-5, atol=1e-5, what=name)
        cl_in = name in ("channels_last", "channel slice of channels_last")
        assert y.is_contiguous(memory_format=torch.channels_last if cl_in else torch.contiguous_format), name
        # the public API (channels_last output layout preserved)
        z = upfirdn2d(x, f.float(), up, down, pad, gain=1.5)
        assert torch.equal(z, y) and z.stride() == y.stride(), name


@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_threads_split_rows_anywhere(layout):
    """Several threads: the work ranges start and end inside planes / rows (the kernels resume at
    any output row); results equal the single-threaded ones exactly."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 5, 160, 150)  # 10 planes: 3 threads split inside planes
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    want = [_cpp(x, f, up, down, pad) for up, down, pad in (((2, 2), (1, 1), (2, 1, 2, 1)),
                                                            ((1, 1), (2, 2), (1, 1, 1, 1)))]
    torch.set_num_threads(3)
    got = [_cpp(x, f, up, down, pad) for up, down, pad in (((2, 2), (1, 1), (2, 1, 2, 1)),
                                                           ((1, 1), (2, 2), (1, 1, 1, 1)))]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@needs_cpp
def test_batch_one_none_filter_and_empty():
    x = torch.randn(1, 1, 7, 3)
    assert_close(upfirdn2d(x, None, up=2, down=(1, 2), padding=(0, 0, 1, -1), gain=3.0).double(),
                 naive_upfirdn2d(x, None, (2, 2), (1, 2), (0, 0, 1, -1), gain=3.0), rtol=1e-6, atol=1e-6, what="None")
    f = setup_filter([1, 3, 3, 1])
    for shape in ((0, 4, 8, 8), (2, 0, 8, 8)):
        for impl in ("cpp", "torch"):
            y = upsample2d(torch.randn(shape), f, impl=impl)
            assert y.shape == shape[:2] + (16, 16)
        assert _cpp(torch.randn(shape), f, (2, 2), (1, 1), (2, 1, 2, 1)).shape == shape[:2] + (16, 16)
    # H = 0: the op's output is only padding (zeros)
    y = _cpp(torch.randn(2, 3, 0, 4), f, (1, 1), (1, 1), (2, 2, 3, 3))
    assert y.shape == (2, 3, 3, 5) and not y.any()


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32(dtype):
    """Only the final rounding to the storage type: |y - y64| <= ulp/2 of the result plus fp32
    rounding of the terms. A 9x9 filter sums 81 taps (21 land on samples with up 2): a half
    precision accumulator would be off by many ulps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 7, generator=g).to(dtype)
    f2 = torch.rand(9, 9, generator=g, dtype=torch.float64) + 0.5
    for (up, down, pad), layout in itertools.product([((1, 1), (1, 1), (4, 4, 4, 4)), ((2, 2), (1, 1), (5, 4, 5, 4)),
                                                      ((1, 1), (2, 2), (3, 4, 3, 4))],
                                                     ("contiguous", "channels_last")):
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        for f in (f2, f2[4]):
            y = _cpp(xl, f.float(), up, down, pad, False, 1.0)
            assert y.dtype == dtype
            want = naive_upfirdn2d(x.double(), f.float(), up, down, pad)
            mag = naive_upfirdn2d(x.double().abs(), f.float().abs(), up, down, pad)
            ulp = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(want.abs().clamp_min(1e-30)))
            err = (y.double() - want).abs()
            bound = 0.5 * ulp + 1e-6 * mag + 1e-30
            worst = (err / bound).max().item()
            assert worst <= 1.0, \
                f"{dtype} {layout} up {up} down {down} f {tuple(f.shape)}: error {worst:.2f}x the bound"


@pytest.mark.parametrize("impl", ["torch"] + (["cpp"] if HAVE_CPP else []))
def test_helpers_output_sizes(impl):
    x = torch.randn(2, 3, 8, 6)
    for taps in ([1, 3, 3, 1], [1, 2, 1], [1, 4, 6, 4, 1], [1, 1]):
        f = setup_filter(taps)
        assert upsample2d(x, f, impl=impl).shape == (2, 3, 16, 12)
        assert upsample2d(x, f, up=(3, 2), impl=impl).shape == (2, 3, 16, 18)
        assert downsample2d(x, f, impl=impl).shape == (2, 3, 4, 3)
        assert filter2d(x, f, impl=impl).shape == (2, 3, 8, 6)
        assert filter2d(x, f, padding=1, impl=impl).shape == (2, 3, 10, 8)
    # a normalised filter keeps a constant image constant away from the borders
    ones = torch.ones(1, 2, 8, 8)
    f = setup_filter([1, 3, 3, 1])
    assert_close(upsample2d(ones, f, impl=impl)[..., 3:-3, 3:-3], torch.ones(1, 2, 10, 10), what="up keeps mean")
    assert_close(downsample2d(ones, f, impl=impl)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2), what="down keeps mean")
    assert_close(filter2d(ones, f, impl=impl)[..., 2:-2, 2:-2], torch.ones(1, 2, 4, 4), what="blur keeps mean")


@needs_cpp
def test_default_dispatch_on_cpu_is_cpp_and_float64_runs_the_reference():
    assert backend.resolve("upfirdn2d", torch.device("cpu")) == "cpp"

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    f = setup_filter([1, 3, 3, 1])
    for dtype, want_cpp in ((torch.float32, True), (torch.float64, False)):
        with Log() as log:
            upsample2d(torch.randn(1, 2, 4, 4, dtype=dtype), f)
        assert any("fastgen.upfirdn2d" in o for o in log.ops) == want_cpp, (dtype, log.ops)


# ----------------------------------------------------------------------------- gradients
GRAD_CASES = [
    ((2, 2), (1, 1), (4,), (2, 1, 2, 1), False, 4.0),
    ((1, 1), (2, 2), (4,), (1, 1, 1, 1), False, 1.0),
    ((3, 1), (2, 4), (3, 2), (-1, 2, 3, -2), True, -0.5),
    ((1, 2), (3, 1), (5,), (4, -3, 0, 1), True, 1.5),
    ((4, 3), (3, 2), (2, 3), (1, 1, 0, 0), False, 2.0),
]


def test_grad_padding_formula():
    """grad_args gives the adjoint: <y(x), g> == <x, op(g)> for random x, g (float64, reference op)."""
    rng = random.Random(3)
    for up_down in itertools.product((1, 2, 3), repeat=4):
        up, down = up_down[:2], up_down[2:]
        f, pad, flip, gain = _random_case(rng, up, down, hw=(4, 5))
        x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
        y = naive_upfirdn2d(x, f, up, down, pad, flip, gain)
        g = torch.randn_like(y)
        fw, fh = (f.shape[-1], f.shape[0])
        gup, gdown, gpad, gflip = grad_args((4, 5), y.shape[2:], fw, fh, up, down, pad, flip)
        dx = naive_upfirdn2d(g, f, gup, gdown, gpad, gflip, gain)
        assert dx.shape == x.shape, (up, down, pad, fw, fh)
        assert math.isclose((y * g).sum().item(), (x * dx).sum().item(), rel_tol=1e-10, abs_tol=1e-10), \
            (up, down, pad, tuple(f.shape), flip)


@needs_cpp
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"up{c[0]}-down{c[1]}-f{c[2]}")
def test_gradcheck_and_gradgradcheck_through_the_custom_op(case):
    """float64 through torch.ops.fastgen.upfirdn2d itself (its registered autograd: the backward
    is the same op, so gradgradcheck checks the op's second order too)."""
    up, down, fshape, pad, flip, gain = case
    f = torch.randn(fshape, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda t: _cpp(t, f, up, down, pad, flip, gain)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_reference_gradgradcheck():
    f = torch.randn(3, 2, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    for up, down, pad in (((2, 1), (1, 1), (1, 0, -1, 2)), ((1, 1), (2, 3), (2, 1, 0, 1))):
        fn = lambda t: upfirdn2d(t, f, up, down, pad, gain=1.5)  # noqa: E731  (float64: the reference)
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def _orders(fn, x, n):
    """Gradients of orders 1..n of a loss nonlinear in y, each order differentiated again."""
    y = fn(x)
    grads = torch.autograd.grad((y * y.sin()).sum(), x, create_graph=True)[0]
    out = [grads]
    for _ in range(n - 1):
        grads = torch.autograd.grad((grads * grads.detach().cos()).sum() + grads.square().sum(), x,
                                    create_graph=True)[0]
        out.append(grads)
    return out


@needs_cpp
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"up{c[0]}-down{c[1]}-f{c[2]}")
def test_fp32_first_second_third_order_vs_float64_reference(case):
    up, down, fshape, pad, flip, gain = case
    f = torch.randn(fshape, dtype=torch.float64)
    for layout in ("contiguous", "channels_last"):
        x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x32 = x.float().requires_grad_()
        x64 = x.clone().requires_grad_()
        got = _orders(lambda t: upfirdn2d(t, f.float(), up, down, pad, flip, gain, impl="cpp"), x32, 3)
        want = _orders(lambda t: upfirdn2d_reference(t, f, up, down, pad, flip, gain), x64, 3)
        for order, (g, w) in enumerate(zip(got, want), start=1):
            sc = max(w.abs().max().item(), 1.0)
            assert_close(g.double() / sc, w.detach() / sc, rtol=1e-5, atol=1e-5, what=f"{layout} order {order}")


@needs_cpp
def test_every_order_runs_on_the_fused_op():
    """Forward, backward and double backward of upsample2d call only fastgen::upfirdn2d (no aten
    convolution): the backward is the op itself."""

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    u = torch.randn(2, 3, 8, 8)
    with Log() as log:
        y = upsample2d(x, f)
        gy = torch.randn_like(y).requires_grad_()
        gx, = torch.autograd.grad(y, x, gy, create_graph=True)
        dgy, = torch.autograd.grad(gx, gy, u)  # d<gx, u>/dgy: the forward again
    assert sum("fastgen.upfirdn2d" in o for o in log.ops) == 3, log.ops
    assert not any("convolution" in o for o in log.ops), log.ops
    assert gx.shape == x.shape
    assert_close(dgy, upsample2d(u, f), rtol=1e-6, atol=1e-6, what="d(gx)/d(gy) is the forward")


@needs_cpp
def test_filter_requiring_grad_is_refused():
    f = setup_filter([1, 2, 1]).requires_grad_()
    with pytest.raises(ValueError, match="f must not require grad"):
        upfirdn2d(torch.randn(1, 1, 4, 4), f)
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    y = torch.ops.fastgen.upfirdn2d(x, f, 1, 1, 1, 1, 1, 1, 1, 1, False, 1.0)
    with pytest.raises(RuntimeError, match="f is not differentiated"):
        y.sum().backward()


# ----------------------------------------------------------------------------- registration
@needs_cpp
def test_opcheck():
    op = torch.ops.fastgen.upfirdn2d.default
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    f1, f2 = setup_filter([1, 3, 3, 1]), torch.randn(3, 2)
    torch.library.opcheck(op, (x, f1, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0))
    torch.library.opcheck(op, (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(), f2,
                               1, 3, 2, 1, -1, 2, 0, 3, True, 0.5))
    torch.library.opcheck(op, (x, None, 1, 1, 2, 2, 0, 0, 0, 0, False, 1.0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_cpp
def test_torch_compile_fullgraph_forward_and_backward():
    f = setup_filter([1, 3, 3, 1])

    def block(x):
        return downsample2d(torch.nn.functional.leaky_relu(upsample2d(x, f, impl="cpp")), f, impl="cpp")

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y, yc = block(x), compiled(x)
    assert_close(yc, y, rtol=1e-6, atol=1e-6, what="compiled forward")
    gy = torch.randn_like(y)
    assert_close(torch.autograd.grad(yc, x, gy)[0], torch.autograd.grad(y, x, gy)[0], rtol=1e-6, atol=1e-6,
                 what="compiled backward")
    xcl = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert_close(compiled(xcl), block(xcl), rtol=1e-6, atol=1e-6, what="compiled channels_last")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,exc,match", [
    (dict(x=torch.randn(3, 8, 8)), ValueError, r"x must have shape \(N, C, H, W\)"),
    (dict(x=torch.ones(1, 1, 4, 4, dtype=torch.int32)), TypeError, "x has dtype torch.int32"),
    (dict(f=torch.ones(3, device="meta")), ValueError, "f is on meta"),
    (dict(f=torch.ones(2, 2, 2)), ValueError, "f must be a non-empty 1-D"),
    (dict(f=torch.ones(3, dtype=torch.int64)), TypeError, "f must be a floating-point"),
    (dict(up=0), ValueError, "up must be >= 1"),
    (dict(down=(2, 0)), ValueError, "down must be >= 1"),
    (dict(up=1.5), TypeError, "up must be an int"),
    (dict(padding=1.5), TypeError, "padding must be an int"),
    (dict(padding=(1, 2, 3)), TypeError, "padding must be an int"),
    (dict(padding=-3), ValueError, "the output would be empty"),
    (dict(gain=float("nan")), ValueError, "gain must be a finite number"),
    (dict(x="image"), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    args = dict(x=torch.randn(1, 2, 4, 4), f=setup_filter([1, 2, 1]), up=1, down=1, padding=0, gain=1.0)
    args.update(kw)
    with pytest.raises(exc, match=match):
        upfirdn2d(args.pop("x"), args.pop("f"), **args)


@needs_cpp
@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(3, 4, 4), None, 1, 1, 1, 1, 0, 0, 0, 0), ValueError, "x must have shape"),
    ((torch.ones(1, 1, 4, 4, dtype=torch.int64), None, 1, 1, 1, 1, 0, 0, 0, 0), TypeError, "x has dtype"),
    ((torch.randn(1, 1, 4, 4), torch.ones(2, 2, 2), 1, 1, 1, 1, 0, 0, 0, 0), ValueError, "f must be a non-empty"),
    ((torch.randn(1, 1, 4, 4), torch.ones(0), 1, 1, 1, 1, 0, 0, 0, 0), ValueError, "f must be a non-empty"),
    ((torch.randn(1, 1, 4, 4), torch.ones(3, dtype=torch.int32), 1, 1, 1, 1, 0, 0, 0, 0), TypeError,
     "f must be a floating-point"),
    ((torch.randn(1, 1, 4, 4), None, 0, 1, 1, 1, 0, 0, 0, 0), ValueError, "up must be in"),
    ((torch.randn(1, 1, 4, 4), None, 1, 1, 1, -2, 0, 0, 0, 0), ValueError, "down must be in"),
    ((torch.randn(1, 1, 4, 4), None, 1, 1, 1, 1, 0, 0, -2, -2), ValueError, "the output would be empty"),
    ((torch.randn(1, 1, 4, 4), None, 1, 1, 1, 1, 1 << 50, 0, 0, 0), ValueError, "padding must be in"),
])
def test_direct_op_calls_are_checked(args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.fastgen.upfirdn2d(*args, False, 1.0)


@needs_cpp
def test_huge_padding_next_to_a_huge_crop_stays_small():
    """Padding 10^9 on one side and a crop of 10^9 on the other: a small output that only sees
    padding, computed without buffers proportional to the padding (and its gradient too)."""
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    f = torch.tensor([1.0, 2.0, 3.0])
    for pad in ((10**9, -10**9 + 5, 0, 0), (-10**9 + 1, 10**9 + 1, 0, 0), (0, 0, 10**9, -10**9 + 3)):
        y = _cpp(x, f, (1, 1), (1, 1), pad, False, 1.0)
        assert y.shape == (1, 2, 3 + pad[2] + pad[3] - 2, 4 + pad[0] + pad[1] - 2) and not y.any()
        gx, = torch.autograd.grad(y, x, torch.ones_like(y))
        assert gx.shape == x.shape and not gx.any()
