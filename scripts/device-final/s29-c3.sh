#!/usr/bin/env bash
# Session 29 call 3 (final check): the package's whole CUDA test file (test_cuda.py, the
# stale workspace assertions fixed, the D256 gradients' test) in 8 processes, then a
# training step through Python at head dim 256 (python/bench/flash_step.py --d 256: attnc
# next to Flex's Triton backend and, for dense / causal, SDPA cuDNN; FA4 not installed).
# Carry .bin-py29 (python-gpu-pack.sh of the tree). Logs under $OUT.
set -u
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
root=$PWD
TESTS="not zz_no_such_test" NPROC=8 TEST_TIMEOUT=330 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -12
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
grep -h "SKIPPED" $OUT/pytest_*.log | head -5
cd "$root"; export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
timeout 230 python3 python/bench/flash_step.py --d 256 --l 4096 --cases dense,causal,softcap_sliding \
  --triton --no-flash --no-nd --rounds 2 --iters 5 2>&1 | grep -v Warning | tail -30
