"""Host time of the document + causal training step's two halves through the package,
without and with a block mask (bench_gpu.py ``fwdbwd``'s case: B2 H16 L4096 D128 bf16,
ids sorted in 0..8 per batch row): wall-clock µs to enqueue N forwards (autograd on) and
N backwards of one forward (``retain_graph``), no synchronization inside (the queue does
not fill at these counts), next to the GPU time of each (CUDA events) — which half is
host-bound, and what the backward's block ranges made on the device cost the host; then
the backward's host laps (``_attnc.host_trace``).

usage: python3 doc_bwd_host.py [EXAMPLES_DIR]"""

import pathlib
import sys
import time

import torch

from bench_gpu import gpu_us, host_steps, host_us  # this folder (sys.path[0] when run as a script)
from doc_step_timeline import doc_step_inputs


def main():
    ex = sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "examples"
    attn, q, k, v, do, doc, bm = doc_step_inputs(ex)
    # two rounds, the second in the other order (session 33: the first round's first
    # timings ran slower, whichever variant went first; quote the second round)
    runs = [("no block mask", {}), ("block mask", {"block_mask": bm})]
    for r, (tag, kw) in enumerate(runs + runs[::-1]):
        tag = f"round {r // 2 + 1} {tag}"
        fwd = lambda: attn(q, k, v, doc=doc, **kw)  # noqa: E731
        o = fwd()
        bwd = lambda: o.backward(do, retain_graph=True)  # noqa: E731
        step = lambda: fwd().backward(do)  # noqa: E731
        print(f"{tag}: forward host {host_us(fwd):.1f} µs gpu {gpu_us(fwd):.1f}; "
              f"backward host {host_us(bwd):.1f} gpu {gpu_us(bwd):.1f}; "
              f"step host {host_us(step):.1f} gpu {gpu_us(step):.1f}", flush=True)
        # the backward's steps in the runtime (`host_trace`: setup, buffers and call of
        # `backward_cuda_into`; skip = kernels and tables found, prefill = the stream's
        # ranges key and buffers, ranges = their launches, launch = the backward kernels)
        laps = host_steps(bwd, 40, warm=5)
        print("  backward laps (µs per call): " + ", ".join(f"{n} {us:.1f}" for n, us, _ in laps), flush=True)
        # per-call host time against the number of calls (constant: a synchronization per
        # call; growing: the queue), and torch's own synchronizing calls (sync debug mode)
        print("  backward host by calls: " + ", ".join(f"{n}: {host_us(bwd, n):.1f}" for n in (5, 20, 80)), flush=True)
        import warnings
        torch.cuda.set_sync_debug_mode(1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            host_us(bwd, 5)
        torch.cuda.set_sync_debug_mode(0)
        syncs = sorted({str(x.message)[:80] for x in w if "synchroniz" in str(x.message)})
        print(f"  torch synchronizing calls in 6 backwards: {len(syncs)} {syncs[:3]}", flush=True)
    idle_probe(attn, q, k, v, do, doc, bm)


def idle_probe(attn, q, k, v, do, doc, bm):
    """Whether torch's stream is idle (every queued kernel done: a synchronization just
    happened, or the host is behind) when the package's backward starts and when it
    returns, over 30 training steps of each kind; and the host µs inside it."""
    from attnc import _ops

    orig = _ops._backward_impl
    seen = []

    def probe(*a, **kw):
        s = torch.cuda.current_stream()
        before = s.query()
        t0 = time.perf_counter()
        r = orig(*a, **kw)
        t1 = time.perf_counter()
        seen.append((before, s.query(), (t1 - t0) * 1e6))
        return r

    _ops._backward_impl = probe
    try:
        for tag, kw in (("no block mask", {}), ("block mask", {"block_mask": bm})):
            for _ in range(5):
                attn(q, k, v, doc=doc, **kw).backward(do)
            torch.cuda.synchronize()
            seen.clear()
            for _ in range(30):
                attn(q, k, v, doc=doc, **kw).backward(do)
            torch.cuda.synchronize()
            n = len(seen)
            print(f"  {tag}: stream idle at backward entry {sum(x[0] for x in seen)}/{n}, at its return "
                  f"{sum(x[1] for x in seen)}/{n}; host in _backward_impl {sum(x[2] for x in seen) / n:.1f} µs",
                  flush=True)
    finally:
        _ops._backward_impl = orig


if __name__ == "__main__":
    main()
