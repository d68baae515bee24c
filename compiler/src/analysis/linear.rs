//! Closed-form kv-block ranges for masks that are conjunctions of linear constraints.
//!
//! In: a mask [`Function`] (and its [`Program`] for param names). Out: a [`ClosedForm`]
//! — the constraints `a_q*q + a_kv*kv + Σ c_p*param_p + k >= 0` whose conjunction is the
//! mask — or `None` when the mask is not of that form. Causal, sliding window, bands and
//! offsets for `Lq != Lkv` are. Given param values, [`ClosedForm::row`] gives each
//! q-block's first/last non-empty and first/last full kv block in O(#constraints), so a
//! kernel can compute its loop bounds and needs no index table (the PTX kernel does:
//! `backend::llvm::bounds` emits the same arithmetic on i64), and
//! [`ClosedForm::block_map`] builds the whole map in O(#q-blocks).
//!
//! `ClosedForm::derive_implied` does the same for the linear *conjuncts* of any mask
//! ([`implied_mask`]: `causal & same_doc` gives `q - kv >= 0`): a sound over-approximation
//! that bounds the kv range where the mask can be true, which the GPU block-table kernel
//! uses to skip tiles without evaluating them.
//!
//! The derivation is symbolic over exact integers; whether i32 arithmetic could wrap for
//! the actual lengths and param values is checked by the caller (the interval
//! evaluator's overflow flag over the whole domain) before the form is trusted.

use super::blockmap::{BlockKind, BlockMap, BlockMapBuilder};
use super::interval::{div_ceil, div_floor};
use crate::ir::{Arg, BinOp, Cmp, Function, Inst, Program, Scalar, Type, UnOp, Value};
use std::fmt;

/// `q*q + kv*kv + Σ params[i].1 * param(params[i].0) + k`, exact integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinExpr {
    pub q: i64,
    pub kv: i64,
    /// (param index, coefficient), sorted by param index, no zero coefficients.
    pub params: Vec<(u32, i64)>,
    pub k: i64,
}

impl LinExpr {
    fn constant(k: i64) -> Self {
        LinExpr {
            q: 0,
            kv: 0,
            params: vec![],
            k,
        }
    }
    fn add(&self, o: &LinExpr) -> Option<LinExpr> {
        let mut params = self.params.clone();
        for &(p, c) in &o.params {
            match params.iter_mut().find(|x| x.0 == p) {
                Some(x) => x.1 = x.1.checked_add(c)?,
                None => params.push((p, c)),
            }
        }
        params.retain(|x| x.1 != 0);
        params.sort();
        Some(LinExpr {
            q: self.q.checked_add(o.q)?,
            kv: self.kv.checked_add(o.kv)?,
            params,
            k: self.k.checked_add(o.k)?,
        })
    }
    fn scale(&self, s: i64) -> Option<LinExpr> {
        let mut params = Vec::new();
        for &(p, c) in &self.params {
            let c = c.checked_mul(s)?;
            if c != 0 {
                params.push((p, c));
            }
        }
        Some(LinExpr {
            q: self.q.checked_mul(s)?,
            kv: self.kv.checked_mul(s)?,
            params,
            k: self.k.checked_mul(s)?,
        })
    }
    fn is_const(&self) -> Option<i64> {
        (self.q == 0 && self.kv == 0 && self.params.is_empty()).then_some(self.k)
    }
    /// The constant part with param values substituted.
    fn offset(&self, params: &[Scalar]) -> Option<i128> {
        let mut k = self.k as i128;
        for &(p, c) in &self.params {
            k += c as i128 * params.get(p as usize)?.as_i32() as i128;
        }
        Some(k)
    }
}

/// `expr >= 0`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinConstraint {
    pub expr: LinExpr,
}

/// A mask that is exactly the conjunction of `constraints` (an empty list is `true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedForm {
    pub constraints: Vec<LinConstraint>,
    /// Names of the program's params, for printing.
    pub param_names: Vec<String>,
}

/// One q-block's kv range: blocks `first..end` are non-empty, and of those
/// `full_first..full_end` are full (the rest partial). Empty ranges have `first == end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowRange {
    pub first: usize,
    pub end: usize,
    pub full_first: usize,
    pub full_end: usize,
}

/// A constraint with params substituted: `a_q*q + a_kv*kv + k >= 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bound {
    pub a_q: i128,
    pub a_kv: i128,
    pub k: i128,
}

impl ClosedForm {
    /// Derives the closed form of `p`'s mask, if it has one (no b, h, tensors or
    /// non-linear operations on the path to the result).
    pub(crate) fn derive(p: &Program) -> Option<ClosedForm> {
        let f = p.mask.as_ref()?;
        let constraints = derive_fn(f)?;
        Some(ClosedForm {
            constraints,
            param_names: p.params.iter().map(|x| x.name.clone()).collect(),
        })
    }

    /// The closed form of the linear conjuncts of `p`'s mask ([`implied_mask`]): a sound
    /// over-approximation of any mask (the mask implies it), exactly [`Self::derive`]'s
    /// form when every conjunct is linear. `None` when no top-level conjunct is a linear
    /// constraint (or all of them are always true). `causal & same_doc` gives `q - kv >= 0`.
    pub(crate) fn derive_implied(p: &Program) -> Option<ClosedForm> {
        super::count(0, 1);
        let f = implied_mask(p.mask.as_ref()?)?;
        let constraints = derive_fn(&f)?;
        if constraints.is_empty() {
            return None;
        }
        Some(ClosedForm {
            constraints,
            param_names: p.params.iter().map(|x| x.name.clone()).collect(),
        })
    }

    /// Substitutes param values; `None` when a needed param is missing.
    pub fn bounds(&self, params: &[Scalar]) -> Option<Vec<Bound>> {
        self.constraints
            .iter()
            .map(|c| {
                Some(Bound {
                    a_q: c.expr.q as i128,
                    a_kv: c.expr.kv as i128,
                    k: c.expr.offset(params)?,
                })
            })
            .collect()
    }

