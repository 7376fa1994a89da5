r"""The Gaussian posterior of a VAE in one fused op: the reparameterised sample and its KL divergence
from the prior N(0, I).

    z     = mu + exp(logvar / 2) * eps,          eps ~ N(0, I)
    kl[n] = sum_i (mu^2 + exp(logvar) - 1 - logvar) / 2          (per sample, fp32)

``eps`` is generated inside the kernel from fastgen's counter-based Philox stream (the one the
samplers use: element i of the output's memory order at ``(seed, offset)``, reproducible by
:func:`fastgen.ops.sampler_update.noise_like`), so no noise tensor is written or read; the
backward regenerates it. Eager PyTorch spends ~10 passes on this (randn, exp, mul, add; square,
exp, sub, sub, sum) and as many in the backward; here the forward reads mu and logvar once and
writes z, and the backward

    dmu     = dz + dkl mu
    dlogvar = dz eps exp(logvar / 2) / 2 + dkl (exp(logvar) - 1) / 2

is one pass too. ``noise=`` uses a given eps instead (tests, or users who need torch's own RNG).
The second derivative differentiates the reference.

Implementations: ``cpp`` (CPU), ``triton`` (CUDA), ``torch`` (:func:`reparameterize_reference`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch

from .. import _extension, backend
from . import _common as C
from .sampler_update import noise_like

OP = "reparameterize"
_SEED_HIGH = 2 ** 63 - 1

backend.register_op(
    backend.OpSpec(
        name=OP,
        impls=("torch", "cpp", "triton"),
        preference={"cpu": ("cpp",), "cuda": ("triton",)},
        impl_devices={"cpp": ("cpu",)},
        notes="VAE posterior: z = mu + exp(logvar/2) eps with in-kernel Philox noise + per-sample KL, fused backward",
    )
)


class ReparamOutput(NamedTuple):
    z: torch.Tensor   # the sample, mu's shape and dtype
    kl: torch.Tensor  # (N,) fp32 (float64 for float64 inputs): KL(N(mu, exp(logvar)) || N(0, I)) per sample


def reparameterize_reference(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> ReparamOutput:
    """Plain differentiable PyTorch with an explicit ``noise`` (fp32 math; float64 stays float64)."""
    ct = torch.float64 if mu.dtype == torch.float64 else torch.float32
    m, lv, e = mu.to(ct), logvar.to(ct), noise.to(ct)
    std = torch.exp(0.5 * lv)
    z = m + std * e
    kl = 0.5 * (m.square() + lv.exp() - 1.0 - lv).flatten(1).sum(dim=1)
    return ReparamOutput(z.to(mu.dtype), kl)


def _noise(mu, noise, seed, offset):
    return noise if noise is not None else noise_like(mu, seed, offset)


# ----------------------------------------------------------------------------- custom ops
def _fake(mu, logvar, noise, seed, offset):
    return torch.empty_like(mu), mu.new_empty((mu.shape[0],), dtype=torch.float32)


def _fake_backward(gz, gkl, mu, logvar, noise, seed, offset):
    return torch.empty_like(mu), torch.empty_like(mu)


def _register_autograd(fwd_name: str, bwd_name: str) -> None:
    bwd = getattr(torch.ops.fastgen, bwd_name).default

    def setup_fwd(ctx, inputs, output):
        mu, logvar, noise, seed, offset = inputs
        ctx.save_for_backward(mu, logvar, noise)
        ctx.rng = (seed, offset)

    def backward_fwd(ctx, gz, gkl):
        mu, logvar, noise = ctx.saved_tensors
        dmu, dlv = bwd(None if gz is None else gz.contiguous(), gkl, mu, logvar, noise, *ctx.rng)
        return dmu, dlv, None, None, None

    def setup_bwd(ctx, inputs, output):
        gz, gkl, mu, logvar, noise, seed, offset = inputs
        ctx.save_for_backward(gz, gkl, mu, logvar, noise)
        ctx.rng = (seed, offset)

    def backward_bwd(ctx, u_mu, u_lv):
        """Second order: differentiate the reference's first derivative (eps fixed)."""
        gz, gkl, mu, logvar, noise = ctx.saved_tensors
        eps = _noise(mu, noise, *ctx.rng).float()
        n = mu.shape[0]
        gz_ = torch.zeros_like(mu, dtype=torch.float32) if gz is None else gz.float()
        gkl_ = torch.zeros(n, dtype=torch.float32, device=mu.device) if gkl is None else gkl.float()

        def first(gz_, gkl_, m, lv):
            _, vjp = torch.func.vjp(lambda a, b: tuple(reparameterize_reference(a, b, eps)), m, lv)
            return vjp((gz_, gkl_))

        _, vjp2 = torch.func.vjp(first, gz_, gkl_, mu.float(), logvar.float())
        ups = (torch.zeros_like(mu, dtype=torch.float32) if u_mu is None else u_mu.float(),
               torch.zeros_like(mu, dtype=torch.float32) if u_lv is None else u_lv.float())
        d_gz, d_gkl, d_mu, d_lv = vjp2(ups)
        need = ctx.needs_input_grad
        return (d_gz.to(gz.dtype) if need[0] and gz is not None else None, d_gkl if need[1] and gkl is not None else None,
                d_mu.to(mu.dtype) if need[2] else None, d_lv.to(logvar.dtype) if need[3] else None, None, None, None)

    torch.library.register_autograd(f"fastgen::{fwd_name}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"fastgen::{bwd_name}", backward_bwd, setup_context=setup_bwd)


def _register_cpp_ops() -> bool:
    if _extension.load() is None or not hasattr(torch.ops.fastgen, "reparam_kl"):
        return False
    torch.library.register_fake("fastgen::reparam_kl")(_fake)
    torch.library.register_fake("fastgen::reparam_kl_backward")(_fake_backward)
    _register_autograd("reparam_kl", "reparam_kl_backward")
    return True


_HAVE_CPP_OPS = _register_cpp_ops()


@functools.lru_cache(maxsize=None)
def _triton_ops():
    K = C.triton_kernels("reparam")
    from torch.library import triton_op

    @triton_op("fastgen::reparam_kl_triton", mutates_args=())
    def reparam_kl_triton(mu: torch.Tensor, logvar: torch.Tensor, noise: Optional[torch.Tensor], seed: int,
                          offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        return K.reparam_forward(mu, C.layout_like(logvar, mu), None if noise is None else C.layout_like(noise, mu),
                                 seed, offset)

    @triton_op("fastgen::reparam_kl_triton_backward", mutates_args=())
    def reparam_kl_triton_backward(gz: Optional[torch.Tensor], gkl: Optional[torch.Tensor], mu: torch.Tensor,
                                   logvar: torch.Tensor, noise: Optional[torch.Tensor], seed: int,
                                   offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        return K.reparam_backward(None if gz is None else C.layout_like(gz, mu),
                                  None if gkl is None else gkl.float().contiguous(), mu, C.layout_like(logvar, mu),
                                  None if noise is None else C.layout_like(noise, mu), seed, offset)

    reparam_kl_triton.register_fake(_fake)
    reparam_kl_triton_backward.register_fake(_fake_backward)
    _register_autograd("reparam_kl_triton", "reparam_kl_triton_backward")
    return reparam_kl_triton


# ----------------------------------------------------------------------------- public entry
def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if (C.is_dense(t) and C.batch_outer_dense(t)) else t.contiguous()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None, seed: Optional[int] = None, offset: int = 0,
                   impl: Optional[str] = None) -> ReparamOutput:
    """Sample ``z = mu + exp(logvar / 2) eps`` and the per-sample ``KL(q || N(0, I))`` in one fused op.

    Args:
        mu, logvar: ``(N, ...)`` posterior mean and log-variance, same shape and dtype
            (float32/float16/bfloat16; float64 runs the reference).
        noise: eps to use (mu's shape); default: generated in the kernel from fastgen's Philox stream
            at (``seed``, ``offset``), the seed drawn from ``generator`` (or torch's default CPU
            generator) when not given.
        impl: force ``"torch"``, ``"cpp"`` (CPU) or ``"triton"`` (default: see fastgen.backend).

    Returns :class:`ReparamOutput` ``(z, kl)``; differentiable w.r.t. mu and logvar (any order).
    """
    C.check_tensor(mu, "mu", OP)
    C.check_tensor(logvar, "logvar", OP)
    if mu.dtype not in C.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"fastgen.{OP}: mu has dtype {mu.dtype}; supported are float32, float16, bfloat16 (and "
                        "float64, which runs the reference)")
    if mu.dim() < 1:
        raise ValueError(f"fastgen.{OP}: mu must have a batch dimension, got shape {tuple(mu.shape)}")
    C.check_same(logvar, mu, "logvar", "mu", OP)
    if noise is not None:
        C.check_tensor(noise, "noise", OP)
        C.check_same(noise, mu, "noise", "mu", OP)
    if offset.__class__ is not int or not 0 <= offset < 2 ** 63:
        raise ValueError(f"fastgen.{OP}: offset must be an int in [0, 2**63), got {offset!r}")
    if seed is not None and (seed.__class__ is not int or not 0 <= seed < 2 ** 63):
        raise ValueError(f"fastgen.{OP}: seed must be an int in [0, 2**63), got {seed!r}")
    if noise is None and seed is None:
        seed = int(torch.randint(0, _SEED_HIGH, (), generator=generator))
    seed = 0 if seed is None else seed
    name = backend.resolve(OP, mu.device, impl)
    if name == "torch" or mu.dtype == torch.float64 or mu.numel() == 0:
        return reparameterize_reference(mu, logvar, _noise(mu, noise, seed, offset))
    mu_d = _dense(mu)
    lv_d, nz = C.layout_like(logvar, mu_d), None if noise is None else C.layout_like(noise, mu_d)
    if name == "cpp":
        return ReparamOutput(*torch.ops.fastgen.reparam_kl(mu_d, lv_d, nz, seed, offset))
    return ReparamOutput(*_triton_ops()(mu_d, lv_d, nz, seed, offset))
