//! The CPU backward (`Bound::backward` on `Backend::Cpu`) against the f64 reference
//! gradients (`Backend::Reference`, `attnc_compiler::reference_grad`): every attention
//! of every example on random shapes (odd lengths, Lq != Lkv, GQA, D 64/128, lengths
//! over several 64-tiles), capture gradients (learned bias, relative bias table, T5
//! tables from the examples; a tensor read twice and f32 params below), fully masked
//! rows, −inf scores, dLSE, work items of several kv tiles (dQ summed over items),
//! determinism across runs and thread counts, and API errors.
//!
//! The CPU backward gets the CPU forward's O and LSE; the oracle recomputes them in f64.
//! Tolerance: |x − x_ref| <= 2e-4·(1 + max|x_ref|) per tensor. Why: every gradient is
//! an f32 sum of O(Lkv) (dQ) or O(group·Lq) (dK, dV, captures) terms of size ~max|x_ref|
//! / √n with the softmax's 2-ulp `exp`; observed errors are ~1e-6 relative (printed
//! with --nocapture). A wrong mask bit, kv head or missing term moves a gradient by
//! ~1e-2 relative or more.

use attnc::{Backend, BindOptions, Bound, Captures, DType, Error, Shape, Tensor, synth};
use attnc_tests::*;

fn bind(var: &attnc::Variant, backend: Backend, shape: Shape, threads: usize) -> Bound {
    let mut o = BindOptions::new(backend, shape, DType::F32);
    o.threads = threads;
    var.bind(o)
        .unwrap_or_else(|e| panic!("bind {}: {e}", backend.name()))
}

fn close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let tol = 2e-4 * (1.0 + max);
    assert_close(what, got, want, tol);
    max_abs_err(got, want).0 / (1.0 + max)
}

struct Case {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    dlse: Option<Tensor>,
}

