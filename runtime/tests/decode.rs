//! Decoding against a KV cache (`Bound::forward_with_cache`), CPU and oracle.
//!
//! - The cache oracle (`attnc_compiler::decode::reference`, run by the Reference
//!   backend) against the plain prefill oracle: a sequence's last Lq rows of a prefill
//!   over its n tokens equal decoding those rows against the cached n tokens (contiguous
//!   and paged with a shuffled table).
//! - The CPU split-KV path against the cache oracle for every example, Lq 1/2/4/16, odd
//!   lengths, seq_lens varying across the batch (0, 1, short of Lq, full), contiguous
//!   and paged caches (page 16 and 32, shuffled tables), GQA 1:1 to 8:1, several thread
//!   counts (the split changes, the result must not beyond rounding).
//! - Paged caches (pages 16/32/128) give the bits of a contiguous cache with the same
//!   logical K/V: one kernel reads both in place.
//! - Validation: E0320..E0323 name the tensor; fast mode clamps bad page ids.
//! - Checked mode reports an out-of-range captured-tensor read at logical positions.

use attnc::{
    Backend, BindOptions, Captures, Compiled, DType, Error, KvCache, ParamValue, Shape, Tensor,
};
mod decode_util;

use decode_util::*;

/// The cache oracle agrees with the prefill oracle on each sequence's last rows.
#[test]
fn cache_oracle_matches_prefill_oracle() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for name in [
        "causal",
        "sliding_window",
        "alibi",
        "document_causal",
        "dense",
    ] {
        let compiled = example(name);
        let variant = compiled.attention(compiled.names()[0]).unwrap();
        for page in [None, Some(16)] {
            let (b, hq, hkv, lq, d, cap) = (3, 4, 2, 3, 8, 40);
            let seq_lens = vec![37, 2, 40];
            let c = case(&mut rng, b, hq, hkv, lq, d, cap, seq_lens.clone(), page);
            let shape = c.bind_shape();
            let pcap = c.shape.capacity();
            let logical = Shape { lq: pcap, ..shape };
            let captures = attnc::synth::captures(variant.program(), &logical, 7);
            let got = run(
                &compiled,
                variant.name(),
                &c,
                Backend::Reference,
                1,
                &captures,
                false,
            )
            .unwrap();
            let (go, gl) = (got.o.to_f32(), got.lse.to_f32());
            for (bi, &n) in seq_lens.iter().enumerate() {
                let n = n as usize;
                // prefill of sequence bi alone over its n tokens, with q rows placed at
                // the last positions (the others random)
                let pre = Shape {
                    b: 1,
                    hq,
                    hkv,
                    lq: n,
                    lkv: n,
                    d,
                    dv: d,
                };
                let mut qf = rng.vec(hq * n * d);
                let qs = c.q.to_f32();
                let rows = lq.min(n);
                for h in 0..hq {
                    for r in 0..rows {
                        let src = ((bi * hq + h) * lq + lq - rows + r) * d;
                        let dst = (h * n + n - rows + r) * d;
                        qf[dst..dst + d].copy_from_slice(&qs[src..src + d]);
                    }
                }
                let slice = |x: &[f32]| {
                    let mut out = Vec::new();
                    for h in 0..hkv {
                        let at = (bi * hkv + h) * cap * d;
                        out.extend_from_slice(&x[at..at + n * d]);
                    }
                    Tensor::from_f32(vec![1, hkv, n, d], &out)
                };
                // captures of sequence bi: batch row bi, positions 0..n (the prefill
                // binding's Q and KV are n long)
                let mut pc = Captures {
                    params: captures.params.clone(),
                    ..Default::default()
                };
                for (tn, t) in &captures.tensors {
                    let dims = t.shape().to_vec();
                    assert_eq!(dims, vec![b, pcap], "{name}: test handles [B, KV] only");
                    let data = t.to_i32();
                    pc.tensors.insert(
                        tn.clone(),
                        Tensor::from_i32(vec![1, n], &data[bi * pcap..bi * pcap + n]),
                    );
                }
                let mut opts = BindOptions::new(Backend::Reference, pre, DType::F32);
                opts.threads = 1;
                let mut bound = variant.bind(opts).unwrap();
                let want = bound
                    .forward(
                        &Tensor::from_f32(vec![1, hq, n, d], &qf),
                        &slice(&c.logical_k),
                        &slice(&c.logical_v),
                        &pc,
                    )
                    .unwrap();
                let (wo, wl) = (want.o.to_f32(), want.lse.to_f32());
                for h in 0..hq {
                    for r in 0..lq {
                        let row = (bi * hq + h) * lq + r;
                        if r < lq - rows {
                            assert_eq!(gl[row], f32::NEG_INFINITY, "{name}: missing row");
                            assert!(go[row * d..(row + 1) * d].iter().all(|x| *x == 0.0));
                            continue;
                        }
                        let prow = h * n + (n - rows) + (r - (lq - rows));
                        close(
                            &format!("{name} {page:?} b{bi} h{h} r{r} o"),
                            &go[row * d..(row + 1) * d],
                            &wo[prow * d..(prow + 1) * d],
                            1e-5,
                        );
                        close(
                            &format!("{name} {page:?} b{bi} h{h} r{r} lse"),
                            &gl[row..row + 1],
                            &wl[prow..prow + 1],
                            1e-5,
                        );
                    }
                }
            }
        }
    }
}

