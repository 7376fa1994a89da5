"""``fastgen.optimize(model)``: swap fastgen's fused kernels into an existing model, and
``fastgen.restore(model)`` to undo it.

What is recognised (everything else is left untouched and listed in the report with the reason):

* ``nn.GroupNorm`` directly followed by ``nn.SiLU`` / exact ``nn.GELU`` in an ``nn.Sequential``
  -> one fused :func:`fastgen.functional.group_norm` (``activation=``); the activation's slot holds
  an ``Identity`` (restorable). Any other ``nn.GroupNorm`` -> the fused group_norm without activation;
  ``nn.InstanceNorm2d`` without running statistics -> group_norm with one group per channel.
* diffusers ``ResnetBlock2D`` (norm1 -> act -> conv1, time_emb_proj, norm2 (``* (1 + scale) + shift``
  when ``time_embedding_norm == "scale_shift"``) -> act -> dropout -> conv2): both norms run fused
  with their activation and modulation; the UNets' ``conv_norm_out`` + ``conv_act`` likewise.
* diffusers ``Attention`` modules whose processor is ``AttnProcessor2_0`` / ``AttnProcessor`` get a
  processor running :func:`fastgen.functional.attention` (``attn.set_processor``); ``nn.MultiheadAttention``
  runs fastgen attention when called with ``need_weights=False`` and no features it lacks (else its
  own forward).
* ``nn.Linear`` / ``nn.Conv2d`` with a bias directly followed by ``nn.ReLU`` / ``nn.LeakyReLU`` /
  ``nn.SiLU`` in an ``nn.Sequential`` -> the GEMM/convolution without bias, then one fused
  :func:`fastgen.functional.bias_act` (gain 1).
* A diffusers ``DDIMScheduler`` / ``EulerDiscreteScheduler`` / ``DPMSolverMultistepScheduler``
  (alone or inside a pipeline) -> the same object with its ``step`` running fastgen's fused sampler
  update (:mod:`fastgen.diffusion.samplers`), same timesteps and same output type.
* AdaIN blocks: any module with an ``nn.InstanceNorm2d`` child (``affine=False``, no running
  statistics, no hooks) whose forward computes ``norm(x) * a + b`` (either operand order; ``*`` /
  ``torch.mul`` / ``.mul`` / ``*=``, likewise for ``+``; each intermediate used once), e.g.
  ``s[:, :, None, None] * self.norm(x) + b[:, :, None, None]`` with ``s, b = self.style(w).chunk(2, 1)``.
  Its forward is traced with ``torch.fx`` (child modules stay calls of those modules) and each such
  pair becomes one call that runs :func:`fastgen.functional.adain` when, at run time, ``a`` and ``b``
  are per-(sample, channel) tensors ((N, C, 1, 1), (1, C, 1, 1), (C, 1, 1), ...) of x's dtype and
  device, and the original ops otherwise (e.g. SPADE's spatial modulation). The block runs the traced
  code on itself, so its parameters, buffers and children are read live; Python attributes its
  forward reads (and ``self.training``: traced in both modes) are checked on every call and trigger
  a new trace when they change. Blocks whose forward cannot be traced (data-dependent control flow,
  ...) or sets attributes are left alone with the reason. fastgen's own ``AdaIN`` / StyleGAN
  ``AdaINLayer`` already run the fused op.
* fastgen's own fused modules (``GroupNormAct``, ``Attention``, ``BiasAct``, ``AdaINLayer``, ...) are
  reported as already fused.

Replacements never copy parameters: a module is rewritten by switching its class to a subclass
whose ``forward`` calls the fused op on the module's own parameters (so state_dict keys, optimizers
and checkpoints are unchanged), and :func:`restore` switches it back. Optimized models pickle
(``torch.save(model)``) and deep-copy: the generated subclasses are rebuilt from the original class
on loading (:func:`_rebuild_fused`), and the loaded model is still optimized; a class with its own
``__reduce__`` cannot be, and says so (``fastgen.restore`` it before pickling).
"""
from __future__ import annotations

import copy
import inspect
import operator
import pickle
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import backend as _backend
from .functional import adain, attention, bias_act, group_norm

__all__ = ["optimize", "restore", "OptimizeReport", "ReportEntry"]

_MARK = "_fastgen_opt"  # instance attribute (a plain dict) of every rewritten module / scheduler


# =============================================================================================== report
@dataclass
class ReportEntry:
    path: str       # module path inside the model ("" = the model itself), or "scheduler"
    module: str     # class name of what was found
    action: str     # what was done, or "left alone"
    reason: str = ""


@dataclass
class OptimizeReport:
    """What :func:`optimize` replaced and what it left alone (and why)."""
    replaced: list[ReportEntry] = field(default_factory=list)
    left_alone: list[ReportEntry] = field(default_factory=list)
    backend: Optional[str] = None

    def counts(self) -> dict[str, int]:
        """Number of replacements per action."""
        out: dict[str, int] = {}
        for e in self.replaced:
            out[e.action] = out.get(e.action, 0) + 1
        return out

    def __str__(self) -> str:
        rows = [("path", "module", "action", "note")]
        rows += [(e.path or "<model>", e.module, e.action, e.reason) for e in self.replaced]
        rows += [(e.path or "<model>", e.module, "left alone", e.reason) for e in self.left_alone]
        w = [min(max(len(r[i]) for r in rows), 48) for i in range(3)]
        lines = [f"fastgen.optimize report (backend={self.backend or 'auto'}): {len(self.replaced)} replaced, "
                 f"{len(self.left_alone)} left alone"]
        for k, r in enumerate(rows):
            lines.append("  ".join(c[:48].ljust(w[i]) for i, c in enumerate(r[:3])) + ("  " + r[3] if r[3] else ""))
            if k == 0:
                lines.append("-" * (sum(w) + 12))
        return "\n".join(lines)


# =============================================================================================== helpers
def _impl(m) -> Optional[str]:
    return getattr(m, _MARK, {}).get("backend")


_SUBCLASSES: dict[tuple[type, type, bool], type] = {}


