"""fastgen's tiled CPU attention kernels (torch.ops.fastgen.attention_tiled and
attention_tiled_backward, csrc/cpu/attention.cpp) against a float64 softmax(q k^T scale + mask) v,
its logsumexp and its autograd gradients, at every ISA variant this CPU runs (FASTGEN_CPU_ATTN_ISA
caps the variant): odd lengths and tile tails, head dims, D_v != D, dtypes, masks (broadcast, fully
masked rows), strided inputs, online-softmax rescaling, bad input; then the wiring in
fastgen.functional.attention (dispatch, gradients) and the object code of the per-ISA variants."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import fastgen  # noqa: F401  (loads the extension)
from fastgen import _extension
from fastgen.functional import attention

from helpers import assert_close

pytestmark = pytest.mark.skipif(_extension.load() is None or not hasattr(torch.ops.fastgen, "attention_tiled"),
                                reason="fastgen._C (with attention_tiled) is not built")

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"baseline": 0, "v3": 1, "v4": 2}
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def _cpu_level() -> int:
    return torch.ops.fastgen.attention_tiled_isa_level() if hasattr(torch.ops.fastgen, "attention_tiled") else -1


@pytest.fixture(params=list(LEVELS), ids=list(LEVELS))
def isa(request, monkeypatch):
    if LEVELS[request.param] > _cpu_level():
        pytest.skip(f"this CPU does not run the {request.param} variant")
    monkeypatch.setenv("FASTGEN_CPU_ATTN_ISA", request.param)
    return request.param


def _qkv(B, H, Nq, Nk, D, Dv=None, dtype=torch.float32, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, Nq, D, generator=g) * spread).to(dtype)
    k = torch.randn(B, H, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Nk, Dv or D, generator=g).to(dtype)
    return q, k, v


def _reference(q, k, v, scale, mask=None):
    """(out, lse) in float64 from the textbook formula; fully masked rows: out 0, lse +inf."""
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask.double()
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    out = p @ v.double()
    return out, torch.where(torch.isfinite(lse), lse, torch.full_like(lse, math.inf))


def _check(q, k, v, mask=None, scale=None, what=""):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, mask, scale)
    want, want_lse = _reference(q, k, v, scale, mask)
    assert out.dtype == q.dtype and out.shape == want.shape and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    rtol, atol = TOL[q.dtype]
    assert_close(out.double(), want, rtol=rtol, atol=atol, what=f"{what} out")
    assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5, what=f"{what} lse")
    return out, lse


# B, H, N_q, N_kv, D, D_v: odd lengths (1, 7, 37, 129), N_q != N_kv, more query blocks (64 rows) and
# key tiles (96 keys) than one, their tails, the head dims of U-Nets, D_v != D, scaled-down issue shapes
SHAPES = [
    (1, 1, 1, 1, 64, None), (2, 3, 7, 7, 32, None), (2, 3, 37, 37, 40, None), (1, 2, 129, 129, 64, None),
    (1, 2, 37, 129, 80, None), (2, 1, 129, 7, 128, None), (1, 1, 65, 193, 64, 40), (1, 2, 17, 31, 40, 80),
    (2, 2, 6, 11, 64, 32), (1, 1, 9, 100, 128, 16), (2, 2, 256, 256, 64, None), (2, 4, 128, 77, 64, None),
    (1, 1, 64, 96, 48, 48), (1, 1, 3, 5, 8, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matches_float64_reference_fp32(isa, shape):
    B, H, Nq, Nk, D, Dv = shape
    _check(*_qkv(B, H, Nq, Nk, D, Dv), what=f"{isa} {shape}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(2, 3, 37, 129, 64, None), (1, 2, 70, 33, 40, 80), (1, 1, 7, 1, 128, None)],
                         ids=str)
def test_half_precision_storage(isa, dtype, shape):
    B, H, Nq, Nk, D, Dv = shape
    _check(*_qkv(B, H, Nq, Nk, D, Dv, dtype=dtype), what=f"{isa} {dtype}")


def test_online_softmax_rescales_across_tiles(isa):
    """Scores that grow along the keys: every key tile raises the running max, so each tile rescales
    the accumulated output and sum (a kernel that forgot alpha would be off by orders of magnitude);
    and the reverse order, where the first tile holds the max."""
    q, k, v = _qkv(1, 2, 70, 300, 64)
    u = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(1)), dim=0)
    q = q + 4 * u
    k = k + torch.linspace(0, 60, 300)[:, None] * u  # score_j grows by ~ j / 10 (scale 1/8)
    s = (q.double() @ k.double().transpose(-1, -2) / 8).split(96, dim=-1)  # the kernel's key tiles
    tile_max = torch.stack([t.amax(dim=-1) for t in s])
    assert (tile_max[1:] > tile_max[:-1]).float().mean() > 0.9  # the running max rises tile by tile
    _check(q, k, v, what="growing")
    _check(q, k.flip(2), v.flip(2), what="shrinking")


def test_large_scores_do_not_overflow(isa):
    """Scores of several hundred (exp would overflow fp32 without the running max). The tolerance is
    the conditioning of fp32 scores of that size (|s| 1e-7 per element), not the kernel's."""
    q, k, v = _qkv(1, 2, 37, 130, 64, spread=30.0)
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, None, 0.125)
    want, want_lse = _reference(q, k, v, 0.125)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all() and lse.abs().max() > 100
    assert_close(out.double(), want, rtol=2e-3, atol=2e-3, what="huge scores")
    assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-4, what="huge scores lse")