/// The CPU split-KV path against the cache oracle on every example.
#[test]
fn cpu_decode_matches_oracle_on_every_example() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let configs = [
        // (lq, hq, hkv, d, cap, seq_lens, page)
        (1, 8, 1, 16, 300, vec![300, 0, 1, 171], None),
        (2, 4, 4, 32, 97, vec![97, 5, 1, 64], Some(16)),
        (4, 8, 2, 16, 200, vec![3, 200, 129, 0], Some(32)),
        (16, 8, 8, 16, 70, vec![70, 16, 9, 33], Some(16)),
    ];
    for name in examples() {
        let compiled = example(&name);
        for program in compiled.names() {
            let variant = compiled.attention(program).unwrap();
            for (ci, (lq, hq, hkv, d, cap, seq_lens, page)) in configs.iter().enumerate() {
                let c = case(
                    &mut rng,
                    seq_lens.len(),
                    *hq,
                    *hkv,
                    *lq,
                    *d,
                    *cap,
                    seq_lens.clone(),
                    *page,
                );
                let logical = Shape {
                    lq: c.shape.capacity(),
                    ..c.bind_shape()
                };
                let mut captures =
                    attnc::synth::captures(variant.program(), &logical, 11 + ci as u64);
                for (pn, v) in captures.params.iter_mut() {
                    if let ParamValue::I32(_) = v {
                        // windows / sizes in the range of the lengths
                        *v = ParamValue::I32(if pn.contains("window") { 23 } else { 8 });
                    }
                }
                let want = run(
                    &compiled,
                    program,
                    &c,
                    Backend::Reference,
                    1,
                    &captures,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}/{program} config {ci}: oracle: {e}"));
                for threads in [1, 3] {
                    let got = run(
                        &compiled,
                        program,
                        &c,
                        Backend::Cpu,
                        threads,
                        &captures,
                        false,
                    )
                    .unwrap_or_else(|e| panic!("{name}/{program} config {ci}: cpu: {e}"));
                    let what = format!("{name}/{program} config {ci} threads {threads}");
                    close_o_lse(&what, &got, &want, 2e-4);
                }
            }
        }
    }
}

/// Long sequences split into several chunks per sequence (threads > 1), sliding window.
#[test]
fn cpu_decode_splits_long_sequences() {
    let mut rng = Rng(42);
    let compiled = example("sliding_window");
    let name = compiled.names()[0].to_string();
    let c = case(&mut rng, 2, 8, 2, 4, 32, 3000, vec![3000, 2049], Some(64));
    for window in [100, 5000] {
        let captures = Captures::default().param("window", ParamValue::I32(window));
        let want = run(
            &compiled,
            &name,
            &c,
            Backend::Reference,
            1,
            &captures,
            false,
        )
        .unwrap();
        let got = run(&compiled, &name, &c, Backend::Cpu, 4, &captures, false).unwrap();
        close_o_lse("decode", &got, &want, 2e-4);
    }
}

