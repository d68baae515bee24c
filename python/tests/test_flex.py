"""attnc.flex: FlexAttention's score_mod / mask_mod ported by tracing (python/attnc/flex.py).

Every ported pair is checked against the float64 dense reference (conftest's, which
calls the same Python functions on broadcast index tensors: the functions' own torch
semantics) and, where this torch runs FlexAttention eagerly on the CPU, against
FlexAttention itself; gradients (q, k, v and captured tensors that require them: a
learned bias table, a learnable soft-cap) against the reference's autograd. Then the
drop-in ``flex_attention`` with a block mask, re-tracing a replaced global, the kept
compiled source, decoding, and every E0330 refusal."""

import math
import warnings

import pytest
import torch

import attnc
import attnc.flex as af
from conftest import dense_reference

B, H, L, S, D = 2, 4, 37, 45, 16

g = torch.Generator().manual_seed(7)
BIAS = torch.randn(H, 2 * 64 + 1, generator=g)
DOC = torch.sort(torch.randint(0, 3, (S,), generator=g))[0]
DOC_Q = DOC[:L].clone()
GLOBAL = torch.zeros(S, dtype=torch.bool)
GLOBAL[[0, 5, 17]] = True
BUCKETS = torch.randn(32, H, generator=g)
SHORT = torch.arange(S, dtype=torch.int16) % 7
F64 = torch.randn(H, generator=g, dtype=torch.float64)
PREFIX = 9
WINDOW = 8


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)


def prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx < PREFIX) | (q_idx >= kv_idx)


def document(b, h, q_idx, kv_idx):
    return (DOC_Q[q_idx] == DOC[kv_idx]) & (q_idx >= kv_idx)


def global_tokens(b, h, q_idx, kv_idx):
    return GLOBAL[kv_idx] | (torch.abs(q_idx - kv_idx) <= 3)


def dilated(b, h, q_idx, kv_idx):
    return ((q_idx - kv_idx) % 3 == 0) & ~(kv_idx > q_idx + 4)


