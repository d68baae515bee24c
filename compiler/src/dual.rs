//! Forward-mode dual numbers over the IR: the score and its partial derivatives at one
//! point, for the reference gradients (`reference_grad`). Written independently of the
//! derivative pass (`grad`, reverse mode, generating IR): the two are tested against each
//! other and against finite differences.
//!
//! In: a verified score [`Function`], its [`Program`], [`Args`] and [`Bindings`]. Out: a
//! [`Dual`]: the score exactly as the interpreter computes it (f32 primal, the same
//! `eval_unary`/`eval_binary`), ∂score/∂s, and for every tensor read performed (guard
//! true) of an f32 tensor the element read (flat row-major index) with ∂score/∂(value
//! read); for every f32 param ∂score/∂param. Tangents are f64, computed from the f32
//! primal values. Out-of-range reads are errors, as in the interpreter.
//!
//! Conventions at non-differentiable points are PyTorch's, the same as the derivative
//! pass documents (`grad` module docs): abs' (0) = 0; min/max split a tie in halves and
//! give a NaN operand nothing; `min(max(x, lo), hi)` is clamp (x takes the gradient
//! inside [lo, hi], boundaries included); `1 / (1 + exp(-x))` is sigmoid (r (1 - r));
//! pow's d/da is 0 where b = 0 and d/db is 0 where a = 0 and b >= 0; floor, ceil and
//! casts carry nothing; select passes the taken arm's tangent. A zero weight never
//! multiplies a tangent (so an untaken `log(0)` does not poison the result), and an
//! infinite weight never multiplies a tangent component that is exactly 0 (so
//! `sqrt(abs(x))` at an `x` that does not depend on `s` gives ∂/∂s = 0, not NaN).

use crate::interp::{Args, Bindings, EvalError};
use crate::ir::{
    Arg, BinOp, Function, Inst, ParamId, Program, Scalar, TensorId, Type, UnOp, Value, eval_binary,
    eval_unary,
};

/// One performed read of a float tensor and the score's partial derivative by it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadPartial {
    pub tensor: TensorId,
    /// Row-major index of the element read.
    pub flat: usize,
    pub partial: f64,
}

/// The score at one point and its partial derivatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Dual {
    pub score: f32,
    pub d_s: f64,
    pub reads: Vec<ReadPartial>,
    /// (param, ∂score/∂param) for every f32 param of the program.
    pub params: Vec<(ParamId, f64)>,
}

/// Tangent input slots: 0 = s, then one per `Load`, then one per param.
struct Slots {
    load_slot: Vec<Option<usize>>,
    param_base: usize,
    n: usize,
}

/// Which values depend on a differentiable input (same rule as the derivative pass:
/// floor/ceil results carry nothing).
fn activity(f: &Function) -> Vec<bool> {
    let mut active = vec![false; f.len()];
    for (i, inst) in f.insts.iter().enumerate() {
        let a = |v: &Value| active[v.index()];
        active[i] = f.types[i] == Type::F32
            && match inst {
                Inst::Arg(arg) => *arg == Arg::S,
                Inst::Load { .. } | Inst::Param(_) => true,
                Inst::Unary(UnOp::Floor | UnOp::Ceil, _) => false,
                Inst::Unary(_, x) => a(x),
                Inst::Binary(_, x, y) | Inst::Select(_, x, y) => a(x) || a(y),
                _ => false,
            };
    }
    active
}

fn is_const(f: &Function, v: Value, x: f32) -> bool {
    matches!(f.inst(v), Inst::ConstF32(bits) if f32::from_bits(*bits) == x)
}

/// `1 / (1 + exp(-x))`: x.
fn sigmoid_arg(f: &Function, num: Value, den: Value) -> Option<Value> {
    if !is_const(f, num, 1.0) {
        return None;
    }
    let Inst::Binary(BinOp::FAdd, u, w) = f.inst(den) else {
        return None;
    };
    let e = match (is_const(f, *u, 1.0), is_const(f, *w, 1.0)) {
        (true, _) => *w,
        (_, true) => *u,
        _ => return None,
    };
    let Inst::Unary(UnOp::Exp, n) = f.inst(e) else {
        return None;
    };
    match f.inst(*n) {
        Inst::Unary(UnOp::FNeg, x) => Some(*x),
        _ => None,
    }
}

