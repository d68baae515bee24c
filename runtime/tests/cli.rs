//! The `attnc` command-line tool end to end: `check` on every example and on a bad file,
//! `emit ir`, `demo` at a chosen head dim, and `run` through the reference and CPU backends on safetensors inputs,
//! compared with a dense attention computed here (masks written in Rust, f64 softmax),
//! independent of the compiler.

use attnc::io::{read_safetensors, write_safetensors};
use attnc::{DType, Shape, Tensor, synth};
use std::collections::BTreeMap;
use std::process::Command;

mod cli_util;
use cli_util::*;

#[test]
fn check_accepts_every_example() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 16);
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let out = attnc(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    for f in &files {
        assert!(t.contains(f.as_str()), "{f} not reported:\n{t}");
    }
}

#[test]
fn check_rejects_a_bad_file_with_code_and_span() {
    let out = attnc(&[
        "check",
        "examples/causal.attn",
        "tests/bad/E0201_mismatched_operands.attn",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("error[E0201]"), "{t}");
    assert!(
        t.contains("tests/bad/E0201_mismatched_operands.attn:2:31"),
        "{t}"
    );
    assert!(t.contains("s + (kv - q)") && t.contains("^^^^"), "{t}");
    // a file that does not exist is an error too, not a panic
    let out = attnc(&["check", "no/such/file.attn"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no/such/file.attn"));
}

#[test]
fn emit_ir() {
    let out = attnc(&["emit", "ir", "examples/causal.attn"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("attention causal_attention"), "{t}");
    assert!(t.contains("icmp.ge"), "{t}");
    // two attentions: --attention picks one; without it, every one or an error naming them
    let out = attnc(&[
        "emit",
        "ir",
        "examples/chunked.attn",
        "--attention",
        "chunked_causal",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chunked_causal"));
    // the CLIF of the CPU kernel
    let out = attnc(&["emit", "clif", "examples/causal.attn"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\nfunction "),
        "{}",
        text(&out)
    );
    let out = attnc(&["emit", "ir", "examples/chunked.attn", "--attention", "nope"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("nope"), "{}", text(&out));
}

#[test]
fn emit_ptx_names_the_kv_bounds_source() {
    // causal: loop bounds computed in the kernel from the closed form (no block table)
    let out = attnc(&["emit", "ptx", "examples/causal.attn"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.starts_with("// attnc: kv bounds: closed form (q - kv >= 0; computed in the kernel)\n"),
        "{}",
        &t[..t.len().min(300)]
    );
    assert!(t.contains(".visible .entry"));
    // chunked (floor division): the host-built block table
    let out = attnc(&[
        "emit",
        "llvm",
        "examples/chunked.attn",
        "--attention",
        "chunked",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.starts_with("; attnc: kv bounds: block table"),
        "{}",
        &t[..t.len().min(300)]
    );
}

/// Dense attention with a mask given as a Rust closure (b, h, q, kv) -> bool.
fn dense(
    s: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f64,
    mask: &dyn Fn(usize, usize, usize, usize) -> bool,
) -> (Vec<f32>, Vec<f32>) {
    let mut o = vec![0f32; s.b * s.hq * s.lq * s.dv];
    let mut lse = vec![f32::NEG_INFINITY; s.b * s.hq * s.lq];
    for b in 0..s.b {
        for h in 0..s.hq {
            let hk = h * s.hkv / s.hq;
            for i in 0..s.lq {
                let logits: Vec<Option<f64>> = (0..s.lkv)
                    .map(|j| {
                        mask(b, h, i, j).then(|| {
                            let qi = &q[((b * s.hq + h) * s.lq + i) * s.d..][..s.d];
                            let kj = &k[((b * s.hkv + hk) * s.lkv + j) * s.d..][..s.d];
                            scale
                                * qi.iter()
                                    .zip(kj)
                                    .map(|(x, y)| *x as f64 * *y as f64)
                                    .sum::<f64>()
                        })
                    })
                    .collect();
                let m = logits
                    .iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, |a, x| a.max(*x));
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = logits.iter().flatten().map(|x| (x - m).exp()).sum();
                let r = (b * s.hq + h) * s.lq + i;
                lse[r] = (m + z.ln()) as f32;
                for c in 0..s.dv {
                    let mut acc = 0f64;
                    for (j, l) in logits.iter().enumerate() {
                        if let Some(l) = l {
                            acc += (l - m).exp() / z
                                * v[((b * s.hkv + hk) * s.lkv + j) * s.dv + c] as f64;
                        }
                    }
                    o[r * s.dv + c] = acc as f32;
                }
            }
        }
    }
    (o, lse)
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let ok = x == y || (x - y).abs() <= tol;
        assert!(ok, "{what}[{i}]: got {x}, want {y}");
    }
}

/// Writes q/k/v (+ extra tensors), runs `attnc run` with each backend, compares o/lse.
#[allow(clippy::too_many_arguments)]
fn run_case(
    tag: &str,
    file: &str,
    attention: &str,
    shape: Shape,
    extra: Vec<(&str, Tensor)>,
    flags: &[&str],
    scale: f64,
    mask: &dyn Fn(usize, usize, usize, usize) -> bool,
) {
    let dir = tmpdir(tag);
    let (q, k, v) = synth::qkv(&shape, DType::F32, 42);
    let want = dense(&shape, &q.to_f32(), &k.to_f32(), &v.to_f32(), scale, mask);
    let mut inputs = BTreeMap::new();
    inputs.insert("q".to_string(), q);
    inputs.insert("k".to_string(), k);
    inputs.insert("v".to_string(), v);
    for (n, t) in extra {
        inputs.insert(n.to_string(), t);
    }
    let input = dir.join("in.safetensors");
    write_safetensors(&input, &inputs).unwrap();
    assert!(want.1.iter().any(|x| x.is_finite()));
    for backend in ["reference", "cpu"] {
        let output = dir.join(format!("out-{backend}.safetensors"));
        let (i, o) = (input.display().to_string(), output.display().to_string());
        let mut args = vec![
            "run",
            file,
            "--attention",
            attention,
            "--inputs",
            &i,
            "--output",
            &o,
            "--backend",
            backend,
        ];
        args.extend_from_slice(flags);
        let out = attnc(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{tag} {backend}: {}",
            text(&out)
        );
        let got = read_safetensors(&output).unwrap();
        let (go, gl) = (&got["o"], &got["lse"]);
        assert_eq!(go.shape(), &[shape.b, shape.hq, shape.lq, shape.dv]);
        assert_eq!(gl.shape(), &[shape.b, shape.hq, shape.lq]);
        assert_eq!(go.dtype(), DType::F32);
        // 1e-4: the CPU tolerance of the differential suite (f32 accumulation)
        close(&format!("{tag} {backend} o"), &go.to_f32(), &want.0, 1e-4);
        close(&format!("{tag} {backend} lse"), &gl.to_f32(), &want.1, 1e-4);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_causal_gqa_cross_attention() {
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 13,
        lkv: 29,
        d: 16,
        dv: 8,
    };
    run_case(
        "causal",
        "examples/causal.attn",
        "causal_attention",
        shape,
        vec![],
        &[],
        0.25,
        &|_, _, q, kv| q >= kv,
    );
}

#[test]
fn run_with_param_and_explicit_scale() {
    // sliding window 5 (q - kv <= 5, causal), scale 0.5
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 37,
        lkv: 37,
        d: 32,
        dv: 32,
    };
    run_case(
        "sliding",
        "examples/sliding_window.attn",
        "sliding_window",
        shape,
        vec![],
        &["--param", "window=5", "--scale", "0.5"],
        0.5,
        &|_, _, q, kv| q >= kv && q - kv <= 5,
    );
}

#[test]
fn run_with_captured_tensor() {
    // documents per batch: batch 0 [0;10 | 1;..], batch 1 [0;3 | 1;20 | 2;..]
    let shape = Shape {
        b: 2,
        hq: 2,
        hkv: 2,
        lq: 31,
        lkv: 31,
        d: 8,
        dv: 8,
    };
    let doc = |b: usize, i: usize| -> i32 {
        if b == 0 {
            (i >= 10) as i32
        } else {
            (i >= 3) as i32 + (i >= 20) as i32
        }
    };
    let data: Vec<i32> = (0..2 * 31).map(|x| doc(x / 31, x % 31)).collect();
    run_case(
        "document",
        "examples/document_causal.attn",
        "document_causal",
        shape,
        vec![("doc", Tensor::from_i32(vec![2, 31], &data))],
        &[],
        1.0 / 8f64.sqrt(),
        &|b, _, q, kv| q >= kv && doc(b, q) == doc(b, kv),
    );
}

#[test]
fn run_reports_a_missing_capture_and_a_bad_input_file() {
    let dir = tmpdir("errors");
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 4,
        lkv: 4,
        d: 4,
        dv: 4,
    };
    let inputs = qkv_inputs(&shape, 1);
    let input = dir.join("in.safetensors");
    write_safetensors(&input, &inputs).unwrap();
    let (i, o) = (
        input.display().to_string(),
        dir.join("out.safetensors").display().to_string(),
    );
    let out = attnc(&[
        "run",
        "examples/document_causal.attn",
        "--attention",
        "document_causal",
        "--inputs",
        &i,
        "--output",
        &o,
        "--backend",
        "reference",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let t = text(&out);
    assert!(t.contains("doc") && t.contains("E0303"), "{t}");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"garbage").unwrap();
    let g = garbage.display().to_string();
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--inputs",
        &g,
        "--output",
        &o,
        "--backend",
        "cpu",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("garbage.safetensors"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn jit_tier_settings_are_checked() {
    // a bad flag value is a usage error naming the accepted values (no GPU needed)
    let out = attnc(&[
        "bench",
        "examples/causal.attn",
        "--backend",
        "cuda",
        "--dtype",
        "bf16",
        "--jit-tiers",
        "fast",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expected off, on"), "{}", text(&out));
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--inputs",
        "x.safetensors",
        "--output",
        "y.safetensors",
        "--jit-tiers",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("level 0-3"), "{}", text(&out));
    // a bad ATTNC_JIT_TIERS is reported as such, before any device is opened
    let out = Command::new(env!("CARGO_BIN_EXE_attnc"))
        .args([
            "bench",
            "examples/causal.attn",
            "--backend",
            "cuda",
            "--dtype",
            "bf16",
            "--lq",
            "64",
            "--h",
            "1",
        ])
        .env("ATTNC_JIT_TIERS", "sometimes")
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("ATTNC_JIT_TIERS: `sometimes` is not a JIT tier setting"),
        "{}",
        text(&out)
    );
    // valid values parse (then the run fails only for want of a GPU or input file)
    for v in ["off", "on", "0", "3"] {
        let out = attnc(&[
            "run",
            "examples/causal.attn",
            "--inputs",
            "/nonexistent.safetensors",
            "--output",
            "y.safetensors",
            "--jit-tiers",
            v,
        ]);
        assert_eq!(out.status.code(), Some(1), "{v}: {}", text(&out));
        assert!(text(&out).contains("nonexistent"), "{v}: {}", text(&out));
    }
}

#[test]
fn emit_ptx_reports_codegen_stages() {
    let out = attnc(&["emit", "ptx", "examples/causal.attn", "--d", "64", "--time"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("codegen")
            && err.contains("llvm build")
            && err.contains("opt")
            && err.contains("ptx"),
        "{err}"
    );
    let ptx = String::from_utf8_lossy(&out.stdout);
    assert!(ptx.contains(".visible .entry"), "PTX on stdout");
    assert!(!ptx.contains("codegen"), "timings go to stderr only");
}

#[test]
fn demo_takes_a_head_dim_and_rejects_bad_ones() {
    let o = attnc(&["demo", "examples", "--d", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--d 0"), "{}", text(&o));
    let o = attnc(&["demo", "examples", "--d", "48"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("D48") && t.contains(" 0 failed"), "{t}");
}

/// `attnc run --kv-cache contiguous|paged` (issue 12's CLI): q, k_cache, v_cache, seq_lens
/// (+ page_table) in, o and lse out, on the reference and CPU backends, against the dense
/// attention of each sequence's live keys at logical positions (row i of sequence b at
/// `seq_lens[b] - Lq + i`, causal), seq_lens 29, 0 and 2 (< Lq: a row that does not
/// exist gives O = 0, LSE = -inf); the paged cache holds the same keys in shuffled pages
/// with NaN in every page slot past a sequence and in an unused page. Errors name the
/// tensor: a paged cache without `page_table`, a length beyond the capacity (E0322).
#[test]
fn run_kv_cache_contiguous_and_paged() {
    let (b, hq, hkv, lq, d, cap, page) = (3, 4, 2, 3, 16, 48, 16);
    let seq_lens = [29i32, 0, 2];
    let shape = Shape {
        b,
        hq,
        hkv,
        lq,
        lkv: cap,
        d,
        dv: d,
    };
    let (q, k, v) = synth::qkv(&shape, DType::F32, 7);
    let (kf, vf) = (k.to_f32(), v.to_f32());
    let mask = |b: usize, _h: usize, i: usize, kv: usize| {
        let n = seq_lens[b] as i64;
        let pos = n - lq as i64 + i as i64;
        (kv as i64) < n && pos >= kv as i64
    };
    let want = dense(&shape, &q.to_f32(), &kf, &vf, 0.25, &mask);
    // paged: [num_pages, page, Hkv, D], logical page p of sequence b at id table[b][p]
    let max_pages = cap / page;
    let num_pages = b * max_pages + 1;
    let ids: Vec<i32> = (0..(b * max_pages) as i32)
        .map(|i| (i * 5 + 3) % (b * max_pages) as i32)
        .collect();
    let mut kp = vec![f32::NAN; num_pages * page * hkv * d];
    let mut vp = kp.clone();
    for bi in 0..b {
        for j in 0..seq_lens[bi] as usize {
            let id = ids[bi * max_pages + j / page] as usize;
            for hk in 0..hkv {
                let src = ((bi * hkv + hk) * cap + j) * d;
                let dst = ((id * page + j % page) * hkv + hk) * d;
                kp[dst..dst + d].copy_from_slice(&kf[src..src + d]);
                vp[dst..dst + d].copy_from_slice(&vf[src..src + d]);
            }
        }
    }
    let dir = tmpdir("kv_cache");
    let mut contiguous = BTreeMap::new();
    contiguous.insert("q".to_string(), q.clone());
    contiguous.insert("k_cache".to_string(), k);
    contiguous.insert("v_cache".to_string(), v);
    contiguous.insert("seq_lens".to_string(), Tensor::from_i32(vec![b], &seq_lens));
    let mut paged = BTreeMap::new();
    paged.insert("q".to_string(), q);
    let pshape = vec![num_pages, page, hkv, d];
    paged.insert("k_cache".to_string(), Tensor::from_f32(pshape.clone(), &kp));
    paged.insert("v_cache".to_string(), Tensor::from_f32(pshape, &vp));
    paged.insert("seq_lens".to_string(), Tensor::from_i32(vec![b], &seq_lens));
    paged.insert(
        "page_table".to_string(),
        Tensor::from_i32(vec![b, max_pages], &ids),
    );
    for (layout, inputs) in [("contiguous", &contiguous), ("paged", &paged)] {
        let input = dir.join(format!("{layout}.safetensors"));
        write_safetensors(&input, inputs).unwrap();
        for backend in ["reference", "cpu"] {
            let output = dir.join(format!("out-{layout}-{backend}.safetensors"));
            let (i, o) = (input.display().to_string(), output.display().to_string());
            let out = attnc(&[
                "run",
                "examples/causal.attn",
                "--kv-cache",
                layout,
                "--inputs",
                &i,
                "--output",
                &o,
                "--backend",
                backend,
            ]);
            let what = format!("{layout} {backend}");
            assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out));
            let got = read_safetensors(&output).unwrap();
            let (go, gl) = (&got["o"], &got["lse"]);
            assert_eq!(go.shape(), &[b, hq, lq, d], "{what}");
            assert_eq!(gl.shape(), &[b, hq, lq], "{what}");
            close(&format!("{what} o"), &go.to_f32(), &want.0, 1e-4);
            close(&format!("{what} lse"), &gl.to_f32(), &want.1, 1e-4);
        }
    }
    // a paged cache without its table; a length beyond the capacity
    let mut no_table = paged.clone();
    no_table.remove("page_table");
    let mut too_long = contiguous.clone();
    too_long.insert(
        "seq_lens".to_string(),
        Tensor::from_i32(vec![b], &[29, cap as i32 + 1, 2]),
    );
    for (layout, inputs, needle) in [
        ("paged", no_table, "page_table"),
        ("contiguous", too_long, "E0322"),
    ] {
        let input = dir.join(format!("bad-{needle}.safetensors"));
        write_safetensors(&input, &inputs).unwrap();
        let output = dir.join("bad-out.safetensors");
        let (i, o) = (input.display().to_string(), output.display().to_string());
        let out = attnc(&[
            "run",
            "examples/causal.attn",
            "--kv-cache",
            layout,
            "--inputs",
            &i,
            "--output",
            &o,
            "--backend",
            "cpu",
        ]);
        let t = text(&out);
        assert_ne!(out.status.code(), Some(0), "{needle}: {t}");
        assert!(t.contains(needle), "{needle}: {t}");
        if needle == "E0322" {
            assert!(t.contains("seq_lens"), "{t}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