def _fused_class(orig: type, mixin: type, keep_name: bool = False) -> type:
    key = (orig, mixin, keep_name)
    if key not in _SUBCLASSES:
        name = orig.__name__ if keep_name else "Fastgen" + orig.__name__
        body = {"__module__": __name__, "__qualname__": name, "__reduce_ex__": _fused_reduce_ex}
        if getattr(mixin, "_keep_forward_signature", False):  # a generic forward(*args, **kwargs) shows the original's
            body["forward"] = _forward_with_signature(mixin.forward, orig.forward)
        cls = type(name, (mixin, orig), body)
        _SUBCLASSES[key] = cls
    return _SUBCLASSES[key]


def _forward_with_signature(fwd, orig_fwd):
    def forward(self, *args, **kwargs):
        return fwd(self, *args, **kwargs)

    try:
        forward.__signature__ = inspect.signature(orig_fwd)
    except (TypeError, ValueError):
        pass
    forward.__doc__ = getattr(orig_fwd, "__doc__", None)
    return forward


def _rebuild_fused(orig: type, mixin: type, keep_name: bool) -> Any:
    """Unpickling / deepcopy of a rewritten object: a bare instance of its generated class (the
    state is set afterwards, as for any pickled object)."""
    cls = _fused_class(orig, mixin, keep_name)
    return cls.__new__(cls)


def _fused_reduce_ex(self, protocol):
    """``__reduce_ex__`` of the generated classes: they are created at run time and cannot be found
    by name, so pickle (``torch.save(model)``) and ``copy.deepcopy`` rebuild them from the original
    class and the mixin (:func:`_rebuild_fused`). Mark entries only valid in this process
    (``_TRANSIENT``: traced FX code) are dropped from the state; the mixin rebuilds them."""
    st = self.__dict__[_MARK]
    orig = st["orig_cls"]
    for meth in ("__reduce_ex__", "__reduce__"):
        if getattr(orig, meth, None) is not getattr(object, meth):
            raise pickle.PicklingError(
                f"fastgen.optimize: cannot pickle or copy the optimized {orig.__qualname__}: its class defines its "
                f"own {meth}, which fastgen's generated subclass cannot reproduce; call fastgen.restore(model) "
                f"first (and fastgen.optimize again after loading)")
    state = self.__getstate__()
    if not isinstance(state, dict):
        raise pickle.PicklingError(f"fastgen.optimize: cannot pickle or copy the optimized {orig.__qualname__}: its "
                                   f"__getstate__ returns {type(state).__name__}, not a dict; call "
                                   f"fastgen.restore(model) first")
    state = dict(state)
    state[_MARK] = {k: (None if k in _TRANSIENT else v) for k, v in st.items()}
    return _rebuild_fused, (orig, st["mixin"], st["keep_name"]), state


_TRANSIENT = ("fns", "snap")  # mark entries rebuilt after unpickling / copying (see _FusedAdaINBlock)


def _swap(obj: Any, mixin: type, keep_name: bool = False, **state) -> None:
    orig = type(obj)
    object.__setattr__(obj, _MARK, dict(orig_cls=orig, mixin=mixin, keep_name=keep_name, **state))
    obj.__class__ = _fused_class(orig, mixin, keep_name)


def _unswap(obj: Any) -> None:
    st = obj.__dict__.pop(_MARK)
    obj.__class__ = st["orig_cls"]


def _is_fused(obj: Any) -> bool:
    return _MARK in getattr(obj, "__dict__", {})


def _has_hooks(*mods: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in mods if isinstance(m, nn.Module))


def _gn_activation(act: Any) -> Optional[str]:
    """The fused group_norm activation name of an activation module, or None."""
    if type(act) is nn.SiLU:
        return "silu"
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    return None


def _bias_act_activation(act: Any) -> Optional[tuple[str, Optional[float]]]:
    if type(act) is nn.ReLU:
        return "relu", None
    if type(act) is nn.LeakyReLU:
        return "lrelu", float(act.negative_slope)
    if type(act) is nn.SiLU:
        return "silu", None
    return None


# =============================================================================================== fused modules
class _FusedGroupNorm:
    """nn.GroupNorm whose forward is fastgen's fused group_norm (+ activation)."""

    def forward(self, x):
        st = self.__dict__[_MARK]
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, activation=st["act"], impl=st["backend"])

    def extra_repr(self):
        return super().extra_repr() + f", fastgen fused activation={self.__dict__[_MARK]['act']!r}"


class _FusedInstanceNorm:
    """nn.InstanceNorm2d (no running stats) as fused group_norm with one group per channel."""

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.num_features:  # unbatched input: the original
            return super().forward(x)
        return group_norm(x, self.num_features, self.weight, self.bias, self.eps, impl=self.__dict__[_MARK]["backend"])


class _FusedAway(nn.Identity):
    """Placeholder for an activation now computed inside the preceding fused module."""

    def __init__(self, original: nn.Module, into: str):
        super().__init__()
        object.__setattr__(self, "_fastgen_original", original)
        self.into = into

    def extra_repr(self):
        return f"{type(self._fastgen_original).__name__} fused into {self.into}"


class _FusedLinearAct:
    def forward(self, x):
        st = self.__dict__[_MARK]
        return bias_act(F.linear(x, self.weight), self.bias, -1, st["act"], st["alpha"], 1.0, impl=st["backend"])


class _FusedConvAct:
    def forward(self, x):
        st = self.__dict__[_MARK]
        y = self._conv_forward(x, self.weight, None)
        return bias_act(y, self.bias, 1, st["act"], st["alpha"], 1.0, impl=st["backend"])


