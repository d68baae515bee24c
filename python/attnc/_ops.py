"""The torch custom op behind ``Attention.__call__``: ``torch.ops.attnc.forward``.

In: q, k, v, the attention's registry key, the softmax scale, captured tensors and params
(as parallel lists: a custom op has a fixed schema). Out: ``(o, lse)``, allocated by torch
(o in q's dtype ``[B, Hq, Lq, Dv]``, lse float32 ``[B, Hq, Lq]``). The fake (meta)
implementation gives ``torch.compile`` the output shapes without running anything, so a
model calling attnc traces with ``fullgraph=True``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._attnc import AttncError

_REGISTRY: dict = {}


def register(key: str, inner):
    """Registers an attention under its key; returns the one registered first (the same
    source and name compiled twice share their bindings)."""
    return _REGISTRY.setdefault(key, inner)


def _lookup(key: str):
    try:
        return _REGISTRY[key]
    except KeyError:
        from . import _error

        raise _error("E0310", f"no attention registered under {key!r} in this process (compile its source first)") from None


def _device_error(name: str, x, q):
    from . import _error

    return _error("E0314", f"`{name}` is on {x.device}, but q is on {q.device}; q, k, v and the captures must be on one device")


def _same_device(x, q) -> bool:
    # `Tensor.device` makes a torch.device object (microseconds per call): the common
    # cases by flags and index
    if x.is_cuda and q.is_cuda:
        return x.get_device() == q.get_device()
    if x.is_cpu and q.is_cpu:
        return True
    return x.device == q.device


def _require_tensors(*named):
    """An ``AttncError`` (E0313) naming the first of ``(name, value)`` that is not a torch
    tensor (``None``, a list, a numpy array), instead of an AttributeError deeper down."""
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            from . import _error

            raise _error("E0313", f"`{name}` must be a torch.Tensor, got {type(x).__name__}")


def _scale(scale):
    """``scale`` as a float (a 0-dim tensor or a numpy number converts), or an
    ``AttncError`` naming it instead of PyO3's bare TypeError."""
    try:
        return float(scale)
    except (TypeError, ValueError):
        from . import _error

        raise _error("E0316", f"`scale` must be a number or None, got {type(scale).__name__}") from None


def call(key: str, q, k, v, scale: Optional[float], captures: dict, mask=None, deterministic: bool = True):
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        _require_tensors(("q", q), ("k", k), ("v", v))
    if scale is not None and not isinstance(scale, float):
        scale = _scale(scale)
    # checked before dispatch: torch would pick one device's kernel for mixed inputs
    # (a meta tensor anywhere selects the fake implementation)
    if isinstance(q, torch.Tensor):
        for name, x in (("k", k), ("v", v)):
            if isinstance(x, torch.Tensor) and not _same_device(x, q):
                raise _device_error(name, x, q)
    tensor_names, tensors, param_names, params = [], [], [], []
    for name, x in captures.items():
        if isinstance(x, torch.Tensor):
            if isinstance(q, torch.Tensor) and not _same_device(x, q):
                raise _device_error(name, x, q)
            tensor_names.append(name)
            tensors.append(x)
        else:
            if not isinstance(x, (bool, int, float)):
                from . import _error

                raise _error("E0315", f"param `{name}` must be a bool, int or float, got {type(x).__name__}")
            param_names.append(name)
            params.append(x)
    if _eager(q, k, v, tensors):
        # plain tensors outside tracing: the same implementation without the custom op's
        # dispatch (what torch.compile traces is the op below)
        inner = _lookup(key)
        if torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad or any(t.requires_grad for t in tensors)
        ):
            return _Eager.apply(q, k, v, inner, scale, tensor_names, param_names, params, mask, deterministic,
                                *tensors)
        return _forward_impl(inner, q, k, v, scale, tensor_names, tensors, param_names, params, mask)
    # (the custom op builds the block table per call: a block mask, validated by the
    # caller, changes nothing in the result)
    # names are identifiers: joined with commas (a custom op's schema has no str lists)
    return forward(q, k, v, key, scale, ",".join(tensor_names), tensors, ",".join(param_names), params,
                   deterministic)


