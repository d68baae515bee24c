#!/usr/bin/env bash
# Session 32 call 1: where chunked prefill's host time goes (documents vs causal, lengths
# on the device; python/bench/prefill_host.py), the builder's device time
# (profile_kernels.py), and session 31's unrun brute-force block-table test.
# Carry .bin-s32 (gpu.xz) and .bin-py32.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s32/gpu.xz > $B/gpu; chmod +x $B/gpu
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
TESTS="test_chunked_prefill_head_dim_256_zero_copy" NPROC=1 TEST_TIMEOUT=200 bash .bin-py32/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py32/tree/python/bench && timeout 150 python3 prefill_host.py --profile --examples $root/examples 256,8192 512,8192 2>&1 | grep -v -i warn)
(cd .bin-py32/tree/python/bench && timeout 120 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v -i warn)
timeout 200 $B/gpu --exact gpu_block_tables_match_brute_force > $OUT/t_brute.log 2>&1; echo "rc=$?" >> $OUT/t_brute.log
grep -E "^test result|^rc=|failures" -A4 $OUT/t_brute.log | head -12
