#!/usr/bin/env bash
# Session 26 call 1: paged runs by default (the producer zeroes the V rows past Lkv of a
# paged tile) — every gpu_decode test (NaN in every cache slot past a sequence's length),
# memcheck + racecheck + synccheck of the caller runs, the package's decode / chunked tests,
# the chunked-prefill timings (paged 128 now on the runs) and the serving loop (a new length
# every step; with ATTNC_DECODE_REBIND=1 the bind per length it replaced). Carry .bin-s26 (gpu_decode.xz, this script, s26-lib.sh as lib.sh) and .bin-py26 (python-gpu-pack.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s26-lib.sh
. "$here/lib.sh"
s26_setup gpu_decode
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 240 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
for tool in memcheck racecheck synccheck; do
  ( timeout 240 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/s_$tool.log 2>&1; echo "rc=$?" >> $B/s_$tool.log ) &
done
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
s26_summary $B/t_*.log $B/s_*.log
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="decode or chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py26/python-gpu-select.sh ) 2>&1 | tail -8
grep -hE "FAILED|Error|assert" /tmp/pyout/pytest_*.log 2>/dev/null | head -20
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
t0=$(date +%s)
python3 .bin-py26/tree/python/bench/chunked_prefill.py --examples .bin-py26/tree/examples \
  8,32,8,256,8192 8,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-800
echo "chunked bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
python3 .bin-py26/tree/python/bench/serve_loop.py --examples .bin-py26/tree/examples --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
echo "serve loop: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
echo "== the same loop binding every new length anew (ATTNC_DECODE_REBIND=1)"
ATTNC_DECODE_REBIND=1 python3 .bin-py26/tree/python/bench/serve_loop.py --examples .bin-py26/tree/examples --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
echo "serve loop rebind: $(( $(date +%s) - t0 )) s"
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
