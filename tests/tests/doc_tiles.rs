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

fn input(r: &mut StdRng, dims: Vec<usize>) -> Tensor {
    let n: usize = dims.iter().product();
    let x: Vec<f32> = (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect();
    Tensor::from_f32(dims, &x)
}

#[test]
fn cpu_doc_tiles_match_the_oracle() {
    let compiled = Compiled::from_source("docs.attn", SOURCE).expect("compiles");
    let shape = |b, hq, hkv, lq, lkv, d| Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    };
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
                let mut caps = Captures::default();
                if variant.program().tensors.iter().any(|t| t.name == "doc") {
                    caps = caps.tensor("doc", Tensor::from_i32(vec![sh.b, sh.lkv], ids));
                }
                if variant.program().params.iter().any(|p| p.name == "window") {
                    caps = caps.param("window", ParamValue::I32(37));
                }
                let want = variant
                    .bind(BindOptions::new(Backend::Reference, sh, DType::F32))
                    .unwrap()
                    .forward(&q, &k, &v, &caps)
                    .unwrap();
                let mut outs = Vec::new();
                for (on, threads, checked) in [
                    (true, 1, false),
                    (true, 3, false),
                    (false, 2, false),
                    (true, 2, true),
                ] {
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
