"""sampler_update: every implementation against the reference (all term combinations, dtypes,
layouts), the in-kernel Philox noise against the Python stream and against N(0, 1), autograd
(first and second order), out=, bad input, opcheck and torch.compile."""
import math

import pytest
import torch

from fastgen import backend
from fastgen.functional import sampler_coeffs, sampler_update
from fastgen.ops.sampler_update import COEFF_NAMES, noise_like, sampler_update_reference

from helpers import assert_close

FAST_IMPLS = [
    pytest.param(name, marks=pytest.mark.skipif(not backend.impl_available(name, "cpu")[0],
                                                 reason=backend.impl_available(name, "cpu")[1] or "n/a"))
    for name in ("cpp", "triton")
]
HAVE_CPP = backend.impl_available("cpp", "cpu")[0]
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="no C++ extension")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(shape, dtype=torch.float32, layout="contiguous", seed=0):
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
    raise ValueError(layout)


def coeffs_for(features, n):
    kw = dict(a_x=[1.0 + 0.1 * i for i in range(n)], a_m=[-0.5 - 0.05 * i for i in range(n)], c_x=0.3, c_0=0.6,
              c_m=0.1)
    if "clip" in features:
        kw.update(clip=[1.0 if i % 2 == 0 else math.inf for i in range(n)], scale=[1.0 + 0.5 * (i % 2) for i in range(n)])
    if "h" in features:
        kw.update(c_h1=0.2, c_h2=-0.15)
    if "noise" in features or "philox" in features:
        kw.update(c_n=[0.05 * (i + 1) for i in range(n)])
    if "var" in features:
        kw.update(lv_lo=-4.0, lv_hi=-1.5)
    return sampler_coeffs(batch_size=n, **kw)


def inputs_for(features, shape, dtype, layout):
    t = {"x": make(shape, dtype, layout, 0), "model_output": make(shape, dtype, layout, 1)}
    if "guide" in features:
        t["uncond"] = make(shape, dtype, layout, 2)
    if "h" in features:
        t["h1"] = make(shape, dtype, layout, 3)
        t["h2"] = make(shape, dtype, layout, 4)
    if "noise" in features:
        t["noise"] = make(shape, dtype, layout, 5)
    if "var" in features:
        t["var_values"] = make(shape, dtype, layout, 6).clamp(-1, 1)
    return t


def reference(t, coeffs, features, seed):
    kw = {k: v for k, v in t.items() if k not in ("x", "model_output")}
    if "philox" in features:
        kw["noise"] = noise_like(t["x"], seed)
    return sampler_update_reference(t["x"], t["model_output"], coeffs, guidance_scale=2.5, **kw)


FEATURES = [(), ("clip",), ("guide",), ("h",), ("noise",), ("noise", "var"), ("philox",), ("philox", "var"),
            ("clip", "guide", "h", "philox", "var")]
CASES = [((3, 4, 5, 7), "contiguous"), ((2, 3, 8, 8), "channels_last"), ((2, 3, 4, 5), "transposed"),
         ((2, 3, 4, 5), "strided"), ((5, 1029), "contiguous")]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "+".join(f) or "plain")
