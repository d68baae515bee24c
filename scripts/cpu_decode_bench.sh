#!/usr/bin/env bash
# Decoding on the CPU: attnc's split-KV CPU path (`attnc bench --decode --backend cpu`)
# next to PyTorch SDPA on the CPU (f32, GQA via enable_gqa, the same shapes and thread
# count), in one run on one machine, for each thread count given; ends with a table of
# ms and attnc / SDPA speedups. GB/s counts K and V read once.
#   bash scripts/cpu_decode_bench.sh [THREADS ...]     (default: 2 and all cores)
#   e.g. bash scripts/cpu_decode_bench.sh 2 16         (the issue's two counts)
# Per shape and thread count, attnc (contiguous and paged 16, best of 5) and SDPA (best
# of 5) alternate ROUNDS times (default 2); the table keeps each one's best.
# Needs a release attnc (cargo build --release -p attnc; or ATTNC_BIN=path, e.g. a binary
# carried to the GPU machine's host) and torch: .venv (scripts/python-setup.sh), else
# python3 (the GPU machine's has torch).
# Two builds in one run (e.g. before/after a change, same machine, same minute):
#   ATTNC_BINS="old=/tmp/attnc-old new=/tmp/attnc-new" bash scripts/cpu_decode_bench.sh 2 16
# (each label's attnc runs in turn per shape and round; one table row per label).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 2 "$(nproc)"
bin=${ATTNC_BIN:-target/release/attnc}
bins=${ATTNC_BINS:-attnc=$bin}
[ -n "${ATTNC_BINS:-}" ] || [ -x "$bin" ] || cargo build --release -q -p attnc --bin attnc
py=.venv/bin/python; [ -x "$py" ] || py=python3
"$py" - "$bins" "${ROUNDS:-2}" "$@" <<'PY'
import re, subprocess, sys, time, torch, torch.nn.functional as F
bins = [b.split("=", 1) for b in sys.argv[1].split()]
rounds, counts = int(sys.argv[2]), [int(t) for t in sys.argv[3:]]
shapes = [(1, 32, 8, 1, 32768), (8, 32, 8, 1, 4096), (1, 32, 8, 4, 32768), (1, 32, 8, 16, 8192)]
D = 128
print("torch", torch.__version__, "| attnc", " ".join(f"{l}={b}" for l, b in bins),
      "| f32 D128 causal at logical positions, ms")

def attnc(bin, threads, s):
    cmd = [bin, "bench", "--decode", "examples/causal.attn", "--backend", "cpu",
           "--dtype", "f32", "--d", str(D), "--threads", str(threads),
           "--kv-cache", "contiguous,paged", "--page-size", "16",
           "--decode-shape", ",".join(map(str, s)), "--iters", "5"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        if line.startswith("decode "):
            print(" ", bin.rsplit("/", 1)[-1], line)
            m = re.search(r" (contiguous|paged\d+) +([\d.]+) us", line)
            if m:
                got[m[1]] = float(m[2]) / 1e3
    return got

inputs = {}

def sdpa(threads, s):
    torch.set_num_threads(threads)
    B, Hq, Hkv, Lq, Lkv = s
    if s not in inputs:  # made once per shape (randn of 268 MB takes longer than SDPA)
        inputs.clear()
        inputs[s] = (torch.randn(B, Hq, Lq, D), torch.randn(B, Hkv, Lkv, D), torch.randn(B, Hkv, Lkv, D))
    q, k, v = inputs[s]
    # causal at logical positions: the Lq new rows are the last Lq positions
    mask = None
    if Lq > 1:
        qi = torch.arange(Lkv - Lq, Lkv).view(Lq, 1); ki = torch.arange(Lkv).view(1, Lkv)
        mask = qi >= ki
    f = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ms = min(ts) * 1e3
    print(f"  sdpa_cpu B{B} Hq{Hq} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D} threads {torch.get_num_threads()}: {ms:.3f} ms")
    return ms

rows = []
for s in shapes:
    for threads in counts:
        best = {}
        for _ in range(rounds):
            got = [((label, k), ms) for label, bin in bins for k, ms in attnc(bin, threads, s).items()]
            for key, ms in got + [("sdpa", sdpa(threads, s))]:
                best[key] = min(best.get(key, ms), ms)
        rows.append((threads, s, best))

label = len(bins) > 1
print(f"\n| threads | shape |{' build |' if label else ''} attnc contiguous | attnc paged 16 | SDPA "
      "| x SDPA contiguous | x SDPA paged | paged / contiguous |")
print("|---|---|" + ("---|" if label else "") + "---|---|---|---|---|---|")
for threads, (B, Hq, Hkv, Lq, Lkv), b in sorted(rows, key=lambda r: r[0]):
    r = b["sdpa"]
    for name, _ in bins:
        c = b.get((name, "contiguous"), float("nan"))
        p = b.get((name, "paged16"), float("nan"))
        print(f"| {threads} | B{B} Hq{Hq} Hkv{Hkv} Lq{Lq} Lkv{Lkv} |{f' {name} |' if label else ''} "
              f"{c:.2f} | {p:.2f} | {r:.2f} | {r / c:.2f} | {r / p:.2f} | {p / c:.2f} |")
PY
