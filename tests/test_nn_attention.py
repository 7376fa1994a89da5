"""fastgen.nn.Attention and SelfAttention2d against the formulas written out; double backward."""
from __future__ import annotations

import pytest
import torch

from fastgen.nn import Attention, SelfAttention2d

from helpers import assert_close


def _mha(x, ctx, wq, bq, wk, bk, wv, bv, wo, bo, h, norm=None):
    """Multi-head attention in float64 with explicit projections."""
    q, k, v = x @ wq.T + bq, ctx @ wk.T + bk, ctx @ wv.T + bv
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
    if norm is not None:
        q, k = norm(q), norm(k)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, -1)
    return out @ wo.T + bo


def test_self_attention_matches_formula():
    torch.manual_seed(0)
    mod = Attention(32, heads=4).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    w, bias = mod.to_qkv.weight, mod.to_qkv.bias
    want = _mha(x, x, w[:32], bias[:32], w[32:64], bias[32:64], w[64:], bias[64:], mod.to_out.weight,
                mod.to_out.bias, 4)
    assert_close(mod(x), want, rtol=1e-10, atol=1e-10, what="self-attention")


def test_cross_attention_with_qk_norm_and_mask():
    torch.manual_seed(1)
    mod = Attention(24, heads=2, head_dim=16, context_dim=10, qk_norm=True).double()
    x, ctx = torch.randn(3, 7, 24, dtype=torch.float64), torch.randn(3, 5, 10, dtype=torch.float64)
    kv_w, kv_b = mod.to_kv.weight, mod.to_kv.bias

    def rms(t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * mod.norm_q.weight

    want = _mha(x, ctx, mod.to_q.weight, mod.to_q.bias, kv_w[:32], kv_b[:32], kv_w[32:], kv_b[32:],
                mod.to_out.weight, mod.to_out.bias, 2, norm=rms)
    assert_close(mod(x, ctx), want, rtol=1e-9, atol=1e-9, what="cross-attention")
    mask = torch.ones(7, 5, dtype=torch.bool)
    mask[:, 0] = False
    assert not torch.allclose(mod(x, ctx, attn_mask=mask), mod(x, ctx))
    with pytest.raises(ValueError, match="pass context"):
        mod(x)
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, heads=4)


def test_self_attention2d_is_sagan():
    torch.manual_seed(2)
    mod = SelfAttention2d(16).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    assert torch.equal(mod(x), x)  # gamma starts at 0: the identity
    with torch.no_grad():
        mod.gamma.fill_(0.7)
    f, g, h = (c(x).flatten(2) for c in (mod.query, mod.key, mod.value))   # (B, C', HW)
    beta = torch.softmax(f.transpose(1, 2) @ g, dim=-1)                     # (B, HW, HW): query i over keys j
    o = (h @ beta.transpose(1, 2)).reshape_as(x)
    assert_close(mod(x), x + 0.7 * o, rtol=1e-10, atol=1e-10, what="SAGAN")


def test_r1_penalty_through_self_attention2d_and_unet_attention():
    from fastgen.nn.unet_blocks import AttentionBlock
    torch.manual_seed(3)
    for mod in (SelfAttention2d(8), AttentionBlock(8, num_heads=2, num_groups=4)):
        with torch.no_grad():
            for p in mod.parameters():
                p.add_(0.1 * torch.randn_like(p))  # leave the zero inits: every path contributes
        x = torch.randn(2, 8, 4, 4, requires_grad=True)
        gx, = torch.autograd.grad(mod(x).square().sum(), x, create_graph=True)
        penalty = gx.square().sum()
        grads = torch.autograd.grad(penalty, [p for p in mod.parameters()], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), type(mod).__name__


def test_spatial_self_attention_matches_the_textbook_block():
    """fastgen.nn.SpatialSelfAttention: GroupNorm -> attention over the H*W positions -> 1x1
    projection -> residual, against the same computation written with torch ops."""
    from fastgen.nn import SpatialSelfAttention

    torch.manual_seed(0)
    blk = SpatialSelfAttention(16, num_heads=2, num_groups=4)
    torch.nn.init.normal_(blk.proj.weight, std=0.2)  # zero-initialised: make the attention branch count
    x = torch.randn(2, 16, 5, 3)
    h = torch.nn.functional.group_norm(x, 4, blk.norm.weight, blk.norm.bias).reshape(2, 16, 15)
    q, k, v = blk.qkv(h).reshape(2, 3, 2, 8, 15).unbind(1)               # (B, heads, d, T)
    w = torch.softmax(q.transpose(-1, -2) @ k / 8 ** 0.5, dim=-1)          # (B, heads, T, T)
    a = (w @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 16, 15)
    want = x + blk.proj(a).reshape(2, 16, 5, 3)
    torch.testing.assert_close(blk(x), want, rtol=1e-5, atol=1e-5)
