"""fastgen.functional.attention: SDPA semantics, grads, double backward, layouts, masks, dropout,
the custom op's registration (opcheck, torch.compile) and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from fastgen.functional import attention
from fastgen.ops.attention import attention_reference

from helpers import assert_close


def _qkv(B, H, Nq, Nk, D, Dv=None, dtype=torch.float32, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, H, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Nk, Dv or D, generator=g).to(dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _naive(q, k, v, scale=None, mask=None):
    """softmax(q k^T scale + mask) v in float64, written out (the textbook formula)."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return torch.softmax(s, dim=-1) @ v


def _grads(out, inputs, go):
    return torch.autograd.grad(out, inputs, go)


SHAPES = [  # B, H, N_q, N_kv, D, D_v: self/cross attention, odd lengths, the head dims of the issue
    (2, 3, 37, 37, 32, None), (1, 2, 33, 7, 40, None), (2, 1, 65, 129, 64, None), (1, 2, 17, 31, 80, None),
    (1, 1, 9, 5, 128, None), (2, 2, 6, 11, 64, 32),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("mask", [None, "bool", "additive", "bool_2d"])
def test_forward_and_grads_match_float64_formula(shape, mask):
    B, H, Nq, Nk, D, Dv = shape
    q, k, v = _qkv(B, H, Nq, Nk, D, Dv)
    g = torch.Generator().manual_seed(5)
    m = {None: None,
         "bool": torch.rand(B, 1, Nq, Nk, generator=g) > 0.3,
         "additive": torch.randn(B, H, Nq, Nk, generator=g),
         "bool_2d": torch.rand(Nq, Nk, generator=g) > 0.5}[mask]
    if m is not None and m.dtype == torch.bool:
        m[..., 0] = True  # no fully masked row here (tested separately)
    out = attention(q, k, v, attn_mask=m)
    want = _naive(q, k, v, mask=m)
    assert out.shape == (B, H, Nq, Dv or D) and out.dtype == torch.float32
    assert_close(out.double(), want, rtol=1e-5, atol=2e-6, what="out")
    go = torch.randn(out.shape, generator=g)
    for name, a, b in zip("qkv", _grads(out, (q, k, v), go), _grads(want, (q, k, v), go.double())):
        assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5, what=f"d{name}")
    # and torch's own SDPA, the drop-in contract
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), rtol=1e-5, atol=1e-6, what="vs SDPA")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    q, k, v = _qkv(2, 2, 23, 19, 64, dtype=dtype)
    out = attention(q, k, v)
    assert out.dtype == dtype
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    assert_close(out.double(), _naive(q, k, v), rtol=tol, atol=tol, what="out")
    gq, gk, gv = _grads(out, (q, k, v), torch.ones_like(out))
    assert gq.dtype == dtype and torch.isfinite(gq.float()).all() and torch.isfinite(gv.float()).all()


def test_scale_and_bnhd_layout():
    q, k, v = _qkv(2, 3, 10, 12, 16, grad=False)
    out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout="bnhd", scale=0.7)
    assert out.shape == (2, 10, 3, 16)
    assert_close(out.transpose(1, 2).double(), _naive(q, k, v, scale=0.7), rtol=1e-5, atol=2e-6, what="bnhd")
    nc = q.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()  # a strided head dim
    k.requires_grad_()
    out_nc, out = attention(nc, k, v), attention(q.requires_grad_(), k, v)
    assert_close(out_nc, out, rtol=0, atol=0, what="non-contiguous")
    go = torch.randn_like(out)
    for a, b in zip(_grads(out_nc, (nc, k), go), _grads(out, (q, k), go)):
        assert_close(a, b, rtol=0, atol=0, what="non-contiguous grads")


def test_fully_masked_rows_give_zero_like_sdpa():
    q, k, v = _qkv(1, 1, 4, 5, 8)
    m = torch.ones(4, 5, dtype=torch.bool)
    m[1] = False
    out = attention(q, k, v, attn_mask=m)
    assert torch.equal(out[0, 0, 1], torch.zeros(8))
    assert torch.isfinite(out).all()
    gq, gk, gv = _grads(out, (q, k, v), torch.ones_like(out))
    assert torch.equal(gq[0, 0, 1], torch.zeros(8)) and torch.isfinite(gk).all() and torch.isfinite(gv).all()
    ref = attention_reference(q, k, v, attn_mask=m)
    assert_close(out, ref, rtol=1e-6, atol=1e-6, what="vs reference")


def test_gradcheck_and_gradgradcheck_float64():
    q, k, v = _qkv(1, 2, 5, 4, 8, dtype=torch.float64)
    m = torch.tensor([[True, True, False, True]] * 5)
    fn = lambda a, b, c: attention(a, b, c, attn_mask=m)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))
    q2, k2, v2 = _qkv(1, 1, 3, 6, 4, Dv=3, dtype=torch.float64, seed=2)  # the non-flash path too
    assert torch.autograd.gradgradcheck(lambda a, b, c: attention(a, b, c), (q2, k2, v2))


