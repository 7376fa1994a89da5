"""The Triton group_norm kernels (fastgen/kernels/group_norm.py) on CPU tensors through the Triton
interpreter (TRITON_INTERPRET=1, set by conftest.py), against plain PyTorch: F.group_norm, the
(1 + scale) / shift modulation and the activation, evaluated in float64 on the same input values,
with autograd for the five gradients. Small shapes: the interpreter is slow."""
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET", "0") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)

from fastgen.kernels import group_norm as K  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"
EPS = 1e-5
# (atol, rtol) of the outputs and gradients per x dtype, against a float64 reference
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 3e-2)}
SHAPES = [((2, 6, 5, 7), 3), ((3, 8, 4, 4), 4), ((2, 4, 3), 2), ((2, 6), 3), ((1, 32, 9, 9), 32),
          ((1, 32, 9, 9), 1)]
ACTS = {0: lambda z: z, 1: F.silu, 2: F.gelu}


def make(shape, G, dtype=torch.float32, pdtype=None, w=True, b=True, s=True, t=True, offset=0.0):
    """x (dtype), weight, bias (C,), scale, shift (N, C) (pdtype, default x's dtype; None when off)."""
    pdtype = pdtype or dtype
    n, c = shape[0], shape[1]
    x = (torch.randn(shape, dtype=torch.float64) + offset).to(dtype).to(DEV)

    def p(on, sh, lo=1.0):
        return (lo * torch.randn(sh, dtype=torch.float64)).to(pdtype).to(DEV) if on else None

    return x, p(w, (c,)), p(b, (c,)), p(s, (n, c), 0.5), p(t, (n, c))


def reference(x, G, w, b, s, t, act, gy):
    """float64 PyTorch: y, mean, rstd, and (gx, gw, gb, gscale, gshift) (None for absent inputs)."""
    leaves = [None if v is None else v.detach().double().cpu().requires_grad_() for v in (x, w, b, s, t)]
    xd, wd, bd, sd, td = leaves
    n, c = x.shape[0], x.shape[1]
    # affine applied by hand: F.group_norm's float64 backward fails for a bias without a weight
    z = F.group_norm(xd, G, None, None, EPS)
    bshape = (n, c) + (1,) * (x.dim() - 2)
    cshape = (c,) + (1,) * (x.dim() - 2)
    if wd is not None:
        z = z * wd.reshape(cshape)
    if bd is not None:
        z = z + bd.reshape(cshape)
    if sd is not None:
        z = z * (1 + sd.reshape(bshape))
    if td is not None:
        z = z + td.reshape(bshape)
    y = ACTS[act](z)
    grads = torch.autograd.grad(y, [v for v in leaves if v is not None], gy.double().cpu())
    it = iter(grads)
    grads = [None if v is None else next(it) for v in leaves]
    xg = xd.detach().reshape(n, G, -1)
    mean = xg.mean(-1)
    rstd = (xg.var(-1, unbiased=False) + EPS).rsqrt()
    return y.detach(), mean, rstd, grads


def close(actual, expected, dtype, name, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


def run_both(x, G, w, b, s, t, act, needs=(True,) * 5, **kw):
    y, mean, rstd = K.group_norm_fwd(x, G, w, b, EPS, act, s, t, **kw)
    gy = torch.randn(y.shape, dtype=torch.float64).to(y.dtype).to(DEV)
    grads = K.group_norm_bwd(gy, x, mean, rstd, G, w, b, act, s, t, needs, **kw)
    return (y, mean, rstd, grads), reference(x, G, w, b, s, t, act, gy)


def check_all(x, G, w, b, s, t, act, dtype=torch.float32, **kw):
    (y, mean, rstd, grads), (yr, mr, rr, gr) = run_both(x, G, w, b, s, t, act, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    assert mean.shape == rstd.shape == (x.shape[0], G)
    assert mean.dtype == rstd.dtype == torch.float32
    close(y, yr, dtype, "y")
    torch.testing.assert_close(mean.double().cpu(), mr, atol=1e-5 if dtype == torch.float32 else 1e-3,
                               rtol=1e-5)
    torch.testing.assert_close(rstd.double().cpu(), rr, atol=1e-5, rtol=1e-4 if dtype == torch.float32 else 1e-3)
    for name, g, ref, inp in zip(("gx", "gw", "gb", "gscale", "gshift"), grads, gr, (x, w, b, s, t)):
        if inp is None:
            continue
        assert g is not None, name
        assert g.shape == inp.shape and g.dtype == inp.dtype, name
        # parameter grads sum over N * HW (and the group) terms: scale the absolute tolerance with the count
        close(g, ref, inp.dtype if name != "gx" else dtype, name, scale=1.0 if name == "gx" else 4.0)


# ------------------------------------------------------------------------------------ forward/backward
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("shape,G", SHAPES)
def test_fp32_all_inputs(shape, G, act):
    x, w, b, s, t = make(shape, G)
    check_all(x, G, w, b, s, t, act)


@pytest.mark.parametrize("present", ["----", "w---", "-b--", "--s-", "---t", "wb--", "--st", "w-s-", "-b-t"])
@pytest.mark.parametrize("act", [0, 2])
def test_optional_inputs(present, act):
    flags = [ch != "-" for ch in present]
    x, w, b, s, t = make((2, 6, 5, 7), 3, w=flags[0], b=flags[1], s=flags[2], t=flags[3])
    check_all(x, 3, w, b, s, t, act)


@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pdtype", ["same", torch.float32])
def test_low_precision(dtype, pdtype, act):
    pd = dtype if pdtype == "same" else pdtype
    x, w, b, s, t = make((2, 8, 4, 5), 4, dtype=dtype, pdtype=pd)
    check_all(x, 4, w, b, s, t, act, dtype=dtype)


def test_fp32_params_with_fp16_x_keep_param_dtypes():
    x, w, b, s, t = make((2, 4, 3), 2, dtype=torch.float16, pdtype=torch.float32)
    y, mean, rstd = K.group_norm_fwd(x, 2, w, b, EPS, 1, s, t)
    gx, gw, gb, gs, gt = K.group_norm_bwd(torch.ones_like(y), x, mean, rstd, 2, w, b, 1, s, t, (True,) * 5)
    assert y.dtype == gx.dtype == torch.float16
    assert gw.dtype == gb.dtype == gs.dtype == gt.dtype == torch.float32


@pytest.mark.parametrize("max_block", [4, 16])
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 7), 3), ((2, 12), 2), ((1, 8, 3, 3), 2)])
def test_multi_tile(shape, G, act, max_block):
    """Tiles smaller than the group and the channel rows: several statistics tiles merged (partial
    last tile), several channel blocks and spatial tiles per program."""
    x, w, b, s, t = make(shape, G)
    check_all(x, G, w, b, s, t, act, max_block=max_block)