def _masks(B, H, Nq, Nk, dtype):
    g = torch.Generator().manual_seed(7)
    neg = float("-inf")
    keep = torch.rand(B, H, Nq, Nk, generator=g) > 0.4
    keep[..., 0] = True
    pad = torch.zeros(B, 1, 1, Nk)
    pad[0, ..., Nk // 2:] = neg  # key padding: stride 0 over heads and queries
    first_tile_masked = torch.zeros(Nq, Nk)
    first_tile_masked[:, :min(Nk - 1, 100)] = neg  # the running max starts at -inf for a whole tile
    per_query = torch.randn(1, H, Nq, 1, generator=g)  # broadcast along the keys (stride 0 on the last dim)
    return {
        "bool": torch.zeros(B, H, Nq, Nk).masked_fill(~keep, neg),
        "additive": torch.randn(B, H, Nq, Nk, generator=g),
        "bool_2d": torch.zeros(Nq, Nk).masked_fill(~keep[0, 0], neg),
        "key_padding": pad,
        "first_tile_masked": first_tile_masked,
        "per_query": per_query,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["bool", "additive", "bool_2d", "key_padding", "first_tile_masked", "per_query"])
def test_masks(isa, dtype, kind):
    B, H, Nq, Nk = 2, 2, 67, 130
    q, k, v = _qkv(B, H, Nq, Nk, 64, dtype=dtype)
    mask = _masks(B, H, Nq, Nk, dtype)[kind].to(dtype)
    _check(q, k, v, mask=mask, what=f"{isa} {kind}")


def test_fully_masked_rows_give_zero_and_infinite_lse(isa):
    q, k, v = _qkv(2, 2, 70, 130, 40)
    mask = torch.zeros(70, 130)
    mask[3] = float("-inf")
    mask[69] = float("-inf")
    mask[10, 100:] = float("-inf")  # masked only in the second key tile
    out, lse = _check(q, k, v, mask=mask, what="fully masked")
    assert torch.equal(out[:, :, 3], torch.zeros(2, 2, 40)) and torch.equal(out[:, :, 69], torch.zeros(2, 2, 40))
    assert torch.isinf(lse[:, :, [3, 69]]).all() and (lse[:, :, [3, 69]] > 0).all()
    assert torch.isfinite(out).all()


def test_strided_inputs_are_read_in_place(isa):
    q, k, v = _qkv(2, 3, 37, 50, 64)
    want = torch.ops.fastgen.attention_tiled(q, k, v, None, 0.2)
    bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]  # (B, N, H, D) memory
    strided_d = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # a strided head dim (copied)
    big = torch.zeros(2, 3, 100, 64)
    big[:, :, ::2] = k  # every other row: row stride 128
    kb = k[:1].expand(2, -1, -1, -1)  # stride 0 on the batch dim
    for what, args in (("bnhd", bnhd), ("strided head dim", (strided_d, k, v)), ("row stride", (q, big[:, :, ::2], v))):
        got = torch.ops.fastgen.attention_tiled(*args, None, 0.2)
        assert_close(got[0], want[0], rtol=0, atol=0, what=what)
        assert_close(got[1], want[1], rtol=0, atol=0, what=what)
    _check(q, kb, v.contiguous(), what="expanded batch")


def test_empty():
    q, k, v = _qkv(1, 2, 0, 5, 16)
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, None, 1.0)
    assert out.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)
    q, k, v = _qkv(1, 2, 3, 0, 16)
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, None, 1.0)
    assert torch.equal(out, torch.zeros(1, 2, 3, 16)) and torch.isinf(lse).all()


