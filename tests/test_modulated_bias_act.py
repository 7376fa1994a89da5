"""fastgen.functional.modulated_bias_act (StyleGAN's synthesis epilogue: demodulation scale + noise
injection + bias + activation + gain + clamp): the C++ CPU kernels against float64 autograd of the
reference, forward and gradients of every order, layouts, dtypes, the ops' registration and bad
input. (The Triton kernels: tests/test_modulated_bias_act_triton.py.)"""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import bias_act, modulated_bias_act
from fastgen.ops.bias_act import ACTIVATIONS
from fastgen.ops.modulated_bias_act import modulated_bias_act_reference

from helpers import assert_close
from mba_cases import COMBOS, call, check_impl, check_orders, make

M = importlib.import_module("fastgen.ops.modulated_bias_act")  # the module (fastgen.ops exports the function)

ACTS = [a for a in ACTIVATIONS if a != "swish"]
HAVE_CPP = backend.op_impl_available("modulated_bias_act", "cpp", "cpu")[0]
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="fastgen._C is not built")


# ----------------------------------------------------------------------------- reference
def test_reference_is_stylegan2s_epilogue():
    x, b, s, nz, st = make((2, 4, 3, 3), strength="scalar")
    want = x * s[:, :, None, None] + nz * st
    want = torch.clamp(F.leaky_relu(want + b[None, :, None, None], 0.2) * math.sqrt(2), -256, 256)
    got = modulated_bias_act_reference(x, b, s, nz, st, act="lrelu", clamp=256)
    assert_close(got, want, rtol=1e-6, atol=1e-6, what="reference")


@pytest.mark.filterwarnings("ignore:Input #")
def test_float64_runs_the_reference_gradcheck():
    for act in ("lrelu", "silu"):
        ins = make((2, 3, 2, 2), dtype=torch.float64)
        f = lambda *a: call(None, *a, act=act, clamp=1.5)  # noqa: E731
        assert torch.autograd.gradcheck(f, tuple(ins))
        assert torch.autograd.gradgradcheck(f, tuple(ins))


# ----------------------------------------------------------------------------- C++ kernels: first order
@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_combination_of_optional_inputs(layout):
    for has_b, has_s, nk, sk in COMBOS:
        ins = make(b=has_b, scale=has_s, noise=nk, strength=sk, layout=layout)
        y = check_impl("cpp", ins, what=f"b={has_b} scale={has_s} noise={nk} strength={sk} {layout}",
                       act="lrelu", clamp=2.5)
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)


@needs_cpp
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_every_activation(act, clamp):
    for layout, noise, strength in (("contiguous", "N1", "scalar"), ("channels_last", "NC", "channel"),
                                    ("strided", "11", "channel")):
        ins = make(layout=layout, noise=noise, strength=strength, seed=1)
        check_impl("cpp", ins, what=f"{act} {layout}", act=act, clamp=clamp)


@needs_cpp
def test_custom_alpha_gain():
    ins = make(seed=2)
    for act, alpha, gain in (("lrelu", 0.1, 1.7), ("elu", 0.5, 2.0), ("relu", None, 1.0), ("linear", None, 0.5)):
        check_impl("cpp", ins, what=act, act=act, alpha=alpha, gain=gain)


