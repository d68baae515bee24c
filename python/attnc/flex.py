"""FlexAttention's ``score_mod`` / ``mask_mod`` as attnc attentions, with no source to write.

    import attnc.flex
    port = attnc.flex.port(score_mod=rel_bias, mask_mod=causal)   # traced once
    print(port.source)                                            # the .attn it wrote
    o = port(q, k, v)                                             # captured tensors passed for you
    o = attnc.flex.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm)  # drop-in

``port`` calls the functions once with symbolic indices (``b``, ``h``, ``q_idx``,
``kv_idx`` as int32 and ``score`` as float32, the dtypes FlexAttention gives them),
records what they compute through torch's ``__torch_function__`` protocol and Python's
operators, and writes the equivalent attnc source (docs/language.md §9 by hand): every
operation a ``let`` of its type, torch's type promotion made explicit (``q_idx / 2`` is a
float division, ``q_idx // 2`` a floor division, ``score + (q_idx - kv_idx)`` converts
the int), tensors the closures capture ``tensor`` declarations of their shape (read with
torch's wrap-around for negative indices; bool and small int tensors passed as int32,
float64 as float32; a one-element tensor such as a learnable soft-cap read as ``t[0]``),
Python numbers constants; a value only one branch of a ``torch.where`` uses is computed
inside that branch (its tensor reads guarded by the condition, so a ``score_mod`` that
masks with ``torch.where(cond, .., -inf)`` has its condition lifted into the mask and gets
block sparsity). The result is compiled (``attnc.compile``) and kept per
source text, so porting the same functions again reuses the compiled kernels.

A ``FlexPort`` is called like ``flex_attention`` (``scale``, ``return_lse``,
``return_aux=AuxRequest(lse=True)``, ``enable_gqa`` accepted; GQA always works) and passes the captured tensor objects
themselves: in-place updates are seen, and gradients reach tensors that require them
(a learned bias, a soft-cap). Values computed in Python while tracing (``.item()``, a
Python ``if`` on a number) are fixed in the source; re-port to change them.

Under ``torch.compile(model, fullgraph=True)``, port outside the compiled region and call
the port inside it (the call is attnc's custom op); ``flex_attention`` compiles too, with
a graph break at its tracing.

What cannot be ported raises ``AttncError`` E0330 naming the operation: Python control
flow on a traced value (``if q_idx > 5:``; use ``torch.where``), operations attnc has no
counterpart for (``sin``, bitwise operations on floats, slicing a captured tensor),
captured tensors of rank above 4 or with an unsupported dtype. Integer bitwise
operations (``&``, ``|``, ``^``, ``~``, ``<<``, ``>>``: Morton codes, hashes) port as
attnc's, with int32 semantics (a shift by 32 or more gives 0, or the sign for ``>>``).

In: Python functions over torch tensors. Out: attnc source, an ``Attention``, calls.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

import torch

from . import _error, compile as _compile

__all__ = ["port", "FlexPort", "flex_attention"]

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def _fail(message: str):
    return _error("E0330", f"attnc.flex: {message}")


def _float_literal(x: float) -> str:
    if math.isnan(x):
        return "(0.0 / 0.0)"
    if math.isinf(x):
        return "(1.0 / 0.0)" if x > 0 else "(-1.0 / 0.0)"
    text = repr(float(x))
    if "e" not in text and "." not in text:
        text += ".0"
    return f"({text})" if text.startswith("-") else text


_NAME = re.compile(r"\bv\d+\b")


class _Trace:
    """One function's body being written: its ``let``s and the tensors it captured."""

    def __init__(self, captured: "_Captured"):
        # (name, ty, expr, branches): branches (c, a, b) for a torch.where
        self.items: list = []
        self.captured = captured
        self.count = 0

    def let(self, ty: str, expr: str, branches=None) -> "_Sym":
        name = f"v{self.count}"
        self.count += 1
        self.items.append((name, ty, expr, branches))
        return _Sym(self, name, ty)

    def render(self, ret: str) -> str:
        """The body returning ``ret``. A ``let`` used only inside one branch of a
        ``torch.where`` (``if c { a } else { b }``) is written inside that branch, so that
        its tensor reads are guarded by the condition: they are performed only where the
        branch is taken (checked mode reports none where the ``where`` discards it), and a
        score that masks with ``-inf`` keeps no read outside its condition, which lets the
        compiler move the condition into the mask (block sparsity)."""
        # every use of a name, once: (user, (user, side)) where only one branch of the
        # user's where reads it, else (user, None): the name goes where the user goes
        uses: dict = {}
        for user, _, expr, br in self.items:
            sides = [set(_NAME.findall(e)) for e in br] if br is not None else None
            for name in set(_NAME.findall(expr)):
                branch = None
                if sides is not None and name not in sides[0] and (name in sides[1]) != (name in sides[2]):
                    branch = (user, 1 if name in sides[1] else 2)
                uses.setdefault(name, []).append((user, branch))
        for name in set(_NAME.findall(ret)):
            uses.setdefault(name, []).append((None, None))
        place = {}  # name -> (where name, 1 | 2) or None (top level)
        for name, _, _, _ in reversed(self.items):
            spots = {branch or place.get(user) for user, branch in uses.get(name, [])}
            place[name] = spots.pop() if len(spots) == 1 else None

        def lines(spot) -> list:
            out = []
            for name, ty, expr, br in self.items:
                if place.get(name) != spot:
                    continue
                if br is not None:
                    c, a, b = br
                    arm = lambda side, e: " ".join(lines((name, side)) + [e])  # noqa: E731
                    expr = f"if {c} {{ {arm(1, a)} }} else {{ {arm(2, b)} }}"
                out.append(f"let {name}: {ty} = {expr};")
            return out

        return "\n".join([f"    {x}" for x in lines(None)] + [f"    {ret}"])


