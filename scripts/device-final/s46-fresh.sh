#!/usr/bin/env bash
# Session 46: positions made in each element path of the capture-gradient backward
# (`ElemCtx::fresh_pos`): correctness (capture gradients on random shapes, the
# uniform-read programs, every example's backward) and time against the kernel without it
# (NOFRESH=1), and with the non-uniform full blocks on the partial path as well (HACK1=1);
# each variant in its own kernel cache. Carry .bin-s46c (gpu_backward, attnc).
set -u
mkdir -p /tmp/s46c
for b in gpu_backward attnc; do xz -dc .bin-s46c/$b.xz > /tmp/s46c/$b; chmod +x /tmp/s46c/$b; done
export ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_capture_grads gpu_backward_uniform_reads gpu_backward_api_every_example; do
  ATTNC_CACHE_DIR=/tmp/c-fresh timeout 200 /tmp/s46c/gpu_backward --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$?"
  grep -hE "test result|panicked|matched" $OUT/$t.log | cut -c1-200 | tail -2
done
A=/tmp/s46c/attnc
for r in 1 2; do
  for f in "t5_relative_bias.attn --attention t5_encoder" "t5_relative_bias.attn --attention t5_decoder" "relative_bias_table.attn"; do
    for S in "--batch 2 --heads 16 --lq 8192 --d 128" "--batch 4 --heads 16 --lq 4096 --d 64"; do
      for v in NOFRESH FRESH HACK1; do
        echo "$v $f $S: $(env $v=1 ATTNC_CACHE_DIR=/tmp/c-$v timeout 90 $A bench examples/$f $S --backend cuda --dtype bf16 --iters 10 --grad 2>&1 | tail -1 | grep -o 'backward [0-9.]* ms')"
      done
    done
  done
done
echo "== done ($SECONDS s)"
