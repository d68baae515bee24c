//! The CPU backend (Cranelift) against the reference oracle: every attention of every
//! example on random shapes (odd lengths, Lq != Lkv, GQA, D in {32, 64, 128}, Dv = D),
//! params and captured tensors changed between calls on one `Bound`, and checked mode.
//!
//! Tolerance: |O - O_ref| <= 1e-4 and |LSE - LSE_ref| <= 1e-4, infinities equal.
//! Why: the kernel accumulates in f32 (dot products of length D <= 128 and softmax sums
//! over Lkv <= 100 terms) and uses a ~2 ulp polynomial `exp`, against an f64 oracle that
//! sees the same f32 logits. With inputs ~N(0, 1) and scale 1/sqrt(D) the logits are
//! O(1) and their f32 error is ~sqrt(D) * 6e-8 * |logit| ~ 1e-6; softmax weights and
//! the convex combination of |V| <= 3.5 carry that relative error into O at ~1e-5 in
//! the worst rows. Observed maxima are ~2e-6 (printed with --nocapture); 1e-4 leaves
//! headroom for summation order across tile sizes while still catching any wrong
//! element (a wrong mask bit or kv head moves O by ~1e-2 or more).

use attnc::{
    Backend, BindOptions, Bound, Captures, DType, Error, ParamValue, Shape, Tensor, synth,
};
use attnc_tests::*;

const TOL: f32 = 1e-4;

fn bind(ex: &attnc::Variant, backend: Backend, shape: Shape) -> Bound {
    ex.bind(BindOptions::new(backend, shape, DType::F32))
        .unwrap_or_else(|e| panic!("bind {}: {e}", backend.name()))
}

/// Runs both backends and compares; returns (max dO, max dLSE, fully masked rows).
fn compare(
    what: &str,
    cpu: &mut Bound,
    reference: &mut Bound,
    qkv: &(Tensor, Tensor, Tensor),
    caps: &Captures,
) -> (f32, f32, usize) {
    compare_tol(what, cpu, reference, qkv, caps, TOL)
}

fn compare_tol(
    what: &str,
    cpu: &mut Bound,
    reference: &mut Bound,
    qkv: &(Tensor, Tensor, Tensor),
    caps: &Captures,
    tol: f32,
) -> (f32, f32, usize) {
    let (q, k, v) = qkv;
    let want = reference
        .forward(q, k, v, caps)
        .unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    let got = cpu
        .forward(q, k, v, caps)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let (o, wo) = (got.o.to_f32(), want.o.to_f32());
    let (l, wl) = (got.lse.to_f32(), want.lse.to_f32());
    assert_close(&format!("{what}: O"), &o, &wo, tol);
    assert_close(&format!("{what}: LSE"), &l, &wl, TOL);
    // fully masked rows: exactly O = 0 and LSE = -inf in both
    let dv = cpu.options().shape.dv;
    for (r, x) in wl.iter().enumerate() {
        if *x == f32::NEG_INFINITY {
            assert!(
                o[r * dv..][..dv].iter().all(|y| *y == 0.0),
                "{what}: masked row {r} has O != 0"
            );
        }
    }
    let masked = wl.iter().filter(|x| x.is_infinite()).count();
    (max_abs_err(&o, &wo).0, max_abs_err(&l, &wl).0, masked)
}

#[test]
fn every_example_matches_the_oracle_on_random_shapes() {
    let mut rng = Rng::new(0xC0FFEE);
    let ds = [32, 64, 128];
    let mut n = 0;
    let (mut eo, mut el) = (0f32, 0f32);
    let mut masked = 0;
    for ex in examples() {
        for trial in 0..2u64 {
            let hkv = range(&mut rng, 1, 2);
            let d = ds[(n + trial as usize) % 3];
            let mut shape = Shape {
                b: range(&mut rng, 1, 2),
                hq: hkv * range(&mut rng, 1, 3),
                hkv,
                lq: 2 * range(&mut rng, 0, 40) + 1, // odd
                lkv: range(&mut rng, 1, 90),
                d,
                dv: d,
            };
            if trial == 1 {
                shape.lkv = shape.lq; // self-attention too
            }
            if ex.self_attention_only() {
                shape.lkv = shape.lq;
            }
            let what = format!("{} trial {trial} {shape:?}", ex.id());
            let caps = synth::captures(ex.program(), &shape, trial);
            let qkv = synth::qkv(&shape, DType::F32, 10 + trial);
            let mut cpu = bind(&ex.variant, Backend::Cpu, shape);
            let mut reference = bind(&ex.variant, Backend::Reference, shape);
            let (a, b, m) = compare(&what, &mut cpu, &mut reference, &qkv, &caps);
            eo = eo.max(a);
            el = el.max(b);
            masked += m;
        }
        n += 1;
    }
    assert!(n >= 31, "expected the 31 example attentions, found {n}");
    assert!(masked > 0, "no fully masked row was exercised");
    println!("{n} attentions: max |dO| {eo:e}, max |dLSE| {el:e}, masked rows {masked}");
}

