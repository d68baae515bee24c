#!/usr/bin/env bash
# Session 42 call 2 (carry .bin-s42: the release gpu_backward test binary): the new
# gpu_backward_api_document_tiles (Bound::backward on host tensors on document kv tiles),
# the tests whose expectations it touches (every example through the API, the caller
# buffers' device tables, determinism, capture gradients), then memcheck of the new test.
set -u
mkdir -p /tmp/s42
xz -dc .bin-s42/gpu_backward.xz > /tmp/s42/gpu_backward; chmod +x /tmp/s42/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/s42/gpu_backward
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_api_document_tiles gpu_backward_caller_device_tables gpu_backward_api_every_example gpu_backward_is_deterministic gpu_backward_capture_grads; do
  echo "== $t ($SECONDS s)"
  timeout 200 $B --exact $t > $OUT/$t.log 2>&1; echo "rc=$?"
  grep -E "document tiles|test result|panicked|FAILED|passed|failed" $OUT/$t.log | cut -c1-230 | tail -14
done
echo "== memcheck ($SECONDS s)"
timeout 240 /usr/local/cuda/bin/compute-sanitizer --tool memcheck $B --exact gpu_backward_api_document_tiles > $OUT/memcheck.log 2>&1; echo "rc=$?"
grep -E "ERROR SUMMARY|test result|panicked|Invalid" $OUT/memcheck.log | head -8
echo "== done ($SECONDS s)"