class _FusedResnetBlock2D:
    """diffusers ResnetBlock2D with both GroupNorm (+ scale/shift) + activation pairs fused."""

    def forward(self, input_tensor, temb, *args, **kwargs):
        st = self.__dict__[_MARK]
        act, impl = st["act"], st["backend"]
        n1, n2 = self.norm1, self.norm2
        h = group_norm(input_tensor, n1.num_groups, n1.weight, n1.bias, n1.eps, activation=act, impl=impl)
        if self.upsample is not None:
            if h.shape[0] >= 64:
                input_tensor, h = input_tensor.contiguous(), h.contiguous()
            input_tensor, h = self.upsample(input_tensor), self.upsample(h)
        elif self.downsample is not None:
            input_tensor, h = self.downsample(input_tensor), self.downsample(h)
        h = self.conv1(h)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        scale = shift = None
        if self.time_embedding_norm == "default":
            if temb is not None:
                h = h + temb
        elif self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError(f" `temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
            scale, shift = torch.chunk(temb, 2, dim=1)
            n, c = h.shape[:2]
            scale, shift = scale.reshape(-1, c).expand(n, c), shift.reshape(-1, c).expand(n, c)
        h = group_norm(h, n2.num_groups, n2.weight, n2.bias, n2.eps, activation=act, scale=scale, shift=shift, impl=impl)
        h = self.conv2(self.dropout(h))
        if self.conv_shortcut is not None:
            if self.training:
                input_tensor = input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + h) / self.output_scale_factor


class _FusedMultiheadAttention:
    """nn.MultiheadAttention on fastgen attention for ``need_weights=False`` calls without
    key_padding_mask / bias_k / add_zero_attn / separate k, v dims / causal flag / dropout in training
    (those calls, and every ``need_weights=True`` call, run nn.MultiheadAttention's own forward)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        simple = (not need_weights and key_padding_mask is None and not is_causal and self._qkv_same_embed_dim
                  and self.bias_k is None and not self.add_zero_attn and not (self.training and self.dropout > 0)
                  and query.dim() == 3 and key.dim() == 3 and value.dim() == 3
                  and (attn_mask is None or attn_mask.dim() in (2, 3)))
        if not simple:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, nq, e = query.shape
        h = self.num_heads
        d = e // h
        w, bias = self.in_proj_weight, self.in_proj_bias
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        q = F.linear(query, wq, bq).view(b, nq, h, d)
        k = F.linear(key, wk, bk).view(b, key.shape[1], h, d)
        v = F.linear(value, wv, bv).view(b, value.shape[1], h, d)
        mask = None
        if attn_mask is not None:
            mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask  # torch: True = masked out
            if mask.dim() == 3:
                mask = mask.view(b, h, nq, k.shape[1])
        out = attention(q, k, v, attn_mask=mask, layout="bnhd", impl=self.__dict__[_MARK]["backend"])
        out = self.out_proj(out.reshape(b, nq, e))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


class FastgenAttnProcessor:
    """A diffusers attention processor (``attn.set_processor(...)``) computing what diffusers'
    ``AttnProcessor2_0`` / ``AttnProcessor`` compute, on :func:`fastgen.functional.attention` (and
    the fused group_norm for ``attn.group_norm``). ``original`` is the processor it replaced."""

    def __init__(self, original: Any, scale: Optional[float], backend: Optional[str] = None):
        self.original, self.scale, self.backend = original, scale, backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        gn = attn.group_norm
        if gn is not None:
            xt = hidden_states.transpose(1, 2)
            if type(gn) is nn.GroupNorm and not _has_hooks(gn):
                xt = group_norm(xt, gn.num_groups, gn.weight, gn.bias, gn.eps, impl=self.backend)
            else:
                xt = gn(xt)
            hidden_states = xt.transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim)
        value = value.view(batch_size, -1, attn.heads, head_dim)
        if attn.norm_q is not None or attn.norm_k is not None:  # diffusers normalises in (B, H, N, D)
            query, key, value = (t.transpose(1, 2) for t in (query, key, value))
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            hidden_states = attention(query, key, value, attn_mask=attention_mask, scale=self.scale,
                                      impl=self.backend).transpose(1, 2)
        else:
            hidden_states = attention(query, key, value, attn_mask=attention_mask, scale=self.scale, layout="bnhd",
                                      impl=self.backend)
        hidden_states = hidden_states.reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# =============================================================================================== AdaIN blocks (FX)
# A user's AdaIN block is any module with a plain nn.InstanceNorm2d child whose forward computes
# ``norm(x) * a + b`` (in any operand order, out of place or in place). Its forward is traced with
# torch.fx, every such mul/add pair is replaced by one call to _adain_or_original, and the module
# runs the traced code with itself as ``self``: child modules, parameters and buffers are read
# live, so training, ``.to()``, load_state_dict, later swaps of its children and their hooks work.
class _InplaceProxy(fx.Proxy):
    """fx.Proxy has no in-place operators, so ``h *= s`` would be recorded as ``h = h * s``, changing
    what other references to ``h`` see; record them as the in-place ``operator.i*`` calls they are."""


for _name in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior", "ixor",
              "ilshift", "irshift"):
    def _inplace(self, other, _fn=getattr(operator, _name)):
        return self.tracer.create_proxy("call_function", _fn, (self, other), {})
    setattr(_InplaceProxy, f"__{_name}__", _inplace)
del _name, _inplace


class _BlockTracer(fx.Tracer):
    """Traces only the block's own forward: every child module is a leaf (called as itself, at run
    time, with its hooks, its training flag and any fastgen rewrite it gets later)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InplaceProxy(node, self)


_BINOPS: dict[str, Any] = {
    "mul": operator.mul, "imul": operator.imul, "torch.mul": torch.mul,
    ".mul": lambda p, q: p.mul(q), ".mul_": lambda p, q: p.mul_(q),
    "add": operator.add, "iadd": operator.iadd, "torch.add": torch.add,
    ".add": lambda p, q: p.add(q), ".add_": lambda p, q: p.add_(q),
}
_IN_PLACE = ("imul", ".mul_", "iadd", ".add_")


def _binop(node: fx.Node, op: str) -> Optional[str]:
    """The _BINOPS key of ``node`` if it is a two-operand ``op`` ("mul" / "add") without keywords."""
    if len(node.args) != 2 or node.kwargs:
        return None
    if node.op == "call_function":
        return {operator.__dict__[op]: op, operator.__dict__["i" + op]: "i" + op,
                getattr(torch, op): f"torch.{op}"}.get(node.target)
    if node.op == "call_method" and node.target in (op, op + "_"):
        return "." + node.target
    return None


