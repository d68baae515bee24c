"""Decoding from Python (``Attention.decode``): new query rows against a contiguous or
paged KV cache, logical positions. CPU (float32) against the f64 oracle of the same call
(``reference_decode``) on every example whose captures fit a cache, GQA, Lq 1/4/16,
seq_lens varying across the batch (0, 1, full), shuffled page tables (the same logical
cache as a contiguous one gives the same result); decoding a full cache with Lq = Lkv is
prefill; errors name the tensor with the cache codes E0320..E0323."""

import pytest
import torch

import attnc
from conftest import EXAMPLES, captures_for

TOL = dict(atol=2e-5, rtol=2e-5)


def cache_inputs(b, hq, hkv, lq, lkv_max, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g)
    k = torch.randn(b, hkv, lkv_max, d, generator=g)
    v = torch.randn(b, hkv, lkv_max, d, generator=g)
    return q, k, v


def paged(k, v, page_size, seed=0):
    """The paged form of a contiguous cache: shuffled physical pages (plus a spare one)."""
    b, hkv, lkv, d = k.shape
    pages = -(-lkv // page_size)
    n = b * pages + 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: b * pages]
    table = perm.view(b, pages).to(torch.int32)
    kc = torch.zeros(n, page_size, hkv, d)
    vc = torch.zeros(n, page_size, hkv, v.shape[3])
    pad = pages * page_size - lkv
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(b, hkv, pages, page_size, d)
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(b, hkv, pages, page_size, v.shape[3])
    for bi in range(b):
        for p in range(pages):
            kc[table[bi, p]] = kp[bi, :, p].transpose(0, 1)
            vc[table[bi, p]] = vp[bi, :, p].transpose(0, 1)
    return kc, vc, table


def at_capacity(attn, caps, cap):
    """Captures with their `Q`/`KV` dimensions (indexed by position) padded to a cache's
    capacity `cap` (positions past seq_lens are never read)."""
    out = dict(caps)
    for name, _, dims in attn.tensors:
        x = out[name]
        for axis, dim in enumerate(dims):
            if dim in ("Q", "KV") and x.shape[axis] < cap:
                pad = list(x.shape)
                pad[axis] = cap - x.shape[axis]
                x = torch.cat([x, torch.zeros(pad, dtype=x.dtype)], dim=axis)
        out[name] = x
    return out


# examples with captures of a fixed size (no `Q`-indexed tensor read at kv positions)
CASES = [("causal.attn", None), ("sliding_window.attn", None), ("alibi_causal.attn", "alibi_causal"),
         ("softcap.attn", "softcap_causal"), ("document_causal.attn", "document_causal"), ("dense.attn", None)]


@pytest.mark.parametrize("lq", [1, 4, 16])
@pytest.mark.parametrize("file,name", CASES, ids=[f for f, _ in CASES])
def test_decode_matches_oracle_contiguous_and_paged(file, name, lq):
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, lkv, d = 4, 8, 2, 100, 32
    q, k, v = cache_inputs(b, hq, hkv, lq, lkv, d, seed=lq)
    seq_lens = torch.tensor([0, 1, 57, 100], dtype=torch.int32)
    caps = captures_for(attn, b, hq, lkv, lkv, seed=3)
    o, lse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
    ro, rlse = attn.reference_decode(q, k, v, seq_lens, **caps)
    assert o.shape == (b, hq, lq, d) and lse.shape == (b, hq, lq)
    assert torch.allclose(o, ro, **TOL), (o - ro).abs().max()
    assert torch.equal(torch.isinf(lse), torch.isinf(rlse))
    fin = ~torch.isinf(rlse)
    assert torch.allclose(lse[fin], rlse[fin], **TOL)
    # sequence 0 has no keys: every row empty
    assert torch.all(o[0] == 0) and torch.all(torch.isneginf(lse[0]))
    kc, vc, table = paged(k, v, 16, seed=lq)
    po, plse = attn.decode(q, kc, vc, seq_lens, table, return_lse=True, **at_capacity(attn, caps, 16 * table.shape[1]))
    assert torch.allclose(po, o, **TOL) and torch.equal(torch.isinf(plse), torch.isinf(lse))


def test_full_cache_decode_is_prefill():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    b, h, l, d = 2, 4, 33, 16
    q, k, v = cache_inputs(b, h, h, l, l, d, seed=5)
    o = attn.decode(q, k, v, torch.full((b,), l, dtype=torch.int64))
    assert torch.allclose(o, attn(q, k, v), **TOL)


def raises(code, fn, *args, **kw):
    with pytest.raises(attnc.AttncError) as e:
        fn(*args, **kw)
    assert e.value.code == code, f"{e.value.code}: {e.value}"
    return str(e.value)


def test_decode_errors_name_the_tensor():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = cache_inputs(2, 4, 2, 1, 64, 16)
    ok = torch.tensor([3, 64], dtype=torch.int32)
    assert "seq_lens" in raises("E0322", attn.decode, q, k, v, torch.tensor([3, 65], dtype=torch.int32))
    assert "`k`" in raises("E0320", attn.decode, q, k[0], v, ok)
    kc, vc, table = paged(k, v, 16)
    assert "page_table" in raises("E0320", attn.decode, q, kc, vc, ok, table[0])
    kc3 = torch.zeros(9, 12, 2, 16)
    assert "k_cache" in raises("E0321", attn.decode, q, kc3, kc3, ok, torch.zeros(2, 6, dtype=torch.int32))
    raises("E0313", attn.decode, q.double(), k, v, ok)


def test_host_trace_reports_every_step_in_call_order():
    """``_attnc.host_trace`` (for ``bench/decode_host.py``): off by default and off again
    after use, the twelve steps of a zero-copy decode call named in call order (chunked
    prefill's `prefill` and `enqueue` where the split-KV path has `skip`..`launch`), zero laps
    when no such call ran (a CPU decode is not one)."""
    from attnc import _attnc

    _attnc.host_trace_take()
    _attnc.host_trace(True)
    try:
        attn = attnc.compile(EXAMPLES / "causal.attn").attention()
        q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 16, 8)
        attn.decode(q, k, k, torch.tensor([5], dtype=torch.int32))
    finally:
        _attnc.host_trace(False)
    steps = _attnc.host_trace_take()
    assert [n for n, _, _ in steps] == ["read", "captures", "enter", "call", "setup", "buffers", "prefill",
                                        "enqueue", "skip", "ranges", "launch", "leave"]
    assert all(ns == 0 and laps == 0 for _, ns, laps in steps), steps