@pytest.mark.parametrize("shape,layout", CASES, ids=lambda v: str(v))
def test_fast_impl_matches_reference(impl, dtype, features, shape, layout):
    if impl == "triton" and (dtype != torch.float32 and layout != "contiguous"):
        pytest.skip("interpreter time: half-precision Triton is covered on contiguous inputs")
    n = shape[0]
    coeffs = coeffs_for(features, n)
    t = inputs_for(features, shape, dtype, layout)
    kw = {k: v for k, v in t.items() if k not in ("x", "model_output")}
    seed = 1234 if "philox" in features else None
    got = sampler_update(t["x"], t["model_output"], coeffs, guidance_scale=2.5, seed=seed, impl=impl, **kw)
    want = reference(t, coeffs, features, seed)
    # fp32: the kernels' log/sin/cos (Philox) differ from float64-rounded ones by ~1e-6
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    assert_close(got.prev_sample, want.prev_sample, dtype, what="prev_sample", **tol)
    assert_close(got.pred_original_sample, want.pred_original_sample, dtype, what="pred_original_sample", **tol)
    if layout in ("contiguous", "channels_last"):
        assert got.prev_sample.stride() == t["x"].stride()


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_sliced_and_broadcast_inputs(impl, layout):
    """Learned-variance steps pass model_output[:, :C] and [:, C:] (batch stride 2CHW) and guidance
    the same halves of the unconditional output; a batch-broadcast history has batch stride 0.
    The C++ kernel reads such inputs through their batch stride (no copy); results are exact."""
    n, c = 3, 4
    x = make((n, c, 6, 5), layout=layout, seed=0)
    big = make((n, 2 * c, 6, 5), layout=layout, seed=1)
    ubig = make((n, 2 * c, 6, 5), layout=layout, seed=2)
    m, v = big[:, :c], big[:, c:].clamp(-1, 1)
    h1 = make((1, c, 6, 5), layout=layout, seed=3).expand(n, c, 6, 5)
    coeffs = coeffs_for(("h", "philox", "var"), n)
    kw = dict(uncond=ubig[:, :c], guidance_scale=2.5, h1=h1, var_values=v)
    got = sampler_update(x, m, coeffs, seed=77, impl=impl, **kw)
    want = sampler_update_reference(x, m, coeffs, noise=noise_like(x, 77), **kw)
    assert_close(got.prev_sample, want.prev_sample, torch.float32, what="prev_sample", rtol=1e-5, atol=1e-5)
    assert_close(got.pred_original_sample, want.pred_original_sample, torch.float32, what="x0", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_learned_variance_exp_over_the_whole_float_range(impl):
    """The noise scale exp(0.5 (lo + (v + 1) / 2 (hi - lo))) is a vectorised polynomial in the C++
    kernel: within 2 ulp of exp over [-110, 90] (underflow to 0 / denormals, overflow to inf), NaN kept."""
    v = torch.cat([torch.linspace(-110.0, 90.0, 40001), torch.tensor([float("nan"), -1e30, 1e30, 0.0])])
    v = v.reshape(1, -1)
    ones = torch.ones_like(v)
    # lo = 0, hi = 4: the scale is exp(v + 1); x0 = x (a_x = 1), prev = c_n * noise * scale
    coeffs = sampler_coeffs(a_x=1.0, a_m=0.0, c_n=1.0, lv_lo=0.0, lv_hi=4.0)
    got = sampler_update(ones, ones, coeffs, noise=ones, var_values=v, impl=impl).prev_sample
    want = torch.exp((v + 1.0).double()).float()  # exp of the fp32 argument the kernel forms
    torch.testing.assert_close(got, want, rtol=2.5e-7, atol=3e-45, equal_nan=True)


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
def test_clip_and_nan_propagation(impl):
    x = torch.tensor([[0.5, 3.0, -3.0, float("nan")]])
    m = torch.zeros_like(x)
    c = sampler_coeffs(a_x=1.0, clip=1.0, scale=2.0, c_0=1.0)
    out = sampler_update(x, m, c, impl=impl)
    assert out.pred_original_sample[0, :3].tolist() == [1.0, 2.0, -2.0]
    assert math.isnan(out.pred_original_sample[0, 3].item()) and math.isnan(out.prev_sample[0, 3].item())


# ----------------------------------------------------------------------------- Philox noise
@needs_cpp
def test_philox_noise_is_standard_normal():
    n = 1 << 20
    z = sampler_update(torch.zeros(n), torch.zeros(n), sampler_coeffs(c_n=1.0), seed=7).prev_sample.double()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean().item() - 3) < 0.03
    assert abs((z**3).mean().item()) < 0.02
    # quantiles of N(0, 1)
    q = torch.quantile(z[: 1 << 18], torch.tensor([0.025, 0.16, 0.5, 0.84, 0.975], dtype=torch.float64))
    assert_close(q, torch.tensor([-1.95996, -0.99446, 0.0, 0.99446, 1.95996], dtype=torch.float64), rtol=0, atol=0.02)
    # neighbours (same Philox group, same Box-Muller pair) are uncorrelated
    for lag in (1, 2, 3, 4):
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 / math.sqrt(n)
    assert z.abs().max().item() < 6.5


