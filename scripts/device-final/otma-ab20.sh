#!/usr/bin/env bash
# session 20 lead: o_tma (ATTNC_FWD_OTMA=1) against the runtime's default on ALiBi + causal and sliding window 1024, D128 bf16,
# B2 H16 L8192 and B1 Hq32 Hkv8 L16384, `attnc bench` min of 3 x 10 (the anchors' rule), alternated AB / BA per round
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/ab; mkdir -p $B; xz -dc $here/attnc.xz > $B/attnc; chmod +x $B/attnc
export ATTNC_CACHE_DIR=/tmp/attnc-cache-ab ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fw() { timeout 30 env "$@" ATTNC_BENCH_STAT=min $B/attnc bench examples/$EX.attn $EXTRA --backend cuda --dtype bf16 --d 128 --iters 10 $SHAPE 2>&1 | grep TFLOP | grep -v "jit tiers" | sed -E 's/.*ms\/call, density [0-9.]+, ([0-9.]+) TFLOP.*/\1/'; }
for C in "alibi_causal|--attention alibi_causal" "sliding_window|--param window=1024"; do EX=${C%%|*}; EXTRA=${C##*|}
  for SHAPE in "--batch 2 --heads 16 --lq 8192" "--batch 1 --heads 32 --hkv 8 --lq 16384"; do
    a=""; b=""
    for r in 1 2 3; do
      if [ $((r % 2)) = 1 ]; then a="$a $(fw X=1)"; b="$b $(fw ATTNC_FWD_OTMA=1)"; else b="$b $(fw ATTNC_FWD_OTMA=1)"; a="$a $(fw X=1)"; fi
    done
    echo "$EX $SHAPE | default:$a | otma1:$b"
  done
done