def test_double_backward_when_grad_out_depends_on_the_inputs():
    """A loss that is not linear in out (grad_out = 2 out depends on q, k, v): the double backward
    must count the path through grad_out once (regression: it was counted twice)."""
    q, k, v = _qkv(2, 2, 7, 9, 8, dtype=torch.float64, seed=4)
    m = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    m[..., 0] = True

    def second(fn):
        out = fn(q, k, v, attn_mask=m)
        gq, gk = torch.autograd.grad(out.square().sum(), (q, k), create_graph=True)
        return torch.autograd.grad(gq.square().sum() + (gk * gk.detach().sign()).sum(), (q, k, v))

    for name, a, b in zip("qkv", second(attention), second(attention_reference)):
        assert_close(a, b, rtol=1e-9, atol=1e-9, what=f"second-order d{name}")
    q, k, v = _qkv(1, 1, 3, 4, 4, dtype=torch.float64, seed=5)  # third order, small
    fn = lambda a, b, c: attention(a, b, c).square().sum()  # noqa: E731
    assert torch.autograd.gradgradcheck(lambda a, b, c: torch.autograd.grad(fn(a, b, c), (a, b, c),
                                                                            create_graph=True), (q, k, v))


def test_r1_penalty_through_self_attention():
    """The reason for the double backward: a gradient penalty on a self-attention critic's input."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 48)
    x = torch.randn(2, 10, 16, requires_grad=True)

    def critic(inp):
        q, k, v = proj(inp).view(2, 10, 3, 16).unbind(2)
        return attention(q[:, None], k[:, None], v[:, None]).sum(dim=(1, 2, 3))

    def critic_ref(inp):
        q, k, v = proj(inp).view(2, 10, 3, 16).unbind(2)
        return attention_reference(q[:, None], k[:, None], v[:, None]).sum(dim=(1, 2, 3))

    grads = []
    for fn in (critic, critic_ref):
        gx, = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        penalty = gx.square().sum(dim=(1, 2)).mean()
        grads.append(torch.autograd.grad(penalty, proj.weight))
    assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5, what="R1 grad of the projection weight")


def test_dropout_statistics_and_determinism():
    q, k, v = _qkv(2, 2, 64, 64, 32, grad=False)
    v = torch.ones_like(v)  # each output = sum of kept weights / (1 - p): mean 1
    out = attention(q, k, v, dropout_p=0.25, generator=torch.Generator().manual_seed(3))
    again = attention(q, k, v, dropout_p=0.25, generator=torch.Generator().manual_seed(3))
    other = attention(q, k, v, dropout_p=0.25, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert abs(float(out.mean()) - 1.0) < 0.02
    assert not torch.allclose(out, torch.ones_like(out))  # some weights were dropped


def test_opcheck_and_compile_fullgraph():
    q, k, v = _qkv(1, 2, 5, 6, 8)
    for args in ((q, k, v, None, 0.3), (q, k, v, torch.zeros(5, 6), 0.3), (q, k, _qkv(1, 2, 5, 6, 8, Dv=4)[2], None, 1.0)):
        opcheck(torch.ops.fastgen.attention.default, args)
    fn = torch.compile(lambda a, b, c: attention(a, b, c, attn_mask=torch.ones(5, 6, dtype=torch.bool)),
                       fullgraph=True)
    out = fn(q, k, v)
    assert_close(out, attention(q, k, v), rtol=1e-6, atol=1e-6, what="compiled")
    gq, = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(gq).all()


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(k=torch.zeros(2, 3, 4, 8)), ValueError, "head counts"),
    (dict(k=torch.zeros(1, 2, 4, 8)), ValueError, "batch sizes"),
    (dict(v=torch.zeros(2, 2, 4, 8, device="meta")), ValueError, "one device"),
    (dict(k=torch.zeros(2, 2, 4, 16)), ValueError, "head dims"),
    (dict(v=torch.zeros(2, 2, 5, 8)), ValueError, "sequence lengths"),
    (dict(q=torch.zeros(2, 2, 3)), ValueError, "q must be 4-D"),
    (dict(k=torch.zeros(2, 2, 4, 8, dtype=torch.float64)), TypeError, "share a dtype"),
    (dict(q=torch.zeros(2, 2, 3, 8, dtype=torch.int64)), TypeError, "q must be float"),
    (dict(attn_mask=torch.zeros(3, 5)), ValueError, "does not broadcast"),
    (dict(attn_mask=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "attn_mask must be bool or floating"),
    (dict(dropout_p=1.0), ValueError, "dropout_p"),
    (dict(scale=float("nan")), ValueError, "scale"),
    (dict(layout="nbhd"), ValueError, "layout"),
    (dict(q="q"), TypeError, "q must be a tensor"),
])
def test_bad_input_names_the_argument(kwargs, err, match):
    args = dict(q=torch.zeros(2, 2, 3, 8), k=torch.zeros(2, 2, 4, 8), v=torch.zeros(2, 2, 4, 8))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(err, match=match):
        attention(q, k, v, **args)


def test_empty_sequences():
    q, k, v = _qkv(1, 2, 0, 4, 8)
    assert attention(q, k, v).shape == (1, 2, 0, 8)
    q, k, v = _qkv(1, 2, 3, 0, 8)
    assert torch.equal(attention(q, k, v), torch.zeros(1, 2, 3, 8))
