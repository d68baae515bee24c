#!/usr/bin/env bash
# Session 24 call C (carry .bin-s24: main's release gpu_backward with bulk statistics on
# every D64 binding, and the writer warpgroup's register count as an option,
# `bwd_writer_regs` / the bench's `+R40`):
# 1. the backward bench, interleaved x2: D128 causal and ALiBi + causal `default`,
#    `default+R40`, `default+P+R40`; D128 sliding 1024, document + causal, D64 sliding
#    1024, document + causal, ALiBi + causal `default` against `default+R40`;
# 2. every gpu_backward test on the defaults, compute-sanitizer racecheck and memcheck of
#    the sanitize test; then the tests that take ATTNC_BWD_TEST_CFG with `default+R40`.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4c; mkdir -p $B /tmp/f4co; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | sed -E 's/ \(pre.*density/ (/' | cut -c1-160; }
echo "=== bench D128 R40 ($(el) s)"
bb 70 c_d128a ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default+P+R40,default,default+R40,default+P+R40
bb 50 c_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default,default+R40
echo "=== bench D64 R40 ($(el) s)"
bb 60 c_d64 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default,default+R40
echo "=== tests ($(el) s)"
run() { local name=$1; shift; ( "$@" > /tmp/f4co/$name.log 2>&1; echo "rc=$?" >> /tmp/f4co/$name.log ) ; }
( export ATTNC_CACHE_DIR=/tmp/c1; run gpu_backward timeout 250 $G ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2
  run racecheck_bwd timeout 100 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize
  run memcheck_bwd timeout 80 compute-sanitizer --tool memcheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
wait
echo "=== tests with default+R40 ($(el) s)"
( export ATTNC_CACHE_DIR=/tmp/c3 ATTNC_BWD_TEST_CFG=default+R40; run gpu_backward_R40 timeout 200 $G ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c4 ATTNC_BWD_TEST_CFG=default+R40
  run racecheck_R40 timeout 100 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
wait
for f in /tmp/f4co/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"; done
grep -hE "^test .*(FAILED|ok)$" /tmp/f4co/gpu_backward.log | tr '\n' ' ' | cut -c1-1500; echo
grep -hE "^test .*(FAILED|ok)$" /tmp/f4co/gpu_backward_R40.log | tr '\n' ' ' | cut -c1-1500; echo
grep -h -A2 "convert_timeout" /tmp/f4co/gpu_backward.log | head -4
tar -C /tmp/f4co -cJf $O/c_logs.tar.xz .
echo "total $(el) s"