fn example(id: &str) -> Example {
    examples()
        .into_iter()
        .find(|e| e.id() == id)
        .unwrap_or_else(|| panic!("no example {id}"))
}

const SHAPE: Shape = Shape {
    b: 2,
    hq: 4,
    hkv: 2,
    lq: 67,
    lkv: 67,
    d: 32,
    dv: 32,
};

/// Calls one CPU `Bound` (and one reference `Bound`) with each capture set in turn;
/// every output must match the oracle, and consecutive outputs must differ (the new
/// value really reached the kernel, no stale block map or captured pointer).
fn vary(id: &str, sets: Vec<(String, Captures)>) {
    let ex = example(id);
    let mut cpu = bind(&ex.variant, Backend::Cpu, SHAPE);
    let mut reference = bind(&ex.variant, Backend::Reference, SHAPE);
    let qkv = synth::qkv(&SHAPE, DType::F32, 5);
    let mut last: Option<Vec<f32>> = None;
    for (label, caps) in sets {
        let what = format!("{id} with {label}");
        compare(&what, &mut cpu, &mut reference, &qkv, &caps);
        let o = cpu
            .forward(&qkv.0, &qkv.1, &qkv.2, &caps)
            .unwrap()
            .o
            .to_f32();
        if let Some(prev) = &last {
            assert_ne!(prev, &o, "{what}: output did not change");
        }
        last = Some(o);
    }
}

fn with_param(p: &attnc::Variant, name: &str, values: &[i32]) -> Vec<(String, Captures)> {
    values
        .iter()
        .map(|v| {
            let mut c = synth::captures(p.program(), &SHAPE, 0);
            c.params.insert(name.into(), ParamValue::I32(*v));
            (format!("{name} = {v}"), c)
        })
        .collect()
}

#[test]
fn window_param_changes_between_calls() {
    let ex = example("sliding_window/sliding_window");
    // -1: every row fully masked; 0: the diagonal only; 1000: plain causal
    vary(
        &ex.id(),
        with_param(&ex.variant, "window", &[7, 0, 30, -1, 1000, 7]),
    );
    let ex = example("softcap_sliding/softcap_sliding");
    vary(&ex.id(), with_param(&ex.variant, "window", &[3, 64]));
    let ex = example("dilated_sliding_window/dilated_sliding_window");
    let sets = [(10, 2), (10, 3), (40, 1), (5, 0)]
        .iter()
        .map(|(w, d)| {
            let c = Captures::default()
                .param("window", ParamValue::I32(*w))
                .param("dilation", ParamValue::I32(*d));
            (format!("window {w} dilation {d}"), c)
        })
        .collect();
    vary(&ex.id(), sets);
}

#[test]
fn prefix_param_changes_between_calls() {
    let ex = example("prefix_lm/prefix_lm");
    vary(
        &ex.id(),
        with_param(&ex.variant, "prefix", &[0, 17, 50, 67, 5]),
    );
    let ex = example("block_causal/block_diffusion");
    vary(&ex.id(), with_param(&ex.variant, "seq_len", &[33, 20, 67]));
}

