#!/usr/bin/env bash
# Session 26 call 2: page ids loaded once per paged tile — the paged-runs tests (memcheck,
# racecheck), the package's chunked tests, the chunked-prefill timings (paged 16 / 128 beside
# contiguous and SDPA) and the serving loop (lengths 256..8192, and 128..1024 where the host
# time per call shows). Carry .bin-s26 (gpu_decode.xz, this script, s26-lib.sh as lib.sh) and .bin-py26.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s26-lib.sh
. "$here/lib.sh"
s26_setup gpu_decode
t0=$(date +%s)
for t in gpu_decode_caller_prefill_runs gpu_decode_caller_runs_growing_lengths gpu_decode_prefill_runs gpu_decode_caller_buffers; do
  ( timeout 200 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
for tool in memcheck racecheck; do
  ( timeout 200 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/s_$tool.log 2>&1; echo "rc=$?" >> $B/s_$tool.log ) &
done
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
s26_summary $B/t_*.log $B/s_*.log
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="chunked or paged" NPROC=4 TEST_TIMEOUT=200 bash .bin-py26/python-gpu-select.sh ) 2>&1 | tail -7
grep -hE "FAILED|Error|assert" /tmp/pyout/pytest_*.log 2>/dev/null | head -20
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
python3 .bin-py26/tree/python/bench/chunked_prefill.py --examples .bin-py26/tree/examples \
  8,32,8,256,8192 8,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-900
python3 .bin-py26/tree/python/bench/serve_loop.py --examples .bin-py26/tree/examples --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
python3 .bin-py26/tree/python/bench/serve_loop.py --examples .bin-py26/tree/examples --steps 8 --chunk 128 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
