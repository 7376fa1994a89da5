"""``torch.compile(model, backend="fastgen")``: inductor, after moving recognised patterns onto
fastgen's fused custom ops.

The backend receives dynamo's torch-level FX graph (before AOT autograd), rewrites these patterns
in place and hands the graph to inductor (``torch._inductor.compile_fx.compile_fx``); the custom
ops have fake kernels and autograd formulas, so inductor compiles the rest around them, for
inference and for training (their backward is fastgen's fused backward):

* ``F.group_norm`` [-> ``* (1 + scale)``] [-> ``+ shift``] [-> ``F.silu`` / exact ``F.gelu``]
  -> :func:`fastgen.functional.group_norm` with ``activation`` / ``scale`` / ``shift``
  (scale and shift must be per-(sample, channel), shape ``(N, C, 1, ...)``);
* ``conv2d`` / ``linear`` with a bias -> ``relu`` / ``leaky_relu`` / ``silu``: the GEMM without bias
  and :func:`fastgen.functional.bias_act` (gain 1);
* ``F.scaled_dot_product_attention`` (no dropout, not causal) and the explicit
  ``softmax(q @ k.transpose(-2, -1) * c) @ v`` pattern (4-D q, k, v) -> :func:`fastgen.functional.attention`.

Every intermediate of a rewritten pattern must have exactly one user (so nothing else reads a
value that is no longer computed). :data:`LAST_STATS` counts the rewrites of the last graph.

Sampler update arithmetic (a diffusers scheduler's DDIM / Euler step traced into the graph) is
left to inductor on purpose: it is a chain of elementwise ops with scalar coefficients, which
inductor already emits as one fused loop; an opaque custom op there would end that fusion with the
ops around it and save nothing. Outside ``torch.compile``, :func:`fastgen.optimize` swaps the
scheduler's ``step`` onto the fused sampler kernels instead.
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx

from .functional import attention, bias_act, group_norm

LAST_STATS: dict[str, int] = {}


# ------------------------------------------------------------------------------ graph-side helpers
def fx_group_norm(x, num_groups, weight, bias, eps, activation, scale, shift):
    if scale is not None:
        scale = scale.reshape(x.shape[0], x.shape[1])
    if shift is not None:
        shift = shift.reshape(x.shape[0], x.shape[1])
    return group_norm(x, num_groups, weight, bias, eps, activation=activation, scale=scale, shift=shift)


def fx_bias_act(y, b, dim, act, alpha):
    return bias_act(y, b, dim, act, alpha, 1.0)


def fx_attention(q, k, v, attn_mask=None, scale=None):
    return attention(q, k, v, attn_mask=attn_mask, scale=scale)


# ------------------------------------------------------------------------------ matching helpers
def _val(n) -> Any:
    return n.meta.get("example_value") if isinstance(n, fx.Node) else None


def _shape(n) -> Optional[tuple]:
    v = _val(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _call(n, *targets) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_function" and n.target in targets


def _only_user(n: fx.Node) -> Optional[fx.Node]:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _bind(fn, n: fx.Node) -> Optional[dict]:
    try:
        return dict(inspect.signature(fn).bind(*n.args, **n.kwargs).arguments)
    except (TypeError, ValueError):
        return None


_SILU = (F.silu, torch.nn.functional.silu)
_GELU = (F.gelu, torch._C._nn.gelu)
_MUL, _ADD = (operator.mul, torch.mul), (operator.add, torch.add)
_CONV2D = (torch.conv2d, F.conv2d)
_LINEAR = (F.linear, torch._C._nn.linear)
_SDPA = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
_SOFTMAX = (torch.softmax, F.softmax, torch.Tensor.softmax)
_MATMUL = (operator.matmul, torch.matmul)


def _other(n: fx.Node, x: fx.Node):
    a, b = n.args[:2]
    return b if a is x else (a if b is x else None)


def _per_sample_channel(t, x_shape) -> bool:
    s = _shape(t)
    return (s is not None and x_shape is not None and len(s) == len(x_shape) and s[:2] == x_shape[:2]
            and all(d == 1 for d in s[2:]))


# ------------------------------------------------------------------------------ rewrites
def _rewrite_group_norm(g: fx.Graph, stats: dict) -> None:
    for n in list(g.nodes):
        if not _call(n, F.group_norm):
            continue
        a = _bind(F.group_norm, n)
        if a is None:
            continue
        x, xs = a["input"], _shape(a["input"])
        chain, last, scale, shift, act = [n], n, None, None, None
        u = _only_user(last)
        if u is not None and _call(u, *_MUL) and len(u.args) == 2 and not u.kwargs:
            s1 = _other(u, last)
            if _call(s1, *_ADD) and len(s1.args) == 2 and not s1.kwargs and 1 in s1.args:
                sc = s1.args[1] if s1.args[0] == 1 else s1.args[0]
                if isinstance(sc, fx.Node) and _per_sample_channel(sc, xs) and _shape(u) == xs:
                    scale, last = sc, u
                    chain.append(u)
        u = _only_user(last)
        if u is not None and _call(u, *_ADD) and len(u.args) == 2 and not u.kwargs:
            sh = _other(u, last)
            if isinstance(sh, fx.Node) and _per_sample_channel(sh, xs) and _shape(u) == xs:
                shift, last = sh, u
                chain.append(u)
        u = _only_user(last)
        if u is not None and _call(u, *_SILU):
            act, last = "silu", u
        elif u is not None and _call(u, *_GELU) and u.kwargs.get("approximate", "none") == "none" and len(u.args) == 1:
            act, last = "gelu", u
        if last is not n and act is not None:
            chain.append(last)
        if last is n:
            continue  # a lone group_norm: inductor's own is fine
        with g.inserting_after(last):
            new = g.call_function(fx_group_norm, (x, a["num_groups"], a.get("weight"), a.get("bias"),
                                                  a.get("eps", 1e-5), act, scale, shift))
        new.meta.update(last.meta)
        last.replace_all_uses_with(new)
        for c in reversed(chain):
            g.erase_node(c)
        stats["group_norm"] = stats.get("group_norm", 0) + 1


def _rewrite_bias_act(g: fx.Graph, stats: dict) -> None:
    for n in list(g.nodes):
        is_conv, is_lin = _call(n, *_CONV2D), _call(n, *_LINEAR)
        if not (is_conv or is_lin) or n.kwargs:
            continue
        if len(n.args) < 3 or not isinstance(n.args[2], fx.Node):
            continue
        u = _only_user(n)
        if u is None:
            continue
        if _call(u, F.relu, torch.relu):
            act, alpha = "relu", None
        elif _call(u, F.leaky_relu):
            alpha = u.args[1] if len(u.args) >= 2 else u.kwargs.get("negative_slope", 0.01)
            if not isinstance(alpha, (int, float)):
                continue
            act, alpha = "lrelu", float(alpha)
        elif _call(u, *_SILU):
            act, alpha = "silu", None
        else:
            continue
        b = n.args[2]
        n.args = (n.args[0], n.args[1], None) + tuple(n.args[3:])
        with g.inserting_after(u):
            new = g.call_function(fx_bias_act, (n, b, 1 if is_conv else -1, act, alpha))
        new.meta.update(u.meta)
        u.replace_all_uses_with(new)
        g.erase_node(u)
        stats["bias_act"] = stats.get("bias_act", 0) + 1


def _rewrite_sdpa(g: fx.Graph, stats: dict) -> None:
    for n in list(g.nodes):
        if not _call(n, *_SDPA):
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        if len(n.args) > len(names):
            continue
        a = dict(zip(names, n.args), **n.kwargs)
        if set(a) - set(names) - {"scale", "enable_gqa"} or len(n.args) < 3:
            continue
        if a.get("dropout_p", 0.0) != 0.0 or a.get("is_causal", False) or a.get("enable_gqa", False):
            continue
        if any(_shape(a[k]) is None or len(_shape(a[k])) != 4 for k in ("query", "key", "value")):
            continue
        with g.inserting_before(n):
            new = g.call_function(fx_attention, (a["query"], a["key"], a["value"]),
                                  {"attn_mask": a.get("attn_mask"), "scale": a.get("scale")})
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
        stats["attention"] = stats.get("attention", 0) + 1


def _is_last_two_transpose(n) -> Optional[fx.Node]:
    """k if n is k.transpose(-2, -1) (or (2, 3) of a 4-D k)."""
    if isinstance(n, fx.Node) and n.op == "call_method" and n.target == "transpose" and len(n.args) == 3:
        k, d0, d1 = n.args
        if {d0, d1} in ({-2, -1}, {2, 3}):
            return k
    if _call(n, torch.transpose) and len(n.args) == 3:
        k, d0, d1 = n.args
        if {d0, d1} in ({-2, -1}, {2, 3}):
            return k
    return None


def _rewrite_softmax_attention(g: fx.Graph, stats: dict) -> None:
    for n in list(g.nodes):
        is_sm = _call(n, torch.softmax, F.softmax) or (n.op == "call_method" and n.target == "softmax")
        if not is_sm:
            continue
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        if dim not in (-1, 3) or n.kwargs.get("dtype") is not None or len(n.args) > 2:
            continue
        s = n.args[0]
        scale = 1.0
        if _call(s, *_MUL) and len(s.args) == 2 and isinstance(s.args[1], (int, float)) and len(s.users) == 1:
            scale, mm = float(s.args[1]), s.args[0]
        elif _call(s, operator.truediv) and isinstance(s.args[1], (int, float)) and len(s.users) == 1:
            scale, mm = 1.0 / float(s.args[1]), s.args[0]
        else:
            mm, s = s, None
        if not (_call(mm, *_MATMUL) and len(mm.users) == 1):
            continue
        q, kt = mm.args
        k = _is_last_two_transpose(kt)
        u = _only_user(n)
        if k is None or len(kt.users) != 1 or u is None or not _call(u, *_MATMUL) or u.args[0] is not n:
            continue
        v = u.args[1]
        if any(_shape(t) is None or len(_shape(t)) != 4 for t in (q, k, v)):
            continue
        with g.inserting_before(u):
            new = g.call_function(fx_attention, (q, k, v), {"scale": scale})
        new.meta.update(u.meta)
        u.replace_all_uses_with(new)
        for dead in (u, n, s, mm, kt):
            if dead is not None:
                g.erase_node(dead)
        stats["attention"] = stats.get("attention", 0) + 1


def rewrite(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrite the recognised patterns of a dynamo FX graph in place; returns counts per op."""
    stats: dict[str, int] = {}
    g = gm.graph
    _rewrite_group_norm(g, stats)
    _rewrite_bias_act(g, stats)
    _rewrite_sdpa(g, stats)
    _rewrite_softmax_attention(g, stats)
    g.lint()
    gm.recompile()
    return stats


def fastgen_backend(gm: fx.GraphModule, example_inputs, **kwargs):
    """The ``torch.compile`` backend: :func:`rewrite`, then inductor."""
    from torch._inductor.compile_fx import compile_fx

    stats = rewrite(gm)
    LAST_STATS.clear()
    LAST_STATS.update(stats)
    return compile_fx(gm, example_inputs, **kwargs)