    /// The kv-block range of the q-block holding rows `q0..=q1`.
    pub fn row(bounds: &[Bound], q0: i64, q1: i64, lkv: usize, kv_block: usize) -> RowRange {
        let none = RowRange {
            first: 0,
            end: 0,
            full_first: 0,
            full_end: 0,
        };
        if lkv == 0 {
            return none;
        }
        let (q0, q1) = (q0 as i128, q1 as i128);
        // Element ranges: non-empty [ne_lo, ne_hi], full [f_lo, f_hi].
        let (mut ne_lo, mut ne_hi) = (0i128, lkv as i128 - 1);
        let (mut f_lo, mut f_hi) = (0i128, lkv as i128 - 1);
        for b in bounds {
            let (qa, qb) = (b.a_q * q0, b.a_q * q1);
            let (qmin, qmax) = (qa.min(qb), qa.max(qb));
            if b.a_kv == 0 {
                if qmax + b.k < 0 {
                    return none;
                }
                if qmin + b.k < 0 {
                    f_lo = 1;
                    f_hi = 0;
                }
            } else if b.a_kv > 0 {
                // kv >= ceil(-(a_q q + k) / a_kv)
                ne_lo = ne_lo.max(div_ceil(-(qmax + b.k), b.a_kv));
                f_lo = f_lo.max(div_ceil(-(qmin + b.k), b.a_kv));
            } else {
                // kv <= floor((a_q q + k) / -a_kv)
                ne_hi = ne_hi.min(div_floor(qmax + b.k, -b.a_kv));
                f_hi = f_hi.min(div_floor(qmin + b.k, -b.a_kv));
            }
        }
        if ne_lo > ne_hi {
            return none;
        }
        let kb = kv_block as i128;
        let nkv = (lkv as i128 + kb - 1) / kb;
        let first = (ne_lo / kb) as usize;
        let end = (ne_hi / kb + 1) as usize;
        let (mut full_first, mut full_end) = (first, first);
        if f_lo <= f_hi {
            let ff = div_ceil(f_lo, kb);
            let fe = if f_hi == lkv as i128 - 1 {
                nkv
            } else {
                div_floor(f_hi + 1, kb)
            };
            if ff < fe {
                full_first = ff as usize;
                full_end = fe as usize;
            }
        }
        RowRange {
            first,
            end,
            full_first,
            full_end,
        }
    }

    /// Builds the block map in O(#q-blocks).
    pub fn block_map(
        bounds: &[Bound],
        lq: usize,
        lkv: usize,
        q_block: usize,
        kv_block: usize,
    ) -> BlockMap {
        let mut bld = BlockMapBuilder::new(lq, lkv, q_block, kv_block);
        for i in 0..lq.div_ceil(q_block) {
            let q0 = (i * q_block) as i64;
            let q1 = (((i + 1) * q_block).min(lq) - 1) as i64;
            let r = Self::row(bounds, q0, q1, lkv, kv_block);
            if r.full_first < r.full_end {
                bld.push_run(r.first, r.full_first, BlockKind::Partial);
                bld.push_run(r.full_first, r.full_end, BlockKind::Full);
                bld.push_run(r.full_end, r.end, BlockKind::Partial);
            } else {
                bld.push_run(r.first, r.end, BlockKind::Partial);
            }
            bld.end_row();
        }
        bld.finish()
    }

    /// Param `p`'s declared name (`p{p}` when it has none).
    fn param_name(&self, p: u32) -> String {
        self.param_names
            .get(p as usize)
            .cloned()
            .unwrap_or_else(|| format!("p{p}"))
    }

    fn fmt_expr(&self, e: &LinExpr, out: &mut String) {
        let mut terms: Vec<(i64, String)> = vec![(e.q, "q".into()), (e.kv, "kv".into())];
        for &(p, c) in &e.params {
            terms.push((c, self.param_name(p)));
        }
        terms.push((e.k, String::new()));
        fmt_terms(&terms, out);
    }

    /// The symbolic bound on kv implied by constraint `c` for rows `q0..=q1`: for the
    /// non-empty range (`worst = false`) or the full range (`worst = true`).
    fn fmt_bound(&self, c: &LinExpr, worst: bool) -> String {
        // a_q q + a_kv kv + P >= 0 ; the q end that maximizes a_q q gives the loosest bound.
        let loose_q = if c.q > 0 { "q1" } else { "q0" };
        let tight_q = if c.q > 0 { "q0" } else { "q1" };
        let qname = if worst { tight_q } else { loose_q };
        let a = c.kv;
        let sign = if a > 0 { -1 } else { 1 };
        let mut terms: Vec<(i64, String)> = vec![(sign * c.q, qname.into())];
        for &(p, k) in &c.params {
            terms.push((sign * k, self.param_name(p)));
        }
        terms.push((sign * c.k, String::new()));
        let mut s = String::new();
        fmt_terms(&terms, &mut s);
        let d = a.abs();
        if d == 1 {
            s
        } else if a > 0 {
            format!("ceil(({s}) / {d})")
        } else {
            format!("floor(({s}) / {d})")
        }
    }
}

fn fmt_terms(terms: &[(i64, String)], out: &mut String) {
    let mut first = true;
    for (c, name) in terms {
        if *c == 0 {
            continue;
        }
        let neg = *c < 0;
        let mag = c.unsigned_abs();
        if first {
            if neg {
                out.push('-');
            }
        } else {
            out.push_str(if neg { " - " } else { " + " });
        }
        if name.is_empty() {
            out.push_str(&mag.to_string());
        } else if mag == 1 {
            out.push_str(name);
        } else {
            out.push_str(&format!("{mag}*{name}"));
        }
        first = false;
    }
    if first {
        out.push('0');
    }
}

impl fmt::Display for ClosedForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.constraints.is_empty() {
            return writeln!(f, "mask = true");
        }
        let mut parts = Vec::new();
        for c in &self.constraints {
            let mut s = String::new();
            self.fmt_expr(&c.expr, &mut s);
            parts.push(format!("{s} >= 0"));
        }
        writeln!(f, "mask = {}", parts.join(" && "))?;
        writeln!(f, "per q-block of rows q0..=q1 (kv clipped to 0..=Lkv-1):")?;
        for (what, worst) in [("non-empty", false), ("full", true)] {
            let mut lo = vec!["0".to_string()];
            let mut hi = vec!["Lkv - 1".to_string()];
            let mut rows = Vec::new();
            for c in &self.constraints {
                let e = &c.expr;
                if e.kv > 0 {
                    lo.push(self.fmt_bound(e, worst));
                } else if e.kv < 0 {
                    hi.push(self.fmt_bound(e, worst));
                } else {
                    let mut s = String::new();
                    let qn = if (e.q > 0) != worst { "q1" } else { "q0" };
                    let mut terms = vec![(e.q, qn.to_string())];
                    for &(p, k) in &e.params {
                        terms.push((k, self.param_name(p)));
                    }
                    terms.push((e.k, String::new()));
                    fmt_terms(&terms, &mut s);
                    rows.push(format!("{s} >= 0"));
                }
            }
            let l = if lo.len() == 1 {
                lo[0].clone()
            } else {
                format!("max({})", lo.join(", "))
            };
            let h = if hi.len() == 1 {
                hi[0].clone()
            } else {
                format!("min({})", hi.join(", "))
            };
            let cond = if rows.is_empty() {
                String::new()
            } else {
                format!(" if {}", rows.join(" && "))
            };
            writeln!(f, "  {what} kv in [{l}, {h}]{cond}")?;
        }
        write!(
            f,
            "  kv blocks: non-empty lo/Bkv ..= hi/Bkv; full ceil(lo/Bkv) .. (hi+1)/Bkv (to the end when hi = Lkv-1)"
        )
    }
}

