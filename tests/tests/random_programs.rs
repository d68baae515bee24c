//! Differential testing from the grammar: random well-typed `.attn` programs (masks over
//! q, kv, h, b, constants, a param and captured i32 tensors with `/` `%` (floor), `min`
//! `max` `abs` `clamp` `select`, comparisons, `&& || !`, `if/else`, casts; scores over `s`
//! with `tanh exp log sqrt sigmoid floor ceil exp2`, casts and -inf) compiled with
//! `compile_source`, run on the CPU backend and the oracle on a small random shape, and
//! their masks fed to the block analysis: `precision` checks `build_block_maps` against
//! brute force (no empty block holds a true element, no full block a false one).
//!
//! The generator is a seeded SplitMix64 (`attnc::synth::Rng`): a failure prints the
//! seed, the program and the shape; rerun one case with `ATTNC_SEED=<seed>`.
//! Default 40 cases (~3 s); `ATTNC_CASES=N` runs more (1500 passed when written).
//! Tolerance: the CPU tolerance of `cpu_differential.rs` (1e-4), since scores are bounded
//! (integer parts are clamped to [-50, 50] and scaled by 0.05 before they reach `s`).

use attnc::{Backend, BindOptions, Captures, DType, ParamValue, Shape, Tensor, synth};
use attnc_compiler::analysis::classify::precision;
use attnc_compiler::ir::{DimSpec, Type};
use attnc_tests::*;

struct Gen {
    rng: Rng,
    /// Whether `s` is in scope (scores) or not (masks).
    has_s: bool,
}

