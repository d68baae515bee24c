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


def call(key: str, q, k, v, scale: Optional[float], captures: dict):
    # checked before dispatch: torch would pick one device's kernel for mixed inputs
    # (a meta tensor anywhere selects the fake implementation)
    if isinstance(q, torch.Tensor):
        for name, x in (("k", k), ("v", v)):
            if isinstance(x, torch.Tensor) and x.device != q.device:
                raise _device_error(name, x, q)
    tensor_names, tensors, param_names, params = [], [], [], []
    for name, x in captures.items():
        if isinstance(x, torch.Tensor):
            if isinstance(q, torch.Tensor) and x.device != q.device:
                raise _device_error(name, x, q)
            tensor_names.append(name)
            tensors.append(x)
        else:
            if not isinstance(x, (bool, int, float)):
                from . import _error

                raise _error("E0315", f"param `{name}` must be a bool, int or float, got {type(x).__name__}")
            param_names.append(name)
            params.append(x)
    # names are identifiers: joined with commas (a custom op's schema has no str lists)
    return forward(q, k, v, key, scale, ",".join(tensor_names), tensors, ",".join(param_names), params)


def _names(joined: str) -> list:
    return joined.split(",") if joined else []


def _dense(x):
    """``x`` contiguous, and on CUDA 16-byte aligned (the kernels' vector accesses): a
    contiguous view at an odd offset is copied once, like a non-contiguous tensor."""
    x = x.contiguous()
    if x.is_cuda and x.data_ptr() % 16:
        x = x.clone()
    return x


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
) -> tuple[torch.Tensor, torch.Tensor]:
    inner = _lookup(key)
    o_shape, lse_shape = _out_shapes(q, k, v)
    o = torch.empty(o_shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    caps = [(n, t.contiguous()) for n, t in zip(_names(tensor_names), tensors)]
    stream = torch.cuda.current_stream(q.device).cuda_stream if q.is_cuda else 0
    # the CPU kernel uses as many threads as torch's intra-op pool
    threads = 0 if q.is_cuda else torch.get_num_threads()
    # CUDA: launched on torch's current stream of q's device, reading q/k/v and writing
    # o/lse in place (no copy, no synchronization)
    inner.forward(
        _dense(q), _dense(k), _dense(v), o, lse, scale, caps,
        list(zip(_names(param_names), params)), stream, threads,
    )
    return o, lse


@forward.register_fake
def _(q, k, v, key, scale, tensor_names, tensors, param_names, params):
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
    dlse: torch.Tensor,
    key: str,
    scale: Optional[float],
    tensor_names: str,
    tensors: list[torch.Tensor],
    param_names: str,
    params: list[int | float | bool],
    tensor_grads: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """dq, dk, dv and the gradients of the captured tensors flagged in `tensor_grads`
    (empty tensors for the others) of ``forward``'s outputs (o, lse) given dO and dLSE."""
    inner = _lookup(key)
    names = _names(tensor_names)
    if q.is_cuda:
        # the CUDA backward (Bound::backward on a CUDA binding) takes host tensors: this
        # path copies to the host and back (it synchronizes; not zero-copy, unlike the
        # forward, which runs on the caller's stream)
        dev = q.device
        host = lambda t: t.detach().to("cpu").contiguous()  # noqa: E731
        hq, hk, hv, ho, hl, hdo, hdl = (host(x) for x in (q, k, v, o, lse, do, dlse))
        htensors = [host(t) for t in tensors]
        hdq, hdk, hdv = torch.empty_like(hq), torch.empty_like(hk), torch.empty_like(hv)
        hdts = [torch.empty_like(t) if g else t.new_empty(0) for t, g in zip(htensors, tensor_grads)]
        inner.backward(
            hq, hk, hv, ho, hl, hdo, hdl, hdq, hdk, hdv, scale, list(zip(names, htensors)),
            list(zip(_names(param_names), params)), [(n, d) for n, d, g in zip(names, hdts, tensor_grads) if g],
            0, True,
        )
        return hdq.to(dev), hdk.to(dev), hdv.to(dev), [d.to(dev) for d in hdts]
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    dq, dk, dv = like(q), like(k), like(v)
    dts = [like(t) if g else t.new_empty(0) for t, g in zip(tensors, tensor_grads)]
    caps = [(n, t.contiguous()) for n, t in zip(names, tensors)]
    wanted = [(n, d) for n, d, g in zip(names, dts, tensor_grads) if g]
    c = lambda x: x.contiguous()  # noqa: E731
    inner.backward(
        c(q), c(k), c(v), c(o), c(lse), c(do), c(dlse), dq, dk, dv, scale, caps,
        list(zip(_names(param_names), params)), wanted, torch.get_num_threads(),
    )
    return dq, dk, dv, dts


@backward.register_fake
def _(q, k, v, o, lse, do, dlse, key, scale, tensor_names, tensors, param_names, params, tensor_grads):
    dts = [torch.empty_like(t) if g else t.new_empty(0) for t, g in zip(tensors, tensor_grads)]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dts


def _setup_context(ctx, inputs, output):
    q, k, v, key, scale, tensor_names, tensors, param_names, params = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, *tensors)
    ctx.attnc = (key, scale, tensor_names, param_names, params)
    ctx.tensor_grads = [t.requires_grad for t in tensors]


def _backward(ctx, do, dlse):
    q, k, v, o, lse, *tensors = ctx.saved_tensors
    key, scale, tensor_names, param_names, params = ctx.attnc
    if do is None:
        do = torch.zeros_like(o)
    if dlse is None:
        dlse = torch.zeros_like(lse)
    dq, dk, dv, dts = backward(
        q, k, v, o, lse, do, dlse, key, scale, tensor_names, tensors, param_names, params, ctx.tensor_grads
    )
    grads = [d if g else None for d, g in zip(dts, ctx.tensor_grads)]
    # params are Python scalars: no gradient (a learned scalar is a 1-element tensor capture)
    # (torch takes a non-empty scalar list as one leaf of the input structure, an empty
    # one as an empty list)
    return dq, dk, dv, None, None, None, grads, None, (None if params else [])


forward.register_autograd(_backward, setup_context=_setup_context)
