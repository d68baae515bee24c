#!/usr/bin/env bash
# Session 43 call 2 (carry .bin-pycuda: bash scripts/python-gpu-pack.sh on main): the
# Python package's CUDA tests — session 42's test_block_mask_documents_with_fewer_queries_than_keys
# and session 43's port changes (torch.where branches written inside the branch; masking
# score_mods lifted into the mask) among them. Call 1 is s43-c1.sh (the Rust suites).
set -u
export ATTNC_CACHE_DIR=/tmp/attnc-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== python ($SECONDS s)"
here=$PWD/.bin-pycuda  # the lib reads its folder from $here
. .bin-pycuda/python-gpu-lib.sh
pygpu_install > /dev/null 2>&1
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py python/tests/test_autograd.py python/tests/test_head_dims.py" \
  pygpu_pytest "not (every_example_matches and f16 and not bf16)" 8 300
echo "== done ($SECONDS s)"
