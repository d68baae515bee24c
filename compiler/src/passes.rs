//! IR passes: constant folding, common-subexpression elimination, dead-code removal,
//! and compaction of a program's params and tensors to those it uses.
//!
//! In: a [`Function`] (verified or freshly lowered). Out: a new, equivalent function;
//! each pass rebuilds the instruction list in order, so values stay topologically
//! sorted and numbering stays deterministic.

use crate::ir::{
    BinOp, Cmp, Function, Inst, ParamId, Program, Scalar, TensorId, UnOp, Value, eval_binary,
    eval_unary,
};
use std::collections::HashMap;

/// Folding, then CSE, then dead-code removal.
pub fn optimize(f: &Function) -> Function {
    let f = fold_constants(f);
    let f = eliminate_common_subexpressions(&f);
    eliminate_dead_code(&f)
}

fn const_of(f: &Function, v: Value) -> Option<Scalar> {
    match f.inst(v) {
        Inst::ConstBool(b) => Some(Scalar::Bool(*b)),
        Inst::ConstI32(x) => Some(Scalar::I32(*x)),
        Inst::ConstF32(bits) => Some(Scalar::F32(f32::from_bits(*bits))),
        _ => None,
    }
}

fn const_inst(s: Scalar) -> Inst {
    match s {
        Scalar::Bool(b) => Inst::ConstBool(b),
        Scalar::I32(x) => Inst::ConstI32(x),
        Scalar::F32(x) => Inst::f32(x),
    }
}

/// What an instruction simplifies to: a new instruction, or an existing value.
enum Folded {
    Inst(Inst),
    Value(Value),
}

/// Evaluates instructions whose operands are constants, and applies identities that hold
/// exactly under the IR's semantics (`x + 0`, `x * 1` for i32, `x && true`, selects on
/// constant or equal arms, double negation). Float identities that change NaN or signed
/// zero behaviour (`x * 0.0`, `x + 0.0`) are not applied.
pub fn fold_constants(f: &Function) -> Function {
    fold_constants_mapped(f).0
}

/// [`fold_constants`], also returning where each old value went (`map[old] = new`), for
/// callers that track values besides the return value (the derivative pass).
pub fn fold_constants_mapped(f: &Function) -> (Function, Vec<Value>) {
    let mut out = Function::new(f.kind);
    let mut map: Vec<Value> = Vec::with_capacity(f.len());
    for (i, inst) in f.insts.iter().enumerate() {
        let inst = remap(inst, &map);
        let folded = fold_one(&out, &inst);
        let v = match folded {
            Folded::Value(v) => v,
            Folded::Inst(new) => out.push(new, f.types[i], f.spans[i]),
        };
        map.push(v);
    }
    out.ret = map[f.ret.index()];
    (out, map)
}

