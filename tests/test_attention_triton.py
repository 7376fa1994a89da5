"""The Triton flash-attention kernels (fastgen/kernels/attention.py) through
fastgen.functional.attention(impl="triton"), on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py) or on a GPU: forward, lse and gradients against the
float64 formula, half precision, masks (incl. fully masked rows), strided inputs, the in-kernel
dropout against the reference's Philox mask, double backward, and the ops' registration.
Small shapes: the interpreter is slow; the default block is 16 x 16, so these cover several tiles
and ragged tails."""
import math
import os

import pytest
import torch

pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET", "0") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)

from fastgen.functional import attention  # noqa: E402
from fastgen.ops.attention import _triton_ops, attention_reference, dropout_keep_mask  # noqa: E402

from helpers import assert_close  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"


def _qkv(B, H, Nq, Nk, D, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g).to(dtype).to(DEV).requires_grad_()
                 for shape in ((B, H, Nq, D), (B, H, Nk, D), (B, H, Nk, Dv or D)))


def _naive(q, k, v, mask=None, scale=None):
    """softmax(q k^T scale + mask) v in float64 on the CPU, the textbook formula."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        mask = mask.cpu()
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return torch.softmax(s, dim=-1) @ v, (q, k, v)


def _check(out, q, k, v, mask, tol, go_seed=1):
    want, leaves = _naive(q, k, v, mask)
    assert_close(out.double().cpu(), want, rtol=tol, atol=tol, what="out")
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(go_seed))
    got = torch.autograd.grad(out, (q, k, v), go.to(out.dtype).to(DEV))
    ref = torch.autograd.grad(want, leaves, go.double())
    for name, a, b in zip("qkv", got, ref):
        assert a.dtype == out.dtype
        assert_close(a.double().cpu(), b, rtol=tol, atol=tol, what=f"d{name}")


SHAPES = [  # B, H, N_q, N_kv, D, D_v: self/cross, odd lengths (ragged tiles), the head dims
    (2, 2, 37, 37, 32, None), (1, 2, 33, 7, 40, None), (1, 1, 19, 45, 64, None), (1, 2, 17, 31, 80, None),
    (1, 1, 9, 5, 128, None), (2, 1, 6, 11, 64, 32), (1, 1, 1, 1, 16, None),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_fp32_matches_float64_formula(shape):
    B, H, Nq, Nk, D, Dv = shape
    q, k, v = _qkv(B, H, Nq, Nk, D, Dv)
    out = attention(q, k, v, impl="triton")
    assert out.shape == (B, H, Nq, Dv or D)
    _check(out, q, k, v, None, 2e-5)


def test_lse_is_logsumexp():
    q, k, v = _qkv(2, 2, 21, 35, 40)
    scale = 0.3
    out, lse = _triton_ops()[0](q.detach(), k.detach(), v.detach(), None, scale, 0.0, 0)
    want = torch.logsumexp(q.detach().double() @ k.detach().double().transpose(-1, -2) * scale, dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, 21)
    assert_close(lse.double().cpu(), want.cpu(), rtol=1e-6, atol=1e-5, what="lse")


@pytest.mark.parametrize("kind", ["bool", "additive", "bool_2d", "fully_masked_rows"])
def test_masks(kind):
    B, H, Nq, Nk, D = 2, 2, 19, 23, 32
    q, k, v = _qkv(B, H, Nq, Nk, D)
    g = torch.Generator().manual_seed(7)
    if kind == "additive":
        m = torch.randn(B, H, Nq, Nk, generator=g)
    elif kind == "bool_2d":
        m = torch.rand(Nq, Nk, generator=g) > 0.5
        m[:, 0] = True
    else:
        m = torch.rand(B, 1, Nq, Nk, generator=g) > 0.4
        m[..., 0] = True
        if kind == "fully_masked_rows":
            m[0, :, 3] = False
            m[1, :, Nq - 1] = False
    m = m.to(DEV)
    out = attention(q, k, v, attn_mask=m, impl="triton")
    if kind == "fully_masked_rows":  # torch's convention: 0, not NaN, and zero gradients there
        assert torch.equal(out[0, :, 3].detach().cpu(), torch.zeros(H, D))
        gq, = torch.autograd.grad(out.sum(), q, retain_graph=True)
        assert torch.isfinite(gq).all() and not gq[0, :, 3].any()
        m2 = m.clone()
        m2[0, :, 3] = True
        m2[1, :, Nq - 1] = True
        keep_rows = torch.ones(B, 1, Nq, 1, dtype=torch.bool)
        keep_rows[0, :, 3] = False
        keep_rows[1, :, Nq - 1] = False
        want, _ = _naive(q, k, v, m2)
        assert_close((out.double().cpu() * keep_rows), want.detach() * keep_rows, rtol=2e-5, atol=2e-5, what="out")
        return
    _check(out, q, k, v, m, 2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision(dtype, tol):
    q, k, v = _qkv(2, 2, 29, 37, 64, dtype=dtype)
    out = attention(q, k, v, impl="triton")
    assert out.dtype == dtype
    _check(out, q, k, v, None, tol)


def test_strided_inputs_and_bnhd_layout():
    """q, k, v sliced out of one fused projection (non-unit strides everywhere) in bnhd."""
    B, N, H, D = 2, 21, 3, 40
    qkv = torch.randn(B, N, 3, H, D + 8, generator=torch.Generator().manual_seed(2)).to(DEV).requires_grad_()
    q, k, v = (qkv[:, :, i, :, :D] for i in range(3))
    out = attention(q, k, v, layout="bnhd", impl="triton")
    want = attention(q, k, v, layout="bnhd", impl="torch")
    assert out.shape == (B, N, H, D)
    assert_close(out, want, rtol=2e-5, atol=2e-5, what="out")
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEV)
    g1, = torch.autograd.grad(out, qkv, go)
    g2, = torch.autograd.grad(want, qkv, go)
    assert_close(g1, g2, rtol=2e-5, atol=2e-5, what="d qkv")


def test_scale_argument():
    q, k, v = _qkv(1, 2, 13, 17, 32)
    out = attention(q, k, v, scale=0.05, impl="triton")
    want, _ = _naive(q, k, v, scale=0.05)
    assert_close(out.double().cpu(), want.detach(), rtol=2e-5, atol=2e-5, what="out")


def test_dropout_mask_is_the_reference_philox_mask():
    """With v = identity (N_kv = D_v), out = dropout(P) exactly: its zero pattern is the in-kernel
    keep mask, which must be dropout_keep_mask for the seed the generator gives."""
    B, H, Nq, Nk = 2, 2, 18, 32
    p = 0.3
    q = torch.randn(B, H, Nq, 16, generator=torch.Generator().manual_seed(0)).to(DEV)
    k = torch.randn(B, H, Nk, 16, generator=torch.Generator().manual_seed(1)).to(DEV)
    v = torch.eye(Nk).expand(B, H, Nk, Nk).contiguous().to(DEV)
    out = attention(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(5), impl="triton")
    from fastgen.ops.attention import dropout_seed
    keep = dropout_keep_mask((B, H, Nq, Nk), p, dropout_seed(torch.Generator().manual_seed(5)))
    assert torch.equal(out.cpu() != 0, keep)
    probs = attention(q, k, v, impl="triton")
    assert_close(out.cpu(), (probs.cpu() * keep / (1 - p)), rtol=1e-5, atol=1e-6, what="kept weights")


def test_dropout_statistics():
    keep = dropout_keep_mask((4, 4, 64, 67), 0.25, 1234)
    frac = keep.float().mean().item()
    n = keep.numel()
    assert abs(frac - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)
    # neighbouring columns (same Philox call) and rows are uncorrelated
    k = keep.float() - frac
    for a, b in ((k[..., 1:], k[..., :-1]), (k[..., 1:, :], k[..., :-1, :])):
        corr = (a * b).mean() / k.var()
        assert abs(corr.item()) < 0.02
    assert not torch.equal(keep, dropout_keep_mask((4, 4, 64, 67), 0.25, 1235))


def test_dropout_forward_and_grads_equal_reference():
    q, k, v = _qkv(1, 2, 23, 29, 32)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    out = attention(q, k, v, dropout_p=0.2, generator=gen(), impl="triton")
    again = attention(q, k, v, dropout_p=0.2, generator=gen(), impl="triton")
    assert torch.equal(out, again)
    want = attention_reference(q, k, v, dropout_p=0.2, generator=gen())
    assert_close(out, want, rtol=2e-5, atol=2e-5, what="out")
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(DEV)
    for name, a, b in zip("qkv", torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(want, (q, k, v), go)):
        assert_close(a, b, rtol=2e-5, atol=2e-5, what=f"d{name}")


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_double_backward_gradient_penalty(dropout_p):
    """An R1-style penalty ||d out / d q||^2 through the Triton path, differentiated again, equals
    the reference's (same dropout mask)."""
    q, k, v = _qkv(2, 2, 15, 18, 32, seed=3)
    m = (torch.rand(2, 1, 15, 18, generator=torch.Generator().manual_seed(8)) > 0.3).to(DEV)
    m[..., 0] = True

    def penalty(impl):
        out = attention(q, k, v, attn_mask=m, dropout_p=dropout_p, generator=torch.Generator().manual_seed(9),
                        impl=impl)
        gq, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        return torch.autograd.grad(gq.square().sum(), (q, k, v))

    for name, a, b in zip("qkv", penalty("triton"), penalty("torch")):
        assert_close(a, b, rtol=1e-4, atol=1e-4, what=f"second-order d{name}")