fn case(shape: &Shape, seed: u64, with_dlse: bool) -> Case {
    let (q, k, v) = synth::qkv(shape, DType::F32, seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let dout: Vec<f32> = (0..shape.o_len()).map(|_| rng.normal()).collect();
    let dlse: Vec<f32> = (0..shape.lse_len()).map(|_| rng.normal()).collect();
    Case {
        q,
        k,
        v,
        dout: Tensor::from_f32(vec![shape.b, shape.hq, shape.lq, shape.dv], &dout),
        dlse: with_dlse.then(|| Tensor::from_f32(vec![shape.b, shape.hq, shape.lq], &dlse)),
    }
}

/// CPU backward vs the oracle; returns the largest relative error seen.
fn compare(what: &str, var: &attnc::Variant, shape: Shape, caps: &Captures, c: &Case) -> f32 {
    let mut cpu = bind(var, Backend::Cpu, shape, 2);
    let mut reference = bind(var, Backend::Reference, shape, 1);
    let fwd = cpu
        .forward(&c.q, &c.k, &c.v, caps)
        .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    let got = cpu
        .backward(
            &c.q,
            &c.k,
            &c.v,
            &fwd.o,
            &fwd.lse,
            &c.dout,
            c.dlse.as_ref(),
            caps,
        )
        .unwrap_or_else(|e| panic!("{what}: cpu backward: {e}"));
    let want = reference
        .backward(
            &c.q,
            &c.k,
            &c.v,
            &fwd.o,
            &fwd.lse,
            &c.dout,
            c.dlse.as_ref(),
            caps,
        )
        .unwrap_or_else(|e| panic!("{what}: reference backward: {e}"));
    let mut worst = 0f32;
    for (name, g, w) in [
        ("dQ", &got.dq, &want.dq),
        ("dK", &got.dk, &want.dk),
        ("dV", &got.dv, &want.dv),
    ] {
        worst = worst.max(close(&format!("{what}: {name}"), &g.to_f32(), &w.to_f32()));
    }
    assert_eq!(
        got.tensors.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want.tensors {
        let g = &got.tensors[name];
        assert_eq!(g.shape(), w.shape());
        worst = worst.max(close(&format!("{what}: d{name}"), &g.to_f32(), &w.to_f32()));
    }
    assert_eq!(got.params.len(), want.params.len());
    for (name, w) in &want.params {
        worst = worst.max(close(
            &format!("{what}: d{name}"),
            &[got.params[name]],
            &[*w],
        ));
    }
    worst
}

#[test]
fn every_example_matches_the_reference_gradients() {
    let mut rng = Rng::new(0xBAC4);
    let mut worst = 0f32;
    for (n, ex) in examples().iter().enumerate() {
        let hkv = range(&mut rng, 1, 2);
        let lkv = range(&mut rng, 1, 150);
        let shape = Shape {
            b: range(&mut rng, 1, 2),
            hq: hkv * range(&mut rng, 1, 2),
            hkv,
            lq: if ex.self_attention_only() {
                lkv
            } else {
                range(&mut rng, 1, 150)
            },
            lkv,
            d: if n % 2 == 0 { 64 } else { 128 },
            dv: if n % 2 == 0 { 64 } else { 128 },
        };
        let caps = synth::captures(ex.program(), &shape, n as u64);
        let c = case(&shape, n as u64, n % 3 == 0);
        worst = worst.max(compare(
            &format!("{} {shape:?}", ex.id()),
            &ex.variant,
            shape,
            &caps,
            &c,
        ));
    }
    eprintln!("examples: worst relative error {worst:e}");
}

const SRC: &str = "
param cap: f32;
param temp: f32;
tensor w: f32[5];
tensor pos: bf16[Q];
tensor ids: i32[KV];
mask m(b, h, q, kv) { q >= 3 && kv <= q + 40 && ids[kv] != 7 }
score sc(s, b, h, q, kv) {
    let x = s * temp + w[q % 5] + w[(kv * 2) % 5] * pos[q];
    if (q + kv) % 9 == 0 { log(0.0) } else { cap * tanh(x / cap) }
}
attention a { mask = m; score = sc; }
";

fn src_captures(shape: &Shape, seed: u64) -> Captures {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = (0..5).map(|_| rng.normal()).collect();
    let pos: Vec<f32> = (0..shape.lq).map(|_| rng.normal()).collect();
    let ids: Vec<i32> = (0..shape.lkv).map(|_| rng.below(10) as i32).collect();
    Captures::default()
        .tensor("w", Tensor::from_f32(vec![5], &w))
        .tensor(
            "pos",
            Tensor::from_f32_as(vec![shape.lq], &pos, DType::BF16),
        )
        .tensor("ids", Tensor::from_i32(vec![shape.lkv], &ids))
        .param("cap", attnc::ParamValue::F32(3.0 + rng.uniform()))
        .param("temp", attnc::ParamValue::F32(0.5 + rng.uniform()))
}

#[test]
fn random_shapes_masked_rows_neg_inf_reads_twice_and_params() {
    let var = variant(SRC, "a");
    let mut rng = Rng::new(77);
    let mut worst = 0f32;
    for trial in 0..6u64 {
        let hkv = range(&mut rng, 1, 2);
        let shape = Shape {
            b: range(&mut rng, 1, 2),
            hq: hkv * range(&mut rng, 1, 3),
            hkv,
            lq: range(&mut rng, 1, 170),
            lkv: range(&mut rng, 1, 170),
            d: [64, 128][trial as usize % 2],
            dv: [64, 128][trial as usize % 2],
        };
        let caps = src_captures(&shape, trial);
        let c = case(&shape, 100 + trial, trial % 2 == 1);
        worst = worst.max(compare(
            &format!("trial {trial} {shape:?}"),
            &var,
            shape,
            &caps,
            &c,
        ));
    }
    eprintln!("random shapes: worst relative error {worst:e}");
    // the gradients are not trivially zero
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 70,
        lkv: 90,
        d: 64,
        dv: 64,
    };
    let caps = src_captures(&shape, 9);
    let c = case(&shape, 9, true);
    let mut cpu = bind(&var, Backend::Cpu, shape, 2);
    let fwd = cpu.forward(&c.q, &c.k, &c.v, &caps).unwrap();
    let g = cpu
        .backward(
            &c.q,
            &c.k,
            &c.v,
            &fwd.o,
            &fwd.lse,
            &c.dout,
            c.dlse.as_ref(),
            &caps,
        )
        .unwrap();
    assert!(g.tensors["w"].to_f32().iter().all(|x| *x != 0.0));
    assert_eq!(g.tensors["pos"].dtype(), DType::BF16);
    assert!(!g.tensors.contains_key("ids"));
    assert!(g.params["cap"] != 0.0 && g.params["temp"] != 0.0);
    // rows q < 3 are fully masked: dQ = 0 there
    let dq = g.dq.to_f32();
    for h in 0..2 {
        for i in 0..3 {
            let r = h * 70 + i;
            assert!(dq[r * 64..][..64].iter().all(|x| *x == 0.0));
        }
    }
}

/// Every gradient of one CPU backward call, as bits; after a call on `before` with the
/// same binding (whose kept workspace must not leak into the next call) if given.
fn gradient_bits(
    var: &attnc::Variant,
    shape: Shape,
    caps: &Captures,
    c: &Case,
    threads: usize,
    before: Option<&Case>,
) -> Vec<u32> {
    let mut cpu = bind(var, Backend::Cpu, shape, threads);
    if let Some(w) = before {
        let fwd = cpu.forward(&w.q, &w.k, &w.v, caps).unwrap();
        cpu.backward(&w.q, &w.k, &w.v, &fwd.o, &fwd.lse, &w.dout, None, caps)
            .unwrap();
    }
    let fwd = cpu.forward(&c.q, &c.k, &c.v, caps).unwrap();
    let g = cpu
        .backward(
            &c.q,
            &c.k,
            &c.v,
            &fwd.o,
            &fwd.lse,
            &c.dout,
            c.dlse.as_ref(),
            caps,
        )
        .unwrap();
    let mut bits: Vec<u32> = Vec::new();
    for t in [&g.dq, &g.dk, &g.dv].into_iter().chain(g.tensors.values()) {
        bits.extend(t.to_f32().iter().map(|x| x.to_bits()));
    }
    bits.extend(g.params.values().map(|x| x.to_bits()));
    bits
}

#[test]
fn backward_is_deterministic_across_runs_and_thread_counts() {
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 150,
        lkv: 131,
        d: 64,
        dv: 64,
    };
    let caps = src_captures(&shape, 3);
    let c = case(&shape, 3, true);
    let run = |threads: usize| gradient_bits(&var, shape, &caps, &c, threads, None);
    let a = run(3);
    assert!(a == run(3), "two runs differ");
    assert!(a == run(1), "1 thread differs from 3");
    assert!(a == run(5), "5 threads differ from 3");
}

