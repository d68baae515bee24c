#!/usr/bin/env bash
# Session 34 call 3: the D128 backward with two dQ writer threads + bulk statistics
# (`default+2+b`: `bwd_two_writers` + `bwd_stats_bulk` on the binding's options), call 2's
# best pair on causal (+3.3%) and ALiBi + causal (+8.8%): three more interleaved rounds
# with dense and soft-cap + causal, two writers at D64; then the GPU tests on it
# (ATTNC_BWD_TEST_CFG=default+2+b: every sample against the f64 reference, determinism,
# fully-masked rows; compute-sanitizer racecheck / memcheck of the fused kernels).
# Carry .bin-s34 (main's release gpu_backward of session 33's tree: 50749cc's kernels).
set -u
xz -dc .bin-s34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
B=/tmp/gpu_backward
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,softcap_causal \
ATTNC_BWD_BENCH_CFG=default,default+2+b,default,default+2+b,default,default+2+b \
  timeout 200 $B --ignored --exact gpu_backward_bench > $OUT/bench128.log 2>&1
grep -oE "attnc_bwd/[a-z_]+/\S+ \[[^]]+\]: [0-9.]+ ms [0-9.]+ TFLOP/s" $OUT/bench128.log
ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full,causal \
ATTNC_BWD_BENCH_CFG=default,default+2,default,default+2 \
  timeout 100 $B --ignored --exact gpu_backward_bench > $OUT/bench64.log 2>&1
grep -oE "attnc_bwd/[a-z_]+/\S+ \[[^]]+\]: [0-9.]+ ms [0-9.]+ TFLOP/s" $OUT/bench64.log
export ATTNC_BWD_TEST_CFG=default+2+b
for t in gpu_backward_samples_match_reference gpu_backward_is_deterministic gpu_backward_fully_masked_rows; do
  (timeout 300 $B --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) &
done
for tool in racecheck memcheck; do
  (timeout 300 compute-sanitizer --tool $tool $B --exact gpu_backward_fused_sanitize > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log) &
done
wait
for f in $OUT/t_*.log $OUT/s_*.log; do echo "== $(basename $f)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test |test result|^rc=|panicked|has no" $f | head -8; done
