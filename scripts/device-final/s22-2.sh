#!/usr/bin/env bash
# Session 22 call 2 (carry .fa4a and .bin-rt21s = .bin-rt21 without its gpu_backward): FA4
# part a; the training-step wheel and tree copied to /tmp/rt22 for call 3.
set -u
t0=$(date +%s)
rm -rf /tmp/rt22 && cp -r .bin-rt21s /tmp/rt22
bash .fa4a/install.sh a 2>&1 | tail -2
ls /tmp/rt22 /tmp/bwd21b /tmp/d21 2>&1 | tr '\n' ' '; echo
echo "total $(( $(date +%s) - t0 )) s"