@pytest.mark.parametrize("args, err, match", [
    (dict(q=torch.zeros(2, 3, 8)), ValueError, "q must be 4-D"),
    (dict(k=torch.zeros(2, 2, 4, 8, dtype=torch.bfloat16)), TypeError, "share a dtype"),
    (dict(q=torch.zeros(2, 2, 3, 8, dtype=torch.float64), k=torch.zeros(2, 2, 4, 8, dtype=torch.float64),
          v=torch.zeros(2, 2, 4, 8, dtype=torch.float64)), TypeError, "q has dtype"),
    (dict(v=torch.zeros(2, 2, 4, 8, dtype=torch.int32)), TypeError, "v has dtype"),
    (dict(k=torch.zeros(2, 3, 4, 8)), ValueError, "head counts"),
    (dict(k=torch.zeros(1, 2, 4, 8)), ValueError, "batch sizes"),
    (dict(k=torch.zeros(2, 2, 4, 16)), ValueError, "head dims"),
    (dict(v=torch.zeros(2, 2, 5, 8)), ValueError, "sequence lengths"),
    (dict(mask=torch.zeros(3, 5)), ValueError, "mask of shape"),
    (dict(mask=torch.zeros(1, 1, 1, 2, 3, 4)), ValueError, "mask must have at most 4 dims"),
    (dict(mask=torch.zeros(3, 4, dtype=torch.bool)), TypeError, "mask must have q's dtype"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
])
def test_bad_input_names_the_argument(args, err, match):
    a = dict(q=torch.zeros(2, 2, 3, 8), k=torch.zeros(2, 2, 4, 8), v=torch.zeros(2, 2, 4, 8), mask=None, scale=1.0)
    a.update(args)
    with pytest.raises(err, match=match):
        torch.ops.fastgen.attention_tiled(a["q"], a["k"], a["v"], a["mask"], a["scale"])


def test_bad_isa_variable(monkeypatch):
    monkeypatch.setenv("FASTGEN_CPU_ATTN_ISA", "avx9000")
    with pytest.raises(ValueError, match="FASTGEN_CPU_ATTN_ISA"):
        torch.ops.fastgen.attention_tiled(*_qkv(1, 1, 2, 2, 8), None, 1.0)


def test_opcheck():
    q, k, v = _qkv(1, 2, 5, 70, 40, Dv=24)
    for mask in (None, torch.zeros(5, 70), torch.zeros(1, 2, 5, 70).masked_fill(torch.rand(1, 2, 5, 70) > 0.5, -1e4)):
        torch.library.opcheck(torch.ops.fastgen.attention_tiled.default, (q, k, v, mask, 0.3))
    torch.library.opcheck(torch.ops.fastgen.attention.default, (q, k, v, None, 0.3, True))
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, None, 0.3)
    go = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastgen.attention_tiled_backward.default, (go, q, k, v, out, lse, None, 0.3))
    torch.library.opcheck(torch.ops.fastgen.attention_backward.default, (go, q, k, v, out, lse, None, 0.3, True))


# ----------------------------------------------------------------------------- fused backward
def _reference_grads(q, k, v, go, scale, mask=None):
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = qd @ kd.transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask.double()
    m = s.detach().amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))  # fully masked rows: e = 0
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))  # ... p = 0, no gradient (torch.softmax: NaN)
    return torch.autograd.grad(p @ vd, (qd, kd, vd), go.double())


def _check_backward(q, k, v, mask=None, scale=None, lse_from="tiled", what=""):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if lse_from == "tiled":
        out, lse = torch.ops.fastgen.attention_tiled(q, k, v, mask, scale)
    else:  # ATen's flash forward: its own lse convention (0 for fully masked rows)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                             scale=scale)[:2]
        lse = lse.contiguous()
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(11)).to(q.dtype)
    grads = torch.ops.fastgen.attention_tiled_backward(go, q, k, v, out, lse, mask, scale)
    want = _reference_grads(q, k, v, go, scale, mask)
    rtol, atol = {torch.float32: (1e-5, 1e-5), torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 3e-2)}[q.dtype]
    for name, g, w, t in zip("qkv", grads, want, (q, k, v)):
        assert g.dtype == q.dtype and g.shape == t.shape and g.is_contiguous()
        scale_w = max(w.abs().max().item(), 1.0)  # relative to the gradient's size: it sums over N terms
        assert_close(g.double() / scale_w, w / scale_w, rtol=rtol, atol=atol, what=f"{what} d{name}")
    return grads


BWD_SHAPES = [(1, 1, 1, 1, 64, None), (2, 3, 37, 37, 32, None), (1, 2, 70, 130, 40, None), (2, 1, 129, 7, 128, None),
              (1, 2, 17, 200, 80, 80), (2, 2, 6, 11, 64, 32), (1, 1, 65, 97, 40, 80), (1, 1, 3, 5, 8, 3)]


