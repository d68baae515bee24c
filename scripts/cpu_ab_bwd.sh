#!/usr/bin/env bash
# Two attnc binaries' CPU forward and backward, interleaved (session 45's A/B of the
# backward's diagonal tables): f32 B1 H8 L2048, D64 and D128, the relative-position
# examples, the learned per-element bias and dense (the control), ROUNDS rounds.
#   bash scripts/cpu_ab_bwd.sh OLD_BINARY NEW_BINARY [THREADS] [ROUNDS]
set -u
old=$1 new=$2 threads=${3:-2} rounds=${4:-3}
cd "$(dirname "$0")/.."
for r in $(seq "$rounds"); do
  for D in 64 128; do
    for f in "t5_relative_bias.attn --attention t5_encoder" "t5_relative_bias.attn --attention t5_decoder" \
             "relative_bias_table.attn" "learned_bias.attn" "dense.attn"; do
      for b in old new; do
        bin=$old; [ $b = new ] && bin=$new
        # shellcheck disable=SC2086
        echo "r$r D$D $b $f | $(timeout 120 "$bin" bench examples/$f --backend cpu --threads "$threads" --iters 3 --d $D --grad 2>&1 \
          | grep -o 'forward [0-9.]* ms.*backward [0-9.]* ms')"
      done
    done
  done
done