/// Work items over chunks of several kv tiles (here 8 kv heads and 10 kv tiles give 5
/// chunks of 2 tiles, the last tile short): dQ sums the partials of several items, an
/// item spans several dK/dV tiles, and the mask (`kv <= q + 40`) leaves the second
/// chunk only the last q tile and the others none (their dK, dV stay 0).
#[test]
fn chunks_of_several_kv_tiles_match_the_reference_on_any_thread_count() {
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 16,
        hkv: 8,
        lq: 97,
        lkv: 620,
        d: 64,
        dv: 64,
    };
    let caps = src_captures(&shape, 5);
    let c = case(&shape, 5, false);
    let worst = compare("chunks", &var, shape, &caps, &c);
    eprintln!("chunks: worst relative error {worst:e}");
    let a = gradient_bits(&var, shape, &caps, &c, 1, None);
    assert!(
        a == gradient_bits(&var, shape, &caps, &c, 4, None),
        "4 threads differ from 1"
    );
    let other = case(&shape, 6, true);
    assert!(
        a == gradient_bits(&var, shape, &caps, &c, 2, Some(&other)),
        "a second call on one binding differs"
    );
}

#[test]
fn backward_errors_are_clear() {
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 9,
        lkv: 11,
        d: 16,
        dv: 16,
    };
    let caps = src_captures(&shape, 1);
    let c = case(&shape, 1, false);
    let mut cpu = bind(&var, Backend::Cpu, shape, 1);
    let fwd = cpu.forward(&c.q, &c.k, &c.v, &caps).unwrap();
    // o with the wrong shape, lse with the wrong dtype, dO wrong, dlse wrong
    let e = cpu
        .backward(&c.q, &c.k, &c.v, &c.k, &fwd.lse, &c.dout, None, &caps)
        .expect_err("o of the wrong shape is an error");
    assert!(
        matches!(&e, Error::InputShape { which, .. } if which == "o"),
        "{e}"
    );
    let bad_lse = Tensor::from_f32_as(vec![1, 2, 9], &fwd.lse.to_f32(), DType::BF16);
    let e = cpu
        .backward(&c.q, &c.k, &c.v, &fwd.o, &bad_lse, &c.dout, None, &caps)
        .expect_err("an error");
    assert!(
        matches!(&e, Error::InputDType { which, .. } if which == "lse"),
        "{e}"
    );
    let e = cpu
        .backward(&c.q, &c.k, &c.v, &fwd.o, &fwd.lse, &fwd.lse, None, &caps)
        .expect_err("an error");
    assert!(
        matches!(&e, Error::InputShape { which, .. } if which == "do"),
        "{e}"
    );
    let e = cpu
        .backward(
            &c.q,
            &c.k,
            &c.v,
            &fwd.o,
            &fwd.lse,
            &c.dout,
            Some(&c.dout),
            &caps,
        )
        .expect_err("an error");
    assert!(
        matches!(&e, Error::InputShape { which, .. } if which == "dlse"),
        "{e}"
    );
    // a missing capture: the forward's E0303
    let mut missing = caps.clone();
    missing.tensors.remove("w");
    let e = cpu
        .backward(&c.q, &c.k, &c.v, &fwd.o, &fwd.lse, &c.dout, None, &missing)
        .expect_err("an error");
    assert!(e.to_string().contains("E0303"), "{e}");
    // integer captures have no gradient
    let e = cpu.check_differentiable("ids").unwrap_err();
    assert!(e.to_string().contains("E0307"), "{e}");
    assert!(cpu.check_differentiable("w").is_ok());
    assert!(cpu.check_differentiable("pos").is_ok());
    assert!(cpu.check_differentiable("cap").is_ok());
    let e = cpu.check_differentiable("nope").unwrap_err();
    assert!(
        matches!(&e, Error::UnknownCapture { name, .. } if name == "nope"),
        "{e}"
    );
}