fn fold_one(out: &Function, inst: &Inst) -> Folded {
    let c = |v: Value| const_of(out, v);
    match inst {
        Inst::Unary(op, a) => {
            if let Some(x) = c(*a) {
                return Folded::Inst(const_inst(eval_unary(*op, x)));
            }
            // !!x = x, --x = x
            if let Inst::Unary(inner, b) = out.inst(*a)
                && ((*op == UnOp::Not && *inner == UnOp::Not)
                    || (*op == UnOp::INeg && *inner == UnOp::INeg)
                    || (*op == UnOp::FNeg && *inner == UnOp::FNeg))
            {
                return Folded::Value(*b);
            }
            Folded::Inst(inst.clone())
        }
        Inst::Binary(op, a, b) => {
            let (ca, cb) = (c(*a), c(*b));
            if let (Some(x), Some(y)) = (ca, cb) {
                return Folded::Inst(const_inst(eval_binary(*op, x, y)));
            }
            match (op, ca, cb) {
                (BinOp::IAdd, Some(Scalar::I32(0)), _) => return Folded::Value(*b),
                (BinOp::IAdd | BinOp::ISub, _, Some(Scalar::I32(0))) => return Folded::Value(*a),
                (BinOp::IMul, Some(Scalar::I32(1)), _) => return Folded::Value(*b),
                (BinOp::IMul | BinOp::IDiv, _, Some(Scalar::I32(1))) => return Folded::Value(*a),
                (BinOp::FMul, Some(Scalar::F32(1.0)), _) => return Folded::Value(*b),
                (BinOp::FMul | BinOp::FDiv, _, Some(Scalar::F32(1.0))) => {
                    return Folded::Value(*a);
                }
                (BinOp::And, Some(Scalar::Bool(true)), _)
                | (BinOp::Or, Some(Scalar::Bool(false)), _) => {
                    return Folded::Value(*b);
                }
                (BinOp::And, _, Some(Scalar::Bool(true)))
                | (BinOp::Or, _, Some(Scalar::Bool(false))) => {
                    return Folded::Value(*a);
                }
                (BinOp::And, Some(Scalar::Bool(false)), _)
                | (BinOp::And, _, Some(Scalar::Bool(false))) => {
                    return Folded::Inst(Inst::ConstBool(false));
                }
                (BinOp::Or, Some(Scalar::Bool(true)), _)
                | (BinOp::Or, _, Some(Scalar::Bool(true))) => {
                    return Folded::Inst(Inst::ConstBool(true));
                }
                _ => {}
            }
            if a == b {
                match op {
                    BinOp::And | BinOp::Or | BinOp::IMin | BinOp::IMax => return Folded::Value(*a),
                    BinOp::ICmp(Cmp::Eq | Cmp::Le | Cmp::Ge) | BinOp::BEq => {
                        return Folded::Inst(Inst::ConstBool(true));
                    }
                    BinOp::ICmp(Cmp::Ne | Cmp::Lt | Cmp::Gt) | BinOp::Xor => {
                        return Folded::Inst(Inst::ConstBool(false));
                    }
                    BinOp::ISub => return Folded::Inst(Inst::ConstI32(0)),
                    _ => {}
                }
            }
            Folded::Inst(inst.clone())
        }
        Inst::Select(cond, a, b) => {
            if a == b {
                return Folded::Value(*a);
            }
            match c(*cond) {
                Some(Scalar::Bool(true)) => Folded::Value(*a),
                Some(Scalar::Bool(false)) => Folded::Value(*b),
                _ => Folded::Inst(inst.clone()),
            }
        }
        _ => Folded::Inst(inst.clone()),
    }
}

pub(crate) fn remap(inst: &Inst, map: &[Value]) -> Inst {
    let m = |v: &Value| map[v.index()];
    match inst {
        Inst::Unary(op, a) => Inst::Unary(*op, m(a)),
        Inst::Binary(op, a, b) => Inst::Binary(*op, m(a), m(b)),
        Inst::Select(c, a, b) => Inst::Select(m(c), m(a), m(b)),
        Inst::Load {
            tensor,
            indices,
            guard,
        } => Inst::Load {
            tensor: *tensor,
            indices: indices.iter().map(m).collect(),
            guard: m(guard),
        },
        other => other.clone(),
    }
}

/// Merges identical instructions (same op, same operands; commutative operands are
/// put in a canonical order first).
pub fn eliminate_common_subexpressions(f: &Function) -> Function {
    eliminate_common_subexpressions_mapped(f).0
}

/// [`eliminate_common_subexpressions`], also returning `map[old] = new`.
pub fn eliminate_common_subexpressions_mapped(f: &Function) -> (Function, Vec<Value>) {
    let mut out = Function::new(f.kind);
    let mut map: Vec<Value> = Vec::with_capacity(f.len());
    let mut seen: HashMap<Inst, Value> = HashMap::new();
    for (i, inst) in f.insts.iter().enumerate() {
        let mut inst = remap(inst, &map);
        if let Inst::Binary(op, a, b) = &mut inst
            && op.is_commutative()
            && *a > *b
        {
            std::mem::swap(a, b);
        }
        let v = match seen.get(&inst) {
            Some(v) => *v,
            None => {
                let v = out.push(inst.clone(), f.types[i], f.spans[i]);
                seen.insert(inst, v);
                v
            }
        };
        map.push(v);
    }
    out.ret = map[f.ret.index()];
    (out, map)
}

