#!/usr/bin/env bash
# Session 45: PtxOptions::diag_cse on a GPU (carry .bin-s45cpu: attnc-new.xz = release
# attnc of main with the option, off by default; ATTNC_FWD_DIAG=1 turns it on).
# 1. every example's forward against the oracle with the option on (`attnc demo`, D64 and
#    D128: the wgmma and warp-specialized kernels), and off;
# 2. forward (and T5's backward) time, ATTNC_FWD_DIAG=0 / 1 interleaved, 2 rounds,
#    bf16 B2 H16 L8192 D128 and B4 H16 L4096 D64 (`attnc bench --backend cuda`, min of 20).
set -u
mkdir -p /tmp/s45
xz -dc .bin-s45cpu/attnc-new.xz > /tmp/s45/attnc; chmod +x /tmp/s45/attnc
A=/tmp/s45/attnc
export ATTNC_CACHE_DIR=/tmp/attnc-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for d in 128 64; do
  for on in 1 0; do
    echo "== demo D$d ATTNC_FWD_DIAG=$on: $(ATTNC_FWD_DIAG=$on timeout 120 $A demo --backends cuda --d $d 2>&1 | tail -3 | tr '\n' ' ' | cut -c1-300)"
  done
done
bench() { # file attention shape-args
  local f=$1 a=$2; shift 2
  for on in 0 1; do
    echo "diag=$on $a $*: $(ATTNC_FWD_DIAG=$on timeout 60 $A bench examples/$f --attention $a --backend cuda --dtype bf16 --iters 20 "$@" 2>&1 | grep -o '[0-9.]* ms/call.*TFLOP/s\|forward.*' | tail -1 | cut -c1-200)"
  done
}
for r in 1 2; do
  for shape in "--batch 2 --heads 16 --lq 8192 --d 128" "--batch 4 --heads 16 --lq 4096 --d 64"; do
    bench t5_relative_bias.attn t5_encoder $shape
    bench t5_relative_bias.attn t5_decoder $shape
    bench relative_bias_table.attn relative_bias_table $shape
    bench sliding_window.attn sliding_window $shape
    bench softcap_sliding.attn softcap_sliding $shape
    bench alibi_causal.attn alibi_causal $shape
  done
done
echo "== T5 backward (not changed by the option), D128 / D64"
for shape in "--batch 2 --heads 16 --lq 8192 --d 128" "--batch 4 --heads 16 --lq 4096 --d 64"; do
  for a in t5_encoder t5_decoder; do
    echo "$a $shape: $(timeout 90 $A bench examples/t5_relative_bias.attn --attention $a --backend cuda --dtype bf16 --iters 10 --grad $shape 2>&1 | tail -1 | cut -c1-250)"
  done
  echo "dense $shape: $(timeout 90 $A bench examples/dense.attn --backend cuda --dtype bf16 --iters 10 --grad $shape 2>&1 | tail -1 | cut -c1-250)"
done
echo "== done ($SECONDS s)"
bash scripts/device-final/s45-cpu.sh
