#!/usr/bin/env bash
# Session 29 call 7: the D256 training step through Python on the landed defaults
# (bwd_xchg, bwd_dq_pair): python/bench/flash_step.py --d 256 next to SDPA cuDNN and Flex
# (Triton). Carry .bin-py29. Logs under $OUT.
set -u
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
root=$PWD
TESTS="" bash .bin-py29/python-gpu-select.sh > /dev/null 2>&1
cd "$root"; export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
timeout 140 python3 python/bench/flash_step.py --d 256 --l 4096 --cases dense,causal,softcap_sliding \
  --triton --no-flash --no-nd --rounds 2 --iters 5 2>&1 | grep -v Warning | grep -E "round|per round|failed"
