#!/usr/bin/env bash
# On the GPU machine's host CPU: attnc's CPU backend (`attnc bench --backend cpu`) next to
# PyTorch SDPA and FlexAttention on the CPU, same shapes, f32, at 2 and 16 threads; the
# backward (`bench --grad`) next to SDPA's CPU backward at L2048 D64/128.
# Expects the release `attnc` binary at .bin/attnc(.xz). Output: stdout (+ $OUT/cpu_anchors.json).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.bin/attnc
[ -x "$bin" ] || { xz -dkf .bin/attnc.xz && chmod +x "$bin"; }
for t in ${ATTNC_CPU_THREADS:-2 16}; do
  for L in 2048 4096; do
    for D in 64 128; do
      for v in "dense.attn dense" "causal.attn causal_attention" "sliding_window.attn sliding_window --param window=1024" \
               "alibi_causal.attn alibi_causal" "softcap.attn softcap_causal" "document_causal.attn document_causal --docs 8"; do
        set -- $v
        f=$1; a=$2; shift 2
        "$bin" bench examples/$f --attention "$a" --backend cpu --b 1 --h 8 --lq $L --d $D --threads $t --iters 2 "$@"
      done
    done
  done
done
# the backward (issue 10): forward and backward timed separately, dense and causal
for t in ${ATTNC_CPU_THREADS:-2 16}; do
  for D in 64 128; do
    for v in "dense.attn dense" "causal.attn causal_attention"; do
      set -- $v
      "$bin" bench examples/$1 --attention "$2" --backend cpu --b 1 --h 8 --lq 2048 --d $D --threads $t --iters 2 --grad
    done
  done
done
# one process per thread count (changing torch's thread count after FlexAttention has
# compiled crashed PyTorch 2.11 once); FlexAttention-on-CPU only at 2 threads (its first
# call compiles for ~40 s)
for t in ${ATTNC_CPU_THREADS:-2 16}; do
  if [ "$t" = 2 ]; then python3 scripts/cpu_bench_torch.py "$t"; else python3 scripts/cpu_bench_torch.py "$t" noflex; fi
done
