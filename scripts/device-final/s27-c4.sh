#!/usr/bin/env bash
# Session 27 call 4: V's copies from a second producer thread on the paged runs' static
# schedules (`PtxOptions::v_producer`, ATTNC_DECODE_V_PRODUCER=1) — prefill_once.py dense
# A/B (pages of 16 twice, 32 once, with and without), gpu_decode's caller runs test (dense
# added: the static schedule; every other case with the second thread), memcheck of it,
# then pages of 128 and a contiguous cache, and decode_host.py (its steps by host_trace). Carry
# .bin-s27b (gpu_decode.xz, a release build of main) and .bin-py27 (python-gpu-pack.sh of main).
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s27b/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
here=$(cd .bin-py27 && pwd); root=$PWD
. "$here/python-gpu-lib.sh"
pygpu_install > /dev/null 2>&1; cd "$root"
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
once() {
  r=$(ATTNC_DECODE_V_PRODUCER=$2 timeout 40 python3 python/bench/prefill_once.py $1 --calls 20 2>&1 | grep -E "^(contiguous|paged)")
  echo "$r" | python3 -c "import sys,statistics as s; l=sys.stdin.read().split(); v=[float(x) for x in l[3:]][5:]; print('v_producer=$2', ' '.join(l[:3]), f'min {min(v):.1f} median {s.median(v):.1f}')"
}
for vp in 0 1 0 1; do once paged16 $vp; done
for vp in 0 1; do once paged32 $vp; done
timeout 60 $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/t.log 2>&1
echo "== test rc=$? $(grep -E '^test result' $B/t.log)"; grep -A4 panicked $B/t.log | head -8
timeout 60 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/m.log 2>&1
echo "== memcheck rc=$? $(grep -E 'ERROR SUMMARY|^test result' $B/m.log | tr '\n' ' ')"
once paged128 1; once contiguous 1
# where a decode call's host time goes, step by step (`_attnc.host_trace`; the wheel from
# main after 97662e8)
timeout 120 python3 python/bench/decode_host.py --iters 2000 --profile 0 2>&1 | grep -E " us$" | grep -E "wall|step|sdpa"