/// The conjunction a bool value denotes, if it is one of linear constraints.
fn derive_fn(f: &Function) -> Option<Vec<LinConstraint>> {
    if f.insts.is_empty() {
        return None;
    }
    let mut out = linear_values(f)[f.ret.index()].clone()?;
    // Drop duplicates and constraints that are always true.
    out.retain(|c| c.expr.is_const().is_none_or(|k| k < 0));
    let mut seen = Vec::new();
    out.retain(|c| {
        if seen.contains(c) {
            false
        } else {
            seen.push(c.clone());
            true
        }
    });
    Some(out)
}

/// `c ? a : false`, the form `&&` (and a guarded right operand) lowers to.
fn is_false_const(f: &Function, v: Value) -> bool {
    matches!(f.inst(v), Inst::ConstBool(false))
}

/// The conjunction of the top-level conjuncts of mask `f` that are linear constraints (in
/// q, kv and i32 params), as a mask function: `f` itself with its return value replaced
/// by `c_1 & c_2 & ...` (the other instructions become dead). `None` when no conjunct
/// is linear.
///
/// Top-level conjuncts: the operands of `&` (`BinOp::And`) and of `c ? a : false`
/// (`&&`), recursively from the return value. Every one of them is implied by the mask,
/// so the result is a sound over-approximation: wherever `f` is true, so is the result.
/// It is exactly `f` when every conjunct is linear.
pub fn implied_mask(f: &Function) -> Option<Function> {
    let (linear, _) = top_conjuncts(f)?;
    conjunction(f, &linear)
}

/// The mask `f` split into its linear and its other top-level conjuncts (as
/// [`implied_mask`] finds them): `(L, N)`, two mask functions (`f` with its return value
/// replaced by the conjunction of each group) with `f = L && N` at every point. `None`
/// unless both groups are non-empty. The block-table kernel records per partial block
/// whether one of them holds on the whole block, and the attention kernel then evaluates
/// only the other (`PtxOptions::mask_kinds`).
pub fn split_conjuncts(f: &Function) -> Option<(Function, Function)> {
    let (linear, other) = top_conjuncts(f)?;
    Some((conjunction(f, &linear)?, conjunction(f, &other)?))
}

/// A mask `L && (x == y)` whose one non-linear conjunct compares a value `x` of the query
/// side (reading `b`, `h`, `q`, params and tensors, never `kv`) with a value `y` of the key
/// side (never `q`): document ids (`doc[b, q] == doc[b, kv]`). The block-table kernel
/// classifies most of a document mask's tiles from the ranges of `x` over the tile's rows
/// and `y` over its columns instead of at every point: disjoint ranges, no point of the
/// tile has `x == y` (empty); one value on both sides, `x == y` everywhere (the tile is
/// `L`'s kind there). `x` and `y` are functions of their own (`f` with that return value)
/// whose tensor reads are unguarded: they may read where `f` would not (indices clamped
/// as everywhere; not for checked mode, which reports such reads). That is exact because
/// every guard of those reads is `true` or a conjunction of `L`'s conjuncts: where a guard
/// is false, `L` is false and the mask too, whatever `x == y` gives.
#[derive(Clone, Debug, PartialEq)]
pub struct SeparableEq {
    pub x: Function,
    pub y: Function,
}

/// [`SeparableEq`] of the mask `f`, if it has that form.
pub fn separable_eq(f: &Function) -> Option<SeparableEq> {
    let (linear, other) = top_conjuncts(f)?;
    let [v] = other[..] else {
        return None;
    };
    let Inst::Binary(BinOp::ICmp(Cmp::Eq), a, b) = *f.inst(v) else {
        return None;
    };
    if f.ty(a) != Type::I32 {
        return None;
    }
    // the args each value reads, not counting the guards of tensor reads (checked below)
    let mut reads: Vec<[bool; 5]> = vec![[false; 5]; f.insts.len()];
    let slot = |a: Arg| match a {
        Arg::S => 0,
        Arg::B => 1,
        Arg::H => 2,
        Arg::Q => 3,
        Arg::Kv => 4,
    };
    for (i, inst) in f.insts.iter().enumerate() {
        let mut r = [false; 5];
        if let Inst::Arg(x) = inst {
            r[slot(*x)] = true;
        }
        let ops = match inst {
            Inst::Load { indices, .. } => indices.clone(),
            _ => inst.operands(),
        };
        for o in ops {
            for (k, x) in reads[o.index()].iter().enumerate() {
                r[k] |= x;
            }
        }
        reads[i] = r;
    }
    let side = |v: Value, other: usize| !reads[v.index()][0] && !reads[v.index()][other];
    let (x, y) = if side(a, 4) && side(b, 3) {
        (a, b)
    } else if side(b, 4) && side(a, 3) {
        (b, a)
    } else {
        return None;
    };
    // every guard of their reads: true, or a conjunction of L's conjuncts
    fn implied(f: &Function, g: Value, linear: &[Value]) -> bool {
        linear.contains(&g)
            || matches!(f.inst(g), Inst::ConstBool(true))
            || matches!(f.inst(g), Inst::Binary(BinOp::And, p, q)
                if implied(f, *p, linear) && implied(f, *q, linear))
    }
    let live = f.live_from(&[x, y]);
    for (i, inst) in f.insts.iter().enumerate() {
        if let Inst::Load { guard, .. } = inst
            && live[i]
            && !implied(f, *guard, &linear)
        {
            return None;
        }
    }
    // `f` with a `true` first (every value one further) guarding every read, returning `r`
    let side_fn = |r: Value| {
        let mut g = Function::new(f.kind);
        let t = g.push(Inst::ConstBool(true), Type::Bool, f.spans[r.index()]);
        let m = |v: &Value| Value(v.0 + 1);
        for (i, inst) in f.insts.iter().enumerate() {
            let inst = match inst {
                Inst::Unary(op, a) => Inst::Unary(*op, m(a)),
                Inst::Binary(op, a, b) => Inst::Binary(*op, m(a), m(b)),
                Inst::Select(c, a, b) => Inst::Select(m(c), m(a), m(b)),
                Inst::Load {
                    tensor, indices, ..
                } => Inst::Load {
                    tensor: *tensor,
                    indices: indices.iter().map(m).collect(),
                    guard: t,
                },
                other => other.clone(),
            };
            g.push(inst, f.types[i], f.spans[i]);
        }
        g.ret = m(&r);
        g
    };
    Some(SeparableEq {
        x: side_fn(x),
        y: side_fn(y),
    })
}

