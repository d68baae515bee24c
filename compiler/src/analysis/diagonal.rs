//! Values that depend on the positions only through their difference `kv - q`.
//!
//! In: a score or mask [`Function`]. Out: per value whether it is *positional* (depends on
//! `s`, `q` or `kv`) and whether it is *diagonal* (positional through `kv - q` or `q - kv`
//! only, not through `s`) — [`classify`]; and whether the function computes a costly
//! diagonal value ([`costly_diagonal`]: a transcendental, a power or a division on a
//! diagonal value, as T5's bucket `log(|kv - q| / 8)`). Such a value takes one value per
//! diagonal of a tile: the CPU backend tabulates it (`backend::cranelift::diag`), the GPU
//! forward shares it along a thread's fragment (`PtxOptions::diag_cse`).

use crate::ir::{Arg, BinOp, Function, Inst, UnOp, Value};

/// Per value of `f`: (positional, diagonal).
pub fn classify(f: &Function) -> (Vec<bool>, Vec<bool>) {
    let n = f.insts.len();
    let (mut positional, mut diagonal) = (vec![false; n], vec![false; n]);
    for (i, inst) in f.insts.iter().enumerate() {
        let is = |v: Value, a: Arg| *f.inst(v) == Inst::Arg(a);
        (positional[i], diagonal[i]) = match inst {
            Inst::Arg(Arg::S | Arg::Q | Arg::Kv) => (true, false),
            Inst::Binary(BinOp::ISub, a, b)
                if (is(*a, Arg::Kv) && is(*b, Arg::Q)) || (is(*a, Arg::Q) && is(*b, Arg::Kv)) =>
            {
                (true, true)
            }
            _ => {
                let ops = inst.operands();
                let pos = ops.iter().any(|v| positional[v.index()]);
                let diag = ops
                    .iter()
                    .all(|v| diagonal[v.index()] || !positional[v.index()]);
                (pos, pos && diag)
            }
        };
    }
    (positional, diagonal)
}

/// Whether a live value of `f` is a diagonal transcendental (`log`, `log2`, `exp`,
/// `exp2`, `tanh`, `sqrt`), power or division (float or integer).
pub fn costly_diagonal(f: &Function) -> bool {
    let (_, diagonal) = classify(f);
    let live = f.live_from(&[f.ret]);
    f.insts.iter().enumerate().any(|(i, inst)| {
        live[i]
            && diagonal[i]
            && matches!(
                inst,
                Inst::Unary(
                    UnOp::Log | UnOp::Log2 | UnOp::Exp | UnOp::Exp2 | UnOp::Tanh | UnOp::Sqrt,
                    _
                ) | Inst::Binary(BinOp::FPow | BinOp::FDiv | BinOp::IDiv | BinOp::IRem, _, _)
            )
    })
}

#[cfg(test)]
mod tests {
    use super::costly_diagonal;

    fn score(src: &str) -> crate::ir::Function {
        let m = crate::compile_source(src).expect("compiles");
        m.programs[0].score.clone().expect("a score")
    }

    #[test]
    fn t5_is_costly_alibi_and_a_table_are_not() {
        let t5 = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/t5_relative_bias.attn"
        ))
        .unwrap();
        assert!(costly_diagonal(&score(&t5)));
        for cheap in [
            "score f(s, b, h, q, kv) { s - 0.5 * ((q - kv) as f32) } attention a { score = f; }",
            "tensor t: f32[H, 129];\nscore f(s, b, h, q, kv) { s + t[h, clamp(q - kv, -64, 64) + 64] }\nattention a { score = f; }",
            // positional, but not through kv - q alone
            "score f(s, b, h, q, kv) { s + log((q + kv + 1) as f32) } attention a { score = f; }",
            "score f(s, b, h, q, kv) { tanh(s / 30.0) * 30.0 } attention a { score = f; }",
        ] {
            assert!(!costly_diagonal(&score(cheap)), "{cheap}");
        }
        let log_dist = "score f(s, b, h, q, kv) { s - log((abs(kv - q) + 1) as f32) } attention a { score = f; }";
        assert!(costly_diagonal(&score(log_dist)));
    }
}