@needs_cpp
def test_philox_stream_matches_python_reference_at_any_position():
    from fastgen.ops._philox import philox_normal

    c = sampler_coeffs(c_n=1.0)
    for seed, offset in ((0, 0), (2**40 + 3, 5), (12345, 2**33)):
        z = sampler_update(torch.zeros(4099), torch.zeros(4099), c, seed=seed, offset=offset).prev_sample
        assert_close(z, philox_normal(4099, seed, offset), rtol=1e-5, atol=1e-5, what=f"seed {seed}")


@needs_cpp
def test_philox_noise_independent_of_thread_count():
    n = 3 * 32768 + 17  # several parallel chunks, ragged tail
    x = make((n,))
    c = sampler_coeffs(a_x=1.0, c_0=0.5, c_n=0.3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = sampler_update(x, x, c, seed=99).prev_sample
        torch.set_num_threads(2)
        b = sampler_update(x, x, c, seed=99).prev_sample
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
def test_generator_reproducible_and_fresh_noise_per_call(impl):
    x = make((2, 3, 4, 4))
    c = sampler_coeffs(a_x=1.0, c_0=1.0, c_n=0.5)
    a = sampler_update(x, x, c, generator=torch.Generator().manual_seed(3), impl=impl).prev_sample
    b = sampler_update(x, x, c, generator=torch.Generator().manual_seed(3), impl=impl).prev_sample
    g = torch.Generator().manual_seed(3)
    first = sampler_update(x, x, c, generator=g, impl=impl).prev_sample
    second = sampler_update(x, x, c, generator=g, impl=impl).prev_sample
    assert torch.equal(a, b) and torch.equal(a, first)
    assert not torch.equal(first, second)


def test_deterministic_step_ignores_noise_and_leaves_generator_alone():
    x = make((2, 3, 4, 4))
    c = sampler_coeffs(a_x=1.0, c_0=0.7, c_x=0.3)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = sampler_update(x, x, c, generator=g, noise=torch.full_like(x, float("nan"))).prev_sample
    assert torch.equal(g.get_state(), state)
    assert torch.isfinite(a).all()


# ----------------------------------------------------------------------------- out=
@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "strided"])
def test_out_variant(impl, out_layout):
    feats = ("clip", "guide", "h", "noise")
    t = inputs_for(feats, (2, 3, 4, 6), torch.float32, "contiguous")
    c = coeffs_for(feats, 2)
    kw = {k: v for k, v in t.items() if k not in ("x", "model_output")}
    xp, x0 = make((2, 3, 4, 6), layout=out_layout, seed=9), make((2, 3, 4, 6), layout=out_layout, seed=10)
    res = sampler_update(t["x"], t["model_output"], c, guidance_scale=2.5, out=(xp, x0), impl=impl, **kw)
    assert res.prev_sample is xp and res.pred_original_sample is x0
    want = reference(t, c, feats, None)
    assert_close(xp, want.prev_sample, what="x_prev")
    assert_close(x0, want.pred_original_sample, what="x0")


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
def test_out_may_alias_x(impl):
    x = make((2, 3, 4, 4))
    m = make((2, 3, 4, 4), seed=1)
    c = sampler_coeffs(a_x=1.0, a_m=-0.3, c_x=0.5, c_0=0.5)
    want = sampler_update_reference(x, m, c)
    buf = x.clone()
    x0 = torch.empty_like(x)
    sampler_update(buf, m, c, out=(buf, x0), impl=impl)
    assert_close(buf, want.prev_sample, what="in-place x_prev")


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
def test_out_errors(impl):
    x = make((2, 3, 4, 4))
    c = sampler_coeffs(a_x=1.0)
    with pytest.raises(TypeError, match="out must be a pair"):
        sampler_update(x, x, c, out=torch.empty_like(x), impl=impl)
    with pytest.raises(ValueError, match=r"out\[0\] \(prev_sample\) has shape"):
        sampler_update(x, x, c, out=(torch.empty(2, 3), torch.empty_like(x)), impl=impl)
    big = torch.zeros(2 * x.numel())
    with pytest.raises(RuntimeError, match="overlap"):
        sampler_update(x, x, c, out=(big[: x.numel()].view_as(x), big[3: 3 + x.numel()].view_as(x)), impl=impl)
    with pytest.raises(RuntimeError, match="automatic differentiation"):
        sampler_update(x.clone().requires_grad_(), x, c, out=(torch.empty_like(x), torch.empty_like(x)), impl=impl)


