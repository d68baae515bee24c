//! Type checking and lowering of expressions, fns, masks, scores and attentions to IR.
//!
//! In: AST items and the file's [`Items`] table. Out: IR [`Function`]s (or `None`) and
//! diagnostics. Type checking and lowering are one walk: each expression yields its IR
//! value and type, or `None` after reporting an error (callers then stay quiet, so one
//! mistake gives one diagnostic). Helper fns, masks and scores called from other code
//! are inlined; while a callee's body is inlined its own errors are not reported again
//! (they were reported when the callee was checked on its own).
//!
//! Guards: the lowering tracks the condition under which the source evaluates the
//! current expression (`if` branches, right operands of `&&`/`||`); tensor reads record
//! it as their guard (see `ir`).

use super::builtins;
use super::{ItemRef, Items, type_of_name, unknown_type};
use crate::diag::Diagnostic;
use crate::ir::{
    Arg, BinOp, Cmp, FnKind, Function, Inst, ParamId, Program, Scalar, TensorId, Type, UnOp, Value,
};
use crate::passes;
use attnc_grammar::ast::{self, BinOp as AstBin, Expr, ExprKind, Span, UnOp as AstUn};

/// Largest function (in instructions) that inlining may produce.
pub const MAX_INSTS: usize = 200_000;

/// Deepest chain of nested helper calls (fns, masks, scores) that inlining follows;
/// deeper chains are rejected (E0115) instead of exhausting the stack.
pub const MAX_INLINE_DEPTH: usize = 128;

/// Deepest expression nesting the lowering follows, summed over the inlined call chain
/// (the parser bounds one item's nesting; inlining stacks them). Deeper code is rejected
/// (E0115); the bound keeps the recursion within a 2 MiB thread stack.
pub const MAX_NESTING: usize = 1024;

type Typed = Option<(Value, Type)>;

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    /// Evaluating a `const`: no params, tensors or arguments.
    Const,
    /// Inside a fn, mask, score or attention.
    Body,
}

struct Lowerer<'a, 'i> {
    items: &'i Items<'a>,
    f: Function,
    scopes: Vec<Vec<(String, Value, Type)>>,
    path: Option<Value>,
    stack: Vec<(String, Span)>,
    diags: &'i mut Vec<Diagnostic>,
    quiet: usize,
    /// The call, in the item being checked, whose inlining is in progress.
    root_call: Option<Span>,
    ctx: Ctx,
    /// E0113 or E0115 was reported: stop lowering (every step returns `None`).
    too_large: bool,
    /// In a const: consts from this slot on are not yet defined (invisible).
    const_limit: usize,
    /// Current expression nesting (over inlined bodies too), bounded by [`MAX_NESTING`].
    nesting: usize,
}