def _per_nc(t: torch.Tensor, n: int, c: int) -> Optional[torch.Tensor]:
    """``t`` as the (N, C) values it broadcasts to against an (N, C, H, W) tensor, or None when it
    is not constant over H and W (or would not broadcast)."""
    if t.dim() > 4:
        return None
    s = (1,) * (4 - t.dim()) + tuple(t.shape)
    if s[2] != 1 or s[3] != 1 or s[0] not in (1, n) or s[1] not in (1, c):
        return None
    return t.reshape(s[0], s[1]).expand(n, c)


def _is_instance_norm(m: Any) -> bool:
    """An nn.InstanceNorm2d, or one that fastgen.optimize runs as group_norm (same result)."""
    return type(m) is nn.InstanceNorm2d or (isinstance(m, _FusedInstanceNorm) and _is_fused(m)
                                            and m.__dict__[_MARK]["orig_cls"] is nn.InstanceNorm2d)


def _adain_or_original(norm: nn.Module, x: Any, a: Any, b: Any, impl: Optional[str], ops: tuple) -> Any:
    """Run time half of the AdaIN rewrite of ``norm(x) * a + b`` (``ops``: how the original combined
    them). :func:`fastgen.functional.adain` when ``a`` and ``b`` are per-(sample, channel) tensors of
    x's dtype and device and ``norm`` is still a plain hook-free ``nn.InstanceNorm2d``; otherwise
    exactly the original computation."""
    if (_is_instance_norm(norm) and not norm.affine and not norm.track_running_stats and not _has_hooks(norm)
            and isinstance(x, torch.Tensor) and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and x.dim() == 4 and x.shape[1] == norm.num_features
            and x.shape[2] * x.shape[3] > 1 and x.is_floating_point() and a.dtype == x.dtype == b.dtype
            and a.device == x.device == b.device and isinstance(norm.eps, (int, float)) and norm.eps > 0):
        n, c = x.shape[:2]
        sa, sb = _per_nc(a, n, c), _per_nc(b, n, c)
        if sa is not None and sb is not None:
            return adain(x, sa, sb, float(norm.eps), impl=impl)
    mul, norm_first, add, prod_first = ops
    h = norm(x)
    h = _BINOPS[mul](h, a) if norm_first else _BINOPS[mul](a, h)
    return _BINOPS[add](h, b) if prod_first else _BINOPS[add](b, h)


def _rewrite_adain(graph: fx.Graph, norms: tuple, impl: Optional[str]) -> dict[str, list[int]]:
    """Replace every ``norm(x) * a + b`` (norm in ``norms``, each intermediate used once) by
    _adain_or_original; returns {norm name: [matched call sites, all call sites]}."""
    sites = {k: [0, 0] for k in norms}
    for n in list(graph.nodes):
        if n.op != "call_module" or n.target not in sites:
            continue
        sites[n.target][1] += 1
        if len(n.args) != 1 or n.kwargs or len(n.users) != 1:
            continue
        mul = next(iter(n.users))
        mk = _binop(mul, "mul")
        if mk is None or len(mul.users) != 1 or mul.args.count(n) != 1:
            continue
        norm_first = mul.args[0] is n
        a = mul.args[1] if norm_first else mul.args[0]
        add = next(iter(mul.users))
        ak = _binop(add, "add")
        if ak is None or not isinstance(a, fx.Node) or add.args.count(mul) != 1:
            continue
        prod_first = add.args[0] is mul
        b = add.args[1] if prod_first else add.args[0]
        if not isinstance(b, fx.Node) or (mk in _IN_PLACE and not norm_first) or (ak in _IN_PLACE and not prod_first):
            continue  # an in-place op on a or b: their other users would see the change
        with graph.inserting_before(add):
            mod = graph.get_attr(n.target)
            new = graph.call_function(_adain_or_original, (mod, n.args[0], a, b, impl,
                                                           (mk, norm_first, ak, prod_first)))
        add.replace_all_uses_with(new)
        for dead in (add, mul, n):
            graph.erase_node(dead)
        sites[n.target][0] += 1
    return sites


_PLAIN = (bool, int, float, complex, str, type(None), torch.dtype, torch.device)
_MISSING = object()


def _is_plain(v: Any) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(_is_plain(e) for e in v))


def _snapshot(m: nn.Module) -> tuple:
    """The module's plain Python attributes: tracing bakes the ones its forward reads into the code."""
    return tuple((k, v) for k, v in m.__dict__.items() if k != "training" and k != _MARK and _is_plain(v))


def _changed(m: nn.Module, snap: tuple) -> bool:
    """Whether an attribute of the snapshot has another value now (attributes added since are ignored:
    the traced forward did not read them; torch.compile adds some)."""
    d = m.__dict__
    for k, v in snap:
        w = d.get(k, _MISSING)
        if w is not v and w != v:
            return True
    return False


class _NotFused(Exception):
    pass


def _resolves(m: nn.Module, target: str) -> bool:
    obj = m
    for part in target.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return False
    return True


