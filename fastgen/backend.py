"""Choosing an implementation for each fused op, per device.

Implementations ("impls"):
  ``torch``  — the reference, plain differentiable PyTorch (always available)
  ``cpp``    — the compiled extension fastgen._C: C++ CPU kernels, CUDA kernels on GPUs
  ``triton`` — Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``)

With nothing forced, each op picks the first available impl in its per-device preference list
(``auto``). A choice is forced, from strongest to weakest, by the ``impl=`` keyword of a
``fastgen.functional`` call, the innermost :func:`use_backend` context, or the
``FASTGEN_BACKEND`` environment variable. Forcing an impl that is not available for the op on
the tensor's device raises :class:`BackendUnavailableError` saying why.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

IMPLS = ("torch", "cpp", "triton")
_CHOICES = IMPLS + ("auto",)


class BackendUnavailableError(RuntimeError):
    """A forced implementation cannot run here; the message says why."""


def _check_choice(name: str, where: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in _CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(_CHOICES)}; got {name!r}")
    return name.strip().lower()


_stack: list[str] = []


_ENV_RAW = os.environ.get("FASTGEN_BACKEND", "")  # read once: use use_backend() to switch at run time


@functools.lru_cache(maxsize=None)
def _env_choice(raw: str) -> str:
    return _check_choice(raw or "auto", "FASTGEN_BACKEND")


def env_backend() -> str:
    """FASTGEN_BACKEND as read at import (validated when first needed, so a bad value cannot break
    ``import fastgen`` or ``fastgen info``; it raises a ValueError naming the variable at the first
    dispatch)."""
    return _env_choice(_ENV_RAW)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force an implementation (``"torch"``, ``"cpp"``, ``"triton"`` or ``"auto"``) in a block."""
    choice = _check_choice(name, "use_backend(name)")
    _stack.append(choice)
    try:
        yield
    finally:
        _stack.pop()


def forced_backend() -> str:
    """The impl forced by use_backend / FASTGEN_BACKEND, or "auto"."""
    return _stack[-1] if _stack else env_backend()


# ---------------------------------------------------------------- availability of each impl
@functools.lru_cache(maxsize=None)
def _extension_status() -> tuple[bool, bool, str]:
    from . import _extension

    st = _extension.status()
    if not st["loaded"]:
        return False, False, st["error"] or "fastgen._C could not be loaded"
    return True, st["built_with_cuda"], ""


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"triton is not importable ({type(exc).__name__}: {exc})"
    return True, ""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def impl_available(impl: str, device_type: str) -> tuple[bool, str]:
    """(available, reason-if-not) for an implementation family on a device type."""
    if impl == "torch":
        return True, ""
    if impl == "cpp":
        loaded, cuda_built, why = _extension_status()
        if not loaded:
            return False, why
        if device_type == "cpu":
            return True, ""
        if device_type == "cuda":
            if not cuda_built:
                return False, "fastgen._C was built without CUDA kernels (CPU torch or no nvcc at build time)"
            if not torch.cuda.is_available():
                return False, "no CUDA GPU is visible"
            return True, ""
        return False, f"no C++ kernels for device type {device_type!r}"
    if impl == "triton":
        ok, why = _triton_status()
        if not ok:
            return False, why
        if device_type == "cuda":
            return (True, "") if torch.cuda.is_available() else (False, "no CUDA GPU is visible")
        if device_type == "cpu":
            if triton_interpret():
                return True, ""
            return False, "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (for testing)"
        return False, f"no Triton kernels for device type {device_type!r}"
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")


# ---------------------------------------------------------------- op registry
@dataclass
class OpSpec:
    name: str
    impls: tuple[str, ...]  # implementations the op has
    # preference order per device type when nothing is forced (first available wins)
    preference: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: str = ""
    # impl -> the device types it has kernels for, where that is fewer than the impl family's
    # (e.g. {"cpp": ("cpu",)}: an op with C++ CPU kernels but no CUDA kernel yet)
    impl_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)


_OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    _OPS[spec.name] = spec
    return spec


def registered_ops() -> dict[str, OpSpec]:
    return dict(_OPS)


def op_impl_available(op: str, impl: str, device_type: str) -> tuple[bool, str]:
    """(available, reason-if-not) for one op's implementation on a device type: the impl family's
    availability (:func:`impl_available`) and the device types the op has kernels for."""
    spec = _OPS[op]
    devices = spec.impl_devices.get(impl)
    if devices is not None and device_type not in devices:
        return False, f"fastgen.{op} has no {impl} kernel for {device_type} (only for {', '.join(devices)})"
    return impl_available(impl, device_type)


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str, choice: str) -> str:
    spec = _OPS[op]
    if choice == "auto":
        for impl in spec.preference.get(device_type, ()):
            if impl in spec.impls and op_impl_available(op, impl, device_type)[0]:
                return impl
        return "torch"
    if choice not in spec.impls:
        raise BackendUnavailableError(
            f"fastgen.{op}: impl={choice!r} does not exist for this op (it has: {', '.join(spec.impls)})"
        )
    ok, why = op_impl_available(op, choice, device_type)
    if not ok:
        raise BackendUnavailableError(f"fastgen.{op}: impl={choice!r} is not available on {device_type}: {why}")
    return choice


def resolve(op: str, device: torch.device, impl: str | None = None) -> str:
    """The implementation ``op`` will use for tensors on ``device``."""
    choice = forced_backend() if impl is None else _check_choice(impl, "impl")
    return _resolve(op, device.type, choice)

