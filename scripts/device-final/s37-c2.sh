#!/usr/bin/env bash
# Session 37 call 2 (carry .bin-s37: this tree's release gpu_backward): the uniform-read
# path of the fused backward (backend/llvm/uniform.rs) — its GPU tests against the f64
# reference (gpu_backward_uniform_reads, gpu_backward_capture_grads), memcheck and
# racecheck of the uniform-read test, and the capture-gradient kernel bench next to dense.
set -u
mkdir -p /tmp/s37
xz -dc .bin-s37/gpu_backward.xz > /tmp/s37/gpu_backward; chmod +x /tmp/s37/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/s37/gpu_backward
echo "== kernel bench D128 (median)"
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,relbias_full,softcap_param_causal ATTNC_BWD_BENCH_CFG=default \
  timeout 120 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error" | cut -c1-220
echo "== kernel bench D64 (median)"
ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full,relbias_full ATTNC_BWD_BENCH_CFG=default \
  timeout 120 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error" | cut -c1-220
for t in gpu_backward_uniform_reads gpu_backward_capture_grads gpu_backward_api_every_example; do
  timeout 200 $B --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E 'test result|panicked' $OUT/$t.log | head -3 | tr '\n' ' ')"
done &
for tool in memcheck racecheck; do
  timeout 250 compute-sanitizer --tool $tool $B --exact gpu_backward_uniform_reads > $OUT/san_$tool.log 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result|panicked' $OUT/san_$tool.log | head -3 | tr '\n' ' ')"
done
wait
grep -hE "panicked|mismatch|differs" $OUT/gpu_backward_*.log | head -10