/// `min(max(x, lo), hi)`: (x, lo, hi); x is the operand of the `max` that depends on an
/// input when only one does, else its first operand.
fn clamp_args(f: &Function, active: &[bool], a: Value, b: Value) -> Option<(Value, Value, Value)> {
    let (inner, hi) = match (f.inst(a), f.inst(b)) {
        (Inst::Binary(BinOp::FMax, ..), _) => (a, b),
        (_, Inst::Binary(BinOp::FMax, ..)) => (b, a),
        _ => return None,
    };
    let Inst::Binary(BinOp::FMax, x0, x1) = f.inst(inner) else {
        return None;
    };
    if !active[x0.index()] && active[x1.index()] {
        Some((*x1, *x0, hi))
    } else {
        Some((*x0, *x1, hi))
    }
}

/// `acc += w * t`, skipping zero weights and zero tangent components (a symbolic zero:
/// an infinite local derivative times a tangent that is exactly 0 contributes 0, as in
/// reverse mode, where the adjoint never reaches an input that the value does not
/// depend on; e.g. `sqrt(abs(clamp(0, -1, s)))` has ∂/∂s = 0 where 0 < s, not NaN).
fn axpy(acc: &mut [f64], w: f64, t: &[f64]) {
    if w != 0.0 {
        acc.iter_mut()
            .zip(t)
            .filter(|(_, x)| **x != 0.0)
            .for_each(|(a, x)| *a += w * x);
    }
}