# ----------------------------------------------------------------------------- autograd
GRAD_FEATURES = [("clip", "guide", "h", "noise", "var"), ("clip", "philox", "var"), ()]


def _grad_inputs(features):
    t = inputs_for(features, (3, 2, 4, 5), torch.float32, "contiguous")
    return {k: v.clone().requires_grad_() for k, v in t.items()}


def _loss(impl, t, c, features, seed=77):
    kw = {k: v for k, v in t.items() if k not in ("x", "model_output")}
    out = sampler_update(t["x"], t["model_output"], c, guidance_scale=2.5, seed=seed if "philox" in features else None,
                         impl=impl, **kw)
    return (out.prev_sample * torch.cos(out.prev_sample)).sum() + (out.pred_original_sample**2).sum()


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("features", GRAD_FEATURES, ids=lambda f: "+".join(f) or "plain")
def test_backward_and_double_backward_match_reference(impl, features):
    c = coeffs_for(features, 3)
    results = {}
    for name in ("torch", impl):
        t = _grad_inputs(features)
        ins = list(t.values())
        g = torch.autograd.grad(_loss(name, t, c, features), ins, create_graph=True)
        gg = torch.autograd.grad(sum((gi**2).sum() for gi in g), ins, allow_unused=True)
        results[name] = (g, gg)
    for (a, b) in zip(results[impl][0], results["torch"][0]):
        assert_close(a, b, rtol=1e-5, atol=1e-5, what="grad")
    for (a, b) in zip(results[impl][1], results["torch"][1]):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            assert_close(a, b, rtol=1e-4, atol=1e-4, what="grad of grad")


def test_coeff_gradients_use_reference():
    x = make((2, 3, 4))
    c = sampler_coeffs(batch_size=2, a_x=1.0, c_0=0.5, c_x=0.5).requires_grad_()
    out = sampler_update(x, x, c)
    (gc,) = torch.autograd.grad(out.prev_sample.sum(), c)
    assert gc.shape == c.shape and gc[:, COEFF_NAMES.index("c_x")].abs().sum() > 0
    if HAVE_CPP:
        with pytest.raises(backend.BackendUnavailableError, match="coeffs"):
            sampler_update(x, x, c, impl="cpp")


# ----------------------------------------------------------------------------- bad input
def _bad_cases():
    x = make((2, 3, 4))
    c = sampler_coeffs(a_x=1.0)
    return [
        (dict(x=x.long()), TypeError, "x has dtype"),
        (dict(model_output=x[:1]), ValueError, "model_output has shape"),
        (dict(coeffs=[1.0] * 12), TypeError, "coeffs must be a tensor"),
        (dict(coeffs=torch.zeros(11, dtype=torch.float64)), ValueError, r"coeffs must have shape \[12\]"),
        (dict(coeffs=torch.zeros(3, 12, dtype=torch.float64)), ValueError, "N = x.shape"),
        (dict(coeffs=c.long()), TypeError, "float64 or float32"),
        (dict(coeffs=sampler_coeffs(clip=0.0)), ValueError, r"coeffs\[\.\.\., clip\] must be > 0"),
        (dict(coeffs=sampler_coeffs(c_x=float("nan"))), ValueError, "finite"),
        (dict(h2=x), ValueError, "h2 needs h1"),
        (dict(uncond=x.half()), TypeError, "uncond has dtype"),
        (dict(guidance_scale=float("inf")), TypeError, "guidance_scale"),
        (dict(guidance_scale="3"), TypeError, "guidance_scale"),
        (dict(seed=-1), ValueError, "seed must be an int"),
        (dict(offset=1.5), ValueError, "offset must be an int"),
        (dict(generator="cpu"), TypeError, "generator must be a torch.Generator"),
    ]


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_is_a_clear_error(impl, case):
    kwargs, exc, msg = _bad_cases()[case]
    x = make((2, 3, 4))
    args = dict(x=x, model_output=x, coeffs=sampler_coeffs(a_x=1.0))
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        sampler_update(args.pop("x"), args.pop("model_output"), args.pop("coeffs"), impl=impl, **args)


