#!/usr/bin/env bash
# dec19's second call: efik vs efikj vs efikjo (the combine's early trigger, balanced splits) at B1,
# B8 Lq1/4/16 and paged 16, and racecheck on gpu_decode_stream to the end.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d19; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d19 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d19o}; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
bench() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efik,efikj,efikjo}
echo "=== B1 ($(el) s)"; ATTNC_DECODE_BENCH_ROUNDS=9 ATTNC_DECODE_BENCH_COPY=$C bench 16 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous
for lq in 1 4 16; do echo "=== B8 Lq$lq ($(el) s)"; ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_COPY=$C bench 12 dense.attn --decode-shape 8,32,8,$lq,32768 --kv-cache contiguous; done
echo "=== paged 16 B8 Lq1 ($(el) s)"; ATTNC_DECODE_BENCH_ROUNDS=4 ATTNC_DECODE_BENCH_COPY=$C bench 12 dense.attn --decode-shape 8,32,8,1,32768 --kv-cache contiguous,paged --page-size 16
tt=$(( ${BUDGET:-95} - $(el) )); echo "=== racecheck gpu_decode_stream ($(el) s, ${tt} s)"
timeout $tt compute-sanitizer --tool racecheck --print-limit 5 $T --exact gpu_decode_stream > $O/race_stream.log 2>&1; echo "rc=$?" >> $O/race_stream.log
echo "racecheck stream: $(grep -hE "test result|RACECHECK SUMMARY|rc=" $O/race_stream.log | tr '\n' ' ')"
echo "total $(el) s"
