#!/usr/bin/env bash
# Session 30 call 9 (after the review's refactor: the bindings' options in one function,
# the caller's cache description in one, the GPU test's helpers): the caller-buffer
# gpu_decode tests, each in its own process. Carry .bin-s30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
for t in gpu_decode_caller_prefill_device gpu_decode_caller_prefill_runs gpu_decode_caller_runs_d64 \
         gpu_decode_caller_runs_growing_lengths gpu_decode_caller_buffers; do
  ( timeout 150 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
wait $(jobs -p)
for f in $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|^rc=" $f | tr '\n' ' ' | cut -c1-100)"
  grep -E "panicked" -A4 $f | head -6
done