def _trace_adain(m: nn.Module, norms: tuple, impl: Optional[str]) -> tuple[dict, tuple, tuple, tuple]:
    """({training flag: forward function}, rewritten norm names, those with every call rewritten, snapshot),
    or raises _NotFused(reason).
    The forward is traced in train and in eval mode (code reading ``self.training`` differs)."""
    snap, keys, mode, cls = _snapshot(m), set(m.__dict__), m.training, type(m)
    codes: dict[bool, tuple] = {}
    full: Optional[set] = None
    some: set = set()
    try:
        if _is_fused(m):  # re-tracing a rewritten block: trace its original forward
            m.__class__ = m.__dict__[_MARK]["orig_cls"]
        for train in (True, False):
            m.training = train
            try:
                graph = _BlockTracer().trace(m)
            except Exception as exc:  # noqa: BLE001  (whatever the forward raises on proxies)
                msg = " ".join(str(exc).split())
                raise _NotFused(f"symbolic trace failed: {type(exc).__name__}: "
                                f"{msg[:120] + '...' if len(msg) > 120 else msg}") from None
            try:
                sites = _rewrite_adain(graph, norms, impl)
            except Exception as exc:  # noqa: BLE001  (a graph this matcher did not foresee: leave the block alone)
                raise _NotFused(f"rewrite of the traced graph failed: {type(exc).__name__}: {exc}") from None
            done = {k for k, (hit, calls) in sites.items() if hit and hit == calls}
            full = done if full is None else full & done
            some |= {k for k, (hit, _) in sites.items() if hit}
            if not any(hit for hit, _ in sites.values()):
                codes[train] = None
                continue
            for node in graph.nodes:
                if node.op in ("get_attr", "call_module") and not _resolves(m, node.target):
                    raise _NotFused(f"forward reads {node.target!r}, which is not an attribute of the module "
                                    "(a tensor constant made in forward?)")
            try:
                graph.lint()
                gm = fx.GraphModule(m, graph, class_name=f"{type(m).__name__}AdaIN")
            except Exception as exc:  # noqa: BLE001
                raise _NotFused(f"the rewritten graph does not compile: {type(exc).__name__}: {exc}") from None
            codes[train] = (gm.code, type(gm).forward)
    finally:
        m.__class__ = cls
        m.training = mode
        added = set(m.__dict__) - keys  # attributes the tracer (or the forward) set: remove them
        for k in added:
            del m.__dict__[k]
        changed = _snapshot(m) != snap
        if changed:
            m.__dict__.update(snap)
    if added or changed:
        raise _NotFused("its forward sets Python attributes of the module (state the traced code would not update)")
    if codes[True] is None and codes[False] is None:
        raise _NotFused("no norm(x) * a + b with a single use of each intermediate in forward")
    fns = {t: (c[1] if c else None) for t, c in codes.items()}
    if codes[True] and codes[False] and codes[True][0] == codes[False][0]:
        fns[False] = fns[True]
    return fns, tuple(sorted(some)), tuple(sorted(full or ())), snap


def _adain_candidates(m: nn.Module) -> tuple[tuple, list[str]]:
    """(names of the plain InstanceNorm2d children, reasons the other InstanceNorm2d children are not)."""
    ok, why = [], []
    for k, c in m._modules.items():
        if type(c) is not nn.InstanceNorm2d:
            continue
        bad = [s for s, cond in (("affine=True", c.affine), ("track_running_stats=True", c.track_running_stats),
                                 ("has hooks", _has_hooks(c))) if cond]
        if bad:
            why.append(f"InstanceNorm2d {k!r}: {', '.join(bad)}")
        else:
            ok.append(k)
    return tuple(ok), why


class _FusedAdaINBlock:
    """A module whose forward computes ``norm(x) * a + b`` with a plain InstanceNorm2d child: runs its
    own forward, traced by torch.fx, with those pairs on :func:`fastgen.functional.adain`."""

    _keep_forward_signature = True

    def forward(self, *args, **kwargs):
        st = self.__dict__[_MARK]
        if st["fns"] is None or _changed(self, st["snap"]):  # not traced yet, or attributes changed since
            _retrace_adain(self, st)
        fn = st["fns"].get(self.training)
        if fn is None:
            return super().forward(*args, **kwargs)
        return fn(self, *args, **kwargs)

    def __setstate__(self, state):  # unpickling / deepcopy: the traced code is not in the state; trace again
        super().__setstate__(state)
        st = self.__dict__.get(_MARK)
        if st is not None and st.get("fns") is None:
            _retrace_adain(self, st, final=False)


@torch.compiler.disable
def _retrace_adain(m: nn.Module, st: dict, final: bool = True) -> None:
    try:
        st["fns"], _, _, st["snap"] = _trace_adain(m, st["candidates"], st["backend"])
    except _NotFused:
        if final:  # the pattern is gone (attributes changed): the original forward until they change again
            st["fns"], st["snap"] = {}, _snapshot(m)


def _optimize_adain_block(m: nn.Module, path: str, impl: Optional[str], report: OptimizeReport,
                          handled: set) -> bool:
    """Try the AdaIN rewrite on ``m`` (a module with InstanceNorm2d children); True when done."""
    name = type(m).__name__
    cands, why = _adain_candidates(m)
    cands = tuple(k for k in cands if id(m._modules[k]) not in handled)
    if not cands:
        report.left_alone.append(ReportEntry(path, name, "left alone", "AdaIN: " + "; ".join(why or ["norm handled"])))
        return False
    try:
        fns, some, full, snap = _trace_adain(m, cands, impl)
    except _NotFused as exc:
        report.left_alone.append(ReportEntry(path, name, "left alone", f"AdaIN: {exc}"))
        return False
    _swap(m, _FusedAdaINBlock, backend=impl, candidates=cands, norms=full, fns=fns, snap=snap)
    handled.update(id(m._modules[k]) for k in full)
    for k in some:
        report.replaced.append(ReportEntry(path, name, "fused adain", f"{k}(x) * a + b in forward -> fastgen adain "
                                           "(for per-(sample, channel) a, b; others run the original ops)"))
    return True


# =============================================================================================== schedulers
_SCHEDULERS = {  # diffusers class name -> (fastgen sampler class name, output class name, has pred_original_sample)
    "DDIMScheduler": ("DDIMSampler", "DDIMSchedulerOutput", True),
    "EulerDiscreteScheduler": ("EulerSampler", "EulerDiscreteSchedulerOutput", True),
    "DPMSolverMultistepScheduler": ("DPMSolverMultistepSampler", "SchedulerOutput", False),
}


