# Sourced by the backward's per-session device scripts (s24-*.sh; copied beside them into
# the carried folder): unpacks the release gpu_backward next to the script into $B, and
# defines
#   el                      seconds since the script started
#   bb TIMEOUT LOG VAR=...  one kernel-bench process (gpu_backward_bench) with the given
#                           environment (ATTNC_BWD_BENCH_D / _ONLY / _CFG), its output in
#                           $O/LOG.txt, the TFLOP/s lines printed
#   run NAME CMD...         CMD's output and exit code into /tmp/f4co/NAME.log
#   tests TIMEOUT [TAG]     every gpu_backward test (TIMEOUT s) beside compute-sanitizer
#                           racecheck and memcheck of gpu_backward_fused_sanitize, logs
#                           named with TAG (the environment's ATTNC_BWD_TEST_CFG applies)
#   summary TAR             one line per log (test results, sanitizer summaries), the
#                           logs into $O/TAR
# $O is $OUT (the device tool's folder) or /tmp/f4out; $G the unpacked binary.
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
B=/tmp/f4c; mkdir -p $B /tmp/f4co; O=${OUT:-/tmp/f4out}; mkdir -p $O
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_EXAMPLES=$PWD/examples
G=$B/gpu_backward
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
bb() {
  local to=$1 log=$2; shift 2
  env "$@" ATTNC_CACHE_DIR=/tmp/cb timeout $to $G --ignored --exact gpu_backward_bench --nocapture > $O/$log.txt 2>&1
  echo "rc=$?" >> $O/$log.txt
  grep -hE "TFLOP|panicked|rc=" $O/$log.txt | sed -E 's/ \(pre.*density/ (/' | cut -c1-160
}
run() { local name=$1; shift; ( "$@" > /tmp/f4co/$name.log 2>&1; echo "rc=$?" >> /tmp/f4co/$name.log ) ; }
tests() {
  local to=$1 tag=${2:-}
  ( export ATTNC_CACHE_DIR=/tmp/c1$tag; run gpu_backward$tag timeout $to $G ) &
  ( sleep 3; export ATTNC_CACHE_DIR=/tmp/c2$tag
    run racecheck_bwd$tag timeout 150 compute-sanitizer --tool racecheck --print-limit 5 $G --exact gpu_backward_fused_sanitize
    run memcheck_bwd$tag timeout 120 compute-sanitizer --tool memcheck --print-limit 5 $G --exact gpu_backward_fused_sanitize ) &
  wait
}
summary() {
  for f in /tmp/f4co/*.log; do
    echo "$(basename $f): $(grep -hE "^test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|FAILED|rc=|failed" $f | tr '\n' ' ' | cut -c1-300)"
  done
  grep -h -A2 "convert_timeout" /tmp/f4co/gpu_backward.log 2>/dev/null | head -4
  tar -C /tmp/f4co -cJf $O/$1 .
}
