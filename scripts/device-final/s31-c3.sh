#!/usr/bin/env bash
# Session 31 call 3: the block-table builder's row loop 8 rows a step (their reads in
# flight together). The documents chunked-prefill bench and the documents forward through
# Python (table built every call) next to Flex (Triton); the block-table GPU tests, the
# documents decode tests, memcheck / racecheck of the builder's brute-force test and of the
# device-lengths documents test; the package's chunked-prefill tests.
# Carry .bin-s31 (gpu.xz, gpu_decode.xz) and .bin-py31.
set -u
B=/tmp/cb; mkdir -p $B
for t in gpu gpu_decode; do xz -dc .bin-s31/$t.xz > $B/$t; chmod +x $B/$t; done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
TESTS="chunked_prefill or document" NPROC=8 TEST_TIMEOUT=300 bash .bin-py31/python-gpu-select.sh 2>&1 | tail -4
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"
export PYTHONPATH=/tmp/attnc-py
cd .bin-py31/tree/python/bench
for shape in 8,32,8,512,8192 8,32,8,256,8192; do
  timeout 200 python3 chunked_prefill_documents.py --examples $root/examples $shape 2>&1 | grep -v Warning | tail -4
done
timeout 200 python3 chunked_prefill_documents.py --vary --examples $root/examples 8,32,8,512,8192 2>&1 | grep -v Warning | tail -3
# (PROFILE=1: the kernels' device times first, s31-c5 / s31-c6)
[ "${PROFILE:-0}" = 1 ] && timeout 300 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v -i warn
timeout 200 python3 doc_forward.py --examples $root/examples 2,16,8192 2>&1 | grep doc_forward
cd "$root"
unset PYTHONPATH
t0=$(date +%s)
run() { local name=$1; shift; ( timeout 400 "$@" > $OUT/$name.log 2>&1; echo "rc=$?" >> $OUT/$name.log ) & }
for t in gpu_block_tables_match_brute_force gpu_forward_with_gpu_tables_matches_oracle gpu_forward_reuses_and_rebuilds_tables \
         gpu_checked_mode_with_gpu_tables gpu_api_closed_form_and_table_agree_with_reference; do
  run t_$t $B/gpu --exact $t
done
# (NO_EXAMPLES=1: without gpu_decode_examples, s31-c6)
examples=gpu_decode_examples; [ "${NO_EXAMPLES:-0}" = 1 ] && examples=
for t in gpu_decode_caller_prefill_device_documents gpu_decode_chunked_document $examples gpu_decode_sanitize; do
  run t_$t $B/gpu_decode --exact $t
done
for tool in memcheck racecheck; do
  run s_${tool}_docs compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents
  run s_${tool}_tables compute-sanitizer --tool $tool $B/gpu --exact gpu_checked_mode_with_gpu_tables
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-150)"
  grep -E "panicked" -A4 $f | head -6
done