@pytest.mark.parametrize("shape", BWD_SHAPES, ids=[str(s) for s in BWD_SHAPES])
def test_backward_matches_float64_autograd(isa, shape):
    B, H, Nq, Nk, D, Dv = shape
    _check_backward(*_qkv(B, H, Nq, Nk, D, Dv), what=f"{isa} {shape}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_backward_half_precision(isa, dtype):
    _check_backward(*_qkv(2, 2, 70, 100, 64, dtype=dtype), what=f"{isa} {dtype}")


@pytest.mark.parametrize("kind", ["bool", "additive", "bool_2d", "key_padding", "first_tile_masked", "per_query"])
def test_backward_masks(isa, kind):
    B, H, Nq, Nk = 2, 2, 67, 130
    q, k, v = _qkv(B, H, Nq, Nk, 64)
    _check_backward(q, k, v, mask=_masks(B, H, Nq, Nk, torch.float32)[kind], what=f"{isa} {kind}")


@pytest.mark.parametrize("lse_from", ["tiled", "aten"])
def test_backward_fully_masked_rows_get_zero_grads(isa, lse_from):
    """Either forward's lse works: +inf (tiled) or ATen's value for a fully masked row."""
    q, k, v = _qkv(2, 2, 70, 130, 64)
    mask = torch.zeros(70, 130)
    mask[3] = float("-inf")
    mask[:, 5] = float("-inf")  # one key nobody attends to: its dk, dv are 0
    gq, gk, gv = _check_backward(q, k, v, mask=mask, lse_from=lse_from, what=f"{isa} lse from {lse_from}")
    assert torch.equal(gq[:, :, 3], torch.zeros_like(gq[:, :, 3]))
    assert torch.equal(gk[:, :, 5], torch.zeros_like(gk[:, :, 5])) and torch.equal(gv[:, :, 5], torch.zeros_like(gv[:, :, 5]))


def test_backward_strided_inputs(isa):
    q, k, v = _qkv(2, 3, 37, 50, 64)
    out, lse = torch.ops.fastgen.attention_tiled(q, k, v, None, 0.2)
    go = torch.randn_like(out)
    want = torch.ops.fastgen.attention_tiled_backward(go, q, k, v, out, lse, None, 0.2)
    bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (go, q, k, v, out)]
    got = torch.ops.fastgen.attention_tiled_backward(*bnhd, lse, None, 0.2)
    for a, b in zip(got, want):
        assert_close(a, b, rtol=0, atol=0, what="bnhd")


@pytest.mark.parametrize("args, match", [
    (dict(out=torch.zeros(2, 2, 3, 7)), "out must have shape"),
    (dict(grad_out=torch.zeros(2, 2, 3, 8, dtype=torch.bfloat16)), "grad_out must have q's dtype"),
    (dict(lse=torch.zeros(2, 2, 4)), "lse must be a float32"),
    (dict(lse=torch.zeros(2, 2, 3, dtype=torch.float64)), "lse must be a float32"),
    (dict(v=torch.zeros(2, 2, 5, 8)), "sequence lengths"),
])
def test_backward_bad_input(args, match):
    a = dict(grad_out=torch.zeros(2, 2, 3, 8), q=torch.zeros(2, 2, 3, 8), k=torch.zeros(2, 2, 4, 8),
             v=torch.zeros(2, 2, 4, 8), out=torch.zeros(2, 2, 3, 8), lse=torch.zeros(2, 2, 3))
    a.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.fastgen.attention_tiled_backward(a["grad_out"], a["q"], a["k"], a["v"], a["out"], a["lse"], None, 1.0)


# ----------------------------------------------------------------------------- fastgen.functional wiring
def test_functional_attention_dispatches_to_the_tiled_kernel(monkeypatch):
    calls = []
    real = torch.ops.fastgen.attention_tiled

    def spy(*args):
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(torch.ops.fastgen, "attention_tiled", spy)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        attention(*_qkv(1, 2, 9, 11, 32, dtype=dtype))
    assert calls == [torch.float32, torch.bfloat16, torch.float16]
    attention(*_qkv(1, 2, 9, 11, 32, dtype=torch.float64))  # float64: ATen
    attention(*_qkv(1, 2, 9, 11, 32), impl="torch")  # forced ATen
    assert len(calls) == 3
    attention(*_qkv(1, 2, 9, 11, 32), impl="cpp")
    assert len(calls) == 4


