#!/usr/bin/env bash
# Builds the metafast wheel into DIR (default dist/): one cp310-abi3 manylinux
# wheel for every CPython >= 3.10 and every torch >= 2.11 (stable ABI), with
# the C++ CPU kernels and, when nvcc and a CUDA torch are present, the CUDA
# kernels (TORCH_CUDA_ARCH_LIST, default sm_80 + sm_90 + compute_90 PTX).
# Builds against the torch already installed (no build isolation); torch's
# own libraries are left out of the wheel: the installed torch provides them.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
python -m pip wheel -q --no-build-isolation --no-deps -w "$raw" .
python -m auditwheel repair -w "$out" \
  --exclude libtorch_cpu.so --exclude libtorch_cuda.so --exclude libtorch.so --exclude libc10.so \
  "$raw"/metafast-*.whl
ls -l "$out"/metafast-*.whl
