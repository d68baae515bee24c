#!/usr/bin/env bash
# Session 25 call 2 (carry .bin-s25: attnc.xz, gpu_decode.xz, scripts/chunk_bench_torch.py): chunked prefill's batched runs on the prefill kernel (ATTNC_DECODE_PREFILL
# unset = the rule, 0 = split-KV) — GPU tests, then timings alone, SDPA anchors.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_CACHE_DIR=/tmp/attnc-cache-s25 ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
t0=$(date +%s)
for t in gpu_decode_prefill_runs gpu_decode_chunked_causal gpu_decode_chunked_sliding gpu_decode_chunked_document \
         gpu_decode_chunked_scores gpu_decode_prefill_path gpu_decode_caller_buffers gpu_decode_examples gpu_decode_shapes; do
  ( timeout 150 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
( ATTNC_DECODE_PREFILL=1 timeout 150 $B/gpu_decode --exact gpu_decode_chunked_scores > $B/t_forced_scores.log 2>&1; echo "rc=$?" >> $B/t_forced_scores.log ) &
wait; echo "tests: $(( $(date +%s) - t0 )) s"
for f in $B/t_*.log; do echo "== $(basename $f)"; grep -E "^test |test result|panicked|rc=" $f | cut -c1-400 | head -6; done
t0=$(date +%s)
S="--decode-shape 8,32,8,128,8192 --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,8192 --decode-shape 8,32,8,512,32768 --decode-shape 1,32,8,256,32768 --decode-shape 1,32,8,512,32768"
for r in 1 2; do for p in auto 0; do
  echo "### dense prefill=$p round $r"
  if [ $p = auto ]; then e=""; else e="ATTNC_DECODE_PREFILL=0"; fi
  env $e $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 16 $S 2>&1 | grep -v "^$" | grep -v "^device" | cut -c1-200
done; done
for p in auto 0; do
  echo "### causal prefill=$p"
  if [ $p = auto ]; then e=""; else e="ATTNC_DECODE_PREFILL=0"; fi
  env $e $B/attnc bench examples/causal.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,32768 --decode-shape 1,32,8,512,32768 2>&1 | grep -v "^device" | cut -c1-200
done
echo "### D64: split-KV mma.sync (efikjo) / wgmma (default) / the rule"
S64="--decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,32768"
ATTNC_DECODE_PREFILL=0 ATTNC_DECODE_COPY=efikjo $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 64 --iters 20 --kv-cache contiguous $S64 2>&1 | grep -v "^device" | cut -c1-200
ATTNC_DECODE_PREFILL=0 $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 64 --iters 20 --kv-cache contiguous $S64 2>&1 | grep -v "^device" | cut -c1-200
$B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 64 --iters 20 --kv-cache contiguous $S64 2>&1 | grep -v "^device" | cut -c1-200
echo "### decode shapes unchanged (Lq 1/4/16, the rule does not apply)"
$B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,16,32768 2>&1 | grep -v "^device" | cut -c1-200
echo "attnc bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
python3 $here/chunk_bench_torch.py 8,32,8,128,8192 8,32,8,256,8192 8,32,8,512,8192 8,32,8,512,32768 1,32,8,256,32768 1,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-300
echo "anchors: $(( $(date +%s) - t0 )) s"
[ -n "${OUT:-}" ] && cp $B/*.log "$OUT"/ 2>/dev/null; true
