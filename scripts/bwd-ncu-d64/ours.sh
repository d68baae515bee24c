#!/usr/bin/env bash
# bwd64n (session 22): ncu of our D64 fused dK/dV kernel (the bwd64n branch's release
# gpu_backward: its default kernels are main's, PTX byte-identical), dense then causal if time is left, one launch each (-s 3 -c 1)
# around the kernel bench, B4 H16 L4096 bf16; exported as text (details, raw, SASS source page)
# into $OUT/ours.tar.xz. Needs no FA4. From the repo root, carry .bin-bwd64n. BUDGET=s (88).
set -u
t0=$SECONDS; BUDGET=${BUDGET:-88}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/bwd64n-out}; mkdir -p "$OUT"
W=/tmp/bwd64n-w; mkdir -p $W
B=/tmp/bwd64nb; mkdir -p $B
[ -x $B/gpu_backward ] || { xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"; "$NCU" --version | tail -1
"$NCU" --list-sections > $W/sections.txt 2>&1
SECS=""
for s in SpeedOfLight WarpStateStats SchedulerStats InstructionStats SourceCounters MemoryWorkloadAnalysis MemoryWorkloadAnalysis_Tables MemoryWorkloadAnalysis_Chart Occupancy LaunchStats ComputeWorkloadAnalysis; do
  grep -qE "^$s[[:space:]]|^ *$s " $W/sections.txt && SECS="$SECS --section $s" || echo "no section $s"
done
[ -z "$SECS" ] && SECS="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats"
echo "sections:$SECS"
export ATTNC_EXAMPLES=$PWD/examples ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_CFG=default
# plain timing (context; same machine) and the A/B of bwd_stats_bulk (+b), interleaved
ATTNC_CACHE_DIR=/tmp/c5 ATTNC_BWD_BENCH_ONLY=full,causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b timeout 18 $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > $W/bench_plain.txt 2>&1
grep -E "TFLOP|panicked" $W/bench_plain.txt | cut -c1-200; echo "bench ($((SECONDS - t0)) s)"; cp $W/bench_plain.txt "$OUT"/
exp() { # report name
  timeout 10 "$NCU" -i /tmp/$1.ncu-rep --page details --print-details all > $W/$1.details.txt 2>&1 || timeout 8 "$NCU" -i /tmp/$1.ncu-rep --page details > $W/$1.details.txt 2>&1
  timeout 8 "$NCU" -i /tmp/$1.ncu-rep --page raw --csv > $W/$1.raw.csv 2>&1
  timeout 12 "$NCU" -i /tmp/$1.ncu-rep --page source --csv --print-source sass > $W/$1.sass.csv 2>&1
  echo "export $1 rc=$? ($((SECONDS - t0)) s) $(wc -c < $W/$1.sass.csv) bytes sass"
}
for v in full causal; do
  [ $((SECONDS - t0)) -gt $((BUDGET - 40)) ] && { echo "skip $v (time)"; continue; }
  ATTNC_CACHE_DIR=/tmp/c6 ATTNC_BWD_BENCH_ONLY=$v timeout 25 "$NCU" --clock-control none $SECS \
    -k regex:dkdv -s 3 -c 1 -f -o /tmp/ours_$v $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > $W/ours_$v.log 2>&1
  echo "ncu ours $v rc=$? ($((SECONDS - t0)) s)"; grep -E "==ERROR|==WARN|TFLOP" $W/ours_$v.log | head -5 | cut -c1-200
  [ -f /tmp/ours_$v.ncu-rep ] && exp ours_$v
  grep -E "Duration|Elapsed Cycles|SM Active Cycles|Executed Ipc Active|Registers Per|Shared Memory Configuration Size" $W/ours_$v.details.txt 2>/dev/null | head -8
done
# shared-memory metrics by regex, dense only, if time is left
if [ $((SECONDS - t0)) -lt $((BUDGET - 20)) ]; then
  ATTNC_CACHE_DIR=/tmp/c6 ATTNC_BWD_BENCH_ONLY=full timeout $((BUDGET - 2 - SECONDS + t0)) "$NCU" --clock-control none --metrics "regex:.*shared.*\.sum$" \
    -k regex:dkdv -s 3 -c 1 --page raw --csv $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > $W/ours_full.shmetrics.csv 2>&1
  echo "ncu shared metrics rc=$? ($((SECONDS - t0)) s)"
fi
cp /tmp/ours_*.ncu-rep $W/ 2>/dev/null
XZ_OPT=-T0 tar cJf $OUT/ours.tar.xz -C $W . ; ls -la $OUT
echo "== ours.sh done ($((SECONDS - t0)) s) =="
