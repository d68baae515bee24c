#!/usr/bin/env bash
# (packed as .bin-dec18/run.sh with release `attnc` and `gpu_decode` of branch dec18, xz; run from the repo root with carry [".bin-dec18"];
# `attnc bench` prints at its end: a step cut by its timeout prints nothing, so debug binaries do not fit)
# Session 18 (decode, issue 12): work stealing (copy letter `n`, `decode_mma::COPY_STEAL`)
# against the default `efik`, one device call, most important first, each step only while
# the elapsed time is below BUDGET seconds (default 100):
#  1. B1 Hq32 Hkv8 Lkv131072 Lq1 contiguous: `efik`, `efikn` and `efikln` (records) at
#     three steal splits (static percent : stolen tiles), rotated rounds;
#  2. B8 Lkv32768 Lq1 / Lq4 / Lq16 contiguous, `efik` vs `efikn`, rotated rounds;
#  3. SDPA cuDNN / flash anchors of the same shapes (scripts/decode_bench_torch.py --no-flex);
#  4. gpu_decode (every test, one process each, ATTNC_DECODE_COPY=efikn) and
#     compute-sanitizer memcheck + racecheck on gpu_decode_steal and gpu_decode_sanitize;
#  5. B64 Lkv8192 (one split: `n` does not apply) and B8 Lq1 paged 16, as time allows.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d18; mkdir -p $B /tmp/d18o
# the final check: ATTNC_BIN / GPU_DECODE_BIN name already unpacked binaries (no .xz here),
# TESTS=0 / ANCHORS=0 leave out steps 4 / 3, e.g. (from the repo root, warm machine)
#   ATTNC_BIN=/tmp/fb/attnc GPU_DECODE_BIN=/tmp/fa/gpu_decode BUDGET=80 TESTS=0 bash scripts/decode-s18.sh
for f in "$here"/*.xz; do [ -e "$f" ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=${ATTNC_BIN:-$B/attnc}; T=${GPU_DECODE_BIN:-$B/gpu_decode}
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d18 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d18o}; BUDGET=${BUDGET:-106}; t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
ok() { [ "$(el)" -lt "$1" ]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
bench() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
echo "=== 1. B1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_TRACE=1 ATTNC_DECODE_BENCH_COPY=efik,efikn,efikln ATTNC_DECODE_BENCH_STEAL=${STEALS:-80:8,70:4} \
  bench 30 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous | tee $O/b1.txt
if ok $((BUDGET - 28)); then
echo "=== 2. B8 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=4 ATTNC_DECODE_BENCH_COPY=efik,efikn \
  bench 28 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --decode-shape 8,32,8,16,32768 --kv-cache contiguous | tee $O/b8.txt
fi
if [ "${ANCHORS:-1}" = 1 ] && ok $((BUDGET - 18)); then
echo "=== 3. SDPA anchors ($(el) s)"
PYTHONUNBUFFERED=1 timeout 18 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning | tee $O/anchors.txt
fi
if [ "${TESTS:-1}" = 1 ] && ok $((BUDGET - 12)); then
echo "=== 4. tests ($(el) s)"; tt=$(( BUDGET - $(el) - 3 )); [ $tt -gt 60 ] && tt=60
mkdir -p /tmp/d18t
for t in $($T --list 2>/dev/null | sed -n 's/: test$//p'); do
  case $t in gpu_decode_copy_variants) export ATTNC_DECODE_TEST_COPIES="0,eik/efik";; *) unset ATTNC_DECODE_TEST_COPIES;; esac
  ( ATTNC_DECODE_COPY=efikn timeout $tt $T --exact $t > /tmp/d18t/$t.log 2>&1; echo "rc=$?" >> /tmp/d18t/$t.log ) &
done
unset ATTNC_DECODE_TEST_COPIES
for tool in memcheck racecheck; do
  for t in gpu_decode_steal gpu_decode_sanitize; do
    ( ATTNC_DECODE_COPY=efikn timeout $tt compute-sanitizer --tool $tool --print-limit 5 $T --exact $t > /tmp/d18t/san_${tool}_$t.log 2>&1; echo "rc=$?" >> /tmp/d18t/san_${tool}_$t.log ) &
  done
done
wait
for f in /tmp/d18t/*.log; do echo "$(basename $f .log): $(grep -hE "test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|rc=" $f | tr '\n' ' ' | cut -c1-220)"; done
cp /tmp/d18t/*.log $O/ 2>/dev/null
echo "tests done ($(el) s)"
fi
if ok $((BUDGET - 10)); then
echo "=== 5. B64, B8 Lq1 paged 16 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=efik,efikn \
  bench $(( BUDGET - $(el) )) dense.attn --decode-shape 64,32,8,1,8192 --decode-shape 8,32,8,1,32768 --kv-cache paged --page-size 16 | tee $O/b64.txt
fi
echo "total $(el) s"
