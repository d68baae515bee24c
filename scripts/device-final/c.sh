#!/usr/bin/env bash
# final GPU check, call C: FA4 part b installed; FA4 / Flex FLASH / cuDNN anchors (D128 and D64 fwd+bwd; GQA fwd; decoding;
# sliding window 1024 and document + causal on every shape, FA4 through window_size / its varlen entry), then the SDPA/Flex decode anchors
set -u
bash .fa4b/install.sh b 2>&1 | tail -1
t0=$(date +%s)
PYTHONPATH=$(cat /tmp/fa4site.path) OUT=${OUT:-/tmp} timeout 400 python3 scripts/fa4_anchors_lite.py ${ANCHOR_ARGS:---d64 --bwd-d64 --gqa --decode --sliding --doc} 2>&1 | grep -v "^$" | grep -Ev "UserWarning|exe_args, func_types" | tail -60 | cut -c1-260
echo "anchors: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout 90 python3 scripts/decode_bench_torch.py 2>&1 | tail -20 | cut -c1-200
echo "decode anchors: $(( $(date +%s) - t0 )) s"