@pytest.mark.parametrize("shape", [(2, 3, 37, 37, 64, None), (1, 2, 70, 130, 40, None), (2, 2, 6, 11, 64, 32)],
                         ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_grads_through_the_tiled_forward(shape, masked):
    """The tiled forward's (out, lse) go to the tiled fused backward (any D_v); fully masked rows get
    zero gradients. Compared with the float64 path (ATen's kernels)."""
    B, H, Nq, Nk, D, Dv = shape
    q, k, v = (t.requires_grad_() for t in _qkv(B, H, Nq, Nk, D, Dv))
    mask = None
    if masked:
        mask = torch.rand(Nq, Nk, generator=torch.Generator().manual_seed(3)) > 0.3
        mask[:, 0] = True
        mask[Nq // 2] = False  # a fully masked row
    go = torch.randn(B, H, Nq, Dv or D, generator=torch.Generator().manual_seed(4))
    out = attention(q, k, v, attn_mask=mask, impl="cpp")
    grads = torch.autograd.grad(out, (q, k, v), go)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = attention(qd, kd, vd, attn_mask=mask, impl="torch")  # float64 reference path
    want_grads = torch.autograd.grad(want, (qd, kd, vd), go.double())
    assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-5, what="out")
    for name, a, b in zip("qkv", grads, want_grads):
        assert_close(a.double(), b, rtol=1e-5, atol=1e-5, what=f"d{name}")
    if masked:
        assert torch.equal(grads[0][:, :, Nq // 2], torch.zeros_like(grads[0][:, :, Nq // 2]))


def test_bf16_grads_match_aten_path():
    q, k, v = (t.requires_grad_() for t in _qkv(2, 2, 65, 100, 64, dtype=torch.bfloat16))
    go = torch.randn(2, 2, 65, 64).to(torch.bfloat16)
    res = {}
    for impl in ("cpp", "torch"):
        out = attention(q, k, v, impl=impl)
        res[impl] = (out,) + torch.autograd.grad(out, (q, k, v), go)
    for a, b in zip(res["cpp"], res["torch"]):
        assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2, what="bf16 cpp vs torch")


def test_compile_fullgraph_through_the_tiled_op():
    q, k, v = _qkv(1, 2, 5, 6, 8)
    fn = torch.compile(lambda a, b, c: attention(a, b, c, impl="cpp"), fullgraph=True)
    assert_close(fn(q, k, v), attention(q, k, v, impl="torch"), rtol=1e-5, atol=1e-6, what="compiled")


# ----------------------------------------------------------------------------- object code
@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("objdump") is None, reason="needs g++ and objdump")
def test_isa_variants_are_vectorised_at_their_width(tmp_path):
    """The GEMM micro-kernels of each variant use its vector registers (zmm for x86-64-v4, ymm and
    no zmm for x86-64-v3), and the variant entry points call no baseline-ISA local code in their hot
    loops (only the GEMM tiles of their own level, the scratch layout and libm/libc)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    obj = tmp_path / "attention.o"
    cmd = ["g++", "-std=c++17", "-O3", "-fopenmp", "-fno-math-errno", "-fPIC", f"-I{ROOT / 'csrc' / 'include'}",
           f"-I{ROOT / 'csrc' / 'cpu'}", "-c", str(ROOT / "csrc" / "cpu" / "attention.cpp"), "-o", str(obj)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                         timeout=120).stdout
    funcs, cur = {}, None
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
        elif cur and line.strip():
            funcs[cur].append(line)

    def body(prefix):
        names = [n for n in funcs if re.search(rf"::{prefix}\(", n)]  # with any [clone .constprop] copies
        assert names, (prefix, list(funcs))
        return "\n".join(line for n in names for line in funcs[n])

    for lvl, wide, narrow in (("v4", "zmm", None), ("v3", "ymm", "zmm")):
        for fn in ("gemm_set_rows", "gemm_acc_cols", "gemm_scale_acc_cols"):
            code = body(f"{fn}_{lvl}")
            assert "vfmadd231ps" in code and wide in code, f"{fn}_{lvl}"
            assert narrow is None or narrow not in code, f"{fn}_{lvl} uses {narrow}"
        for entry in ("forward", "backward"):
            calls = set(re.findall(r"\bcall\s+[0-9a-f]+ <([^>+]+)", body(f"{entry}_{lvl}")))
            local = {c for c in calls if c in funcs and not re.search(r"::(forward|backward)_", c)}
            allowed = {c for c in local if re.search(rf"::gemm_\w+_{lvl}\(|::(bwd_)?layout\(", c)}
            assert local == allowed, f"{entry}_{lvl} calls baseline code: {sorted(local - allowed)}"
