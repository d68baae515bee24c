#!/usr/bin/env bash
# Session 45 (carry .bin-s45; after s45-c2.sh, FA4's rows too): T5's learned bucketed bias
# trained through Python (python/bench/capture_grad_step.py --cases t5,t5_causal: attnc vs
# Flex (Triton, and FLASH where it takes a captured gradient) with HuggingFace's bucket
# function in its score_mod vs SDPA with the bias gathered into a float mask each step, as
# HuggingFace's T5Attention does); T5's own shape (D64, L4096) and the anchors' (D128, L8192).
set -u
[ -d /tmp/attnc-py/attnc ] || python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-py .bin-s45/attnc-*.whl
export ATTNC_CACHE_DIR=/tmp/attnc-cache PYTHONPATH=/tmp/attnc-py:$(cat /tmp/fa4site.path 2>/dev/null) PYTHONUNBUFFERED=1
cd python/bench
flash=--no-flash; [ -f /tmp/fa4site.path ] && flash=
for shape in "--l 4096 --d 64" "--l 8192 --d 128"; do
  t0=$SECONDS
  echo "== t5 $shape"
  timeout ${T5_S:-270} python3 capture_grad_step.py --cases t5,t5_causal $shape --rounds 3 $flash 2>&1 \
    | grep -Ev "Warning|warn\(" | cut -c1-260
  echo "rc=$? ($((SECONDS - t0)) s)"
done
