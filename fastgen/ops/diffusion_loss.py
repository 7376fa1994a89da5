r"""The fused diffusion training loss: weighted per-sample MSE against the prediction target.

    target = p_s * x0 + q_s * noise
    L_s    = w_s * mean_over_sample_elements((model_output - target)^2)
    loss   = mean_s L_s | sum_s L_s | L (reduction "mean" | "sum" | "none")

Targets (ab = alpha_bar, SNR = ab / (1 - ab)):
    epsilon       (p, q) = (0, 1)
    sample        (p, q) = (1, 0)
    v_prediction  (p, q) = (-sqrt(1 - ab), sqrt(ab))
    edm           (p, q) = (sigma / (sd sqrt(sigma^2 + sd^2)), -sd / sqrt(sigma^2 + sd^2))

**EDM** (Karras et al. 2022, sd = sigma_data): the network output F is preconditioned,
D(x; sigma) = c_skip x + c_out F with x = x0 + sigma noise, c_skip = sd^2 / (sigma^2 + sd^2),
c_out = sigma sd / sqrt(sigma^2 + sd^2), and the loss is lambda(sigma) ||D - x0||^2 with
lambda = (sigma^2 + sd^2) / (sigma sd)^2. Since D - x0 = c_out (F - T) with

    T = (x0 - c_skip x) / c_out = ((1 - c_skip) x0 - c_skip sigma noise) / c_out,

the loss is lambda c_out^2 ||F - T||^2, and lambda c_out^2 = (sigma^2 + sd^2) / (sigma sd)^2 *
(sigma sd)^2 / (sigma^2 + sd^2) = 1: EDM's weighted denoiser loss *is* the unweighted MSE of F
against T, with 1 - c_skip = sigma^2 / (sigma^2 + sd^2) giving the (p, q) above.
(tests/test_diffusion_loss.py checks this against the loss written the EDM way.)

Weightings are weights W on the x0 error ||D - x0||^2, converted to the prediction's own error
(the eps error is sqrt(SNR) x the x0 error, the v error sqrt(SNR + 1) x, the F error 1 / c_out x):
w = W / SNR (epsilon), W / (SNR + 1) (v), W (sample), W c_out^2 (edm); for EDM SNR = 1 / sigma^2.
    "uniform"  w = 1 (plain MSE of whatever the network predicts)
    "min_snr"  W = min(SNR, gamma) (Hang et al. 2023): epsilon min(SNR, gamma) / SNR,
               v min(SNR, gamma) / (SNR + 1), sample min(SNR, gamma), edm min(1/sigma^2, gamma) c_out^2
    "edm"      W = lambda(sigma) with sigma^2 = 1 / SNR (Karras et al.): 1 for prediction_type="edm"
               (so "edm" and "uniform" agree there), lambda sigma^2 for epsilon, lambda (1 - ab)
               for v, lambda for sample
    a Tensor   explicit per-sample weights [N] (may require grad: e.g. learned weightings)
All weights are evaluated in forms that stay finite at alpha_bar = 0 and 1 where the limit is
finite (e.g. min-SNR epsilon: min(1, gamma (1 - ab) / ab)).

An empty mean is 0, not NaN: the "mean" over an empty batch (N = 0) is 0 (an empty micro-batch
adds nothing and poisons nothing), and a sample with no elements has loss 0.

Implementations (see fastgen.backend):
  torch   diffusion_loss_reference — plain differentiable PyTorch (the oracle and the fallback)
  cpp     torch.ops.fastgen.diffusion_loss{,_backward} — C++ CPU kernels (fastgen._C)
  triton  torch.ops.fastgen.diffusion_loss{,_backward}_triton — Triton kernels
The fused forward reads model_output, x0 and noise once (x0 / noise are skipped where their
coefficient is 0: epsilon reads m and noise only) and never materialises the target or the
difference; per-sample sums are accumulated in float64 in a fixed order (deterministic). The
backward is one elementwise pass writing d model_output (and d x0 / d noise when they require
grad), and it is an op with its own autograd formula, so double backward works.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from .. import _extension, backend
from . import _common as C
from .q_sample import check_host_range, compute_dtype, param_arg, per_sample_view

OP = "diffusion_loss"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "edm")
WEIGHTINGS = ("uniform", "min_snr", "edm")
REDUCTIONS = ("mean", "sum", "none")

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        notes="fused weighted diffusion MSE loss (eps / x0 / v / EDM targets, min-SNR / EDM weights) and its backward",
    )
)


# ----------------------------------------------------------------------------- coefficients
def diffusion_loss_coefficients(prediction_type: str, weighting: str = "uniform", alpha_bar=None, sigma=None,
                                min_snr_gamma: float = 5.0, sigma_data: float = 0.5):
    """``(p, q, w)``: target = p x0 + q noise and the per-sample weight, as float64 tensors shaped
    like the noise level (alpha_bar, or sigma for "edm"). The same formulas as
    csrc/include/fastgen/diffusion_loss.h, in the forms that stay finite at ab = 0 and 1."""
    g, sd = float(min_snr_gamma), float(sigma_data)
    if prediction_type == "edm":
        s = torch.as_tensor(sigma).to(torch.float64)
        root = (s * s + sd * sd).sqrt()
        p, q = s / (sd * root), -sd / root
        if weighting == "min_snr":
            c_out = s * sd / root
            w = torch.clamp(1.0 / (s * s), max=g) * c_out * c_out
        else:  # uniform, and edm: lambda * c_out^2 = 1
            w = torch.ones_like(s)
        return p, q, w
    ab = torch.as_tensor(alpha_bar).to(torch.float64)
    om = 1.0 - ab
    zero, one = torch.zeros_like(ab), torch.ones_like(ab)
    p, q = {"epsilon": (zero, one), "sample": (one, zero), "v_prediction": (-om.sqrt(), ab.sqrt())}[prediction_type]
    if weighting == "min_snr":  # min(SNR, g) / SNR, min(SNR, g) / (SNR + 1), min(SNR, g)
        w = {"epsilon": lambda: torch.clamp(g * om / ab, max=1.0),
             "v_prediction": lambda: torch.minimum(ab, g * om),
             "sample": lambda: torch.clamp(ab / om, max=g)}[prediction_type]()
    elif weighting == "edm":  # lambda sigma^2, lambda (1 - ab), lambda with sigma^2 = (1 - ab) / ab
        sd2 = sd * sd
        w = {"epsilon": lambda: (om + sd2 * ab) / (sd2 * ab),
             "v_prediction": lambda: (om + sd2 * ab) / sd2,
             "sample": lambda: 1.0 / sd2 + ab / om}[prediction_type]()
    else:
        w = one
    return p, q, w


# ----------------------------------------------------------------------------- reference
def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "mean":
        total = total / max(per_sample.shape[0], 1)  # the mean of an empty batch is 0
    return total


def diffusion_loss_reference(model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha_bar=None, *,
                             prediction_type: str = "epsilon", weighting="uniform", min_snr_gamma: float = 5.0,
                             sigma=None, sigma_data: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """The loss as plain differentiable PyTorch (also w.r.t. alpha_bar / sigma / weights).

    Coefficients in float64, elementwise math in fp32 (float64 inputs stay float64, for gradcheck);
    the loss is fp32 (float64 for float64 inputs). Arguments as :func:`diffusion_loss`.
    """
    ct = compute_dtype(model_output.dtype)
    m, x, n = model_output.to(ct), x0.to(ct), noise.to(ct)
    wt = "uniform" if isinstance(weighting, torch.Tensor) else weighting
    level = sigma if prediction_type == "edm" else alpha_bar
    level = level if isinstance(level, torch.Tensor) else torch.tensor(float(level), dtype=torch.float64)
    _, _, w = diffusion_loss_coefficients(prediction_type, wt, alpha_bar=level, sigma=level,
                                          min_snr_gamma=min_snr_gamma, sigma_data=sigma_data)
    if prediction_type == "epsilon":
        target = n
    elif prediction_type == "sample":
        target = x
    elif prediction_type == "v_prediction":
        ab = level.to(torch.float64)
        target = per_sample_view(ab.sqrt(), m, ct) * n - per_sample_view((1 - ab).sqrt(), m, ct) * x
    else:  # EDM: T = ((1 - c_skip) x0 - c_skip sigma noise) / c_out
        s, sd = level.to(torch.float64), float(sigma_data)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        target = (per_sample_view((1 - c_skip) / c_out, m, ct) * x - per_sample_view(c_skip * s / c_out, m, ct) * n)
    sq = (m - target) ** 2
    nb, per_sample = m.shape[0], math.prod(m.shape[1:])
    per = sq.reshape(nb, per_sample).sum(dim=1) / max(per_sample, 1)  # the mean of nothing is 0
    w = w.to(device=m.device, dtype=ct)
    if isinstance(weighting, torch.Tensor):
        w = w * weighting.to(device=m.device, dtype=ct)
    return _reduce(w * per, reduction)


# ----------------------------------------------------------------------------- fake kernels
def _fake_forward(m, x0, noise, alpha_bar, sigma, weight, prediction_type, weighting, min_snr_gamma, sigma_data,
                  reduction):
    shape = (m.shape[0],) if reduction == "none" else ()
    return m.new_empty(shape, dtype=torch.float32)


def _grad_like(m: torch.Tensor) -> torch.Tensor:
    """Mirror of the C++ kernel layout: m's own strides when batch-outer dense, else contiguous."""
    if C.is_dense(m) and C.batch_outer_dense(m):
        return torch.empty_like(m)
    return torch.empty(m.shape, dtype=m.dtype, device=m.device)


