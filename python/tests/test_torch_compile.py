"""torch.compile(fullgraph=True) traces modules that call attnc (the custom op and its
fake implementation): no graph break, the same outputs as eager."""

import pytest
import torch

import attnc
from conftest import EXAMPLES, qkv


class Block(torch.nn.Module):
    """Projections around a document + ALiBi + sliding-window attnc attention."""

    def __init__(self, dim=32, heads=16, kv_heads=4):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // 4
        self.wq = torch.nn.Linear(dim, heads * self.hd)
        self.wkv = torch.nn.Linear(dim, 2 * kv_heads * self.hd)
        self.wo = torch.nn.Linear(heads * self.hd, dim)
        self.attn = attnc.compile(EXAMPLES / "document_alibi.attn").attention()

    def forward(self, x, doc, window: int):
        b, l, _ = x.shape
        q = self.wq(x).view(b, l, self.heads, self.hd).transpose(1, 2)
        k, v = self.wkv(x).view(b, l, 2, self.kv_heads, self.hd).unbind(2)
        o, lse = self.attn(q, k.transpose(1, 2), v.transpose(1, 2), doc=doc, window=window, return_lse=True)
        return self.wo(o.transpose(1, 2).reshape(b, l, -1)), lse


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fullgraph_compile_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = Block()
    x = torch.randn(2, 40, 32)
    doc = torch.sort(torch.randint(0, 3, (2, 40), dtype=torch.int32), dim=1).values
    with torch.no_grad():
        ref, ref_lse = m(x, doc, 8)
        compiled = torch.compile(m, fullgraph=True, backend=backend)
        out, lse = compiled(x, doc, 8)
        # another param value and other documents: the compiled graph runs attnc again
        out2, _ = compiled(x, doc.flip(1).contiguous(), 5)
        ref2, _ = m(x, doc.flip(1).contiguous(), 5)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)
    assert torch.allclose(out2, ref2, atol=1e-5)


def test_no_graph_break():
    torch._dynamo.reset()
    m = Block()
    x = torch.randn(1, 24, 32)
    doc = torch.zeros(1, 24, dtype=torch.int32)
    explanation = torch._dynamo.explain(m)(x, doc, 4)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # the graph calls the custom op
    code = "\n".join(g.code for g in explanation.graphs)
    assert "attnc.forward" in code


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    with FakeTensorMode():
        q, k, v = torch.empty(2, 8, 33, 16), torch.empty(2, 2, 50, 16), torch.empty(2, 2, 50, 24)
        o, lse = attn(q, k, v, return_lse=True)
        assert o.shape == (2, 8, 33, 24) and lse.shape == (2, 8, 33) and lse.dtype == torch.float32


def test_opcheck():
    # torch's own consistency checks of a custom op (schema, fake vs real, dispatch)
    attn = attnc.compile(EXAMPLES / "sliding_window.attn").attention()
    q, k, v = qkv(1, 4, 2, 20, 20, 8)
    from attnc import _ops

    args = (q, k, v, attn._key, None, "", [], "window", [5], True)
    torch.library.opcheck(_ops.forward, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
