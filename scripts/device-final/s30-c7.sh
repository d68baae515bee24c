#!/usr/bin/env bash
# Session 30 call 7 (final check, main f991d1f: the D256 path and the review): call 5's
# check (every gpu_decode test in its own process, the package's whole CUDA test file in 8
# processes) on the newer tree. Carry .bin-s30 and .bin-py30. Logs under $OUT.
exec bash "$(dirname "$0")/s30-c5.sh"
