//! The reference oracle (`Backend::Reference` and `attnc_compiler::reference::attention`)
//! against (a) values computed by hand on tiny cases and (b) an independent dense softmax
//! attention (`attnc_tests::dense_attention`) on random small shapes: odd lengths,
//! Lq != Lkv, GQA, Dv != D and fully-masked rows, for several examples.
//!
//! Tolerances: hand cases are closed-form f64 expressions rounded to f32, so the oracle
//! (f64 inside, f32 out) must agree to a few f32 ulps: 1e-6 relative. Against the dense
//! version both sides compute in f64 from the same f32 logits; they differ only in
//! summation order, so 2e-6 absolute on O (|O| <= max|V| ~ 4) and LSE (|LSE| < 10).

use attnc::{Backend, BindOptions, Captures, DType, ParamValue, Shape, Tensor, synth};
use attnc_compiler::reference;
use attnc_tests::*;

fn run(
    src: &str,
    shape: Shape,
    scale: Option<f32>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    run_with(src, shape, scale, q, k, v, &Captures::default())
}

fn run_with(
    src: &str,
    shape: Shape,
    scale: Option<f32>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    caps: &Captures,
) -> (Vec<f32>, Vec<f32>) {
    let var = variant(src, "a");
    let mut opts = BindOptions::new(Backend::Reference, shape, DType::F32);
    opts.scale = scale;
    let mut bound = var.bind(opts).unwrap();
    let t = |dims: Vec<usize>, x: &[f32]| Tensor::from_f32(dims, x);
    let out = bound
        .forward(
            &t(vec![shape.b, shape.hq, shape.lq, shape.d], q),
            &t(vec![shape.b, shape.hkv, shape.lkv, shape.d], k),
            &t(vec![shape.b, shape.hkv, shape.lkv, shape.dv], v),
            caps,
        )
        .unwrap();
    assert_eq!(out.o.shape(), &[shape.b, shape.hq, shape.lq, shape.dv]);
    assert_eq!(out.lse.shape(), &[shape.b, shape.hq, shape.lq]);
    (out.o.to_f32(), out.lse.to_f32())
}

fn shape1(lq: usize, lkv: usize, d: usize) -> Shape {
    Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq,
        lkv,
        d,
        dv: 1,
    }
}

/// Exact comparison up to a relative f32 tolerance; infinities must match exactly.
fn near(what: &str, got: f32, want: f64) {
    if want.is_infinite() || want == 0.0 {
        assert_eq!(got as f64, want, "{what}: got {got}, want {want}");
    } else {
        let rel = ((got as f64 - want) / want).abs();
        assert!(rel < 1e-6, "{what}: got {got}, want {want} (rel {rel:e})");
    }
}

fn e(x: f64) -> f64 {
    x.exp()
}

// q = [1, 2], k = [1, -1], v = [10, 20], D = 1, scale 1: s[i][j] = q_i * k_j.
const Q2: [f32; 2] = [1.0, 2.0];
const K2: [f32; 2] = [1.0, -1.0];
const V2: [f32; 2] = [10.0, 20.0];

#[test]
fn dense_two_by_two_by_hand() {
    let (o, lse) = run("attention a {}", shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    for i in 0..2 {
        let qi = Q2[i] as f64;
        let z = e(qi) + e(-qi);
        near(&format!("O[{i}]"), o[i], (10.0 * e(qi) + 20.0 * e(-qi)) / z);
        near(&format!("LSE[{i}]"), lse[i], z.ln());
    }
}

#[test]
fn causal_two_by_two_by_hand() {
    let src = "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    near("O[0]", o[0], 10.0);
    near("LSE[0]", lse[0], 1.0);
    near(
        "O[1]",
        o[1],
        (10.0 * e(2.0) + 20.0 * e(-2.0)) / (e(2.0) + e(-2.0)),
    );
    near("LSE[1]", lse[1], (e(2.0) + e(-2.0)).ln());
}

#[test]
fn fully_masked_row_gives_zero_and_minus_inf() {
    // row 1 has no kv > 1
    let src = "mask m(b, h, q, kv) { kv > q } attention a { mask = m; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    near("O[0]", o[0], 20.0);
    near("LSE[0]", lse[0], -1.0);
    assert_eq!(
        o[1].to_bits(),
        0f32.to_bits(),
        "O of a masked row is +0, got {}",
        o[1]
    );
    assert_eq!(lse[1], f32::NEG_INFINITY);
    // every row masked
    let src = "mask m(b, h, q, kv) { false } attention a { mask = m; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    assert!(o.iter().all(|x| *x == 0.0), "{o:?}");
    assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY), "{lse:?}");
}

