//! Masking written into a score, lifted into the mask.
//!
//! A score that masks by returning −∞ — `if q >= kv { s } else { -1.0 / 0.0 }`,
//! FlexAttention's `torch.where(q_idx >= kv_idx, score, -float("inf"))` as `attnc.flex`
//! ports it, nested `if`s, the −∞ in either branch — means the same as a mask: a position
//! scored −∞ is one the mask drops (docs/language.md §1: both give P = 0, no gradient, and a
//! row with nothing else left is fully masked). But only a mask is analysed for block
//! sparsity. [`lift_score_masks`] moves the conditions into the mask (`mask && c`), so the
//! blocks where they are false are skipped like any masked block, and the score keeps the
//! value it returns where they hold.
//!
//! In: a verified [`Program`] (after `passes::optimize`). Out: the program with its mask
//! and score rewritten, or `None` when its score does not end in such a choice. Applied by
//! the front end to every program it compiles (`sema::finish`), before anything else sees
//! the program, so every backend and the oracle run the lifted form.
//!
//! Exactness: where a condition is false the score was −∞ and the position is now masked;
//! where all hold the score returns the same value from the same instructions. Tensor reads
//! stay where the source performs them: the conditions' reads move to the mask guarded by
//! the old mask (the score was evaluated only where the old mask holds), and a read of the
//! kept value must be guarded by the conditions already (an `if` guards its branch), or the
//! score is left alone — `select(c, x, -inf)` evaluates `x` everywhere, and checked mode
//! must still report what such a read does where `c` is false.

use crate::ir::{BinOp, FnKind, Function, Inst, Program, Type, UnOp, Value};
use crate::passes::optimize;

/// One condition under which the score is not −∞: `(value, negated)`, the value a bool of
/// the score that reads no `s`.
type Cond = (Value, bool);

/// The conditions of `f`'s return chain: `select(c, x, -inf)` keeps `c` and goes on with
/// `x`, `select(c, -inf, x)` keeps `!c`; `(conditions, x)` of the innermost value.
fn conditions(f: &Function) -> (Vec<Cond>, Value) {
    let neg_inf = |v: Value| matches!(f.inst(v), Inst::ConstF32(b) if f32::from_bits(*b) == f32::NEG_INFINITY);
    let reads_s = |v: Value| {
        f.live_from(&[v])
            .iter()
            .zip(&f.insts)
            .any(|(l, i)| *l && matches!(i, Inst::Arg(crate::ir::Arg::S)))
    };
    let (mut conds, mut r) = (Vec::new(), f.ret);
    loop {
        match *f.inst(r) {
            Inst::Select(c, a, b) if neg_inf(b) && !reads_s(c) => {
                conds.push((c, false));
                r = a;
            }
            Inst::Select(c, a, b) if neg_inf(a) && !reads_s(c) => {
                conds.push((c, true));
                r = b;
            }
            _ => return (conds, r),
        }
    }
}

/// Bool `g` and the values it implies through `and` and `c ? a : false` (the
/// conjunctions themselves and their operands, all the way down).
fn conjuncts(f: &Function, g: Value, out: &mut Vec<Value>) {
    out.push(g);
    match *f.inst(g) {
        Inst::Binary(BinOp::And, a, b) => {
            conjuncts(f, a, out);
            conjuncts(f, b, out);
        }
        Inst::Select(c, a, b) if matches!(f.inst(b), Inst::ConstBool(false)) => {
            conjuncts(f, c, out);
            conjuncts(f, a, out);
        }
        _ => {}
    }
}

/// Whether guard `g` implies every condition of `conds` (each one of its conjuncts, or for
/// a negated condition `!c` a conjunct `!c`, or `k` where `c` is `!k`: the else branch of
/// `if !k` is guarded by `k` once double negations fold).
fn guard_implies(f: &Function, g: Value, conds: &[Cond]) -> bool {
    let mut cs = Vec::new();
    conjuncts(f, g, &mut cs);
    let not = |x: Value, y: Value| matches!(f.inst(x), Inst::Unary(UnOp::Not, z) if *z == y);
    conds.iter().all(|&(c, neg)| {
        cs.iter().any(|&k| match neg {
            false => k == c,
            true => not(k, c) || not(c, k),
        })
    })
}

