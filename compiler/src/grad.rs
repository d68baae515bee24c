//! The derivative pass: from a program's score function, IR computing the score, its
//! derivative with respect to `s`, and its partial derivative with respect to every
//! differentiable tensor read and f32 param (reverse mode over the straight-line SSA).
//!
//! In: a verified [`Program`]. Out: a [`ScoreGrad`]: one score-kind [`Function`] (args
//! `s, b, h, q, kv`, as the forward score) whose return value is the recomputed score and
//! whose other outputs are named [`Value`]s of the same function, so the forward score
//! and every derivative share one CSE'd instruction list:
//!
//! - `score` (= `func.ret`): the score, bit-identical to the forward score function;
//! - `d_s`: ∂score/∂s (f32; a constant `1.0` for `s + bias`, `0.0` when `s` is unused);
//! - `reads[i]`: one entry per differentiable read site (a `Load` of an f32/f16/bf16
//!   tensor whose value reaches the score through differentiable operations): the
//!   `tensor`, its `indices` and `guard` (values of `func`, exactly those of the `Load`
//!   instruction `load`) and `partial` = ∂score/∂(the value read). Read sites are in the
//!   order of their `Load`s; CSE has already merged identical reads, so two entries never
//!   name the same (tensor, indices, guard) values — but two entries may name the same
//!   tensor (`bias[q] + bias[kv]`) and at a given point even the same element: consumers
//!   add each entry's contribution separately.
//! - `params[i]`: one entry per f32 param that the score reads differentiably, sorted by
//!   `ParamId`: `partial` = ∂score/∂param.
//!
//! How a backward kernel consumes it, per kept (unmasked) element (b, h, q, kv) with
//! `g = dS'` (= P·(dP − D + dLSE)): `dS = g · d_s`; for each read whose `guard` is true,
//! `grad[tensor][indices] += g · partial` — with the indices clamped exactly as the
//! forward clamps its reads (a read the checked interpreter would report out of range
//! sends its gradient to the element the kernel read); `grad[param] += g · partial`.
//! Where the element is masked or its score is −inf, `g` is 0 and the contribution is
//! exactly 0: consumers must skip (select away) such elements instead of multiplying,
//! since partials there may be inf or NaN (`log(0)`, `0·inf`). Integer tensors, integer
//! params and masks have no gradient.
//!
//! Derivative conventions at non-differentiable points (PyTorch's autograd formulas):
//! - `abs(x)`: sign(x), 0 at 0. `floor`, `ceil`, casts: 0 (integer values carry none).
//! - `min(a, b)` / `max(a, b)` (`torch.minimum`/`maximum`): the selected operand gets the
//!   gradient; on a tie each gets half; if one operand is NaN the other (the result) gets
//!   all of it.
//! - `clamp(x, lo, hi)` (lowered to `min(max(x, lo), hi)`; the pattern is recognized,
//!   with either operand order): `x` gets the gradient where `lo <= x <= hi` (boundaries
//!   included, `torch.clamp`), `lo` where `x` is below it (or NaN) and `lo <= hi`, `hi`
//!   otherwise. When only one operand of the inner `max` depends on an input it is `x`.
//! - `select(c, a, b)` / `if`: the taken arm gets the gradient, the other 0; conditions
//!   have none. As in PyTorch, a non-finite local derivative in the untaken arm is
//!   multiplied by that 0 and gives NaN (`select(c, log(x), 0)` at x = 0).
//! - `sigmoid(x)` (lowered to `1 / (1 + exp(-x))`; the pattern is recognized):
//!   r·(1 − r), finite for every x (the chain through `exp` would give 0·inf).
//! - `pow(a, b)`: ∂a = b·a^(b−1), 0 where b = 0; ∂b = r·ln(a), 0 where a = 0 and b >= 0.
//! - `sqrt`: 1/(2r); `tanh`: 1 − r²; `exp`: r; `exp2`: r·ln 2; `log`: 1/x;
//!   `log2`: 1/(x·ln 2); `a / b`: 1/b and −r/b.
//!
//! The output is folded, CSE'd and dead-code-eliminated keeping every output live, and
//! passes the IR verifier ([`ScoreGrad::verify`]). A program without a score has the
//! identity score: `[s, 1.0]`.

