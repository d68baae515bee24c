#!/usr/bin/env bash
# (packed as .bin-dec19/run.sh with release `attnc` and `gpu_decode` of branch dec19, xz; run from the repo root with carry [".bin-dec19"];
# `attnc bench` prints at its end: a step cut by its timeout prints nothing)
# Session 19 (decode, issue 12): balanced splits (copy letter `o`, `decode_mma::COPY_BALANCED`),
# splits that continue their streams (`p`, `COPY_STREAM`, not bit-reproducible) and the
# combine's early trigger (`j`) against the default `efik`, one device call, each step only
# while the elapsed time is below BUDGET seconds (default 100):
#  1. B1 Hq32 Hkv8 Lkv131072 Lq1 contiguous: efik, efiko, efikj, efikjo, efikp and efikjop
#     (stream 90:4 and 80:8), 7 rotated rounds;
#  2. SDPA cuDNN / flash anchors (scripts/decode_bench_torch.py --no-flex);
#  3. B8 Lkv32768 Lq1 / Lq4 / Lq16 contiguous: efik, efiko, efikp;
#  4. B8 Lq1 and B1, contiguous and paged 16: efik, efiko, efikp;
#  5. gpu_decode tests (ATTNC_DECODE_COPY=efiko; the new tests set their own letters) and
#     compute-sanitizer memcheck + racecheck on gpu_decode_balanced and gpu_decode_stream.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d19; mkdir -p $B /tmp/d19o
for f in "$here"/*.xz; do [ -e "$f" ] && xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/* 2>/dev/null
A=${ATTNC_BIN:-$B/attnc}; T=${GPU_DECODE_BIN:-$B/gpu_decode}
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d19 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d19o}; BUDGET=${BUDGET:-100}; t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
ok() { [ "$(el)" -lt "$1" ]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
bench() { local to=$1 f=$2; shift 2; timeout $to $A bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
echo "=== 1. B1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=7 ATTNC_DECODE_BENCH_COPY=${COPIES:-efik,efiko,efikj,efikjo,efikp,efikjop} ATTNC_DECODE_BENCH_STEAL=${STREAMS:-90:4,80:8} \
  bench 28 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous | tee $O/b1.txt
if [ "${ANCHORS:-1}" = 1 ] && ok $((BUDGET - 40)); then
echo "=== 2. SDPA anchors ($(el) s)"
PYTHONUNBUFFERED=1 timeout 16 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning | tee $O/anchors.txt
fi
if ok $((BUDGET - 35)); then
echo "=== 3. B8 contiguous ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=4 ATTNC_DECODE_BENCH_COPY=efik,efiko,efikp \
  bench 18 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 --decode-shape 8,32,8,16,32768 --kv-cache contiguous | tee $O/b8.txt
fi
if ok $((BUDGET - 28)); then
echo "=== 4. paged 16: B8 Lq1, B1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=efik,efiko,efikp \
  bench 16 dense.attn --decode-shape 8,32,8,1,32768 --decode-shape 1,32,8,1,131072 --kv-cache contiguous,paged --page-size 16 | tee $O/paged.txt
fi
if [ "${TESTS:-1}" = 1 ] && ok $((BUDGET - 8)); then
echo "=== 5. tests ($(el) s)"; tt=$(( BUDGET - $(el) - 2 )); [ $tt -gt 60 ] && tt=60
mkdir -p /tmp/d19t
for t in gpu_decode_balanced gpu_decode_stream gpu_decode_combine_launches gpu_decode_shapes gpu_decode_long gpu_decode_sanitize gpu_decode_caller_buffers gpu_decode_trace gpu_decode_chunked_causal; do
  ( ATTNC_DECODE_COPY=efiko timeout $tt $T --exact $t > /tmp/d19t/$t.log 2>&1; echo "rc=$?" >> /tmp/d19t/$t.log ) &
done
for tool in memcheck racecheck; do
  for t in gpu_decode_balanced gpu_decode_stream; do
    ( timeout $tt compute-sanitizer --tool $tool --print-limit 5 $T --exact $t > /tmp/d19t/san_${tool}_$t.log 2>&1; echo "rc=$?" >> /tmp/d19t/san_${tool}_$t.log ) &
  done
done
wait
for f in /tmp/d19t/*.log; do echo "$(basename $f .log): $(grep -hE "test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|rc=" $f | tr '\n' ' ' | cut -c1-220)"; done
cp /tmp/d19t/*.log $O/ 2>/dev/null
echo "tests done ($(el) s)"
fi
echo "total $(el) s"
