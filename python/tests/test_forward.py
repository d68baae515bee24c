"""Forward on the CPU: every example against the f64 oracle, hand-written dense torch
references and SDPA, GQA, odd and unequal lengths, fully masked rows, params without
recompiling, non-contiguous inputs, scale."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnc
from conftest import EXAMPLES, captures_for, close, dense_reference, qkv

EXAMPLE_ATTENTIONS = [
    (path.name, name) for path in sorted(EXAMPLES.glob("*.attn")) for name in attnc.compile(path).names
]


@pytest.mark.parametrize("file,name", EXAMPLE_ATTENTIONS, ids=[f"{f}:{n}" for f, n in EXAMPLE_ATTENTIONS])
def test_every_example_matches_oracle(file, name):
    attn = attnc.compile(EXAMPLES / file).attention(name)
    b, hq, hkv, lq, lkv, d = 2, 16, 4, 67, 67, 16
    q, k, v = qkv(b, hq, hkv, lq, lkv, d, seed=3)
    caps = captures_for(attn, b, hq, lq, lkv, seed=5)
    o, lse = attn(q, k, v, return_lse=True, **caps)
    ro, rlse = attn.reference(q, k, v, **caps)
    assert o.shape == (b, hq, lq, d) and o.dtype == torch.float32
    assert lse.shape == (b, hq, lq) and lse.dtype == torch.float32
    ok, err = close(o, ro, atol=5e-5)
    assert ok, f"o differs from the oracle by {err}"
    ok, err = close(lse, rlse, atol=5e-5)
    assert ok, f"lse differs from the oracle by {err}"


def test_dense_matches_sdpa():
    attn = attnc.compile(EXAMPLES / "dense.attn").attention()
    q, k, v = qkv(2, 4, 4, 129, 77, 32)
    o = attn(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(o, ref, atol=2e-5, rtol=1e-5)


def test_causal_matches_sdpa_and_gqa():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = qkv(1, 8, 2, 100, 100, 64, seed=1)
    o, lse = attn(q, k, v, return_lse=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(o, ref, atol=2e-5, rtol=1e-5)
    ro, rlse = dense_reference(q, k, v, mask=lambda b, h, qi, ki: qi >= ki)
    assert close(lse, rlse)[0]


def test_sdpa_scale_and_dv():
    attn = attnc.compile("attention plain {}").attention()
    q, k, v = qkv(1, 2, 1, 33, 45, 16, dv=24)
    o = attn(q, k, v, scale=0.3)
    ref, _ = dense_reference(q, k, v, scale=0.3)
    assert o.shape == (1, 2, 33, 24)
    assert torch.allclose(o.double(), ref, atol=2e-5)


def slope(h):
    return torch.exp2(-8.0 * (h + 1).double() / 16)


# (file, attention, torch mask, torch score, captures(b, hq, lq, lkv) -> dict)
HAND_WRITTEN = {
    "sliding_window": (
        "sliding_window.attn",
        lambda c: (lambda b, h, qi, ki: (qi - ki <= c["window"]) & (qi >= ki)),
        None,
        lambda b, hq, lq, lkv: {"window": 13},
    ),
    "alibi": (
        "alibi.attn",
        None,
        lambda c: (lambda s, b, h, qi, ki: s + (ki - qi).double() * slope(h)),
        lambda b, hq, lq, lkv: {},
    ),
    "softcap": (
        "softcap.attn",
        None,
        lambda c: (lambda s, b, h, qi, ki: 50.0 * torch.tanh(s / 50.0)),
        lambda b, hq, lq, lkv: {},
    ),
    "document_alibi": (
        "document_alibi.attn",
        lambda c: (
            lambda b, h, qi, ki: (qi >= ki)
            & (qi - ki < c["window"])
            & (c["doc"][b, qi.clamp(max=c["doc"].shape[1] - 1)] == c["doc"][b, ki])
        ),
        lambda c: (lambda s, b, h, qi, ki: s + slope(h) * (ki - qi).double()),
        lambda b, hq, lq, lkv: {
            "doc": torch.sort(torch.randint(0, 4, (b, lkv), dtype=torch.int32), dim=1).values,
            "window": 20,
        },
    ),
    "learned_bias": (
        "learned_bias.attn",
        None,
        lambda c: (lambda s, b, h, qi, ki: s + c["bias"].double()[b, h, qi, ki]),
        lambda b, hq, lq, lkv: {"bias": torch.randn(b, hq, lq, lkv)},
    ),
    "relative_bias_table": (
        "relative_bias_table.attn",
        None,
        lambda c: (lambda s, b, h, qi, ki: s + c["rel_bias"].double()[h, (qi - ki).clamp(-64, 64) + 64]),
        lambda b, hq, lq, lkv: {"rel_bias": torch.randn(hq, 129)},
    ),
}


@pytest.mark.parametrize("which", sorted(HAND_WRITTEN))
@pytest.mark.parametrize("lq,lkv,hq,hkv", [(53, 53, 4, 4), (31, 97, 4, 2), (1, 130, 2, 1)])
def test_dense_torch_reference(which, lq, lkv, hq, hkv):
    file, mask, score, make = HAND_WRITTEN[which]
    attn = attnc.compile(EXAMPLES / file).attention(which)
    torch.manual_seed(7)
    b = 2
    q, k, v = qkv(b, hq, hkv, lq, lkv, 16, seed=11)
    caps = make(b, hq, lq, lkv)
    if which == "document_alibi" and lq != lkv:
        pytest.skip("doc is indexed by q and kv: needs Lq == Lkv")
    o, lse = attn(q, k, v, return_lse=True, **caps)
    ro, rlse = dense_reference(q, k, v, mask=mask and mask(caps), score=score and score(caps))
    ok, err = close(o, ro, atol=3e-5)
    assert ok, f"o differs by {err}"
    ok, err = close(lse, rlse, atol=3e-5)
    assert ok, f"lse differs by {err}"


def test_fully_masked_rows_give_zero_and_minus_inf():
    # rows q < start see nothing; with start = Lq every row is masked
    attn = attnc.compile("param start: i32;\nmask m(b, h, q, kv) { q >= start && kv <= q }\nattention a { mask = m; }").attention()
    q, k, v = qkv(1, 2, 2, 40, 40, 8)
    o, lse = attn(q, k, v, start=10, return_lse=True)
    assert torch.all(o[:, :, :10] == 0)
    assert torch.all(torch.isneginf(lse[:, :, :10]))
    assert torch.all(torch.isfinite(lse[:, :, 10:]))
    ro, rlse = dense_reference(q, k, v, mask=lambda b, h, qi, ki: (qi >= 10) & (ki <= qi))
    assert close(o, ro)[0] and close(lse, rlse)[0]
    o, lse = attn(q, k, v, start=40, return_lse=True)
    assert torch.all(o == 0) and torch.all(torch.isneginf(lse))


def test_empty_kv_is_fully_masked():
    attn = attnc.compile(EXAMPLES / "dense.attn").attention()
    q, k, v = qkv(1, 2, 2, 5, 0, 8)
    o, lse = attn(q, k, v, return_lse=True)
    assert torch.all(o == 0) and torch.all(torch.isneginf(lse))


def test_param_change_reuses_binding():
    # a source of its own: attentions of equal source share their bindings
    src = (EXAMPLES / "sliding_window.attn").read_text() + "\n// test_param_change_reuses_binding\n"
    attn = attnc.compile(src).attention()
    q, k, v = qkv(1, 2, 2, 64, 64, 16)
    outs = [attn(q, k, v, window=w) for w in (1, 5, 63)]
    assert attn.binding_count() == 1
    for w, o in zip((1, 5, 63), outs):
        ro, _ = dense_reference(q, k, v, mask=lambda b, h, qi, ki: (qi - ki <= w) & (qi >= ki))
        assert close(o, ro)[0]
    # another shape, another binding; the first is kept
    attn(*qkv(1, 2, 2, 65, 65, 16), window=3)
    assert attn.binding_count() == 2
    attn(q, k, v, window=7)
    assert attn.binding_count() == 2


def test_non_contiguous_inputs():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    # [B, L, H, D] storage viewed as [B, H, L, D]; a sliced head dim
    base = torch.randn(2, 50, 4, 24)
    q = base.transpose(1, 2)[..., :16]
    k = torch.randn(2, 50, 4, 16).transpose(1, 2)
    v = torch.randn(2, 4, 16, 50).transpose(2, 3)
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    o = attn(q, k, v)
    ref = attn(q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(o, ref)
    ro, _ = dense_reference(q, k, v, mask=lambda b, h, qi, ki: qi >= ki)
    assert close(o, ro)[0]


def test_non_contiguous_capture():
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    q, k, v = qkv(1, 2, 2, 20, 30, 8)
    bias = torch.randn(1, 2, 30, 20).transpose(2, 3)
    o = attn(q, k, v, bias=bias)
    assert torch.equal(o, attn(q, k, v, bias=bias.contiguous()))


def test_outputs_are_fresh_and_inputs_unchanged():
    attn = attnc.compile(EXAMPLES / "dense.attn").attention()
    q, k, v = qkv(1, 2, 2, 10, 10, 8)
    copies = [x.clone() for x in (q, k, v)]
    o1 = attn(q, k, v)
    o2 = attn(q, k, v)
    assert o1.data_ptr() != o2.data_ptr() and torch.equal(o1, o2)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_bool_and_float_params():
    src = """
