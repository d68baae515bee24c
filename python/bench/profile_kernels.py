"""The CUDA kernels of one attnc call under torch.profiler: per kernel name its count and
mean device time over `iters` calls (after warm-ups), and the calls' wall time per call.
Cases: documents chunked prefill with the lengths on the device (B8 Hq32 Hkv8 Lq 512 /
256 Lkv 8192 D128) and the documents forward (B2 H16 L8192 D128).

usage: python3 profile_kernels.py [--examples DIR]
"""

import argparse
import pathlib
import time

import torch
from torch.profiler import ProfilerActivity, profile


def prof(label, fn, iters=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / iters * 1e6
    rows = {}
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            n, t = rows.get(e.name, (0, 0.0))
            rows[e.name] = (n + 1, t + e.device_time)
    print(f"{label}: wall {wall:.1f} us per call", flush=True)
    for name, (n, t) in sorted(rows.items(), key=lambda x: -x[1][1]):
        print(f"   {name[:70]:70s} x{n / iters:.0f} {t / n:9.1f} us", flush=True)


def chunked_documents(b, hq, hkv, lq, lkv, g):
    """The inputs of one documents chunked-prefill call as this script draws them from
    ``g`` (q, k, v bf16 D128, then about 8 sorted documents per sequence; lengths all
    ``lkv`` on the device): ``(q, k, v, doc, lens)``. `kernel_timeline.py` and
    `builder_walk.py` draw theirs here too, so that the same generator state gives the
    same ids."""
    q = torch.randn(b, hq, lq, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, lkv, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, hkv, lkv, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    cuts = torch.rand(b, lkv, device="cuda", generator=g) < (8 / lkv)
    doc = torch.cumsum(cuts.to(torch.int32), dim=1, dtype=torch.int32)
    lens = torch.full((b,), lkv, dtype=torch.int32, device="cuda")
    return q, k, v, doc, lens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    a = ap.parse_args()
    import attnc  # (here: builder_walk.py imports this module's draws without the package)

    attn = attnc.compile(pathlib.Path(a.examples) / "document_causal.attn").attention("document_causal")
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, hq, hkv, lq, lkv in [(8, 32, 8, 512, 8192), (8, 32, 8, 256, 8192)]:
        q, k, v, doc, lens = chunked_documents(b, hq, hkv, lq, lkv, g)
        prof(f"chunked documents B{b} Lq{lq} Lkv{lkv}", lambda: attn.decode(q, k, v, lens, doc=doc))
    b, h, l = 2, 16, 8192
    q, k, v = (torch.randn(b, h, l, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    prof(f"documents forward B{b} H{h} L{l}", lambda: attn(q, k, v, doc=doc))


if __name__ == "__main__":
    main()
