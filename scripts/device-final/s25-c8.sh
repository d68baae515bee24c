#!/usr/bin/env bash
# Session 25 call 8: paged runs as an opt-in — gpu_decode_caller_prefill_runs (and memcheck of
# it), the package's chunked-prefill test with and without ATTNC_DECODE_PAGED_RUNS=1.
# Carry .bin-s25 (gpu_decode.xz, this script) and .bin-py25.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
xz -dc "$here/gpu_decode.xz" > $B/gpu_decode; chmod +x $B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-s25 ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( timeout 150 $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/t_runs.log 2>&1; echo "rc=$?" >> $B/t_runs.log ) &
( timeout 150 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/m_runs.log 2>&1; echo "rc=$?" >> $B/m_runs.log ) &
( timeout 150 $B/gpu_decode --exact gpu_decode_prefill_runs > $B/t_pr.log 2>&1; echo "rc=$?" >> $B/t_pr.log ) &
site=/tmp/attnc-py; rm -rf $site
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target $site .bin-py25/wheels/attnc-*.whl
cd .bin-py25/tree
( PYTHONPATH=$site timeout 150 python3 -m pytest python/tests/test_cuda.py -q -p no:cacheprovider -k chunked_prefill_with_host > $B/py_default.log 2>&1; echo "rc=$?" >> $B/py_default.log ) &
( ATTNC_DECODE_PAGED_RUNS=1 PYTHONPATH=$site timeout 150 python3 -m pytest python/tests/test_cuda.py -q -p no:cacheprovider -k chunked_prefill_with_host > $B/py_paged.log 2>&1; echo "rc=$?" >> $B/py_paged.log ) &
wait; echo "tests: $(( $(date +%s) - t0 )) s"
for f in $B/*.log; do echo "== $(basename $f): $(grep -E "^test result|ERROR SUMMARY|passed|failed|rc=" $f | tr '\n' ' ' | cut -c1-200)"; grep -E "panicked|Error|assert" -A2 $f | head -6; done
[ -n "${OUT:-}" ] && cp $B/*.log "$OUT"/ 2>/dev/null; true
