#!/usr/bin/env bash
# Session 27 call 3: how the paged runs' time scales with the page size (pages of 16, 32, 64,
# 128, 256 rows: 8, 4, 2, 1, 1 TMA boxes per slab of a 128-row kv tile) next to a contiguous
# cache, dense and causal, python/bench/prefill_once.py from this checkout on .bin-py27's
# wheel (ATTNC_PAGED_PREFETCH=0: main's kernels). Carry .bin-py27.
set -u
here=$(cd .bin-py27 && pwd); root=$PWD
. "$here/python-gpu-lib.sh"
pygpu_install > /dev/null 2>&1; cd "$root"
export ATTNC_PAGED_PREFETCH=0 ATTNC_CACHE_DIR=/tmp/attnc-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
for round in 1; do
  for kind in dense causal; do
    for lay in contiguous paged16 paged32 paged64 paged128 paged256; do
      r=$(timeout 60 python3 python/bench/prefill_once.py $lay --kind $kind --calls 20 2>&1 | grep -E "^(contiguous|paged)")
      echo "$r" | python3 -c "import sys,statistics as s; l=sys.stdin.read().split(); v=[float(x) for x in l[3:]][5:]; print('round $round', ' '.join(l[:3]), f'min {min(v):.1f} median {s.median(v):.1f}')"
    done
  done
done
