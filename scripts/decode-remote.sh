#!/usr/bin/env bash
# Decoding check on the GPU machine (packed by scripts/decode-check into a git-ignored
# folder of the main checkout, carried; run from the repo root): the GPU decode tests,
# then `attnc bench --decode` with each split-KV kernel forced (ATTNC_DECODE_KERNEL=simt,
# mma: dense, issue 12's shapes, contiguous and paged 16) and the automatic choice
# (causal, sliding window 4096, paged 128), then the SDPA cuDNN / flash anchors of the
# same shapes in the same call (decode_bench_torch.py --no-flex).
#   ATTNC_STEPS="tests bench anchors"   steps to run (default all)
#   ATTNC_TESTS=NAME                    one gpu_decode test (libtest filter; default all)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=/tmp/attnc-decode-bin; mkdir -p "$bin"
for f in "$here"/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
steps=${ATTNC_STEPS:-tests bench anchors}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
status=0
for s in $steps; do case $s in
  tests)
    echo "== gpu_decode =="; t0=$(date +%s)
    timeout "${ATTNC_TEST_TIMEOUT:-300}" "$bin/gpu_decode" ${ATTNC_TESTS:-} 2>&1 | grep -Ev "^\s*$" | tail -25; [ "${PIPESTATUS[0]}" = 0 ] || status=1
    echo "tests took $(( $(date +%s) - t0 )) s" ;;
  bench)
    echo "== attnc bench --decode =="
    for k in simt mma; do
      ATTNC_DECODE_KERNEL=$k timeout 100 "$bin/attnc" bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 16 2>&1 | grep -v "^device" | sed "s/^/$k /"
    done
    for v in "causal.attn" "sliding_window.attn --param window=4096"; do
      set -- $v; f=$1; shift
      timeout 60 "$bin/attnc" bench "examples/$f" --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 128 --decode-shape 8,32,8,1,32768 --decode-shape 8,32,8,4,32768 "$@" 2>&1 | grep -v "^device" | sed "s/^/auto /"
    done ;;
  anchors)
    echo "== anchors (torch, same call) =="
    PYTHONUNBUFFERED=1 timeout 90 python3 "$here/decode_bench_torch.py" --no-flex 2>&1 | grep -v Warning ;;
esac; done
exit $status
