#!/usr/bin/env bash
# Session 25 call 1 (carry .bin-s25: attnc.xz, gpu_decode.xz, this script as c1.sh,
# scripts/chunk_bench_torch.py, s25-chunk_causal.attn as chunk_causal.attn): chunked prefill — the split-KV kernel's mma.sync (efikjo, default) vs
# wgmma (efikjoq) copies; the prefill kernel on the same work (dense; causal via q + off >= kv);
# SDPA anchors. Tests of the chunked path with q first.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/cb; mkdir -p $B
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
export ATTNC_CACHE_DIR=/tmp/attnc-cache-s25 ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
t0=$(date +%s)
for t in gpu_decode_chunked_causal gpu_decode_chunked_sliding gpu_decode_chunked_document \
         gpu_decode_chunked_scores gpu_decode_caller_buffers; do
  ( ATTNC_DECODE_COPY=efikjoq timeout 90 $B/gpu_decode --exact $t > $B/q_$t.log 2>&1; echo "rc=$?" >> $B/q_$t.log ) &
done
wait; echo "tests(q): $(( $(date +%s) - t0 )) s"
for f in $B/q_*.log; do echo "== $(basename $f)"; grep -E "^test |test result|panicked|rc=" $f | cut -c1-300 | head -6; done
t0=$(date +%s)
S="--decode-shape 8,32,8,64,8192 --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,8192 --decode-shape 8,32,8,512,32768 --decode-shape 1,32,8,512,32768"
for r in 1 2; do for c in efikjo efikjoq; do
  echo "### dense copy=$c round $r"
  ATTNC_DECODE_COPY=$c $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 16 $S 2>&1 | grep -v "^$" | cut -c1-200
done; done
for c in efikjo efikjoq; do
  echo "### causal copy=$c"
  ATTNC_DECODE_COPY=$c $B/attnc bench examples/causal.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous --decode-shape 8,32,8,256,8192 --decode-shape 8,32,8,512,32768 2>&1 | cut -c1-200
done
echo "### prefill kernel, same work"
for s in "8 256 8192" "8 512 8192" "8 512 32768" "1 512 32768"; do set -- $s
  $B/attnc bench examples/dense.attn --backend cuda --dtype bf16 --d 128 --batch $1 --heads 32 --hkv 8 --lq $2 --lkv $3 --iters 20 2>&1 | grep -iE "ms|TFLOP" | head -3 | sed "s/^/dense B$1 Lq$2 Lkv$3: /"
  $B/attnc bench $here/chunk_causal.attn --backend cuda --dtype bf16 --d 128 --batch $1 --heads 32 --hkv 8 --lq $2 --lkv $3 --param off=$(( $3 - $2 )) --iters 20 2>&1 | grep -iE "ms|TFLOP" | head -3 | sed "s/^/causal B$1 Lq$2 Lkv$3: /"
done
echo "attnc bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
python3 $here/chunk_bench_torch.py 8,32,8,64,8192 8,32,8,256,8192 8,32,8,512,8192 8,32,8,512,32768 1,32,8,512,32768 2>&1 | grep -v Warning | cut -c1-300
echo "anchors: $(( $(date +%s) - t0 )) s"
[ -n "${OUT:-}" ] && cp $B/*.log "$OUT"/ 2>/dev/null; true
