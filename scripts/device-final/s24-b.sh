#!/usr/bin/env bash
# Session 24 call B (carry .bin-s24: main's release gpu_backward with session 24's
# defaults: the tile counter on every band / table and D64's causal-type bindings, bulk
# statistics on D128 dense as well):
# 1. the backward bench: D128 dense new default against `default-b`, x2; bulk statistics
#    where not measured (D128 sliding 1024 and document + causal; D64 sliding 1024,
#    document + causal, ALiBi + causal, soft-cap + causal), `default` against
#    `default+b`, x2;
# 2. every gpu_backward test on the new defaults, compute-sanitizer racecheck and memcheck
#    of the fused kernel's sanitize test (a band and a block table among its cases).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4c; mkdir -p $B /tmp/f4co; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
G=$B/gpu_backward
bb() { local to=$1 log=$2; shift 2; env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1; echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | cut -c1-200; }
echo "=== bench D128 dense default vs -b ($(el) s)"
bb 50 b_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full ATTNC_BWD_BENCH_CFG=default,default-b,default,default-b
echo "=== +b on bands, tables, D64 score functions ($(el) s)"
bb 50 b_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b
bb 80 b_d64b ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b
echo "=== tests ($(el) s)"
run() { local name=$1; shift; ( "$@" > /tmp/f4co/$name.log 2>&1; echo "rc=$?" >> /tmp/f4co/$name.log ) ; }
( export ATTNC_CACHE_DIR=/tmp/c1; run gpu_backward timeout 300 $G ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2
  run racecheck_bwd timeout 150 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize
  run memcheck_bwd timeout 120 compute-sanitizer --tool memcheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
wait
for f in /tmp/f4co/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"; done
grep -hE "^test .*(FAILED|ok)$" /tmp/f4co/gpu_backward.log | tr '\n' ' ' | cut -c1-1500; echo
grep -h -A3 "convert_timeout" /tmp/f4co/gpu_backward.log | head -8
tar -C /tmp/f4co -cJf $O/b_logs.tar.xz .
echo "total $(el) s"
