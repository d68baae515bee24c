#!/usr/bin/env bash
# Session 25 call 7: chunked prefill's runs on a paged cache (the warp-specialized forward's
# KvCache::Paged) — gpu_decode's chunked / caller tests and memcheck, the package's decode
# tests, then the Python chunked-prefill timings (contiguous and paged 128, SDPA beside) and
# the kernel times of the caller path's split-KV chunked prefill (torch.profiler).
# Carry .bin-s25 (gpu_decode.xz, prof.py, this script) and .bin-py25 (scripts/python-gpu-pack.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
xz -dc "$here/gpu_decode.xz" > $B/gpu_decode; chmod +x $B/gpu_decode
export ATTNC_CACHE_DIR=/tmp/attnc-cache-s25 ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
t0=$(date +%s)
for t in gpu_decode_caller_prefill_runs gpu_decode_prefill_runs gpu_decode_caller_buffers gpu_decode_chunked_causal \
         gpu_decode_chunked_sliding gpu_decode_chunked_document gpu_decode_chunked_scores gpu_decode_prefill_path \
         gpu_decode_examples gpu_decode_shapes gpu_decode_wgmma; do
  ( timeout 200 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
( timeout 200 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/m_caller_runs.log 2>&1; echo "rc=$?" >> $B/m_caller_runs.log ) &
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $B/t_*.log $B/m_*.log; do echo "== $(basename $f): $(grep -E "^test result|ERROR SUMMARY|rc=" $f | tr '\n' ' ' | cut -c1-160)"; grep -E "panicked" -A3 $f | head -5; done
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="decode or chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py25/python-gpu-select.sh ) 2>&1 | tail -12
grep -hE "FAILED|Error|assert" /tmp/pyout/pytest_*.log 2>/dev/null | head -20
t0=$(date +%s)
export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache
python3 .bin-py25/tree/python/bench/chunked_prefill.py --examples .bin-py25/tree/examples \
  8,32,8,256,8192 8,32,8,512,32768 1,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-700
echo "python bench: $(( $(date +%s) - t0 )) s"
python3 $here/prof.py $PWD/examples 2>&1 | grep -v Warning | cut -c1-200
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
