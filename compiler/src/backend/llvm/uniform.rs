//! Tensor reads that are one element over a whole tile: the integer index arithmetic of a
//! function evaluated once per tile over intervals, at run time.
//!
//! In: an IR [`Function`] (the backward's score-gradient function), the tile's box of
//! positions (`q` and `kv` ranges; `b`, `h` and params are single values), the kernel's
//! [`Env`]. Out: [`TileLoads`] — whether every `Load` of the function reads one and the
//! same element for every position of the box (`uniform`, an i1 the same in every lane
//! that passes the same box), and per `Load` the value at that element (read once, its
//! index clamped as every read is) and the element's flat index.
//!
//! A learned relative-position table read at `clamp(q - kv, -64, 64) + 64` reads one
//! element on every tile whose `q - kv` lies beyond the clamp — all but the tiles along
//! the diagonal. There the element code can take the value from a register instead of
//! computing an index and gathering per element, and the capture gradient needs one sum
//! per tile instead of a run per element (`backward.rs`, "Capture gradients").
//!
//! The rules are written once against `bounds::Arith` (LLVM values in the kernel, host
//! integers in the tests, as the closed-form bounds are). Rules (each an
//! over-approximation, so `uniform` is sound): positions and constants,
//! i32 params, `b` and `h` are points or the box's ranges; `+ - *`, `min`, `max`, `neg`,
//! `abs` by interval arithmetic in i64 (a result outside i32 makes the tile non-uniform:
//! the IR wraps where i64 does not); `/` and `%` by a positive constant, shifts by a
//! constant in `0..32`; `select` the hull of both arms (its condition unknown); a bool
//! converted to i32 is `0..=1`; an integer `Load` reading one element is that value (or
//! the hull with 0 when its guard is not constantly true).
//!
//! Index paths outside those rules whose indices depend on the positions only through
//! `kv - q` (`analysis::diagonal`: T5's bucket `log(|kv - q| / 8)`, any float arithmetic
//! on the distance) take the *diagonal scan* instead ([`Method::Diagonals`]): the warp's
//! box spans the diagonals `kv.lo - q.hi ..= kv.hi - q.lo` (the union of its lanes'
//! boxes); the lanes evaluate the index path at every one of them in turn (lane `l` at
//! `lo + l`, `lo + l + 32`, ...; with `q = 0`, `kv = d`: the same integers the element
//! code computes from `kv - q`) and the box is uniform when every diagonal reads the
//! elements diagonal `lo` reads (`vote.all`). Exact, not an over-approximation, and the
//! same LLVM code as the element's, so float arithmetic on the path needs no error
//! bounds. Any other operation on a load's index path makes [`analyzable`] false: no
//! uniform path is emitted.

use super::LlvmError;
use super::bounds::{Arith, Ir};
use super::expr::{Elem, Env, emit_values_at, flat_index};
use super::gpu::{Gpu, R};
use crate::ir::{Arg, BinOp, Function, Inst, Type, UnOp, Value};
use inkwell::IntPredicate;
use inkwell::values::{BasicValueEnum, IntValue};

/// The positions of one tile: inclusive i32 ranges of `q` and `kv` (every element the
/// element code evaluates lies inside), its batch and head.
#[derive(Clone, Copy)]
pub(crate) struct TileBox<'ctx> {
    pub b: IntValue<'ctx>,
    pub h: IntValue<'ctx>,
    pub q: (IntValue<'ctx>, IntValue<'ctx>),
    pub kv: (IntValue<'ctx>, IntValue<'ctx>),
}

/// What [`emit_tile_loads`] gives: see the module docs.
pub(crate) struct TileLoads<'ctx> {
    /// Every `Load` reads one element over the box (and no interval left i32).
    pub uniform: IntValue<'ctx>,
    /// Per instruction: a `Load`'s value at the box's element (its guard not applied).
    pub values: Vec<Option<BasicValueEnum<'ctx>>>,
    /// Per instruction: a `Load`'s flat element index (i64, clamped as the read).
    pub flat: Vec<Option<IntValue<'ctx>>>,
}