_compiling = torch.compiler.is_compiling
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_function_modes = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_functorch = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _eager(q, k, v, tensors) -> bool:
    """Whether a call may skip the custom op: plain CPU/CUDA tensors (no subclass such as
    FakeTensor, no functorch wrapper), no compilation, no dispatch or function mode.
    Anything else goes through ``torch.ops.attnc.forward``."""
    if _compiling() or _dispatch_modes is None or _function_modes is None or _functorch is None:
        return False
    for x in (q, k, v, *tensors):
        if type(x) is not torch.Tensor or _functorch(x):
            return False
    if not (q.is_cuda or q.is_cpu) or _dispatch_modes() or _function_modes():
        return False
    return True


class _Eager(torch.autograd.Function):
    """The custom op's autograd (``_setup_context`` / ``_backward``) for the eager path."""

    @staticmethod
    def forward(ctx, q, k, v, inner, scale, tensor_names, param_names, params, mask, deterministic, *tensors):
        # q, k, v as the kernels read them (contiguous, aligned: the tensors themselves
        # when they already are) are what the backward gets: it reads them as they are
        o, lse, q, k, v = _forward_impl(inner, q, k, v, scale, tensor_names, tensors, param_names, params, mask,
                                        True)
        # an unused output's gradient stays None (dLSE None: no zeros to allocate and read)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, o, lse, *tensors)
        ctx.attnc = (inner, scale, tensor_names, param_names, params, mask, deterministic)
        ctx.tensor_grads = [t.requires_grad for t in tensors] if tensors else _NO_GRADS
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, *tensors = ctx.saved_tensors
        inner, scale, tensor_names, param_names, params, mask, deterministic = ctx.attnc
        if do is None:
            do = torch.zeros_like(o)
        tensor_grads = ctx.tensor_grads
        # (positional: python/tests spy on the arguments by position)
        dq, dk, dv, dts = _backward_impl(
            inner, q, k, v, o, lse, do, dlse, scale, tensor_names, tensors, param_names, params, tensor_grads,
            mask, deterministic, True,
        )
        if not tensors:
            return dq, dk, dv, None, None, None, None, None, None, None
        grads = [d if g else None for d, g in zip(dts, tensor_grads)]
        return (dq, dk, dv, None, None, None, None, None, None, None, *grads)


_NO_GRADS: list = []


def _names(joined: str) -> list:
    return joined.split(",") if joined else []


def _dense(x):
    """``x`` contiguous, and on CUDA 16-byte aligned (the kernels' vector accesses): a
    contiguous view at an odd offset is copied once, like a non-contiguous tensor."""
    if not x.is_contiguous():  # (`contiguous()` itself is a dispatched call, even when a no-op)
        x = x.contiguous()
    if x.is_cuda and x.data_ptr() % 16:
        x = x.clone()
    return x


def _fixed_to_float(words, like):
    """A capture's gradient from the fixed-point words the CUDA backward summed
    (``[n, 3]`` int64: ``[hi, lo, flags]``, ``Σhi 2^-32 + Σlo 2^-60`` with ``lo``
    unsigned; flags 1/2/3: +inf/-inf/NaN; as ``attnc_compiler``'s ``fixed_to_f32``),
    converted on the device; shaped and typed like the tensor ``like``."""
    hi, lo, flags = words[:, 0], words[:, 1], words[:, 2]
    lo_d = lo.double() + (lo < 0).double() * 18446744073709551616.0
    x = hi.double() * 2.0**-32 + lo_d * 2.0**-60
    # scalars, not tensors made from Python values (a host-to-device copy would not be
    # capturable in a CUDA graph)
    special = torch.where(flags == 1, float("inf"), torch.where(flags == 2, float("-inf"), float("nan")))
    x = torch.where(flags == 0, x, special)
    return x[: like.numel()].float().to(like.dtype).reshape(like.shape)


def _stream(q) -> int:
    """The raw ``CUstream`` of torch's current stream on q's device (0 on the CPU)."""
    if not q.is_cuda:
        return 0
    if _raw_stream is not None:
        return _raw_stream(q.get_device())
    return torch.cuda.current_stream(q.device).cuda_stream


# torch's own accessor of the current stream's handle (what its generated code calls),
# without making a Stream object
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

def _out_shapes(q, k, v):
    if q.dim() == 4 and v.dim() == 4:
        return (q.shape[0], q.shape[1], q.shape[2], v.shape[3]), (q.shape[0], q.shape[1], q.shape[2])
    return (0,), (0,)


@torch.library.custom_op("attnc::forward", mutates_args=())
def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key: str,
    scale: Optional[float],
    tensor_names: str,
    tensors: list[torch.Tensor],
    param_names: str,
    params: list[int | float | bool],
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # (`deterministic` is for the backward: kept by the autograd context, see _setup_context;
    # a required argument: torch 2.11's autograd of a custom op wants one gradient per input
    # actually passed, which a defaulted argument would make vary)
    return _forward_impl(_lookup(key), q, k, v, scale, _names(tensor_names), tensors, _names(param_names), params)


