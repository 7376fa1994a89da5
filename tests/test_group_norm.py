"""group_norm (fused GroupNorm + scale/shift + SiLU/GELU): the C++ CPU op against the reference —
forward and all five grads over dtypes, layouts, shapes and options; the reference against
nn.GroupNorm-style PyTorch; gradcheck / gradgradcheck; double backward of the fused op; opcheck;
torch.compile; bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import group_norm
from fastgen.ops.group_norm import group_norm_reference
from helpers import assert_close

needs_cpp = pytest.mark.skipif(not backend.impl_available("cpp", "cpu")[0], reason="fastgen._C not built")

# (rtol, atol) of outputs / grads against the fp32-computed reference
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}
GRAD_TOL = {torch.float32: (1e-4, 2e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}


def make(shape, G, dtype=torch.float32, layout="contiguous", affine=True, mod=True, seed=0, param_dtype=None):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[0], shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    pd = param_dtype or torch.float32
    w = (1 + 0.5 * torch.randn(c, generator=g)).to(pd) if affine else None
    b = (0.5 * torch.randn(c, generator=g)).to(pd) if affine else None
    s = (0.5 * torch.randn(n, c, generator=g)).to(pd) if mod else None
    t = (0.5 * torch.randn(n, c, generator=g)).to(pd) if mod else None
    return x, w, b, s, t


def run(fn, x, G, w, b, s, t, act, gy=None):
    leaves = [v.detach().clone().requires_grad_() if v is not None else None for v in (x, w, b, s, t)]
    y = fn(leaves[0], G, leaves[1], leaves[2], activation=act, scale=leaves[3], shift=leaves[4])
    if gy is None:
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    inputs = [v for v in leaves if v is not None]
    grads = torch.autograd.grad(y, inputs, gy) if y.numel() or True else None
    return y, list(grads)


def cpp(*a, **k):
    return group_norm(*a, **k, impl="cpp")


def check_against_reference(shape, G, dtype, layout, act, affine=True, mod=True, param_dtype=None):
    x, w, b, s, t = make(shape, G, dtype, layout, affine, mod, param_dtype=param_dtype)
    y, grads = run(cpp, x, G, w, b, s, t, act)
    yr, grads_r = run(group_norm_reference, x, G, w, b, s, t, act)
    rt, at = TOL[dtype]
    assert y.dtype == x.dtype
    if layout == "channels_last" and x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, yr, what="y", rtol=rt, atol=at)
    rt, at = GRAD_TOL[dtype]
    names = ["x"] + [nm for nm, v in zip(("weight", "bias", "scale", "shift"), (w, b, s, t)) if v is not None]
    for nm, g, gr in zip(names, grads, grads_r):
        assert g.dtype == gr.dtype, nm
        scale_ = max(gr.float().abs().max().item(), 1.0) if gr.numel() else 1.0
        assert_close(g.float() / scale_, gr.float() / scale_, what=f"grad {nm}", rtol=rt, atol=at)


# ----------------------------------------------------------------------------- reference
def test_reference_is_groupnorm_then_modulation_then_activation():
    x, w, b, s, t = make((2, 8, 4, 4), 4)
    m = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    want = F.silu(m(x) * (1 + s[:, :, None, None]) + t[:, :, None, None])
    got = group_norm_reference(x, 4, w, b, activation="silu", scale=s[:, :, None, None], shift=t)
    torch.testing.assert_close(got, want)


def test_gradcheck_and_gradgradcheck_reference_float64():
    x, w, b, s, t = (v.double().requires_grad_() for v in make((2, 6, 3, 2), 3))
    for act in (None, "silu", "gelu"):
        f = lambda *a: group_norm_reference(a[0], 3, a[1], a[2], activation=act, scale=a[3], shift=a[4])  # noqa
        assert torch.autograd.gradcheck(f, (x, w, b, s, t))
        assert torch.autograd.gradgradcheck(f, (x, w, b, s, t))


def test_float64_runs_the_reference():
    x, w, b, s, t = (v.double() for v in make((2, 6, 3, 2), 3))
    got = group_norm(x, 3, w, b, activation="gelu", scale=s, shift=t, impl="cpp")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, group_norm_reference(x, 3, w, b, activation="gelu", scale=s, shift=t))


# ----------------------------------------------------------------------------- cpp vs reference
@needs_cpp
@pytest.mark.parametrize("act", [None, "silu", "gelu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpp_matches_reference_dtypes_layouts(dtype, layout, act):
    check_against_reference((3, 12, 5, 7), 4, dtype, layout, act)


@needs_cpp
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 7), 3), ((2, 12, 4, 4), 4), ((2, 8, 3, 3), 1), ((2, 8, 3, 3), 8),
                                     ((1, 32, 16, 16), 8), ((4, 12), 3), ((2, 6, 9), 2), ((1, 4, 2, 3, 5), 2),
                                     ((2, 64, 40, 40), 32)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpp_shapes(shape, G, layout):
    check_against_reference(shape, G, torch.float32, layout, "silu")


@needs_cpp
@pytest.mark.parametrize("affine,mod", list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpp_optional_params(affine, mod, act, layout):
    check_against_reference((2, 8, 5, 3), 2, torch.float32, layout, act, affine=affine, mod=mod)


@needs_cpp
def test_cpp_only_scale_or_only_shift_and_4d_modulation():
    x, w, b, s, t = make((2, 8, 5, 3), 4)
    for kw in ({"scale": s}, {"shift": t}, {"scale": s[:, :, None, None], "shift": t[:, :, None, None]}):
        got = group_norm(x, 4, w, b, activation="silu", impl="cpp", **kw)
        want = group_norm_reference(x, 4, w, b, activation="silu", **kw)
        assert_close(got, want, rtol=1e-5, atol=1e-5, what=str(list(kw)))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_fp32_params_with_half_x(dtype):
    check_against_reference((2, 8, 6, 6), 4, dtype, "contiguous", "silu", param_dtype=torch.float32)
    check_against_reference((2, 8, 6, 6), 4, dtype, "channels_last", "silu", param_dtype=dtype)


@needs_cpp
def test_cpp_non_contiguous_input_is_made_contiguous():
    x, w, b, s, t = make((2, 8, 6, 10), 4)
    xs = x[..., ::2]
    got = group_norm(xs, 4, w, b, activation="silu", scale=s, shift=t, impl="cpp")
    assert got.is_contiguous()
    assert_close(got, group_norm_reference(xs, 4, w, b, activation="silu", scale=s, shift=t), rtol=1e-5, atol=1e-5)


@needs_cpp
def test_cpp_large_mean_offset_stays_accurate():
    x, w, b, s, t = make((2, 8, 16, 16), 4)
    for layout in ("contiguous", "channels_last"):
        xo = (x * 0.1 + 100.0)
        if layout == "channels_last":
            xo = xo.to(memory_format=torch.channels_last)
        got = group_norm(xo, 4, w, b, scale=s, shift=t, impl="cpp")
        want = group_norm_reference(xo.double(), 4, w.double(), b.double(), scale=s.double(), shift=t.double())
        assert_close(got.double(), want, rtol=0, atol=3e-4, what=layout)  # fp32 input ulp at 100 is 8e-6 (= 8e-5 sd)


@needs_cpp
@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 8, 0, 3)])
def test_cpp_empty(shape):
    x, w, b, s, t = make(shape, 4)
    x.requires_grad_()
    y = group_norm(x, 4, w, b, activation="silu", impl="cpp")
    assert y.shape == x.shape
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape


@needs_cpp
def test_cpp_grad_subsets_are_skipped_but_correct():
    x, w, b, s, t = make((2, 8, 5, 3), 4)
    w.requires_grad_()
    s.requires_grad_()
    y = group_norm(x, 4, w, b, activation="gelu", scale=s, shift=t, impl="cpp")
    yr = group_norm_reference(x, 4, w, b, activation="gelu", scale=s, shift=t)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (w, s), gy)
    want = torch.autograd.grad(yr, (w, s), gy)
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-4, atol=2e-5)


@needs_cpp
@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_activation_math_over_a_wide_range(act):
    """SiLU / GELU are vectorised polynomials in the kernel (exp, and an erf fit): check them
    against float64 torch over [-20, 20] and out to +-100 where exp saturates (bias = z, weight = 0:
    y = act(z)); NaN propagates."""
    z = torch.cat([torch.linspace(-20.0, 20.0, 200001), torch.linspace(-100.0, 100.0, 2001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan")])])
    c = z.numel()
    y = group_norm(torch.zeros(1, c), c, torch.zeros(c), z, activation=act, impl="cpp")[0].double()
    want = (F.gelu if act == "gelu" else F.silu)(z.double())
    torch.testing.assert_close(y, want, rtol=3e-7, atol=2e-7, equal_nan=True)


@needs_cpp
def test_cpp_forward_is_deterministic_across_thread_counts():
    x, w, b, s, t = make((2, 64, 32, 32), 32)
    xc = x.to(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append([group_norm(v, 32, w, b, activation="silu", scale=s, shift=t, impl="cpp") for v in (x, xc)])
    finally:
        torch.set_num_threads(old)
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)


# ----------------------------------------------------------------------------- double backward
def _penalty_grads(fn, x, w, b, s, t, act):
    leaves = [v.detach().clone().requires_grad_() for v in (x, w, b, s, t)]
    y = fn(leaves[0], 4, leaves[1], leaves[2], activation=act, scale=leaves[3], shift=leaves[4])
    # a loss nonlinear in y: its grad_y depends on x, w, b, s, t again (the double backward must
    # count that path once; it once counted it twice)
    first = torch.autograd.grad((y * y.cos()).sum(), leaves, create_graph=True)
    pen = sum((g**2).sum() for g in first)
    grads = torch.autograd.grad(pen, leaves, allow_unused=True)
    return [g if g is not None else torch.zeros_like(v) for g, v in zip(grads, leaves)]


@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [None, "silu", "gelu"])
def test_cpp_double_backward_matches_reference(act, layout):
    x, w, b, s, t = make((2, 8, 5, 3), 4, layout=layout)
    got = _penalty_grads(cpp, x, w, b, s, t, act)
    want = _penalty_grads(group_norm_reference, x, w, b, s, t, act)
    for g, r in zip(got, want):
        sc = max(r.abs().max().item(), 1.0)
        assert_close(g / sc, r / sc, rtol=1e-4, atol=1e-5)


@needs_cpp
@pytest.mark.filterwarnings("ignore:Input #")
def test_cpp_gradcheck_fp32_ops_in_float64_reference_terms():
    # the fused ops are fp32: check the first-order grads by finite differences at a loose tolerance
    x, w, b, s, t = (v.requires_grad_() for v in make((1, 4, 3, 2), 2))
    f = lambda *a: group_norm(a[0], 2, a[1], a[2], activation="silu", scale=a[3], shift=a[4], impl="cpp")  # noqa
    assert torch.autograd.gradcheck(f, (x, w, b, s, t), eps=1e-2, atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------- opcheck / compile
def _op_samples():
    out = []
    for layout, act, opt in [("contiguous", 1, True), ("channels_last", 2, True), ("contiguous", 0, False)]:
        x, w, b, s, t = make((2, 4, 3, 5), 2, layout=layout, affine=opt, mod=opt)
        out.append((x, 2, w, b, s, t, 1e-5, act))
    return out


@needs_cpp
@pytest.mark.parametrize("i", range(3))
def test_opcheck_cpp_ops(i):
    x, G, w, b, s, t, eps, act = _op_samples()[i]
    args = (x.clone().requires_grad_(), G, w, b, s, t, eps, act)
    torch.library.opcheck(torch.ops.fastgen.group_norm.default, args)
    y, mean, rstd = torch.ops.fastgen.group_norm(x, G, w, b, s, t, eps, act)
    gy = torch.randn_like(y)
    bw = (gy, x, mean, rstd, G, w, b, s, t, eps, act, True, w is not None, b is not None, s is not None,
          t is not None)
    torch.library.opcheck(torch.ops.fastgen.group_norm_backward.default, bw)


@needs_cpp
def test_torch_compile_fullgraph_through_cpp_op():
    from torch._dynamo.testing import CompileCounterWithBackend

    x, w, b, s, t = make((2, 8, 5, 3), 4)
    x.requires_grad_()
    w.requires_grad_()

    def step(x, w, b, s, t):
        y = group_norm(x, 4, w, b, activation="silu", scale=s, shift=t, impl="cpp")
        return (y * y).mean()

    cnt = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(step, backend=cnt, fullgraph=True)
    loss = compiled(x, w, b, s, t)
    g = torch.autograd.grad(loss, (x, w))
    loss_r = step.__wrapped__(x, w, b, s, t) if hasattr(step, "__wrapped__") else step(x, w, b, s, t)
    gr = torch.autograd.grad(loss_r, (x, w))
    torch.testing.assert_close(loss, loss_r)
    for a, r in zip(g, gr):
        torch.testing.assert_close(a, r)
    assert cnt.frame_count == 1


# ----------------------------------------------------------------------------- dispatch / errors
def test_dispatch_cpp_on_cpu_and_cpp_on_cuda_only_in_cuda_builds():
    if backend.impl_available("cpp", "cpu")[0]:
        assert backend.resolve("group_norm", torch.device("cpu")) == "cpp"
    assert backend.registered_ops()["group_norm"].preference["cuda"] == ("cpp", "triton")
    ok, why = backend.op_impl_available("group_norm", "cpp", "cuda")
    # the op has CUDA kernels: availability is the extension's (built with CUDA, a GPU visible)
    assert (ok, why) == backend.impl_available("cpp", "cuda")
    if not ok:
        assert "CUDA" in why or "GPU" in why or "fastgen._C" in why, why
        with pytest.raises(backend.BackendUnavailableError, match="impl='cpp' is not available on cuda"):
            backend._resolve("group_norm", "cuda", "cpp")


def _base():
    x, w, b, s, t = make((2, 8, 3, 3), 4)
    return dict(x=x, num_groups=4, weight=w, bias=b, scale=s, shift=t)


BAD = [
    (dict(x=torch.randn(8)), ValueError, "x must have shape"),
    (dict(num_groups=3), ValueError, "num_groups"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(weight=torch.ones(4)), ValueError, "weight"),
    (dict(bias=torch.ones(8, 1)), ValueError, "bias"),
    (dict(scale=torch.ones(8)), ValueError, "scale"),
    (dict(shift=torch.ones(2, 8, 2, 1)), ValueError, "shift"),
    (dict(scale=torch.ones(3, 8)), ValueError, "scale"),
    (dict(weight=torch.ones(8, device="meta")), ValueError, "weight"),
    (dict(x=torch.ones(2, 8, 3, 3, dtype=torch.int32)), TypeError, "x"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(x="nope"), TypeError, "x"),
]


@pytest.mark.parametrize("impl", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_input_is_a_clear_error(impl, kwargs, exc, msg):
    args = _base()
    args.update(kwargs)
    x, G = args.pop("x"), args.pop("num_groups")
    with pytest.raises(exc, match=msg):
        group_norm(x, G, impl=impl, **args)


@needs_cpp
def test_raw_op_checks_name_arguments():
    x, w, b, s, t = make((2, 8, 3, 3), 4)
    op = torch.ops.fastgen.group_norm
    with pytest.raises(ValueError, match="num_groups"):
        op(x, 3, w, b, s, t, 1e-5, 1)
    with pytest.raises(ValueError, match="weight"):
        op(x, 4, w[:4], b, s, t, 1e-5, 1)
    with pytest.raises(ValueError, match="scale"):
        op(x, 4, w, b, s[:1], t, 1e-5, 1)
    with pytest.raises(ValueError, match="eps"):
        op(x, 4, w, b, s, t, -1.0, 1)
    with pytest.raises(ValueError, match="act"):
        op(x, 4, w, b, s, t, 1e-5, 5)
    with pytest.raises(TypeError, match="x has dtype"):
        op(x.double(), 4, w, b, s, t, 1e-5, 1)
    y, m, r = op(x, 4, w, b, s, t, 1e-5, 1)
    with pytest.raises(ValueError, match="grad_y"):
        torch.ops.fastgen.group_norm_backward(y[:1], x, m, r, 4, w, b, s, t, 1e-5, 1, True, True, True, True, True)
    with pytest.raises(ValueError, match="mean"):
        torch.ops.fastgen.group_norm_backward(y, x, m[:, :2], r, 4, w, b, s, t, 1e-5, 1, True, True, True, True,
                                              True)


def test_triton_impl_is_a_clear_error_when_unavailable():
    if backend.impl_available("triton", "cpu")[0]:
        pytest.skip("triton runs here (TRITON_INTERPRET=1): covered by test_group_norm_triton.py")
    x, w, b, s, t = make((2, 8, 3, 3), 4)
    with pytest.raises(backend.BackendUnavailableError, match="triton"):
        group_norm(x, 4, w, b, impl="triton")
