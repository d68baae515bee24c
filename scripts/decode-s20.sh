#!/usr/bin/env bash
# dec20's device call: the default copy `efikjo` against `efikjoq` (decode_mma::COPY_WGMMA:
# the products on wgmma at 64 rows per CTA) at B8 Hq32 Hkv8 Lkv32768 bf16 D128 — Lq16 dense
# contiguous + paged 16 / 128 (finely interleaved rounds), the new GPU test, SDPA cuDNN in the
# same call, Lq1 / Lq4 (16 rows: the same kernels), Lq8 with `r` (COPY_WGMMA_ROWS32: its 32
# rows in the 64-row wgmma kernel), causal Lq16, then memcheck on gpu_decode_wgmma while the
# budget lasts (each step runs only when its limit fits in what is left).
# Binaries (xz'd release attnc and gpu_decode) next to this script; usage (GPU machine, from
# the repository root): OUT=dir BUDGET=seconds bash .bin-dec20/run.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d20; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d20 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d20o}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( ${BUDGET:-92} - $(el) )); }
bench() { local to=$1 f=$2; shift 2; if [ $(left) -lt $to ]; then echo "(skipped: $(left) s left)"; return; fi
  timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjo,efikjoq}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== B8 Lq16 dense contiguous / paged 16 / 128 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=${R16:-15} ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 26 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
echo "=== gpu_decode_wgmma ($(el) s)"
timeout ${TEST_S:-25} $T --exact gpu_decode_wgmma > $O/test_wgmma.log 2>&1; echo "rc=$?" >> $O/test_wgmma.log
echo "test: $(grep -hE "test result|panicked|FAILED|rc=" $O/test_wgmma.log | head -5 | tr '\n' ' ')"
echo "=== SDPA cuDNN ($(el) s)"
timeout 20 python3 "$here/anchors.py" 2>&1 | grep -v Warning
echo "=== B8 Lq1 / Lq4 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
  bench 12 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --kv-cache contiguous
echo "=== B8 Lq8 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_COPY=efikjo,efikjoqr \
  bench 10 dense.attn --decode-shape 8,32,8,8,32768 --kv-cache contiguous
echo "=== B8 Lq16 causal contiguous / paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=7 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=1 ATTNC_DECODE_BENCH_COPY=$C \
  bench 12 causal.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
tt=$(left); echo "=== memcheck gpu_decode_wgmma ($(el) s, ${tt} s)"
if [ $tt -gt 5 ]; then
  timeout $tt compute-sanitizer --tool memcheck --print-limit 5 $T --exact gpu_decode_wgmma > $O/memcheck.log 2>&1; echo "rc=$?" >> $O/memcheck.log
  echo "memcheck: $(grep -hE "test result|ERROR SUMMARY|rc=" $O/memcheck.log | tr '\n' ' ')"
fi
echo "total $(el) s"
