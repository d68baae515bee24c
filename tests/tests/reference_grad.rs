//! The reference backward (`attnc_compiler::reference_grad`, f64, dual numbers) against
//! central finite differences of the reference forward: with the loss
//! L = Σ dO∘O + Σ dLSE∘LSE (rows with a finite LSE), ∂L/∂x for sampled elements of Q, K,
//! V, of every float captured tensor (learned bias, relative-bias table, T5 table, a
//! table read twice) and every f32 param must match (L(x + h) − L(x − h)) / 2h.
//!
//! Shapes: GQA (Hq = 4, Hkv = 2), Lq != Lkv, D != Dv; a mask with fully masked rows and a
//! score that is −inf at some elements. Tolerance: |g − fd| <= 2e-3 + 1e-2·max|g| over
//! the tensor (step 1e-2; the forward's O and scores are f32).

use attnc::{Captures, Shape, synth};
use attnc_compiler::interp::{Bindings, TensorData};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::reference::attention;
use attnc_compiler::reference_grad::backward;
use attnc_tests::*;

const STEP: f32 = 1e-2;

struct Problem<'a> {
    p: &'a Program,
    shape: Shape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
    dlse: Option<Vec<f32>>,
    bind: Bindings,
    scale: f32,
}

impl Problem<'_> {
    fn loss(&self, q: &[f32], k: &[f32], v: &[f32], bind: &Bindings) -> f64 {
        let out = attention(self.p, &self.shape, q, k, v, self.scale, bind).unwrap();
        let mut l: f64 = out
            .o
            .iter()
            .zip(&self.dout)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        if let Some(d) = &self.dlse {
            l += out
                .lse
                .iter()
                .zip(d)
                .filter(|(x, _)| x.is_finite())
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
        }
        l
    }
}

fn close(what: &str, g: &[f32], i: usize, fd: f64, ctx: &str) {
    let max = g.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let tol = 2e-3 + 1e-2 * max;
    assert!(
        (g[i] as f64 - fd).abs() <= tol,
        "{what}[{i}]: reference gradient {}, finite difference {fd} (tol {tol})\n{ctx}",
        g[i]
    );
}

fn check(pr: &Problem, ctx: &str, rng: &mut Rng) {
    let grads = backward(
        pr.p,
        &pr.shape,
        &pr.q,
        &pr.k,
        &pr.v,
        &pr.dout,
        pr.dlse.as_deref(),
        pr.scale,
        &pr.bind,
    )
    .unwrap();
    let fd = |f: &dyn Fn(f32) -> f64, x: f32| (f(x + STEP) - f(x - STEP)) / (2.0 * STEP as f64);
    for (name, which) in [("dQ", 0), ("dK", 1), ("dV", 2)] {
        let (base, g) = match which {
            0 => (&pr.q, &grads.dq),
            1 => (&pr.k, &grads.dk),
            _ => (&pr.v, &grads.dv),
        };
        for _ in 0..6 {
            let i = range(rng, 0, base.len() - 1);
            let f = |x: f32| {
                let mut t = base.clone();
                t[i] = x;
                match which {
                    0 => pr.loss(&t, &pr.k, &pr.v, &pr.bind),
                    1 => pr.loss(&pr.q, &t, &pr.v, &pr.bind),
                    _ => pr.loss(&pr.q, &pr.k, &t, &pr.bind),
                }
            };
            close(name, g, i, fd(&f, base[i]), ctx);
        }
    }
    for (t, g) in grads.tensors.iter().enumerate() {
        let Some(g) = g else { continue };
        let TensorData::F32(data) = &pr.bind.tensors[t].data else {
            panic!("gradient for an integer tensor");
        };
        // elements with a gradient first, then random ones (mostly zero gradient)
        let mut picks: Vec<usize> = (0..g.len()).filter(|i| g[*i] != 0.0).take(4).collect();
        picks.extend((0..3).map(|_| range(rng, 0, g.len() - 1)));
        for i in picks {
            let f = |x: f32| {
                let mut b2 = pr.bind.clone();
                if let TensorData::F32(d) = &mut b2.tensors[t].data {
                    d[i] = x;
                }
                pr.loss(&pr.q, &pr.k, &pr.v, &b2)
            };
            close(&pr.p.tensors[t].name, g, i, fd(&f, data[i]), ctx);
        }
    }
    for (id, g) in grads.params.iter().enumerate() {
        let Some(g) = g else { continue };
        let Scalar::F32(x0) = pr.bind.params[id] else {
            panic!("gradient of a non-f32 param")
        };
        let f = |x: f32| {
            let mut b2 = pr.bind.clone();
            b2.params[id] = Scalar::F32(x);
            pr.loss(&pr.q, &pr.k, &pr.v, &b2)
        };
        close(&pr.p.params[id].name, &[*g], 0, fd(&f, x0), ctx);
    }
}

