#!/usr/bin/env bash
# Session 30 call 3: gpu_decode_caller_prefill_device (soft-cap's example name fixed) and
# memcheck; chunked prefill with device lengths under schedule variants
# (ATTNC_FWD_PERSISTENT=1: static rounds; ATTNC_FWD_CLAIM=1: the next tile claimed
# early) next to host lengths. Carry .bin-s30 and .bin-py30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( timeout 300 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_dev.log 2>&1; echo "rc=$?" >> $OUT/t_dev.log ) &
( timeout 400 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/memcheck.log 2>&1; echo "rc=$?" >> $OUT/memcheck.log ) &
root=$PWD
TESTS="" bash .bin-py30/python-gpu-select.sh > /dev/null 2>&1
wait $(jobs -p); echo "tests: $(( $(date +%s) - t0 )) s"
echo "== test: $(grep -E "^test result|^rc=" $OUT/t_dev.log | tr '\n' ' ')"; grep -E "panicked" -A4 $OUT/t_dev.log | head -8
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
cd "$root"; export PYTHONPATH=/tmp/attnc-py
S="8,32,8,512,8192 8,32,8,256,8192"
for v in "host" "dev" "dev ATTNC_FWD_PERSISTENT=1" "dev ATTNC_FWD_CLAIM=1" "dev ATTNC_FWD_Q_END=0"; do
  set -- $v; only=device_lens; [ "$1" = host ] && only=host_lens; shift
  echo "== $v"
  env "$@" timeout 100 python3 python/bench/chunked_prefill.py --rounds 2 --only $only $S 2>&1 | grep -v Warning \
    | sed 's/ | sdpa.*//'
done
echo "total: $(( $(date +%s) - t0 )) s"
