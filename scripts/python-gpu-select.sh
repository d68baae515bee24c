#!/usr/bin/env bash
# A chosen part of the Python package's GPU check, run on the device machine from the
# repository root with the folder of scripts/python-gpu-pack.sh carried (e.g.
# `bash .bin-pyrt/python-gpu-select.sh`): installs the wheel (pip --no-index --target),
# runs the tests of python/tests/test_cuda.py selected by TESTS (a pytest -k expression;
# empty: none) dealt to NPROC pytest processes (default 6), then BENCH (bench_gpu.py
# --parts, e.g. "fwdbwd"; BENCH_ARGS: more arguments; empty: none) and, with TRAIN=1,
# python/examples/train_tiny.py
# on the GPU (TRAIN_ARGS: its arguments). Logs under $OUT (pytest_<i>.log, bench.log,
# train.log, python_bench.json); a summary on stdout.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/attnc-out}
mkdir -p "$OUT"
py=${PYTHON:-python3}
site=/tmp/attnc-py
rm -rf "$site"
t0=$SECONDS
{
  echo "packed from commit $(cat "$here/COMMIT" 2>/dev/null)"
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'x', torch.cuda.device_count())"
  wheels=("$here"/wheels/attnc-*.whl)
  "$py" -c "import pytest" 2>/dev/null || wheels+=($(ls "$here"/wheels/*.whl | grep -v '/attnc-'))
  "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "${wheels[@]}"
} 2>&1
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 ATTNC_CACHE_DIR=/tmp/attnc-cache
cd "$here/tree"
if [ -n "${TESTS:-}" ]; then
  echo "== pytest ($((SECONDS - t0)) s) =="
  "$py" -m pytest python/tests/test_cuda.py -q --collect-only -p no:cacheprovider -k "$TESTS" 2>/dev/null \
    | grep '::' > /tmp/ids.txt
  n=${NPROC:-6}
  echo "$(wc -l < /tmp/ids.txt) tests in $n processes"
  for i in $(seq 0 $((n - 1))); do
    awk -v n=$n -v i=$i 'NR % n == i' /tmp/ids.txt > /tmp/ids_$i.txt
    [ -s /tmp/ids_$i.txt ] || continue
    ( timeout "${TEST_TIMEOUT:-120}" "$py" -m pytest -q -rs -p no:cacheprovider $(cat /tmp/ids_$i.txt) \
        > "$OUT/pytest_$i.log" 2>&1
      echo "rc=$?" >> "$OUT/pytest_$i.log" ) &
  done
  wait
  for i in $(seq 0 $((n - 1))); do
    [ -f "$OUT/pytest_$i.log" ] || continue
    echo "-- group $i: $(grep -E '(passed|failed|error)' "$OUT/pytest_$i.log" | tail -1) $(tail -1 "$OUT/pytest_$i.log")"
    grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest_$i.log" | head -12
  done
fi
if [ -n "${BENCH:-}" ]; then
  echo "== bench $BENCH ($((SECONDS - t0)) s) =="
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-90}" "$py" python/bench/bench_gpu.py --parts "$BENCH" --budget-s "${BENCH_BUDGET:-60}" \
    ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  grep -Ev "Warning|warn\(" "$OUT/bench.log" | tail -20
fi
if [ "${TRAIN:-0}" = 1 ]; then
  echo "== train_tiny ($((SECONDS - t0)) s) =="
  # shellcheck disable=SC2086
  timeout "${TRAIN_TIMEOUT:-120}" "$py" python/examples/train_tiny.py --device cuda --dtype bf16 ${TRAIN_ARGS:-} \
    > "$OUT/train.log" 2>&1
  echo "train rc=$?"
  grep -Ev "Warning|warn\(" "$OUT/train.log" | tail -14
fi
echo "== done ($((SECONDS - t0)) s) =="
