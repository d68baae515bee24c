#!/usr/bin/env bash
# Session 30 call 4: gpu_decode_caller_prefill_device with its D64 cases, under memcheck
# and racecheck too; chunked prefill over sequences of different lengths (--vary): the
# host lengths' runs decline (one sequence each), so the call takes the device-lengths
# launch, against the split-KV kernel it took before (ATTNC_DECODE_PREFILL=0). Carry
# .bin-s30 and .bin-py30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
root=$PWD
TESTS="" bash .bin-py30/python-gpu-select.sh > /dev/null 2>&1
cd "$root"; export PYTHONPATH=/tmp/attnc-py
S="8,32,8,256,8192 16,32,8,256,4096 4,64,8,512,16384"
echo "== vary: host / device lengths"
timeout 150 python3 python/bench/chunked_prefill.py --vary --rounds 2 --only host_lens,device_lens,paged16_host_lens $S 2>&1 | grep -v Warning
echo "== vary: the split-KV kernel (ATTNC_DECODE_PREFILL=0)"
ATTNC_DECODE_PREFILL=0 timeout 150 python3 python/bench/chunked_prefill.py --vary --rounds 2 --only host_lens,device_lens $S 2>&1 | grep -v Warning
# (the tests after the bench, on an otherwise idle GPU for the bench)
( timeout 300 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_dev.log 2>&1; echo "rc=$?" >> $OUT/t_dev.log ) &
for tool in memcheck racecheck; do
  ( timeout 420 compute-sanitizer --tool $tool --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
      > $OUT/$tool.log 2>&1; echo "rc=$?" >> $OUT/$tool.log ) &
done
wait $(jobs -p); echo "all: $(( $(date +%s) - t0 )) s"
echo "== test: $(grep -E "^test result|^rc=" $OUT/t_dev.log | tr '\n' ' ')"; grep -E "panicked" -A4 $OUT/t_dev.log | head -8
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
echo "== racecheck: $(grep -E "RACECHECK SUMMARY|^rc=|test result" $OUT/racecheck.log | tr '\n' ' ' | cut -c1-300)"
