#!/usr/bin/env bash
# dec20's numbers for the final check, right after the FA4 anchors (< 60 s): B8 Hq32 Hkv8
# Lkv32768 bf16 D128 Lq16 dense, contiguous + paged 16, the default `efikjo` against `efikjoq`
# (decode_mma::COPY_WGMMA), then Lq4 (16 rows: the same kernel either way). Binaries from
# this script's folder (.bin-dec20). usage: bash .bin-dec20/fc.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d20; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d20 ATTNC_EXAMPLES=$PWD/examples
bench() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjo,efikjoq}
echo "=== dec20 B8 Lq16 dense contiguous / paged 16"
ATTNC_DECODE_BENCH_ROUNDS=11 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 30 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
echo "=== dec20 B8 Lq4 dense"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C bench 15 dense.attn --decode-shape 8,32,8,4,32768 --kv-cache contiguous
