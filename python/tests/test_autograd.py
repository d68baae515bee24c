"""Gradients through attnc's backward (torch autograd via register_autograd): dq, dk, dv
and the gradients of learned captures (a bias, a relative-position table) against the
dense float64 torch reference differentiated by torch autograd; GQA, odd lengths,
fully masked rows, a loss that reads lse, torch.compile(fullgraph=True) of a training
step."""

import pytest
import torch

import attnc
from conftest import EXAMPLES, dense_reference, qkv

TOL = dict(atol=2e-4, rtol=2e-4)


def grads(fn, inputs):
    """(outputs, gradients of sum(o * w_o) + sum(lse' * w_l)) for fixed random weights."""
    o, lse = fn(*inputs)
    g = torch.Generator().manual_seed(123)
    wo = torch.randn(o.shape, generator=g, dtype=torch.float64)
    wl = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    lse_f = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    loss = (o.double() * wo).sum() + (lse_f.double() * wl).sum()
    return o, lse, torch.autograd.grad(loss, [x for x in inputs if x.requires_grad])


def leaf(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def check(attnc_fn, ref_fn, inputs):
    a = leaf(*inputs)
    r = [x.detach().double().requires_grad_(x.requires_grad) for x in a]
    _, _, ga = grads(attnc_fn, a)
    _, _, gr = grads(ref_fn, r)
    assert len(ga) == len(gr)
    for i, (x, y) in enumerate(zip(ga, gr)):
        assert x.shape == y.shape
        err = (x.double() - y).abs().max().item()
        assert torch.allclose(x.double(), y, **TOL), f"gradient {i} differs by {err}"


@pytest.mark.parametrize("shape", [(2, 4, 4, 37, 37, 16), (1, 8, 2, 50, 23, 32), (2, 2, 1, 1, 65, 8)])
def test_causal_and_dense(shape):
    b, hq, hkv, lq, lkv, d = shape
    q, k, v = qkv(b, hq, hkv, lq, lkv, d, seed=1)
    for file, mask in (("dense.attn", None), ("causal.attn", lambda b, h, qi, ki: qi >= ki)):
        attn = attnc.compile(EXAMPLES / file).attention()
        check(lambda q, k, v: attn(q, k, v, return_lse=True), lambda q, k, v: dense_reference(q, k, v, mask=mask), [q, k, v])


def test_document_alibi_with_int_capture():
    attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()
    b, h, l, d = 2, 16, 45, 16
    q, k, v = qkv(b, h, h, l, l, d, seed=2)
    doc = torch.sort(torch.randint(0, 3, (b, l), dtype=torch.int32), dim=1).values
    slope = lambda h: torch.exp2(-8.0 * (h + 1).double() / 16)  # noqa: E731
    ref = lambda q, k, v: dense_reference(  # noqa: E731
        q, k, v,
        mask=lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < 12) & (doc[b_, qi] == doc[b_, ki]),
        score=lambda s, b_, h_, qi, ki: s + slope(h_) * (ki - qi).double(),
    )
    check(lambda q, k, v: attn(q, k, v, doc=doc, window=12, return_lse=True), ref, [q, k, v])


def test_learned_bias_gradient():
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, lq, lkv, d = 2, 4, 19, 27, 8
    q, k, v = qkv(b, h, h, lq, lkv, d, seed=3)
    bias = torch.randn(b, h, lq, lkv)
    check(
        lambda q, k, v, bias: attn(q, k, v, bias=bias, return_lse=True),
        lambda q, k, v, bias: dense_reference(q, k, v, score=lambda s, b_, h_, qi, ki: s + bias[b_, h_, qi, ki]),
        [q, k, v, bias],
    )


def test_relative_bias_table_gradient():
    attn = attnc.compile(EXAMPLES / "relative_bias_table.attn").attention()
    b, h, l, d = 1, 4, 70, 16
    q, k, v = qkv(b, h, h, l, l, d, seed=4)
    table = torch.randn(h, 129)
    check(
        lambda q, k, v, t: attn(q, k, v, rel_bias=t, return_lse=True),
        lambda q, k, v, t: dense_reference(q, k, v, score=lambda s, b_, h_, qi, ki: s + t[h_, (qi - ki).clamp(-64, 64) + 64]),
        [q, k, v, table],
    )


