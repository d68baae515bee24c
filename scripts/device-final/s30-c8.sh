#!/usr/bin/env bash
# Session 30 call 8: gpu_decode_caller_prefill_device with D256 paged caches of 16-row pages
# too (four producer threads), and its memcheck. Carry .bin-s30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
( timeout 200 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_dev.log 2>&1; echo "rc=$?" >> $OUT/t_dev.log ) &
( timeout 200 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/memcheck.log 2>&1; echo "rc=$?" >> $OUT/memcheck.log ) &
wait $(jobs -p)
echo "== test: $(grep -E "^test result|^rc=" $OUT/t_dev.log | tr '\n' ' ')"; grep -E "panicked" -A4 $OUT/t_dev.log | head -8
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
