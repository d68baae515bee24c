#!/usr/bin/env bash
# Session 46, final kernels (carry .bin-s46d: release gpu_backward of the commit with
# `fresh_pos` and the folded full-block path): capture gradients on random shapes and
# their determinism, the uniform-read programs (T5 among them) against the f64 reference,
# every example's backward, and compute-sanitizer memcheck on the capture-gradient case.
set -u
mkdir -p /tmp/s46d
xz -dc .bin-s46d/gpu_backward.xz > /tmp/s46d/gpu_backward; chmod +x /tmp/s46d/gpu_backward
export ATTNC_CACHE_DIR=/tmp/c-final ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_capture_grads gpu_backward_uniform_reads gpu_backward_api_every_example; do
  timeout 200 /tmp/s46d/gpu_backward --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$?"
  grep -hE "test result|panicked|matched" $OUT/$t.log | cut -c1-200 | tail -2
done
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$CS" ]; then
  timeout 150 $CS --tool memcheck /tmp/s46d/gpu_backward --exact gpu_backward_capture_sanitize > $OUT/memcheck.log 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|test result" $OUT/memcheck.log | tail -2
fi
echo "== done ($SECONDS s)"