class _Captured:
    """The real tensors the traced functions read, by identity, with their declarations."""

    def __init__(self):
        self.tensors: list = []  # (name, tensor, elem, dims, convert)

    def name_of(self, t: torch.Tensor) -> tuple:
        for name, x, elem, dims, _ in self.tensors:
            if x is t:
                return name, elem, dims
        if t.dim() > 4:
            raise _fail(f"a captured tensor of rank {t.dim()} {tuple(t.shape)}: attnc tensors have rank 1 to 4")
        if t.numel() == 0:
            raise _fail(f"a captured tensor with no elements {tuple(t.shape)}")
        dt = t.dtype
        if dt in (torch.float32, torch.float16, torch.bfloat16):
            elem, convert = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dt], None
        elif dt == torch.float64:
            elem, convert = "f32", "float"
        elif dt in (torch.int32, torch.int64):
            elem, convert = ("i32" if dt == torch.int32 else "i64"), None
        elif dt in (torch.bool, torch.int8, torch.uint8, torch.int16):
            elem, convert = "i32", "int"
        else:
            raise _fail(f"a captured tensor of dtype {dt}: attnc reads f32/f16/bf16/i32/i64 (and bool or "
                        f"small int tensors as i32)")
        dims = list(t.shape) if t.dim() > 0 else [1]
        name = f"c{len(self.tensors)}"
        self.tensors.append((name, t, elem, dims, convert))
        return name, elem, dims

    def declarations(self) -> list:
        return [f"tensor {n}: {e}[{', '.join(str(d) for d in dims)}];" for n, _, e, dims, _ in self.tensors]

    def values(self, used=None) -> dict:
        """The tensors as the source declares them (``used``: only those names, the ones
        the compiled program reads after its dead code went)."""
        out = {}
        for name, t, _, _, convert in self.tensors:
            if used is not None and name not in used:
                continue
            x = t.reshape(1) if t.dim() == 0 else t
            if convert == "float":
                x = x.float()
            elif convert == "int":
                x = x.to(torch.int32)
            out[name] = x
        return out


class _Partial:
    """A captured tensor indexed along its first dims only (``bias[h]`` before ``[q_idx]``)."""

    def __init__(self, trace: _Trace, tensor: torch.Tensor, index: list):
        self.trace, self.tensor, self.index = trace, tensor, index

    def __getitem__(self, idx):
        return _read(self.trace, self.tensor, self.index + _as_list(idx))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        raise _fail(f"`{_name(func)}` of a partly indexed captured tensor {tuple(self.tensor.shape)}: "
                    f"index all {self.tensor.dim()} dims")


def _as_list(idx) -> list:
    return list(idx) if isinstance(idx, tuple) else [idx]


def _read(trace: _Trace, t: torch.Tensor, index: list):
    rank = max(t.dim(), 1)
    if len(index) < t.dim():
        return _Partial(trace, t, index)
    if len(index) > rank:
        raise _fail(f"{len(index)} indices into a captured tensor of shape {tuple(t.shape)}")
    name, elem, dims = trace.captured.name_of(t)
    parts = []
    for i, (x, n) in enumerate(zip(index, dims)):
        if isinstance(x, slice) or x is None or x is Ellipsis:
            raise _fail(f"slicing a captured tensor {tuple(t.shape)} (index {i}): index every dim with one value")
        if isinstance(x, bool):
            x = int(x)
        if isinstance(x, int):
            if not -n <= x < n:
                raise _fail(f"index {x} out of range for dim {i} of size {n} of a captured tensor")
            parts.append(str(x % n))
            continue
        if isinstance(x, torch.Tensor) and (x.numel() != 1 or x.dtype.is_floating_point or x.dtype == torch.bool):
            raise _fail(f"a captured tensor indexed by a tensor of shape {tuple(x.shape)} and dtype {x.dtype}: "
                        f"index with the traced indices (or a one-element integer tensor)")
        s = _sym(trace, x)  # (a one-element integer tensor: read at call time, as any capture)
        if s.ty == "f32":
            raise _fail("a captured tensor indexed by a float: convert the index with .int() or .long()")
        s = s.cast("i32")
        if s.leaf:
            parts.append(s.expr)  # b, h, q_idx, kv_idx: never negative
        else:
            # torch's wrap-around of negative indices (as its compiled kernels do)
            parts.append(trace.let("i32", f"if {s.expr} < 0 {{ {s.expr} + {n} }} else {{ {s.expr} }}").expr)
    read = f"{name}[{', '.join(parts)}]"
    if t.dtype == torch.bool:
        return trace.let("bool", f"{read} != 0")
    return trace.let("f32" if elem in ("f32", "f16", "bf16") else "i32", read)


