#!/usr/bin/env bash
# Session 26 call 3: paged tiles branching on the page size (one id a copy for pages of the
# tile's size, ids four at a time for smaller ones) — the paged-runs tests and memcheck, the
# package's chunked tests, the chunked-prefill timings twice (paged 16 / 128 beside
# contiguous and SDPA) and the serving loop. Carry .bin-s26 (gpu_decode.xz, this script, s26-lib.sh as lib.sh)
# and .bin-py26.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s26-lib.sh
. "$here/lib.sh"
s26_setup gpu_decode
t0=$(date +%s)
for t in gpu_decode_caller_prefill_runs gpu_decode_caller_runs_growing_lengths gpu_decode_prefill_runs; do
  ( timeout 200 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
( timeout 200 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/s_memcheck.log 2>&1; echo "rc=$?" >> $B/s_memcheck.log ) &
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
s26_summary $B/t_*.log $B/s_*.log
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py26/python-gpu-select.sh ) 2>&1 | tail -6
grep -hE "FAILED|Error|assert" /tmp/pyout/pytest_*.log 2>/dev/null | head -20
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
for round in 1 2; do
python3 .bin-py26/tree/python/bench/chunked_prefill.py --examples .bin-py26/tree/examples \
  8,32,8,256,8192 8,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-900
done
python3 .bin-py26/tree/python/bench/serve_loop.py --examples .bin-py26/tree/examples --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
