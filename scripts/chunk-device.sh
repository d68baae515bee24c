#!/usr/bin/env bash
# Session 10 (chunk): chunked prefill on the tensor-core split-KV kernel, one device call.
# Carry .bin-chunk (gpu_decode.xz, attnc.xz, this script, chunk_bench_torch.py); run from
# the checkout's root: bash .bin-chunk/chunk-device.sh. Tests first (each its own process,
# in parallel), then the timings alone on the GPU: attnc bench --decode (dense, contiguous
# and paged 16; causal contiguous), then the SDPA anchors on the same shapes.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_CACHE_DIR=/tmp/attnc-cache-chunk ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in gpu_decode_chunked_causal gpu_decode_chunked_sliding gpu_decode_chunked_document \
         gpu_decode_chunked_scores gpu_decode_prefill_path gpu_decode_caller_buffers; do
  ( timeout ${T:-60} $B/gpu_decode --exact $t > /tmp/cb/$t.log 2>&1; echo "rc=$?" >> /tmp/cb/$t.log ) &
done
wait; echo "tests: $(( $(date +%s) - t0 )) s"
for f in /tmp/cb/*.log; do echo "== $(basename $f)"; grep -E "^test |test result|panicked|rc=" $f | cut -c1-300 | head -8; done
t0=$(date +%s)
S="--decode-shape 8,32,8,64,8192 --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,8192 --decode-shape 8,32,8,256,32768 --decode-shape 8,32,8,512,32768"
$B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 16 $S 2>&1 | cut -c1-220
$B/attnc bench examples/causal.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,32768 2>&1 | cut -c1-220
echo "attnc bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
python3 $here/chunk_bench_torch.py 8,32,8,64,8192 8,32,8,256,8192 8,32,8,512,8192 8,32,8,256,32768 8,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-300
echo "anchors: $(( $(date +%s) - t0 )) s"
[ -n "${OUT:-}" ] && cp /tmp/cb/*.log "$OUT"/ 2>/dev/null; true
