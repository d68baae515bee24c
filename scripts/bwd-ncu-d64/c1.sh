#!/usr/bin/env bash
# bwd64n (session 22) call 1: FA4 part a, then ours.sh (ncu of our D64 kernel). Carry .fa4a
# and .bin-bwd64n; call 2 (warm, within 30 s) is .bin-bwd64n2/c2.sh with .fa4b.
here=$(cd "$(dirname "$0")" && pwd)
bash .fa4a/install.sh a
BUDGET=86 bash "$here/ours.sh"
