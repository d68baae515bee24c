"""Where a chunked-prefill call's host time goes (a CUDA GPU, sm_90): document + causal
(the block table built on the GPU per sequence) next to causal (a closed form, no table)
through ``Attention.decode`` with the lengths on the device, B8 Hq32 Hkv8 D128 bf16 over a
contiguous cache. Per case: ``wall`` (µs per call of many back-to-back calls, one
synchronize: the host's time where it is the slower), ``gpu`` (CUDA events around 50
calls), ``enq`` (the host's time to enqueue one call), the extension's and the runtime's
steps (``_attnc.host_trace``: µs per lap of each stage of `host_trace.rs`), and cProfile's
top functions.

usage: python3 prefill_host.py [--examples DIR] [--iters N] LQ,LKV ..."""

import argparse
import cProfile
import io
import pathlib
import pstats

import torch

import attnc
from bench_gpu import gpu_us, host_steps, host_us, wall_us  # this folder (sys.path[0] when run as a script)

D = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="cProfile each case")
    ap.add_argument("shapes", nargs="*", default=["256,8192", "512,8192"])
    a = ap.parse_args()
    ex = pathlib.Path(a.examples)
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    doc_attn = attnc.compile(ex / "document_causal.attn").attention("document_causal")
    causal = attnc.compile(ex / "causal.attn").attention("causal_attention")
    b, hq, hkv = 8, 32, 8
    for arg in a.shapes:
        lq, lkv = (int(x) for x in arg.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        lens = torch.full((b,), lkv, dtype=torch.int32, device="cuda")
        cuts = torch.rand(b, lkv, device="cuda", generator=g) < (8 / lkv)
        doc = torch.cumsum(cuts.to(torch.int32), dim=1, dtype=torch.int32)
        cases = [
            ("documents", lambda: doc_attn.decode(q, k, v, lens, doc=doc), doc_attn),
            ("causal", lambda: causal.decode(q, k, v, lens), causal),
        ]
        for name, call, att in cases:
            call()
            path = att._inner.decode_path(q, k, v, None, None)
            w = wall_us(call, iters=a.iters, warm=20)
            gp = gpu_us(call)
            h = host_us(call)
            print(f"Lq{lq} Lkv{lkv} {name} ({path}): wall {w:.1f} us/call, gpu {gp:.1f}, enq {h:.1f}", flush=True)
            steps = [f"{s} {us:.1f}" for s, us, _ in host_steps(call, a.iters, warm=20)]
            print(f"  steps (us a lap): {', '.join(steps)}", flush=True)
            if a.profile:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(a.iters):
                    call()
                torch.cuda.synchronize()
                pr.disable()
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(10)
                print(f"--- cProfile {name} ({a.iters} calls) ---\n" + s.getvalue()[:2500], flush=True)


if __name__ == "__main__":
    main()
