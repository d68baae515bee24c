#!/usr/bin/env bash
# Session 33 call 9: the caller-buffer backward on generated programs
# (gpu_random_caller_backward_{bf16,f16}: captures on the device, gradients against
# Bound::backward bit for bit, device-made block ranges against the host's), 120 cases
# each (80 with the exact maps: call 10). Carry .bin-s33 (gpu_random.xz, gpu_backward.xz).
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s33/gpu_random.xz > $B/gpu_random; chmod +x $B/gpu_random
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_CASES=${CASES:-80}
for t in gpu_random_caller_backward_bf16 gpu_random_caller_backward_f16; do
  (timeout 280 $B/gpu_random --exact $t > $OUT/$t.log 2>&1; echo "rc=$?" >> $OUT/$t.log) &
done
wait
for t in gpu_random_caller_backward_bf16 gpu_random_caller_backward_f16; do echo "== $t"; grep -vE "^\s*$" $OUT/$t.log | head -40; done
if [ -f .bin-s33/gpu_backward.xz ]; then
  xz -dc .bin-s33/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
  timeout 200 $B/gpu_backward --exact gpu_backward_caller_device_tables 2>&1 | grep -E "^test result|panicked|ranges as"
fi