/// The instructions the indices of `f`'s loads depend on (transitively, the loads'
/// own indices included; not their guards).
fn index_deps(f: &Function) -> Vec<bool> {
    let mut need = vec![false; f.insts.len()];
    for inst in f.insts.iter().rev() {
        if let Inst::Load { indices, .. } = inst {
            for v in indices {
                need[v.index()] = true;
            }
        }
    }
    // operands of needed instructions, in reverse order (operands precede users)
    for i in (0..f.insts.len()).rev() {
        if !need[i] {
            continue;
        }
        let ops = match &f.insts[i] {
            // a Load's value needs its indices (to read one element), not its guard
            Inst::Load { indices, .. } => indices.clone(),
            // a select's condition is not evaluated (the hull of its arms)
            Inst::Select(_, a, b) => vec![*a, *b],
            // a bool converted to i32 is 0..=1 whatever it is
            Inst::Unary(UnOp::B2I, _) => vec![],
            inst => inst.operands(),
        };
        for v in ops {
            need[v.index()] = true;
        }
    }
    need
}

/// A positive i32 constant `v` of `f`.
fn pos_const(f: &Function, v: Value) -> Option<i64> {
    match f.insts[v.index()] {
        Inst::ConstI32(c) if c > 0 => Some(c as i64),
        _ => None,
    }
}

/// Whether `v` is a one-to-one function of `q` or `kv` (`q`, `kv`, their negation, sums
/// with and nonzero multiples by a constant): an index that takes a tile's rows or
/// columns to different elements, so the tile never reads one element.
fn injective_in_position(f: &Function, v: Value) -> bool {
    let konst = |x: Value| matches!(f.insts[x.index()], Inst::ConstI32(_));
    match &f.insts[v.index()] {
        Inst::Arg(a) => matches!(a, Arg::Q | Arg::Kv),
        Inst::Unary(UnOp::INeg, a) => injective_in_position(f, *a),
        Inst::Binary(BinOp::IAdd | BinOp::ISub, a, b) => {
            (konst(*b) && injective_in_position(f, *a))
                || (konst(*a) && injective_in_position(f, *b))
        }
        Inst::Binary(BinOp::IMul, a, b) => {
            let nonzero = |x: Value| matches!(f.insts[x.index()], Inst::ConstI32(c) if c != 0);
            (nonzero(*b) && injective_in_position(f, *a))
                || (nonzero(*a) && injective_in_position(f, *b))
        }
        _ => false,
    }
}

/// How [`emit_tile_loads`] decides whether a box reads one element (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// The interval rules over the index path, once per box.
    Intervals,
    /// Every diagonal of the warp's box evaluated by the lanes in turn.
    Diagonals,
}

/// How `f`'s tiles are decided ([`Method`]), `None` where no uniform path exists: `f` has
/// no load, a load's index is one-to-one in a position (a learned `[B, H, Q, KV]` bias:
/// never one element over a tile), or its index path has an instruction without an
/// interval rule (module docs) and is not diagonal.
pub(crate) fn method(f: &Function) -> Option<Method> {
    let need = index_deps(f);
    let has_load = f.insts.iter().any(|i| matches!(i, Inst::Load { .. }));
    let per_position = f.insts.iter().any(|i| match i {
        Inst::Load { indices, .. } => indices.iter().any(|v| injective_in_position(f, *v)),
        _ => false,
    });
    if !has_load || per_position {
        return None;
    }
    let intervals = f.insts.iter().enumerate().all(|(i, inst)| {
        !need[i]
            || match inst {
                Inst::Arg(a) => *a != Arg::S,
                Inst::ConstI32(_) => true,
                Inst::Param(_) => f.types[i] == Type::I32,
                Inst::Unary(op, _) => {
                    matches!(op, UnOp::INeg | UnOp::IAbs | UnOp::B2I)
                }
                Inst::Binary(op, _, b) => match op {
                    BinOp::IAdd | BinOp::ISub | BinOp::IMul | BinOp::IMin | BinOp::IMax => true,
                    BinOp::IDiv | BinOp::IRem => pos_const(f, *b).is_some(),
                    BinOp::IShl | BinOp::IShr => pos_const(f, *b).is_some_and(|k| k < 32),
                    _ => false,
                },
                Inst::Select(..) => f.types[i] == Type::I32,
                Inst::Load { .. } => f.types[i] == Type::I32,
                Inst::ConstBool(_) | Inst::ConstF32(_) => false,
            }
    });
    if intervals {
        return Some(Method::Intervals);
    }
    // every index a function of `kv - q` (and of what is one value over a box: b, h,
    // params, constants)
    let (positional, diagonal) = crate::analysis::diagonal::classify(f);
    let diagonal_indices = f.insts.iter().all(|inst| match inst {
        Inst::Load { indices, .. } => indices
            .iter()
            .all(|v| diagonal[v.index()] || !positional[v.index()]),
        _ => true,
    });
    diagonal_indices.then_some(Method::Diagonals)
}

