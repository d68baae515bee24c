#!/usr/bin/env bash
# Session 20 (py20): the Python package's CUDA tests, its host time next to compiled Flex
# and an A/B of two wheels' host time, in one device call of <= 100 s. Carry the folder
# scripts/python-gpu-pack.sh fills, with this script, fc.sh and a second wheel (the
# baseline) in old/, e.g.
#   bash scripts/python-gpu-pack.sh /work/main/.bin-py20 && cp scripts/device-final/py20.sh \
#     scripts/device-final/fc.sh /work/main/.bin-py20/ && mkdir /work/main/.bin-py20/old && \
#     cp BASELINE.whl /work/main/.bin-py20/old/
# then `bash .bin-py20/py20.sh` there. Steps: test_cuda.py in six processes (PYTEST_S s at
# most) while python/bench/host_step.py compiles and warms (it waits for the tests before
# timing); then host_ab.py alternately with the baseline wheel (old/) and this one (ROUNDS
# processes each) on the idle GPU; beside the tests also a smoke run of flash_step.py
# (fc.sh's bench, without FA4). Logs under $OUT: pytest_*.log, host_step.{log,json},
# flash_step_smoke.log, ab.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
rm -rf /tmp/attnc-old /tmp/go-py20
"$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-old "$here"/old/attnc-*.whl
echo "== pytest + host_step warm-up ($((SECONDS - t0)) s) =="
timeout "${BENCH_S:-75}" "$py" python/bench/host_step.py --no-tiny --profile --rounds "${HS_ROUNDS:-3}" \
  --wait /tmp/go-py20 --wait-s 70 --out "$OUT" > "$OUT/host_step.log" 2>&1 &
bench=$!
# flash_step.py (fc.sh's bench) smoke-tested without FA4: attnc and SDPA rows, one round
timeout 40 "$py" python/bench/flash_step.py --cases document,causal --no-flash --rounds 1 --iters 3 \
  --out "$OUT" > "$OUT/flash_step_smoke.log" 2>&1 &
smoke=$!
# (a subshell: pygpu_pytest's `wait` waits for its own processes, not for the bench)
( pygpu_pytest "not (every_example_matches and f16 and not bf16)" 6 "${PYTEST_S:-42}" )
wait $smoke
echo "flash_step smoke rc=$?"; grep -Ev "Warning|warn\(" "$OUT/flash_step_smoke.log" | tail -8 | cut -c1-200
touch /tmp/go-py20
echo "== host_step timing ($((SECONDS - t0)) s) =="
wait $bench
echo "host_step rc=$?"
grep -Ev "Warning|warn\(" "$OUT/host_step.log" | tail -30 | cut -c1-230
echo "== A/B ($((SECONDS - t0)) s) =="
for r in $(seq 1 "${ROUNDS:-2}"); do
  for w in old new; do
    site=/tmp/attnc-py
    [ $w = old ] && site=/tmp/attnc-old
    PYTHONPATH=$site timeout "${AB_S:-14}" "$py" python/bench/host_ab.py --tag "$w$r" 2>&1 | grep '^AB ' | tee -a "$OUT/ab.log"
  done
done
echo "== done ($((SECONDS - t0)) s) =="
