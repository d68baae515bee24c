#!/usr/bin/env bash
# (packed as .bin-dec17/run.sh with release `attnc` and `gpu_decode` of branch dec17, xz; run from the repo root with carry [".bin-dec17"]; BUDGET=88 in session 17's call)
# Session 17 (decode, issue 12): one device call, most important first, each step only
# while the elapsed time is below BUDGET seconds (default 90):
#  1. B1 Hq32 Hkv8 Lkv131072 Lq1: per-CTA records (copy letter `l`) next to the default
#     `efik`, the wide combine `m`, the combine's early trigger `j`, `abcefik`, each chained and as the
#     merging fused kernel (now with its prologue before the wait, `e`), 5 rotated rounds;
#  2. B8 Lkv32768 Lq16 paged 16 / 128 vs contiguous, dense and causal, finely interleaved
#     (25 rounds of one event timing each, 2 warm rounds, every sample printed; the default
#     `efik` and `abcefik`, whose paged loop issues the contiguous loop's count), and dense
#     the old way (7 rounds of the median of 5) for comparison; nvidia-smi logs clocks;
#  3. gpu_decode (14 tests, one process each, with `ATTNC_DECODE_COPY=efiklm`: the default
#     plus the new letters) and compute-sanitizer on gpu_decode_sanitize (memcheck and
#     racecheck with efiklm, and with the merging fused kernel);
#  4. B1 split counts and Lkv 32768..262144 with records (the fixed cost per call), B8 Lq1;
#  5. SDPA cuDNN of B1 and B8 Lq1 / Lq16 (torch, same call).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/d17; mkdir -p $B /tmp/d17o
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_CACHE_DIR=/tmp/attnc-cache-d17 ATTNC_EXAMPLES=$PWD/examples
O=${OUT:-/tmp/d17o}; BUDGET=${BUDGET:-90}; t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
ok() { [ "$(el)" -lt "$1" ]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 100 > $O/smi.csv 2>&1 &
SMI=$!
bench() { local to=$1 f=$2; shift 2; timeout $to $B/attnc bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | grep -v "^device" | cut -c1-400; }
echo "=== 1. B1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=5 ATTNC_DECODE_BENCH_TRACE=1 ATTNC_DECODE_BENCH_COMBINE=chained,fused-chained ATTNC_DECODE_BENCH_COPY=efik,efikl,efikm,efikj,abcefik \
  bench 30 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous | tee $O/b1.txt
if ok $((BUDGET - 60)); then
echo "=== 2. Lq16 interleaved ($(el) s)"
for f in dense causal; do
  ATTNC_DECODE_BENCH_ROUNDS=25 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_SAMPLES=1 ATTNC_DECODE_BENCH_COPY=efik,abcefik \
    bench 25 $f.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128 | tee $O/lq16_$f.txt
done
ok $((BUDGET - 50)) && { echo "--- dense, 7 rounds x median of 5 ($(el) s)"; ATTNC_DECODE_BENCH_ROUNDS=7 bench 20 dense.attn --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128 | tee $O/lq16_dense_old.txt; }
fi
if ok $((BUDGET - 40)); then
echo "=== 3. tests ($(el) s)"; tt=$(( BUDGET - $(el) - 8 )); [ $tt -gt 60 ] && tt=60
mkdir -p /tmp/d17t
for t in $($B/gpu_decode --list 2>/dev/null | sed -n 's/: test$//p'); do
  case $t in gpu_decode_copy_variants) export ATTNC_DECODE_TEST_COPIES="0,eik,eikl,eiklm,abceik/efik,efikl/eikm,eiklm";; *) unset ATTNC_DECODE_TEST_COPIES;; esac
  ( ATTNC_DECODE_COPY=efiklm timeout $tt $B/gpu_decode --exact $t > /tmp/d17t/$t.log 2>&1; echo "rc=$?" >> /tmp/d17t/$t.log ) &
done
unset ATTNC_DECODE_TEST_COPIES
for tool in memcheck racecheck; do
  ( ATTNC_DECODE_COPY=efiklm timeout $tt compute-sanitizer --tool $tool --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize > /tmp/d17t/san_${tool}_efiklm.log 2>&1; echo "rc=$?" >> /tmp/d17t/san_${tool}_efiklm.log ) &
  ( ATTNC_DECODE_COMBINE=fused ATTNC_DECODE_COPY=efik timeout $tt compute-sanitizer --tool $tool --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize > /tmp/d17t/san_${tool}_fused.log 2>&1; echo "rc=$?" >> /tmp/d17t/san_${tool}_fused.log ) &
done
wait_tests() { for j in $(jobs -p); do [ "$j" = "$SMI" ] || wait $j; done; }
wait_tests
for f in /tmp/d17t/*.log; do echo "$(basename $f .log): $(grep -hE "test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|rc=" $f | tr '\n' ' ' | cut -c1-220)"; done
cp /tmp/d17t/*.log $O/ 2>/dev/null
echo "tests done ($(el) s)"
fi
if ok $((BUDGET - 15)); then
echo "=== 4. B1 splits and Lkv, B8 Lq1 ($(el) s)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_TRACE=1 ATTNC_DECODE_BENCH_SPLITS=0,16,32,44,66 ATTNC_DECODE_BENCH_COPY=efikl \
  bench 15 dense.attn --decode-shape 1,32,8,1,131072 --kv-cache contiguous | tee $O/b1_splits.txt
ok $((BUDGET - 8)) && ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_TRACE=1 ATTNC_DECODE_BENCH_COPY=efik,efikl \
  bench 15 dense.attn --decode-shape 1,32,8,1,32768 --decode-shape 1,32,8,1,65536 --decode-shape 1,32,8,1,262144 --decode-shape 8,32,8,1,32768 --kv-cache contiguous | tee $O/b1_lkv.txt
fi
if ok $((BUDGET - 12)); then
echo "=== 5. SDPA cuDNN ($(el) s)"
PYTHONUNBUFFERED=1 timeout $(( BUDGET - $(el) )) python3 - <<'PY' 2>&1 | grep -v Warning | tee $O/anchors.txt
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
def bench(fn, iters=50):
    for _ in range(5): fn()
    torch.cuda.synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts), sorted(ts)[1]
for (B, H, Hkv, Lq, Lkv) in [(1, 32, 8, 1, 131072), (8, 32, 8, 1, 32768), (8, 32, 8, 16, 32768), (1, 32, 8, 1, 131072)]:
    q = torch.randn(B, H, Lq, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, Lkv, 128, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
    def f():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    mn, md = bench(f); gb = 2 * B * Hkv * Lkv * 128 * 2 / 1e9
    print(f"sdpa_cudnn B{B} Hq{H} Hkv{Hkv} Lq{Lq} Lkv{Lkv}: min {mn*1e3:.1f} us ({gb/(mn*1e-3):.0f} GB/s) median-of-3 {md*1e3:.1f} us", flush=True)
PY
fi
kill $SMI 2>/dev/null
echo "smi samples: $(wc -l < $O/smi.csv); sm clock min/max: $(tail -n +2 $O/smi.csv | cut -d, -f2 | sort -n | sed -n '1p;$p' | tr '\n' ' ')"
echo "total $(el) s"
