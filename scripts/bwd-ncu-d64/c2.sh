#!/usr/bin/env bash
# bwd64n (session 22) call 2 (warm, right after .bin-bwd64n/c1.sh): FA4 part b, then fa4.sh.
# Carry .fa4b and .bin-bwd64n2.
t0=$SECONDS
here=$(cd "$(dirname "$0")" && pwd)
bash .fa4b/install.sh b 2>&1 | tail -2; echo "install b ($((SECONDS - t0)) s)"
BUDGET=$((92 - SECONDS + t0)) bash "$here/fa4.sh"