param use_bias: bool;
param temp: f32;
score s(s, b, h, q, kv) { if use_bias { s / temp + 0.5 * (kv - q) as f32 } else { s / temp } }
attention a { score = s; }
"""
    attn = attnc.compile(src).attention()
    q, k, v = qkv(1, 2, 2, 17, 17, 8)
    for use_bias in (True, False):
        for temp in (1.0, 2.5, 3):  # an int is taken for an f32 param
            o = attn(q, k, v, use_bias=use_bias, temp=temp)
            sc = (lambda s, b, h, qi, ki: s / temp + (0.5 * (ki - qi).double() if use_bias else 0.0))
            ro, _ = dense_reference(q, k, v, score=sc)
            assert close(o, ro)[0]


def test_module_api():
    mod = attnc.compile(EXAMPLES / "softcap.attn")
    assert mod.names == ["softcap", "softcap_causal"]
    attn = mod.attention("softcap_causal")
    assert attn.name == "softcap_causal" and attn.tensors == [] and attn.params == []
    da = attnc.compile(EXAMPLES / "document_alibi.attn").attention()
    assert da.tensors == [("doc", "i32", ["B", "KV"])]
    assert da.params == [("window", "i32")]
    # a str path and a pathlib path
    assert attnc.compile(str(EXAMPLES / "dense.attn")).names == ["dense"]
    assert "dense" in repr(attnc.compile(EXAMPLES / "dense.attn"))