/// Evaluates `f` at `args` with tangents for every input (module docs).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN-aware comparisons, as ir::scalar
pub fn eval_dual(
    f: &Function,
    p: &Program,
    args: Args,
    bind: &Bindings,
) -> Result<Dual, EvalError> {
    let active = activity(f);
    let mut slots = Slots {
        load_slot: vec![None; f.len()],
        param_base: 0,
        n: 1,
    };
    for (i, inst) in f.insts.iter().enumerate() {
        if matches!(inst, Inst::Load { .. }) && f.types[i] == Type::F32 {
            slots.load_slot[i] = Some(slots.n);
            slots.n += 1;
        }
    }
    slots.param_base = slots.n;
    slots.n += p.params.len();
    let n = slots.n;
    let mut val: Vec<Scalar> = Vec::with_capacity(f.len());
    let mut tan: Vec<Vec<f64>> = Vec::with_capacity(f.len());
    let mut flat_of: Vec<Option<usize>> = vec![None; f.len()];
    for (i, inst) in f.insts.iter().enumerate() {
        let mut t = vec![0f64; n];
        let x = |v: &Value| val[v.index()].as_f32() as f64;
        let v = match inst {
            Inst::Arg(a) => {
                if *a == Arg::S {
                    t[0] = 1.0;
                }
                args.get(*a)
            }
            Inst::ConstBool(b) => Scalar::Bool(*b),
            Inst::ConstI32(c) => Scalar::I32(*c),
            Inst::ConstF32(bits) => Scalar::F32(f32::from_bits(*bits)),
            Inst::Param(id) => {
                let s = bind.params[id.0 as usize];
                if f.types[i] == Type::F32 {
                    t[slots.param_base + id.0 as usize] = 1.0;
                }
                s
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                if !val[guard.index()].as_bool() {
                    match f.types[i] {
                        Type::F32 => Scalar::F32(0.0),
                        Type::I32 => Scalar::I32(0),
                        Type::Bool => Scalar::Bool(false),
                    }
                } else {
                    let bt = &bind.tensors[tensor.0 as usize];
                    let idx: Vec<i32> = indices.iter().map(|v| val[v.index()].as_i32()).collect();
                    let mut flat = 0usize;
                    for (k, x) in idx.iter().enumerate() {
                        if *x < 0 || *x as usize >= bt.dims[k] {
                            return Err(EvalError::OutOfBounds {
                                tensor: p.tensors[tensor.0 as usize].name.clone(),
                                index: idx.iter().map(|x| *x as i64).collect(),
                                dims: bt.dims.clone(),
                                span: f.spans[i],
                            });
                        }
                        flat = flat * bt.dims[k] + *x as usize;
                    }
                    if let Some(slot) = slots.load_slot[i] {
                        t[slot] = 1.0;
                        flat_of[i] = Some(flat);
                    }
                    bt.data.get(flat)
                }
            }
            Inst::Unary(op, a) => {
                let r = eval_unary(*op, val[a.index()]);
                if f.types[i] == Type::F32 && active[i] {
                    let (xa, rf) = (x(a), r.as_f32() as f64);
                    let w = match op {
                        UnOp::FNeg => -1.0,
                        UnOp::FAbs => {
                            if xa > 0.0 {
                                1.0
                            } else if xa < 0.0 {
                                -1.0
                            } else {
                                0.0
                            }
                        }
                        UnOp::Exp => rf,
                        UnOp::Exp2 => rf * std::f64::consts::LN_2,
                        UnOp::Log => 1.0 / xa,
                        UnOp::Log2 => 1.0 / (xa * std::f64::consts::LN_2),
                        UnOp::Sqrt => 1.0 / (2.0 * rf),
                        UnOp::Tanh => 1.0 - rf * rf,
                        _ => 0.0,
                    };
                    axpy(&mut t, w, &tan[a.index()]);
                }
                r
            }
            Inst::Binary(op, a, b) => {
                let r = eval_binary(*op, val[a.index()], val[b.index()]);
                if f.types[i] == Type::F32 && active[i] {
                    let (xa, xb, rf) = (x(a), x(b), r.as_f32() as f64);
                    let (ta, tb) = (&tan[a.index()], &tan[b.index()]);
                    match op {
                        BinOp::FAdd => {
                            axpy(&mut t, 1.0, ta);
                            axpy(&mut t, 1.0, tb);
                        }
                        BinOp::FSub => {
                            axpy(&mut t, 1.0, ta);
                            axpy(&mut t, -1.0, tb);
                        }
                        BinOp::FMul => {
                            axpy(&mut t, xb, ta);
                            axpy(&mut t, xa, tb);
                        }
                        BinOp::FDiv => match sigmoid_arg(f, *a, *b) {
                            Some(sx) => axpy(&mut t, rf * (1.0 - rf), &tan[sx.index()]),
                            None => {
                                axpy(&mut t, 1.0 / xb, ta);
                                axpy(&mut t, -rf / xb, tb);
                            }
                        },
                        BinOp::FMin | BinOp::FMax => {
                            let clamp = if *op == BinOp::FMin {
                                clamp_args(f, &active, *a, *b)
                            } else {
                                None
                            };
                            if let Some((cx, lo, hi)) = clamp {
                                let (vx, vlo, vhi) = (x(&cx), x(&lo), x(&hi));
                                // `!(x >= lo)`: below lo or NaN (the grad module's rule)
                                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                                let from = if vx >= vlo && vx <= vhi {
                                    cx
                                } else if !(vx >= vlo) && vlo <= vhi {
                                    lo
                                } else {
                                    hi
                                };
                                axpy(&mut t, 1.0, &tan[from.index()]);
                            } else {
                                let is_max = *op == BinOp::FMax;
                                let wins = if is_max { xa > xb } else { xa < xb };
                                let loses = if is_max { xa < xb } else { xa > xb };
                                let share = |takes: bool| {
                                    if takes {
                                        1.0
                                    } else if xa == xb {
                                        0.5
                                    } else {
                                        0.0
                                    }
                                };
                                axpy(&mut t, share(wins || xb.is_nan()), ta);
                                axpy(&mut t, share(loses || xa.is_nan()), tb);
                            }
                        }
                        BinOp::FPow => {
                            if xb != 0.0 {
                                axpy(&mut t, xb * xa.powf(xb - 1.0), ta);
                            }
                            if !(xa == 0.0 && xb >= 0.0) {
                                axpy(&mut t, rf * xa.ln(), tb);
                            }
                        }
                        _ => {}
                    }
                }
                r
            }
            Inst::Select(c, a, b) => {
                let taken = if val[c.index()].as_bool() { a } else { b };
                t.copy_from_slice(&tan[taken.index()]);
                val[taken.index()]
            }
        };
        if !active[i] {
            t.iter_mut().for_each(|x| *x = 0.0);
        }
        val.push(v);
        tan.push(t);
    }
    let out = &tan[f.ret.index()];
    let mut reads = Vec::new();
    for (i, slot) in slots.load_slot.iter().enumerate() {
        if let (Some(slot), Some(flat), Inst::Load { tensor, .. }) = (slot, flat_of[i], &f.insts[i])
        {
            reads.push(ReadPartial {
                tensor: *tensor,
                flat,
                partial: out[*slot],
            });
        }
    }
    let params = p
        .params
        .iter()
        .enumerate()
        .filter(|(_, info)| info.ty == Type::F32)
        .map(|(k, _)| (ParamId(k as u32), out[slots.param_base + k]))
        .collect();
    Ok(Dual {
        score: val[f.ret.index()].as_f32(),
        d_s: out[0],
        reads,
        params,
    })
}