use crate::ir::{
    Arg, BinOp, Cmp, FnKind, Function, Inst, ParamId, Program, TensorId, Type, UnOp, Value,
    VerifyError, verify_function, write_captures, write_function,
};
use crate::passes::{
    eliminate_common_subexpressions_mapped, eliminate_dead_code_keeping, fold_constants_mapped,
};
use attnc_grammar::ast::Span;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The partial derivative of the score with respect to one tensor read site.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadGrad {
    pub tensor: TensorId,
    /// The `Load` instruction (its value is what was read).
    pub load: Value,
    pub indices: Vec<Value>,
    pub guard: Value,
    /// ∂score/∂(value read), f32.
    pub partial: Value,
}

/// The partial derivative of the score with respect to one f32 param.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGrad {
    pub param: ParamId,
    pub partial: Value,
}

/// The score and its derivatives, as one function with named outputs (module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreGrad {
    pub func: Function,
    pub score: Value,
    pub d_s: Value,
    pub reads: Vec<ReadGrad>,
    pub params: Vec<ParamGrad>,
}

impl ScoreGrad {
    /// Every output value, in a fixed order (score, d_s, reads' indices/guard/partial,
    /// params' partials).
    pub fn outputs(&self) -> Vec<Value> {
        let mut v = vec![self.score, self.d_s];
        for r in &self.reads {
            v.extend(&r.indices);
            v.push(r.guard);
            v.push(r.load);
            v.push(r.partial);
        }
        v.extend(self.params.iter().map(|p| p.partial));
        v
    }

    /// The IR verifier's rules for `func`, and: every output exists, `score`/`d_s`/partials
    /// are f32, each read's fields match its `Load` instruction, params are f32.
    pub fn verify(&self, p: &Program) -> Result<(), VerifyError> {
        verify_function(&self.func, p)?;
        let n = self.func.len();
        let err = |at: Value, what: String| VerifyError {
            at: at.index(),
            what,
        };
        for v in self.outputs() {
            if v.index() >= n {
                return Err(err(v, "output is not defined".into()));
            }
        }
        if self.score != self.func.ret {
            return Err(err(self.score, "score is not the return value".into()));
        }
        let f32s = std::iter::once(self.d_s)
            .chain(self.reads.iter().map(|r| r.partial))
            .chain(self.params.iter().map(|p| p.partial));
        for v in f32s {
            if self.func.ty(v) != Type::F32 {
                return Err(err(v, "derivative is not f32".into()));
            }
        }
        for r in &self.reads {
            let want = Inst::Load {
                tensor: r.tensor,
                indices: r.indices.clone(),
                guard: r.guard,
            };
            if *self.func.inst(r.load) != want {
                return Err(err(r.load, "read site does not match its load".into()));
            }
            if self.func.ty(r.load) != Type::F32 {
                return Err(err(
                    r.load,
                    "read of an integer tensor has a gradient".into(),
                ));
            }
        }
        for g in &self.params {
            if p.params.get(g.param.0 as usize).map(|i| i.ty) != Some(Type::F32) {
                return Err(err(g.partial, "gradient of a non-f32 param".into()));
            }
        }
        Ok(())
    }
}

/// Whether a tensor of the program can have a gradient (f32/f16/bf16 elements).
pub fn is_differentiable_tensor(p: &Program, t: TensorId) -> bool {
    p.tensors[t.0 as usize].elem.read_type() == Type::F32
}

/// Differentiates the program's score (the identity when it has none).
pub fn differentiate(p: &Program) -> ScoreGrad {
    let Some(fwd) = &p.score else {
        let mut f = Function::new(FnKind::Score);
        let s = f.push(Inst::Arg(Arg::S), Type::F32, p.span);
        let one = f.push(Inst::f32(1.0), Type::F32, p.span);
        f.ret = s;
        return ScoreGrad {
            func: f,
            score: s,
            d_s: one,
            reads: vec![],
            params: vec![],
        };
    };
    let mut d = Diff::new(fwd);
    d.sweep();
    d.finish()
}