impl Gen {
    fn coin(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }
    fn small(&mut self) -> i64 {
        self.rng.below(41) as i64 - 20
    }
    fn int_leaf(&mut self) -> String {
        match self.rng.below(12) {
            0 | 1 => "q".into(),
            2 | 3 => "kv".into(),
            4 => "h".into(),
            5 => "b".into(),
            6 => "p".into(),
            7 => "C".into(),
            8 => format!("t[clamp({}, 0, 15)]", self.int(1)),
            9 => "u[b, kv]".into(),
            10 if self.coin(20) => "2147483000".into(), // wrapping arithmetic
            _ => format!("{}", self.small()),
        }
    }
    fn int(&mut self, depth: u32) -> String {
        if depth == 0 || self.coin(25) {
            return self.int_leaf();
        }
        let d = depth - 1;
        match self.rng.below(15) {
            0 => format!("({} + {})", self.int(d), self.int(d)),
            1 => format!("({} - {})", self.int(d), self.int(d)),
            2 => format!("({} * {})", self.int(d), self.small()),
            3 => format!("({} / {})", self.int(d), self.int_or_const(d)),
            4 => format!("({} % {})", self.int(d), self.int_or_const(d)),
            5 => format!("min({}, {})", self.int(d), self.int(d)),
            6 => format!("max({}, {})", self.int(d), self.int(d)),
            7 => format!("abs({})", self.int(d)),
            8 => format!("clamp({}, {}, {})", self.int(d), self.small(), self.small()),
            9 => format!(
                "if {} {{ {} }} else {{ {} }}",
                self.boolean(d),
                self.int(d),
                self.int(d)
            ),
            10 => format!(
                "select({}, {}, {})",
                self.boolean(d),
                self.int(d),
                self.int(d)
            ),
            11 => format!("({} as i32)", self.boolean(d)),
            12 => format!("((q - kv) / {})", self.nonzero()),
            13 => format!("(-{})", self.int(d)),
            _ => format!("((kv + {}) % {})", self.small(), self.nonzero()),
        }
    }
    fn nonzero(&mut self) -> i64 {
        let x = self.rng.below(9) as i64 + 1;
        if self.coin(30) { -x } else { x }
    }
    fn int_or_const(&mut self, d: u32) -> String {
        if self.coin(60) {
            format!("{}", self.nonzero())
        } else {
            self.int(d)
        } // may be 0
    }
    /// Conditions never read `s`: the kernel's f32 dot product and the oracle's f64 one
    /// round `s` differently, so a condition on `s` (or `floor`/`ceil` of it) could flip
    /// for an `s` at the boundary, a discontinuity no tolerance covers.
    fn boolean(&mut self, depth: u32) -> String {
        let had_s = std::mem::replace(&mut self.has_s, false);
        let out = self.boolean_inner(depth);
        self.has_s = had_s;
        out
    }
    fn without_s(&mut self, depth: u32) -> String {
        let had_s = std::mem::replace(&mut self.has_s, false);
        let out = self.float(depth);
        self.has_s = had_s;
        out
    }
    fn boolean_inner(&mut self, depth: u32) -> String {
        if depth == 0 {
            return self.compare(0);
        }
        let d = depth - 1;
        match self.rng.below(9) {
            0..=2 => self.compare(d),
            3 => format!("({} && {})", self.boolean(d), self.boolean(d)),
            4 => format!("({} || {})", self.boolean(d), self.boolean(d)),
            5 => format!("!({})", self.boolean(d)),
            6 => format!(
                "if {} {{ {} }} else {{ {} }}",
                self.boolean(d),
                self.boolean(d),
                self.boolean(d)
            ),
            7 => format!("({} == {})", self.boolean(d), self.boolean(d)),
            _ => format!("({} < {})", self.float(d), self.float(d)),
        }
    }
    fn compare(&mut self, d: u32) -> String {
        let op = *pick(&mut self.rng, &["==", "!=", "<", "<=", ">", ">="]);
        // index comparisons of the shapes the analysis is built for, and arbitrary ones
        match self.rng.below(4) {
            0 => format!("(q - kv {op} {})", self.small()),
            1 => format!(
                "(q / {} {op} kv / {})",
                self.nonzero().abs(),
                self.nonzero().abs()
            ),
            _ => format!("({} {op} {})", self.int(d), self.int(d)),
        }
    }
    fn float(&mut self, depth: u32) -> String {
        if depth == 0 || self.coin(25) {
            return match self.rng.below(4) {
                0 | 1 if self.has_s => "s".into(),
                0 | 1 => format!("({} as f32)", self.int_leaf()),
                2 => format!("{:.2}", self.small() as f32 / 8.0),
                _ => format!("(clamp({}, -50, 50) as f32 * 0.05)", self.int(1)),
            };
        }
        let d = depth - 1;
        match self.rng.below(14) {
            0 => format!("({} + {})", self.float(d), self.float(d)),
            1 => format!("({} - {})", self.float(d), self.float(d)),
            2 => format!("({} * {:.2})", self.float(d), self.small() as f32 / 16.0),
            3 => format!("tanh({})", self.float(d)),
            4 => format!("exp(-abs({}))", self.float(d)),
            5 => format!("log(1.0 + abs({}))", self.float(d)),
            6 => format!("sqrt(abs({}))", self.float(d)),
            7 => format!("sigmoid({})", self.float(d)),
            8 => format!("floor({})", self.without_s(d)),
            9 => format!("ceil({})", self.without_s(d)),
            10 => format!("min({}, {})", self.float(d), self.float(d)),
            11 => format!("max({}, {})", self.float(d), self.float(d)),
            12 => format!(
                "if {} {{ {} }} else {{ {} }}",
                self.boolean(d),
                self.float(d),
                self.float(d)
            ),
            _ => format!("exp2(tanh({}))", self.float(d)),
        }
    }
    /// A score that stays O(1) + s (bounded terms only), sometimes -inf.
    fn score(&mut self) -> String {
        let body = format!(
            "s * {:.2} + tanh({})",
            1.0 + self.small() as f32 / 40.0,
            self.float(3)
        );
        if self.coin(25) {
            format!("if {} {{ log(0.0) }} else {{ {body} }}", self.boolean(2))
        } else {
            body
        }
    }
}

/// A random program: the mask, the score, both or neither.
fn program(g: &mut Gen) -> String {
    let c = g.small();
    g.has_s = false;
    let mask = g.boolean(3);
    g.has_s = true;
    let score = g.score();
    let (has_mask, has_score) = match g.rng.below(6) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let mut fields = String::new();
    if has_mask {
        fields += "mask = m; ";
    }
    if has_score {
        fields += "score = sc; ";
    }
    format!(
        "const C: i32 = {c};
param p: i32;
tensor t: i32[16];
tensor u: i32[B, KV];
mask m(b, h, q, kv) {{ {mask} }}
score sc(s, b, h, q, kv) {{ {score} }}
attention a {{ {fields}}}
"
    )
}

