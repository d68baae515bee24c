#!/usr/bin/env bash
# Session 26 call 4: the forward's GPU tests after CudaExec::prepare's refactor
# (forward_options_for shared with reshape) — every test of the `gpu` binary, six at a time.
# Carry .bin-s26 (gpu.xz, this script, s26-lib.sh as lib.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=s26-lib.sh
. "$here/lib.sh"
s26_setup gpu
t0=$(date +%s)
$B/gpu --list 2>/dev/null | grep ': test' | sed 's/: test//' > $B/list
xargs -P 6 -I{} sh -c "timeout 300 $B/gpu --exact {} > $B/g_{}.log 2>&1; echo rc=\$? >> $B/g_{}.log" < $B/list
echo "gpu tests: $(( $(date +%s) - t0 )) s"
s26_summary $B/g_*.log
[ -n "${OUT:-}" ] && cp $B/g_*.log "$OUT"/ 2>/dev/null; true
