"""The CUDA backward on torch tensors (the package's zero-copy path, ``backward_cuda``)
timed kernel-only with CUDA events under each dQ scheme and two kinds of inputs, to tell
whether a gap between this path and the Rust kernel benchmark
(``gpu_backward --ignored gpu_backward_bench``) comes from the data or from the path:

- ``real``: q, k, v, dO ~ N(0, 1); O and LSE from attnc's forward (what training sees);
- ``bench``: the Rust benchmark's inputs: q, k, v, dO ~ U(-1, 1), O ~ U(-0.3, 0.3),
  LSE = ln(Lkv) everywhere.

bf16, dense and causal, B2 H16 D128 at L4096 and L8192 by default. Each scheme binds its
own attention (a comment makes another registry key) with ``ATTNC_BWD_DQ`` set while its
backward kernels are first looked up. Prints one line per case (ms, TFLOP/s = 2.5 x the
forward's FLOPs over unmasked pairs); writes DIR/bwd_paths.json (default $OUT).

Usage: python3 bwd_paths.py [--lens 4096,8192] [--schemes default,ordered,separate]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib

import torch

import attnc
from bench_gpu import event_ms  # this folder (sys.path[0] when run as a script)
from attnc import _ops

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="4096,8192")
    ap.add_argument("--schemes", default="default,ordered,separate")
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    a = ap.parse_args()
    b, h, d = a.b, a.h, 128
    res = {}
    for scheme in a.schemes.split(","):
        for name, file, attention, dens in (("dense", "dense.attn", "dense", 1.0),
                                            ("causal", "causal.attn", "causal_attention", 0.5)):
            attn = attnc.compile((EXAMPLES / file).read_text() + f"\n// scheme {scheme}\n").attention(attention)
            inner = attn._inner
            for l in (int(x) for x in a.lens.split(",")):
                g = torch.Generator(device="cuda").manual_seed(l)
                shape = (b, h, l, d)

                def rnd(kind, amp=1.0):
                    if kind == "real":
                        return torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
                    u = torch.rand(shape, device="cuda", dtype=torch.float32, generator=g)
                    return ((u * 2 - 1) * amp).to(torch.bfloat16)

                for data in ("real", "bench"):
                    q, k, v, do = (rnd(data) for _ in range(4))
                    if data == "real":
                        with torch.no_grad():
                            o, lse = attn(q, k, v, return_lse=True)
                    else:
                        o = rnd(data, 0.3)
                        lse = torch.full((b, h, l), math.log(l), device="cuda", dtype=torch.float32)
                    if scheme != "default":
                        os.environ["ATTNC_BWD_DQ"] = scheme
                    try:
                        def run():
                            return _ops._backward_impl(inner, q, k, v, o, lse, do, None, None, [], [], [], [], [])
                        run()
                    finally:
                        os.environ.pop("ATTNC_BWD_DQ", None)
                    ms = event_ms(run, iters=10, warm=3)
                    tf = 2.5 * 4 * b * h * l * l * d * dens / ms / 1e9
                    key = f"{scheme}/{name}/L{l}/{data}"
                    res[key] = {"ms": ms, "tflops": tf}
                    print(f"{key:32s} {ms:.3f} ms {tf:6.1f} TFLOP/s", flush=True)
                    del q, k, v, do, o, lse
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bwd_paths.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
