#!/usr/bin/env bash
# Session 33 call 12: compute-sanitizer memcheck and racecheck of the forward with
# GPU-built tables on the final runtime (session 32's call 8 left it unrun), and the
# table tests. Carry .bin-s33 (gpu.xz).
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s33/gpu.xz > $B/gpu; chmod +x $B/gpu
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
for tool in memcheck racecheck; do
  ( timeout 200 compute-sanitizer --tool $tool $B/gpu --exact gpu_forward_with_gpu_tables_matches_oracle > $OUT/s_${tool}.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}.log ) &
done
(timeout 200 $B/gpu --exact gpu_block_tables_match_brute_force > $OUT/t_brute.log 2>&1; echo "rc=$?" >> $OUT/t_brute.log) &
wait
for f in s_memcheck s_racecheck t_brute; do echo "== $f"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result|panicked|^rc=" $OUT/$f.log | head -5; done
