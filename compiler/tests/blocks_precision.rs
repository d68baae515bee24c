//! Precision and soundness of block classification on the attention-gym masks,
//! written in the source language and compared with brute force (the interpreter at
//! every point). Exactness is required for causal, sliding window, prefix-LM, chunked,
//! block-causal, offset-causal and document masks with sorted ids; the others must be
//! sound.

use attnc_compiler::analysis::blockmap::BlockKind;
use attnc_compiler::analysis::classify::{
    BlockError, MaskInfo, Tier, brute_force_maps, build_block_maps, precision,
};
use attnc_compiler::compile_source;
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::shape::Shape;

/// The plan's mask analysis of `p`.
fn analyze(p: &Program) -> MaskInfo {
    attnc_compiler::plan::Plan::new(p).mask().clone()
}

const SRC: &str = r#"
const C: i32 = 48;
param window: i32;
param prefix: i32;
param offset: i32;
tensor doc: i32[B, KV];

mask causal(b, h, q, kv) { q >= kv }
mask local(b, h, q, kv) { q - kv < window }
mask prefix_m(b, h, q, kv) { kv < prefix || q >= kv }
mask chunk_m(b, h, q, kv) { q / C == kv / C }
mask block_causal_m(b, h, q, kv) { q / C >= kv / C }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
mask offset_m(b, h, q, kv) { q + offset >= kv }
mask dilated_m(b, h, q, kv) { (q - kv) % 3 == 0 && q >= kv && q - kv < 40 }
mask natten_m(b, h, q, kv) { abs(clamp(q, 7, 100) - kv) <= 7 }
mask head_m(b, h, q, kv) { q - kv < 16 * (h + 1) && q >= kv }
mask longformer_m(b, h, q, kv) { kv < 8 || q < 8 || abs(q - kv) < window }

attention causal_a { mask = causal; }
attention sliding { mask = causal & local; }
attention prefix_lm { mask = prefix_m; }
attention chunked { mask = chunk_m; }
attention block_causal { mask = block_causal_m; }
attention document { mask = same_doc; }
attention document_causal { mask = same_doc & causal; }
attention offset_causal { mask = offset_m; }
attention dilated { mask = dilated_m; }
attention natten { mask = natten_m; }
attention per_head { mask = head_m; }
attention longformer { mask = longformer_m; }
attention dense { }
"#;

fn programs() -> Vec<Program> {
    match compile_source(SRC) {
        Ok(m) => m.programs,
        Err(d) => panic!("{d:?}"),
    }
}

fn shape(b: usize, h: usize, lq: usize, lkv: usize) -> Shape {
    Shape {
        b,
        hq: h,
        hkv: h,
        lq,
        lkv,
        d: 16,
        dv: 16,
    }
}

/// Sorted document ids for each batch: `ndocs` documents of pseudo-random lengths.
fn sorted_docs(b: usize, l: usize, ndocs: usize, seed: u64) -> BoundTensor {
    let mut data = Vec::with_capacity(b * l);
    let mut s = seed;
    for _ in 0..b {
        let mut cuts: Vec<usize> = (0..ndocs - 1)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as usize % l.max(1)
            })
            .collect();
        cuts.sort();
        for i in 0..l {
            data.push(cuts.iter().filter(|&&c| c <= i).count() as i32);
        }
    }
    BoundTensor {
        dims: vec![b, l],
        data: TensorData::I32(data),
    }
}

fn bindings(p: &Program, window: i32, prefix: i32, offset: i32, doc: &BoundTensor) -> Bindings {
    let params = p
        .params
        .iter()
        .map(|x| match x.name.as_str() {
            "window" => Scalar::I32(window),
            "prefix" => Scalar::I32(prefix),
            "offset" => Scalar::I32(offset),
            other => panic!("unexpected param {other}"),
        })
        .collect();
    let tensors = p.tensors.iter().map(|_| doc.clone()).collect();
    Bindings { params, tensors }
}

const EXACT: &[&str] = &[
    "causal_a",
    "sliding",
    "prefix_lm",
    "chunked",
    "block_causal",
    "document",
    "document_causal",
    "offset_causal",
    "dense",
];

