"""A chunked-prefill serving loop through the Python package on a GPU: B sequences each
take CHUNK new rows per step against a cache that grows by CHUNK every step (lengths
CHUNK, 2 CHUNK, ..., STEPS x CHUNK), so every call has a new length. What it measures is
the cost of a new length: the batched runs (``seq_lens`` on the host) bind the prefill
kernel per run shape, the split-KV kernels (``seq_lens`` on the device) do not. Each step
is timed on the host (``perf_counter`` around the call and a synchronize: what a serving
loop waits for), summed over the loop; the loop runs twice (the second pass meets the
lengths again). Anchors on the same steps: SDPA cuDNN and flash on the cache's first L
keys (dense), ``causal_lower_right`` (causal). Contiguous cache ``[B, Hkv, Lmax, D]``
and paged ones (pages of 128 and 16, shuffled), bf16 D128. Each attnc path's O is checked
against SDPA's after the loops (max abs difference at three lengths).

usage: python3 serve_loop.py [--examples DIR] [--steps N] [--chunk C] B,HQ,HKV ...
"""

import argparse
import pathlib
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

import attnc
from paged_cache import paged

D = 128


def loop(steps, chunk, call):
    """Seconds per step summed over the loop (host wall time, synchronized)."""
    total = 0.0
    for i in range(1, steps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        call(i * chunk)
        torch.cuda.synchronize()
        total += time.perf_counter() - t
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("shapes", nargs="+")
    a = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    ex = pathlib.Path(a.examples)
    steps, chunk = a.steps, a.chunk
    lmax = steps * chunk
    for arg in a.shapes:
        b, hq, hkv = (int(x) for x in arg.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, chunk, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, hkv, lmax, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, hkv, lmax, D, device="cuda", dtype=torch.bfloat16, generator=g)
        kc, vc, table = paged(k, v, 128, g)
        kc16, vc16, table16 = paged(k, v, 16, g)
        for kind in ("dense", "causal"):
            attn = attnc.compile(ex / f"{kind}.attn").attention()
            def step(cache, table_, on_device):
                def call(n):
                    lens = torch.full((b,), n, dtype=torch.int32)
                    return attn.decode(q, cache[0], cache[1], lens.cuda() if on_device else lens, table_)
                return call

            def maxdiff(call):
                worst = 0.0
                for n in (chunk, lmax // 2, lmax):
                    mask = causal_lower_right(chunk, n) if kind == "causal" else None
                    ref = F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], attn_mask=mask, enable_gqa=True)
                    worst = max(worst, float((call(n).float() - ref.float()).abs().max()))
                return worst

            out = []
            for label, cache, table_, on_device in (("host_lens", (k, v), None, False),
                                                   ("device_lens", (k, v), None, True),
                                                   ("paged128_host_lens", (kc, vc), table, False),
                                                   ("paged128_device_lens", (kc, vc), table, True),
                                                   ("paged16_host_lens", (kc16, vc16), table16, False)):
                call = step(cache, table_, on_device)
                call(lmax - 1)  # the kernels' JIT outside the loop (a length the loop never meets)
                first = loop(steps, chunk, call)
                path = attn._inner.decode_path(q, cache[0], cache[1], table_, None)
                second = loop(steps, chunk, call)
                out.append(f"attnc_{label} ({path}) {first * 1e3:.2f} / {second * 1e3:.2f} ms "
                           f"maxdiff {maxdiff(call):.3g}")

            def sdpa(be):
                def call(n):
                    mask = causal_lower_right(chunk, n) if kind == "causal" else None
                    kk, vv = k[:, :, :n], v[:, :, :n]
                    if be is None:
                        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=True)
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
                return call

            anchors = [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
            for name, be in anchors if kind == "dense" else [("sdpa_causal_lr", None)]:
                try:
                    call = sdpa(be)
                    loop(2, chunk, call)
                    first = loop(steps, chunk, call)
                    second = loop(steps, chunk, call)
                    out.append(f"{name} {first * 1e3:.2f} / {second * 1e3:.2f} ms")
                except Exception as ex_:  # noqa: BLE001 (an anchor that does not run here)
                    out.append(f"{name} ERR {type(ex_).__name__}")
            print(f"serve {kind} B{b} Hq{hq} Hkv{hkv} chunk{chunk} steps{steps} (lengths {chunk}..{lmax}) "
                  "| loop ms, first / second pass | " + " | ".join(out), flush=True)
        del q, k, v, kc, vc, kc16, vc16
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
