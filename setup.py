"""Build fastgen and its compiled extension fastgen._C.

    pip install --no-build-isolation -e .        # development (extension built in place)
    python -m build --wheel --no-isolation        # a wheel (CPU; CUDA too where torch+nvcc are CUDA)

C++ CPU kernels are always built (-O3, OpenMP, portable ISA with run-time dispatch).
CUDA kernels (csrc/cuda/*.cu) are built when torch is a CUDA build and nvcc is found, or when
FASTGEN_WITH_CUDA=1 forces them; TORCH_CUDA_ARCH_LIST picks targets (default sm_80..sm_90).
"""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-time guidance
    raise SystemExit(
        "fastgen's build needs torch already installed (it is not fetched by the build, to avoid "
        "pulling GBs of CUDA wheels). Run e.g. `pip install torch==2.13.0` and then "
        "`pip install --no-build-isolation .`"
    ) from exc

_spec = importlib.util.spec_from_file_location("_fg_buildinfo", ROOT / "fastgen" / "_buildinfo.py")
bi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bi)

with_cuda = bi.want_cuda(torch.version.cuda, CUDA_HOME)
sources = [os.path.relpath(s, ROOT) for s in bi.cpu_sources(ROOT)]
include_dirs = bi.include_dirs(ROOT)
define_macros = []
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", bi.DEFAULT_CUDA_ARCH_LIST)
    sources += [os.path.relpath(s, ROOT) for s in bi.cuda_sources(ROOT)]
    define_macros.append(("FASTGEN_WITH_CUDA", None))
    ext = CUDAExtension(
        "fastgen._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": bi.CXX_FLAGS, "nvcc": bi.NVCC_FLAGS},
        extra_link_args=bi.LINK_FLAGS,
    )
else:
    ext = CppExtension(
        "fastgen._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": bi.CXX_FLAGS},
        extra_link_args=bi.LINK_FLAGS,
    )

# The compiled extension is tied to the torch it was built against (C++ ABI): pin it.
TORCH_PIN = torch.__version__.split("+")[0]
# e.g. FASTGEN_LOCAL_VERSION=cpu or cu130 (scripts/build_wheels.sh) -> 0.1.0+cpu
LOCAL = os.environ.get("FASTGEN_LOCAL_VERSION", "").strip()
VERSION = "0.1.0" + (f"+{LOCAL}" if LOCAL else "")

setup(
    name="fastgen",
    version=VERSION,
    description="Fused kernels for generative image models (diffusion, GANs, VAEs) in PyTorch",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastgen", "fastgen.*"]),
    install_requires=[f"torch=={TORCH_PIN}", "numpy", "tqdm", "safetensors"],
    extras_require={
        "triton": ["triton>=3.2"],
        "demo": ["pillow"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "pillow"],
        # equivalence tests against diffusers' schedulers (diffusers does not require torch, so
        # this does not pull another torch build)
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "pillow", "diffusers==0.42.1"],
    },
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fastgen = fastgen.cli:main"]},
    zip_safe=False,
)
