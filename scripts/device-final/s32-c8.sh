#!/usr/bin/env bash
# Session 32 call 8: compute-sanitizer memcheck and racecheck of the final block-table
# builder: the documents' chunked prefill (lengths on the device) and the forward with
# GPU-built tables. Carry .bin-s32 (gpu.xz, gpu_decode.xz).
set -u
B=/tmp/cb; mkdir -p $B
for n in gpu gpu_decode; do xz -dc .bin-s32/$n.xz > $B/$n; chmod +x $B/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
for tool in memcheck racecheck; do
  ( timeout 170 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents > $OUT/s_${tool}_docs.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_docs.log ) &
  ( timeout 170 compute-sanitizer --tool $tool $B/gpu --exact gpu_forward_with_gpu_tables_matches_oracle > $OUT/s_${tool}_tables.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_tables.log ) &
done
wait
for f in $OUT/s_*.log; do echo "== $(basename $f)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result|^rc=" $f | head -4; done
