#!/usr/bin/env bash
# Session 39 call 2 (carry .bin-py39: the wheel of main, scripts/python-gpu-pack.sh):
# a training step with learned captures through Python (python/bench/capture_grad_step.py,
# attnc next to compiled Flex) with the uniform-read paths off (ATTNC_BWD_UNIFORM=0
# ATTNC_FWD_UNIFORM=0, the defaults before session 39) and on (=1), D128 and D64.
set -u
root=$PWD
here=$root/.bin-py39; . .bin-py39/python-gpu-lib.sh; pygpu_install > /dev/null 2>&1
cd "$root/python/bench"
for d in 128 64; do
  for u in 0 1; do
    echo "== D$d ATTNC_BWD_UNIFORM=$u ATTNC_FWD_UNIFORM=$u"
    ATTNC_BWD_UNIFORM=$u ATTNC_FWD_UNIFORM=$u PYTHONPATH=/tmp/attnc-py timeout 200 python3 capture_grad_step.py \
      --no-flash --rounds 3 --d $d 2>&1 | grep -E "step|failed|grad -" | grep -Ev "Warning|warn\(" | cut -c1-200
  done
done
