#!/usr/bin/env bash
# Session 23 call B (GPU tests, in parallel; carry .bin-s23 as call A):
# - gpu_decode, every test (the per-head combine `u` the default for 4-16 rows since
#   session 22) and compute-sanitizer memcheck / racecheck of gpu_decode_sanitize;
# - gpu_backward, every test on main's defaults (bwd_persist_dyn and bwd_stats_bulk landed
#   off: the backward PTX of the defaults is byte-identical, the snapshots say; this run
#   also covers gpu_backward_persist_dyn), then under ATTNC_BWD_TEST_CFG=default+P and
#   default+b: samples, determinism, fully-masked rows, and racecheck of the fused kernel.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/f4; mkdir -p $B; O=${OUT:-/tmp/f4out}; mkdir -p $O /tmp/f4o
for f in "$here"/*.xz; do [ -x $B/$(basename "$f" .xz) ] || xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() { local name=$1; shift; ( "$@" > /tmp/f4o/$name.log 2>&1; echo "rc=$?" >> /tmp/f4o/$name.log ) ; }
( export ATTNC_CACHE_DIR=/tmp/c1; run gpu_decode timeout ${DEC_T:-360} $B/gpu_decode ) &
( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2
  run memcheck_decode timeout 100 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize
  run racecheck_decode timeout 130 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_decode --exact gpu_decode_sanitize ) &
( sleep 5; export ATTNC_CACHE_DIR=/tmp/c3; run gpu_backward timeout ${BWD_T:-400} $B/gpu_backward ) &
for c in P b; do
  ( sleep 8; export ATTNC_CACHE_DIR=/tmp/c4$c ATTNC_BWD_TEST_CFG=default+$c
    for t in gpu_backward_samples_match_reference gpu_backward_is_deterministic gpu_backward_fully_masked_rows; do
      run "bwd_${c}_$t" timeout 110 $B/gpu_backward --exact $t; done
    run "racecheck_bwd_$c" timeout 120 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_backward --exact gpu_backward_fused_sanitize ) &
done
wait
for f in /tmp/f4o/*.log; do echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"; done
tar -C /tmp/f4o -cJf $O/b_logs.tar.xz .
echo "total $(el) s"
