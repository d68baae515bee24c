#!/usr/bin/env bash
# The Python package's GPU check, run on the device machine (PyTorch + CUDA there; no
# Rust, no network). Everything it needs travels in one git-ignored folder that
# scripts/python-gpu-pack.sh fills here (default /work/main/.bin-pycuda):
#   wheels/attnc-*.whl     the abi3 wheel (scripts/python-wheel.sh, release)
#   wheels/*.whl           pytest and its dependencies (installed only if the device's
#                          Python has no pytest)
#   tree/                  python/{tests,bench,examples} and examples/ of the branch the
#                          wheel was built from (so the check does not depend on what the
#                          device's checkout holds)
#   python-gpu-remote.sh   this script
# Device command (from the repository root, carry [".bin-pycuda"]):
#   bash .bin-pycuda/python-gpu-remote.sh
# Steps, each logged under $OUT (default /tmp/attnc-out):
#   1. pip install --no-deps --no-index --target /tmp/attnc-py the wheel(s)  -> install.log
#   2. pytest tree/python/tests/test_cuda.py -v -rs                          -> pytest_cuda.log
#   3. tree/python/bench/bench_gpu.py --parts compare,overhead,throughput    -> python_bench.log,
#      python_bench.json (ATTNC_PY_TRAIN=1 adds train_tiny)
# Limits: PYTEST_TIMEOUT (default 300 s), BENCH_TIMEOUT (default 200 s); PYTEST_ARGS adds
# pytest arguments (e.g. "-k 'not every_example'" for a shorter run). Exit status:
# nonzero if any step failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/attnc-out}
mkdir -p "$OUT"
status=0
py=${PYTHON:-python3}
site=/tmp/attnc-py
rm -rf "$site"
{
  echo "== install ($(date -u +%H:%M:%S)); packed from commit $(cat "$here/COMMIT" 2>/dev/null) =="
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
  wheels=("$here"/wheels/attnc-*.whl)
  if ! "$py" -c "import pytest" 2>/dev/null; then
    wheels+=($(ls "$here"/wheels/*.whl | grep -v '/attnc-'))
  fi
  if "$py" -m pip --version >/dev/null 2>&1; then
    "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "${wheels[@]}"
  else  # a wheel is a zip archive
    for w in "${wheels[@]}"; do "$py" -m zipfile -e "$w" "$site"; done
  fi
  PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} "$py" -c "import attnc, pytest; print('attnc', attnc.__version__, 'from', attnc.__file__, '; pytest', pytest.__version__)"
} > "$OUT/install.log" 2>&1 || status=1
cat "$OUT/install.log"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# the JIT's disk cache on local disk, fresh for this run
export ATTNC_CACHE_DIR=${ATTNC_CACHE_DIR:-/tmp/attnc-cache}
cd "$here/tree"
echo "== pytest test_cuda.py ($(date -u +%H:%M:%S)) =="
# shellcheck disable=SC2086
timeout "${PYTEST_TIMEOUT:-300}" "$py" -m pytest python/tests/test_cuda.py -v -rs -p no:cacheprovider --durations=10 \
  ${PYTEST_ARGS:-} > "$OUT/pytest_cuda.log" 2>&1 || status=1
grep -Ev " PASSED " "$OUT/pytest_cuda.log" | tail -80
echo "== bench_gpu.py ($(date -u +%H:%M:%S)) =="
parts=compare,overhead,throughput
[ "${ATTNC_PY_TRAIN:-0}" = 1 ] && parts=$parts,train
timeout "${BENCH_TIMEOUT:-200}" "$py" python/bench/bench_gpu.py --parts "$parts" --budget-s 120 --out "$OUT" \
  > "$OUT/python_bench.log" 2>&1 || status=1
grep -v Warning "$OUT/python_bench.log" | tail -40
echo "== done ($(date -u +%H:%M:%S)), status $status =="
exit $status
