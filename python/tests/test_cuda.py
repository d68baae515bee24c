"""CUDA tensors (bf16/f16) through the zero-copy forward on torch's current stream;
every test is skipped by name without a GPU ("no CUDA device").

Forward: every example on random shapes (odd lengths, Lq != Lkv, GQA, D 64/128) against
the f64 oracle on the same 16-bit-rounded inputs, and a float64 torch reference for
causal/GQA and document+ALiBi; fully masked rows; captures on the device, including ones
converted there (int64 -> int32, bf16 -> f32); a param change without recompiling on all
three kv sources (closed form, host block maps of a param mask, block table built on the
device); non-contiguous and misaligned inputs; the caller's stream (ordering after work
queued on a side stream); no host synchronization (the call returns while a long kernel
queued before it is still running, and under ``torch.cuda.set_sync_debug_mode("error")``);
CUDA graph capture and replay (params captured by value); ``torch.compile(fullgraph=True)``;
gradients (the zero-copy backward on torch's current stream) against float64 torch
autograd and, for every example on random shapes (GQA, odd lengths, Lq != Lkv, float
captures with requires_grad), against the f64 oracle's backward; a backward that does not
synchronize and is captured in a CUDA graph (D64 and D128); the fused dQ backward (sm_90,
D128: its caller-allocated workspace where ``Bound::backward`` fuses, bit-identical to
``Bound::backward`` on host copies and to itself run to run, against the oracle on dense,
causal GQA, f16, softcap, param-mask and learned-bias cases, its workspace checks and the
``ATTNC_BWD_DQ=separate`` two-kernel path); zero-copy decoding against a contiguous and
a paged cache (the oracle, Lq 1/4/16, no synchronization, CUDA graph replays on new
lengths, lengths beyond the cache clamped); block masks made once (forward and gradients
as without, no synchronization, a CUDA graph, every stale case an error); tensors on
cuda:1 (two GPUs: forward, backward and decode equal to cuda:0's, mixed devices named);
the HF Llama client; errors.

Tolerance as runtime/tests/gpu.rs: |O - O_ref| <= 0.03 + 0.02 |O_ref| (bf16), 0.01 + 0.01
|O_ref| (f16); |LSE - LSE_ref| <= 0.01 + 0.005 |LSE_ref|, -inf exactly.
"""

import math
import os
import random

import pytest
import torch

import attnc
from conftest import EXAMPLES, captures_for, dense_reference, qkv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DTYPES = [torch.bfloat16, torch.float16]
DT_IDS = ["bf16", "f16"]
O_TOL = {torch.bfloat16: (0.03, 0.02), torch.float16: (0.01, 0.01)}

EXAMPLE_ATTENTIONS = [
    (path.name, name) for path in sorted(EXAMPLES.glob("*.attn")) for name in attnc.compile(path).names
]


def dev(caps):
    """Captures moved to cuda:0 (tensors keep their dtype)."""
    return {n: (x.to("cuda") if isinstance(x, torch.Tensor) else x) for n, x in caps.items()}


def check(o, lse, ro, rlse, dtype):
    """O and LSE of a CUDA call against a reference (CPU tensors, any float dtype)."""
    assert o.device.type == "cuda" and o.dtype == dtype and lse.dtype == torch.float32
    o, lse = o.double().cpu(), lse.double().cpu()
    ro, rlse = ro.double(), rlse.double()
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    a, r = O_TOL[dtype]
    err = (o - ro).abs()
    bad = err > a + r * ro.abs()
    assert not bad.any(), f"o: {int(bad.sum())} elements off, worst {float(err.max()):.4g}"
    inf = torch.isinf(rlse)
    assert torch.equal(torch.isinf(lse), inf) and torch.equal(lse[inf], rlse[inf]), "-inf lse rows differ"
    lerr = (lse[~inf] - rlse[~inf]).abs()
    assert not (lerr > 0.01 + 0.005 * rlse[~inf].abs()).any(), f"lse worst {float(lerr.max()):.4g}"


# Examples whose masks read a per-position tensor declared over KV at the query index
# (`doc[b, q] == doc[b, kv]`): they describe self-attention, Lq == Lkv (as tests/lib.rs
# `self_attention_only` on the Rust side); with Lq > Lkv the read is out of range.
SELF_ATTENTION_ONLY = {"document_alibi.attn", "document_causal.attn",
                       "document_sliding_causal.attn", "global_sliding_window.attn"}


def random_shape(rng, self_only=False):
    hkv = rng.choice([1, 2, 4])
    group = rng.choice([1, 2, 4])
    lq = rng.randrange(1, 300) | 1  # odd
    lkv = rng.randrange(1, 300) | 1
    lkv = lq if self_only or rng.random() < 0.5 else lkv
    return rng.choice([1, 2]), hkv * group, hkv, lq, lkv, rng.choice([64, 128])


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("file,name", EXAMPLE_ATTENTIONS, ids=[f"{f}:{n}" for f, n in EXAMPLE_ATTENTIONS])
def test_every_example_matches_oracle(file, name, dtype):
    attn = attnc.compile(EXAMPLES / file).attention(name)
    rng = random.Random(f"{file}:{name}:{dtype}")
    b, hq, hkv, lq, lkv, d = random_shape(rng, self_only=file in SELF_ATTENTION_ONLY)
    q, k, v = qkv(b, hq, hkv, lq, lkv, d, seed=rng.randrange(1000))
    q, k, v = (x.to(dtype).float() for x in (q, k, v))  # the oracle sees the rounded inputs
    caps = captures_for(attn, b, hq, lq, lkv, seed=rng.randrange(1000))
    ro, rlse = attn.reference(q, k, v, **caps)
    o, lse = attn(*(x.to("cuda", dtype) for x in (q, k, v)), return_lse=True, **dev(caps))
    assert o.shape == (b, hq, lq, d) and lse.shape == (b, hq, lq)
    check(o, lse, ro, rlse, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_causal_gqa_matches_torch_float64(dtype):
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = (x.to(dtype) for x in qkv(2, 12, 3, 257, 257, 128, seed=11))
    ro, rlse = dense_reference(q, k, v, mask=lambda b, h, qi, ki: qi >= ki)
    o, lse = attn(*(x.cuda() for x in (q, k, v)), return_lse=True)
    check(o, lse, ro, rlse, dtype)


def doc_window_mask(doc, window):
    return lambda bi, hi, qi, ki: (qi >= ki) & (qi - ki < window) & (doc[bi, qi] == doc[bi, ki])


def alibi(slope):
    return lambda s, bi, hi, qi, ki: s + slope * (ki - qi).double()


def test_document_alibi_matches_torch_float64():
    attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()
    b, h, lq, d, window = 2, 16, 333, 64, 70
    q, k, v = (x.bfloat16() for x in qkv(b, h, h, lq, lq, d, seed=5))
    doc = torch.sort(torch.randint(0, 5, (b, lq), dtype=torch.int32), dim=1).values
    slope = torch.exp2(-8.0 * (torch.arange(h) + 1).double() / 16).view(1, h, 1, 1)
    ro, rlse = dense_reference(q, k, v, mask=doc_window_mask(doc, window), score=alibi(slope))
    o, lse = attn(*(x.cuda() for x in (q, k, v)), doc=doc.cuda(), window=window, return_lse=True)
    check(o, lse, ro, rlse, torch.bfloat16)


def test_fully_masked_rows():
    attn = attnc.compile("param start: i32;\nmask m(b, h, q, kv) { q >= start && kv <= q }\nattention a { mask = m; }").attention()
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(1, 2, 2, 41, 41, 64))
    o, lse = attn(q, k, v, start=10, return_lse=True)
    assert torch.all(o[:, :, :10] == 0) and torch.all(torch.isneginf(lse[:, :, :10]))
    assert torch.all(torch.isfinite(lse[:, :, 10:]))


CONVERTED = """
tensor doc: i64[B, KV];
tensor bias: bf16[H, Q, KV];
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
score biased(s, b, h, q, kv) { s + bias[h, q, kv] as f32 }
attention a { mask = same_doc; score = biased; }
"""


def test_int64_and_bf16_captures_converted_on_device():
    attn = attnc.compile(CONVERTED).attention()
    b, h, l, d = 2, 4, 99, 64
    q, k, v = (x.bfloat16().float() for x in qkv(b, h, h, l, l, d, seed=3))
    caps = captures_for(attn, b, h, l, l, seed=7)
    assert caps["doc"].dtype == torch.int64 and caps["bias"].dtype == torch.bfloat16
    ro, rlse = attn.reference(q, k, v, **caps)
    o, lse = attn(*(x.to("cuda", torch.bfloat16) for x in (q, k, v)), return_lse=True, **dev(caps))
    check(o, lse, ro, rlse, torch.bfloat16)


@pytest.mark.parametrize(
    "file,name,param,values",
    [
        ("sliding_window.attn", "sliding_window", "window", [5, 64, 200, 5]),  # closed form
        ("dilated_sliding_window.attn", "dilated_sliding_window", "window", [9, 40, 9]),  # host maps (param mask)
        ("document_sliding_causal.attn", None, None, None),  # table built on the device
    ],
    ids=["closed_form", "param_maps", "device_table"],
)
def test_param_change_without_recompiling(file, name, param, values):
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, l, d = 1, 4, 2, 201, 64
    q, k, v = (x.bfloat16().float() for x in qkv(b, hq, hkv, l, l, d, seed=2))
    base = captures_for(attn, b, hq, l, l, seed=1)
    if param is None:  # vary every i32 param of the attention
        param = next(n for n, ty in attn.params if ty == "i32")
        values = [3, 50, 3]
    qc, kc, vc = (x.to("cuda", torch.bfloat16) for x in (q, k, v))
    bindings = None  # after the first call (other tests may have bound other shapes)
    for val in values:
        caps = dict(base, **{param: val})
        o, lse = attn(qc, kc, vc, return_lse=True, **dev(caps))
        ro, rlse = attn.reference(q, k, v, **caps)
        check(o, lse, ro, rlse, torch.bfloat16)
        bindings = bindings or attn.binding_count()
        assert attn.binding_count() == bindings, "a param change compiled a new binding"


