"""The Triton sampler_update kernel (fastgen/kernels/sampler_update.py) on CPU tensors through the
Triton interpreter (TRITON_INTERPRET=1, set by conftest.py), against a local float64 formula and
fastgen.ops._philox's noise stream. Small shapes: the interpreter is slow."""
import math

import pytest
import torch

pytest.importorskip("triton")

from fastgen.ops import _philox as P  # noqa: E402
from fastgen.kernels import sampler_update as K  # noqa: E402

N_COEFFS = 12
IDX = {k: i for i, k in enumerate(("a_x", "a_m", "clip", "scale", "c_x", "c_0", "c_m", "c_h1", "c_h2", "c_n",
                                   "lv_lo", "lv_hi"))}
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


@pytest.fixture(scope="module")
def ops():
    K.register_triton_ops()
    return torch.ops.fastgen.sampler_update_triton, torch.ops.fastgen.sampler_update_out_triton


def make(shape, dtype=torch.float32, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(dtype)
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # not dense
        big = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


def coeffs(n=None, seed=0, clip=math.inf, **fixed):
    """Random coefficients (float64, [12] or [n, 12]); clip/scale and `fixed` set explicitly."""
    g = torch.Generator().manual_seed(100 + seed)
    shape = (N_COEFFS,) if n is None else (n, N_COEFFS)
    c = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1)
    c[..., IDX["scale"]] = 1.0 + 0.25 * c[..., IDX["scale"]]
    c[..., IDX["clip"]] = torch.as_tensor(clip, dtype=torch.float64)
    c[..., IDX["lv_lo"]] = -3.0 + c[..., IDX["lv_lo"]]
    c[..., IDX["lv_hi"]] = -1.0 + c[..., IDX["lv_hi"]]
    for k, v in fixed.items():
        c[..., IDX[k]] = torch.as_tensor(v, dtype=torch.float64)
    return c


def formula(x, m, c, uncond=None, g=1.0, h1=None, h2=None, noise=None, var=None):
    """The update in float64 (sampler.h), fp32-rounded coefficients like the kernels."""
    c = c.float().double()

    def col(k):
        v = c[..., IDX[k]]
        return v.reshape((-1,) + (1,) * (x.dim() - 1)) if c.dim() == 2 else v

    d = lambda t: t.double()  # noqa: E731
    mm = d(m)
    if uncond is not None:
        mm = d(uncond) + float(torch.tensor(g, dtype=torch.float32)) * (mm - d(uncond))
    raw = col("a_x") * d(x) + col("a_m") * mm
    clip = col("clip")
    x0 = torch.where(raw > clip, clip, torch.where(raw < -clip, -clip, raw)) * col("scale")
    out = col("c_x") * d(x) + col("c_0") * x0 + col("c_m") * mm
    if h1 is not None:
        out = out + col("c_h1") * d(h1)
    if h2 is not None:
        out = out + col("c_h2") * d(h2)
    if noise is not None:
        n = d(noise)
        if var is not None:
            lo, hi = col("lv_lo"), col("lv_hi")
            n = n * torch.exp(0.5 * (lo + (d(var) + 1) / 2 * (hi - lo)))
        out = out + col("c_n") * n
    return out, x0


