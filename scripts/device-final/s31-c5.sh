#!/usr/bin/env bash
# Session 31 call 5: the block-table builder on 32 warps per CTA (and 8 rows a step): call
# 3's script with the kernels' device times (torch.profiler) first. Carry .bin-s31 (gpu.xz,
# gpu_decode.xz) and .bin-py31.
PROFILE=1 exec bash "$(dirname "$0")/s31-c3.sh"
