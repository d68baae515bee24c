#!/usr/bin/env bash
# dec22's second device call: the new default `efikjoqu` (session 22: u at 4-16 rows) against
# `efikjoquv` (decode_mma::COPY_WGMMA_WG2: two warpgroups per CTA on the key halves) and
# `efikjoquvw` (COPY_WGMMA_WG2_REGS: v capped at 112 registers, room for a combine CTA beside
# two decode CTAs) at B8 Hq32 Hkv8 Lkv32768 bf16 D128 Lq16 — dense contiguous + paged 16
# (interleaved rounds), the decode kernel alone, causal; the GPU test's w cases (16..=18) and
# compute-sanitizer memcheck of two of them; SDPA cuDNN / flash in the same call
# (scripts/decode_bench_torch.py --no-flex) while the budget lasts.
# Binaries (xz'd release attnc and gpu_decode) next to this script; usage (GPU machine, from
# the repository root): OUT=dir BUDGET=seconds bash .bin-dec22/run2.sh (also the final check's
# fc.sh: FC_S=seconds, BUDGET defaults to FC_S - 4; main's binaries from /tmp/f4 when none here)
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d22b; mkdir -p $B
for f in "$here"/*.xz; do [ -e "$f" ] && [ ! -x $B/$(basename "$f" .xz) ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=$B/attnc; T=$B/gpu_decode
# (the final check's fc.sh: main's binaries of that call when none are next to this script)
[ -x $A ] || A=/tmp/f4/attnc; [ -x $T ] || T=/tmp/f4/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d22b ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d22o}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( ${BUDGET:-$(( ${FC_S:-74} - 4 ))} - $(el) )); }
bench() { local to=$1 f=$2; shift 2; if [ $(left) -lt $to ]; then echo "(skipped: $(left) s left)"; return; fi
  timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
C=${COPIES:-efikjoqu,efikjoquv,efikjoquvw}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== B8 Lq16 dense contiguous / paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=${R16:-11} ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=$C \
  bench 26 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16
echo "=== decode kernel alone: B8 Lq16 dense contiguous ($(el) s)"
ATTNC_DECODE_BENCH_PART=decode ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=$C \
  bench 9 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous
echo "=== gpu_decode_wgmma_wg2 cases 16-18 (w) ($(el) s)"
ATTNC_GPU_WG2_CASES=16,17,18 timeout 10 $T --exact gpu_decode_wgmma_wg2 > $O/test_w.log 2>&1; echo "rc=$?" >> $O/test_w.log
echo "test: $(grep -hE "test result|panicked|FAILED|rc=|ok|pass" $O/test_w.log | head -6 | tr '\n' ' ')"
echo "=== compute-sanitizer memcheck cases 16,17 ($(el) s)"
if [ $(left) -ge 12 ]; then
  ATTNC_GPU_WG2_CASES=16,17 timeout 11 compute-sanitizer --tool memcheck --print-limit 5 $T --exact gpu_decode_wgmma_wg2 > $O/memcheck_w.log 2>&1; echo "rc=$?" >> $O/memcheck_w.log
  echo "memcheck: $(grep -hE "ERROR SUMMARY|rc=|panicked" $O/memcheck_w.log | head -4 | tr '\n' ' ')"
fi
echo "=== B8 Lq16 causal contiguous ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=1 ATTNC_DECODE_BENCH_COPY=$C \
  bench 9 causal.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous
echo "=== SDPA ($(el) s)"
if [ $(left) -gt 14 ]; then timeout 14 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning; fi
echo "total $(el) s"
