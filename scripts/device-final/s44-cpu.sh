#!/usr/bin/env bash
# Session 44: the CPU forward at 16 threads on the GPU machine's host CPU (the "CPU
# backend" section's 16-thread gap: dense D128 L4096 0.84x SDPA). Two attnc builds of
# this session: attnc-old (q, k, v copied into f32 buffers every call) and attnc-new (f32
# tensors read in place), interleaved at the default tiles; then attnc-new's tile sizes
# (ATTNC_CPU_TILES=QB,KB); SDPA on the CPU (scripts/cpu_tiles_torch.py) before and after,
# same call. Carry .bin-s44 (attnc-old.xz, attnc-new.xz: release `attnc`, stripped).
set -u
mkdir -p /tmp/s44
for b in old new; do xz -dc .bin-s44/attnc-$b.xz > /tmp/s44/attnc-$b; chmod +x /tmp/s44/attnc-$b; done
lscpu | grep -E "Model name|^CPU\(s\)|L2|L3"
python3 scripts/cpu_tiles_torch.py 16 2>&1 | grep -v Warning
run() { # binary tiles file attention L D
  local bin=$1 t=$2 f=$3 a=$4 L=$5 D=$6
  echo -n "$bin tiles $t: "
  ATTNC_CPU_TILES=$t timeout 60 /tmp/s44/attnc-$bin bench examples/$f --attention $a --backend cpu --b 1 --h 8 --lq $L --d $D --threads 16 --iters 3 2>&1 | tail -1 | sed 's/compile.*ms\/call/ms\/call/' | cut -c1-200
}
for L in 2048 4096; do
  for D in 64 128; do
    for v in "dense.attn dense" "causal.attn causal_attention"; do
      set -- $v
      for r in 1 2; do run old 64,64 $1 $2 $L $D; run new 64,64 $1 $2 $L $D; done
      for t in 128,64 64,128 128,128 32,128 256,64; do run new $t $1 $2 $L $D; done
    done
  done
done
python3 scripts/cpu_tiles_torch.py 16 2>&1 | grep -v Warning
echo "== done ($SECONDS s)"