class _FastgenScheduler:
    """A diffusers scheduler whose ``step`` runs fastgen's fused sampler update. Same timesteps (checked
    at ``set_timesteps``; on any mismatch, or step arguments fastgen does not take, diffusers' own
    ``step`` runs), same output type."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        st = self.__dict__[_MARK]
        st["active"] = False
        if kwargs or num_inference_steps is None:
            return
        smp = st["sampler"]
        smp.set_timesteps(int(num_inference_steps))
        ours, theirs = smp.timesteps, self.timesteps
        st["active"] = bool(ours.shape == theirs.shape and torch.equal(ours.to(theirs.dtype).cpu(), theirs.cpu()))
        if st["active"]:
            smp.timesteps = smp.timesteps.to(theirs.device)

    def scale_model_input(self, sample, timestep=None):
        st = self.__dict__[_MARK]
        if not st["active"]:
            return super().scale_model_input(sample, timestep)
        return st["sampler"].scale_model_input(sample, timestep)

    def step(self, model_output, timestep, sample, *args, generator=None, return_dict=True, **kwargs):
        st = self.__dict__[_MARK]
        smp = st["sampler"]
        eta = kwargs.pop("eta", None)
        defaults = st["step_defaults"]
        extra = {k: v for k, v in kwargs.items() if v is not None and not (k in defaults and _same(defaults[k], v))}
        if kwargs.get("use_clipped_model_output") and not getattr(smp, "use_clipped_model_output", False):
            extra["use_clipped_model_output"] = True
        ok = st["active"] and not args and not extra and (eta is None or float(eta) == getattr(smp, "eta", 0.0))
        if not ok:
            if st["active"] and st["stateful"]:
                raise ValueError(f"fastgen.optimize: {type(self).__name__}.step got arguments the fused sampler does "
                                 f"not take ({sorted(extra)}); call fastgen.restore(scheduler) to use diffusers' step")
            if eta is not None:
                kwargs["eta"] = eta
            if st["active"] and hasattr(self, "_step_index"):
                self._step_index = smp.step_index
            return super().step(model_output, timestep, sample, *args, generator=generator, return_dict=return_dict,
                                **kwargs)
        noise = None
        if getattr(smp, "eta", 0.0) > 0:  # draw the noise as diffusers does, so trajectories agree
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        res = smp.step(model_output, timestep, sample, generator=generator, noise=noise)
        if hasattr(self, "_step_index"):
            self._step_index = smp.step_index
        out_cls, with_x0 = st["output"]
        if not return_dict:
            return (res.prev_sample, res.pred_original_sample) if with_x0 else (res.prev_sample,)
        if with_x0:
            return out_cls(prev_sample=res.prev_sample, pred_original_sample=res.pred_original_sample)
        return out_cls(prev_sample=res.prev_sample)


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _scheduler_sampler(sched, impl):
    """(fastgen sampler, output class, has x0) for a diffusers scheduler, or (None, reason)."""
    name = type(sched).__name__
    spec = _SCHEDULERS.get(name)
    if spec is None or type(sched).__module__.split(".")[0] != "diffusers":
        return None, "no fastgen sampler for this scheduler class"
    from .diffusion import samplers as S

    smp_cls = getattr(S, spec[0])
    cfg = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
    defaults = {k: p.default for k, p in inspect.signature(type(sched).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    accepted = set()
    for klass in smp_cls.__mro__:
        if klass is object:
            continue
        accepted |= set(inspect.signature(klass.__init__).parameters)
    kw, unsupported = {}, []
    for k, v in cfg.items():
        if k in accepted:
            kw[k] = v
        elif k in defaults and defaults[k] != v and not (isinstance(v, float) and v != v):
            unsupported.append(f"{k}={v!r}")
    if "sde" in str(cfg.get("algorithm_type", "")):
        unsupported.append(f"algorithm_type={cfg['algorithm_type']!r} (stochastic: its noise stream is diffusers')")
    if unsupported:
        return None, "config not supported by the fused sampler: " + ", ".join(unsupported)
    try:
        smp = smp_cls(**kw, impl=impl)
    except (TypeError, ValueError) as exc:
        return None, f"fused sampler rejects the config: {exc}"
    mod = __import__(type(sched).__module__, fromlist=[spec[1]])
    out_cls = getattr(mod, spec[1], None)
    if out_cls is None:
        from diffusers.schedulers.scheduling_utils import SchedulerOutput as out_cls
    return (smp, (out_cls, spec[2])), ""


def _optimize_scheduler(sched, impl, report: OptimizeReport, path: str) -> None:
    name = type(sched).__name__
    if _is_fused(sched):
        report.left_alone.append(ReportEntry(path, name, "left alone", "already optimized"))
        return
    got, why = _scheduler_sampler(sched, impl)
    if got is None:
        report.left_alone.append(ReportEntry(path, name, "left alone", why))
        return
    smp, output = got
    defaults = {k: p.default for k, p in inspect.signature(type(sched).step).parameters.items()
                if p.default is not inspect.Parameter.empty}
    _swap(sched, _FastgenScheduler, keep_name=True, sampler=smp, output=output, active=False, backend=impl,
          stateful=name == "DPMSolverMultistepScheduler", step_defaults=defaults)
    if getattr(sched, "num_inference_steps", None):  # timesteps already set: set the sampler's too
        sched.set_timesteps(sched.num_inference_steps, device=sched.timesteps.device)
    report.replaced.append(ReportEntry(path, name, f"fused {type(smp).__name__}.step",
                                       "fastgen sampler_update kernel, same timesteps and output type"))


def _is_diffusers_scheduler(obj) -> bool:
    return any(c.__name__ == "SchedulerMixin" and c.__module__.startswith("diffusers") for c in type(obj).__mro__)


def _is_pipeline(obj) -> bool:
    return isinstance(getattr(obj, "components", None), dict) and not isinstance(obj, nn.Module)


# =============================================================================================== model walk
def _diffusers_class(m, name: str, module_prefix: str) -> bool:
    t = type(m)
    return t.__name__ == name and t.__module__.startswith(module_prefix)


_ALREADY_FASTGEN = ("GroupNormAct", "BiasAct", "AdaIN", "Attention", "SelfAttention2d", "ResBlock", "AttentionBlock",
                    "AdaINLayer")


def _walk(model: nn.Module, impl: Optional[str], report: OptimizeReport) -> None:
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    once = lambda *ms: all(uses.get(id(m), 0) == 1 for m in ms)  # noqa: E731
    handled: set[int] = set()
    other: dict[str, int] = {}  # leaf modules of unrecognised types, by class name
    rep, left = report.replaced, report.left_alone

    for path, m in model.named_modules():
        t = type(m)
        if id(m) in handled:
            continue
        if _is_fused(m) or isinstance(m, _FusedAway):
            left.append(ReportEntry(path, t.__name__, "left alone", "already optimized"))
            if isinstance(m, _FusedResnetBlock2D):
                handled.update((id(m.norm1), id(m.norm2)))
            elif isinstance(m, _FusedAdaINBlock):
                handled.update(id(m._modules[k]) for k in m.__dict__[_MARK]["norms"] if k in m._modules)
            continue
        if t.__module__.startswith("fastgen.") and t.__name__ in _ALREADY_FASTGEN:
            left.append(ReportEntry(path, t.__name__, "left alone", "already a fastgen fused module"))
            for sub in m.modules():
                handled.add(id(sub))
            continue

        # ---- diffusers ResnetBlock2D
        if _diffusers_class(m, "ResnetBlock2D", "diffusers."):
            act = _gn_activation(m.nonlinearity)
            if act is None:
                left.append(ReportEntry(path, t.__name__, "left alone",
                                        f"activation {type(m.nonlinearity).__name__} has no fused group_norm form"))
            elif not (type(m.norm1) is nn.GroupNorm and type(m.norm2) is nn.GroupNorm):
                left.append(ReportEntry(path, t.__name__, "left alone", "norms are not nn.GroupNorm"))
            elif _has_hooks(m.norm1, m.norm2, m.nonlinearity):
                left.append(ReportEntry(path, t.__name__, "left alone", "hooks on its norms / activation"))
            elif m.time_embedding_norm not in ("default", "scale_shift"):
                left.append(ReportEntry(path, t.__name__, "left alone", f"time_embedding_norm={m.time_embedding_norm}"))
            else:
                _swap(m, _FusedResnetBlock2D, act=act, backend=impl)
                handled.update((id(m.norm1), id(m.norm2)))
                mod = "scale/shift + " if m.time_embedding_norm == "scale_shift" else ""
                rep.append(ReportEntry(path, t.__name__, "fused ResnetBlock2D",
                                       f"norm1+{act}, norm2+{mod}{act} -> fastgen group_norm"))
            continue

        # ---- diffusers Attention (processor interface)
        if hasattr(m, "set_processor") and hasattr(m, "processor") and t.__module__.startswith("diffusers."):
            proc = m.processor
            pname = type(proc).__name__
            if isinstance(proc, FastgenAttnProcessor):
                left.append(ReportEntry(path, t.__name__, "left alone", "already optimized"))
                if type(m.group_norm) is nn.GroupNorm:
                    handled.add(id(m.group_norm))
            elif pname == "AttnProcessor2_0" or pname == "AttnProcessor":
                scale = None if pname == "AttnProcessor2_0" else float(m.scale)  # 2_0 uses SDPA's default scale
                m.set_processor(FastgenAttnProcessor(proc, scale, impl))
                if type(m.group_norm) is nn.GroupNorm:
                    handled.add(id(m.group_norm))  # the processor runs it fused
                rep.append(ReportEntry(path, t.__name__, "fastgen attention processor", f"replaces {pname}"))
            else:
                left.append(ReportEntry(path, t.__name__, "left alone", f"processor {pname} is not a plain "
                                        "AttnProcessor2_0 / AttnProcessor"))
            continue

        # ---- the UNets' conv_norm_out -> conv_act
        if (_diffusers_class(m, "UNet2DModel", "diffusers.") or _diffusers_class(m, "UNet2DConditionModel", "diffusers.")):
            norm, act = getattr(m, "conv_norm_out", None), getattr(m, "conv_act", None)
            name = _gn_activation(act) if act is not None else None
            if (type(norm) is nn.GroupNorm and name and once(norm, act) and not _has_hooks(norm, act)):
                _swap(norm, _FusedGroupNorm, act=name, backend=impl)
                m.conv_act = _FusedAway(act, "conv_norm_out")
                handled.update((id(norm), id(m.conv_act)))
                rep.append(ReportEntry(_join(path, "conv_norm_out"), "GroupNorm", f"fused group_norm+{name}",
                                       "conv_norm_out -> conv_act"))
            continue

        # ---- AdaIN blocks: a (non-torch) module with an InstanceNorm2d child whose forward computes norm(x) * a + b
        if t.__module__.split(".")[0] != "torch" and any(type(c) is nn.InstanceNorm2d for c in m._modules.values()):
            if _optimize_adain_block(m, path, impl, report, handled):
                continue

        # ---- Sequential pairs
        if isinstance(m, nn.Sequential):
            keys = list(m._modules)
            for a, b in zip(keys, keys[1:]):
                x, y = m._modules[a], m._modules[b]
                if x is None or y is None or id(x) in handled or _is_fused(x):
                    continue
                if _has_hooks(x, y) or not once(x, y):
                    continue
                sub = _join(path, a)
                if type(x) is nn.GroupNorm and _gn_activation(y):
                    name = _gn_activation(y)
                    _swap(x, _FusedGroupNorm, act=name, backend=impl)
                    m._modules[b] = _FusedAway(y, a)
                    handled.update((id(x), id(m._modules[b])))
                    rep.append(ReportEntry(sub, "GroupNorm", f"fused group_norm+{name}", f"with [{b}] {type(y).__name__}"))
                elif type(x) in (nn.Linear, nn.Conv2d) and _bias_act_activation(y):
                    act, alpha = _bias_act_activation(y)
                    if x.bias is None:
                        left.append(ReportEntry(sub, type(x).__name__, "left alone", "no bias to fuse with the activation"))
                        continue
                    _swap(x, _FusedLinearAct if type(x) is nn.Linear else _FusedConvAct, act=act, alpha=alpha, backend=impl)
                    m._modules[b] = _FusedAway(y, a)
                    handled.update((id(x), id(m._modules[b])))
                    rep.append(ReportEntry(sub, type(x).__name__, f"fused bias_act({act})", f"with [{b}] {type(y).__name__}"))
            continue

        # ---- single modules
        if t is nn.GroupNorm:
            if _has_hooks(m):
                left.append(ReportEntry(path, "GroupNorm", "left alone", "has hooks"))
            else:
                _swap(m, _FusedGroupNorm, act=None, backend=impl)
                rep.append(ReportEntry(path, "GroupNorm", "fused group_norm", "no activation follows it in a known pattern"))
        elif t is nn.InstanceNorm2d:
            if m.track_running_stats:
                left.append(ReportEntry(path, t.__name__, "left alone", "track_running_stats=True"))
            else:
                _swap(m, _FusedInstanceNorm, backend=impl)
                rep.append(ReportEntry(path, t.__name__, "fused group_norm (C groups)", "instance norm"))
        elif t is nn.MultiheadAttention:
            _swap(m, _FusedMultiheadAttention, backend=impl)
            rep.append(ReportEntry(path, t.__name__, "fastgen attention", "for need_weights=False calls; others run "
                                   "nn.MultiheadAttention's forward"))
        elif not m._modules:
            other[t.__name__] = other.get(t.__name__, 0) + 1
    for name, n in sorted(other.items()):
        left.append(ReportEntry(f"({n}x)", name, "left alone", "no fused pattern recognised"))


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _restore_module(model: nn.Module) -> int:
    n = 0
    for m in list(model.modules()):
        for k, child in list(m._modules.items()):
            if isinstance(child, _FusedAway):
                m._modules[k] = child._fastgen_original
                n += 1
        if _is_fused(m):
            _unswap(m)
            n += 1
        proc = getattr(m, "processor", None)
        if isinstance(proc, FastgenAttnProcessor) and hasattr(m, "set_processor"):
            m.set_processor(proc.original)
            n += 1
    return n


# =============================================================================================== public API
def _check_backend(backend: Optional[str]) -> Optional[str]:
    if backend is None:
        return None
    if not isinstance(backend, str) or backend.strip().lower() not in _backend._CHOICES:
        raise ValueError(f"fastgen.optimize: backend must be None or one of {', '.join(_backend._CHOICES)}; "
                         f"got {backend!r}")
    b = backend.strip().lower()
    return None if b == "auto" else b


def optimize(model, *, backend: Optional[str] = None, inplace: bool = False, report: bool = False):
    """Swap fastgen's fused kernels into ``model`` (see the module docstring for what is recognised).

    Args:
        model: an ``nn.Module`` (fastgen's, a diffusers model, plain PyTorch), a diffusers pipeline
            (its modules and its scheduler are optimized) or a diffusers scheduler.
        backend: None (automatic dispatch per device, :mod:`fastgen.backend`) or ``"torch"`` / ``"cpp"`` /
            ``"triton"`` to force an implementation of the fused ops (``"auto"`` = None).
        inplace: rewrite ``model`` itself; False (default) rewrites and returns a deep copy.
        report: also return an :class:`OptimizeReport`.

    Returns:
        The optimized model (``model`` itself when ``inplace``), or ``(model, report)``.

    Parameters are shared, never copied: state_dict keys are unchanged and checkpoints load either
    way. Applying it twice changes nothing more; :func:`restore` undoes it.
    """
    if not isinstance(inplace, bool):
        raise TypeError(f"fastgen.optimize: inplace must be a bool, got {type(inplace).__name__}")
    if not isinstance(report, bool):
        raise TypeError(f"fastgen.optimize: report must be a bool, got {type(report).__name__}")
    impl = _check_backend(backend)
    is_mod, is_pipe, is_sched = isinstance(model, nn.Module), _is_pipeline(model), _is_diffusers_scheduler(model)
    if not (is_mod or is_pipe or is_sched):
        raise TypeError(f"fastgen.optimize: model must be an nn.Module, a diffusers pipeline or a diffusers "
                        f"scheduler; got {type(model).__name__}")
    if impl is not None and is_mod:
        p = next(iter(model.parameters()), None)
        if p is not None:
            ok, why = _backend.impl_available(impl, p.device.type)
            if not ok:
                raise _backend.BackendUnavailableError(f"fastgen.optimize: backend={impl!r} is not available on "
                                                       f"{p.device.type}: {why}")
    if not inplace:
        model = copy.deepcopy(model)
    rep = OptimizeReport(backend=impl)
    if is_mod:
        _walk(model, impl, rep)
    elif is_sched:
        _optimize_scheduler(model, impl, rep, "scheduler")
    else:
        for name, comp in model.components.items():
            if isinstance(comp, nn.Module):
                sub = OptimizeReport()
                _walk(comp, impl, sub)
                for e in sub.replaced + sub.left_alone:
                    e.path = _join(name, e.path)
                rep.replaced += sub.replaced
                rep.left_alone += sub.left_alone
            elif comp is not None and _is_diffusers_scheduler(comp):
                _optimize_scheduler(comp, impl, rep, name)
    return (model, rep) if report else model


def restore(model):
    """Undo :func:`optimize` in place: the original module classes, activations and attention
    processors come back (same parameter objects), schedulers step with diffusers again. Returns
    ``model``."""
    if isinstance(model, nn.Module):
        _restore_module(model)
    elif _is_pipeline(model):
        for comp in model.components.values():
            if isinstance(comp, nn.Module):
                _restore_module(comp)
            elif _is_fused(comp):
                _unswap(comp)
    elif _is_diffusers_scheduler(model):
        if _is_fused(model):
            _unswap(model)
    else:
        raise TypeError(f"fastgen.restore: model must be an nn.Module, a diffusers pipeline or a diffusers "
                        f"scheduler; got {type(model).__name__}")
    return model
