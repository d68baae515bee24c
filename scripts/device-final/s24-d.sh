#!/usr/bin/env bash
# Session 24 call D (carry .bin-s24: main's release gpu_backward with session 24's final
# defaults): the backward bench on every variant at D128 (B2 H16 L8192) and D64 (B4 H16
# L4096), the defaults interleaved with `default+R24` (the writer warpgroup back at 24
# registers, the math at 240: the defaults before call C's decision) where the default has
# 40, and one pair of `+R32` / `+R40` where not measured.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4c; mkdir -p $B; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | sed -E 's/ \(pre.*density/ (/' | cut -c1-160; }
echo "=== D128 ($(el) s)"
bb 80 d_d128a ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R24,default+R32,default,default+R24
bb 80 d_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,softcap_causal,sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R32,default+R40,default
echo "=== D64 ($(el) s)"
bb 60 d_d64a ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R24,default,default+R24
bb 60 d_d64b ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default
echo "total $(el) s"