/// The reverse sweep's state: the function being extended (forward copy first), which
/// forward values carry a derivative, and the adjoint accumulated for each.
struct Diff<'a> {
    fwd: &'a Function,
    f: Function,
    active: Vec<bool>,
    adj: Vec<Option<Value>>,
    span: Span,
}

impl<'a> Diff<'a> {
    fn new(fwd: &'a Function) -> Self {
        let mut active = vec![false; fwd.len()];
        for (i, inst) in fwd.insts.iter().enumerate() {
            let a = |v: &Value| active[v.index()];
            active[i] = fwd.types[i] == Type::F32
                && match inst {
                    Inst::Arg(arg) => *arg == Arg::S,
                    Inst::Load { .. } | Inst::Param(_) => true,
                    Inst::ConstBool(_) | Inst::ConstI32(_) | Inst::ConstF32(_) => false,
                    Inst::Unary(UnOp::Floor | UnOp::Ceil, _) => false,
                    Inst::Unary(_, x) => a(x),
                    Inst::Binary(_, x, y) => a(x) || a(y),
                    Inst::Select(_, x, y) => a(x) || a(y),
                };
        }
        Diff {
            fwd,
            f: fwd.clone(),
            active,
            adj: vec![None; fwd.len()],
            span: Span::default(),
        }
    }

