"""fastgen.functional.conv2d / conv_transpose2d (torch.ops.fastgen.conv2d, conv2d_grad_input,
conv2d_grad_weight): against F.conv2d / F.conv_transpose2d in every order of gradient (fp32 on a
grid of strides, paddings, dilations, groups, bias and layouts; gradcheck / gradgradcheck and a
third order in float64), that a backward computes only the gradients it is asked for (R1's first
backward computes no weight gradient), that PyTorch's batch-transposed double-backward
convolution is gone, the custom ops' registration (opcheck, torch.compile) and bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fastgen import backend
from fastgen.functional import conv2d, conv_transpose2d

from helpers import assert_close

HAVE_CPP = backend.op_impl_available("conv2d", "cpp", "cpu")[0]
pytestmark = pytest.mark.skipif(not HAVE_CPP, reason="fastgen._C is not built")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ConvCalls(TorchDispatchMode):
    """Records the aten convolution calls below autograd: forward convolutions (with their weight
    shapes) and convolution_backward output masks."""

    def __init__(self):
        super().__init__()
        self.forward, self.masks = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten._convolution):
            self.forward.append(tuple(args[1].shape))
        elif func.overloadpacket is torch.ops.aten.convolution_backward:
            self.masks.append(tuple(args[-1]))
        return func(*args, **kwargs)


def _grads_to_order(f, inputs, order, seed=0):
    """sum(y * r) differentiated `order` times (each time the gradient's squared norm, as R1 does),
    returning the final gradients w.r.t. every input."""
    g = torch.Generator().manual_seed(seed)
    y = f(*inputs)
    out = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for _ in range(order - 1):
        gs = torch.autograd.grad(out, inputs, create_graph=True, materialize_grads=True)
        out = sum((gi * torch.randn(gi.shape, generator=g, dtype=gi.dtype)).sum() + gi.square().sum() for gi in gs)
    return y, torch.autograd.grad(out, inputs, materialize_grads=True)


CASES = [  # (N, C_in, C_out, H, W, k, stride, padding, dilation, groups, bias)
    (2, 4, 6, 9, 9, 3, 1, 1, 1, 1, True),
    (2, 4, 6, 9, 8, 3, 2, 0, 1, 1, False),
    (3, 4, 4, 10, 7, 3, 2, 1, 1, 2, True),
    (1, 6, 3, 8, 8, 1, 1, 0, 1, 1, True),
    (2, 4, 8, 11, 9, (3, 2), (2, 1), (1, 0), (2, 1), 4, False),
    (2, 3, 5, 7, 7, 4, 3, 2, 1, 1, True),
]


def _case_tensors(case, dtype, channels_last=False, seed=0):
    n, ci, co, h, w, k, s, p, d, g, has_bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(co, ci // g, kh, kw, generator=gen, dtype=dtype) * 0.3
    b = torch.randn(co, generator=gen, dtype=dtype) if has_bias else None
    ts = [t.requires_grad_() for t in (x, wt, b) if t is not None]
    return ts, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_matches_torch_in_every_order(case, channels_last, order):
    ts, kw = _case_tensors(case, torch.float32, channels_last)

    def fast(*a):
        return conv2d(*a, **kw, impl="cpp") if len(a) == 3 else conv2d(*a, None, **kw, impl="cpp")

    def ref(*a):
        return F.conv2d(*a, **kw) if len(a) == 3 else F.conv2d(*a, None, **kw)

    y, g = _grads_to_order(fast, ts, order)
    y_ref, g_ref = _grads_to_order(ref, ts, order)
    assert_close(y, y_ref, rtol=1e-5, atol=1e-5, what="forward")
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(
            memory_format=torch.channels_last)
    for a, e, name in zip(g, g_ref, ("x", "weight", "bias")):
        scale = e.abs().max().item() + 1e-6
        assert_close(a / scale, e / scale, rtol=1e-5, atol=3e-5, what=f"order-{order} gradient of {name}")


@pytest.mark.parametrize("case", [CASES[1], CASES[4]])
def test_gradcheck_and_gradgradcheck_float64(case):
    ts, kw = _case_tensors(case, torch.float64)

    def f(*a):
        return conv2d(*a, **kw, impl="cpp") if len(a) == 3 else conv2d(*a, None, **kw, impl="cpp")

    assert torch.autograd.gradcheck(f, ts)
    assert torch.autograd.gradgradcheck(f, ts)

    def grad_x(*a):  # gradients of the first backward, differentiated twice more (third order)
        return torch.autograd.grad(f(*a).square().sum(), a[:2], create_graph=True)

    assert torch.autograd.gradgradcheck(grad_x, ts)


def test_grad_ops_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    gy = torch.randn(2, 6, 4, 2, dtype=torch.float64, generator=g, requires_grad=True)
    args = ([2, 2], [1, 0], [1, 1], 2)
    gi = torch.ops.fastgen.conv2d_grad_input
    gw = torch.ops.fastgen.conv2d_grad_weight
    assert torch.autograd.gradgradcheck(lambda a, b: gi(a, b, list(x.shape), *args), (gy, w))
    assert torch.autograd.gradgradcheck(lambda a, b: gw(a, b, list(w.shape), *args), (gy, x))
    # they are the derivatives of the forward
    y = torch.ops.fastgen.conv2d(x, w, None, *args)
    ex, ew = torch.autograd.grad(y, (x, w), gy)
    assert_close(gi(gy, w, list(x.shape), *args), ex, rtol=1e-12, atol=1e-12, what="grad_input")
    assert_close(gw(gy, x, list(w.shape), *args), ew, rtol=1e-12, atol=1e-12, what="grad_weight")


@pytest.mark.parametrize("stride,padding,output_padding,groups,dilation", [
    (2, 1, 1, 1, 1), (2, 0, 0, 2, 1), (3, 1, 2, 1, 1), (1, 2, 0, 1, 2), ((2, 1), (0, 1), (1, 0), 1, 1)])
def test_conv_transpose2d_matches_torch(stride, padding, output_padding, groups, dilation):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)
    w = torch.randn(4, 6 // groups, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    args = (stride, padding, output_padding, groups, dilation)
    y, gs = _grads_to_order(lambda *a: conv_transpose2d(*a, *args, impl="cpp"), [x, w, b], 2)
    y_ref, gs_ref = _grads_to_order(lambda *a: F.conv_transpose2d(*a, *args), [x, w, b], 2)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, rtol=1e-5, atol=1e-5, what="forward")
    for a, e, name in zip(gs, gs_ref, ("x", "weight", "bias")):
        scale = e.abs().max().item() + 1e-6
        assert_close(a / scale, e / scale, rtol=1e-5, atol=3e-5, what=f"second-order gradient of {name}")


def test_r1_first_backward_computes_no_weight_gradient_and_double_backward_uses_backward_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g, requires_grad=True)
    w1 = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
    w2 = torch.randn(8, 8, 3, 3, generator=g, requires_grad=True)

    def d(x):
        h = F.leaky_relu(conv2d(x, w1, padding=1, impl="cpp"), 0.2)
        return conv2d(h, w2, stride=2, padding=1, impl="cpp").mean(dim=[1, 2, 3])

    with ConvCalls() as first:
        gx, = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    # dD/dx needs the data gradient of both layers, but no weight gradient
    assert first.masks and all(not m[1] for m in first.masks), first.masks
    with ConvCalls() as second:
        gx.square().sum().backward()
    assert w1.grad is not None and w2.grad is not None
    # every weight-shaped result comes from convolution_backward; no forward convolution with a
    # batch-transposed (H x W)-sized "kernel" (PyTorch's double-backward weight term)
    for shape in second.forward:
        assert shape in ((8, 3, 3, 3), (8, 8, 3, 3)), f"unexpected forward convolution with weight {shape}"
    assert sum(m[1] for m in second.masks) >= 2
    # and the same numbers as PyTorch's own
    w1_ref, w2_ref = w1.detach().clone().requires_grad_(), w2.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    h = F.leaky_relu(F.conv2d(xr, w1_ref, padding=1), 0.2)
    gxr, = torch.autograd.grad(F.conv2d(h, w2_ref, stride=2, padding=1).mean(dim=[1, 2, 3]).sum(), xr,
                               create_graph=True)
    gxr.square().sum().backward()
    assert_close(w1.grad, w1_ref.grad, rtol=1e-4, atol=1e-6, what="R1 gradient of w1")
    assert_close(w2.grad, w2_ref.grad, rtol=1e-4, atol=1e-6, what="R1 gradient of w2")


def test_first_order_backward_is_one_call_with_the_needed_outputs():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    with ConvCalls() as calls:
        conv2d(x, w, b, padding=1, impl="cpp").square().sum().backward()
    assert calls.masks == [(False, True, True)]
    with ConvCalls() as calls:
        xr = x.clone().requires_grad_()
        conv2d(xr, w.detach(), None, padding=1, impl="cpp").sum().backward()
    assert calls.masks == [(True, False, False)]
    with torch.no_grad():
        y = conv2d(x, w, b, impl="cpp")
    assert y.grad_fn is None


def test_dtypes_and_empty_batch():
    for dtype in (torch.float64, torch.bfloat16):
        x, w = torch.randn(2, 3, 6, 6, dtype=dtype), torch.randn(4, 3, 3, 3, dtype=dtype)
        assert_close(conv2d(x, w, padding=1, impl="cpp"), F.conv2d(x, w, padding=1), rtol=1e-2 if dtype ==
                     torch.bfloat16 else 1e-12, atol=1e-2 if dtype == torch.bfloat16 else 1e-12, what=str(dtype))
    y = conv2d(torch.randn(0, 3, 6, 6), torch.randn(4, 3, 3, 3), impl="cpp")
    assert y.shape == (0, 4, 4, 4)


def test_backend_torch_is_plain_pytorch():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3)
    with backend.use_backend("torch"):
        y = conv2d(x, w, padding=1)
    assert "Convolution" in type(y.grad_fn).__name__
    assert "CppFunction" in type(conv2d(x, w, padding=1).grad_fn).__name__  # auto on CPU: the C++ op


# ----------------------------------------------------------------------------- registration
def test_opcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 6, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    gy = torch.randn(2, 6, 4, 3, generator=g, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.conv2d.default, (x, w, b, [2, 2], [1, 1], [1, 1], 2))
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.fastgen.conv2d.default, (xcl, w, None, [1, 2], [0, 1], [1, 1], 2))
    torch.library.opcheck(torch.ops.fastgen.conv2d_grad_input.default, (gy, w, [2, 4, 7, 6], [2, 2], [1, 1], [1, 1], 2))
    torch.library.opcheck(torch.ops.fastgen.conv2d_grad_weight.default,
                          (gy, x, [6, 2, 3, 3], [2, 2], [1, 1], [1, 1], 2))


def test_torch_compile_fullgraph_forward_and_backward():
    def block(x, w):
        return conv_transpose2d(F.leaky_relu(conv2d(x, w, padding=1, impl="cpp")), w.transpose(0, 1), stride=2,
                                impl="cpp")

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 3, 3, 3, requires_grad=True)
    y, yc = block(x, w), compiled(x, w)
    assert_close(yc, y, rtol=1e-5, atol=1e-5, what="compiled forward")
    gy = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(yc, (x, w), gy), torch.autograd.grad(y, (x, w), gy)):
        assert_close(a, e, rtol=1e-5, atol=1e-5, what="compiled backward")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,exc,match", [
    (dict(x=torch.randn(3, 8, 8)), ValueError, "x must be 4-D"),
    (dict(x=torch.ones(1, 3, 8, 8, dtype=torch.int32)), TypeError, "x must be a floating-point"),
    (dict(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, "x has 3 channels"),
    (dict(bias=torch.randn(4, 1)), ValueError, "bias must be a 1-D tensor"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding=(1, 2, 3)), TypeError, "padding must be an int or a pair"),
    (dict(padding="same"), TypeError, "padding must be an int or a pair"),
    (dict(dilation=-1), ValueError, "dilation must be >= 1"),
    (dict(groups=0), ValueError, "groups must be an int >= 1"),
    (dict(x="x"), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    args = dict(x=torch.randn(1, 3, 8, 8), weight=torch.randn(4, 3, 3, 3), bias=None, stride=1, padding=0,
                dilation=1, groups=1)
    args.update(kw)
    with pytest.raises(exc, match=match):
        conv2d(**args, impl="cpp")


def test_bad_input_to_the_raw_ops():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="stride must be two ints >= 1"):
        torch.ops.fastgen.conv2d(x, w, None, [0, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.fastgen.conv2d(x, w, torch.randn(3), [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="input_size"):
        torch.ops.fastgen.conv2d_grad_input(torch.randn(1, 4, 6, 6), w, [1, 5, 8, 8], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="weight_size"):
        torch.ops.fastgen.conv2d_grad_weight(torch.randn(1, 4, 6, 6), x, [4, 2, 3, 3], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(TypeError, match="weight has dtype"):
        torch.ops.fastgen.conv2d(x, w.double(), None, [1, 1], [0, 0], [1, 1], 1)


def test_conv_transpose2d_bad_input():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(x, torch.randn(4, 2, 3, 3), stride=2, output_padding=2, impl="cpp")
    with pytest.raises(ValueError, match="x has 4 channels"):
        conv_transpose2d(x, torch.randn(3, 2, 3, 3), impl="cpp")


def test_models_route_through_it():
    """conv2d_resample (StyleGAN2's layers) runs on fastgen.conv2d: its convolutions are the C++ op."""
    from fastgen.functional import conv2d_resample, setup_filter
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(6, 4, 3, 3)
    for kw in (dict(down=2), dict(up=2), dict()):
        y = conv2d_resample(x, w, setup_filter([1, 3, 3, 1]), padding=1, **kw)
        names = set()
        stack = [y.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None:
                continue
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
        assert any("CppFunction" in n for n in names) and not any(n.startswith("Convolution") for n in names), names


# ----------------------------------------------------------------------------- fastgen.nn.Conv2d
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1, bias=False),
                                dict(padding=2, padding_mode="reflect", groups=2), dict(padding="same"),
                                dict(padding=1, padding_mode="circular", dilation=2)])
