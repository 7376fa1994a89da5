"""Shared by tests/test_modulated_bias_act.py (C++ kernels) and tests/test_modulated_bias_act_triton.py
(Triton kernels under TRITON_INTERPRET=1): input builders and the comparison of one implementation's
forward and first-order gradients with float64 autograd of the reference."""
from __future__ import annotations

import itertools

import torch

from fastgen.functional import modulated_bias_act
from fastgen.ops.modulated_bias_act import modulated_bias_act_reference

from helpers import assert_close

NAMES = ("x", "b", "scale", "noise", "noise_strength")
# noise shape kinds: (batch, channels) of the noise tensor
NOISE_KINDS = {"none": None, "N1": ("N", 1), "11": (1, 1), "NC": ("N", "C"), "1C": (1, "C")}
STRENGTH_KINDS = ("none", "scalar", "channel")
# present/absent b and scale x every noise shape x every strength kind (strength only with noise)
COMBOS = [(b, s, nk, sk) for b, s in itertools.product((True, False), repeat=2) for nk in NOISE_KINDS
          for sk in STRENGTH_KINDS if nk != "none" or sk == "none"]
# (rtol, atol) of y and of the gradients (relative to the largest reference value) per x dtype
TOL = {torch.float32: (1e-5, 2e-6, 2e-5), torch.float16: (2e-3, 2e-3, 1e-2), torch.bfloat16: (1.6e-2, 1.6e-2, 4e-2)}


def layout_as(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous" or t.dim() < 3:
        return t.contiguous()
    if layout == "channels_last":  # channels innermost, any number of spatial dims
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "strided":  # a non-dense view
        return torch.cat([t, t], dim=-1)[..., ::2]
    raise ValueError(layout)


def make(shape=(2, 6, 5, 3), b=True, scale=True, noise="N1", strength="channel", dtype=torch.float32,
         pdtype=None, layout="contiguous", seed=0, scale_4d=False, device="cpu"):
    """x and the optional parameters (None when absent), as leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    pdtype = pdtype or dtype
    n, c, *spatial = shape

    def r(sh, s=1.0, off=0.0, dt=pdtype):
        return (off + s * torch.randn(sh, generator=g, dtype=torch.float64)).to(dt)

    x = layout_as(r(shape, 2.0, dt=dtype), layout)
    bb = r((c,), 0.5) if b else None
    sc = r((n, c), 0.4, 1.0) if scale else None
    if sc is not None and scale_4d:
        sc = sc.reshape(n, c, *([1] * len(spatial)))
    nk = NOISE_KINDS[noise]
    nz = None
    if nk is not None:
        nn_ = n if nk[0] == "N" else 1
        nc = c if nk[1] == "C" else 1
        nz = layout_as(r((nn_, nc, *spatial), 1.0, dt=dtype), layout if layout != "strided" else "contiguous")
    st = None
    if nz is not None and strength != "none":
        st = r((), 0.7) if strength == "scalar" else r((c,), 0.7)
    out = [x, bb, sc, nz, st]
    return [t.to(device).requires_grad_() if t is not None else None for t in out]


def call(impl, x, b, scale, noise, st, **kw):
    return modulated_bias_act(x, b, scale=scale, noise=noise, noise_strength=st, impl=impl, **kw)


def reference64(inputs, gy, **kw):
    """y and the gradients (None for absent inputs) of the float64 reference at the same values."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    y = modulated_bias_act_reference(*leaves, **kw)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, gy.double()))
    return y.detach(), [next(grads) if t is not None else None for t in leaves]


def check_impl(impl, inputs, what="", grads=True, **kw):
    """One implementation against the float64 reference: y (value, dtype, layout) and every gradient."""
    x = inputs[0]
    rt, at, gt = TOL[x.dtype]
    y = call(impl, *inputs, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype, what
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(x.dtype)
    want, wgrads = reference64(inputs, gy, **kw)
    assert_close(y.double(), want, rtol=rt, atol=at, what=f"y {what}")
    if not grads:
        return y
    present = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad(y, present, gy))
    for name, t, w in zip(NAMES, inputs, wgrads):
        if t is None:
            continue
        g = next(got)
        assert g.shape == t.shape and g.dtype == t.dtype, f"d{name} {what}: {g.shape} {g.dtype}"
        sc = max(w.abs().max().item(), 1.0)
        assert_close(g.double() / sc, w / sc, rtol=gt, atol=gt, what=f"d{name} {what}")
    return y


def _orders(fn, leaves, n_orders):
    """Gradients of orders 1..n w.r.t. every leaf of a loss nonlinear in y, each order's grads fed
    to a nonlinear penalty and differentiated again (so gy depends on the inputs at every order)."""
    y = fn(*leaves)
    grads = torch.autograd.grad((y * y.sin()).sum(), leaves, create_graph=True)
    out = [grads]
    for _ in range(n_orders - 1):
        pen = sum((g * g.detach().cos()).sum() + g.square().sum() for g in grads)
        grads = torch.autograd.grad(pen, leaves, create_graph=True, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(v) for g, v in zip(grads, leaves)]
        out.append(grads)
    return out


def check_orders(impl, shape, act, clamp, noise, strength, layout, n_orders=3, dtype=torch.float32, seed=8,
                 device="cpu"):
    ins = make(shape, noise=noise, strength=strength, layout=layout, seed=seed, dtype=dtype, device=device)
    present = [i for i, t in enumerate(ins) if t is not None]

    def fn_of(f):
        def fn(*ls):
            full = [None] * 5
            for i, v in zip(present, ls):
                full[i] = v
            return f(*full)
        return fn

    leaves = [ins[i] for i in present]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _orders(fn_of(lambda *a: call(impl, *a, act=act, clamp=clamp)), leaves, n_orders)
    want = _orders(fn_of(lambda *a: modulated_bias_act_reference(*a, act=act, clamp=clamp)), leaves64, n_orders)
    for order, (gs, ws) in enumerate(zip(got, want), start=1):
        for i, g, w in zip(present, gs, ws):
            sc = max(w.abs().max().item(), 1.0)
            assert_close(g.double() / sc, w.detach() / sc, rtol=5e-5, atol=5e-5,
                         what=f"order {order} d{['x', 'b', 'scale', 'noise', 'strength'][i]} ({act}, {noise})")
