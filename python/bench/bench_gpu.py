"""GPU benchmark of the attnc Python package (scripts/device-remote.sh, ATTNC_PARTS=python).

1. Call overhead: microseconds per call at a tiny shape (B1 H4 L64 D64 bf16, causal),
   wall clock over many back-to-back calls (launch-bound), for attnc, FlexAttention
   (torch.compile'd, block mask made once) and SDPA.
2. Throughput at B2 H16 L8192 D128 bf16 (dense and causal): ms per call through Python
   (CUDA events), next to the `attnc bench` CLI's ms/call of the same run (target: within 3%).
3. python/examples/train_tiny.py on the GPU: tokens/s with attnc and with FlexAttention.

Usage: python3 bench_gpu.py [--attnc-bin .bin/attnc] [--out DIR] [--skip-train]
Writes DIR/python_bench.json (default $OUT or /tmp/attnc-out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import attnc

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def wall_us(fn, iters=2000, warm=50):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def event_ms(fn, iters=20, warm=5, reps=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / iters)
    return sorted(times)[len(times) // 2]


def overhead(res):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    causal = attnc.compile(EXAMPLES / "causal.attn").attention()
    flex = torch.compile(flex_attention)
    bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, 64, 64, device="cuda")
    rows = {
        "attnc": lambda: causal(q, k, v),
        "flex_compiled": lambda: flex(q, k, v, block_mask=bm),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    out = {}
    for name, fn in rows.items():
        out[name] = wall_us(fn)
        print(f"call overhead B1 H4 L64 D64 bf16 causal: {name:>14} {out[name]:8.1f} us/call", flush=True)
    res["overhead_us"] = out


def cli_ms(bin_path, file, attention, extra=()):
    cmd = [bin_path, "bench", str(EXAMPLES / file), "--attention", attention, "--backend", "cuda", "--dtype", "bf16",
           "--b", "2", "--h", "16", "--lq", "8192", "--d", "128", "--iters", "20", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"([\d.]+) ms/call", r.stdout)
    if r.returncode != 0 or not m:
        print(f"attnc bench failed: {r.stdout}{r.stderr}", flush=True)
        return None
    return float(m[1])


def throughput(res, bin_path):
    out = {}
    for file, name in (("dense.attn", "dense"), ("causal.attn", "causal_attention")):
        attn = attnc.compile(EXAMPLES / file).attention(name)
        q, k, v = (torch.randn(2, 16, 8192, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ms = event_ms(lambda: attn(q, k, v))
        flops = 4 * 2 * 16 * 8192 * 8192 * 128 * (0.5 if "causal" in name else 1.0)
        cli = cli_ms(bin_path, file, name) if bin_path else None
        ratio = f", CLI {cli:.3f} ms/call, python/CLI {ms / cli:.3f}" if cli else ""
        print(f"throughput B2 H16 L8192 D128 bf16 {name}: python {ms:.3f} ms/call ({flops / ms / 1e9:.1f} TFLOP/s){ratio}", flush=True)
        out[name] = {"python_ms": ms, "cli_ms": cli}
    res["throughput"] = out


def train(res):
    script = ROOT / "python" / "examples" / "train_tiny.py"
    cmd = [sys.executable, str(script), "--device", "cuda", "--dtype", "bf16", "--seq", "1024", "--batch", "8",
           "--dim", "256", "--heads", "4", "--layers", "4", "--steps", "200", "--log-every", "50"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-2000:] if r.returncode else "", flush=True)
    m = re.search(r"tokens/s: attnc ([\d,]+), flex ([\d,]+)", r.stdout)
    res["train_tiny"] = {
        "returncode": r.returncode,
        "attnc_tokens_s": float(m[1].replace(",", "")) if m else None,
        "flex_tokens_s": float(m[2].replace(",", "")) if m else None,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--attnc-bin", default=None)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    p.add_argument("--skip-train", action="store_true")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, attnc {attnc.__version__}", flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    status = 0
    for step in (lambda: overhead(res), lambda: throughput(res, a.attnc_bin), lambda: None if a.skip_train else train(res)):
        try:
            step()
        except Exception as e:  # report and go on with the other parts
            print(f"benchmark step failed: {type(e).__name__}: {e}", flush=True)
            status = 1
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "python_bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
