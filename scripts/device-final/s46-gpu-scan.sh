#!/usr/bin/env bash
# Session 46: the diagonal scan (uniform reads for index paths through `kv - q`: T5) and
# the instruction cuts / two dQ writers / bulk statistics on capture-gradient bindings.
# Carry .bin-s46 (release gpu, gpu_backward test binaries and attnc of main, xz'd).
# 1. forward and backward uniform-read tests (T5 programs among them), capture gradients
#    on random shapes (default, then with ATTNC_BWD_CUTS=1 ATTNC_BWD_TWO_WRITERS=1
#    ATTNC_BWD_STATS_BULK=1), every example's backward, every example's forward;
# 2. forward / backward device time, uniform reads off / on (PART=1), and the options
#    (PART=2).
set -u
mkdir -p /tmp/s46
for b in gpu gpu_backward attnc; do xz -dc .bin-s46/$b.xz > /tmp/s46/$b; chmod +x /tmp/s46/$b; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t() { # binary test [env...]
  local bin=$1 name=$2; shift 2
  env "$@" timeout 240 /tmp/s46/$bin --exact $name > $OUT/$name$(echo "$@" | tr -dc 'A-Z1' | cut -c1-20).log 2>&1
  echo "$name $* rc=$?"; grep -hE "test result|panicked|kernels,|matched" $OUT/$name*.log | cut -c1-220 | tail -3
}
PART=${PART:-1}
if [ "$PART" = 1 ]; then
t gpu gpu_uniform_reads_match_oracle
t gpu_backward gpu_backward_uniform_reads
t gpu_backward gpu_backward_capture_grads
t gpu_backward gpu_backward_capture_grads ATTNC_BWD_CUTS=1 ATTNC_BWD_TWO_WRITERS=1 ATTNC_BWD_STATS_BULK=1
t gpu_backward gpu_backward_api_every_example
echo "demo d128: $(timeout 200 /tmp/s46/attnc demo --backends cuda --d 128 2>&1 | tail -2 | tr '\n' ' ')"
fi
A=/tmp/s46/attnc
B() { # label env... -- args
  local label=$1; shift; local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "$label: $(env "${envs[@]}" timeout 90 $A bench "$@" --backend cuda --dtype bf16 --iters 10 --grad 2>&1 | tail -1 | grep -o 'forward.*' | cut -c1-200)"
}
S128="--batch 2 --heads 16 --lq 8192 --d 128"; S64="--batch 4 --heads 16 --lq 4096 --d 64"
if [ "$PART" = 1 ]; then
for r in 1 2; do
  for a in t5_encoder t5_decoder; do
    for S in "$S128" "$S64"; do
      B "$a uni=0 $S" ATTNC_FWD_UNIFORM=0 ATTNC_BWD_UNIFORM=0 -- examples/t5_relative_bias.attn --attention $a $S
      B "$a uni=1 $S" ATTNC_FWD_UNIFORM=1 ATTNC_BWD_UNIFORM=1 -- examples/t5_relative_bias.attn --attention $a $S
    done
  done
done
fi
if [ "$PART" = 2 ]; then
for r in 1 2; do
  for f in "t5_relative_bias.attn --attention t5_encoder" "t5_relative_bias.attn --attention t5_decoder" "relative_bias_table.attn" "learned_bias.attn"; do
    for S in "$S128"; do
      B "$f default" X=0 -- examples/$f $S
      B "$f cuts" ATTNC_BWD_CUTS=1 -- examples/$f $S
      B "$f 2w+bulk" ATTNC_BWD_TWO_WRITERS=1 ATTNC_BWD_STATS_BULK=1 -- examples/$f $S
      B "$f all3" ATTNC_BWD_CUTS=1 ATTNC_BWD_TWO_WRITERS=1 ATTNC_BWD_STATS_BULK=1 -- examples/$f $S
    done
  done
done
fi
B "dense $S128" X=0 -- examples/dense.attn $S128
B "dense $S64" X=0 -- examples/dense.attn $S64
echo "== done ($SECONDS s)"
