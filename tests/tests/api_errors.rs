//! User errors through the public API never panic and name the culprit: captures
//! (missing, wrong dtype/shape/type, unknown), q/k/v shape and dtype, head counts,
//! safetensors files, attention names and compile errors (rendered with a span).

use attnc::{
    Backend, BindOptions, Bound, Captures, Compiled, DType, Error, ParamValue, Shape, Tensor, synth,
};
use attnc_tests::*;

const SHAPE: Shape = Shape {
    b: 2,
    hq: 4,
    hkv: 2,
    lq: 7,
    lkv: 7,
    d: 8,
    dv: 8,
};

fn example(file: &str, name: &str) -> attnc::Variant {
    Compiled::from_file(
        &workspace_root()
            .join("examples")
            .join(format!("{file}.attn")),
    )
    .unwrap()
    .attention(name)
    .unwrap()
}

fn bound(v: &attnc::Variant, backend: Backend) -> Bound {
    v.bind(BindOptions::new(backend, SHAPE, DType::F32))
        .unwrap()
}

/// The error of a forward call with synthetic q/k/v, on both backends (same error).
fn forward_err(v: &attnc::Variant, caps: &Captures) -> Error {
    let (q, k, vv) = synth::qkv(&SHAPE, DType::F32, 1);
    let mut errs = Vec::new();
    for backend in [Backend::Reference, Backend::Cpu] {
        match bound(v, backend).forward(&q, &k, &vv, caps) {
            Ok(_) => panic!("{backend:?}: expected an error"),
            Err(e) => errs.push(e),
        }
    }
    assert_eq!(
        errs[0].to_string(),
        errs[1].to_string(),
        "backends disagree"
    );
    errs.pop().unwrap()
}

/// A `Capture` error naming `name`, whose rendering has `code` and the declaration line.
fn assert_capture(e: &Error, name: &str, code: &str, decl_line: &str) {
    match e {
        Error::Capture {
            name: n,
            message,
            rendered,
        } => {
            assert_eq!(n, name);
            assert!(
                message.contains(&format!("`{name}`")),
                "message does not name it: {message}"
            );
            assert!(rendered.contains(code), "no {code}:\n{rendered}");
            assert!(
                rendered.contains(decl_line),
                "declaration line not shown:\n{rendered}"
            );
            assert!(rendered.contains('^'), "no span marker:\n{rendered}");
            let full = e.to_string();
            assert!(
                full.contains(message) && full.contains(decl_line),
                "Display lacks parts:\n{full}"
            );
        }
        other => panic!("expected Error::Capture for `{name}`, got {other:?}"),
    }
}

#[test]
fn missing_capture_tensor_names_it_and_shows_the_declaration() {
    let v = example("document_causal", "document_causal");
    let e = forward_err(&v, &Captures::default());
    assert_capture(&e, "doc", "E0303", "tensor doc: i32[B, KV];");
}

#[test]
fn missing_param_names_it_and_shows_the_declaration() {
    let v = example("sliding_window", "sliding_window");
    let e = forward_err(&v, &Captures::default());
    assert_capture(&e, "window", "E0301", "param window: i32;");
    // of two params, the missing one is named
    let v = example("dilated_sliding_window", "dilated_sliding_window");
    let e = forward_err(&v, &Captures::default().param("window", ParamValue::I32(3)));
    assert_capture(&e, "dilation", "E0301", "param dilation: i32;");
}

#[test]
fn wrong_param_type() {
    let v = example("sliding_window", "sliding_window");
    let e = forward_err(
        &v,
        &Captures::default().param("window", ParamValue::F32(2.5)),
    );
    assert_capture(&e, "window", "E0302", "param window: i32;");
    // the value as written, not its Rust form (`F32(2.5)`)
    assert!(
        e.to_string()
            .contains("param `window` is declared `i32` but was given the f32 value 2.5"),
        "{e}"
    );
    let e = forward_err(
        &v,
        &Captures::default().param("window", ParamValue::Bool(true)),
    );
    assert_capture(&e, "window", "E0302", "param window: i32;");
    assert!(e.to_string().contains("the bool value true"), "{e}");
    let e = forward_err(
        &v,
        &Captures::default().param("window", ParamValue::F32(f32::NAN)),
    );
    assert!(
        e.to_string().contains("the f32 value NaN") && !e.to_string().contains("F32("),
        "{e}"
    );
}