def _name(func) -> str:
    return getattr(func, "__name__", str(func)).strip("_")


def _sym(trace: _Trace, x) -> "_Sym":
    """A traced value for an operand: a ``_Sym``, a Python number, or a one-element
    captured tensor."""
    if isinstance(x, _Sym):
        return x
    if isinstance(x, bool):
        return _Sym(trace, "true" if x else "false", "bool", literal=True)
    if isinstance(x, int):
        if _I32_MIN <= x <= _I32_MAX:
            text = str(x) if x >= 0 else f"({x})"
            return _Sym(trace, text, "i32", literal=True, value=x)
        return _Sym(trace, _float_literal(float(x)), "f32", literal=True)
    if isinstance(x, float):
        return _Sym(trace, _float_literal(x), "f32", literal=True)
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise _fail(f"a captured tensor of shape {tuple(x.shape)} used without indices: index it with the "
                        f"traced indices (a one-element tensor is read as a number)")
        return _read(trace, x, [0] * max(x.dim(), 1))
    if isinstance(x, _Partial):
        raise _fail(f"a partly indexed captured tensor {tuple(x.tensor.shape)} used as a value: index all its dims")
    raise _fail(f"a value of type {type(x).__name__} in a traced expression")


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT_DTYPES = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)


class _Sym:
    """A traced value: an attnc expression (a ``let`` name, a parameter or a literal) of
    type ``i32``, ``f32`` or ``bool``."""

    def __init__(self, trace: _Trace, expr: str, ty: str, literal: bool = False, leaf: bool = False,
                 value: Optional[int] = None):
        self.trace, self.expr, self.ty, self.literal, self.leaf, self.value = trace, expr, ty, literal, leaf, value

    # -- conversions --------------------------------------------------------------
    def cast(self, ty: str) -> "_Sym":
        if ty == self.ty:
            return self
        if ty == "bool" and self.literal and self.value is not None:
            return _Sym(self.trace, "true" if self.value else "false", "bool", literal=True)
        if ty == "bool":
            zero = "0.0" if self.ty == "f32" else "0"
            return self.trace.let("bool", f"{self.expr} != {zero}")
        if self.literal and self.ty == "i32" and ty == "f32":
            return _Sym(self.trace, _float_literal(float(self.value)), "f32", literal=True)
        return self.trace.let(ty, f"{self.expr} as {ty}")

    def __bool__(self):
        raise _fail("Python control flow on a traced value (`if`, `and`, `or`, `not`, `bool(...)`): write it with "
                    "torch.where(cond, a, b) or the operators & | ~")

    def __index__(self):
        raise _fail("a traced value used as a Python integer (range, list index, ...)")

    __int__ = __index__

    def __float__(self):
        raise _fail("a traced value used as a Python float (math.*, float(...)): use the torch functions")

    def __iter__(self):
        raise _fail("iterating over a traced value")

    def __repr__(self) -> str:
        return f"<attnc.flex traced {self.ty} {self.expr}>"

    # -- operators ----------------------------------------------------------------
    def __add__(self, o):
        return _arith(self.trace, "+", self, o)

    def __radd__(self, o):
        return _arith(self.trace, "+", o, self)

    def __sub__(self, o):
        return _arith(self.trace, "-", self, o)

    def __rsub__(self, o):
        return _arith(self.trace, "-", o, self)

    def __mul__(self, o):
        return _arith(self.trace, "*", self, o)

    def __rmul__(self, o):
        return _arith(self.trace, "*", o, self)

    def __truediv__(self, o):
        return _truediv(self.trace, self, o)

    def __rtruediv__(self, o):
        return _truediv(self.trace, o, self)

    def __floordiv__(self, o):
        return _floordiv(self.trace, self, o)

    def __rfloordiv__(self, o):
        return _floordiv(self.trace, o, self)

    def __mod__(self, o):
        return _arith(self.trace, "%", self, o)

    def __rmod__(self, o):
        return _arith(self.trace, "%", o, self)

    def __pow__(self, o):
        return _pow(self.trace, self, o)

    def __rpow__(self, o):
        return _pow(self.trace, o, self)

    def __neg__(self):
        a = self if self.ty != "bool" else self.cast("i32")
        return self.trace.let(a.ty, f"-{a.expr}")

    def __pos__(self):
        return self

    def __abs__(self):
        return _call(self.trace, "abs", self)

    def __eq__(self, o):  # noqa: D105 (a traced comparison, not Python equality)
        return _compare(self.trace, "==", self, o)

    def __ne__(self, o):
        return _compare(self.trace, "!=", self, o)

    def __lt__(self, o):
        return _compare(self.trace, "<", self, o)

    def __le__(self, o):
        return _compare(self.trace, "<=", self, o)

    def __gt__(self, o):
        return _compare(self.trace, ">", self, o)

    def __ge__(self, o):
        return _compare(self.trace, ">=", self, o)

    __hash__ = object.__hash__

    def __and__(self, o):
        return _logic(self.trace, "&", self, o)

    __rand__ = __and__

    def __or__(self, o):
        return _logic(self.trace, "|", self, o)

    __ror__ = __or__

    def __xor__(self, o):
        return _logic(self.trace, "!=", self, o)

    __rxor__ = __xor__

    def __invert__(self):
        if self.ty == "f32":
            raise _fail("`~` on a float: bitwise not takes an integer or a bool")
        return self.trace.let(self.ty, f"!{self.expr}")

    def __lshift__(self, o):
        return _shift(self.trace, "<<", self, o)

    def __rlshift__(self, o):
        return _shift(self.trace, "<<", o, self)

    def __rshift__(self, o):
        return _shift(self.trace, ">>", self, o)

    def __rrshift__(self, o):
        return _shift(self.trace, ">>", o, self)

    # -- tensor methods (x.abs(), x.float(), x.clamp(...), ...) via torch's protocol --
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        trace = next((a.trace for a in _flat(args, kwargs) if isinstance(a, (_Sym, _Partial))), None)
        if trace is None:  # (cannot happen: torch calls here only with one of ours)
            return NotImplemented
        return _torch_op(trace, func, args, kwargs)

    def __getattr__(self, name):
        # tensor methods torch does not route through __torch_function__ for a non-tensor
        method = getattr(torch.Tensor, name, None)
        if method is None or name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: _torch_op(self.trace, method, (self, *a), k)


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _promote(trace: _Trace, a, b, floats: bool = False):
    """Both operands as one type (torch's promotion: any float makes both float; bools
    take part as ints), or both float when ``floats``."""
    a, b = _sym(trace, a), _sym(trace, b)
    ty = "f32" if floats or "f32" in (a.ty, b.ty) else "i32"
    return a.cast(ty), b.cast(ty), ty