def test_non_contiguous_and_misaligned_inputs():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = qkv(1, 4, 4, 65, 65, 64, seed=8)
    ref = attn(*(x.to("cuda", torch.bfloat16) for x in (q, k, v)))
    # [B, L, H, D] transposed views: not contiguous
    qt, kt, vt = (x.to("cuda", torch.bfloat16).transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    assert torch.equal(attn(qt, kt, vt), ref)
    # a contiguous view two bytes into its storage
    flat = torch.empty(q.numel() + 1, device="cuda", dtype=torch.bfloat16)
    qm = flat[1:].view(q.shape)
    qm.copy_(q.to("cuda", torch.bfloat16))
    assert qm.is_contiguous() and qm.data_ptr() % 16 != 0
    assert torch.equal(attn(qm, k.to("cuda", torch.bfloat16), v.to("cuda", torch.bfloat16)), ref)


def test_caller_stream_orders_after_queued_work():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(2, 8, 8, 777, 777, 128, seed=9))
    ref = attn(q, k, v)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(20_000_000)  # a long kernel first: the call must wait for it
        q2 = q * 1.0  # made on `s` after the sleep
        o = attn(q2, k, v)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(o, ref)


@pytest.mark.parametrize(
    "file,name,caps",
    [("sliding_window.attn", None, {"window": 64}),
     ("dilated_sliding_window.attn", "dilated_sliding_window", {"window": 40, "dilation": 3}),
     ("document_alibi.attn", None, {"window": 100})],
    ids=["closed_form", "param_maps", "device_table"],
)
def test_call_does_not_synchronize(file, name, caps):
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, h, l, d = 2, 16, 511, 64
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(b, h, h, l, l, d, seed=1))
    full = dict(captures_for(attn, b, h, l, l, seed=3), **caps)
    full = dev(full)
    attn(q, k, v, **full)  # warm-up: JIT and the stream's buffers
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued before the call
        o, lse = attn(q, k, v, return_lse=True, **full)
        # had the call waited for the device, the sleep would be over
        assert not stream.query(), "the call synchronized with the device"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(o.float()).all()


@pytest.mark.parametrize(
    "file,caps,changed",
    [("sliding_window.attn", {"window": 100}, {"window": 7}),
     ("document_alibi.attn", {"window": 100}, {"window": 7})],
    ids=["closed_form", "device_table"],
)
def test_cuda_graph_capture_and_replay(file, caps, changed):
    attn = attnc.compile(EXAMPLES / file).attention()
    b, h, l, d = 2, 16, 512, 64
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(b, h, h, l, l, d, seed=1))
    full = dev(dict(captures_for(attn, b, h, l, l, seed=4), **caps))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up on the capture stream: JIT, the stream's buffers
            attn(q, k, v, **full)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        o = attn(q, k, v, **full)
    # eager calls with another param value on the capture stream in between: the graph
    # replays the values it captured
    with torch.cuda.stream(s):
        attn(q, k, v, **dict(full, **changed))
    torch.cuda.current_stream().wait_stream(s)
    q.copy_(torch.randn_like(q))
    g.replay()
    torch.cuda.synchronize()
    ref = attn(q, k, v, **full)
    assert torch.equal(o, ref)
    other = attn(q, k, v, **dict(full, **changed))
    assert not torch.equal(o, other)


def test_torch_compile_fullgraph():
    attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 64, dtype=torch.bfloat16, device="cuda")

        def forward(self, q, k, v, doc):
            return self.proj(attn(q, k, v, doc=doc, window=50))

    m = Block()
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(2, 16, 16, 129, 129, 64, seed=2))
    doc = torch.sort(torch.randint(0, 3, (2, 129), dtype=torch.int32), dim=1).values.cuda()
    compiled = torch.compile(m, fullgraph=True)
    out = compiled(q, k, v, doc)
    eager = m(q, k, v, doc)
    assert out.shape == eager.shape and torch.allclose(out.float(), eager.float(), atol=2e-2, rtol=2e-2)
    # the attnc call inside the compiled graph is the same op: bit-identical attention
    assert torch.equal(torch.compile(lambda *a: attn(*a, doc=doc, window=50), fullgraph=True)(q, k, v),
                       attn(q, k, v, doc=doc, window=50))


def grads_close(xs, rs, names):
    for x, r, name in zip(xs, rs, names):
        assert x.grad is not None and x.grad.device.type == "cuda", name
        g, want = x.grad.double().cpu(), r.grad
        tol = 0.05 * want.abs().max() + 0.02
        assert (g - want).abs().max() <= tol, f"d{name}: {(g - want).abs().max():.4g} > {tol:.4g}"


def test_gradients_document_alibi_match_dense_float64_autograd():
    attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()
    b, h, l, d, window = 1, 16, 83, 64, 30
    q, k, v = (x.bfloat16() for x in qkv(b, h, 4, l, l, d, seed=13))
    doc = torch.sort(torch.randint(0, 3, (b, l), dtype=torch.int32), dim=1).values
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    o, lse = attn(*xs, doc=doc.cuda(), window=window, return_lse=True)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(3))
    wl = torch.randn(lse.shape, generator=torch.Generator().manual_seed(4))
    lse_term = torch.where(torch.isinf(lse), 0.0, lse)  # fully masked rows: no gradient
    ((o.float() * w.cuda()).sum() + (lse_term * wl.cuda()).sum()).backward()
    rs = [x.double().requires_grad_(True) for x in (q, k, v)]
    slope = torch.exp2(-8.0 * (torch.arange(h) + 1).double() / 16).view(1, h, 1, 1)
    ro, rlse = dense_reference(*rs, mask=doc_window_mask(doc, window), score=alibi(slope))
    rl = torch.where(torch.isinf(rlse), 0.0, rlse)
    ((ro * w.double()).sum() + (rl * wl.double()).sum()).backward()
    grads_close(xs, rs, "qkv")


def test_gradients_learned_bias():
    """Gradients to q, k, v and to a learned bias with requires_grad (the dQ kernel's
    fixed-point capture gradients, converted on the device)."""
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, l, d = 1, 4, 70, 64
    q, k, v = (x.bfloat16() for x in qkv(b, h, h, l, l, d, seed=5))
    bias = 0.5 * torch.randn(b, h, l, l, generator=torch.Generator().manual_seed(6))
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)] + [bias.cuda().requires_grad_(True)]
    w = torch.randn(b, h, l, d, generator=torch.Generator().manual_seed(1))
    o = attn(*xs[:3], bias=xs[3])
    (o.float() * w.cuda()).sum().backward()
    rs = [x.double().requires_grad_(True) for x in (q, k, v, bias)]
    ro, _ = dense_reference(*rs[:3], score=lambda s, bi, hi, qi, ki: s + rs[3])
    (ro * w.double()).sum().backward()
    grads_close(xs, rs, ["q", "k", "v", "bias"])


def test_param_table_mask_beside_a_learned_bias():
    """A mask over a param with no closed form (a block table made on the host from the
    param's value) beside a score over a learned bias: the CUDA forward and backward on
    device tensors (the captures bound by pointer and dims) classify the mask's blocks
    without the bias's data (session 33: refused before, "captured tensor `bias` has 0
    elements"), and the output and gradients match float64 autograd."""
    src = ("param w: i32;\ntensor bias: f32[B, H, Q, KV];\n"
           "mask m(b, h, q, kv) { q >= kv && (q - kv) % w != 1 }\n"
           "score s(s, b, h, q, kv) { s + bias[b, h, q, kv] }\nattention a { mask = m; score = s; }\n")
    attn = attnc.compile(src, name="param_table_bias.attn").attention("a")
    b, h, l, d = 1, 4, 150, 64
    q, k, v = (x.bfloat16() for x in qkv(b, h, h, l, l, d, seed=7))
    bias = 0.5 * torch.randn(b, h, l, l, generator=torch.Generator().manual_seed(8))
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)] + [bias.cuda().requires_grad_(True)]
    w = torch.randn(b, h, l, d, generator=torch.Generator().manual_seed(9))
    o = attn(*xs[:3], bias=xs[3], w=3)
    (o.float() * w.cuda()).sum().backward()
    rs = [x.double().requires_grad_(True) for x in (q, k, v, bias)]
    ro, _ = dense_reference(*rs[:3], mask=lambda bi, hi, qi, ki: (qi >= ki) & ((qi - ki) % 3 != 1),
                            score=lambda s, bi, hi, qi, ki: s + rs[3])
    assert torch.allclose(o.double().cpu(), ro, atol=2e-2, rtol=2e-2)
    (ro * w.double()).sum().backward()
    grads_close(xs, rs, ["q", "k", "v", "bias"])


def test_gradients_causal_gqa_match_dense_float64_autograd():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = (x.bfloat16() for x in qkv(2, 8, 2, 97, 97, 64, seed=12))
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    o = attn(*xs)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(2))
    (o.float() * w.cuda()).sum().backward()
    rs = [x.double().requires_grad_(True) for x in (q, k, v)]
    ro, _ = dense_reference(*rs, mask=lambda b, h, qi, ki: qi >= ki)
    (ro * w.double()).sum().backward()
    grads_close(xs, rs, "qkv")


