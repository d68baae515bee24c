#!/usr/bin/env bash
# Session 32 call 2: prefill_host.py alone (call 1 stopped on the example's name).
set -u
root=$PWD
[ -d /tmp/attnc-py/attnc ] || TESTS="" bash .bin-py32/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
(cd .bin-py32/tree/python/bench && timeout 200 python3 prefill_host.py --profile --examples $root/examples 256,8192 512,8192 2>&1 | grep -v -i warn)