def _arith(trace, op, a, b):
    a, b, ty = _promote(trace, a, b)
    return trace.let(ty, f"{a.expr} {op} {b.expr}")


def _truediv(trace, a, b):
    a, b, _ = _promote(trace, a, b, floats=True)
    return trace.let("f32", f"{a.expr} / {b.expr}")


def _floordiv(trace, a, b):
    a, b, ty = _promote(trace, a, b)
    if ty == "i32":
        return trace.let("i32", f"{a.expr} / {b.expr}")
    return trace.let("f32", f"floor({a.expr} / {b.expr})")


def _pow(trace, a, b):
    a, b = _sym(trace, a), _sym(trace, b)
    if a.ty != "f32" and b.ty == "i32" and b.literal and b.value is not None and 0 <= b.value <= 8:
        a = a.cast("i32")
        if b.value == 0:
            return _sym(trace, 1)
        return trace.let("i32", " * ".join([a.expr] * b.value))
    a, b, _ = _promote(trace, a, b, floats=True)
    return trace.let("f32", f"pow({a.expr}, {b.expr})")


def _compare(trace, op, a, b):
    a, b = _sym(trace, a), _sym(trace, b)
    if a.ty == "bool" and b.ty == "bool" and op in ("==", "!="):
        return trace.let("bool", f"{a.expr} {op} {b.expr}")
    a, b, _ = _promote(trace, a, b)
    return trace.let("bool", f"{a.expr} {op} {b.expr}")


def _logic(trace, op, a, b):
    """``&``, ``|``, ``^`` (``op`` "&", "|", "!="): logical on two bools, bitwise on
    integers (a bool operand taking part as 0/1, as torch promotes it)."""
    a, b = _sym(trace, a), _sym(trace, b)
    if a.ty == "bool" and b.ty == "bool":
        return trace.let("bool", f"{a.expr} {op} {b.expr}")
    if "f32" in (a.ty, b.ty):
        raise _fail(f"`{'^' if op == '!=' else op}` on a float: bitwise operators take integers")
    a, b = a.cast("i32"), b.cast("i32")
    return trace.let("i32", f"{a.expr} {'^' if op == '!=' else op} {b.expr}")


def _shift(trace, op, a, b):
    a, b = _sym(trace, a), _sym(trace, b)
    if "f32" in (a.ty, b.ty):
        raise _fail(f"`{op}` on a float: shifts take integers")
    a, b = a.cast("i32"), b.cast("i32")
    return trace.let("i32", f"{a.expr} {op} {b.expr}")


