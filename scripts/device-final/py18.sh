#!/usr/bin/env bash
# Session 18 (py18): the Python package's host time next to compiled Flex and its CUDA tests
# in one device call of <= 120 s. Carry the folder scripts/python-gpu-pack.sh fills (plus
# this script), e.g. `bash scripts/python-gpu-pack.sh /work/main/.bin-py18 && cp
# scripts/device-final/py18.sh /work/main/.bin-py18/`, then `bash .bin-py18/py18.sh`.
# PYTEST=1 (default): test_cuda.py in six processes (PYTEST_S s at most each) first, then
# python/bench/host_step.py on the idle GPU; PYTEST=0: the bench only. Logs under $OUT:
# host_step.log, host_step.json, pytest_*.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
if [ "${PYTEST:-1}" = 1 ]; then
  echo "== pytest ($((SECONDS - t0)) s) =="
  pygpu_pytest "not (every_example_matches and f16 and not bf16)" 6 "${PYTEST_S:-60}"
fi
echo "== bench ($((SECONDS - t0)) s) =="
timeout "${BENCH_S:-100}" "$py" python/bench/host_step.py --profile --rounds "${ROUNDS:-3}" --out "$OUT" \
  > "$OUT/host_step.log" 2>&1
echo "bench rc=$?"
grep -Ev "Warning|warn\(" "$OUT/host_step.log" | tail -45 | cut -c1-230
echo "== done ($((SECONDS - t0)) s) =="
