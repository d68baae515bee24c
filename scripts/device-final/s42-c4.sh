#!/usr/bin/env bash
# Session 42 call 4 (carry .bin-pycuda packed from 6bc500b): the Python package's CUDA
# tests (test_cuda.py but the f16 half of the per-example forward sweep, test_flex.py,
# test_autograd.py, test_head_dims.py) on main with the backward's document tiles behind
# doc_backward_applies (the new test_block_mask_documents_with_fewer_queries_than_keys).
set -u
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest ($((SECONDS - t0)) s)"
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py python/tests/test_autograd.py python/tests/test_head_dims.py" \
  pygpu_pytest "not (every_example_matches and f16 and not bf16)" 8 400
echo "== done ($((SECONDS - t0)) s)"
