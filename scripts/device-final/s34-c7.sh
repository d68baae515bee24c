#!/usr/bin/env bash
# Session 34 call 7 (prepared, NOT run: the session's device time ran out): two dQ writers + bulk statistics (`default+2+b`) on the D128 bindings
# with capture / param gradients, which session 34's default leaves out (not measured):
# the kernel bench on a relative-position table (its gradient) and a learnable soft-cap
# param + causal, interleaved x2; racecheck of the capture-gradient kernels on it.
# Carry .bin-s34 (release gpu_backward of b4d7b9c).
set -u
xz -dc .bin-s34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/gpu_backward
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=relbias_full,softcap_param_causal \
ATTNC_BWD_BENCH_CFG=default,default+2+b,default,default+2+b \
  timeout 150 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error|refused|unknown" | grep -oE "^.{0,160}"
ATTNC_BWD_TEST_CFG=default+2+b timeout 150 compute-sanitizer --tool racecheck $B --exact gpu_backward_capture_sanitize 2>&1 \
  | grep -E "RACECHECK SUMMARY|test result|panicked|has no" | head -5
