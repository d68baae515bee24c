#!/usr/bin/env bash
# dec22's device call: the default copy `efikjoq` against `efikjoqv` (decode_mma::COPY_WGMMA_WG2:
# two warpgroups per CTA on the key halves of each tile, 256 threads, 2 CTAs/SM) at B8 Hq32
# Hkv8 Lkv32768 bf16 D128 — Lq16 dense contiguous + paged 16 / 128 (interleaved rounds); the
# decode kernel alone (ATTNC_DECODE_BENCH_PART=decode); the new GPU test and compute-sanitizer
# memcheck / racecheck of it (cases 0 and 2: contiguous 3 splits, paged 16); SDPA cuDNN /
# flash in the same call (scripts/decode_bench_torch.py --no-flex); Lq1 / Lq4 (16 rows: the
# same kernels, `v` ignored); with `u` (one combine CTA per head) while the budget lasts.
# Binaries (xz'd release attnc and gpu_decode) next to this script; usage (GPU machine, from
# the repository root): OUT=dir BUDGET=seconds bash .bin-dec22/run.sh
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d22; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d22 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d22o}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( ${BUDGET:-90} - $(el) )); }
bench() { local to=$1 f=$2; shift 2; if [ $(left) -lt $to ]; then echo "(skipped: $(left) s left)"; return; fi
  timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjoq,efikjoqv}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== B8 Lq16 dense contiguous / paged 16 / 128 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=${R16:-11} ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 26 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128
echo "=== decode kernel alone: B8 Lq16 dense contiguous ($(el) s)"
ATTNC_DECODE_BENCH_PART=decode ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
  bench 8 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous
echo "=== gpu_decode_wgmma_wg2 ($(el) s)"
timeout ${TEST_S:-16} $T --exact gpu_decode_wgmma_wg2 > $O/test_wg2.log 2>&1; echo "rc=$?" >> $O/test_wg2.log
echo "test: $(grep -hE "test result|panicked|FAILED|rc=|ok|pass" $O/test_wg2.log | head -6 | tr '\n' ' ')"
for tool in memcheck racecheck; do
  echo "=== compute-sanitizer $tool gpu_decode_wgmma_wg2 cases 0,2 ($(el) s)"
  if [ $(left) -lt 14 ]; then echo "(skipped: $(left) s left)"; continue; fi
  ATTNC_GPU_WG2_CASES=0,2 timeout 13 compute-sanitizer --tool $tool --print-limit 5 $T --exact gpu_decode_wgmma_wg2 > $O/$tool.log 2>&1; echo "rc=$?" >> $O/$tool.log
  echo "$tool: $(grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|hazard|rc=|panicked" $O/$tool.log | head -5 | tr '\n' ' ')"
done
echo "=== SDPA ($(el) s)"
if [ $(left) -gt 12 ]; then timeout 16 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning; fi
echo "=== B8 Lq1 / Lq4 dense ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
  bench 9 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --kv-cache contiguous
echo "=== with u: B8 Lq16 dense contiguous ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=1 ATTNC_DECODE_BENCH_COPY=efikjoqu,efikjoquv \
  bench 9 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous
echo "total $(el) s"
