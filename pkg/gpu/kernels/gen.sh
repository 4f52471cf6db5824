#!/usr/bin/env bash
# Compiles kernels.cu to PTX for sm_80 and sm_90 with Debian's clang-16 (no
# CUDA SDK: -nocudainc -nocudalib, NVVM builtins; PTX ISA 7.8). The PTX is
# committed and embedded; check.sh regenerates it and diffs (CI).
#   gen.sh [OUT_DIR]   (default: this directory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
clang=${CLANG:-clang-16}
for arch in sm_80 sm_90; do
  "$clang" -x cuda --cuda-gpu-arch=$arch --cuda-device-only -nocudainc -nocudalib --cuda-feature=+ptx78 \
    -std=c++17 -O3 -S -o "$out/kernels_$arch.ptx" "$here/kernels.cu"
done
