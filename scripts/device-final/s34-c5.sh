#!/usr/bin/env bash
# Session 34 call 5: gpu_backward_q80 after its fix (q tiles of 80 with one dQ writer, as
# the non-deterministic path runs them), the non-deterministic test and its bench entry
# (`default+u+q`, the dense non-deterministic kernel) beside the new default.
# Carry .bin-s34 (release gpu_backward of the fix).
set -u
xz -dc .bin-s34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/gpu_backward
for t in gpu_backward_q80 gpu_backward_nondeterministic; do
  timeout 200 $B --exact $t 2>&1 | grep -E "test result|panicked" | head -3
done
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal ATTNC_BWD_BENCH_CFG=default,default+u+q,default,default+u+q \
  timeout 120 $B --ignored --exact gpu_backward_bench 2>&1 | grep -oE "attnc_bwd/[a-z_]+/\S+ \[[^]]+\]: [0-9.]+ ms [0-9.]+ TFLOP/s"
