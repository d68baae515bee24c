"""Where a training step's time goes: attnc forward + backward at one shape (default B2 H16
L4096 D128 bf16, dense and causal) on the current CUDA device, timed three ways with CUDA
events (forward only, backward only through ``retain_graph``, the whole step) next to SDPA,
then one torch.profiler trace of three steps listing the CUDA kernels by total time and
the host ops by host time (the
runtime's kernels are launched through the driver API on torch's stream, so CUPTI sees
them like torch's own).

Usage: python3 profile_step.py [--b 2] [--h 16] [--l 4096] [--d 128] [--out DIR]
Prints the tables; writes DIR/profile_step.json (default $OUT or /tmp/attnc-out).
The backward scheme comes from the environment (``ATTNC_BWD_DQ``), as for every binding.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import attnc
from bench_gpu import event_ms  # this folder (sys.path[0] when run as a script)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def main():
    ap = argparse.ArgumentParser()
    for n, dflt in (("b", 2), ("h", 16), ("l", 4096), ("d", 128)):
        ap.add_argument(f"--{n}", type=int, default=dflt)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    a = ap.parse_args()
    scheme = os.environ.get("ATTNC_BWD_DQ", "default")
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(a.b, a.h, a.l, a.d, device="cuda", dtype=torch.bfloat16, generator=g)
               .requires_grad_(True) for _ in range(3))
    do = torch.randn(a.b, a.h, a.l, a.d, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 4 * a.b * a.h * a.l * a.l * a.d
    res = {"scheme": scheme, "shape": [a.b, a.h, a.l, a.d]}
    cases = [("dense", "dense.attn", "dense", False), ("causal", "causal.attn", "causal_attention", True)]
    for name, file, attention, causal in cases:
        attn = attnc.compile(EXAMPLES / file).attention(attention)
        dens = 0.5 if causal else 1.0
        row = {}
        for who, fwd in (("attnc", lambda: attn(q, k, v)),
                         ("sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))):
            with torch.no_grad():
                f_ms = event_ms(fwd, iters=10, warm=3)
            o = fwd()
            b_ms = event_ms(lambda: o.backward(do, retain_graph=True), iters=10, warm=3)
            s_ms = event_ms(lambda: fwd().backward(do), iters=10, warm=3)
            row[who] = {"fwd_ms": f_ms, "bwd_ms": b_ms, "step_ms": s_ms,
                        "fwd_tflops": flops * dens / f_ms / 1e9, "bwd_tflops": 2.5 * flops * dens / b_ms / 1e9}
            print(f"[{scheme}] {name:7s} {who:6s} fwd {f_ms:.3f} ms ({row[who]['fwd_tflops']:.1f} TFLOP/s)"
                  f"  bwd {b_ms:.3f} ms ({row[who]['bwd_tflops']:.1f})  step {s_ms:.3f} ms", flush=True)
            del o
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                attn(q, k, v).backward(do)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
        print(f"[{scheme}] {name}: CUDA kernels of 3 attnc steps\n{table}", flush=True)
        cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=60)
        print(f"[{scheme}] {name}: host time of 3 attnc steps\n{cpu}", flush=True)
        row["ops"] = [(e.key, e.count, e.cpu_time_total, e.device_time_total) for e in prof.key_averages()]
        res[name] = row
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_step_{scheme}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