@needs_cpp
def test_raw_op_checks_name_arguments():
    x = make((2, 3, 4))
    c = sampler_coeffs(a_x=1.0, c_n=1.0)
    op = torch.ops.fastgen.sampler_update
    with pytest.raises(ValueError, match="no noise source"):
        op(x, x, c, None, 1.0, None, None, None, None, 0, 0, 0)
    with pytest.raises(ValueError, match="noise_mode 1 needs a noise tensor"):
        op(x, x, c, None, 1.0, None, None, None, None, 1, 0, 0)
    with pytest.raises(ValueError, match="noise_mode must be"):
        op(x, x, c, None, 1.0, None, None, None, None, 3, 0, 0)
    with pytest.raises(ValueError, match="var_values scale the noise"):
        op(x, x, sampler_coeffs(a_x=1.0), None, 1.0, None, None, None, x, 0, 0, 0)
    with pytest.raises(ValueError, match="h1 has shape"):
        op(x, x, c, None, 1.0, x[:1], None, None, None, 2, 0, 0)


# ----------------------------------------------------------------------------- opcheck / compile
def _opcheck_samples():
    x, m, u, h = (make((2, 3, 4, 4), seed=s) for s in range(4))
    c = coeffs_for(("clip", "h", "noise", "var"), 2)
    return [
        (x.requires_grad_(), m, sampler_coeffs(a_x=1.0, a_m=-0.5, c_x=0.5, c_0=0.5), None, 1.0, None, None, None, None,
         0, 0, 0),
        (x, m.requires_grad_(), c, u.requires_grad_(), 3.0, h, h.clone(), m.detach().clone(), u.detach().clone(), 1, 0,
         0),
        (x.contiguous(memory_format=torch.channels_last), m, c, None, 1.0, None, None, None, None, 2, 5, 1),
    ]


@needs_cpp
@pytest.mark.parametrize("i", range(3))
def test_opcheck_cpp_ops(i):
    args = _opcheck_samples()[i]
    torch.library.opcheck(torch.ops.fastgen.sampler_update.default, args)
    det = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    outs = (torch.empty_like(det[0]), torch.empty_like(det[0]))
    torch.library.opcheck(torch.ops.fastgen.sampler_update_out.default, det + outs)


@needs_cpp
def test_torch_compile_fullgraph_guided_stochastic_loop():
    """A compiled 3-step loop with guidance, history and in-kernel noise: no graph breaks and equal
    to eager (the coefficients are graph inputs: new values do not recompile)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def loop(x, m, u, cs, seed):
        h = x
        for i in range(3):
            x, x0 = sampler_update(x, m * (i + 1), cs[i], uncond=u, guidance_scale=2.0, h1=h, seed=seed + i)
            h = x0
        return x

    x, m, u = make((2, 3, 8, 8)), make((2, 3, 8, 8), seed=1), make((2, 3, 8, 8), seed=2)
    cs = [sampler_coeffs(batch_size=2, a_x=1.0, a_m=-0.2 * (i + 1), c_x=0.5, c_0=0.4, c_h1=0.1, c_n=0.05)
          for i in range(3)]
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("inductor")
    compiled = torch.compile(loop, backend=cnt, fullgraph=True)
    assert_close(compiled(x, m, u, cs, 10), loop(x, m, u, cs, 10), what="compiled loop", rtol=1e-5, atol=1e-5)
    cs2 = [c * 0.9 for c in cs]
    for c in cs2:
        c[..., COEFF_NAMES.index("clip")] = math.inf
    assert_close(compiled(x, m, u, cs2, 10), loop(x, m, u, cs2, 10), what="new coefficients", rtol=1e-5, atol=1e-5)
    assert cnt.frame_count == 1


def test_sampler_coeffs_builder():
    c = sampler_coeffs(a_x=2.0)
    assert c.shape == (12,) and c[COEFF_NAMES.index("clip")] == math.inf and c[COEFF_NAMES.index("scale")] == 1
    c = sampler_coeffs(a_x=[1.0, 2.0], c_n=0.5)
    assert c.shape == (2, 12) and c[:, 0].tolist() == [1.0, 2.0] and c[:, COEFF_NAMES.index("c_n")].tolist() == [0.5, 0.5]
    assert sampler_coeffs(batch_size=3).shape == (3, 12)
    with pytest.raises(TypeError, match="unknown coefficient 'a_q'"):
        sampler_coeffs(a_q=1.0)
    with pytest.raises(ValueError, match="batch has 3"):
        sampler_coeffs(batch_size=3, a_x=[1.0, 2.0])
