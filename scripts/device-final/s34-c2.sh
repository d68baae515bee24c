#!/usr/bin/env bash
# Session 34 call 2: the padded head dims after call 1's fixes (the block mask's scale of
# the true head dim, the soft-cap case's attention name) and the decode error with its
# recipe, then the whole of test_cuda.py (every call now asks `_cuda_head_dim`).
# Carry .bin-py34.
set -u
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TESTS="head_dim" NPROC=4 TEST_TIMEOUT=300 bash .bin-py34/python-gpu-select.sh 2>&1 | tail -8
cd "$root"
grep -hE "FAILED|Error|assert" $OUT/pytest_*.log 2>/dev/null | head -20
mkdir -p $OUT/head; mv $OUT/pytest_*.log $OUT/head/ 2>/dev/null
TESTS="not head_dim" NPROC=6 TEST_TIMEOUT=420 bash .bin-py34/python-gpu-select.sh 2>&1 | tail -10
cd "$root"
grep -hE "^FAILED|^ERROR" $OUT/pytest_*.log 2>/dev/null | head -20
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py34/tree && timeout 200 python3 python/bench/head_dims.py examples 2>&1 | grep -Ev "Warning|warn\(" | tail -30)
unset PYTHONPATH
# the D128 backward's untried option pairs on dense / causal / ALiBi (main's kernels of
# 50749cc: gpu_backward of session 33's tree), interleaved x2 in one process
xz -dc .bin-py34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal \
ATTNC_BWD_BENCH_CFG=default,default+2,default+b,default+2+b,default,default+2,default+b,default+2+b \
  timeout 240 /tmp/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|cfg|error|refused" | head -60