def test_float64_runs_the_reference():
    q, k, v = _qkv(1, 1, 9, 7, 32, dtype=torch.float64)
    out = attention(q, k, v, impl="triton")
    want, _ = _naive(q, k, v)
    assert out.dtype == torch.float64
    assert_close(out.cpu(), want.detach(), rtol=1e-12, atol=1e-12, what="out")


def test_empty_sequences():
    q, k, v = _qkv(1, 2, 0, 5, 32)
    assert attention(q, k, v, impl="triton").shape == (1, 2, 0, 32)
    q, k, v = _qkv(1, 2, 4, 0, 32)
    out = attention(q, k, v, impl="triton")
    assert out.shape == (1, 2, 4, 32) and not out.any()


def test_opcheck_schema_and_autograd_registration():
    """Fake-tensor / AOT parts of opcheck read data pointers under the interpreter: they run in
    tests/test_gpu.py on a GPU."""
    fwd = _triton_ops()[0]
    q, k, v = _qkv(1, 2, 9, 11, 32)
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(fwd, (q, k, v, None, 0.2, 0.0, 0), test_utils=utils)
    mask = torch.zeros(1, 1, 9, 11).to(DEV)
    torch.library.opcheck(fwd, (q, k, v, mask, 0.2, 0.1, 5), test_utils=utils)
    out, lse = fwd(q.detach(), k.detach(), v.detach(), None, 0.2, 0.0, 0)
    bargs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, None, 0.2, 0.0, 0)
    torch.library.opcheck(torch.ops.fastgen.attention_backward_triton.default, bargs, test_utils=utils)
