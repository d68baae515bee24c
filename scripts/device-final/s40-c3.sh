#!/usr/bin/env bash
# Session 40 call 3 (carry .bin-s40 of ea3f80a; on an H200, where issue 11's anchors were
# measured): the document-tiled forward against the block-table kernel on the anchors'
# ids (gpu_bench_doc_tiles, b2 and gqa, 7 interleaved rounds).
set -u
mkdir -p /tmp/s40
xz -dc .bin-s40/gpu_bench.xz > /tmp/s40/gpu_bench; chmod +x /tmp/s40/gpu_bench
export ATTNC_CACHE_DIR=/tmp/attnc-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ATTNC_DOC_CASES=b2,gqa ATTNC_DOC_ROUNDS=7 timeout 150 /tmp/s40/gpu_bench --ignored --exact gpu_bench_doc_tiles --nocapture > $OUT/doc_bench.log 2>&1; echo "doc_bench rc=$?"
grep -E "^doc_causal|panicked" $OUT/doc_bench.log | sed 's/| all/\n   all/' | cut -c1-420
