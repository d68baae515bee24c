#!/usr/bin/env bash
# Session 41 call 4 (carry .bin-pycuda of scripts/python-gpu-pack.sh): the block mask /
# document tests of the Python package after call 3's test fixes (test_cuda.py and
# test_flex.py), then A/B runs of the document step's backward settings on attnc's
# document tiles alone (python/bench/doc_tiles.py --only attnc_tiles, one process per
# setting; B2 H16 L8192 and B1 Hq32 Hkv8 L16384 D128).
set -u
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest ($((SECONDS - t0)) s)"
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py" pygpu_pytest "block_mask or doc or flex" 8 240
cd python/bench
run() {
  echo "-- $1 ($((SECONDS - t0)) s)"
  shift
  env "$@" timeout 150 "$py" doc_tiles.py --examples ../../examples --rounds 3 --only attnc_tiles,attnc_table 2>&1 \
    | grep -E "^doc_tiles|attnc_|Error|error" | cut -c1-200
}
run default X=1
run lpt ATTNC_BWD_LPT=1 ATTNC_BWD_WSCAN=0
run nopersist ATTNC_BWD_PERSIST=0
echo "-- nd ($((SECONDS - t0)) s)"
timeout 150 "$py" doc_tiles.py --examples ../../examples --rounds 3 --only attnc_tiles --nd 2>&1 \
  | grep -E "^doc_tiles|attnc_|Error|error" | cut -c1-200
echo "== done ($((SECONDS - t0)) s)"