#[test]
fn exact_and_sound_on_many_shapes() {
    let progs = programs();
    let cases = [
        (1, 1, 256, 256, 32, 32),
        (1, 2, 300, 300, 64, 16),
        (2, 1, 257, 257, 16, 48),
        (1, 1, 200, 333, 32, 32),
        (1, 3, 333, 200, 24, 40),
        (1, 1, 97, 97, 7, 5),
    ];
    for p in &progs {
        for &(b, h, lq, lkv, qb, kb) in &cases {
            let l = lq.max(lkv);
            let doc = sorted_docs(b, l, 5, (lq * 31 + lkv) as u64);
            for (window, prefix, offset) in
                [(17, 40, 0), (64, 0, 13), (1, 100, -20), (300, 333, 133)]
            {
                let bind = bindings(p, window, prefix, offset, &doc);
                let s = shape(b, h, lq, lkv);
                let r = precision(p, &s, qb, kb, &bind)
                    .unwrap_or_else(|e| panic!("{} {lq}x{lkv} {qb}x{kb} w={window}: {e}", p.name));
                if EXACT.contains(&p.name.as_str()) {
                    assert_eq!(
                        r.partial_found, r.partial_exact,
                        "{} at {lq}x{lkv} blocks {qb}x{kb} (w={window} p={prefix} o={offset}) is not exact",
                        p.name
                    );
                }
            }
        }
    }
}

#[test]
fn tiers_and_dependencies() {
    let progs = programs();
    let get = |n: &str| progs.iter().find(|p| p.name == n).unwrap();
    let i = analyze(get("causal_a"));
    assert_eq!(i.tier, Tier::IndexOnly);
    assert!(i.closed_form.is_some());
    let i = analyze(get("sliding"));
    assert_eq!(i.tier, Tier::Params);
    let cf = i
        .closed_form
        .clone()
        .expect("sliding window is a conjunction of linear constraints");
    let text = cf.to_string();
    assert!(text.contains("window"), "{text}");
    assert!(analyze(get("prefix_lm")).closed_form.is_none());
    let i = analyze(get("document"));
    assert_eq!(i.tier, Tier::Tensors);
    assert!(i.uses_b && !i.uses_h);
    let i = analyze(get("per_head"));
    assert!(!i.uses_b && i.uses_h);
    assert_eq!(analyze(get("dense")).tier, Tier::Dense);

    // Broadcasting: per-head masks get one map per head, shared by batches.
    let p = get("per_head");
    let s = shape(3, 4, 100, 100);
    let maps = build_block_maps(p, &analyze(p), &s, 16, 16, &Bindings::default()).unwrap();
    assert_eq!((maps.b_stride, maps.h_stride, maps.maps.len()), (0, 1, 4));
    let exact = brute_force_maps(p, &s, 16, 16, &Bindings::default()).unwrap();
    for b in 0..3 {
        for h in 0..4 {
            assert_eq!(maps.get(b, h), exact.get(b, h), "b={b} h={h}");
        }
    }
}

#[test]
fn closed_form_matches_quadtree_and_brute_force() {
    let progs = programs();
    let p = progs.iter().find(|p| p.name == "sliding").unwrap();
    let doc = sorted_docs(1, 1, 1, 0);
    let s = shape(1, 1, 1000, 1000);
    let bind = bindings(p, 100, 0, 0, &doc);
    let got = build_block_maps(p, &analyze(p), &s, 64, 32, &bind).unwrap();
    // Without the closed form, the quadtree path.
    let mut info = analyze(p);
    info.closed_form = None;
    let quad = build_block_maps(p, &info, &s, 64, 32, &bind).unwrap();
    let exact = brute_force_maps(p, &s, 64, 32, &bind).unwrap();
    assert_eq!(got.get(0, 0), exact.get(0, 0));
    assert_eq!(quad.get(0, 0), exact.get(0, 0));
    assert!(got.get(0, 0).counts().0 > 0 && got.get(0, 0).counts().2 > 0);
}