#[test]
fn minus_inf_score_counts_as_masked() {
    // row 0: every score -inf (fully masked); row 1: kv = 1 scored -inf, kv = 0 kept.
    let src = "score s(s, b, h, q, kv) { if q == 0 || kv == 1 { log(0.0) } else { s } }
               attention a { score = s; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    assert_eq!(o[0], 0.0);
    assert!(!o[0].is_nan());
    assert_eq!(lse[0], f32::NEG_INFINITY);
    near("O[1]", o[1], 10.0);
    near("LSE[1]", lse[1], 2.0);
}

#[test]
fn score_function_by_hand() {
    // score 2 s + kv: row i has logits [2 q_i, -2 q_i + 1]
    let src = "score s(s, b, h, q, kv) { 2.0 * s + kv as f32 } attention a { score = s; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    for i in 0..2 {
        let qi = Q2[i] as f64;
        let (a, b) = (e(2.0 * qi), e(-2.0 * qi + 1.0));
        near(&format!("O[{i}]"), o[i], (10.0 * a + 20.0 * b) / (a + b));
        near(&format!("LSE[{i}]"), lse[i], (a + b).ln());
    }
}

#[test]
fn integer_division_floors() {
    // (kv - q) / 2 == -1: floor keeps (q=1, kv=0) (-1 / 2 = -1); truncation would not.
    let src = "mask m(b, h, q, kv) { (kv - q) / 2 == -1 } attention a { mask = m; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    assert_eq!(lse[0], f32::NEG_INFINITY);
    assert_eq!(o[0], 0.0);
    near("O[1]", o[1], 10.0);
    near("LSE[1]", lse[1], 2.0);
    // and % floors: (q - kv - 1) % 3 == 2 holds for q=0, kv=0 (-1 % 3 = 2) only in row 0
    let src = "mask m(b, h, q, kv) { (q - kv - 1) % 3 == 2 } attention a { mask = m; }";
    let (o, lse) = run(src, shape1(2, 2, 1), Some(1.0), &Q2, &K2, &V2);
    near("O[0]", o[0], 10.0);
    near("LSE[0]", lse[0], 1.0);
    // row 1: (1 - kv - 1) % 3 = (-kv) % 3 -> kv=0: 0, kv=1: 2 -> kv = 1 kept, s = -2
    near("O[1]", o[1], 20.0);
    near("LSE[1]", lse[1], -2.0);
}

