#!/usr/bin/env bash
# Session 30 call 1: chunked prefill with the lengths on the device on the prefill kernel
# (`device_lens`). The caller-buffer gpu_decode tests (the new
# gpu_decode_caller_prefill_device among them) each in its own process, memcheck of the
# new test; the package's decode / chunked / paged / graph tests; then
# python/bench/chunked_prefill.py (host vs device lengths next to SDPA). Carry .bin-s30 and
# .bin-py30. Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in gpu_decode_caller_prefill_device gpu_decode_caller_prefill_runs gpu_decode_caller_buffers \
         gpu_decode_caller_runs_d64 gpu_decode_caller_runs_growing_lengths gpu_decode_examples; do
  ( timeout 300 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
( timeout 400 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/memcheck.log 2>&1; echo "rc=$?" >> $OUT/memcheck.log ) &
root=$PWD
( TESTS="decode or chunked or paged or graph or cache" NPROC=6 TEST_TIMEOUT=300 bash .bin-py30/python-gpu-select.sh > $OUT/py.log 2>&1 ) &
wait $(jobs -p); echo "tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|^rc=" $f | tr '\n' ' ' | cut -c1-110)"
  grep -E "panicked" -A4 $f | head -8
done
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
tail -6 $OUT/py.log
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
cd "$root"; export PYTHONPATH=/tmp/attnc-py
timeout 150 python3 python/bench/chunked_prefill.py 8,32,8,128,8192 8,32,8,256,8192 8,32,8,512,8192 \
  1,32,8,512,32768 8,32,8,512,32768 2>&1 | grep -v Warning
echo "total: $(( $(date +%s) - t0 )) s"
