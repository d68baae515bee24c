#!/usr/bin/env bash
# Session 44, second CPU call: the element-code changes at 16 threads on the GPU
# machine's host CPU — tanh by lanes (soft-cap) and relative-position values per diagonal
# (T5, relative-position table). Carry .bin-s44: attnc-old.xz (f32 inputs in place, before
# both changes), attnc-new.xz (with both), interleaved; SDPA on the CPU with the bias as a
# float mask in the same call (scripts/cpu_relbias_torch.py with its FlexAttention part
# skipped: torch.compile takes 10-40 s a score_mod).
set -u
mkdir -p /tmp/s44
for b in old new; do xz -dc .bin-s44/attnc-$b.xz > /tmp/s44/attnc-$b; chmod +x /tmp/s44/attnc-$b; done
run() { # binary file attention D [args]
  local bin=$1 f=$2 a=$3 D=$4; shift 4
  echo -n "$bin $a D$D: "
  timeout 60 /tmp/s44/attnc-$bin bench examples/$f --attention $a --backend cpu --b 1 --h 8 --lq 2048 --d $D --threads 16 --iters 3 "$@" 2>&1 | tail -1 | grep -o "forward.*\|[0-9.]* ms/call.*" | cut -c1-170
}
for r in 1 2; do
  for D in 64 128; do
    for bin in old new; do
      run $bin softcap.attn softcap_causal $D --grad
      run $bin t5_relative_bias.attn t5_encoder $D
      run $bin t5_relative_bias.attn t5_decoder $D
      run $bin relative_bias_table.attn relative_bias_table $D
      run $bin dense.attn dense $D
    done
  done
done
ATTNC_NO_FLEX=1 ATTNC_THREADS=16 timeout 120 python3 scripts/cpu_relbias_torch.py 2>&1 | grep -v Warn
echo "== done ($SECONDS s)"
