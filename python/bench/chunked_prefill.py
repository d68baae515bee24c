"""Chunked prefill through the Python package on a GPU: ``Attention.decode`` with Lq new
rows per sequence against a contiguous cache and the same keys in paged ones (pages of
128 and 16 rows, shuffled), ``seq_lens`` on the host (a CPU tensor: batched runs on the
warp-specialized prefill kernel where they win, K/V read in place) and on the device (the
whole batch in one launch of the prefill kernel, each CTA reading its length, where it
wins; else the split-KV kernel), next to SDPA cuDNN and flash on the same keys
(q ``[B, Hq, Lq, D]``, K/V ``[B, Hkv, Lkv, D]``, enable_gqa; causal: torch's
``causal_lower_right``, the chunk's own alignment). CUDA events, min of 3 x ``iters``
calls after warm-ups, bf16 D128; TFLOP/s count 4 Hq Lq D x the sum of the lengths (every
key of every row).
Each attnc result is checked against SDPA's (max abs difference printed).

usage: python3 chunked_prefill.py [--examples DIR] [--rounds R] [--only LABELS] [--vary] B,HQ,HKV,LQ,LKV ...
"""

import argparse
import pathlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

import attnc
from paged_cache import paged
from cuda_timing import bench

D = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--rounds", type=int, default=1, help="rounds over the configurations, order rotated; min reported")
    ap.add_argument("--only", default="", help="comma-separated configuration labels (host_lens, device_lens, ...)")
    ap.add_argument("--vary", action="store_true",
                    help="each sequence its own length (Lkv down to ~Lkv/2); attnc only, results against the host-lengths call")
    ap.add_argument("shapes", nargs="+")
    a = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    ex = pathlib.Path(a.examples)
    attns = {"dense": attnc.compile(ex / "dense.attn").attention(), "causal": attnc.compile(ex / "causal.attn").attention()}
    for arg in a.shapes:
        b, hq, hkv, lq, lkv = (int(x) for x in arg.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        host = torch.full((b,), lkv, dtype=torch.int32)
        if a.vary:
            # lengths from Lkv down to about Lkv / 2, every sequence its own (the host
            # runs are one sequence each)
            host = torch.tensor([lkv - (i * 977) % max(1, lkv // 2) for i in range(b)], dtype=torch.int32)
        dev = host.cuda()
        # the same keys in paged caches of pages of 128 and 16 rows, pages shuffled
        kc, vc, table = paged(k, v, 128, g)
        kc16, vc16, table16 = paged(k, v, 16, g)
        tf = 4 * hq * lq * int(host.sum()) * D / 1e12
        for kind, attn in attns.items():
            mask = None if kind == "dense" else causal_lower_right(lq, lkv)
            if a.vary:
                # (no SDPA anchor over varying lengths: every result against the host-lengths
                # call's)
                ref = attn.decode(q, k, v, host)
            else:
                ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            out = []
            configs = [("host_lens", host, k, v, None), ("device_lens", dev, k, v, None),
                       ("paged128_host_lens", host, kc, vc, table),
                       ("paged128_device_lens", dev, kc, vc, table),
                       ("paged16_host_lens", host, kc16, vc16, table16),
                       ("paged16_device_lens", dev, kc16, vc16, table16)]
            if a.only:
                configs = [c for c in configs if c[0] in a.only.split(",")]
            best, seen = {}, {}
            # (rounds rotate the order, so that no configuration always runs first)
            for r in range(a.rounds):
                for label, sl, kk, vv, tt in configs[r % len(configs):] + configs[:r % len(configs)]:
                    o = attn.decode(q, kk, vv, sl, tt)
                    path = attn._inner.decode_path(q, kk, vv, tt, None)
                    diff = float((o.float() - ref.float()).abs().max())
                    ms = bench(lambda sl=sl, kk=kk, vv=vv, tt=tt: attn.decode(q, kk, vv, sl, tt))
                    best[label] = min(best.get(label, ms), ms)
                    seen[label] = (path, max(diff, seen.get(label, ("", 0.0))[1]))
            for label, *_ in configs:
                ms, (path, diff) = best[label], seen[label]
                out.append(f"attnc_{label} ({path}) {ms * 1e3:.1f} us {tf / ms * 1e3:.0f} TFLOP/s maxdiff {diff:.3g}")
            sdpa = [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
            for name, be in [] if a.vary else sdpa if kind == "dense" else [("sdpa_causal_lr", None)]:
                def call(be=be):
                    if be is None:
                        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                try:
                    ms = bench(call)
                    out.append(f"{name} {ms * 1e3:.1f} us {tf / ms * 1e3:.0f} TFLOP/s")
                except Exception as ex_:  # noqa: BLE001 (an anchor that does not run here)
                    out.append(f"{name} ERR {type(ex_).__name__}")
            print(f"chunk {kind} B{b} Hq{hq} Hkv{hkv} Lq{lq} Lkv{lkv} D{D} | " + " | ".join(out), flush=True)
        del q, k, v, kc, vc, kc16, vc16
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
