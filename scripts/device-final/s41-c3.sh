#!/usr/bin/env bash
# Session 41 call 3 (after `.fa4a/install.sh a` and `.fa4b/install.sh b` on the same warm
# machine; carry .bin-pycuda of scripts/python-gpu-pack.sh): the Python package's block
# mask tests (document tiles on the caller-buffer path: test_block_mask_*), then
# python/bench/doc_tiles.py — attnc's document + causal forward and training step with a
# block mask carrying document tiles, next to Flex Triton / FLASH and FA4 varlen, same
# process.
set -u
export PYTHONPATH=$(cat /tmp/fa4site.path 2>/dev/null)
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest block_mask ($((SECONDS - t0)) s)"
pygpu_pytest "block_mask" 6 240
echo "== doc_tiles bench ($((SECONDS - t0)) s)"
(cd python/bench && timeout 330 "$py" doc_tiles.py --examples ../../examples --rounds 3 2>&1 \
  | grep -Ev "Warning|warn\(" | tail -40 | cut -c1-220)
echo "== done ($((SECONDS - t0)) s)"