/// Whether [`emit_tile_loads`] applies to `f` (a [`method`] exists).
pub(crate) fn analyzable(f: &Function) -> bool {
    method(f).is_some()
}

/// The box's arguments in the rules' domain (`b`, `h` points; `q`, `kv` ranges).
#[derive(Clone, Copy)]
pub(crate) struct BoxArgs<I> {
    pub b: I,
    pub h: I,
    pub q: (I, I),
    pub kv: (I, I),
}

/// What [`eval_box`] finds: whether every load reads one element, and the interval of
/// each instruction on a load's index path (None elsewhere).
pub(crate) struct BoxEval<O: Arith> {
    pub uniform: O::B,
    // read by the tests (soundness against brute force); the kernel needs only `uniform`
    #[cfg_attr(not(test), allow(dead_code))]
    pub iv: Vec<Option<(O::I, O::I)>>,
}

/// [`eval_box`]'s read of `Load` `i` at the given indices.
pub(crate) type ReadAt<'a, O> =
    dyn FnMut(usize, &[<O as Arith>::I]) -> R<Option<<O as Arith>::I>> + 'a;

/// The interval rules (module docs) over `f`'s load index paths for the box `args`:
/// `param` gives an i32 param's value, `load(i, idx)` reads `Load` `i` at the indices'
/// low ends and returns its value where the load is integer and on an index path (its
/// interval then that point, or the hull with 0 when its guard is not constantly true).
/// Call only where [`analyzable`] holds.
pub(crate) fn eval_box<O: Arith>(
    o: &O,
    f: &Function,
    args: BoxArgs<O::I>,
    param: &dyn Fn(usize) -> R<O::I>,
    load: &mut ReadAt<'_, O>,
) -> R<BoxEval<O>> {
    let need = index_deps(f);
    let mut iv: Vec<Option<(O::I, O::I)>> = vec![None; f.insts.len()];
    let mut uniform = o.t();
    let get = |iv: &Vec<Option<(O::I, O::I)>>, v: Value| {
        iv[v.index()].ok_or(LlvmError::Internal("interval used before definition"))
    };
    let rule = || LlvmError::Internal("no interval rule");
    for (i, inst) in f.insts.iter().enumerate() {
        if !need[i] && !matches!(inst, Inst::Load { .. }) {
            continue;
        }
        let r = match inst {
            Inst::Arg(Arg::B) => (args.b, args.b),
            Inst::Arg(Arg::H) => (args.h, args.h),
            Inst::Arg(Arg::Q) => args.q,
            Inst::Arg(Arg::Kv) => args.kv,
            Inst::ConstI32(c) => (o.c(*c as i64), o.c(*c as i64)),
            Inst::Param(p) => {
                let x = param(p.0 as usize)?;
                (x, x)
            }
            Inst::Unary(UnOp::INeg, a) => {
                let (lo, hi) = get(&iv, *a)?;
                (o.sub(o.c(0), hi)?, o.sub(o.c(0), lo)?)
            }
            Inst::Unary(UnOp::IAbs, a) => {
                let (lo, hi) = get(&iv, *a)?;
                let (nlo, nhi) = (o.sub(o.c(0), hi)?, o.sub(o.c(0), lo)?);
                // 0 when the range spans it, else the nearer end's magnitude
                let spans = o.and(o.not(o.slt(o.c(0), lo)?)?, o.not(o.slt(hi, o.c(0))?)?)?;
                let near = o.min(o.max(lo, nhi)?, o.max(nlo, hi)?)?;
                (o.sel(spans, o.c(0), near)?, o.max(hi, nhi)?)
            }
            Inst::Unary(UnOp::B2I, _) => (o.c(0), o.c(1)),
            Inst::Binary(op, a, b) => {
                let (al, ah) = get(&iv, *a)?;
                match op {
                    BinOp::IDiv | BinOp::IShr => {
                        let c = pos_const(f, *b).ok_or_else(rule)?;
                        let c = if *op == BinOp::IShr { 1 << c } else { c };
                        (o.floor_div(al, c)?, o.floor_div(ah, c)?)
                    }
                    BinOp::IShl => {
                        let m = o.c(1 << pos_const(f, *b).ok_or_else(rule)?);
                        (o.mul(al, m)?, o.mul(ah, m)?)
                    }
                    BinOp::IRem => {
                        // within one period: the ends' remainders; else all of 0..c
                        let c = pos_const(f, *b).ok_or_else(rule)?;
                        let (ql, qh) = (o.floor_div(al, c)?, o.floor_div(ah, c)?);
                        let same = o.eq(ql, qh)?;
                        let (rl, rh) = (
                            o.sub(al, o.mul(ql, o.c(c))?)?,
                            o.sub(ah, o.mul(qh, o.c(c))?)?,
                        );
                        (o.sel(same, rl, o.c(0))?, o.sel(same, rh, o.c(c - 1))?)
                    }
                    _ => {
                        let (bl, bh) = get(&iv, *b)?;
                        match op {
                            BinOp::IAdd => (o.add(al, bl)?, o.add(ah, bh)?),
                            BinOp::ISub => (o.sub(al, bh)?, o.sub(ah, bl)?),
                            BinOp::IMin => (o.min(al, bl)?, o.min(ah, bh)?),
                            BinOp::IMax => (o.max(al, bl)?, o.max(ah, bh)?),
                            BinOp::IMul => {
                                let p = [
                                    o.mul(al, bl)?,
                                    o.mul(al, bh)?,
                                    o.mul(ah, bl)?,
                                    o.mul(ah, bh)?,
                                ];
                                (
                                    o.min(o.min(p[0], p[1])?, o.min(p[2], p[3])?)?,
                                    o.max(o.max(p[0], p[1])?, o.max(p[2], p[3])?)?,
                                )
                            }
                            _ => return Err(rule()),
                        }
                    }
                }
            }
            Inst::Select(_, a, b) => {
                let ((al, ah), (bl, bh)) = (get(&iv, *a)?, get(&iv, *b)?);
                (o.min(al, bl)?, o.max(ah, bh)?)
            }
            Inst::Load { indices, guard, .. } => {
                // the element at the ranges' low ends: the element when each is one point
                let mut idx = Vec::with_capacity(indices.len());
                let mut one = o.t();
                for v in indices {
                    let (lo, hi) = get(&iv, *v)?;
                    one = o.and(one, o.eq(lo, hi)?)?;
                    idx.push(lo);
                }
                uniform = o.and(uniform, one)?;
                match load(i, &idx)? {
                    Some(x) if need[i] => {
                        let (lo, hi) = if matches!(f.insts[guard.index()], Inst::ConstBool(true)) {
                            (x, x)
                        } else {
                            (o.min(x, o.c(0))?, o.max(x, o.c(0))?)
                        };
                        // reading several elements: any i32
                        (
                            o.sel(one, lo, o.c(i32::MIN as i64))?,
                            o.sel(one, hi, o.c(i32::MAX as i64))?,
                        )
                    }
                    _ => continue,
                }
            }
            _ => return Err(rule()),
        };
        // a range outside i32: the IR wraps where these i64 ranges do not
        let fits = o.and(
            o.not(o.slt(r.0, o.c(i32::MIN as i64))?)?,
            o.not(o.slt(o.c(i32::MAX as i64), r.1)?)?,
        )?;
        uniform = o.and(uniform, fits)?;
        iv[i] = Some(r);
    }
    Ok(BoxEval { uniform, iv })
}

