"""CUDA-event timing for the benchmarks (``chunked_prefill.py``,
``chunked_prefill_documents.py``, ``doc_forward.py``, ``doc_tiles.py``, ``gqa_step.py``): ms per call of ``fn``, the min over
3 rounds of ``iters`` back-to-back calls after ``warm`` warm-ups."""

import torch


def bench(fn, iters=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    s, e, ts = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(3):
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return min(ts)
