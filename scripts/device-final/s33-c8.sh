#!/usr/bin/env bash
# Session 33 call 8: the caller-buffer backward tests after the tidy (one buffer helper
# for both, the device-ranges test's buffers now poisoned too; the ranges kernel's
# longest-run update one helper): gpu_backward_caller_device_tables (also under
# compute-sanitizer memcheck), gpu_backward_caller_buffers. Carry .bin-s33 (gpu_backward.xz).
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s33/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
(timeout 200 $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/t_tables.log 2>&1; echo "rc=$?" >> $OUT/t_tables.log) &
(timeout 200 $B/gpu_backward --exact gpu_backward_caller_buffers > $OUT/t_buffers.log 2>&1; echo "rc=$?" >> $OUT/t_buffers.log) &
(timeout 250 compute-sanitizer --tool memcheck $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/s_memcheck.log 2>&1; echo "rc=$?" >> $OUT/s_memcheck.log) &
wait
for f in t_tables t_buffers s_memcheck; do echo "== $f"; grep -E "ERROR SUMMARY|^test result|panicked|^rc=" $OUT/$f.log | head -5; done
grep -c "gradients bit-identical" $OUT/t_tables.log
