//! Differential testing from the grammar: random well-typed `.attn` programs (masks over
//! q, kv, h, b, constants, a param and captured i32 tensors with `/` `%` (floor), `min`
//! `max` `abs` `clamp` `select`, comparisons, `&& || !`, `if/else`, casts; scores over `s`
//! with `tanh exp log sqrt sigmoid floor ceil exp2`, casts and -inf) compiled with
//! `compile_source`, run on the CPU backend and the oracle on a small random shape, and
//! their masks fed to the block analysis: `precision` checks `build_block_maps` against
//! brute force (no empty block holds a true element, no full block a false one). Also:
//! hostile param values (NaN, +-inf) through the CPU backend against the oracle, and the
//! generated code (CLIF, PTX) of generated programs byte-identical across two compiles.
//!
//! The generator (`attnc_tests::progs`) is a seeded SplitMix64 (`attnc::synth::Rng`): a failure prints the
//! seed, the program and the shape; rerun one case with `ATTNC_SEED=<seed>`.
//! Default 40 cases (~3 s); `ATTNC_CASES=N` runs more (1500 passed when written).
//! Tolerance: the CPU tolerance of `cpu_differential.rs` (1e-4), since scores are bounded
//! (integer parts are clamped to [-50, 50] and scaled by 0.05 before they reach `s`).

use attnc::{Backend, BindOptions, DType, ParamValue, synth};
use attnc_compiler::analysis::classify::precision;
use attnc_tests::progs::{Gen, captures, program};
use attnc_tests::*;

/// One generated program against the oracle; returns how many of its rows were fully
/// masked (LSE = -inf in the oracle) and how many there were.
fn one_case(seed: u64) -> (usize, usize) {
    let mut g = Gen::new(seed, false);
    let src = program(&mut g);
    let var = variant(&src, "a");
    let rng = &mut g.rng;
    let shape = random_shape(rng, 2, 150, 16);
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

    let lse = want.lse.to_f32();
    let masked_rows = lse.iter().filter(|x| **x == f32::NEG_INFINITY).count();

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
    (masked_rows, lse.len())
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
    let (mut masked, mut rows) = (0, 0);
    for seed in 0..n {
        let (m, r) = one_case(seed);
        masked += m;
        rows += r;
    }
    // the cases include fully masked rows (O = 0, LSE = -inf), and not only those
    assert!(
        masked > 0 && masked < rows,
        "{masked} of {rows} rows fully masked"
    );
    eprintln!("{masked} of {rows} rows fully masked");
}

#[test]
fn generated_programs_are_varied() {
    // guard against a generator that degenerates (e.g. every mask constant)
    let mut masked = 0;
    let mut ops = std::collections::BTreeSet::new();
    for seed in 0..48 {
        let mut g = Gen::new(seed, false);
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

/// Generated programs with hostile param and capture values: the f32 param and one element
/// of each f32 tensor NaN, +-inf or 3e38, the i32 params at their extremes. The CPU backend
/// (its block maps and closed-form bounds computed from those values) must agree with the
/// oracle, NaN for NaN and infinity for infinity, and nothing may panic. 24 cases (<1 s);
/// `ATTNC_CASES=N` runs more.
#[test]
fn random_programs_with_non_finite_params_cpu_vs_oracle() {
    let n: u64 =
        std::env::var("ATTNC_CASES").map_or(24, |s| s.parse().expect("ATTNC_CASES is a number"));
    let mut hostile_f32 = 0;
    for seed in 0..n {
        let mut g = Gen::new(seed, true);
        let src = program(&mut g);
        let var = variant(&src, "a");
        let rng = &mut g.rng;
        let shape = random_shape(rng, 2, 90, 8);
        let mut caps = captures(var.program(), &shape, rng);
        let f = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38][seed as usize % 4];
        let i = [i32::MIN, i32::MAX, 0, -1][(seed as usize / 4) % 4];
        for v in caps.params.values_mut() {
            match v {
                ParamValue::F32(x) => {
                    hostile_f32 += 1;
                    *x = f;
                }
                ParamValue::I32(x) => *x = i,
                _ => {}
            }
        }
        for t in caps.tensors.values_mut() {
            if let Some(x) = t.f32_slice_mut()
                && !x.is_empty()
            {
                let at = rng.below(x.len() as u64) as usize;
                x[at] = f;
                hostile_f32 += 1;
            }
        }
        let ctx = format!(
            "seed {seed}, shape {shape:?}, params {:?}\n{src}",
            caps.params
        );
        let (q, k, v) = synth::qkv(&shape, DType::F32, seed);
        let run = |backend| {
            let mut b = var
                .bind(BindOptions::new(backend, shape, DType::F32))
                .unwrap_or_else(|e| panic!("{backend:?} bind: {e}\n{ctx}"));
            b.forward(&q, &k, &v, &caps)
                .unwrap_or_else(|e| panic!("{backend:?}: {e}\n{ctx}"))
        };
        let (want, got) = (run(Backend::Reference), run(Backend::Cpu));
        for (what, g, w) in [
            ("O", got.o.to_f32(), want.o.to_f32()),
            ("LSE", got.lse.to_f32(), want.lse.to_f32()),
        ] {
            for (j, (g, w)) in g.iter().zip(&w).enumerate() {
                let ok = if w.is_nan() {
                    g.is_nan()
                } else if w.is_infinite() {
                    g == w
                } else {
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs())
                };
                assert!(ok, "{what}[{j}] = {g}, oracle {w}\n{ctx}");
            }
        }
    }
    // guard against a generator that stops drawing f32 params and tensors
    assert!(
        hostile_f32 >= n / 2,
        "only {hostile_f32} f32 params and tensors made hostile"
    );
}

