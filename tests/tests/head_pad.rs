//! Head dims run zero-padded (`attnc::head_pad`, `BindOptions::pad_head_dims`): what
//! the CUDA bindings do at head dims their kernels do not take (96, 72, 80, 192 / 128),
//! forced here on the CPU backend, whose kernels run the padded dim as they would any
//! other. The padded binding must give the unpadded problem's results at the caller's
//! dims: the forward (O, LSE), the backward (dQ, dK, dV, a captured tensor's and an f32
//! param's gradients) against the f64 oracle at the true dims, and decoding against
//! contiguous and paged caches (NaN past every sequence's length, shuffled pages)
//! against the unpadded CPU call; and the choice of the padded dim for CUDA, the errors
//! (a pad below D, a caller-buffer entry on a padded binding, a tensor at the padded
//! dim), `Tensor::resize_last_dim`.
//!
//! Tolerances: O/LSE 1e-4 (1 + |x|) against the oracle (the CPU path's), gradients
//! 2e-4 (1 + max|x|) (`cpu_backward.rs`'s), decoding padded vs unpadded CPU 1e-5: the
//! appended zero columns add exact zeros to every dot product, so only the kernels'
//! tiling over the longer rows can move a rounding.

use attnc::head_pad::{HeadPad, cuda_takes};
use attnc::{Backend, BindOptions, Captures, DType, Error, ParamValue, Shape, Tensor, synth};
use attnc_compiler::decode::CacheLayout;
use attnc_tests::decode_util::{self, Rng as DRng};
use attnc_tests::*;

const SRC: &str = "
tensor bias: f32[KV];
param cap: f32;
mask causal(b, h, q, kv) { q + 3 >= kv }
score soft(s, b, h, q, kv) { cap * tanh((s + bias[kv]) / cap) }
attention a { mask = causal; score = soft; }
";

fn opts(backend: Backend, shape: Shape, pad: Option<usize>) -> BindOptions {
    let mut o = BindOptions::new(backend, shape, DType::F32);
    o.threads = 2;
    o.pad_head_dims = pad;
    o
}

fn captures(shape: &Shape, seed: u64) -> Captures {
    let mut rng = Rng::new(seed);
    let bias: Vec<f32> = (0..shape.lkv).map(|_| rng.normal()).collect();
    Captures::default()
        .tensor("bias", Tensor::from_f32(vec![shape.lkv], &bias))
        .param("cap", ParamValue::F32(4.5))
}

fn rel_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let max = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    assert_close(what, got, want, rel * (1.0 + max));
}

/// (D, Dv, padded to) on odd lengths, Lq != Lkv and GQA; the first row of every (b, h)
/// with Lq > Lkv + 3 ... fully masked where the mask leaves none (`q + 3 >= kv` keeps
/// them all: a second case below masks rows fully).
const CASES: &[(usize, usize, usize)] = &[(24, 24, 32), (20, 12, 32), (40, 24, 64), (9, 16, 16)];

#[test]
fn padded_forward_and_backward_match_the_oracle_at_the_callers_dims() {
    let var = variant(SRC, "a");
    for (i, &(d, dv, to)) in CASES.iter().enumerate() {
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 37 + i,
            lkv: 53 - i,
            d,
            dv,
        };
        let caps = captures(&shape, i as u64);
        let (q, k, v) = synth::qkv(&shape, DType::F32, 90 + i as u64);
        let mut padded = var.bind(opts(Backend::Cpu, shape, Some(to))).unwrap();
        assert_eq!(padded.head_pad(), Some(HeadPad { d, dv, to }), "{shape}");
        assert_eq!(padded.shape(), shape, "the caller's shape");
        assert_eq!(
            (padded.options().shape.d, padded.options().shape.dv),
            (to, to)
        );
        let mut reference = var.bind(opts(Backend::Reference, shape, None)).unwrap();
        let got = padded.forward(&q, &k, &v, &caps).unwrap();
        let want = reference.forward(&q, &k, &v, &caps).unwrap();
        assert_eq!(got.o.shape(), &[shape.b, shape.hq, shape.lq, dv][..]);
        let what = format!("D{d} Dv{dv} padded to {to}, {shape}");
        rel_close(
            &format!("{what}: o"),
            &got.o.to_f32(),
            &want.o.to_f32(),
            1e-4,
        );
        rel_close(
            &format!("{what}: lse"),
            &got.lse.to_f32(),
            &want.lse.to_f32(),
            1e-4,
        );

        let mut rng = Rng::new(7 + i as u64);
        let dout: Vec<f32> = (0..shape.o_len()).map(|_| rng.normal()).collect();
        let dout = Tensor::from_f32(vec![shape.b, shape.hq, shape.lq, dv], &dout);
        let g = padded
            .backward(&q, &k, &v, &got.o, &got.lse, &dout, None, &caps)
            .unwrap();
        let w = reference
            .backward(&q, &k, &v, &want.o, &want.lse, &dout, None, &caps)
            .unwrap();
        assert_eq!(g.dq.shape(), q.shape(), "{what}: dq's shape");
        assert_eq!(g.dk.shape(), k.shape(), "{what}: dk's shape");
        assert_eq!(g.dv.shape(), v.shape(), "{what}: dv's shape");
        for (n, a, b) in [
            ("dq", &g.dq, &w.dq),
            ("dk", &g.dk, &w.dk),
            ("dv", &g.dv, &w.dv),
        ] {
            rel_close(&format!("{what}: {n}"), &a.to_f32(), &b.to_f32(), 2e-4);
        }
        rel_close(
            &format!("{what}: dbias"),
            &g.tensors["bias"].to_f32(),
            &w.tensors["bias"].to_f32(),
            2e-4,
        );
        let (gc, wc) = (g.params["cap"], w.params["cap"]);
        assert!(
            (gc - wc).abs() <= 2e-4 * (1.0 + wc.abs()) * (shape.b * shape.hq * shape.lq) as f32,
            "{what}: dcap {gc} vs {wc}"
        );
        assert!(
            (gc - wc).abs() <= 1e-3 * (1.0 + wc.abs()),
            "{what}: dcap {gc} vs {wc}"
        );
    }
}