def loss_weights(o, lse, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(o.shape, generator=g), torch.randn(lse.shape, generator=g)


@pytest.mark.parametrize("file,name", EXAMPLE_ATTENTIONS, ids=[f"{f}:{n}" for f, n in EXAMPLE_ATTENTIONS])
def test_every_example_gradients_match_oracle(file, name):
    """dq, dk, dv and the gradient of every float capture (requires_grad) of the CUDA
    backward against the f64 oracle's on the same bf16-rounded inputs, for a loss over o
    and lse; random shapes (GQA, odd lengths, Lq != Lkv where the example allows)."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    rng = random.Random(f"grad:{file}:{name}")
    b, hq, hkv, lq, lkv, d = random_shape(rng, self_only=file in SELF_ATTENTION_ONLY)
    q, k, v = (x.bfloat16() for x in qkv(b, hq, hkv, lq, lkv, d, seed=rng.randrange(1000)))
    caps = captures_for(attn, b, hq, lq, lkv, seed=rng.randrange(1000))
    floats = [n for n, elem, _ in attn.tensors if elem in ("f32", "f16", "bf16")]
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    dcaps = dev(caps)
    for n in floats:
        dcaps[n] = dcaps[n].requires_grad_(True)
    o, lse = attn(*xs, return_lse=True, **dcaps)
    wo, wl = loss_weights(o, lse, rng.randrange(1000))
    wl = torch.where(torch.isinf(lse.cpu()), 0.0, wl)  # fully masked rows: no lse gradient
    lse_term = torch.where(torch.isinf(lse), 0.0, lse)
    ((o.float() * wo.cuda()).sum() + (lse_term * wl.cuda()).sum()).backward()
    dq, dk, dv, rc = attn.reference_grad(q, k, v, wo, wl, **caps)
    got = xs + [dcaps[n] for n in floats]
    want = [dq, dk, dv] + [rc[n] for n in floats]
    for name_, x, r in zip(["q", "k", "v"] + floats, got, want):
        assert x.grad is not None and x.grad.device.type == "cuda" and x.grad.dtype == x.dtype, name_
        g = x.grad.double().cpu()
        r = r.double()
        tol = 0.05 * r.abs().max() + 0.02
        assert not torch.isnan(g).any(), f"d{name_} has NaN"
        assert (g - r).abs().max() <= tol, f"d{name_}: {(g - r).abs().max():.4g} > {tol:.4g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("file,name", [("softcap_sliding.attn", None), ("causal.attn", None),
                                       ("relative_bias_table.attn", None),
                                       ("document_causal.attn", "document_causal")],
                         ids=["gemma_softcap_sliding", "causal", "bias_table", "document"])
def test_gradients_head_dim_256(file, name, dtype):
    """Head dim 256 (Gemma-style; on sm_90 the two-kernel backward with dK and dV in
    column halves): dq, dk, dv and the float captures' gradients against the f64 oracle
    at GQA 2:1 and odd lengths, and the same gradients twice (deterministic)."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, l = 1, 4, 2, 157
    q, k, v = (x.to(dtype) for x in qkv(b, hq, hkv, l, l, 256, seed=29))
    caps = captures_for(attn, b, hq, l, l, seed=5)
    floats = [n for n, elem, _ in attn.tensors if elem in ("f32", "f16", "bf16")]
    wo = torch.randn(b, hq, l, 256, generator=torch.Generator().manual_seed(3))

    def grads():
        xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
        dcaps = dev(caps)
        for n in floats:
            dcaps[n] = dcaps[n].requires_grad_(True)
        (attn(*xs, **dcaps).float() * wo.cuda()).sum().backward()
        return [x.grad for x in xs] + [dcaps[n].grad for n in floats]

    got = grads()
    dq, dk, dv, rc = attn.reference_grad(q, k, v, wo, None, **caps)
    for n, g, r in zip(["q", "k", "v"] + floats, got, [dq, dk, dv] + [rc[n] for n in floats]):
        g, r = g.double().cpu(), r.double()
        tol = 0.05 * r.abs().max() + 0.02
        assert not torch.isnan(g).any(), f"d{n} has NaN"
        assert (g - r).abs().max() <= tol, f"d{n}: {(g - r).abs().max():.4g} > {tol:.4g}"
    for n, a, b_ in zip(["q", "k", "v"] + floats, got, grads()):
        assert torch.equal(a, b_), f"d{n} differs between two runs"


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gradients_gqa_odd_lengths_f16_bf16(dtype):
    """Causal GQA 4:1 at odd Lq != Lkv, D 128, for both 16-bit types, against the oracle."""
    attn = attnc.compile(EXAMPLES / "sliding_window.attn").attention()
    q, k, v = (x.to(dtype) for x in qkv(2, 8, 2, 131, 77, 128, seed=21))
    xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    o, lse = attn(*xs, window=40, return_lse=True)
    wo, wl = loss_weights(o, lse, 5)
    wl = torch.where(torch.isinf(lse.cpu()), 0.0, wl)
    ((o.float() * wo.cuda()).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * wl.cuda()).sum()).backward()
    want = attn.reference_grad(q, k, v, wo, wl, window=40)[:3]
    for n, x, r in zip("qkv", xs, want):
        assert x.grad.dtype == dtype
        tol = 0.05 * r.abs().max() + 0.02
        assert (x.grad.double().cpu() - r.double()).abs().max() <= tol, n


def _train_step(attn, xs, bias, w, caps):
    o = attn(*xs, bias=bias, **caps)
    (o.float() * w).sum().backward()


@pytest.mark.parametrize("d", [64, 128])
def test_backward_does_not_synchronize(d):
    """A warmed-up forward + backward (capture gradient included; D128 on sm_90: the
    fused dQ) enqueues everything on the current stream: torch's sync debug mode raises
    on any synchronization, and a long kernel queued first is still running when
    backward() returns."""
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, l = 2, 8, 255
    xs = [x.to("cuda", torch.bfloat16).requires_grad_(True) for x in qkv(b, h, h, l, l, d, seed=3)]
    bias = (0.5 * torch.randn(b, h, l, l)).cuda().requires_grad_(True)
    w = torch.randn(b, h, l, d, device="cuda")
    _train_step(attn, xs, bias, w, {})  # warm-up: JIT, the stream's buffers and ranges
    torch.cuda.synchronize()
    for x in xs + [bias]:
        x.grad = None
    stream = torch.cuda.current_stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.cuda._sleep(200_000_000)
        _train_step(attn, xs, bias, w, {})
        assert not stream.query(), "the backward synchronized with the device"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(x.grad.float()).all() for x in xs + [bias])