#[test]
fn captured_tensors_change_between_calls() {
    // document ids: a new packing each call (sorted ids, then unsorted ones)
    let ex = example("document_causal/document_causal");
    let docs = |f: &dyn Fn(usize, usize) -> i32| {
        let data: Vec<i32> = (0..SHAPE.b * SHAPE.lkv)
            .map(|i| f(i / SHAPE.lkv, i % SHAPE.lkv))
            .collect();
        Captures::default().tensor("doc", Tensor::from_i32(vec![SHAPE.b, SHAPE.lkv], &data))
    };
    vary(
        &ex.id(),
        vec![
            ("one document".into(), docs(&|_, _| 0)),
            ("documents of 10".into(), docs(&|_, i| (i / 10) as i32)),
            (
                "per-batch packing".into(),
                docs(&|b, i| (i / (7 + 20 * b)) as i32),
            ),
            ("unsorted ids".into(), docs(&|_, i| (i % 3) as i32)),
        ],
    );
    // a learned bias, rescaled each call
    let ex = example("learned_bias/learned_bias");
    let base = synth::captures(ex.program(), &SHAPE, 3);
    let bias = base.tensors["bias"].to_f32();
    let sets = [0.0f32, 1.0, -3.0]
        .iter()
        .map(|s| {
            let t: Vec<f32> = bias.iter().map(|x| x * s).collect();
            let c = Captures::default().tensor(
                "bias",
                Tensor::from_f32(base.tensors["bias"].shape().to_vec(), &t),
            );
            (format!("bias x {s}"), c)
        })
        .collect();
    vary(&ex.id(), sets);
    // per-head windows (a negative window masks a head out)
    let ex = example("head_window/head_window");
    let sets = [[0, 5, 66, -1], [3, 3, 3, 3], [-1, -1, 20, 1]]
        .iter()
        .map(|w| {
            let c = Captures::default().tensor("window", Tensor::from_i32(vec![4], w));
            (format!("window {w:?}"), c)
        })
        .collect();
    vary(&ex.id(), sets);
}

#[test]
fn half_precision_inputs_match_the_oracle() {
    // q/k/v in f16 and bf16: both backends read the same rounded inputs; O comes back
    // in the input dtype, so the tolerance is one rounding of |O| <= 4: 2^-9 (f16),
    // 2^-6 (bf16), plus the f32 tolerance. LSE stays f32.
    let ex = example("alibi_causal/alibi_causal");
    let shape = Shape {
        lq: 45,
        lkv: 61,
        ..SHAPE
    };
    for (dtype, tol) in [(DType::F16, 2e-3 + TOL), (DType::BF16, 1.6e-2 + TOL)] {
        let caps = synth::captures(ex.program(), &shape, 0);
        let qkv = synth::qkv(&shape, dtype, 9);
        let mut cpu = ex
            .variant
            .bind(BindOptions::new(Backend::Cpu, shape, dtype))
            .unwrap();
        let mut reference = ex
            .variant
            .bind(BindOptions::new(Backend::Reference, shape, dtype))
            .unwrap();
        compare_tol(
            &format!("{} {dtype:?}", ex.id()),
            &mut cpu,
            &mut reference,
            &qkv,
            &caps,
            tol,
        );
    }
}

const OOB_SRC: &str = "tensor t: i32[KV];
mask m(b, h, q, kv) { t[kv + 5] >= 0 }
attention a { mask = m; }
";

