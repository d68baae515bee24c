"""attnc: a compiler for attention variants, callable from PyTorch.

    import attnc, torch
    mod = attnc.compile("examples/document_alibi.attn")   # a path, or source text
    attn = mod.attention("document_alibi")                # or mod.attention() for the only one
    o = attn(q, k, v, doc=doc_ids, window=1024)           # captures and params as keywords
    o, lse = attn(q, k, v, doc=doc_ids, window=1024, return_lse=True, scale=None)
    o = attn(q, k, v, doc=doc_ids, window=1024, deterministic=False)  # faster CUDA backward,
                                                                      # dq not bit-reproducible

q, k, v are torch tensors [B, H, L, D] (k/v may have fewer heads: GQA): float32 on the
CPU, bfloat16/float16 on CUDA. Any head dim up to 256 on CUDA: those its kernels do not
take (72, 80, 96, 160, 192 with Dv 128, ...) run zero-padded to the next they take (32,
64, 128, 256), with the same results and gradients and the padded dim's cost. Kernels
are compiled on first use per shape, dtype and device and kept; other param values or
captured tensors reuse them. Calls go through the
torch custom op ``torch.ops.attnc.forward`` (``torch.compile(fullgraph=True)`` traces
it). FlexAttention functions run as they are through ``attnc.flex`` (``port``,
``flex_attention``: traced into attnc source). Errors are ``attnc.AttncError`` (``.code``, ``.rendered``, ``.spans``,
``.diagnostics``); compile errors are its subclass ``attnc.CompileError``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Union

from . import _attnc
from ._attnc import AttncError, CompileError

__all__ = ["compile", "Module", "Attention", "BlockMask", "AttncError", "CompileError"]
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


# Head dims the CUDA kernels take for both passes (D and Dv; at 256 the other one 128 or
# 256); the forward also takes 16. Other head dims (72, 80, 96, 160, 192 with Dv 128, ...)
# run zero-padded to the next of these (`_cuda_head_dim`).
_CUDA_HEAD_DIMS = (32, 64, 128, 256)


def _cuda_dims(grad: bool) -> tuple:
    """The head dims the CUDA kernels take: for both passes, or (no gradient) the forward's."""
    return _CUDA_HEAD_DIMS if grad else (16, *_CUDA_HEAD_DIMS)


def _cuda_takes(d: int, dv: int, grad: bool) -> bool:
    dims = _cuda_dims(grad)
    if d not in dims or dv not in dims:
        return False
    return max(d, dv) < 256 or min(d, dv) >= 128


def _cuda_round_up(d: int, dv: int, grad: bool) -> Optional[int]:
    """The smallest head dim the CUDA kernels take at least D and Dv (None above 256)."""
    return next((s for s in _cuda_dims(grad) if max(d, dv) <= s), None)


def _default_scale(d: int) -> float:
    """The extension's default scale, ``1 / sqrt(D as f32)`` in f32 (rounding the double
    results to f32 gives the f32 operations' results: double has the bits to spare)."""
    import math
    import struct

    f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]  # noqa: E731
    return f32(1.0 / f32(math.sqrt(d)))


def _pads_on(q) -> bool:
    """Whether q's device runs the CUDA kernels (the CPU backend takes any head dim)."""
    return q.is_cuda


def _cuda_head_dim(q, k, v) -> Optional[int]:
    """The head dim a CUDA call runs at when q/k's D and v's Dv are not a pair the CUDA
    kernels take (`_CUDA_HEAD_DIMS`: 96 (Phi-3), 72 / 80 / 160 (DiT, ViT, Stable
    Diffusion), 192 with Dv 128 (DeepSeek's MLA), ...): the smallest of them at least
    both; None when no padding applies (not CUDA, the dims taken as they are, shapes the
    extension rejects with its own error, or above 256).

    Zero columns change nothing: S = Q Kᵀ is the same with zeros appended to both, and the
    zero columns of V give zero columns of O, which are dropped; in the backward dO's
    dropped columns are zeros, so dP, D = rowsum(dO ∘ O) and every gradient's true columns
    are those of the unpadded problem (the padding's own backward drops the rest). The
    score and mask do not see the head dim. Costs the padded head dim's work (96 -> 128:
    4/3) and one copy of q, k, v."""
    # (the common case first, in ~0.2 µs: this runs on every call)
    try:
        if q.shape[-1] == v.shape[-1] and q.shape[-1] in _CUDA_HEAD_DIMS:
            return None
    except (AttributeError, IndexError, TypeError):
        return None
    import torch

    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return None
    if not _pads_on(q) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return None
    d, dk, dv = q.shape[3], k.shape[3], v.shape[3]
    if d != dk or d < 1 or dv < 1:
        return None
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if _cuda_takes(d, dv, grad):
        return None
    return _cuda_round_up(d, dv, grad)


