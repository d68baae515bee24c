#!/usr/bin/env bash
# session 21 final check, call C: FA4 part b installed; attnc's forward / backward before and after the FA4 / Flex FLASH /
# cuDNN anchors (same call); fwd20's causal options (o_tma, 3 stages) against the default by the anchors' min rule.
# Run after calls A (/tmp/fa) and B (/tmp/fb) on the same warm machine.
set -u
bash .fa4b/install.sh b 2>&1 | tail -1
export ATTNC_EXAMPLES=$PWD/examples
fw() { local ex=$1; shift; timeout 40 env "$@" ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_BENCH_STAT=min /tmp/fb/attnc bench examples/$ex.attn --backend cuda --dtype bf16 --iters 10 $SHAPE 2>&1 | grep TFLOP | grep -v "jit tiers" | sed -E 's/.*bf16: (compile [0-9.]+ ms)?[^)]*\)?,? ?//' | cut -c1-120; }
same_call() {
  echo "=== same-call attnc forward ($1), min of 3 x 10"
  for SHAPE in "--d 128 --batch 2 --heads 16 --lq 8192" "--d 128 --batch 1 --heads 32 --hkv 8 --lq 16384" "--d 64 --batch 4 --heads 16 --lq 4096"; do
    for ex in dense causal; do echo "$SHAPE $ex: $(fw $ex X=1)"; done; done
  echo "=== same-call attnc backward ($1), kernel bench median"
  ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_BWD_BENCH_CFG=default ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal timeout 90 /tmp/fa/gpu_backward --ignored --exact gpu_backward_bench --nocapture 2>&1 | grep -E "TFLOP" | cut -c1-200
}
t0=$(date +%s)
same_call before
echo "same_call: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
PYTHONPATH=$(cat /tmp/fa4site.path) OUT=${OUT:-/tmp} timeout 300 python3 scripts/fa4_anchors_lite.py ${ANCHOR_ARGS:---gqa --d64 --bwd-d64} 2>&1 | grep -v "^$" | grep -Ev "UserWarning|exe_args, func_types" | tail -60 | cut -c1-260
echo "anchors: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
# the helpers' fc.sh scripts (FA4 in the same call) from this folder's NAME/fc.sh, with main's gpu_backward from call A (their options landed)
here=$(cd "$(dirname "$0")" && pwd); mkdir -p /tmp/bwd21b /tmp/bwd64xb; cp /tmp/fa/gpu_backward /tmp/bwd21b/; cp /tmp/fa/gpu_backward /tmp/bwd64xb/
for n in ${FC:-bwd21 bwd64x}; do [ -f $here/$n/fc.sh ] && { echo "=== fc.sh of $n"; FC_S=${FC_S:-55} timeout ${FC_S:-55} bash $here/$n/fc.sh 2>&1 | tail -30 | cut -c1-220; }; done
echo "fc: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
[ "${AFTER:-0}" = 1 ] && same_call after
