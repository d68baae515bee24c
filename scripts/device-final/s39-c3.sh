#!/usr/bin/env bash
# Session 39 call 3b (carry .bin-s39: release `gpu` and `gpu_decode` of main with the
# uniform-read paths as the binding defaults): what call 3 did not reach — the `gpu`
# suite after gpu_closed_form_matches_oracle (option sweeps, D256, JIT) — and the decode
# suite's prefill-kernel paths (chunked prefill through for_binding: every example's
# score over logical positions, relative tables among them), in parallel.
set -u
mkdir -p /tmp/s39
for n in gpu gpu_decode; do xz -dc .bin-s39/$n.xz > /tmp/s39/$n; chmod +x /tmp/s39/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
skip=""
for t in gpu_samples_match_oracle gpu_uniform_reads_match_oracle gpu_all_partial_maps_match_oracle \
  gpu_fully_masked_rows_give_zero_and_neg_inf gpu_negative_and_zero_scale_match_oracle \
  gpu_checked_mode_reports_out_of_range_reads gpu_block_tables_match_brute_force \
  gpu_forward_reuses_and_rebuilds_tables gpu_forward_with_gpu_tables_matches_oracle \
  gpu_checked_mode_with_gpu_tables gpu_closed_form_matches_oracle; do skip="$skip --skip $t"; done
(timeout 230 /tmp/s39/gpu $skip > $OUT/gpu_rest.log 2>&1; echo "gpu rc=$?" >> $OUT/gpu_rest.log) &
for t in gpu_decode_examples gpu_decode_prefill_path gpu_decode_chunked_scores gpu_decode_caller_prefill_device; do
  timeout 230 /tmp/s39/gpu_decode --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E 'test result|panicked' $OUT/$t.log | head -2 | tr '\n' ' ')"
done
wait
grep -E "^test .*(ok|FAILED)|test result|rc=" $OUT/gpu_rest.log | cut -c1-110 | tail -22
grep -hE "FAILED|panicked|mismatch" $OUT/*.log | head -8
