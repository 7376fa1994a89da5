"""modulate_weight: per-sample modulated / demodulated conv weights (StyleGAN2's fused modconv)."""
import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.functional import modulate_weight
from fastgen.ops.modulate_weight import modulate_weight_reference

D64 = torch.float64
IMPLS = ["cpp", "triton"]
TOL = {torch.float32: (2e-5, 2e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def _skip_unavailable(impl):
    ok, why = backend.op_impl_available("modulate_weight", impl, "cpu")
    if not ok:
        pytest.skip(why)


def _inputs(n, o, i, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, k, k, generator=g).to(dtype)
    s = (torch.randn(n, i, generator=g) + 1.0)
    return w, s


# shapes: (N, O, I, k); the Triton interpreter is slow, so its shapes are small
CASES = [(3, 5, 4, 3), (1, 2, 7, 1), (4, 3, 6, 5), (2, 16, 33, 3)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CASES, ids=str)
@pytest.mark.parametrize("demodulate", [True, False])
def test_forward_and_grads_match_float64_reference(impl, shape, demodulate):
    _skip_unavailable(impl)
    if impl == "triton" and shape[1] * shape[2] > 100:
        pytest.skip("interpreter time")
    w, s = _inputs(*shape)
    gout = torch.randn((shape[0],) + tuple(w.shape), generator=torch.Generator().manual_seed(9))
    w1, s1 = w.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = modulate_weight(w1, s1, demodulate, impl=impl)
    gw, gs = torch.autograd.grad(out, (w1, s1), gout)
    w2, s2 = w.double().requires_grad_(True), s.double().requires_grad_(True)
    ref = modulate_weight_reference(w2, s2, demodulate)
    rgw, rgs = torch.autograd.grad(ref, (w2, s2), gout.double())
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(gw.double(), rgw, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(gs.double(), rgs, rtol=2e-5, atol=2e-5)
    if demodulate:  # every (n, o) filter has unit norm
        norms = out.detach().double().square().sum(dim=[2, 3, 4])
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    w, s = _inputs(3, 6, 8, 3, dtype)
    gout = torch.randn((3,) + tuple(w.shape)).to(dtype)
    w1, s1 = w.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = modulate_weight(w1, s1)
    gw, gs = torch.autograd.grad(out, (w1, s1), gout)
    assert out.dtype == dtype and gw.dtype == dtype and gs.dtype == torch.float32
    w2, s2 = w.double().requires_grad_(True), s.double().requires_grad_(True)
    ref = modulate_weight_reference(w2, s2)
    rgw, rgs = torch.autograd.grad(ref, (w2, s2), gout.double())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(gw.double(), rgw, rtol=rtol, atol=10 * atol)
    torch.testing.assert_close(gs.double(), rgs, rtol=rtol, atol=10 * atol)


def test_second_order_through_the_fused_op():
    """Double backward (path-length regularisation through a fused-modconv generator)."""
    w, s = _inputs(2, 3, 4, 3)
    w = w.requires_grad_(True)
    s = s.requires_grad_(True)
    u = torch.randn(2, 3, 4, 3, 3)

    def grads(fn, w, s):
        out = fn(w, s)
        gw, gs = torch.autograd.grad((out * u).square().sum(), (w, s), create_graph=True)
        return torch.autograd.grad(gw.square().sum() + (gs * torch.arange(4.0)).sum(), (w, s))

    got = grads(lambda a, b: modulate_weight(a, b), w, s)
    w2, s2 = w.detach().double().requires_grad_(True), s.detach().double().requires_grad_(True)
    want = grads(lambda a, b: modulate_weight_reference(a, b), w2, s2)
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_.double(), w_, rtol=1e-4, atol=1e-5)


def test_gradcheck_of_the_backward_op():
    w, s = _inputs(2, 3, 2, 3, D64)
    g = torch.randn(2, 3, 2, 3, 3, dtype=D64, requires_grad=True)
    w, s = w.requires_grad_(True), s.double().requires_grad_(True)
    op = torch.ops.fastgen.modulate_weight_backward
    assert torch.autograd.gradcheck(lambda g_, w_, s_: op(g_.float(), w_.float(), s_.float(), True, 1e-8),
                                    (g, w, s), eps=1e-3, atol=2e-2, rtol=2e-2)
    assert torch.autograd.gradcheck(lambda a, b: modulate_weight(a, b), (w, s))  # float64: the reference


def test_opcheck_compile_and_dispatch():
    w, s = _inputs(3, 4, 5, 3)
    torch.library.opcheck(torch.ops.fastgen.modulate_weight.default, (w, s, True, 1e-8))
    torch.library.opcheck(torch.ops.fastgen.modulate_weight_backward.default,
                          (torch.randn(3, 4, 5, 3, 3), w, s, False, 1e-8))
    f = torch.compile(lambda a, b: modulate_weight(a, b) * 2, fullgraph=True)
    torch.testing.assert_close(f(w, s), 2 * modulate_weight_reference(w, s), rtol=1e-5, atol=1e-6)
    assert backend.resolve("modulate_weight", torch.device("cpu")) == "cpp"
    with fastgen.use_backend("torch"):
        torch.testing.assert_close(modulate_weight(w, s), modulate_weight_reference(w, s))


def test_empty_and_float64():
    w, s = _inputs(0, 3, 4, 3)
    assert modulate_weight(w, s).shape == (0, 3, 4, 3, 3)
    w, s = _inputs(2, 3, 4, 3, D64)
    torch.testing.assert_close(modulate_weight(w, s), modulate_weight_reference(w, s))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(weight=torch.randn(3, 4, 3)), ValueError, "weight must have shape"),
    (dict(styles=torch.randn(2, 5)), ValueError, "styles must have shape"),
    (dict(styles=torch.ones(2, 4, dtype=torch.long)), TypeError, "styles must be a floating"),
    (dict(weight=torch.ones(3, 4, 3, 3, dtype=torch.long)), TypeError, "weight has dtype"),
    (dict(eps=-1.0), ValueError, "eps"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    args = dict(weight=torch.randn(3, 4, 3, 3), styles=torch.randn(2, 4), eps=1e-8)
    args.update(kw)
    with pytest.raises(exc, match=match):
        modulate_weight(args["weight"], args["styles"], eps=args["eps"])


def test_direct_op_call_checks():
    with pytest.raises(ValueError, match="styles must have shape"):
        torch.ops.fastgen.modulate_weight(torch.randn(3, 4, 3, 3), torch.randn(2, 3), True, 1e-8)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.fastgen.modulate_weight_backward(torch.randn(2, 3, 4, 3), torch.randn(3, 4, 3, 3),
                                                   torch.randn(2, 4), True, 1e-8)