/// A document mask whose documents can be tiled one by one: `L && (x == y)`
/// ([`SeparableEq`]) where the query side `x` reads neither `h` nor `kv` and the key side
/// `y` is the same expression with `kv` in place of `q` (`doc[b, q] == doc[b, kv]`, any
/// order). Where each value of `x` over the rows of a batch occupies one contiguous run of
/// rows (packed documents; the runtime checks that per call) and the keys are the rows
/// (`Lq == Lkv`), the mask is `L` inside each run's square and false elsewhere: the
/// document-tiled forward (`PtxOptions::doc_tiles`) runs `linear` over each document.
#[derive(Clone, Debug, PartialEq)]
pub struct DocSplit {
    /// The mask's linear conjuncts `L` as a mask function (`None`: the document test is
    /// the whole mask).
    pub linear: Option<Function>,
    /// `x`: the document of row `q` of batch `b` (reads `b`, `q`, params and tensors,
    /// unguarded: see [`SeparableEq`]).
    pub id: Function,
}

/// [`DocSplit`] of the mask `f`, if it has that form.
pub fn doc_split(f: &Function) -> Option<DocSplit> {
    let sep = separable_eq(f)?;
    let (linear, _) = top_conjuncts(f)?;
    let reads = |g: &Function, arg: Arg| {
        let live = g.live_from(&[g.ret]);
        g.insts
            .iter()
            .zip(live)
            .any(|(i, l)| l && *i == Inst::Arg(arg))
    };
    if reads(&sep.x, Arg::H) || reads(&sep.x, Arg::Kv) || reads(&sep.y, Arg::Q) {
        return None;
    }
    let mut budget = 4096u32;
    if !mirrored(&sep.x, sep.x.ret, &sep.y, sep.y.ret, &mut budget) {
        return None;
    }
    Some(DocSplit {
        linear: conjunction(f, &linear),
        id: sep.x,
    })
}

/// Whether value `a` of `x` and value `b` of `y` compute the same expression with `kv`
/// (in `y`) in place of `q` (in `x`), comparing at most `budget` pairs. The operands of a
/// commutative operation may come in either order (common-subexpression elimination
/// orders them by value number, which differs between the sides where a shared operand
/// such as a param sits between the two reads: `doc[b, q] + p` and `p + doc[b, kv]`).
fn mirrored(x: &Function, a: Value, y: &Function, b: Value, budget: &mut u32) -> bool {
    if *budget == 0 || x.ty(a) != y.ty(b) {
        return false;
    }
    *budget -= 1;
    let mut same = |u: &Value, v: &Value| mirrored(x, *u, y, *v, budget);
    match (x.inst(a), y.inst(b)) {
        (Inst::Arg(Arg::Q), Inst::Arg(Arg::Kv)) => true,
        (Inst::Arg(p), Inst::Arg(r)) => p == r && !matches!(p, Arg::Q | Arg::Kv),
        (Inst::Unary(o1, u), Inst::Unary(o2, v)) => o1 == o2 && same(u, v),
        (Inst::Binary(o1, u1, u2), Inst::Binary(o2, v1, v2)) => {
            o1 == o2
                && ((same(u1, v1) && same(u2, v2))
                    || (o1.is_commutative() && same(u1, v2) && same(u2, v1)))
        }
        (Inst::Select(c1, u1, u2), Inst::Select(c2, v1, v2)) => {
            same(c1, c2) && same(u1, v1) && same(u2, v2)
        }
        // (the side functions read unguarded: their guards are `true`)
        (
            Inst::Load {
                tensor: t1,
                indices: i1,
                ..
            },
            Inst::Load {
                tensor: t2,
                indices: i2,
                ..
            },
        ) => t1 == t2 && i1.len() == i2.len() && i1.iter().zip(i2).all(|(u, v)| same(u, v)),
        (i1, i2) => {
            matches!(
                i1,
                Inst::ConstBool(_) | Inst::ConstI32(_) | Inst::ConstF32(_) | Inst::Param(_)
            ) && i1 == i2
        }
    }
}

/// The top-level conjuncts of the boolean `f` (through `&&` and `c ? a : false`, from the
/// return value, left to right, each value once): `(linear, other)`, those with an exact
/// linear form ([`linear_values`]) and the rest. `None` unless `f` returns a bool.
fn top_conjuncts(f: &Function) -> Option<(Vec<Value>, Vec<Value>)> {
    if f.insts.is_empty() || f.ty(f.ret) != Type::Bool {
        return None;
    }
    let lin = linear_values(f);
    let (mut linear, mut other): (Vec<Value>, Vec<Value>) = (Vec::new(), Vec::new());
    let mut stack = vec![f.ret];
    while let Some(v) = stack.pop() {
        if lin[v.index()].is_some() {
            if !linear.contains(&v) {
                linear.push(v);
            }
            continue;
        }
        match f.inst(v) {
            Inst::Binary(BinOp::And, a, b) => {
                stack.push(*b);
                stack.push(*a);
            }
            Inst::Select(c, a, b) if is_false_const(f, *b) => {
                stack.push(*a);
                stack.push(*c);
            }
            _ => {
                if !other.contains(&v) {
                    other.push(v);
                }
            }
        }
    }
    Some((linear, other))
}

/// `f` with its return value replaced by the conjunction (`&&`, left to right) of `vs`;
/// `None` when `vs` is empty.
fn conjunction(f: &Function, vs: &[Value]) -> Option<Function> {
    let (&first, rest) = vs.split_first()?;
    let mut g = f.clone();
    let mut acc = first;
    for &v in rest {
        let span = g.spans[v.index()];
        acc = g.push(Inst::Binary(BinOp::And, acc, v), Type::Bool, span);
    }
    g.ret = acc;
    Some(g)
}

/// A score `s + (lin as f32) * c` (either order of each sum and product): the additive
/// position bias of ALiBi (`s + (kv - q) as f32 * slope(h)`). `lin` is the linear form
/// ([`linear_ints`]) of the converted integer, `c` a float value that reads neither `s`
/// nor the positions nor a tensor (the same for every element of one head and batch).
/// The GPU forward emits such a score in fewer instructions (`PtxOptions::pos_bias`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PosBias {
    pub lin: LinExpr,
    pub c: Value,
}