def _call(trace, f, *args, ty: Optional[str] = None):
    """A builtin of the float (``ty`` f32) or of the operands' promoted type."""
    syms = [_sym(trace, a) for a in args]
    t = ty or ("f32" if any(s.ty == "f32" for s in syms) else "i32")
    syms = [s.cast(t) for s in syms]
    return trace.let(t, f"{f}({', '.join(s.expr for s in syms)})")


def _where(trace, c, a, b):
    """``torch.where(c, a, b)``: two bools stay bools, else torch's promotion."""
    c = _sym(trace, c).cast("bool")
    a, b = _sym(trace, a), _sym(trace, b)
    if a.ty == "bool" and b.ty == "bool":
        ty = "bool"
    else:
        a, b, ty = _promote(trace, a, b)
    return trace.let(ty, f"if {c.expr} {{ {a.expr} }} else {{ {b.expr} }}", (c.expr, a.expr, b.expr))


def _clamp(trace, x, lo=None, hi=None):
    x = _sym(trace, x)
    if lo is not None:
        x = _call(trace, "max", x, lo)
    if hi is not None:
        x = _call(trace, "min", x, hi)
    return x


def _to(trace, x, *args, **kwargs):
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            dtype = a.dtype
    x = _sym(trace, x)
    if dtype is None:
        return x  # a device move: nothing to do
    if dtype == torch.bool:
        return x.cast("bool")
    if dtype in _FLOAT_DTYPES:
        return x.cast("f32")
    if dtype in _INT_DTYPES:
        return x.cast("i32")
    raise _fail(f"a conversion to {dtype}")


_UNARY_F32 = {"tanh": "tanh", "exp": "exp", "exp2": "exp2", "log": "log", "log2": "log2", "sqrt": "sqrt",
              "sigmoid": "sigmoid", "floor": "floor", "ceil": "ceil"}


def _torch_op(trace: _Trace, func, args, kwargs):
    n = _name(func)
    a = list(args)
    if n.startswith("r") and n[1:] in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or",
                                       "xor", "lshift", "rshift") and len(a) == 2:
        n, a = n[1:], [a[1], a[0]]
    op = _OPS.get(n)
    if op is None:
        raise _fail(f"`{n}` has no attnc counterpart (docs/language.md §7 lists the builtins; §9 the port table)")
    return op(trace, *a, **kwargs)


def _div(trace, x, y, rounding_mode):
    """``torch.div``: true division, or floor division with ``rounding_mode="floor"``."""
    if rounding_mode is None:
        return _truediv(trace, x, y)
    if rounding_mode == "floor":
        return _floordiv(trace, x, y)
    raise _fail("div(rounding_mode='trunc') has no attnc counterpart: use //")


def _binary(f):
    return lambda trace, x, y, **k: f(trace, x, y)


def _unary_f32(name):
    def op(trace, x, **k):
        s = _sym(trace, x)
        return trace.let("f32", f"{name}({s.cast('f32').expr})")
    return op


def _getitem(trace, t, idx, **k):
    if isinstance(t, _Partial):
        return t[idx]
    if isinstance(t, torch.Tensor):
        return _read(trace, t, _as_list(idx))
    raise _fail("indexing a traced value (it is a number, not a tensor)")


def _min_max(which):
    def op(trace, x, other=None, dim=None, **k):
        if other is None or dim is not None or not isinstance(other, (_Sym, int, float, torch.Tensor)):
            raise _fail(f"`{which}` over a dim (a reduction) has no attnc counterpart: use torch.{which}imum(a, b)")
        return _call(trace, which, x, other)
    return op


