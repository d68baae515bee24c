#!/usr/bin/env bash
# Session 31 call 2: chunked prefill of document masks with the lengths on the device on
# the prefill kernel (a block table built on the GPU per sequence). The documents bench
# (attnc on the prefill kernel, then ATTNC_DECODE_PREFILL=0: the split-KV kernels, the
# path before; FlexAttention compiled next to it), then every gpu_decode test in its own
# process, memcheck / racecheck of the new test, the package's decode tests.
# Carry .bin-s31 (gpu_decode.xz) and .bin-py31.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s31/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
# the package (also what the benches import)
TESTS="chunked_prefill or decode_matches_oracle or decode_in_cuda_graph or device_lengths" NPROC=8 TEST_TIMEOUT=400 \
  bash .bin-py31/python-gpu-select.sh 2>&1 | tail -6
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"
export PYTHONPATH=/tmp/attnc-py
cd .bin-py31/tree/python/bench
for shape in 8,32,8,512,8192 8,32,8,256,8192; do
  timeout 200 python3 chunked_prefill_documents.py --examples $root/examples $shape 2>&1 | grep -v Warning | tail -5
  ATTNC_DECODE_PREFILL=0 timeout 100 python3 chunked_prefill_documents.py --no-flex --examples $root/examples $shape 2>&1 | grep attnc_
done
timeout 200 python3 chunked_prefill_documents.py --vary --examples $root/examples 8,32,8,512,8192 2>&1 | grep -v Warning | tail -4
ATTNC_DECODE_PREFILL=0 timeout 100 python3 chunked_prefill_documents.py --vary --no-flex --examples $root/examples 8,32,8,512,8192 2>&1 | grep attnc_
cd "$root"
unset PYTHONPATH
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 300 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
for tool in memcheck racecheck; do
  ( timeout 400 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log ) &
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-150)"
  grep -E "panicked" -A4 $f | head -6
done
