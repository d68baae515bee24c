#!/usr/bin/env bash
# Session 36 call 3 (warm, after s36-c1.sh and s36-c2.sh on the same machine; carry
# .fa4b): FA4 part b, attnc's backward (kernel bench, median, D128 and D64) before the
# anchors, the anchors (scripts/fa4_anchors_lite.py: Flex FLASH, FA4 direct, SDPA cuDNN;
# forward and backward; B2 H16 L8192 D128, GQA, D64 with its backward; sliding and
# documents). The training step follows in call 4 (s36-c4.sh).
set -u
bash .fa4b/install.sh b 2>&1 | tail -1
export ATTNC_EXAMPLES=$PWD/examples ATTNC_CACHE_DIR=/tmp/attnc-cache
B=/tmp/s36/gpu_backward
t0=$SECONDS
for d in 128 64; do
  echo "=== attnc backward D$d, kernel bench median"
  ATTNC_BWD_BENCH_D=$d ATTNC_BWD_BENCH_CFG=default ATTNC_BWD_BENCH_ONLY=full,causal,sliding1024,alibi_causal,softcap_causal,doc_causal \
    timeout 100 $B --ignored --exact gpu_backward_bench --nocapture 2>&1 | grep -E "TFLOP" | cut -c1-200
done
echo "bwd: $((SECONDS - t0)) s"; t0=$SECONDS
PYTHONPATH=$(cat /tmp/fa4site.path) timeout 300 python3 scripts/fa4_anchors_lite.py --gqa --d64 --bwd-d64 --sliding --doc 2>&1 \
  | grep -v "^$" | grep -Ev "UserWarning|exe_args, func_types" | tail -70 | cut -c1-260
echo "anchors: $((SECONDS - t0)) s"; t0=$SECONDS
