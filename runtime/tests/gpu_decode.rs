//! GPU decoding tests: `Bound::forward_with_cache` on the CUDA backend against the f64
//! cache oracle (the Reference backend on the same rounded inputs), through the split-KV
//! decode kernels + combine kernel (`backend::llvm::decode`: SIMT, `decode_mma`: tensor
//! cores; each case asserts the kernel that `decode::gpu::choose` picks for its shape
//! ran: the tensor-core one at D 64/128, the SIMT one at D 32/256, or the one
//! `ATTNC_DECODE_KERNEL=simt|mma` forces, so one binary run with `simt` covers the SIMT
//! kernel on every shape; Lq > 16, chunked prefill, always the tensor-core one) and, for
//! checked mode and Lq > 16 at D 32, the prefill path.
//!
//! Covered: every example (its own mask and score at logical positions, captures and
//! params) on both kernels, contiguous and paged caches (page 16 and 128, shuffled
//! tables, garbage pages and NaN past each sequence, which must never be read), Lq
//! 1/2/4/16, GQA 1:1 / 4:1 / 8:1, D 64 and 128, bf16 and f16, 1, 2 and 4 m-tiles per CTA
//! and several row groups, seq_lens 0, 1, shorter than Lq and full, long sequences split
//! across many CTAs (sliding window reading only its window); the caller-buffer decode
//! (`decode_cuda_into`: the decode-ranges kernel first); the launches on sm_90 (decode
//! and combine kernels by programmatic dependent launch, the default, against serial
//! launches and the fused kernel: bit for bit equal, deterministic); the per-CTA records
//! of `ATTNC_DECODE_COPY` letter `l` (`gpu_decode_trace`). With
//! `ATTNC_DECODE_COMBINE=fused` the tensor-core cases run the fused kernel (the combine
//! folded in) instead; with `ATTNC_DECODE_COPY=abc` (or any letters of `abcdef`) they run
//! that copy variant of the tensor-core kernel (`gpu_decode_copy_variants` compares the
//! variants with each other; `f`: a call with one split writes O and LSE from the
//! kernel, no combine kernel — `ATTNC_DECODE_SPLITS=1` makes every tensor-core case one).
//!
//! `harness = false`, like `gpu.rs`, run by libtest-mimic (`gpu_util::run_gpu_tests`):
//! libtest's filters, `--exact`, `--skip`, `--list` and summary line; without a CUDA
//! device each test prints `SKIPPED (no CUDA device)` and counts as ignored.
//!
//! Tolerance (inputs rounded to bf16/f16 for both sides; the kernel's P·V is f32):
//! |O - O_ref| <= t (1 + |O_ref|) with t = 0.02 (bf16: O is rounded to bf16) or 0.005
//! (f16); |LSE - LSE_ref| <= 0.002 (1 + |LSE_ref|); -inf must match exactly; NaN fails.

mod decode_util;
mod gpu_util;

use attnc::cuda::CudaDevice;
use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape};
use decode_util::*;

/// The path `forward_with_cache` takes for a shape (`decode::gpu::choose`; every G x Lq
/// takes the same kernel, the arguments say which shape is meant).
fn expected_path(_lq: usize, _hq: usize, _hkv: usize, d: usize) -> &'static str {
    let fits = d == 64 || d == 128;
    match attnc::DecodeTuning::from_env().kernel {
        Some(attnc::DecodeKernel::Simt) => "split-kv",
        _ if fits => "split-kv-mma",
        _ => "split-kv",
    }
}

/// The path of the chunked tests' calls: the split-KV kernel (their sequences all differ
/// in length, so batched runs of the prefill kernel lose by the rule), or the prefill
/// kernel under `ATTNC_DECODE_PREFILL=1`.
fn chunked_path() -> &'static str {
    match attnc::DecodeTuning::from_env().prefill {
        Some(true) => "prefill",
        _ => "split-kv-mma",
    }
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::BF16 { 0.02 } else { 0.005 }
}

/// Runs `c` on CUDA and on the oracle; compares; returns the CUDA path taken.
fn check(compiled: &Compiled, name: &str, c: &Case, caps: &Captures, what: &str) -> String {
    check_mode(compiled, name, c, caps, what, false)
}

/// [`check`] in checked (`true`) or fast mode.
fn check_mode(
    compiled: &Compiled,
    name: &str,
    c: &Case,
    caps: &Captures,
    what: &str,
    checked: bool,
) -> String {
    check_with(compiled, name, c, caps, what, |o| o.checked = checked)
}

/// [`check`] with the binding's options adjusted by `adjust`.
fn check_with(
    compiled: &Compiled,
    name: &str,
    c: &Case,
    caps: &Captures,
    what: &str,
    adjust: impl Fn(&mut BindOptions),
) -> String {
    let variant = compiled.attention(name).unwrap();
    let want = run(compiled, name, c, Backend::Reference, 1, caps, false)
        .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
    let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
    adjust(&mut o);
    let mut bound = variant.bind(o).unwrap();
    let got = bound
        .forward_with_cache(&c.q, &c.cache(), caps)
        .unwrap_or_else(|e| panic!("{what}: cuda: {e}"));
    close(
        &format!("{what} o"),
        &got.o.to_f32(),
        &want.o.to_f32(),
        tol(c.dtype),
    );
    close(
        &format!("{what} lse"),
        &got.lse.to_f32(),
        &want.lse.to_f32(),
        0.002,
    );
    bound.cache_path().unwrap_or("none").to_string()
}

fn captures_for(variant: &attnc::Variant, c: &Case, seed: u64) -> Captures {
    let logical = Shape {
        lq: c.shape.capacity(),
        ..c.bind_shape()
    };
    let mut caps = attnc::synth::captures(variant.program(), &logical, seed);
    for (pn, v) in caps.params.iter_mut() {
        if let ParamValue::I32(_) = v {
            *v = ParamValue::I32(if pn.contains("window") { 37 } else { 8 });
        }
    }
    caps
}

/// Every example, contiguous and paged, two shapes.
fn gpu_decode_examples(_d: &CudaDevice) {
    let mut rng = Rng(0xdec0de);
    let configs = [
        // (lq, hq, hkv, d, cap, seq_lens, page, dtype)
        (
            1,
            8,
            2,
            128,
            300,
            vec![300, 0, 1, 171],
            Some(16),
            DType::BF16,
        ),
        (4, 8, 2, 64, 200, vec![3, 200, 129, 77], None, DType::F16),
        (
            16,
            32,
            8,
            128,
            333,
            vec![333, 1, 0, 16, 250],
            Some(128),
            DType::BF16,
        ),
        (2, 16, 2, 128, 129, vec![129, 2, 70], Some(16), DType::F16),
    ];
    // ATTNC_DECODE_TEST_EXAMPLES=causal,dense,..: only those examples (a short device run
    // of a new variant on the examples whose kernels it changes)
    let pick = std::env::var("ATTNC_DECODE_TEST_EXAMPLES").ok();
    for name in examples() {
        if pick
            .as_deref()
            .is_some_and(|p| !p.split(',').any(|x| x.trim() == name))
        {
            continue;
        }
        let compiled = example(&name);
        for program in compiled.names() {
            let variant = compiled.attention(program).unwrap();
            for (ci, (lq, hq, hkv, d, cap, sl, page, dtype)) in configs.iter().enumerate() {
                let c = case_as(
                    *dtype,
                    &mut rng,
                    sl.len(),
                    *hq,
                    *hkv,
                    *lq,
                    *d,
                    *cap,
                    sl.clone(),
                    *page,
                );
                let caps = captures_for(&variant, &c, 3 + ci as u64);
                let what = format!("{name}/{program} config {ci}");
                let path = check(&compiled, program, &c, &caps, &what);
                assert_eq!(path, expected_path(*lq, *hq, *hkv, *d), "{what}: path");
            }
        }
    }
}

/// Lq, GQA, head dims, dtypes, page sizes, odd lengths.
fn gpu_decode_shapes(_d: &CudaDevice) {
    let mut rng = Rng(77);
    for name in ["causal", "sliding_window", "alibi", "dense"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for (lq, hq, hkv) in [
            (1, 4, 4),
            (2, 8, 2),
            (4, 16, 2),
            (16, 8, 1),
            (16, 4, 4),
            (1, 32, 4),
        ] {
            for (d, dtype) in [(128, DType::BF16), (64, DType::F16)] {
                for page in [None, Some(16), Some(128)] {
                    let sl = vec![1, 0, 517, 3, 1000];
                    let c = case_as(dtype, &mut rng, sl.len(), hq, hkv, lq, d, 1000, sl, page);
                    let caps = captures_for(&variant, &c, 5);
                    let what = format!("{name} lq{lq} hq{hq} hkv{hkv} d{d} {dtype} {page:?}");
                    let path = check(&compiled, &program, &c, &caps, &what);
                    assert_eq!(path, expected_path(lq, hq, hkv, d), "{what}: path");
                }
            }
        }
    }
}

/// Long sequences: many splits per (sequence, kv head), many tiles per split (the page
/// ids loaded a tile ahead, pages of 16 to 64 at 16 to 64 rows per CTA); a window reads
/// only its window; one kv head of one sequence split over more than 128 CTAs (the
/// combine kernel's thread-strided loops).
fn gpu_decode_long(_d: &CudaDevice) {
    let mut rng = Rng(5);
    let compiled = example("sliding_window");
    let program = compiled.names()[0].to_string();
    for page in [None, Some(16)] {
        let c = case_as(
            DType::BF16,
            &mut rng,
            1,
            4,
            1,
            1,
            128,
            40000,
            vec![40000],
            page,
        );
        let caps = Captures::default().param("window", ParamValue::I32(50000));
        let what = format!("one kv head, 40000 keys, {page:?}");
        let path = check(&compiled, &program, &c, &caps, &what);
        assert_eq!(path, expected_path(1, 4, 1, 128), "{what}: path");
    }
    for (lq, page) in [(1, None), (1, Some(64)), (4, Some(32)), (16, Some(16))] {
        let sl = vec![20000, 9001];
        let c = case_as(DType::BF16, &mut rng, 2, 32, 8, lq, 128, 20000, sl, page);
        for window in [300, 50000] {
            let caps = Captures::default().param("window", ParamValue::I32(window));
            let what = format!("window {window} lq {lq} {page:?}");
            let path = check(&compiled, &program, &c, &caps, &what);
            assert_eq!(path, expected_path(lq, 32, 8, 128), "{what}: path");
        }
    }
}

/// Small cases for compute-sanitizer (memcheck / racecheck): contiguous and paged with
/// garbage page ids past each sequence, a sequence of length 0, Lq 1, 4 and 16 (16 and 64
/// rows per CTA of the tensor-core kernel), GQA 4:1; document masks, and causal and
/// sliding-window masks (whose whole tiles take `decode_mma::COPY_FULL_TILE`'s path when
/// it is on).
fn gpu_decode_sanitize(_d: &CudaDevice) {
    let mut rng = Rng(3);
    for name in ["document_causal", "causal", "sliding_window"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        // G x Lq = 4 x 4, 4 x 1 and 4 x 16 (the SIMT kernel with ATTNC_DECODE_KERNEL=simt)
        for (lq, page) in [
            (4, None),
            (4, Some(16)),
            (1, None),
            (1, Some(16)),
            (16, None),
            (16, Some(16)),
        ] {
            let c = case_as(
                DType::BF16,
                &mut rng,
                3,
                8,
                2,
                lq,
                128,
                150,
                vec![150, 0, 33],
                page,
            );
            let mut caps = captures_for(&variant, &c, 9);
            // a window of 100: at Lq 16 keys 64..127 are a whole kept tile of the
            // sequence of 150 (rows at 134..149)
            if name == "sliding_window" {
                caps = caps.param("window", ParamValue::I32(100));
            }
            let path = check(
                &compiled,
                &program,
                &c,
                &caps,
                &format!("sanitize {name} lq {lq} {page:?}"),
            );
            assert_eq!(path, expected_path(lq, 8, 2, 128));
        }
    }
}