@needs_cpp
@pytest.mark.parametrize("shape,layout", [
    ((2, 5, 7), "contiguous"), ((2, 5, 7), "channels_last"),                # 1-D spatial
    ((2, 3, 2, 3, 4), "contiguous"), ((2, 3, 2, 3, 4), "channels_last"),    # 3-D spatial
    ((3, 7), "contiguous"), ((3, 7, 1, 1), "contiguous"), ((4, 1), "contiguous"),  # no spatial extent
    ((1, 6, 4, 4), "channels_last"), ((1, 1, 5, 5), "contiguous"),          # batch 1, one channel
    ((2, 40, 33, 35), "contiguous"),    # several position chunks and channel blocks per sample
    ((2, 40, 33, 35), "channels_last"),  # several row chunks per sample
    ((2, 600, 3, 2), "channels_last"),   # rows longer than one segment
    ((1, 3, 64, 37), "contiguous"),     # long runs: tiles of <= 4 channels walked segment-major
    ((1, 9, 100, 100), "contiguous"),
])
def test_shapes_and_layouts(shape, layout):
    for nk, sk in (("N1", "scalar"), ("11", "channel"), ("NC", "channel"), ("1C", "scalar")):
        ins = make(shape, noise=nk, strength=sk, layout=layout, seed=3)
        y = check_impl("cpp", ins, what=f"{shape} {layout} noise={nk}", act="lrelu", clamp=2.0)
        if layout == "channels_last" and math.prod(shape[2:]) > 1:
            assert y.movedim(1, -1).is_contiguous(), "channels-last input gives a channels-last output"


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_precision(dtype, layout):
    for act, pdtype in (("lrelu", None), ("silu", torch.float32), ("tanh", None)):
        for nk in ("N1", "NC"):
            ins = make((2, 8, 4, 4), dtype=dtype, pdtype=pdtype, noise=nk, layout=layout, seed=4)
            check_impl("cpp", ins, what=f"{dtype} {act} params={pdtype} noise={nk}", act=act, clamp=2.0)


@needs_cpp
def test_param_dtypes_differ_from_x():
    # float64 parameters with an fp32 x, fp32 noise with an fp16 x: fp32 math, grads in each input's dtype
    ins = make(pdtype=torch.float64)
    ins[0] = ins[0].detach().float().requires_grad_()
    check_impl("cpp", ins, what="fp64 params", act="lrelu")
    ins = make(dtype=torch.float16, pdtype=torch.float32)
    check_impl("cpp", ins, what="fp32 noise, fp16 x", act="silu")


@needs_cpp
def test_scale_with_trailing_ones_and_subsets_of_grads():
    x, b, s, nz, st = make(scale_4d=True)
    check_impl("cpp", [x, b, s, nz, st], what="scale (N, C, 1, 1)", act="lrelu")
    gy = torch.randn_like(x)
    for subset in ((s,), (nz,), (st,), (b, st), (x,), (nz, s)):
        got = torch.autograd.grad(call("cpp", x, b, s, nz, st, act="gelu"), subset, gy)
        want = torch.autograd.grad(call("torch", x, b, s, nz, st, act="gelu"), subset, gy)
        for g, w in zip(got, want):
            assert_close(g, w, rtol=1e-5, atol=1e-5, what="subset")


@needs_cpp
def test_no_scale_no_noise_is_bias_act():
    x, b, *_ = make()
    y = call("cpp", x, b, None, None, None, act="lrelu", clamp=1.0)
    assert_close(y, bias_act(x, b, act="lrelu", clamp=1.0, impl="cpp"), rtol=0, atol=0, what="bias_act")
    check_impl("cpp", [x, b, None, None, None], act="silu")
    check_impl("cpp", [x, None, None, None, None], act="relu")


@needs_cpp
def test_empty_inputs():
    for shape in ((0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (0, 5)):
        x, b, s, nz, st = make(shape, seed=5)
        y = call("cpp", x, b, s, nz, st, act="lrelu")
        assert y.shape == shape
        grads = torch.autograd.grad(y.sum(), (x, b, s, nz, st))
        for g, t in zip(grads, (x, b, s, nz, st)):
            assert g.shape == t.shape and (g == 0).all()
        # the raw ops too
        assert torch.ops.fastgen.modulated_bias_act(x, b, s, nz, st, 2, 0.2, 1.4, -1.0).shape == shape
        outs = torch.ops.fastgen.modulated_bias_act_backward(y, x, b, s, nz, st, 2, 0.2, 1.4, -1.0, *[True] * 5)
        for o, t in zip(outs, (x, b, s, nz, st)):
            assert o.shape == t.shape and (o == 0).all()


@needs_cpp
def test_deterministic_across_thread_counts():
    x, b, s, nz, st = make((2, 48, 40, 40), noise="11", seed=6)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            res = []
            for xx in (x, xc):
                y = call("cpp", xx, b, s, nz, st, act="silu")
                res += [y, *torch.autograd.grad(y, (xx, b, s, nz, st), torch.ones_like(y))]
                ups = [torch.ones_like(t) for t in (xx, b, s, nz, st)]
                res += torch.ops.fastgen.modulated_bias_act_double_backward(
                    torch.ones_like(y), *(t.detach() for t in (xx, b, s, nz, st)), *ups, 7, 0.0, 1.4, -1.0,
                    *[True] * 6)
            outs.append(res)
    finally:
        torch.set_num_threads(old)
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)


