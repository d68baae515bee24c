#!/usr/bin/env bash
# session 20 final check, call C: FA4 part b installed; attnc's forward / backward before and after the FA4 / Flex FLASH /
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
echo "=== causal D128 forward: default vs ATTNC_FWD_OTMA=1 / =0 vs ATTNC_FWD_STAGES=3, min of 3 x 10"
for SHAPE in "--d 128 --batch 2 --heads 16 --lq 8192" "--d 128 --batch 1 --heads 32 --hkv 8 --lq 16384"; do echo "-- $SHAPE"
  for r in ${FWD_ROUNDS:-1}; do echo "default: $(fw causal X=1)"; echo "otma1:   $(fw causal ATTNC_FWD_OTMA=1)"; echo "otma0:   $(fw causal ATTNC_FWD_OTMA=0)"; echo "stages3: $(fw causal ATTNC_FWD_STAGES=3)"; done; done
for FA in alibi_causal:alibi_causal softcap:softcap_causal; do ex=${FA%%:*}; SHAPE="--attention ${FA##*:} --d 128 --batch 2 --heads 16 --lq 8192"; echo "${FA##*:} B2: default $(fw $ex X=1) | otma1 $(fw $ex ATTNC_FWD_OTMA=1)"; done
echo "fwd options: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
[ "${AFTER:-0}" = 1 ] && same_call after
echo "same_call: $(( $(date +%s) - t0 )) s"
echo "=== decode Lq16: efikjo / efikjoq (default) / efikjoqs (dec20's 6-stage ring, off), 11 interleaved rounds"
ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_DECODE_BENCH_ROUNDS=11 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=efikjo,efikjoq,efikjoqs \
  timeout 30 /tmp/fb/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16 2>&1 | grep -v "^device" | cut -c1-300
ATTNC_CACHE_DIR=/tmp/attnc-cache-x timeout 25 /tmp/fa/gpu_decode --exact gpu_decode_wgmma 2>&1 | grep -E "test result|panicked|FAILED" | head -5
