#!/usr/bin/env bash
# Session 28 call 3: the caller-buffer decode in two launches (the split-KV kernels compute
# each sequence's range from seq_lens themselves, `decode::COPY_DEVICE_RANGES`; no
# decode-ranges kernel) and V's second producer thread the paged runs' default — every
# gpu_decode test in parallel, memcheck / racecheck of the caller-buffer tests, the
# package's decode / chunked / paged / cache tests, then decode_host.py (a decode call's
# host time by step, SDPA beside it) and the serving loop. Carry .bin-s27b (gpu_decode.xz,
# a release build of the tree) and .bin-py27 (python-gpu-pack.sh of the tree). Logs
# under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s27b/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 300 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
for t in gpu_decode_caller_buffers gpu_decode_caller_prefill_runs; do
  for tool in memcheck racecheck; do
    ( timeout 300 compute-sanitizer --tool $tool $B/gpu_decode --exact $t > $OUT/s_${tool}_$t.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_$t.log ) &
  done
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-160)"
  grep -E "panicked" -A3 $f | head -5
done
here=$(cd .bin-py27 && pwd); root=$PWD
TESTS="decode or chunk or paged or cache" NPROC=6 TEST_TIMEOUT=200 bash .bin-py27/python-gpu-select.sh 2>&1 | tail -8
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"; export PYTHONPATH=/tmp/attnc-py
timeout 120 python3 python/bench/decode_host.py --iters 2000 --profile 0 2>&1 | grep -E " us$" | grep -E "wall|step|sdpa" > $OUT/decode_host.txt
grep -E "wall|step (read|call|ranges|launch)" $OUT/decode_host.txt | head -40
timeout 150 python3 python/bench/serve_loop.py --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-900
