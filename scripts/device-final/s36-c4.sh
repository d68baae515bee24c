#!/usr/bin/env bash
# Session 36 call 4 (warm, after s36-c1..c3.sh on the same machine; carry .bin-s36c): a
# training step through Python on all six variants (forward + backward;
# python/bench/flash_step.py: attnc vs Flex FLASH vs SDPA cuDNN in one process; the wheel
# call 1 installed in /tmp/attnc-py, FA4 installed by calls 2 and 3).
set -u
export ATTNC_CACHE_DIR=/tmp/attnc-cache
t0=$SECONDS
PYTHONPATH=/tmp/attnc-py:$(cat /tmp/fa4site.path) PYTHONUNBUFFERED=1 timeout ${FC_S:-400} python3 python/bench/flash_step.py \
  --cases dense,causal,alibi_causal,softcap_causal,sliding,document --rounds 3 --out $OUT > $OUT/flash_step.log 2>&1
echo "flash_step rc=$? ($((SECONDS - t0)) s)"
grep -Ev "Warning|warn\(" $OUT/flash_step.log | tail -50 | cut -c1-230
echo "== generated programs on the GPU (the generator makes bitwise operators since session 35)"
xz -dc .bin-s36c/gpu_random.xz > /tmp/s36/gpu_random; chmod +x /tmp/s36/gpu_random
for t in gpu_random_forward_bf16 gpu_random_backward_bf16; do
  echo "$t: $(ATTNC_EXAMPLES=$PWD/examples timeout 150 /tmp/s36/gpu_random --exact $t 2>&1 | grep -E 'test result|panicked' | head -3 | tr '\n' ' ')"
done