    fn push(&mut self, inst: Inst, ty: Type) -> Value {
        self.f.push(inst, ty, self.span)
    }
    fn c(&mut self, x: f32) -> Value {
        self.push(Inst::f32(x), Type::F32)
    }
    fn un(&mut self, op: UnOp, a: Value) -> Value {
        self.push(Inst::Unary(op, a), Type::F32)
    }
    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        self.push(Inst::Binary(op, a, b), Type::F32)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.bin(BinOp::FMul, a, b)
    }
    fn cmp(&mut self, c: Cmp, a: Value, b: Value) -> Value {
        self.push(Inst::Binary(BinOp::FCmp(c), a, b), Type::Bool)
    }
    fn bool_op(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        self.push(Inst::Binary(op, a, b), Type::Bool)
    }
    fn sel(&mut self, c: Value, a: Value, b: Value) -> Value {
        self.push(Inst::Select(c, a, b), Type::F32)
    }
    /// `g` where `c`, else 0.
    fn gate(&mut self, c: Value, g: Value) -> Value {
        let z = self.c(0.0);
        self.sel(c, g, z)
    }

    /// Adds `g` to the adjoint of `v` (if `v` carries a derivative).
    fn add(&mut self, v: Value, g: Value) {
        if !self.active[v.index()] {
            return;
        }
        self.adj[v.index()] = Some(match self.adj[v.index()] {
            None => g,
            Some(prev) => self.bin(BinOp::FAdd, prev, g),
        });
    }

    fn is_const(&self, v: Value, x: f32) -> bool {
        matches!(self.fwd.inst(v), Inst::ConstF32(bits) if f32::from_bits(*bits) == x)
    }

    /// `1 / (1 + exp(-x))` as lowered for `sigmoid`: returns x.
    fn sigmoid_of(&self, num: Value, den: Value) -> Option<Value> {
        if !self.is_const(num, 1.0) {
            return None;
        }
        let Inst::Binary(BinOp::FAdd, u, w) = self.fwd.inst(den) else {
            return None;
        };
        let e = if self.is_const(*u, 1.0) {
            *w
        } else if self.is_const(*w, 1.0) {
            *u
        } else {
            return None;
        };
        let Inst::Unary(UnOp::Exp, n) = self.fwd.inst(e) else {
            return None;
        };
        match self.fwd.inst(*n) {
            Inst::Unary(UnOp::FNeg, x) => Some(*x),
            _ => None,
        }
    }

    /// `min(max(x, lo), hi)` (either operand order): returns (x, lo, hi).
    fn clamp_of(&self, a: Value, b: Value) -> Option<(Value, Value, Value)> {
        let (inner, hi) = match (self.fwd.inst(a), self.fwd.inst(b)) {
            (Inst::Binary(BinOp::FMax, ..), _) => (a, b),
            (_, Inst::Binary(BinOp::FMax, ..)) => (b, a),
            _ => return None,
        };
        let Inst::Binary(BinOp::FMax, x0, x1) = self.fwd.inst(inner) else {
            return None;
        };
        let (x, lo) = if !self.active[x0.index()] && self.active[x1.index()] {
            (*x1, *x0)
        } else {
            (*x0, *x1)
        };
        Some((x, lo, hi))
    }

    /// min/max with torch.minimum/maximum's rule: the share of the gradient that goes to
    /// `a` (all if it is selected, half on a tie, all if `b` is NaN).
    fn minmax_share(&mut self, is_max: bool, a: Value, b: Value, g: Value) -> (Value, Value) {
        let wins = self.cmp(if is_max { Cmp::Gt } else { Cmp::Lt }, a, b);
        let b_nan = self.cmp(Cmp::Ne, b, b);
        let a_nan = self.cmp(Cmp::Ne, a, a);
        let a_takes = self.bool_op(BinOp::Or, wins, b_nan);
        let loses = self.cmp(if is_max { Cmp::Lt } else { Cmp::Gt }, a, b);
        let b_takes = self.bool_op(BinOp::Or, loses, a_nan);
        let tie = self.cmp(Cmp::Eq, a, b);
        let half = self.c(0.5);
        let hg = self.mul(g, half);
        let tie_share = self.gate(tie, hg);
        let ga = self.sel(a_takes, g, tie_share);
        let gb = self.sel(b_takes, g, tie_share);
        (ga, gb)
    }

    fn sweep(&mut self) {
        let ret = self.fwd.ret;
        if self.active[ret.index()] {
            self.span = self.fwd.spans[ret.index()];
            let one = self.c(1.0);
            self.adj[ret.index()] = Some(one);
        }
        for i in (0..self.fwd.len()).rev() {
            let Some(g) = self.adj[i] else { continue };
            self.span = self.fwd.spans[i];
            let r = Value(i as u32);
            let act = |d: &Self, v: Value| d.active[v.index()];
            match self.fwd.insts[i].clone() {
                Inst::Unary(op, x) => {
                    let gx = match op {
                        UnOp::FNeg => self.un(UnOp::FNeg, g),
                        UnOp::FAbs => {
                            let z = self.c(0.0);
                            let pos = self.cmp(Cmp::Gt, x, z);
                            let neg = self.cmp(Cmp::Lt, x, z);
                            let ng = self.un(UnOp::FNeg, g);
                            let n = self.gate(neg, ng);
                            self.sel(pos, g, n)
                        }
                        UnOp::Exp => self.mul(g, r),
                        UnOp::Exp2 => {
                            let ln2 = self.c(std::f32::consts::LN_2);
                            let d = self.mul(r, ln2);
                            self.mul(g, d)
                        }
                        UnOp::Log => self.bin(BinOp::FDiv, g, x),
                        UnOp::Log2 => {
                            let ln2 = self.c(std::f32::consts::LN_2);
                            let d = self.mul(x, ln2);
                            self.bin(BinOp::FDiv, g, d)
                        }
                        UnOp::Sqrt => {
                            let two = self.c(2.0);
                            let d = self.mul(r, two);
                            self.bin(BinOp::FDiv, g, d)
                        }
                        UnOp::Tanh => {
                            let one = self.c(1.0);
                            let rr = self.mul(r, r);
                            let d = self.bin(BinOp::FSub, one, rr);
                            self.mul(g, d)
                        }
                        // floor/ceil are inactive; the rest are not f32 -> f32
                        _ => continue,
                    };
                    self.add(x, gx);
                }
                Inst::Binary(op, a, b) => match op {
                    BinOp::FAdd => {
                        self.add(a, g);
                        self.add(b, g);
                    }
                    BinOp::FSub => {
                        self.add(a, g);
                        if act(self, b) {
                            let n = self.un(UnOp::FNeg, g);
                            self.add(b, n);
                        }
                    }
                    BinOp::FMul => {
                        if act(self, a) {
                            let t = self.mul(g, b);
                            self.add(a, t);
                        }
                        if act(self, b) {
                            let t = self.mul(g, a);
                            self.add(b, t);
                        }
                    }
                    BinOp::FDiv => {
                        if let Some(x) = self.sigmoid_of(a, b) {
                            // r (1 - r)
                            let one = self.c(1.0);
                            let omr = self.bin(BinOp::FSub, one, r);
                            let d = self.mul(r, omr);
                            let t = self.mul(g, d);
                            self.add(x, t);
                        } else {
                            if act(self, a) {
                                let t = self.bin(BinOp::FDiv, g, b);
                                self.add(a, t);
                            }
                            if act(self, b) {
                                let gr = self.mul(g, r);
                                let t = self.bin(BinOp::FDiv, gr, b);
                                let n = self.un(UnOp::FNeg, t);
                                self.add(b, n);
                            }
                        }
                    }
                    BinOp::FMin | BinOp::FMax => {
                        let clamp = if op == BinOp::FMin {
                            self.clamp_of(a, b)
                        } else {
                            None
                        };
                        if let Some((x, lo, hi)) = clamp {
                            let ge = self.cmp(Cmp::Ge, x, lo);
                            let le = self.cmp(Cmp::Le, x, hi);
                            let inside = self.bool_op(BinOp::And, ge, le);
                            let below = self.push(Inst::Unary(UnOp::Not, ge), Type::Bool);
                            let ordered = self.cmp(Cmp::Le, lo, hi);
                            let to_lo = self.bool_op(BinOp::And, below, ordered);
                            if act(self, x) {
                                let t = self.gate(inside, g);
                                self.add(x, t);
                            }
                            if act(self, lo) {
                                let t = self.gate(to_lo, g);
                                self.add(lo, t);
                            }
                            if act(self, hi) {
                                let either = self.bool_op(BinOp::Or, inside, to_lo);
                                let z = self.c(0.0);
                                let t = self.sel(either, z, g);
                                self.add(hi, t);
                            }
                        } else {
                            let (ga, gb) = self.minmax_share(op == BinOp::FMax, a, b, g);
                            self.add(a, ga);
                            self.add(b, gb);
                        }
                    }
                    BinOp::FPow => {
                        let z = self.c(0.0);
                        if act(self, a) {
                            let one = self.c(1.0);
                            let bm1 = self.bin(BinOp::FSub, b, one);
                            let pw = self.bin(BinOp::FPow, a, bm1);
                            let d = self.mul(b, pw);
                            let t = self.mul(g, d);
                            let b0 = self.cmp(Cmp::Eq, b, z);
                            let t = self.sel(b0, z, t);
                            self.add(a, t);
                        }
                        if act(self, b) {
                            let la = self.un(UnOp::Log, a);
                            let d = self.mul(r, la);
                            let t = self.mul(g, d);
                            let a0 = self.cmp(Cmp::Eq, a, z);
                            let bpos = self.cmp(Cmp::Ge, b, z);
                            let both = self.bool_op(BinOp::And, a0, bpos);
                            let t = self.sel(both, z, t);
                            self.add(b, t);
                        }
                    }
                    _ => {}
                },
                Inst::Select(c, a, b) => {
                    if act(self, a) {
                        let t = self.gate(c, g);
                        self.add(a, t);
                    }
                    if act(self, b) {
                        let z = self.c(0.0);
                        let t = self.sel(c, z, g);
                        self.add(b, t);
                    }
                }
                // inputs (Arg S, Load, Param) keep their adjoint; read in `finish`
                _ => {}
            }
        }
    }

    fn finish(mut self) -> ScoreGrad {
        self.span = self.fwd.spans[self.fwd.ret.index()];
        let mut d_s = None;
        let mut reads = Vec::new();
        let mut params: BTreeMap<ParamId, Value> = BTreeMap::new();
        for i in 0..self.fwd.len() {
            let Some(g) = self.adj[i] else { continue };
            match &self.fwd.insts[i] {
                Inst::Arg(Arg::S) => d_s = Some(g),
                Inst::Load {
                    tensor,
                    indices,
                    guard,
                } => reads.push(ReadGrad {
                    tensor: *tensor,
                    load: Value(i as u32),
                    indices: indices.clone(),
                    guard: *guard,
                    partial: g,
                }),
                Inst::Param(id) => {
                    let sum = match params.get(id) {
                        Some(prev) => self.bin(BinOp::FAdd, *prev, g),
                        None => g,
                    };
                    params.insert(*id, sum);
                }
                _ => {}
            }
        }
        let d_s = match d_s {
            Some(v) => v,
            None => self.c(0.0),
        };
        let mut out = ScoreGrad {
            func: self.f,
            score: self.fwd.ret,
            d_s,
            reads,
            params: params
                .into_iter()
                .map(|(param, partial)| ParamGrad { param, partial })
                .collect(),
        };
        let (f, m) = fold_constants_mapped(&out.func);
        out.remap(f, &m);
        let (f, m) = eliminate_common_subexpressions_mapped(&out.func);
        out.remap(f, &m);
        let keep = out.outputs();
        let (f, m) = eliminate_dead_code_keeping(&out.func, &keep);
        out.remap(f, &m);
        out
    }
}