def _pad_head_dims(q, k, v, scale, to: Optional[int]):
    """q, k, v zero-padded to head dim ``to`` (None: already at it), the softmax scale of
    the true head dim when none is given (1/sqrt(D)), and v's true Dv (O's columns kept)."""
    import torch.nn.functional as F

    d, dv = q.shape[3], v.shape[3]
    if scale is None:
        scale = _default_scale(d)
    if to is not None:
        q, k, v = F.pad(q, (0, to - d)), F.pad(k, (0, to - d)), F.pad(v, (0, to - dv))
    return q, k, v, scale, dv


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
        if name is not None and not isinstance(name, str):
            raise _error("E0310", f"the attention's name must be a str or None, got {type(name).__name__}; "
                         f"this module defines: {', '.join(self.names)}")
        return Attention(self._inner.attention(name), self._text)

    def __repr__(self) -> str:
        return f"attnc.Module({self._inner.source_name!r}, attentions={self.names})"


class BlockMask:
    """A block mask made by ``Attention.block_mask`` (see there): the block table of one
    attention's mask for given captures, shape, dtype and device, kept on the device."""

    def __init__(self, key, rust, made_from, params, call, document_tiles=0, backward_document_tiles=0):
        self._key = key
        #: The document-tiled forward's tiles (0: the forward reads the block table): a
        #: document mask ``L && doc[b, q] == doc[b, kv]`` over contiguous documents runs
        #: each q tile inside one document, its kv blocks from the document's first row
        #: (FlashAttention's varlen layout, read in place).
        self.document_tiles = document_tiles
        #: The backward's document kv tiles per kv head (0: the backward reads the block
        #: ranges): its kv tiles aligned to each document, keys of another document never
        #: in a tile.
        self.backward_document_tiles = backward_document_tiles
        self._rust = rust
        # the captured tensors the mask reads (kept alive: their memory is not reused)
        # with their versions, and the params' values
        self._made_from = made_from
        self._params = params
        self._call = call
        # the call's check without making tuples and a torch.device per call: shapes,
        # dtype and CUDA device index (-2 for another device: never matched)
        q_shape, k_shape, v_shape, dtype, device, _ = call
        self._fast = (q_shape, k_shape, v_shape, dtype, device.index if device.type == "cuda" else -2)

    def _args(self, attn, q, k, v, scale, captures):
        """What the extension takes, after checking that this block mask is valid for the
        call (an ``AttncError`` naming what changed otherwise)."""
        def stale(what):
            return _error("E0318", f"stale block mask: {what}; make a new one with attn.block_mask(...)")

        if attn._key != self._key:
            raise stale(f"it was made for another attention, not `{attn.name}`")
        qs, ks, vs, dtype, index = self._fast
        same = (q.shape == qs and k.shape == ks and v.shape == vs and q.dtype is dtype and q.is_cuda
                and q.get_device() == index and scale == self._call[5])
        call = self._call if same else (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, q.device, scale)
        if call != self._call:
            raise stale(f"it was made for q/k/v {self._call[:3]} {self._call[3]} on {self._call[4]} scale {self._call[5]}, "
                        f"called with {call[:3]} {call[3]} on {call[4]} scale {call[5]}")
        for name, (x, version) in self._made_from.items():
            now = captures.get(name)
            if now is not x:
                raise stale(f"captured tensor `{name}` is not the tensor it was made from")
            if now._version != version:
                raise stale(f"captured tensor `{name}` was modified in place since it was made")
        for name, value in self._params.items():
            if captures.get(name) != value:
                raise stale(f"param `{name}` is {captures.get(name)!r}, it was made with {value!r}")
        return self._rust

    def __repr__(self) -> str:
        docs = f", {self.document_tiles} document tiles" if self.document_tiles else ""
        if self.backward_document_tiles:
            docs += f", {self.backward_document_tiles} backward document kv tiles"
        return f"attnc.BlockMask(q {self._call[0]}, captures {list(self._made_from)}, params {self._params}{docs})"


