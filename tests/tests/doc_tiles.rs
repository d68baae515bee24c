//! Document tiles on the CPU (`BindOptions::doc_tiles`, `CpuOptions::doc_tiles`): a
//! document mask over packed sequences runs the kernel of its linear part over q tiles
//! and kv blocks aligned to each document, against the f64 oracle (1e-4, as
//! `cpu_differential`): masks alone, with causal, a window and chunks, scores over
//! absolute positions (ALiBi, `q % 7`), documents from one row to several tiles, GQA, odd
//! lengths; every such call runs the document-tiled kernel (`Bound::doc_tile_calls`),
//! while ids that come back after another document, `Lq != Lkv`, checked mode and a
//! binding without the option run the binding's own kernel, also against the oracle; the
//! results do not depend on the thread count.

use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape, Tensor};
use attnc_tests::assert_close;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SOURCE: &str = r#"
tensor doc: i32[B, KV];
param window: i32;
mask causal(b, h, q, kv) { q >= kv }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
mask local(b, h, q, kv) { q - kv <= window }
mask chunk(b, h, q, kv) { q / 48 == kv / 48 }
score alibi(s, b, h, q, kv) { s + 0.0625 * (kv - q) as f32 }
score at_row(s, b, h, q, kv) { s + 0.25 * (q % 7) as f32 - 0.125 * (kv % 5) as f32 }
attention doc_only { mask = same_doc; }
attention doc_causal { mask = causal & same_doc; }
attention doc_sliding_causal { mask = causal & local & same_doc; }
attention doc_alibi_causal { mask = causal & same_doc; score = alibi; }
attention doc_at_row { mask = same_doc & causal; score = at_row; }
attention chunked_causal { mask = chunk & causal; }
"#;

const TOL: f32 = 1e-4;

/// The CPU bindings each case runs: `(doc_tiles, threads, checked)` — document tiles on
/// one and three threads (the same bits), the option off, checked mode (no tiles).
const SETTINGS: [(bool, usize, bool); 4] = [
    (true, 1, false),
    (true, 3, false),
    (false, 2, false),
    (true, 2, true),
];

fn ids(r: &mut StdRng, b: usize, n: usize, docs: i32, sorted: bool) -> Vec<i32> {
    let mut out = Vec::new();
    for _ in 0..b {
        let mut row: Vec<i32> = (0..n).map(|_| r.random_range(0..docs)).collect();
        if sorted {
            row.sort();
        }
        out.extend(row);
    }
    out
}

fn shape(b: usize, hq: usize, hkv: usize, lq: usize, lkv: usize, d: usize) -> Shape {
    Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    }
}

/// The captures of `variant` above: the ids `doc` (`[B, KV]`) where it reads them, the
/// param `window` where it has one.
fn captures(variant: &attnc::Variant, sh: &Shape, ids: &[i32], window: i32) -> Captures {
    let mut caps = Captures::default();
    if variant.program().tensors.iter().any(|t| t.name == "doc") {
        caps = caps.tensor("doc", Tensor::from_i32(vec![sh.b, sh.lkv], ids));
    }
    if variant.program().params.iter().any(|p| p.name == "window") {
        caps = caps.param("window", ParamValue::I32(window));
    }
    caps
}

