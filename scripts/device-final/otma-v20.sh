#!/usr/bin/env bash
# session 20 lead: o_tma on ALiBi + causal (the new for_binding default): every example through the runtime at D128 and D64 against the oracle
# (attnc demo --backends cuda), then ALiBi's default against ATTNC_FWD_OTMA=0 / =1 (min of 3 x 10, B2 H16 L8192 D128)
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/ab2; mkdir -p $B; xz -dc $here/attnc.xz > $B/attnc; chmod +x $B/attnc
export ATTNC_CACHE_DIR=/tmp/attnc-cache-ab2 ATTNC_EXAMPLES=$PWD/examples
for d in 128 64; do timeout 60 $B/attnc demo examples --backends cuda --d $d 2>&1 | tail -30 | cut -c1-200; done
fw() { timeout 30 env "$@" ATTNC_BENCH_STAT=min $B/attnc bench examples/alibi_causal.attn --attention alibi_causal --backend cuda --dtype bf16 --d 128 --iters 10 --batch 2 --heads 16 --lq 8192 2>&1 | grep TFLOP | grep -v "jit tiers" | cut -c1-120; }
echo "default: $(fw X=1)"; echo "otma0:   $(fw ATTNC_FWD_OTMA=0)"; echo "otma1:   $(fw ATTNC_FWD_OTMA=1)"; echo "default: $(fw X=1)"