/// Lq 16 with several chunks per sequence, contiguous and paged: a packed tile of one q
/// block (GQA 4:1, chunks uncapped for a contiguous cache) and of two (8:1, capped),
/// lengths 0, 1, odd and long, 1-3 threads (the split and the parallel combine change,
/// the result must not beyond rounding), causal and sliding window.
#[test]
fn cpu_decode_lq16_long_chunks() {
    let mut rng = Rng(0x16);
    for (file, captures) in [
        ("causal", Captures::default()),
        (
            "sliding_window",
            Captures::default().param("window", ParamValue::I32(700)),
        ),
    ] {
        let compiled = example(file);
        let name = compiled.names()[0].to_string();
        for (hq, hkv) in [(8, 2), (16, 2)] {
            for page in [None, Some(16)] {
                let lens = vec![2100, 0, 1, 1537];
                let c = case(&mut rng, 4, hq, hkv, 16, 32, 2100, lens, page);
                let want = run(
                    &compiled,
                    &name,
                    &c,
                    Backend::Reference,
                    1,
                    &captures,
                    false,
                )
                .unwrap();
                for threads in [1, 2, 3] {
                    let got = run(
                        &compiled,
                        &name,
                        &c,
                        Backend::Cpu,
                        threads,
                        &captures,
                        false,
                    )
                    .unwrap();
                    let what = format!("{file} Hq{hq} Hkv{hkv} page {page:?} threads {threads}");
                    close_o_lse(&what, &got, &want, 2e-4);
                }
            }
        }
    }
}

/// A paged cache is read in place through the same kernel, chunks and combine as a
/// contiguous one: the same logical K/V give the same bits in both layouts, for pages
/// smaller and larger than the kernel's kv block (16, 32, 128: a block spans pages, a
/// page spans blocks), shuffled tables, lengths 0/1/odd, Lq 1 and 4, GQA 4:1 and 8:1,
/// 1 and 3 threads, causal and sliding window; and both agree with the oracle.
#[test]
fn cpu_decode_paged_gives_the_contiguous_bits() {
    for (file, captures) in [
        ("causal", Captures::default()),
        (
            "sliding_window",
            Captures::default().param("window", ParamValue::I32(300)),
        ),
    ] {
        let compiled = example(file);
        let name = compiled.names()[0].to_string();
        for (lq, hq, hkv) in [(1, 8, 2), (4, 16, 2)] {
            let lens = vec![1000, 0, 1, 777, 64];
            let make = |page| {
                case(
                    &mut Rng(0x9a9e),
                    5,
                    hq,
                    hkv,
                    lq,
                    32,
                    1000,
                    lens.clone(),
                    page,
                )
            };
            let contiguous = make(None);
            let want = run(
                &compiled,
                &name,
                &contiguous,
                Backend::Reference,
                1,
                &captures,
                false,
            )
            .unwrap();
            for threads in [1, 3] {
                let cpu = |c: &decode_util::Case| {
                    run(&compiled, &name, c, Backend::Cpu, threads, &captures, false).unwrap()
                };
                let base = cpu(&contiguous);
                let what = format!("{file} Lq{lq} Hq{hq} Hkv{hkv} threads {threads}");
                close_o_lse(&what, &base, &want, 2e-4);
                for page in [16, 32, 128] {
                    let got = cpu(&make(Some(page)));
                    let bits =
                        |t: &Tensor| t.to_f32().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(&got.o) == bits(&base.o) && bits(&got.lse) == bits(&base.lse),
                        "{what} page {page}: paged and contiguous differ"
                    );
                }
            }
        }
    }
}

fn cache_err(r: attnc::Result<attnc::Output>) -> (String, String) {
    match r {
        Err(Error::Cache {
            code,
            tensor,
            message,
        }) => (format!("{code} {tensor}"), message),
        Err(e) => panic!("expected a cache error, got {e}"),
        Ok(_) => panic!("expected a cache error, got a result"),
    }
}