#[test]
fn default_scale_is_one_over_sqrt_d() {
    // D = 4: s0 = (1,1,1,1).(1,1,1,1) / 2 = 2, s1 = 0
    let q = [1.0f32; 4];
    let k = [1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let v = [3.0f32, 5.0];
    let (o, lse) = run("attention a {}", shape1(1, 2, 4), None, &q, &k, &v);
    near("O", o[0], (3.0 * e(2.0) + 5.0) / (e(2.0) + 1.0));
    near("LSE", lse[0], (e(2.0) + 1.0).ln());
    // an explicit scale overrides it
    let (_, lse) = run("attention a {}", shape1(1, 2, 4), Some(0.5), &q, &k, &v);
    near("LSE (scale 0.5)", lse[0], (e(2.0) + 1.0).ln());
    let (_, lse) = run("attention a {}", shape1(1, 2, 4), Some(1.0), &q, &k, &v);
    near("LSE (scale 1)", lse[0], (e(4.0) + 1.0).ln());
}

#[test]
fn cross_attention_lq_ne_lkv_by_hand() {
    // Lq = 1, Lkv = 3, q = 1, k = [0, 1, 2], v = [1, 2, 3]
    let (o, lse) = run(
        "attention a {}",
        shape1(1, 3, 1),
        Some(1.0),
        &[1.0],
        &[0.0, 1.0, 2.0],
        &[1.0, 2.0, 3.0],
    );
    let z = 1.0 + e(1.0) + e(2.0);
    near("O", o[0], (1.0 + 2.0 * e(1.0) + 3.0 * e(2.0)) / z);
    near("LSE", lse[0], z.ln());
    // Lq = 3 > Lkv = 2, causal: row i sees kv <= i (all of 0..2 for rows 1 and 2)
    let src = "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }";
    let (o, lse) = run(
        src,
        shape1(3, 2, 1),
        Some(1.0),
        &[1.0, 1.0, 1.0],
        &[0.0, 0.0],
        &[4.0, 8.0],
    );
    near("O[0]", o[0], 4.0);
    near("LSE[0]", lse[0], 0.0f64.max(0.0));
    for i in 1..3 {
        near(&format!("O[{i}]"), o[i], 6.0);
        near(&format!("LSE[{i}]"), lse[i], 2f64.ln());
    }
}

#[test]
fn gqa_maps_head_h_to_kv_head_h_over_group() {
    // Hq = 4, Hkv = 2 (group 2): heads 0,1 read kv head 0, heads 2,3 kv head 1.
    // D = 1, q = 1; kv head g has k = [g, 0] and v = [10 (g + 1), 0].
    let shape = Shape {
        b: 1,
        hq: 4,
        hkv: 2,
        lq: 1,
        lkv: 2,
        d: 1,
        dv: 1,
    };
    let q = [1.0f32; 4];
    let k = [0.0f32, 0.0, 1.0, 0.0];
    let v = [10.0f32, 0.0, 20.0, 0.0];
    let (o, lse) = run("attention a {}", shape, Some(1.0), &q, &k, &v);
    for h in 0..4 {
        let g = (h / 2) as f64;
        near(&format!("LSE[h={h}]"), lse[h], (e(g) + 1.0).ln());
        near(
            &format!("O[h={h}]"),
            o[h],
            10.0 * (g + 1.0) * e(g) / (e(g) + 1.0),
        );
    }
    // Hq = 6, Hkv = 3 (group 2) with B = 2: batch 1 reads its own kv
    let shape = Shape {
        b: 2,
        hq: 6,
        hkv: 3,
        lq: 1,
        lkv: 1,
        d: 1,
        dv: 1,
    };
    let v: Vec<f32> = (0..6).map(|x| x as f32).collect(); // v[b][g] = 3 b + g
    let (o, _) = run(
        "attention a {}",
        shape,
        Some(1.0),
        &[0.0; 12],
        &[0.0; 6],
        &v,
    );
    for b in 0..2 {
        for h in 0..6 {
            near(
                &format!("O[b={b},h={h}]"),
                o[b * 6 + h],
                (3 * b + h / 2) as f64,
            );
        }
    }
}

#[test]
fn params_and_tensors_reach_the_oracle() {
    // mask kv < p, score s + bias[kv]
    let src = "param p: i32; tensor bias: f32[KV];
               mask m(b, h, q, kv) { kv < p }
               score s(s, b, h, q, kv) { s + bias[kv] }
               attention a { mask = m; score = s; }";
    let caps = Captures::default()
        .param("p", ParamValue::I32(2))
        .tensor("bias", Tensor::from_f32(vec![3], &[0.0, 1.0, 100.0]));
    let (o, lse) = run_with(
        src,
        shape1(1, 3, 1),
        Some(1.0),
        &[0.0],
        &[0.0; 3],
        &[1.0, 2.0, 3.0],
        &caps,
    );
    let z = 1.0 + e(1.0);
    near("O", o[0], (1.0 + 2.0 * e(1.0)) / z);
    near("LSE", lse[0], z.ln());
}

#[test]
fn api_reference_equals_direct_reference() {
    let src = "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }";
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 7,
        lkv: 5,
        d: 3,
        dv: 2,
    };
    let (q, k, v) = synth::qkv(&shape, DType::F32, 3);
    let var = variant(src, "a");
    let bind = bindings(&var, shape, &Captures::default());
    let direct = reference::attention(
        var.program(),
        &shape,
        &q.to_f32(),
        &k.to_f32(),
        &v.to_f32(),
        0.37,
        &bind,
    )
    .unwrap();
    let (o, lse) = run(
        src,
        shape,
        Some(0.37),
        &q.to_f32(),
        &k.to_f32(),
        &v.to_f32(),
    );
    assert_eq!(direct.o, o);
    assert_eq!(direct.lse, lse);
}