/// dQ summed over many chunks of one (b, kv head): one kv head and 12 kv tiles give 12
/// chunks of one tile each, whose partials are added in chunk order by whichever item
/// completes the sequence; under a causal mask the first chunks cost the most and finish
/// last. Against the oracle, and bit-identical on 1, 2 and 7 threads.
#[test]
fn dq_partials_of_many_chunks_add_in_chunk_order_on_any_thread_count() {
    let var = variant(
        "mask c(b, h, q, kv) { kv <= q + 20 } attention a { mask = c; }",
        "a",
    );
    let shape = Shape {
        b: 1,
        hq: 3,
        hkv: 1,
        lq: 700,
        lkv: 740,
        d: 64,
        dv: 64,
    };
    let caps = Captures::default();
    let c = case(&shape, 8, false);
    let worst = compare("many chunks", &var, shape, &caps, &c);
    eprintln!("many chunks: worst relative error {worst:e}");
    let a = gradient_bits(&var, shape, &caps, &c, 1, None);
    for threads in [2, 7] {
        assert!(
            a == gradient_bits(&var, shape, &caps, &c, threads, None),
            "{threads} threads differ from 1"
        );
    }
}

/// The kernel's `run_into` writes every element of the outputs it is given (here filled
/// with NaN) and gives `run`'s bits; outputs of the wrong length are refused by name.
#[test]
fn run_into_overwrites_its_outputs_and_checks_their_lengths() {
    use attnc_compiler::backend::cranelift::CpuOptions;
    use attnc_compiler::backend::cranelift::backward::compile_backward;
    use attnc_compiler::backend::cranelift::workers::Scoped;
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 4,
        hkv: 2,
        lq: 150,
        lkv: 131,
        d: 64,
        dv: 64,
    };
    let caps = src_captures(&shape, 4);
    let c = case(&shape, 4, true);
    let mut cpu = bind(&var, Backend::Cpu, shape, 2);
    let fwd = cpu.forward(&c.q, &c.k, &c.v, &caps).unwrap();
    let bindings = cpu.bindings(&caps).unwrap();
    let maps = cpu.plan().block_maps(&shape, 64, 64, &bindings).unwrap();
    let kern = compile_backward(var.program(), &CpuOptions::default()).unwrap();
    let (q, k, v) = (c.q.to_f32(), c.k.to_f32(), c.v.to_f32());
    let (o, lse, dout) = (fwd.o.to_f32(), fwd.lse.to_f32(), c.dout.to_f32());
    let dlse = c.dlse.as_ref().map(|x| x.to_f32());
    let scale = shape.default_scale();
    let want = kern
        .run(
            &shape,
            &q,
            &k,
            &v,
            &o,
            &lse,
            &dout,
            dlse.as_deref(),
            scale,
            &bindings,
            &maps,
            &Scoped(3),
        )
        .unwrap();
    let inputs = [&q[..], &k[..], &v[..], &o[..], &lse[..], &dout[..]];
    let mut out = [shape.q_len(), shape.k_len(), shape.v_len()].map(|n| vec![f32::NAN; n]);
    let [dq, dk, dv] = &mut out;
    let caps_g = kern
        .run_into(
            &shape,
            inputs,
            dlse.as_deref(),
            scale,
            &bindings,
            &maps,
            &Scoped(2),
            [dq, dk, dv],
        )
        .unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(want.dq.iter().any(|x| *x != 0.0) && want.dk.iter().any(|x| *x != 0.0));
    assert!(bits(&out[0]) == bits(&want.dq), "dq differs from run's");
    assert!(bits(&out[1]) == bits(&want.dk), "dk differs from run's");
    assert!(bits(&out[2]) == bits(&want.dv), "dv differs from run's");
    assert_eq!(caps_g.tensors, want.tensors);
    assert_eq!(caps_g.params, want.params);
    let mut short = vec![0f32; shape.k_len() - 1];
    let [dq, _, dv] = &mut out;
    let e = kern
        .run_into(
            &shape,
            inputs,
            dlse.as_deref(),
            scale,
            &bindings,
            &maps,
            &Scoped(2),
            [dq, &mut short, dv],
        )
        .expect_err("a short dk");
    assert!(e.to_string().contains("dk"), "{e}");
}