/// Drops instructions that do not contribute to the return value.
pub fn eliminate_dead_code(f: &Function) -> Function {
    eliminate_dead_code_keeping(f, &[]).0
}

/// Drops instructions that contribute neither to the return value nor to `keep`; returns
/// `map[old] = new` (meaningful for the kept values only).
pub fn eliminate_dead_code_keeping(f: &Function, keep: &[Value]) -> (Function, Vec<Value>) {
    let mut roots = keep.to_vec();
    roots.push(f.ret);
    let live = f.live_from(&roots);
    let mut out = Function::new(f.kind);
    let mut map: Vec<Value> = vec![Value(0); f.len()];
    for (i, inst) in f.insts.iter().enumerate() {
        if live[i] {
            map[i] = out.push(remap(inst, &map), f.types[i], f.spans[i]);
        }
    }
    out.ret = map[f.ret.index()];
    (out, map)
}

/// For backends whose tensor reads never leave the tensor (indices clamped): rewrites
/// each guarded `Load { guard: g }` into an unguarded read and `select(g, read, 0)`.
/// Same results, but the read now depends only on its indices, so a code generator can
/// hoist it out of loops that the guard varies in (`doc[b, q]` behind `q >= kv &&`
/// moves to the per-row code). Not for checked mode, where the guard decides what is
/// reported.
pub fn unguard_loads(f: &Function) -> Function {
    let mut out = Function::new(f.kind);
    let mut map: Vec<Value> = Vec::with_capacity(f.len());
    let mut truth = None;
    for (i, inst) in f.insts.iter().enumerate() {
        let inst = remap(inst, &map);
        let (ty, span) = (f.types[i], f.spans[i]);
        let v = match inst {
            Inst::Load {
                tensor,
                indices,
                guard,
            } if !matches!(out.inst(guard), Inst::ConstBool(true)) => {
                let t = *truth.get_or_insert_with(|| {
                    out.push(Inst::ConstBool(true), crate::ir::Type::Bool, span)
                });
                let read = out.push(
                    Inst::Load {
                        tensor,
                        indices,
                        guard: t,
                    },
                    ty,
                    span,
                );
                let zero = match ty {
                    crate::ir::Type::F32 => Inst::f32(0.0),
                    crate::ir::Type::I32 => Inst::ConstI32(0),
                    crate::ir::Type::Bool => Inst::ConstBool(false),
                };
                let zero = out.push(zero, ty, span);
                out.push(Inst::Select(guard, read, zero), ty, span)
            }
            other => out.push(other, ty, span),
        };
        map.push(v);
    }
    out.ret = map[f.ret.index()];
    eliminate_common_subexpressions(&out)
}

/// Keeps only the params and tensors that the program's live code reads (in their
/// declaration order) and renumbers the references.
pub fn compact_captures(p: &mut Program) {
    let mut used_p = vec![false; p.params.len()];
    let mut used_t = vec![false; p.tensors.len()];
    for f in p.mask.iter().chain(p.score.iter()) {
        for inst in &f.insts {
            match inst {
                Inst::Param(id) => used_p[id.0 as usize] = true,
                Inst::Load { tensor, .. } => used_t[tensor.0 as usize] = true,
                _ => {}
            }
        }
    }
    let renumber = |used: &[bool]| {
        let mut next = 0u32;
        used.iter()
            .map(|u| {
                let r = next;
                if *u {
                    next += 1;
                }
                r
            })
            .collect::<Vec<u32>>()
    };
    let (np, nt) = (renumber(&used_p), renumber(&used_t));
    for f in p.mask.iter_mut().chain(p.score.iter_mut()) {
        for inst in &mut f.insts {
            match inst {
                Inst::Param(id) => *id = ParamId(np[id.0 as usize]),
                Inst::Load { tensor, .. } => *tensor = TensorId(nt[tensor.0 as usize]),
                _ => {}
            }
        }
    }
    let mut i = 0;
    p.params.retain(|_| {
        i += 1;
        used_p[i - 1]
    });
    let mut i = 0;
    p.tensors.retain(|_| {
        i += 1;
        used_t[i - 1]
    });
}