def check(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    assert actual.dtype == dtype, what
    torch.testing.assert_close(actual.double(), expected.to(dtype).double(), rtol=rtol, atol=atol, msg=what,
                               equal_nan=True)


def run_case(op, shape, dtype=torch.float32, layout="contiguous", per_sample=False, guide=False, nh=0,
             mode=0, var=False, seed=3, offset=5, clip=math.inf):
    x = make(shape, dtype, layout, 0)
    m = make(shape, dtype, layout, 1)
    u = make(shape, dtype, layout, 2) if guide else None
    hs = [make(shape, dtype, layout, 3 + k) for k in range(nh)]
    h1 = hs[0] if nh >= 1 else None
    h2 = hs[1] if nh >= 2 else None
    noise = make(shape, dtype, layout, 6) if mode == 1 else None
    v = (torch.rand(shape, generator=torch.Generator().manual_seed(7)) * 2 - 1).to(dtype) if var else None
    if var and layout == "channels_last":
        v = v.contiguous(memory_format=torch.channels_last)
    c = coeffs(shape[0] if per_sample else None, clip=clip)
    g = 3.5 if guide else 1.0
    xp, x0 = op(x, m, c, u, g, h1, h2, noise, v, mode, seed, offset)
    ref_noise = noise if mode == 1 else (P.philox_normal_like(xp, seed, offset) if mode == 2 else None)
    ep, e0 = formula(x, m, c, u, g, h1, h2, ref_noise, v)
    what = f"{shape} {dtype} {layout} ps={per_sample} guide={guide} nh={nh} mode={mode} var={var}"
    check(x0, e0, dtype, "x0 " + what)
    check(xp, ep, dtype, "x_prev " + what)
    return x, xp, x0


# ------------------------------------------------------------------------------ the noise stream
@pytest.mark.parametrize("numel,seed,offset", [(1, 0, 0), (4099, 7, 3), (2050, -1, 2**40 + 5), (33, 2**63 - 1, -7)])
def test_triton_philox_stream(numel, seed, offset):
    out = K.launch_philox_normal(torch.empty(numel), seed, offset)
    ref = P.philox_normal(numel, seed, offset)
    assert (out - ref).abs().max().item() < 2e-6


# ------------------------------------------------------------------------------ forward
def test_basic_no_noise(ops):
    run_case(ops[0], (2, 3, 5, 7))


def test_everything_channels_last(ops):
    """channels_last, per-sample coeffs, guidance, h1+h2, in-kernel noise with learned variance; the
    outputs keep x's layout and the noise follows the output's memory order."""
    x, xp, x0 = run_case(ops[0], (3, 4, 8, 8), layout="channels_last", per_sample=True, guide=True, nh=2, mode=2,
                         var=True)
    assert xp.is_contiguous(memory_format=torch.channels_last) and x0.stride() == xp.stride()


@pytest.mark.parametrize("mode,var", [(1, False), (1, True), (2, False)])
def test_noise_modes_per_sample(ops, mode, var):
    # (2, 3, 5, 7): 105 elements per sample, so Philox groups straddle sample boundaries
    run_case(ops[0], (2, 3, 5, 7), per_sample=True, nh=1, mode=mode, var=var)


def test_multiple_programs_and_tail(ops):
    run_case(ops[0], (3, 1001), per_sample=True, guide=True, mode=2, seed=-2, offset=2**35 + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(ops, dtype):
    run_case(ops[0], (2, 3, 5, 7), dtype=dtype, per_sample=True, guide=True, nh=2, mode=2, var=True)


def test_clip_and_nan(ops):
    c = coeffs(3, clip=[0.5, math.inf, 2.0])
    x = make((3, 2, 4, 4), seed=0) * 4
    m = make((3, 2, 4, 4), seed=1)
    x[0, 0, 0, 0] = float("nan")
    x[1, 1, 2, 3] = float("nan")  # a sample without clamp
    xp, x0 = ops[0](x, m, c, None, 1.0, None, None, None, None, 0, 0, 0)
    ep, e0 = formula(x, m, c)
    check(x0, e0, torch.float32, "x0")
    check(xp, ep, torch.float32, "x_prev")
    assert torch.isnan(x0[0, 0, 0, 0]) and torch.isnan(xp[0, 0, 0, 0])
    assert torch.isnan(x0[1, 1, 2, 3]) and torch.isnan(xp[1, 1, 2, 3])
    assert torch.isnan(x0).sum() == 2
    assert x0[0].nan_to_num(0.0).abs().max() <= 0.5 * c[0, IDX["scale"]].abs() + 1e-6
    assert x0[1].nan_to_num(0.0).abs().max() > 2.0  # no clamp


def test_float32_coeffs_and_device_coeffs(ops):
    x, m = make((2, 9)), make((2, 9), seed=1)
    c = coeffs(2)
    a = ops[0](x, m, c, None, 1.0, None, None, None, None, 0, 0, 0)
    b = ops[0](x, m, c.float(), None, 1.0, None, None, None, None, 0, 0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_non_dense_inputs_are_copied(ops):
    x, m = make((2, 3, 5), layout="strided"), make((2, 3, 5), seed=1)
    c = coeffs()
    xp, x0 = ops[0](x, m, c, None, 1.0, None, None, None, None, 0, 0, 0)
    assert xp.is_contiguous()
    ep, e0 = formula(x, m, c)
    check(xp, ep, torch.float32, "x_prev")


def test_zero_dim_and_empty(ops):
    c = coeffs()
    x, m = torch.tensor(0.5), torch.tensor(-1.0)
    xp, x0 = ops[0](x, m, c, None, 1.0, None, None, None, None, 2, 1, 2)
    ep, e0 = formula(x, m, c, noise=P.philox_normal(1, 1, 2)[0])
    check(xp, ep, torch.float32, "x_prev")
    e = torch.empty(0, 3)
    xp, x0 = ops[0](e, e, c, None, 1.0, None, None, None, None, 0, 0, 0)
    assert xp.shape == (0, 3)


# ------------------------------------------------------------------------------ out=
@pytest.mark.parametrize("out_layout", ["same", "transposed"])
def test_out_variant(ops, out_layout):
    shape = (2, 3, 4, 5)
    x, m, h1 = make(shape), make(shape, seed=1), make(shape, seed=2)
    c = coeffs(2)
    if out_layout == "same":
        xp, x0 = torch.empty(shape), torch.empty(shape)
    else:  # not batch-outer: written through a temporary
        xp = torch.empty(shape[::-1]).permute(3, 2, 1, 0)
        x0 = torch.empty(shape[::-1]).permute(3, 2, 1, 0)
    ops[1](x, m, c, None, 1.0, h1, None, None, None, 2, 9, 1, xp, x0)
    ep, e0 = formula(x, m, c, h1=h1, noise=P.philox_normal_like(torch.empty(shape), 9, 1))
    check(xp, ep, torch.float32, "x_prev")
    check(x0, e0, torch.float32, "x0")


def test_out_in_place_over_x(ops):
    x, m = make((2, 8)), make((2, 8), seed=1)
    c = coeffs()
    ep, e0 = formula(x, m, c)
    x0 = torch.empty_like(x)
    ops[1](x, m, c, None, 1.0, None, None, None, None, 0, 0, 0, x, x0)
    check(x, ep, torch.float32, "x_prev (in place)")


# ------------------------------------------------------------------------------ bad input
def test_bad_input(ops):
    x, m = make((2, 4)), make((2, 4), seed=1)
    c = coeffs()
    with pytest.raises(ValueError, match="coeffs must have shape"):
        ops[0](x, m, coeffs(3), None, 1.0, None, None, None, None, 0, 0, 0)
    with pytest.raises(ValueError, match="clip"):
        ops[0](x, m, coeffs(clip=0.0), None, 1.0, None, None, None, None, 0, 0, 0)
    with pytest.raises(ValueError, match="not finite"):
        ops[0](x, m, coeffs(c_x=math.nan), None, 1.0, None, None, None, None, 0, 0, 0)
    with pytest.raises(ValueError, match="noise_mode 1 needs"):
        ops[0](x, m, c, None, 1.0, None, None, None, None, 1, 0, 0)
    with pytest.raises(ValueError, match="noise_mode must be"):
        ops[0](x, m, c, None, 1.0, None, None, None, None, 3, 0, 0)
    with pytest.raises(ValueError, match="h2 needs h1"):
        ops[0](x, m, c, None, 1.0, None, m, None, None, 0, 0, 0)
    with pytest.raises(TypeError, match="dtype"):
        ops[0](x, m.double(), c, None, 1.0, None, None, None, None, 0, 0, 0)
    with pytest.raises(TypeError, match="coeffs must be float64 or float32"):
        ops[0](x, m, c.half(), None, 1.0, None, None, None, None, 0, 0, 0)


def test_register_idempotent(ops):
    assert K.register_triton_ops() is K.register_triton_ops()


def test_opcheck_schema(ops):
    """Fake-tensor / AOT parts of opcheck need a GPU (the interpreter reads data pointers; see
    tests/test_ddim_step.py); the schema check (no undeclared mutation, no aliasing) runs here."""
    x = make((2, 3, 4, 4), layout="channels_last")
    m, h1 = make((2, 3, 4, 4), seed=1), make((2, 3, 4, 4), seed=2)
    args = (x, m, coeffs(2), None, 2.0, h1, None, None, None, 2, 5, 6)
    torch.library.opcheck(ops[0], args, test_utils=("test_schema",))
    outs = (torch.empty_like(x), torch.empty_like(x))
    torch.library.opcheck(ops[1], args + outs, test_utils=("test_schema",))