_OPS: dict = {
    "add": lambda trace, x, y, alpha=1, **k: _arith(trace, "+", x, y if alpha == 1 else _arith(trace, "*", y, alpha)),
    "sub": lambda trace, x, y, alpha=1, **k: _arith(trace, "-", x, y if alpha == 1 else _arith(trace, "*", y, alpha)),
    "subtract": lambda trace, x, y, **k: _arith(trace, "-", x, y),
    "mul": _binary(lambda t, x, y: _arith(t, "*", x, y)),
    "multiply": _binary(lambda t, x, y: _arith(t, "*", x, y)),
    "truediv": _binary(_truediv),
    "true_divide": _binary(_truediv),
    "div": lambda trace, x, y, rounding_mode=None, **k: _div(trace, x, y, rounding_mode),
    "divide": lambda trace, x, y, **k: _OPS["div"](trace, x, y, **k),
    "floordiv": _binary(_floordiv),
    "floor_divide": _binary(_floordiv),
    "mod": _binary(lambda t, x, y: _arith(t, "%", x, y)),
    "remainder": _binary(lambda t, x, y: _arith(t, "%", x, y)),
    "pow": _binary(_pow),
    "neg": lambda trace, x, **k: _sym(trace, x).__neg__(),
    "negative": lambda trace, x, **k: _sym(trace, x).__neg__(),
    "pos": lambda trace, x, **k: _sym(trace, x),
    "abs": lambda trace, x, **k: _call(trace, "abs", x),
    "absolute": lambda trace, x, **k: _call(trace, "abs", x),
    "eq": _binary(lambda t, x, y: _compare(t, "==", x, y)),
    "ne": _binary(lambda t, x, y: _compare(t, "!=", x, y)),
    "lt": _binary(lambda t, x, y: _compare(t, "<", x, y)),
    "le": _binary(lambda t, x, y: _compare(t, "<=", x, y)),
    "gt": _binary(lambda t, x, y: _compare(t, ">", x, y)),
    "ge": _binary(lambda t, x, y: _compare(t, ">=", x, y)),
    "less": _binary(lambda t, x, y: _compare(t, "<", x, y)),
    "greater": _binary(lambda t, x, y: _compare(t, ">", x, y)),
    "and": _binary(lambda t, x, y: _logic(t, "&", x, y)),
    "or": _binary(lambda t, x, y: _logic(t, "|", x, y)),
    "xor": _binary(lambda t, x, y: _logic(t, "!=", x, y)),
    "logical_and": _binary(lambda t, x, y: _logic(t, "&", _sym(t, x).cast("bool"), _sym(t, y).cast("bool"))),
    "logical_or": _binary(lambda t, x, y: _logic(t, "|", _sym(t, x).cast("bool"), _sym(t, y).cast("bool"))),
    "logical_xor": _binary(lambda t, x, y: _logic(t, "!=", _sym(t, x).cast("bool"), _sym(t, y).cast("bool"))),
    "logical_not": lambda trace, x, **k: _sym(trace, x).cast("bool").__invert__(),
    "bitwise_and": _binary(lambda t, x, y: _logic(t, "&", x, y)),
    "bitwise_or": _binary(lambda t, x, y: _logic(t, "|", x, y)),
    "bitwise_xor": _binary(lambda t, x, y: _logic(t, "!=", x, y)),
    "bitwise_not": lambda trace, x, **k: _sym(trace, x).__invert__(),
    "lshift": _binary(lambda t, x, y: _shift(t, "<<", x, y)),
    "rshift": _binary(lambda t, x, y: _shift(t, ">>", x, y)),
    "bitwise_left_shift": _binary(lambda t, x, y: _shift(t, "<<", x, y)),
    "bitwise_right_shift": _binary(lambda t, x, y: _shift(t, ">>", x, y)),
    "invert": lambda trace, x, **k: _sym(trace, x).__invert__(),
    "where": lambda trace, c, x, y, **k: _where(trace, c, x, y),
    "clamp": lambda trace, x, min=None, max=None, **k: _clamp(trace, x, min, max),
    "clip": lambda trace, x, min=None, max=None, **k: _clamp(trace, x, min, max),
    "clamp_min": lambda trace, x, min, **k: _clamp(trace, x, min, None),
    "clamp_max": lambda trace, x, max, **k: _clamp(trace, x, None, max),
    "minimum": _binary(lambda t, x, y: _call(t, "min", x, y)),
    "maximum": _binary(lambda t, x, y: _call(t, "max", x, y)),
    "fmin": _binary(lambda t, x, y: _call(t, "min", x, y, ty="f32")),
    "fmax": _binary(lambda t, x, y: _call(t, "max", x, y, ty="f32")),
    "min": _min_max("min"),
    "max": _min_max("max"),
    "relu": lambda trace, x, **k: _call(trace, "max", x, 0),
    "square": lambda trace, x, **k: _arith(trace, "*", x, x),
    "reciprocal": lambda trace, x, **k: _truediv(trace, 1.0, x),
    "rsqrt": lambda trace, x, **k: _truediv(trace, 1.0, _unary_f32("sqrt")(trace, x)),
    "log1p": lambda trace, x, **k: _unary_f32("log")(trace, _arith(trace, "+", 1.0, _sym(trace, x).cast("f32"))),
    "expm1": lambda trace, x, **k: _arith(trace, "-", _unary_f32("exp")(trace, x), 1.0),
    "float": lambda trace, x, *a, **k: _sym(trace, x).cast("f32"),
    "half": lambda trace, x, *a, **k: _sym(trace, x).cast("f32"),
    "bfloat16": lambda trace, x, *a, **k: _sym(trace, x).cast("f32"),
    "double": lambda trace, x, *a, **k: _sym(trace, x).cast("f32"),
    "int": lambda trace, x, *a, **k: _sym(trace, x).cast("i32"),
    "long": lambda trace, x, *a, **k: _sym(trace, x).cast("i32"),
    "short": lambda trace, x, *a, **k: _sym(trace, x).cast("i32"),
    "bool": lambda trace, x, *a, **k: _sym(trace, x).cast("bool"),
    "to": _to,
    "type": lambda trace, x, dtype=None, *a, **k: _to(trace, x, dtype),
    "type_as": lambda trace, x, other, **k: _to(trace, x, other.dtype if isinstance(other, torch.Tensor) else (
        torch.float32 if _sym(trace, other).ty == "f32" else torch.int32)),
    "contiguous": lambda trace, x, *a, **k: _sym(trace, x),
    "clone": lambda trace, x, *a, **k: _sym(trace, x),
    "detach": lambda trace, x, *a, **k: _sym(trace, x),
    "getitem": _getitem,
    "zeros_like": lambda trace, x, dtype=None, **k: _to(trace, _sym(trace, 0), dtype or _dtype_of(trace, x)),
    "ones_like": lambda trace, x, dtype=None, **k: _to(trace, _sym(trace, 1), dtype or _dtype_of(trace, x)),
    "full_like": lambda trace, x, v, dtype=None, **k: _to(trace, _sym(trace, v), dtype or _dtype_of(trace, x)),
    "sign": lambda trace, x, **k: _sign(trace, x),
    "new_ones": lambda trace, x, *a, dtype=None, **k: _to(trace, _sym(trace, 1), dtype or _dtype_of(trace, x)),
    "new_zeros": lambda trace, x, *a, dtype=None, **k: _to(trace, _sym(trace, 0), dtype or _dtype_of(trace, x)),
    "new_full": lambda trace, x, size, v, dtype=None, **k: _to(trace, _sym(trace, v), dtype or _dtype_of(trace, x)),
    **{k: _unary_f32(v) for k, v in _UNARY_F32.items()},
}