#[test]
fn checked_mode_reports_an_out_of_range_read_with_its_span() {
    let var = variant(OOB_SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 9,
        lkv: 9,
        d: 32,
        dv: 32,
    };
    let caps = Captures::default().tensor("t", Tensor::from_i32(vec![9], &[1; 9]));
    let (q, k, v) = synth::qkv(&shape, DType::F32, 1);
    for backend in [Backend::Cpu, Backend::Reference] {
        let mut opts = BindOptions::new(backend, shape, DType::F32);
        opts.checked = true;
        let mut bound = var.bind(opts).unwrap();
        match bound.forward(&q, &k, &v, &caps) {
            Err(Error::OutOfBounds { message, rendered }) => {
                assert!(message.contains("`t`"), "{backend:?}: {message}");
                assert!(
                    message.contains("at [9]"),
                    "{backend:?}: the first bad read is kv = 4, index 9: {message}"
                );
                assert!(rendered.contains("E0306"), "{backend:?}: {rendered}");
                assert!(
                    rendered.contains("t[kv + 5]"),
                    "{backend:?}: no source line\n{rendered}"
                );
                assert!(
                    rendered.contains("^"),
                    "{backend:?}: no span marker\n{rendered}"
                );
                assert!(
                    rendered.contains(":2:"),
                    "{backend:?}: not pointing at line 2\n{rendered}"
                );
            }
            other => panic!(
                "{backend:?}: expected OutOfBounds, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // unchecked CPU mode never reads outside the tensor and does not fail
    let mut bound = var
        .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
        .unwrap();
    let out = bound.forward(&q, &k, &v, &caps).unwrap();
    assert!(out.o.to_f32().iter().all(|x| x.is_finite()));
    // a guarded read is not reported: `kv < 4 && t[kv + 5] >= 0` stays in range
    let var = variant(
        "tensor t: i32[KV]; mask m(b, h, q, kv) { kv < 4 && t[kv + 5] >= 0 } attention a { mask = m; }",
        "a",
    );
    for backend in [Backend::Cpu, Backend::Reference] {
        let mut opts = BindOptions::new(backend, shape, DType::F32);
        opts.checked = true;
        let mut bound = var.bind(opts).unwrap();
        bound
            .forward(&q, &k, &v, &caps)
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
    }
}

#[test]
fn non_finite_scores_match_the_oracle() {
    // One NaN (or +inf) logit at kv = 1. The oracle propagates it (as PyTorch's softmax
    // does): O and LSE of every row are NaN. (Regression: the CPU kernel at 77e0440
    // returned O = 0, LSE = -inf, silently reporting the rows as fully masked.)
    let src =
        "tensor t: f32[KV]; score sc(s, b, h, q, kv) { s + t[kv] } attention a { score = sc; }";
    let var = variant(src, "a");
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 3,
        lkv: 5,
        d: 4,
        dv: 4,
    };
    let qkv = synth::qkv(&shape, DType::F32, 1);
    for bad in [f32::NAN, f32::INFINITY] {
        let t = Tensor::from_f32(vec![5], &[0.0, bad, 0.0, 0.0, 0.0]);
        let caps = Captures::default().tensor("t", t);
        let mut cpu = bind(&var, Backend::Cpu, shape);
        let mut reference = bind(&var, Backend::Reference, shape);
        let want = reference.forward(&qkv.0, &qkv.1, &qkv.2, &caps).unwrap();
        let got = cpu.forward(&qkv.0, &qkv.1, &qkv.2, &caps).unwrap();
        assert!(
            want.lse.to_f32().iter().all(|x| x.is_nan()),
            "oracle: {:?}",
            want.lse.to_f32()
        );
        assert!(
            got.lse.to_f32().iter().all(|x| x.is_nan()),
            "score {bad}: cpu LSE {:?}, oracle {:?}",
            got.lse.to_f32(),
            want.lse.to_f32()
        );
    }
}

#[test]
fn mask_transcendentals_tie_as_in_the_oracle() {
    // `exp(-abs(select(c, x, y))) < exp(-abs(x))` is false wherever the select picks x:
    // both sides are one value. The CPU kernel computed the right side once per column
    // (libm) and the left per element (the score path's polynomial), a few ulp apart, so
    // the tie broke and rows kept keys the oracle masks (found by `fuzz_differential
    // --mode programs --seed 3232`, session 32). Masks now take libm at every level.
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 27,
        lkv: 36,
        d: 8,
        dv: 8,
    };
    let qkv = synth::qkv(&shape, DType::F32, 5);
    for m in [
        "exp(-abs(if (q / 6 <= kv) { kv as f32 } else { 0.25 })) < exp(-abs(kv as f32))",
        "exp2(if (q / 6 <= kv) { kv as f32 * 0.3 } else { 0.25 }) > exp2(kv as f32 * 0.3)",
        "tanh(if (q / 6 <= kv) { kv as f32 * 0.1 } else { 0.0 }) < tanh(kv as f32 * 0.1)",
    ] {
        let src = format!("mask m(b, h, q, kv) {{ {m} }} attention a {{ mask = m; }}");
        let var = variant(&src, "a");
        let mut cpu = bind(&var, Backend::Cpu, shape);
        let mut reference = bind(&var, Backend::Reference, shape);
        let (_, _, masked) = compare(m, &mut cpu, &mut reference, &qkv, &Captures::default());
        // (the rows whose first key is past q / 6 see nothing: both backends agree on them)
        assert!(masked > 0, "{m}: {masked} fully masked rows");
    }
}
