#!/usr/bin/env bash
# Session 42 call 1 (carry .bin-pycuda packed from af23aa5): the Python block-mask /
# document / Flex tests on session 41's last refactors (LaunchArgs::doc_tiles,
# Bound::load_backward_kernels), not yet run on a GPU.
set -u
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest ($((SECONDS - t0)) s)"
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py" pygpu_pytest "block_mask or doc or graph" 8 240
echo "== done ($((SECONDS - t0)) s)"