/// Emits [`eval_box`] over `tile` in the kernel and reads each load's element once
/// (module docs). Call only where [`analyzable`] holds and the kernel is not in checked
/// mode (a read here reports nothing).
pub(crate) fn emit_tile_loads<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    tile: TileBox<'ctx>,
) -> R<TileLoads<'ctx>> {
    let method = method(f);
    if method.is_none() || env.err.is_some() {
        return Err(LlvmError::Internal(
            "tile loads of an unanalyzable function",
        ));
    }
    if method == Some(Method::Diagonals) {
        return emit_diagonal_scan(g, env, f, tile);
    }
    let n = f.insts.len();
    let mut values = vec![None; n];
    let mut flat = vec![None; n];
    let args = BoxArgs {
        b: g.sext64(tile.b)?,
        h: g.sext64(tile.h)?,
        q: (g.sext64(tile.q.0)?, g.sext64(tile.q.1)?),
        kv: (g.sext64(tile.kv.0)?, g.sext64(tile.kv.1)?),
    };
    let param = |p: usize| g.sext64(env.params[p].into_int_value());
    let mut load = |i: usize, idx: &[IntValue<'ctx>]| -> R<Option<IntValue<'ctx>>> {
        let Inst::Load { tensor, .. } = &f.insts[i] else {
            return Err(LlvmError::Internal("not a load"));
        };
        let idx = idx
            .iter()
            .map(|x| Ok(g.b.build_int_truncate(*x, g.i32, "")?))
            .collect::<R<Vec<_>>>()?;
        let t = &env.tensors[tensor.0 as usize];
        let (fl, _) = flat_index(g, t, &idx)?;
        flat[i] = Some(fl);
        let x = read_element(g, t, fl)?;
        values[i] = Some(x);
        // (an integer read is on an index path: its value in the rules' domain)
        match x {
            BasicValueEnum::IntValue(x) => Ok(Some(g.sext64(x)?)),
            _ => Ok(None),
        }
    };
    let e = eval_box(&Ir(g), f, args, &param, &mut load)?;
    Ok(TileLoads {
        uniform: e.uniform,
        values,
        flat,
    })
}