def _dtype_of(trace, x):
    s = _sym(trace, x)
    return {"f32": torch.float32, "i32": torch.int32, "bool": torch.bool}[s.ty]


def _sign(trace, x):
    s = _sym(trace, x)
    if s.ty == "bool":
        return s.cast("i32")
    zero, one = ("0.0", "1.0") if s.ty == "f32" else ("0", "1")
    return trace.let(s.ty, f"if {s.expr} > {zero} {{ {one} }} else {{ if {s.expr} < {zero} {{ -{one} }} else {{ {zero} }} }}")


def _body(fn: Callable, trace: _Trace, args, want: str, what: str) -> str:
    try:
        out = fn(*args)
    except Exception as e:
        if getattr(e, "code", None) == "E0330":
            raise
        raise _fail(f"tracing {what} `{getattr(fn, '__name__', fn)}` raised {type(e).__name__}: {e}") from e
    if isinstance(out, _Partial):
        raise _fail(f"{what} returned a partly indexed captured tensor")
    if isinstance(out, torch.Tensor) and out.numel() != 1:
        raise _fail(f"{what} returned a tensor of shape {tuple(out.shape)}, not a value per (b, h, q, kv)")
    s = _sym(trace, out)
    if want == "bool" and s.ty != "bool":
        raise _fail(f"{what} `{getattr(fn, '__name__', fn)}` returned a {s.ty} value, not a bool")
    s = s.cast(want)
    return trace.render(s.expr)


class FlexPort:
    """A ported pair of FlexAttention functions: ``source`` (the attnc text),
    ``attention`` (its compiled :class:`attnc.Attention`), ``captures`` (the tensors the
    functions read, by their names in the source). Called like ``flex_attention``."""

    def __init__(self, source: str, attention, captured: _Captured):
        self.source = source
        self.attention = attention
        self._captured = captured
        # the tensors the compiled program reads (a traced read whose value is unused is
        # dropped by the compiler with its declaration's use)
        self._used = frozenset(name for name, _, _ in attention.tensors)

    @property
    def captures(self) -> dict:
        return self._captured.values(self._used)

    def __call__(self, query, key, value, *, scale: Optional[float] = None, enable_gqa: bool = False,
                 return_lse: bool = False, deterministic: bool = True, return_aux=None):
        lse = _wants_lse(return_lse, return_aux)
        out = self.attention(query, key, value, scale=scale, return_lse=lse, deterministic=deterministic,
                             **self._values(query))
        return _with_aux(out, lse, return_aux)

    def _values(self, q) -> dict:
        """The captured tensors as the source declares them, on q's device (else an error
        naming the tensor by its shape: the user never saw its name in the source)."""
        values = self._captured.values(self._used)
        device = getattr(q, "device", None)
        for name, x in values.items():
            if device is not None and x.device != device:
                raise _error("E0314", f"attnc.flex: a tensor the functions capture, shape {tuple(x.shape)} "
                             f"(`{name}` in the ported source), is on {x.device} and q on {device}: make it "
                             f"on q's device (FlexAttention needs that too)")
        return values

    def decode(self, q, k_cache, v_cache, seq_lens, page_table=None, *, scale: Optional[float] = None,
               return_lse: bool = False):
        """New query rows against a KV cache (:meth:`attnc.Attention.decode`): the mask and
        score see logical positions, so a ``mask_mod`` written for prefill is right here."""
        return self.attention.decode(q, k_cache, v_cache, seq_lens, page_table, scale=scale, return_lse=return_lse,
                                     **self._values(q))

    def __repr__(self) -> str:
        return f"attnc.flex.FlexPort(captures={[n for n, *_ in self._captured.tensors]})\n{self.source}"


