#!/usr/bin/env bash
# Session 29 call 4: the D256 dK/dV kernel's warpgroups split Sᵀ and dPᵀ and exchange them
# through shared memory (`bwd_xchg`, the new default at D = Dv = 256: four products per
# visit instead of six). gpu_backward's D256 test (exchange on / off bit-identical) and its
# sanitizer case (memcheck, racecheck, synccheck), the package's D256 gradients' test, the
# bench alternating default / `-X` (off) over three rounds, then the anchors again.
# Carry .bin-s29 (gpu_backward.xz) and .bin-py29. Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s29/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( timeout 300 $B/gpu_backward --exact gpu_backward_head_dim_256 > $OUT/b_head_dim_256.log 2>&1; echo "rc=$?" >> $OUT/b_head_dim_256.log ) &
for tool in memcheck racecheck synccheck; do
  ( timeout 300 compute-sanitizer --tool $tool $B/gpu_backward --exact gpu_backward_d256_sanitize > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log ) &
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/b_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-170)"
  grep -E "panicked" -A4 $f | head -6
done
grep -E "bit-identical" $OUT/b_head_dim_256.log | tail -4
root=$PWD
TESTS="head_dim_256" NPROC=4 TEST_TIMEOUT=240 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -6
grep -hE "^FAILED|Error:" $OUT/pytest_*.log 2>/dev/null | head -8
cd "$root"
ATTNC_BWD_BENCH_D=256 ATTNC_BWD_BENCH_ONLY=full,causal,sliding1024,softcap_causal,doc_causal ATTNC_BWD_BENCH_CFG=default,default-X,default,default-X,default,default-X timeout 200 $B/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "attnc_bwd" | cut -c1-200
ATTNC_TORCH_SHAPES=D256 ATTNC_TORCH_ONLY=full,causal timeout 150 python3 scripts/gpu_bench_torch_bwd.py 2>&1 | grep -v Warning | grep -E "sdpa|flex|TFLOP" | head -8