/// Head dims 32 and 256 (the SIMT kernel): GQA, Lq 1 and 4, contiguous and paged.
fn gpu_decode_head_dims(_d: &CudaDevice) {
    let mut rng = Rng(256);
    for name in ["causal", "alibi", "softcap"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for (d, dtype) in [(32, DType::F16), (256, DType::BF16)] {
            for (lq, hq, hkv, page) in [(1, 4, 4, None), (4, 8, 2, Some(16))] {
                let sl = vec![77, 0, 300, 1];
                let c = case_as(dtype, &mut rng, sl.len(), hq, hkv, lq, d, 300, sl, page);
                let caps = captures_for(&variant, &c, 6);
                let what = format!("{name} d{d} lq{lq} hq{hq} hkv{hkv} {page:?}");
                let path = check(&compiled, &program, &c, &caps, &what);
                assert_eq!(path, expected_path(lq, hq, hkv, d), "{what}: path");
            }
        }
    }
}

/// Checked mode, and Lq > 16 at D 32 (no tensor-core kernel there), take the prefill
/// path, still right; Lq 20 at D 64 in fast mode runs the tensor-core kernel.
fn gpu_decode_prefill_path(_d: &CudaDevice) {
    let mut rng = Rng(11);
    let compiled = example("causal");
    let program = compiled.names()[0].to_string();
    for (d, checked, want_path) in [
        (64, true, "prefill"),
        (32, false, "prefill"),
        (64, false, "split-kv-mma"),
    ] {
        let c = case_as(
            DType::BF16,
            &mut rng,
            3,
            4,
            2,
            20,
            d,
            300,
            vec![300, 5, 160],
            Some(16),
        );
        let what = format!("lq 20 d {d} checked {checked}");
        let path = check_mode(
            &compiled,
            &program,
            &c,
            &Captures::default(),
            &what,
            checked,
        );
        assert_eq!(path, want_path, "{what}");
    }
}

/// Chunked prefill (Lq > 16: a serving engine's new rows of a sequence against its
/// cache) on the tensor-core split-KV kernel, against the f64 oracle: Lq 17, 33, 64, 100
/// and 256 (one m-tile to many row groups; with GQA 4:1 a row group of 64 packed rows
/// spans two heads when Lq is 17, 33 or 100), contiguous and paged caches (page 16 and
/// 128, shuffled tables, garbage pages and NaN past each sequence), GQA 1:1 and 4:1,
/// bf16 at D 128 and f16 at D 64, seq_lens = Lq (the chunk is the whole sequence), the
/// capacity, 0, shorter than Lq (rows at negative positions) and between; splits per
/// row group > 1 (the combine merging many rows); the path is "split-kv-mma" (or "prefill"
/// under `ATTNC_DECODE_PREFILL=1`: [`chunked_path`]) even with
/// `ATTNC_DECODE_KERNEL=simt` (the SIMT kernel takes Lq <= 16 only). With `long`, also
/// one sequence of 20000 keys (many splits per row group, the sliding window's range
/// cut on the host).
fn chunked(name: &str, program: Option<&str>, seed: u64, window: i32, long: bool) {
    let mut rng = Rng(seed);
    let compiled = example(name);
    let program = program.unwrap_or(compiled.names()[0]).to_string();
    let variant = compiled.attention(&program).unwrap();
    let cap = 600;
    let mut n = 0;
    for lq in [17, 33, 64, 100, 256] {
        for (hq, hkv) in [(2, 2), (8, 2)] {
            for page in [None, Some(16), Some(128)] {
                let (d, dtype) = if n % 2 == 0 {
                    (128, DType::BF16)
                } else {
                    (64, DType::F16)
                };
                n += 1;
                let mid = lq + 1 + rng.below(cap - lq - 1);
                let sl = vec![lq as i32, cap as i32, 0, (lq / 2) as i32, mid as i32];
                let c = case_as(dtype, &mut rng, sl.len(), hq, hkv, lq, d, cap, sl, page);
                let mut caps = captures_for(&variant, &c, seed + n);
                if caps.params.contains_key("window") {
                    caps.params.insert("window".into(), ParamValue::I32(window));
                }
                let what = format!("{name}/{program} lq{lq} hq{hq} hkv{hkv} d{d} {dtype} {page:?}");
                let path = check(&compiled, &program, &c, &caps, &what);
                assert_eq!(path, chunked_path(), "{what}: path");
            }
        }
    }
    if long {
        for page in [None, Some(16)] {
            let c = case_as(
                DType::BF16,
                &mut rng,
                1,
                8,
                2,
                64,
                128,
                20000,
                vec![19999],
                page,
            );
            let mut caps = captures_for(&variant, &c, seed);
            if caps.params.contains_key("window") {
                caps.params.insert("window".into(), ParamValue::I32(3000));
            }
            let what = format!("{name}/{program} lq64 20000 keys {page:?}");
            let path = check(&compiled, &program, &c, &caps, &what);
            assert_eq!(path, chunked_path(), "{what}: path");
        }
    }
}

fn gpu_decode_chunked_causal(_d: &CudaDevice) {
    chunked("causal", None, 0xc4, 0, true);
}

fn gpu_decode_chunked_sliding(_d: &CudaDevice) {
    chunked("sliding_window", None, 0xc5, 90, true);
}

fn gpu_decode_chunked_document(_d: &CudaDevice) {
    chunked("document_causal", Some("document_causal"), 0xc6, 0, false);
}

/// A per-head score (ALiBi: the head of each packed row) and a score reading a captured
/// table (`rel_bias[h, clamp(q - kv)]`, no mask: rows see the chunk's later keys too).
fn gpu_decode_chunked_scores(_d: &CudaDevice) {
    chunked("alibi_causal", Some("alibi_causal"), 0xc7, 0, false);
    chunked("relative_bias_table", None, 0xc8, 0, false);
}

/// Chunked prefill on the prefill kernel in batched runs (`decode::cuda`, session 25):
/// consecutive sequences of one length and reachable range share one launch of the
/// position-offset program. Against the f64 oracle with the route forced
/// (`DecodeTuning::prefill`): runs of 3 and 2 sequences beside a sequence of length 0 (no
/// run), one shorter than Lq (its rows at negative positions give O = 0, LSE = -inf) and
/// single ones; Lq 128 / 150 / 200; contiguous and paged (16 and 128, shuffled tables,
/// garbage past each sequence); GQA 8:2 and 2:2; bf16 D128 and f16 D64; causal, a
/// sliding window (its range cut on the host: runs start at the window), documents over
/// positions, ALiBi and a captured bias table (captures indexed by the run's logical b
/// and positions). Then the rule's own choice at Hq 64 Lq 256 (256 tiles): "prefill",
/// and forced off: "split-kv-mma", the same values within the tolerance.
fn gpu_decode_prefill_runs(_d: &CudaDevice) {
    let mut rng = Rng(0x9e1);
    let force = |p: bool| {
        move |o: &mut BindOptions| {
            o.decode.prefill = Some(p);
        }
    };
    for (name, program, window) in [
        ("causal", None, 0),
        ("sliding_window", None, 90),
        ("document_causal", Some("document_causal"), 0),
        ("alibi_causal", Some("alibi_causal"), 0),
        ("relative_bias_table", None, 0),
    ] {
        let compiled = example(name);
        let program = program.unwrap_or(compiled.names()[0]).to_string();
        let variant = compiled.attention(&program).unwrap();
        let cap = 600;
        for (n, (lq, hq, hkv, page)) in [
            (128, 8, 2, None),
            (150, 8, 2, Some(16)),
            (200, 2, 2, Some(128)),
        ]
        .into_iter()
        .enumerate()
        {
            let (d, dtype) = if n % 2 == 0 {
                (128, DType::BF16)
            } else {
                (64, DType::F16)
            };
            let mid = (lq + 1 + rng.below(cap - lq - 1)) as i32;
            let full = cap as i32;
            let sl = vec![full, full, full, 0, (lq / 2) as i32, mid, mid, lq as i32];
            let c = case_as(dtype, &mut rng, sl.len(), hq, hkv, lq, d, cap, sl, page);
            let mut caps = captures_for(&variant, &c, 0x9e1 + n as u64);
            if caps.params.contains_key("window") {
                caps.params.insert("window".into(), ParamValue::I32(window));
            }
            let what =
                format!("runs {name}/{program} lq{lq} hq{hq} hkv{hkv} d{d} {dtype} {page:?}");
            let path = check_with(&compiled, &program, &c, &caps, &what, force(true));
            assert_eq!(path, "prefill", "{what}: path");
        }
    }
    // the rule: two sequences of one length, 64 heads, 256 rows: 2 x 64 x 2 tiles
    let compiled = example("causal");
    let program = compiled.names()[0].to_string();
    let c = case_as(
        DType::BF16,
        &mut rng,
        2,
        64,
        8,
        256,
        128,
        700,
        vec![700, 700],
        None,
    );
    let caps = Captures::default();
    let path = check_with(&compiled, &program, &c, &caps, "rule", |_| {});
    let tuned = attnc::DecodeTuning::from_env().prefill;
    assert_eq!(
        path,
        if tuned == Some(false) {
            "split-kv-mma"
        } else {
            "prefill"
        }
    );
    let path = check_with(&compiled, &program, &c, &caps, "forced off", force(false));
    assert_eq!(path, "split-kv-mma");
}

