#!/usr/bin/env bash
# The CPU backward of document masks with and without document tiles
# (`ATTNC_FWD_DOC_TILES=0` turns them off, forward and backward), interleaved rounds of
# `attnc bench --grad` on one machine: document + causal at D64 and D128, + a sliding
# window of 256, ALiBi + a window of 512 (16 heads), B1 L2048 f32, 8 sorted ids per
# sequence (`--docs 8`).
#   bash scripts/cpu_doc_bwd_bench.sh [THREADS] [ROUNDS] [ATTNC_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-3}
bin=${3:-target/release/attnc}
for r in $(seq 1 "$rounds"); do
  for env in 1 0; do
    echo "-- round $r doc_tiles $env"
    ATTNC_FWD_DOC_TILES=$env "$bin" bench examples/document_causal.attn --attention document_causal --grad --threads "$threads" --iters 5 --lq 2048 --d 64 | tail -1
    ATTNC_FWD_DOC_TILES=$env "$bin" bench examples/document_causal.attn --attention document_causal --grad --threads "$threads" --iters 5 --lq 2048 --d 128 | tail -1
    ATTNC_FWD_DOC_TILES=$env "$bin" bench examples/document_sliding_causal.attn --grad --threads "$threads" --iters 5 --lq 2048 --d 64 --param window=256 | tail -1
    ATTNC_FWD_DOC_TILES=$env "$bin" bench examples/document_alibi.attn --grad --threads "$threads" --iters 5 --lq 2048 --d 64 --param window=512 --heads 16 | tail -1
  done
done
