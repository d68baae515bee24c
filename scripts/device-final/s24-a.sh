#!/usr/bin/env bash
# Session 24 call A (carry .bin-s24: main's release gpu_backward with the tile counter's
# persistent CTAs on D128 bands / tables and D64 tables as well, session 23's held-back
# default):
# 1. the backward bench: D128 sliding 1024 and document + causal, D64 document + causal,
#    the new default against `default-P` (the grid's order), interleaved x2; where +P was
#    not measured yet (D64 sliding 1024, ALiBi + causal, soft-cap + causal; D128 soft-cap +
#    causal) `default` against `default+P` x2; bulk statistics at D128 (dense, causal)
#    `default` against `default+b` x3;
# 2. every gpu_backward test on the new defaults (gpu_backward_convert_timeout among
#    them), compute-sanitizer racecheck and memcheck of the fused kernel's sanitize test.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4c; mkdir -p $B /tmp/f4co; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | cut -c1-220; }
echo "=== bench D128 new default vs -P ($(el) s)"
bb 50 a_d128P ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default-P,default,default-P
echo "=== bench D64 new default vs -P; +P where not measured ($(el) s)"
bb 50 a_d64P ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=doc_causal ATTNC_BWD_BENCH_CFG=default,default-P,default,default-P
bb 80 a_d64p ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
bb 40 a_d128p ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=softcap_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
echo "=== bench D128 +b ($(el) s)"
bb 80 a_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b,default,default+b
echo "=== tests ($(el) s)"
run() { local name=$1; shift; ( "$@" > /tmp/f4co/$name.log 2>&1; echo "rc=$?" >> /tmp/f4co/$name.log ) ; }
( export ATTNC_CACHE_DIR=/tmp/c1; run gpu_backward timeout 300 $G ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2
  run racecheck_bwd timeout 150 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize
  run memcheck_bwd timeout 120 compute-sanitizer --tool memcheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
wait
for f in /tmp/f4co/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"; done
grep -hE "^test .*(FAILED|ok)$" /tmp/f4co/gpu_backward.log | tr '\n' ' ' | cut -c1-1500; echo
grep -h -A3 "convert_timeout" /tmp/f4co/gpu_backward.log | head -20
tar -C /tmp/f4co -cJf $O/a_logs.tar.xz .
echo "total $(el) s"