@pytest.mark.parametrize(
    "file,name,caps",
    [("sliding_window.attn", None, {"window": 50}),  # closed form
     ("dilated_sliding_window.attn", "dilated_sliding_window", {"window": 40, "dilation": 3}),  # param mask
     ("document_causal.attn", "document_causal", {})],  # a mask over a captured tensor
    ids=["closed_form", "param_ranges", "tensor_mask"],
)
@pytest.mark.parametrize("d", [64, 128])
def test_backward_in_cuda_graph(file, name, caps, d):
    """Forward + backward captured in a CUDA graph after a warm-up on the capture stream:
    the replay on new inputs gives the gradients of an eager step on those inputs (D128
    on sm_90: the fused dQ, its workspace allocated in the graph's pool and its
    semaphores zeroed by a captured memset)."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, h, l = 1, 4, 200
    base = captures_for(attn, b, h, l, l, seed=2)
    full = dev(dict(base, **caps))
    xs = [x.to("cuda", torch.bfloat16).requires_grad_(True) for x in qkv(b, h, h, l, l, d, seed=4)]
    w = torch.randn(b, h, l, d, device="cuda")

    def step():
        for x in xs:
            x.grad = None
        (attn(*xs, **full).float() * w).sum().backward()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    for x in xs:
        x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        (attn(*xs, **full).float() * w).sum().backward()
    new = [torch.randn_like(x) for x in xs]
    with torch.no_grad():
        for x, n in zip(xs, new):
            x.copy_(n)
    g.replay()
    torch.cuda.synchronize()
    graph_grads = [x.grad.clone() for x in xs]
    step()
    torch.cuda.synchronize()
    for n, a, r in zip("qkv", graph_grads, xs):
        assert torch.equal(a, r.grad), f"d{n} of the replay differs from an eager step"


@pytest.mark.parametrize("lq", [1, 4, 16, 33, 100])
@pytest.mark.parametrize("file,name", [("causal.attn", None), ("sliding_window.attn", None),
                                       ("document_causal.attn", "document_causal"),
                                       ("alibi_causal.attn", "alibi_causal")],
                         ids=["causal", "sliding", "document", "alibi"])
def test_decode_matches_oracle(file, name, lq):
    """``Attention.decode`` on CUDA tensors (zero copy: the ranges kernel, the split-KV
    kernels and their combine on the current stream) against the f64 oracle on the same
    bf16-rounded inputs, contiguous and paged (page 16, shuffled), GQA 4:1, seq_lens 0, 1,
    odd and full (the sliding window's ranges cut to its window on the device); Lq 33 and
    100 are chunked prefill (the tensor-core split-KV kernel over row groups)."""
    from test_decode import at_capacity, cache_inputs, paged

    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, lkv, d = 4, 8, 2, 300, 128
    q, k, v = (x.bfloat16().float() for x in cache_inputs(b, hq, hkv, lq, lkv, d, seed=lq))
    seq_lens = torch.tensor([0, 1, 157, 300], dtype=torch.int32)
    caps = dict(captures_for(attn, b, hq, lkv, lkv, seed=3))
    if "window" in caps:
        caps["window"] = 64
    ro, rlse = attn.reference_decode(q, k, v, seq_lens, **caps)
    cu = lambda x: x.to("cuda", torch.bfloat16)  # noqa: E731
    o, lse = attn.decode(cu(q), cu(k), cu(v), seq_lens.cuda(), return_lse=True, **dev(caps))
    check(o, lse, ro, rlse, torch.bfloat16)
    kc, vc, table = paged(k, v, 16, seed=lq)
    po, plse = attn.decode(cu(q), cu(kc), cu(vc), seq_lens.cuda(), table.cuda(), return_lse=True,
                           **dev(at_capacity(attn, caps, 16 * table.shape[1])))
    check(po, plse, ro, rlse, torch.bfloat16)


def _decode_case(file="sliding_window.attn", name=None, b=3, hq=8, hkv=2, lq=4, lkv=1000, d=128, seed=0):
    from test_decode import cache_inputs

    attn = attnc.compile(EXAMPLES / file).attention(name)
    q, k, v = (x.to("cuda", torch.bfloat16) for x in cache_inputs(b, hq, hkv, lq, lkv, d, seed=seed))
    caps = dev(captures_for(attn, b, hq, lkv, lkv, seed=seed))
    if "window" in caps:
        caps["window"] = 100
    return attn, q, k, v, caps


def test_decode_does_not_synchronize():
    """A warmed-up zero-copy decode enqueues everything on the current stream: torch's
    sync debug mode raises on any synchronization, and a long kernel queued first is still
    running when the call returns; then the result equals a call after a synchronize."""
    attn, q, k, v, caps = _decode_case()
    seq_lens = torch.tensor([0, 377, 1000], dtype=torch.int32, device="cuda")
    ref = attn.decode(q, k, v, seq_lens, **caps)  # warm-up: JIT, the stream's buffers
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.cuda._sleep(200_000_000)
        o = attn.decode(q, k, v, seq_lens, **caps)
        assert not stream.query(), "decode synchronized with the device"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(o, ref)


def test_chunked_prefill_decode_is_zero_copy():
    """Chunked prefill (Lq > 16 new rows against the cache) at D 64 and 128 runs on the
    caller's buffers like decoding (no host copy, no synchronization); at D 32 and 256 it
    takes host copies; the result equals the f64 oracle's."""
    from attnc import _attnc

    assert _attnc.decode_cuda_applies(64, 128, 128) and _attnc.decode_cuda_applies(512, 64, 64)
    assert not _attnc.decode_cuda_applies(64, 32, 32) and not _attnc.decode_cuda_applies(17, 256, 256)
    attn, q, k, v, caps = _decode_case(file="causal.attn", lq=64, lkv=700, seed=7)
    seq_lens = torch.tensor([64, 700, 300], dtype=torch.int32, device="cuda")
    ref = attn.decode(q, k, v, seq_lens, **caps)  # warm-up: JIT, the stream's buffers
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.cuda._sleep(200_000_000)
        o, lse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
        assert not stream.query(), "chunked prefill synchronized with the device"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(o, ref)
    ro, rlse = attn.reference_decode(q, k, v, seq_lens, **caps)
    check(o, lse, ro, rlse, torch.bfloat16)


@pytest.mark.parametrize("file,name", [("causal.attn", None), ("sliding_window.attn", None),
                                       ("alibi_causal.attn", "alibi_causal"), ("document_causal.attn", "document_causal")])
def test_chunked_prefill_with_host_lengths(file, name):
    """``seq_lens`` as a CPU tensor for CUDA q (lengths known on the host): chunked
    prefill over a contiguous cache runs in batched runs on the prefill kernel (path
    "prefill": 64 heads x 2 tiles of 128 rows per run, runs of 2, 1 and 1 sequences, K/V
    read in place from the cache), against the oracle and the split-KV kernels' result
    with the lengths on the device; paged caches of pages of 128 and 16 rows (shuffled, NaN
    in every slot past a sequence's length: the runs read each kv tile whole from its page
    and must zero those rows; the split-KV kernel under ``ATTNC_DECODE_PAGED_RUNS=0``); the
    lengths on the device, and a sequence shorter than Lq (the runs decline it:
    ``decode_cuda_runs``), run the whole batch in one launch of the prefill kernel that
    reads the lengths on the device (documents too, since session 31: their block table
    built on the GPU per sequence from the same lengths); four rows take the split-KV
    kernels."""
    attn, q, k, v, caps = _decode_case(file=file, name=name, b=4, hq=64, hkv=8, lq=256, lkv=700, seed=11)
    if "window" in caps:
        caps["window"] = 300
    host = torch.tensor([700, 700, 400, 520], dtype=torch.int32)
    o, lse = attn.decode(q, k, v, host, return_lse=True, **caps)
    assert attn._inner.decode_path(q, k, v, None, None) == "prefill"
    ro, rlse = attn.reference_decode(q, k, v, host, **caps)
    check(o, lse, ro, rlse, torch.bfloat16)
    # the lengths on the device only: one launch of the whole batch on the prefill kernel,
    # each CTA reading its sequence's length (documents: a block table built per sequence)
    device_path = "prefill"
    so, slse = attn.decode(q, k, v, host.cuda(), return_lse=True, **caps)
    assert attn._inner.decode_path(q, k, v, None, None) == device_path
    check(o, lse, so.float().cpu(), slse.cpu(), torch.bfloat16)
    # paged caches of pages of 128 and 16 rows (shuffled): the runs unless
    # ATTNC_DECODE_PAGED_RUNS=0 (read by the binding once per process); NaN in the unused
    # slots of each sequence's pages, which the runs' kv tiles read
    from test_decode import at_capacity, paged
    host_caps = {n: (x.cpu() if isinstance(x, torch.Tensor) else x) for n, x in caps.items()}
    for ps in (128, 16):
        kc, vc, table = paged(k.cpu(), v.cpu(), ps, seed=5)
        for bi, n in enumerate(host.tolist()):
            for pos in range(n, ps * table.shape[1]):
                kc[table[bi, pos // ps], pos % ps] = float("nan")
                vc[table[bi, pos // ps], pos % ps] = float("nan")
        kc, vc, table = kc.to("cuda", k.dtype), vc.to("cuda", v.dtype), table.cuda()
        # (captures indexed by position sized to the paged cache's capacity)
        pcaps = dev(at_capacity(attn, host_caps, ps * table.shape[1]))
        po, plse = attn.decode(q, kc, vc, host, table, return_lse=True, **pcaps)
        want = "split-kv-mma" if os.environ.get("ATTNC_DECODE_PAGED_RUNS") == "0" else "prefill"
        assert attn._inner.decode_path(q, kc, vc, table, None) == want, ps
        assert not torch.isnan(po).any(), ps
        check(po, plse, ro, rlse, torch.bfloat16)
    short = torch.tensor([700, 100, 400, 520], dtype=torch.int32)
    o2, lse2 = attn.decode(q, k, v, short, return_lse=True, **caps)
    assert attn._inner.decode_path(q, k, v, None, None) == device_path
    ro2, rlse2 = attn.reference_decode(q, k, v, short, **caps)
    check(o2, lse2, ro2, rlse2, torch.bfloat16)
    # four rows with lengths on the host: the split-KV kernels (the runs are not asked),
    # the lengths copied; a new shape of the same attention (its own workspace sizes)
    q4 = q[:, :, -4:].contiguous()
    o4, lse4 = attn.decode(q4, k, v, short, return_lse=True, **caps)
    assert attn._inner.decode_path(q4, k, v, None, None) in ("split-kv", "split-kv-mma")
    ro4, rlse4 = attn.reference_decode(q4, k, v, short, **caps)
    check(o4, lse4, ro4, rlse4, torch.bfloat16)
    # a CPU `seq_lens` of the wrong shape: E0320 naming it (never flattened into the runs)
    with pytest.raises(attnc.AttncError) as e:
        attn.decode(q, k, v, host.view(4, 1), **caps)
    assert e.value.code == "E0320" and "seq_lens" in str(e.value), e.value


@pytest.mark.parametrize("file,name,path", [("causal.attn", None, "prefill"),
                                            ("sliding_window.attn", None, "split-kv-mma"),
                                            ("document_causal.attn", "document_causal", "split-kv-mma")])
def test_chunked_prefill_with_host_lengths_d64(file, name, path):
    """D64 chunked prefill with the lengths on the host: causal takes the batched runs on
    the warp-specialized prefill kernel; a sliding window and documents, whose D64 forward
    is another kernel (bands and block tables on 64 x 64 wgmma tiles), cannot read the
    cache in place, so the runs leave them to the split-KV kernels (session 28: they
    failed to bind or launch) — contiguous and paged (pages of 16 rows), against the
    oracle."""
    attn, q, k, v, caps = _decode_case(file=file, name=name, b=4, hq=64, hkv=8, lq=256, lkv=700, d=64, seed=13)
    host = torch.tensor([700, 700, 400, 520], dtype=torch.int32)
    o, lse = attn.decode(q, k, v, host, return_lse=True, **caps)
    assert attn._inner.decode_path(q, k, v, None, None) == path
    ro, rlse = attn.reference_decode(q, k, v, host, **caps)
    check(o, lse, ro, rlse, torch.bfloat16)
    from test_decode import at_capacity, paged
    host_caps = {n: (x.cpu() if isinstance(x, torch.Tensor) else x) for n, x in caps.items()}
    kc, vc, table = paged(k.cpu(), v.cpu(), 16, seed=7)
    kc, vc, table = kc.to("cuda", k.dtype), vc.to("cuda", v.dtype), table.cuda()
    pcaps = dev(at_capacity(attn, host_caps, 16 * table.shape[1]))
    po, plse = attn.decode(q, kc, vc, host, table, return_lse=True, **pcaps)
    want = "split-kv-mma" if os.environ.get("ATTNC_DECODE_PAGED_RUNS") == "0" else path
    assert attn._inner.decode_path(q, kc, vc, table, None) == want
    check(po, plse, ro, rlse, torch.bfloat16)


@pytest.mark.parametrize("file,name", [("softcap_sliding.attn", None), ("causal.attn", None)])
def test_chunked_prefill_head_dim_256_zero_copy(file, name):
    """Chunked prefill at head dim 256 (Gemma's; no split-KV kernel takes it above 16 rows)
    runs zero-copy on the prefill kernel: with ``seq_lens`` on the GPU the whole batch in
    one launch that reads the lengths (no synchronization: torch's sync debug mode raises
    on any), with them on the CPU the batched runs; path "prefill", against the oracle;
    a sequence shorter than Lq. A mask over captured tensors (documents) at D256 too
    (since session 31: its block table built on the GPU per sequence), against the
    oracle."""
    attn, q, k, v, caps = _decode_case(file=file, name=name, b=3, hq=4, hkv=2, lq=96, lkv=400, d=256, seed=19)
    if "window" in caps:
        caps["window"] = 150
    for lens in ([400, 60, 333], [400, 400, 400]):
        dev_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        ref = attn.decode(q, k, v, dev_lens, **caps)  # warm-up: JIT, the stream's buffers
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            o, lse = attn.decode(q, k, v, dev_lens, return_lse=True, **caps)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        assert torch.equal(o, ref)
        assert attn._inner.decode_path(q, k, v, None, None) == "prefill"
        ro, rlse = attn.reference_decode(q, k, v, dev_lens, **caps)
        check(o, lse, ro, rlse, torch.bfloat16)
        ho, hlse = attn.decode(q, k, v, dev_lens.cpu(), return_lse=True, **caps)
        assert attn._inner.decode_path(q, k, v, None, None) == "prefill"
        check(ho, hlse, ro, rlse, torch.bfloat16)
    docs, dq, dk, dv_, dcaps = _decode_case(file="document_causal.attn", name="document_causal", b=2, hq=4, hkv=2,
                                            lq=96, lkv=400, d=256, seed=21)
    dl = torch.tensor([400, 200], dtype=torch.int32, device="cuda")
    o, lse = docs.decode(dq, dk, dv_, dl, return_lse=True, **dcaps)
    assert docs._inner.decode_path(dq, dk, dv_, None, None) == "prefill"
    ro, rlse = docs.reference_decode(dq, dk, dv_, dl, **dcaps)
    check(o, lse, ro, rlse, torch.bfloat16)


def test_decode_in_cuda_graph():
    """A decode step captured in a CUDA graph: replays read the new q, cache contents and
    sequence lengths written in place (the reachable ranges are computed on the device
    at every replay) and equal eager calls on them; paged caches too."""
    from test_decode import paged

    attn, q, k, v, caps = _decode_case(seed=3)
    seq_lens = torch.tensor([5, 377, 900], dtype=torch.int32, device="cuda")
    kc, vc, table = (x.cuda() for x in paged(k.float().cpu(), v.float().cpu(), 64, seed=2))
    kc, vc, table = kc.bfloat16(), vc.bfloat16(), table.to(torch.int32)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            attn.decode(q, k, v, seq_lens, **caps)
            attn.decode(q, kc, vc, seq_lens, table, **caps)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        o, lse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
        po = attn.decode(q, kc, vc, seq_lens, table, **caps)
    for lens in ([1, 999, 1000], [0, 64, 300]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        g.replay()
        torch.cuda.synchronize()
        ro, rlse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
        assert torch.equal(o, ro) and torch.equal(lse, rlse), lens
        assert torch.equal(po, attn.decode(q, kc, vc, seq_lens, table, **caps)), lens
        wo, wl = attn.reference_decode(q, k, v, seq_lens, **caps)
        check(o, lse, wo, wl, torch.bfloat16)


def test_chunked_prefill_with_device_lengths_in_cuda_graph():
    """Chunked prefill with ``seq_lens`` on the device (the whole batch in one launch of the
    prefill kernel, each CTA reading its sequence's length) captured in a CUDA graph after
    warm-up calls on the capturing stream: replays read the new q and lengths written in
    place (including a sequence shorter than Lq, whose missing rows give O = 0 and LSE =
    -inf, 0, and one past the cache, counted as the capacity) and equal eager calls; the
    eager calls agree with the oracle."""
    attn, q, k, v, caps = _decode_case(file="causal.attn", b=4, hq=64, hkv=8, lq=256, lkv=700, seed=17)
    seq_lens = torch.tensor([700, 700, 400, 520], dtype=torch.int32, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            attn.decode(q, k, v, seq_lens, **caps)
    torch.cuda.current_stream().wait_stream(s)
    assert attn._inner.decode_path(q, k, v, None, None) == "prefill"
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        o, lse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
    for lens in ([700, 300, 256, 699], [100, 0, 10**6, 257]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        g.replay()
        torch.cuda.synchronize()
        ro, rlse = attn.decode(q, k, v, seq_lens, return_lse=True, **caps)
        assert torch.equal(o, ro) and torch.equal(lse, rlse), lens
        want = torch.tensor([min(n, 700) for n in lens], dtype=torch.int32, device="cuda")
        wo, wl = attn.reference_decode(q, k, v, want, **caps)
        check(o, lse, wo, wl, torch.bfloat16)


def test_decode_lengths_beyond_the_cache_are_clamped_not_read():
    """seq_lens past the capacity and page ids outside the cache never read outside it on
    the zero-copy path: a length beyond the cache counts as the capacity, a negative one
    as 0."""
    attn, q, k, v, caps = _decode_case(lkv=300, seed=5)
    full = attn.decode(q, k, v, torch.full((3,), 300, dtype=torch.int32, device="cuda"), **caps)
    over = attn.decode(q, k, v, torch.tensor([301, 10**9, 2**31 - 1], dtype=torch.int32, device="cuda"), **caps)
    torch.cuda.synchronize()
    assert torch.equal(full, over)
    neg = attn.decode(q, k, v, torch.full((3,), -7, dtype=torch.int32, device="cuda"), return_lse=True, **caps)
    assert torch.all(neg[0] == 0) and torch.all(torch.isneginf(neg[1]))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_runs_on_its_own_context_and_stream():
    """Tensors on cuda:1 run on device 1 (its primary context, its current stream, its
    own kernel modules): forward, backward and decode give what the same calls give on
    cuda:0; torch's current device is left as it was; mixing devices names the tensor."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    b, h, l, d = 2, 8, 193, 64
    base = [x.to(torch.bfloat16) for x in qkv(b, h, 2, l, l, d, seed=6)]
    doc = torch.sort(torch.randint(0, 4, (b, l), dtype=torch.int32), dim=1).values
    results = {}
    for devname in ("cuda:0", "cuda:1"):
        xs = [x.to(devname).requires_grad_(True) for x in base]
        with torch.cuda.device(0):
            o = attn(*xs, doc=doc.to(devname))
            o.float().sum().backward()
            assert torch.cuda.current_device() == 0
        assert o.device == torch.device(devname)
        dattn, dq, dk, dv, _ = _decode_case(file="causal.attn", seed=1)
        dq, dk, dv = (x.to(devname) for x in (dq, dk, dv))
        dec = dattn.decode(dq, dk, dv, torch.tensor([3, 500, 1000], dtype=torch.int32, device=devname))
        torch.cuda.synchronize(devname)
        results[devname] = [t.cpu() for t in (o, xs[0].grad, xs[1].grad, xs[2].grad, dec)]
    for a, r in zip(results["cuda:0"], results["cuda:1"]):
        assert torch.equal(a, r)
    q1 = base[0].to("cuda:1")
    e = raises("E0314", attn, q1, base[1].to("cuda:1"), base[2].to("cuda:1"), doc=doc.to("cuda:0"))
    assert "`doc`" in str(e)
    e = raises("E0314", attn, q1, base[1].to("cuda:0"), base[2].to("cuda:1"), doc=doc.to("cuda:1"))
    assert "`k`" in str(e)


def _doc_inputs(b=2, h=4, hkv=2, l=701, d=64, seed=7, docs=5):
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(b, h, hkv, l, l, d, seed=seed))
    g = torch.Generator().manual_seed(seed)
    doc = torch.sort(torch.randint(0, docs, (b, l), dtype=torch.int32, generator=g), dim=1).values.cuda()
    return q, k, v, doc


@pytest.mark.parametrize("d", [64, 128])
def test_block_mask_forward_and_backward_match(d):
    """A block mask made once (document + causal) gives the forward and the gradients of
    calls without it (the table built on the GPU per call, the backward over the causal
    range), and both match the f64 oracle."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v, doc = _doc_inputs(d=d)
    for ids in (doc,):
        bm = attn.block_mask(q, k, v, doc=ids)
        # (sorted ids: the forward runs document tiles where the kernel of `q >= kv` is the
        # warp-specialized one, D128 here; its sums run in another order than the table
        # kernel's, so the two agree to a couple of bf16 ulps)
        assert (bm.document_tiles > 0) == (d == 128), bm
        # (and the backward on document kv tiles at both head dims: its sums in another
        # order)
        assert bm.backward_document_tiles > 0, bm
        atol = 1.6e-2
        results = []
        for mask in (None, bm):
            xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
            o, lse = attn(*xs, doc=ids, block_mask=mask, return_lse=True)
            w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).cuda()
            (o.float() * w).sum().backward()
            results.append((o, lse, *(x.grad for x in xs)))
        for a, r, n in zip(*results, ["o", "lse", "dq", "dk", "dv"]):
            assert torch.allclose(a.float(), r.float(), atol=atol, rtol=0), n
        ro, rlse = attn.reference(q.float(), k.float(), v.float(), doc=ids.cpu())
        check(results[1][0], results[1][1], ro, rlse, torch.bfloat16)
        w = torch.randn(results[1][0].shape, generator=torch.Generator().manual_seed(1))
        want = attn.reference_grad(q, k, v, w, doc=ids.cpu())[:3]
        for n, g, r in zip("qkv", results[1][2:], want):
            tol = 0.05 * r.abs().max() + 0.02
            assert (g.double().cpu() - r.double()).abs().max() <= tol, n


@pytest.mark.parametrize("file", ["document_causal.attn", "document_sliding_causal.attn", "document_alibi.attn"])
def test_block_mask_document_tiles_match_the_oracle(file):
    """A block mask made from ids that form contiguous documents carries the
    document-tiled forward's tile list (each q tile inside one document, its kv blocks from
    the document's first row): forward and gradients match the f64 oracle and the call
    without a block mask, at D128 bf16 and f16, GQA, odd lengths, documents of one row and
    of a whole sequence, a window param; ids that come back after another document carry
    no tiles (the table kernel runs) and match too. Changing the window (a param of `L`)
    keeps the tiles (they depend on the ids only) and stays right."""
    attn = attnc.compile(EXAMPLES / file).attention(file.removesuffix(".attn"))
    cases = [(2, 4, 2, 701, torch.bfloat16, 5), (1, 6, 2, 1031, torch.float16, 2), (3, 2, 1, 257, torch.bfloat16, 1)]
    for ci, (b, h, hkv, l, dt, docs) in enumerate(cases):
        q, k, v = (x.to("cuda", dt) for x in qkv(b, h, hkv, l, l, 128, seed=40 + ci))
        g = torch.Generator().manual_seed(ci)
        packed = torch.sort(torch.randint(0, docs, (b, l), dtype=torch.int32, generator=g), dim=1).values
        packed[0, 0] = -1  # a document of one row
        back = packed.clone()
        back[:, l // 2] = back[:, 0]  # row 0's -1 comes back: not contiguous documents
        for ids, tiled in ((packed, True), (back, False)):
            caps = captures_for(attn, b, h, l, l, seed=ci)
            caps["doc"] = ids.cuda()
            bm = attn.block_mask(q, k, v, **caps)
            assert (bm.document_tiles > 0) == tiled, (file, ci, bm)
            assert (bm.backward_document_tiles > 0) == tiled, (file, ci, bm)
            windows = [None] if "window" not in caps else [caps["window"], 37]
            for w in windows:
                if w is not None:
                    caps["window"] = w
                    bm = attn.block_mask(q, k, v, **caps)
                xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
                o, lse = attn(*xs, block_mask=bm, return_lse=True, **caps)
                wt = torch.randn(o.shape, generator=torch.Generator().manual_seed(3)).to("cuda")
                (o.float() * wt).sum().backward()
                host = {n: (x.cpu() if isinstance(x, torch.Tensor) else x) for n, x in caps.items()}
                ro, rlse = attn.reference(q.float(), k.float(), v.float(), **host)
                check(o, lse, ro, rlse, dt)
                plain = attn(q, k, v, **caps)
                assert (o.float() - plain.float()).abs().max() <= 2e-2, (file, ci, tiled, w)
                want = attn.reference_grad(q, k, v, wt.cpu(), **host)[:3]
                for n, gr, r in zip("qkv", (x.grad for x in xs), want):
                    tol = 0.05 * r.abs().max() + 0.02
                    assert (gr.double().cpu() - r.double()).abs().max() <= tol, (file, ci, tiled, w, n)
                # deterministic: the same gradients bit for bit
                again = [x.clone().requires_grad_(True) for x in (q, k, v)]
                (attn(*again, block_mask=bm, **caps).float() * wt).sum().backward()
                for n, a1, a2 in zip("qkv", (x.grad for x in xs), (x.grad for x in again)):
                    assert torch.equal(a1, a2), (file, ci, tiled, w, n)


def test_block_mask_documents_with_fewer_queries_than_keys():
    """Lq < Lkv on a document mask (its ids indexed by q too): a block mask carries no
    document tiles, forward or backward (their lists cover the rows' documents, not the
    keys past Lq, whose dK / dV would go unwritten), and the forward and the gradients
    through it match the f64 oracle (zero for the keys no row keeps) and the call without
    a block mask."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    b, h, hkv, lq, lkv = 2, 4, 2, 333, 517
    for d, dt in ((128, torch.bfloat16), (64, torch.float16)):
        q, k, v = (x.to("cuda", dt) for x in qkv(b, h, hkv, lq, lkv, d, seed=17))
        g = torch.Generator().manual_seed(d)
        doc = torch.sort(torch.randint(0, 4, (b, lkv), dtype=torch.int32, generator=g), dim=1).values
        docc = doc.cuda()  # one tensor: a block mask is made for the tensor it was given
        bm = attn.block_mask(q, k, v, doc=docc)
        assert bm.document_tiles == 0 and bm.backward_document_tiles == 0, bm
        wt = torch.randn(b, h, lq, d, generator=torch.Generator().manual_seed(3)).to("cuda")
        grads = []
        for mask in (bm, None):
            # (gradients land in memory that held something else before)
            junk = torch.full((b, hkv, lkv, d), float("nan"), device="cuda", dtype=dt)
            del junk
            xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
            o, lse = attn(*xs, doc=docc, block_mask=mask, return_lse=True)
            (o.float() * wt).sum().backward()
            grads.append([x.grad for x in xs])
            ro, rlse = attn.reference(q.float(), k.float(), v.float(), doc=doc)
            check(o, lse, ro, rlse, dt)
        want = attn.reference_grad(q, k, v, wt.cpu(), doc=doc)[:3]
        for n, gr, r, plain in zip("qkv", grads[0], want, grads[1]):
            assert torch.isfinite(gr).all(), n
            tol = 0.05 * r.abs().max() + 0.02
            assert (gr.double().cpu() - r.double()).abs().max() <= tol, (d, n)
            assert (gr.float() - plain.float()).abs().max() <= tol, (d, n)
        # the keys past Lq are kept by no row (q >= kv): their gradients are zero
        for n, gr in zip("kv", grads[0][1:]):
            assert torch.count_nonzero(gr[:, :, lq:]) == 0, n


def test_block_mask_in_cuda_graph_and_without_synchronizing():
    """A warmed-up forward + backward with a block mask enqueues everything (no
    synchronization) and replays from a CUDA graph."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v, doc = _doc_inputs(l=512, seed=2, d=128)
    bm = attn.block_mask(q, k, v, doc=doc)
    assert bm.document_tiles > 0  # (the forward on document tiles, in the graph too)
    xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
    w = torch.randn(q.shape[0], q.shape[1], q.shape[2], v.shape[3], device="cuda")

    def step():
        for x in xs:
            x.grad = None
        (attn(*xs, doc=doc, block_mask=bm).float() * w).sum().backward()

    step()
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.cuda._sleep(200_000_000)
        step()
        assert not stream.query(), "the call synchronized with the device"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    eager = [x.grad.clone() for x in xs]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    for x in xs:
        x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        (attn(*xs, doc=doc, block_mask=bm).float() * w).sum().backward()
    g.replay()
    torch.cuda.synchronize()
    for a, x in zip(eager, xs):
        assert torch.equal(a, x.grad)


def test_stale_block_mask_is_an_error():
    """A block mask is checked at every call: another tensor, an in-place write to the one
    it was made from, another shape, scale or attention, another value of a param the mask
    reads: E0318 naming what changed; never a silently wrong result."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v, doc = _doc_inputs(l=300)
    bm = attn.block_mask(q, k, v, doc=doc)
    attn(q, k, v, doc=doc, block_mask=bm)
    e = raises("E0318", attn, q, k, v, doc=doc.clone(), block_mask=bm)
    assert "`doc`" in str(e)
    q2, k2, v2, doc2 = _doc_inputs(l=299)
    raises("E0318", attn, q2, k2, v2, doc=doc2, block_mask=bm)
    raises("E0318", attn, q, k, v, doc=doc, scale=0.3, block_mask=bm)
    # the same source compiled again: the same attention (its key), the mask is valid
    again = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    assert again(q, k, v, doc=doc, block_mask=bm).shape == q.shape
    sliding = attnc.compile(EXAMPLES / "document_sliding_causal.attn").attention()
    wname = next(n for n, ty in sliding.params if ty == "i32")
    caps = {"doc": doc, wname: 64}
    sm = sliding.block_mask(q, k, v, **caps)
    sliding(q, k, v, block_mask=sm, **caps)
    e = raises("E0318", sliding, q, k, v, block_mask=sm, **dict(caps, **{wname: 65}))
    assert wname in str(e)
    e = raises("E0318", sliding, q, k, v, block_mask=bm, **caps)
    assert "another attention" in str(e)
    doc[0, 0] = 3  # in place: the version counter moves
    e = raises("E0318", attn, q, k, v, doc=doc, block_mask=bm)
    assert "modified" in str(e)


def test_hf_llama_matches_sdpa():
    transformers = pytest.importorskip("transformers")
    import attnc.hf

    attnc.hf.register()
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    cfg._attn_implementation = "sdpa"
    sdpa = transformers.LlamaForCausalLM(cfg).eval().to("cuda", torch.bfloat16)
    cfg._attn_implementation = "attnc"
    ours = transformers.LlamaForCausalLM(cfg).eval().to("cuda", torch.bfloat16)
    ours.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 128, (2, 101), device="cuda")
    with torch.no_grad():
        ref, out = sdpa(ids).logits.float(), ours(ids).logits.float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def raises(code, fn, *args, **kw):
    with pytest.raises(attnc.AttncError) as e:
        fn(*args, **kw)
    assert e.value.code == code, f"{e.value.code}: {e.value}"
    return e.value


def test_errors_name_the_tensor():
    attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()
    q, k, v = (x.cuda() for x in qkv(1, 16, 16, 32, 32, 64))
    doc = torch.zeros(1, 32, dtype=torch.int32, device="cuda")
    e = raises("E0313", attn, q, k, v, doc=doc, window=4)  # f32 on the GPU
    assert "bfloat16" in str(e)
    q, k, v = (x.bfloat16() for x in (q, k, v))
    e = raises("E0314", attn, q, k, v, doc=doc.cpu(), window=4)
    assert "doc" in str(e)
    e = raises("E0314", attn, q, k.cpu(), v, doc=doc, window=4)
    assert "`k`" in str(e)
    e = raises("E0313", attn, q, k, v.half(), doc=doc, window=4)
    assert "`v`" in str(e)
    e = raises("E0305", attn, q, k, v, doc=doc[:, :31], window=4)
    assert "doc" in str(e)
    e = raises("E0304", attn, q, k, v, doc=doc.float(), window=4)
    assert "doc" in str(e)
    raises("E0303", attn, q, k, v, window=4)
    raises("E0301", attn, q, k, v, doc=doc)
    raises("E0311", attn, q, k, v, doc=doc, window=4, windoe=3)
    if torch.cuda.device_count() > 1:
        e = raises("E0314", attn, *(x.to("cuda:1") for x in (q, k, v)), doc=doc, window=4)
        assert "`doc`" in str(e) and "cuda:1" in str(e)
    # the stream's state is intact after the errors
    assert torch.isfinite(attn(q, k, v, doc=doc, window=4).float()).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_current_device_is_kept():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = (x.to("cuda:0", torch.bfloat16) for x in qkv(1, 2, 2, 33, 33, 64))
    with torch.cuda.device(1):
        attn(q, k, v)
        assert torch.cuda.current_device() == 1


# --- the fused dQ backward (dQ inside the dK/dV kernel, sm_90 at D64 and D128) on caller buffers ---

SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _host_backward(attn, q, k, v, o, lse, do, dlse, caps, wanted):
    """``attnc::Bound::backward`` (the Rust API's CUDA backward, fused dQ on sm_90 at
    D64 and D128) on host copies of a CUDA call: dq, dk, dv and the wanted capture gradients."""
    h = lambda x: x.detach().cpu().contiguous()  # noqa: E731
    q, k, v, o, lse, do, dlse = (h(x) for x in (q, k, v, o, lse, do, dlse))
    tensors = [(n, h(x)) for n, x in caps.items() if isinstance(x, torch.Tensor)]
    params = [(n, x) for n, x in caps.items() if not isinstance(x, torch.Tensor)]
    grads = {n: torch.empty_like(t) for n, t in tensors if n in wanted}
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    attn._inner.backward(q, k, v, o, lse, do, dlse, dq, dk, dv, None, tensors, params,
                         list(grads.items()), 0, True, False)
    return dq, dk, dv, grads


def test_fused_backward_workspace_where_the_rust_backward_fuses():
    """The caller-buffer backward asks for the fused dQ's workspace exactly where
    ``Bound::backward`` fuses dQ (sm_90 at D64 and D128): one f32 q_block x D tile and
    one semaphore per (b, head, q block), then up to three counters (the tile counter of
    persistent CTAs, D64's causal-type default since session 24; the early conversion's
    counts); none on other GPUs, nor at D256 (two kernels, dQ by its own)."""
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    for d in (64, 128, 256):
        q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(2, 6, 3, 131, 90, d))
        ws = attn._inner.backward_workspace(q, k, v, None)
        if SM90 and d < 256:
            accum, sem = ws
            tiles = {qb: 2 * 6 * math.ceil(131 / qb) for qb in (64, 128)}
            fits = [qb for qb in (64, 128) if accum == tiles[qb] * qb * d]
            assert len(fits) == 1, (d, ws)
            assert tiles[fits[0]] <= sem <= tiles[fits[0]] + 3, (d, ws)
        else:
            assert ws is None, (d, ws)


FUSED_CASES = [
    # (file, attention, caps, (b, hq, hkv, lq, lkv), dtype)
    ("dense.attn", None, {}, (1, 4, 4, 300, 300), torch.bfloat16),
    ("causal.attn", None, {}, (2, 8, 2, 257, 131), torch.bfloat16),  # GQA, odd, Lq != Lkv
    ("causal.attn", None, {}, (1, 4, 1, 193, 193), torch.float16),
    ("softcap.attn", "softcap_causal", {}, (1, 4, 2, 200, 200), torch.bfloat16),
    ("dilated_sliding_window.attn", "dilated_sliding_window", {"window": 40, "dilation": 3},
     (1, 4, 2, 161, 161), torch.bfloat16),  # table kernels: ranges from the param mask
    ("learned_bias.attn", None, "bias", (1, 4, 4, 130, 97), torch.bfloat16),  # capture gradient
]


@pytest.mark.parametrize("file,name,caps,shape,dtype", FUSED_CASES,
                         ids=["dense", "causal_gqa", "causal_f16", "softcap_causal", "param_mask", "learned_bias"])
def test_fused_backward_matches_the_rust_backward_and_the_oracle(file, name, caps, shape, dtype):
    """D128 through autograd (the zero-copy backward on torch's current stream, fused dQ
    on sm_90) against ``Bound::backward`` on host copies of the same call (the same
    kernels: bit-identical dq, dk, dv; capture gradients equal up to the fixed-point
    words' conversion), and against the f64 oracle; run twice, bit-identical
    (deterministic: the fused dQ adds in a fixed order)."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, lq, lkv = shape
    q, k, v = (x.to(dtype) for x in qkv(b, hq, hkv, lq, lkv, 128, seed=lq))
    if caps == "bias":
        bias = 0.5 * torch.randn(b, hq, lq, lkv, generator=torch.Generator().manual_seed(6))
        caps = {"bias": bias}
    floats = [n for n, elem, _ in attn.tensors if elem in ("f32", "f16", "bf16")]
    wo, wl = loss_weights(torch.empty(b, hq, lq, 128), torch.empty(b, hq, lq), 7)
    runs = []
    for _ in range(2):
        xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
        dcaps = dev(caps)
        for n in floats:
            dcaps[n] = dcaps[n].requires_grad_(True)
        o, lse = attn(*xs, return_lse=True, **dcaps)
        wl_ = torch.where(torch.isinf(lse.cpu()), 0.0, wl)
        lse_term = torch.where(torch.isinf(lse), 0.0, lse)
        ((o.float() * wo.cuda()).sum() + (lse_term * wl_.cuda()).sum()).backward()
        runs.append([x.grad for x in xs] + [dcaps[n].grad for n in floats])
    for n, a, r in zip(["q", "k", "v"] + floats, *runs):
        assert torch.equal(a, r), f"d{n} differs between two runs"
    got = runs[0]
    hq_, hk, hv, hcaps = _host_backward(attn, q, k, v, o, lse, wo.to(dtype), wl_, caps, floats)
    for n, g, r in zip("qkv", got[:3], (hq_, hk, hv)):
        assert torch.equal(g.cpu(), r), f"d{n}: the caller-buffer backward differs from Bound::backward"
    for n, g in zip(floats, got[3:]):
        r = hcaps[n].float()
        assert torch.allclose(g.float().cpu(), r, rtol=1e-6, atol=1e-9), f"d{n}"
    dq, dk, dv, rc = attn.reference_grad(q, k, v, wo, wl_, **caps)
    for n, g, r in zip(["q", "k", "v"] + floats, got, [dq, dk, dv] + [rc[n] for n in floats]):
        g, r = g.double().cpu(), r.double()
        tol = 0.05 * r.abs().max() + 0.02
        assert not torch.isnan(g).any(), f"d{n} has NaN"
        assert (g - r).abs().max() <= tol, f"d{n}: {(g - r).abs().max():.4g} > {tol:.4g}"


def test_fused_backward_deterministic_at_scale():
    """Dense and causal GQA 1000 x 1000 at D128 (many kv blocks adding into each dQ tile),
    and document + causal with a block mask: three backward passes bit-identical."""
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(2, 8, 2, 1000, 1000, 128, seed=31))
    do = torch.randn(2, 8, 1000, 128, generator=torch.Generator().manual_seed(2)).to("cuda", torch.bfloat16)
    doc = torch.sort(torch.randint(0, 5, (2, 1000), generator=torch.Generator().manual_seed(3),
                                   dtype=torch.int32), dim=1).values.cuda()
    for file, name, caps in (("dense.attn", None, {}), ("causal.attn", None, {}),
                             ("document_causal.attn", "document_causal", {"doc": doc})):
        attn = attnc.compile(EXAMPLES / file).attention(name)
        bm = attn.block_mask(q, k, v, **caps) if caps else None
        grads = []
        for _ in range(3):
            xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
            attn(*xs, block_mask=bm, **caps).backward(do)
            grads.append([x.grad for x in xs])
        for run in grads[1:]:
            for n, a, r in zip("qkv", grads[0], run):
                assert torch.equal(a, r), f"{file}: d{n} differs between runs"
        assert all(torch.isfinite(g.float()).all() for g in grads[0])


@pytest.mark.skipif(not SM90, reason="the fused dQ runs on sm_90")
def test_fused_backward_workspace_is_checked(monkeypatch):
    """The extension refuses a fused backward without its workspace, or with one of the
    wrong size; ``ATTNC_BWD_DQ=separate`` (read when a binding first runs its backward)
    keeps a binding on the two-kernel path, whose gradients agree with the fused ones."""
    src = (EXAMPLES / "causal.attn").read_text()
    attn = attnc.compile(src + "\n// the fused backward's checks\n").attention()
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(1, 4, 2, 100, 100, 128, seed=8))
    o, lse = attn(q, k, v, return_lse=True)
    do = torch.randn_like(o)
    accum, sem = attn._inner.backward_workspace(q, k, v, None)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scratch = torch.empty(2, 400, device="cuda")
    args = (q, k, v, o, lse, do, None, dq, dk, dv, scratch, None, [], [], [], None, 0, None)
    inner = attn._inner
    with pytest.raises(attnc.AttncError) as e:
        inner.backward_cuda(*args, None)
    assert "dq_work" in str(e.value)
    short = (torch.empty(accum - 1, device="cuda"), torch.empty(sem, dtype=torch.int32, device="cuda"))
    with pytest.raises(attnc.AttncError) as e:
        inner.backward_cuda(*args, short)
    assert "dq_work" in str(e.value)
    work = (torch.empty(accum, device="cuda"), torch.empty(sem, dtype=torch.int32, device="cuda"))
    inner.backward_cuda(*args, work)
    fused = [dq.clone(), dk.clone(), dv.clone()]
    # packed (session 20): one float32 buffer of backward_scratch's length holds the rows
    # and the workspace; another length, or a workspace given besides, is refused
    n = inner.backward_scratch(q, k, v, None)
    assert n >= 2 * 400 + accum + sem, (n, accum, sem)
    for bad, work_arg, what in ((n - 1, None, "backward_scratch"), (n + 64, None, "backward_scratch"),
                                (n, work, "dq_work")):
        packed = (*args[:10], torch.empty(bad, device="cuda"), *args[11:])
        with pytest.raises(attnc.AttncError) as e:
            inner.backward_cuda(*packed, work_arg)
        assert what in str(e.value), str(e.value)
    for x in (dq, dk, dv):
        x.zero_()
    inner.backward_cuda(*args[:10], torch.full((n,), float("nan"), device="cuda"), *args[11:], None)
    for name, a, r in zip("qkv", (dq, dk, dv), fused):
        assert torch.equal(a, r), f"d{name}: the packed scratch's gradients differ from the separate workspace's"
    monkeypatch.setenv("ATTNC_BWD_DQ", "separate")
    two = attnc.compile(src + "\n// two kernels\n").attention()
    assert two._inner.backward_workspace(q, k, v, None) is None
    assert two._inner.backward_scratch(q, k, v, None) == 2 * 400
    xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
    two(*xs).backward(do)
    for n, a, r in zip("qkv", [x.grad for x in xs], fused):
        assert torch.allclose(a.float(), r.float(), atol=2e-2, rtol=2e-2), n


@pytest.mark.skipif(not SM90, reason="the fused dQ runs on sm_90")
def test_backward_workspace_sizes_are_cached_and_a_stale_entry_recovers():
    """The autograd backward asks the extension for the length of its packed scratch (the
    two rows and the fused dQ's workspace in one buffer) once per binding
    (``_ops._WORKSPACE``, sessions 18 and 20); an entry the extension refuses (a binding
    dropped and made again under other settings) is asked again and the call retried: the
    same gradients. The packed length is the rows' and the workspace's at 256-byte
    offsets."""
    from attnc import _ops

    attn = attnc.compile((EXAMPLES / "causal.attn").read_text() + "\n// workspace cache\n").attention()
    q, k, v = (x.to("cuda", torch.bfloat16) for x in qkv(1, 4, 2, 100, 100, 128, seed=9))
    do = torch.randn(1, 4, 100, 128, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    runs = []
    for poison in (False, False, True):
        keys = [kk for kk in _ops._WORKSPACE if kk[0] is attn._inner]
        assert len(keys) == (0 if not runs else 1), keys
        if poison:
            _ops._WORKSPACE[keys[0]] = (*_ops._WORKSPACE[keys[0]][:2], 7, q.device)  # a length it does not take
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        attn(*xs).backward(do)
        runs.append([x.grad for x in xs])
    (key,) = [kk for kk in _ops._WORKSPACE if kk[0] is attn._inner]
    n = attn._inner.backward_scratch(q, k, v, None)
    assert _ops._WORKSPACE[key][2] == n
    accum, sem = attn._inner.backward_workspace(q, k, v, None)
    rows = (1 * 4 * 100 + 3) // 4 * 4
    a = (2 * rows + 63) // 64 * 64
    assert n == (a + accum + 63) // 64 * 64 + sem, (n, rows, accum, sem)
    for run in runs[1:]:
        for n, a, r in zip("qkv", runs[0], run):
            assert torch.equal(a, r), f"d{n} differs"


ND_CASES = [
    # (file, attention, caps, (b, hq, hkv, lq, lkv, d), dtype)
    ("dense.attn", None, {}, (1, 4, 4, 300, 300, 128), torch.bfloat16),  # q tiles of 80 on sm_90
    ("causal.attn", None, {}, (2, 8, 2, 257, 131, 128), torch.bfloat16),  # GQA, odd, Lq != Lkv
    ("causal.attn", None, {}, (1, 4, 1, 193, 193, 64), torch.float16),
    ("dense.attn", None, {}, (1, 4, 2, 150, 211, 64), torch.bfloat16),
    ("document_causal.attn", "document_causal", "doc", (2, 4, 2, 333, 333, 128), torch.float16),  # block mask
    ("learned_bias.attn", None, "bias", (1, 4, 4, 130, 97, 128), torch.bfloat16),  # capture gradient
]


@pytest.mark.parametrize("file,name,caps,shape,dtype", ND_CASES,
                         ids=["dense128", "causal_gqa128", "causal64_f16", "dense64_gqa", "document_mask", "learned_bias"])
def test_nondeterministic_backward_matches_the_oracle(file, name, caps, shape, dtype):
    """``attn(..., deterministic=False)``: the backward's non-deterministic kernels (sm_90:
    dQ's parts added unordered, q tiles of 80 at dense D128) against the f64 oracle with
    the fused backward's tolerance; run twice, dk, dv and capture gradients bit-identical
    (only dq's additions are unordered), and dk, dv equal to the deterministic backward's
    where the tiles are the same (all but dense D128 on sm_90). Its dQ workspace is the
    non-deterministic kernels' (q tiles of 80 at dense D128 on sm_90; a block table keeps
    the deterministic kernels, faster there)."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, lq, lkv, d = shape
    q, k, v = (x.to(dtype) for x in qkv(b, hq, hkv, lq, lkv, d, seed=lq + d))
    mask = False
    if caps == "bias":
        caps = {"bias": 0.5 * torch.randn(b, hq, lq, lkv, generator=torch.Generator().manual_seed(6))}
    elif caps == "doc":
        doc = torch.sort(torch.randint(0, 4, (b, lq), generator=torch.Generator().manual_seed(5),
                                       dtype=torch.int32), dim=1).values
        caps, mask = {"doc": doc}, True
    floats = [n for n, elem, _ in attn.tensors if elem in ("f32", "f16", "bf16")]
    wo, wl = loss_weights(torch.empty(b, hq, lq, d), torch.empty(b, hq, lq), 7)
    dense128 = SM90 and file == "dense.attn" and d == 128
    ws = attn._inner.backward_workspace(q.cuda(), k.cuda(), v.cuda(), None, False)
    if dense128:
        accum, sem = ws
        assert accum == sem * 80 * d, ws  # q tiles of 80
    else:  # the deterministic kernels' tiles (bands and tables: the deterministic kernels)
        det_ws = attn._inner.backward_workspace(q.cuda(), k.cuda(), v.cuda(), None)
        if ws is None or det_ws is None:
            assert ws == det_ws, (ws, det_ws)
        else:  # the same tiles; the deterministic kernels may count more (a tile counter)
            assert ws[0] == det_ws[0] and ws[1] <= det_ws[1] <= ws[1] + 3, (ws, det_ws)
    runs = {}
    for det in (False, False, True):
        xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
        dcaps = dev(caps)
        for n in floats:
            dcaps[n] = dcaps[n].requires_grad_(True)
        bm = attn.block_mask(*xs, **dcaps) if mask else None
        o, lse = attn(*xs, return_lse=True, block_mask=bm, deterministic=det, **dcaps)
        wl_ = torch.where(torch.isinf(lse.cpu()), 0.0, wl)
        lse_term = torch.where(torch.isinf(lse), 0.0, lse)
        ((o.float() * wo.cuda()).sum() + (lse_term * wl_.cuda()).sum()).backward()
        runs.setdefault(det, []).append([x.grad for x in xs] + [dcaps[n].grad for n in floats])
    (nd1, nd2), (det,) = runs[False], runs[True]
    for n, a, r in zip(["q", "k", "v"] + floats, nd1, nd2):
        if n != "q":
            assert torch.equal(a, r), f"d{n} differs between two non-deterministic runs"
    if not dense128:
        for n, a, r in zip(["k", "v"] + floats, nd1[1:], det[1:]):
            assert torch.equal(a, r), f"d{n}: the non-deterministic backward changed more than dQ's order"
    if not SM90:
        assert torch.equal(nd1[0], det[0]), "no non-deterministic kernels here: the same dq"
    dq, dk, dv, rc = attn.reference_grad(q, k, v, wo, wl_, **caps)
    for n, g, r in zip(["q", "k", "v"] + floats, nd1, [dq, dk, dv] + [rc[x] for x in floats]):
        g, r = g.double().cpu(), r.double()
        tol = 0.05 * r.abs().max() + 0.02
        assert not torch.isnan(g).any(), f"d{n} has NaN"
        assert (g - r).abs().max() <= tol, f"d{n}: {(g - r).abs().max():.4g} > {tol:.4g}"
    # dq against the deterministic dq: the same sums in another order
    assert (nd1[0].float() - det[0].float()).abs().max() <= 0.02 * det[0].float().abs().max() + 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("file,name,d,dv", [("causal.attn", None, 96, 96), ("dense.attn", None, 72, 72),
                                            ("causal.attn", None, 192, 128), ("softcap.attn", "softcap", 80, 80),
                                            ("relative_bias_table.attn", None, 40, 40),
                                            ("document_causal.attn", "document_causal", 160, 160)],
                         ids=["causal_d96", "dense_d72", "causal_mla_192_128", "softcap_d80", "bias_table_d40",
                              "document_d160"])
def test_head_dims_the_kernels_pad(file, name, d, dv, dtype):
    """Head dims the CUDA kernels do not take run zero-padded (`attnc._cuda_head_dim`):
    o, lse, dq, dk, dv and a float capture's gradient against the f64 oracle at the true
    head dims (GQA 2:1, odd Lq != Lkv where the mask allows), the outputs at the true
    shapes, and the gradients twice bit-identical."""
    attn = attnc.compile(EXAMPLES / file).attention(name)
    self_only = file in SELF_ATTENTION_ONLY
    b, hq, hkv, lq, lkv = 2, 4, 2, 133, (133 if self_only else 201)
    q, k, v = (x.to(dtype) for x in qkv(b, hq, hkv, lq, lkv, d, dv, seed=31))
    caps = captures_for(attn, b, hq, lq, lkv, seed=7)
    floats = [n for n, elem, _ in attn.tensors if elem in ("f32", "f16", "bf16")]
    assert attnc._cuda_head_dim(q.cuda(), k.cuda(), v.cuda()) is not None
    wo = torch.randn(b, hq, lq, dv, generator=torch.Generator().manual_seed(3))

    def run():
        xs = [x.cuda().requires_grad_(True) for x in (q, k, v)]
        dcaps = dev(caps)
        for n in floats:
            dcaps[n] = dcaps[n].requires_grad_(True)
        o, lse = attn(*xs, return_lse=True, **dcaps)
        (o.float() * wo.cuda()).sum().backward()
        return o, lse, [x.grad for x in xs] + [dcaps[n].grad for n in floats]

    o, lse, got = run()
    assert o.shape == (b, hq, lq, dv) and lse.shape == (b, hq, lq)
    ro, rlse = attn.reference(q.float(), k.float(), v.float(), **caps)
    check(o, lse, ro, rlse, dtype)
    dq, dk, dvv, rc = attn.reference_grad(q, k, v, wo, None, **caps)
    for n, g, r in zip(["q", "k", "v"] + floats, got, [dq, dk, dvv] + [rc[n] for n in floats]):
        g, r = g.double().cpu(), r.double()
        assert g.shape == r.shape, n
        tol = 0.05 * r.abs().max() + 0.02
        assert not torch.isnan(g).any(), f"d{n} has NaN"
        assert (g - r).abs().max() <= tol, f"d{n}: {(g - r).abs().max():.4g} > {tol:.4g}"
    for n, a, b_ in zip(["q", "k", "v"] + floats, got, run()[2]):
        assert torch.equal(a, b_), f"d{n} differs between two runs"


def test_head_dim_96_block_mask_and_compile():
    """A padded head dim (96) with a block mask made once (document + causal: the mask's
    tables at the padded shape, its stale check at the call's) and under
    ``torch.compile(fullgraph=True)`` (the padding traced): the same results as the
    eager call without a block mask."""
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v, doc = _doc_inputs(d=96)
    bm = attn.block_mask(q, k, v, doc=doc)
    o0 = attn(q, k, v, doc=doc)
    o1, lse1 = attn(q, k, v, doc=doc, block_mask=bm, return_lse=True)
    # (padded to 128: the block mask runs document tiles, whose sums run in another order
    # than the table kernel's: a couple of bf16 ulps apart, both against the oracle)
    assert bm.document_tiles > 0, bm
    assert o0.shape[-1] == 96 and torch.allclose(o0.float(), o1.float(), atol=1.6e-2, rtol=0)
    ro, rlse = attn.reference(q.float(), k.float(), v.float(), doc=doc.cpu())
    check(o1, lse1, ro, rlse, torch.bfloat16)
    with pytest.raises(attnc.AttncError, match="stale block mask"):
        attn(q, k, v, doc=doc, block_mask=bm, scale=0.5)
    fn = torch.compile(lambda q, k, v, doc: attn(q, k, v, doc=doc), fullgraph=True)
    o2 = fn(q, k, v, doc)
    assert o2.shape == o0.shape and torch.allclose(o2.float(), o0.float(), atol=2e-2, rtol=2e-2)


def test_decode_at_a_padded_head_dim_is_an_error_with_the_recipe():
    """CUDA decoding reads the cache in place, so a head dim its kernels do not take is an
    E0320 that says how to pad the cache once; following it gives the oracle's result at
    the true head dim."""
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    b, h, lq, cap, d = 2, 4, 3, 77, 96
    q, k, v = (x.to(torch.bfloat16) for x in qkv(b, h, h, lq, cap, d, seed=41))
    lens = torch.tensor([77, 40], dtype=torch.int32)
    with pytest.raises(attnc.AttncError, match="allocate k_cache and v_cache with head dim 128") as e:
        attn.decode(q.cuda(), k.cuda(), v.cuda(), lens.cuda())
    assert e.value.code == "E0320"
    pad = lambda x: torch.nn.functional.pad(x, (0, 128 - d)).cuda()  # noqa: E731
    o = attn.decode(pad(q), pad(k), pad(v), lens.cuda(), scale=1 / math.sqrt(d))[..., :d]
    ro = attn.reference_decode(q.float(), k.float(), v.float(), lens)
    ro = ro[0] if isinstance(ro, tuple) else ro
    a, r = O_TOL[torch.bfloat16]
    assert (o.double().cpu() - ro.double()).abs().max() <= a + r * ro.double().abs().max()
