#!/usr/bin/env bash
# FlashAttention-4 for a GPU machine that has no network and takes at most 64 MiB per call (the device tool): the
# wheels (flash-attn-4 and its CUTLASS DSL, ~100 MB) unpacked, packed as one xz archive (~69 MB) and split into two
# halves, .fa4a/part00 and .fa4b/part01 (both git-ignored through .git/info/exclude). Python 3.12, x86-64.
#
#   bash bench/pack_fa4.sh                 # here, once (needs pip access to PyPI; ~4 min, mostly xz)
#   run 1, carry [".fa4a"]:  mkdir -p /tmp/fa4keep && cp .fa4a/part00 /tmp/fa4keep/
#   run 2, carry [".fa4b"], right after (a machine idle for 30 s is given back, and /tmp with it):
#     S=/tmp/fa4keep/site; mkdir -p $S && cat /tmp/fa4keep/part00 .fa4b/part01 | xz -d -T16 | tar -C $S -xf - &&
#     export PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 &&
#     OUT=$OUT bash bench/gpu_measure.sh fa4
# (PYTHONPATH does not run the packages' .pth file, hence the second entry. Later runs on the same warm machine find
# /tmp/fa4keep/site in place.) The versions are those measured in docs/performance.md.
set -euo pipefail
WORK=${WORK:-/tmp/fa4pack}
rm -rf "$WORK" && mkdir -p "$WORK/wheels" "$WORK/site"
pip_download() {
  python3 -m pip download --no-deps --pre --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WORK/wheels" "$@"
}
pip_download flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 "apache-tvm-ffi<0.2,>=0.1.11" \
  torch-c-dlpack-ext "quack-kernels>=0.5.3"
for w in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$w" "$WORK/site"; done
tar -C "$WORK/site" -cf - . | xz -9e -T2 > "$WORK/site.tar.xz"
split -b 34400000 -d "$WORK/site.tar.xz" "$WORK/part"
mkdir -p .fa4a .fa4b
cp "$WORK/part00" .fa4a/ && cp "$WORK/part01" .fa4b/
grep -qx '/.fa4a/' .git/info/exclude 2>/dev/null || printf '/.fa4a/\n/.fa4b/\n' >> .git/info/exclude
ls -la .fa4a .fa4b
