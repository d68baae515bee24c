#!/usr/bin/env bash
# bwd64n (session 22): ncu of FA4's D64 main backward kernel (its default, deterministic=False),
# dense and causal, one launch each (fa4ncu.py), B4 H16 L4096 bf16; then FA4's timing (default
# and deterministic=True, fa4det64.py) if time is left. Needs FA4 installed (install.sh a, b:
# /tmp/fa4site.path). Reports as text in $OUT/fa4.tar.xz. From the repo root, carry
# .bin-bwd64n2 (scripts only, so it fits beside .fa4b). BUDGET=s (70 after install b).
set -u
t0=$SECONDS; BUDGET=${BUDGET:-70}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/bwd64n-out}; mkdir -p "$OUT"
W=/tmp/bwd64n-w2; mkdir -p $W
[ -f /tmp/fa4site.path ] || { echo "fa4.sh: no /tmp/fa4site.path (FA4 not installed)"; exit 3; }
export PYTHONPATH=$(cat /tmp/fa4site.path) PYTHONUNBUFFERED=1
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -f $W/sections.txt ] || "$NCU" --list-sections > $W/sections.txt 2>&1
SECS=""
for s in SpeedOfLight WarpStateStats SchedulerStats InstructionStats SourceCounters MemoryWorkloadAnalysis MemoryWorkloadAnalysis_Tables MemoryWorkloadAnalysis_Chart Occupancy LaunchStats ComputeWorkloadAnalysis; do
  grep -qE "^$s[[:space:]]|^ *$s " $W/sections.txt && SECS="$SECS --section $s"
done
[ -z "$SECS" ] && SECS="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats"
echo "sections:$SECS"
timeout $((BUDGET - 28 - SECONDS + t0)) "$NCU" --clock-control none $SECS -k "regex:BackwardSm90|bwd_sm90" -c 2 -f -o /tmp/fa4_d64 \
  python3 "$here/fa4ncu.py" --causal > $W/fa4_ncu.log 2>&1
echo "ncu fa4 rc=$? ($((SECONDS - t0)) s)"; grep -vE "^\s*$" $W/fa4_ncu.log | grep -vi warn | tail -8 | cut -c1-200
if [ -f /tmp/fa4_d64.ncu-rep ]; then
  timeout 8 "$NCU" -i /tmp/fa4_d64.ncu-rep --page details --print-details all > $W/fa4_d64.details.txt 2>&1 || timeout 8 "$NCU" -i /tmp/fa4_d64.ncu-rep --page details > $W/fa4_d64.details.txt 2>&1
  timeout 8 "$NCU" -i /tmp/fa4_d64.ncu-rep --page raw --csv > $W/fa4_d64.raw.csv 2>&1
  timeout 12 "$NCU" -i /tmp/fa4_d64.ncu-rep --page source --csv --print-source sass > $W/fa4_d64.sass.csv 2>&1
  echo "export rc=$? ($((SECONDS - t0)) s) $(wc -c < $W/fa4_d64.sass.csv) bytes sass"
  grep -E "Duration|Elapsed Cycles|SM Active Cycles|Executed Ipc Active|Registers Per" $W/fa4_d64.details.txt | head -10
  cp /tmp/fa4_d64.ncu-rep $W/
fi
if [ $((SECONDS - t0)) -lt $((BUDGET - 16)) ]; then
  timeout $((BUDGET - 2 - SECONDS + t0)) python3 "$here/fa4det64.py" --both > $W/fa4_time.txt 2>&1; echo "fa4 timing rc=$?"; grep fa4 $W/fa4_time.txt
fi
XZ_OPT=-T0 tar cJf $OUT/fa4.tar.xz -C $W . ; ls -la $OUT
echo "== fa4.sh done ($((SECONDS - t0)) s) =="