class Attention:
    """One attention variant, callable on torch tensors:
    ``attn(q, k, v, *, return_lse=False, scale=None, block_mask=None, deterministic=True,
    **captures_and_params)``.

    ``deterministic`` (a bool, default True) is for the backward of this call: True gives
    bit-identical gradients for the same inputs, run to run. False lets the CUDA backward
    run its faster non-deterministic kernels (on sm_90, where dQ is fused into the dK/dV
    kernel, D64 and D128: dQ's parts added in whatever order they finish instead of a
    fixed one, and at dense D128 q tiles of 80; measured on an H200 at B2 H16 L8192 D128
    dense, the backward 1.10-1.13x faster): dq then differs in its last bits from run to
    run (dk, dv and the captures' gradients stay deterministic). Elsewhere (CPU, other GPUs,
    other head dims, and masks whose deterministic backward is the faster one: sliding
    windows, block tables such as document masks, and at D128 causal-type masks — causal,
    ALiBi, soft-cap — since their deterministic kernels' two dQ writers) the backward is
    deterministic either way and the flag changes nothing. The forward is the same either
    way. Anything but a bool is an ``AttncError`` (E0319)."""

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
        # the zero-copy decode's workspace sizes per shape (`_decode_cuda`)
        self._decode_ws = {}

    def __call__(self, q, k, v, *, return_lse: bool = False, scale: Optional[float] = None,
                 block_mask: Optional["BlockMask"] = None, deterministic: bool = True, **captures):
        from . import _ops

        if block_mask is not None and not isinstance(block_mask, BlockMask):
            raise _error("E0318", f"`block_mask` must be an attnc.BlockMask (made by attn.block_mask(...)), "
                         f"got {type(block_mask).__name__}")
        if not isinstance(deterministic, bool):
            raise _error("E0319", f"`deterministic` must be True or False, got {type(deterministic).__name__} "
                         f"{deterministic!r}")
        dv = None
        pad = _cuda_head_dim(q, k, v)
        if pad is not None:
            q, k, v, scale, dv = _pad_head_dims(q, k, v, scale, pad)
        mask = None if block_mask is None else block_mask._args(self, q, k, v, scale, captures)
        try:
            o, lse = _ops.call(self._key, q, k, v, scale, captures, mask, deterministic)
        except AttncError as e:
            raise self._kind_error(captures) or e
        if dv is not None:
            o = o[..., :dv]
        return (o, lse) if return_lse else o

    def _kind_error(self, captures) -> Optional[AttncError]:
        """After a failed call: an error naming a capture given as the wrong kind (a tensor
        for a declared param, a number for a declared tensor), which the call itself
        reports as missing (E0301/E0303); None when there is none."""
        import torch

        params, tensors = dict(self.params), {n: (t, d) for n, t, d in self.tensors}
        for name, x in captures.items():
            if name in params and isinstance(x, torch.Tensor):
                learn = ""
                if params[name] == "f32" and x.requires_grad:
                    # a learnable scalar: params are numbers, fixed per call; a one-element
                    # tensor capture is differentiable
                    learn = (f"; to learn it, declare `tensor {name}: f32[1];` and read `{name}[0]` "
                             f"(tensor captures get gradients)")
                return _error("E0302", f"param `{name}` is declared `{params[name]}` but was given a tensor "
                              f"{tuple(x.shape)}; pass a Python number (e.g. `{name}.item()`){learn}")
            if name in tensors and not isinstance(x, torch.Tensor):
                elem, dims = tensors[name]
                return _error("E0304", f"tensor `{name}` is declared {elem}[{', '.join(dims)}] but was given "
                              f"{type(x).__name__}; pass a torch.Tensor")
        return None

    def block_mask(self, q, k, v, *, scale: Optional[float] = None, backward: bool = True,
                   **captures) -> "BlockMask":
        """A block mask made once for these captures (like FlexAttention's
        ``create_block_mask``), for attentions whose mask reads captured tensors (document
        ids, ...): pass it as ``attn(q, k, v, block_mask=bm, **captures)`` with the same
        captures, and the CUDA forward and backward read its tables instead of building
        them on the GPU at every call (two short kernels before each pass; both visit
        the same blocks either way, those the tensors' data keeps). ``q``, ``k``, ``v`` give the
        shape, dtype, device (and ``scale``) it is made for; they are not read.

        Made on the host from copies of the captures the mask reads (one host round trip
        here, none per call), from per-block summaries of the tensors: sound for any data,
        exact where the summaries settle a block (sorted document ids). For a document mask
        ``L && doc[b, q] == doc[b, kv]`` whose ids form contiguous documents it also
        carries document tiles (``document_tiles``, ``backward_document_tiles``): the
        forward's q tiles and the backward's kv tiles aligned to each document, so no tile
        straddles two documents (FlashAttention's varlen layout, read in place). ``backward``: also
        the backward's ranges. Validated at every call (cheap): the same attention, shape,
        dtype, device and scale; each captured tensor the mask reads must be the same
        tensor object, unmodified since (torch's version counter); the params the mask
        reads must have the same values. A stale block mask is an ``AttncError``, never a
        wrong result. Under ``torch.compile`` (and for subclasses or modes) the call takes
        the custom op, which builds the table per call: the block mask is validated, and
        the result is the same."""
        import torch

        pad = _cuda_head_dim(q, k, v)
        if pad is not None:
            # the shape and scale the calls run at (`_pad_head_dims`: the true head dim's
            # scale); only shapes are read here
            if scale is None:
                scale = _default_scale(q.shape[3])
            like = lambda x: torch.empty((*x.shape[:3], pad), dtype=x.dtype, device=x.device)  # noqa: E731
            q, k, v = like(q), like(k), like(v)
        host = {n: (x.detach().cpu().contiguous() if isinstance(x, torch.Tensor) else x) for n, x in captures.items()}
        tensors = [(n, x) for n, x in host.items() if isinstance(x, torch.Tensor)]
        params = [(n, x) for n, x in host.items() if not isinstance(x, torch.Tensor)]
        shape, fwd, bwd, read_t, read_p, docs, bwd_docs = self._inner.block_mask_tables(
            q, k, v, scale, tensors, params, backward)
        i32 = lambda xs: torch.tensor(xs if xs else [0], dtype=torch.int64).to(torch.int32).to(q.device)  # noqa: E731
        row_start, runs, strides, tiles = fwd
        fwd_t = (i32(row_start), i32(runs), strides, tiles)
        bwd_t = None if bwd is None else (bwd[0], i32(bwd[1]), bwd[2], i32(bwd[3]), bwd[4])
        # (a document mask over contiguous documents: the document-tiled forward's tiles)
        docs_t = None if docs is None else (docs[0], i32(docs[1]))
        # (and the backward's document kv tiles with their ranges)
        bwd_docs_t = None if bwd_docs is None else (bwd_docs[0], i32(bwd_docs[1]), i32(bwd_docs[2]))
        made_from = {}
        for name, _ in read_t:
            x = captures[name]
            made_from[name] = (x, x._version)
        param_values = {name: captures[name] for name, _ in read_p}
        # the tables read and checked once here (a handle), not at every call
        handle = _attnc.block_mask_handle((shape, fwd_t, bwd_t, read_t, read_p, docs_t, bwd_docs_t))
        return BlockMask(self._key, handle, made_from, param_values,
                         (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, q.device, scale),
                         0 if docs is None else len(docs[1]) // 4,
                         0 if bwd_docs is None else len(bwd_docs[1]) // 4)

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

        CPU: float32. CUDA: bfloat16/float16. For D = Dv in {64, 128} at any Lq and D = Dv
        in {32, 256} at Lq <= 16, zero-copy on torch's current stream of q's device: the
        split-KV kernel (each CTA computing its sequence's reachable keys from ``seq_lens``
        on the device) and its combine; outputs and workspace are allocated by torch; no host
        round trip, no synchronization (a warmed-up call can be captured in a CUDA
        graph). Chunked prefill (Lq >= 128 where the launch fills the GPU; any Lq > 16 at
        D = Dv = 256, which no split-KV kernel takes) with a mask that is a closed form of
        the positions (causal, sliding windows, ALiBi, soft-cap, ...) or reads captured
        tensors (document ids: its block table built on the GPU per sequence from the same
        lengths) runs on the warp-specialized prefill kernel instead (sm_90), the whole
        batch in one launch whose CTAs read their lengths from ``seq_lens`` on the device,
        at the speed of the batched runs below. There ``seq_lens`` and ``page_table`` are never read on the host: a
        length beyond the cache counts as its capacity (a negative one as 0), a page id
        outside the cache is clamped (never read out of bounds; ``reference_decode`` or
        the CPU report them). ``seq_lens`` may instead be a CPU tensor: its lengths are
        then known on the host without a synchronization (copied to the device for the
        kernels), and chunked prefill over a contiguous cache or a paged one with pages of at
        least 16 rows (the unused slots of a sequence's last page are read and zeroed in
        shared memory; ``ATTNC_DECODE_PAGED_RUNS=0`` keeps paged caches on the split-KV
        kernel) whose sequences each hold at least Lq tokens runs in batched runs on the warp-specialized prefill kernel where
        that is faster (Lq >= 128 with enough heads x rows per run: 1.5-1.8x the split-KV
        kernel on an H200; consecutive sequences of one length share a launch). (Inside a
        CUDA graph capture pass the lengths on the device: the copy of a CPU tensor cannot
        be captured.)
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

        T = torch.Tensor
        if not (isinstance(q, T) and isinstance(k_cache, T) and isinstance(v_cache, T) and isinstance(seq_lens, T)
                and (page_table is None or isinstance(page_table, T))):
            _ops._require_tensors(("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens),
                                  *([] if page_table is None else [("page_table", page_table)]))
        if captures and (e := self._kind_error(captures)) is not None:
            raise e
        if scale is not None and not isinstance(scale, float):
            scale = _ops._scale(scale)
        for name, x in (("seq_lens", seq_lens), ("page_table", page_table)):
            # (the CUDA path converts them on the device: a float would be truncated there)
            if x is not None and x.dtype not in (torch.int32, torch.int64):
                raise _error("E0320", f"`{name}` has dtype {x.dtype}, expected torch.int32 (or torch.int64)")
        # lengths on the host for CUDA q (see `decode`): a CPU `seq_lens` is allowed there
        host_lens = q.is_cuda and not oracle and seq_lens.is_cpu
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens), ("page_table", page_table),
                        *captures.items()):
            if name == "seq_lens" and host_lens:
                continue
            if isinstance(x, torch.Tensor) and not _ops._same_device(x, q):
                raise _ops._device_error(name, x, q)
        cuda = q.is_cuda
        if cuda and not oracle and q.dim() == 4 and v_cache.dim() == 4 and not _cuda_takes(
                q.shape[3], v_cache.shape[3], False):
            # (the forward pads such head dims itself; a cache is read in place, so its
            # padding is the caller's, once, where it is allocated)
            d, dv = q.shape[3], v_cache.shape[3]
            to = _cuda_round_up(d, dv, False)
            hint = ("" if to is None else
                    f"; allocate k_cache and v_cache with head dim {to} (zeros past {d} / {dv}), pad q with zeros "
                    f"to {to} (torch.nn.functional.pad), pass scale=1/sqrt({d}) and keep o[..., :{dv}]: "
                    f"the same attention, as the forward runs it")
            raise _error("E0320", f"head dims D={d} Dv={dv}: CUDA decoding takes 16, 32, 64, 128 and 256 "
                         f"(with 256 the other 128 or 256){hint}")
        if cuda and not oracle and q.dim() == 4 and v_cache.dim() == 4 and self._zero_copy(
                q, k_cache, v_cache, page_table, scale):
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
                           0 if cuda else torch.get_num_threads(), cuda, oracle, q.get_device() if cuda else 0)
        if cuda:
            o, lse = o.to(q.device), lse.to(q.device)
        return (o, lse) if return_lse else o

    def _zero_copy(self, q, k_cache, v_cache, page_table, scale):
        """Whether a CUDA decode call runs zero-copy (``_decode_cuda``): the split-KV
        kernels' shapes (``decode_cuda_applies``), and chunked prefill at head dim 256
        where this attention's prefill kernel reads the cache in place (sm_90, a
        closed-form mask or one over captured tensors: the binding says, asked once per
        shape); else host copies."""
        lq, d, dv = q.shape[2], q.shape[3], v_cache.shape[3]
        if _attnc.decode_cuda_applies(lq, d, dv):
            return True
        if lq <= 16 or d != 256 or dv != 256:
            return False
        key = ("takes", q.shape, k_cache.shape, v_cache.shape, None if page_table is None else page_table.shape,
               q.dtype, q.get_device(), scale)
        takes = self._decode_ws.get(key)
        if takes is None:
            try:
                takes = bool(self._inner.decode_cuda_takes(q, k_cache, v_cache, page_table, scale))
            except AttncError:
                takes = False  # (the host path reports what is wrong with the call)
            if len(self._decode_ws) >= 64:
                self._decode_ws.clear()
            self._decode_ws[key] = takes
        return takes

    def _decode_cuda(self, q, k_cache, v_cache, seq_lens, page_table, scale, captures):
        """Zero-copy CUDA decoding (see ``decode``): every buffer allocated here by torch on
        the current stream of q's device, the kernels enqueued on it."""
        import torch

        from . import _ops

        tensors, params = [], []
        for n, x in captures.items() if captures else ():
            if isinstance(x, torch.Tensor):
                tensors.append((n, x.contiguous()))
            else:
                if not isinstance(x, (bool, int, float)):
                    raise _error("E0315", f"param `{n}` must be a bool, int or float, got {type(x).__name__}")
                params.append((n, x))
        # (only their memory is read: not differentiable, no detach needed)
        q, k_cache, v_cache = _ops._dense(q), _ops._dense(k_cache), _ops._dense(v_cache)

        def ints(x):
            # int64 lengths and page ids saturate to the int32 range (torch's conversion
            # would wrap 2**32 + 3 to 3); the kernels then treat them as out of range
            if x.dtype != torch.int32:
                x = x.detach().clamp(-2**31, 2**31 - 1).to(torch.int32)
            return x if x.is_contiguous() else x.contiguous()
        sl = ints(seq_lens)
        pt = None if page_table is None else ints(page_table)
        b, hq, lq = q.shape[:3]
        o = q.new_empty((b, hq, lq, v_cache.shape[3]))
        lse = q.new_empty((b, hq, lq), dtype=torch.float32)
        stream = _ops._stream(q)
        if sl.is_cpu:
            # lengths known on the host: chunked prefill's batched runs where they take the
            # call (no workspace, no copy of the lengths); else copied for the split-KV kernels
            # (which also report a `seq_lens` of the wrong shape)
            if lq >= _attnc.DECODE_RUNS_MIN_LQ and sl.dim() == 1 and self._inner.decode_cuda_runs(
                    q, k_cache, v_cache, sl.tolist(), pt, o, lse, scale, tensors, params, stream):
                return o, lse
            sl = sl.to(q.device, non_blocking=True)
        # the split-KV kernels' workspace sizes depend on the shapes only: asked once per shape
        key = (q.shape, k_cache.shape, v_cache.shape, None if pt is None else pt.shape, q.dtype, q.get_device(), scale)
        sizes = self._decode_ws.get(key)
        if sizes is None:
            sizes = self._inner.decode_workspace(q, k_cache, v_cache, pt, scale)
            if len(self._decode_ws) >= 64:
                self._decode_ws.clear()
            self._decode_ws[key] = sizes
        # one allocation: the partial O and LSE, then the ranges (int32) at the next 8 bytes
        n_o, n_lse, n_ranges = sizes
        n = n_o + n_lse
        ws = q.new_empty((n + (n & 1) + n_ranges,), dtype=torch.float32)
        self._inner.decode_cuda(q, k_cache, v_cache, sl, pt, o, lse, ws, None, scale, tensors, params, stream)
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
