//! The float builtins of the CPU score path over the whole f32 range (issue 14): `exp`,
//! `exp2`, `sigmoid` and `tanh` evaluated by the CPU kernel's vector code against the
//! oracle (the reference backend: Rust's libm through `ir::scalar`) and against a
//! correctly rounded f64 value, with the error bound documented in docs/language.md
//! ("Accuracy of the float builtins"): at most 2 ulp for `exp`/`exp2` wherever the
//! result is a normal float, at most 4 ulp for `sigmoid` and `tanh` (exactly ±1 where
//! f32's tanh saturates); subnormal results are kept (not flushed) and within 1 unit of the smallest
//! subnormal; overflow gives +inf and NaN stays NaN exactly where the oracle says so.
//!
//! How a builtin is read through the kernel: one key, `k = v = 1`, `D = 1`, scale 1, and
//! `q[i] = x_i`, so the score of row i is `f(x_i)` and, with a single key, the row's
//! `lse` is exactly that score.

use attnc::{Backend, BindOptions, Captures, Compiled, DType, Shape, Tensor};

/// `f(x)` for every x, through `backend`'s kernel (lse of one-key rows).
fn through(backend: Backend, body: &str, xs: &[f32]) -> Vec<f32> {
    let src = format!("score f(s, b, h, q, kv) {{ {body} }}\nattention a {{ score = f; }}\n");
    let c = Compiled::from_source("builtin.attn", &src).unwrap();
    let v = c.select(None).unwrap();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: xs.len(),
        lkv: 1,
        d: 1,
        dv: 1,
    };
    let mut opts = BindOptions::new(backend, shape, DType::F32);
    opts.scale = Some(1.0);
    let mut bound = v.bind(opts).unwrap();
    let q = Tensor::from_f32(vec![1, 1, xs.len(), 1], xs);
    let one = Tensor::from_f32(vec![1, 1, 1, 1], &[1.0]);
    let out = bound.forward(&q, &one, &one, &Captures::default()).unwrap();
    out.lse.to_f32()
}

/// Distance in units in the last place (ordered bit patterns; same-sign results).
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN - i } else { i }) as i64
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Arguments over the whole f32 range: specials, a dense sweep of the interesting
/// interval and a log-spaced sweep of both signs out to the largest finite float.
fn sweep(lo: f32, hi: f32, dense: usize) -> Vec<f32> {
    let mut xs = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
    ];
    for i in 0..=dense {
        xs.push(lo + (hi - lo) * i as f32 / dense as f32);
    }
    let mut x = 1e-30f32;
    while x.is_finite() {
        xs.push(x);
        xs.push(-x);
        x *= 1.37;
    }
    // the edges of the result range
    for edge in [
        88.72283f32,
        88.72284,
        88.7229,
        88.5,
        88.38,
        91.4,
        100.0,
        -87.33,
        -87.34,
        -103.9,
        -104.0,
        127.49,
        127.5,
        127.99,
        128.0,
        -126.0,
        -149.0,
        -149.5,
        -150.0,
    ] {
        xs.push(edge);
        xs.push(f32::from_bits(edge.to_bits() + 1));
        xs.push(f32::from_bits(edge.to_bits() - 1));
    }
    xs
}

/// Checks the CPU kernel against the oracle and a correctly rounded f64 value.
fn check(body: &str, xs: &[f32], exact: impl Fn(f64) -> f64, max_ulps: u64) {
    let cpu = through(Backend::Cpu, body, xs);
    let oracle = through(Backend::Reference, body, xs);
    let mut worst = (0u64, 0.0f32);
    for ((&x, &c), &o) in xs.iter().zip(&cpu).zip(&oracle) {
        let want = exact(x as f64) as f32;
        assert_eq!(
            c.is_nan(),
            o.is_nan(),
            "{body} at x = {x:e}: cpu {c:e}, oracle {o:e}"
        );
        if o.is_nan() {
            continue;
        }
        if want.is_infinite() || o.is_infinite() {
            assert_eq!(c, o, "{body} at x = {x:e}: cpu {c:e}, oracle {o:e}");
            continue;
        }
        if want.abs() < f32::MIN_POSITIVE {
            // subnormal results: kept, within one subnormal unit
            assert!(
                (c as f64 - want as f64).abs() <= 1.5e-45,
                "{body} at x = {x:e}: cpu {c:e}, exact {want:e} (subnormal result flushed or off)"
            );
            continue;
        }
        let u = ulps(c, want);
        if u > worst.0 {
            worst = (u, x);
        }
        assert!(
            u <= max_ulps,
            "{body} at x = {x:e}: cpu {c:e}, exact {want:e}, oracle {o:e}: {u} ulp (bound {max_ulps})"
        );
    }
    eprintln!(
        "{body}: worst {} ulp at x = {:e} over {} arguments",
        worst.0,
        worst.1,
        xs.len()
    );
}

