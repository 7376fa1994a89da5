"""Sources and flags of the compiled extension ``fastgen._C``.

Shared by ``setup.py`` (ahead-of-time build, wheels) and :mod:`fastgen._extension` (just-in-time
build when ``fastgen._C`` is missing). Importable without torch; keep it dependency-free.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0"  # A100 .. H100 (sm_80 .. sm_90)


def source_root() -> Path:
    """The repository root (holds ``csrc/``), when running from a source checkout."""
    return Path(__file__).resolve().parent.parent


def cpu_sources(root: Path) -> list[str]:
    """Every ``csrc/*.cpp`` torch-binding file except the CUDA one, and the CPU kernels.

    ``csrc/ops.cpp`` holds ``TORCH_LIBRARY(fastgen, m)``; other binding files (one per op family,
    e.g. ``csrc/ops_sampler.cpp``) add their schemas with ``TORCH_LIBRARY_FRAGMENT(fastgen, m)``.
    """
    csrc = root / "csrc"
    binding = sorted(str(p) for p in csrc.glob("*.cpp") if "cuda" not in p.name)
    return binding + sorted(str(p) for p in (csrc / "cpu").glob("*.cpp"))


def cuda_sources(root: Path) -> list[str]:
    """The CUDA binding files (``csrc/*cuda*.cpp``, e.g. ``ops_cuda.cpp``) and ``csrc/cuda/*.cu``."""
    csrc = root / "csrc"
    return sorted(str(p) for p in csrc.glob("*cuda*.cpp")) + sorted(str(p) for p in (csrc / "cuda").glob("*.cu"))


def include_dirs(root: Path) -> list[str]:
    return [str(root / "csrc"), str(root / "csrc" / "include")]


# Portable flags only: no -march=native. Vector ISA is chosen at run time by the
# target_clones functions in csrc/cpu/ (see docs/architecture.md).
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
# No --use_fast_math: the kernels are bandwidth-bound, and in-kernel coefficients need IEEE
# sqrt/division (and no flush-to-zero) to meet the fp32 tolerance.
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
LINK_FLAGS = ["-fopenmp"]


def want_cuda(torch_cuda_version: str | None, cuda_home: str | None) -> bool:
    """Whether to compile the CUDA kernels.

    ``FASTGEN_WITH_CUDA=1`` forces them (and fails loudly if impossible), ``=0`` disables them,
    unset means: when torch is a CUDA build and nvcc is found.
    """
    flag = os.environ.get("FASTGEN_WITH_CUDA", "").strip().lower()
    possible = bool(torch_cuda_version) and bool(cuda_home or shutil.which("nvcc"))
    if flag in ("1", "true", "yes", "on"):
        if not torch_cuda_version:
            raise RuntimeError(
                "FASTGEN_WITH_CUDA=1 but the installed torch is a CPU build "
                "(torch.version.cuda is None); install a CUDA build of torch to compile the CUDA kernels"
            )
        if not possible:
            raise RuntimeError("FASTGEN_WITH_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    return possible