#[test]
fn padded_rows_fully_masked_give_zero_and_minus_infinity() {
    let var = variant(
        "mask m(b, h, q, kv) { kv < q - 5 }\nattention a { mask = m; }",
        "a",
    );
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 19,
        lkv: 23,
        d: 40,
        dv: 40,
    };
    let (q, k, v) = synth::qkv(&shape, DType::F32, 3);
    let mut padded = var.bind(opts(Backend::Cpu, shape, Some(64))).unwrap();
    let mut reference = var.bind(opts(Backend::Reference, shape, None)).unwrap();
    let got = padded.forward(&q, &k, &v, &Captures::default()).unwrap();
    let want = reference.forward(&q, &k, &v, &Captures::default()).unwrap();
    let lse = got.lse.to_f32();
    assert!(lse[..6].iter().all(|x| *x == f32::NEG_INFINITY), "{lse:?}");
    assert!(got.o.to_f32()[..6 * 40].iter().all(|x| *x == 0.0));
    rel_close("o", &got.o.to_f32(), &want.o.to_f32(), 1e-4);
    let dout = Tensor::from_f32(vec![1, 2, 19, 40], &vec![1.0; 2 * 19 * 40]);
    let g = padded
        .backward(
            &q,
            &k,
            &v,
            &got.o,
            &got.lse,
            &dout,
            None,
            &Captures::default(),
        )
        .unwrap();
    assert!(
        g.dq.to_f32()[..6 * 40].iter().all(|x| *x == 0.0),
        "dq of masked rows"
    );
}

#[test]
fn padded_decoding_matches_the_unpadded_call_contiguous_and_paged() {
    let compiled = attnc::Compiled::from_source("src.attn", SRC).unwrap();
    for (i, page) in [None, Some(16), Some(32)].into_iter().enumerate() {
        for &(lq, d, to) in &[(1, 24, 32), (4, 40, 64), (33, 20, 32)] {
            let mut rng = DRng(0x9e37 + i as u64 * 31 + lq as u64);
            let cap = 80;
            let c = decode_util::case(&mut rng, 3, 4, 2, lq, d, cap, vec![0, 41, 80], page);
            let shape = c.bind_shape();
            let caps = captures(&shape, 5);
            let var = compiled.attention("a").unwrap();
            let mut padded = var.bind(opts(Backend::Cpu, shape, Some(to))).unwrap();
            let mut plain = var.bind(opts(Backend::Cpu, shape, None)).unwrap();
            let got = padded.forward_with_cache(&c.q, &c.cache(), &caps).unwrap();
            let want = plain.forward_with_cache(&c.q, &c.cache(), &caps).unwrap();
            assert_eq!(got.o.shape(), want.o.shape());
            let what = format!("decode Lq{lq} D{d} padded to {to}, page {page:?}");
            decode_util::close_o_lse(&what, &got, &want, 1e-5);
            // the positions a call reaches do not depend on the head dim
            assert_eq!(
                padded
                    .cache_positions_reached(&c.q, &c.cache(), &caps)
                    .unwrap(),
                plain
                    .cache_positions_reached(&c.q, &c.cache(), &caps)
                    .unwrap(),
                "{what}"
            );
        }
    }
}