# ----------------------------------------------------------------------------- higher orders
@needs_cpp
@pytest.mark.parametrize("act,clamp,noise,strength,layout", [
    ("lrelu", 1.5, "N1", "scalar", "contiguous"),
    ("lrelu", None, "NC", "channel", "channels_last"),
    ("silu", 1.0, "11", "channel", "contiguous"),
    ("gelu", None, "N1", "channel", "channels_last"),
    ("tanh", None, "1C", "scalar", "contiguous"),
    ("elu", 2.0, "N1", "channel", "contiguous"),
])
def test_second_and_third_order(act, clamp, noise, strength, layout):
    check_orders("cpp", (2, 4, 3, 3), act, clamp, noise, strength, layout)


@needs_cpp
@pytest.mark.parametrize("act", ACTS)
def test_fused_double_backward_op_matches_closed_form_float64(act):
    """The fused double-backward op against the closed form (torch ops, float64) on the same inputs,
    for every layout / noise kind, with all cotangents and with subsets of them."""
    code, alpha, gain, _ = ACTIVATIONS[act]
    g = torch.Generator().manual_seed(11)
    for layout, nk, sk, clamp in (("contiguous", "N1", "scalar", 1.5), ("channels_last", "NC", "channel", -1.0),
                                  ("contiguous", "11", "channel", -1.0), ("channels_last", "1C", "scalar", 2.0),
                                  ("contiguous", "none", "none", 1.0), ("channels_last", "N1", "channel", 1.0)):
        x, b, s, nz, st = (t.detach() if t is not None else None
                           for t in make((2, 5, 4, 3), noise=nk, strength=sk, layout=layout, seed=12))
        gy = torch.randn(x.shape, generator=g)
        ups_all = [torch.randn(t.shape, generator=g) if t is not None else None for t in (x, b, s, nz, st)]
        for keep in ((0, 1, 2, 3, 4), (0,), (2,), (1, 3, 4)):
            ups = [u if i in keep else None for i, u in enumerate(ups_all)]
            params = (code, alpha, gain, clamp)
            got = torch.ops.fastgen.modulated_bias_act_double_backward(gy, x, b, s, nz, st, *ups, *params, *[True] * 6)
            d64 = lambda t: t.double() if t is not None else None  # noqa: E731
            want = M._double_backward_torch([d64(t) for t in (gy, x, b, s, nz, st)], params, [d64(u) for u in ups],
                                            [True] * 6)
            for name, a, w, t in zip(("grad", "x", "b", "scale", "noise", "strength"), got, want,
                                     (gy, x, b, s, nz, st)):
                if t is None:
                    assert a.numel() == 0
                    continue
                assert a.shape == t.shape and a.dtype == t.dtype
                sc = max(w.abs().max().item(), 1.0)
                assert_close(a.double() / sc, w / sc, rtol=2e-5, atol=2e-5, what=f"d{name} {act} {layout} {nk} {keep}")


