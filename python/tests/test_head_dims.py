"""Head dims the CUDA kernels do not take (96, 72, 80, 192 with Dv 128, ...) run
zero-padded to the next they take (``attnc._cuda_head_dim``): the padding's decision, and
its results, gradients and block masks against the float64 reference. On the CPU (which
takes any head dim) the padding is forced (``_pads_on``), so the package's padding path
runs here without a GPU; test_cuda.py runs it on the GPU."""

import math

import pytest
import torch

import attnc
from attnc import _ops
from conftest import EXAMPLES, HAS_CUDA, dense_reference, qkv
from test_autograd import check

causal = lambda b, h, qi, ki: qi >= ki  # noqa: E731


@pytest.fixture
def forced(monkeypatch):
    """The padding as on CUDA, for CPU tensors."""
    monkeypatch.setattr(attnc, "_pads_on", lambda q: True)


def _shape(d, dv=None, grad=False):
    q, k, v = qkv(1, 2, 1, 3, 5, d, dv, requires_grad=grad)
    return q, k, v


@pytest.mark.parametrize(
    "d,dv,grad,to",
    [
        (64, 64, True, None), (128, 128, True, None), (256, 256, True, None), (256, 128, True, None),
        (64, 128, True, None), (32, 32, True, None),
        (16, 16, False, None), (16, 16, True, 32),  # the backward takes 32 and up
        (96, 96, False, 128), (72, 72, True, 128), (80, 80, True, 128), (40, 40, True, 64),
        (160, 160, True, 256), (192, 128, True, 256), (128, 192, True, 256), (256, 64, True, 256),
        (8, 8, False, 16), (24, 24, True, 32), (300, 300, True, None),
    ],
)
def test_which_head_dims_pad(forced, d, dv, grad, to):
    q, k, v = _shape(d, dv, grad)
    assert attnc._cuda_head_dim(q, k, v) == to


def test_no_padding_off_cuda_or_on_bad_shapes(forced):
    q, k, v = _shape(96)
    assert attnc._cuda_head_dim(q, k[..., :64], v) is None  # D of q and k differ: the extension's error
    assert attnc._cuda_head_dim(q[0], k, v) is None
    assert attnc._cuda_head_dim(None, k, v) is None


def test_cpu_takes_any_head_dim_unpadded():
    q, k, v = _shape(96)
    assert attnc._cuda_head_dim(q, k, v) is None


def test_default_scale_is_the_extensions():
    # the padded call passes 1/sqrt(D) of the true D, in f32 as the extension computes it
    for d in (72, 80, 96, 160, 192, 1000):
        q, k, v = qkv(1, 1, 1, 1, 1, d)
        _, _, _, scale, _ = attnc._pad_head_dims(q, k, v, None, None)
        want = (torch.tensor(1.0, dtype=torch.float32) / torch.tensor(float(d), dtype=torch.float32).sqrt()).item()
        assert scale == want, d
    q, k, v = qkv(1, 1, 1, 1, 1, 96)
    assert attnc._pad_head_dims(q, k, v, 0.5, None)[3] == 0.5


@pytest.mark.parametrize("d,dv", [(96, 96), (72, 72), (192, 128), (40, 24)])
def test_padded_forward_and_gradients_match_reference(forced, monkeypatch, d, dv):
    seen = []
    real = _ops.call

    def spy(key, q, k, v, *args):
        seen.append((q.shape[-1], k.shape[-1], v.shape[-1]))
        return real(key, q, k, v, *args)

    monkeypatch.setattr(_ops, "call", spy)
    attn = attnc.compile(EXAMPLES / "causal.attn").attention()
    q, k, v = qkv(2, 4, 2, 19, 23, d, dv, seed=5)
    check(lambda q, k, v: attn(q, k, v, return_lse=True),
          lambda q, k, v: dense_reference(q, k, v, mask=causal), [q, k, v])
    o = attn(q, k, v)
    to = attnc._cuda_head_dim(*leafs(q, k, v))
    assert to is not None and to >= max(d, dv)
    assert seen and all(s == (to, to, to) for s in seen), seen
    assert o.shape == (2, 4, 19, dv)
    ref, _ = dense_reference(q, k, v, mask=causal)
    assert torch.allclose(o.double(), ref, atol=2e-4, rtol=2e-4)


def leafs(*xs):
    return [x.detach().requires_grad_(True) for x in xs]


def test_padded_equals_unpadded_bit_for_bit(forced, monkeypatch):
    # zero columns add exact zeros to every dot product: the padded CPU call gives the
    # unpadded one's o and lse, bit for bit (and its scale is the default's)
    attn = attnc.compile(EXAMPLES / "alibi_causal.attn").attention("alibi_causal")
    q, k, v = qkv(1, 4, 4, 33, 33, 96, seed=7)
    o, lse = attn(q, k, v, return_lse=True)
    monkeypatch.setattr(attnc, "_pads_on", lambda q: False)
    o2, lse2 = attn(q, k, v, return_lse=True)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)


def test_padded_gradients_equal_unpadded_with_a_capture_and_scale(forced, monkeypatch):
    # a learned relative-position table and an explicit scale: every gradient of the padded
    # call (q, k, v with their padding dropped, the table) equals the unpadded call's
    attn = attnc.compile(EXAMPLES / "relative_bias_table.attn").attention()
    h, l, d = 2, 17, 80
    q, k, v = qkv(1, h, h, l, l, d, seed=9)
    table = 0.1 * torch.randn(h, 129, generator=torch.Generator().manual_seed(3))

    def run():
        xs = leafs(q, k, v, table)
        o, lse = attn(*xs[:3], scale=0.3, rel_bias=xs[3], return_lse=True)
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(4))
        ((o * w).sum() + lse.sum()).backward()
        return [o, lse] + [x.grad for x in xs]

    padded = run()
    monkeypatch.setattr(attnc, "_pads_on", lambda q: False)
    plain = run()
    for i, (a, b) in enumerate(zip(padded, plain)):
        assert a.shape == b.shape, i
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (i, (a - b).abs().max().item())


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_pads_by_itself():
    q, k, v = qkv(1, 2, 2, 8, 8, 96, dtype=torch.bfloat16, device="cuda")
    assert attnc._cuda_head_dim(q, k, v) == 128
