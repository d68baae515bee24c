#!/usr/bin/env bash
# A chosen part of the Python package's GPU check, run on the device machine from the
# repository root with the folder of scripts/python-gpu-pack.sh carried (e.g.
# `bash .bin-pyrt/python-gpu-select.sh`): installs the wheel (pip --no-index --target),
# runs the tests of python/tests/test_cuda.py selected by TESTS (a pytest -k expression;
# empty: none) dealt to NPROC pytest processes (default 6; python-gpu-lib.sh), each
# stopped after TEST_TIMEOUT s (default 120), then BENCH (bench_gpu.py --parts, e.g.
# "fwdbwd"; BENCH_ARGS: more arguments; empty: none; BENCH_FIRST=1: before the tests, on
# an idle GPU) and, with TRAIN=1, python/examples/train_tiny.py on the GPU (TRAIN_ARGS:
# its arguments). Logs under $OUT (pytest_<i>.log, bench.log, train.log,
# python_bench.json); a summary on stdout.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
bench() {
  [ -n "${BENCH:-}" ] || return 0
  echo "== bench $BENCH ($((SECONDS - t0)) s) =="
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-90}" "$py" python/bench/bench_gpu.py --parts "$BENCH" --budget-s "${BENCH_BUDGET:-60}" \
    ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  grep -Ev "Warning|warn\(" "$OUT/bench.log" | tail -20
}
[ "${BENCH_FIRST:-0}" = 1 ] && bench
if [ -n "${TESTS:-}" ]; then
  echo "== pytest ($((SECONDS - t0)) s) =="
  pygpu_pytest "$TESTS" "${NPROC:-6}" "${TEST_TIMEOUT:-120}"
fi
[ "${BENCH_FIRST:-0}" = 1 ] || bench
if [ "${TRAIN:-0}" = 1 ]; then
  echo "== train_tiny ($((SECONDS - t0)) s) =="
  # shellcheck disable=SC2086
  timeout "${TRAIN_TIMEOUT:-120}" "$py" python/examples/train_tiny.py --device cuda --dtype bf16 ${TRAIN_ARGS:-} \
    > "$OUT/train.log" 2>&1
  echo "train rc=$?"
  grep -Ev "Warning|warn\(" "$OUT/train.log" | tail -14
fi
echo "== done ($((SECONDS - t0)) s) =="