def _forward_impl(inner, q, k, v, scale, tensor_names, tensors, param_names, params, mask=None, keep=False):
    """(o, lse) allocated by torch and written by attnc (names as lists); with ``keep``
    ``(o, lse, q, k, v)``, q/k/v as the kernels read them (``_dense``)."""
    o_shape, lse_shape = _out_shapes(q, k, v)
    q, k, v = _dense(q), _dense(k), _dense(v)
    # (q is contiguous here: where o has its shape, empty_like, cheaper than new_empty)
    o = torch.empty_like(q) if o_shape == q.shape else q.new_empty(o_shape)
    lse = q.new_empty(lse_shape, dtype=torch.float32)
    caps = [(n, t.contiguous()) for n, t in zip(tensor_names, tensors)] if tensors else []
    # CUDA: launched on torch's current stream of q's device, reading q/k/v and writing
    # o/lse in place (no copy, no synchronization); the CPU kernel uses as many threads
    # as torch's intra-op pool
    cuda = q.is_cuda
    inner.forward(
        q, k, v, o, lse, scale, caps, list(zip(param_names, params)) if params else [],
        _stream(q) if cuda else 0, 0 if cuda else torch.get_num_threads(), mask,
    )
    if keep:
        return o, lse, q, k, v
    return o, lse


@forward.register_fake
def _(q, k, v, key, scale, tensor_names, tensors, param_names, params, deterministic):
    o_shape, lse_shape = _out_shapes(q, k, v)
    return q.new_empty(o_shape), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("attnc::backward", mutates_args=())
def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: Optional[torch.Tensor],
    key: str,
    scale: Optional[float],
    tensor_names: str,
    tensors: list[torch.Tensor],
    param_names: str,
    params: list[int | float | bool],
    tensor_grads: list[bool],
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """dq, dk, dv and the gradients of the captured tensors flagged in `tensor_grads`
    (empty tensors for the others) of ``forward``'s outputs (o, lse) given dO and dLSE
    (None: zero). CUDA: zero copy on torch's current stream (no synchronization);
    ``deterministic=False``: the binding's non-deterministic kernels."""
    return _backward_impl(
        _lookup(key), q, k, v, o, lse, do, dlse, scale, _names(tensor_names), tensors,
        _names(param_names), params, tensor_grads, None, deterministic,
    )


# What a CUDA backward needs that does not change between calls, asked of the extension
# once per binding instead of at every call (sessions 18 and 20: the host time of a
# training step), keyed by the attention, q/k/v shapes, dtype, device, scale and
# `deterministic`: the gradient words (the captures the score reads differentiably), the
# length of the packed scratch buffer (`backward_scratch`: the two f32 rows and the fused
# dQ's workspace in one allocation) and the device.
_GRAD_WORDS: dict = {}
_WORKSPACE: dict = {}


def _grad_words(inner):
    gw = _GRAD_WORDS.get(inner)
    if gw is None:
        gw = _GRAD_WORDS[inner] = inner.grad_words
    return gw


def _backward_plan(inner, wkey, q, k, v, scale, deterministic):
    """``(grad_names, param_grad, scratch_len, device)`` for a backward of this binding,
    asked of the extension and kept in ``_WORKSPACE`` under ``wkey``."""
    if len(_WORKSPACE) >= 4096:  # (many shapes: start over)
        _WORKSPACE.clear()
    grad_names, param_grad = _grad_words(inner)
    plan = (grad_names, param_grad, inner.backward_scratch(q, k, v, scale, deterministic), q.device)
    _WORKSPACE[wkey] = plan
    return plan