/// One caller-buffer decode call of case `c` on `bound` (device buffers uploaded from the
/// case; O and LSE poisoned with NaN first where `poison`, else zeros): with `host_lens`
/// `Bound::decode_cuda_into_with_lengths`, else `Bound::decode_cuda_into`; O and LSE
/// downloaded.
/// How [`caller_decode`] passes the lengths: on the device only
/// (`Bound::decode_cuda_into`), also on the host (`decode_cuda_into_with_lengths`), or
/// on the host to the batched runs alone first (`decode_cuda_runs`, with the split-KV
/// kernels' lengths and workspace pointers 0; when it declines, O must be untouched and
/// `decode_cuda_into` runs the call, as the Python package does).
#[derive(Clone, Copy)]
enum Lens<'a> {
    Device,
    /// On the device only, holding these lengths instead of the case's (lengths past the
    /// capacity, which count as the capacity).
    DeviceAs(&'a [i32]),
    Host(&'a [i32]),
    RunsFirst(&'a [i32]),
}

fn caller_decode(
    dev: &CudaDevice,
    bound: &mut attnc::Bound,
    c: &Case,
    params: &std::collections::HashMap<String, ParamValue>,
    lens: Lens<'_>,
    poison: bool,
    what: &str,
) -> (attnc::Tensor, Vec<f32>) {
    let none = Captures::default();
    caller_decode_caps(dev, bound, c, &none, params, lens, poison, what)
}

/// [`caller_decode`] with the captured tensors of `caps` uploaded and passed by name
/// (i32 and f32 tensors).
#[allow(clippy::too_many_arguments)]
fn caller_decode_caps(
    dev: &CudaDevice,
    bound: &mut attnc::Bound,
    c: &Case,
    caps: &Captures,
    params: &std::collections::HashMap<String, ParamValue>,
    lens: Lens<'_>,
    poison: bool,
    what: &str,
) -> (attnc::Tensor, Vec<f32>) {
    use attnc::external::{CacheLayout, DeviceDecodeBuffers, DeviceTensor};
    use cudarc::driver::{CudaSlice, DevicePtr};
    use std::collections::HashMap;
    let layout: CacheLayout = c.shape.layout;
    // (kept alive until the download below has synchronized the stream)
    let mut held_i32: Vec<CudaSlice<i32>> = Vec::new();
    let mut held_f32: Vec<CudaSlice<f32>> = Vec::new();
    let mut tensors = HashMap::new();
    for (name, t) in &caps.tensors {
        let ptr = if t.dtype() == DType::I32 {
            held_i32.push(dev.upload(&t.to_i32()).unwrap());
            let x = held_i32.last().unwrap();
            x.device_ptr(x.stream()).0
        } else {
            held_f32.push(dev.upload(&t.to_f32()).unwrap());
            let x = held_f32.last().unwrap();
            x.device_ptr(x.stream()).0
        };
        let dtype = if t.dtype() == DType::I32 {
            DType::I32
        } else {
            DType::F32
        };
        let dims = t.shape().to_vec();
        tensors.insert(name.clone(), DeviceTensor { ptr, dims, dtype });
    }
    let ws = bound.decode_cuda_workspace(layout).unwrap();
    let bits = |t: &attnc::Tensor| dev.upload_u16(&t.to_u16_bits().unwrap()).unwrap();
    let (q, k, v) = (bits(&c.q), bits(&c.k), bits(&c.v));
    let seq_lens = match lens {
        Lens::DeviceAs(l) => dev.upload(l).unwrap(),
        _ => dev.upload(&c.seq_lens).unwrap(),
    };
    let table = c
        .page_table
        .as_ref()
        .map(|t| dev.upload(&t.to_i32()).unwrap());
    let s = c.shape;
    let (o_fill, lse_fill) = if poison { (0x7fc0, f32::NAN) } else { (0, 0.0) };
    let o: CudaSlice<u16> = dev
        .upload_u16(&vec![o_fill; s.b * s.hq * s.lq * s.dv])
        .unwrap();
    let lse: CudaSlice<f32> = dev.upload(&vec![lse_fill; s.b * s.hq * s.lq]).unwrap();
    // (no partials where the prefill kernel alone takes the shape: one word all the same)
    let part: CudaSlice<f32> = dev.zeros((ws.part_o + ws.part_lse).max(1)).unwrap();
    let ranges: CudaSlice<i32> = dev.zeros(ws.ranges).unwrap();
    let st = q.stream().clone();
    let bufs = DeviceDecodeBuffers {
        q: q.device_ptr(&st).0,
        k_cache: k.device_ptr(&st).0,
        v_cache: v.device_ptr(&st).0,
        seq_lens: seq_lens.device_ptr(&st).0,
        page_table: table.as_ref().map(|t| t.device_ptr(&st).0),
        o: o.device_ptr(&st).0,
        lse: lse.device_ptr(&st).0,
        part_o: part.device_ptr(&st).0,
        part_lse: part.device_ptr(&st).0 + 4 * ws.part_o as u64,
        ranges: ranges.device_ptr(&st).0,
    };
    let stream = st.cu_stream() as u64;
    // SAFETY: every buffer above is a live allocation of this device sized for the
    // binding's shape and layout (the workspace as decode_cuda_workspace says), on stream
    // `st`, which the download below synchronizes; the host lengths are the device
    // buffer's (the case's).
    unsafe {
        match lens {
            Lens::Host(h) => {
                bound.decode_cuda_into_with_lengths(layout, &bufs, h, &tensors, params, stream)
            }
            Lens::Device | Lens::DeviceAs(_) => {
                bound.decode_cuda_into(layout, &bufs, &tensors, params, stream)
            }
            Lens::RunsFirst(h) => {
                let only = DeviceDecodeBuffers {
                    seq_lens: 0,
                    part_o: 0,
                    part_lse: 0,
                    ranges: 0,
                    ..bufs
                };
                let took = bound
                    .decode_cuda_runs(layout, &only, h, &tensors, params, stream)
                    .unwrap_or_else(|e| panic!("{what}: runs: {e}"));
                if took {
                    Ok(())
                } else {
                    st.synchronize().unwrap();
                    let untouched = dev.download(&o).unwrap().iter().all(|&x| x == o_fill);
                    assert!(untouched, "{what}: the runs declined but wrote O");
                    bound.decode_cuda_into(layout, &bufs, &tensors, params, stream)
                }
            }
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    st.synchronize().unwrap();
    let o = dev.download(&o).unwrap();
    let bytes: Vec<u8> = o.iter().flat_map(|x| x.to_le_bytes()).collect();
    let o = attnc::Tensor::from_bytes(vec![o.len()], c.dtype, bytes).unwrap();
    (o, dev.download(&lse).unwrap())
}

/// A sliding window's param (none: no params) for the oracle (`Captures`) and for a
/// caller-buffer call (by name).
fn window_params(window: Option<i32>) -> (Captures, std::collections::HashMap<String, ParamValue>) {
    let mut caps = Captures::default();
    let mut params = std::collections::HashMap::new();
    if let Some(w) = window {
        caps = caps.param("window", ParamValue::I32(w));
        params.insert("window".to_string(), ParamValue::I32(w));
    }
    (caps, params)
}

/// A caller-buffer call's O and LSE against the oracle's (`what` names the case).
fn close_to_oracle(what: &str, c: &Case, o: &attnc::Tensor, lse: &[f32], want: &attnc::Output) {
    close(
        &format!("{what} o"),
        &o.to_f32(),
        &want.o.to_f32(),
        tol(c.dtype),
    );
    close(&format!("{what} lse"), lse, &want.lse.to_f32(), 0.002);
}

/// The caller-buffer decode (`Bound::decode_cuda_into`, the Python package's path on CUDA
/// tensors): the split-KV kernel's CTAs compute each sequence's reachable keys from
/// `seq_lens` on the device (`decode::COPY_DEVICE_RANGES`), then the combine kernel runs,
/// over the caller's buffers; against the oracle, contiguous and paged (page 16, shuffled), a sliding
/// window and a causal mask, lengths 0, 1 and full, Lq 1 and 4, and chunked prefill (Lq
/// 100 and 64 on the tensor-core kernel, the ranges over the chunk's rows). Also the case
/// that compute-sanitizer checks the caller-buffer decode with.
fn gpu_decode_caller_buffers(dev: &CudaDevice) {
    let mut rng = Rng(0xca11e4);
    for (name, window) in [("sliding_window", Some(40)), ("causal", None)] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        for (lq, page) in [
            (1, None),
            (4, Some(16)),
            (1, Some(16)),
            (100, None),
            (64, Some(16)),
        ] {
            let sl = vec![300, 0, 1, 170];
            let c = case_as(DType::BF16, &mut rng, 4, 8, 2, lq, 128, 300, sl, page);
            let (caps, params) = window_params(window);
            let what = format!("caller buffers {name} lq {lq} {page:?}");
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let variant = compiled.attention(&program).unwrap();
            let mut bound = variant
                .bind(BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype))
                .unwrap();
            let (o, lse) = caller_decode(dev, &mut bound, &c, &params, Lens::Device, false, &what);
            close_to_oracle(&what, &c, &o, &lse, &want);
        }
    }
}

/// One case of [`gpu_decode_caller_prefill_runs`]: Lq, Hq, Hkv, seq_lens, the route
/// forced or not (`DecodeTuning::prefill`), the page size (None: contiguous), paged runs
/// on (the default; off: `DecodeTuning::paged_split_kv`), the path.
type RunCase = (
    usize,
    usize,
    usize,
    Vec<i32>,
    Option<bool>,
    Option<usize>,
    bool,
    &'static str,
);

/// The caller-buffer decode with the lengths also on the host
/// (`Bound::decode_cuda_into_with_lengths`, session 25): chunked prefill over a
/// contiguous cache in batched runs on the prefill kernel, K/V read in place (tensor maps
/// whose slices are `Lkv_max` rows apart) and (unless `DecodeTuning::paged_split_kv`)
/// over paged caches of pages of 16, 64, 128 and 256 rows (shuffled tables, out-of-range
/// ids past each sequence, NaN in every slot past a sequence's length: each kv tile one
/// TMA box per page it spans, the last page's unused rows zeroed before P V — NaN in O
/// otherwise; paged runs off keep the split-KV kernel), the route forced
/// (`DecodeTuning::prefill`):
/// runs of 2 and 1 and 1 sequences, Lq 128 and 200, GQA 8:2 and 4:4, dense (the static
/// schedule), causal, a sliding window (a param) and ALiBi (a per-head score), against the
/// oracle, path "prefill"; the cases' copies on one, two (the default: V's on a second
/// thread) and four producer threads in turn (`DecodeTuning::paged_producers`; under
/// the static schedule (dense) and the dynamic scheduler (the rest)), every other case
/// through `decode_cuda_runs` alone first; a
/// sequence shorter than Lq sends the call to the launch of the whole batch with the
/// lengths on the device (`gpu_decode_caller_prefill_device`), small runs (the rule) to
/// the split-KV kernels.
fn gpu_decode_caller_prefill_runs(dev: &CudaDevice) {
    let mut rng = Rng(0x9e2);
    for (name, program, window) in [
        ("dense", None, None),
        ("causal", None, None),
        ("sliding_window", None, Some(70)),
        ("alibi_causal", Some("alibi_causal"), None),
    ] {
        let compiled = example(name);
        let program = program.unwrap_or(compiled.names()[0]).to_string();
        // (lq, hq, hkv, seq_lens, DecodeTuning::prefill, page size, the path)
        let sl = || vec![300, 300, 250, 280];
        let sl2 = || vec![300, 300, 300, 201];
        let cases: [RunCase; 11] = [
            (128, 8, 2, sl(), Some(true), None, false, "prefill"),
            (200, 4, 4, sl2(), Some(true), None, false, "prefill"),
            // a paged cache with paged runs turned off: the split-KV kernel
            (
                128,
                8,
                2,
                sl(),
                Some(true),
                Some(128),
                false,
                "split-kv-mma",
            ),
            (128, 8, 2, sl(), Some(true), Some(128), true, "prefill"),
            (200, 4, 4, sl2(), Some(true), Some(256), true, "prefill"),
            // pages smaller than the kv tile: one box per page (16 rows: 8 per slab)
            (128, 8, 2, sl(), Some(true), Some(16), true, "prefill"),
            (200, 4, 4, sl2(), Some(true), Some(64), true, "prefill"),
            (128, 8, 2, sl(), Some(true), Some(16), false, "split-kv-mma"),
            // a sequence shorter than Lq: the runs decline, and the whole batch runs on
            // the prefill kernel with its lengths on the device (`decode_cuda_into`)
            (
                128,
                8,
                2,
                vec![300, 100, 250, 280],
                Some(true),
                None,
                false,
                "prefill",
            ),
            (128, 8, 2, sl(), None, None, false, "split-kv-mma"),
            (128, 8, 2, sl(), None, Some(128), true, "split-kv-mma"),
        ];
        for (i, (lq, hq, hkv, sl, forced, page, paged_runs, want_path)) in
            cases.into_iter().enumerate()
        {
            // (NaN in every cache slot past a sequence's length: the paged runs read the
            // rest of each sequence's last page and must zero it)
            let c = case_as(DType::BF16, &mut rng, 4, hq, hkv, lq, 128, 300, sl, page);
            let (caps, params) = window_params(window);
            let variant = compiled.attention(&program).unwrap();
            let what = format!(
                "caller runs {name} lq {lq} hq {hq} {:?} {forced:?} page {page:?} {paged_runs} \
                 producers {}",
                c.seq_lens,
                [1, 2, 4][i % 3]
            );
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.prefill = forced;
            o.decode.paged_split_kv = !paged_runs;
            // one, two (the default) and four producer threads in turn
            o.decode.paged_producers = [1, 2, 4][i % 3];
            let mut bound = variant.bind(o).unwrap();
            // O poisoned: a row no launch writes shows
            // every other case through the runs alone first (`decode_cuda_runs`)
            let lens = if i % 2 == 0 {
                Lens::Host(&c.seq_lens)
            } else {
                Lens::RunsFirst(&c.seq_lens)
            };
            let (o, lse) = caller_decode(dev, &mut bound, &c, &params, lens, true, &what);
            assert_eq!(bound.cache_path(), Some(want_path), "{what}: path");
            close_to_oracle(&what, &c, &o, &lse, &want);
        }
    }
}

/// `case`'s contiguous cache with NaN in every slot past each sequence's length (what a
/// launch that reads a whole kv tile past the end must never let reach O).
fn nan_past_lengths(c: &mut Case) {
    let attnc::external::CacheLayout::Contiguous { lkv_max } = c.shape.layout else {
        return;
    };
    let (hkv, b) = (c.shape.hkv, c.shape.b);
    let poison = |t: &attnc::Tensor, d: usize| {
        let mut x = t.to_f32();
        for bi in 0..b {
            for h in 0..hkv {
                let from = c.seq_lens[bi].max(0) as usize;
                for pos in from..lkv_max {
                    let at = ((bi * hkv + h) * lkv_max + pos) * d;
                    x[at..at + d].fill(f32::NAN);
                }
            }
        }
        attnc::Tensor::from_f32_as(t.shape().to_vec(), &x, c.dtype)
    };
    c.k = poison(&c.k, c.shape.d);
    c.v = poison(&c.v, c.shape.dv);
}

/// One case of [`gpu_decode_caller_prefill_device`]: Lq, Hq, Hkv, seq_lens, the page size
/// (None: contiguous), the dtype, whether the device holds 377 for the lengths of 300.
type DeviceLensCase = (usize, usize, usize, Vec<i32>, Option<usize>, DType, bool);

/// Chunked prefill on the caller's buffers with the lengths on the device only
/// (`Bound::decode_cuda_into`, the Python package's path for CUDA `seq_lens`): the whole
/// batch in one launch of the warp-specialized prefill kernel, each CTA reading its
/// sequence's length (`PtxOptions::device_lens`, `decode::device_offset_program`), path
/// "prefill" — contiguous caches (NaN in every slot past each length: the last kv tile
/// reads them, V's are zeroed) and paged ones of pages of 16 and 128 rows (shuffled, NaN
/// past each length), lengths 0, 1, shorter than Lq (rows that do not exist: O = 0, LSE =
/// -inf), exactly Lq, full, and one past the capacity on the device (counted as the
/// capacity), Lq 128 and 200, GQA 4:1 and 1:1, bf16 and f16, dense, causal, a sliding
/// window (a param), ALiBi and a soft-cap score, and two masks without a closed form over
/// no tensor (chunked + causal, NATTEN's neighbourhood: block tables built on the GPU per
/// sequence, `exec::cuda::builds_tables`), against the oracle, O poisoned first,
/// twice bit-identical; at D64 (f16) dense and causal too (a sliding window's D64 kernel
/// cannot read the cache in place: the split-KV kernels); at D256 (no split-KV kernel
/// above 16 rows) causal and soft-cap + sliding window (contiguous, pages of 16 and 64) on this path and, with the lengths
/// also on the host, on the batched runs (documents: `gpu_decode_caller_prefill_device_documents`); the rule sends a small batch to the split-KV kernels (masks over
/// captured tensors, whose kernels read block tables, keep them too: the Python package's
/// `test_chunked_prefill_with_host_lengths` checks documents on this path).
fn gpu_decode_caller_prefill_device(dev: &CudaDevice) {
    let mut rng = Rng(0xde71);
    for (name, program, window) in [
        ("dense", None, None),
        ("causal", None, None),
        ("sliding_window", None, Some(70)),
        ("alibi_causal", Some("alibi_causal"), None),
        ("softcap", Some("softcap_causal"), None),
        // masks without a closed form that read no tensor (session 33): their block
        // tables built on the GPU per sequence too
        ("chunked", Some("chunked_causal"), None),
        ("natten", None, None),
    ] {
        let compiled = example(name);
        let program = program.unwrap_or(compiled.names()[0]).to_string();
        let variant = compiled.attention(&program).unwrap();
        // (lq, hq, hkv, seq_lens, page, dtype, 300 (the contiguous caches' capacity)
        // stored as 377 on the device: counted as the capacity)
        let cases: [DeviceLensCase; 4] = [
            (128, 8, 2, vec![300, 0, 100, 257], None, DType::BF16, true),
            (
                200,
                4,
                4,
                vec![1, 300, 199, 233],
                Some(16),
                DType::F16,
                false,
            ),
            (
                128,
                8,
                2,
                vec![300, 128, 129, 64],
                Some(128),
                DType::BF16,
                false,
            ),
            (200, 4, 4, vec![255, 200, 300, 7], None, DType::F16, true),
        ];
        for (lq, hq, hkv, sl, page, dtype, past) in cases {
            let mut c = case_as(dtype, &mut rng, 4, hq, hkv, lq, 128, 300, sl, page);
            nan_past_lengths(&mut c);
            let what = format!(
                "caller device lengths {name} lq {lq} hq {hq}/{hkv} {:?} page {page:?} {dtype:?}",
                c.seq_lens
            );
            let (want, params) = oracle_and_params(&compiled, &program, &c, window, &what);
            let mut bound = cache_binding(&variant, &c, Some(true));
            let over: Vec<i32> = c
                .seq_lens
                .iter()
                .map(|&n| if n == 300 { 300 + 77 } else { n })
                .collect();
            let lens = if past {
                Lens::DeviceAs(&over)
            } else {
                Lens::Device
            };
            let (o1, lse1) =
                call_as_oracle(dev, &mut bound, &c, &params, lens, &want, "prefill", &what);
            let (o2, lse2) = caller_decode(dev, &mut bound, &c, &params, lens, true, &what);
            same_bits(&what, (&o1, &lse1), (&o2, &lse2));
        }
    }
    // D64 (f16): dense and causal on the warp-specialized kernel (dense: three consumer
    // warpgroups on q tiles of 192); a sliding window, whose D64 forward is another kernel,
    // cannot read the cache in place: the split-KV kernels
    for (name, window, want_path) in [
        ("dense", None, "prefill"),
        ("causal", None, "prefill"),
        ("sliding_window", Some(70), "split-kv-mma"),
    ] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for page in [None, Some(16)] {
            let sl = vec![300, 150, 0, 257];
            let mut c = case_as(DType::F16, &mut rng, 4, 8, 2, 200, 64, 300, sl, page);
            nan_past_lengths(&mut c);
            let what = format!("caller device lengths d64 {name} page {page:?}");
            let (want, params) = oracle_and_params(&compiled, &program, &c, window, &what);
            let mut bound = cache_binding(&variant, &c, Some(true));
            let lens = Lens::Device;
            call_as_oracle(dev, &mut bound, &c, &params, lens, &want, want_path, &what);
        }
    }
    // head dim 256 (Gemma's; no split-KV kernel above 16 rows): the prefill kernel alone,
    // with the lengths on the device (whatever the rule or `DecodeTuning::prefill`) and,
    // with them also on the host, the batched runs; causal and Gemma 2's soft-cap +
    // sliding window, contiguous and paged (pages of 16 and 64); a mask over captured
    // tensors cannot run here (`decode_cuda_takes` says so, the call is refused)
    for (name, window) in [("causal", None), ("softcap_sliding", Some(90))] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for page in [None, Some(16), Some(64)] {
            for host in [false, true] {
                let sl = if host {
                    vec![300, 300, 250, 280]
                } else {
                    vec![300, 40, 0, 257]
                };
                let mut c = case_as(DType::BF16, &mut rng, 4, 4, 2, 160, 256, 300, sl, page);
                nan_past_lengths(&mut c);
                let what = format!("caller d256 {name} page {page:?} host {host}");
                let (want, params) = oracle_and_params(&compiled, &program, &c, window, &what);
                // (the rule and the tuning cannot send D256 to a split-KV kernel)
                let mut bound = cache_binding(&variant, &c, Some(false));
                assert!(bound.decode_cuda_takes(c.shape.layout).unwrap(), "{what}");
                let lens = if host {
                    Lens::Host(&c.seq_lens)
                } else {
                    Lens::Device
                };
                call_as_oracle(dev, &mut bound, &c, &params, lens, &want, "prefill", &what);
            }
        }
    }
    // the rule (not forced): 4 sequences x 8 heads x one tile of 128 rows fill less than
    // half of the GPU's SMs: the split-KV kernels
    let compiled = example("causal");
    let program = compiled.names()[0].to_string();
    let c = case_as(
        DType::BF16,
        &mut rng,
        4,
        8,
        2,
        128,
        128,
        300,
        vec![300; 4],
        None,
    );
    let what = "caller device lengths, the rule";
    let (want, params) = oracle_and_params(&compiled, &program, &c, None, what);
    let variant = compiled.attention(&program).unwrap();
    let mut bound = cache_binding(&variant, &c, None);
    let lens = Lens::Device;
    call_as_oracle(
        dev,
        &mut bound,
        &c,
        &params,
        lens,
        &want,
        "split-kv-mma",
        what,
    );
}

