#!/usr/bin/env bash
# Session 31 call 8: the builder's document fast path for disjoint ranges (empty) and one
# value where the trusted closed form holds on the whole tile (full) only, the rest walked
# (call 7: an empty band's tiles in the closed form's range were said partial). The
# kernels' device times (torch.profiler), then the brute-force block-table test.
# Carry .bin-s31 (gpu.xz) and .bin-py31.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s31/gpu.xz > $B/gpu; chmod +x $B/gpu
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
TESTS="test_chunked_prefill_head_dim_256_zero_copy" NPROC=1 TEST_TIMEOUT=200 bash .bin-py31/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py31/tree/python/bench && timeout 120 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v -i warn)
unset PYTHONPATH
timeout 200 $B/gpu --exact gpu_block_tables_match_brute_force > $OUT/t_brute.log 2>&1; echo "rc=$?" >> $OUT/t_brute.log
grep -E "^test result|^rc=|failures" -A4 $OUT/t_brute.log | head -12
