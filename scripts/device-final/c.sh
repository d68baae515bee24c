#!/usr/bin/env bash
# final GPU check, call C: FA4 part b installed; FA4 / Flex FLASH / cuDNN anchors (D128 and D64 fwd+bwd; GQA fwd; decoding;
# sliding window 1024 and document + causal on every shape, FA4 through window_size / its varlen entry), then the SDPA/Flex decode anchors
set -u
bash .fa4b/install.sh b 2>&1 | tail -1
# (session 13: run after calls B and A on the same warm machine, whose binaries are still in /tmp/fb and /tmp/fa: attnc's
# dense and causal forward (CLI, the anchors' min of 3 x 10) and backward (gpu_backward bench, default = the runtime's choice,
# median) in THIS call too, before and after the anchors, so those ratios are same-call ones)
same_call() {
  echo "=== same-call attnc ($1)"
  if [ -x /tmp/fb/attnc ]; then
    for s in "128 2 8192" "64 4 4096"; do set -- $s
      for ex in dense causal; do
        ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_BENCH_STAT=min timeout 60 /tmp/fb/attnc bench examples/$ex.attn --backend cuda --dtype bf16 --batch $2 --heads 16 --lq $3 --d $1 --iters 10 2>&1 \
          | grep -E "TFLOP" | grep -v "jit tiers" | sed -E "s/: compile .*ms\/call/:/" | sed "s/^/fwd D$1 $ex: /" | cut -c1-200
      done
    done
  else echo "(no /tmp/fb/attnc: machine not warm from call B)"; fi
  if [ -x /tmp/fa/gpu_backward ]; then
    ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_EXAMPLES=$PWD/examples ATTNC_BWD_BENCH_CFG=default ATTNC_BWD_BENCH_ONLY=full,causal timeout 90 /tmp/fa/gpu_backward --ignored --exact gpu_backward_bench --nocapture 2>&1 | grep -E "TFLOP" | cut -c1-200
  else echo "(no /tmp/fa/gpu_backward: machine not warm from call A)"; fi
}
same_call before
t0=$(date +%s)
PYTHONPATH=$(cat /tmp/fa4site.path) OUT=${OUT:-/tmp} timeout 400 python3 scripts/fa4_anchors_lite.py ${ANCHOR_ARGS:---d64 --bwd-d64 --gqa --decode --sliding --doc} 2>&1 | grep -v "^$" | grep -Ev "UserWarning|exe_args, func_types" | tail -60 | cut -c1-260
echo "anchors: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
same_call after
# DECODE=0 leaves out the decode anchors (session 17: no decode kernel changed since the last check)
[ "${DECODE:-1}" = 1 ] || exit 0
timeout 90 python3 scripts/decode_bench_torch.py 2>&1 | tail -20 | cut -c1-200
# (session 13: causal and sliding-4096 decode anchors at logical positions: FA4 with causal / window_size, cuDNN with a mask)
PYTHONPATH=$(cat /tmp/fa4site.path) timeout 90 python3 scripts/decode_bench_torch.py --no-flex --masks 2>&1 | grep -E "^anchor|rror|not importable" | cut -c1-260
echo "decode anchors: $(( $(date +%s) - t0 )) s"