# compiled sources, so that porting the same functions again keeps their kernels
_MODULES: dict = {}


def port(score_mod: Optional[Callable] = None, mask_mod: Optional[Callable] = None) -> FlexPort:
    """Traces FlexAttention's ``score_mod(score, b, h, q_idx, kv_idx)`` and/or
    ``mask_mod(b, h, q_idx, kv_idx)`` (module docs) into attnc source and compiles it."""
    captured = _Captured()
    parts = []
    fields = []
    if mask_mod is not None:
        t = _Trace(captured)
        leaves = [_Sym(t, n, "i32", leaf=True) for n in ("b", "h", "q", "kv")]
        parts.append("mask m(b, h, q, kv) {\n" + _body(mask_mod, t, leaves, "bool", "mask_mod") + "\n}")
        fields.append("mask = m;")
    if score_mod is not None:
        t = _Trace(captured)
        leaves = [_Sym(t, "s", "f32", leaf=True)] + [_Sym(t, n, "i32", leaf=True) for n in ("b", "h", "q", "kv")]
        parts.append("score f(s, b, h, q, kv) {\n" + _body(score_mod, t, leaves, "f32", "score_mod") + "\n}")
        fields.append("score = f;")
    source = "\n".join(["// written by attnc.flex.port from FlexAttention functions", *captured.declarations(),
                        *parts, "attention flex { " + " ".join(fields) + " }", ""])
    attention = _MODULES.get(source)
    if attention is None:
        try:
            attention = _compile(source, name="<attnc.flex>").attention("flex")
        except Exception as e:
            raise _fail(f"the ported source did not compile (a bug in attnc.flex; please report it):\n{source}\n{e}") \
                from e
        if len(_MODULES) >= 256:
            _MODULES.clear()
        _MODULES[source] = attention
    return FlexPort(source, attention, captured)


def _wants_lse(return_lse: bool, return_aux) -> bool:
    """Whether a call returns the LSE: FlexAttention's ``return_aux=AuxRequest(...)``
    takes precedence over the deprecated ``return_lse``; ``max_scores`` is refused (as
    FlexAttention's FLASH backend does) with an error that says what to ask instead."""
    if return_aux is None:
        return bool(return_lse)
    if getattr(return_aux, "max_scores", False):
        raise _error("E0330", "attnc.flex: return_aux=AuxRequest(max_scores=True) is not supported "
                     "(the kernels return O and the LSE only, as FlexAttention's FLASH backend); "
                     "use return_aux=AuxRequest(lse=True)")
    return bool(getattr(return_aux, "lse", False))


def _with_aux(out, lse: bool, return_aux):
    """A call's result in FlexAttention's form: ``(o, AuxOutput(lse=..., max_scores=None))``
    when ``return_aux`` was given, else ``o`` or ``(o, lse)``."""
    if return_aux is None:
        return out
    o, l = out if lse else (out, None)
    try:
        from torch.nn.attention.flex_attention import AuxOutput
    except ImportError:  # a PyTorch without it: the same fields by name
        from collections import namedtuple
        AuxOutput = namedtuple("AuxOutput", ["lse", "max_scores"])
    return o, AuxOutput(lse=l, max_scores=None)


def flex_attention(query, key, value, score_mod: Optional[Callable] = None, block_mask=None,
                   scale: Optional[float] = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options=None, *, return_aux=None, mask_mod: Optional[Callable] = None,
                   deterministic: bool = True):
    """``torch.nn.attention.flex_attention.flex_attention``'s signature on attnc: the
    ``score_mod`` and the ``block_mask``'s ``mask_mod`` (or ``mask_mod`` given directly)
    ported at every call (:func:`port`; the compiled source is kept); the block mask's block
    layout is not read (attnc derives block sparsity from the mask itself), nor are
    ``kernel_options``. ``return_aux=AuxRequest(lse=True)`` returns ``(o, AuxOutput)`` as
    FlexAttention does (``max_scores`` is error E0330, as on its FLASH backend)."""
    if block_mask is not None:
        if mask_mod is not None:
            raise _fail("give either block_mask or mask_mod, not both")
        mask_mod = getattr(block_mask, "mask_mod", None)
        if mask_mod is None:
            raise _fail(f"block_mask {type(block_mask).__name__} has no mask_mod")
        if getattr(mask_mod, "__name__", "") == "noop_mask":
            mask_mod = None
    # traced at every call, like FlexAttention's eager calls: a closure's or a global's
    # tensor replaced between calls is the one read (the compiled source, and with it the
    # kernels, is reused while the text is the same)
    _wants_lse(return_lse, return_aux)  # refuses max_scores before tracing
    p = port(score_mod, mask_mod)
    return p(query, key, value, scale=scale, enable_gqa=enable_gqa, return_lse=return_lse,
             deterministic=deterministic, return_aux=return_aux)
