#!/usr/bin/env bash
# Session 31 call 6: the block-table builder classifying document tiles from the ranges of
# their ids: call 3's script with the kernels' device times first and without
# gpu_decode_examples. Carry .bin-s31 (gpu.xz, gpu_decode.xz) and .bin-py31.
PROFILE=1 NO_EXAMPLES=1 exec bash "$(dirname "$0")/s31-c3.sh"