/// `p` with the −∞ conditions of its score moved into its mask (module docs), or `None`
/// when there are none (or a read of the kept value is not guarded by them).
pub fn lift_score_masks(p: &Program) -> Option<Program> {
    let f = p.score.as_ref()?;
    let (conds, kept) = conditions(f);
    if conds.is_empty() {
        return None;
    }
    // every read of the kept value that no condition performs is guarded by them all
    let of_conds = f.live_from(&conds.iter().map(|c| c.0).collect::<Vec<_>>());
    let of_kept = f.live_from(&[kept]);
    for (i, inst) in f.insts.iter().enumerate() {
        if let Inst::Load { guard, .. } = inst
            && of_kept[i]
            && !of_conds[i]
            && !guard_implies(f, *guard, &conds)
        {
            return None;
        }
    }
    // the mask: the old one, then the conditions' instructions (each read guarded by the
    // old mask as well), their conjunction, and the two joined
    let mut m = p
        .mask
        .clone()
        .unwrap_or_else(|| Function::new(FnKind::Mask));
    let old = p.mask.as_ref().map(|m| m.ret);
    let mut map = vec![Value(0); f.insts.len()];
    for (i, inst) in f.insts.iter().enumerate() {
        if !of_conds[i] {
            continue;
        }
        let span = f.spans[i];
        let mut inst = crate::passes::remap(inst, &map);
        if let (Inst::Load { guard, .. }, Some(o)) = (&mut inst, old) {
            *guard = m.push(Inst::Binary(BinOp::And, o, *guard), Type::Bool, span);
        }
        map[i] = m.push(inst, f.types[i], span);
    }
    let mut acc = old;
    for &(c, neg) in &conds {
        let span = f.spans[c.index()];
        let mut v = map[c.index()];
        if neg {
            v = m.push(Inst::Unary(UnOp::Not, v), Type::Bool, span);
        }
        acc = Some(match acc {
            Some(a) => m.push(Inst::Binary(BinOp::And, a, v), Type::Bool, span),
            None => v,
        });
    }
    m.ret = acc.expect("at least one condition");
    let mut score = f.clone();
    score.ret = kept;
    let score = optimize(&score);
    let identity = matches!(score.inst(score.ret), Inst::Arg(crate::ir::Arg::S));
    Some(Program {
        mask: Some(optimize(&m)),
        score: (!identity).then_some(score),
        ..p.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
    use crate::ir::Scalar;

    /// `src`'s attention `a` as the front end makes it (lifted where it applies).
    fn lifted(src: &str) -> Program {
        crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs
            .into_iter()
            .find(|p| p.name == "a")
            .unwrap()
    }

    /// Masks and scores that mask with −∞, lifted: the front end's program has the
    /// conditions in its mask (the score without them, or none), and at every point of a
    /// grid, for several `s`, the lifted (mask, score) keep exactly the points where the
    /// written form is not −∞ and give the same score there (compared with the same
    /// attention written with the −∞ behind `+ 0.0`, which the lift leaves alone).
    #[test]
    fn masking_scores_lift_into_the_mask() {
        let head = "tensor bias: f32[H, KV]; tensor t: i32[KV]; param w: i32;\n";
        for (mask, score, lifts_all) in [
            ("", "if q >= kv { s } else { -1.0 / 0.0 }", true),
            ("", "if q < kv { -1.0 / 0.0 } else { s * 0.5 }", false),
            (
                "kv < 30",
                "if q >= kv && t[kv] > 0 { s + bias[h, kv] } else { log(0.0) }",
                false,
            ),
            (
                "q - kv <= w",
                "if q >= kv { if t[kv] != 2 { s } else { log(0.0) } } else { log(0.0) }",
                true,
            ),
            (
                "t[q] >= 0",
                "if abs(q - kv) <= w { tanh(s) } else { -1.0 / 0.0 }",
                false,
            ),
        ] {
            let mask_decl = if mask.is_empty() {
                String::new()
            } else {
                format!("mask m(b, h, q, kv) {{ {mask} }}\n")
            };
            let field = if mask.is_empty() { "" } else { "mask = m; " };
            let src = format!(
                "{head}{mask_decl}score sc(s, b, h, q, kv) {{ {score} }}\n\
                 score raw(s, b, h, q, kv) {{ ({score}) + 0.0 }}\n\
                 attention a {{ {field}score = sc; }}\nattention r {{ {field}score = raw; }}\n"
            );
            let module = crate::compile_source(&src).unwrap_or_else(|e| panic!("{e:?}"));
            let a = module.attention("a").unwrap();
            let r = module.attention("r").unwrap();
            assert!(a.mask.is_some(), "{score}: no mask after the lift");
            assert_eq!(a.score.is_none(), lifts_all, "{score}: {:?}", a.score);
            // the raw form was not lifted
            assert_eq!(r.mask.is_some(), !mask.is_empty(), "{score}");
            let bind = |p: &Program| Bindings {
                params: p.params.iter().map(|_| Scalar::I32(6)).collect(),
                tensors: p
                    .tensors
                    .iter()
                    .map(|t| match t.name.as_str() {
                        "bias" => BoundTensor {
                            dims: vec![2, 40],
                            data: TensorData::F32((0..80).map(|i| (i % 7) as f32 * 0.25).collect()),
                        },
                        _ => BoundTensor {
                            dims: vec![40],
                            data: TensorData::I32((0..40).map(|i| i % 3).collect()),
                        },
                    })
                    .collect(),
            };
            let (ba, br) = (bind(a), bind(r));
            let mut scratch = Vec::new();
            for h in 0..2 {
                for q in 0..40 {
                    for kv in 0..40 {
                        for s in [-1.5f32, 0.0, 2.25] {
                            let at = Args::at(s, [0, h, q, kv]);
                            let keep = |p: &Program, b: &Bindings, sc: &mut Vec<Scalar>| {
                                p.mask.as_ref().is_none_or(|m| {
                                    eval(m, p, at, b, sc).unwrap() == Scalar::Bool(true)
                                })
                            };
                            let value =
                                |p: &Program, b: &Bindings, sc: &mut Vec<Scalar>| match &p.score {
                                    Some(f) => eval(f, p, at, b, sc).unwrap().as_f32(),
                                    None => s,
                                };
                            let want = keep(r, &br, &mut scratch)
                                .then(|| value(r, &br, &mut scratch))
                                .filter(|x| *x != f32::NEG_INFINITY);
                            let got =
                                keep(a, &ba, &mut scratch).then(|| value(a, &ba, &mut scratch));
                            assert_eq!(
                                got.map(f32::to_bits),
                                want.map(f32::to_bits),
                                "{score} at h {h} q {q} kv {kv} s {s}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Left alone: a condition that reads `s`, a −∞ behind an operation, `select` (its
    /// kept value's reads are not guarded by the condition), no −∞ at all.
    #[test]
    fn other_scores_are_left_alone() {
        for score in [
            "if s > 0.0 { s } else { -1.0 / 0.0 }",
            "(if q >= kv { s } else { -1.0 / 0.0 }) * 2.0",
            "select(q >= kv, s + bias[h, kv], -1.0 / 0.0)",
            "if q >= kv { s } else { -1000000.0 }",
            "s + bias[h, kv]",
        ] {
            let p = lifted(&format!(
                "tensor bias: f32[H, KV];\nscore sc(s, b, h, q, kv) {{ {score} }}\n\
                 attention a {{ score = sc; }}\n"
            ));
            assert!(p.mask.is_none(), "{score}: lifted into {:?}", p.mask);
            assert!(lift_score_masks(&p).is_none(), "{score}");
        }
    }
}
