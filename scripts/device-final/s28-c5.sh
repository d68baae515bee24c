#!/usr/bin/env bash
# Session 28 call 5: the paged runs' producer threads chosen by page size (four below 64
# rows, two from 64 on: `decode::cuda::producers_for`) — the package's decode / chunked /
# paged / cache tests on the defaults, then the serving loop (contiguous, pages of 128 and
# 16 rows). Carry .bin-py27 (python-gpu-pack.sh of the tree). Logs under $OUT.
set -u
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
root=$PWD
TESTS="decode or chunk or paged or cache" NPROC=6 TEST_TIMEOUT=200 bash .bin-py27/python-gpu-select.sh 2>&1 | tail -8
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"; export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
timeout 150 python3 python/bench/serve_loop.py --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-900
