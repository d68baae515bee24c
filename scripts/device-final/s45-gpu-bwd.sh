#!/usr/bin/env bash
# Session 45: diag_cse in the GPU backward (carry .bin-s45gb: release gpu_backward test
# binary and attnc of main, stripped and xz'd; the option is on for T5-type scores,
# ATTNC_BWD_DIAG / ATTNC_FWD_DIAG=0 turn it off):
# 1. every example's backward against the reference backend (gpu_backward_api_every_example),
#    capture gradients on random shapes incl. T5's tables and their determinism
#    (gpu_backward_capture_grads), the backward's samples against the reference;
# 2. T5's forward and backward time, the option off / on interleaved (`attnc bench
#    --backend cuda --grad`, device time), dense for scale.
set -u
mkdir -p /tmp/s45
for b in gpu_backward attnc; do xz -dc .bin-s45gb/$b.xz > /tmp/s45/$b; chmod +x /tmp/s45/$b; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_api_every_example gpu_backward_capture_grads gpu_backward_samples_match_reference; do
  timeout 200 /tmp/s45/gpu_backward --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$?"
  grep -E "test result|panicked|matched" $OUT/$t.log | cut -c1-200 | tail -3
done
A=/tmp/s45/attnc
for r in 1 2; do
  for shape in "--batch 2 --heads 16 --lq 8192 --d 128" "--batch 4 --heads 16 --lq 4096 --d 64"; do
    for a in t5_encoder t5_decoder; do
      for on in 0 1; do
        echo "diag=$on $a $shape: $(ATTNC_FWD_DIAG=$on ATTNC_BWD_DIAG=$on timeout 90 $A bench examples/t5_relative_bias.attn --attention $a --backend cuda --dtype bf16 --iters 10 --grad $shape 2>&1 | tail -1 | grep -o 'forward.*' | cut -c1-200)"
      done
    done
  done
done
for shape in "--batch 2 --heads 16 --lq 8192 --d 128" "--batch 4 --heads 16 --lq 4096 --d 64"; do
  echo "dense $shape: $(timeout 90 $A bench examples/dense.attn --backend cuda --dtype bf16 --iters 10 --grad $shape 2>&1 | tail -1 | grep -o 'forward.*' | cut -c1-200)"
done
echo "== done ($SECONDS s)"