@needs_cpp
def test_path_length_and_r1_patterns():
    """Path-length regularisation differentiates the generator twice; R1 differentiates a critic's
    output w.r.t. its input through a noise layer. Both against the reference in fp32."""
    torch.manual_seed(0)
    w = torch.randn(8, 6, requires_grad=True)
    aff = torch.randn(6, 6, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    st = torch.tensor(0.3, requires_grad=True)
    ws = torch.randn(4, 8, requires_grad=True)
    nz = torch.randn(4, 1, 5, 5)
    base = torch.randn(1, 6, 5, 5)
    pl_noise = torch.randn(4, 6, 5, 5) / 5

    def synth(fn):
        styles = ws @ w + 1  # (N, 6)
        x = base * styles[:, :, None, None]
        d = (styles.square().sum(1, keepdim=True) + 1e-8).rsqrt().expand(-1, 6)
        h = fn(x, b, scale=d, noise=nz, noise_strength=st, act="lrelu", clamp=256.0)
        return torch.einsum("nchw,cd->ndhw", h, aff)

    results = []
    for fn in (lambda *a, **k: modulated_bias_act(*a, impl="cpp", **k),
               lambda *a, **k: modulated_bias_act(*a, impl="torch", **k)):
        img = synth(fn)
        jw, = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
        pl = jw.square().sum(1).sqrt().mean()
        results.append(torch.autograd.grad(pl, (w, aff, b, st)))
    for a, r in zip(*results):
        assert_close(a, r, rtol=1e-4, atol=1e-5, what="path length grads")


@needs_cpp
@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_fp32_kernels_loosely():
    # the fused kernels are fp32: first-order grads by finite differences at a loose tolerance
    ins = [t for t in make((1, 3, 2, 2), noise="N1", strength="channel", seed=9)]
    f = lambda *a: call("cpp", *a, act="silu", clamp=4.0)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(ins), eps=1e-2, atol=5e-2, rtol=5e-2)


