#!/usr/bin/env bash
# Session 27 call 2 (as run; the prefetch it measured, `PtxOptions::paged_prefetch`, was no
# faster and is not on main, so ATTNC_PAGED_PREFETCH now changes nothing): the paged runs' page ids prefetched into L1 a tile ahead
# (ATTNC_PAGED_PREFETCH=0 turned it off) and the package's
# decode host-time cuts (one workspace allocation, no detach / no-op conversions) —
# every gpu_decode test, memcheck + racecheck of the caller runs, the package's decode /
# chunked tests, prefill_once.py A/B (prefetch on / off, contiguous / paged 128 / paged 16,
# dense / causal, two rounds), decode_host.py (session 26's wheel and this one), the
# serving loop, ncu of the paged-16 kernel with the prefetch. Carry .bin-s27 (gpu_decode.xz,
# old/, this script, s27-lib.sh as lib.sh) and .bin-py27. Everything also under $OUT.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s27-lib.sh
. "$here/lib.sh"
O=${OUT:-/tmp/out}; mkdir -p $O
s27_setup gpu_decode
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 240 $B/gpu_decode --exact $t > $B/t_$t.log 2>&1; echo "rc=$?" >> $B/t_$t.log ) &
done
for tool in memcheck racecheck; do
  ( timeout 240 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_runs > $B/s_$tool.log 2>&1; echo "rc=$?" >> $B/s_$tool.log ) &
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
s27_summary $B/t_*.log $B/s_*.log
( export OUT=/tmp/pyout; TESTS="decode or chunked" NPROC=4 TEST_TIMEOUT=200 bash .bin-py27/python-gpu-select.sh ) 2>&1 | tail -7
grep -hE "^FAILED|^E  " /tmp/pyout/pytest_*.log 2>/dev/null | head -20
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-old "$here"/old/attnc-*.whl 2>&1 | tail -2
T=.bin-py27/tree
export ATTNC_CACHE_DIR=/tmp/attnc-cache
echo "== prefill_once (µs per call, 20 calls; min and median of the last 15)"
for round in 1; do
  for kind in dense causal; do
    for lay in contiguous paged128 paged16; do
      for pf in 1 0; do
        [ $lay = contiguous ] && [ $pf = 0 ] && continue
        r=$(PYTHONPATH=/tmp/attnc-py ATTNC_PAGED_PREFETCH=$pf timeout 60 python3 $T/python/bench/prefill_once.py $lay --kind $kind --calls 20 --examples $T/examples 2>&1 | grep -E "^(contiguous|paged)")
        echo "$r" | python3 -c "import sys,statistics as s; l=sys.stdin.read().split(); v=[float(x) for x in l[3:]][5:]; print(f'round $round prefetch=$pf', ' '.join(l[:3]), f'min {min(v):.1f} median {s.median(v):.1f}')"
      done
    done
  done
done
for round in 1; do
  for w in new old; do
    site=/tmp/attnc-py; [ $w = old ] && site=/tmp/attnc-old
    PYTHONPATH=$site timeout 150 python3 $T/python/bench/decode_host.py --iters 2000 \
      --profile $([ $round = 1 ] && echo 1 || echo 0) > $O/decode_host_${w}_$round.txt 2>&1
    echo "== decode_host $w round $round rc=$?"; grep -E " us$" $O/decode_host_${w}_$round.txt | grep -E "wall|ext|alloc|tolist"
  done
done
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for pf in 1; do
  PYTHONPATH=/tmp/attnc-py ATTNC_PAGED_PREFETCH=$pf timeout 90 "$NCU" --clock-control none \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --page raw -k regex:attnc --launch-skip 3 --launch-count 1 \
    python3 $T/python/bench/prefill_once.py paged16 --examples $T/examples > $O/ncu_paged16_pf$pf.txt 2>&1
  echo "== ncu paged16 prefetch=$pf rc=$?"
  grep -E "gpu__time_duration.sum|dram__bytes.sum.per_second|lts__t_sector_hit_rate.pct|smsp__average_warps_issue_stalled_(long_scoreboard|barrier|wait)_per_issue_active.ratio" $O/ncu_paged16_pf$pf.txt | awk '{print "  "$1" = "$(NF-1)" "$NF}'
done
cp $B/*.log $O/ 2>/dev/null; tar czf $O/logs.tgz -C $B . 2>/dev/null; rm -f $O/t_*.log; true
