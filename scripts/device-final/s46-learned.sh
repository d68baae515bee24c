#!/usr/bin/env bash
# Session 46: positions per element path (`ElemCtx::fresh_pos`) for capture-gradient
# kernels without a uniform path too (a learned [B, H, Q, KV] bias): FRESH_ALL=1 switches
# it on in the measured build. Capture gradients on random shapes with it, then the
# learned bias's backward at B1 H16 L4096 with / without, each in its own kernel cache.
# Carry .bin-s46e (gpu_backward, attnc).
set -u
mkdir -p /tmp/s46e
for b in gpu_backward attnc; do xz -dc .bin-s46e/$b.xz > /tmp/s46e/$b; chmod +x /tmp/s46e/$b; done
export ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
FRESH_ALL=1 ATTNC_CACHE_DIR=/tmp/c-all timeout 120 /tmp/s46e/gpu_backward --exact gpu_backward_capture_grads > $OUT/capture_all.log 2>&1
echo "capture_grads FRESH_ALL rc=$?"; grep -E "test result|panicked" $OUT/capture_all.log | tail -2
for r in 1 2; do
  for S in "--batch 1 --heads 16 --lq 4096 --d 128" "--batch 1 --heads 16 --lq 4096 --d 64"; do
    for v in X FRESH_ALL; do
      echo "$v learned_bias $S: $(env $v=1 ATTNC_CACHE_DIR=/tmp/c-$v timeout 90 /tmp/s46e/attnc bench examples/learned_bias.attn $S --backend cuda --dtype bf16 --iters 10 --grad 2>&1 | tail -1 | grep -o 'forward [0-9.]* ms.*backward [0-9.]* ms')"
    done
  done
done
echo "== done ($SECONDS s)"