def test_nn_conv2d_is_nn_conv2d_with_every_order_on_the_library_kernels(kw):
    from fastgen.nn import Conv2d
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 6, 3, **kw)
    mod = Conv2d(4, 6, 3, **kw)
    mod.load_state_dict(ref.state_dict())
    assert isinstance(mod, torch.nn.Conv2d) and mod.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 4, 9, 9)
    params = [p for p in mod.parameters()]
    y, g = _grads_to_order(lambda xx, *ps: mod(xx), [x.clone().requires_grad_()] + params, 2)
    y_ref, g_ref = _grads_to_order(lambda xx, *ps: ref(xx), [x.clone().requires_grad_()] + list(ref.parameters()), 2)
    assert_close(y, y_ref, rtol=1e-5, atol=1e-5, what="forward")
    for a, e in zip(g, g_ref):
        scale = e.abs().max().item() + 1e-6
        assert_close(a / scale, e / scale, rtol=1e-5, atol=3e-5, what="second-order gradients")
    if kw.get("padding") != "same":  # string padding runs nn.Conv2d's own path
        assert "CppFunction" in type(mod(x.requires_grad_()).grad_fn).__name__


def test_nn_conv2d_spectral_norm_and_autocast():
    from torch.nn.utils.parametrizations import spectral_norm
    from fastgen.nn import Conv2d
    torch.manual_seed(0)
    mod = spectral_norm(Conv2d(3, 5, 3, padding=1))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    mod.eval()
    y = mod(x)
    assert_close(y, F.conv2d(x, mod.weight, mod.bias, padding=1), rtol=1e-6, atol=1e-6, what="spectral norm")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = mod(x)
    assert yb.dtype == torch.bfloat16
    assert_close(yb.float(), y, rtol=3e-2, atol=3e-2, what="autocast bf16")
    gx, = torch.autograd.grad(yb.float().sum(), x)
    assert gx.dtype == torch.float32 and torch.isfinite(gx).all()
