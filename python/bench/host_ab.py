"""Host time of a Python training step with whichever attnc build is on PYTHONPATH, for an
A/B of two builds in one device call: one process per build, alternated (session 20). Each
process measures its own calibration (SDPA at the same tiny shape), so the rounds can be
read as ratios.

Rows: the tiny shape (B1 H4 L64 D64 bf16 causal; wall-clock us per call over back-to-back
calls, launch- and host-bound): ``fwd`` (no autograd), ``step`` (``o.sum().backward()``),
``step_do`` (``o.backward(dO)`` with a contiguous dO), each for attnc and SDPA (default
backend); the document + causal step of host_step.py (B2 H16 L4096 D128, block mask made
once): CUDA-event ms per step and host us to enqueue one step (and one forward).
Prints one JSON line (``AB {...}``), tagged with ``--tag``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import attnc
from bench_gpu import EXAMPLES, event_ms, wall_us, host_us  # this folder (sys.path[0] when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = {"tag": a.tag, "attnc_file": attnc.__file__}
    tq, tk, tv = (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    tqg, tkg, tvg = (x.clone().requires_grad_(True) for x in (tq, tk, tv))
    tdo = torch.randn_like(tq)
    causal = attnc.compile(EXAMPLES / "causal.attn").attention()
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    rows = {}
    for name, f in (("attnc", causal), ("sdpa", sdpa)):
        rows[f"tiny fwd {name}"] = lambda f=f: f(tq, tk, tv)
        rows[f"tiny step {name}"] = lambda f=f: f(tqg, tkg, tvg).sum().backward()
        rows[f"tiny step_do {name}"] = lambda f=f: f(tqg, tkg, tvg).backward(tdo)
    for fn in rows.values():
        fn()
    torch.cuda.synchronize()
    for rnd in range(2):
        for name, fn in rows.items():
            res.setdefault(name, []).append(round(wall_us(fn, iters=a.iters, warm=20), 1))
    if not a.no_doc:
        b, h, l, d = 2, 16, 4096, 128
        g = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
                   for _ in range(3))
        do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
        attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
        bm = attn.block_mask(q, k, v, doc=doc)
        step = lambda: attn(q, k, v, block_mask=bm, doc=doc).backward(do)  # noqa: E731
        fwd = lambda: attn(q.detach(), k.detach(), v.detach(), block_mask=bm, doc=doc)  # noqa: E731
        step()
        for _ in range(2):
            res.setdefault("doc step_ms", []).append(round(event_ms(step, iters=10, warm=3), 4))
            res.setdefault("doc host_us", []).append(round(host_us(step), 1))
            res.setdefault("doc fwd_host_us", []).append(round(host_us(fwd), 1))
    res["s"] = round(time.perf_counter() - t0, 1)
    print("AB " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
