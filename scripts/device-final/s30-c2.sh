#!/usr/bin/env bash
# Session 30 call 2: gpu_decode_caller_prefill_device (its paged case no longer asks for a
# length past a paged cache's larger capacity) and its memcheck; the package's chunked /
# graph tests (the new device-lengths graph capture); python/bench/chunked_prefill.py
# with rounds in rotated order (host vs device lengths). Carry .bin-s30 and .bin-py30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( timeout 300 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_dev.log 2>&1; echo "rc=$?" >> $OUT/t_dev.log ) &
( timeout 400 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/memcheck.log 2>&1; echo "rc=$?" >> $OUT/memcheck.log ) &
( timeout 400 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/racecheck.log 2>&1; echo "rc=$?" >> $OUT/racecheck.log ) &
root=$PWD
( TESTS="chunked or graph or clamped" NPROC=4 TEST_TIMEOUT=300 bash .bin-py30/python-gpu-select.sh > $OUT/py.log 2>&1 ) &
wait $(jobs -p); echo "tests: $(( $(date +%s) - t0 )) s"
echo "== test: $(grep -E "^test result|^rc=" $OUT/t_dev.log | tr '\n' ' ')"; grep -E "panicked" -A4 $OUT/t_dev.log | head -8
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
echo "== racecheck: $(grep -E "HAZARD|RACECHECK SUMMARY|^rc=|test result" $OUT/racecheck.log | tr '\n' ' ' | cut -c1-300)"
tail -6 $OUT/py.log
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
cd "$root"; export PYTHONPATH=/tmp/attnc-py
timeout 200 python3 python/bench/chunked_prefill.py --rounds 3 --only host_lens,device_lens,paged128_device_lens,paged16_device_lens \
  8,32,8,512,8192 8,32,8,256,8192 8,32,8,128,8192 2>&1 | grep -v Warning
echo "total: $(( $(date +%s) - t0 )) s"
# the same call's split-KV kernel on device lengths (the prefill paths off)
ATTNC_DECODE_PREFILL=0 timeout 100 python3 python/bench/chunked_prefill.py --only device_lens 8,32,8,512,8192 \
  8,32,8,256,8192 8,32,8,128,8192 2>&1 | grep -v Warning
echo "total: $(( $(date +%s) - t0 )) s"
