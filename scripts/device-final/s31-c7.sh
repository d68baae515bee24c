#!/usr/bin/env bash
# Session 31 call 7: the builder's document fast path only where the closed form is
# trusted (call 6: with KvAllPartial set it said partial where the brute force says full).
# The block-table GPU tests and the documents decode tests. Carry .bin-s31.
set -u
B=/tmp/cb; mkdir -p $B
for t in gpu gpu_decode; do xz -dc .bin-s31/$t.xz > $B/$t; chmod +x $B/$t; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
run() { local name=$1; shift; ( timeout 300 "$@" > $OUT/$name.log 2>&1; echo "rc=$?" >> $OUT/$name.log ) & }
for t in gpu_block_tables_match_brute_force gpu_forward_with_gpu_tables_matches_oracle gpu_forward_reuses_and_rebuilds_tables \
         gpu_checked_mode_with_gpu_tables gpu_api_closed_form_and_table_agree_with_reference; do
  run t_$t $B/gpu --exact $t
done
for t in gpu_decode_caller_prefill_device_documents gpu_decode_chunked_document; do
  run t_$t $B/gpu_decode --exact $t
done
run s_memcheck_docs compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents
wait $(jobs -p)
for f in $OUT/t_*.log $OUT/s_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-150)"
  grep -E "panicked|failures:" -A6 $f | head -12
done
