#!/usr/bin/env bash
# Session 36 call 5 (cold; carry .bin-s36d: release `attnc` and gpu_backward of the fixes,
# the Morton sources): after call 1 found them —
#   * gpu_backward_padded_head_dims again (its decoding step synthesized a Q-shaped
#     capture over 3 rows instead of the cache's 160 logical positions: a test fault);
#   * Morton neighbourhood attention (LLVM 22's instcombine fixpoint check aborted the
#     process on the 64 x 64 canvas; every pipeline now runs without the check): `attnc
#     bench` of the two sources (known bits: the exact 21.5% / 6.2% of blocks) next to
#     compiled Flex (Triton) with its exact block mask (python/bench/morton_natten.py
#     --flex-only).
set -u
for n in attnc gpu_backward; do xz -dc .bin-s36d/$n.xz > /tmp/$n; chmod +x /tmp/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
echo "== padded: $(timeout 200 /tmp/gpu_backward --exact gpu_backward_padded_head_dims 2>&1 | grep -E 'test result|panicked' | tr '\n' ' ')"
echo "== morton: attnc (min of 3 x 10)"
for c in "morton_64x64_k7 --batch 4 --heads 16 --lq 4096" "morton_128x128_k15 --batch 1 --heads 16 --lq 16384"; do set -- $c; f=$1; shift
  ATTNC_BENCH_STAT=min timeout 60 /tmp/attnc bench .bin-s36d/$f.attn --backend cuda --dtype bf16 --d 128 --iters 10 "$@" 2>&1 | grep -E "TFLOP|rror" | cut -c1-220
done
echo "== morton: compiled Flex (Triton)"
(cd python/bench && PYTHONUNBUFFERED=1 timeout 150 python3 morton_natten.py --flex-only 64,64,7,4,16 128,128,15,1,16 2>&1 | grep -E "morton|Error|error" | tail -4)
