#!/usr/bin/env bash
# Session 41 call 13 (after `.fa4a/install.sh a` and `.fa4b/install.sh b` on the same warm
# machine; carry .bin-pycuda with the backward's document kv tiles in ascending
# order): the document step through Python against Flex Triton / FLASH and FA4 varlen in
# one process (doc_tiles.py, every row).
set -u
export PYTHONPATH=$(cat /tmp/fa4site.path 2>/dev/null)
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cd python/bench
timeout 300 "$py" doc_tiles.py --examples ../../examples --rounds 3 2>&1 | grep -E "^doc_tiles|^  |Error" | grep -v exe_args | cut -c1-200
echo "== done ($((SECONDS - t0)) s)"
