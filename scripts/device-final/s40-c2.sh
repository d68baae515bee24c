#!/usr/bin/env bash
# Session 40 call 2 (carry .bin-s40: release `gpu`, `gpu_bench`, `gpu_decode` of the
# session's document tiles with persistent CTAs walking the list head by head): the
# document-tiled forward against the oracle (persistent and one CTA a tile), its bench on
# the anchors' ids, and the decode suite's gpu_decode_examples alone (call 1 cut it at
# 120 s while other suites shared the GPU).
set -u
mkdir -p /tmp/s40
for n in gpu gpu_bench gpu_decode; do xz -dc .bin-s40/$n.xz > /tmp/s40/$n; chmod +x /tmp/s40/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
for pers in 1 0; do
  ATTNC_FWD_DOC_PERSISTENT=$pers timeout 100 /tmp/s40/gpu --exact gpu_doc_tiles_match_oracle > $OUT/doc_tiles$pers.log 2>&1; echo "doc_tiles persistent=$pers rc=$? ($((SECONDS - t0)) s)"
  grep -E "test result|panicked|FAILED" $OUT/doc_tiles$pers.log | head -4 | cut -c1-200
  grep -c "  ok " $OUT/doc_tiles$pers.log
done
t0=$SECONDS
ATTNC_DOC_CASES=b2,gqa ATTNC_DOC_ROUNDS=7 timeout 120 /tmp/s40/gpu_bench --ignored --exact gpu_bench_doc_tiles --nocapture > $OUT/doc_bench.log 2>&1; echo "doc_bench rc=$? ($((SECONDS - t0)) s)"
grep -E "^doc_causal|panicked" $OUT/doc_bench.log | sed 's/| all/\n   all/' | cut -c1-400
t0=$SECONDS
timeout 240 /tmp/s40/gpu_decode --exact gpu_decode_examples > $OUT/gpu_decode_examples.log 2>&1; echo "gpu_decode_examples rc=$? ($((SECONDS - t0)) s) $(grep -E 'test result|panicked' $OUT/gpu_decode_examples.log | head -2 | tr '\n' ' ')"