/// Generated code is deterministic for generated programs too, not only for the
/// examples: each program's CPU code (CLIF) and its sm_90 PTX (the warp-specialized D128
/// default and the synchronous D64 kernel) come out byte-identical from two compiles in
/// one process (which would differ under, e.g., HashMap iteration order). 4 programs
/// (~3 s of CPU in a debug build).
#[test]
fn generated_programs_emit_deterministic_code() {
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::cranelift::{CpuOptions, emit_clif};
    use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, PtxOptions, generate};
    use attnc_compiler::plan::Plan;
    for seed in 0..4 {
        let mut g = Gen::new(seed, seed % 2 == 1);
        let src = program(&mut g);
        let var = variant(&src, "a");
        let p = var.program();
        let clif = || emit_clif(&Plan::new(p), KernelKind::Forward, &CpuOptions::default());
        let a = clif().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{src}"));
        assert_eq!(a, clif().unwrap(), "seed {seed}: CLIF differs\n{src}");
        for opts in [
            PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16),
            PtxOptions::sync(Arch::Sm90, 64, 64, InputType::F16),
        ] {
            let ptx = || {
                generate(&Plan::new(p), KernelKind::Forward, &opts, EmitText::PtxOnly)
                    .map(|(k, _)| k.ptx)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{src}"))
            };
            let a = ptx();
            assert!(a.contains(".visible .entry"), "seed {seed}: no entry");
            assert_eq!(a, ptx(), "seed {seed}: PTX differs ({opts:?})\n{src}");
        }
    }
}

