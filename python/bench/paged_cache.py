"""The paged form of a contiguous K/V cache for the decoding benchmarks (``chunked_prefill.py``,
``serve_loop.py``): ``[B, Hkv, L, D]`` -> ``[B L / P, P, Hkv, D]`` with the pages shuffled
(the vLLM / FlashInfer layout) and the page table ``i32[B, L / P]``; on k's device."""

import torch


def paged(k, v, ps, generator):
    b, hkv, lkv, d = k.shape
    pages = lkv // ps
    perm = torch.randperm(b * pages, device=k.device, generator=generator)

    def pages_of(x):
        out = torch.empty(b * pages, ps, hkv, x.shape[3], device=x.device, dtype=x.dtype)
        out[perm] = x.view(b, hkv, pages, ps, x.shape[3]).permute(0, 2, 3, 1, 4).reshape(b * pages, ps, hkv, x.shape[3])
        return out

    return pages_of(k), pages_of(v), perm.view(b, pages).to(torch.int32)