/// Element `flat` of tensor `t` (f32 for a float tensor, else i32), read once for a tile.
fn read_element<'ctx>(
    g: &Gpu<'ctx>,
    t: &super::expr::TensorArg<'ctx>,
    flat: IntValue<'ctx>,
) -> R<BasicValueEnum<'ctx>> {
    Ok(if t.float {
        g.load_f32(t.ptr, flat)?.into()
    } else {
        g.load_i32(t.ptr, flat)?.into()
    })
}

/// [`emit_tile_loads`] by the diagonal scan ([`Method::Diagonals`], module docs). Every
/// lane of the warp must reach it (a shuffle and a vote over the full warp); `uniform` is
/// then the same in every lane.
fn emit_diagonal_scan<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    tile: TileBox<'ctx>,
) -> R<TileLoads<'ctx>> {
    let n = f.insts.len();
    // the warp's diagonals: the union of its lanes' boxes (positions are below 2^31, so
    // the differences fit i32)
    let mut lo = g.sub(tile.kv.0, tile.q.1)?;
    let mut hi = g.sub(tile.kv.1, tile.q.0)?;
    for w in [16, 8, 4, 2, 1] {
        let (l, h) = (g.shfl_xor_i32(lo, w)?, g.shfl_xor_i32(hi, w)?);
        lo = g.iintr2("llvm.smin.i32", lo, l)?;
        hi = g.iintr2("llvm.smax.i32", hi, h)?;
    }
    let roots: Vec<Value> = f
        .insts
        .iter()
        .filter_map(|i| match i {
            Inst::Load { indices, .. } => Some(indices.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    // per load: the flat element it reads on diagonal `d` (clamped as the element code's
    // read; `q = 0`, `kv = d`, so `kv - q` is `d`)
    let reads_at = |d: IntValue<'ctx>| -> R<Vec<Option<IntValue<'ctx>>>> {
        let at = Elem {
            s: g.cf(0.0),
            b: tile.b,
            h: tile.h,
            q: g.c32(0),
            kv: d,
            inside: g.cbool(true),
            rel: None,
        };
        let vals = emit_values_at(g, env, f, at, &roots, None)?;
        let mut flat = vec![None; n];
        for (i, inst) in f.insts.iter().enumerate() {
            if let Inst::Load {
                tensor, indices, ..
            } = inst
            {
                let idx = indices
                    .iter()
                    .map(|v| {
                        vals[v.index()]
                            .map(|x| x.into_int_value())
                            .ok_or(LlvmError::Internal("index not emitted"))
                    })
                    .collect::<R<Vec<_>>>()?;
                flat[i] = Some(flat_index(g, &env.tensors[tensor.0 as usize], &idx)?.0);
            }
        }
        Ok(flat)
    };
    let flat = reads_at(lo)?;
    let mut values = vec![None; n];
    for (i, inst) in f.insts.iter().enumerate() {
        if let (Inst::Load { tensor, .. }, Some(fl)) = (inst, flat[i]) {
            values[i] = Some(read_element(g, &env.tensors[tensor.0 as usize], fl)?);
        }
    }
    let same = g.var(g.cbool(true).get_type(), g.cbool(true))?;
    let lane = g.and(g.tid_x()?, g.c32(31))?;
    let end = g.add(hi, g.c32(1))?;
    g.for_range(g.add(lo, lane)?, end, g.c32(32), |d| {
        let here = reads_at(d)?;
        let mut eq = g.geti(&same)?;
        for (a, b) in here.iter().zip(&flat) {
            if let (Some(a), Some(b)) = (a, b) {
                eq = g.and(eq, g.icmp(IntPredicate::EQ, *a, *b)?)?;
            }
        }
        g.set(&same, eq)
    })?;
    let uniform = g.vote_all(g.geti(&same)?)?;
    Ok(TileLoads {
        uniform,
        values,
        flat,
    })
}

#[cfg(test)]
mod tests {
    use super::{BoxArgs, R, analyzable, eval_box};
    use crate::backend::llvm::bounds::Host;
    use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
    use crate::ir::{Inst, Scalar};
    use rand::{Rng, SeedableRng};

    fn score_grad(src: &str) -> crate::grad::ScoreGrad {
        let m = crate::compile_source(src).expect("compiles");
        crate::grad::differentiate(&m.programs[0])
    }

    /// Scores whose load indices stay inside their tensors for every position below 2^20
    /// (the interpreter refuses a read out of range; the kernels clamp): one per rule.
    const SCORES: &[&str] = &[
        "s + t[h, clamp(q - kv, -64, 64) + 64]",
        "s + t[h, clamp(q - kv, -m, m) + m]",
        "s + u[h, i[clamp(q - kv, -128, 128) + 128] % 16]",
        "s + t[h, clamp((q - kv) / 32, -8, 8) + 8] + t[h, clamp((kv - q) >> 6, -9, 9) + 9]",
        "s * 0.75 + t[h, min(abs(q - kv), 64)]",
        "s + t[h, (q + 1024) % 64] + t[h, (kv * 3 - q) % 200]",
        "if q > kv + 300 { s + t[h, clamp(q - kv, -64, 64) + 64] } else { s }",
        "s + t[h, if q > kv { 3 } else { clamp(q * 2 - kv, 0, 200) }]",
        "s + t[b, h * 3 + (q > kv) as i32]",
        "s + t[h, clamp((q << 2) - kv, -100, 100) + 100] + t[h, max(-kv, -5) + 5]",
        "if q > kv { s + u[h, i[(q - kv) % 257] % 16] } else { s }",
    ];

    fn src(score: &str) -> String {
        format!(
            "tensor t: f32[H, 257]; tensor u: f32[H, 16]; tensor i: i32[257]; param m: i32;\n\
             score sc(s, b, h, q, kv) {{ {score} }}\nattention a {{ score = sc; }}"
        )
    }

    /// The rules are sound: on random boxes, every instruction on a load's index path
    /// takes, at every position of the box, a value inside its interval (where the
    /// intervals fit i32), and where the box is called uniform every load reads one
    /// element — the element the rules read at the ranges' low ends. Boxes near the
    /// diagonal and far from it, of the kernels' tile sizes, so both answers occur.
    #[test]
    fn rules_are_sound_against_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(37);
        let (mut uniform_boxes, mut boxes) = (0, 0);
        for score in SCORES {
            let m = crate::compile_source(&src(score)).expect("compiles");
            let p = &m.programs[0];
            let sg = crate::grad::differentiate(p);
            let f = &sg.func;
            assert!(analyzable(f), "{score}");
            for trial in 0..60 {
                let heads = 4usize;
                let data: Vec<i32> = (0..257).map(|_| rng.random_range(-40..400)).collect();
                // the program's tensors (those it reads, in source order) by name
                let tensor = |name: &str| match name {
                    "t" => BoundTensor {
                        dims: vec![heads, 257],
                        data: TensorData::F32(vec![0.5; heads * 257]),
                    },
                    "u" => BoundTensor {
                        dims: vec![heads, 16],
                        data: TensorData::F32(vec![0.25; heads * 16]),
                    },
                    _ => BoundTensor {
                        dims: vec![257],
                        data: TensorData::I32(data.clone()),
                    },
                };
                let bind = Bindings {
                    params: p
                        .params
                        .iter()
                        .map(|_| Scalar::I32(rng.random_range(0..128)))
                        .collect(),
                    tensors: p.tensors.iter().map(|t| tensor(&t.name)).collect(),
                };
                let (bq, bkv) = [(64i64, 128i64), (128, 128), (80, 128), (64, 64)][trial % 4];
                let q0 = bq * rng.random_range(0..40);
                let kv0 = if trial % 3 == 0 {
                    // near the diagonal
                    (q0 / bkv + rng.random_range(-2..3)).max(0) * bkv
                } else {
                    bkv * rng.random_range(0..40)
                };
                let (b, h) = (rng.random_range(0..2i64), rng.random_range(0..heads as i64));
                let args = BoxArgs {
                    b,
                    h,
                    q: (q0, q0 + bq - 1),
                    kv: (kv0, kv0 + bkv - 1),
                };
                let mut points = vec![None; f.insts.len()];
                let param = |k: usize| Ok(bind.params[k].as_i32() as i64);
                let mut load = |i: usize, idx: &[i64]| -> R<Option<i64>> {
                    points[i] = Some(idx.to_vec());
                    Ok(match &f.insts[i] {
                        Inst::Load { tensor, .. } if p.tensors[tensor.0 as usize].name == "i" => {
                            Some(data[idx[0].clamp(0, 256) as usize] as i64)
                        }
                        _ => None,
                    })
                };
                let e = eval_box(&Host, f, args, &param, &mut load)
                    .unwrap_or_else(|err| panic!("{score}: {err:?}\n{f:?}"));
                boxes += 1;
                uniform_boxes += usize::from(e.uniform);
                let mut scratch = Vec::new();
                for q in args.q.0..=args.q.1 {
                    for kv in args.kv.0..=args.kv.1 {
                        let a = Args {
                            s: 1.0,
                            b: b as i32,
                            h: h as i32,
                            q: q as i32,
                            kv: kv as i32,
                        };
                        eval(f, p, a, &bind, &mut scratch).expect("in range");
                        for (i, iv) in e.iv.iter().enumerate() {
                            if let Some((lo, hi)) = iv {
                                let x = scratch[i].as_i32() as i64;
                                assert!(
                                    *lo <= x && x <= *hi,
                                    "{score}: v{i} = {x} outside [{lo}, {hi}] at q {q} kv {kv}"
                                );
                            }
                        }
                        if e.uniform {
                            for (i, inst) in f.insts.iter().enumerate() {
                                if let Inst::Load { indices, .. } = inst {
                                    let at: Vec<i64> = indices
                                        .iter()
                                        .map(|v| scratch[v.index()].as_i32() as i64)
                                        .collect();
                                    assert_eq!(
                                        Some(&at),
                                        points[i].as_ref(),
                                        "{score}: load v{i} at q {q} kv {kv}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        // both answers occur
        assert!(
            uniform_boxes > boxes / 5 && uniform_boxes < boxes,
            "{uniform_boxes} of {boxes}"
        );
    }

    /// A program of one attention whose score is `score`, over an f32 table `t`, an i32
    /// table `i`, an i32 param `m` and an f32 param `x`.
    fn index_src(score: &str) -> String {
        format!(
            "tensor t: f32[H, 257]; tensor i: i32[257]; param m: i32; param x: f32;\n\
             score sc(s, b, h, q, kv) {{ {score} }}\nattention a {{ score = sc; }}"
        )
    }

    /// The functions with a uniform path and those without.
    #[test]
    fn analyzable_index_paths() {
        let src = index_src;
        for score in [
            "s + t[h, clamp(q - kv, -64, 64) + 64]",
            "s + t[h, clamp(q - kv, -m, m) + m]",
            "s + t[h, i[clamp(q - kv, -128, 128) + 128] % 16]",
            "s + t[h, clamp((q - kv) / 32, -8, 8) + 8] + t[h, (kv - q) >> 6]",
            "s * 0.75 + t[h, min(abs(q - kv), 64)]",
            "s + t[h, (q + 1024) % 64]",
            "if q > kv + 300 { s + t[h, clamp(q - kv, -64, 64) + 64] } else { s }",
            "s + t[h, if q > kv { 3 } else { q * 2 - kv }]",
            "s + t[b, h * 3 + (q > kv) as i32]",
        ] {
            assert!(analyzable(&score_grad(&src(score)).func), "{score}");
        }
        for score in [
            // no read; an index one-to-one in a position (never one element over a
            // tile); floats on an index path not through `kv - q` alone; a division by a
            // non-constant; a bitwise operator; an index through `s`
            "s * x",
            "s + t[h, q]",
            "s + t[h, 3 * (kv + 1)]",
            "s + t[h, (log(1.0 + (q + kv) as f32) * 8.0) as i32]",
            "s + t[h, q / (kv + 1)]",
            "s + t[h, (q ^ kv) & 255]",
            "s + t[h, (s * 4.0) as i32 % 16 + abs(q - kv) % 2]",
        ] {
            assert!(!analyzable(&score_grad(&src(score)).func), "{score}");
        }
    }

    /// Index paths outside the interval rules that depend on the positions through
    /// `kv - q` alone take the diagonal scan; the rules keep theirs.
    #[test]
    fn diagonal_scan_where_the_rules_stop() {
        use super::{Method, method};
        let src = index_src;
        for (score, want) in [
            ("s + t[h, clamp(q - kv, -64, 64) + 64]", Method::Intervals),
            (
                "s + t[h, (log(1.0 + abs(q - kv) as f32) * 8.0) as i32]",
                Method::Diagonals,
            ),
            (
                "s + t[h, min((sqrt((kv - q) as f32 * x) as i32), 200) + i[abs(kv - q) % 7]]",
                Method::Diagonals,
            ),
            // (a guard of the nested read through `kv - q` too: `q > kv` is positional
            // to the classification, which sees differences only)
            (
                "if kv - q < 0 { s + t[h, i[(exp2((q - kv) as f32 / 64.0) as i32) % 257] % 200] } else { s }",
                Method::Diagonals,
            ),
        ] {
            assert_eq!(method(&score_grad(&src(score)).func), Some(want), "{score}");
        }
        let t5 = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/t5_relative_bias.attn"
        ))
        .unwrap();
        let m = crate::compile_source(&t5).expect("compiles");
        for p in &m.programs {
            let sg = crate::grad::differentiate(p);
            assert_eq!(method(&sg.func), Some(Method::Diagonals), "{}", p.name);
        }
    }

    /// The scan's premise on T5: on random boxes, every position reads the element its
    /// diagonal reads at `q = 0, kv = kv - q` (what the lanes evaluate), and the scan's
    /// answer (every diagonal of the box reads the element of its first) is brute force's.
    #[test]
    fn diagonal_scan_answers_brute_force_on_t5() {
        let t5 = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/t5_relative_bias.attn"
        ))
        .unwrap();
        let m = crate::compile_source(&t5).expect("compiles");
        let mut rng = rand::rngs::StdRng::seed_from_u64(46);
        let (mut uniform_boxes, mut boxes) = (0, 0);
        for p in &m.programs {
            let sg = crate::grad::differentiate(p);
            let f = &sg.func;
            let bind = Bindings {
                params: vec![],
                tensors: vec![BoundTensor {
                    dims: vec![32, 4],
                    data: TensorData::F32(vec![0.5; 128]),
                }],
            };
            let mut scratch = Vec::new();
            let mut read = |q: i64, kv: i64, h: i64| -> Vec<i64> {
                let a = Args {
                    s: 1.0,
                    b: 0,
                    h: h as i32,
                    q: q as i32,
                    kv: kv as i32,
                };
                eval(f, p, a, &bind, &mut scratch).expect("in range");
                f.insts
                    .iter()
                    .filter_map(|i| match i {
                        Inst::Load { indices, .. } => Some(indices.clone()),
                        _ => None,
                    })
                    .flatten()
                    .map(|v| scratch[v.index()].as_i32() as i64)
                    .collect()
            };
            for trial in 0..80 {
                let (bq, bkv) = [(64i64, 128i64), (128, 128), (16, 80)][trial % 3];
                let q0 = rng.random_range(0..3000i64);
                let kv0 = (q0 + rng.random_range(-400..400i64)).max(0);
                let h = rng.random_range(0..4i64);
                let (lo, hi) = (kv0 - (q0 + bq - 1), kv0 + bkv - 1 - q0);
                let first = read(0, lo, h);
                let scan = (lo..=hi).all(|d| read(0, d, h) == first);
                let mut brute = true;
                for q in q0..q0 + bq {
                    for kv in kv0..kv0 + bkv {
                        let at = read(q, kv, h);
                        assert_eq!(at, read(0, kv - q, h), "{}: q {q} kv {kv}", p.name);
                        brute &= at == first;
                    }
                }
                assert_eq!(scan, brute, "{}: box q {q0} kv {kv0}", p.name);
                boxes += 1;
                uniform_boxes += usize::from(scan);
            }
        }
        assert!(
            uniform_boxes > boxes / 5 && uniform_boxes < boxes,
            "{uniform_boxes} of {boxes}"
        );
    }
}
