#!/usr/bin/env bash
# Session 34 call 1: head dims the CUDA kernels do not take (96, 72, 80, 160, 192 / 128),
# run zero-padded by the Python package (`attnc._cuda_head_dim`): test_cuda.py's
# `head_dim` selection (the new padded cases against the f64 oracle, fwd + grads, twice
# bit-identical; a block mask and torch.compile at D96; the existing D256 gradient tests),
# then python/bench/head_dims.py (attnc padded next to SDPA and compiled Flex, same
# process). Carry .bin-py34 (scripts/python-gpu-pack.sh).
set -u
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TESTS="head_dim" NPROC=4 TEST_TIMEOUT=300 bash .bin-py34/python-gpu-select.sh 2>&1 | tail -12
cd "$root"
grep -hE "FAILED|Error|assert" $OUT/pytest_*.log 2>/dev/null | head -20
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py34/tree && timeout 240 python3 python/bench/head_dims.py examples 2>&1 | grep -Ev "Warning|warn\(" | tail -30)
