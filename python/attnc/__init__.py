"""attnc: a compiler for attention variants, callable from PyTorch.

    import attnc, torch
    mod = attnc.compile("examples/document_alibi.attn")   # a path, or source text
    attn = mod.attention("document_alibi")                # or mod.attention() for the only one
    o = attn(q, k, v, doc=doc_ids, window=1024)           # captures and params as keywords
    o, lse = attn(q, k, v, doc=doc_ids, window=1024, return_lse=True, scale=None)

q, k, v are torch tensors [B, H, L, D] (k/v may have fewer heads: GQA): float32 on the
CPU, bfloat16/float16 on CUDA. Kernels are compiled on first use per shape, dtype and
device and kept; other param values or captured tensors reuse them. Calls go through the
torch custom op ``torch.ops.attnc.forward`` (``torch.compile(fullgraph=True)`` traces
it). Errors are ``attnc.AttncError`` (``.code``, ``.rendered``, ``.spans``,
``.diagnostics``); compile errors are its subclass ``attnc.CompileError``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Union

from . import _attnc
from ._attnc import AttncError, CompileError

__all__ = ["compile", "Module", "Attention", "AttncError", "CompileError"]
__version__ = _attnc.__version__


def _error(code: str, message: str) -> AttncError:
    e = AttncError(message)
    e.code, e.rendered, e.spans, e.diagnostics = code, message, [], []
    return e


def _looks_like_path(s: str) -> bool:
    return "\n" not in s and "{" not in s and (s.endswith(".attn") or os.path.isfile(s))


def compile(path_or_source: Union[str, os.PathLike], *, name: Optional[str] = None) -> "Module":
    """Compiles an ``.attn`` file (a path) or source text. ``name`` is the file name used
    in diagnostics for source text (default ``<source>``). Raises ``CompileError``."""
    if isinstance(path_or_source, os.PathLike) or (
        isinstance(path_or_source, str) and _looks_like_path(path_or_source)
    ):
        path = os.fspath(path_or_source)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise _error("E0317", f"{path}: {e.strerror or e}") from None
        return Module(_attnc.compile(text, name or path), text)
    if not isinstance(path_or_source, str):
        raise _error("E0317", f"attnc.compile takes a path or source text, got {type(path_or_source).__name__}")
    return Module(_attnc.compile(path_or_source, name or "<source>"), path_or_source)


class Module:
    """A compiled source: its attentions by name."""

    def __init__(self, inner: "_attnc.Module", text: str):
        self._inner = inner
        self._text = text

    @property
    def names(self) -> list:
        return list(self._inner.names)

    def attention(self, name: Optional[str] = None) -> "Attention":
        """The attention ``name``, or the only one of the module."""
        return Attention(self._inner.attention(name), self._text)

    def __repr__(self) -> str:
        return f"attnc.Module({self._inner.source_name!r}, attentions={self.names})"


class Attention:
    """One attention variant, callable on torch tensors:
    ``attn(q, k, v, *, return_lse=False, scale=None, **captures_and_params)``."""

    def __init__(self, inner: "_attnc.Attention", text: str):
        from . import _ops

        self.name = inner.name
        # captured tensors (name, dtype, dims) and params (name, type), as declared
        self.tensors = list(inner.tensors)
        self.params = list(inner.params)
        # the custom op finds the attention by this key: the same source and name give the
        # same key in every process (compiled graphs may be cached across processes)
        digest = hashlib.sha256(text.encode() + b"\0" + self.name.encode()).hexdigest()[:24]
        self._key = f"{self.name}:{digest}"
        self._inner = _ops.register(self._key, inner)

    def __call__(self, q, k, v, *, return_lse: bool = False, scale: Optional[float] = None, **captures):
        from . import _ops

        o, lse = _ops.call(self._key, q, k, v, scale, captures)
        return (o, lse) if return_lse else o

    def decode(self, q, k_cache, v_cache, seq_lens, page_table=None, *, return_lse: bool = False,
               scale: Optional[float] = None, **captures):
        """Attention of a few new query rows against a KV cache (decoding, chunked prefill).

        ``q`` ``[B, Hq, Lq, D]``; a contiguous cache ``k_cache [B, Hkv, Lkv_max, D]``,
        ``v_cache [B, Hkv, Lkv_max, Dv]``, or a paged one (``page_table`` int
        ``[B, max_pages]`` mapping a sequence's logical page to a physical one)
        ``[num_pages, page_size, Hkv, D]`` (page size a power of two); ``seq_lens`` int
        ``[B]``. Positions are logical: row ``i`` of sequence ``b`` sits at
        ``seq_lens[b] - Lq + i`` and sees keys ``0..seq_lens[b]``, so a mask written for
        prefill (causal, sliding window, document ids) is right unchanged; captured
        tensors with a ``Q`` or ``KV`` dimension are indexed by position (size: the
        cache's capacity). Rows at negative positions give o = 0, lse = -inf. Returns o
        ``[B, Hq, Lq, Dv]`` (and lse ``[B, Hq, Lq]`` with ``return_lse``).

        CPU: float32. CUDA: bfloat16/float16. For Lq <= 16 and D = Dv in {32, 64, 128,
        256} zero-copy on torch's current stream of q's device: a kernel computes each
        sequence's reachable keys from ``seq_lens`` on the device, the split-KV kernels
        and their combine follow; outputs and workspace are allocated by torch; no host
        round trip, no synchronization (a warmed-up call can be captured in a CUDA
        graph). There ``seq_lens`` and ``page_table`` are never read on the host: a
        length beyond the cache counts as its capacity, a page id outside the cache is
        clamped (never read out of bounds; ``reference_decode`` or the CPU report them).
        Other shapes run through host copies (they synchronize). Not differentiable.
        Errors: ``AttncError`` E0320 (shapes), E0321 (page size), E0322 (seq_lens beyond
        the cache), E0323 (page ids); E0314 names a tensor on another device."""
        return self._decode(q, k_cache, v_cache, seq_lens, page_table, scale, captures, return_lse, False)

    def reference_decode(self, q, k_cache, v_cache, seq_lens, page_table=None, *, scale: Optional[float] = None,
                         **captures):
        """The f64 oracle of ``decode`` on float32 host copies: ``(o, lse)`` (slow)."""
        import torch

        f = lambda x: x.detach().cpu().float()  # noqa: E731
        return self._decode(f(q), f(k_cache), f(v_cache), seq_lens.cpu(), page_table, scale,
                            {n: (x.detach().cpu() if isinstance(x, torch.Tensor) else x) for n, x in captures.items()},
                            True, True)

    def _decode(self, q, k_cache, v_cache, seq_lens, page_table, scale, captures, return_lse, oracle):
        import torch

        from . import _ops

        for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens), ("page_table", page_table),
                        *captures.items()):
            if isinstance(x, torch.Tensor) and not _ops._same_device(x, q):
                raise _ops._device_error(name, x, q)
        cuda = q.is_cuda
        if cuda and not oracle and q.dim() == 4 and v_cache.dim() == 4 and _attnc.decode_cuda_applies(
                q.shape[2], q.shape[3], v_cache.shape[3]):
            o, lse = self._decode_cuda(q, k_cache, v_cache, seq_lens, page_table, scale, captures)
            return (o, lse) if return_lse else o
        host = lambda x: x.detach().to("cpu").contiguous()  # noqa: E731
        tensors = [(n, host(x)) for n, x in captures.items() if isinstance(x, torch.Tensor)]
        params = [(n, x) for n, x in captures.items() if not isinstance(x, torch.Tensor)]
        qh, kh, vh, sh = (host(x) for x in (q, k_cache, v_cache, seq_lens))
        th = None if page_table is None else host(page_table)
        if qh.dim() == 4 and vh.dim() == 4:
            o_shape, lse_shape = (*qh.shape[:3], vh.shape[3]), tuple(qh.shape[:3])
        else:  # the extension reports the rank
            o_shape, lse_shape = (0,), (0,)
        o = torch.empty(o_shape, dtype=qh.dtype)
        lse = torch.empty(lse_shape, dtype=torch.float32)
        self._inner.decode(qh, kh, vh, sh, th, o, lse, scale, tensors, params,
                           0 if cuda else torch.get_num_threads(), cuda, oracle)
        if cuda:
            o, lse = o.to(q.device), lse.to(q.device)
        return (o, lse) if return_lse else o

    def _decode_cuda(self, q, k_cache, v_cache, seq_lens, page_table, scale, captures):
        """Zero-copy CUDA decoding (see ``decode``): every buffer allocated here by torch on
        the current stream of q's device, the kernels enqueued on it."""
        import torch

        from . import _ops

        tensors, params = [], []
        for n, x in captures.items():
            if isinstance(x, torch.Tensor):
                tensors.append((n, x.contiguous()))
            else:
                if not isinstance(x, (bool, int, float)):
                    raise _error("E0315", f"param `{n}` must be a bool, int or float, got {type(x).__name__}")
                params.append((n, x))
        q, k_cache, v_cache = (_ops._dense(x.detach()) for x in (q, k_cache, v_cache))
        ints = lambda x: x.detach().to(torch.int32).contiguous()  # noqa: E731
        sl = ints(seq_lens)
        pt = None if page_table is None else ints(page_table)
        n_o, n_lse, _ = self._inner.decode_workspace(q, k_cache, v_cache, pt, scale)
        b, hq, lq = q.shape[:3]
        o = q.new_empty((b, hq, lq, v_cache.shape[3]))
        lse = q.new_empty((b, hq, lq), dtype=torch.float32)
        ws = q.new_empty((n_o + n_lse,), dtype=torch.float32)
        ranges = q.new_empty((b, 2), dtype=torch.int32)
        self._inner.decode_cuda(q, k_cache, v_cache, sl, pt, o, lse, ws, ranges, scale, tensors, params,
                                _ops._stream(q))
        return o, lse

    def reference(self, q, k, v, *, scale: Optional[float] = None, **captures):
        """The f64 oracle on host copies: ``(o, lse)`` as float32 CPU tensors (slow)."""
        import torch

        tensors = [(n, x.detach().cpu().contiguous()) for n, x in captures.items() if isinstance(x, torch.Tensor)]
        params = [(n, x) for n, x in captures.items() if not isinstance(x, torch.Tensor)]
        q, k, v = (x.detach().cpu().contiguous() for x in (q, k, v))
        o, lse = self._inner.reference(q, k, v, scale, tensors, params)
        b, hq, lq = q.shape[:3]
        return (
            torch.tensor(o, dtype=torch.float32).reshape(b, hq, lq, v.shape[-1]),
            torch.tensor(lse, dtype=torch.float32).reshape(b, hq, lq),
        )

    def reference_grad(self, q, k, v, do, dlse=None, *, scale: Optional[float] = None, **captures):
        """The f64 oracle's backward on host copies: ``(dq, dk, dv, {capture: grad})`` as
        float32 CPU tensors for dO (and dLSE, default zero), with a gradient for every
        float captured tensor (slow; for tests and debugging)."""
        import torch

        host = lambda x: x.detach().cpu().float().contiguous()  # noqa: E731
        q, k, v, do = (host(x) for x in (q, k, v, do))
        lse_shape = q.shape[:3]
        dlse = torch.zeros(lse_shape) if dlse is None else host(dlse)
        tensors = [(n, x.detach().cpu().contiguous()) for n, x in captures.items() if isinstance(x, torch.Tensor)]
        params = [(n, x) for n, x in captures.items() if not isinstance(x, torch.Tensor)]
        floats = {n for n, elem, _ in self.tensors if elem in ("f32", "f16", "bf16")}
        grads = {n: torch.empty_like(t) for n, t in tensors if n in floats}
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        o = torch.zeros(do.shape)
        self._inner.backward(
            q, k, v, o, torch.zeros(lse_shape), do, dlse, dq, dk, dv, scale, tensors, params,
            list(grads.items()), 0, False, True,
        )
        return dq, dk, dv, {n: g.float() for n, g in grads.items()}

    def binding_count(self) -> int:
        """How many compiled bindings (shape, dtype, device, scale) this attention holds."""
        return self._inner.binding_count()

    def __repr__(self) -> str:
        return f"attnc.Attention({self.name!r}, tensors={[t[0] for t in self.tensors]}, params={[p[0] for p in self.params]})"