def per_head(b, h, q_idx, kv_idx):
    return torch.logical_or(h % 2 == 0, (q_idx // 4) == (kv_idx // 4))


def short_ints(b, h, q_idx, kv_idx):
    return SHORT[kv_idx] != 3


def rel_bias(score, b, h, q_idx, kv_idx):
    return score + BIAS[h, q_idx - kv_idx + 64]


def alibi(score, b, h, q_idx, kv_idx):
    return score + torch.exp2(-((h + 1) * 8.0 / H)) * (kv_idx - q_idx)


def softcap(score, b, h, q_idx, kv_idx):
    return 5.0 * torch.tanh(score / 5.0)


def t5_buckets(score, b, h, q_idx, kv_idx):
    rel = kv_idx - q_idx
    n = torch.abs(rel)
    large = 8 + (torch.log(n.float() / 8 + 1e-6) / math.log(128 / 8) * 8).to(torch.int64)
    bucket = torch.where(n < 8, n, torch.clamp(large, max=15)) + (rel > 0).long() * 16
    return score + BUCKETS[bucket, h]


def where_inf(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx >= kv_idx, score, -float("inf"))


def arithmetic(score, b, h, q_idx, kv_idx):
    x = (q_idx // 3 - kv_idx / 4) * 0.01 + (q_idx % 5) - (kv_idx ** 2) * 1e-3
    return score * torch.sigmoid(score) + x + torch.minimum(score, torch.tensor(0.5)) - torch.maximum(score, -score)


def float64_capture(score, b, h, q_idx, kv_idx):
    return score + F64[h] * (q_idx - kv_idx).abs().clamp(0, 10)


def wrap_negative(score, b, h, q_idx, kv_idx):
    # negative indices wrap around, as torch's indexing does
    return score + BIAS[h, q_idx - kv_idx]


PAIRS = [
    (None, causal), (None, sliding), (None, prefix_lm), (None, document), (None, global_tokens),
    (None, dilated), (None, per_head), (None, short_ints), (rel_bias, causal), (alibi, None),
    (softcap, sliding), (t5_buckets, None), (where_inf, None), (arithmetic, prefix_lm),
    (float64_capture, None), (wrap_negative, document),
]


def _ids(pair):
    return "+".join(f.__name__ for f in pair if f is not None)


def _qkv(hkv=H, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=gen)
    k = torch.randn(B, hkv, S, D, generator=gen)
    v = torch.randn(B, hkv, S, D, generator=gen)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def _flex(q, k, v, score_mod, mask_mod):
    """FlexAttention's own eager result on the CPU, or None where this torch has none."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bm = None if mask_mod is None else create_block_mask(mask_mod, B, H, L, S, device="cpu")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=k.shape[1] != H)
        except (NotImplementedError, RuntimeError):
            return None


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_ported_pairs_match_the_reference_and_flex(pair):
    score_mod, mask_mod = pair
    q, k, v = _qkv(hkv=2 if score_mod is alibi else H)
    port = af.port(score_mod, mask_mod)
    o, lse = port(q, k, v, return_lse=True)
    want_o, want_lse = dense_reference(q, k, v, mask=mask_mod, score=score_mod)
    assert torch.allclose(o.double(), want_o, atol=2e-5, rtol=0), (o.double() - want_o).abs().max()
    finite = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], want_lse[finite], atol=2e-5, rtol=0)
    flex = _flex(q, k, v, score_mod, mask_mod)
    if flex is not None:
        assert torch.allclose(o, flex, atol=2e-5, rtol=0), (o - flex).abs().max()


def test_gradients_reach_q_k_v_and_captured_parameters():
    bias = torch.nn.Parameter(torch.randn(H, 2 * 64 + 1, generator=g))
    cap = torch.nn.Parameter(torch.tensor(4.0))

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh((score + bias[h, q_idx - kv_idx + 64]) / cap)

    q, k, v = _qkv(hkv=2, grad=True, seed=3)
    do = torch.randn(B, H, L, D, generator=g)
    leaves = (q, k, v, bias, cap)

    def grads(out):
        for t in leaves:
            t.grad = None
        (out * do).sum().backward()
        return [t.grad.clone() for t in leaves]

    got = grads(af.flex_attention(q, k, v, score_mod=score_mod, mask_mod=causal, enable_gqa=True))
    want = grads(dense_reference(q, k, v, mask=causal, score=score_mod)[0])
    for name, a, w in zip(("q", "k", "v", "bias", "cap"), got, want):
        assert torch.allclose(a.double(), w.double(), atol=1e-4 * (1 + w.abs().max().item()), rtol=0), name
    assert bias.grad.abs().sum() > 0 and cap.grad.abs() > 0


def test_a_score_mod_that_masks_with_minus_inf():
    """FlexAttention's causal score_mod (``torch.where(q >= kv, score, -inf)``) with a learned
    bias: the same output and gradients as the causal mask_mod with the bias as the score
    (attnc lifts the condition into the mask and skips the blocks it drops), including
    rows with nothing kept (rows 0 and 1: the window starts two keys back)."""
    bias = torch.nn.Parameter(torch.randn(H, 2 * 64 + 1, generator=g))

    def masking(score, b, h, q_idx, kv_idx):
        keep = (q_idx - kv_idx >= 2) & (q_idx - kv_idx < 9)
        return torch.where(keep, score + bias[h, q_idx - kv_idx + 64], -float("inf"))

    def window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx >= 2) & (q_idx - kv_idx < 9)

    def biased(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx - kv_idx + 64]

    q, k, v = _qkv(grad=True, seed=5)
    do = torch.randn(B, H, L, D, generator=g)
    leaves = (q, k, v, bias)

    def grads(out):
        for t in leaves:
            t.grad = None
        (out * do).sum().backward()
        return [t.grad.clone() for t in leaves]

    o1, aux = af.flex_attention(q, k, v, score_mod=masking, return_lse=True)
    got = grads(o1)
    o2, lse2 = af.flex_attention(q, k, v, score_mod=biased, mask_mod=window, return_lse=True)
    want = grads(o2)
    assert torch.equal(o1, o2) and torch.equal(aux, lse2)
    for name, a, w in zip(("q", "k", "v", "bias"), got, want):
        assert torch.allclose(a, w, atol=1e-6, rtol=0), name
    ref, ref_lse = dense_reference(q, k, v, mask=window, score=biased)
    assert torch.allclose(o1.double(), ref, atol=2e-5, rtol=0)
    assert torch.allclose(aux.double(), ref_lse, atol=2e-5, rtol=0)
    assert torch.isneginf(aux[:, :, :2]).all() and (o1[:, :, :2] == 0).all()


def test_where_branches_keep_their_reads():
    """A value used only by one branch of a ``torch.where`` is written inside that branch
    (its reads guarded by the condition: the compiler can then lift a masking score's
    condition into the mask); one used by the condition, by both branches or by the result
    stays at the top."""
    table = torch.randn(H, 129)
    gate = torch.randn(H, 129)

    def one_branch(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx >= kv_idx, score + table[h, q_idx - kv_idx + 64], -float("inf"))

    def shared(score, b, h, q_idx, kv_idx):
        t = table[h, q_idx - kv_idx + 64]
        return torch.where(gate[h, kv_idx] > 0, score + t, score - t)

    def top(lines):
        return [x for x in lines if x.startswith("    let") and "= if" not in x]

    src = af.port(score_mod=one_branch).source.splitlines()
    assert not any("c0[" in x for x in top(src)), src
    assert any("= if" in x and "c0[" in x.rsplit("else", 1)[0] for x in src), src
    src = af.port(score_mod=shared).source.splitlines()
    assert sum("c0[" in x for x in top(src)) == 1 and sum("c1[" in x for x in top(src)) == 1, src
    q, k, v = _qkv(seed=7)
    for fn in (one_branch, shared):
        want, _ = dense_reference(q, k, v, score=fn)
        assert torch.allclose(af.flex_attention(q, k, v, score_mod=fn).double(), want, atol=2e-5, rtol=0)


def test_partial_indexing_and_one_element_tensors():
    cap = torch.tensor([[3.0]])

    def a(score, b, h, q_idx, kv_idx):
        return score + BIAS[h][q_idx - kv_idx + 64] * cap

    def b_(score, b, h, q_idx, kv_idx):
        return score + BIAS[h, q_idx - kv_idx + 64] * cap[0, 0]

    pa, pb = af.port(a), af.port(b_)
    # `cap` read as a number in place; `cap[0, 0]` is torch's own (a one-element view)
    assert "tensor c1: f32[1, 1];" in pa.source and "c1[0, 0]" in pa.source, pa.source
    assert "tensor c1: f32[1];" in pb.source and "c1[0]" in pb.source, pb.source
    q, k, v = _qkv()
    want, _ = dense_reference(q, k, v, score=b_)
    assert torch.allclose(pa(q, k, v).double(), want, atol=2e-5, rtol=0)
    assert torch.equal(pa(q, k, v), pb(q, k, v))


def test_the_source_is_plain_attnc():
    p = af.port(mask_mod=sliding)
    assert p.source == (
        "// written by attnc.flex.port from FlexAttention functions\n"
        "mask m(b, h, q, kv) {\n"
        "    let v0: bool = q >= kv;\n"
        "    let v1: i32 = q - kv;\n"
        "    let v2: bool = v1 < 8;\n"
        "    let v3: bool = v0 & v2;\n"
        "    v3\n"
        "}\n"
        "attention flex { mask = m; }\n"
    )
    # the same text compiles to the same attention (its kernels kept)
    assert af.port(mask_mod=sliding).attention is p.attention
    # and it is what attnc.compile takes
    assert attnc.compile(p.source).attention("flex").name == "flex"


def test_flex_attention_drop_in_with_a_block_mask_and_replaced_globals():
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = _qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = fa.create_block_mask(document, B, H, L, S, device="cpu")
    o = af.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm)
    want, _ = dense_reference(q, k, v, mask=document, score=rel_bias)
    assert torch.allclose(o.double(), want, atol=2e-5, rtol=0)
    # a global replaced between calls is read by the next call (traced at every call)
    global DOC
    old = DOC
    try:
        DOC = torch.zeros_like(old)
        o2 = af.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm)
        want2, _ = dense_reference(q, k, v, mask=document, score=rel_bias)
        assert torch.allclose(o2.double(), want2, atol=2e-5, rtol=0)
        assert not torch.allclose(o2, o)
    finally:
        DOC = old
    # the no-op mask and no functions at all: dense attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noop = fa.create_block_mask(fa.noop_mask, B, H, L, S, device="cpu")
    dense, _ = dense_reference(q, k, v)
    assert torch.allclose(af.flex_attention(q, k, v, block_mask=noop).double(), dense, atol=2e-5, rtol=0)
    assert torch.allclose(af.flex_attention(q, k, v).double(), dense, atol=2e-5, rtol=0)
    with pytest.raises(attnc.AttncError) as e:
        af.flex_attention(q, k, v, block_mask=bm, mask_mod=causal)
    assert e.value.code == "E0330"


def test_return_aux_as_flexattention_returns_it():
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    if not hasattr(fa, "AuxRequest"):
        pytest.skip("this PyTorch has no AuxRequest")
    q, k, v = _qkv()
    want, want_lse = dense_reference(q, k, v, mask=document, score=rel_bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = fa.create_block_mask(document, B, H, L, S, device="cpu")
    o, aux = af.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm, return_aux=fa.AuxRequest(lse=True))
    assert isinstance(aux, fa.AuxOutput) and aux.max_scores is None
    assert torch.allclose(o.double(), want, atol=2e-5, rtol=0)
    assert torch.allclose(aux.lse.double(), want_lse, atol=2e-5, rtol=0)
    # FlexAttention's own result has the same form and the same LSE (natural log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, aux_f = fa.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm, return_aux=fa.AuxRequest(lse=True))
    assert torch.allclose(aux.lse, aux_f.lse, atol=1e-4, rtol=0)
    # an AuxRequest without the LSE: o and an empty AuxOutput; the port takes it too
    o2, aux2 = af.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm, return_aux=fa.AuxRequest())
    assert aux2.lse is None and torch.equal(o2, o)
    p = af.port(score_mod=rel_bias, mask_mod=document)
    o3, aux3 = p(q, k, v, return_aux=fa.AuxRequest(lse=True))
    assert torch.equal(o3, o) and torch.equal(aux3.lse, aux.lse)
    # max_scores: refused, naming what to ask instead (FlexAttention's FLASH backend refuses it too)
    with pytest.raises(attnc.AttncError) as e:
        af.flex_attention(q, k, v, score_mod=rel_bias, return_aux=fa.AuxRequest(lse=True, max_scores=True))
    assert e.value.code == "E0330" and "AuxRequest(lse=True)" in str(e.value)


def test_ported_masks_decode_at_logical_positions():
    port = af.port(rel_bias, sliding)
    gen = torch.Generator().manual_seed(11)
    b, lq, cap = 3, 2, 40
    q = torch.randn(b, H, lq, D, generator=gen)
    kc = torch.randn(b, H, cap, D, generator=gen)
    vc = torch.randn(b, H, cap, D, generator=gen)
    lens = torch.tensor([40, 17, 2], dtype=torch.int32)
    o = port.decode(q, kc, vc, lens)
    for i, n in enumerate(lens.tolist()):
        # row r of sequence i sits at position n - lq + r: prefill of the whole sequence,
        # its last lq rows
        full_q = torch.cat([torch.zeros(1, H, n - lq, D), q[i:i + 1]], dim=2)
        want, _ = dense_reference(full_q, kc[i:i + 1, :, :n], vc[i:i + 1, :, :n], mask=sliding, score=rel_bias)
        assert torch.allclose(o[i:i + 1].double(), want[:, :, n - lq:], atol=2e-5, rtol=0), i


def _refused(score_mod=None, mask_mod=None) -> str:
    with pytest.raises(attnc.AttncError) as e:
        af.port(score_mod, mask_mod)
    assert e.value.code == "E0330"
    return str(e.value)


def test_what_cannot_be_ported_is_named():
    def python_if(b, h, q_idx, kv_idx):
        if q_idx > 3:
            return True
        return False

    assert "Python control flow" in _refused(mask_mod=python_if)
    assert "`sin`" in _refused(lambda s, b, h, q, kv: s + torch.sin(q))
    assert "on a float" in _refused(lambda s, b, h, q, kv: s + (s & 3))
    assert "rank 5" in _refused(lambda s, b, h, q, kv: s + torch.zeros(2, 2, 2, 2, 2)[b, h, q, kv, 0])
    assert "slicing" in _refused(lambda s, b, h, q, kv: s + BIAS[h, 1:3].sum())
    assert "float" in _refused(lambda s, b, h, q, kv: s + BIAS[h, s])
    assert "not a bool" in _refused(mask_mod=lambda b, h, q, kv: q - kv)
    assert "shape (4, 129)" in _refused(lambda s, b, h, q, kv: s + BIAS)
    assert "reduction" in _refused(lambda s, b, h, q, kv: torch.max(s))
    # (a value computed from real tensors alone, torch.max(BIAS), is a number fixed at
    # tracing, read from its one-element tensor: not an error)
    assert "complex" in _refused(lambda s, b, h, q, kv: s + torch.zeros(3, dtype=torch.complex64)[q % 3].real)
    assert "ZeroDivisionError" in _refused(lambda s, b, h, q, kv: s + 1 / 0)


def test_a_captured_tensor_on_another_device_is_named():
    q, k, v = _qkv()
    port = af.port(rel_bias)
    with pytest.raises(attnc.AttncError) as e:
        port(q.to("meta"), k.to("meta"), v.to("meta"))
    assert e.value.code == "E0314" and "(4, 129)" in str(e.value) and "`c0`" in str(e.value)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_ported_functions_on_cuda(dtype):
    """On the GPU: closures over CUDA tensors (a relative-bias table that requires grad,
    1-D document ids, a learnable soft-cap), forward against the float64 reference and
    FlexAttention on the same device, gradients against the reference's autograd."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, lq, lkv, d = 2, 4, 2, 301, 301, 64
    bias = torch.randn(hq, 2 * 512 + 1, generator=gen).to(dev).requires_grad_(True)
    doc = torch.sort(torch.randint(0, 4, (lkv,), generator=gen))[0].to(dev)
    cap = torch.tensor(8.0, device=dev, requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh((score + bias[h, q_idx - kv_idx + 512]) / cap)

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    q = torch.randn(b, hq, lq, d, generator=gen).to(dev, dtype).requires_grad_(True)
    k = torch.randn(b, hkv, lkv, d, generator=gen).to(dev, dtype).requires_grad_(True)
    v = torch.randn(b, hkv, lkv, d, generator=gen).to(dev, dtype).requires_grad_(True)
    o, lse = af.flex_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod, enable_gqa=True, return_lse=True)
    assert o.device == q.device and o.dtype == dtype
    wo = torch.randn(o.shape, generator=gen).to(dev)
    (o.float() * wo).sum().backward()
    got = [t.grad.double().cpu() for t in (q, k, v, bias, cap)]
    # the same functions in float64 on the CPU, on the same (16-bit rounded) inputs
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in (q, k, v, bias, cap)]
    bias64, cap64, doc64 = leaves[3], leaves[4], doc.cpu()

    def score64(score, b, h, q_idx, kv_idx):
        return cap64 * torch.tanh((score + bias64[h, q_idx - kv_idx + 512]) / cap64)

    def mask64(b, h, q_idx, kv_idx):
        return (doc64[q_idx] == doc64[kv_idx]) & (q_idx >= kv_idx)

    want, _ = dense_reference(*leaves[:3], mask=mask64, score=score64)
    atol, rtol = (0.03, 0.02) if dtype == torch.bfloat16 else (0.01, 0.01)
    err = (o.double().cpu() - want.detach()).abs()
    assert (err <= atol + rtol * want.detach().abs()).all(), err.max()
    flex = _flex_cuda(q.detach(), k.detach(), v.detach(), score_mod, mask_mod)
    if flex is not None:
        assert ((o.double() - flex.double()).abs() <= atol + rtol * flex.double().abs()).all()
    (want * wo.double().cpu()).sum().backward()
    for name, g, t in zip(("q", "k", "v", "bias", "cap"), got, leaves):
        r = t.grad
        tol = 0.05 * r.abs().max() + 0.02
        assert (g - r).abs().max() <= tol, f"d{name}: {(g - r).abs().max():.4g} > {tol:.4g}"


def _flex_cuda(q, k, v, score_mod, mask_mod):
    """FlexAttention's eager result on q's GPU, or None where it does not run."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bm = create_block_mask(mask_mod, q.shape[0], q.shape[1], q.shape[2], k.shape[2], device=q.device)
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True)
    except Exception:  # noqa: BLE001 (a missing or failing anchor is not what this test checks)
        return None


def test_a_port_under_torch_compile_fullgraph():
    """A port called inside ``torch.compile(fullgraph=True)`` is the attnc custom op with
    the captured tensors as its inputs: the same result as eager."""
    port = af.port(rel_bias, causal)
    q, k, v = _qkv(seed=9)
    eager = port(q, k, v)
    compiled = torch.compile(lambda q, k, v: port(q, k, v), fullgraph=True)
    assert torch.equal(compiled(q, k, v), eager)


class _Gen:
    """Random FlexAttention functions (Python source over torch), well-defined everywhere:
    divisors and log/sqrt arguments kept away from 0, floats kept bounded."""

    def pick(self, *xs):
        return self.r.choice(xs)

    def int_(self, d):
        r = self.r
        if d <= 0 or r.random() < 0.3:
            return self.pick("b", "h", "q_idx", "kv_idx", f"torch.tensor({r.randint(-9, 9)})", "IDS[kv_idx]",
                             "IDS[q_idx % S]")
        a, b = self.int_(d - 1), self.int_(d - 1)
        return self.pick(
            f"({a} + {b})", f"({a} - {b})", f"({a} * {r.randint(-3, 3)})", f"({a} // ({b} % 5 + 1))",
            f"({a} % ({b} % 4 + 2))", f"torch.abs({a})", f"({a}).clamp({r.randint(-20, 0)}, {r.randint(1, 20)})",
            f"torch.where({self.bool_(d - 1)}, {a}, {b})", f"torch.clamp({self.float_(d - 1)}, -50, 50).long()",
            f"({a} & {b})", f"({a} | 0x0F0F)", f"({a} ^ {b})", f"(~{a})", f"({a} >> ({b} % 5))",
            f"(({a} % 64) << ({b} % 4))",
        )

    def __init__(self, seed, scored=True):
        import random

        self.r = random.Random(seed)
        self.scored = scored

    def float_(self, d):
        r = self.r
        if d <= 0 or r.random() < 0.25:
            return self.pick("score" if self.scored else "TABLE[h, q_idx % 64]", f"torch.tensor({r.uniform(-3, 3):.3f})",
                             "TABLE[h, kv_idx % 64]")
        a, b, i = self.float_(d - 1), self.float_(d - 1), self.int_(d - 1)
        return self.pick(
            f"({a} + {b})", f"({a} - {i} * 0.05)", f"torch.clamp({a} * {b}, -20, 20)", f"torch.tanh({a})",
            f"torch.exp(-torch.abs({a}))", f"torch.sigmoid({a})", f"torch.log(torch.abs({a}) + 1)",
            f"torch.sqrt(torch.abs({a}) + 0.5)", f"({i} / ({i} % 3 + 7))", f"torch.minimum({a}, {b})",
            f"torch.maximum({a}, {i})", f"torch.where({self.bool_(d - 1)}, {a}, {b})", f"torch.floor({a})",
            f"({a}).clamp(-4, 4) ** 2", f"({i}).float() * 0.1", f"TABLE[h, {i} % 64] * {a}",
        )

    def bool_(self, d):
        r = self.r
        if d <= 0 or r.random() < 0.3:
            return self.pick("(q_idx >= kv_idx)", "(kv_idx < 20)", f"(IDS[kv_idx] == IDS[q_idx % S])")
        return self.pick(
            f"({self.int_(d - 1)} < {self.int_(d - 1)})", f"({self.float_(d - 1)} > {self.float_(d - 1)})",
            f"({self.int_(d - 1)} >= {self.float_(d - 1)})", f"({self.bool_(d - 1)} & {self.bool_(d - 1)})",
            f"({self.bool_(d - 1)} | {self.bool_(d - 1)})", f"~{self.bool_(d - 1)}",
            f"({self.int_(d - 1)} == {self.int_(d - 1)})",
        )


@pytest.mark.parametrize("seed", range(40))
def test_random_functions_port_with_torchs_semantics(seed):
    """Generated score/mask functions: the port against the same Python functions run by
    torch on broadcast index tensors (the float64 reference), so every type promotion,
    division and builtin is judged by torch itself."""
    src = (f"def score_mod(score, b, h, q_idx, kv_idx):\n    return {_Gen(seed).float_(4)}\n"
           f"def mask_mod(b, h, q_idx, kv_idx):\n    return {_Gen(seed + 1000, scored=False).bool_(3)}\n")
    table = torch.randn(H, 64, generator=torch.Generator().manual_seed(seed))
    ids = torch.randint(-3, 4, (S,), generator=torch.Generator().manual_seed(seed + 1))
    env = {"torch": torch, "TABLE": table, "IDS": ids, "S": S}
    exec(src, env)  # noqa: S102 (generated test code)
    score_mod, mask_mod = env["score_mod"], (env["mask_mod"] if seed % 3 else None)
    q, k, v = _qkv(seed=seed)
    port = af.port(score_mod, mask_mod)
    o, lse = port(q, k, v, return_lse=True)
    # (the reference needs the score at every element, in float64 for its softmax; the
    # score itself in float32 as FlexAttention computes it, so that a step such as
    # `.long()` of a sigmoid near 1 falls where it falls in float32; a function of the
    # indices alone broadcasts to fewer dims)
    score64 = lambda s, *i: torch.broadcast_to(score_mod(s.float(), *i), s.shape).double()  # noqa: E731
    want_o, want_lse = dense_reference(q, k, v, mask=mask_mod, score=score64)
    context = f"{src}\n{port.source}"
    assert torch.allclose(o.double(), want_o, atol=1e-4, rtol=1e-4), context
    assert torch.equal(torch.isfinite(lse), torch.isfinite(want_lse)), context
    fin = torch.isfinite(want_lse)
    assert torch.allclose(lse.double()[fin], want_lse[fin], atol=1e-4, rtol=1e-4), context


def _deinterleave(code):
    # attention-gym's `deinterleave_bits_32`, verbatim
    code = code & 0x55555555
    code = (code | (code >> 1)) & 0x33333333
    code = (code | (code >> 2)) & 0x0F0F0F0F
    code = (code | (code >> 4)) & 0x00FF00FF
    code = (code | (code >> 8)) & 0x0000FFFF
    return code


def morton_natten(b, h, q_idx, kv_idx):
    """attention-gym's Morton-order NATTEN (8 x 8 canvas, 3 x 3 kernel): integer bitwise
    operations and shifts ported as attnc's."""
    q_x, q_y = _deinterleave(q_idx), _deinterleave(q_idx >> 1)
    kv_x, kv_y = _deinterleave(kv_idx), _deinterleave(kv_idx >> 1)
    cx = q_x.clamp(1, 6)
    cy = q_y.clamp(1, 6)
    return ((cx - kv_x).abs() <= 1) & ((cy - kv_y).abs() <= 1)


def test_integer_bitwise_operations_port():
    port = af.port(mask_mod=morton_natten)
    assert "0x" not in port.source and "1431655765" in port.source and ">>" in port.source
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen) for _ in range(3))
    want, _ = dense_reference(q, k, v, mask=morton_natten)
    assert torch.allclose(port(q, k, v).double(), want, atol=2e-5, rtol=0)
