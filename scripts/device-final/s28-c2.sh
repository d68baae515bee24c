#!/usr/bin/env bash
# Session 28 call 2: V's copies from a second producer thread under the dynamic scheduler
# too (causal-type masks; `produce_dynamic_v`), now the default on paged runs
# (ATTNC_DECODE_V_PRODUCER=0 turns it off). gpu_decode in full (the caller runs test:
# every other case on one producer), memcheck + racecheck of the caller runs test,
# prefill_once.py A/B (one / two producers, alternated) for causal at pages of 16, 32,
# 64, 128 and dense at 64, 128, contiguous once each, then the package's decode /
# chunked / paged tests. Carry .bin-s27b (gpu_decode.xz, a release build of the tree) and
# .bin-py27 (python-gpu-pack.sh of the tree). Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s27b/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
here=$(cd .bin-py27 && pwd); root=$PWD
. "$here/python-gpu-lib.sh"
pygpu_install > /dev/null 2>&1; cd "$root"
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
timeout 240 $B/gpu_decode --test-threads 2 > $OUT/gpu_decode.log 2>&1
echo "== gpu_decode rc=$? $(grep -E '^test result' $OUT/gpu_decode.log)"; grep -A4 panicked $OUT/gpu_decode.log | head -12
once() { # layout kind vp
  r=$(ATTNC_DECODE_V_PRODUCER=$3 timeout 40 python3 python/bench/prefill_once.py $1 --kind $2 --calls 20 2>&1 | grep -E "^(contiguous|paged)")
  echo "$r" | python3 -c "import sys,statistics as s; l=sys.stdin.read().split(); v=[float(x) for x in l[3:]][5:]; print('v_producer=$3', ' '.join(l[:3]), f'min {min(v):.1f} median {s.median(v):.1f}')"
}
for pg in 16 32 64 128; do for vp in 0 1 0 1; do once paged$pg causal $vp; done; done
for pg in 64 128; do for vp in 0 1 0 1; do once paged$pg dense $vp; done; done
once contiguous causal 1; once contiguous dense 1
timeout 90 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $OUT/m.log 2>&1
echo "== memcheck rc=$? $(grep -E 'ERROR SUMMARY|^test result' $OUT/m.log | tr '\n' ' ')"
timeout 150 compute-sanitizer --tool racecheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $OUT/r.log 2>&1
echo "== racecheck rc=$? $(grep -E 'RACECHECK SUMMARY|^test result' $OUT/r.log | tr '\n' ' ')"
TESTS="decode or chunk or paged or cache" NPROC=6 bash .bin-py27/python-gpu-select.sh 2>&1 | tail -8
