#!/usr/bin/env bash
# Session 45 call 2 (warm, after `bash .fa4a/install.sh a` on the same machine; carry .fa4b
# and .bin-s45 = the release abi3 wheel of scripts/python-wheel.sh): FA4 part b, then a
# training step through Python on all six variants (python/bench/flash_step.py: attnc vs
# Flex FLASH vs SDPA cuDNN in one process) — the measurement session 34's backward was
# only estimated from (issue 10's "one training step faster than FlexAttention's best").
set -u
bash .fa4b/install.sh b 2>&1 | tail -1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-py .bin-s45/attnc-*.whl
export ATTNC_CACHE_DIR=/tmp/attnc-cache PYTHONPATH=/tmp/attnc-py:$(cat /tmp/fa4site.path) PYTHONUNBUFFERED=1
t0=$SECONDS
timeout ${FC_S:-430} python3 python/bench/flash_step.py \
  --cases dense,causal,alibi_causal,softcap_causal,sliding,document --rounds 3 --out $OUT > $OUT/flash_step.log 2>&1
echo "flash_step rc=$? ($((SECONDS - t0)) s)"
grep -Ev "Warning|warn\(" $OUT/flash_step.log | tail -60 | cut -c1-230
