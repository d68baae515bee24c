"""Chunked prefill of a document mask (packed sequences, causal within each document)
through the Python package on a GPU: ``Attention.decode`` of ``document_causal`` with Lq
new rows per sequence against a contiguous cache (and the same keys in a paged one,
pages of 128 rows, shuffled), ``seq_lens`` on the device, next to FlexAttention (compiled,
Triton backend) over the same cache with the mask written at logical positions by hand
(``q + seq_lens[b] - Lq``, as a Flex user serving with a cache writes it), its block mask
made once outside the timing (``create_block_mask``, whose time is printed apart).
Document ids: sorted, about ``--docs`` documents per sequence over the cache's positions.
CUDA events, min of 3 x ``iters`` calls after warm-ups, bf16 D128; TFLOP/s count
4 Hq Lq D x the sum of the lengths (every key of every row, the dense count: the mask's
density is printed). Each attnc result is checked against Flex's (max abs difference).
``ATTNC_DECODE_PREFILL=0`` in the environment sends attnc to the split-KV kernels (the
path before session 31 for documents with the lengths on the device). ``--mask chunked``:
``chunked_causal`` of examples/chunked.attn instead (causal within chunks of 256
positions: a mask without a closed form over no tensor, whose per-sequence tables the GPU
builds since session 33; before, the split-KV kernels).

usage: python3 chunked_prefill_documents.py [--examples DIR] [--docs N] [--mask documents|chunked] [--vary] [--no-flex] B,HQ,HKV,LQ,LKV ...
"""

import argparse
import pathlib
import time

import torch

import attnc
from paged_cache import paged
from cuda_timing import bench

D = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--docs", type=int, default=8, help="documents per sequence (about)")
    ap.add_argument("--vary", action="store_true", help="each sequence its own length (Lkv down to ~Lkv/2)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--mask", default="documents", choices=["documents", "chunked"])
    ap.add_argument("shapes", nargs="+")
    a = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    chunked = a.mask == "chunked"
    if chunked:
        attn = attnc.compile(pathlib.Path(a.examples) / "chunked.attn").attention("chunked_causal")
    else:
        attn = attnc.compile(pathlib.Path(a.examples) / "document_causal.attn").attention("document_causal")
    for arg in a.shapes:
        b, hq, hkv, lq, lkv = (int(x) for x in arg.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        host = torch.full((b,), lkv, dtype=torch.int32)
        if a.vary:
            host = torch.tensor([lkv - (i * 977) % max(1, lkv // 2) for i in range(b)], dtype=torch.int32)
        lens = host.cuda()
        # sorted ids: document boundaries at random positions, about a.docs per sequence
        cuts = torch.rand(b, lkv, device="cuda", generator=g) < (a.docs / lkv)
        doc = torch.cumsum(cuts.to(torch.int32), dim=1, dtype=torch.int32)
        if chunked:  # the same test written as ids: chunks of 256 positions
            doc = (torch.arange(lkv, device="cuda", dtype=torch.int32) // 256).expand(b, lkv).contiguous()
        caps = {} if chunked else {"doc": doc}
        kc, vc, table = paged(k, v, 128, g)
        # the mask's density over the live rows (every key of every row counted by tf)
        pos = torch.arange(lkv, device="cuda")
        dens_num, dens_den = 0, 0
        for bi in range(b):
            n = int(host[bi])
            qp = pos[n - lq:n] if n >= lq else pos[:0]
            keep = (qp[:, None] >= pos[None, :n]) & (doc[bi, qp][:, None] == doc[bi, :n][None, :])
            dens_num += int(keep.sum())
            dens_den += lq * n
        tf = 4 * hq * lq * int(host.sum()) * D / 1e12
        print(f"{attn.name} shape B{b} Hq{hq} Hkv{hkv} Lq{lq} Lkv{lkv} lengths {host.tolist()[:4]}... "
              f"density {dens_num / max(1, dens_den):.4f}", flush=True)
        ref = None
        if not a.no_flex:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def mask_mod(bb, hh, qi, ki):
                qp = qi + lens[bb] - lq
                return (ki < lens[bb]) & (qp >= ki) & (doc[bb, qp.clamp(min=0)] == doc[bb, ki])

            torch.cuda.synchronize()
            t0 = time.perf_counter()
            bm = create_block_mask(mask_mod, b, None, lq, lkv, device="cuda")
            torch.cuda.synchronize()
            t_bm = (time.perf_counter() - t0) * 1e3
            bm = create_block_mask(mask_mod, b, None, lq, lkv, device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            bm = create_block_mask(mask_mod, b, None, lq, lkv, device="cuda")
            torch.cuda.synchronize()
            t_bm2 = (time.perf_counter() - t0) * 1e3
            flex = torch.compile(flex_attention, dynamic=False)
            ref = flex(q, k, v, block_mask=bm, enable_gqa=True)
            ms = bench(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True))
            print(f"flex_triton {ms * 1e3:.1f} us {tf / ms * 1e3:.0f} TFLOP/s "
                  f"(create_block_mask {t_bm:.1f} ms first, {t_bm2:.2f} ms again)", flush=True)
        for label, kk, vv, tt in [("contiguous", k, v, None), ("paged128", kc, vc, table)]:
            o = attn.decode(q, kk, vv, lens, tt, **caps)
            path = attn._inner.decode_path(q, kk, vv, tt, None)
            if ref is None:
                ref = o
            # rows before a short sequence's start are masked entirely: attnc gives 0, Flex
            # its own value; compare the live rows
            live = torch.zeros(b, 1, lq, 1, dtype=torch.bool, device="cuda")
            for bi in range(b):
                n = int(host[bi])
                live[bi, :, max(0, lq - n):] = True
            diff = float(((o.float() - ref.float()).abs() * live).max())
            ms = bench(lambda kk=kk, vv=vv, tt=tt: attn.decode(q, kk, vv, lens, tt, **caps))
            print(f"attnc_{label}_device_lens ({path}) {ms * 1e3:.1f} us {tf / ms * 1e3:.0f} TFLOP/s "
                  f"maxdiff {diff:.3g}", flush=True)


if __name__ == "__main__":
    main()