fn is_int_literal(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Int(_) => true,
        ExprKind::Unary(AstUn::Neg, inner) => is_int_literal(inner),
        _ => false,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl<'a, 'i> Lowerer<'a, 'i> {
    fn new(items: &'i Items<'a>, kind: FnKind, ctx: Ctx, diags: &'i mut Vec<Diagnostic>) -> Self {
        Lowerer {
            items,
            f: Function::new(kind),
            scopes: vec![Vec::new()],
            path: None,
            stack: Vec::new(),
            diags,
            quiet: 0,
            root_call: None,
            ctx,
            too_large: false,
            const_limit: usize::MAX,
            nesting: 0,
        }
    }

    fn error(&mut self, d: Diagnostic) {
        if self.quiet == 0 {
            self.diags.push(d);
        }
    }

    fn push(&mut self, inst: Inst, ty: Type, span: Span) -> Value {
        if self.f.len() >= MAX_INSTS && !self.too_large {
            self.too_large = true;
            let at = self.root_call.unwrap_or(span);
            let d = Diagnostic::error("E0113", at, "this code is too large after inlining helper functions")
                .with_label("inlining grows past here")
                .with_hint(format!(
                    "the limit is {MAX_INSTS} IR instructions; call helpers fewer times or bind results with `let`"
                ));
            self.diags.push(d);
        }
        self.f.push(inst, ty, span)
    }

    fn guard(&mut self, span: Span) -> Value {
        match self.path {
            Some(v) => v,
            None => self.push(Inst::ConstBool(true), Type::Bool, span),
        }
    }

    /// Runs `body` with the path condition extended by `cond` (or its negation).
    fn under<T>(
        &mut self,
        cond: Value,
        negate: bool,
        span: Span,
        body: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let c = if negate {
            self.push(Inst::Unary(UnOp::Not, cond), Type::Bool, span)
        } else {
            cond
        };
        let saved = self.path;
        let new = match saved {
            Some(p) => self.push(Inst::Binary(BinOp::And, p, c), Type::Bool, span),
            None => c,
        };
        self.path = Some(new);
        let r = body(self);
        self.path = saved;
        r
    }

    fn lookup_local(&self, name: &str) -> Option<(Value, Type)> {
        for scope in self.scopes.iter().rev() {
            if let Some((_, v, t)) = scope.iter().rev().find(|(n, _, _)| n == name) {
                return Some((*v, *t));
            }
        }
        None
    }

    fn suggest(&self, name: &str) -> Option<String> {
        let mut best: Option<(usize, String)> = None;
        if name.chars().count() < 3 {
            return None; // every one-letter name is near every other: no useful hint
        }
        let locals = self.scopes.iter().flatten().map(|(n, _, _)| n.as_str());
        let builtin_names = builtins::BUILTINS.iter().map(|b| b.0);
        let visible = |n: &&str| !matches!(self.items.names.get(n), Some(ItemRef::Const(i)) if *i >= self.const_limit);
        let item_names = self.items.all_names().filter(visible);
        for cand in locals.chain(item_names).chain(builtin_names) {
            let d = edit_distance(name, cand);
            if (1..=2).contains(&d)
                && d < name.len().max(2)
                && cand.chars().count() >= 2
                && best
                    .as_ref()
                    .is_none_or(|(bd, bn)| d < *bd || (d == *bd && cand < bn.as_str()))
            {
                best = Some((d, cand.to_string()));
            }
        }
        best.map(|(_, n)| n)
    }

    fn mismatch(
        &mut self,
        what: &str,
        span: Span,
        expected: Type,
        found: Type,
        code: &'static str,
    ) {
        let mut d = Diagnostic::error(
            code,
            span,
            format!("{what}: expected `{expected}`, found `{found}`"),
        )
        .with_label(format!("this is `{found}`"));
        if let Some(h) = cast_hint(expected, found) {
            d = d.with_hint(h);
        }
        self.error(d);
    }

    fn expr(&mut self, e: &Expr, expect: Option<Type>) -> Typed {
        if self.too_large || !self.enter(e.span) {
            return None;
        }
        let r = self.expr_inner(e, expect);
        self.nesting -= 1;
        r
    }

    /// Counts one level of expression nesting; past [`MAX_NESTING`] reports E0115 once
    /// and stops the lowering.
    fn enter(&mut self, span: Span) -> bool {
        if self.nesting >= MAX_NESTING {
            self.too_large = true;
            let at = self.root_call.unwrap_or(span);
            let d = Diagnostic::error("E0115", at, "expressions are nested too deeply after inlining")
                .with_label(format!("more than {MAX_NESTING} nested levels start here"))
                .with_secondary(span, "too deep here")
                .with_hint(format!(
                    "functions, masks and scores are inlined; their nesting adds up, and the limit is {MAX_NESTING} levels"
                ));
            self.diags.push(d);
            return false;
        }
        self.nesting += 1;
        true
    }

    fn expr_inner(&mut self, e: &Expr, expect: Option<Type>) -> Typed {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(n) => {
                if expect == Some(Type::F32) {
                    return Some((self.push(Inst::f32(*n as f32), Type::F32, span), Type::F32));
                }
                if *n > i32::MAX as i64 || *n < i32::MIN as i64 {
                    self.error(
                        Diagnostic::error("E0213", span, format!("integer literal {n} does not fit in i32"))
                            .with_label("out of range")
                            .with_hint("i32 values lie in -2147483648..=2147483647; write a float literal for larger values"),
                    );
                    return None;
                }
                Some((
                    self.push(Inst::ConstI32(*n as i32), Type::I32, span),
                    Type::I32,
                ))
            }
            ExprKind::Float(x) => {
                Some((self.push(Inst::f32(*x as f32), Type::F32, span), Type::F32))
            }
            ExprKind::Bool(b) => {
                Some((self.push(Inst::ConstBool(*b), Type::Bool, span), Type::Bool))
            }
            ExprKind::Name(name) => self.name(name, span),
            ExprKind::Unary(op, inner) => self.unary(*op, inner, span, expect),
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r, span),
            ExprKind::Cast(inner, ty) => self.cast(inner, ty, span),
            ExprKind::Call(callee, args) => self.call(callee, args, span, expect),
            ExprKind::Index(t, idx) => self.index(t, idx, span),
            ExprKind::If(c, then, els) => self.if_expr(c, then, els, span, expect),
            ExprKind::Block(b) => self.block(b, expect),
            ExprKind::Error => None,
        }
    }

    fn name(&mut self, name: &str, span: Span) -> Typed {
        if let Some(x) = self.lookup_local(name) {
            return Some(x);
        }
        match self.items.names.get(name).copied() {
            // a const at or after the one being evaluated is not defined yet
            Some(ItemRef::Const(i)) if i >= self.const_limit => self.unknown_name(name, span),
            Some(ItemRef::Const(i)) => {
                let (_, value, ty, _) = &self.items.consts[i];
                let (value, ty) = (*value, *ty);
                let value = value?;
                let inst = match value {
                    Scalar::Bool(b) => Inst::ConstBool(b),
                    Scalar::I32(x) => Inst::ConstI32(x),
                    Scalar::F32(x) => Inst::f32(x),
                };
                Some((self.push(inst, ty, span), ty))
            }
            Some(ItemRef::Param(i)) => {
                if self.ctx == Ctx::Const {
                    self.error(
                        Diagnostic::error(
                            "E0111",
                            span,
                            format!("param `{name}` cannot be used in a const"),
                        )
                        .with_label("runtime value")
                        .with_secondary(self.items.params[i].span, "declared here")
                        .with_hint(
                            "consts are evaluated at compile time; params are only known at launch",
                        ),
                    );
                    return None;
                }
                let ty = self.items.params[i].ty;
                Some((self.push(Inst::Param(ParamId(i as u32)), ty, span), ty))
            }
            Some(ItemRef::Tensor(i)) => {
                let t = &self.items.tensors[i];
                let rank = t.dims.len().max(1);
                let idx = vec!["i"; rank].join(", ");
                let d =
                    Diagnostic::error("E0104", span, format!("tensor `{name}` must be indexed"))
                        .with_label("a tensor, not a value")
                        .with_secondary(t.span, "declared here")
                        .with_hint(format!("read one element: `{name}[{idx}]`"));
                self.error(d);
                None
            }
            Some(ItemRef::Fn(_) | ItemRef::Mask(_) | ItemRef::Score(_)) => {
                self.error(
                    Diagnostic::error(
                        "E0114",
                        span,
                        format!("`{name}` is a function, not a value"),
                    )
                    .with_label("used as a value")
                    .with_hint(format!("call it: `{name}(...)`")),
                );
                None
            }
            Some(ItemRef::Attention) => {
                self.error(
                    Diagnostic::error(
                        "E0114",
                        span,
                        format!("`{name}` is an attention, not a value"),
                    )
                    .with_label("used as a value"),
                );
                None
            }
            None => self.unknown_name(name, span),
        }
    }

    fn unknown_name(&mut self, name: &str, span: Span) -> Typed {
        let mut d = Diagnostic::error("E0101", span, format!("cannot find `{name}` in this scope"))
            .with_label("not found");
        if let Some(s) = self.suggest(name) {
            d = d.with_hint(format!("a name with a similar spelling exists: `{s}`"));
        } else if matches!(name, "B" | "H" | "Q" | "KV") {
            d = d.with_hint(
                "B, H, Q and KV name tensor dimensions; inside a mask or score use its parameters",
            );
        }
        self.error(d);
        None
    }

    fn unary(&mut self, op: AstUn, inner: &Expr, span: Span, expect: Option<Type>) -> Typed {
        if let (AstUn::Neg, ExprKind::Int(n)) = (op, &inner.kind) {
            // `-2147483648` is a valid i32 literal
            if expect != Some(Type::F32) && *n == 1i64 << 31 {
                return Some((
                    self.push(Inst::ConstI32(i32::MIN), Type::I32, span),
                    Type::I32,
                ));
            }
        }
        let (v, t) = self.expr(inner, expect)?;
        match (op, t) {
            (AstUn::Neg, Type::I32) => Some((self.push(Inst::Unary(UnOp::INeg, v), t, span), t)),
            (AstUn::Neg, Type::F32) => Some((self.push(Inst::Unary(UnOp::FNeg, v), t, span), t)),
            (AstUn::Not, Type::Bool) => Some((self.push(Inst::Unary(UnOp::Not, v), t, span), t)),
            // bitwise not of an i32 (Rust's `!`): x ^ -1
            (AstUn::Not, Type::I32) => {
                let ones = self.push(Inst::ConstI32(-1), t, span);
                Some((self.push(Inst::Binary(BinOp::IXor, v, ones), t, span), t))
            }
            (AstUn::Neg, Type::Bool) | (AstUn::Not, _) => {
                self.unary_error(op, t, span);
                None
            }
        }
    }

    /// E0211 for `-` on a bool or `!` on an f32 (out of line: see `mismatched_operands`).
    #[cold]
    #[inline(never)]
    fn unary_error(&mut self, op: AstUn, t: Type, span: Span) {
        let d = if op == AstUn::Neg {
            Diagnostic::error("E0211", span, "cannot negate a `bool` with `-`")
                .with_label("this is `bool`")
                .with_hint("use `!` to negate a condition")
        } else {
            Diagnostic::error("E0211", span, format!("cannot apply `!` to `{t}`"))
                .with_label(format!("this is `{t}`"))
                .with_hint(
                    "`!` negates a bool or inverts an i32's bits; to test a number write `x == 0.0`",
                )
        };
        self.error(d);
    }

    /// Lowers two operands; an integer literal on one side takes the other's type.
    fn operands(&mut self, l: &Expr, r: &Expr) -> Option<((Value, Type), (Value, Type))> {
        if is_int_literal(l) && !is_int_literal(r) {
            let rb = self.expr(r, None);
            let la = self.expr(l, rb.map(|x| x.1));
            Some((la?, rb?))
        } else {
            let la = self.expr(l, None);
            let rb = self.expr(
                r,
                if is_int_literal(r) {
                    la.map(|x| x.1)
                } else {
                    None
                },
            );
            Some((la?, rb?))
        }
    }

    fn binary(&mut self, op: AstBin, l: &Expr, r: &Expr, span: Span) -> Typed {
        use AstBin::*;
        match op {
            AndAnd | OrOr | And | Or => return self.logical(op, l, r, span),
            Xor | Shl | Shr => return self.xor_or_shift(op, l, r, span),
            _ => {}
        }
        let ((a, ta), (b, tb)) = self.operands(l, r)?;
        if ta != tb {
            self.mismatched_operands(op, (l.span, ta), (r.span, tb), span);
            return None;
        }
        let t = ta;
        let cmp = |c: Cmp| match t {
            Type::I32 => Some(BinOp::ICmp(c)),
            Type::F32 => Some(BinOp::FCmp(c)),
            Type::Bool => match c {
                Cmp::Eq => Some(BinOp::BEq),
                Cmp::Ne => Some(BinOp::Xor),
                _ => None,
            },
        };
        let arith = |i: BinOp, f: BinOp| match t {
            Type::I32 => Some(i),
            Type::F32 => Some(f),
            Type::Bool => None,
        };
        let (irop, result) = match op {
            Add => (arith(BinOp::IAdd, BinOp::FAdd), t),
            Sub => (arith(BinOp::ISub, BinOp::FSub), t),
            Mul => (arith(BinOp::IMul, BinOp::FMul), t),
            Div => (arith(BinOp::IDiv, BinOp::FDiv), t),
            Rem if t == Type::F32 => {
                // floor remainder: a - floor(a / b) * b
                let q = self.push(Inst::Binary(BinOp::FDiv, a, b), t, span);
                let fl = self.push(Inst::Unary(UnOp::Floor, q), t, span);
                let m = self.push(Inst::Binary(BinOp::FMul, fl, b), t, span);
                return Some((self.push(Inst::Binary(BinOp::FSub, a, m), t, span), t));
            }
            Rem => (arith(BinOp::IRem, BinOp::IRem), t),
            Eq => (cmp(Cmp::Eq), Type::Bool),
            Ne => (cmp(Cmp::Ne), Type::Bool),
            Lt => (cmp(Cmp::Lt), Type::Bool),
            Le => (cmp(Cmp::Le), Type::Bool),
            Gt => (cmp(Cmp::Gt), Type::Bool),
            Ge => (cmp(Cmp::Ge), Type::Bool),
            AndAnd | OrOr | And | Or | Xor | Shl | Shr => unreachable!("handled above"),
        };
        match irop {
            Some(o) => Some((self.push(Inst::Binary(o, a, b), result, span), result)),
            None => {
                self.not_for_bool(op, span);
                None
            }
        }
    }

    /// E0211 for arithmetic on bools (out of line: see `mismatched_operands`).
    #[cold]
    #[inline(never)]
    fn not_for_bool(&mut self, op: AstBin, span: Span) {
        let sym = op.symbol();
        self.error(
            Diagnostic::error("E0211", span, format!("`{sym}` is not defined for `bool`"))
                .with_label("bool operands")
                .with_hint("combine conditions with `&&`, `||`, `&`, `|`, `!`, `==` or `!=`"),
        );
    }

    /// E0201 for `l op r` of two types. Cold and out of line: `binary` sits on the
    /// lowering's recursion (one frame per nesting level, ~1000 levels on a 2 MiB stack in
    /// compiler/tests/hostile.rs), and a diagnostic built inline there would widen every
    /// level's frame.
    #[cold]
    #[inline(never)]
    fn mismatched_operands(
        &mut self,
        op: AstBin,
        (ls, ta): (Span, Type),
        (rs, tb): (Span, Type),
        span: Span,
    ) {
        let sym = op.symbol();
        let mut d = Diagnostic::error(
            "E0201",
            span,
            format!("mismatched types: `{ta}` {sym} `{tb}`"),
        )
        .with_label(format!("no `{sym}` for `{ta}` and `{tb}`"))
        .with_secondary(ls, format!("`{ta}`"))
        .with_secondary(rs, format!("`{tb}`"));
        let hint = if ta == Type::I32 && tb == Type::F32 {
            Some("convert the left operand with `as f32`")
        } else if ta == Type::F32 && tb == Type::I32 {
            Some("convert the right operand with `as f32`")
        } else if ta == Type::Bool || tb == Type::Bool {
            Some("convert a bool with `as i32` or `as f32`")
        } else {
            None
        };
        if let Some(h) = hint {
            d = d.with_hint(h);
        }
        self.error(d);
    }

    /// `^`, `<<`, `>>`: bitwise on two i32s, `^` also on two bools (`!=`). Its own
    /// function (never inlined) so that `binary`'s stack frame, which every nesting level
    /// of an expression holds, stays as it was (compiler/tests/hostile.rs lowers ~1000
    /// levels on a 2 MiB stack, also in unoptimized builds).
    #[inline(never)]
    fn xor_or_shift(&mut self, op: AstBin, l: &Expr, r: &Expr, span: Span) -> Typed {
        let ((a, ta), (b, tb)) = self.operands(l, r)?;
        if op == AstBin::Xor && ta == Type::Bool && tb == Type::Bool {
            // `^` on bools: exclusive or, `!=`
            return Some((
                self.push(Inst::Binary(BinOp::Xor, a, b), Type::Bool, span),
                Type::Bool,
            ));
        }
        self.bitwise(op, (a, ta), (b, tb), (l.span, r.span), span)
    }

    /// `&`, `|`, `^`, `<<`, `>>` on two i32s (bitwise; both sides computed, no guards);
    /// an error naming the types otherwise.
    fn bitwise(
        &mut self,
        op: AstBin,
        (a, ta): (Value, Type),
        (b, tb): (Value, Type),
        (ls, rs): (Span, Span),
        span: Span,
    ) -> Typed {
        let sym = op.symbol();
        if ta != Type::I32 || tb != Type::I32 {
            let mixed_bool = (ta == Type::Bool) != (tb == Type::Bool);
            let d = Diagnostic::error(
                if ta == tb { "E0211" } else { "E0201" },
                span,
                if matches!(op, AstBin::Shl | AstBin::Shr) {
                    format!("`{sym}` takes two `i32`s, found `{ta}` {sym} `{tb}`")
                } else {
                    format!("`{sym}` takes two `i32`s (bitwise) or two `bool`s, found `{ta}` {sym} `{tb}`")
                },
            )
            .with_label(format!("no `{sym}` for `{ta}` and `{tb}`"))
            .with_secondary(ls, format!("`{ta}`"))
            .with_secondary(rs, format!("`{tb}`"));
            let d = if mixed_bool && matches!(op, AstBin::And | AstBin::Or | AstBin::Xor) {
                d.with_hint(format!(
                    "`{sym}` binds looser than comparisons here: write `(a {sym} b) == c` to compare a bitwise result"
                ))
            } else if matches!(op, AstBin::Shl | AstBin::Shr) {
                d.with_hint("shifts take an i32 and a shift amount (i32)")
            } else {
                d.with_hint("bitwise operators take i32s; convert with `as i32`")
            };
            self.error(d);
            return None;
        }
        let o = match op {
            AstBin::And => BinOp::IAnd,
            AstBin::Or => BinOp::IOr,
            AstBin::Xor => BinOp::IXor,
            AstBin::Shl => BinOp::IShl,
            AstBin::Shr => BinOp::IShr,
            _ => unreachable!("bitwise operators only"),
        };
        Some((self.push(Inst::Binary(o, a, b), Type::I32, span), Type::I32))
    }

    /// `&` / `|` whose left side `a` is an i32: the right side lowered, then bitwise (not
    /// inlined into `logical`, for the frame size: see `xor_or_shift`).
    #[inline(never)]
    fn bitwise_right(&mut self, op: AstBin, a: Value, l: &Expr, r: &Expr, span: Span) -> Typed {
        let rb = self.expr(r, Some(Type::I32))?;
        self.bitwise(op, (a, Type::I32), rb, (l.span, r.span), span)
    }

    fn logical(&mut self, op: AstBin, l: &Expr, r: &Expr, span: Span) -> Typed {
        let la = self.expr(l, Some(Type::Bool));
        // `&` and `|` between i32s: bitwise, both sides computed (no guards)
        if matches!(op, AstBin::And | AstBin::Or)
            && let Some((a, Type::I32)) = la
        {
            return self.bitwise_right(op, a, l, r, span);
        }
        let a = match la {
            Some((a, Type::Bool)) => Some(a),
            Some((_, t)) => {
                self.not_bool(op, l.span, t);
                None
            }
            None => None,
        };
        let is_or = matches!(op, AstBin::OrOr | AstBin::Or);
        let rb = match a {
            Some(a) => self.under(a, is_or, span, |s| s.expr(r, Some(Type::Bool))),
            None => self.expr(r, Some(Type::Bool)),
        };
        let b = match rb {
            Some((b, Type::Bool)) => Some(b),
            Some((_, t)) => {
                self.not_bool(op, r.span, t);
                None
            }
            None => None,
        };
        let (a, b) = (a?, b?);
        let o = if is_or { BinOp::Or } else { BinOp::And };
        Some((
            self.push(Inst::Binary(o, a, b), Type::Bool, span),
            Type::Bool,
        ))
    }

    fn not_bool(&mut self, op: AstBin, span: Span, t: Type) {
        let sym = op.symbol();
        self.error(
            Diagnostic::error(
                "E0211",
                span,
                format!("operands of `{sym}` must be `bool`, found `{t}`"),
            )
            .with_label(format!("this is `{t}`"))
            .with_hint(if matches!(op, AstBin::And | AstBin::Or) {
                "compare numbers to get a bool, e.g. `x != 0`; `&` and `|` are bitwise on two `i32`s"
            } else {
                "compare numbers to get a bool, e.g. `x != 0`"
            }),
        );
    }

    fn cast(&mut self, inner: &Expr, ty: &ast::TypeName, span: Span) -> Typed {
        let Some(target) = type_of_name(ty) else {
            let d = unknown_type(ty, "`i32` and `f32`");
            self.error(d);
            return None;
        };
        let (v, t) = self.expr(inner, None)?;
        let op = match (t, target) {
            (a, b) if a == b => return Some((v, t)),
            (Type::I32, Type::F32) => vec![UnOp::I2F],
            (Type::F32, Type::I32) => vec![UnOp::F2I],
            (Type::Bool, Type::I32) => vec![UnOp::B2I],
            (Type::Bool, Type::F32) => vec![UnOp::B2I, UnOp::I2F],
            (_, Type::Bool) => {
                self.error(
                    Diagnostic::error("E0210", span, format!("cannot cast `{t}` to `bool`"))
                        .with_label("invalid cast")
                        .with_hint("compare instead: `x != 0`"),
                );
                return None;
            }
            _ => unreachable!("all type pairs covered"),
        };
        let mut v = v;
        let mut cur = t;
        for o in op {
            cur = o.signature().1;
            v = self.push(Inst::Unary(o, v), cur, span);
        }
        Some((v, cur))
    }

    fn call(
        &mut self,
        callee: &ast::Ident,
        args: &[Expr],
        span: Span,
        expect: Option<Type>,
    ) -> Typed {
        let name = callee.name.as_str();
        if self.lookup_local(name).is_some() {
            self.error(not_callable(
                callee,
                format!("`{name}` is a value, not a function"),
            ));
            return None;
        }
        if builtins::is_builtin(name) {
            return self.builtin(callee, args, span, expect);
        }
        match self.items.names.get(name).copied() {
            Some(ItemRef::Fn(f)) => {
                if !self.arity(callee, args.len(), f.params.len(), Some(f.name.span)) {
                    return None;
                }
                let mut vals = Vec::new();
                let mut ok = true;
                for (a, p) in args.iter().zip(&f.params) {
                    let want = type_of_name(&p.ty);
                    match self.expr(a, want) {
                        Some((v, t)) => {
                            if let Some(w) = want
                                && w != t
                            {
                                self.mismatch(
                                    &format!("argument `{}` of `{name}`", p.name.name),
                                    a.span,
                                    w,
                                    t,
                                    "E0209",
                                );
                                ok = false;
                            }
                            vals.push((p.name.name.clone(), v, t));
                        }
                        None => ok = false,
                    }
                }
                if !ok || want_none(&f.params) {
                    return None;
                }
                let ret = type_of_name(&f.ret)?;
                let (v, t) = self.inline(name, f.name.span, span, vals, |s| {
                    s.block(&f.body, Some(ret))
                })?;
                if t != ret {
                    return None; // reported when the fn was checked
                }
                Some((v, t))
            }
            Some(ItemRef::Mask(m)) => {
                if !self.arity(callee, args.len(), 4, Some(m.name.span)) {
                    return None;
                }
                let vals = self.index_args(args, name)?;
                let v = self.inline_mask(m, span, vals)?;
                Some((v, Type::Bool))
            }
            Some(ItemRef::Score(sc)) => {
                if !self.arity(callee, args.len(), 5, Some(sc.name.span)) {
                    return None;
                }
                let s = match self.expr(&args[0], Some(Type::F32))? {
                    (v, Type::F32) => v,
                    (_, t) => {
                        self.mismatch(
                            &format!("argument `s` of `{name}`"),
                            args[0].span,
                            Type::F32,
                            t,
                            "E0209",
                        );
                        return None;
                    }
                };
                let rest = self.index_args(&args[1..], name)?;
                let mut vals = vec![s];
                vals.extend(rest);
                let v = self.inline_score(sc, span, vals)?;
                Some((v, Type::F32))
            }
            Some(ItemRef::Const(_) | ItemRef::Param(_)) => {
                self.error(not_callable(
                    callee,
                    format!("`{name}` is a value, not a function"),
                ));
                None
            }
            Some(ItemRef::Tensor(_)) => {
                self.error(
                    not_callable(
                        callee,
                        format!("tensor `{name}` is indexed with `[...]`, not called"),
                    )
                    .with_hint(format!("write `{name}[...]`")),
                );
                None
            }
            Some(ItemRef::Attention) => {
                self.error(not_callable(
                    callee,
                    format!("attention `{name}` cannot be called"),
                ));
                None
            }
            None => {
                let mut d = Diagnostic::error(
                    "E0103",
                    callee.span,
                    format!("cannot find function `{name}`"),
                )
                .with_label("not found");
                if let Some(h) = builtins::pytorch_equivalent(name) {
                    d = d.with_hint(h);
                } else if let Some(s) = self.suggest(name) {
                    d = d.with_hint(format!("a name with a similar spelling exists: `{s}`"));
                } else {
                    let names: Vec<&str> = builtins::BUILTINS.iter().map(|b| b.0).collect();
                    d = d.with_hint(format!("the builtins are {}", names.join(", ")));
                }
                self.error(d);
                None
            }
        }
    }

    fn index_args(&mut self, args: &[Expr], name: &str) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        let mut ok = true;
        for a in args {
            match self.expr(a, Some(Type::I32)) {
                Some((v, Type::I32)) => out.push(v),
                Some((_, t)) => {
                    self.mismatch(
                        &format!("index argument of `{name}`"),
                        a.span,
                        Type::I32,
                        t,
                        "E0209",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if ok { Some(out) } else { None }
    }

    fn arity(&mut self, callee: &ast::Ident, got: usize, want: usize, decl: Option<Span>) -> bool {
        if got == want {
            return true;
        }
        self.error(
            Diagnostic::error(
                "E0106",
                callee.span,
                format!(
                    "`{}` takes {want} argument{}, but {got} {} given",
                    callee.name,
                    plural(want),
                    if got == 1 { "was" } else { "were" }
                ),
            )
            .with_label(format!("expected {want}")),
        );
        if let (Some(decl), Some(last)) = (decl, self.diags.last_mut())
            && self.quiet == 0
        {
            last.secondary.push((decl, "defined here".into()));
        }
        false
    }

    /// Inlines a callee: binds `vals` as locals in a fresh scope and lowers its body.
    fn inline<T>(
        &mut self,
        name: &str,
        decl: Span,
        call: Span,
        vals: Vec<(String, Value, Type)>,
        body: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        if self.too_large {
            return None;
        }
        let known = self.items.gave_up.borrow().get(name).copied();
        if let Some(code) = known {
            // the callee alone already passed a limit: say so without inlining it again
            self.too_large = true;
            let at = self.root_call.unwrap_or(call);
            let d = if code == "E0113" {
                Diagnostic::error(
                    "E0113",
                    at,
                    "this code is too large after inlining helper functions",
                )
                .with_hint(format!("the limit is {MAX_INSTS} IR instructions"))
            } else {
                Diagnostic::error("E0115", at, "helper calls are nested too deeply")
                    .with_hint(format!("the limit is {MAX_INLINE_DEPTH} nested calls"))
            }
            .with_label(format!("inlines `{name}`, which is already over the limit"))
            .with_secondary(decl, "reported here");
            self.diags.push(d);
            return None;
        }
        if self.stack.len() >= MAX_INLINE_DEPTH {
            self.too_large = true;
            let at = self.root_call.unwrap_or(call);
            let d = Diagnostic::error("E0115", at, "helper calls are nested too deeply")
                .with_label(format!("more than {MAX_INLINE_DEPTH} nested calls start here"))
                .with_secondary(call, format!("call number {} in the chain", MAX_INLINE_DEPTH + 1))
                .with_hint(format!(
                    "functions, masks and scores are inlined; the limit is {MAX_INLINE_DEPTH} nested calls"
                ));
            self.diags.push(d);
            return None;
        }
        if let Some(pos) = self.stack.iter().position(|(n, _)| n == name) {
            let mut chain: Vec<&str> = self.stack[pos..].iter().map(|(n, _)| n.as_str()).collect();
            chain.push(name);
            let d = Diagnostic::error("E0107", call, format!("recursive call to `{name}`"))
                .with_label("calls itself")
                .with_secondary(decl, "defined here")
                .with_hint(format!(
                    "functions are inlined, so recursion is not allowed (cycle: {})",
                    chain.join(" -> ")
                ));
            // always reported: the cycle may only be visible while inlining
            if !self
                .diags
                .iter()
                .any(|x| x.code == "E0107" && x.span == call)
            {
                self.diags.push(d);
            }
            return None;
        }
        let saved_scopes = std::mem::replace(&mut self.scopes, vec![vals]);
        self.stack.push((name.to_string(), decl));
        if self.quiet == 0 {
            self.root_call = Some(call);
        }
        self.quiet += 1;
        let r = body(self);
        self.quiet -= 1;
        if self.quiet == 0 {
            self.root_call = None;
        }
        self.stack.pop();
        self.scopes = saved_scopes;
        r
    }

    fn inline_mask(&mut self, m: &'a ast::MaskDecl, call: Span, args: Vec<Value>) -> Option<Value> {
        match &m.body {
            ast::MaskBody::Fn { params, body } => {
                if params.len() != 4 {
                    return None;
                }
                let vals = params
                    .iter()
                    .zip(args)
                    .map(|(p, v)| (p.name.clone(), v, Type::I32))
                    .collect();
                let (v, t) = self.inline(&m.name.name, m.name.span, call, vals, |s| {
                    s.block(body, Some(Type::Bool))
                })?;
                if t == Type::Bool { Some(v) } else { None }
            }
            ast::MaskBody::Compose(e) => {
                let e = e.clone();
                self.inline(&m.name.name, m.name.span, call, Vec::new(), |s| {
                    s.compose(&e, &args)
                })
            }
        }
    }

    fn inline_score(
        &mut self,
        sc: &'a ast::ScoreDecl,
        call: Span,
        args: Vec<Value>,
    ) -> Option<Value> {
        if sc.params.len() != 5 {
            return None;
        }
        let tys = [Type::F32, Type::I32, Type::I32, Type::I32, Type::I32];
        let vals = sc
            .params
            .iter()
            .zip(args)
            .zip(tys)
            .map(|((p, v), t)| (p.name.clone(), v, t))
            .collect();
        let (v, t) = self.inline(&sc.name.name, sc.name.span, call, vals, |s| {
            s.block(&sc.body, Some(Type::F32))
        })?;
        if t == Type::F32 { Some(v) } else { None }
    }

    /// A mask composition: names of masks combined with `& | ! && ||`; `args` are the
    /// values of (b, h, q, kv).
    fn compose(&mut self, e: &Expr, args: &[Value]) -> Option<Value> {
        if self.too_large || !self.enter(e.span) {
            return None;
        }
        let r = self.compose_inner(e, args);
        self.nesting -= 1;
        r
    }

    fn compose_inner(&mut self, e: &Expr, args: &[Value]) -> Option<Value> {
        match &e.kind {
            ExprKind::Name(n) => match self.items.names.get(n.as_str()).copied() {
                Some(ItemRef::Mask(m)) => self.inline_mask(m, e.span, args.to_vec()),
                other => {
                    let what = match other {
                        None => "is not defined".to_string(),
                        Some(ItemRef::Score(_)) => "is a score, not a mask".to_string(),
                        Some(_) => "is not a mask".to_string(),
                    };
                    let mut d = Diagnostic::error("E0110", e.span, format!("`{n}` {what}"))
                        .with_label("expected the name of a mask");
                    if other.is_none()
                        && let Some(s) = self.suggest(n).filter(|s| {
                            matches!(self.items.names.get(s.as_str()), Some(ItemRef::Mask(_)))
                        })
                    {
                        d = d.with_hint(format!("a name with a similar spelling exists: `{s}`"));
                    } else {
                        d = d.with_hint("a mask composition combines mask names with `&`, `|`, `!` and parentheses");
                    }
                    self.error(d);
                    None
                }
            },
            ExprKind::Unary(AstUn::Not, inner) => {
                let v = self.compose(inner, args)?;
                Some(self.push(Inst::Unary(UnOp::Not, v), Type::Bool, e.span))
            }
            ExprKind::Binary(
                op @ (AstBin::And | AstBin::AndAnd | AstBin::Or | AstBin::OrOr),
                l,
                r,
            ) => {
                let a = self.compose(l, args);
                let is_or = matches!(op, AstBin::Or | AstBin::OrOr);
                let b = match a {
                    Some(a) => self.under(a, is_or, e.span, |s| s.compose(r, args)),
                    None => self.compose(r, args),
                };
                let (a, b) = (a?, b?);
                let o = if is_or { BinOp::Or } else { BinOp::And };
                Some(self.push(Inst::Binary(o, a, b), Type::Bool, e.span))
            }
            ExprKind::Error => None,
            _ => {
                self.error(
                    Diagnostic::error("E0110", e.span, "expected a composition of masks")
                        .with_label("not a mask name")
                        .with_hint("combine mask names with `&`, `|`, `!` and parentheses; write other logic inside a `mask` body"),
                );
                None
            }
        }
    }

    fn builtin(
        &mut self,
        callee: &ast::Ident,
        args: &[Expr],
        span: Span,
        expect: Option<Type>,
    ) -> Typed {
        let name = callee.name.as_str();
        let want = builtins::arity(name).unwrap_or(0);
        if !self.arity(callee, args.len(), want, None) {
            return None;
        }
        let float1 = |op: UnOp| Some(op);
        let unary_f = match name {
            "exp" => float1(UnOp::Exp),
            "exp2" => float1(UnOp::Exp2),
            "log" => float1(UnOp::Log),
            "log2" => float1(UnOp::Log2),
            "sqrt" => float1(UnOp::Sqrt),
            "tanh" => float1(UnOp::Tanh),
            "floor" => float1(UnOp::Floor),
            "ceil" => float1(UnOp::Ceil),
            _ => None,
        };
        if let Some(op) = unary_f {
            let x = self.float_arg(&args[0], name)?;
            return Some((self.push(Inst::Unary(op, x), Type::F32, span), Type::F32));
        }
        match name {
            "sigmoid" => {
                let x = self.float_arg(&args[0], name)?;
                let n = self.push(Inst::Unary(UnOp::FNeg, x), Type::F32, span);
                let e = self.push(Inst::Unary(UnOp::Exp, n), Type::F32, span);
                let one = self.push(Inst::f32(1.0), Type::F32, span);
                let d = self.push(Inst::Binary(BinOp::FAdd, one, e), Type::F32, span);
                Some((
                    self.push(Inst::Binary(BinOp::FDiv, one, d), Type::F32, span),
                    Type::F32,
                ))
            }
            "pow" => {
                let a = self.float_arg(&args[0], name)?;
                let b = self.float_arg(&args[1], name)?;
                Some((
                    self.push(Inst::Binary(BinOp::FPow, a, b), Type::F32, span),
                    Type::F32,
                ))
            }
            "abs" => {
                let (x, t) = self.expr(&args[0], expect)?;
                let op = match t {
                    Type::I32 => UnOp::IAbs,
                    Type::F32 => UnOp::FAbs,
                    Type::Bool => {
                        self.mismatch("argument of `abs`", args[0].span, Type::F32, t, "E0209");
                        return None;
                    }
                };
                Some((self.push(Inst::Unary(op, x), t, span), t))
            }
            "min" | "max" | "clamp" => {
                let vals = self.same_type_args(args, name, expect)?;
                let t = vals[0].1;
                let (mn, mx) = match t {
                    Type::I32 => (BinOp::IMin, BinOp::IMax),
                    Type::F32 => (BinOp::FMin, BinOp::FMax),
                    Type::Bool => {
                        self.mismatch(
                            &format!("arguments of `{name}`"),
                            args[0].span,
                            Type::F32,
                            t,
                            "E0209",
                        );
                        return None;
                    }
                };
                let v = match name {
                    "min" => self.push(Inst::Binary(mn, vals[0].0, vals[1].0), t, span),
                    "max" => self.push(Inst::Binary(mx, vals[0].0, vals[1].0), t, span),
                    _ => {
                        let lo = self.push(Inst::Binary(mx, vals[0].0, vals[1].0), t, span);
                        self.push(Inst::Binary(mn, lo, vals[2].0), t, span)
                    }
                };
                Some((v, t))
            }
            "select" => {
                let c = match self.expr(&args[0], Some(Type::Bool))? {
                    (c, Type::Bool) => c,
                    (_, t) => {
                        self.mismatch(
                            "condition of `select`",
                            args[0].span,
                            Type::Bool,
                            t,
                            "E0202",
                        );
                        return None;
                    }
                };
                let vals = self.same_type_args(&args[1..], name, expect)?;
                let t = vals[0].1;
                Some((self.push(Inst::Select(c, vals[0].0, vals[1].0), t, span), t))
            }
            _ => None,
        }
    }

    fn float_arg(&mut self, a: &Expr, name: &str) -> Option<Value> {
        match self.expr(a, Some(Type::F32))? {
            (v, Type::F32) => Some(v),
            (_, t) => {
                self.mismatch(
                    &format!("argument of `{name}`"),
                    a.span,
                    Type::F32,
                    t,
                    "E0209",
                );
                None
            }
        }
    }

    /// Arguments that must share one type (min, max, clamp, select arms). Integer
    /// literals take the type of the other arguments.
    fn same_type_args(
        &mut self,
        args: &[Expr],
        name: &str,
        expect: Option<Type>,
    ) -> Option<Vec<(Value, Type)>> {
        let mut anchor = expect;
        let mut out: Vec<Option<(Value, Type)>> = vec![None; args.len()];
        let mut ok = true;
        for (i, a) in args.iter().enumerate() {
            if !is_int_literal(a) {
                out[i] = self.expr(a, None);
                match out[i] {
                    Some((_, t)) => {
                        if anchor.is_none()
                            || anchor == Some(Type::I32) && t == Type::F32 && expect.is_none()
                        {
                            anchor = Some(t);
                        }
                    }
                    None => ok = false,
                }
            }
        }
        for (i, a) in args.iter().enumerate() {
            if is_int_literal(a) {
                out[i] = self.expr(a, anchor);
                if out[i].is_none() {
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let vals: Vec<(Value, Type)> = out.into_iter().map(|x| x.expect("checked above")).collect();
        let t0 = vals[0].1;
        for (i, (_, t)) in vals.iter().enumerate() {
            if *t != t0 {
                self.mismatch(
                    &format!("arguments of `{name}` must have one type"),
                    args[i].span,
                    t0,
                    *t,
                    "E0209",
                );
                return None;
            }
        }
        Some(vals)
    }

    fn index(&mut self, t: &ast::Ident, idx: &[Expr], span: Span) -> Typed {
        let name = t.name.as_str();
        let ti = match self.items.names.get(name).copied() {
            Some(ItemRef::Tensor(i)) if self.lookup_local(name).is_none() => i,
            _ => {
                let mut d = Diagnostic::error("E0104", t.span, format!("`{name}` is not a tensor"))
                    .with_label("indexed here");
                if let Some(s) = self.suggest(name) {
                    d = d.with_hint(format!("a name with a similar spelling exists: `{s}`"));
                } else {
                    d = d.with_hint("declare it: `tensor NAME: f32[DIMS];`");
                }
                self.error(d);
                return None;
            }
        };
        if self.ctx == Ctx::Const {
            self.error(
                Diagnostic::error(
                    "E0111",
                    span,
                    format!("tensor `{name}` cannot be read in a const"),
                )
                .with_label("runtime data"),
            );
            return None;
        }
        let info = &self.items.tensors[ti];
        let (rank, decl, ty) = (info.dims.len(), info.span, info.elem.read_type());
        if idx.len() != rank {
            self.error(
                Diagnostic::error(
                    "E0207",
                    span,
                    format!(
                        "tensor `{name}` has rank {rank}, but {} index{} given",
                        idx.len(),
                        if idx.len() == 1 { " was" } else { "es were" }
                    ),
                )
                .with_label(format!(
                    "expected {rank} index{}",
                    if rank == 1 { "" } else { "es" }
                ))
                .with_secondary(decl, "declared here"),
            );
            return None;
        }
        let mut vals = Vec::new();
        let mut ok = true;
        for e in idx {
            match self.expr(e, Some(Type::I32)) {
                Some((v, Type::I32)) => vals.push(v),
                Some((_, t)) => {
                    self.mismatch("tensor index", e.span, Type::I32, t, "E0208");
                    ok = false;
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let guard = self.guard(span);
        let v = self.push(
            Inst::Load {
                tensor: TensorId(ti as u32),
                indices: vals,
                guard,
            },
            ty,
            span,
        );
        Some((v, ty))
    }

    fn if_expr(
        &mut self,
        c: &Expr,
        then: &ast::Block,
        els: &Expr,
        span: Span,
        expect: Option<Type>,
    ) -> Typed {
        let cond = match self.expr(c, Some(Type::Bool)) {
            Some((v, Type::Bool)) => Some(v),
            Some((_, t)) => {
                self.mismatch("`if` condition", c.span, Type::Bool, t, "E0202");
                None
            }
            None => None,
        };
        let then_is_lit = then.lets.is_empty() && then.tail.as_deref().is_some_and(is_int_literal);
        let (a, b) = match cond {
            Some(cv) => {
                if then_is_lit && expect.is_none() {
                    let b = self.under(cv, true, span, |s| s.expr(els, None));
                    let a = self.under(cv, false, span, |s| s.block(then, b.map(|x| x.1)));
                    (a, b)
                } else {
                    let a = self.under(cv, false, span, |s| s.block(then, expect));
                    let want = expect.or(a.map(|x| x.1));
                    let b = self.under(cv, true, span, |s| s.expr(els, want));
                    (a, b)
                }
            }
            None => {
                let a = self.block(then, expect);
                let b = self.expr(els, expect.or(a.map(|x| x.1)));
                (a, b)
            }
        };
        let ((a, ta), (b, tb), cond) = (a?, b?, cond?);
        if ta != tb {
            self.error(
                Diagnostic::error(
                    "E0203",
                    span,
                    format!("`if` and `else` have different types: `{ta}` and `{tb}`"),
                )
                .with_label("branches differ")
                .with_secondary(then.span, format!("`{ta}`"))
                .with_secondary(els.span, format!("`{tb}`"))
                .with_hint(cast_hint(ta, tb).unwrap_or("both branches must have the same type")),
            );
            return None;
        }
        Some((self.push(Inst::Select(cond, a, b), ta, span), ta))
    }

    fn block(&mut self, b: &ast::Block, expect: Option<Type>) -> Typed {
        self.scopes.push(Vec::new());
        let mut ok = true;
        for l in &b.lets {
            let want = match &l.ty {
                Some(t) => match type_of_name(t) {
                    Some(t) => Some(t),
                    None => {
                        let d = unknown_type(t, "`bool`, `i32` and `f32`");
                        self.error(d);
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            match self.expr(&l.value, want) {
                Some((v, t)) => {
                    if let Some(w) = want
                        && w != t
                    {
                        self.mismatch(
                            &format!("`let {}`", l.name.name),
                            l.value.span,
                            w,
                            t,
                            "E0216",
                        );
                        ok = false;
                        continue;
                    }
                    self.scopes
                        .last_mut()
                        .expect("scope")
                        .push((l.name.name.clone(), v, t));
                }
                None => ok = false,
            }
        }
        let r = match &b.tail {
            Some(t) => self.expr(t, expect),
            None => {
                self.error(
                    Diagnostic::error("E0215", b.span, "this block has no value")
                        .with_label("expected an expression at the end of the block")
                        .with_hint("end the block with an expression (without `;`), e.g. `{ let x = ...; x }`"),
                );
                None
            }
        };
        self.scopes.pop();
        if ok { r } else { None }
    }
}

/// E0103 at `callee`: `message` says why the name cannot be called.
fn not_callable(callee: &ast::Ident, message: String) -> Diagnostic {
    Diagnostic::error("E0103", callee.span, message).with_label("not callable")
}

fn want_none(params: &[ast::FnParam]) -> bool {
    params.iter().any(|p| type_of_name(&p.ty).is_none())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn cast_hint(expected: Type, found: Type) -> Option<&'static str> {
    match (expected, found) {
        (Type::F32, Type::I32) => Some("convert with `as f32`"),
        (Type::I32, Type::F32) => Some("convert with `as i32` (truncates toward zero)"),
        (Type::Bool, Type::I32 | Type::F32) => Some("compare to get a bool, e.g. `x != 0`"),
        (Type::I32 | Type::F32, Type::Bool) => Some("convert a bool with `as i32` or `as f32`"),
        _ => None,
    }
}

/// Evaluates a `const` declaration. `index` is its slot in `items.consts`; only consts
/// before it are visible (later ones are reported as used before definition).
pub(crate) fn eval_const(
    c: &ast::ConstDecl,
    index: usize,
    items: &Items,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Scalar, Type)> {
    let want = match type_of_name(&c.ty) {
        Some(t) => t,
        None => {
            diags.push(unknown_type(&c.ty, "`bool`, `i32` and `f32`"));
            return None;
        }
    };
    let mut lw = Lowerer::new(items, FnKind::Score, Ctx::Const, diags);
    // consts at or after this one are not yet evaluated: hidden
    lw.const_limit = index;
    let (v, t) = lw.expr(&c.value, Some(want))?;
    if t != want {
        lw.mismatch(
            &format!("const `{}`", c.name.name),
            c.value.span,
            want,
            t,
            "E0212",
        );
        return None;
    }
    lw.f.ret = v;
    let f = passes::optimize(&lw.f);
    let value = match f.inst(f.ret) {
        Inst::ConstBool(b) => Scalar::Bool(*b),
        Inst::ConstI32(x) => Scalar::I32(*x),
        Inst::ConstF32(bits) => Scalar::F32(f32::from_bits(*bits)),
        _ => {
            diags.push(
                Diagnostic::error(
                    "E0212",
                    c.value.span,
                    format!("const `{}` is not a compile-time constant", c.name.name),
                )
                .with_label("not constant"),
            );
            return None;
        }
    };
    Some((value, t))
}

pub(crate) fn check_fn(f: &ast::FnDecl, items: &Items, diags: &mut Vec<Diagnostic>) {
    let mut lw = Lowerer::new(items, FnKind::Score, Ctx::Body, diags);
    let mut scope = Vec::new();
    let mut ok = true;
    for (i, p) in f.params.iter().enumerate() {
        if f.params[..i].iter().any(|q| q.name.name == p.name.name) {
            lw.error(
                Diagnostic::error(
                    "E0102",
                    p.name.span,
                    format!("parameter `{}` is declared twice", p.name.name),
                )
                .with_label("duplicate parameter"),
            );
            ok = false;
        }
        let t = match type_of_name(&p.ty) {
            Some(t) => t,
            None => {
                lw.error(unknown_type(&p.ty, "`bool`, `i32` and `f32`"));
                ok = false;
                continue;
            }
        };
        let inst = match t {
            Type::Bool => Inst::ConstBool(false),
            Type::I32 => Inst::Arg(Arg::B),
            Type::F32 => Inst::Arg(Arg::S),
        };
        let v = lw.push(inst, t, p.span);
        scope.push((p.name.name.clone(), v, t));
    }
    let ret = match type_of_name(&f.ret) {
        Some(t) => Some(t),
        None => {
            lw.error(unknown_type(&f.ret, "`bool`, `i32` and `f32`"));
            ok = false;
            None
        }
    };
    if !ok {
        return;
    }
    lw.stack.push((f.name.name.clone(), f.name.span));
    lw.scopes = vec![scope];
    if let (Some((_, t)), Some(ret)) = (lw.block(&f.body, ret), ret)
        && t != ret
    {
        let span = f.body.tail.as_ref().map(|e| e.span).unwrap_or(f.body.span);
        lw.error(
            Diagnostic::error(
                "E0206",
                span,
                format!(
                    "`{}` returns `{t}`, but its signature says `{ret}`",
                    f.name.name
                ),
            )
            .with_label(format!("this is `{t}`"))
            .with_secondary(f.ret.span, format!("declared `{ret}` here"))
            .with_hint(cast_hint(ret, t).unwrap_or("make the body's type match the signature")),
        );
    }
}

fn bind_index_params(lw: &mut Lowerer, params: &[ast::Ident], args: &[Arg]) -> bool {
    let mut scope = Vec::new();
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.name == p.name) {
            lw.error(
                Diagnostic::error(
                    "E0102",
                    p.span,
                    format!("parameter `{}` is declared twice", p.name),
                )
                .with_label("duplicate parameter"),
            );
            return false;
        }
        let a = args[i];
        let v = lw.push(Inst::Arg(a), a.ty(), p.span);
        scope.push((p.name.clone(), v, a.ty()));
    }
    lw.scopes = vec![scope];
    true
}

fn param_count_error(
    name: &ast::Ident,
    params: &[ast::Ident],
    want: usize,
    names: &str,
) -> Diagnostic {
    let span = params
        .first()
        .map(|p| p.span.to(params.last().expect("non-empty").span))
        .unwrap_or(name.span);
    Diagnostic::error(
        "E0109",
        span,
        format!(
            "`{}` has {} parameter{}, but a {} takes {want}",
            name.name,
            params.len(),
            plural(params.len()),
            if want == 4 { "mask" } else { "score" }
        ),
    )
    .with_label(format!("expected {want}"))
    .with_hint(format!(
        "write `({names})`; the names are yours, the order is fixed"
    ))
}

pub(crate) fn check_mask(m: &ast::MaskDecl, items: &Items, diags: &mut Vec<Diagnostic>) {
    let mut lw = Lowerer::new(items, FnKind::Mask, Ctx::Body, diags);
    lw.stack.push((m.name.name.clone(), m.name.span));
    match &m.body {
        ast::MaskBody::Fn { params, body } => {
            if params.len() != 4 {
                lw.error(param_count_error(&m.name, params, 4, "b, h, q, kv"));
                return;
            }
            if !bind_index_params(&mut lw, params, &[Arg::B, Arg::H, Arg::Q, Arg::Kv]) {
                return;
            }
            if let Some((_, t)) = lw.block(body, Some(Type::Bool))
                && t != Type::Bool
            {
                let span = body.tail.as_ref().map(|e| e.span).unwrap_or(body.span);
                lw.error(
                    Diagnostic::error(
                        "E0204",
                        span,
                        format!("mask `{}` must return `bool`, found `{t}`", m.name.name),
                    )
                    .with_label(format!("this is `{t}`"))
                    .with_hint(
                        "a mask says whether (q, kv) may attend; compare values, e.g. `q >= kv`",
                    ),
                );
            }
        }
        ast::MaskBody::Compose(e) => {
            let args: Vec<Value> = [Arg::B, Arg::H, Arg::Q, Arg::Kv]
                .iter()
                .map(|a| lw.push(Inst::Arg(*a), Type::I32, m.span))
                .collect();
            lw.compose(e, &args);
        }
    }
}

pub(crate) fn check_score(s: &ast::ScoreDecl, items: &Items, diags: &mut Vec<Diagnostic>) {
    let mut lw = Lowerer::new(items, FnKind::Score, Ctx::Body, diags);
    lw.stack.push((s.name.name.clone(), s.name.span));
    if s.params.len() != 5 {
        lw.error(param_count_error(&s.name, &s.params, 5, "s, b, h, q, kv"));
        return;
    }
    if !bind_index_params(
        &mut lw,
        &s.params,
        &[Arg::S, Arg::B, Arg::H, Arg::Q, Arg::Kv],
    ) {
        return;
    }
    if let Some((_, t)) = lw.block(&s.body, Some(Type::F32))
        && t != Type::F32
    {
        let span = s.body.tail.as_ref().map(|e| e.span).unwrap_or(s.body.span);
        lw.error(
            Diagnostic::error(
                "E0205",
                span,
                format!("score `{}` must return `f32`, found `{t}`", s.name.name),
            )
            .with_label(format!("this is `{t}`"))
            .with_hint(
                cast_hint(Type::F32, t).unwrap_or("a score maps the f32 score `s` to a new f32"),
            ),
        );
    }
}

/// Lowers one attention. Reports field errors; returns `None` if any part failed.
pub(crate) fn lower_attention(
    a: &ast::AttentionDecl,
    items: &Items,
    diags: &mut Vec<Diagnostic>,
) -> Option<Program> {
    let mut mask_field: Option<&ast::AttnField> = None;
    let mut score_field: Option<&ast::AttnField> = None;
    let mut ok = true;
    for f in &a.fields {
        let slot = match f.key.name.as_str() {
            "mask" => &mut mask_field,
            "score" => &mut score_field,
            other => {
                diags.push(
                    Diagnostic::error(
                        "E0108",
                        f.key.span,
                        format!("unknown attention field `{other}`"),
                    )
                    .with_label("unknown field")
                    .with_hint("an attention has the fields `mask` and `score`"),
                );
                ok = false;
                continue;
            }
        };
        if let Some(prev) = *slot {
            diags.push(
                Diagnostic::error(
                    "E0108",
                    f.key.span,
                    format!("field `{}` is set twice", f.key.name),
                )
                .with_label("set again here")
                .with_secondary(prev.key.span, "first set here")
                .with_hint("compose masks in one field: `mask = a & b;`"),
            );
            ok = false;
            continue;
        }
        *slot = Some(f);
    }
    let mut mask = None;
    if let Some(f) = mask_field {
        let mut lw = Lowerer::new(items, FnKind::Mask, Ctx::Body, diags);
        let args: Vec<Value> = [Arg::B, Arg::H, Arg::Q, Arg::Kv]
            .iter()
            .map(|x| lw.push(Inst::Arg(*x), Type::I32, f.span))
            .collect();
        match lw.compose(&f.value, &args) {
            Some(v) => {
                lw.f.ret = v;
                mask = Some(lw.f);
            }
            None => ok = false,
        }
    }
    let mut score = None;
    if let Some(f) = score_field {
        let sc = match &f.value.kind {
            ExprKind::Name(n) => match items.names.get(n.as_str()).copied() {
                Some(ItemRef::Score(s)) => Some(s),
                _ => None,
            },
            _ => None,
        };
        match sc {
            Some(sc) => {
                let mut lw = Lowerer::new(items, FnKind::Score, Ctx::Body, diags);
                let args: Vec<Value> = [Arg::S, Arg::B, Arg::H, Arg::Q, Arg::Kv]
                    .iter()
                    .map(|x| lw.push(Inst::Arg(*x), x.ty(), f.span))
                    .collect();
                match lw.inline_score(sc, f.value.span, args) {
                    Some(v) => {
                        lw.f.ret = v;
                        score = Some(lw.f);
                    }
                    None => ok = false,
                }
            }
            None => {
                let what = match &f.value.kind {
                    ExprKind::Name(n) => match items.names.get(n.as_str()) {
                        None => format!("cannot find score `{n}`"),
                        Some(ItemRef::Mask(_)) => format!("`{n}` is a mask, not a score"),
                        Some(_) => format!("`{n}` is not a score"),
                    },
                    _ => "a score field takes the name of one score".to_string(),
                };
                diags.push(
                    Diagnostic::error("E0221", f.value.span, what)
                        .with_label("expected the name of a score")
                        .with_hint("to combine scores, write a score whose body calls the others, e.g. `softcap(alibi(s, b, h, q, kv), b, h, q, kv)`"),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    Some(Program {
        name: a.name.name.clone(),
        span: a.span,
        params: items.params.clone(),
        tensors: items.tensors.clone(),
        mask,
        score,
    })
}
