#!/usr/bin/env bash
# session 20 final check call B: FA4 part a; decoding with session 20's default efikjoq (the products on wgmma at 64 rows)
# against efikjo (session 19's) at Lq16, issue 12's sweep (contiguous + paged 16/128), B1, causal, SDPA cuDNN / flash anchors in the same call
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/fb; mkdir -p $B
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
(bash .fa4a/install.sh a 2>&1 | tail -1) &
export ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
A=$B/attnc
dec() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -E "^decode|rror" | cut -c1-300; }
echo "=== SDPA decode anchors ($(el) s)"
PYTHONUNBUFFERED=1 timeout 20 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning | cut -c1-200
echo "=== decode: issue 12's shapes, contiguous + paged 16/128, 3 rotated rounds, default ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 dec 120 dense.attn
echo "=== decode Lq16 15 rounds of one timing, efikjoq (default) vs efikjo ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=15 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=efikjoq,efikjo dec 60 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
echo "=== decode causal Lq4 / Lq16, sliding ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 dec 40 causal.attn --decode-shape 8,32,8,4,32768 --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
echo "total $(el) s"
wait
