#!/usr/bin/env bash
# Session 42 call 3 (carry .bin-s42: the release gpu_backward test binary): the caller
# buffers' device-table test with its host reference on a binding without document tiles
# (forward and backward), and the caller-buffer / non-deterministic tests.
set -u
mkdir -p /tmp/s42
xz -dc .bin-s42/gpu_backward.xz > /tmp/s42/gpu_backward; chmod +x /tmp/s42/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/s42/gpu_backward
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_caller_device_tables gpu_backward_caller_buffers gpu_backward_nondeterministic; do
  echo "== $t ($SECONDS s)"
  timeout 200 $B --exact $t > $OUT/$t.log 2>&1; echo "rc=$?"
  grep -E "test result|panicked|FAILED" $OUT/$t.log | cut -c1-230 | tail -6
done
echo "== done ($SECONDS s)"