#[test]
fn exp_matches_the_oracle_over_the_f32_range() {
    check("exp(s)", &sweep(-110.0, 95.0, 40_000), f64::exp, 2);
}

#[test]
fn exp2_matches_the_oracle_over_the_f32_range() {
    check("exp2(s)", &sweep(-155.0, 130.0, 40_000), f64::exp2, 2);
}

#[test]
fn sigmoid_matches_the_oracle_over_the_f32_range() {
    // sigmoid is defined as 1 / (1 + exp(-x)) in f32 (builtins.rs): the exact value of
    // that formula with a correctly rounded exp (below -88.7 it is 0, like the oracle)
    let sig = |x: f64| {
        let e = (-x).exp() as f32;
        (1.0f32 / (1.0f32 + e)) as f64
    };
    check("sigmoid(s)", &sweep(-110.0, 110.0, 40_000), sig, 4);
    let nsig = |x: f64| {
        let e = x.exp() as f32;
        (1.0f32 / (1.0f32 + e)) as f64
    };
    check("sigmoid(-s)", &sweep(-110.0, 110.0, 40_000), nsig, 4);
}

#[test]
fn tanh_matches_the_oracle_over_the_f32_range() {
    check("tanh(s)", &sweep(-20.0, 20.0, 40_000), f64::tanh, 4);
    // saturation: exactly ±1 wherever f32's tanh is (|x| ≥ 9.0109), so a discontinuous
    // function of it (here `floor(exp2(tanh(x)))`, from the differential fuzzer) agrees
    let xs: Vec<f32> = [
        9.02f32,
        9.5,
        15.0,
        40.0,
        88.0,
        1e10,
        f32::MAX,
        f32::INFINITY,
    ]
    .iter()
    .flat_map(|&x| [x, -x])
    .collect();
    let cpu = through(Backend::Cpu, "tanh(s)", &xs);
    for (&x, &c) in xs.iter().zip(&cpu) {
        assert_eq!(c, x.signum(), "tanh at x = {x:e}: cpu {c:e}");
    }
    let xs = sweep(-20.0, 20.0, 4_000);
    let body = "floor(exp2(tanh(s)))";
    assert_eq!(
        through(Backend::Cpu, body, &xs),
        through(Backend::Reference, body, &xs),
        "{body}"
    );
}

#[test]
fn the_issue_repro_gives_the_oracle_values() {
    // q = [88.5, 91.4, 100], k = v = 1, scale 1, score exp(s): was 2.406e38 for all
    // three; the oracle's score is 2.7e38, inf, inf, and an infinite score makes the row
    // NaN (see the NaN test below)
    let xs = [88.5f32, 91.4, 100.0];
    let cpu = through(Backend::Cpu, "exp(s)", &xs);
    let oracle = through(Backend::Reference, "exp(s)", &xs);
    assert!(
        oracle[0] > 2.7e38 && oracle[1].is_nan() && oracle[2].is_nan(),
        "{oracle:?}"
    );
    assert!(ulps(cpu[0], oracle[0]) <= 2, "{cpu:?} vs {oracle:?}");
    assert!(cpu[1].is_nan() && cpu[2].is_nan(), "{cpu:?}");
}

