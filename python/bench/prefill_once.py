"""A few chunked-prefill calls of one cache layout, for a profiler (``ncu -k regex:attnc
--launch-skip N --launch-count 1 python prefill_once.py LAYOUT``): bf16 D128 B8 Hq32 Hkv8,
Lq 256 new rows against 8192 keys, lengths on the host (the batched runs on the prefill
kernel), a contiguous cache or a paged one (pages of P rows, shuffled). Prints the
path and the CUDA-event µs per call.

usage: python3 prefill_once.py {contiguous,pagedP} [--calls N] [--kind dense|causal]"""

import argparse
import pathlib

import torch

import attnc
from paged_cache import paged

EX = pathlib.Path(__file__).resolve().parents[2] / "examples"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("layout", help="contiguous, or pagedP for pages of P rows (16, 32, ..., 256)")
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--kind", default="dense")
    ap.add_argument("--examples", default=str(EX))
    a = ap.parse_args()
    b, hq, hkv, lq, lkv, d = 8, 32, 8, 256, 8192, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, lq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    table = None
    if a.layout != "contiguous":
        k, v, table = paged(k, v, int(a.layout[5:]), g)
    attn = attnc.compile(pathlib.Path(a.examples) / f"{a.kind}.attn").attention()
    lens = torch.full((b,), lkv, dtype=torch.int32)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2 * a.calls)]
    for i in range(a.calls):
        ev[2 * i].record()
        attn.decode(q, k, v, lens, table)
        ev[2 * i + 1].record()
    torch.cuda.synchronize()
    us = [ev[2 * i].elapsed_time(ev[2 * i + 1]) * 1e3 for i in range(a.calls)]
    print(a.layout, a.kind, attn._inner.decode_path(q, k, v, table, None), " ".join(f"{x:.1f}" for x in us))


if __name__ == "__main__":
    main()