/// The oracle's output for `program` of `compiled` on case `c` with a sliding window's
/// param (`window`, or none), and the params by name for a caller-buffer call.
fn oracle_and_params(
    compiled: &Compiled,
    program: &str,
    c: &Case,
    window: Option<i32>,
    what: &str,
) -> (attnc::Output, std::collections::HashMap<String, ParamValue>) {
    let (caps, params) = window_params(window);
    let want = run(compiled, program, c, Backend::Reference, 1, &caps, false)
        .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
    (want, params)
}

/// Chunked prefill of a mask over captured tensors (document ids over positions) with
/// the lengths on the device: the prefill kernel on a block table that the GPU builds per
/// sequence from the same lengths (`blocktable`, one map per batch): against the oracle at
/// D128 (contiguous, paged 16 and 128, bf16 and f16, GQA 4:1 and 1:1, lengths 0, 1, odd,
/// full and stored past the capacity) and D256 (contiguous and paged 16: the prefill
/// kernel alone, `decode_cuda_takes` now true), the same bits twice.
fn gpu_decode_caller_prefill_device_documents(dev: &CudaDevice) {
    let rng = &mut Rng(0xd0c5);
    let compiled = example("document_causal");
    let variant = compiled.attention("document_causal").unwrap();
    // (lq, hq, hkv, d, seq_lens, page, dtype, lengths past the capacity stored)
    type DocCase = (
        usize,
        usize,
        usize,
        usize,
        Vec<i32>,
        Option<usize>,
        DType,
        bool,
    );
    let cases: [DocCase; 6] = [
        (
            128,
            8,
            2,
            128,
            vec![300, 0, 100, 257],
            None,
            DType::BF16,
            true,
        ),
        (
            200,
            4,
            4,
            128,
            vec![1, 300, 199, 233],
            Some(16),
            DType::F16,
            false,
        ),
        (
            128,
            8,
            2,
            128,
            vec![300, 128, 129, 64],
            Some(128),
            DType::BF16,
            false,
        ),
        (
            130,
            8,
            2,
            128,
            vec![255, 131, 300, 7],
            None,
            DType::F16,
            true,
        ),
        (
            160,
            4,
            2,
            256,
            vec![300, 40, 0, 257],
            None,
            DType::BF16,
            false,
        ),
        (
            160,
            4,
            2,
            256,
            vec![300, 161, 290, 77],
            Some(16),
            DType::BF16,
            false,
        ),
    ];
    for (i, (lq, hq, hkv, d, sl, page, dtype, past)) in cases.into_iter().enumerate() {
        let mut c = case_as(dtype, rng, 4, hq, hkv, lq, d, 300, sl, page);
        nan_past_lengths(&mut c);
        let caps = captures_for(&variant, &c, 40 + i as u64);
        let what = format!(
            "caller device lengths documents lq {lq} hq {hq}/{hkv} d{d} {:?} page {page:?} {dtype:?}",
            c.seq_lens
        );
        let want = run(
            &compiled,
            "document_causal",
            &c,
            Backend::Reference,
            1,
            &caps,
            false,
        )
        .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
        let mut bound = cache_binding(&variant, &c, Some(true));
        assert!(bound.decode_cuda_takes(c.shape.layout).unwrap(), "{what}");
        let over: Vec<i32> = c
            .seq_lens
            .iter()
            .map(|&n| if n == 300 { 300 + 77 } else { n })
            .collect();
        let lens = if past {
            Lens::DeviceAs(&over)
        } else {
            Lens::Device
        };
        let params = std::collections::HashMap::new();
        let (o1, lse1) = caller_decode_caps(dev, &mut bound, &c, &caps, &params, lens, true, &what);
        assert_eq!(bound.cache_path(), Some("prefill"), "{what}: path");
        close_to_oracle(&what, &c, &o1, &lse1, &want);
        let (o2, lse2) = caller_decode_caps(dev, &mut bound, &c, &caps, &params, lens, true, &what);
        same_bits(&what, (&o1, &lse1), (&o2, &lse2));
    }
}

