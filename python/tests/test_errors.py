"""Every error path: an attnc.AttncError (or CompileError) with the attnc code and the
rendered diagnostic, never a crash."""

import pytest
import torch

import attnc
from conftest import EXAMPLES, qkv


def raises(code, fn, *args, **kwargs):
    with pytest.raises(attnc.AttncError) as info:
        fn(*args, **kwargs)
    e = info.value
    assert e.code == code, f"expected {code}, got {e.code}: {e}"
    assert isinstance(e.rendered, str) and e.rendered
    return e


def test_compile_error_has_code_spans_and_rendered_text():
    src = "mask m(b,h,q,kv) { q + 1.5 }"
    with pytest.raises(attnc.CompileError) as info:
        attnc.compile(src, name="bad.attn")
    e = info.value
    assert isinstance(e, attnc.AttncError)
    assert e.code == "E0201"
    assert e.spans == [(19, 26)] and src[19:26] == "q + 1.5"
    assert "error[E0201]" in e.rendered and "bad.attn:1:20" in e.rendered
    assert "hint: convert the left operand" in e.rendered
    d = e.diagnostics[0]
    assert (d["code"], d["line"], d["column"], d["span"]) == ("E0201", 1, 20, (19, 26))
    assert str(e) == e.rendered


def test_compile_error_several_diagnostics():
    with pytest.raises(attnc.CompileError) as info:
        attnc.compile("mask a(b,h,q,kv) { windw > 1 }\nscore s(s,b,h,q,kv) { s + kv }\n")
    codes = [d["code"] for d in info.value.diagnostics]
    assert codes[0] == info.value.code and len(codes) >= 2 and "E0101" in codes


@pytest.mark.parametrize("path", sorted((EXAMPLES.parent / "tests" / "bad").glob("*.attn"))[:12], ids=lambda p: p.name)
def test_bad_inputs_of_the_rust_suite(path):
    with pytest.raises(attnc.CompileError) as info:
        attnc.compile(path)
    assert info.value.code.startswith("E0") and info.value.spans


def test_missing_file():
    raises("E0317", attnc.compile, EXAMPLES / "no_such_file.attn")
    raises("E0317", attnc.compile, "no_such_file.attn")


def test_unknown_and_ambiguous_attention():
    mod = attnc.compile(EXAMPLES / "softcap.attn")
    e = raises("E0310", mod.attention, "softcapp")
    assert "softcap_causal" in str(e)
    e = raises("E0310", mod.attention)
    assert "choose one" in str(e)


@pytest.fixture(scope="module")
def doc_alibi():
    return attnc.compile(EXAMPLES / "document_alibi.attn").attention()


def inputs(lq=32, b=1, h=16):
    q, k, v = qkv(b, h, h, lq, lq, 16)
    doc = torch.zeros(b, lq, dtype=torch.int32)
    return q, k, v, doc


def test_missing_capture(doc_alibi):
    q, k, v, doc = inputs()
    e = raises("E0303", doc_alibi, q, k, v, window=4)
    assert "missing captured tensor `doc`" in e.rendered and "document_alibi.attn:5:1" in e.rendered
    src = (EXAMPLES / "document_alibi.attn").read_text()
    (start, end), = e.spans
    assert src[start:end].startswith("tensor doc")


def test_missing_param(doc_alibi):
    q, k, v, doc = inputs()
    e = raises("E0301", doc_alibi, q, k, v, doc=doc)
    assert "window" in e.rendered


