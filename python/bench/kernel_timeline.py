"""The device timeline of back-to-back chunked-prefill calls of a document mask
(``Attention.decode`` of ``document_causal``, lengths on the device, B8 Hq32 Hkv8 Lkv8192
D128 bf16, Lq 256 and 512): each kernel's start (µs from the first) and duration under
torch.profiler, six calls — whether the GPU idles between the block-table builder, the
attention kernel and the next call, and what each takes on the same ids. The ids are
drawn per shape from one generator (about 8 sorted documents per sequence), so a shape's
work depends on where its last document starts: compare kernels within one run.

usage: python3 kernel_timeline.py [EXAMPLES_DIR]"""

import pathlib
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import attnc
from profile_kernels import chunked_documents  # this folder (sys.path[0] when run as a script)


def device_events(fn, calls, warm=5, cpu=True):
    """The CUDA events of ``calls`` back-to-back calls of ``fn`` under torch.profiler
    (after ``warm`` warm-ups; with ``cpu`` the profiler traces the host too), by start."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if cpu else [])
    with profile(activities=acts) as p:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sorted((e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                  key=lambda e: e.time_range.start)


def print_events(ev):
    """One line per event: its start (µs from the first) and duration, its name."""
    t0 = ev[0].time_range.start
    for e in ev:
        print(f"  {e.time_range.start - t0:9.1f} +{e.time_range.end - e.time_range.start:7.1f}  {e.name[:60]}",
              flush=True)


def main():
    ex = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "examples")
    attn = attnc.compile(ex / "document_causal.attn").attention("document_causal")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, hq, hkv, lkv = 8, 32, 8, 8192
    for lq in (256, 512):
        q, k, v, doc, lens = chunked_documents(b, hq, hkv, lq, lkv, g)

        def call():
            return attn.decode(q, k, v, lens, doc=doc)

        ev = device_events(call, 6)
        print(f"Lq{lq}: {len(ev)} device events", flush=True)
        print_events(ev)


if __name__ == "__main__":
    main()