def _backward_impl(inner, q, k, v, o, lse, do, dlse, scale, names, tensors, param_names, params, tensor_grads,
                   mask=None, deterministic=True, dense=False):
    """dq, dk, dv and the flagged capture gradients (names as lists); ``deterministic``
    False runs the CUDA binding's non-deterministic kernels (the CPU backward is
    deterministic either way). ``dense``: q, k, v, o, lse are already as the kernels read
    them (the eager forward's: ``_dense``); dO is made so here either way."""
    if q.is_cuda:
        # zero copy on torch's current stream: every output and scratch buffer allocated
        # here by torch, the kernels enqueued by the runtime, no synchronization
        if not dense:
            q, k, v, o, lse = _dense(q), _dense(k), _dense(v), _dense(o), _dense(lse)
        do = _dense(do)
        if dlse is not None:
            dlse = _dense(dlse)
        wkey = (inner, q.shape, k.shape, v.shape, q.dtype, q.get_device(), scale, deterministic)
        plan = _WORKSPACE.get(wkey)
        cached = plan is not None
        if not cached:
            plan = _backward_plan(inner, wkey, q, k, v, scale, deterministic)
        grad_names, param_grad, _, device = plan
        # (q, k, v are contiguous here: empty_like keeps their layout)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        caps = [(n, t.contiguous()) for n, t in zip(names, tensors)] if names else _NO_GRADS
        words = [(n, torch.empty((max(t.numel(), 1), 3), dtype=torch.int64, device=device))
                 for n, t in caps if n in grad_names] if grad_names else _NO_GRADS
        pwords = None
        if param_grad:
            pwords = torch.empty((max(len(inner.params), 1), 3), dtype=torch.int64, device=device)
        pvals = list(zip(param_names, params)) if params else _NO_GRADS
        for _ in range(2):
            # one f32 buffer: the two scratch rows and the fused dQ's workspace (sm_90, D64
            # and D128: an f32 accumulator and int32 semaphores the call zeroes), of the
            # length the binding gave on its first backward (asked again once should the
            # extension refuse it: a binding dropped and made again under other ATTNC_BWD_*)
            scratch = torch.empty(plan[2], dtype=torch.float32, device=device)
            try:
                inner.backward_cuda(
                    q, k, v, o, lse, do, dlse, dq, dk, dv, scratch, scale, caps, pvals, words, pwords, _stream(q),
                    mask, None, deterministic,
                )
                break
            except AttncError:
                if not cached or inner.backward_scratch(q, k, v, scale, deterministic) == plan[2]:
                    raise
                plan, cached = _backward_plan(inner, wkey, q, k, v, scale, deterministic), False
        if not caps:
            return dq, dk, dv, []
        got = dict(words)
        dts = []
        for (n, t), g in zip(caps, tensor_grads):
            if not g:
                dts.append(t.new_empty(0))
            elif n in got:
                dts.append(_fixed_to_float(got[n], t))
            else:  # not read differentiably by the score: zero
                dts.append(torch.zeros_like(t))
        return dq, dk, dv, dts
    if dlse is None:
        dlse = torch.zeros_like(lse)
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    dq, dk, dv = like(q), like(k), like(v)
    dts = [like(t) if g else t.new_empty(0) for t, g in zip(tensors, tensor_grads)]
    caps = [(n, t.contiguous()) for n, t in zip(names, tensors)]
    wanted = [(n, d) for n, d, g in zip(names, dts, tensor_grads) if g]
    c = lambda x: x.contiguous()  # noqa: E731
    inner.backward(
        c(q), c(k), c(v), c(o), c(lse), c(do), c(dlse), dq, dk, dv, scale, caps,
        list(zip(param_names, params)), wanted, torch.get_num_threads(),
    )
    return dq, dk, dv, dts


@backward.register_fake
def _(q, k, v, o, lse, do, dlse, key, scale, tensor_names, tensors, param_names, params, tensor_grads,
      deterministic):
    dts = [torch.empty_like(t) if g else t.new_empty(0) for t, g in zip(tensors, tensor_grads)]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dts


def _setup_context(ctx, inputs, output):
    q, k, v, key, scale, tensor_names, tensors, param_names, params, deterministic = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, *tensors)
    ctx.attnc = (key, scale, tensor_names, param_names, params, deterministic)
    ctx.tensor_grads = [t.requires_grad for t in tensors]


def _backward(ctx, do, dlse):
    q, k, v, o, lse, *tensors = ctx.saved_tensors
    key, scale, tensor_names, param_names, params, deterministic = ctx.attnc
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv, dts = backward(
        q, k, v, o, lse, do, dlse, key, scale, tensor_names, tensors, param_names, params, ctx.tensor_grads,
        deterministic,
    )
    grads = [d if g else None for d, g in zip(dts, ctx.tensor_grads)]
    # params are Python scalars: no gradient (a learned scalar is a 1-element tensor capture)
    # (torch takes a non-empty scalar list as one leaf of the input structure, an empty
    # one as an empty list)
    return dq, dk, dv, None, None, None, grads, None, (None if params else []), None


forward.register_autograd(_backward, setup_context=_setup_context)
