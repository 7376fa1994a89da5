"""torch.compile(backend="fastgen"): the FX rewrite onto fastgen ops, then inductor; equal to eager
(forward and parameter gradients) and the rewrites actually happen. Small modules only: inductor
compile time dominates these tests."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen  # noqa: F401  (registers the backend)
from fastgen import compile_backend as cb

RTOL, ATOL = 1e-5, 1e-4


def _grads(m, run):
    m.zero_grad(set_to_none=True)
    out = run()
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def _check(m, run_eager, run_compiled, m_compiled=None):
    (o1, g1), (o2, g2) = _grads(m_compiled or m, run_compiled), _grads(m, run_eager)
    torch.testing.assert_close(o1, o2, rtol=RTOL, atol=ATOL)
    assert g1.keys() == g2.keys() and g1
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-4, msg=lambda msg: f"grad {k}: {msg}")


def test_registered():
    assert "fastgen" in torch._dynamo.list_backends()


class Patterns(nn.Module):
    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(4, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.lin = nn.Linear(4, 6)

    def forward(self, x, scale, shift, q):
        h = F.silu(self.gn(x) * (1 + scale) + shift)                   # group_norm + scale/shift + silu
        h = F.leaky_relu(self.conv(h), 0.2)                           # conv bias + lrelu
        a = F.scaled_dot_product_attention(q, q, q)                    # SDPA
        b = torch.softmax(q @ q.transpose(-2, -1) * 0.5, dim=-1) @ q   # explicit softmax attention
        return torch.cat([h.flatten(), a.flatten(), b.flatten(), F.relu(self.lin(q)).flatten()])


def test_patterns_rewritten_forward_backward():
    torch.manual_seed(0)
    m = Patterns()
    args = (torch.randn(2, 8, 4, 4), torch.randn(2, 8, 1, 1), torch.randn(2, 8, 1, 1), torch.randn(2, 2, 5, 4))
    c = torch.compile(m, backend="fastgen")
    _check(m, lambda: m(*args), lambda: c(*args))
    assert cb.LAST_STATS == {"group_norm": 1, "bias_act": 2, "attention": 2}


def test_unsafe_patterns_left_alone():
    def f(x, w, b):
        y = F.group_norm(x, 2, w, b)
        return F.silu(y) + y          # y has two users: no fusion
    torch._dynamo.reset()
    x, w, b = torch.randn(2, 4, 3, 3), torch.randn(4), torch.randn(4)
    torch.testing.assert_close(torch.compile(f, backend="fastgen")(x, w, b), f(x, w, b), rtol=RTOL, atol=ATOL)
    assert cb.LAST_STATS.get("group_norm", 0) == 0


def test_diffusers_resnet_block():
    pytest.importorskip("diffusers")
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    blk = ResnetBlock2D(in_channels=16, out_channels=16, temb_channels=8, groups=4, time_embedding_norm="scale_shift")
    x, temb = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    torch._dynamo.reset()
    c = torch.compile(blk, backend="fastgen")
    _check(blk, lambda: blk(x, temb), lambda: c(x, temb))
    assert cb.LAST_STATS["group_norm"] == 2


def test_diffusers_attention():
    pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    attn = Attention(16, heads=2, dim_head=8, norm_num_groups=4, residual_connection=True, bias=True)
    torch._dynamo.reset()
    ca = torch.compile(attn, backend="fastgen")
    attn.eval()
    with torch.no_grad():
        torch.testing.assert_close(ca(x), attn(x), rtol=RTOL, atol=ATOL)
    assert cb.LAST_STATS["attention"] == 1


def test_compile_of_optimized_model():
    """torch.compile(fastgen.optimize(model)) traces fastgen's ops without graph breaks."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 8, 1),
                      nn.LeakyReLU(0.2))
    opt = fastgen.optimize(m)
    x = torch.randn(2, 3, 6, 6)
    torch._dynamo.reset()
    c = torch.compile(opt, backend="inductor", fullgraph=True)
    _check(m, lambda: m(x), lambda: c(x), m_compiled=opt)   # compiled optimized copy vs the eager original
