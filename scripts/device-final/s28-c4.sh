#!/usr/bin/env bash
# Session 28 call 4: four producer threads on the paged runs (`PtxOptions::producers` = 4:
# K's boxes split between warps 0 and 2 of the producer warpgroup, V's between 1 and 3;
# ATTNC_DECODE_PRODUCERS=4) against two (the default) — gpu_decode's caller runs test (its
# cases on 1, 2 and 4 threads in turn) with memcheck and racecheck, then prefill_once.py
# A/B (2 / 4 alternated) for causal and dense at pages of 16, 32 and 128, contiguous once.
# Carry .bin-s27b (gpu_decode.xz, a release build of the tree) and .bin-py27
# (python-gpu-pack.sh of the tree). Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s27b/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
here=$(cd .bin-py27 && pwd); root=$PWD
. "$here/python-gpu-lib.sh"
pygpu_install > /dev/null 2>&1; cd "$root"
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t=gpu_decode_caller_prefill_runs
( timeout 120 $B/gpu_decode --exact $t > $OUT/t.log 2>&1; echo "rc=$?" >> $OUT/t.log ) &
for tool in memcheck racecheck; do
  ( timeout 200 compute-sanitizer --tool $tool $B/gpu_decode --exact $t > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log ) &
done
wait $(jobs -p)
for f in $OUT/t.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-160)"
  grep -E "panicked" -A3 $f | head -5
done
once() { # layout kind producers
  r=$(ATTNC_DECODE_PRODUCERS=$3 timeout 40 python3 python/bench/prefill_once.py $1 --kind $2 --calls 20 2>&1 | grep -E "^(contiguous|paged)")
  echo "$r" | python3 -c "import sys,statistics as s; l=sys.stdin.read().split(); v=[float(x) for x in l[3:]][5:]; print('producers=$3', ' '.join(l[:3]), f'min {min(v):.1f} median {s.median(v):.1f}')"
}
for pg in 16 32 128; do for kind in causal dense; do for n in 2 4 2 4; do once paged$pg $kind $n; done; done; done
once contiguous causal 2; once contiguous dense 2