#[test]
fn wrong_capture_dtype() {
    let v = example("document_causal", "document_causal");
    let caps = Captures::default().tensor("doc", Tensor::from_f32(vec![2, 7], &[0.0; 14]));
    let e = forward_err(&v, &caps);
    assert_capture(&e, "doc", "E0304", "tensor doc: i32[B, KV];");
    assert!(e.to_string().contains("f32"), "{e}");
}

#[test]
fn wrong_capture_shape_and_rank() {
    let v = example("document_causal", "document_causal");
    // KV dimension wrong
    let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![2, 5], &[0; 10]));
    let e = forward_err(&v, &caps);
    assert_capture(&e, "doc", "E0305", "tensor doc: i32[B, KV];");
    let msg = e.to_string();
    assert!(
        msg.contains("[2, 5]") && msg.contains("expected 7"),
        "{msg}"
    );
    // B dimension wrong
    let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![1, 7], &[0; 7]));
    assert_capture(
        &forward_err(&v, &caps),
        "doc",
        "E0305",
        "tensor doc: i32[B, KV];",
    );
    // rank wrong
    let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![14], &[0; 14]));
    let e = forward_err(&v, &caps);
    assert_capture(&e, "doc", "E0305", "tensor doc: i32[B, KV];");
    assert!(e.to_string().contains("rank 1 instead of 2"), "{e}");
    // a symbolic dim used twice must agree
    let v = variant(
        "tensor x: i32[N]; tensor y: i32[N]; mask m(b, h, q, kv) { x[0] == y[0] } attention a { mask = m; }",
        "a",
    );
    let caps = Captures::default()
        .tensor("x", Tensor::from_i32(vec![3], &[0; 3]))
        .tensor("y", Tensor::from_i32(vec![4], &[0; 4]));
    assert_capture(&forward_err(&v, &caps), "y", "E0305", "tensor y: i32[N];");
}

#[test]
fn unknown_capture_name() {
    let v = example("sliding_window", "sliding_window");
    let caps = Captures::default()
        .param("window", ParamValue::I32(3))
        .param("windw", ParamValue::I32(3));
    match forward_err(&v, &caps) {
        Error::UnknownCapture { name, declared, .. } => {
            assert_eq!(name, "windw");
            assert!(declared.contains("window"), "{declared}");
        }
        other => panic!("expected UnknownCapture, got {other:?}"),
    }
    // a tensor given to an attention with no captures at all
    let v = example("causal", "causal_attention");
    let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![1], &[0]));
    let e = forward_err(&v, &caps);
    assert!(
        matches!(&e, Error::UnknownCapture { name, .. } if name == "doc"),
        "{e:?}"
    );
    assert!(e.to_string().contains("`doc`"), "{e}");
}

#[test]
fn qkv_of_wrong_shape_or_dtype() {
    let v = example("causal", "causal_attention");
    let (q, k, vv) = synth::qkv(&SHAPE, DType::F32, 1);
    let bad_k = Tensor::from_f32(vec![2, 2, 6, 8], &[0.0; 2 * 2 * 6 * 8]);
    let half_v = synth::qkv(&SHAPE, DType::F16, 1).2;
    for backend in [Backend::Reference, Backend::Cpu] {
        let mut b = bound(&v, backend);
        match b.forward(&q, &bad_k, &vv, &Captures::default()) {
            Err(Error::InputShape { which, got, .. }) => {
                assert_eq!(which, "k");
                assert_eq!(got, vec![2, 2, 6, 8]);
            }
            other => panic!(
                "{backend:?}: expected InputShape, got {:?}",
                other.map(|_| ())
            ),
        }
        // q passed where k belongs: [2, 4, 7, 8] is not k's [2, 2, 7, 8]
        let e = b
            .forward(&q, &q, &vv, &Captures::default())
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InputShape { which, .. } if which == "k"),
            "{e:?}"
        );
        assert!(e.to_string().contains("[2, 2, 7, 8]"), "{e}");
        match b.forward(&q, &k, &half_v, &Captures::default()) {
            Err(Error::InputDType { which, got, .. }) => {
                assert_eq!(which, "v");
                assert_eq!(got, DType::F16);
            }
            other => panic!(
                "{backend:?}: expected InputDType, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// The timing entries check q, k and v as `forward` does, on every backend: a wrong
/// shape or dtype is an error naming the tensor (it was `Ok(None)` on host backends and,
/// on CUDA, a length error for "q/k/v" or, for a 16-bit tensor of the other type, a
/// timing of the wrong data).
#[test]
fn timing_entries_check_qkv_like_forward() {
    let v = example("causal", "causal_attention");
    let (q, k, vv) = synth::qkv(&SHAPE, DType::F32, 1);
    let bad_k = Tensor::from_f32(vec![2, 2, 6, 8], &[0.0; 2 * 2 * 6 * 8]);
    let half_v = synth::qkv(&SHAPE, DType::F16, 1).2;
    let caps = Captures::default();
    for backend in [Backend::Reference, Backend::Cpu] {
        let mut b = bound(&v, backend);
        assert_eq!(b.device_time_ms(&q, &k, &vv, &caps, 1).unwrap(), None);
        let e = b.device_time_ms(&q, &bad_k, &vv, &caps, 1).unwrap_err();
        assert!(
            matches!(&e, Error::InputShape { which, .. } if which == "k"),
            "{backend:?}: {e:?}"
        );
        let e = b
            .device_time(&q, &k, &half_v, &caps, 1)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InputDType { which, got: DType::F16, .. } if which == "v"),
            "{backend:?}: {e:?}"
        );
        let e = b
            .block_table_time_ms(&bad_k, &k, &vv, &caps, 1)
            .unwrap_err();
        assert!(
            matches!(&e, Error::InputShape { which, .. } if which == "q"),
            "{backend:?}: {e:?}"
        );
    }
}