/// Two calls' O and LSE are the same bits (`what` names the case).
fn same_bits(what: &str, a: (&attnc::Tensor, &[f32]), b: (&attnc::Tensor, &[f32])) {
    assert_eq!(a.0.bytes(), b.0.bytes(), "{what}: O twice");
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.1), bits(b.1), "{what}: LSE twice");
}

/// A CUDA binding of `variant` for case `c`'s cache, with `DecodeTuning::prefill` =
/// `prefill` (None: the rule).
fn cache_binding(variant: &attnc::Variant, c: &Case, prefill: Option<bool>) -> attnc::Bound {
    let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
    o.decode.prefill = prefill;
    variant.bind(o).unwrap()
}

/// One caller-buffer call of case `c` (O poisoned first, [`caller_decode`]): it took
/// `want_path` and its O and LSE are the oracle's `want`; returns them.
#[allow(clippy::too_many_arguments)]
fn call_as_oracle(
    dev: &CudaDevice,
    bound: &mut attnc::Bound,
    c: &Case,
    params: &std::collections::HashMap<String, ParamValue>,
    lens: Lens<'_>,
    want: &attnc::Output,
    want_path: &str,
    what: &str,
) -> (attnc::Tensor, Vec<f32>) {
    let (o, lse) = caller_decode(dev, bound, c, params, lens, true, what);
    assert_eq!(bound.cache_path(), Some(want_path), "{what}: path");
    close_to_oracle(what, c, &o, &lse, want);
    (o, lse)
}

/// Chunked prefill's runs at D64 (f16) on the caller's buffers with the lengths on the host,
/// the runs forced (`DecodeTuning::prefill`), contiguous and paged (16 and 128 rows, NaN
/// past each length), through `decode_cuda_runs` alone first: causal runs on the
/// warp-specialized prefill kernel (path "prefill"), while a sliding window, whose D64
/// forward is another kernel (bands on 64 x 64 wgmma tiles), cannot read the caller's
/// cache in place (pages, or slices a pitch apart): the runs decline it
/// (`cache_forward_applies`) and the split-KV kernels run the call ("split-kv-mma")
/// instead of the bind or launch failing (session 28's fix). Against the oracle.
fn gpu_decode_caller_runs_d64(dev: &CudaDevice) {
    let mut rng = Rng(0xd64);
    for (name, window) in [("causal", None), ("sliding_window", Some(70))] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for page in [None, Some(16), Some(128)] {
            let sl = vec![300, 300, 250, 280];
            let c = case_as(DType::F16, &mut rng, 4, 8, 2, 128, 64, 300, sl, page);
            let (caps, params) = window_params(window);
            let what = format!("caller runs d64 {name} page {page:?}");
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.prefill = Some(true);
            let mut bound = variant.bind(o).unwrap();
            let lens = Lens::RunsFirst(&c.seq_lens);
            let (o, lse) = caller_decode(dev, &mut bound, &c, &params, lens, true, &what);
            let want_path = if window.is_some() {
                "split-kv-mma"
            } else {
                "prefill"
            };
            assert_eq!(bound.cache_path(), Some(want_path), "{what}: path");
            close_to_oracle(&what, &c, &o, &lse, &want);
        }
    }
}

/// A serving loop of chunked prefill on one binding (`Bound::decode_cuda_into_with_lengths`,
/// the runs forced): every step a new length (Lq 128 new rows against 128, 300, 512, 555
/// keys, then back to 300), two sequences of one length and then of two (runs of 1), a
/// contiguous cache and a paged one of pages of 16 (NaN past each length): each call's
/// runs reuse the binding of their rows and heads pointed at the call's length
/// (`Bound::reshape`), against the oracle every step, path "prefill".
fn gpu_decode_caller_runs_growing_lengths(dev: &CudaDevice) {
    use std::collections::HashMap;
    let mut rng = Rng(0x6e0);
    for (name, page) in [
        ("causal", None),
        ("causal", Some(16)),
        ("alibi_causal", None),
    ] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        let steps: [Vec<i32>; 6] = [
            vec![128, 128],
            vec![300, 300],
            vec![512, 512],
            vec![555, 555],
            vec![555, 300],
            vec![300, 300],
        ];
        let mut bound = None;
        for sl in steps {
            let c = case_as(DType::BF16, &mut rng, 2, 8, 2, 128, 128, 600, sl, page);
            let what = format!("growing {name} page {page:?} {:?}", c.seq_lens);
            let want = run(
                &compiled,
                &program,
                &c,
                Backend::Reference,
                1,
                &Captures::default(),
                false,
            )
            .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let bound = bound.get_or_insert_with(|| {
                let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
                o.decode.prefill = Some(true);
                variant.bind(o).unwrap()
            });
            let params = HashMap::new();
            let (o, lse) = caller_decode(
                dev,
                bound,
                &c,
                &params,
                Lens::Host(&c.seq_lens),
                true,
                &what,
            );
            assert_eq!(bound.cache_path(), Some("prefill"), "{what}: path");
            close_to_oracle(&what, &c, &o, &lse, &want);
        }
    }
}

