#!/usr/bin/env bash
# session 21 final check call B: FA4 part a; decoding: issue 12's sweep (contiguous + paged 16/128) with the default, SDPA
# cuDNN / flash anchors in the same call, causal; dec21's fc.sh (efikjoq vs `u` one-CTA-per-head combine vs `tu`) with
# main's binaries (attnc here, gpu_decode from call A's /tmp/fa).
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
echo "=== decode causal Lq4 / Lq16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 dec 40 causal.attn --decode-shape 8,32,8,4,32768 --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
echo "=== dec21 fc.sh ($(el) s)"
mkdir -p /tmp/d21; cp $A /tmp/d21/attnc; cp /tmp/fa/gpu_decode /tmp/d21/gpu_decode
OUT=${OUT:-/tmp}/d21 BUDGET=${DEC_S:-58} bash "$here/dec21/fc.sh" 2>&1 | cut -c1-300
echo "total $(el) s"
wait
