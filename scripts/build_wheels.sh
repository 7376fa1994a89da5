#!/usr/bin/env bash
# Build fastgen wheels into dist/ with the torch installed in the current environment.
#
#   scripts/build_wheels.sh            # CPU wheel; plus CUDA kernels if torch is a CUDA build and nvcc exists
#   scripts/build_wheels.sh --cpu      # CPU-only wheel even on a CUDA machine
#   scripts/build_wheels.sh --cuda     # require the CUDA kernels (fails loudly if impossible)
#
# TORCH_CUDA_ARCH_LIST picks the GPU targets (default "8.0;8.6;8.9;9.0", i.e. sm_80..sm_90).
# The wheel's local version says what it holds (0.1.0+cpu, 0.1.0+cu130, ...) and it pins the
# torch version it was built against (the C++ ABI of fastgen._C is tied to it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mode=auto
case "${1:-}" in
  --cpu) mode=cpu ;;
  --cuda) mode=cuda ;;
  "") ;;
  *) echo "usage: $0 [--cpu|--cuda]" >&2; exit 2 ;;
esac

torch_cuda=$($PY -c 'import torch; print(torch.version.cuda or "")')
case $mode in
  cpu) export FASTGEN_WITH_CUDA=0 ;;
  cuda) export FASTGEN_WITH_CUDA=1 ;;
  auto) if [ -n "$torch_cuda" ] && command -v nvcc >/dev/null; then export FASTGEN_WITH_CUDA=1; else export FASTGEN_WITH_CUDA=0; fi ;;
esac
if [ "$FASTGEN_WITH_CUDA" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;8.6;8.9;9.0"}
  export FASTGEN_LOCAL_VERSION=${FASTGEN_LOCAL_VERSION:-cu$(echo "$torch_cuda" | tr -d .)}
  echo "building a CUDA wheel (CUDA $torch_cuda, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
else
  export FASTGEN_LOCAL_VERSION=${FASTGEN_LOCAL_VERSION:-cpu}
  echo "building a CPU wheel"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
rm -rf build/ fastgen.egg-info
$PY -m pip wheel --no-build-isolation --no-deps -w dist/ . 
ls -l dist/
