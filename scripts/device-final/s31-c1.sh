#!/usr/bin/env bash
# Session 31 call 1: the GPU backward at head dim 256 on mma.sync (sm_80's path; on the
# H200 the same kernels, which its driver runs). The D256 backward bench on mma.sync
# (with and without the Sᵀ / dPᵀ exchange) next to the wgmma default and, same call,
# SDPA's FlashAttention-2 (an mma.sync kernel too), cuDNN and Flex (Triton); then the
# new GPU test, the D256 tests, the mma.sync and default sample tests, determinism and
# memcheck / racecheck of the D256 sanitize case (mma.sync and wgmma). Carry .bin-s31.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s31/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
ATTNC_BWD_BENCH_D=256 ATTNC_BWD_BENCH_ONLY=full,causal,softcap_causal \
  ATTNC_BWD_BENCH_CFG=sync64x64,sync64x64-X,default,sync64x64,sync64x64-X,default \
  timeout 200 $B/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "attnc_bwd|D256|cfg|TFLOP" | cut -c1-230
ATTNC_TORCH_SHAPES=D256 ATTNC_TORCH_ONLY=full,causal,softcap_causal timeout 200 python3 scripts/gpu_bench_torch_bwd.py 2>&1 | grep -v Warning | tail -14
t0=$(date +%s)
run() { local name=$1; shift; ( timeout 400 "$@" > $OUT/$name.log 2>&1; echo "rc=$?" >> $OUT/$name.log ) & }
run t_sync256 $B/gpu_backward --exact gpu_backward_head_dim_256_mma_sync
run t_wg256 $B/gpu_backward --exact gpu_backward_head_dim_256
run t_samples $B/gpu_backward --exact gpu_backward_samples_match_reference
run t_det $B/gpu_backward --exact gpu_backward_is_deterministic
run t_masked $B/gpu_backward --exact gpu_backward_fully_masked_rows
run t_samples_sync env ATTNC_BWD_TEST_CFG=sync64x64 $B/gpu_backward --exact gpu_backward_samples_match_reference
run t_det_sync env ATTNC_BWD_TEST_CFG=sync64x64 $B/gpu_backward --exact gpu_backward_is_deterministic
for tool in memcheck racecheck; do
  run s_$tool compute-sanitizer --tool $tool $B/gpu_backward --exact gpu_backward_d256_sanitize
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-150)"
  grep -E "panicked" -A4 $f | head -6
done