/// [`PosBias`] of the score `f`, or `None` when `f` is not of that form.
pub fn pos_bias(f: &Function) -> Option<PosBias> {
    if f.insts.is_empty() || f.ty(f.ret) != Type::F32 {
        return None;
    }
    let is_s = |v: Value| matches!(f.inst(v), Inst::Arg(Arg::S));
    let Inst::Binary(BinOp::FAdd, a, b) = f.inst(f.ret) else {
        return None;
    };
    let prod = match (is_s(*a), is_s(*b)) {
        (true, false) => *b,
        (false, true) => *a,
        _ => return None,
    };
    let Inst::Binary(BinOp::FMul, x, y) = f.inst(prod) else {
        return None;
    };
    let forms = linear_ints(f);
    let conv = |v: Value| match f.inst(v) {
        Inst::Unary(UnOp::I2F, i) => forms[i.index()].clone(),
        _ => None,
    };
    // `c` may read b, h, params and constants only
    let uniform = |v: Value| {
        f.live_from(&[v]).iter().zip(&f.insts).all(|(live, inst)| {
            !live
                || !matches!(
                    inst,
                    Inst::Arg(Arg::S | Arg::Q | Arg::Kv) | Inst::Load { .. }
                )
        })
    };
    let (lin, c) = match (conv(*x), conv(*y)) {
        (Some(l), _) if uniform(*y) => (l, *y),
        (_, Some(l)) if uniform(*x) => (l, *x),
        _ => return None,
    };
    Some(PosBias { lin, c })
}

