#!/usr/bin/env bash
# Session 18 (py18): the Python package's host time next to compiled Flex and its CUDA tests
# in one device call of <= 120 s. Carry the folder scripts/python-gpu-pack.sh filled (plus
# this script), e.g. `bash scripts/python-gpu-pack.sh /work/main/.bin-py18 && cp
# scripts/device-final/py18.sh /work/main/.bin-py18/`, then `bash .bin-py18/py18.sh`.
# While python/bench/host_step.py compiles and warms (attnc's kernels, compiled Flex), the
# CUDA pytest file runs in six processes (70 s at most each); the bench times after they end
# (--wait), on an idle GPU. Logs under $OUT: host_step.log, host_step.json, pytest_*.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
rm -f /tmp/py18-go
( timeout 108 "$py" python/bench/host_step.py --wait /tmp/py18-go --wait-s 80 --profile --out "$OUT" \
    > "$OUT/host_step.log" 2>&1; echo "rc=$?" >> "$OUT/host_step.log" ) &
bench=$!
echo "== pytest ($((SECONDS - t0)) s) =="
pygpu_pytest "not (every_example_matches and f16 and not bf16)" 6 ${PYTEST_S:-68}
touch /tmp/py18-go
echo "== bench timing ($((SECONDS - t0)) s) =="
wait $bench
grep -Ev "Warning|warn\(" "$OUT/host_step.log" | tail -45 | cut -c1-230
echo "== done ($((SECONDS - t0)) s) =="