def _fake_backward(grad, m, x0, noise, alpha_bar, sigma, weight, prediction_type, weighting, min_snr_gamma,
                   sigma_data, reduction, need_model_output, need_x0, need_noise):
    def one(need):
        return _grad_like(m) if need else m.new_empty((0,))

    return one(need_model_output), one(need_x0), one(need_noise)


def _register_cpp_ops() -> bool:
    if _extension.load() is None:
        return False
    torch.library.register_fake("fastgen::diffusion_loss")(_fake_forward)
    torch.library.register_fake("fastgen::diffusion_loss_backward")(_fake_backward)
    # autograd of the C++ ops is registered in C++ (csrc/ops_diffusion_loss.cpp)
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


# ----------------------------------------------------------------------------- triton ops
_TRITON_BLOCK = 1024


def _device_pqw(m, alpha_bar, sigma, weight, prediction_type, weighting, min_snr_gamma, sigma_data):
    """(p, q, w) as float64 [N] tensors on m's device (torch ops: no host sync)."""
    nb = m.shape[0]
    level = sigma if prediction_type == "edm" else alpha_bar
    p, q, w = diffusion_loss_coefficients(prediction_type, weighting, alpha_bar=level.to(m.device),
                                          sigma=level.to(m.device), min_snr_gamma=min_snr_gamma,
                                          sigma_data=sigma_data)
    if weight is not None:
        w = w * weight.to(device=m.device, dtype=torch.float64)
    return tuple(t.expand(nb) if t.dim() == 0 else t for t in (p, q, w))