fn problem<'a>(
    var: &'a attnc::Variant,
    shape: Shape,
    caps: &Captures,
    seed: u64,
    with_dlse: bool,
) -> Problem<'a> {
    let mut rng = Rng::new(seed);
    let mut normal = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
    Problem {
        p: var.program(),
        shape,
        q: normal(shape.q_len()),
        k: normal(shape.k_len()),
        v: normal(shape.v_len()),
        dout: normal(shape.o_len()),
        dlse: with_dlse.then(|| normal(shape.lse_len())),
        bind: bindings(var, shape, caps),
        scale: 0.7,
    }
}

const SHAPE: Shape = Shape {
    b: 2,
    hq: 4,
    hkv: 2,
    lq: 7,
    lkv: 9,
    d: 5,
    dv: 3,
};

#[test]
fn reference_gradients_of_examples_match_finite_differences() {
    let mut rng = Rng::new(5);
    let wanted = [
        "learned_bias/learned_bias",
        "relative_bias_table/relative_bias_table",
        "t5_relative_bias/t5_encoder",
        "t5_relative_bias/t5_decoder",
        "softcap/softcap_causal",
        "alibi_causal/alibi_softcap_causal",
        "document_causal/document_causal",
        "dense/dense",
    ];
    let mut seen = 0;
    for (n, ex) in examples().iter().enumerate() {
        if !wanted.contains(&ex.id().as_str()) {
            continue;
        }
        seen += 1;
        let shape = if ex.self_attention_only() {
            Shape { lq: 9, ..SHAPE }
        } else {
            SHAPE
        };
        let caps = synth::captures(ex.program(), &shape, 3);
        let pr = problem(&ex.variant, shape, &caps, n as u64, n % 2 == 0);
        check(&pr, &ex.id(), &mut rng);
    }
    assert_eq!(seen, wanted.len());
}

#[test]
fn reference_gradients_of_reads_twice_params_masked_rows_and_neg_inf() {
    let mut rng = Rng::new(6);
    let src = "
param cap: f32;
param temp: f32;
tensor w: f32[5];
tensor pos: f32[Q];
mask m(b, h, q, kv) { q + 2 >= kv * 2 }
score sc(s, b, h, q, kv) {
    let x = s * temp + w[q % 5] + w[(kv * 2) % 5] * pos[q];
    if (q + kv) % 4 == 0 { log(0.0) } else { cap * tanh(x / cap) }
}
attention a { mask = m; score = sc; }
";
    let var = variant(src, "a");
    for (seed, with_dlse) in [(1u64, false), (2, true)] {
        let shape = Shape { lq: 9, ..SHAPE };
        let w: Vec<f32> = (0..5).map(|i| 0.3 * i as f32 - 0.5).collect();
        let pos: Vec<f32> = (0..9).map(|i| 1.0 - 0.1 * i as f32).collect();
        let caps = Captures::default()
            .tensor("w", attnc::Tensor::from_f32(vec![5], &w))
            .tensor("pos", attnc::Tensor::from_f32(vec![9], &pos))
            .param("cap", attnc::ParamValue::F32(2.5))
            .param("temp", attnc::ParamValue::F32(1.3));
        let pr = problem(&var, shape, &caps, seed, with_dlse);
        check(&pr, "reads twice / params / -inf", &mut rng);
    }
    // fully masked rows: dQ = 0 there, and nothing flows from them
    let src = "
tensor w: f32[Q];
mask m(b, h, q, kv) { q >= 3 && kv <= q }
score sc(s, b, h, q, kv) { s + w[q] }
attention a { mask = m; score = sc; }
";
    let var = variant(src, "a");
    let shape = Shape { lq: 9, ..SHAPE };
    let caps = Captures::default().tensor("w", attnc::Tensor::from_f32(vec![9], &[0.5; 9]));
    let pr = problem(&var, shape, &caps, 9, true);
    check(&pr, "fully masked rows", &mut rng);
    let g = backward(
        pr.p,
        &pr.shape,
        &pr.q,
        &pr.k,
        &pr.v,
        &pr.dout,
        pr.dlse.as_deref(),
        pr.scale,
        &pr.bind,
    )
    .unwrap();
    for b in 0..shape.b {
        for h in 0..shape.hq {
            for i in 0..3 {
                let r = (b * shape.hq + h) * shape.lq + i;
                assert!(g.dq[r * shape.d..][..shape.d].iter().all(|x| *x == 0.0));
            }
        }
    }
    // w[q] shifts a whole row: softmax is invariant, so its gradient is only dLSE's
    let dw = g.tensors[0].as_ref().unwrap();
    assert!(dw[..3].iter().all(|x| *x == 0.0), "{dw:?}");
}