impl ScoreGrad {
    fn remap(&mut self, f: Function, m: &[Value]) {
        let r = |v: &mut Value| *v = m[v.index()];
        r(&mut self.score);
        r(&mut self.d_s);
        for x in &mut self.reads {
            x.indices.iter_mut().for_each(r);
            r(&mut x.guard);
            r(&mut x.load);
            r(&mut x.partial);
        }
        for p in &mut self.params {
            r(&mut p.partial);
        }
        self.func = f;
    }
}

/// The textual form (`attnc emit ir --grad`): the program's captures, the function, then
/// the named outputs.
pub fn write_score_grad(p: &Program, g: &ScoreGrad) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "attention {} (score gradient)", p.name);
    write_captures(&mut out, p);
    write_function(&mut out, "score_grad(s, b, h, q, kv) -> f32", &g.func, p);
    let _ = writeln!(out, "outputs {{");
    let _ = writeln!(out, "  score = {}", g.score);
    let _ = writeln!(out, "  d/ds = {}", g.d_s);
    for r in &g.reads {
        let idx: Vec<String> = r.indices.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(
            out,
            "  d/d t{}({})[{}] if {} (read {}) = {}",
            r.tensor.0,
            p.tensors[r.tensor.0 as usize].name,
            idx.join(", "),
            r.guard,
            r.load,
            r.partial
        );
    }
    for q in &g.params {
        let _ = writeln!(
            out,
            "  d/d p{}({}) = {}",
            q.param.0, p.params[q.param.0 as usize].name, q.partial
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
    use crate::ir::Scalar;

    /// (score, d/ds, partials of reads, partials of params) of `score` at `s`.
    fn at(src: &str, s: f32, bind: &Bindings) -> (f32, f32, Vec<f32>, Vec<f32>) {
        let m = crate::compile_source(src).expect("compiles");
        let p = m.attention("a").unwrap();
        let g = differentiate(p);
        g.verify(p).unwrap();
        let mut scratch = Vec::new();
        let args = Args {
            s,
            b: 0,
            h: 0,
            q: 2,
            kv: 1,
        };
        eval(&g.func, p, args, bind, &mut scratch).unwrap();
        let v = |x: Value| scratch[x.index()].as_f32();
        (
            v(g.score),
            v(g.d_s),
            g.reads.iter().map(|r| v(r.partial)).collect(),
            g.params.iter().map(|r| v(r.partial)).collect(),
        )
    }

    fn score(body: &str) -> String {
        format!(
            "param c: f32; tensor w: f32[4];\nscore sc(s, b, h, q, kv) {{ {body} }}\nattention a {{ score = sc; }}"
        )
    }

    fn bind(c: f32) -> Bindings {
        Bindings {
            params: vec![Scalar::F32(c)],
            tensors: vec![BoundTensor {
                dims: vec![4],
                data: TensorData::F32(vec![0.5, -1.0, 2.0, 0.0]),
            }],
        }
    }

    #[test]
    fn subgradients_follow_pytorch() {
        let b = bind(1.0);
        // abs at 0: 0
        assert_eq!(at(&score("abs(s) + c"), 0.0, &b).1, 0.0);
        assert_eq!(at(&score("abs(s) + c"), -2.0, &b).1, -1.0);
        // max / min tie: half each
        let (_, ds, _, dc) = at(&score("max(s, c)"), 1.0, &b);
        assert_eq!((ds, dc[0]), (0.5, 0.5));
        let (_, ds, _, dc) = at(&score("min(s, c)"), 3.0, &b);
        assert_eq!((ds, dc[0]), (0.0, 1.0));
        // clamp: x gets everything at the boundaries, the bound when outside
        let (_, ds, _, dc) = at(&score("clamp(s, c, 2.0)"), 1.0, &b);
        assert_eq!((ds, dc[0]), (1.0, 0.0));
        let (_, ds, _, dc) = at(&score("clamp(s, c, 2.0)"), 0.0, &b);
        assert_eq!((ds, dc[0]), (0.0, 1.0));
        assert_eq!(at(&score("clamp(s, c, 2.0)"), 2.0, &b).1, 1.0);
        assert_eq!(at(&score("clamp(s, c, 2.0)"), 2.5, &b).1, 0.0);
        // sigmoid far out: finite r (1 - r)
        let (_, ds, _, _) = at(&score("sigmoid(s) + c"), -200.0, &b);
        assert_eq!(ds, 0.0);
        let (r, ds, _, _) = at(&score("sigmoid(s) * c"), 0.3, &b);
        assert!((ds - r * (1.0 - r)).abs() < 1e-7);
        // pow: d/da is 0 where b = 0; d/db is 0 where a = 0 and b >= 0
        let (_, ds, _, dc) = at(&score("pow(s, c - 1.0)"), 0.0, &b);
        assert_eq!((ds, dc[0]), (0.0, 0.0));
        // floor and casts carry nothing; if: only the taken arm
        assert_eq!(at(&score("floor(s) + c"), 1.5, &b).1, 0.0);
        let (_, ds, _, dc) = at(&score("if q > kv { s * 3.0 } else { c }"), 1.0, &b);
        assert_eq!((ds, dc[0]), (3.0, 0.0));
    }

    #[test]
    fn a_tensor_read_twice_gets_both_partials() {
        let b = bind(1.0);
        let (_, _, reads, _) = at(&score("s + w[q] * 2.0 + w[kv] * w[kv] + c"), 0.0, &b);
        // w[2] = 2.0 (d = 2), w[1] = -1 (d = 2 w = -2)
        assert_eq!(reads, vec![2.0, -2.0]);
        // the same element read at two sites: two entries
        let src = "param c: f32; tensor w: f32[4];\nscore sc(s, b, h, q, kv) { s + w[q] + w[kv + 1] * 3.0 }\nattention a { score = sc; }";
        let (_, _, reads, _) = at(src, 0.0, &b);
        assert_eq!(reads, vec![1.0, 3.0]);
    }

    #[test]
    fn integer_reads_and_masks_have_no_gradient() {
        let src = "tensor t: i32[4]; tensor w: f32[4];\nmask m(b, h, q, kv) { w[q] > 0.0 }\nscore sc(s, b, h, q, kv) { s + t[q] as f32 + floor(w[kv]) }\nattention a { mask = m; score = sc; }";
        let m = crate::compile_source(src).expect("compiles");
        let p = m.attention("a").unwrap();
        let g = differentiate(p);
        g.verify(p).unwrap();
        assert!(g.reads.is_empty() && g.params.is_empty());
    }
}