def test_wrong_param_type(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0302", doc_alibi, q, k, v, doc=doc, window=2.5)
    raises("E0302", doc_alibi, q, k, v, doc=doc, window=True)


def test_bad_param_value(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0315", doc_alibi, q, k, v, doc=doc, window="4")
    raises("E0315", doc_alibi, q, k, v, doc=doc, window=2**40)


def test_capture_wrong_dtype(doc_alibi):
    q, k, v, doc = inputs()
    e = raises("E0304", doc_alibi, q, k, v, doc=doc.long(), window=4)
    assert "wrong dtype for tensor `doc`" in e.rendered
    raises("E0313", doc_alibi, q, k, v, doc=doc.to(torch.uint8), window=4)


def test_capture_wrong_shape(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0305", doc_alibi, q, k, v, doc=doc[:, :10], window=4)
    raises("E0305", doc_alibi, q, k, v, doc=doc[0], window=4)


def test_unknown_capture(doc_alibi):
    q, k, v, doc = inputs()
    e = raises("E0311", doc_alibi, q, k, v, doc=doc, window=4, windw=3)
    assert "windw" in str(e)


def test_qkv_shapes(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0312", doc_alibi, q[0], k, v, doc=doc, window=4)  # rank 3
    raises("E0312", doc_alibi, q, k[:, :, :, :8], v, doc=doc, window=4)  # D differs
    raises("E0312", doc_alibi, q, k, v[:, :, :5], doc=doc, window=4)  # Lkv differs
    raises("E0312", doc_alibi, q, k[:, :5], v[:, :5], doc=doc, window=4)  # 16 % 5 heads
    q2, k2, v2, _ = inputs(b=2)
    raises("E0312", doc_alibi, q2, k, v, doc=doc, window=4)  # batch differs


def test_qkv_dtypes(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0313", doc_alibi, q.half(), k.half(), v.half(), doc=doc, window=4)
    raises("E0313", doc_alibi, q.double(), k.double(), v.double(), doc=doc, window=4)
    raises("E0313", doc_alibi, q, k.half(), v, doc=doc, window=4)
    raises("E0313", doc_alibi, q.to(torch.int32), k, v, doc=doc, window=4)


def test_devices(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0314", doc_alibi, q, k.to("meta"), v, doc=doc, window=4)
    raises("E0314", doc_alibi, q, k, v, doc=doc.to("meta"), window=4)
    # all on the meta device: shapes only (the fake implementation), no error
    o, lse = doc_alibi(q.to("meta"), k.to("meta"), v.to("meta"), doc=doc.to("meta"), window=4, return_lse=True)
    assert o.device.type == "meta" and o.shape == q.shape and lse.shape == q.shape[:3]


def test_not_a_tensor(doc_alibi):
    q, k, v, doc = inputs()
    e = raises("E0313", doc_alibi, q, k.numpy(), v, doc=doc, window=4)
    assert "`k` must be a torch.Tensor, got ndarray" in str(e)


def test_checked_reads_are_clamped_not_out_of_bounds():
    # an index beyond the table is clamped by the kernel (unchecked mode): no crash
    attn = attnc.compile("tensor t: f32[4];\nscore s(s, b, h, q, kv) { s + t[q] }\nattention a { score = s; }").attention()
    q, k, v = qkv(1, 1, 1, 9, 9, 8)
    o = attn(q, k, v, t=torch.ones(4))
    assert torch.isfinite(o).all()


def test_errors_leave_the_attention_usable(doc_alibi):
    q, k, v, doc = inputs()
    raises("E0303", doc_alibi, q, k, v, window=4)
    o = doc_alibi(q, k, v, doc=doc, window=4)
    assert torch.isfinite(o).all()


def test_block_mask_takes_cuda_tensors_and_a_mask_over_captures():
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v = qkv(1, 2, 2, 16, 16, 16)
    doc = torch.zeros(1, 16, dtype=torch.int32)
    e = raises("E0313", attn.block_mask, q, k, v, doc=doc)
    assert "CUDA" in str(e)


def test_block_mask_handle_reads_its_tables_once_and_refuses_bad_ones():
    """``_attnc.block_mask_handle`` (what ``attn.block_mask`` keeps: its tables read and
    checked once, not at every call): a malformed tuple or tables of the wrong dtype or rank
    are errors naming them, never a crash; a handle is taken where the tables' tuple is, and
    on the CPU refused like it (block masks are for CUDA tensors)."""
    from attnc import _attnc

    i32 = lambda n: torch.zeros(n, dtype=torch.int32)  # noqa: E731
    shape = (1, 2, 2, 16, 16, 16, 16)
    good = (shape, (i32(2), i32(3), (0, 0), (64, 64)), None, [("doc", [1, 16])], [], None, None)
    for bad in ((), ("x",), (shape, ()), (shape, (i32(2), i32(3)), None, [], [], None, None),
                (shape, (i32(2), i32(3), (0, 0), (64, 64)), None, [], [], None),
                (shape, (i32(2), i32(3), (0, 0), (64, 64)), None, [], [], (128,), None)):
        e = raises("E0312", _attnc.block_mask_handle, bad)
        assert "block mask's tables" in str(e)
    e = raises("E0313", _attnc.block_mask_handle, (shape, (i32(2).long(), i32(3), (0, 0), (64, 64)), None, [], [], None, None))
    assert "block mask row starts" in str(e)
    e = raises("E0312", _attnc.block_mask_handle, (shape, (i32(2).reshape(1, 2), i32(3), (0, 0), (64, 64)), None, [], [], None, None))
    assert "one-dimensional" in str(e)
    e = raises("E0313", _attnc.block_mask_handle, (shape, (i32(2), i32(3), (0, 0), (64, 64)), None, [], [], (128, i32(4).float()), None))
    assert "block mask document tiles" in str(e)
    e = raises("E0313", _attnc.block_mask_handle, (*good[:6], ((64, 128), i32(4), i32(4).long())))
    assert "block mask backward document ranges" in str(e)
    assert _attnc.block_mask_handle((*good[:5], (128, i32(4)), ((64, 128), i32(4), i32(8)))) is not None
    handle = _attnc.block_mask_handle(good)
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v = qkv(1, 2, 2, 16, 16, 16)
    o, lse = torch.empty_like(q), torch.empty(1, 2, 16)
    for mask in (handle, good):
        e = raises("E0314", attn._inner.forward, q, k, v, o, lse, None, [("doc", torch.zeros(1, 16, dtype=torch.int32))],
                   [], 0, 1, mask)
        assert "block masks are for CUDA tensors" in str(e)


def test_cuda_backward_entries_refuse_host_tensors():
    """The extension's zero-copy CUDA backward (what autograd calls on CUDA tensors) and
    the query of its fused-dQ workspace refuse CPU tensors (E0314, naming the entry) and
    CUDA-less dtypes, before touching any pointer."""
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    inner = attn._inner
    q, k, v = (x.bfloat16() for x in qkv(1, 2, 2, 16, 16, 128))
    e = raises("E0314", inner.backward_workspace, q, k, v, None)
    assert "the CUDA backward takes CUDA tensors" in str(e) and "cpu" in str(e)
    o, lse, do = torch.empty_like(q), torch.empty(1, 2, 16), torch.empty_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scratch = torch.empty(2, 32)
    args = (q, k, v, o, lse, do, None, dq, dk, dv, scratch, None, [], [], [], None, 0)
    e = raises("E0314", inner.backward_cuda, *args)
    assert "backward_cuda takes CUDA tensors" in str(e)
    e = raises("E0314", inner.backward_cuda, *args, None, (torch.empty(8), torch.empty(1, dtype=torch.int32)))
    assert "backward_cuda" in str(e)


def test_arguments_that_are_not_tensors_are_named():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = qkv(1, 2, 2, 9, 9, 16)
    for args, name in [((None, k, v), "q"), ((q, [1.0], v), "k"), ((q, k, v.numpy()), "v")]:
        e = raises("E0313", attn, *args)
        assert f"`{name}` must be a torch.Tensor" in str(e)
    # the extension's own reads (session 20: dtype by identity, the strides only when not
    # contiguous) name an object with a dtype and a shape that is not a tensor, too
    o, lse = torch.empty_like(q), torch.empty(1, 2, 9)
    e = raises("E0313", attn._inner.forward, q, k, v.numpy(), o, lse, None, [], [], 0, 1)
    assert "`v` must be a torch.Tensor, got ndarray" in str(e), str(e)
    e = raises("E0313", attn._inner.forward, q, k, v, o.double(), lse, None, [], [], 0, 1)
    assert "`o` has dtype torch.float64" in str(e), str(e)
    e = raises("E0312", attn._inner.forward, q, k, v, torch.empty(1, 2, 9, 32)[..., :16], lse, None, [], [], 0, 1)
    assert "`o` is not contiguous (strides [576, 288, 32, 1])" in str(e), str(e)
    cache = torch.zeros(1, 2, 16, 16)
    e = raises("E0313", attn.decode, q[:, :, :1], cache, cache, [3])
    assert "`seq_lens` must be a torch.Tensor, got list" in str(e)
    e = raises("E0320", attn.decode, q[:, :, :1], cache, cache, torch.tensor([3.0]))
    assert "`seq_lens` has dtype torch.float32" in str(e)


def test_a_capture_of_the_wrong_kind_is_named(doc_alibi):
    """A tensor for a declared param, a number for a declared tensor: named as such, not
    reported as missing."""
    q, k, v, doc = inputs()
    e = raises("E0302", doc_alibi, q, k, v, doc=doc, window=torch.tensor(4))
    assert "param `window` is declared `i32` but was given a tensor" in str(e)
    e = raises("E0304", doc_alibi, q, k, v, doc=3, window=4)
    assert "tensor `doc` is declared i32[B, KV] but was given int" in str(e)


def test_a_learnable_tensor_for_an_f32_param_says_how_to_learn_it():
    """An f32 param given a tensor that requires grad (a learnable soft-cap): the error
    says how to declare it so that it gets a gradient, and that way works."""
    src = "param cap: f32;\nscore sc(s, b, h, q, kv) { cap * tanh(s / cap) }\nattention a { score = sc; }"
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    cap = torch.full((1,), 20.0, requires_grad=True)
    e = raises("E0302", attnc.compile(src).attention(), q, k, v, cap=cap)
    assert "declare `tensor cap: f32[1];` and read `cap[0]`" in str(e)
    learned = attnc.compile(src.replace("param cap: f32;", "tensor cap: f32[1];").replace("cap", "cap[0]")
                            .replace("tensor cap[0]: f32[1];", "tensor cap: f32[1];")).attention()
    learned(q, k, v, cap=cap).sum().backward()
    assert cap.grad is not None and cap.grad.shape == (1,) and torch.isfinite(cap.grad).all()


def test_int64_seq_lens_beyond_int32_are_refused_not_wrapped():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q = torch.randn(2, 2, 1, 16)
    cache = torch.randn(2, 2, 16, 16)
    for bad in (2**40, 2**32 + 3):
        e = raises("E0322", attn.decode, q, cache, cache, torch.tensor([3, bad]))
        assert "seq_lens[1]" in str(e)


def test_empty_lengths_forward_and_backward():
    """Lkv = 0: every row fully masked (o = 0, lse = -inf), zero gradients; Lq = 0: empty
    outputs. (The CPU backward divided by zero at Lkv = 0 before session 15.)"""
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    for lq, lkv in [(9, 0), (0, 9), (0, 0)]:
        q, k, v = qkv(1, 2, 2, lq, lkv, 16, requires_grad=True)
        o, lse = attn(q, k, v, return_lse=True)
        assert o.shape == (1, 2, lq, 16) and lse.shape == (1, 2, lq)
        assert torch.all(o == 0) and torch.all(torch.isneginf(lse))
        o.sum().backward()
        for x in (q, k, v):
            assert x.grad.shape == x.shape and torch.all(x.grad == 0)


def test_a_scale_that_is_not_a_number_is_named():
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = qkv(1, 2, 2, 9, 9, 16)
    assert "`scale` must be a number or None, got str" in str(raises("E0316", attn, q, k, v, scale="x"))
    cache = torch.zeros(1, 2, 16, 16)
    seq_lens = torch.tensor([3], dtype=torch.int32)
    assert "`scale`" in str(raises("E0316", attn.decode, q[:, :, :1], cache, cache, seq_lens, scale=[1.0]))
    # numbers that are not floats still work, and give the float's result
    assert torch.equal(attn(q, k, v, scale=1), attn(q, k, v, scale=1.0))
    assert torch.equal(attn(q, k, v, scale=torch.tensor(0.5)), attn(q, k, v, scale=0.5))


def test_an_attention_name_or_block_mask_of_the_wrong_type_is_named():
    """`mod.attention(3)` was PyO3's bare TypeError, `attn(..., block_mask="x")` an
    AttributeError from inside the package."""
    mod = attnc.compile(EXAMPLES / "causal.attn")
    e = raises("E0310", mod.attention, 3)
    assert "must be a str or None, got int" in str(e) and "causal_attention" in str(e)
    q, k, v = qkv(1, 2, 2, 9, 9, 16)
    e = raises("E0318", mod.attention(), q, k, v, block_mask="x")
    assert "`block_mask` must be an attnc.BlockMask" in str(e) and "got str" in str(e)