@pytest.fixture(scope="module")
def float64_ops():
    """A float64 op pair with the same autograd registration as the fused ops: the forward is the
    reference, its backward op the reference's first-order VJP. gradcheck / gradgradcheck of this
    exercise fastgen's autograd formula (the wiring of the backward op, the need-mask, and the double
    backward through torch.func.vjp) at float64 precision, which the fp32 kernels cannot."""
    lib = torch.library.Library("fastgen_mba_test", "FRAGMENT")
    schema_f = ("(Tensor x, Tensor? b, Tensor? scale, Tensor? noise, Tensor? noise_strength, int act, float alpha, "
                "float gain, float clamp) -> Tensor")
    schema_b = ("(Tensor grad, Tensor x, Tensor? b, Tensor? scale, Tensor? noise, Tensor? noise_strength, int act, "
                "float alpha, float gain, float clamp, bool need_x, bool need_b, bool need_scale, bool need_noise, "
                "bool need_strength) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
    lib.define("fwd" + schema_f)
    lib.define("bwd" + schema_b)

    def ref(x, b, s, n, t, act, alpha, gain, clamp):
        return modulated_bias_act_reference(x, b, s, n, t, M._ACT_NAMES[act], alpha, gain,
                                            None if clamp < 0 else clamp)

    def fwd(x, b, s, n, t, act, alpha, gain, clamp):
        return ref(x, b, s, n, t, act, alpha, gain, clamp).clone()

    def bwd(g, x, b, s, n, t, act, alpha, gain, clamp, *needs):
        ins = [x, b, s, n, t]
        idx = [i for i, v in enumerate(ins) if v is not None]

        def f(*vals):
            full = list(ins)
            for i, v in zip(idx, vals):
                full[i] = v
            return ref(*full, act, alpha, gain, clamp)

        _, vjp = torch.func.vjp(f, *[ins[i] for i in idx])
        got = dict(zip(idx, vjp(g)))
        return tuple(got[i].clone() if i in got and needs[i] else x.new_empty((0,)) for i in range(5))

    lib.impl("fwd", fwd, "CompositeExplicitAutograd")
    lib.impl("bwd", bwd, "CompositeExplicitAutograd")
    M._register_autograd("fwd", "bwd", ns="fastgen_mba_test")  # double backward: the torch closed form
    yield torch.ops.fastgen_mba_test.fwd
    del lib


@pytest.mark.filterwarnings("ignore:Input #")
@pytest.mark.parametrize("act,clamp", [("lrelu", 1.2), ("silu", None), ("gelu", 2.0)])
def test_gradcheck_gradgradcheck_autograd_formula_float64(float64_ops, act, clamp):
    code = ACTIVATIONS[act][0]
    alpha, gain = ACTIVATIONS[act][1], ACTIVATIONS[act][2]
    for nk, sk in (("N1", "scalar"), ("NC", "channel")):
        ins = make((2, 3, 2, 2), noise=nk, strength=sk, dtype=torch.float64, seed=10)
        f = lambda *a: float64_ops(*a, code, alpha, gain, -1.0 if clamp is None else clamp)  # noqa: E731
        assert torch.autograd.gradcheck(f, tuple(ins))
        assert torch.autograd.gradgradcheck(f, tuple(ins))


# ----------------------------------------------------------------------------- registration
def _op_args(layout="contiguous", noise="N1", strength="scalar", b=True, scale=True, act=2, clamp=-1.0):
    x, bb, s, nz, st = make((2, 4, 3, 5), b=b, scale=scale, noise=noise, strength=strength, layout=layout)
    return (x, bb, s, nz, st, act, 0.2, 1.4, clamp)


@needs_cpp
@pytest.mark.parametrize("case", [dict(), dict(layout="channels_last", noise="NC", strength="channel", act=7, clamp=1.0),
                                  dict(noise="11", b=False, act=8), dict(noise="none", strength="none", scale=True)])
def test_opcheck(case):
    args = _op_args(**case)
    torch.library.opcheck(torch.ops.fastgen.modulated_bias_act.default, args)
    x = args[0]
    g = torch.randn(x.shape).to(memory_format=torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                                else torch.contiguous_format)
    needs = tuple(t is not None for t in args[:5])
    torch.library.opcheck(torch.ops.fastgen.modulated_bias_act_backward.default, (g.requires_grad_(), *args, *needs))
    ups = [torch.randn(t.shape).requires_grad_() if t is not None else None for t in args[:5]]
    torch.library.opcheck(torch.ops.fastgen.modulated_bias_act_double_backward.default,
                          (g, *args[:5], *ups, *args[5:], True, *needs))


@needs_cpp
def test_torch_compile_fullgraph():
    from torch._dynamo.testing import CompileCounterWithBackend

    x, b, s, nz, st = make((2, 8, 5, 3))

    def step(x, b, s, nz, st):
        y = modulated_bias_act(x, b, scale=s, noise=nz, noise_strength=st, act="lrelu", clamp=2.0, impl="cpp")
        return (y * y).mean()

    for backend_name in ("aot_eager", "inductor"):
        cnt = CompileCounterWithBackend(backend_name)
        torch._dynamo.reset()
        compiled = torch.compile(step, backend=cnt, fullgraph=True)
        loss = compiled(x, b, s, nz, st)
        grads = torch.autograd.grad(loss, (x, b, s, nz, st))
        loss_r = step(x, b, s, nz, st)
        grads_r = torch.autograd.grad(loss_r, (x, b, s, nz, st))
        assert_close(loss, loss_r, rtol=1e-6, atol=1e-6, what=backend_name)
        for a, r in zip(grads, grads_r):
            assert_close(a, r, rtol=1e-5, atol=1e-6, what=backend_name)
        assert cnt.frame_count == 1


def test_dispatch():
    spec = backend.registered_ops()["modulated_bias_act"]
    assert spec.impls == ("torch", "cpp", "triton")
    assert spec.preference == {"cpu": ("cpp",), "cuda": ("triton",)}
    if HAVE_CPP:
        assert backend.resolve("modulated_bias_act", torch.device("cpu")) == "cpp"
    assert not backend.op_impl_available("modulated_bias_act", "cpp", "cuda")[0]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,exc,match", [
    (dict(act="softmax"), ValueError, "act must be one of"),
    (dict(b=torch.zeros(5)), ValueError, r"b must have shape \(C,\)"),
    (dict(scale=torch.ones(2, 5)), ValueError, r"scale must have shape \(N, C\)"),
    (dict(scale=torch.ones(4)), ValueError, r"scale must have shape \(N, C\)"),
    (dict(noise=torch.zeros(2, 1, 3, 4)), ValueError, "noise must have shape"),
    (dict(noise=torch.zeros(2, 2, 3, 3)), ValueError, "noise must have shape"),
    (dict(noise_strength=torch.ones(())), ValueError, "noise_strength was given without noise"),
    (dict(noise=torch.zeros(2, 1, 3, 3), noise_strength=torch.ones(3)), ValueError, "noise_strength must be"),
    (dict(scale=torch.ones(2, 4, dtype=torch.int32)), TypeError, "scale must be a floating-point"),
    (dict(noise=[1.0]), TypeError, "noise must be a torch.Tensor"),
    (dict(clamp=-1.0), ValueError, "clamp must be >= 0"),
    (dict(gain=float("inf")), ValueError, "gain must be a finite number"),
    (dict(impl="nope"), ValueError, "nope"),
])
def test_bad_input_names_the_argument(kw, exc, match):
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(exc, match=match):
        modulated_bias_act(x, **kw)


