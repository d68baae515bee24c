#!/usr/bin/env bash
# Session 41 call 7 (after `.fa4a/install.sh a` and `.fa4b/install.sh b` on the same warm
# machine; carry .bin-pycuda): grouped-query attention's training step (dense, causal) at
# B1 Hq32 Hkv8 L16384 and B2 H16 L8192 D128 against FA4 / Flex FLASH / cuDNN
# (python/bench/gqa_step.py), then the document step of call 3 again (doc_tiles.py).
set -u
export PYTHONPATH=$(cat /tmp/fa4site.path 2>/dev/null)
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cd python/bench
echo "== gqa_step ($((SECONDS - t0)) s)"
timeout 300 "$py" gqa_step.py --examples ../../examples --rounds 3 2>&1 | grep -E "^gqa_step|^  |Error" | grep -v "exe_args" | cut -c1-200
echo "== doc_tiles ($((SECONDS - t0)) s)"
timeout 240 "$py" doc_tiles.py --examples ../../examples --rounds 3 2>&1 | grep -E "^doc_tiles|^  |Error" | grep -v "exe_args" | cut -c1-200
echo "== done ($((SECONDS - t0)) s)"
