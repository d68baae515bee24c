#!/usr/bin/env bash
# Session 22 final call (cold; carry .bin-s22: xz'd release gpu_decode, gpu_backward, gpu_bench and attnc of
# main after the helpers landed, plus helpers' fc.sh under .bin-s22/NAME/ when they left one):
# - gpu_decode (every test: the per-head combine `u` is the default for 4-16 rows now) and compute-sanitizer
#   memcheck / racecheck of gpu_decode_sanitize (Lq 4 and 16 on the default), in the background;
# - gpu_backward's reference / determinism / fully-masked tests and racecheck of the fused kernel (when
#   GPU_BWD=1: a helper changed a backward default);
# - issue 12's decode sweep on the default (contiguous + paged 16/128; 3 rotated rounds) and SDPA cuDNN / flash;
# - gpu_bench's document + causal forward (the anchors' 8 sorted uniform ids) at B2 H16 L8192 D128 and GQA;
# - each helper's fc.sh (FC="bwdp22 dec22 bwd64n", those present).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4; mkdir -p $B /tmp/f4o; O=${OUT:-/tmp/f4out}; mkdir -p $O
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
( export ATTNC_CACHE_DIR=/tmp/attnc-cache-t1
  timeout ${DEC_T:-330} $B/gpu_decode > /tmp/f4o/gpu_decode.log 2>&1; echo "rc=$?" >> /tmp/f4o/gpu_decode.log ) &
( sleep 5; export ATTNC_CACHE_DIR=/tmp/attnc-cache-t2
  timeout 90 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize > /tmp/f4o/memcheck_decode.log 2>&1; echo "rc=$?" >> /tmp/f4o/memcheck_decode.log
  timeout 120 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize > /tmp/f4o/racecheck_decode.log 2>&1; echo "rc=$?" >> /tmp/f4o/racecheck_decode.log ) &
if [ "${GPU_BWD:-0}" = 1 ] && [ -x $B/gpu_backward ]; then
  ( sleep 8; export ATTNC_CACHE_DIR=/tmp/attnc-cache-t3
    for t in gpu_backward_samples_match_reference gpu_backward_is_deterministic gpu_backward_fully_masked_rows; do
      timeout 150 $B/gpu_backward --exact $t > /tmp/f4o/bwd_$t.log 2>&1; echo "rc=$?" >> /tmp/f4o/bwd_$t.log; done
    timeout 120 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_backward --exact gpu_backward_fused_sanitize > /tmp/f4o/racecheck_bwd.log 2>&1; echo "rc=$?" >> /tmp/f4o/racecheck_bwd.log ) &
fi
A=$B/attnc
echo "=== SDPA decode anchors ($(el) s)"
PYTHONUNBUFFERED=1 timeout 30 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning | cut -c1-200
echo "=== decode sweep, default, 3 rotated rounds ($(el) s)"
ATTNC_CACHE_DIR=/tmp/attnc-cache-b ATTNC_DECODE_BENCH_ROUNDS=3 timeout 150 $A bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 2>&1 | grep -E "^decode|rror" | cut -c1-300
echo "=== gpu_bench document + causal forward ($(el) s)"
[ -x $B/gpu_bench ] && ATTNC_CACHE_DIR=/tmp/attnc-cache-g ATTNC_BENCH_VARIANTS=doc_causal ATTNC_BENCH_DIMS=128,gqa timeout 90 $B/gpu_bench --ignored --nocapture 2>&1 | grep -E "TFLOP|panicked" | cut -c1-220
for n in ${FC:-bwdp22 dec22 bwd64n}; do [ -f $here/$n/fc.sh ] && { echo "=== fc.sh of $n ($(el) s)"; OUT=$O FC_S=${FC_S:-60} timeout ${FC_S:-60} bash $here/$n/fc.sh 2>&1 | tail -40 | cut -c1-240; }; done
echo "=== waiting for the tests ($(el) s)"; wait
for f in /tmp/f4o/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=" $f | tr '\n' ' ' | cut -c1-260)"; done
tar -C /tmp/f4o -cJf $O/f4_logs.tar.xz .
echo "total $(el) s"
