#!/usr/bin/env bash
# dec21's device call: the default copy `efikjoq` against `efikjoqt` (decode_mma::COPY_WGMMA_DEFER:
# P V's wait deferred into the next tile, the refill's copies issued while S = Q K^T runs) at
# B8 Hq32 Hkv8 Lkv32768 bf16 D128 — Lq16 dense contiguous + paged 16 / 128 (finely interleaved
# rounds); the call's time split into its kernels (ATTNC_DECODE_BENCH_PART=decode / combine,
# Lq16 and Lq1); the new GPU test; SDPA cuDNN / flash in the same call
# (scripts/decode_bench_torch.py --no-flex); Lq1 / Lq4 (16 rows: the same kernels); causal Lq16
# while the budget lasts (each step runs only when its limit fits in what is left).
# Binaries (xz'd release attnc and gpu_decode) next to this script; usage (GPU machine, from
# the repository root): OUT=dir BUDGET=seconds bash .bin-dec21/run.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d21; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d21 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d21o}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( ${BUDGET:-90} - $(el) )); }
bench() { local to=$1 f=$2; shift 2; if [ $(left) -lt $to ]; then echo "(skipped: $(left) s left)"; return; fi
  timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjoq,efikjoqt}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== B8 Lq16 dense contiguous / paged 16 / 128 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=${R16:-11} ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 24 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
for part in decode combine; do
  echo "=== $part kernel alone: B8 Lq16 / Lq1 dense contiguous ($(el) s)"
  ATTNC_DECODE_BENCH_PART=$part ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
    bench 9 dense.attn --decode-shape 8,32,8,16,32768 --decode-shape 8,32,8,1,32768 --kv-cache contiguous
done
echo "=== gpu_decode_wgmma_defer ($(el) s)"
timeout ${TEST_S:-18} $T --exact gpu_decode_wgmma_defer > $O/test_defer.log 2>&1; echo "rc=$?" >> $O/test_defer.log
echo "test: $(grep -hE "test result|panicked|FAILED|rc=|ok|pass" $O/test_defer.log | head -6 | tr '\n' ' ')"
echo "=== SDPA ($(el) s)"
if [ $(left) -gt 12 ]; then timeout 16 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning; fi
echo "=== B8 Lq1 / Lq4 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
  bench 10 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --kv-cache contiguous
echo "=== B8 Lq16 causal contiguous / paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=1 ATTNC_DECODE_BENCH_COPY=$C \
  bench 9 causal.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
echo "total $(el) s"
