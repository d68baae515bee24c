#!/usr/bin/env bash
# Session 27 call 1: a decode call's host time — every gpu_decode test (the caller runs now
# also through `Bound::decode_cuda_runs` alone, which declines without writing O),
# memcheck of the caller runs, the package's decode / chunked tests on the new wheel, then
# python/bench/decode_host.py with the wheel of session 26 (old.whl) and the new one
# (runs without workspace or a device copy of the lengths; workspace sizes asked once per
# shape) in turn, twice, and the serving loop (chunks of 128: host time dominates; chunks
# of 256) with each. Carry .bin-s27 (gpu_decode.xz, old/ (session 26's wheel), this script, s27-lib.sh as
# lib.sh) and .bin-py27 (python-gpu-pack.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s27-lib.sh
. "$here/lib.sh"
s27_setup gpu_decode
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 240 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
( timeout 240 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/s_memcheck.log 2>&1; echo "rc=$?" >> $B/s_memcheck.log ) &
wait; echo "rust tests: $(( $(date +%s) - t0 )) s"
s27_summary $B/t_*.log $B/s_*.log
OUTSAVE=${OUT:-}
( export OUT=/tmp/pyout; TESTS="decode or chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py27/python-gpu-select.sh ) 2>&1 | tail -8
grep -hE "FAILED|Error|assert" /tmp/pyout/pytest_*.log 2>/dev/null | head -20
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-old "$here"/old/attnc-*.whl 2>&1 | tail -2
T=.bin-py27/tree
for round in 1 2; do
  for w in old new; do
    site=/tmp/attnc-py; [ $w = old ] && site=/tmp/attnc-old
    echo "== decode_host $w (round $round)"
    PYTHONPATH=$site ATTNC_CACHE_DIR=/tmp/attnc-cache timeout 120 python3 $T/python/bench/decode_host.py \
      --iters 2000 --profile $([ $round = 1 ] && echo 1 || echo 0) 2>&1 | grep -v Warning | cut -c1-300
  done
done
for w in old new; do
  site=/tmp/attnc-py; [ $w = old ] && site=/tmp/attnc-old
  echo "== serve_loop $w"
  PYTHONPATH=$site ATTNC_CACHE_DIR=/tmp/attnc-cache timeout 150 python3 $T/python/bench/serve_loop.py \
    --examples $T/examples --steps 8 --chunk 128 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
  PYTHONPATH=$site ATTNC_CACHE_DIR=/tmp/attnc-cache timeout 150 python3 $T/python/bench/serve_loop.py \
    --examples $T/examples --steps 32 --chunk 256 8,32,8 2>&1 | grep -v Warning | cut -c1-1100
done
[ -n "$OUTSAVE" ] && cp $B/*.log /tmp/pyout/*.log "$OUTSAVE"/ 2>/dev/null; true
# ncu of the runs' kernel over a contiguous cache and paged ones (pages of 128, 16): where
# pages of 16 lose their 1.3x (DRAM bytes, L2 hit rate, stalls)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for lay in contiguous paged128 paged16; do
  PYTHONPATH=/tmp/attnc-py ATTNC_CACHE_DIR=/tmp/attnc-cache timeout 90 "$NCU" --clock-control none \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats \
    --page raw -k regex:attnc --launch-skip 3 --launch-count 1 \
    python3 $T/python/bench/prefill_once.py $lay --examples $T/examples > /tmp/ncu_$lay.txt 2>&1
  echo "== ncu $lay rc=$? $(grep -E '^(contiguous|paged)' /tmp/ncu_$lay.txt)"
  grep -E "gpu__time_duration.sum|dram__bytes_read.sum |dram__throughput.avg.pct_of_peak_sustained_elapsed|lts__t_sector_hit_rate.pct|lts__t_sectors_srcunit_tex_op_read.sum |sm__pipe_tensor_op_gmma_cycles_active.avg.pct|launch__grid_size|smsp__average_warps_issue_stalled_.*_per_issue_active.ratio" /tmp/ncu_$lay.txt \
    | awk '$NF+0 > 0.05 || /time|bytes|grid/ {print "  "$1" = "$(NF-1)" "$NF}' | head -40
  [ -n "$OUTSAVE" ] && cp /tmp/ncu_$lay.txt "$OUTSAVE"/
done; true