fn input(r: &mut StdRng, dims: Vec<usize>) -> Tensor {
    let n: usize = dims.iter().product();
    let x: Vec<f32> = (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect();
    Tensor::from_f32(dims, &x)
}

#[test]
fn cpu_doc_tiles_match_the_oracle() {
    let compiled = Compiled::from_source("docs.attn", SOURCE).expect("compiles");
    // (shape, documents per row)
    let cases = [
        (shape(2, 4, 2, 300, 300, 64), 6),
        (shape(1, 3, 1, 517, 517, 32), 40),
        (shape(2, 2, 2, 130, 130, 64), 1),
        (shape(3, 2, 1, 129, 129, 32), 129),
        (shape(1, 2, 1, 200, 257, 64), 4),
    ];
    let (mut tiled_calls, mut ran) = (0, 0);
    for (ci, &(sh, docs)) in cases.iter().enumerate() {
        let mut r = StdRng::seed_from_u64(900 + ci as u64);
        let q = input(&mut r, vec![sh.b, sh.hq, sh.lq, sh.d]);
        let k = input(&mut r, vec![sh.b, sh.hkv, sh.lkv, sh.d]);
        let v = input(&mut r, vec![sh.b, sh.hkv, sh.lkv, sh.dv]);
        let mut packed = ids(&mut r, sh.b, sh.lkv, docs, true);
        // a single-row document at a row's start
        packed[0] = -1;
        let unsorted = ids(&mut r, sh.b, sh.lkv, docs.max(2), false);
        for name in compiled.names() {
            let variant = compiled.attention(name).unwrap();
            for (ids, contiguous) in [(&packed, true), (&unsorted, false)] {
                let caps = captures(&variant, &sh, ids, 37);
                let want = variant
                    .bind(BindOptions::new(Backend::Reference, sh, DType::F32))
                    .unwrap()
                    .forward(&q, &k, &v, &caps)
                    .unwrap();
                let mut outs = Vec::new();
                for (on, threads, checked) in SETTINGS {
                    let mut o = BindOptions::new(Backend::Cpu, sh, DType::F32);
                    (o.doc_tiles, o.threads, o.checked) = (on, threads, checked);
                    let mut bound = variant.bind(o).unwrap();
                    let got = bound.forward(&q, &k, &v, &caps).unwrap();
                    let what = format!(
                        "{name} case {ci} contiguous {contiguous} doc_tiles {on} threads {threads} checked {checked}"
                    );
                    assert_close(
                        &format!("{what}: O"),
                        &got.o.to_f32(),
                        &want.o.to_f32(),
                        TOL,
                    );
                    assert_close(
                        &format!("{what}: LSE"),
                        &got.lse.to_f32(),
                        &want.lse.to_f32(),
                        TOL,
                    );
                    // (chunks are contiguous whatever the ids; documents where packed)
                    let tiled = on
                        && !checked
                        && sh.lq == sh.lkv
                        && (contiguous
                            || !variant.program().tensors.iter().any(|t| t.name == "doc"));
                    assert_eq!(
                        bound.doc_tile_calls(),
                        Some(tiled as u64),
                        "{what}: document-tiled calls"
                    );
                    tiled_calls += tiled as usize;
                    ran += 1;
                    outs.push(got.o.to_f32());
                }
                // the same bits on one and three threads
                assert_eq!(outs[0], outs[1], "{name} case {ci}: threads");
            }
        }
    }
    assert!(tiled_calls >= 40 && ran >= 200, "{tiled_calls} / {ran}");
}

/// The CPU backward on document tiles (`Bound::backward` on `Backend::Cpu`, the kernel of
/// the mask's linear part on each document's own q and kv tiles: `run_docs_into`) against
/// the f64 reference gradients, for every attention above (documents alone, with causal,
/// a window, ALiBi and scores over absolute positions; chunks, whose "documents" are the
/// chunks): dQ, dK, dV within 2e-4·(1 + max|x|) (`cpu_backward`'s tolerance), with dLSE,
/// documents from one row to several tiles, GQA, odd lengths. Calls whose ids form
/// contiguous documents count in `Bound::doc_tile_backward_calls`; ids that come back,
/// `Lq != Lkv`, checked mode and `doc_tiles: false` run the binding's kernel on its maps,
/// also against the reference; the gradients are the same bits on one and three threads.
#[test]
fn cpu_doc_tiles_backward_matches_the_oracle() {
    let compiled = Compiled::from_source("docs.attn", SOURCE).expect("compiles");
    let cases = [
        (shape(2, 4, 2, 300, 300, 64), 6),
        (shape(1, 3, 1, 517, 517, 32), 40),
        (shape(3, 2, 1, 129, 129, 32), 129),
        (shape(1, 2, 1, 200, 257, 64), 4),
    ];
    let close = |what: &str, got: &[f32], want: &[f32]| {
        let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_close(what, got, want, 2e-4 * (1.0 + max));
    };
    let (mut tiled_calls, mut ran) = (0, 0);
    for (ci, &(sh, docs)) in cases.iter().enumerate() {
        let mut r = StdRng::seed_from_u64(1900 + ci as u64);
        let q = input(&mut r, vec![sh.b, sh.hq, sh.lq, sh.d]);
        let k = input(&mut r, vec![sh.b, sh.hkv, sh.lkv, sh.d]);
        let v = input(&mut r, vec![sh.b, sh.hkv, sh.lkv, sh.dv]);
        let dout = input(&mut r, vec![sh.b, sh.hq, sh.lq, sh.dv]);
        let dlse = input(&mut r, vec![sh.b, sh.hq, sh.lq]);
        let mut packed = ids(&mut r, sh.b, sh.lkv, docs, true);
        packed[0] = -1;
        let unsorted = ids(&mut r, sh.b, sh.lkv, docs.max(2), false);
        for name in compiled.names() {
            let variant = compiled.attention(name).unwrap();
            let reads_doc = variant.program().tensors.iter().any(|t| t.name == "doc");
            for (ids, contiguous) in [(&packed, true), (&unsorted, false)] {
                if !contiguous && !reads_doc {
                    continue;
                }
                let caps = captures(&variant, &sh, ids, 37);
                let mut reference = variant
                    .bind(BindOptions::new(Backend::Reference, sh, DType::F32))
                    .unwrap();
                let fwd = reference.forward(&q, &k, &v, &caps).unwrap();
                let want = reference
                    .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, Some(&dlse), &caps)
                    .unwrap();
                let mut outs = Vec::new();
                for (on, threads, checked) in SETTINGS {
                    let mut o = BindOptions::new(Backend::Cpu, sh, DType::F32);
                    (o.doc_tiles, o.threads, o.checked) = (on, threads, checked);
                    let mut bound = variant.bind(o).unwrap();
                    let got = bound
                        .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, Some(&dlse), &caps)
                        .unwrap();
                    let what = format!(
                        "{name} case {ci} contiguous {contiguous} doc_tiles {on} threads {threads} checked {checked}"
                    );
                    for (nm, g, w) in [
                        ("dq", &got.dq, &want.dq),
                        ("dk", &got.dk, &want.dk),
                        ("dv", &got.dv, &want.dv),
                    ] {
                        close(&format!("{what}: {nm}"), &g.to_f32(), &w.to_f32());
                    }
                    let tiled = on && !checked && sh.lq == sh.lkv && contiguous;
                    assert_eq!(
                        bound.doc_tile_backward_calls(),
                        tiled as u64,
                        "{what}: calls on document tiles"
                    );
                    tiled_calls += tiled as usize;
                    ran += 1;
                    outs.push([got.dq.to_f32(), got.dk.to_f32(), got.dv.to_f32()]);
                }
                assert_eq!(outs[0], outs[1], "{name} case {ci}: threads");
            }
        }
    }
    assert!(tiled_calls >= 30 && ran >= 120, "{tiled_calls} / {ran}");
}

