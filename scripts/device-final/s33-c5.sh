#!/usr/bin/env bash
# Session 33 call 5: where the caller backward without a block mask synchronizes (call 4:
# per-call host time ~ its GPU time): doc_bwd_host.py with ATTNC_BLOCK_TABLES=host (the
# dense ranges uploaded once, no builder) against the default; the driver API calls'
# times under nsys where the machine has it. Carry .bin-py33.
set -u
export ATTNC_CACHE_DIR=/tmp/attnc-cache
root=$PWD
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py33/python-gpu-select.sh 2>&1 | tail -1
cd .bin-py33/tree/python/bench
echo "== ATTNC_BLOCK_TABLES=host"
ATTNC_BLOCK_TABLES=host PYTHONPATH=/tmp/attnc-py timeout 100 python3 doc_bwd_host.py $root/examples 2>&1 | grep -v "UserWarning\|warnings.warn\|sync_debug" | head -5
which nsys ncu 2>&1 | head -3
if command -v nsys > /dev/null; then
  PYTHONPATH=/tmp/attnc-py timeout 200 nsys profile -q --trace=cuda --cuda-trace-all-apis=true -o /tmp/bwdprof -f true python3 doc_bwd_host.py $root/examples > /dev/null 2>&1
  nsys stats -q --report cuda_api_sum --format csv /tmp/bwdprof.nsys-rep 2>/dev/null | head -30
fi