/// Captures for exactly what the program declares.
fn captures(p: &attnc_compiler::ir::Program, shape: &Shape, rng: &mut Rng) -> Captures {
    let mut c = Captures::default();
    for param in &p.params {
        assert_eq!(param.ty, Type::I32);
        c.params.insert(
            param.name.clone(),
            ParamValue::I32(range(rng, 0, 40) as i32 - 5),
        );
    }
    for t in &p.tensors {
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|d| match d {
                DimSpec::B => shape.b,
                DimSpec::Kv => shape.lkv,
                DimSpec::Fixed(n) => *n,
                other => panic!("unexpected dim {other:?}"),
            })
            .collect();
        let n = dims.iter().product();
        let data: Vec<i32> = (0..n).map(|_| rng.below(21) as i32 - 10).collect();
        c.tensors
            .insert(t.name.clone(), Tensor::from_i32(dims, &data));
    }
    c
}

fn one_case(seed: u64) {
    let mut g = Gen {
        rng: Rng::new(seed),
        has_s: false,
    };
    let src = program(&mut g);
    let var = variant(&src, "a");
    let rng = &mut g.rng;
    let hkv = range(rng, 1, 2);
    let shape = Shape {
        b: range(rng, 1, 2),
        hq: hkv * range(rng, 1, 2),
        hkv,
        lq: range(rng, 1, 150),
        lkv: range(rng, 1, 150),
        d: 16,
        dv: 16,
    };
    let caps = captures(var.program(), &shape, rng);
    let ctx = format!(
        "seed {seed}, shape {shape:?}, captures {:?}\n{src}",
        caps.params
    );
    let qkv = synth::qkv(&shape, DType::F32, seed);
    let mut reference = var
        .bind(BindOptions::new(Backend::Reference, shape, DType::F32))
        .unwrap();
    let want = reference
        .forward(&qkv.0, &qkv.1, &qkv.2, &caps)
        .unwrap_or_else(|e| panic!("reference failed: {e}\n{ctx}"));
    let mut cpu = var
        .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
        .unwrap_or_else(|e| panic!("cpu bind failed: {e}\n{ctx}"));
    let got = cpu
        .forward(&qkv.0, &qkv.1, &qkv.2, &caps)
        .unwrap_or_else(|e| panic!("cpu failed: {e}\n{ctx}"));
    assert_close(
        &format!("O\n{ctx}"),
        &got.o.to_f32(),
        &want.o.to_f32(),
        1e-4,
    );
    assert_close(
        &format!("LSE\n{ctx}"),
        &got.lse.to_f32(),
        &want.lse.to_f32(),
        1e-4,
    );

    // block analysis soundness against brute force, random block sizes
    if var.program().mask.is_some() {
        let bind = reference.bindings(&caps).unwrap();
        for _ in 0..2 {
            let (qb, kb) = (range(rng, 1, 16), range(rng, 1, 16));
            if let Err(e) = precision(var.program(), &shape, qb, kb, &bind) {
                panic!("block maps {qb}x{kb}: {e}\n{ctx}");
            }
        }
    }
}

#[test]
fn random_programs_cpu_vs_oracle_and_sound_block_maps() {
    if let Ok(s) = std::env::var("ATTNC_SEED") {
        one_case(s.parse().expect("ATTNC_SEED is a u64"));
        return;
    }
    // more cases on demand: ATTNC_CASES=5000
    let n: u64 =
        std::env::var("ATTNC_CASES").map_or(40, |s| s.parse().expect("ATTNC_CASES is a number"));
    for seed in 0..n {
        one_case(seed);
    }
}

#[test]
fn generated_programs_are_varied() {
    // guard against a generator that degenerates (e.g. every mask constant)
    let mut masked = 0;
    let mut ops = std::collections::BTreeSet::new();
    for seed in 0..48 {
        let mut g = Gen {
            rng: Rng::new(seed),
            has_s: false,
        };
        let src = program(&mut g);
        for op in [
            "/", "%", "min(", "max(", "abs(", "clamp(", "&&", "||", "!(", "if ", "select(", "t[",
            "u[", " p", "tanh(", "log(0.0)", "as f32", "as i32",
        ] {
            if src.contains(op) {
                ops.insert(op);
            }
        }
        let var = variant(&src, "a");
        if var.program().mask.is_some() {
            masked += 1;
        }
    }
    assert!(ops.len() >= 17, "operators seen: {ops:?}");
    assert!(masked >= 30);
}