/// bf16 inputs take the runtime's converting path (the kernel's f32 outputs rounded to
/// bf16), f32 inputs the in-place one: with the same values (bf16 inputs widened to f32,
/// the same O and LSE) the two agree bit for bit after rounding.
#[test]
fn bf16_and_f32_outputs_of_the_cpu_backward_agree() {
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 90,
        lkv: 77,
        d: 64,
        dv: 64,
    };
    let caps = src_captures(&shape, 9);
    let c = case(&shape, 9, false);
    let h = |t: &Tensor| Tensor::from_f32_as(t.shape().to_vec(), &t.to_f32(), DType::BF16);
    let (qh, kh, vh, doh) = (h(&c.q), h(&c.k), h(&c.v), h(&c.dout));
    let w = |t: &Tensor| Tensor::from_f32(t.shape().to_vec(), &t.to_f32());
    let mut o16 = BindOptions::new(Backend::Cpu, shape, DType::BF16);
    o16.threads = 2;
    let mut b16 = var.bind(o16).unwrap();
    let fwd = b16.forward(&qh, &kh, &vh, &caps).unwrap();
    let g16 = b16
        .backward(&qh, &kh, &vh, &fwd.o, &fwd.lse, &doh, None, &caps)
        .unwrap();
    let mut b32 = bind(&var, Backend::Cpu, shape, 2);
    let g32 = b32
        .backward(
            &w(&qh),
            &w(&kh),
            &w(&vh),
            &w(&fwd.o),
            &fwd.lse,
            &w(&doh),
            None,
            &caps,
        )
        .unwrap();
    for (name, a, b) in [
        ("dq", &g16.dq, &g32.dq),
        ("dk", &g16.dk, &g32.dk),
        ("dv", &g16.dv, &g32.dv),
    ] {
        assert_eq!(a.dtype(), DType::BF16, "{name}");
        assert_eq!(b.dtype(), DType::F32, "{name}");
        assert_eq!(a, &h(b), "{name}");
        assert!(b.to_f32().iter().any(|x| *x != 0.0), "{name} all zero");
    }
}

