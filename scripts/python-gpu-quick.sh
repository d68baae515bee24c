#!/usr/bin/env bash
# The Python package's GPU check in under ~110 s of wall clock, run on the device machine
# from the repository root with the folder scripts/python-gpu-pack.sh filled carried
# (e.g. `bash scripts/python-gpu-pack.sh /work/main/.bin-pyrt` here, then
# `bash .bin-pyrt/python-gpu-quick.sh` there with carry [".bin-pyrt"]): like
# python-gpu-remote.sh, but the bench first on an idle GPU (call overhead of forward and
# forward + backward, forward + backward time vs Flex and SDPA: bench_gpu.py --parts
# overhead,fwdbwd), then test_cuda.py (all but the float16 half of the per-example
# forward sweep) dealt to six pytest processes at once (JIT compiles are CPU-bound; the
# JIT's disk cache is shared under its file locks). Logs under $OUT: bench.log,
# python_bench.json, pytest_0..5.log (the device tool returns at most 8 files).
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
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  wheels=("$here"/wheels/attnc-*.whl)
  "$py" -c "import pytest" 2>/dev/null || wheels+=($(ls "$here"/wheels/*.whl | grep -v '/attnc-'))
  "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "${wheels[@]}"
} 2>&1
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 ATTNC_CACHE_DIR=/tmp/attnc-cache
cd "$here/tree"
echo "== bench ($((SECONDS - t0)) s) =="
timeout 45 "$py" python/bench/bench_gpu.py --parts overhead,fwdbwd --budget-s 25 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -Ev "Warning|warn\(" "$OUT/bench.log" | tail -25
echo "== pytest in 6 processes ($((SECONDS - t0)) s) =="
left=$((103 - (SECONDS - t0)))
# every test of test_cuda.py but the float16 half of the forward-per-example sweep,
# dealt round-robin to six pytest processes (JIT compiles are CPU-bound; the JIT's
# disk cache is shared under its file locks)
"$py" -m pytest python/tests/test_cuda.py -q --collect-only -p no:cacheprovider \
  -k "not (every_example_matches and f16 and not bf16)" 2>/dev/null | grep '::' > /tmp/ids.txt
echo "$(wc -l < /tmp/ids.txt) tests, $left s left"
n=6
for i in $(seq 0 $((n - 1))); do
  awk -v n=$n -v i=$i 'NR % n == i' /tmp/ids.txt > /tmp/ids_$i.txt
  ( timeout "$left" "$py" -m pytest -q -rs -p no:cacheprovider $(cat /tmp/ids_$i.txt) > "$OUT/pytest_$i.log" 2>&1
    echo "rc=$?" >> "$OUT/pytest_$i.log" ) &
done
wait
for i in $(seq 0 $((n - 1))); do
  echo "-- group $i: $(grep -E '(passed|failed|error)' "$OUT/pytest_$i.log" | tail -1) $(tail -1 "$OUT/pytest_$i.log")"
  grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest_$i.log" | head -8
done
echo "== done ($((SECONDS - t0)) s) =="
