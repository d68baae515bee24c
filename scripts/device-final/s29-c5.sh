#!/usr/bin/env bash
# Session 29 call 5: the D256 dQ kernel on pairs of q tiles (`bwd_dq_pair`, the new
# default at a head dim of 256 with closed-form bounds: two warpgroups per CTA, K
# double-buffered, V single-buffered and reloaded once the visit's dP has read it; 224 KiB).
# gpu_backward's D256 test and its sanitizer case (memcheck, racecheck, synccheck), the
# package's D256 gradients' test, the bench alternating default / `-Q` (pairs off) over
# three rounds. Carry .bin-s29 (gpu_backward.xz) and .bin-py29. Logs under $OUT.
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
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-170)"
  grep -E "panicked" -A6 $f | head -8
done
root=$PWD
TESTS="head_dim_256" NPROC=4 TEST_TIMEOUT=240 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -6
grep -hE "^FAILED|Error:" $OUT/pytest_*.log 2>/dev/null | head -8
cd "$root"
ATTNC_BWD_BENCH_D=256 ATTNC_BWD_BENCH_ONLY=full,causal,sliding1024,softcap_causal,doc_causal ATTNC_BWD_BENCH_CFG=default,default-Q,default,default-Q,default,default-Q timeout 200 $B/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "attnc_bwd" | cut -c1-200