def test_large_mean_is_accurate():
    """|mean| >> std: the centred (Welford/Chan) statistics keep fp32 accurate where
    E[x^2] - E[x]^2 would lose every digit of the variance."""
    x, w, b, s, t = make((2, 8, 16, 16), 2, offset=3000.0)
    (y, mean, rstd, _), (yr, mr, rr, _) = run_both(x, 2, w, b, s, t, 1, needs=(False,) * 5, max_block=64)
    torch.testing.assert_close(rstd.double(), rr, rtol=2e-4, atol=0)
    torch.testing.assert_close(mean.double(), mr, rtol=1e-6, atol=0)
    torch.testing.assert_close(y.double(), yr, atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------ needs / edge cases
@pytest.mark.parametrize("needs", [(True, False, False, False, False), (False, True, True, False, False),
                                   (False, False, False, True, True), (False, True, False, True, False),
                                   (False,) * 5])
def test_needs_subsets(needs):
    x, w, b, s, t = make((2, 6, 5, 7), 3)
    (_, _, _, grads), (_, _, _, gr) = run_both(x, 3, w, b, s, t, 2, needs=needs)
    for need, g, ref, name in zip(needs, grads, gr, ("gx", "gw", "gb", "gscale", "gshift")):
        if not need:
            assert g is None, name
        else:
            close(g, ref, torch.float32, name, scale=4.0)


def test_non_contiguous_inputs():
    x, w, b, s, t = make((2, 6, 5, 7), 3)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, not contiguous
    st = s.t().contiguous().t()
    assert not xt.is_contiguous() and not st.is_contiguous()
    check_all(xt, 3, w, b, st, t, 1)


def test_empty_batch():
    x = torch.empty((0, 4, 3, 3), device=DEV)
    y, mean, rstd = K.group_norm_fwd(x, 2, None, None, EPS, 0, None, None)
    assert y.shape == x.shape and mean.shape == rstd.shape == (0, 2)
    gx, gw, gb, gs, gt = K.group_norm_bwd(y, x, mean, rstd, 2, torch.ones(4), torch.zeros(4), 0, None, None,
                                          (True, True, True, False, False))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros(4)) and torch.equal(gb, torch.zeros(4))


def test_bad_groups():
    x = torch.randn(2, 6, 3, device=DEV)
    with pytest.raises(ValueError, match="divisible"):
        K.group_norm_fwd(x, 4, None, None, EPS, 0, None, None)


@pytest.mark.parametrize("split", [2, 3, 7])
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 7), 3), ((1, 4, 9, 9), 1), ((2, 24), 1)])
def test_split_forward(shape, G, act, split):
    """The split forward (partial statistics per chunk, torch merge, chunked output pass) with chunks
    of several tiles and a partial last chunk."""
    x, w, b, s, t = make(shape, G)
    y, mean, rstd = K.group_norm_fwd(x, G, w, b, EPS, act, s, t, max_block=8, split=split)
    y1, mean1, rstd1 = K.group_norm_fwd(x, G, w, b, EPS, act, s, t, max_block=8, split=1)
    yr, mr, rr, _ = reference(x, G, w, b, s, t, act, torch.zeros(x.shape))
    close(y, yr, torch.float32, "y")
    torch.testing.assert_close(mean.double(), mr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd.double(), rr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y, y1, atol=1e-5, rtol=1e-5)


def test_split_forward_without_params_and_large_mean():
    x, _, _, _, _ = make((1, 8, 16, 16), 2, offset=3000.0)
    y, mean, rstd = K.group_norm_fwd(x, 2, None, None, EPS, 0, None, None, max_block=64, split=5)
    yr, mr, rr, _ = reference(x, 2, None, None, None, None, 0, torch.zeros(x.shape))
    torch.testing.assert_close(rstd.double(), rr, rtol=2e-4, atol=0)
    torch.testing.assert_close(y.double(), yr, atol=2e-3, rtol=1e-3)
