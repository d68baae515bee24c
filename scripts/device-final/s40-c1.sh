#!/usr/bin/env bash
# Session 40 call 1 (carry .bin-s40: release `gpu` and `gpu_bench` of the session's
# document-tiled forward, `gpu_decode` and `gpu_random` of main cfa2c78):
# 1. the document-tiled forward against the oracle (gpu_doc_tiles_match_oracle), then its
#    bench against the binding's own kernel on the anchors' ids (gpu_bench_doc_tiles);
# 2. session 39's unrun call 3 on the uniform-read defaults: the `gpu` suite after
#    gpu_closed_form_matches_oracle, the decode suite's prefill-kernel paths, and
#    generated programs through every GPU pass (gpu_random), in parallel.
set -u
mkdir -p /tmp/s40
for n in gpu gpu_bench gpu_decode gpu_random; do xz -dc .bin-s40/$n.xz > /tmp/s40/$n; chmod +x /tmp/s40/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
for pers in 1 0; do
  ATTNC_FWD_DOC_PERSISTENT=$pers timeout 100 /tmp/s40/gpu --exact gpu_doc_tiles_match_oracle > $OUT/doc_tiles$pers.log 2>&1; echo "doc_tiles persistent=$pers rc=$? ($((SECONDS - t0)) s)"
  grep -E "test result|panicked|FAILED|ok doc_causal case 0|ok doc_at_row case 4" $OUT/doc_tiles$pers.log | head -8 | cut -c1-200
done
t0=$SECONDS
timeout 150 /tmp/s40/gpu_bench --ignored --exact gpu_bench_doc_tiles --nocapture > $OUT/doc_bench.log 2>&1; echo "doc_bench rc=$? ($((SECONDS - t0)) s)"
grep -E "^doc_causal|panicked" $OUT/doc_bench.log | cut -c1-330
skip=""
for t in gpu_samples_match_oracle gpu_uniform_reads_match_oracle gpu_all_partial_maps_match_oracle \
  gpu_fully_masked_rows_give_zero_and_neg_inf gpu_negative_and_zero_scale_match_oracle \
  gpu_checked_mode_reports_out_of_range_reads gpu_block_tables_match_brute_force \
  gpu_forward_reuses_and_rebuilds_tables gpu_forward_with_gpu_tables_matches_oracle \
  gpu_checked_mode_with_gpu_tables gpu_closed_form_matches_oracle gpu_doc_tiles_match_oracle; do skip="$skip --skip $t"; done
left=$((560 - SECONDS)); echo "left for the rest: $left s"
(timeout $((left - 10)) /tmp/s40/gpu $skip > $OUT/gpu_rest.log 2>&1; echo "gpu rc=$?" >> $OUT/gpu_rest.log) &
(for t in gpu_decode_examples gpu_decode_prefill_path gpu_decode_chunked_scores gpu_decode_caller_prefill_device; do
  timeout 120 /tmp/s40/gpu_decode --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E 'test result|panicked' $OUT/$t.log | head -2 | tr '\n' ' ')"
done > $OUT/decode_summary.log) &
(ATTNC_CASES=${CASES:-20} timeout $((left - 10)) /tmp/s40/gpu_random --test-threads 1 > $OUT/gpu_random.log 2>&1; echo "gpu_random rc=$?" >> $OUT/gpu_random.log) &
wait
cat $OUT/decode_summary.log
grep -E "^test .*(ok|FAILED)|test result|rc=" $OUT/gpu_rest.log | cut -c1-110 | tail -22
grep -E "^test |cases passed|test result|rc=|failed" $OUT/gpu_random.log | cut -c1-160 | tail -20
grep -hE "FAILED|panicked|mismatch" $OUT/*.log | head -8
