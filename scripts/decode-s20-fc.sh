#!/usr/bin/env bash
# dec20's numbers for the final check, right after the FA4 anchors (< 60 s): B8 Hq32 Hkv8
# Lkv32768 bf16 D128 Lq16 dense, contiguous + paged 16, `efikjo` (the default before session
# 20) against `efikjoq` (decode_mma::COPY_WGMMA, the new default for decode calls) and
# `efikjoqs` (+ COPY_WGMMA_DEEP: a 6-stage ring, one CTA per SM, off), interleaved rounds;
# Lq4 (16 rows: the same kernel either way); then gpu_decode_wgmma (its `s` cases are not
# run on a GPU before this). Binaries from this script's folder (.bin-dec20).
# usage (GPU machine, repository root): bash .bin-dec20/fc.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d20; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d20 ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
bench() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
echo "=== dec20 B8 Lq16 dense contiguous / paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=11 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=${COPIES:-efikjo,efikjoq,efikjoqs} \
  bench 25 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
echo "=== dec20 B8 Lq4 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=efikjo,efikjoq bench 12 dense.attn --decode-shape 8,32,8,4,32768 --kv-cache contiguous
echo "=== dec20 gpu_decode_wgmma ($(el) s)"
timeout 20 $T --exact gpu_decode_wgmma 2>&1 | grep -E "test result|panicked|FAILED" | head -5
echo "dec20 total $(el) s"