/// Runs `src` (one attention) on `backend` with q = k = v = 1 (D = 1), Lq = 1,
/// Lkv = `lkv`, scale 1 and the given f32 param `fp`; returns (o, lse) of the row.
fn row(backend: Backend, src: &str, lkv: usize, fp: Option<f32>) -> (Vec<f32>, f32) {
    let c = Compiled::from_source("row.attn", src).unwrap();
    let v = c.select(None).unwrap();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 1,
        lkv,
        d: 1,
        dv: 1,
    };
    let mut opts = BindOptions::new(backend, shape, DType::F32);
    opts.scale = Some(1.0);
    let mut bound = v.bind(opts).unwrap();
    let q = Tensor::from_f32(vec![1, 1, 1, 1], &[1.0]);
    let kv = Tensor::from_f32(vec![1, 1, lkv, 1], &vec![1.0; lkv]);
    let mut caps = Captures::default();
    if let Some(x) = fp {
        caps = caps.param("fp", attnc::ParamValue::F32(x));
    }
    let out = bound.forward(&q, &kv, &kv, &caps).unwrap();
    (out.o.to_f32(), out.lse.to_f32()[0])
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn min_max_order_signed_zeros_in_every_cpu_backend() {
    // the issue's repro: 1 / min(0.0, -0.0) is -inf, so the mask holds nowhere
    for (op, c, p, keeps) in [
        ("min", "0.0", 0.0f32, true),
        ("min", "0.0", -0.0, false),
        ("min", "-0.0", 0.0, false),
        ("min", "-0.0", -0.0, false),
        ("max", "0.0", 0.0, true),
        ("max", "0.0", -0.0, true),
        ("max", "-0.0", 0.0, true),
        ("max", "-0.0", -0.0, false),
    ] {
        let src = format!(
            "param fp: f32;\nmask m(b, h, q, kv) {{ 1.0 / {op}({c}, fp) > 0.0 }}\nattention a {{ mask = m; }}\n"
        );
        for backend in [Backend::Reference, Backend::Cpu] {
            let (_, lse) = row(backend, &src, 3, Some(p));
            assert_eq!(
                lse.is_finite(),
                keeps,
                "{op}({c}, {p:?}) on {backend:?}: lse {lse}"
            );
        }
    }
    // and the definition itself
    use attnc_compiler::ir::{fmax, fmin};
    assert!(fmin(0.0, -0.0).is_sign_negative() && fmin(-0.0, 0.0).is_sign_negative());
    assert!(fmax(0.0, -0.0).is_sign_positive() && fmax(-0.0, 0.0).is_sign_positive());
    assert_eq!(fmin(f32::NAN, 1.0), 1.0);
    assert_eq!(fmax(2.0, f32::NAN), 2.0);
    assert!(fmin(f32::NAN, f32::NAN).is_nan());
}

#[test]
fn nan_scores_follow_the_documented_rule_on_every_cpu_backend() {
    // docs/language.md "NaN and infinite scores": a NaN score does not count as the row's
    // maximum; a row whose every unmasked score is NaN is treated as fully masked
    // (o = 0, lse = -inf); a row with NaN and non-NaN scores gets NaN o and lse. A +inf
    // score makes the row NaN.
    let all_nan = "score f(s, b, h, q, kv) { 0.0 / 0.0 }\nattention a { score = f; }\n";
    let some_nan = "score f(s, b, h, q, kv) { if kv == 1 { 0.0 / 0.0 } else { s } }\nattention a { score = f; }\n";
    let masked_nan = "mask m(b, h, q, kv) { kv == 1 }\nscore f(s, b, h, q, kv) { if kv == 1 { 0.0 / 0.0 } else { s } }\nattention a { mask = m; score = f; }\n";
    let inf = "score f(s, b, h, q, kv) { if kv == 1 { 1.0 / 0.0 } else { s } }\nattention a { score = f; }\n";
    for backend in [Backend::Reference, Backend::Cpu] {
        for src in [all_nan, masked_nan] {
            let (o, lse) = row(backend, src, 3, None);
            assert!(
                same(o[0], 0.0) && lse == f32::NEG_INFINITY,
                "{backend:?} {src}: o {o:?} lse {lse}"
            );
        }
        for src in [some_nan, inf] {
            let (o, lse) = row(backend, src, 3, None);
            assert!(
                o[0].is_nan() && lse.is_nan(),
                "{backend:?} {src}: o {o:?} lse {lse}"
            );
        }
    }
}

#[test]
fn bind_rejects_integer_qkv_and_non_finite_scales() {
    let c = Compiled::from_source(
        "a.attn",
        "mask m(b, h, q, kv) { q >= kv }\nattention a { mask = m; }\n",
    )
    .unwrap();
    let v = c.select(None).unwrap();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 4,
        lkv: 4,
        d: 8,
        dv: 8,
    };
    for dt in [DType::I32, DType::I64] {
        for backend in [Backend::Reference, Backend::Cpu] {
            let e = v
                .bind(BindOptions::new(backend, shape, dt))
                .err()
                .expect("integer q/k/v bound");
            let t = e.to_string();
            assert!(
                t.contains("f32, f16 or bf16") && t.contains(dt.name()),
                "{t}"
            );
        }
    }
    for s in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut o = BindOptions::new(Backend::Cpu, shape, DType::F32);
        o.scale = Some(s);
        let e = v.bind(o).err().expect("non-finite scale bound");
        assert!(e.to_string().contains("finite"), "{e}");
    }
}
