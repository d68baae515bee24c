#!/usr/bin/env bash
# Session 32 call 7: every `gpu` test but the brute-force table test (run in calls 1, 3-6)
# on the final builder, one process per test, 6 at a time; then the documents chunked
# prefill against Flex (Triton) if time allows. Carry .bin-s32 (gpu.xz).
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s32/gpu.xz > $B/gpu; chmod +x $B/gpu
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
$B/gpu --list 2>/dev/null | sed -n 's/: test$//p' | grep -v '^gpu_block_tables_match_brute_force$' > $OUT/tests.txt
echo "$(wc -l < $OUT/tests.txt) tests"
xargs -P 6 -I{} sh -c "timeout 240 $B/gpu --exact {} > $OUT/g_{}.log 2>&1; echo \"{} rc=\$?\"" < $OUT/tests.txt | sort > $OUT/rcs.txt
grep -c "rc=0" $OUT/rcs.txt; grep -v "rc=0" $OUT/rcs.txt