#[test]
fn bad_caches_are_errors_naming_the_tensor() {
    let mut rng = Rng(5);
    let compiled = example("causal");
    let causal = compiled.names()[0].to_string();
    let c = case(&mut rng, 2, 4, 2, 1, 16, 64, vec![64, 10], Some(16));
    let none = Captures::default();
    // seq_lens beyond the table
    let long = Case {
        seq_lens: vec![65, 1],
        ..case(&mut rng, 2, 4, 2, 1, 16, 64, vec![64, 10], Some(16))
    };
    let (what, msg) = cache_err(run(
        &compiled,
        &causal,
        &long,
        Backend::Cpu,
        1,
        &none,
        false,
    ));
    assert_eq!(what, "E0322 seq_lens", "{msg}");
    let neg = Case {
        seq_lens: vec![-1, 1],
        ..case(&mut rng, 2, 4, 2, 1, 16, 64, vec![64, 10], None)
    };
    assert_eq!(
        cache_err(run(&compiled, &causal, &neg, Backend::Cpu, 1, &none, false)).0,
        "E0322 seq_lens"
    );
    // invalid page id in a used page: checked mode reports it; fast mode clamps
    let mut bad = case(&mut rng, 2, 4, 2, 1, 16, 64, vec![64, 10], Some(16));
    let mut t = bad.page_table.as_ref().unwrap().to_i32();
    t[4] = 99; // sequence 1, page 0
    bad.page_table = Some(Tensor::from_i32(vec![2, 4], &t));
    let (what, msg) = cache_err(run(&compiled, &causal, &bad, Backend::Cpu, 1, &none, true));
    assert_eq!(what, "E0323 page_table", "{msg}");
    assert!(msg.contains("page_table[1, 0]"), "{msg}");
    let fast = run(&compiled, &causal, &bad, Backend::Cpu, 1, &none, false).unwrap();
    assert!(fast.o.to_f32().iter().all(|x| x.is_finite() || x.is_nan()));
    // page size not a power of two
    let k = Tensor::from_f32(vec![4, 24, 2, 16], &vec![0.0; 4 * 24 * 2 * 16]);
    let pt = Tensor::from_i32(vec![2, 2], &[0, 1, 2, 3]);
    let sl = Tensor::from_i32(vec![2], &[1, 1]);
    let variant = compiled.attention(&causal).unwrap();
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 1,
        lkv: 48,
        d: 16,
        dv: 16,
    };
    let mut bound = variant
        .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
        .unwrap();
    let cache = KvCache::Paged {
        k_cache: &k,
        v_cache: &k,
        page_table: &pt,
        seq_lens: &sl,
    };
    let (what, msg) = cache_err(bound.forward_with_cache(&c.q, &cache, &none));
    assert_eq!(what, "E0321 k_cache", "{msg}");
    // wrong shapes
    let v_bad = Tensor::from_f32(vec![4, 16, 2, 8], &vec![0.0; 4 * 16 * 2 * 8]);
    let k16 = Tensor::from_f32(vec![4, 16, 2, 16], &vec![0.0; 4 * 16 * 2 * 16]);
    let shape = Shape { lkv: 32, ..shape };
    let mut bound = variant
        .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
        .unwrap();
    let cache = KvCache::Paged {
        k_cache: &k16,
        v_cache: &v_bad,
        page_table: &pt,
        seq_lens: &sl,
    };
    let (what, msg) = cache_err(bound.forward_with_cache(&c.q, &cache, &none));
    assert_eq!(what, "E0320 v_cache", "{msg}");
    // capacity differs from the binding's Lkv
    let shape = Shape { lkv: 40, ..shape };
    let mut bound = variant
        .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
        .unwrap();
    let cache = KvCache::Paged {
        k_cache: &k16,
        v_cache: &k16,
        page_table: &pt,
        seq_lens: &sl,
    };
    let (what, msg) = cache_err(bound.forward_with_cache(&c.q, &cache, &none));
    assert_eq!(what, "E0320 page_table", "{msg}");
}

/// Checked mode reports a captured tensor read out of range at logical positions.
#[test]
fn checked_mode_reports_reads_at_logical_positions() {
    let src =
        "tensor t: i32[B, 50]; mask m(b, h, q, kv) { t[b, kv] == 0 } attention a { mask = m; }";
    let compiled = Compiled::from_source("t.attn", src).unwrap();
    let mut rng = Rng(9);
    let c = case(&mut rng, 2, 2, 1, 1, 16, 64, vec![30, 60], None);
    let captures = Captures::default().tensor("t", Tensor::from_i32(vec![2, 50], &[0; 100]));
    for backend in [Backend::Reference, Backend::Cpu] {
        let e = run(&compiled, "a", &c, backend, 2, &captures, true).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("[1, 50]"), "{backend:?}: {text}");
    }
}