/// The CPU backward on document tiles on random calls: sequences of 1 to 3, 1 to 4 query
/// heads over 1 or 2 kv heads, lengths 1 to 300, head dims 16 to 64, documents of random
/// lengths (one-row documents and one document for the whole sequence among them),
/// every attention above with a random window; dQ, dK, dV against the f64 reference
/// within `cpu_backward`'s tolerance, every call on document tiles.
#[test]
fn cpu_doc_tiles_backward_on_random_calls() {
    let compiled = Compiled::from_source("docs.attn", SOURCE).expect("compiles");
    let names = compiled.names();
    let mut r = StdRng::seed_from_u64(4242);
    let mut tiled = 0;
    for case in 0..24 {
        let hkv = r.random_range(1..=2usize);
        let sh = shape(
            r.random_range(1..=3),
            hkv * r.random_range(1..=2usize),
            hkv,
            0,
            0,
            [16, 32, 64][r.random_range(0..3)],
        );
        let l = r.random_range(1..=300usize);
        let sh = Shape {
            lq: l,
            lkv: l,
            ..sh
        };
        let name = names[case % names.len()];
        let variant = compiled.attention(name).unwrap();
        // document lengths: cut points drawn per sequence (none: one document)
        let mut ids = Vec::new();
        for _ in 0..sh.b {
            let cuts = r.random_range(0..=l.min(12));
            let mut at: Vec<usize> = (0..cuts).map(|_| r.random_range(1..=l)).collect();
            at.sort();
            ids.extend((0..l).map(|i| at.iter().filter(|c| **c <= i).count() as i32));
        }
        let caps = captures(&variant, &sh, &ids, r.random_range(0..80));
        let q = input(&mut r, vec![sh.b, sh.hq, l, sh.d]);
        let k = input(&mut r, vec![sh.b, sh.hkv, l, sh.d]);
        let v = input(&mut r, vec![sh.b, sh.hkv, l, sh.dv]);
        let dout = input(&mut r, vec![sh.b, sh.hq, l, sh.dv]);
        let mut reference = variant
            .bind(BindOptions::new(Backend::Reference, sh, DType::F32))
            .unwrap();
        let fwd = reference.forward(&q, &k, &v, &caps).unwrap();
        let want = reference
            .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, None, &caps)
            .unwrap();
        let mut o = BindOptions::new(Backend::Cpu, sh, DType::F32);
        o.threads = 2;
        let mut bound = variant.bind(o).unwrap();
        let got = bound
            .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, None, &caps)
            .unwrap();
        let what = format!("case {case} {name} {sh:?}");
        for (nm, g, w) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
        ] {
            let w = w.to_f32();
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_close(
                &format!("{what}: {nm}"),
                &g.to_f32(),
                &w,
                2e-4 * (1.0 + max),
            );
        }
        tiled += bound.doc_tile_backward_calls();
    }
    assert_eq!(tiled, 24, "every call on document tiles");
}
