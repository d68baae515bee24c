#!/usr/bin/env bash
# final GPU check, call P (carry .bin-pycuda and .bin-fb): the Python package's GPU check
# (python-gpu-quick.sh: call overhead and forward + backward vs Flex/SDPA, then test_cuda.py
# in six processes), the per-call host-time probe (python/bench/overhead_probe.py), and CPU
# decoding on the device host's 16 cores next to SDPA on the CPU (cpu_decode_bench.sh 2 16
# with .bin-fb's release attnc). Logs under $OUT (python-gpu-quick.sh's, p_cpu.log).
# PROBE=0 leaves out the probe, CPU=0 the CPU decoding (where device time is short).
set -u
root=$PWD; OUT=${OUT:-/tmp/attnc-out}; mkdir -p "$OUT"
t0=$(date +%s)
( cd "$root" && OUT=$OUT bash .bin-pycuda/python-gpu-quick.sh ) 2>&1 | tail -45 | cut -c1-220
echo "python: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
[ "${PROBE:-1}" = 1 ] && { echo "=== host time per call (overhead_probe.py)"
( export PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache; cd .bin-pycuda/tree/python/bench && timeout 60 python3 overhead_probe.py 2>&1 | head -24 | cut -c1-160 )
echo "probe: $(( $(date +%s) - t0 )) s"; t0=$(date +%s); }
[ "${CPU:-1}" = 1 ] || exit 0
echo "=== CPU decoding (device host)"
xz -dc .bin-fb/attnc.xz > /tmp/attnc-p && chmod +x /tmp/attnc-p
ATTNC_BINS="main=/tmp/attnc-p" ROUNDS=1 timeout 150 bash scripts/cpu_decode_bench.sh 2 16 > "$OUT/p_cpu.log" 2>&1
tail -14 "$OUT/p_cpu.log" | cut -c1-200
echo "cpu decode: $(( $(date +%s) - t0 )) s"