#[test]
fn the_cuda_head_dims_and_the_padded_dim_chosen() {
    for (d, dv) in [
        (16, 16),
        (32, 32),
        (64, 64),
        (128, 128),
        (256, 256),
        (64, 128),
        (256, 128),
    ] {
        assert!(cuda_takes(d, dv), "{d} {dv}");
    }
    for (d, dv) in [
        (96, 96),
        (72, 72),
        (80, 80),
        (192, 128),
        (256, 64),
        (48, 64),
        (160, 160),
    ] {
        assert!(!cuda_takes(d, dv), "{d} {dv}");
    }
    let shape = |d, dv| Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 8,
        lkv: 8,
        d,
        dv,
    };
    let choose = |backend, d, dv, pad| {
        HeadPad::choose(&opts(backend, shape(d, dv), pad))
            .unwrap()
            .map(|p| p.to)
    };
    // CUDA: the next dim its kernels take; none where they take the dims or above 256
    for (d, dv, to) in [
        (96, 96, Some(128)),
        (72, 72, Some(128)),
        (80, 80, Some(128)),
        (40, 40, Some(64)),
        (8, 8, Some(16)),
        (192, 128, Some(256)),
        (256, 64, Some(256)),
        (64, 64, None),
        (256, 256, None),
        (300, 300, None),
    ] {
        assert_eq!(choose(Backend::Cuda, d, dv, None), to, "cuda {d} {dv}");
    }
    // the CPU and the oracle take any head dim; asked, any backend pads
    assert_eq!(choose(Backend::Cpu, 96, 96, None), None);
    assert_eq!(choose(Backend::Reference, 72, 72, None), None);
    assert_eq!(choose(Backend::Cpu, 96, 96, Some(128)), Some(128));
    assert_eq!(
        choose(Backend::Cpu, 64, 64, Some(64)),
        None,
        "no padding to the same dim"
    );
    // a pad below the dims is a usage error naming both
    let e = HeadPad::choose(&opts(Backend::Cpu, shape(96, 80), Some(64))).unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    assert!(e.to_string().contains("D=96 Dv=80"), "{e}");
}

#[test]
fn padded_bindings_check_tensors_at_the_callers_dims_and_refuse_caller_buffers() {
    let var = variant(SRC, "a");
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 9,
        lkv: 11,
        d: 24,
        dv: 24,
    };
    let caps = captures(&shape, 1);
    let mut padded = var.bind(opts(Backend::Cpu, shape, Some(32))).unwrap();
    // tensors at the kernels' dim are the caller's error, named
    let wide = Shape {
        d: 32,
        dv: 32,
        ..shape
    };
    let (qw, kw, vw) = synth::qkv(&wide, DType::F32, 1);
    let e = padded.forward(&qw, &kw, &vw, &caps).unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { which, .. } if which == "q"),
        "{e}"
    );
    let (q, k, v) = synth::qkv(&shape, DType::F32, 1);
    let out = padded.forward(&q, &k, &v, &caps).unwrap();
    let e = padded
        .backward(
            &q,
            &k,
            &v,
            &out.o.resize_last_dim(32),
            &out.lse,
            &out.o,
            None,
            &caps,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { which, .. } if which == "o"),
        "{e}"
    );
    // caller buffers are read in place at the kernels' shape: refused, with the recipe
    let mut o = vec![0f32; shape.o_len()];
    let mut lse = vec![0f32; shape.lse_len()];
    let e = padded
        .forward_f32_into(
            &q.to_f32(),
            &k.to_f32(),
            &v.to_f32(),
            &caps,
            &mut o,
            &mut lse,
        )
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("forward_f32_into") && text.contains("D=24 Dv=24 zero-padded to 32"),
        "{text}"
    );
    let e = padded
        .decode_cuda_workspace(CacheLayout::Contiguous { lkv_max: 11 })
        .unwrap_err();
    assert!(e.to_string().contains("zero-padded"), "{e}");
}

#[test]
fn resize_last_dim_keeps_columns_and_appends_zeros_in_every_dtype() {
    let data: Vec<f32> = (0..12).map(|x| x as f32 + 0.5).collect();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let t = Tensor::from_f32_as(vec![2, 2, 3], &data, dtype);
        let w = t.resize_last_dim(5);
        assert_eq!(w.shape(), &[2, 2, 5]);
        assert_eq!(w.dtype(), dtype);
        let wf = w.to_f32();
        for r in 0..4 {
            assert_eq!(&wf[r * 5..r * 5 + 3], &data[r * 3..r * 3 + 3], "{dtype:?}");
            assert_eq!(&wf[r * 5 + 3..r * 5 + 5], &[0.0, 0.0]);
        }
        assert_eq!(w.resize_last_dim(3), t, "narrowing back is the identity");
        let n = t.resize_last_dim(1).to_f32();
        assert_eq!(n, vec![0.5, 3.5, 6.5, 9.5]);
    }
    let ids = Tensor::from_i32(vec![2, 1], &[7, -1]);
    assert_eq!(ids.resize_last_dim(2).to_i32(), vec![7, 0, -1, 0]);
}
