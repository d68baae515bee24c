#!/usr/bin/env bash
# Session 25 call 3: chunked prefill's batched runs on caller buffers (Rust caller path and
# the Python package) — the whole gpu_decode suite, memcheck of the pitched path, the
# package's decode tests, then the Python chunked-prefill timings with SDPA in the same call.
# Carry .bin-s25 (gpu_decode.xz + this script) and .bin-py25 (scripts/python-gpu-pack.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
xz -dc "$here/gpu_decode.xz" > $B/gpu_decode; chmod +x $B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-s25 ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 200 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
( timeout 200 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/m_caller_runs.log 2>&1; echo "rc=$?" >> $B/m_caller_runs.log ) &
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $B/t_*.log $B/m_*.log; do echo "== $(basename $f): $(grep -E "^test result|ERROR SUMMARY|rc=" $f | tr '\n' ' ' | cut -c1-200)"; grep -E "panicked" -A2 $f | head -4; done
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="decode or chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py25/python-gpu-select.sh ) 2>&1 | tail -25
t0=$(date +%s)
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
python3 .bin-py25/tree/python/bench/chunked_prefill.py --examples .bin-py25/tree/examples \
  8,32,8,128,8192 8,32,8,256,8192 8,32,8,512,8192 8,32,8,512,32768 1,32,8,512,32768 1,64,8,256,32768 2>&1 | grep -v Warning | cut -c1-400
echo "python bench: $(( $(date +%s) - t0 )) s"
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