/// Random shapes: odd lengths, Lq != Lkv, GQA, Dv != D.
fn random_shape(rng: &mut Rng) -> Shape {
    let hkv = range(rng, 1, 2);
    Shape {
        b: range(rng, 1, 2),
        hq: hkv * range(rng, 1, 3),
        hkv,
        lq: range(rng, 1, 37),
        lkv: range(rng, 1, 37),
        d: *pick(rng, &[1, 3, 8, 16]),
        dv: *pick(rng, &[1, 5, 8]),
    }
}

#[test]
fn oracle_matches_dense_attention_on_examples() {
    // several examples covering index-only, params, tensors, scores, and b/h dependence
    let wanted = [
        "dense/dense",
        "causal/causal_attention",
        "sliding_window/sliding_window",
        "mask_algebra/mask_algebra",
        "document_causal/document_causal",
        "document_causal/packed_causal",
        "flamingo_cross_attention/flamingo_cross_attention",
        "alibi_causal/alibi_softcap_causal",
        "t5_relative_bias/t5_decoder",
        "learned_bias/learned_bias",
        "head_window/head_window",
        "global_sliding_window/global_sliding_window",
    ];
    let all = examples();
    let mut rng = Rng::new(2024);
    let mut masked_rows = 0;
    for id in wanted {
        let ex = all
            .iter()
            .find(|e| e.id() == id)
            .unwrap_or_else(|| panic!("no example {id}"));
        for trial in 0..4 {
            let mut shape = random_shape(&mut rng);
            if ex.self_attention_only() {
                shape.lkv = shape.lq;
            }
            let mut caps = synth::captures(ex.program(), &shape, trial);
            // mask_algebra: prefix = 0 makes row 0 fully masked
            if ex.name == "mask_algebra" && trial % 2 == 0 {
                caps.params.insert("prefix".into(), ParamValue::I32(0));
            }
            let bind = bindings(&ex.variant, shape, &caps);
            let (q, k, v) = synth::qkv(&shape, DType::F32, 100 + trial);
            let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
            let scale = shape.default_scale();
            let got = reference::attention(ex.program(), &shape, &q, &k, &v, scale, &bind)
                .unwrap_or_else(|e| panic!("{id} {shape:?}: {e}"));
            let (o, lse) = dense_attention(ex.program(), &shape, &q, &k, &v, scale, &bind).unwrap();
            let ctx = format!("{id} trial {trial} {shape:?}");
            assert_close(&format!("{ctx} O"), &got.o, &o, 2e-6);
            assert_close(&format!("{ctx} LSE"), &got.lse, &lse, 2e-6);
            masked_rows += lse.iter().filter(|x| x.is_infinite()).count();
        }
    }
    assert!(masked_rows > 0, "no fully masked row was exercised");
}

#[test]
fn oracle_matches_dense_attention_with_masked_rows_and_gqa() {
    // The first 3 query rows of each head are fully masked; the score reads h and b.
    let src = "mask m(b, h, q, kv) { q >= kv + 3 || (h == 1 && q > 2 && kv % 2 == 1) }
               score s(s, b, h, q, kv) { s * (1.0 + h as f32) - 0.25 * b as f32 }
               attention a { mask = m; score = s; }";
    let var = variant(src, "a");
    let mut rng = Rng::new(77);
    for trial in 0..6 {
        let mut shape = random_shape(&mut rng);
        shape.lq = shape.lq.max(4);
        let bind = bindings(&var, shape, &Captures::default());
        let (q, k, v) = synth::qkv(&shape, DType::F32, trial);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        let got = reference::attention(var.program(), &shape, &q, &k, &v, 0.5, &bind).unwrap();
        let (o, lse) = dense_attention(var.program(), &shape, &q, &k, &v, 0.5, &bind).unwrap();
        let ctx = format!("trial {trial} {shape:?}");
        assert_close(&format!("{ctx} O"), &got.o, &o, 2e-6);
        assert_close(&format!("{ctx} LSE"), &got.lse, &lse, 2e-6);
        for r in 0..shape.b * shape.hq {
            for i in 0..3 {
                assert_eq!(
                    got.lse[r * shape.lq + i],
                    f32::NEG_INFINITY,
                    "{ctx} row {i}"
                );
                let orow = &got.o[(r * shape.lq + i) * shape.dv..][..shape.dv];
                assert!(orow.iter().all(|x| *x == 0.0), "{ctx} row {i}: {orow:?}");
            }
        }
    }
}
