#!/usr/bin/env bash
# Session 31 call 4: where the documents' chunked prefill time goes (torch.profiler over
# the calls: kernels and wall time). Carry .bin-py31.
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache
root=$PWD
TESTS="test_chunked_prefill_head_dim_256_zero_copy" NPROC=1 TEST_TIMEOUT=200 bash .bin-py31/python-gpu-select.sh 2>&1 | tail -2
cd "$root"
export PYTHONPATH=/tmp/attnc-py
cd .bin-py31/tree/python/bench
timeout 300 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v Warning
