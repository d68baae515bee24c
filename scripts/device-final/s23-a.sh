#!/usr/bin/env bash
# Session 23 call A (benchmarks, the GPU alone; carry .bin-s23: xz'd release gpu_backward,
# gpu_decode, gpu_bench and attnc of main with bwdp22 / bwd64n / dec22 landed):
# 1. bwdp22's +P (bwd_persist_dyn, fixed per-tile end-record count) against the f64
#    reference on 3 CTAs (gpu_backward_persist_dyn; it hung before the fix): if it passes,
#    the backward bench D128 default vs +P interleaved on dense, causal, ALiBi + causal,
#    sliding 1024, document + causal; else only dense;
# 2. bwd64n's +b (bwd_stats_bulk) vs default: D64 dense x3 / causal x2, D128 dense / causal;
# 3. SDPA decode anchors, issue 12's decode sweep on the default (u at 4-16 rows);
# 4. gpu_bench's document + causal forward (the anchors' sorted ids), B2 H16 L8192 D128 + GQA;
# 5. dec22's v / w against the default at B8 Lq16 (scripts/decode-s22b.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4; mkdir -p $B /tmp/f4o; O=${OUT:-/tmp/f4out}; mkdir -p $O
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | cut -c1-220; }
echo "=== +P: gpu_backward_persist_dyn (3 CTAs, then bit-identical runs) ($(el) s)"
ATTNC_CACHE_DIR=/tmp/ct timeout 60 $G --exact gpu_backward_persist_dyn > $O/t_persist_dyn.log 2>&1; prc=$?; echo "rc=$prc" >> $O/t_persist_dyn.log
grep -hE "persist-dyn|test result|panicked|FAILED|rc=" $O/t_persist_dyn.log | cut -c1-200
echo "=== +P bench D128 ($(el) s)"
if [ $prc = 0 ]; then
  bb 90 bwdp22_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
  bb 30 bwdp22_d64 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=causal,doc_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
else
  bb 30 bwdp22_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
fi
echo "=== +b bench ($(el) s)"
bb 20 bwd64n_d64_dense ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b,default,default+b
bb 15 bwd64n_d64_causal ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b
bb 20 bwd64n_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal ATTNC_BWD_BENCH_CFG=default,default+b
A=$B/attnc
echo "=== SDPA decode anchors ($(el) s)"
PYTHONUNBUFFERED=1 timeout 30 python3 scripts/decode_bench_torch.py --no-flex 2>&1 | grep -v Warning | cut -c1-200
echo "=== decode sweep, default, 2 rotated rounds ($(el) s)"
ATTNC_CACHE_DIR=/tmp/attnc-cache-b ATTNC_DECODE_BENCH_ROUNDS=2 timeout 130 $A bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 2>&1 | grep -E "^decode|rror" | cut -c1-300
echo "=== gpu_bench document + causal forward ($(el) s)"
ATTNC_CACHE_DIR=/tmp/attnc-cache-g ATTNC_BENCH_VARIANTS=doc_causal ATTNC_BENCH_DIMS=128,gqa timeout 80 $B/gpu_bench --ignored --nocapture 2>&1 | grep -E "TFLOP|panicked" | cut -c1-220
echo "=== dec22: v / w vs default, B8 Lq16 ($(el) s)"
OUT=$O FC_S=${FC_S:-70} timeout ${FC_S:-70} bash scripts/decode-s22b.sh 2>&1 | tail -40 | cut -c1-240
tar -C $O -cJf /tmp/a_logs.tar.xz . && mv /tmp/a_logs.tar.xz $O/
echo "total $(el) s"