@functools.lru_cache(maxsize=None)
def _triton_ops():
    """Define the Triton custom ops on first use (needs triton importable)."""
    import triton
    from torch.library import triton_op, wrap_triton

    from ..kernels.diffusion_loss import loss_bwd_kernel, loss_fwd_kernel

    @triton_op("fastgen::diffusion_loss_triton", mutates_args=())
    def diffusion_loss_triton(model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                              alpha_bar: Optional[torch.Tensor], sigma: Optional[torch.Tensor],
                              weight: Optional[torch.Tensor], prediction_type: str, weighting: str,
                              min_snr_gamma: float, sigma_data: float, reduction: str) -> torch.Tensor:
        m = model_output
        nb = m.shape[0]
        per = m.numel() // nb if nb else 0
        if per == 0:
            per_sample = m.new_zeros((nb,), dtype=torch.float64)
        else:
            p, q, w = _device_pqw(m, alpha_bar, sigma, weight, prediction_type, weighting, min_snr_gamma, sigma_data)
            has_x0, has_n = prediction_type != "epsilon", prediction_type != "sample"
            mc = m if (C.is_dense(m) and C.batch_outer_dense(m)) else m.contiguous()
            xc = C.layout_like(x0, mc) if has_x0 else mc
            ncc = C.layout_like(noise, mc) if has_n else mc
            pq = torch.stack([p, q], dim=1).to(torch.float32).contiguous()
            nblocks = triton.cdiv(per, _TRITON_BLOCK)
            partials = torch.empty((nb, nblocks), dtype=torch.float32, device=m.device)
            wrap_triton(loss_fwd_kernel)[(nb * nblocks,)](
                mc, xc, ncc, pq, partials, per, nblocks, HAS_X0=has_x0, HAS_N=has_n, BLOCK=_TRITON_BLOCK,
                num_warps=4)
            per_sample = w * (partials.to(torch.float64).sum(dim=1) / per)
        return _reduce(per_sample, reduction).to(torch.float32)

    @triton_op("fastgen::diffusion_loss_backward_triton", mutates_args=())
    def diffusion_loss_backward_triton(grad: torch.Tensor, model_output: torch.Tensor, x0: torch.Tensor,
                                       noise: torch.Tensor, alpha_bar: Optional[torch.Tensor],
                                       sigma: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                                       prediction_type: str, weighting: str, min_snr_gamma: float,
                                       sigma_data: float, reduction: str, need_model_output: bool, need_x0: bool,
                                       need_noise: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = model_output
        outs = [_grad_like(m) if need else m.new_empty((0,)) for need in (need_model_output, need_x0, need_noise)]
        lay = next((o for o, need in zip(outs, (need_model_output, need_x0, need_noise)) if need), None)
        if lay is None or m.numel() == 0:
            return tuple(outs)
        nb = m.shape[0]
        per = m.numel() // nb
        p, q, w = _device_pqw(m, alpha_bar, sigma, weight, prediction_type, weighting, min_snr_gamma, sigma_data)
        g = grad.to(torch.float64)
        if reduction == "mean":
            g = g / nb
        k = g * 2.0 * w / per
        kkk = torch.stack([k, -p * k, -q * k], dim=1).to(torch.float32).contiguous()
        pq = torch.stack([p, q], dim=1).to(torch.float32).contiguous()
        has_x0, has_n = prediction_type != "epsilon", prediction_type != "sample"
        mc = C.layout_like(m, lay)
        xc = C.layout_like(x0, lay) if has_x0 else mc
        ncc = C.layout_like(noise, lay) if has_n else mc
        dm, dx, dn = (o if need else lay for o, need in zip(outs, (need_model_output, need_x0, need_noise)))
        numel = m.numel()
        wrap_triton(loss_bwd_kernel)[(triton.cdiv(numel, _TRITON_BLOCK),)](
            mc, xc, ncc, dm, dx, dn, pq, kkk, numel, per, HAS_X0=has_x0, HAS_N=has_n,
            NEED_M=need_model_output, NEED_X0=need_x0, NEED_N=need_noise, BLOCK=_TRITON_BLOCK, num_warps=4)
        return tuple(outs)

    _register_autograd("diffusion_loss_triton", "diffusion_loss_backward_triton")
    return diffusion_loss_triton, diffusion_loss_backward_triton


def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    """Autograd of the Triton ops, with the formulas of csrc/ops_diffusion_loss.cpp (used there for
    the C++ ops). The backward op is linear in (model_output, x0, noise) and in grad: with
    r = m - p x0 - q noise and k_s = g_s 2 w_s / P its outputs are (k r, -p k r, -q k r), so for
    upstream grads (u_m, u_x0, u_n) the grads w.r.t. (m, x0, noise) are the backward op at
    (g, u_m, u_x0, u_n), and the grad w.r.t. g_s is the per-sample sum of (dm1 u_m + dx1 u_x0 +
    dn1 u_n) with (dm1, dx1, dn1) the backward op at g = 1 (reduction 'none')."""
    bwd = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        m, x0, noise, ab, sigma, weight, *params = inputs
        ctx.save_for_backward(m, x0, noise, ab, sigma, weight)
        ctx.params = tuple(params)

    def backward_fwd(ctx, g):
        need = ctx.needs_input_grad
        if g is None or not any(need[:3]):
            return (None,) * 11
        dm, dx, dn = bwd(g, *ctx.saved_tensors, *ctx.params, need[0], need[1], need[2])
        return (dm if need[0] else None, dx if need[1] else None, dn if need[2] else None) + (None,) * 8

    def setup_bwd(ctx, inputs, output):
        g, m, x0, noise, ab, sigma, weight, *rest = inputs
        ctx.save_for_backward(g, m, x0, noise, ab, sigma, weight)
        ctx.params, ctx.need = tuple(rest[:5]), tuple(rest[5:])

    def backward_bwd(ctx, um, ux, un):
        g, m, x0, noise, ab, sigma, weight = ctx.saved_tensors
        ups = [u if needed else None for u, needed in zip((um, ux, un), ctx.need)]
        need = ctx.needs_input_grad
        res = [None] * 15
        if all(u is None for u in ups):
            return tuple(res)
        if any(need[1:4]):
            z = [u if u is not None else torch.zeros_like(m) for u in ups]
            d = bwd(g, *z, ab, sigma, weight, *ctx.params, need[1], need[2], need[3])
            for i in range(3):
                if need[1 + i]:
                    res[1 + i] = d[i]
        if need[0]:
            params = ctx.params[:4] + ("none",)
            ones = torch.ones((m.shape[0],), dtype=g.dtype, device=g.device)
            d1 = bwd(ones, m, x0, noise, ab, sigma, weight, *params, *(u is not None for u in ups))
            prod = sum(a.double() * u.double() for a, u in zip(d1, ups) if u is not None)
            per = prod.reshape(m.shape[0], -1).sum(dim=1) if m.dim() > 1 else prod
            if ctx.params[4] != "none":
                per = _reduce(per, ctx.params[4])
            res[0] = per.to(g.dtype)
        return tuple(res)

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


# ----------------------------------------------------------------------------- public entry
def _check_args(model_output, x0, noise, prediction_type, weighting, reduction, min_snr_gamma, sigma_data,
                alpha_bar, sigma):
    m = model_output
    fine = (isinstance(m, torch.Tensor) and isinstance(x0, torch.Tensor) and isinstance(noise, torch.Tensor)
            and m.dtype in C.FLOAT_DTYPES and m.dim() > 0 and x0.shape == m.shape and noise.shape == m.shape
            and x0.dtype == m.dtype and noise.dtype == m.dtype and x0.device == m.device and noise.device == m.device)
    if not fine:  # find the culprit, for a message naming it
        for t, name in ((m, "model_output"), (x0, "x0"), (noise, "noise")):
            C.check_tensor(t, name, OP)
        C.check_float_dtype(m, "model_output", OP)
        if m.dim() == 0:
            raise ValueError(f"fastgen.{OP}: model_output must have a batch dimension (shape [N, ...]), got a 0-d "
                             "tensor")
        C.check_same(x0, m, "x0", "model_output", OP)
        C.check_same(noise, m, "noise", "model_output", OP)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"fastgen.{OP}: prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))}; "
                         f"got {prediction_type!r}")
    if not isinstance(weighting, torch.Tensor) and weighting not in WEIGHTINGS:
        raise ValueError(f"fastgen.{OP}: weighting must be one of {', '.join(map(repr, WEIGHTINGS))} or a tensor of "
                         f"per-sample weights; got {weighting!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"fastgen.{OP}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    gamma, sd = min_snr_gamma, sigma_data
    if not (type(gamma) is float and type(sd) is float and 0.0 < gamma < math.inf and 0.0 < sd < math.inf):
        gamma = C.check_real(min_snr_gamma, "min_snr_gamma", OP, lo=0.0, lo_open=True)
        sd = C.check_real(sigma_data, "sigma_data", OP, lo=0.0, lo_open=True)
        if math.isinf(gamma) or math.isinf(sd):
            raise ValueError(f"fastgen.{OP}: min_snr_gamma and sigma_data must be finite")
    if prediction_type == "edm":
        if sigma is None:
            raise ValueError(f"fastgen.{OP}: sigma is required with prediction_type='edm'")
        if alpha_bar is not None:
            raise ValueError(f"fastgen.{OP}: alpha_bar is not used with prediction_type='edm' (the noise level is sigma)")
    else:
        if alpha_bar is None:
            raise ValueError(f"fastgen.{OP}: alpha_bar is required with prediction_type={prediction_type!r}")
        if sigma is not None:
            raise ValueError(f"fastgen.{OP}: sigma is only used with prediction_type='edm' (pass alpha_bar)")
    return gamma, sd


def _check_values(ab, sg, weight, prediction_type, weighting, gamma, sd):
    """The value checks the C++ op does itself, for the torch and Triton paths (host tensors only)."""
    if prediction_type == "edm":
        check_host_range(sg, "sigma", OP, 0.0, None, True)
        level = sg
    else:
        check_host_range(ab, "alpha_bar", OP, 0.0, 1.0, False)
        level = ab
    if weight is not None and weight.device.type == "cpu" and weight.numel():
        if not bool(torch.isfinite(weight.detach()).all()):
            raise ValueError(f"fastgen.{OP}: weight must be finite")
    if weighting != "uniform" and level.device.type == "cpu" and level.numel():
        lv = level.detach()
        _, _, w = diffusion_loss_coefficients(prediction_type, weighting, lv, lv, gamma, sd)
        if not bool(torch.isfinite(w).all()):
            bad = lv.double()[~torch.isfinite(w)].reshape(-1)[0].item()
            raise ValueError(f"fastgen.{OP}: weighting={weighting!r} is infinite for prediction_type="
                             f"{prediction_type!r} at alpha_bar = {bad!r} (use alpha_bar in (0, 1))")


def diffusion_loss(model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha_bar=None, *,
                   prediction_type: str = "epsilon", weighting="uniform", min_snr_gamma: float = 5.0, sigma=None,
                   sigma_data: float = 0.5, reduction: str = "mean", impl: Optional[str] = None) -> torch.Tensor:
    """Weighted diffusion MSE loss, fused: ``w_s * mean((model_output - target)^2)`` per sample.

    Args:
        model_output: the network's prediction, ``[N, ...]``; float32/float16/bfloat16.
        x0: the clean samples, same shape/dtype/device. noise: the noise ``x_t`` was made with.
        alpha_bar: noise level of each sample for "epsilon"/"sample"/"v_prediction": a float, a
            0-d tensor or an ``[N]`` tensor in [0, 1].
        prediction_type: "epsilon", "sample" (x0), "v_prediction" or "edm" (preconditioned F).
        weighting: "uniform", "min_snr" (min-SNR-gamma), "edm" (Karras lambda(sigma)) or an ``[N]``
            tensor of per-sample weights.
        min_snr_gamma: gamma of min-SNR (> 0). sigma: EDM noise level (> 0), float or ``[N]``.
        sigma_data: EDM's data standard deviation (> 0).
        reduction: "mean" (over the batch; 0 for an empty batch), "sum" or "none" (``[N]``).
        impl: force ``"torch"``, ``"cpp"`` or ``"triton"`` (default: see fastgen.backend).

    Returns:
        The loss in float32 (0-d, or ``[N]`` for reduction "none") for every input dtype.
    """
    gamma, sd = _check_args(model_output, x0, noise, prediction_type, weighting, reduction, min_snr_gamma,
                            sigma_data, alpha_bar, sigma)
    m = model_output
    ab = param_arg(alpha_bar, "alpha_bar", m, OP, lo=0.0, hi=1.0) if alpha_bar is not None else None
    sg = param_arg(sigma, "sigma", m, OP, lo=0.0, lo_open=True) if sigma is not None else None
    weight = param_arg(weighting, "weighting", m, OP) if isinstance(weighting, torch.Tensor) else None
    wt = "uniform" if weight is not None else weighting
    if sg is not None and not isinstance(sigma, torch.Tensor) and math.isinf(float(sigma)):
        raise ValueError(f"fastgen.{OP}: sigma must be finite")

    name = backend.resolve(OP, m.device, impl)
    compose_weight = False
    if name != "torch" and torch.is_grad_enabled():
        if any(t is not None and t.requires_grad for t in (ab, sg)):
            choice = backend.forced_backend() if impl is None else impl
            if choice not in ("auto", None):
                raise backend.BackendUnavailableError(
                    f"fastgen.{OP}: gradients w.r.t. alpha_bar/sigma are only computed by impl='torch' "
                    f"(impl={choice!r} was forced)")
            name = "torch"
        elif weight is not None and weight.requires_grad:
            compose_weight = True  # fused unweighted per-sample losses, weighted with autograd-visible ops
    if name == "cpp" and m.device.type != "cpu":
        raise backend.BackendUnavailableError(
            f"fastgen.{OP}: impl='cpp' has only a CPU kernel for this op; on {m.device.type} use impl='triton'")
    if name != "cpp" and not C.is_compiling():
        _check_values(ab, sg, weight, prediction_type, wt, gamma, sd)

    if name == "torch":
        return diffusion_loss_reference(m, x0, noise, ab, prediction_type=prediction_type,
                                        weighting=weight if weight is not None else wt, min_snr_gamma=gamma,
                                        sigma=sg, sigma_data=sd, reduction=reduction)
    op = torch.ops.fastgen.diffusion_loss if name == "cpp" else _triton_ops()[0]
    if compose_weight:
        per = op(m, x0, noise, ab, sg, None, prediction_type, wt, gamma, sd, "none")
        return _reduce(per * weight.to(device=per.device, dtype=per.dtype), reduction)
    return op(m, x0, noise, ab, sg, weight, prediction_type, wt, gamma, sd, reduction)