#[test]
fn heads_not_a_multiple_and_zero_dims() {
    let v = example("causal", "causal_attention");
    for backend in [Backend::Reference, Backend::Cpu] {
        let shape = Shape {
            hq: 3,
            hkv: 2,
            ..SHAPE
        };
        match v.bind(BindOptions::new(backend, shape, DType::F32)) {
            Err(e @ Error::Shape(_)) => {
                let m = e.to_string();
                assert!(
                    m.contains('3') && m.contains('2') && m.contains("multiple"),
                    "{m}"
                );
            }
            other => panic!(
                "{backend:?}: expected a shape error, got {:?}",
                other.map(|_| ())
            ),
        }
        for (what, shape) in [
            ("D", Shape { d: 0, ..SHAPE }),
            ("Hkv", Shape { hkv: 0, ..SHAPE }),
            ("B", Shape { b: 0, ..SHAPE }),
        ] {
            let e = v
                .bind(BindOptions::new(backend, shape, DType::F32))
                .map(|_| ())
                .unwrap_err();
            assert!(
                e.to_string().contains(&format!("`{what}`")),
                "{backend:?}: {e}"
            );
        }
    }
}

#[test]
fn corrupt_safetensors_files() {
    let dir = std::env::temp_dir().join(format!("attnc-api-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // garbage bytes
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let e = attnc::io::read_safetensors(&garbage).unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e:?}");
    assert!(e.to_string().contains("garbage.safetensors"), "{e}");
    // a huge header length
    let huge = dir.join("huge.safetensors");
    std::fs::write(&huge, u64::MAX.to_le_bytes()).unwrap();
    assert!(matches!(
        attnc::io::read_safetensors(&huge),
        Err(Error::Safetensors { .. })
    ));
    // a valid file, then truncated in its data and in its header
    let good = dir.join("good.safetensors");
    let mut map = std::collections::BTreeMap::new();
    map.insert(
        "q".to_string(),
        Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    );
    map.insert("doc".to_string(), Tensor::from_i32(vec![4], &[0, 0, 1, 1]));
    attnc::io::write_safetensors(&good, &map).unwrap();
    let back = attnc::io::read_safetensors(&good).unwrap();
    assert_eq!(back["q"].to_f32(), map["q"].to_f32());
    assert_eq!(back["doc"].to_i32(), vec![0, 0, 1, 1]);
    let bytes = std::fs::read(&good).unwrap();
    for cut in [bytes.len() - 3, 12, 4] {
        let t = dir.join(format!("truncated{cut}.safetensors"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let e = attnc::io::read_safetensors(&t).unwrap_err();
        assert!(matches!(e, Error::Safetensors { .. }), "cut {cut}: {e:?}");
        assert!(e.to_string().contains(&format!("truncated{cut}")), "{e}");
    }
    // a missing file
    let e = attnc::io::read_safetensors(&dir.join("nope.safetensors")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_attention_name() {
    let c = Compiled::from_file(&workspace_root().join("examples/chunked.attn")).unwrap();
    match c.attention("chunky") {
        Err(e @ Error::UnknownAttention { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("`chunky`") && m.contains("chunked, chunked_causal"),
                "{m}"
            );
        }
        other => panic!("expected UnknownAttention, got {:?}", other.map(|_| ())),
    }
    // `select` without a name on a file with two attentions is a usage error naming both
    let e = c.select(None).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("chunked, chunked_causal"), "{e}");
    assert_eq!(
        c.select(Some("chunked_causal")).unwrap().name(),
        "chunked_causal"
    );
}

#[test]
fn compile_error_is_rendered_with_a_span() {
    let src = "mask m(b, h, q, kv) { q >= kv }\nscore s(s, b, h, q, kv) { s + q }\nattention a { mask = m; score = s; }\n";
    match Compiled::from_source("bad.attn", src) {
        Err(Error::Compile { rendered, count }) => {
            assert!(count >= 1);
            assert!(rendered.contains("error[E0201]"), "{rendered}");
            assert!(
                rendered.contains("bad.attn:2:"),
                "not pointing at line 2:\n{rendered}"
            );
            assert!(rendered.contains("s + q"), "{rendered}");
            assert!(rendered.contains('^'), "{rendered}");
        }
        other => panic!("expected a compile error, got {:?}", other.map(|_| ())),
    }
    // several errors are all reported
    let src = "mask m(b, h, q, kv) { q >= undefined }\nattention a { mask = nope; }\n";
    match Compiled::from_source("bad2.attn", src) {
        Err(Error::Compile { rendered, count }) => {
            assert!(count >= 2, "{count}: {rendered}");
            assert!(
                rendered.contains("undefined") && rendered.contains("nope"),
                "{rendered}"
            );
        }
        other => panic!("expected a compile error, got {:?}", other.map(|_| ())),
    }
    // a file that does not exist
    let e = Compiled::from_file(std::path::Path::new("/nonexistent/x.attn"))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/x.attn"),
        "{e}"
    );
}

#[test]
fn every_bad_input_is_an_error_not_a_panic() {
    // the diagnostics folder through the runtime API: each is a rendered Compile error
    let dir = workspace_root().join("tests/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "attn") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        // files named E0nnn_*: the rendering has that code; others: any error code
        let code = if stem.starts_with('E') {
            stem[..5].to_string()
        } else {
            "error[E".to_string()
        };
        let result =
            std::panic::catch_unwind(|| Compiled::from_source("bad.attn", &text).map(|_| ()));
        match result {
            Ok(Err(Error::Compile { rendered, .. })) => {
                assert!(
                    rendered.contains(&code),
                    "{}: no {code}:\n{rendered}",
                    path.display()
                );
                n += 1;
            }
            Ok(Ok(())) => {} // some bad inputs fail only at bind time
            Ok(Err(e)) => panic!("{}: unexpected error kind {e:?}", path.display()),
            Err(_) => panic!("{}: panicked", path.display()),
        }
    }
    assert!(n >= 30, "only {n} bad inputs rejected");
}

/// Bind options out of range are errors that name the value before anything is compiled,
/// allocated or spawned: a huge length or head dim, a non-finite scale, a thread count
/// past the pool limit (`1 << 20` used to try to spawn a million OS threads).
#[test]
fn out_of_range_bind_options_are_errors() {
    let v = example("causal", "causal_attention");
    for backend in [Backend::Reference, Backend::Cpu] {
        let err = |opts: BindOptions| match v.bind(opts) {
            Ok(_) => panic!("{backend:?}: expected an error"),
            Err(e) => e.to_string(),
        };
        for (what, shape) in [
            (
                "`Lq`",
                Shape {
                    lq: 1 << 40,
                    ..SHAPE
                },
            ),
            (
                "`Lkv`",
                Shape {
                    lkv: 1 << 40,
                    ..SHAPE
                },
            ),
            (
                "`D`",
                Shape {
                    d: 1 << 30,
                    dv: 1 << 30,
                    ..SHAPE
                },
            ),
        ] {
            let m = err(BindOptions::new(backend, shape, DType::F32));
            assert!(
                m.contains(what) && m.contains("exceeds the supported maximum"),
                "{backend:?}: {m}"
            );
        }
        for scale in [f32::NAN, f32::INFINITY] {
            let mut o = BindOptions::new(backend, SHAPE, DType::F32);
            o.scale = Some(scale);
            let m = err(o);
            assert!(m.contains("softmax scale must be a finite number"), "{m}");
        }
        let mut o = BindOptions::new(backend, SHAPE, DType::F32);
        o.threads = 1 << 20;
        let m = err(o);
        assert!(
            m.contains("`threads` = 1048576") && m.contains("maximum 1024"),
            "{m}"
        );
        let m = err(BindOptions::new(backend, SHAPE, DType::I32));
        assert!(m.contains("q, k and v") && m.contains("i32"), "{m}");
    }
}

/// Empty lengths are valid calls: Lq = 0 gives empty outputs (and zero dK, dV); Lkv = 0
/// makes every row fully masked (O = 0, LSE = -inf) and its backward gives dQ = 0 and
/// empty dK, dV (the CPU backward divided by zero there before).
#[test]
fn empty_lengths_give_empty_or_fully_masked_outputs() {
    let v = example("causal", "causal_attention");
    for backend in [Backend::Reference, Backend::Cpu] {
        let shape = Shape { lq: 0, ..SHAPE };
        let (q, k, vv) = synth::qkv(&shape, DType::F32, 1);
        let out = bound_at(&v, backend, shape)
            .forward(&q, &k, &vv, &Captures::default())
            .unwrap();
        assert_eq!(out.o.shape(), [2, 4, 0, 8]);
        assert_eq!(out.lse.shape(), [2, 4, 0]);
        let g = bound_at(&v, backend, shape)
            .backward(
                &q,
                &k,
                &vv,
                &out.o,
                &out.lse,
                &out.o,
                None,
                &Captures::default(),
            )
            .unwrap();
        assert_eq!(g.dq.shape(), [2, 4, 0, 8]);
        assert!(g.dk.to_f32().iter().all(|x| *x == 0.0), "{backend:?} dK");
        assert!(g.dv.to_f32().iter().all(|x| *x == 0.0), "{backend:?} dV");

        let shape = Shape { lkv: 0, ..SHAPE };
        let (q, k, vv) = synth::qkv(&shape, DType::F32, 1);
        let mut b = bound_at(&v, backend, shape);
        let out = b.forward(&q, &k, &vv, &Captures::default()).unwrap();
        assert_eq!(out.o.shape(), [2, 4, 7, 8]);
        assert!(out.o.to_f32().iter().all(|x| *x == 0.0), "{backend:?}");
        assert!(
            out.lse.to_f32().iter().all(|x| *x == f32::NEG_INFINITY),
            "{backend:?}"
        );
        let dout = synth::qkv(&SHAPE, DType::F32, 2).0;
        let g = b
            .backward(
                &q,
                &k,
                &vv,
                &out.o,
                &out.lse,
                &dout,
                None,
                &Captures::default(),
            )
            .unwrap();
        assert!(g.dq.to_f32().iter().all(|x| *x == 0.0), "{backend:?} dQ");
        assert_eq!(g.dk.shape(), [2, 2, 0, 8]);
        assert_eq!(g.dv.shape(), [2, 2, 0, 8]);
    }
}

fn bound_at(v: &attnc::Variant, backend: Backend, shape: Shape) -> Bound {
    v.bind(BindOptions::new(backend, shape, DType::F32))
        .unwrap()
}

/// i64 sequence lengths beyond the i32 range are refused by name, not wrapped: `1 << 40`
/// read as i32 used to become 0 (an empty sequence) and `(1 << 32) + 3` a length of 3.
#[test]
fn i64_seq_lens_out_of_the_i32_range_are_errors() {
    let v = example("causal", "causal_attention");
    let shape = Shape {
        b: 2,
        hq: 2,
        hkv: 1,
        lq: 1,
        lkv: 16,
        d: 8,
        dv: 8,
    };
    let q = Tensor::from_f32(vec![2, 2, 1, 8], &[0.5; 32]);
    let kv = Tensor::from_f32(vec![2, 1, 16, 8], &[0.25; 256]);
    for backend in [Backend::Reference, Backend::Cpu] {
        for bad in [1i64 << 40, (1 << 32) + 3, -(1 << 40)] {
            let seq_lens = Tensor::from_i64(vec![2], &[3, bad]);
            let cache = attnc::KvCache::Contiguous {
                k: &kv,
                v: &kv,
                seq_lens: &seq_lens,
            };
            let e = bound_at(&v, backend, shape)
                .forward_with_cache(&q, &cache, &Captures::default())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("E0322") && e.contains("seq_lens[1]"),
                "{backend:?} {bad}: {e}"
            );
        }
    }
}
