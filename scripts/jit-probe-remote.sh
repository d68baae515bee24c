#!/usr/bin/env bash
# JIT latency probe, on the GPU machine (from the repo root with .bin carried, or from
# .bin itself; packed by scripts/gpu-check, run by `ATTNC_PARTS=jit bash
# scripts/device-remote.sh`). The driver's own compute cache is off (CUDA_CACHE_DISABLE=1),
# so every PTX compile is a real one. About 1 minute of GPU time.
#
# For dense, causal, softcap+causal and document-causal at D64 and D128 (bf16, B2 H16
# L4096), three processes each:
#   cold  tiers off, empty cache dir: codegen + driver compile at O4 + load
#   warm  a second process on that cache dir: the O4 cubin from disk (no compile)
#   tier  tiers on (default low level), empty cache dir: first usable / optimized ready,
#         kernel time of the low-tier module and of the optimized one
# and for causal D128, tiers off at each CU_JIT_OPTIMIZATION_LEVEL 0..4 (driver compile
# time and kernel TFLOP/s). Logs: $OUT/jit.log; the summary table is printed last.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OUT=${OUT:-/tmp/attnc-out}; mkdir -p "$OUT"
bin=${ATTNC_BIN:-}
for cand in "$here/attnc" "$root/.bin/attnc"; do
  [ -z "$bin" ] && [ -x "$cand" ] && bin=$cand
done
if [ -z "$bin" ]; then
  for xz in "$here/attnc.xz" "$root/.bin/attnc.xz"; do
    if [ -z "$bin" ] && [ -f "$xz" ]; then xz -dc "$xz" > /tmp/attnc-jit-probe; chmod +x /tmp/attnc-jit-probe; bin=/tmp/attnc-jit-probe; fi
  done
fi
[ -n "$bin" ] || { echo "jit-probe: no attnc binary (run scripts/device-check first)"; exit 1; }
ex=$root/examples; [ -d "$ex" ] || ex=$here/examples
export CUDA_CACHE_DISABLE=1
log=$OUT/jit.log; : > "$log"
cache=/tmp/attnc-jit-probe-cache   # not under $OUT: cubins need not come back
status=0
shape=(--dtype bf16 --b 2 --h 16 --lq 4096 --iters 10)
run() { # tag, env..., -- bench args
  local tag=$1; shift; local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "### $tag" >> "$log"
  env "${envs[@]}" timeout 120 "$bin" bench "$@" >> "$log" 2>&1 || { echo "jit-probe: $tag failed" | tee -a "$log"; status=1; }
}
for v in "dense.attn dense" "causal.attn causal_attention" "softcap.attn softcap_causal" "document_causal.attn document_causal --docs 8"; do
  set -- $v; f=$1; a=$2; shift 2
  for d in 64 128; do
    c=$cache/$a-$d; rm -rf "$c" "$c-t"
    run "cold $a D$d" ATTNC_CACHE_DIR=$c ATTNC_JIT_TIERS=off -- "$ex/$f" --attention "$a" --backend cuda "${shape[@]}" --d $d "$@"
    run "warm $a D$d" ATTNC_CACHE_DIR=$c ATTNC_JIT_TIERS=off -- "$ex/$f" --attention "$a" --backend cuda "${shape[@]}" --d $d "$@"
    run "tier $a D$d" ATTNC_CACHE_DIR=$c-t ATTNC_JIT_TIERS=on -- "$ex/$f" --attention "$a" --backend cuda "${shape[@]}" --d $d "$@"
  done
done
for l in 0 1 2 3 4; do
  c=$cache/level-$l; rm -rf "$c"
  run "level O$l causal_attention D128" ATTNC_CACHE_DIR=$c ATTNC_JIT_TIERS=off ATTNC_JIT_OPT_LEVEL=$l -- "$ex/causal.attn" --attention causal_attention --backend cuda "${shape[@]}" --d 128
done
python3 - "$log" <<'PY'
import re, sys
runs, tag = {}, None
for line in open(sys.argv[1]):
    if line.startswith("### "):
        tag = line[4:].strip(); runs[tag] = {}; continue
    r = runs.get(tag)
    if r is None: continue
    if m := re.search(r"CUDA context ([\d.]+) ms", line): r["ctx"] = float(m[1])
    if m := re.match(r"jit: codegen ([\d.]+) ms \(llvm build ([\d.]+), opt ([\d.]+), ptx ([\d.]+)\), driver ([\d.]+) ms, load ([\d.]+) ms, first usable ([\d.]+) ms \[(\S+) module; cubin ([^,]+), ptx ([^\]]+)\]", line):
        r.update(codegen=float(m[1]), build=float(m[2]), opt=float(m[3]), ptx=float(m[4]), driver=float(m[5]), load=float(m[6]), first=float(m[7]), tier=m[8], cubin=m[9])
    if m := re.search(r"optimized ready ([\d.]+) ms \(driver ([\d.]+) ms", line): r.update(ready=float(m[1]), bg_driver=float(m[2]))
    if m := re.search(r"kernel (O\d) ([\d.]+) ms \(([\d.]+) TFLOP/s\)", line): r.update(low_ms=float(m[2]), low_tf=float(m[3]), low=m[1])
    if m := re.search(r"kernel optimized ([\d.]+) ms \(([\d.]+) TFLOP/s\)", line): r.update(opt_ms=float(m[1]), opt_tf=float(m[2]))
g = lambda r, k, f="{:.1f}": f.format(r[k]) if k in r else "-"
print("\n== JIT latency (CUDA_CACHE_DISABLE=1; ms; context creation excluded) ==")
print(f"{'variant':<22}{'D':>4} | {'cold: codegen (build/opt/ptx)':>31} {'driver O4':>10} {'load':>6} {'usable':>7} | {'warm usable':>11} {'cubin':>6} | {'tiered usable':>13} {'opt ready':>10} {'TF low':>7} {'TF opt':>7}")
for t in [t for t in runs if t.startswith("cold ")]:
    _, a, d = t.split(); c, w, ti = runs[t], runs.get(f"warm {a} {d}", {}), runs.get(f"tier {a} {d}", {})
    cg = f"{g(c,'codegen')} ({g(c,'build')}/{g(c,'opt')}/{g(c,'ptx')})"
    print(f"{a:<22}{d[1:]:>4} | {cg:>31} {g(c,'driver'):>10} {g(c,'load',  '{:.2f}'):>6} {g(c,'first'):>7} | {g(w,'first','{:.3f}'):>11} {w.get('cubin','-'):>6} | {g(ti,'first'):>13} {g(ti,'ready'):>10} {g(ti,'low_tf'):>7} {g(ti,'opt_tf'):>7}")
print("\n== causal D128: ptxas level (tiers off) ==")
print(f"{'level':>6} {'driver ms':>10} {'kernel ms':>10} {'TFLOP/s':>8}")
for l in range(5):
    r = runs.get(f"level O{l} causal_attention D128", {})
    print(f"{'O'+str(l):>6} {g(r,'driver'):>10} {g(r,'opt_ms','{:.3f}'):>10} {g(r,'opt_tf'):>8}")
PY
exit $status
