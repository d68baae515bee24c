"""Shared helpers of the attnc Python suite: paths, random inputs, a dense torch
reference of the attention semantics (float64), captures for any declaration."""

import math
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def qkv(b, hq, hkv, lq, lkv, d, dv=None, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    q = torch.randn(b, hq, lq, d, generator=g)
    k = torch.randn(b, hkv, lkv, d, generator=g)
    v = torch.randn(b, hkv, lkv, dv, generator=g)
    out = [x.to(dtype=dtype, device=device) for x in (q, k, v)]
    if requires_grad:
        for x in out:
            x.requires_grad_(True)
    return out


def dense_reference(q, k, v, mask=None, score=None, scale=None):
    """The attnc contract in float64: s = scale*q.k, s' = score(s, b, h, q, kv), masked
    positions -inf, o = softmax(s') v, lse = log sum exp(s'); fully masked rows give
    o = 0 and lse = -inf. GQA: query head h reads kv head h // (Hq / Hkv). `mask` and
    `score` take index tensors (b, h, qi, kvi) broadcast to [B, Hq, Lq, Lkv]."""
    b, hq, lq, d = q.shape
    hkv, lkv = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q64, k64, v64 = (x.double() for x in (q, k, v))
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    s = scale * q64 @ k64.transpose(-1, -2)
    bi = torch.arange(b).view(b, 1, 1, 1)
    hi = torch.arange(hq).view(1, hq, 1, 1)
    qi = torch.arange(lq).view(1, 1, lq, 1)
    ki = torch.arange(lkv).view(1, 1, 1, lkv)
    if score is not None:
        s = score(s, bi, hi, qi, ki)
    if mask is not None:
        m = mask(bi, hi, qi, ki).expand(b, hq, lq, lkv)
        s = s.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    p = torch.nan_to_num(p, nan=0.0)
    o = p @ v64
    return o, lse


def captures_for(attn, b, hq, lq, lkv, seed=0, ids=4):
    """Values for every capture of an attention (like the runtime's synth): int tensors
    hold sorted ids in 0..ids along their last axis, float tensors small normal values;
    i32 params a quarter of Lq, f32 params 1.0, bool params True."""
    g = torch.Generator().manual_seed(seed + 1)
    caps = {}
    for name, ty in attn.params:
        caps[name] = {"i32": max(lq // 4, 1), "f32": 1.0, "bool": True}[ty]
    for name, elem, dims in attn.tensors:
        shape = []
        for dname in dims:
            shape.append({"B": b, "H": hq, "Q": lq, "KV": lkv}.get(dname) or (int(dname) if dname.isdigit() else 8))
        if elem in ("i32", "i64"):
            last = shape[-1]
            rows = []
            for _ in range(math.prod(shape[:-1])):
                cuts = torch.randint(0, last + 1, (ids - 1,), generator=g).sort().values
                rows.append((torch.arange(last).unsqueeze(1) >= cuts.unsqueeze(0)).sum(1))
            t = torch.stack(rows).reshape(shape)
            caps[name] = t.to(torch.int32 if elem == "i32" else torch.int64)
        else:
            dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[elem]
            caps[name] = (0.5 * torch.randn(shape, generator=g)).to(dt)
    return caps


def close(a, b, atol=2e-5, rtol=2e-5):
    """Elementwise closeness with -inf == -inf."""
    a, b = a.double(), b.double()
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    ok = both_inf | (torch.abs(a - b) <= atol + rtol * torch.abs(b))
    return bool(ok.all()), float(torch.where(both_inf, 0.0, torch.abs(a - b)).max()) if a.numel() else 0.0