/// Per value of `f`, its exact linear form over q, kv and the i32 params, where it has one
/// (sums, differences, negations and products by constants of positions, params and
/// constants; `None` on i64 overflow). The GPU score emitter reads them too
/// (`backend::llvm::expr`: position sums converted to f32 without a per-element `cvt`).
pub fn linear_ints(f: &Function) -> Vec<Option<LinExpr>> {
    let mut ints: Vec<Option<LinExpr>> = vec![None; f.insts.len()];
    for (i, inst) in f.insts.iter().enumerate() {
        ints[i] = match (inst, f.types[i]) {
            (Inst::Arg(Arg::Q), _) => Some(LinExpr {
                q: 1,
                ..LinExpr::constant(0)
            }),
            (Inst::Arg(Arg::Kv), _) => Some(LinExpr {
                kv: 1,
                ..LinExpr::constant(0)
            }),
            (Inst::ConstI32(x), _) => Some(LinExpr::constant(*x as i64)),
            (Inst::Param(p), Type::I32) => Some(LinExpr {
                params: vec![(p.0, 1)],
                ..LinExpr::constant(0)
            }),
            (Inst::Unary(UnOp::INeg, a), _) => ints[a.index()].as_ref().and_then(|x| x.scale(-1)),
            (Inst::Binary(op, a, b), _) => {
                let (x, y) = (ints[a.index()].as_ref(), ints[b.index()].as_ref());
                match op {
                    BinOp::IAdd => x.zip(y).and_then(|(x, y)| x.add(y)),
                    BinOp::ISub => x
                        .zip(y)
                        .and_then(|(x, y)| y.scale(-1).and_then(|ny| x.add(&ny))),
                    BinOp::IMul => match (x, y) {
                        (Some(x), Some(y)) => match (x.is_const(), y.is_const()) {
                            (_, Some(k)) => x.scale(k),
                            (Some(k), _) => y.scale(k),
                            _ => None,
                        },
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
    }
    ints
}

/// At most this many linear forms in one side of [`max_min_forms`].
const MAX_FORMS: usize = 8;

/// Per value of `f`, `(max, min)`: linear forms whose maximum the value is (`abs(e)` is
/// the maximum of `e` and `-e`, `max(a, b)` of `a`'s and `b`'s, a sum of the pairwise
/// sums), and forms whose minimum it is (`min`, and negations of the other side); a
/// linear value is both, alone. `None` where the value has no such form (or more than
/// [`MAX_FORMS`] of them). Exact over the integers, as [`linear_ints`]: whether the i32
/// arithmetic (`abs` of `i32::MIN` among it) can wrap is the launch's overflow check.
#[allow(clippy::type_complexity)]
fn max_min_forms(
    f: &Function,
    ints: &[Option<LinExpr>],
) -> Vec<(Option<Vec<LinExpr>>, Option<Vec<LinExpr>>)> {
    type Forms = Option<Vec<LinExpr>>;
    let neg = |v: &Forms| -> Forms { v.as_ref()?.iter().map(|e| e.scale(-1)).collect() };
    let union = |a: &Forms, b: &Forms| -> Forms {
        let mut out = a.clone()?;
        out.extend(b.clone()?);
        (out.len() <= MAX_FORMS).then_some(out)
    };
    let sums = |a: &Forms, b: &Forms| -> Forms {
        let (a, b) = (a.as_ref()?, b.as_ref()?);
        if a.len() * b.len() > MAX_FORMS {
            return None;
        }
        a.iter()
            .flat_map(|x| b.iter().map(move |y| x.add(y)))
            .collect()
    };
    let mut out: Vec<(Forms, Forms)> = Vec::with_capacity(f.insts.len());
    for (i, inst) in f.insts.iter().enumerate() {
        let forms = if let Some(e) = &ints[i] {
            (Some(vec![e.clone()]), Some(vec![e.clone()]))
        } else if f.types[i] != Type::I32 {
            (None, None)
        } else {
            match inst {
                Inst::Unary(UnOp::IAbs, a) => {
                    let (up, down) = &out[a.index()];
                    (union(up, &neg(down)), None)
                }
                Inst::Unary(UnOp::INeg, a) => {
                    let (up, down) = &out[a.index()];
                    (neg(down), neg(up))
                }
                Inst::Binary(BinOp::IMax, a, b) => {
                    (union(&out[a.index()].0, &out[b.index()].0), None)
                }
                Inst::Binary(BinOp::IMin, a, b) => {
                    (None, union(&out[a.index()].1, &out[b.index()].1))
                }
                Inst::Binary(BinOp::IAdd, a, b) => {
                    let (x, y) = (&out[a.index()], &out[b.index()]);
                    (sums(&x.0, &y.0), sums(&x.1, &y.1))
                }
                Inst::Binary(BinOp::ISub, a, b) => {
                    let (x, y) = (&out[a.index()], &out[b.index()]);
                    (sums(&x.0, &neg(&y.1)), sums(&x.1, &neg(&y.0)))
                }
                _ => (None, None),
            }
        };
        out.push(forms);
    }
    out
}

/// `max(ups) <= min(downs)` (`<` with `strict`) as constraints: `d - u >= 0` (`d - u - 1`)
/// for every `u` of `ups` and `d` of `downs`; `None` on i64 overflow.
fn below_pairs(ups: &[LinExpr], downs: &[LinExpr], strict: bool) -> Option<Vec<LinConstraint>> {
    let mut out = Vec::new();
    for u in ups {
        for d in downs {
            let mut e = d.add(&u.scale(-1)?)?;
            if strict {
                e = e.add(&LinExpr::constant(-1))?;
            }
            out.push(LinConstraint { expr: e });
        }
    }
    Some(out)
}

/// Per value of `f` (live ones only), the conjunction of linear constraints a bool value
/// denotes, when it is one.
fn linear_values(f: &Function) -> Vec<Option<Vec<LinConstraint>>> {
    let live = f.live();
    let ints = linear_ints(f);
    let hull = max_min_forms(f, &ints);
    let mut bools: Vec<Option<Vec<LinConstraint>>> = vec![None; f.insts.len()];
    let is_false = |c: &Option<Vec<LinConstraint>>| matches!(c, Some(v) if v.len() == 1 && v[0].expr.is_const().is_some_and(|k| k < 0));
    for (i, inst) in f.insts.iter().enumerate() {
        if !live[i] {
            continue;
        }
        match (inst, f.types[i]) {
            (Inst::ConstBool(true), _) => bools[i] = Some(vec![]),
            (Inst::ConstBool(false), _) => {
                bools[i] = Some(vec![LinConstraint {
                    expr: LinExpr::constant(-1),
                }])
            }
            (Inst::Unary(UnOp::Not, a), _) => {
                bools[i] = match &bools[a.index()] {
                    // !(e >= 0)  <=>  -e - 1 >= 0
                    Some(v) if v.len() == 1 => v[0]
                        .expr
                        .scale(-1)
                        .and_then(|e| e.add(&LinExpr::constant(-1)))
                        .map(|expr| vec![LinConstraint { expr }]),
                    Some(v) if v.is_empty() => Some(vec![LinConstraint {
                        expr: LinExpr::constant(-1),
                    }]),
                    _ => None,
                }
            }
            (Inst::Binary(op, a, b), _) => {
                let (x, y) = (&ints[a.index()], &ints[b.index()]);
                match op {
                    // a comparison of a maximum of linear forms with a minimum of them
                    // (`abs(q - kv) <= w`, `max(q - kv, kv - q) < w`, `kv >= q - w`
                    // through `min`): one constraint per pair
                    BinOp::ICmp(c @ (Cmp::Le | Cmp::Lt | Cmp::Ge | Cmp::Gt))
                        if x.is_none() || y.is_none() =>
                    {
                        let (small, big) = match c {
                            Cmp::Le | Cmp::Lt => (*a, *b),
                            _ => (*b, *a),
                        };
                        let strict = matches!(c, Cmp::Lt | Cmp::Gt);
                        let (Some(ups), Some(downs)) =
                            (&hull[small.index()].0, &hull[big.index()].1)
                        else {
                            continue;
                        };
                        bools[i] = below_pairs(ups, downs, strict);
                    }
                    BinOp::ICmp(c) => {
                        let (Some(x), Some(y)) = (x, y) else { continue };
                        // None when a coefficient overflows i64: not linear then
                        let cmp = || -> Option<Vec<LinExpr>> {
                            let d = x.add(&y.scale(-1)?)?;
                            let nd = d.scale(-1)?;
                            let m1 = LinExpr::constant(-1);
                            Some(match c {
                                Cmp::Ge => vec![d],
                                Cmp::Le => vec![nd],
                                Cmp::Gt => vec![d.add(&m1)?],
                                Cmp::Lt => vec![nd.add(&m1)?],
                                Cmp::Eq => vec![d, nd],
                                Cmp::Ne => return None,
                            })
                        };
                        bools[i] = cmp()
                            .map(|v| v.into_iter().map(|expr| LinConstraint { expr }).collect());
                    }
                    BinOp::And => {
                        if let (Some(x), Some(y)) = (&bools[a.index()], &bools[b.index()]) {
                            bools[i] = Some(x.iter().chain(y).cloned().collect());
                        }
                    }
                    _ => {}
                }
            }
            (Inst::Select(c, a, b), Type::Bool) => {
                // c ? a : false  ==  c && a
                if is_false(&bools[b.index()])
                    && let (Some(x), Some(y)) = (&bools[c.index()], &bools[a.index()])
                {
                    bools[i] = Some(x.iter().chain(y).cloned().collect());
                }
            }
            _ => {}
        }
    }
    bools
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(src: &str) -> Program {
        crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs
            .remove(0)
    }

    fn implied(src: &str) -> Option<String> {
        ClosedForm::derive_implied(&program(src)).map(|cf| {
            cf.to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("mask = ")
                .to_string()
        })
    }

    #[test]
    fn implied_constraints_of_tensor_masks() {
        let doc = "tensor doc: i32[B, KV]; param window: i32;\n";
        // causal & same_doc: the causal constraint
        assert_eq!(
            implied(&format!(
                "{doc} mask c(b, h, q, kv) {{ q >= kv }} mask d(b, h, q, kv) {{ doc[b, q] == doc[b, kv] }} \
                 attention a {{ mask = c & d; }}"
            ))
            .as_deref(),
            Some("q - kv >= 0")
        );
        // the tensor conjunct first, a sliding window with a param, && instead of &
        assert_eq!(
            implied(&format!(
                "{doc} mask m(b, h, q, kv) {{ doc[b, q] == doc[b, kv] && q - kv <= window && q >= kv }} \
                 attention a {{ mask = m; }}"
            ))
            .as_deref(),
            Some("-q + kv + window >= 0 && q - kv >= 0")
        );
        // no linear conjunct: a disjunction, a tensor only, a b-dependent constraint
        for m in [
            "doc[b, q] == doc[b, kv] || q >= kv",
            "doc[b, q] == doc[b, kv]",
            "q >= kv + b && doc[b, q] == doc[b, kv]",
            "q * kv >= 3 && doc[b, q] == doc[b, kv]",
        ] {
            assert_eq!(
                implied(&format!(
                    "{doc} mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
                )),
                None,
                "{m}"
            );
        }
        // a linear mask: exactly its closed form
        let p = program("mask m(b, h, q, kv) { q >= kv && kv + 8 > q } attention a { mask = m; }");
        assert_eq!(ClosedForm::derive_implied(&p), ClosedForm::derive(&p));
        assert!(ClosedForm::derive(&p).is_some());
        // the implied mask is a function whose only live parts are the linear conjuncts
        let p = program(&format!(
            "{doc} mask m(b, h, q, kv) {{ q >= kv && doc[b, q] == doc[b, kv] }} attention a {{ mask = m; }}"
        ));
        let f = implied_mask(p.mask.as_ref().unwrap()).unwrap();
        assert!(!f.uses_tensors() && !f.uses_arg(Arg::B));
        assert!(p.mask.as_ref().unwrap().uses_tensors());
    }

    /// `pos_bias`: `s + (lin as f32) * c` in either order, `c` free of s, the positions
    /// and tensors; other scores are not.
    #[test]
    fn pos_bias_of_scores() {
        let bias = |sc: &str| {
            let p = program(&format!(
                "tensor t: f32[H]; param w: i32;\n score f(s, b, h, q, kv) {{ {sc} }} \
                 attention a {{ score = f; }}"
            ));
            pos_bias(p.score.as_ref().unwrap()).map(|pb| (pb.lin.q, pb.lin.kv, pb.lin.k))
        };
        for (sc, want) in [
            ("s + (kv - q) as f32 * exp2(-((h + 1) as f32))", (-1, 1, 0)),
            (
                "((h + 1) as f32 * 0.5) * (q - kv + 3) as f32 + s",
                (1, -1, 3),
            ),
            ("s + (kv + 7) as f32 * -0.25", (0, 1, 7)),
        ] {
            assert_eq!(bias(sc), Some(want), "{sc}");
        }
        for sc in [
            "s",
            "2.0 * s + (kv - q) as f32 * 0.5",
            "s + (kv - q) as f32 * s",
            "s + (kv - q) as f32 * (q as f32)",
            "s + (kv - q) as f32 * t[h]",
            "s + (kv * q) as f32 * 0.5",
            "30.0 * tanh(s / 30.0)",
        ] {
            assert_eq!(bias(sc), None, "{sc}");
        }
    }

    /// `split_conjuncts`: the linear conjuncts (no tensor read) and the rest (no position
    /// constraint of their own), `None` when either group is empty.
    #[test]
    fn split_conjuncts_of_tensor_masks() {
        let doc = "tensor doc: i32[B, KV]; param window: i32;\n";
        let split = |m: &str| {
            let p = program(&format!(
                "{doc} mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
            ));
            split_conjuncts(p.mask.as_ref().unwrap())
        };
        for m in [
            "q >= kv && doc[b, q] == doc[b, kv]",
            "doc[b, q] == doc[b, kv] & q - kv <= window & q >= kv",
            "(doc[b, q] == doc[b, kv] || kv < 3) && q >= kv",
        ] {
            let (l, n) = split(m).unwrap_or_else(|| panic!("{m}"));
            assert!(!l.uses_tensors(), "{m}");
            assert!(n.uses_tensors(), "{m}");
            assert!(derive_fn(&l).is_some(), "{m}: L is linear");
            assert!(derive_fn(&n).is_none(), "{m}: N is not");
        }
        for m in [
            "q >= kv",
            "doc[b, q] == doc[b, kv]",
            "doc[b, q] == doc[b, kv] || q >= kv",
        ] {
            assert!(split(m).is_none(), "{m}");
        }
    }

    /// `doc_split`: document masks whose key side mirrors the query side, with their
    /// linear part (evaluated against the conjuncts it stands for) and the id function,
    /// also where CSE ordered a commutative operation's operands differently on the two
    /// sides; refused where the sides differ (another tensor, another batch index, an
    /// offset on one side, a difference's operands swapped) or the query side reads `h`.
    #[test]
    fn doc_split_of_document_masks() {
        use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
        let head = "tensor doc: i32[B, KV]; tensor doc2: i32[B, KV]; param window: i32;\n";
        let split = |m: &str| {
            let p = program(&format!(
                "{head} mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
            ));
            (doc_split(p.mask.as_ref().unwrap()), p)
        };
        let ids: Vec<i32> = (0..2 * 16).map(|i| (i % 16) / 5 + 10 * (i / 16)).collect();
        let t = BoundTensor {
            dims: vec![2, 16],
            data: TensorData::I32(ids.clone()),
        };
        let bind = Bindings {
            params: vec![Scalar::I32(3)],
            tensors: vec![t.clone(), t],
        };
        let lin = |q: i32, kv: i32| [q >= kv, q >= kv && q - kv <= 3];
        let same = |x: i32| x;
        for (m, want, id) in [
            (
                "q >= kv && doc[b, q] == doc[b, kv]",
                Some(0),
                same as fn(i32) -> i32,
            ),
            ("doc[b, q] == doc[b, kv]", None, same),
            (
                "doc[b, kv] == doc[b, q] & q - kv <= window & q >= kv",
                Some(1),
                same,
            ),
            ("doc[b, q] / 2 == doc[b, kv] / 2 && q >= kv", Some(0), |x| {
                x / 2
            }),
            // commutative operations whose operands CSE orders differently on the two
            // sides (the param's value number lies between the two reads)
            (
                "doc[b, q] + window == doc[b, kv] + window && q >= kv",
                Some(0),
                |x| x + 3,
            ),
            ("min(doc[b, q], 2) == min(doc[b, kv], 2)", None, |x| {
                x.min(2)
            }),
            ("doc[b, q] * 3 == doc[b, kv] * 3 && q >= kv", Some(0), |x| {
                x * 3
            }),
        ] {
            let (d, p) = split(m);
            let d = d.unwrap_or_else(|| panic!("{m}"));
            assert_eq!(d.linear.is_some(), want.is_some(), "{m}");
            let mut scratch = Vec::new();
            for (b, q, kv) in [(0, 3, 9), (1, 12, 2), (1, 0, 15), (0, 7, 5), (1, 9, 9)] {
                let at = Args {
                    s: 0.0,
                    b,
                    h: 0,
                    q,
                    kv,
                };
                let x = eval(&d.id, &p, at, &bind, &mut scratch).unwrap();
                assert_eq!(x, Scalar::I32(id(ids[(16 * b + q) as usize])), "{m}: id");
                if let (Some(l), Some(k)) = (&d.linear, want) {
                    let v = eval(l, &p, at, &bind, &mut scratch).unwrap();
                    assert_eq!(v, Scalar::Bool(lin(q, kv)[k]), "{m}: L at {q}, {kv}");
                }
            }
        }
        for m in [
            "q >= kv && doc[b, q] == doc[0, kv]",
            "q >= kv && doc[b, q] + 1 == doc[b, kv]",
            "q >= kv && doc[b, q] - window == window - doc[b, kv]",
            "q >= kv && doc[b, q] == doc2[b, kv]",
            "q >= kv && doc[b, q + h] == doc[b, kv + h]",
            "q >= kv && doc[h, q] == doc[h, kv]",
            "q >= kv",
        ] {
            assert!(split(m).0.is_none(), "{m}");
        }
    }

    /// `separable_eq`: the document masks' `x == y` with `x` on the query side and `y` on
    /// the key side (either order, guarded by the linear conjuncts or not), whose side
    /// functions read the ids unguarded: evaluated by the interpreter at points where the
    /// mask's guard is false they give the ids; refused where a side reads the other
    /// position, where the comparison is not `==` or not the one other conjunct, or where
    /// a read is guarded by something the linear conjuncts do not imply.
    #[test]
    fn separable_eq_of_document_masks() {
        use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
        let doc = "tensor doc: i32[B, KV]; param window: i32;\n";
        let sep = |m: &str| {
            let p = program(&format!(
                "{doc} mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
            ));
            (separable_eq(p.mask.as_ref().unwrap()), p)
        };
        let ids: Vec<i32> = (0..2 * 16).map(|i| (i % 16) / 5 + 10 * (i / 16)).collect();
        let bind = Bindings {
            params: vec![Scalar::I32(3)],
            tensors: vec![BoundTensor {
                dims: vec![2, 16],
                data: TensorData::I32(ids.clone()),
            }],
        };
        for m in [
            "q >= kv && doc[b, q] == doc[b, kv]",
            "doc[b, q] == doc[b, kv]",
            "doc[b, kv] == doc[b, q] & q - kv <= window & q >= kv",
            "q >= kv && q - kv <= window && doc[b, q] == doc[b, kv]",
        ] {
            let (s, p) = sep(m);
            let s = s.unwrap_or_else(|| panic!("{m}"));
            let mut scratch = Vec::new();
            // (q < kv: the mask's guard is false there; the sides still read)
            for (b, q, kv) in [(0, 3, 9), (1, 12, 2), (1, 0, 15)] {
                let at = Args {
                    s: 0.0,
                    b,
                    h: 0,
                    q,
                    kv,
                };
                let x = eval(&s.x, &p, at, &bind, &mut scratch).unwrap();
                let y = eval(&s.y, &p, at, &bind, &mut scratch).unwrap();
                assert_eq!(x, Scalar::I32(ids[(16 * b + q) as usize]), "{m}: x");
                assert_eq!(y, Scalar::I32(ids[(16 * b + kv) as usize]), "{m}: y");
            }
        }
        for m in [
            "q >= kv",
            "q >= kv && doc[b, q] == doc[b, kv] + q",
            "q >= kv && doc[b, q] != doc[b, kv]",
            "q >= kv && doc[b, q] == doc[b, kv] && doc[b, kv] > 0",
            "(q % 2 == 0) && doc[b, q] == doc[b, kv]",
            "doc[b, q] == doc[b, kv] || q >= kv",
        ] {
            assert!(sep(m).0.is_none(), "{m}");
        }
    }

    /// Windows written with `abs`, `min` and `max` (`abs(q - kv) <= w`, FlexAttention's
    /// `(q_idx - kv_idx).abs() <= W` as `attnc.flex` ports it): a closed form whose
    /// constraints hold exactly where the mask does, at every point of a grid with two
    /// param values; refused where the comparison is a disjunction (`abs(e) >= w`,
    /// `kv >= min(..)`, two bands) or an equality with an `abs`.
    #[test]
    fn closed_forms_of_abs_min_max_windows() {
        use crate::interp::{Args, Bindings, eval};
        let at = |e: &LinExpr, q: i64, kv: i64, w: i64| {
            e.q * q + e.kv * kv + e.k + e.params.iter().map(|&(_, c)| c * w).sum::<i64>()
        };
        for (m, n) in [
            ("abs(q - kv) <= window", 2),
            ("abs(kv - q) < 7 && q >= kv", 3),
            ("max(q - kv, kv - q) <= window", 2),
            ("min(q, 30) >= kv", 2),
            ("abs(q - kv) + 2 <= window", 2),
            ("window - abs(q - kv) >= 0", 2),
            ("-abs(q - kv) > -window", 2),
            ("abs(q - kv - window) <= 3 && q >= kv", 3),
            ("max(abs(q - kv), 2) <= window", 3),
            ("min(q, 30) >= max(kv, 3)", 4),
        ] {
            let p = program(&format!(
                "param window: i32; mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
            ));
            let cf = ClosedForm::derive(&p).unwrap_or_else(|| panic!("{m}: no closed form"));
            assert!(cf.constraints.len() <= n, "{m}: {cf}");
            let f = p.mask.as_ref().unwrap();
            let mut scratch = Vec::new();
            for w in [5, 11] {
                let bind = Bindings {
                    params: vec![Scalar::I32(w as i32)],
                    tensors: vec![],
                };
                for q in 0..40 {
                    for kv in 0..40 {
                        let args = Args {
                            s: 0.0,
                            b: 0,
                            h: 0,
                            q: q as i32,
                            kv: kv as i32,
                        };
                        let want = eval(f, &p, args, &bind, &mut scratch).unwrap();
                        let got = cf.constraints.iter().all(|c| at(&c.expr, q, kv, w) >= 0);
                        assert_eq!(want, Scalar::Bool(got), "{m} at q {q} kv {kv} window {w}");
                    }
                }
            }
        }
        for m in [
            "abs(q - kv) >= window",
            "abs(q - kv) == 3",
            "kv >= min(q - 3, 2 * q)",
            "max(q, kv) >= 4",
            "abs(q - kv) <= abs(kv)",
            // two bands, 2 <= |q - kv| <= 6: no conjunction of half-planes
            "abs(abs(q - kv) - 4) <= 2",
        ] {
            let p = program(&format!(
                "param window: i32; mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}"
            ));
            assert!(ClosedForm::derive(&p).is_none(), "{m}");
        }
    }

    #[test]
    fn sliding_window_rows() {
        // q - kv >= 0 && kv - q + 3 >= 0  (window 4)
        let b = [
            Bound {
                a_q: 1,
                a_kv: -1,
                k: 0,
            },
            Bound {
                a_q: -1,
                a_kv: 1,
                k: 3,
            },
        ];
        // rows 8..=11, kv block 4: non-empty kv 5..=11 -> blocks 1..3; full kv 8..=8 -> none
        assert_eq!(
            ClosedForm::row(&b, 8, 11, 100, 4),
            RowRange {
                first: 1,
                end: 3,
                full_first: 1,
                full_end: 1
            }
        );
        let causal = [Bound {
            a_q: 1,
            a_kv: -1,
            k: 0,
        }];
        assert_eq!(
            ClosedForm::row(&causal, 8, 11, 10, 4),
            RowRange {
                first: 0,
                end: 3,
                full_first: 0,
                full_end: 2
            }
        );
        assert_eq!(
            ClosedForm::row(&causal, 8, 9, 10, 4),
            RowRange {
                first: 0,
                end: 3,
                full_first: 0,
                full_end: 2
            }
        );
    }
}
