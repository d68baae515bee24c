#!/usr/bin/env bash
# Session 23 call C (carry .bin-s23: main's release gpu_backward with session 23's backward
# defaults: bwd_stats_bulk at D64 without a score function, the tile counter's persistent
# CTAs on D128 bands / tables, D64 tables and D64 causal):
# 1. the backward bench, new default against `default-P-b` (the defaults before),
#    interleaved x2: D64 dense, causal, document + causal, sliding 1024, ALiBi + causal;
#    D128 sliding 1024, document + causal;
# 2. every gpu_backward test on the new defaults, with compute-sanitizer racecheck and
#    memcheck of the fused kernel's sanitize test beside it.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4c; mkdir -p $B /tmp/f4co; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | cut -c1-220; }
echo "=== bench D64 ($(el) s)"
bb 60 c_d64 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full,causal,doc_causal,sliding1024,alibi_causal ATTNC_BWD_BENCH_CFG=default,default-P-b,default,default-P-b
echo "=== bench D128 ($(el) s)"
bb 40 c_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default-P-b,default,default-P-b
echo "=== tests ($(el) s)"
run() { local name=$1; shift; ( "$@" > /tmp/f4co/$name.log 2>&1; echo "rc=$?" >> /tmp/f4co/$name.log ) ; }
( export ATTNC_CACHE_DIR=/tmp/c1; run gpu_backward timeout 300 $G ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2
  run racecheck_bwd timeout 150 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize
  run memcheck_bwd timeout 120 compute-sanitizer --tool memcheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
wait
for f in /tmp/f4co/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"; done
grep -hE "^test .*(FAILED|ok)$" /tmp/f4co/gpu_backward.log | tr '\n' ' ' | cut -c1-1500; echo
tar -C /tmp/f4co -cJf $O/c_logs.tar.xz .
echo "total $(el) s"
