"""grad_norm_penalty (the fused per-sample gradient-norm penalty) and gradient_penalty (WGAN-GP,
R1, R2, DRAGAN through a critic) against the plain autograd formulation."""
import copy

import pytest
import torch
from torch import nn

import fastgen
from fastgen import backend
from fastgen.functional import grad_norm_penalty, gradient_penalty
from fastgen.nn import BiasAct
from fastgen.ops.grad_penalty import KINDS, grad_norm_penalty_reference, gradient_penalty_reference

D64 = torch.float64
IMPLS = ["cpp", "triton"]


def _skip(impl):
    ok, why = backend.op_impl_available("grad_norm_penalty", impl, "cpu")
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(5, 3, 7, 9), (1, 40000), (3, 1), (2, 70001)], ids=str)
@pytest.mark.parametrize("squared", [False, True])
def test_forward_and_backward_match_float64(impl, shape, squared):
    _skip(impl)
    if impl == "triton" and shape[-1] > 1000:
        pytest.skip("interpreter time")
    g = torch.randn(shape) * 0.3
    g[0] = 0.0  # a zero gradient: the two-sided penalty's backward is 0 there, not NaN
    u = torch.rand(shape[0]) + 0.5
    x = g.clone().requires_grad_(True)
    pen = grad_norm_penalty(x, 1.0, squared, impl=impl)
    dx, = torch.autograd.grad(pen, x, u)
    xr = g.double().requires_grad_(True)
    ref = grad_norm_penalty_reference(xr, 1.0, squared)
    dr, = torch.autograd.grad(ref, xr, u.double())
    dr = torch.nan_to_num(dr)  # the reference's sqrt has an undefined derivative at 0
    assert pen.dtype == torch.float32 and pen.shape == (shape[0],)
    torch.testing.assert_close(pen.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), dr, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_channels_last(dtype):
    g = torch.randn(4, 8, 5, 6).to(memory_format=torch.channels_last)
    x = g.to(dtype).requires_grad_(True)
    pen = grad_norm_penalty(x)
    dx, = torch.autograd.grad(pen.sum(), x)
    assert dx.dtype == dtype and dx.stride() == x.stride()
    ref = grad_norm_penalty_reference(g.to(dtype).double())
    torch.testing.assert_close(pen.double(), ref, rtol=1e-5, atol=1e-5)


def test_second_order_and_checks():
    g = torch.randn(3, 4, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: grad_norm_penalty(t), (g,))
    assert torch.autograd.gradgradcheck(lambda t: grad_norm_penalty(t, 0.5), (g,))
    # the fused op's own double backward (fp32) against float64 autograd of the reference
    x = torch.randn(3, 4, requires_grad=True)
    d1, = torch.autograd.grad(grad_norm_penalty(x).sum(), x, create_graph=True)
    d2, = torch.autograd.grad((d1 * torch.arange(12.0).reshape(3, 4)).sum(), x)
    xr = x.detach().double().requires_grad_(True)
    r1, = torch.autograd.grad(grad_norm_penalty_reference(xr).sum(), xr, create_graph=True)
    r2, = torch.autograd.grad((r1 * torch.arange(12.0, dtype=D64).reshape(3, 4)).sum(), xr)
    torch.testing.assert_close(d2.double(), r2, rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.fastgen.grad_norm_penalty.default, (torch.randn(3, 5), 1.0, False))
    f = torch.compile(lambda t: grad_norm_penalty(t).mean(), fullgraph=True)
    t = torch.randn(4, 6)
    torch.testing.assert_close(f(t), grad_norm_penalty_reference(t).mean())
    with pytest.raises(TypeError, match="grad has dtype"):
        grad_norm_penalty(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch dimension"):
        grad_norm_penalty(torch.tensor(1.0))
    with pytest.raises(ValueError, match="center"):
        grad_norm_penalty(torch.ones(2, 3), float("nan"))


class Critic(nn.Module):
    """A small DCGAN-like critic on fused bias + LeakyReLU (twice differentiable)."""

    def __init__(self, c=3, w=8, labels=0):
        super().__init__()
        self.c1 = nn.Conv2d(c, w, 4, 2, 1, bias=False)
        self.a1 = BiasAct(w, "lrelu", alpha=0.2, gain=1.0)
        self.c2 = nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False)
        self.a2 = BiasAct(2 * w, "lrelu", alpha=0.2, gain=1.0)
        self.out = nn.Linear(2 * w * 4, 1)
        self.embed = nn.Embedding(labels, 2 * w * 4) if labels else None
        with torch.no_grad():
            for b in (self.a1.bias, self.a2.bias):
                b.normal_(0, 0.1)

    def forward(self, x, y=None):
        h = self.a2(self.c2(self.a1(self.c1(x)))).flatten(1)
        out = self.out(h)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1, keepdim=True)
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_penalty_equals_autograd_reference(kind):
    torch.manual_seed(0)
    critic = Critic(labels=3)
    real, fake = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def run(fn, model):
        model.zero_grad()
        p = fn(model, real, fake, kind=kind, weight=10.0, labels=y, generator=torch.Generator().manual_seed(4))
        p.backward()
        return p.detach(), {k: q.grad.clone() for k, q in model.named_parameters() if q.grad is not None}

    pf, gf = run(gradient_penalty, critic)
    with fastgen.use_backend("torch"):
        pr, gr = run(gradient_penalty_reference, copy.deepcopy(critic).double().float())
    torch.testing.assert_close(pf, pr, rtol=1e-5, atol=1e-6)
    assert gf.keys() == gr.keys() and {"c1.weight", "a1.bias", "out.weight"} <= gf.keys()
    for k in gf:
        torch.testing.assert_close(gf[k], gr[k], rtol=1e-4, atol=1e-6, msg=k)


def test_gradient_penalty_gradgradcheck_small_critic():
    """The WGAN-GP penalty's gradient w.r.t. the critic weights (float64 gradcheck of it)."""
    torch.manual_seed(0)
    critic = Critic(c=1, w=2).double()
    real, fake = torch.randn(2, 1, 8, 8, dtype=D64), torch.randn(2, 1, 8, 8, dtype=D64)
    w = critic.c2.weight.detach().clone().requires_grad_(True)

    def pen(weight):
        fn = lambda x: torch.func.functional_call(critic, {"c2.weight": weight}, (x,))  # noqa: E731
        return gradient_penalty(fn, real, fake, generator=torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(pen, (w,), eps=1e-6, atol=1e-5)


def test_gradient_penalty_bad_input():
    critic = Critic()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="kind"):
        gradient_penalty(critic, x, x, kind="gp")
    with pytest.raises(ValueError, match="needs fake"):
        gradient_penalty(critic, x, kind="wgan-gp")
    with pytest.raises(ValueError, match="fake has shape"):
        gradient_penalty(critic, x, torch.randn(2, 3, 4, 4))
    assert gradient_penalty(critic, x, kind="r1", reduction="none").shape == (2,)