def test_capture_without_requires_grad_gets_none():
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    q, k, v = leaf(*qkv(1, 2, 2, 10, 10, 8))
    bias = torch.randn(1, 2, 10, 10)
    attn(q, k, v, bias=bias).sum().backward()
    assert q.grad is not None and bias.grad is None


def test_fully_masked_rows_have_zero_gradient():
    attn = attnc.compile("param start: i32;\nmask m(b, h, q, kv) { q >= start && kv <= q }\nattention a { mask = m; }").attention()
    q, k, v = leaf(*qkv(1, 2, 2, 30, 30, 8))
    o = attn(q, k, v, start=8)
    o.sum().backward()
    assert torch.all(q.grad[:, :, :8] == 0)
    check(
        lambda q, k, v: attn(q, k, v, start=8, return_lse=True),
        lambda q, k, v: dense_reference(q, k, v, mask=lambda b, h, qi, ki: (qi >= 8) & (ki <= qi)),
        [q, k, v],
    )


def test_compiled_training_step():
    torch._dynamo.reset()
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    lin = torch.nn.Linear(16, 48)

    def step(x):
        q, k, v = lin(x).view(2, 20, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return attn(q, k, v).square().mean()

    x = torch.randn(2, 20, 16)
    loss = step(x)
    loss.backward()
    ref = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss2 = compiled(x)
    loss2.backward()
    assert torch.allclose(loss, loss2)
    for a, b in zip(ref, (p.grad for p in lin.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


def test_integer_capture_cannot_require_grad():
    # int tensors cannot require grad in torch; a float capture of an i32 declaration is E0304
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    q, k, v = leaf(*qkv(1, 2, 2, 10, 10, 8))
    doc = torch.zeros(1, 10, requires_grad=True)
    with pytest.raises(attnc.AttncError) as e:
        attn(q, k, v, doc=doc)
    assert e.value.code == "E0304"


def test_reference_grad_matches_cpu_autograd():
    """The f64 oracle's backward (``Attention.reference_grad``, what the CUDA tests
    compare against) agrees with the CPU backend's autograd, capture gradients included."""
    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, l, d = 1, 2, 21, 16
    q, k, v = qkv(b, h, h, l, l, d, seed=4)
    bias = 0.5 * torch.randn(b, h, l, l, generator=torch.Generator().manual_seed(5))
    xs = leaf(q, k, v, bias)
    o, lse = attn(*xs[:3], bias=xs[3], return_lse=True)
    g = torch.Generator().manual_seed(6)
    wo, wl = torch.randn(o.shape, generator=g), torch.randn(lse.shape, generator=g)
    ((o * wo).sum() + (lse * wl).sum()).backward()
    dq, dk, dv, caps = attn.reference_grad(q, k, v, wo, wl, bias=bias)
    for x, r in zip(xs, (dq, dk, dv, caps["bias"])):
        assert torch.allclose(x.grad, r, **TOL), (x.grad - r).abs().max()


def test_fixed_point_words_convert_like_the_runtime():
    """The CUDA backward's capture gradients arrive as fixed-point words `[hi, lo, flags]`
    (Σhi 2^-32 + Σlo 2^-60, lo unsigned; flags: +inf, -inf, NaN); the package converts
    them on the device with torch (`_ops._fixed_to_float`)."""
    from attnc._ops import _fixed_to_float

    def enc(x):
        total = round(x * 2**60)
        hi = total >> 28
        return [hi, total - (hi << 28), 0]

    vals = [1.5, -2.25, 3e-6, -7.0, 0.0, 12345.678]
    w = torch.tensor([enc(v) for v in vals] + [[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, -1, 0]], dtype=torch.int64)
    got = _fixed_to_float(w, torch.empty(10, dtype=torch.float32))
    want = torch.tensor(vals + [float("inf"), float("-inf"), float("nan"), (2**64 - 1) * 2.0**-60])
    assert torch.equal(got[:6], want[:6]) and torch.equal(got[6:8], want[6:8])
    assert torch.isnan(got[8]) and got[9] == want[9]
    assert _fixed_to_float(w[:1], torch.empty(1, 1, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_eager_path_matches_the_custom_op():
    """Plain tensors outside tracing skip the custom op's dispatch (``_ops._eager``):
    outputs and gradients (q, k, v and a learned bias) are bit-identical to calling
    ``torch.ops.attnc.forward`` and differentiating through its registered autograd;
    a meta tensor, a torch function mode or torch.compile take the op."""
    from attnc import _ops

    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, l, d = 1, 2, 19, 16
    q, k, v = qkv(b, h, h, l, l, d, seed=7)
    bias = 0.5 * torch.randn(b, h, l, l, generator=torch.Generator().manual_seed(8))
    assert _ops._eager(q, k, v, [bias])
    assert not _ops._eager(q.to("meta"), k, v, [bias])
    class Passthrough(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    outside = attn(q, k, v, bias=bias)
    with Passthrough():
        assert not _ops._eager(q, k, v, [bias])
        assert torch.equal(attn(q, k, v, bias=bias), outside)  # through the op
    runs = []
    for use_op in (False, True):
        xs = leaf(q, k, v, bias)
        if use_op:
            o, lse = torch.ops.attnc.forward(*xs[:3], attn._key, None, "bias", [xs[3]], "", [], True)
        else:
            o, lse = attn(*xs[:3], bias=xs[3], return_lse=True)
        g = torch.Generator().manual_seed(9)
        ((o * torch.randn(o.shape, generator=g)).sum() + (lse * torch.randn(lse.shape, generator=g)).sum()).backward()
        runs.append([o, lse] + [x.grad for x in xs])
    for a, r in zip(*runs):
        assert torch.equal(a, r)
    # no gradient wanted: no autograd node
    with torch.no_grad():
        assert attn(*leaf(q, k, v), bias=bias).grad_fn is None


def test_deterministic_keyword_reaches_the_backward(monkeypatch):
    """``attn(..., deterministic=False)`` is accepted and carried to the backward, on the
    eager autograd path and through ``torch.ops.attnc.forward``'s autograd (the custom op's
    ``deterministic`` argument); the default is True. On the CPU (deterministic either way)
    the gradients are bit-identical to the default's. A value that is not a bool is an
    AttncError E0319 naming ``deterministic``, raised before anything runs."""
    from attnc import _ops

    attn = attnc.compile(EXAMPLES / "learned_bias.attn").attention()
    b, h, l, d = 1, 2, 21, 16
    q, k, v = qkv(b, h, h, l, l, d, seed=11)
    bias = 0.5 * torch.randn(b, h, l, l, generator=torch.Generator().manual_seed(12))
    seen = []
    real = _ops._backward_impl

    def spy(*args):
        # (inner, q, k, v, o, lse, do, dlse, scale, names, tensors, param_names, params,
        # tensor_grads, mask, deterministic)
        seen.append(args[15] if len(args) > 15 else True)
        return real(*args)

    monkeypatch.setattr(_ops, "_backward_impl", spy)
    runs = []
    for how in ("default", "eager_true", "eager_false", "op_true", "op_false"):
        xs = leaf(q, k, v, bias)
        if how == "default":
            o = attn(*xs[:3], bias=xs[3])
        elif how.startswith("eager"):
            o = attn(*xs[:3], bias=xs[3], deterministic=how == "eager_true")
        elif how == "op_true":
            o, _ = torch.ops.attnc.forward(*xs[:3], attn._key, None, "bias", [xs[3]], "", [], True)
        else:
            o, _ = torch.ops.attnc.forward(*xs[:3], attn._key, None, "bias", [xs[3]], "", [], False)
        o.backward(torch.randn(o.shape, generator=torch.Generator().manual_seed(13)))
        runs.append([x.grad for x in xs])
    assert seen == [True, True, False, True, False]
    for run in runs[1:]:
        for a, r in zip(runs[0], run):
            assert torch.equal(a, r)
    for bad in ("no", 0, 1, None, 0.0):
        with pytest.raises(attnc.AttncError) as e:
            attn(q, k, v, bias=bias, deterministic=bad)
        assert e.value.code == "E0319" and "`deterministic`" in str(e.value), str(e.value)
    assert seen == [True, True, False, True, False], "nothing ran for the bad values"