def test_bad_x():
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        modulated_bias_act(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*spatial\)"):
        modulated_bias_act(torch.ones(3))


@needs_cpp
@pytest.mark.parametrize("args,exc,match", [
    (dict(x=torch.ones(2, 3, 4, dtype=torch.float64)), TypeError, "x has dtype"),
    (dict(x=torch.ones(3)), ValueError, "x must have shape"),
    (dict(b=torch.ones(4)), ValueError, "b must have shape"),
    (dict(scale=torch.ones(3, 2)), ValueError, "scale must have shape"),
    (dict(noise=torch.ones(2, 2, 4)), ValueError, "noise must have shape"),
    (dict(noise_strength=torch.ones(2)), ValueError, "noise_strength must be"),
    (dict(noise=None), ValueError, "noise_strength was given without noise"),
    (dict(b=torch.ones(3, dtype=torch.int64)), TypeError, "b must be a floating-point"),
    (dict(act=11), ValueError, "unknown activation code"),
])
def test_raw_ops_check_and_name_arguments(args, exc, match):
    a = dict(x=torch.ones(2, 3, 4), b=torch.ones(3), scale=torch.ones(2, 3), noise=torch.ones(2, 1, 4),
             noise_strength=torch.ones(()), act=2)
    a.update(args)
    pos = (a["x"], a["b"], a["scale"], a["noise"], a["noise_strength"], a["act"], 0.2, 1.0, -1.0)
    with pytest.raises(exc, match=match):
        torch.ops.fastgen.modulated_bias_act(*pos)
    if a["x"].dim() >= 2 and a["x"].dtype == torch.float32:
        with pytest.raises(exc, match=match):
            torch.ops.fastgen.modulated_bias_act_backward(torch.ones_like(a["x"]), *pos, *[True] * 5)
    if "x" not in args:
        with pytest.raises(ValueError, match="grad has shape"):
            torch.ops.fastgen.modulated_bias_act_backward(torch.ones(2, 3, 5), *pos[:1], *[None] * 4, 2, 0.2, 1.0,
                                                          -1.0, *[True] * 5)


@needs_cpp
def test_raw_double_backward_op_checks_cotangents():
    x, b, s, nz, st = torch.ones(2, 3, 4), torch.ones(3), torch.ones(2, 3), torch.ones(2, 1, 4), torch.ones(())
    op = torch.ops.fastgen.modulated_bias_act_double_backward
    ok = [torch.ones(2, 3, 4), torch.ones(3), torch.ones(2, 3), torch.ones(2, 1, 4), torch.ones(())]
    for i, (name, bad) in enumerate((("u_x", torch.ones(2, 3, 5)), ("u_b", torch.ones(4)), ("u_scale", torch.ones(3, 2)),
                                     ("u_noise", torch.ones(2, 3, 4)), ("u_strength", torch.ones(3)))):
        ups = list(ok)
        ups[i] = bad
        with pytest.raises(ValueError, match=f"{name} has shape"):
            op(torch.ones(2, 3, 4), x, b, s, nz, st, *ups, 2, 0.2, 1.4, -1.0, *[True] * 6)
    with pytest.raises(ValueError, match="grad has shape"):
        op(torch.ones(2, 3, 5), x, b, s, nz, st, *ok, 2, 0.2, 1.4, -1.0, *[True] * 6)