/// Per-element biases, whose gradient the CPU backward writes element by element
/// instead of summing partials (`direct_reads`): a `[B, H, Q, KV]` bias under a mask
/// with fully masked rows and −inf scores, a permuted `[KV, H, Q]` one, and an `[H, Q,
/// KV]` one on one batch (written) and two (summed over b) — against the oracle on odd
/// lengths, Lq != Lkv and GQA, and bit-identical on 1 and 3 threads.
#[test]
fn per_element_biases_match_the_reference_and_are_deterministic() {
    const BIAS: &str = "
tensor full: f32[B, H, Q, KV];
tensor perm: f32[KV, H, Q];
tensor hqk: f32[H, Q, KV];
mask m(b, h, q, kv) { q >= 5 && kv <= q + 70 }
score sc(s, b, h, q, kv) {
    let x = s + full[b, h, q, kv] + 0.5 * perm[kv, h, q] * hqk[h, q, kv];
    if (q * 3 + kv) % 11 == 0 { log(0.0) } else { x }
}
attention a { mask = m; score = sc; }
";
    let var = variant(BIAS, "a");
    let mut rng = Rng::new(0xB1A5);
    for trial in 0..4u64 {
        let hkv = range(&mut rng, 1, 2);
        let shape = Shape {
            b: 1 + trial as usize % 2,
            hq: hkv * range(&mut rng, 1, 3),
            hkv,
            lq: range(&mut rng, 6, 150),
            lkv: range(&mut rng, 1, 150),
            d: [64, 128][trial as usize % 2],
            dv: [64, 128][trial as usize % 2],
        };
        let caps = synth::captures(var.program(), &shape, trial);
        let c = case(&shape, 300 + trial, trial % 2 == 0);
        compare(&format!("trial {trial} {shape:?}"), &var, shape, &caps, &c);
        let bits = |threads| gradient_bits(&var, shape, &caps, &c, threads, None);
        assert!(bits(1) == bits(3), "trial {trial}: 1 and 3 threads differ");
    }
}

/// A binding converts its float captures into the buffers of its last call
/// (`Bound::bindings_reusing`): a second call with other values gives bit for bit what
/// a fresh binding gives, forward and backward, and so does a third with the first's.
#[test]
fn captures_converted_into_kept_buffers_follow_each_call() {
    let var = variant(
        "tensor bias: f32[B, H, Q, KV]; tensor w: f32[7];
         score sc(s, b, h, q, kv) { s + bias[b, h, q, kv] * w[(q + kv) % 7] }
         attention a { score = sc; }",
        "a",
    );
    let shape = Shape {
        b: 2,
        hq: 2,
        hkv: 1,
        lq: 37,
        lkv: 70,
        d: 64,
        dv: 64,
    };
    let c = case(&shape, 5, false);
    let first = synth::captures(var.program(), &shape, 1);
    let second = synth::captures(var.program(), &shape, 2);
    let run = |cpu: &mut Bound, caps: &Captures| {
        let f = cpu.forward(&c.q, &c.k, &c.v, caps).unwrap();
        let g = cpu
            .backward(&c.q, &c.k, &c.v, &f.o, &f.lse, &c.dout, None, caps)
            .unwrap();
        let mut bits: Vec<u32> = f.o.to_f32().iter().map(|x| x.to_bits()).collect();
        for t in [&g.dq, &g.dk, &g.dv].into_iter().chain(g.tensors.values()) {
            bits.extend(t.to_f32().iter().map(|x| x.to_bits()));
        }
        bits
    };
    let mut reused = bind(&var, Backend::Cpu, shape, 2);
    let a = run(&mut reused, &first);
    let b = run(&mut reused, &second);
    assert!(a != b, "the captures changed, the results did not");
    assert!(b == run(&mut bind(&var, Backend::Cpu, shape, 2), &second));
    assert!(a == run(&mut reused, &first), "back to the first captures");
}

/// `Bound::backward_device_time_ms` is `None` on host backends, after checking the
/// tensors as `backward` does (a wrong `o` names it).
#[test]
fn backward_device_time_is_none_on_host_backends() {
    let c = attnc::Compiled::from_source(
        "c.attn",
        "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }",
    )
    .unwrap();
    let var = c.attention("a").unwrap();
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 70,
        lkv: 70,
        d: 32,
        dv: 32,
    };
    let x = case(&shape, 3, false);
    for backend in [Backend::Cpu, Backend::Reference] {
        let mut bound = bind(&var, backend, shape, 1);
        let fwd = bound
            .forward(&x.q, &x.k, &x.v, &Captures::default())
            .unwrap();
        let t = bound
            .backward_device_time_ms(
                &x.q,
                &x.k,
                &x.v,
                &fwd.o,
                &fwd.lse,
                &x.dout,
                &Captures::default(),
                2,
                &Default::default(),
            )
            .unwrap();
        assert!(t.is_none(), "{}", backend.name());
        let e = bound
            .backward_device_time_ms(
                &x.q,
                &x.k,
                &x.v,
                &x.k,
                &fwd.lse,
                &x.dout,
                &Captures::default(),
                2,
                &Default::default(),
            )
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("`o`"), "{}: {e}", backend.name());
    }
}
