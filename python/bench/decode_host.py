"""Where a decode call's host time goes (a CUDA GPU): microseconds per call of
``Attention.decode`` at shapes whose kernels take less than the call's host work, so that
back-to-back calls measure the host (``wall``: many calls, one synchronize), next to the
stream's time per call (``gpu``: CUDA events around 50 back-to-back calls, the GPU's idle
gaps included where the host is the slower) and the host time of one
enqueue (``enq``: the clock stopped before the synchronize). Then the call's parts alone:
the extension's ``decode_workspace`` and ``decode_cuda`` with buffers made once, the
torch allocations (three since session 27, four before), the lengths' copy; SDPA (flash, cuDNN) on the same rows and keys as
anchors; the extension's and the runtime's steps of the call (``_attnc.host_trace``: µs
per lap of each step, `host_trace.rs`'s stages); and cProfile of the decode call. bf16 D128.

Cases: ``decode`` (Lq 1, B1 Hq32 Hkv8, 1024 keys: the split-KV kernels, lengths on the
device), the same paged (pages of 16), and ``chunk`` (Lq 128 against 1024 keys, lengths
on the host: the split-KV kernels at B1, the batched runs on the prefill kernel at B8). With the package installed:
``python python/bench/decode_host.py [--iters N]``."""

import argparse
import cProfile
import io
import pathlib
import pstats

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnc
from attnc import _attnc, _ops
from bench_gpu import gpu_us, host_steps, host_us, wall_us  # this folder (sys.path[0] when run as a script)
from paged_cache import paged

EX = pathlib.Path(__file__).resolve().parents[2] / "examples"
D = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--profile", type=int, default=1, help="cProfile the decode case (0: no)")
    a = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), "attnc", attnc.__version__, flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    hq, hkv, lkv = 32, 8, 1024
    k8 = torch.randn(8, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v8 = torch.randn(8, hkv, lkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = k8[:1].contiguous(), v8[:1].contiguous()
    kc, vc, table = paged(k, v, 16, g)
    attn = attnc.compile(EX / "causal.attn").attention()
    inner = attn._inner
    rows = {}
    for case, b, lq, cache, tab, host in (("decode", 1, 1, (k, v), None, False),
                                          ("decode_paged16", 1, 1, (kc, vc), table, False),
                                          ("chunk128_host_lens", 1, 128, (k, v), None, True),
                                          ("chunk128_b8_host_lens", 8, 128, (k8, v8), None, True)):
        q = torch.randn(b, hq, lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        lens_cpu = torch.full((b,), lkv, dtype=torch.int32)
        lens = lens_cpu if host else lens_cpu.cuda()
        call = lambda: attn.decode(q, cache[0], cache[1], lens, tab)  # noqa: E731
        call()
        path = inner.decode_path(q, cache[0], cache[1], tab, None)
        rows[f"{case} ({path}) wall"] = wall_us(call, a.iters)
        rows[f"{case} enq"] = host_us(call, n=40)
        rows[f"{case} gpu"] = gpu_us(call)
        n_o, n_lse, n_r = inner.decode_workspace(q, cache[0], cache[1], tab, None)
        o = q.new_empty((b, hq, lq, D))
        lse = q.new_empty((b, hq, lq), dtype=torch.float32)
        ws = q.new_empty((n_o + n_lse,), dtype=torch.float32)
        rg = q.new_empty((n_r,), dtype=torch.int32)
        st = _ops._stream(q)
        lens_dev = lens_cpu.cuda()
        hl = lens_cpu.tolist() if host else None
        rows[f"{case} ext decode_workspace"] = wall_us(
            lambda: inner.decode_workspace(q, cache[0], cache[1], tab, None), a.iters)
        rows[f"{case} ext decode_cuda"] = wall_us(
            lambda: inner.decode_cuda(q, cache[0], cache[1], lens_dev, tab, o, lse, ws, rg, None, [], [], st, hl),
            a.iters)
        rows[f"{case} ext decode_path (reads only)"] = wall_us(
            lambda: inner.decode_path(q, cache[0], cache[1], tab, None), a.iters)
        rows[f"{case} 3 allocations (o, lse, one workspace)"] = wall_us(
            lambda: (q.new_empty((b, hq, lq, D)), q.new_empty((b, hq, lq), dtype=torch.float32),
                     q.new_empty((n_o + n_lse + n_r + 1,), dtype=torch.float32)), a.iters)
        rows[f"{case} 4 allocations"] = wall_us(
            lambda: (q.new_empty((b, hq, lq, D)), q.new_empty((b, hq, lq), dtype=torch.float32),
                     q.new_empty((n_o + n_lse,), dtype=torch.float32), q.new_empty((n_r,), dtype=torch.int32)),
            a.iters)
        if host:
            rows[f"{case} lens .tolist() + .to(cuda)"] = wall_us(
                lambda: (lens_cpu.reshape(-1).tolist(), lens_cpu.to(q.device, non_blocking=True)), a.iters)
        kk, vv = cache[0], cache[1]
        if tab is None:
            for name, be in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
                def sd(be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
                try:
                    sd()
                    rows[f"{case} {name} wall"] = wall_us(sd, a.iters)
                    rows[f"{case} {name} gpu"] = gpu_us(sd)
                except Exception as e:  # noqa: BLE001 (an anchor that does not run here)
                    print(f"{case} {name}: {type(e).__name__} {e}"[:200])
        rows[f"{case} torch launch (x.add_(0))"] = wall_us(lambda: o.add_(0), a.iters)
        trace = getattr(_attnc, "host_trace", None)  # (wheels since session 27)
        if trace is not None:
            # the extension's and the runtime's steps of the zero-copy call (split-KV path)
            for name, us, per_call in host_steps(call, a.iters):
                rows[f"{case} step {name} (x{per_call:g} a call)"] = us
        if a.profile and case in ("decode", "chunk128_b8_host_lens"):
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(2000):
                call()
            torch.cuda.synchronize()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
            print(f"--- cProfile {case} (2000 calls) ---\n" + s.getvalue()[:3500], flush=True)
    for name, us in rows.items():
        print(f"{name:>52}: {us:8.1f} us", flush=True)


if __name__ == "__main__":
    main()
