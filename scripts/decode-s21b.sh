#!/usr/bin/env bash
# dec21's second script (a second device call or the final check's fc.sh, < 60 s): the default
# copy `efikjoq` against `efikjoqu` (decode_mma::COPY_COMBINE_ROWS: one combine CTA per (query
# head, sequence), its warps over the rows; 256 CTAs at B8 Hq32 instead of B Hq Lq) and
# `efikjoqtu` (+ P V's wait deferred) at B8 Hq32 Hkv8 Lkv32768 bf16 D128: Lq16 dense contiguous
# + paged 16 (finely interleaved rounds), Lq1 / Lq4, the combine kernel alone
# (ATTNC_DECODE_BENCH_PART=combine), B1 Lkv131072 Lq1 (33 splits: one warp per row merges
# them all), the GPU test gpu_decode_combine_rows, SDPA cuDNN in the same call
# (scripts/decode_anchors_s20.py). Each step runs only when its limit fits in what is left.
# Binaries (xz'd release attnc and gpu_decode) next to this script; usage (GPU machine, from
# the repository root): OUT=dir BUDGET=seconds bash .bin-dec21/fc.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d21; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d21 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d21o}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( ${BUDGET:-58} - $(el) )); }
bench() { local to=$1 f=$2; shift 2; if [ $(left) -lt $to ]; then echo "(skipped: $(left) s left)"; return; fi
  timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjoq,efikjoqu,efikjoqtu}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== B8 Lq16 dense contiguous / paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=${R16:-9} ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 18 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
echo "=== B8 Lq1 / Lq4 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_COPY=efikjoq,efikjoqu \
  bench 9 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --kv-cache contiguous
echo "=== combine kernel alone: B8 Lq16 / Lq1 ($(el) s)"
ATTNC_DECODE_BENCH_PART=combine ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=efikjoq,efikjoqu \
  bench 6 dense.attn --decode-shape 8,32,8,16,32768 --decode-shape 8,32,8,1,32768 --kv-cache contiguous
echo "=== B1 Lkv131072 Lq1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_COPY=efikjoq,efikjoqu \
  bench 6 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous
echo "=== gpu_decode_combine_rows ($(el) s)"
if [ $(left) -gt 8 ]; then
  timeout ${TEST_S:-12} $T --exact gpu_decode_combine_rows > $O/test_rows.log 2>&1; echo "rc=$?" >> $O/test_rows.log
  echo "test: $(grep -hE "test result|panicked|FAILED|rc=" $O/test_rows.log | head -5 | tr '\n' ' ')"
fi
echo "=== SDPA cuDNN ($(el) s)"
if [ $(left) -gt 6 ]; then timeout $(left) python3 scripts/decode_anchors_s20.py 2>&1 | grep -v Warning; fi
echo "total $(el) s"
