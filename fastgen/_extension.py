"""Loading the compiled extension ``fastgen._C``.

Order: the prebuilt module (installed wheel or ``pip install -e .``); else a just-in-time build
with :func:`torch.utils.cpp_extension.load` into a per-torch-version cache folder (one line on
stderr says so); else the reference implementations, with one warning. A failed build is
remembered for the life of the process and never retried on every call.

Environment:
  FASTGEN_NO_JIT=1        never build at import (use the prebuilt module or the references)
  FASTGEN_FORCE_JIT=1     ignore a prebuilt module and build from the source tree (development)
  FASTGEN_CACHE_DIR=PATH  where JIT builds go (default ~/.cache/fastgen)
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

from . import _buildinfo

_module: ModuleType | None = None
_how: str = "not loaded"
_error: str | None = None
_tried = False
_STALE_LOCK_S = 15 * 60


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _cache_dir() -> Path:
    import torch

    base = Path(os.environ.get("FASTGEN_CACHE_DIR", Path.home() / ".cache" / "fastgen"))
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}".replace("+", "_")
    return base / tag


def _sources_digest(files: list[str]) -> str:
    h = hashlib.sha1()
    root = _buildinfo.source_root()
    for f in sorted(files) + sorted(str(p) for p in (root / "csrc").rglob("*.h")):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:10]


def _jit_build() -> ModuleType:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, load

    root = _buildinfo.source_root()
    if not (root / "csrc" / "ops.cpp").exists():
        raise RuntimeError(f"no C++ sources to build from (looked in {root / 'csrc'}); install a fastgen wheel")
    sources = _buildinfo.cpu_sources(root)
    cflags = list(_buildinfo.CXX_FLAGS)
    with_cuda = torch.cuda.is_available() and _buildinfo.want_cuda(torch.version.cuda, CUDA_HOME)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _buildinfo.DEFAULT_CUDA_ARCH_LIST)
        sources += _buildinfo.cuda_sources(root)
        cflags.append("-DFASTGEN_WITH_CUDA")
    name = f"fastgen_C_{_sources_digest(sources)}{'_cuda' if with_cuda else ''}"
    build_dir = _cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"
    # A build killed mid-way leaves torch's lock file behind and every later build waits on it
    # forever (a classic just-in-time-build hang). Break locks older than any real build.
    if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    print(f"fastgen: building the C++ extension just in time (once; cached in {build_dir})", file=sys.stderr)
    return load(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=list(_buildinfo.NVCC_FLAGS) + ["-DFASTGEN_WITH_CUDA"] if with_cuda else None,
        extra_ldflags=list(_buildinfo.LINK_FLAGS),
        extra_include_paths=_buildinfo.include_dirs(root),
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        verbose=False,
    )


def load() -> ModuleType | None:
    """The extension module, or None (with the reason in :func:`status`)."""
    global _module, _how, _error, _tried
    if _tried:
        return _module
    _tried = True
    if _flag("FASTGEN_FORCE_JIT"):
        prebuilt_error = "FASTGEN_FORCE_JIT is set"
    else:
        try:
            _module = importlib.import_module("fastgen._C")
            _how = "prebuilt"
            return _module
        except ImportError as exc:
            prebuilt_error = f"{type(exc).__name__}: {exc}"
    if _flag("FASTGEN_NO_JIT"):
        _error = f"fastgen._C is not built ({prebuilt_error}) and FASTGEN_NO_JIT is set"
    else:
        try:
            _module = _jit_build()
            _how = "just-in-time build"
            return _module
        except Exception as exc:  # any build failure: fall back, but say why (once)
            msg = str(exc).strip().splitlines()
            _error = f"fastgen._C is not built and the just-in-time build failed: {msg[-1].rstrip('.') if msg else type(exc).__name__}"
    _how = "unavailable"
    warnings.warn(
        f"fastgen: {_error}. Falling back to the reference PyTorch implementations (slower). "
        "Run `python -m fastgen info` for details.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def status() -> dict:
    """How the extension was loaded, and why not if it was not."""
    mod = load()
    info = {"loaded": mod is not None, "how": _how, "error": _error}
    if mod is not None:
        info["cpu_capability"] = mod.cpu_capability()
        info["cpu_stream_threshold"] = int(mod.cpu_stream_threshold())
        info["built_with_cuda"] = bool(mod.built_with_cuda())
        info["file"] = getattr(mod, "__file__", None)
    return info
