#!/usr/bin/env bash
# The Python package's GPU check in under ~160 s of wall clock, run on the device machine
# from the repository root with the folder scripts/python-gpu-pack.sh filled carried
# (e.g. `bash scripts/python-gpu-pack.sh /work/main/.bin-pyrt` here, then
# `bash .bin-pyrt/python-gpu-quick.sh` there with carry [".bin-pyrt"]): like
# python-gpu-remote.sh, but the bench first on an idle GPU (call overhead of forward and
# forward + backward, forward + backward time vs Flex and SDPA: bench_gpu.py --parts
# overhead,fwdbwd), then test_cuda.py (all but the float16 half of the per-example
# forward sweep) dealt to six pytest processes at once (python-gpu-lib.sh). Logs under
# $OUT: bench.log, python_bench.json, pytest_0..5.log (the device tool returns at most 8
# files).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
echo "== bench ($((SECONDS - t0)) s) =="
timeout 80 "$py" python/bench/bench_gpu.py --parts overhead,fwdbwd --budget-s 45 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -Ev "Warning|warn\(" "$OUT/bench.log" | tail -25
echo "== pytest ($((SECONDS - t0)) s) =="
pygpu_pytest "not (every_example_matches and f16 and not bf16)" 6 60
echo "== done ($((SECONDS - t0)) s) =="