/// Generated programs through the PTX generator with a binding's options for every
/// kernel kind (forward, block table, the backward's three; sm_90 D128 / D64, sm_80):
/// no error and no LLVM abort (`fuzzdiff::ptx_kernels`; `fuzz_differential --mode ptx`
/// runs it for longer). 6 programs (~6 s of CPU in a debug build).
#[test]
fn generated_programs_emit_every_kernel_kind() {
    for seed in 0..6 {
        attnc_tests::fuzzdiff::ptx_kernels(seed).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The front end's lift of −∞ conditions from a score into the mask (`lift`): generated
/// programs whose score is `if c { log(0.0) } else { .. }` (a quarter of them, with and
/// without a mask; `Gen::grad` reads of f32 tensors and the f32 param), compiled as
/// written (lifted) and with the score's value behind `+ 0.0` (which the lift does not look
/// through: the −∞ stays in the score). The reference gives the same O and LSE bit for bit
/// and the same gradients (dQ, dK, dV, tensors, params) for both, and the CPU backend on
/// the lifted form (block sparsity from the lifted condition) matches the reference on
/// the unlifted one. 120 seeds, of which at least 12 lift; `ATTNC_CASES=N` runs more.
#[test]
fn lifted_masking_scores_match_the_unlifted_form() {
    let n: u64 =
        std::env::var("ATTNC_CASES").map_or(120, |s| s.parse().expect("ATTNC_CASES is a number"));
    let mut lifted = 0;
    for seed in 0..n {
        let mut g = Gen::new(seed, true);
        let src = program(&mut g);
        let Some(line) = src.lines().find(|l| l.starts_with("score sc(")) else {
            continue;
        };
        let (open, close) = (line.find("{ ").unwrap(), line.rfind(" }").unwrap());
        let raw_line = format!("{}{{ ({}) + 0.0 }}", &line[..open], &line[open + 2..close]);
        let raw_src = src.replace(line, &raw_line);
        let (a, r) = (variant(&src, "a"), variant(&raw_src, "a"));
        // a score `if c { log(0.0) } else { s * k + .. }` in the attention: lifted (the
        // score is the sum, the choice gone: into the mask); every other program is
        // compared too
        let masking = line.contains("{ if ") && line.contains("{ log(0.0) } else {");
        let in_attention = src.contains("score = sc;");
        if masking && in_attention {
            let f = a.program().score.as_ref().expect("a score");
            assert!(
                !matches!(f.inst(f.ret), attnc_compiler::ir::Inst::Select(..)),
                "not lifted\n{src}"
            );
            lifted += 1;
        }
        let rng = &mut g.rng;
        let shape = random_shape(rng, 2, 70, 8);
        // the unlifted program's captures; the lifted one may read fewer (its mask is
        // folded once more: `p >= p`), given the same values of those it reads
        let caps_r = captures(r.program(), &shape, rng);
        let mut caps_a = caps_r.clone();
        caps_a
            .params
            .retain(|n, _| a.program().params.iter().any(|p| &p.name == n));
        caps_a
            .tensors
            .retain(|n, _| a.program().tensors.iter().any(|t| &t.name == n));
        let ctx = format!("seed {seed}, shape {shape:?}\n{src}");
        let (q, k, v) = synth::qkv(&shape, DType::F32, seed);
        let dout = synth::qkv(&shape, DType::F32, seed ^ 3).0;
        let run = |var: &attnc::Variant, caps: &attnc::Captures, backend| {
            let mut b = var
                .bind(BindOptions::new(backend, shape, DType::F32))
                .unwrap();
            let f = b
                .forward(&q, &k, &v, caps)
                .unwrap_or_else(|e| panic!("{backend:?}: {e}\n{ctx}"));
            let g = b
                .backward(&q, &k, &v, &f.o, &f.lse, &dout, None, caps)
                .unwrap_or_else(|e| panic!("{backend:?} backward: {e}\n{ctx}"));
            (f, g)
        };
        let (fa, ga) = run(&a, &caps_a, Backend::Reference);
        let (fr, gr) = run(&r, &caps_r, Backend::Reference);
        let bits = |t: &attnc::Tensor| t.to_f32().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fa.o), bits(&fr.o), "O\n{ctx}");
        assert_eq!(bits(&fa.lse), bits(&fr.lse), "LSE\n{ctx}");
        for (what, x, y) in [
            ("dQ", &ga.dq, &gr.dq),
            ("dK", &ga.dk, &gr.dk),
            ("dV", &ga.dv, &gr.dv),
        ] {
            assert_close(&format!("{what}\n{ctx}"), &x.to_f32(), &y.to_f32(), 1e-6);
        }
        for (name, x) in &ga.tensors {
            assert_close(
                &format!("d{name}\n{ctx}"),
                &x.to_f32(),
                &gr.tensors[name].to_f32(),
                1e-6,
            );
        }
        for (name, x) in &ga.params {
            assert_close(&format!("d{name}\n{ctx}"), &[*x], &[gr.params[name]], 1e-6);
        }
        // (a param the lifted program no longer reads has no gradient there: zero)
        for (name, y) in &gr.params {
            if !ga.params.contains_key(name) {
                assert_eq!(*y, 0.0, "d{name}\n{ctx}");
            }
        }
        let (fc, _) = run(&a, &caps_a, Backend::Cpu);
        assert_close(
            &format!("CPU O\n{ctx}"),
            &fc.o.to_f32(),
            &fr.o.to_f32(),
            1e-4,
        );
        assert_close(
            &format!("CPU LSE\n{ctx}"),
            &fc.lse.to_f32(),
            &fr.lse.to_f32(),
            1e-4,
        );
    }
    eprintln!("{lifted} of {n} programs lifted");
    assert!(
        lifted >= 12 || n < 120,
        "only {lifted} of {n} programs lifted"
    );
}
