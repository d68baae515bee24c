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