#[test]
fn wrapping_arithmetic_falls_back_soundly() {
    // q * 100000000 wraps for q >= 22: the closed form must not be trusted.
    let src = "mask m(b, h, q, kv) { q * 100000000 >= kv } attention a { mask = m; }";
    let m = compile_source(src).unwrap();
    let p = &m.programs[0];
    let s = shape(1, 1, 64, 64);
    let r = precision(p, &s, 8, 8, &Bindings::default()).unwrap();
    assert!(r.partial_found >= r.partial_exact);
}

#[test]
fn user_errors_do_not_panic() {
    let progs = programs();
    let p = progs.iter().find(|p| p.name == "document").unwrap();
    let s = shape(1, 1, 10, 10);
    // each refusal for its own reason, naming what is wrong
    let err = |qb, kb, bind: &Bindings| {
        build_block_maps(p, &analyze(p), &s, qb, kb, bind)
            .map(|_| ())
            .unwrap_err()
    };
    let e = err(0, 8, &Bindings::default());
    let size = BlockError::BlockSize {
        q_block: 0,
        kv_block: 8,
    };
    assert_eq!(e.to_string(), size.to_string());
    let e = err(8, 8, &Bindings::default());
    assert!(
        matches!(&e, BlockError::MissingTensor { name } if name == "doc"),
        "{e}"
    );
    let bad = Bindings {
        params: vec![],
        tensors: vec![BoundTensor {
            dims: vec![1, 11],
            data: TensorData::I32(vec![0; 10]),
        }],
    };
    let e = err(8, 8, &bad);
    assert!(
        matches!(&e, BlockError::TensorSize { name, len: 10, expected: 11, .. } if name == "doc"),
        "{e}"
    );
    // Zero-length sequences are vacuous, not errors.
    let s0 = shape(1, 1, 0, 10);
    let doc = sorted_docs(1, 10, 2, 1);
    let bind = bindings(p, 1, 1, 1, &doc);
    let m = build_block_maps(p, &analyze(p), &s0, 8, 8, &bind).unwrap();
    assert_eq!(m.get(0, 0).n_q_blocks(), 0);
    let _ = BlockKind::Empty;
}

/// A mask that reads no captured tensor classifies without their data: a caller-buffer
/// call (`exec::cuda::caller`, the Python package on CUDA tensors) binds the captured
/// tensors by their dims alone, and a mask over params beside a score over a learned bias
/// must still get its host maps (the same as with the data); a mask over a tensor still
/// needs its data (`TensorSize`).
#[test]
fn masks_over_no_tensor_classify_without_tensor_data() {
    let src = "param w: i32;\ntensor bias: f32[H, KV];\ntensor doc: i32[KV];\nmask m(b, h, q, kv) { (q - kv) % w != 1 && q >= kv }\nmask d(b, h, q, kv) { doc[kv] >= 0 }\nscore s(s, b, h, q, kv) { s + bias[h, kv] }\nattention a { mask = m; score = s; }\nattention t { mask = d; score = s; }";
    let progs = attnc_compiler::compile_source(src).unwrap().programs;
    let s = shape(1, 2, 100, 100);
    let with_data = |p: &Program, data: bool| Bindings {
        params: vec![attnc_compiler::ir::Scalar::I32(3)],
        tensors: p
            .tensors
            .iter()
            .map(|t| {
                let (dims, n) = if t.name == "bias" {
                    (vec![2, 100], 200)
                } else {
                    (vec![100], 100)
                };
                BoundTensor {
                    dims,
                    data: if t.name == "bias" {
                        TensorData::F32(if data { vec![0.5; n] } else { vec![] })
                    } else {
                        TensorData::I32(if data { vec![1; n] } else { vec![] })
                    },
                }
            })
            .collect(),
    };
    let a = progs.iter().find(|p| p.name == "a").unwrap();
    let full = build_block_maps(a, &analyze(a), &s, 16, 16, &with_data(a, true)).unwrap();
    let dims_only = build_block_maps(a, &analyze(a), &s, 16, 16, &with_data(a, false)).unwrap();
    assert_eq!(full, dims_only);
    let t = progs.iter().find(|p| p.name == "t").unwrap();
    let e = build_block_maps(t, &analyze(t), &s, 16, 16, &with_data(t, false)).unwrap_err();
    assert!(matches!(&e, BlockError::TensorSize { .. }), "{e}");
}