/// The launches on sm_90: the decode kernel under the previous call's tail and the
/// combine under the decode kernel's (programmatic dependent launch, the default), the
/// decode kernel after the previous call (`serial_decode`), the combine after the decode
/// kernel too (`serial_combine`), and the fused kernel (`fused_combine`, chained and
/// not), on a B1-like case (one sequence of 30000 keys over many splits: the
/// combine's rounds of 8 splits per warp, several rounds) and a B64-like one (many short
/// sequences, one split each), contiguous and paged 16: each against the oracle;
/// the launches of the same kernels bit for bit equal (only the launch differs);
/// every launch twice, bit for bit the same (deterministic).
fn gpu_decode_combine_launches(_d: &CudaDevice) {
    let mut rng = Rng(0xc0b);
    let compiled = example("causal");
    let program = compiled.names()[0].to_string();
    let variant = compiled.attention(&program).unwrap();
    let cases = [
        (1, 30000, vec![30000], None),
        (1, 30000, vec![30000], Some(16)),
        (
            24,
            700,
            (0..24).map(|i| 700 - 29 * i).collect::<Vec<i32>>(),
            None,
        ),
        (
            24,
            700,
            (0..24).map(|i| 700 - 29 * i).collect::<Vec<i32>>(),
            Some(16),
        ),
    ];
    for (b, cap, sl, page) in cases {
        let c = case_as(DType::BF16, &mut rng, b, 32, 8, 1, 128, cap, sl, page);
        let caps = Captures::default();
        let what = format!("combine launches B{b} {page:?}");
        let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
            .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
        let mut outs = Vec::new();
        for (label, serial, fused, chain) in [
            ("chained", false, false, true),
            ("overlapped", false, false, false),
            ("serial", true, false, false),
            ("fused chained", false, true, true),
            ("fused", false, true, false),
        ] {
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.serial_combine = serial;
            o.decode.fused_combine = fused;
            o.decode.serial_decode = !chain;
            let mut bound = variant.bind(o).unwrap();
            let runs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|_| {
                    let got = bound
                        .forward_with_cache(&c.q, &c.cache(), &caps)
                        .unwrap_or_else(|e| panic!("{what} {label}: cuda: {e}"));
                    (got.o.to_f32(), got.lse.to_f32())
                })
                .collect();
            assert_eq!(bound.cache_path(), Some(expected_path(1, 32, 8, 128)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert!(
                bits(&runs[0].0) == bits(&runs[1].0) && bits(&runs[0].1) == bits(&runs[1].1),
                "{what} {label}: two calls differ"
            );
            let (o, lse) = &runs[0];
            close(
                &format!("{what} {label} o"),
                o,
                &want.o.to_f32(),
                tol(c.dtype),
            );
            close(
                &format!("{what} {label} lse"),
                lse,
                &want.lse.to_f32(),
                0.002,
            );
            outs.push((bits(o), bits(lse)));
        }
        assert!(
            outs[0] == outs[1] && outs[0] == outs[2] && outs[3] == outs[4],
            "{what}: the combine's launches differ"
        );
    }
}

/// The tensor-core kernel's K/V copy variants (`DecodeTuning::copy`, `decode_mma::COPY_*`:
/// `a` full tiles without per-row checks, `b` 32-bit shared destinations, `c` one page id
/// per 16-row pass, and all three) give the bits of the default copy (the same bytes land
/// in the same places) and the oracle's values: one long sequence over many splits,
/// contiguous and pages of 16 and 128, and many sequences (lengths 0, 1, .. 900: partial
/// and full tiles, more than one wave) with pages of 16, Lq 1 and 16 (16 and 64 rows per
/// CTA). Each case also at one split (forced) on `e`, `ef`, `f` and `abcef`: the
/// one-split kernel (`f`, `COPY_DIRECT`: O and LSE written by the decode kernel, no
/// combine kernel) gives the bits of decode + combine and the oracle's values. With
/// `ATTNC_DECODE_COPY` set, every other test of this suite runs that variant.
fn gpu_decode_copy_variants(_d: &CudaDevice) {
    // ATTNC_DECODE_TEST_COPIES="x,y/z,w": only copies x, y (several splits) and z, w (one
    // split) instead of the full lists (a short device run of one new variant)
    let pick = std::env::var("ATTNC_DECODE_TEST_COPIES").ok();
    let copies = |all: &[&'static str], part: usize| -> Vec<String> {
        match &pick {
            Some(v) => v
                .split('/')
                .nth(part)
                .unwrap_or("")
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            None => all.iter().map(|c| c.to_string()).collect(),
        }
    };
    let mut rng = Rng(0xc09);
    let compiled = example("causal");
    let program = compiled.names()[0].to_string();
    let variant = compiled.attention(&program).unwrap();
    let many = (0..48)
        .map(|i| if i == 1 { 1 } else { (i * 37) % 901 })
        .collect::<Vec<i32>>();
    let cases = [
        (1, 1, 20000, vec![20000], None),
        (1, 16, 20000, vec![19999], Some(16)),
        (1, 1, 20000, vec![19937], Some(128)),
        (48, 1, 901, many.clone(), Some(16)),
        (48, 16, 901, many.clone(), Some(16)),
        (48, 16, 901, many, Some(128)),
    ];
    for (b, lq, cap, sl, page) in cases {
        let c = case_as(DType::BF16, &mut rng, b, 32, 8, lq, 128, cap, sl, page);
        let caps = Captures::default();
        let what = format!("copy variants B{b} Lq{lq} {page:?}");
        let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
            .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
        let mut outs = Vec::new();
        for copy in copies(
            &[
                "0", "a", "b", "c", "abc", "d", "e", "de", "ef", "g", "abeg", "eh", "abeh", "ei",
                "abcei", "eij", "eik", "abceik", "ehik", "eikl", "eiklm",
            ],
            0,
        ) {
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy(&copy);
            let mut bound = variant.bind(o).unwrap();
            let got = bound
                .forward_with_cache(&c.q, &c.cache(), &caps)
                .unwrap_or_else(|e| panic!("{what} {copy}: cuda: {e}"));
            assert_eq!(bound.cache_path(), Some(expected_path(lq, 32, 8, 128)));
            let (o, lse) = (got.o.to_f32(), got.lse.to_f32());
            close(
                &format!("{what} {copy} o"),
                &o,
                &want.o.to_f32(),
                tol(c.dtype),
            );
            close(
                &format!("{what} {copy} lse"),
                &lse,
                &want.lse.to_f32(),
                0.002,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            outs.push((bits(&o), bits(&lse)));
        }
        assert!(
            outs.iter().all(|x| *x == outs[0]),
            "{what}: a copy variant changed the bits"
        );
        // one split (forced): `f` (COPY_DIRECT) writes O and LSE from the kernel, no
        // combine kernel; the bits of the decode + combine pair at one split
        let mut one = Vec::new();
        for copy in copies(&["e", "ef", "f", "abcef", "abefg", "efh", "efi", "efik"], 1) {
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy(&copy);
            o.decode.splits = Some(1);
            let mut bound = variant.bind(o).unwrap();
            let got = bound
                .forward_with_cache(&c.q, &c.cache(), &caps)
                .unwrap_or_else(|e| panic!("{what} {copy} one split: cuda: {e}"));
            let (o, lse) = (got.o.to_f32(), got.lse.to_f32());
            close(
                &format!("{what} {copy} one split o"),
                &o,
                &want.o.to_f32(),
                tol(c.dtype),
            );
            close(
                &format!("{what} {copy} one split lse"),
                &lse,
                &want.lse.to_f32(),
                0.002,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            one.push((bits(&o), bits(&lse)));
        }
        assert!(
            one.iter().all(|x| *x == one[0]),
            "{what}: the one-split kernel (copy f) changed the bits"
        );
        // 40 splits (forced; more than the combine's 4 warps x 8 per round): `m`, the
        // combine kernel's 16 splits per warp and round, and the merging fused kernel
        // with `e` (its prologue before the wait, session 17), chained twice — against
        // the oracle (`m` merges in other rounds: the bits may differ by rounding)
        for (copy, fused) in
            copies(&[], 2)
                .iter()
                .map(|c| (c.clone(), false))
                .chain(if pick.is_some() {
                    vec![]
                } else {
                    vec![
                        ("eik".to_string(), false),
                        ("eikm".to_string(), false),
                        ("eiklm".to_string(), false),
                        ("eik".to_string(), true),
                    ]
                })
        {
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy(&copy);
            o.decode.splits = Some(40);
            o.decode.fused_combine = fused;
            let mut bound = variant.bind(o).unwrap();
            for call in 0..2 {
                let got = bound
                    .forward_with_cache(&c.q, &c.cache(), &caps)
                    .unwrap_or_else(|e| panic!("{what} {copy} 40 splits: cuda: {e}"));
                let label = format!("{what} {copy} fused {fused} 40 splits call {call}");
                close(
                    &format!("{label} o"),
                    &got.o.to_f32(),
                    &want.o.to_f32(),
                    tol(c.dtype),
                );
                close(
                    &format!("{label} lse"),
                    &got.lse.to_f32(),
                    &want.lse.to_f32(),
                    0.002,
                );
            }
        }
    }
}

/// The tensor-core kernel's per-CTA records (`ATTNC_DECODE_COPY` letter `l`,
/// `Bound::cache_device_trace` after `cache_device_time_ms`): one record per (kv head,
/// split) at Lq 1 (G x Lq = 4 of 16 rows: a padding row), the splits' keys covering the
/// sequence, every record's times in order (start <= wait <= first tiles <= loop end <=
/// end, within a second), SM ids below 1024; and the timed call's O against the oracle
/// (the records live in padding rows the combine never reads).
fn gpu_decode_trace(_d: &CudaDevice) {
    let mut rng = Rng(0x7ace);
    let compiled = example("dense");
    let program = compiled.names()[0].to_string();
    let variant = compiled.attention(&program).unwrap();
    for page in [None, Some(16)] {
        let c = case_as(
            DType::BF16,
            &mut rng,
            1,
            32,
            8,
            1,
            128,
            20000,
            vec![19990],
            page,
        );
        let caps = Captures::default();
        let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
        o.decode.copy = attnc::options::parse_decode_copy("eikl");
        let mut bound = variant.bind(o).unwrap();
        let ms = bound
            .cache_device_time_ms(&c.q, &c.cache(), &caps, 2)
            .unwrap()
            .expect("a device time");
        assert!(ms > 0.0);
        let recs = bound.cache_device_trace().expect("trace records");
        let splits = recs.iter().map(|r| r.split).max().unwrap() as usize + 1;
        assert_eq!(
            recs.len(),
            8 * splits,
            "{page:?}: one record per (kv head, split)"
        );
        for hk in 0..8 {
            let keys: u32 = recs
                .iter()
                .filter(|r| r.kv_head == hk)
                .map(|r| r.keys)
                .sum();
            assert_eq!(
                keys, 19990,
                "{page:?}: kv head {hk}'s splits cover the sequence"
            );
        }
        for r in &recs {
            assert!(r.sm < 1024, "{page:?}: {r:?}");
            for w in r.t.windows(2) {
                let dt = w[1].wrapping_sub(w[0]);
                assert!(dt < 1_000_000_000, "{page:?}: times out of order: {r:?}");
            }
        }
        let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false).unwrap();
        let got = bound.forward_with_cache(&c.q, &c.cache(), &caps).unwrap();
        close("trace o", &got.o.to_f32(), &want.o.to_f32(), tol(c.dtype));
        close("trace lse", &got.lse.to_f32(), &want.lse.to_f32(), 0.002);
    }
}

/// Work stealing (`ATTNC_DECODE_COPY` letter `n`, `decode_mma::COPY_STEAL`): a forced
/// static split count (2 or 3 CTAs per (sequence, kv head, row group)) and
/// `DecodeTuning::steal` leaving 30-60% of the tiles to stolen splits of 1 to 3 tiles, so
/// that most of the work is taken from the counter: dense, sliding-window and
/// document-causal masks, Lq 1, 4 and 16 (16 and 64 rows per CTA), contiguous and paged
/// 16 / 128, three sequences of 1000, 0 and 333 keys (stolen splits past a sequence's
/// range are empty). Against the oracle; two calls bit for bit equal (the partials merge
/// in split order whichever CTA ran them); then many launches of one call's buffers
/// (`cache_device_time_ms`), whose last launch's records (Lq 1, letter `l`) show that the
/// counter was back at zero for it: one record per (sequence, kv head, split), none
/// older than the launch's first static CTA (a stolen split left to a previous launch
/// would keep that launch's record), and the dense mask's splits cover each sequence.
/// Small enough for compute-sanitizer.
fn gpu_decode_steal(_d: &CudaDevice) {
    let mut rng = Rng(0x57ea1);
    for name in ["dense", "sliding_window", "document_causal"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for (lq, page, statics, steal) in [
            (1, None, 2, (50, 1)),
            (1, Some(16), 3, (40, 2)),
            (4, Some(128), 2, (70, 3)),
            (16, None, 2, (50, 1)),
        ] {
            let sl = vec![1000, 0, 333];
            let c = case_as(
                DType::BF16,
                &mut rng,
                3,
                8,
                2,
                lq,
                128,
                1000,
                sl.clone(),
                page,
            );
            let mut caps = captures_for(&variant, &c, 11);
            if name == "sliding_window" {
                caps = caps.param("window", ParamValue::I32(300));
            }
            let what = format!("steal {name} lq {lq} {page:?} {statics} static {steal:?}");
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy =
                attnc::options::parse_decode_copy(if lq == 1 { "eikln" } else { "eikn" });
            o.decode.splits = Some(statics);
            o.decode.steal = Some(steal);
            o.decode.fused_combine = false;
            let mut bound = variant.bind(o).unwrap();
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let runs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|_| {
                    let got = bound
                        .forward_with_cache(&c.q, &c.cache(), &caps)
                        .unwrap_or_else(|e| panic!("{what}: cuda: {e}"));
                    (got.o.to_f32(), got.lse.to_f32())
                })
                .collect();
            assert_eq!(bound.cache_path(), Some(expected_path(lq, 8, 2, 128)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert!(
                bits(&runs[0].0) == bits(&runs[1].0) && bits(&runs[0].1) == bits(&runs[1].1),
                "{what}: two calls differ"
            );
            close(
                &format!("{what} o"),
                &runs[0].0,
                &want.o.to_f32(),
                tol(c.dtype),
            );
            close(
                &format!("{what} lse"),
                &runs[0].1,
                &want.lse.to_f32(),
                0.002,
            );
            let ms = bound
                .cache_device_time_ms(&c.q, &c.cache(), &caps, 3)
                .unwrap()
                .expect("a device time");
            assert!(ms > 0.0, "{what}");
            if lq != 1 {
                continue;
            }
            let recs = bound.cache_device_trace().expect("trace records");
            let splits = recs.iter().map(|r| r.split).max().unwrap() as usize + 1;
            assert!(splits > statics, "{what}: {splits} splits, none stolen");
            assert_eq!(
                recs.len(),
                3 * 2 * splits,
                "{what}: one record per (b, kv head, split)"
            );
            // times relative to a static CTA's start (low 32 bits of the ns timer)
            let t0 = recs
                .iter()
                .find(|r| (r.split as usize) < statics)
                .unwrap()
                .t[0];
            let rel = |x: u32| x.wrapping_sub(t0) as i32 as i64;
            let first = recs
                .iter()
                .filter(|r| (r.split as usize) < statics)
                .map(|r| rel(r.t[0]))
                .min()
                .unwrap();
            for r in &recs {
                assert!(
                    rel(r.t[0]) >= first,
                    "{what}: a record older than the launch's first CTA: {r:?}"
                );
            }
            if name == "dense" {
                for (b, &n) in sl.iter().enumerate() {
                    for hk in 0..2 {
                        let keys: u32 = recs
                            .iter()
                            .filter(|r| r.b as usize == b && r.kv_head == hk)
                            .map(|r| r.keys)
                            .sum();
                        assert_eq!(keys, n as u32, "{what}: b {b} kv head {hk}: splits' keys");
                    }
                }
            }
        }
    }
}

/// Balanced splits (`ATTNC_DECODE_COPY` letter `o`, `decode_mma::COPY_BALANCED`): forced
/// split counts whose tile cut differs from the chunked one (3 splits of a 1000-key
/// sequence = 16 tiles: 5 / 5 / 6 against 6 / 6 / 4; 5 and 7 splits: some splits of the
/// 333-key sequence's 6 tiles empty) and the runtime's own count, on the plain kernel
/// (decode + combine) and the merging fused kernel: dense, sliding-window and
/// document-causal masks, Lq 1, 4 and 16, contiguous and paged 16 / 128, four sequences
/// of 1000, 0, 333 and 1 keys. A split that overlapped another or left keys out would
/// miss the oracle; two calls bit for bit equal (deterministic). Small enough for
/// compute-sanitizer.
fn gpu_decode_balanced(_d: &CudaDevice) {
    let mut rng = Rng(0xba1a);
    for name in ["dense", "sliding_window", "document_causal"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for (lq, page, splits, fused) in [
            (1, None, Some(3), false),
            (1, Some(16), Some(5), false),
            (4, Some(128), Some(7), false),
            (16, None, Some(3), false),
            (1, None, None, false),
            (4, None, Some(5), true),
            (1, Some(16), Some(3), true),
        ] {
            let sl = vec![1000, 0, 333, 1];
            let c = case_as(
                DType::BF16,
                &mut rng,
                4,
                8,
                2,
                lq,
                128,
                1000,
                sl.clone(),
                page,
            );
            let mut caps = captures_for(&variant, &c, 11);
            if name == "sliding_window" {
                caps = caps.param("window", ParamValue::I32(300));
            }
            let what = format!("balanced {name} lq {lq} {page:?} splits {splits:?} fused {fused}");
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy("eiko");
            o.decode.splits = splits;
            o.decode.fused_combine = fused;
            let mut bound = variant.bind(o).unwrap();
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let runs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|_| {
                    let got = bound
                        .forward_with_cache(&c.q, &c.cache(), &caps)
                        .unwrap_or_else(|e| panic!("{what}: cuda: {e}"));
                    (got.o.to_f32(), got.lse.to_f32())
                })
                .collect();
            assert_eq!(bound.cache_path(), Some(expected_path(lq, 8, 2, 128)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert!(
                bits(&runs[0].0) == bits(&runs[1].0) && bits(&runs[0].1) == bits(&runs[1].1),
                "{what}: two calls differ"
            );
            close(
                &format!("{what} o"),
                &runs[0].0,
                &want.o.to_f32(),
                tol(c.dtype),
            );
            close(
                &format!("{what} lse"),
                &runs[0].1,
                &want.lse.to_f32(),
                0.002,
            );
        }
    }
}

/// Splits that continue their streams (`ATTNC_DECODE_COPY` letter `p`,
/// `decode_mma::COPY_STREAM`): forced split counts (2 or 3) and `DecodeTuning::steal`
/// leaving most of the tiles to chunks of 2 or 3 tiles taken from the counter inside the
/// splits' loops: dense, sliding-window and document-causal masks, Lq 1, 4 and 16,
/// contiguous and paged 16 / 128, four sequences of 3000, 0, 333 and 1 keys (the short
/// ones have no chunks: their CTAs' takes come back empty). Against the oracle (results
/// are not bit-reproducible: which CTA merges which chunk depends on timing); then many
/// launches of one call's buffers (`cache_device_time_ms`) and a call after them against
/// the oracle again: a counter left non-zero by a launch would make the next one skip
/// chunks. Small enough for compute-sanitizer.
fn gpu_decode_stream(_d: &CudaDevice) {
    let mut rng = Rng(0x57e4);
    for name in ["dense", "sliding_window", "document_causal"] {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        for (lq, page, splits, steal) in [
            (1, None, 2, (30, 2)),
            (1, Some(16), 3, (20, 3)),
            (4, Some(128), 2, (50, 2)),
            (16, None, 2, (30, 3)),
        ] {
            let sl = vec![3000, 0, 333, 1];
            let c = case_as(
                DType::BF16,
                &mut rng,
                4,
                8,
                2,
                lq,
                128,
                3000,
                sl.clone(),
                page,
            );
            let mut caps = captures_for(&variant, &c, 11);
            if name == "sliding_window" {
                caps = caps.param("window", ParamValue::I32(1500));
            }
            let what = format!("stream {name} lq {lq} {page:?} {splits} splits {steal:?}");
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy("eikp");
            o.decode.splits = Some(splits);
            o.decode.steal = Some(steal);
            o.decode.fused_combine = false;
            let mut bound = variant.bind(o).unwrap();
            let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
                .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
            let check = |bound: &mut attnc::Bound, when: &str| {
                let got = bound
                    .forward_with_cache(&c.q, &c.cache(), &caps)
                    .unwrap_or_else(|e| panic!("{what} {when}: cuda: {e}"));
                close(
                    &format!("{what} {when} o"),
                    &got.o.to_f32(),
                    &want.o.to_f32(),
                    tol(c.dtype),
                );
                close(
                    &format!("{what} {when} lse"),
                    &got.lse.to_f32(),
                    &want.lse.to_f32(),
                    0.002,
                );
            };
            check(&mut bound, "first");
            assert_eq!(bound.cache_path(), Some(expected_path(lq, 8, 2, 128)));
            check(&mut bound, "second");
            let ms = bound
                .cache_device_time_ms(&c.q, &c.cache(), &caps, 4)
                .unwrap()
                .expect("a device time");
            assert!(ms > 0.0, "{what}");
            check(&mut bound, "after timed launches");
        }
    }
}

/// The products on wgmma (`ATTNC_DECODE_COPY` letter `q`, `decode_mma::COPY_WGMMA`: 64 rows
/// per CTA on sm_90) with the default's other letters: dense, causal, sliding-window,
/// document-causal and soft-cap, bf16 and f16, D128 and D64; GQA 4:1 at Lq 16 (64 rows:
/// the path), 8:1 at Lq 8 (64 rows) and Lq 16 (two row groups of 64), 1:1 and 2:1 at Lq 16
/// (16 / 32 rows: the bit ignored), Lq 8 at 4:1 (32 rows; with letter `r`,
/// `COPY_WGMMA_ROWS32`, the 64-row wgmma kernel, as 2:1 at Lq 16; letter `s`,
/// `COPY_WGMMA_DEEP`: the 6-stage ring), chunked prefill (Lq 40 at 2:1:
/// 80 rows, the second group partly padding); contiguous and paged 16 / 128, forced split
/// counts (one split: the fused kind writes O itself; the merging fused kernel) and the
/// runtime's; sequences of 1000, 0, 333 and 1 keys (the empty one's rows exactly as the
/// oracle's: LSE -inf) and a window of 300 (tiles past a split's end, partial tiles). Against the f64
/// oracle; two calls bit for bit equal. Small enough for compute-sanitizer.
fn gpu_decode_wgmma(_d: &CudaDevice) {
    // (example, dtype, hq, hkv, lq, d), (page, splits, merging fused, copy)
    let cases: &[(WgmmaCase, WgmmaRun)] = &[
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, Some(3), false, "efikjoq"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (Some(16), None, false, "efikjoq"),
        ),
        (
            ("dense", DType::F16, 8, 1, 8, 64),
            (Some(128), Some(2), false, "efikjoq"),
        ),
        (
            ("dense", DType::BF16, 8, 1, 16, 128),
            (None, Some(1), false, "efikjoq"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 8, 128),
            (None, Some(3), false, "efikjoqr"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 16, 128),
            (Some(128), Some(5), true, "efikjoq"),
        ),
        (
            ("causal", DType::BF16, 8, 1, 8, 128),
            (None, None, false, "efikjoq"),
        ),
        (
            ("causal", DType::BF16, 4, 2, 40, 128),
            (Some(16), None, false, "efikjoq"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 8, 128),
            (Some(16), None, false, "efikjoqr"),
        ),
        (
            ("sliding_window", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(3), false, "efikjoq"),
        ),
        (
            ("sliding_window", DType::F16, 8, 1, 16, 64),
            (None, Some(1), false, "efikjoq"),
        ),
        (
            ("sliding_window", DType::BF16, 4, 2, 16, 128),
            (None, Some(2), false, "efikjoqr"),
        ),
        (
            ("document_causal", DType::BF16, 8, 2, 16, 128),
            (None, Some(2), false, "efikjoq"),
        ),
        (
            ("document_causal", DType::BF16, 8, 2, 8, 128),
            (Some(16), None, false, "efikjoq"),
        ),
        (
            ("softcap", DType::BF16, 8, 2, 16, 128),
            (None, None, false, "efikjoq"),
        ),
        (
            ("dense", DType::BF16, 2, 2, 16, 128),
            (None, Some(2), false, "efikjoqr"),
        ),
        (
            ("causal", DType::BF16, 4, 2, 16, 128),
            (Some(16), None, false, "efikjoq"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, None, false, "efikjoqs"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(3), false, "efikjoqs"),
        ),
        (
            ("sliding_window", DType::BF16, 8, 2, 16, 128),
            (Some(128), Some(1), false, "efikjoqs"),
        ),
        (
            ("document_causal", DType::BF16, 8, 1, 16, 128),
            (None, Some(5), true, "efikjoqs"),
        ),
    ];
    wgmma_cases(0x36a9, cases, None);
}

/// (example, dtype, hq, hkv, lq, d) of [`wgmma_cases`].
type WgmmaCase = (&'static str, DType, usize, usize, usize, usize);
/// (page, splits, merging fused, copy) of [`wgmma_cases`].
type WgmmaRun = (Option<usize>, Option<usize>, bool, &'static str);

/// `gpu_decode_wgmma`'s check of each case: sequences of 1000, 0, 333 and 1 keys (a
/// window of 300 for the sliding window), against the f64 oracle, two calls bit-equal.
/// With `twin`, the copy without that letter must give the same bits too.
fn wgmma_cases(seed: u64, cases: &[(WgmmaCase, WgmmaRun)], twin: Option<char>) {
    let mut rng = Rng(seed);
    for &((name, dtype, hq, hkv, lq, d), (page, splits, fused, copy)) in cases {
        let compiled = example(name);
        let program = compiled.names()[0].to_string();
        let variant = compiled.attention(&program).unwrap();
        let sl = vec![1000, 0, 333, 1];
        let c = case_as(dtype, &mut rng, 4, hq, hkv, lq, d, 1000, sl, page);
        let mut caps = captures_for(&variant, &c, 13);
        if name == "sliding_window" {
            caps = caps.param("window", ParamValue::I32(300));
        }
        let what = format!(
            "wgmma {copy} {name} {dtype:?} hq {hq} hkv {hkv} lq {lq} d {d} {page:?} splits {splits:?} fused {fused}"
        );
        let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
        o.decode.copy = attnc::options::parse_decode_copy(copy);
        o.decode.splits = splits;
        o.decode.fused_combine = fused;
        let mut bound = variant.bind(o).unwrap();
        let want = run(&compiled, &program, &c, Backend::Reference, 1, &caps, false)
            .unwrap_or_else(|e| panic!("{what}: oracle: {e}"));
        let runs: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|_| {
                let got = bound
                    .forward_with_cache(&c.q, &c.cache(), &caps)
                    .unwrap_or_else(|e| panic!("{what}: cuda: {e}"));
                (got.o.to_f32(), got.lse.to_f32())
            })
            .collect();
        assert_eq!(
            bound.cache_path(),
            Some(expected_path(lq, hq, hkv, d)),
            "{what}"
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert!(
            bits(&runs[0].0) == bits(&runs[1].0) && bits(&runs[0].1) == bits(&runs[1].1),
            "{what}: two calls differ"
        );
        close(
            &format!("{what} o"),
            &runs[0].0,
            &want.o.to_f32(),
            tol(c.dtype),
        );
        close(
            &format!("{what} lse"),
            &runs[0].1,
            &want.lse.to_f32(),
            0.002,
        );
        // `twin`: the copy without that letter gives the same bits
        if let Some(x) = twin {
            let other: String = copy.chars().filter(|&ch| ch != x).collect();
            let mut o = BindOptions::new(Backend::Cuda, c.bind_shape(), c.dtype);
            o.decode.copy = attnc::options::parse_decode_copy(&other);
            o.decode.splits = splits;
            o.decode.fused_combine = fused;
            let mut twin_bound = variant.bind(o).unwrap();
            let got = twin_bound
                .forward_with_cache(&c.q, &c.cache(), &caps)
                .unwrap_or_else(|e| panic!("{what}: cuda {other}: {e}"));
            assert!(
                bits(&got.o.to_f32()) == bits(&runs[0].0)
                    && bits(&got.lse.to_f32()) == bits(&runs[0].1),
                "{what}: differs from {other}"
            );
        }
    }
}

/// P V's wait deferred into the next tile (`ATTNC_DECODE_COPY` letter `t`,
/// `decode_mma::COPY_WGMMA_DEFER`, with the wgmma path `q`): dense, causal,
/// sliding-window, document-causal and soft-cap; bf16 / f16, D128 / D64; GQA 1:1 and 2:1
/// (16 / 32 rows: the bit ignored), 4:1 at Lq 16 and 8:1 at Lq 8 and 16 (64 rows), Lq 8
/// at 4:1 with `r` (the 64-row kernel); contiguous and paged 16 / 128; forced 1, 2, 3, 5
/// splits (one split: the fused kind writes O itself; the merging fused kernel) and the
/// runtime's count; sequences of 1000, 0, 333 and 1 keys: against the f64 oracle, two
/// calls bit-equal, and bit-equal to the same copy without `t` (the same products and
/// softmax in the same order: only where the waits sit moves).
fn gpu_decode_wgmma_defer(_d: &CudaDevice) {
    let cases: &[(WgmmaCase, WgmmaRun)] = &[
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, Some(3), false, "efikjoqt"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (Some(16), None, false, "efikjoqt"),
        ),
        (
            ("dense", DType::F16, 8, 1, 8, 64),
            (Some(128), Some(2), false, "efikjoqt"),
        ),
        (
            ("dense", DType::BF16, 8, 1, 16, 128),
            (None, Some(1), false, "efikjoqt"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 8, 128),
            (None, Some(3), false, "efikjoqrt"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 16, 128),
            (Some(128), Some(5), true, "efikjoqt"),
        ),
        (
            ("causal", DType::BF16, 8, 1, 8, 128),
            (None, None, false, "efikjoqt"),
        ),
        (
            ("sliding_window", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(3), false, "efikjoqt"),
        ),
        (
            ("sliding_window", DType::F16, 8, 1, 16, 64),
            (None, Some(1), false, "efikjoqt"),
        ),
        (
            ("document_causal", DType::BF16, 8, 2, 16, 128),
            (None, Some(2), false, "efikjoqt"),
        ),
        (
            ("softcap", DType::BF16, 8, 2, 16, 128),
            (Some(16), None, false, "efikjoqt"),
        ),
        (
            ("dense", DType::BF16, 2, 2, 16, 128),
            (None, Some(2), false, "efikjoqt"),
        ),
        (
            ("causal", DType::BF16, 4, 2, 16, 128),
            (Some(16), None, false, "efikjoqt"),
        ),
    ];
    wgmma_cases(0x36b1, cases, Some('t'));
}

/// Two warpgroups per CTA on the key halves of each tile (`ATTNC_DECODE_COPY` letter `v`,
/// `decode_mma::COPY_WGMMA_WG2`, with the wgmma path `q`; 256 threads): dense, causal,
/// sliding-window, document-causal and soft-cap; bf16 / f16, D128 / D64; GQA 4:1 at Lq 16
/// and 8:1 at Lq 8 and 16 (64 rows), Lq 8 at 4:1 with `r` (the 64-row kernel, rows past
/// the group padding), 1:1 and 2:1 (16 / 32 rows: the bit ignored); contiguous and paged
/// 16 / 128; forced 1 (the one-split fused kind: ignored), 2, 3, 5 splits, the merging
/// fused kernel (ignored) and the runtime's count; sequences of 1000, 0, 333 and 1 keys
/// (partial last tiles, empty splits): against the f64 oracle, two calls bit-equal.
/// With `w` (`decode_mma::COPY_WGMMA_WG2_REGS`, the register cap; document-causal spills
/// under it): cases 16..=18. `ATTNC_GPU_WG2_CASES=i,j,..` runs only those cases (by
/// index; the sanitizers' runs).
fn gpu_decode_wgmma_wg2(_d: &CudaDevice) {
    let cases: &[(WgmmaCase, WgmmaRun)] = &[
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, Some(3), false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, None, false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(2), false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (Some(128), None, false, "efikjoqv"),
        ),
        (
            ("dense", DType::F16, 8, 1, 8, 64),
            (Some(128), Some(2), false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 8, 1, 16, 128),
            (None, Some(1), false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 8, 128),
            (None, Some(3), false, "efikjoqrv"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 16, 128),
            (Some(128), Some(5), true, "efikjoqv"),
        ),
        (
            ("causal", DType::BF16, 8, 1, 8, 128),
            (Some(16), None, false, "efikjoqv"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 16, 128),
            (None, Some(5), false, "efikjoqtv"),
        ),
        (
            ("sliding_window", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(3), false, "efikjoqv"),
        ),
        (
            ("sliding_window", DType::F16, 8, 1, 16, 64),
            (None, Some(2), false, "efikjoqv"),
        ),
        (
            ("document_causal", DType::BF16, 8, 2, 16, 128),
            (None, Some(2), false, "efikjoqv"),
        ),
        (
            ("softcap", DType::BF16, 8, 2, 16, 128),
            (Some(16), None, false, "efikjoqv"),
        ),
        (
            ("dense", DType::BF16, 2, 2, 16, 128),
            (None, Some(2), false, "efikjoqv"),
        ),
        (
            ("causal", DType::BF16, 4, 2, 16, 128),
            (Some(16), None, false, "efikjoqv"),
        ),
        // w: the register cap (16..=18)
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, Some(3), false, "efikjoquvw"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (Some(16), None, false, "efikjoqvw"),
        ),
        (
            ("document_causal", DType::BF16, 8, 2, 16, 128),
            (Some(128), Some(2), false, "efikjoqvw"),
        ),
    ];
    // ATTNC_GPU_WG2_CASES=i,j,..: only those cases (the sanitizers' runs)
    let only: Option<Vec<usize>> = std::env::var("ATTNC_GPU_WG2_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let picked: Vec<(WgmmaCase, WgmmaRun)> = cases
        .iter()
        .enumerate()
        .filter(|(i, _)| only.as_ref().is_none_or(|o| o.contains(i)))
        .map(|(_, c)| *c)
        .collect();
    assert!(!picked.is_empty(), "ATTNC_GPU_WG2_CASES picks no case");
    wgmma_cases(0x36d7, &picked, None);
}

/// The combine kernel with one CTA per (query head, sequence) (`ATTNC_DECODE_COPY` letter
/// `u`, `decode_mma::COPY_COMBINE_ROWS`; its warps over the rows): dense, causal,
/// sliding-window, document-causal and soft-cap; bf16 / f16, D128 / D64; Lq 1, 4, 8, 16
/// (more rows than warps: a warp takes several); GQA 1:1 to 8:1 (16, 32, 64 rows; two
/// row groups at 8:1 Lq 16); the mma.sync and the wgmma kernels; contiguous and paged 16
/// / 128; forced 2, 3, 5 and 9 splits (more than one round of loads per row) and the
/// runtime's count; sequences of 1000, 0, 333 and 1 keys: against the f64 oracle, two
/// calls bit-equal.
fn gpu_decode_combine_rows(_d: &CudaDevice) {
    let cases: &[(WgmmaCase, WgmmaRun)] = &[
        (
            ("dense", DType::BF16, 8, 2, 16, 128),
            (None, Some(3), false, "efikjoqu"),
        ),
        (
            ("dense", DType::BF16, 8, 2, 1, 128),
            (Some(16), Some(9), false, "efikjoqu"),
        ),
        (
            ("dense", DType::F16, 8, 1, 8, 64),
            (Some(128), Some(2), false, "efikjoqu"),
        ),
        (
            ("causal", DType::BF16, 8, 1, 16, 128),
            (None, Some(5), false, "efikjoqu"),
        ),
        (
            ("causal", DType::BF16, 8, 2, 4, 128),
            (Some(16), None, false, "efikjou"),
        ),
        (
            ("sliding_window", DType::BF16, 8, 2, 16, 128),
            (Some(16), Some(3), false, "efikjoqtu"),
        ),
        (
            ("document_causal", DType::BF16, 4, 4, 16, 128),
            (None, Some(2), false, "efikjoqu"),
        ),
        (
            ("softcap", DType::BF16, 8, 2, 16, 128),
            (None, None, false, "efikjoqu"),
        ),
    ];
    wgmma_cases(0x36c3, cases, None);
}

type Test = (&'static str, fn(&CudaDevice));
// (the launches' test first: it is the only GPU check of chained launches, and a time
// limit cuts the list from the end)
const TESTS: &[Test] = &[
    ("gpu_decode_combine_launches", gpu_decode_combine_launches),
    ("gpu_decode_copy_variants", gpu_decode_copy_variants),
    ("gpu_decode_examples", gpu_decode_examples),
    ("gpu_decode_shapes", gpu_decode_shapes),
    ("gpu_decode_long", gpu_decode_long),
    ("gpu_decode_head_dims", gpu_decode_head_dims),
    ("gpu_decode_prefill_path", gpu_decode_prefill_path),
    ("gpu_decode_chunked_causal", gpu_decode_chunked_causal),
    ("gpu_decode_chunked_sliding", gpu_decode_chunked_sliding),
    ("gpu_decode_chunked_document", gpu_decode_chunked_document),
    ("gpu_decode_chunked_scores", gpu_decode_chunked_scores),
    ("gpu_decode_prefill_runs", gpu_decode_prefill_runs),
    ("gpu_decode_sanitize", gpu_decode_sanitize),
    ("gpu_decode_caller_buffers", gpu_decode_caller_buffers),
    (
        "gpu_decode_caller_prefill_runs",
        gpu_decode_caller_prefill_runs,
    ),
    (
        "gpu_decode_caller_runs_growing_lengths",
        gpu_decode_caller_runs_growing_lengths,
    ),
    ("gpu_decode_caller_runs_d64", gpu_decode_caller_runs_d64),
    (
        "gpu_decode_caller_prefill_device",
        gpu_decode_caller_prefill_device,
    ),
    (
        "gpu_decode_caller_prefill_device_documents",
        gpu_decode_caller_prefill_device_documents,
    ),
    ("gpu_decode_trace", gpu_decode_trace),
    ("gpu_decode_steal", gpu_decode_steal),
    ("gpu_decode_balanced", gpu_decode_balanced),
    ("gpu_decode_stream", gpu_decode_stream),
    ("gpu_decode_wgmma", gpu_decode_wgmma),
    ("gpu_decode_wgmma_defer", gpu_decode_wgmma_defer),
    ("gpu_decode_combine_rows", gpu_decode_combine_rows),
    ("gpu_decode_wgmma_wg2", gpu_decode_wgmma_wg2),
];

fn main() {
    gpu_util::run_gpu_tests(TESTS)
}
