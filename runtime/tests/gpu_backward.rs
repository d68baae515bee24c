//! GPU backward tests: the three kernels of `backend::llvm::backward` (pre, dK/dV, dQ)
//! against an f64 reference of the backward formulas (design.md / issue 10:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS' = P ∘ (dP − D + dLSE)`, `D = rowsum(dO ∘ O)`,
//! `dS = dS' ∂score/∂s`, `dQ = scale dS K`, `dK = scale dSᵀ Q`, GQA sums over the group),
//! computed here from the same rounded inputs (Q, K, V, O, dO in the input type; LSE
//! from the f64 forward oracle), with mask and score evaluated by the IR interpreter and
//! `∂score/∂s` by a central difference of the interpreted score (so it does not share
//! the kernel's derivative IR, `grad::differentiate`).
//!
//! Covered: every sample program (dense, causal, sliding window, ALiBi and causal,
//! soft-cap and causal, document and causal, a bias table read at a computed index) on
//! shapes with odd lengths, Lq != Lkv, GQA, D 32/64/128, bf16 and f16; a mask with fully
//! masked rows (their dQ must be exactly 0); dLSE; the closed-form kernels run with
//! `KvAllPartial` (every block partial) too; determinism (repeated runs bit-identical,
//! capture gradients included); `Bound::backward` on the CUDA backend against the f64
//! reference gradients of `reference_grad` for every attention in examples/, and the
//! capture gradients (captured f32/f16/bf16 tensors and f32 params read by the score:
//! learned bias, relative-position table, T5 buckets, a tensor read twice, a learnable
//! soft-cap) on random shapes against `reference_grad`.
//!
//! Capture gradients are compared with `reference_grad` given a dLSE that makes its
//! `D = rowsum(dO ∘ O)` use the O the kernels are given (rounded to the input type;
//! `reference_grad` recomputes O exactly): `dLSE' = dLSE + rowsum(dO ∘ (O_exact −
//! O_given))`. Without it a sum of dS' over many elements (a table entry, a param) would
//! mostly measure the rounding of O, not the kernels. Tolerance: the bf16/f16 one below
//! plus an absolute 1e-4 (sums that cancel to ~0).
//!
//! Tolerance per gradient tensor G (reference R): |G − R| <= a max|R| + r |R| with
//! (a, r) = (0.02, 0.03) for bf16 and (0.005, 0.01) for f16: P and dS are rounded to the
//! input type before their products (relative 2^-8 / 2^-11), ex2/tanh are approximate.
//! NaN never passes.
//!
//! `harness = false`, run by libtest-mimic (`gpu_util::run_gpu_tests_and_benches`):
//! libtest's filters, `--exact`, `--skip`, `--list` and summary line; without a CUDA
//! device each test prints `SKIPPED (no CUDA device)` and counts as ignored. The
//! benchmark is an ignored trial: `gpu_backward --ignored bench`.
//!
//! The kernels run with the runtime's options for the device and case
//! (`PtxOptions::backward` refined by `backward_for_binding`: wgmma on sm_90 at D 64/128
//! with dQ fused into the dK/dV kernel and ordered, else mma.sync);
//! `ATTNC_BWD_TEST_CFG=sync64x64` runs the tests on the mma.sync path instead,
//! `ATTNC_BWD_TEST_CFG=separate` on the two-kernel wgmma path of the caller-buffer
//! entry points (an entry as the benchmark's `ATTNC_BWD_BENCH_CFG`, e.g.
//! `ATTNC_BWD_BENCH_CFG=default,separate,wg64x64o,wg64x128a`: one line per configuration
//! with each kernel's time alone; `ATTNC_BWD_BENCH_ONLY=full,causal` picks variants,
//! `ATTNC_BWD_BENCH_D=128` the D128 shape).
//! `gpu_backward_dq_schemes` runs every dQ scheme (separate, fused ordered at kv tiles
//! of 64 and 128, ordered with bulk additions with and without the TMA producer warp
//! (`PtxOptions::bwd_tma`, suffix `t`), fused atomic; each fused one also with its
//! products issued early, `PtxOptions::overlap`, config suffix `p`; at D64 also q tiles
//! of 128, e.g. `wg128x128btl`, the binding's default for dense, causal and soft-cap)
//! against the reference;
//! the longest-first CTA order (`PtxOptions::bwd_lpt`, suffix `l`) is the default for
//! causal-type masks: the tests take the runtime's options for each case
//! (`PtxOptions::backward_for_binding`: that order, float positions);
//! `gpu_backward_is_deterministic` checks four runs bit-identical (dQ, dK, dV, capture
//! gradients) under the defaults; `gpu_backward_fused_sanitize` holds the small D128 and
//! D64 cases for compute-sanitizer (memcheck, racecheck) of the default fused kernel;
//! `gpu_backward_convert_timeout` forces the dQ conversion's spin-budget fallback
//! (`PtxOptions::bwd_convert_timeout_now`) and checks its count and gradients;
//! `gpu_backward_nondeterministic` runs the non-deterministic kernels
//! (`attnc::BackwardOptions { deterministic: false }`: unordered dQ, q tiles of 80 at
//! dense D128) against the reference, dK/dV run to run, through `Bound::backward_with`,
//! and `gpu_backward_caller_buffers` them on caller buffers too.

mod gpu_util;

use attnc::cuda::CudaDevice;
use attnc::cuda::backward::{BwdBlocks, CudaBackward, Grads, LaunchBlocks, emit_backward_kernels};
use attnc_compiler::backend::llvm::{InputType, KvBounds, PtxOptions, samples};
use attnc_compiler::interp::{Args, Bindings, eval};
use attnc_compiler::ir::{Arg, BinOp, Cmp, FnKind, Function, Inst, Program, Type};
use attnc_compiler::plan::Plan;
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use attnc_grammar::ast::Span;
use gpu_util::*;

/// `q >= kv + 5`: rows 0..5 are fully masked (a closed form).
fn late_start() -> Program {
    let mut f = Function::new(FnKind::Mask);
    let push = |f: &mut Function, i, t| f.push(i, t, Span::default());
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    let five = push(&mut f, Inst::ConstI32(5), Type::I32);
    let k5 = push(&mut f, Inst::Binary(BinOp::IAdd, kv, five), Type::I32);
    f.ret = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Ge), q, k5),
        Type::Bool,
    );
    Program {
        name: "late_start".into(),
        span: Span::default(),
        params: vec![],
        tensors: vec![],
        mask: Some(f),
        score: None,
    }
}

/// The f64 reference gradients (f32 out) of the formulas in the header.
#[allow(clippy::too_many_arguments)]
fn reference_grads(
    p: &Program,
    sh: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    dlse: Option<&[f32]>,
    scale: f32,
    bind: &Bindings,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, dv) = (sh.d, sh.dv);
    let mut dq = vec![0f64; sh.q_len()];
    let mut dk = vec![0f64; sh.k_len()];
    let mut dvv = vec![0f64; sh.v_len()];
    let mut scratch = Vec::new();
    let mut score = |args: Args| -> f64 {
        match &p.score {
            Some(f) => eval(f, p, args, bind, &mut scratch).unwrap().as_f32() as f64,
            None => args.s as f64,
        }
    };
    let mut mscratch = Vec::new();
    for b in 0..sh.b {
        for h in 0..sh.hq {
            let hk = sh.kv_head(h);
            for i in 0..sh.lq {
                let row = (b * sh.hq + h) * sh.lq + i;
                let l = lse[row] as f64;
                if l == f64::NEG_INFINITY {
                    continue;
                }
                let qrow = &q[row * d..][..d];
                let dorow = &d_o[row * dv..][..dv];
                let delta: f64 = o[row * dv..][..dv]
                    .iter()
                    .zip(dorow)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum::<f64>()
                    - dlse.map_or(0.0, |x| x[row] as f64);
                for j in 0..sh.lkv {
                    let kr = ((b * sh.hkv + hk) * sh.lkv + j) * d;
                    let vr = ((b * sh.hkv + hk) * sh.lkv + j) * dv;
                    let dot: f64 = qrow
                        .iter()
                        .zip(&k[kr..kr + d])
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    let raw = (scale as f64 * dot) as f32;
                    let args = Args {
                        s: raw,
                        b: b as i32,
                        h: h as i32,
                        q: i as i32,
                        kv: j as i32,
                    };
                    if let Some(m) = &p.mask
                        && !eval(m, p, args, bind, &mut mscratch).unwrap().as_bool()
                    {
                        continue;
                    }
                    let t = score(args);
                    let pr = (t - l).exp();
                    if pr == 0.0 || !t.is_finite() {
                        continue;
                    }
                    let dp: f64 = dorow
                        .iter()
                        .zip(&v[vr..vr + dv])
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    let fprime = if p.score.is_some() {
                        let hstep = 1e-2f32 * raw.abs().max(1.0);
                        let up = score(Args {
                            s: raw + hstep,
                            ..args
                        });
                        let dn = score(Args {
                            s: raw - hstep,
                            ..args
                        });
                        (up - dn) / (2.0 * hstep as f64)
                    } else {
                        1.0
                    };
                    let ds = pr * (dp - delta) * fprime;
                    for c in 0..d {
                        dq[row * d + c] += scale as f64 * ds * k[kr + c] as f64;
                        dk[kr + c] += scale as f64 * ds * qrow[c] as f64;
                    }
                    for c in 0..dv {
                        dvv[vr + c] += pr * dorow[c] as f64;
                    }
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|y| y as f32).collect();
    (f(dq), f(dk), f(dvv))
}

fn tolerance(ty: InputType) -> (f32, f32) {
    match ty {
        InputType::Bf16 => (0.02, 0.03),
        InputType::F16 => (0.005, 0.01),
    }
}

/// Checks one f32 gradient (a capture's) against the reference, with [`tolerance`] plus
/// an absolute 1e-4; panics with the worst element.
fn compare_f32(what: &str, got: &[f32], want: &[f32], ty: InputType) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (a, r) = tolerance(ty);
    let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let lim = a * max + r * w.abs() + 1e-4;
        if err.is_nan() || err > lim {
            panic!("{what}[{i}] = {g}, reference {w} (max |ref| {max}, limit {lim})");
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
    println!(
        "    {what}: max err {:.3e} at {} (max |ref| {max:.3e}, {} elements)",
        worst.1,
        worst.0,
        want.len()
    );
}

/// The dLSE that makes `reference_grad`'s D use `o_given` (module docs): `dlse +
/// rowsum(dO ∘ (o_exact − o_given))` per row.
fn aligned_dlse(
    sh: &Shape,
    d_o: &[f32],
    o_exact: &[f32],
    o_given: &[f32],
    dlse: Option<&[f32]>,
) -> Vec<f32> {
    (0..sh.lse_len())
        .map(|row| {
            let r = row * sh.dv..(row + 1) * sh.dv;
            let fix: f64 = d_o[r.clone()]
                .iter()
                .zip(&o_exact[r.clone()])
                .zip(&o_given[r])
                .map(|((d, e), g)| *d as f64 * (*e as f64 - *g as f64))
                .sum();
            (dlse.map_or(0.0, |x| x[row] as f64) + fix) as f32
        })
        .collect()
}

/// Checks the capture gradients of one backward (per tensor id and per param, as
/// `reference_grad` returns them) against `reference_grad`'s.
fn compare_captures(
    p: &Program,
    tensors: &[Option<Vec<f32>>],
    params: &[Option<f32>],
    want: &attnc_compiler::reference_grad::Grads,
    ty: InputType,
) {
    let caps = attnc_compiler::backend::llvm::backward::capture_grads(p);
    for t in &caps.tensors {
        let name = &p.tensors[*t as usize].name;
        let got = tensors[*t as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("no gradient of `{name}`"));
        let w = want.tensors[*t as usize]
            .as_ref()
            .expect("reference gradient");
        compare_f32(&format!("d{name}"), got, w, ty);
    }
    for (i, info) in p.params.iter().enumerate() {
        if let Some(w) = want.params[i] {
            // a param the score does not read differentiably has gradient 0
            let g = match params[i] {
                Some(g) => g,
                None if !caps.params.contains(&(i as u32)) => 0.0,
                None => panic!("no gradient of `{}`", info.name),
            };
            compare_f32(&format!("d{}", info.name), &[g], &[w], ty);
        }
    }
}

/// Checks one gradient against the reference; panics with the worst element.
fn compare(what: &str, got: &[u16], want: &[f32], ty: InputType) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (a, r) = tolerance(ty);
    let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = from_bits(*g, ty);
        let err = (g - w).abs();
        let lim = a * max + r * w.abs();
        if err.is_nan() || err > lim {
            panic!("{what}[{i}] = {g}, reference {w} (max |ref| {max}, limit {lim})");
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
    println!(
        "    {what}: max err {:.3e} at {} (max |ref| {max:.3e})",
        worst.1, worst.0
    );
}

struct Inputs {
    q: (Vec<u16>, Vec<f32>),
    k: (Vec<u16>, Vec<f32>),
    v: (Vec<u16>, Vec<f32>),
    o: (Vec<u16>, Vec<f32>),
    /// The f64 oracle's O (f32), before the rounding to the input type.
    o_exact: Vec<f32>,
    lse: Vec<f32>,
    d_o: (Vec<u16>, Vec<f32>),
    dlse: Option<Vec<f32>>,
    bind: Bindings,
    scale: f32,
}

fn inputs(p: &Program, sh: &Shape, ty: InputType, seed: u64, with_dlse: bool) -> Inputs {
    let mut r = rng(seed);
    let q = random_input(&mut r, sh.q_len(), 1.0, ty);
    let k = random_input(&mut r, sh.k_len(), 1.0, ty);
    let v = random_input(&mut r, sh.v_len(), 1.0, ty);
    let d_o = random_input(&mut r, sh.o_len(), 1.0, ty);
    let bind = bindings(p, sh, &mut r, 37, 4);
    let scale = 1.0 / (sh.d as f32).sqrt();
    let fwd = reference::attention(p, sh, &q.1, &k.1, &v.1, scale, &bind).unwrap();
    let o_bits: Vec<u16> = fwd.o.iter().map(|x| to_bits(*x, ty)).collect();
    let o_vals = o_bits.iter().map(|b| from_bits(*b, ty)).collect();
    let dlse = with_dlse.then(|| {
        use rand::Rng;
        (0..sh.lse_len())
            .map(|_| r.random_range(-0.5f32..0.5))
            .collect()
    });
    Inputs {
        q,
        k,
        v,
        o: (o_bits, o_vals),
        o_exact: fwd.o,
        lse: fwd.lse,
        d_o,
        dlse,
        bind,
        scale,
    }
}

/// What this launch is told about its blocks, as the runtime makes it.
fn blocks_of(bw: &CudaBackward, p: &Program, sh: &Shape, x: &Inputs) -> LaunchBlocks {
    LaunchBlocks::new(bw, &attnc_compiler::plan::Plan::new(p), sh, &x.bind).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn run(dev: &CudaDevice, bw: &CudaBackward, sh: &Shape, x: &Inputs, blocks: BwdBlocks) -> Grads {
    bw.backward_host(
        dev,
        sh,
        (&x.q.0, &x.k.0, &x.v.0, &x.o.0),
        &x.lse,
        &x.d_o.0,
        x.dlse.as_deref(),
        x.scale,
        &x.bind,
        blocks,
    )
    .unwrap_or_else(|e| panic!("backward: {e}"))
}

/// The kernel options the runtime binds for `p` at `sh` (`PtxOptions::backward` refined
/// by `backward_for_binding`).
fn binding_options(
    arch: attnc_compiler::backend::llvm::Arch,
    p: &Program,
    sh: &Shape,
    ty: InputType,
) -> PtxOptions {
    PtxOptions::backward(arch, sh.d as u32, sh.dv as u32, ty)
        .backward_for_binding(&Plan::new(p), sh.lq.max(sh.lkv))
}

/// Runs the kernels of `opts` `runs` times on the same inputs (seed 5) and asserts that
/// every run gives the first one's gradients bit for bit (`what` names the case in the
/// message and the printed line); returns the first run's gradients.
fn assert_runs_identical(
    dev: &CudaDevice,
    p: &Program,
    sh: &Shape,
    ty: InputType,
    opts: &PtxOptions,
    runs: usize,
    what: &str,
) -> Grads {
    let ks = emit_backward_kernels(&Plan::new(p), opts).unwrap();
    let bw = CudaBackward::load(dev, &ks).unwrap();
    let x = inputs(p, sh, ty, 5, false);
    let b = blocks_of(&bw, p, sh, &x);
    let first = run(dev, &bw, sh, &x, b.as_blocks());
    for _ in 1..runs {
        let again = run(dev, &bw, sh, &x, b.as_blocks());
        assert!(again == first, "{what}: gradients differ between runs");
    }
    println!("  {what}: {runs} runs bit-identical");
    first
}

fn check_case(dev: &CudaDevice, p: &Program, sh: Shape, ty: InputType, seed: u64, dlse: bool) {
    let opts = test_options(dev.arch(), p, &sh, ty);
    check_case_with(dev, p, sh, ty, seed, dlse, opts);
}

/// [`check_case`] under the kernel options `opts`.
fn check_case_with(
    dev: &CudaDevice,
    p: &Program,
    sh: Shape,
    ty: InputType,
    seed: u64,
    dlse: bool,
    opts: PtxOptions,
) {
    let ks = emit_backward_kernels(&Plan::new(p), &opts).unwrap();
    dump(&ks);
    let bw = CudaBackward::load(dev, &ks).unwrap();
    let x = inputs(p, &sh, ty, seed, dlse);
    let want = reference_grads(
        p,
        &sh,
        &x.q.1,
        &x.k.1,
        &x.v.1,
        &x.o.1,
        &x.lse,
        &x.d_o.1,
        x.dlse.as_deref(),
        x.scale,
        &x.bind,
    );
    let want_caps = reference_captures(p, &sh, &x);
    let closed = matches!(ks[1].kv_bounds, KvBounds::ClosedForm(_));
    let blocks = blocks_of(&bw, p, &sh, &x);
    let mut passes: Vec<(&str, BwdBlocks)> = vec![("", blocks.as_blocks())];
    if closed && p.mask.is_some() {
        // every block partial (`KvAllPartial`): the same gradients
        passes.push((" all-partial", BwdBlocks::ClosedForm(None)));
    }
    for (tag, b) in passes {
        println!(
            "  {} {:?} {}{tag} ({}, dq {:?}{}, {}x{})",
            p.name,
            sh,
            ty.name(),
            ks[1].kv_bounds.name(),
            opts.bwd_dq,
            if opts.overlap && opts.bwd_dq != attnc_compiler::backend::llvm::BwdDq::Separate {
                " early"
            } else {
                ""
            },
            opts.q_block,
            opts.kv_block
        );
        let g = run(dev, &bw, &sh, &x, b);
        compare("dq", &g.dq, &want.0, ty);
        compare("dk", &g.dk, &want.1, ty);
        compare("dv", &g.dv, &want.2, ty);
        if let Some(w) = &want_caps {
            let params: Vec<Option<f32>> = (0..p.params.len())
                .map(|i| g.params.as_ref().map(|x| x[i]))
                .collect();
            compare_captures(p, &g.tensors, &params, w, ty);
        }
    }
}

/// `reference_grad`'s gradients with D aligned to the given O (module docs), when `p`
/// has capture gradients.
fn reference_captures(
    p: &Program,
    sh: &Shape,
    x: &Inputs,
) -> Option<attnc_compiler::reference_grad::Grads> {
    if attnc_compiler::backend::llvm::backward::capture_grads(p).is_empty() {
        return None;
    }
    let dlse = aligned_dlse(sh, &x.d_o.1, &x.o_exact, &x.o.1, x.dlse.as_deref());
    Some(
        attnc_compiler::reference_grad::backward(
            p,
            sh,
            &x.q.1,
            &x.k.1,
            &x.v.1,
            &x.d_o.1,
            Some(&dlse),
            x.scale,
            &x.bind,
        )
        .expect("reference gradients"),
    )
}

fn dump(ks: &[attnc_compiler::backend::llvm::PtxKernel; 3]) {
    if let Ok(dir) = std::env::var("ATTNC_PTX_DUMP") {
        let _ = std::fs::create_dir_all(&dir);
        for k in ks {
            let _ = std::fs::write(format!("{dir}/{}.ptx", k.entry), &k.ptx);
        }
    }
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

fn gpu_backward_samples_match_reference(dev: &CudaDevice) {
    let cases = [
        (shape(2, 4, 2, 77, 131, 128), InputType::Bf16),
        (shape(1, 4, 1, 200, 63, 64), InputType::F16),
        (shape(1, 2, 2, 129, 129, 64), InputType::Bf16),
        (shape(1, 2, 1, 70, 70, 32), InputType::F16),
    ];
    for (i, (sh, ty)) in cases.iter().enumerate() {
        for p in samples::all(sh.hq as i32) {
            if p.name == "document_causal" && sh.lq != sh.lkv {
                continue;
            }
            check_case(dev, &p, *sh, *ty, 100 + i as u64, false);
        }
    }
}

/// Head dims of 256 (Gemma-style; the two-kernel path with dK and dV in column halves,
/// `backward::dkdv_parts`; on sm_90 wgmma, elsewhere mma.sync as
/// [`gpu_backward_head_dim_256_mma_sync`] runs it): every sample against the f64
/// reference at GQA, odd lengths and Lq != Lkv, bf16 and f16, D = 128 with Dv = 256 and
/// the reverse, rows masked entirely, and two runs bit-identical.
fn gpu_backward_head_dim_256(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::{Arch, backward::dkdv_parts};
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the D256 backward runs on mma.sync here");
        return gpu_backward_head_dim_256_mma_sync(dev);
    }
    let cases = [
        (shape(1, 4, 2, 77, 131, 256), InputType::Bf16),
        (shape(2, 2, 1, 129, 70, 256), InputType::F16),
    ];
    for (i, (sh, ty)) in cases.iter().enumerate() {
        for p in samples::all(sh.hq as i32) {
            if p.name == "document_causal" && sh.lq != sh.lkv {
                continue;
            }
            let opts = test_options(dev.arch(), &p, sh, *ty);
            assert_eq!(dkdv_parts(&opts), 2, "{}: D256 in column halves", p.name);
            check_case(dev, &p, *sh, *ty, 300 + i as u64, false);
        }
    }
    // the dQ kernel with one q tile per CTA (the tables' kernel) on closed forms too
    for p in [samples::causal(), samples::alibi_causal(4)] {
        let sh = shape(1, 4, 2, 190, 131, 256);
        let o = PtxOptions {
            bwd_dq_pair: false,
            ..test_options(dev.arch(), &p, &sh, InputType::F16)
        };
        check_case_with(dev, &p, sh, InputType::F16, 9, false, o);
    }
    for (d, dv) in [(128, 256), (256, 128)] {
        let sh = Shape {
            dv,
            ..shape(1, 4, 2, 100, 133, d)
        };
        for p in [samples::causal(), samples::bias_table()] {
            check_case(dev, &p, sh, InputType::Bf16, 17, true);
        }
    }
    let p = late_start();
    let sh = shape(1, 2, 1, 67, 40, 256);
    check_case(dev, &p, sh, InputType::Bf16, 7, false);
    assert_late_start_rows_zero(dev, &p, sh, InputType::Bf16, 7);
    for p in [samples::causal(), samples::bias_table()] {
        let sh = shape(1, 4, 2, 300, 300, 256);
        let opts = test_options(dev.arch(), &p, &sh, InputType::Bf16);
        let what = format!("{} {:?} D256", p.name, sh);
        let a = assert_runs_identical(dev, &p, &sh, InputType::Bf16, &opts, 3, &what);
        // Sᵀ and dPᵀ exchanged between the warpgroups (`bwd_xchg`, the default at D = Dv
        // = 256) or computed by both: the same products, bit-identical gradients
        assert!(attnc_compiler::backend::llvm::backward::xchg(&opts));
        let both = PtxOptions {
            bwd_xchg: false,
            ..opts
        };
        let b = assert_runs_identical(dev, &p, &sh, InputType::Bf16, &both, 1, &what);
        assert!(a == b, "{what}: bwd_xchg changed the gradients");
    }
}

/// Head dims of 256 on mma.sync (sm_80's path; on an sm_90 GPU the same PTX for sm_80,
/// which its driver runs): every sample against the f64 reference at GQA, odd lengths
/// and Lq != Lkv, bf16 and f16, D = 128 with Dv = 256 and the reverse, a capture gradient,
/// rows masked entirely, and three runs bit-identical. The layouts fit an A100's 163 KiB
/// (`backward::single_buffer`: one Q/dO buffer in the dK/dV kernel of eight warps, one V
/// buffer in the dQ kernel).
fn gpu_backward_head_dim_256_mma_sync(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::backward::{SM80_SMEM_BYTES, dkdv_parts, single_buffer};
    use attnc_compiler::backend::llvm::{Arch, Mma};
    let opts = |p: &Program, sh: &Shape, ty| {
        let o = binding_options(Arch::Sm80, p, sh, ty);
        assert_eq!(o.mma, Mma::Sync);
        assert!(single_buffer(&o) && dkdv_parts(&o) == 2, "{}", p.name);
        for k in emit_backward_kernels(&Plan::new(p), &o).unwrap() {
            assert!(k.smem_bytes <= SM80_SMEM_BYTES, "{}", k.entry);
        }
        o
    };
    let cases = [
        (shape(1, 4, 2, 77, 131, 256), InputType::Bf16),
        (shape(2, 2, 1, 129, 70, 256), InputType::F16),
    ];
    for (i, (sh, ty)) in cases.iter().enumerate() {
        for p in samples::all(sh.hq as i32) {
            if p.name == "document_causal" && sh.lq != sh.lkv {
                continue;
            }
            check_case_with(dev, &p, *sh, *ty, 400 + i as u64, false, opts(&p, sh, *ty));
        }
    }
    for (d, dv) in [(128, 256), (256, 128)] {
        let sh = Shape {
            dv,
            ..shape(1, 4, 2, 100, 133, d)
        };
        for p in [samples::causal(), samples::bias_table()] {
            let o = opts(&p, &sh, InputType::Bf16);
            check_case_with(dev, &p, sh, InputType::Bf16, 19, true, o);
        }
    }
    let p = late_start();
    let sh = shape(1, 2, 1, 67, 40, 256);
    check_case_with(
        dev,
        &p,
        sh,
        InputType::Bf16,
        7,
        false,
        opts(&p, &sh, InputType::Bf16),
    );
    for p in [samples::causal(), samples::bias_table()] {
        let sh = shape(1, 4, 2, 300, 300, 256);
        let o = opts(&p, &sh, InputType::Bf16);
        let what = format!("{} {:?} D256 mma.sync", p.name, sh);
        assert_runs_identical(dev, &p, &sh, InputType::Bf16, &o, 3, &what);
    }
}

/// A small D256 case for compute-sanitizer (memcheck, racecheck): causal with a kv tail,
/// a capture gradient (bias table), GQA, on mma.sync (sm_80's kernels: one Q/dO buffer
/// reused across visits, one V buffer) and, on sm_90, on wgmma; and the runtime's path
/// (`Bound::backward`).
fn gpu_backward_d256_sanitize(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    for p in [samples::causal(), samples::bias_table()] {
        let sh = shape(1, 4, 2, 70, 100, 256);
        let o = binding_options(Arch::Sm80, &p, &sh, InputType::Bf16);
        check_case_with(dev, &p, sh, InputType::Bf16, 29, false, o);
    }
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the mma.sync cases only");
        return;
    }
    for p in [samples::causal(), samples::bias_table()] {
        check_case(
            dev,
            &p,
            shape(1, 4, 2, 70, 100, 256),
            InputType::Bf16,
            23,
            false,
        );
    }
    let c = attnc::Compiled::from_source("capture_sources.attn", CAPTURE_SOURCES).unwrap();
    let var = c.attention("learnable_softcap").unwrap();
    let sh = shape(1, 2, 1, 37, 70, 256);
    let caps = attnc::synth::captures(var.program(), &sh, 3);
    api_case(
        &var,
        sh,
        attnc::DType::BF16,
        &caps,
        3,
        "learnable_softcap D256",
    );
}

fn gpu_backward_fully_masked_rows(dev: &CudaDevice) {
    let p = late_start();
    let sh = shape(1, 2, 1, 67, 40, 64);
    check_case(dev, &p, sh, InputType::Bf16, 7, false);
    // the masked rows' dQ is exactly zero
    assert_late_start_rows_zero(dev, &p, sh, InputType::Bf16, 7);
}

/// dQ of the rows `late_start` masks entirely (the first 5 of each of 2 query heads)
/// is exactly 0, on the kernels of `test_options` at `sh.d`.
fn assert_late_start_rows_zero(dev: &CudaDevice, p: &Program, sh: Shape, ty: InputType, seed: u64) {
    let d = sh.d;
    let opts = test_options(dev.arch(), p, &sh, ty);
    let ks = emit_backward_kernels(&Plan::new(p), &opts).unwrap();
    let bw = CudaBackward::load(dev, &ks).unwrap();
    let x = inputs(p, &sh, ty, seed, false);
    let g = run(dev, &bw, &sh, &x, blocks_of(&bw, p, &sh, &x).as_blocks());
    for h in 0..2 {
        for q in 0..5 {
            let row = &g.dq[(h * sh.lq + q) * d..][..d];
            assert!(
                row.iter().all(|b| from_bits(*b, ty) == 0.0),
                "masked row {q} of head {h}: dq {row:?}"
            );
        }
    }
}

fn gpu_backward_dlse(dev: &CudaDevice) {
    check_case(
        dev,
        &samples::causal(),
        shape(1, 2, 1, 90, 90, 64),
        InputType::F16,
        11,
        true,
    );
    check_case(
        dev,
        &samples::softcap_causal(),
        shape(1, 2, 2, 90, 90, 128),
        InputType::Bf16,
        12,
        true,
    );
}

fn gpu_backward_is_deterministic(dev: &CudaDevice) {
    // bias_table: capture gradients (integer atomics) must be bit-identical too; dense
    // and causal at 1000 x 1000: 8 kv blocks add into each dQ tile (the fused scheme's
    // ordered additions), GQA sums over 2 query heads
    for (p, sh) in [
        (samples::document_causal(), shape(2, 4, 1, 300, 300, 128)),
        (samples::alibi_causal(4), shape(2, 4, 1, 300, 300, 128)),
        (samples::bias_table(), shape(2, 4, 1, 300, 300, 128)),
        (samples::dense(), shape(1, 4, 2, 1000, 1000, 128)),
        (samples::causal(), shape(1, 4, 2, 1000, 1000, 128)),
        (samples::dense(), shape(1, 2, 2, 1000, 700, 64)),
        (samples::causal(), shape(1, 4, 2, 1000, 1000, 64)),
        // a band: the warp-wide visit search (`bwd_wscan`, the binding's default), GQA
        (samples::sliding(), shape(1, 4, 2, 1000, 1000, 128)),
    ] {
        let ty = InputType::Bf16;
        let opts = test_options(dev.arch(), &p, &sh, ty);
        let what = format!("{} {:?} ({:?})", p.name, sh, opts.bwd_dq);
        let first = assert_runs_identical(dev, &p, &sh, ty, &opts, 4, &what);
        assert_eq!(
            first.tensors.iter().flatten().count(),
            attnc_compiler::backend::llvm::backward::capture_grads(&p)
                .tensors
                .len()
        );
    }
}

/// Every dQ scheme against the f64 reference (sm_90; elsewhere only `Separate` exists):
/// dQ by a second kernel, fused and ordered with kv tiles of 64 (one warpgroup, dQ in two
/// 64-column chunks at D128) and 128 (two warpgroups; 32 dQ columns each at D64), fused and ordered with bulk
/// additions by a writer warpgroup (`OrderedBulk`, kv tiles of 128), fused with
/// unordered additions (`Atomic`), each fused one also with `overlap` (products issued
/// early, two writer threads): closed-form masks, a block-table mask (document), a score
/// with capture gradients, GQA, odd lengths, Lq != Lkv, f16 and bf16.
fn gpu_backward_dq_schemes(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::{Arch, BwdDq};
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: only the separate dQ kernel exists here");
        return;
    }
    let cases = [
        (
            samples::causal(),
            shape(2, 4, 2, 333, 333, 128),
            InputType::Bf16,
        ),
        (
            samples::document_causal(),
            shape(1, 2, 1, 300, 300, 128),
            InputType::F16,
        ),
        (
            samples::softcap_causal(),
            shape(1, 4, 4, 150, 260, 64),
            InputType::Bf16,
        ),
        (
            samples::bias_table(),
            shape(1, 4, 2, 190, 77, 128),
            InputType::Bf16,
        ),
        (late_start(), shape(1, 2, 1, 67, 140, 128), InputType::F16),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let sep = PtxOptions::backward_separate(dev.arch(), sh.d as u32, sh.dv as u32, *ty);
        let mut schemes = vec![
            sep,
            sep.backward_fused(BwdDq::Ordered),
            sep.backward_fused(BwdDq::Atomic),
        ];
        // Ordered with the other kv tile: 64 at D128 (one warpgroup, dQ in two 64-column
        // chunks), 128 at D64 (two warpgroups of 32 dQ columns each)
        schemes.push(PtxOptions {
            kv_block: if sh.d == 128 { 64 } else { 128 },
            ..sep.backward_fused(BwdDq::Ordered)
        });
        // OrderedBulk: kv tiles of 128 (at D64 each warpgroup's dQ product has 32 columns)
        {
            schemes.push(sep.backward_fused(BwdDq::OrderedBulk));
            // Q/dO by the TMA producer warp (`bwd_tma`: the default)
            schemes.push(PtxOptions {
                bwd_tma: true,
                ..sep.backward_fused(BwdDq::OrderedBulk)
            });
        }
        // each fused scheme also with its products issued early (`overlap`; OrderedBulk
        // with a writer thread per slot)
        let early: Vec<PtxOptions> = schemes
            .iter()
            .filter(|o| o.bwd_dq != BwdDq::Separate)
            .map(|o| PtxOptions {
                overlap: true,
                ..*o
            })
            .collect();
        schemes.extend(early);
        // D64: q tiles of 128 (each math warpgroup 64 rows of dQ; the binding's default for
        // scores without per-element reads), in both CTA orders
        if sh.d == 64 {
            for lpt in [false, true] {
                schemes.push(PtxOptions {
                    q_block: 128,
                    bwd_tma: true,
                    bwd_lpt: lpt,
                    ..sep.backward_fused(BwdDq::OrderedBulk)
                });
            }
        }
        for o in schemes {
            check_case_with(dev, p, *sh, *ty, 300 + i as u64, i % 2 == 1, o);
        }
    }
}

/// The dQ conversion's spin-budget fallback (`PtxOptions::bwd_convert_early`, the
/// binding's default for bands and block tables): with the test hook
/// `bwd_convert_timeout_now` every conversion CTA takes it at once, as if its tile's flag
/// never came: it counts itself (`CudaBackward::early_fallbacks`: one per tile; 0 without
/// the hook) and waits for the whole fused grid, so the gradients are bit-identical to the
/// hook-less kernels' (and, for the smaller case, agree with the f64 reference). (Until session 16 the conversion
/// went on without its flag: dQ read before its sums, and no error.) A sliding window
/// (GQA, 8 kv blocks adding into a tile) and document + causal (a block table).
fn gpu_backward_convert_timeout(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    use attnc_compiler::backend::llvm::backward::convert_early;
    if dev.arch() != Arch::Sm90 {
        println!("  no programmatic dependent launch here: no early conversion");
        return;
    }
    let ty = InputType::Bf16;
    for (p, sh) in [
        (samples::sliding(), shape(1, 4, 2, 1000, 1000, 128)),
        (samples::document_causal(), shape(2, 4, 1, 300, 300, 128)),
    ] {
        let base = binding_options(dev.arch(), &p, &sh, ty);
        assert!(convert_early(&base), "{}: the binding's default", p.name);
        let hook = PtxOptions {
            bwd_convert_timeout_now: true,
            ..base
        };
        let x = inputs(&p, &sh, ty, 9, false);
        let tiles = sh.b * sh.hq * sh.lq.div_ceil(base.q_block as usize);
        let mut grads = Vec::new();
        for (o, want) in [(base, 0), (hook, tiles as u32)] {
            let ks = emit_backward_kernels(&Plan::new(&p), &o).unwrap();
            let bw = CudaBackward::load(dev, &ks).unwrap();
            let b = blocks_of(&bw, &p, &sh, &x);
            let prob = bw
                .upload(
                    dev,
                    &sh,
                    (&x.q.0, &x.k.0, &x.v.0, &x.o.0),
                    &x.lse,
                    &x.d_o.0,
                    None,
                    x.scale,
                    &x.bind,
                    b.as_blocks(),
                )
                .unwrap();
            bw.launch(dev, &prob).unwrap();
            let g = bw.download(dev, &prob).unwrap();
            let n = bw.early_fallbacks(dev, &prob).unwrap();
            assert_eq!(
                n,
                Some(want),
                "{} {:?} timeout_now={}: conversion CTAs that fell back",
                p.name,
                sh,
                o.bwd_convert_timeout_now
            );
            grads.push(g);
        }
        assert!(
            grads[0] == grads[1],
            "{} {:?}: the fallback's gradients differ from the flagged conversion's",
            p.name,
            sh
        );
        println!(
            "  {} {:?}: {tiles} fallbacks with the hook, none without; gradients bit-identical",
            p.name, sh
        );
        if sh.lq <= 300 {
            // against the f64 reference too (the band's 1000 rows: bit-identity to the
            // flagged kernels, which the other tests check against the reference)
            check_case_with(dev, &p, sh, ty, 9, false, hook);
        }
    }
}

/// `Bound::backward` on the CUDA backend against the reference backend (the f64 oracle
/// of `reference_grad`; D aligned to the O the CUDA forward gave, module docs) for one
/// attention, shape, dtype and captures: dq, dk, dv and the gradient of every float
/// captured tensor (its dtype) and f32 param. Returns the CUDA gradients.
fn api_case(
    var: &attnc::Variant,
    shape: Shape,
    dt: attnc::DType,
    caps: &attnc::Captures,
    seed: u64,
    what: &str,
) -> attnc::Gradients {
    api_case_with(var, shape, dt, caps, seed, what, &Default::default())
}

/// The inputs `api_case_with` (and the caller-buffer tests after it) draw for `shape` in
/// `dt` from `seed`: q, k, v and dO (from `seed + 99`).
fn api_case_inputs(
    shape: Shape,
    dt: attnc::DType,
    seed: u64,
) -> (attnc::Tensor, attnc::Tensor, attnc::Tensor, attnc::Tensor) {
    let (q, k, v) = attnc::synth::qkv(&shape, dt, seed);
    let o_shape = Shape {
        d: shape.dv,
        lkv: shape.lq,
        hkv: shape.hq,
        ..shape
    };
    (q, k, v, attnc::synth::qkv(&o_shape, dt, seed + 99).0)
}

/// [`api_case`] with the CUDA backward under `bwd` (`Bound::backward_with`).
fn api_case_with(
    var: &attnc::Variant,
    shape: Shape,
    dt: attnc::DType,
    caps: &attnc::Captures,
    seed: u64,
    what: &str,
    bwd: &attnc::BackwardOptions,
) -> attnc::Gradients {
    use attnc::{Backend, BindOptions};
    let mut cuda = var
        .bind(BindOptions::new(Backend::Cuda, shape, dt))
        .unwrap();
    api_case_bound(&mut cuda, var, caps, seed, what, bwd)
}

/// [`api_case_with`] on a CUDA binding `cuda` of `var` made by the caller (its shape and
/// dtype, its options).
fn api_case_bound(
    cuda: &mut attnc::Bound,
    var: &attnc::Variant,
    caps: &attnc::Captures,
    seed: u64,
    what: &str,
    bwd: &attnc::BackwardOptions,
) -> attnc::Gradients {
    use attnc::{Backend, BindOptions, DType, Tensor};
    let (shape, dt) = (cuda.shape(), cuda.options().dtype);
    let ty = match dt {
        DType::F16 => InputType::F16,
        _ => InputType::Bf16,
    };
    let (q, k, v, d_o) = api_case_inputs(shape, dt, seed);
    let mut reference = var
        .bind(BindOptions::new(Backend::Reference, shape, dt))
        .unwrap();
    let fwd = cuda
        .forward(&q, &k, &v, caps)
        .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    let got = cuda
        .backward_with(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, None, caps, bwd)
        .unwrap_or_else(|e| panic!("{what}: cuda backward: {e}"));
    let bind = reference.bindings(caps).unwrap();
    let exact = attnc_compiler::reference::attention(
        var.program(),
        &shape,
        &q.to_f32(),
        &k.to_f32(),
        &v.to_f32(),
        reference.scale(),
        &bind,
    )
    .unwrap();
    let dlse = aligned_dlse(&shape, &d_o.to_f32(), &exact.o, &fwd.o.to_f32(), None);
    let dlse = Tensor::from_f32(vec![shape.b, shape.hq, shape.lq], &dlse);
    let want = reference
        .backward(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, Some(&dlse), caps)
        .unwrap_or_else(|e| panic!("{what}: reference backward: {e}"));
    println!("  {what} {}", ty.name());
    for (g, w, nm) in [
        (&got.dq, &want.dq, "dq"),
        (&got.dk, &want.dk, "dk"),
        (&got.dv, &want.dv, "dv"),
    ] {
        let bits = g.to_u16_bits().expect("16-bit gradients");
        compare(nm, &bits, &w.to_f32(), ty);
    }
    assert_eq!(
        got.tensors.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>(),
        "{what}: tensors with gradients"
    );
    for (name, w) in &want.tensors {
        let g = &got.tensors[name];
        assert_eq!(g.dtype(), w.dtype(), "{what}: d{name} dtype");
        assert_eq!(g.shape(), w.shape(), "{what}: d{name} shape");
        compare_f32(&format!("d{name}"), &g.to_f32(), &w.to_f32(), ty);
    }
    assert_eq!(got.params.len(), want.params.len(), "{what}: params");
    for (name, w) in &want.params {
        compare_f32(&format!("d{name}"), &[got.params[name]], &[*w], ty);
    }
    got
}

fn examples_dir() -> std::path::PathBuf {
    [
        "examples",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"),
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|d| d.join("causal.attn").is_file())
    .expect("the examples directory")
}

/// `Bound::backward` on the CUDA backend for every attention of every example against
/// `Bound::backward` on the reference backend ([`api_case`]), bf16, O and LSE from the
/// CUDA forward; capture gradients (learned bias, relative-position table, T5 tables)
/// included.
fn gpu_backward_api_every_example(_dev: &CudaDevice) {
    use attnc::{Compiled, DType, synth};
    let dir = examples_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    let (mut ran, mut with_caps) = (0, 0);
    for (n, path) in files.iter().enumerate() {
        let c = Compiled::from_file(path).unwrap();
        for name in c.names() {
            let var = c.attention(name).unwrap();
            let p = var.program();
            // as tests/lib.rs `self_attention_only`: these read `Q`-indexed tensors at kv
            let self_only = matches!(
                path.file_stem().and_then(|s| s.to_str()).unwrap_or(""),
                "document_alibi"
                    | "document_causal"
                    | "document_sliding_causal"
                    | "global_sliding_window"
            );
            let shape = Shape {
                b: 1,
                hq: 4,
                hkv: 2,
                lq: 97,
                lkv: if self_only { 97 } else { 130 },
                d: if n % 2 == 0 { 64 } else { 128 },
                dv: if n % 2 == 0 { 64 } else { 128 },
            };
            let caps = synth::captures(p, &shape, n as u64);
            let what = format!("{}:{name} {shape:?}", path.display());
            api_case(&var, shape, DType::BF16, &caps, n as u64, &what);
            if !attnc_compiler::backend::llvm::backward::capture_grads(p).is_empty() {
                with_caps += 1;
            }
            ran += 1;
        }
    }
    println!("  {ran} attentions matched, {with_caps} of them with capture gradients");
    assert!(ran > 10, "too few attentions ran: {ran}");
    assert!(
        with_caps >= 4,
        "too few attentions with capture gradients: {with_caps}"
    );
}

/// Head dims the CUDA kernels do not take (Phi-3's 96, DiT's 72, SD's 80, MLA's 192 /
/// 128) bound through the Rust API: the binding pads them (`attnc::head_pad`) and runs
/// its kernels at 128 / 256. Its forward against the f64 oracle at the true dims (O
/// within bf16's tolerance, LSE), its backward as every API case ([`api_case`]: dq, dk,
/// dv and capture gradients against the reference backend), decoding against a cache
/// (the caches widened per call) against the reference backend.
fn gpu_backward_padded_head_dims(_dev: &CudaDevice) {
    use attnc::{Backend, BindOptions, Compiled, DType, KvCache, Tensor, synth};
    let mut n = 0;
    for (i, file) in ["causal", "learned_bias", "softcap", "alibi"]
        .iter()
        .enumerate()
    {
        let c = Compiled::from_file(&examples_dir().join(format!("{file}.attn"))).unwrap();
        let var = c.attention(c.names()[0]).unwrap();
        for (j, &(d, dv, to)) in [(96, 96, 128), (72, 72, 128), (192, 128, 256), (80, 80, 128)]
            .iter()
            .enumerate()
        {
            let seed = (i * 4 + j) as u64;
            let shape = Shape {
                b: 1,
                hq: 4,
                hkv: 2,
                lq: 77 + j,
                lkv: 130 - j,
                d,
                dv,
            };
            let caps = synth::captures(var.program(), &shape, seed);
            let what = format!("{file} D{d} Dv{dv}");
            let mut cuda = var
                .bind(BindOptions::new(Backend::Cuda, shape, DType::BF16))
                .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
            assert_eq!(cuda.head_pad().map(|p| p.to), Some(to), "{what}");
            let (q, k, v) = synth::qkv(&shape, DType::BF16, seed);
            let got = cuda.forward(&q, &k, &v, &caps).unwrap();
            let mut reference = var
                .bind(BindOptions::new(Backend::Reference, shape, DType::BF16))
                .unwrap();
            let want = reference.forward(&q, &k, &v, &caps).unwrap();
            assert_eq!(got.o.shape(), want.o.shape(), "{what}");
            compare_f32("o", &got.o.to_f32(), &want.o.to_f32(), InputType::Bf16);
            compare_f32(
                "lse",
                &got.lse.to_f32(),
                &want.lse.to_f32(),
                InputType::Bf16,
            );
            api_case(&var, shape, DType::BF16, &caps, seed, &what);
            if d == dv && j == 0 {
                // decoding: 3 rows against a contiguous cache of 160 positions
                let dshape = Shape {
                    lq: 3,
                    lkv: 160,
                    ..shape
                };
                let (q, k, v) = synth::qkv(&dshape, DType::BF16, seed + 5);
                let lens = Tensor::from_i32(vec![1], &[131]);
                let cache = KvCache::Contiguous {
                    k: &k,
                    v: &v,
                    seq_lens: &lens,
                };
                // captures over logical positions: a Q dimension spans the cache's
                // positions, not the 3 rows (as gpu_decode's `captures_for`)
                let logical = Shape { lq: 160, ..dshape };
                let caps = synth::captures(var.program(), &logical, seed);
                let mut cuda = var
                    .bind(BindOptions::new(Backend::Cuda, dshape, DType::BF16))
                    .unwrap();
                let mut reference = var
                    .bind(BindOptions::new(Backend::Reference, dshape, DType::BF16))
                    .unwrap();
                let got = cuda.forward_with_cache(&q, &cache, &caps).unwrap();
                let want = reference.forward_with_cache(&q, &cache, &caps).unwrap();
                compare_f32(
                    "decode o",
                    &got.o.to_f32(),
                    &want.o.to_f32(),
                    InputType::Bf16,
                );
                println!("  {what}: decoding matched ({:?})", cuda.cache_path());
            }
            n += 1;
        }
    }
    println!("  {n} padded bindings matched");
}

/// Attentions with capture gradients beyond examples/: a bf16 tensor read twice in a
/// product (`w[h, kv % 64] * w[h, q % 64]`, and the same element at both sites on the
/// diagonal), a learnable soft-cap param (f32 param, causal), an f16 learned bias under a
/// mask with fully masked rows and a guarded read (`if`), a param and a tensor together.
const CAPTURE_SOURCES: &str = r#"
tensor w: bf16[H, 64];
tensor fb: f16[B, H, Q, KV];
tensor rel: f32[H, 33];
param cap: f32;
param temp: f32;

mask causal(b, h, q, kv) { q >= kv }
mask late(b, h, q, kv) { q >= kv + 5 }

score twice(s, b, h, q, kv) { s + w[h, kv % 64] * w[h, q % 64] }
score softcap(s, b, h, q, kv) { cap * tanh(s / cap) }
score guarded(s, b, h, q, kv) { if q > kv + 7 { s + fb[b, h, q, kv] } else { s * 0.5 } }
score both(s, b, h, q, kv) {
    let d = clamp(kv - q, -16, 16) + 16;
    s * temp + rel[h, d] * temp
}

attention read_twice { score = twice; }
attention learnable_softcap { mask = causal; score = softcap; }
attention masked_bias { mask = late; score = guarded; }
attention param_and_table { mask = causal; score = both; }
"#;

/// Capture gradients on random shapes (odd lengths, Lq != Lkv, GQA, D 64/128, bf16 and
/// f16): every example attention with capture gradients and [`CAPTURE_SOURCES`]; then
/// determinism: the same call three times gives bit-identical gradients.
fn gpu_backward_capture_grads(_dev: &CudaDevice) {
    use attnc::{Compiled, DType, ParamValue, synth};
    use rand::Rng;
    let mut variants: Vec<(String, attnc::Variant)> = Vec::new();
    for file in ["learned_bias", "relative_bias_table", "t5_relative_bias"] {
        let c = Compiled::from_file(&examples_dir().join(format!("{file}.attn"))).unwrap();
        for name in c.names() {
            variants.push((format!("{file}:{name}"), c.attention(name).unwrap()));
        }
    }
    let c = Compiled::from_source("capture_sources.attn", CAPTURE_SOURCES).unwrap();
    for name in c.names() {
        variants.push((format!("inline:{name}"), c.attention(name).unwrap()));
    }
    let mut r = rng(2026);
    let mut determinism_done = false;
    for (i, (label, var)) in variants.iter().enumerate() {
        let p = var.program();
        assert!(
            !attnc_compiler::backend::llvm::backward::capture_grads(p).is_empty(),
            "{label}: no capture gradients"
        );
        let hkv = [1, 2][r.random_range(0..2)];
        let d = [64, 128][r.random_range(0..2)];
        let lq = r.random_range(1..220);
        let lkv = r.random_range(1..220);
        let shape = Shape {
            b: r.random_range(1..3),
            hq: hkv * [1, 2, 3][r.random_range(0..3)],
            hkv,
            lq,
            lkv,
            d,
            dv: d,
        };
        let dt = if i % 2 == 0 { DType::BF16 } else { DType::F16 };
        let seed = 1000 + 10 * i as u64;
        let mut caps = synth::captures(p, &shape, seed);
        if p.param("cap").is_some() {
            caps.params
                .insert("cap".into(), ParamValue::F32(r.random_range(0.5f32..3.0)));
        }
        if p.param("temp").is_some() {
            caps.params
                .insert("temp".into(), ParamValue::F32(r.random_range(0.5f32..1.5)));
        }
        let what = format!("{label} {shape:?}");
        let first = api_case(var, shape, dt, &caps, seed, &what);
        if !determinism_done && p.tensors.len() + p.params.len() >= 2 {
            for _ in 0..2 {
                let again = api_case(var, shape, dt, &caps, seed, &what);
                for (name, t) in &first.tensors {
                    assert!(
                        t.to_f32()
                            .iter()
                            .zip(again.tensors[name].to_f32())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: d{name} differs between runs"
                    );
                }
                for (name, x) in &first.params {
                    assert_eq!(
                        x.to_bits(),
                        again.params[name].to_bits(),
                        "{what}: d{name} differs between runs"
                    );
                }
            }
            determinism_done = true;
        }
    }
    assert!(determinism_done);
}

/// Capture gradients whose reads are one element over most tiles
/// (`backend::llvm::uniform`: the fused kernel's path that reads each once per tile and
/// sums one run per read site), one program per interval rule (the file's header).
const UNIFORM_SOURCES: &str = include_str!("gpu_util/uniform_reads.attn");

/// [`UNIFORM_SOURCES`] under `bwd_uniform_reads` (the test options plus the uniform-read
/// path) against the f64 reference on shapes long enough that most tiles read one
/// element of each table (Lq, Lkv up to 1000, odd, Lq != Lkv, GQA, D 64 / 128, bf16 and
/// f16), and the relative-position table's gradients bit-identical over two runs.
fn gpu_backward_uniform_reads(dev: &CudaDevice) {
    let c = attnc::Compiled::from_source("uniform_sources.attn", UNIFORM_SOURCES).unwrap();
    let shapes = [
        shape(1, 4, 2, 1000, 777, 128),
        shape(2, 2, 2, 517, 903, 64),
        shape(1, 3, 1, 901, 1000, 128),
    ];
    for (i, name) in c.names().into_iter().enumerate() {
        let p = c.attention(name).unwrap().program().clone();
        let sh = shapes[i % shapes.len()];
        let ty = if i % 2 == 0 {
            InputType::Bf16
        } else {
            InputType::F16
        };
        let opts = PtxOptions {
            bwd_uniform_reads: true,
            ..test_options(dev.arch(), &p, &sh, ty)
        };
        check_case_with(dev, &p, sh, ty, 7 + i as u64, false, opts);
        if i == 0 {
            let ks = emit_backward_kernels(&Plan::new(&p), &opts).unwrap();
            let bw = CudaBackward::load(dev, &ks).unwrap();
            let x = inputs(&p, &sh, ty, 7, false);
            let blocks = blocks_of(&bw, &p, &sh, &x);
            let a = run(dev, &bw, &sh, &x, blocks.as_blocks());
            let b = run(dev, &bw, &sh, &x, blocks.as_blocks());
            assert_eq!(a.dq, b.dq, "{name}: dq differs between runs");
            let bits = |t: &[Option<Vec<f32>>]| -> Vec<Option<Vec<u32>>> {
                t.iter()
                    .map(|x| x.as_ref().map(|v| v.iter().map(|f| f.to_bits()).collect()))
                    .collect()
            };
            assert_eq!(
                bits(&a.tensors),
                bits(&b.tensors),
                "{name}: capture gradients differ between runs"
            );
        }
    }
}

/// The benchmark's capture-gradient variants (FlexAttention's anchors in
/// scripts/gpu_bench_torch_bwd.py compute the same gradients).
const BENCH_RELBIAS: &str = "tensor rel: f32[H, 129];
score relbias(s, b, h, q, kv) { s + rel[h, clamp(q - kv, -64, 64) + 64] }
attention relbias_full { score = relbias; }";
const BENCH_SOFTCAP_PARAM: &str = "param cap: f32;
mask causal(b, h, q, kv) { q >= kv }
score softcap(s, b, h, q, kv) { cap * tanh(s / cap) }
attention softcap_param_causal { mask = causal; score = softcap; }";

/// The tests' kernel options: the runtime's for `p` at `sh` (`PtxOptions::backward`
/// refined by `backward_for_binding`: the longest-first CTA order for causal-type masks,
/// float positions), or the `ATTNC_BWD_TEST_CFG` configuration
/// (an entry as in [`bench_options`], e.g. `sync64x64` to test the mma.sync path on
/// sm_90; with the binding's float positions). A fused configuration whose dQ warpgroups (one per 64 kv columns) would each
/// get fewer than 32 of the case's D columns (e.g. `wg64x128o` at D32), or that the kernel
/// generator refuses for the case (e.g. `wg128x128bt`, q tiles of 128, at D128), does not
/// exist for that case: the case keeps the defaults.
fn test_options(
    arch: attnc_compiler::backend::llvm::Arch,
    p: &Program,
    sh: &Shape,
    ty: InputType,
) -> PtxOptions {
    use attnc_compiler::backend::llvm::BwdDq;
    let d = sh.d as u32;
    let o = binding_options(arch, p, sh, ty);
    match std::env::var("ATTNC_BWD_TEST_CFG") {
        Ok(cfg) => {
            let c = bench_options(o, &cfg, &Plan::new(p))
                .unwrap_or_else(|| panic!("ATTNC_BWD_TEST_CFG={cfg}"));
            let valid = attnc_compiler::backend::llvm::backward::backward_layout(
                &Plan::new(p),
                &c,
                attnc_compiler::backend::llvm::backward::BackwardKind::DkDv,
            )
            .is_ok();
            if !valid || (c.bwd_dq != BwdDq::Separate && d * 64 / c.kv_block < 32) {
                println!("  ATTNC_BWD_TEST_CFG={cfg} has no D{d} kernel: defaults for this case");
                o
            } else {
                c
            }
        }
        Err(_) => o,
    }
}

/// The benchmark's options for one `ATTNC_BWD_BENCH_CFG` entry: `default`,
/// `separate` (`PtxOptions::backward_separate`: what the caller-buffer entry points
/// run), or `sync`/`wg` (mma.sync / wgmma) then the tile `BRxBC` and a dQ scheme suffix:
/// none (a separate dQ kernel), `o` (fused, ordered), `b` (fused, ordered, bulk
/// additions by a writer warpgroup) or `a` (fused, unordered atomics), e.g. `wg64x128`,
/// `wg64x128o`, `wg64x128b`, `wg64x64a`; then `t` loads Q/dO with the writer
/// warpgroup's TMA producer warp (`PtxOptions::bwd_tma`, bulk scheme only), e.g.
/// `wg64x128bt`; then `l` orders the fused kernel's CTAs longest first
/// (`PtxOptions::bwd_lpt`), e.g. `wg64x128btl`, `wg64x128ol`; a further `p` issues the
/// fused kernel's products early (`PtxOptions::overlap`), e.g. `wg64x128bp`, `wg64x128btp`;
/// a last `w` searches the visits warp-wide (`PtxOptions::bwd_wscan`), e.g. `wg64x128btw`.
/// then a `q` gives each math warpgroup its own dQ part (`PtxOptions::bwd_wg_dq`),
/// e.g. `wg64x128btq`, `wg64x128btlq`, `wg128x128btlq`; a last `s` runs the fused kernel
/// on persistent CTAs (`PtxOptions::bwd_persist`), e.g. `wg64x128btws`. `default+u`: the
/// binding's options with unordered bulk dQ additions (`PtxOptions::bwd_dq_free`, not
/// deterministic); `default-s`: without the visit search under Sᵀ and dPᵀ
/// (`PtxOptions::bwd_scan_under`, the D64 default). A trailing `+x` on any entry
/// (`default+x`, `default+u+x`, `wg64x128bt+x`) stores the fused kernel's dSᵀ with
/// `stmatrix` and loads its L2/Delta pairs with `ld.shared.v2` (`PtxOptions::bwd_stmatrix`);
/// a trailing `+d` (after or instead of `+x`: `default+x+d`, `default+d`) derives the
/// fused kernel's wgmma descriptors from one base per tile (`PtxOptions::bwd_desc`); a
/// last `+g` drops the P = 0 select of dS on full blocks of the identity score
/// (`PtxOptions::bwd_ds_unguarded`), e.g. `default+x+d+g`; `-x`, `-d`, `-g` turn them off
/// (`default-x-d-g`: the binding's options before session 12's instruction cuts).
/// A trailing `+2` gives the writer warpgroup two dQ writer threads, one per slot
/// (`PtxOptions::bwd_two_writers`), e.g. `default+2`; a trailing `+v` stores the fused
/// kernel's dK and dV 8 bytes per thread (`PtxOptions::bwd_store_pairs`); the suffixes
/// combine (`default+v+2`); the binding's default has both for bands and block tables.
/// A trailing `+y` makes the fused kernel's math warpgroups take turns in their element
/// code (`PtxOptions::bwd_pingpong`; `-y` without: the D64 dense default before
/// session 13), e.g. `default+y`; a trailing `+n` (with the turns) queues the next
/// visit's Sᵀ and dPᵀ behind the last visit's dQ part (`PtxOptions::bwd_ping_next`),
/// e.g. `default+n`, `default+y+n`; a trailing `+8` puts D64
/// causal-type bindings whose score reads positions (ALiBi) on q tiles of 128
/// (`PtxOptions::backward_q128_positions`), e.g. `default+8`, `default+8+y`. A trailing
/// `+p` issues the fused kernel's products early (`PtxOptions::overlap`), e.g.
/// `default+p`, `default+u+p`; a trailing `+h` loads the visit's L2/Delta before the wait
/// for Sᵀ and dPᵀ (`PtxOptions::bwd_stats_early`), e.g. `default+h`, `default+u+h`; a
/// trailing `+e` computes P while dPᵀ runs (`PtxOptions::bwd_p_under_dp`), e.g.
/// `default+e`, `default+h+e`; a trailing `+m1` .. `+m8` computes that many of every 8
/// exponentials of a full block on the FMA pipe (`PtxOptions::bwd_exp_emu`), e.g.
/// `default+m2`, `default+e+m4`; a trailing `+w1` starts dPᵀ's accumulator at -Delta,
/// `+w2` Sᵀ's at -L2 / (scale log2 e) too (`PtxOptions::bwd_stat_acc`), e.g.
/// `default+w1`; a trailing `+c` issues the next visit's Sᵀ under this visit's dK
/// (`PtxOptions::bwd_s_ahead`), e.g. `default+c`. A trailing `+q` puts dense D128 bindings (no mask, the
/// identity score) on q tiles of 80 (`PtxOptions::backward_q80`), e.g. `default+q`.
/// A trailing `+a` steps the fused kernel's wgmma descriptors with one 64-bit add each
/// (`PtxOptions::bwd_desc64`, with `bwd_desc`), e.g. `default+a`; a trailing `+f` drops the
/// P = 0 select of dS on full blocks of an affine score such as ALiBi
/// (`PtxOptions::bwd_affine_unguarded`), e.g. `default+a+f`. A trailing `+P` runs the
/// fused kernel on persistent CTAs that take their kv tiles from a global counter
/// (`PtxOptions::bwd_persist_dyn`; where the kernel has them: the TMA producer, no
/// capture gradients), e.g. `default+P`; `-P` and `-b` turn the counter's persistent CTAs and
/// `bwd_stats_bulk` off (session 23's defaults: `default-P-b` = the defaults before). A trailing `+z` waits for
/// the fused kernel's free dQ slot after issuing the products (`PtxOptions::bwd_empty_late`),
/// e.g. `default+z`, `default+e+z`; a trailing `+j` issues dV before the dS barrier
/// (`PtxOptions::bwd_dv_early`), e.g. `default+j+z`; a trailing `+i` also computes P and
/// dS in chunks of one dV k-step, each step issued as soon as its chunk is rounded
/// (`PtxOptions::bwd_dv_chunks`), e.g. `default+i`, `default+z+i`; `+o` issues each
/// chunk's dK step as well (`PtxOptions::bwd_dk_chunks`), e.g. `default+o`.
/// A trailing `+l` chains the fused backward's kernels by
/// programmatic dependent launch (`PtxOptions::bwd_pdl`); `+t` also converts each dQ tile
/// once its last addition is done (`PtxOptions::bwd_convert_early`; both the default for
/// bands and block tables since session 15), e.g. `default+t`; `-t` turns both off
/// (`default-t`: that default before). A trailing `+R24`, `+R32`, `+R40`, `+R48` or `+R56` gives
/// the fused kernel's writer warpgroup that many registers after `setmaxnreg` (the math
/// warpgroups the rest: `PtxOptions::bwd_writer_regs`), e.g. `default+R40`, `default+P+R40`.
fn bench_options(default: PtxOptions, cfg: &str, plan: &Plan) -> Option<PtxOptions> {
    use attnc_compiler::backend::llvm::BwdDq;
    // `-x`, `-d`, `-g`: without `bwd_stmatrix`, `bwd_desc`, `bwd_ds_unguarded` (the
    // binding's default since session 12 where measured: `default-x-d-g` = before)
    // `-r`, `-k`: without `bwd_visit_rec`, `bwd_band_keep` (the binding's default for
    // bands and tables since session 13, with the three above: `default-r-k-x-d-g` = before)
    for (suffix, off) in [
        ("-x", 0),
        ("-d", 1),
        ("-g", 2),
        ("-y", 3),
        ("-r", 4),
        ("-k", 5),
        ("-P", 6),
        ("-b", 7),
        ("-X", 8),
        ("-Q", 9),
    ] {
        if let Some(rest) = cfg.strip_suffix(suffix) {
            return bench_options(default, rest, plan).map(|o| match off {
                0 => PtxOptions {
                    bwd_stmatrix: false,
                    ..o
                },
                1 => PtxOptions {
                    bwd_desc: false,
                    ..o
                },
                3 => PtxOptions {
                    bwd_pingpong: false,
                    ..o
                },
                4 => PtxOptions {
                    bwd_visit_rec: false,
                    ..o
                },
                5 => PtxOptions {
                    bwd_band_keep: false,
                    ..o
                },
                6 => PtxOptions {
                    bwd_persist: false,
                    bwd_persist_dyn: false,
                    ..o
                },
                7 => PtxOptions {
                    bwd_stats_bulk: false,
                    ..o
                },
                8 => PtxOptions {
                    bwd_xchg: false,
                    ..o
                },
                9 => PtxOptions {
                    bwd_dq_pair: false,
                    ..o
                },
                _ => PtxOptions {
                    bwd_ds_unguarded: false,
                    ..o
                },
            });
        }
    }
    // `+g`: dS without the P = 0 select on full blocks of the identity score
    // (`bwd_ds_unguarded`)
    if let Some(rest) = cfg.strip_suffix("+g") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_ds_unguarded: true,
            ..o
        });
    }
    // `+a`: the fused kernel's wgmma descriptors stepped by one 64-bit add (`bwd_desc64`,
    // with `bwd_desc`)
    if let Some(rest) = cfg.strip_suffix("+a") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_desc: true,
            bwd_desc64: true,
            ..o
        });
    }
    // `+f`: dS without the P = 0 select on full blocks of an affine score (ALiBi;
    // `bwd_affine_unguarded`)
    if let Some(rest) = cfg.strip_suffix("+f") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_affine_unguarded: true,
            ..o
        });
    }
    // `+d`: the fused kernel's wgmma descriptors from one base per tile (`bwd_desc`)
    if let Some(rest) = cfg.strip_suffix("+d") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_desc: true,
            ..o
        });
    }
    // `+x`: dSᵀ through stmatrix, L2/Delta through ld.shared.v2 (`bwd_stmatrix`)
    if let Some(rest) = cfg.strip_suffix("+x") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_stmatrix: true,
            ..o
        });
    }
    // `+8`: D64 causal-type bindings whose score reads positions per element (ALiBi) on
    // q tiles of 128 (`PtxOptions::backward_q128_positions`)
    if let Some(rest) = cfg.strip_suffix("+8") {
        return bench_options(default, rest, plan).map(PtxOptions::backward_q128_positions);
    }
    // `+c` / `-c`: the dQ conversion in 64-byte pieces, loads first (`bwd_convert_wide`)
    for (suffix, on) in [("+c", true), ("-c", false)] {
        if let Some(rest) = cfg.strip_suffix(suffix) {
            return bench_options(default, rest, plan).map(|o| PtxOptions {
                bwd_convert_wide: on,
                ..o
            });
        }
    }
    // `+l`: the fused backward's kernels chained by programmatic dependent launch
    // (`bwd_pdl`); `+t`: with it, each dQ tile converted once its last addition is done
    // (`bwd_convert_early`)
    if let Some(rest) = cfg.strip_suffix("+l") {
        return bench_options(default, rest, plan).map(|o| PtxOptions { bwd_pdl: true, ..o });
    }
    // `-t`: neither (the bands' and block tables' default before session 15)
    if let Some(rest) = cfg.strip_suffix("-t") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_pdl: false,
            bwd_convert_early: false,
            ..o
        });
    }
    if let Some(rest) = cfg.strip_suffix("+t") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_pdl: true,
            bwd_convert_early: true,
            ..o
        });
    }
    // `+y`: the math warpgroups take turns in the element code (`bwd_pingpong`; without
    // visit records, refused with it)
    if let Some(rest) = cfg.strip_suffix("+y") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_pingpong: true,
            bwd_visit_rec: false,
            ..o
        });
    }
    // `+n`: with the turns, the next visit's Sᵀ and dPᵀ queued behind the last visit's
    // dQ part (`bwd_ping_next`; ignored without `bwd_pingpong`)
    if let Some(rest) = cfg.strip_suffix("+n") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_ping_next: true,
            ..o
        });
    }
    // `+v`: dK/dV stored 8 bytes per thread (`bwd_store_pairs`)
    if let Some(rest) = cfg.strip_suffix("+v") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_store_pairs: true,
            ..o
        });
    }
    // `+r`: the math warps read each visit from the producer's record (`bwd_visit_rec`)
    if let Some(rest) = cfg.strip_suffix("+r") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_visit_rec: true,
            ..o
        });
    }
    // `+k`: the partial blocks' mask of an exact closed form as q intervals per kv row
    // (`bwd_band_keep`)
    if let Some(rest) = cfg.strip_suffix("+k") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_band_keep: true,
            ..o
        });
    }
    // `+p`: the fused kernel's products issued early (`overlap`: FlashAttention-3's
    // order, P under dPᵀ, dV before the dS barrier)
    if let Some(rest) = cfg.strip_suffix("+p") {
        return bench_options(default, rest, plan).map(|o| PtxOptions { overlap: true, ..o });
    }
    // `+h`: the visit's L2/Delta loads before the wait for Sᵀ and dPᵀ (`bwd_stats_early`)
    if let Some(rest) = cfg.strip_suffix("+h") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_stats_early: true,
            ..o
        });
    }
    // `+z`: the dQ slot's `empty` wait after the products' issue (`bwd_empty_late`)
    if let Some(rest) = cfg.strip_suffix("+z") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_empty_late: true,
            ..o
        });
    }
    // `+j`: dV issued before the dS barrier (`bwd_dv_early`)
    if let Some(rest) = cfg.strip_suffix("+j") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_dv_early: true,
            ..o
        });
    }
    // `+o`: `+i` with each chunk's dK step issued too (`bwd_dk_chunks`)
    if let Some(rest) = cfg.strip_suffix("+o") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_dv_early: true,
            bwd_dv_chunks: true,
            bwd_dk_chunks: true,
            ..o
        });
    }
    // `+i`: P and dS in k-step chunks, each chunk's dV step issued at once (`bwd_dv_chunks`,
    // with `bwd_dv_early`)
    if let Some(rest) = cfg.strip_suffix("+i") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_dv_early: true,
            bwd_dv_chunks: true,
            ..o
        });
    }
    // `+e`: P computed while dPᵀ runs (`bwd_p_under_dp`)
    if let Some(rest) = cfg.strip_suffix("+e") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_p_under_dp: true,
            ..o
        });
    }
    // `+R24` .. `+R56`: the writer warpgroup's registers after `setmaxnreg` (the math
    // warpgroups take what is left: `bwd_writer_regs`)
    for r in [24u32, 32, 40, 48, 56] {
        if let Some(rest) = cfg.strip_suffix(&format!("+R{r}")) {
            return bench_options(default, rest, plan).map(|o| PtxOptions {
                bwd_writer_regs: r,
                ..o
            });
        }
    }
    // `+U`: capture gradients' reads that are one element over a visit's box read once
    // (`bwd_uniform_reads`)
    if let Some(rest) = cfg.strip_suffix("+U") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_uniform_reads: true,
            ..o
        });
    }
    // `+b`: the producer's L2 / Delta rows by two bulk copies (`bwd_stats_bulk`)
    if let Some(rest) = cfg.strip_suffix("+b") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_stats_bulk: true,
            ..o
        });
    }
    // `+c`: the next visit's Sᵀ issued under this visit's dK (`bwd_s_ahead`)
    if let Some(rest) = cfg.strip_suffix("+c") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_s_ahead: true,
            ..o
        });
    }
    // `+w1` / `+w2`: Delta (and L2) in the score products' accumulator starts
    // (`bwd_stat_acc`)
    for k in 1..=2u8 {
        if let Some(rest) = cfg.strip_suffix(&format!("+w{k}")) {
            return bench_options(default, rest, plan).map(|o| PtxOptions {
                bwd_stat_acc: k,
                ..o
            });
        }
    }
    // `+m1` .. `+m8`: that many of every 8 exponentials of a full block on the FMA pipe
    // (`bwd_exp_emu`)
    for k in 1..=8u8 {
        if let Some(rest) = cfg.strip_suffix(&format!("+m{k}")) {
            return bench_options(default, rest, plan).map(|o| PtxOptions {
                bwd_exp_emu: k,
                ..o
            });
        }
    }
    // `+q`: q tiles of 80 where they fit (`PtxOptions::backward_q80`: dense D128, the
    // identity score)
    if let Some(rest) = cfg.strip_suffix("+q") {
        // (one dQ writer where the tiles of 80 apply: they take one; session 34's two
        // writers stay elsewhere)
        return bench_options(default, rest, plan).map(|o| {
            let q = PtxOptions {
                bwd_two_writers: false,
                ..o
            }
            .backward_q80(plan);
            if q.q_block == 80 { q } else { o }
        });
    }
    // `+P`: persistent CTAs taking their kv tiles from a global counter (`bwd_persist` +
    // `bwd_persist_dyn`), where the kernel has them (the TMA producer, no capture
    // gradients, not `bwd_pingpong` / `bwd_s_ahead`); elsewhere the options unchanged
    if let Some(rest) = cfg.strip_suffix("+P") {
        return bench_options(default, rest, plan).map(|o| o.tile_counter(plan));
    }
    // `+2`: two dQ writer threads, one per slot (`bwd_two_writers`)
    if let Some(rest) = cfg.strip_suffix("+2") {
        return bench_options(default, rest, plan).map(|o| PtxOptions {
            bwd_two_writers: true,
            ..o
        });
    }
    // `default+u`: with unordered bulk additions (`bwd_dq_free`); `default-s`: without the
    // search under Sᵀ and dPᵀ (`bwd_scan_under`)
    match cfg {
        "default+u" => {
            return Some(PtxOptions {
                bwd_dq_free: true,
                ..default
            });
        }
        "default-s" => {
            return Some(PtxOptions {
                bwd_scan_under: false,
                ..default
            });
        }
        _ => {}
    }
    if cfg == "default" {
        return Some(default);
    }
    let sep = PtxOptions::backward_separate(default.arch, default.d, default.dv, default.input);
    if cfg == "separate" {
        return Some(PtxOptions {
            float_positions: default.float_positions,
            ..sep
        });
    }
    let (o, tile) = if let Some(t) = cfg.strip_prefix("sync") {
        (sep.backward_sync(), t)
    } else {
        (sep.backward_wgmma(), cfg.strip_prefix("wg")?)
    };
    // a trailing `s`: persistent CTAs over the kv tiles (`bwd_persist`)
    let (tile, persist) = match tile.strip_suffix('s') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    // then a `q`: each math warpgroup's own dQ part (`bwd_wg_dq`)
    let (tile, wg_dq) = match tile.strip_suffix('q') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    // then a `w`: the fused kernel's warp-wide visit search (`bwd_wscan`)
    let (tile, wscan) = match tile.strip_suffix('w') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    // then a `p`: the fused kernel's products issued early (`overlap`)
    let (tile, early) = match tile.strip_suffix('p') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    // then an `l`: the fused kernel's CTAs longest first (`bwd_lpt`)
    let (tile, lpt) = match tile.strip_suffix('l') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    // then a `t`: Q/dO loaded by the writer warpgroup's TMA producer warp (`bwd_tma`)
    let (tile, tma) = match tile.strip_suffix('t') {
        Some(t) => (t, true),
        None => (tile, false),
    };
    let o = PtxOptions {
        overlap: early,
        bwd_tma: tma,
        bwd_lpt: lpt,
        bwd_wscan: wscan,
        bwd_persist: persist,
        bwd_wg_dq: wg_dq,
        float_positions: default.float_positions,
        ..o
    };
    let (tile, o) = if let Some(t) = tile.strip_suffix('o') {
        (t, o.backward_fused(BwdDq::Ordered))
    } else if let Some(t) = tile.strip_suffix('a') {
        (t, o.backward_fused(BwdDq::Atomic))
    } else if let Some(t) = tile.strip_suffix('b') {
        (t, o.backward_fused(BwdDq::OrderedBulk))
    } else {
        (tile, o)
    };
    let (br, bc) = tile.split_once('x')?;
    Some(PtxOptions {
        q_block: br.parse().ok()?,
        kv_block: bc.parse().ok()?,
        ..o
    })
}

fn bench_program(src: &str) -> Program {
    attnc_compiler::compile_source(src)
        .expect("benchmark source compiles")
        .programs
        .remove(0)
}

/// Backward benchmark (an ignored trial: `gpu_backward --ignored bench`): bf16, B2 H16 L8192 D128
/// and B4 H16 L4096 D64, the six benchmark variants and two with capture gradients (a
/// relative-position table, a learnable soft-cap param); device time of the three kernels
/// (CUDA events, median), backward TFLOP/s = 2.5 · 4·B·H·Lq·Lkv·D·density / time with the
/// exact density of the mask. O and dO are random and LSE = ln(Lkv) (the kernels' work
/// does not depend on the values). Writes `$OUT/attnc_bwd_bench.json`.
/// `ATTNC_BWD_BENCH_L=N` runs both shapes at sequence length N.
fn gpu_backward_bench(dev: &CudaDevice) {
    use attnc_compiler::interp::{BoundTensor, TensorData};
    use attnc_compiler::ir::Scalar;
    use rand::Rng;
    let only = std::env::var("ATTNC_BWD_BENCH_ONLY").ok();
    let configs: Vec<String> = std::env::var("ATTNC_BWD_BENCH_CFG")
        .unwrap_or_else(|_| "default".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let mut json = String::from("{\n");
    // `ATTNC_BWD_BENCH_D=128` (or 64): that shape only
    let only_d = std::env::var("ATTNC_BWD_BENCH_D").ok();
    // `ATTNC_BWD_BENCH_L=4096`: that sequence length instead (e.g. the Python bench's
    // B2 H16 L4096 D128)
    let only_l: Option<usize> = std::env::var("ATTNC_BWD_BENCH_L")
        .ok()
        .and_then(|x| x.parse().ok());
    // B2 H16 L4096 D256 (Gemma's head dim) only with `ATTNC_BWD_BENCH_D=256`
    for (b, h, l, d) in [
        (2usize, 16usize, 8192usize, 128usize),
        (4, 16, 4096, 64),
        (2, 16, 4096, 256),
    ] {
        if only_d.as_deref().is_some_and(|x| x != d.to_string()) || (d == 256 && only_d.is_none()) {
            continue;
        }
        let l = only_l.unwrap_or(l);
        let sh = shape(b, h, h, l, l, d);
        let ty = InputType::Bf16;
        let mut r = rng(42);
        let (q, _) = random_input(&mut r, sh.q_len(), 1.0, ty);
        let (k, _) = random_input(&mut r, sh.k_len(), 1.0, ty);
        let (v, _) = random_input(&mut r, sh.v_len(), 1.0, ty);
        let (o, _) = random_input(&mut r, sh.o_len(), 0.3, ty);
        let (d_o, _) = random_input(&mut r, sh.o_len(), 1.0, ty);
        let lse = vec![(l as f32).ln(); sh.lse_len()];
        let docs: Vec<i32> = (0..b)
            .flat_map(|_| {
                let mut ids: Vec<i32> = (0..l).map(|_| r.random_range(0..8)).collect();
                ids.sort();
                ids
            })
            .collect();
        let variants: Vec<(&str, Program)> = vec![
            ("full", samples::dense()),
            ("causal", samples::causal()),
            ("sliding1024", samples::sliding()),
            ("alibi_causal", samples::alibi_causal(h as i32)),
            ("softcap_causal", samples::softcap_causal()),
            ("doc_causal", samples::document_causal()),
            // capture gradients: a relative-position table (contended at the clamped
            // ends) and a learnable soft-cap param
            ("relbias_full", bench_program(BENCH_RELBIAS)),
            ("softcap_param_causal", bench_program(BENCH_SOFTCAP_PARAM)),
        ];
        for (name, p) in variants {
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|x| x == name))
            {
                continue;
            }
            let mut bind = Bindings::default();
            // unmasked pairs of one (b, h) slice, summed over b
            let pairs: f64 = match name {
                "full" => (b * l * l) as f64,
                "sliding1024" => {
                    bind.params.push(Scalar::I32(1024));
                    b as f64 * (0..l).map(|q| (q + 1).min(1024) as f64).sum::<f64>()
                }
                "doc_causal" => {
                    bind.tensors.push(BoundTensor {
                        dims: vec![b, l],
                        data: TensorData::I32(docs.clone()),
                    });
                    let mut n = 0f64;
                    for bb in 0..b {
                        let row = &docs[bb * l..][..l];
                        let mut start = 0;
                        for i in 1..=l {
                            if i == l || row[i] != row[start] {
                                let m = (i - start) as f64;
                                n += m * (m + 1.0) / 2.0;
                                start = i;
                            }
                        }
                    }
                    n
                }
                "relbias_full" => {
                    bind.tensors.push(BoundTensor {
                        dims: vec![h, 129],
                        data: TensorData::F32(
                            (0..h * 129).map(|_| r.random_range(-1.0f32..1.0)).collect(),
                        ),
                    });
                    (b * l * l) as f64
                }
                "softcap_param_causal" => {
                    bind.params.push(Scalar::F32(30.0));
                    b as f64 * (l * (l + 1) / 2) as f64
                }
                _ => b as f64 * (l * (l + 1) / 2) as f64,
            };
            // `default`: the runtime's choice for this binding
            let default = PtxOptions::backward(dev.arch(), d as u32, d as u32, ty)
                .backward_for_binding(&Plan::new(&p), l);
            for (ci, cfg) in configs.iter().enumerate() {
                let Some(opts) = bench_options(default, cfg, &Plan::new(&p)) else {
                    println!("unknown ATTNC_BWD_BENCH_CFG entry {cfg}");
                    continue;
                };
                let ks = match emit_backward_kernels(&Plan::new(&p), &opts) {
                    Ok(k) => k,
                    Err(e) => {
                        println!("{name} D{d} {cfg}: {e}");
                        continue;
                    }
                };
                dump(&ks);
                let bw = CudaBackward::load(dev, &ks).unwrap();
                let blocks =
                    LaunchBlocks::new(&bw, &attnc_compiler::plan::Plan::new(&p), &sh, &bind)
                        .unwrap();
                let prob = bw
                    .upload(
                        dev,
                        &sh,
                        (&q, &k, &v, &o),
                        &lse,
                        &d_o,
                        None,
                        sh.default_scale(),
                        &bind,
                        blocks.as_blocks(),
                    )
                    .unwrap();
                let ms = bw.time(dev, &prob, 2, 5, 3).unwrap();
                // each kernel alone
                let part = |i: usize| {
                    let mut on = [false; 3];
                    on[i] = true;
                    dev.time(1, 5, 3, || bw.launch_parts(dev, &prob, on))
                        .unwrap()
                };
                let (pre, dkdv, dq) = (part(0), part(1), part(2));
                let tf = 2.5 * 4.0 * pairs * h as f64 * d as f64 / ms / 1e9;
                let key = format!("attnc_bwd/{name}/B{b}H{h}S{l}D{d}");
                println!(
                    "{key} [{cfg}]: {ms:.3} ms {tf:.1} TFLOP/s (pre {pre:.3} dkdv {dkdv:.3} dq {dq:.3} ms; density {:.3}, {})",
                    pairs / (b * l * l) as f64,
                    ks[1].kv_bounds.name()
                );
                // the first configuration is the one reported
                if ci == 0 {
                    json.push_str(&format!("\"{key}\": {{\"ms\": {ms}, \"tflops\": {tf}}},\n"));
                }
            }
        }
    }
    json.push_str(&format!("\"device\": \"{}\"\n}}\n", dev.name()));
    let out = std::env::var("OUT").unwrap_or_else(|_| ".".into());
    let _ = std::fs::write(format!("{out}/attnc_bwd_bench.json"), json);
}

/// The backward as users run it (an ignored trial: `gpu_backward --ignored
/// gpu_backward_runtime_bench`): through the runtime's caller-buffer entry point
/// (`Bound::backward_cuda_into`, what the Python package's torch path calls), so the
/// kernels are the ones the runtime picks for the binding (`backward_for_binding`) and
/// loads through its JIT (from PTX where they use `setmaxnreg`), not the ones this file
/// loads itself. bf16, B2 H16 L8192 D128: dense, causal, ALiBi + causal, soft-cap +
/// causal, sliding window 1024 (`ATTNC_BWD_BENCH_ONLY=causal,...` picks); inputs as the
/// kernel bench's (random, LSE = ln Lkv); device time of one whole backward call (CUDA
/// events, median of 3 x 5 calls). The runtime's overrides (`ATTNC_BWD_LPT=0|1`,
/// `ATTNC_BWD_FPOS=0`, `ATTNC_BWD_DQ=...`) apply; the line says which were set.
/// `ATTNC_BWD_BENCH_ND=1` times the non-deterministic backward users ask for
/// (`BackwardOptions::nondeterministic()`, the `deterministic=False` kernels) instead.
fn gpu_backward_runtime_bench(dev: &CudaDevice) {
    use attnc::external::{DeviceBackwardBuffers, DeviceDqWorkspace, DeviceGradWords};
    use attnc::{Backend, BindOptions, Compiled, DType, ParamValue};
    use cudarc::driver::DevicePtr;
    use std::collections::HashMap;
    let only = std::env::var("ATTNC_BWD_BENCH_ONLY").ok();
    let env: Vec<String> = ["ATTNC_BWD_LPT", "ATTNC_BWD_FPOS", "ATTNC_BWD_DQ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    let bwd = if std::env::var("ATTNC_BWD_BENCH_ND").is_ok_and(|v| v == "1") {
        attnc::BackwardOptions::nondeterministic()
    } else {
        attnc::BackwardOptions::default()
    };
    let mode = if bwd.deterministic {
        "deterministic"
    } else {
        "non-deterministic"
    };
    let (b, h, l, d) = (2usize, 16usize, 8192usize, 128usize);
    let sh = shape(b, h, h, l, l, d);
    let ty = InputType::Bf16;
    let mut r = rng(42);
    let mut input =
        |n: usize, amp: f32| dev.upload_u16(&random_input(&mut r, n, amp, ty).0).unwrap();
    let (qd, kd, vd) = (
        input(sh.q_len(), 1.0),
        input(sh.k_len(), 1.0),
        input(sh.v_len(), 1.0),
    );
    let (od, dod) = (input(sh.o_len(), 0.3), input(sh.o_len(), 1.0));
    let lse = dev.upload(&vec![(l as f32).ln(); sh.lse_len()]).unwrap();
    let (dq, dk, dv) = (
        dev.zeros::<u16>(sh.q_len()).unwrap(),
        dev.zeros::<u16>(sh.k_len()).unwrap(),
        dev.zeros::<u16>(sh.v_len()).unwrap(),
    );
    let rows = b * h * l;
    let (delta, lse2) = (
        dev.zeros::<f32>(rows).unwrap(),
        dev.zeros::<f32>(rows).unwrap(),
    );
    let causal_pairs = b as f64 * (l * (l + 1) / 2) as f64;
    for (name, file, attention, window, pairs) in [
        ("full", "dense.attn", "dense", None, (b * l * l) as f64),
        (
            "causal",
            "causal.attn",
            "causal_attention",
            None,
            causal_pairs,
        ),
        (
            "alibi_causal",
            "alibi_causal.attn",
            "alibi_causal",
            None,
            causal_pairs,
        ),
        (
            "softcap_causal",
            "softcap.attn",
            "softcap_causal",
            None,
            causal_pairs,
        ),
        (
            "sliding1024",
            "sliding_window.attn",
            "sliding_window",
            Some(1024),
            // q - kv <= 1024 and kv <= q: min(q + 1, 1025) keys per row
            b as f64 * (0..l).map(|q| (q + 1).min(1025) as f64).sum::<f64>(),
        ),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        let c = Compiled::from_file(&examples_dir().join(file)).unwrap();
        let var = c.attention(attention).unwrap();
        let mut bound = var
            .bind(BindOptions::new(Backend::Cuda, sh, DType::BF16))
            .unwrap();
        let params: HashMap<String, ParamValue> = window
            .map(|w| ("window".to_string(), ParamValue::I32(w)))
            .into_iter()
            .collect();
        let work = bound.backward_cuda_workspace_with(&bwd).unwrap();
        let ws = work.map(|(a, s)| {
            (
                dev.zeros::<f32>(a.max(1)).unwrap(),
                dev.zeros::<u32>(s.max(1)).unwrap(),
            )
        });
        let st = qd.stream().clone();
        let p16 = |x: &cudarc::driver::CudaSlice<u16>| x.device_ptr(&st).0;
        let p32 = |x: &cudarc::driver::CudaSlice<f32>| x.device_ptr(&st).0;
        let bufs = DeviceBackwardBuffers {
            q: p16(&qd),
            k: p16(&kd),
            v: p16(&vd),
            o: p16(&od),
            lse: p32(&lse),
            d_o: p16(&dod),
            dlse: None,
            dq: p16(&dq),
            dk: p16(&dk),
            dv: p16(&dv),
            delta: p32(&delta),
            lse2: p32(&lse2),
            dq_work: ws.as_ref().map(|(a, s)| DeviceDqWorkspace {
                accum: p32(a),
                sem: s.device_ptr(&st).0,
            }),
        };
        let bound = std::cell::RefCell::new(bound);
        let launch = || {
            // SAFETY: every buffer above is a live allocation of this device sized for
            // the bound shape (the workspace as backward_cuda_workspace says), used on
            // stream `st` (the device's, which `time` records its events on and waits
            // for); no capture gradients.
            unsafe {
                bound.borrow_mut().backward_cuda_into_with(
                    &bufs,
                    &HashMap::new(),
                    &params,
                    &DeviceGradWords::default(),
                    None,
                    &bwd,
                    st.cu_stream() as u64,
                )
            }
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            Ok(())
        };
        let ms = dev.time(2, 5, 3, launch).unwrap();
        let tf = 2.5 * 4.0 * pairs * h as f64 * d as f64 / ms / 1e9;
        println!(
            "attnc_bwd_runtime/{name}/B{b}H{h}S{l}D{d} [{}, {mode}]: {ms:.3} ms {tf:.1} TFLOP/s (fused dQ {})",
            if env.is_empty() {
                "defaults".to_string()
            } else {
                env.join(" ")
            },
            work.is_some()
        );
    }
}

/// The kernel bench's path and the runtime's, interleaved in one process (an ignored
/// trial: `gpu_backward --ignored gpu_backward_paths_bench`): per variant (bf16 B2 H16
/// L8192 D128: dense, causal, ALiBi + causal, soft-cap + causal, sliding window 1024;
/// `ATTNC_BWD_BENCH_ONLY` picks) and per mode (deterministic, and with
/// `ATTNC_BWD_PATHS_ND=1`, or a list of variants, also `deterministic=false`), three ways of running the kernels
/// of the binding's options (`attnc::backward::backward_kernel_options`, what the runtime
/// picks, `ATTNC_BWD_*` overrides included) on the same inputs:
/// - `kernel`: the kernel bench's path — the three kernels loaded from their PTX
///   (`CudaBackward::load`: the driver compiles each as a whole program) and launched by
///   `CudaBackward::launch` on buffers of `CudaBackward::upload`;
/// - `jit`: the kernels as the runtime's JIT cache loads them (`CudaBackward::from_jit`,
///   a cache of its own without disk: the fused kernel from PTX, the pre kernel and the
///   dQ conversion linked by `cuLink*`), launched like `kernel` on its buffers;
/// - `runtime`: `Bound::backward_cuda_into_with`, the call users (and the Python package)
///   make, on buffers of its own.
///
/// Each round times every path of every mode once (one warm-up call, then CUDA events
/// around 5 calls), the order rotating per round (`ATTNC_BWD_PATHS_ROUNDS`, default 9); it
/// prints each path's times in round order (the GPU's drift), then per mode each path's
/// median and best whole-backward TFLOP/s over the rounds with the ratio of the
/// deterministic `kernel` path's median time to the path's (> 1: faster), then the three
/// kernels alone (pre, fused, conversion; median of 3 x 5) for `kernel` and `jit`, and the
/// host time of one `runtime` call (wall clock to enqueue, mean of 10). Session 21 (one
/// H200, modes timed one after the other then): the three paths within 0.7% on every row.
fn gpu_backward_paths_bench(dev: &CudaDevice) {
    use attnc::external::{DeviceBackwardBuffers, DeviceDqWorkspace, DeviceGradWords};
    use attnc::{Backend, BindOptions, Compiled, DType, ParamValue};
    use attnc_compiler::ir::Scalar;
    use cudarc::driver::DevicePtr;
    use std::collections::HashMap;
    let only = std::env::var("ATTNC_BWD_BENCH_ONLY").ok();
    let rounds: usize = std::env::var("ATTNC_BWD_PATHS_ROUNDS")
        .ok()
        .and_then(|x| x.parse().ok())
        .unwrap_or(9)
        .max(1);
    // `ATTNC_BWD_PATHS_ND=1`: every variant in both modes; a list (`full,causal`): those
    let nd = std::env::var("ATTNC_BWD_PATHS_ND").ok();
    let modes = |name: &str| -> &'static [bool] {
        match nd.as_deref() {
            Some("1") => &[true, false],
            Some(list) if list.split(',').any(|x| x == name) => &[true, false],
            _ => &[true],
        }
    };
    let (b, h, l, d) = (2usize, 16usize, 8192usize, 128usize);
    let sh = shape(b, h, h, l, l, d);
    let ty = InputType::Bf16;
    let mut r = rng(42);
    let (q, _) = random_input(&mut r, sh.q_len(), 1.0, ty);
    let (k, _) = random_input(&mut r, sh.k_len(), 1.0, ty);
    let (v, _) = random_input(&mut r, sh.v_len(), 1.0, ty);
    let (o, _) = random_input(&mut r, sh.o_len(), 0.3, ty);
    let (d_o, _) = random_input(&mut r, sh.o_len(), 1.0, ty);
    let lse = vec![(l as f32).ln(); sh.lse_len()];
    // the runtime path's own buffers (the same values)
    let (qd, kd, vd, od, dod) = (
        dev.upload_u16(&q).unwrap(),
        dev.upload_u16(&k).unwrap(),
        dev.upload_u16(&v).unwrap(),
        dev.upload_u16(&o).unwrap(),
        dev.upload_u16(&d_o).unwrap(),
    );
    let lsed = dev.upload(&lse).unwrap();
    let (dq, dk, dv) = (
        dev.zeros::<u16>(sh.q_len()).unwrap(),
        dev.zeros::<u16>(sh.k_len()).unwrap(),
        dev.zeros::<u16>(sh.v_len()).unwrap(),
    );
    let rows = b * h * l;
    let (delta, lse2) = (
        dev.zeros::<f32>(rows).unwrap(),
        dev.zeros::<f32>(rows).unwrap(),
    );
    let jit = attnc::cuda::JitCache::new(None);
    let causal_pairs = b as f64 * (l * (l + 1) / 2) as f64;
    let variants = [
        ("full", "dense.attn", "dense", None, (b * l * l) as f64),
        (
            "causal",
            "causal.attn",
            "causal_attention",
            None,
            causal_pairs,
        ),
        (
            "alibi_causal",
            "alibi_causal.attn",
            "alibi_causal",
            None,
            causal_pairs,
        ),
        (
            "softcap_causal",
            "softcap.attn",
            "softcap_causal",
            None,
            causal_pairs,
        ),
        (
            "sliding1024",
            "sliding_window.attn",
            "sliding_window",
            Some(1024),
            b as f64 * (0..l).map(|q| (q + 1).min(1025) as f64).sum::<f64>(),
        ),
    ];
    for (name, file, attention, window, pairs) in variants {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        let tf = |ms: f64| 2.5 * 4.0 * pairs * h as f64 * d as f64 / ms / 1e9;
        let c = Compiled::from_file(&examples_dir().join(file)).unwrap();
        let var = c.attention(attention).unwrap();
        let params: HashMap<String, ParamValue> = window
            .map(|w| ("window".to_string(), ParamValue::I32(w)))
            .into_iter()
            .collect();
        let mut bind = Bindings::default();
        if let Some(w) = window {
            bind.params.push(Scalar::I32(w));
        }
        // per mode: the binding, its kernels both ways, their problem and the runtime's
        // workspace (every mode's paths are timed in the same rounds)
        struct Run {
            det: bool,
            bwd: attnc::BackwardOptions,
            opts: PtxOptions,
            kern: CudaBackward,
            jitk: CudaBackward,
            prob: attnc::cuda::backward::BackwardProblem,
            bound: std::cell::RefCell<attnc::Bound>,
            bufs: DeviceBackwardBuffers,
            _ws: Option<(
                cudarc::driver::CudaSlice<f32>,
                cudarc::driver::CudaSlice<u32>,
            )>,
        }
        let st = qd.stream().clone();
        let runs: Vec<Run> = modes(name)
            .iter()
            .map(|&det| {
                let bwd = if det {
                    attnc::BackwardOptions::default()
                } else {
                    attnc::BackwardOptions::nondeterministic()
                };
                let mut bound = var
                    .bind(BindOptions::new(Backend::Cuda, sh, DType::BF16))
                    .unwrap();
                let plan = bound.plan().clone();
                let opts = attnc::backward::backward_kernel_options(
                    &plan,
                    &sh,
                    dev.arch(),
                    ty,
                    false,
                    det,
                );
                let kern =
                    CudaBackward::load(dev, &emit_backward_kernels(&plan, &opts).unwrap()).unwrap();
                let jitk = CudaBackward::from_jit(&jit, dev, &plan, &opts).unwrap();
                let blocks = LaunchBlocks::new(&kern, &plan, &sh, &bind).unwrap();
                let prob = kern
                    .upload(
                        dev,
                        &sh,
                        (&q, &k, &v, &o),
                        &lse,
                        &d_o,
                        None,
                        sh.default_scale(),
                        &bind,
                        blocks.as_blocks(),
                    )
                    .unwrap();
                let work = bound.backward_cuda_workspace_with(&bwd).unwrap();
                assert_eq!(
                    work,
                    kern.dq_workspace(&sh),
                    "{name} det={det}: the runtime's kernels are these options'"
                );
                let ws = work.map(|(a, s)| {
                    (
                        dev.zeros::<f32>(a.max(1)).unwrap(),
                        dev.zeros::<u32>(s.max(1)).unwrap(),
                    )
                });
                let p16 = |x: &cudarc::driver::CudaSlice<u16>| x.device_ptr(&st).0;
                let p32 = |x: &cudarc::driver::CudaSlice<f32>| x.device_ptr(&st).0;
                let bufs = DeviceBackwardBuffers {
                    q: p16(&qd),
                    k: p16(&kd),
                    v: p16(&vd),
                    o: p16(&od),
                    lse: p32(&lsed),
                    d_o: p16(&dod),
                    dlse: None,
                    dq: p16(&dq),
                    dk: p16(&dk),
                    dv: p16(&dv),
                    delta: p32(&delta),
                    lse2: p32(&lse2),
                    dq_work: ws.as_ref().map(|(a, s)| DeviceDqWorkspace {
                        accum: p32(a),
                        sem: s.device_ptr(&st).0,
                    }),
                };
                Run {
                    det,
                    bwd,
                    opts,
                    kern,
                    jitk,
                    prob,
                    bound: std::cell::RefCell::new(bound),
                    bufs,
                    _ws: ws,
                }
            })
            .collect();
        let runtime = |r: &Run| -> Result<(), attnc::cuda::CudaError> {
            // SAFETY: every buffer of `r.bufs` is a live allocation of this device sized
            // for the bound shape (the workspace as backward_cuda_workspace says), used on
            // stream `st` (the device's, which `time` records its events on and waits
            // for); no capture gradients.
            unsafe {
                r.bound.borrow_mut().backward_cuda_into_with(
                    &r.bufs,
                    &HashMap::new(),
                    &params,
                    &DeviceGradWords::default(),
                    None,
                    &r.bwd,
                    st.cu_stream() as u64,
                )
            }
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            Ok(())
        };
        type Launch<'a> = Box<dyn Fn() -> Result<(), attnc::cuda::CudaError> + 'a>;
        // (run, path name, launch): kernel, jit, runtime for each mode
        let mut paths: Vec<(usize, &str, Launch)> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            paths.push((i, "kernel", Box::new(move || r.kern.launch(dev, &r.prob))));
            paths.push((i, "jit", Box::new(move || r.jitk.launch(dev, &r.prob))));
            paths.push((i, "runtime", Box::new(move || runtime(r))));
        }
        let n = paths.len();
        let mut ts = vec![Vec::new(); n];
        for round in 0..rounds {
            for i in 0..n {
                let p = (round + i) % n;
                ts[p].push(dev.time(1, 5, 1, &paths[p].2).unwrap());
            }
        }
        // each round's ms in round order (the GPU's drift), then median and best
        for (p, t) in paths.iter().zip(&ts) {
            let mode = if runs[p.0].det { "det" } else { "nd" };
            let list: Vec<String> = t.iter().map(|x| format!("{x:.3}")).collect();
            println!("  rounds ms {mode} {}: {}", p.1, list.join(" "));
        }
        let stats: Vec<(f64, f64)> = ts
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.sort_by(|a, b| a.total_cmp(b));
                (x[x.len() / 2], x[0])
            })
            .collect();
        // the deterministic kernel path's median, the ratios' base for every mode
        let base = paths
            .iter()
            .zip(&stats)
            .find(|(p, _)| runs[p.0].det && p.1 == "kernel")
            .map(|(_, s)| s.0);
        for (i, r) in runs.iter().enumerate() {
            let mode = if r.det { "det" } else { "nd" };
            let line: Vec<String> = paths
                .iter()
                .zip(&stats)
                .filter(|(p, _)| p.0 == i)
                .map(|((_, p, _), (m, lo))| {
                    format!(
                        "{p} {:.1} (min-time {:.1}, {:.3} ms, x{:.3})",
                        tf(*m),
                        tf(*lo),
                        m,
                        base.unwrap_or(*m) / m
                    )
                })
                .collect();
            println!(
                "attnc_bwd_paths/{name}/B{b}H{h}S{l}D{d} [{mode}, {rounds} rounds, x = the deterministic kernel path's median time / this]: {}",
                line.join(" | ")
            );
        }
        for r in &runs {
            let mode = if r.det { "det" } else { "nd" };
            let parts = |bw: &CudaBackward| -> Vec<f64> {
                (0..3)
                    .map(|i| {
                        let mut on = [false; 3];
                        on[i] = true;
                        dev.time(1, 5, 3, || bw.launch_parts(dev, &r.prob, on))
                            .unwrap()
                    })
                    .collect()
            };
            let (pk, pj) = (parts(&r.kern), parts(&r.jitk));
            dev.synchronize().unwrap();
            let t = std::time::Instant::now();
            for _ in 0..10 {
                runtime(r).unwrap();
            }
            let host_us = t.elapsed().as_secs_f64() * 1e5;
            dev.synchronize().unwrap();
            println!(
                "  {mode} parts ms (pre fused conversion): kernel {:.4} {:.4} {:.4} | jit {:.4} {:.4} {:.4}; runtime host {host_us:.1} us/call; {}",
                pk[0],
                pk[1],
                pk[2],
                pj[0],
                pj[1],
                pj[2],
                r.opts.key()
            );
        }
    }
}

/// Small D128 and D64 cases of the default fused kernel for compute-sanitizer (memcheck: the
/// dQ parts and bulk additions stay in their buffers; racecheck: the shared-memory
/// slots, dSᵀ tile and Q/dO buffers): causal GQA with odd lengths, a band, a block table, D64 ALiBi +
/// causal (q tiles of 128), and rows masked entirely (their dQ exactly 0). `ATTNC_BWD_TEST_SMS=n` sizes persistent grids for n
/// SMs.
fn gpu_backward_fused_sanitize(dev: &CudaDevice) {
    // `ATTNC_BWD_TEST_SMS=n`: persistent kernels (`bwd_persist`) on at most n CTAs, each
    // walking several kv tiles
    let sms = std::env::var("ATTNC_BWD_TEST_SMS").ok();
    let dev = &match sms.and_then(|n| n.parse().ok()) {
        Some(n) => dev.with_sms(n),
        None => dev.with_sms(dev.sms()),
    };
    for d in [128, 64] {
        check_case(
            dev,
            &samples::causal(),
            shape(1, 4, 2, 150, 270, d),
            InputType::Bf16,
            31,
            false,
        );
    }
    // dense at D128 (with `ATTNC_BWD_TEST_CFG=default+q`: q tiles of 80, one dQ slot)
    check_case(
        dev,
        &samples::dense(),
        shape(1, 4, 2, 150, 270, 128),
        InputType::Bf16,
        32,
        false,
    );
    // a band: the warp-wide visit search (`bwd_wscan`), the writer's lane 0 adding
    check_case(
        dev,
        &samples::sliding(),
        shape(1, 4, 2, 150, 270, 128),
        InputType::Bf16,
        33,
        false,
    );
    // a block table (document + causal): the tile counter's persistent CTAs (the default
    // on bands and tables since session 24) and the early dQ conversion
    check_case(
        dev,
        &samples::document_causal(),
        shape(2, 4, 1, 300, 300, 128),
        InputType::Bf16,
        35,
        false,
    );
    // ALiBi + causal at D64: a score reading positions on q tiles of 128
    // (`backward_q128_positions`, the binding's default since session 13)
    let alibi = samples::alibi_causal(4);
    let sh = shape(1, 4, 2, 150, 270, 64);
    let o = test_options(dev.arch(), &alibi, &sh, InputType::Bf16);
    if std::env::var("ATTNC_BWD_TEST_CFG").is_err()
        && o.bwd_dq != attnc_compiler::backend::llvm::BwdDq::Separate
    {
        assert_eq!(o.q_block, 128, "D64 ALiBi + causal on q tiles of 128");
    }
    check_case(dev, &alibi, sh, InputType::Bf16, 34, false);
    let p = late_start();
    let sh = shape(1, 2, 1, 67, 140, 128);
    check_case(dev, &p, sh, InputType::F16, 32, false);
    assert_late_start_rows_zero(dev, &p, sh, InputType::F16, 32);
}

/// The fused kernel's warp-wide visit search (`PtxOptions::bwd_wscan`: a lane per q block,
/// the default for bands and block tables) against the f64 reference, over more than 32
/// q blocks (a window of 37 at Lq 2200: the search steps over gaps and past the last q
/// block), with two writer threads and dK/dV stored in pairs (`bwd_two_writers`,
/// `bwd_store_pairs`: the default there) and without them, also with two writer warps
/// (`overlap`), GQA, Lq != Lkv, a block table, f16 and bf16. The longest-first order is refused with it (`backward/fused.rs`, `validate`).
fn gpu_backward_wscan(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::{Arch, BwdDq};
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the fused kernel does not exist here");
        return;
    }
    let cases = [
        (
            samples::sliding(),
            shape(1, 2, 1, 2200, 2200, 64),
            InputType::Bf16,
        ),
        (
            samples::sliding(),
            shape(2, 4, 2, 333, 517, 128),
            InputType::Bf16,
        ),
        (
            samples::document_causal(),
            shape(1, 2, 1, 300, 300, 128),
            InputType::F16,
        ),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let def = binding_options(dev.arch(), p, sh, *ty);
        assert_eq!(def.bwd_dq, BwdDq::OrderedBulk);
        assert!(
            def.bwd_wscan && !def.bwd_lpt,
            "{}: the binding's default",
            p.name
        );
        assert!(def.bwd_two_writers && def.bwd_store_pairs, "{}", p.name);
        assert!(
            def.bwd_visit_rec && def.bwd_band_keep && def.bwd_desc,
            "{}",
            p.name
        );
        // every case on the default (two writer threads, dK/dV stored in pairs:
        // `bwd_two_writers`, `bwd_store_pairs`) and on one writer thread with per-word
        // stores (the default before session 12); two writer warps with `overlap`: the
        // D64 case (measured passing in session 10)
        let runs: &[(bool, bool)] = if i == 0 {
            &[(false, true), (false, false), (true, false)]
        } else {
            &[(false, true), (false, false)]
        };
        for &(early, two) in runs {
            let o = PtxOptions {
                overlap: early,
                bwd_two_writers: two,
                bwd_store_pairs: two,
                // one writer: the options of session 11 (session 13's only on the default)
                bwd_visit_rec: two && def.bwd_visit_rec,
                bwd_band_keep: two && def.bwd_band_keep,
                bwd_stmatrix: two && def.bwd_stmatrix,
                bwd_desc: two && def.bwd_desc,
                bwd_ds_unguarded: two && def.bwd_ds_unguarded,
                ..def
            };
            println!(
                "  {} {:?} overlap={early} two_writers={} store_pairs={}",
                p.name, sh, o.bwd_two_writers, o.bwd_store_pairs
            );
            check_case_with(dev, p, *sh, *ty, 400 + i as u64, i % 2 == 1, o);
        }
    }
}

/// The fused kernel's element code in two other orders (session 14, off by default):
/// the visit's L2/Delta loads before the wait for Sᵀ and dPᵀ (`bwd_stats_early`) and P
/// computed while dPᵀ runs (`bwd_p_under_dp`), each on the binding's options, against
/// the f64 reference (dense, causal, ALiBi + causal, soft-cap + causal at D128; causal
/// at D64 on q tiles of 128; GQA, odd lengths, Lq != Lkv, f16 and bf16), and bit-identical
/// over 3 runs (dense and causal at 1000 x 1000, GQA).
fn gpu_backward_element_orders(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the fused kernel does not exist here");
        return;
    }
    let with = |o: PtxOptions, which: u32| PtxOptions {
        bwd_stats_early: which == 0,
        bwd_p_under_dp: which == 1,
        ..o
    };
    let cases = [
        (
            samples::dense(),
            shape(2, 4, 2, 77, 131, 128),
            InputType::Bf16,
        ),
        (
            samples::causal(),
            shape(1, 4, 2, 150, 270, 128),
            InputType::F16,
        ),
        (
            samples::alibi_causal(4),
            shape(1, 4, 2, 200, 200, 128),
            InputType::Bf16,
        ),
        (
            samples::softcap_causal(),
            shape(1, 2, 1, 129, 129, 128),
            InputType::Bf16,
        ),
        (
            samples::causal(),
            shape(1, 4, 2, 200, 63, 64),
            InputType::F16,
        ),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let def = binding_options(dev.arch(), p, sh, *ty);
        for which in [0, 1] {
            let o = with(def, which);
            println!(
                "  {} {:?} stats_early={} p_under_dp={}",
                p.name, sh, o.bwd_stats_early, o.bwd_p_under_dp
            );
            check_case_with(dev, p, *sh, *ty, 700 + i as u64, false, o);
        }
    }
    for (p, sh) in [
        (samples::dense(), shape(1, 4, 2, 1000, 1000, 128)),
        (samples::causal(), shape(1, 4, 2, 1000, 1000, 128)),
    ] {
        let ty = InputType::Bf16;
        let def = binding_options(dev.arch(), &p, &sh, ty);
        for which in [0, 1] {
            let o = with(def, which);
            let what = format!(
                "{} {:?} stats_early={} p_under_dp={}",
                p.name, sh, o.bwd_stats_early, o.bwd_p_under_dp
            );
            assert_runs_identical(dev, &p, &sh, ty, &o, 3, &what);
        }
    }
}

/// q tiles of 80 (`PtxOptions::backward_q80`: dQᵀ = Kᵀ dSᵀ, one dQ slot, the transposed
/// conversion) on the dense D128 binding against the f64 reference: odd lengths (the q
/// tail: 77, 300, 1000 rows; the kv tail), Lq != Lkv, Lq a multiple of 80, Lq below one
/// tile, GQA 2:1 and 4:1, f16 and bf16; and bit-identical over 4 runs at 1000 x 1000 (13
/// q blocks, 8 kv blocks adding into each dQ tile).
fn gpu_backward_q80(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the fused kernel does not exist here");
        return;
    }
    let p = samples::dense();
    // (one dQ writer, as the non-deterministic path runs them: the binding's two writers
    // since session 34 keep q tiles of 64)
    let q80 = |sh: &Shape, ty| {
        let o = PtxOptions {
            bwd_two_writers: false,
            ..binding_options(dev.arch(), &p, sh, ty)
        }
        .backward_q80(&Plan::new(&p));
        assert_eq!(o.q_block, 80);
        o
    };
    for (i, (sh, ty)) in [
        (shape(2, 4, 2, 77, 131, 128), InputType::Bf16),
        (shape(1, 4, 1, 300, 260, 128), InputType::F16),
        (shape(1, 2, 2, 160, 160, 128), InputType::Bf16),
        (shape(1, 2, 1, 1000, 700, 128), InputType::Bf16),
        (shape(1, 2, 2, 9, 200, 128), InputType::F16),
    ]
    .into_iter()
    .enumerate()
    {
        println!("  q80 {sh:?} {ty:?}");
        check_case_with(dev, &p, sh, ty, 900 + i as u64, false, q80(&sh, ty));
    }
    let (sh, ty) = (shape(1, 4, 2, 1000, 1000, 128), InputType::Bf16);
    assert_runs_identical(dev, &p, &sh, ty, &q80(&sh, ty), 4, &format!("q80 {sh:?}"));
}

/// The fused kernel on persistent CTAs (`PtxOptions::bwd_persist`) against the f64
/// reference on 3 CTAs that each walk many kv tiles (the next tile's K/V and Q/dO loaded
/// under the last one's drain), and bit-identical over runs on the device's CTAs: bands
/// (GQA, Lq != Lkv) and a block table, f16 and bf16. (Causal GQA at D64/D128 on 2 CTAs:
/// `ATTNC_BWD_TEST_CFG=wg64x128btws ATTNC_BWD_TEST_SMS=2 gpu_backward_fused_sanitize`.)
fn gpu_backward_persist(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the fused kernel does not exist here");
        return;
    }
    let cases = [
        (
            samples::document_causal(),
            shape(1, 2, 1, 300, 300, 128),
            InputType::F16,
        ),
        (
            samples::sliding(),
            shape(2, 4, 2, 333, 517, 128),
            InputType::Bf16,
        ),
        (
            samples::sliding(),
            shape(1, 2, 1, 700, 700, 64),
            InputType::Bf16,
        ),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let def = binding_options(dev.arch(), p, sh, *ty);
        // (on session 12's options for bands and tables: visit records need the
        // non-persistent kernel, the instruction cuts are not measured with it)
        // (the static order: session 23's defaults take the counter's tiles on bands and
        // tables)
        let o = PtxOptions {
            bwd_persist: true,
            bwd_persist_dyn: false,
            bwd_visit_rec: false,
            bwd_band_keep: false,
            bwd_stmatrix: false,
            bwd_desc: false,
            bwd_ds_unguarded: false,
            ..def
        };
        println!("  {} {:?} persist, 3 CTAs", p.name, sh);
        check_case_with(&dev.with_sms(3), p, *sh, *ty, 500 + i as u64, i == 1, o);
        let what = format!("{} {:?} persist, {} CTAs", p.name, sh, dev.sms());
        assert_runs_identical(dev, p, sh, *ty, &o, 4, &what);
    }
}

/// The fused kernel on persistent CTAs that take their kv tiles from a global counter
/// (`PtxOptions::bwd_persist_dyn`, the kernel bench's `+P`) on the binding's defaults
/// (visit records, dV early and the late slot wait on the causal-type bindings, the early
/// dQ conversion on bands and tables) against the f64 reference on 3 CTAs that each take
/// many kv tiles, and bit-identical over 3 runs on the device's CTAs: causal GQA with odd
/// lengths (longest first), ALiBi + causal, a band (GQA, Lq != Lkv), a block table (f16),
/// causal D64 (q tiles of 128) and rows masked entirely (their dQ exactly 0); every
/// launch re-zeroes the counter with the semaphores, so the repeated runs also check
/// that no launch sees the last one's count.
fn gpu_backward_persist_dyn(dev: &CudaDevice) {
    use attnc_compiler::backend::llvm::Arch;
    if dev.arch() != Arch::Sm90 {
        println!("  no wgmma: the fused kernel does not exist here");
        return;
    }
    let cases = [
        (
            samples::causal(),
            shape(1, 4, 2, 333, 517, 128),
            InputType::Bf16,
        ),
        (
            samples::alibi_causal(4),
            shape(1, 4, 4, 300, 300, 128),
            InputType::Bf16,
        ),
        (
            samples::sliding(),
            shape(2, 4, 2, 333, 517, 128),
            InputType::Bf16,
        ),
        (
            samples::document_causal(),
            shape(1, 2, 1, 300, 300, 128),
            InputType::F16,
        ),
        (
            samples::causal(),
            shape(1, 2, 1, 700, 700, 64),
            InputType::Bf16,
        ),
        (late_start(), shape(1, 2, 1, 67, 140, 128), InputType::F16),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let def = binding_options(dev.arch(), p, sh, *ty);
        let o = bench_options(def, "default+P", &Plan::new(p)).unwrap();
        assert!(o.bwd_persist_dyn, "{}: +P applies", p.name);
        println!(
            "  {} {:?} persist-dyn (visit records {}), 3 CTAs",
            p.name, sh, o.bwd_visit_rec
        );
        check_case_with(&dev.with_sms(3), p, *sh, *ty, 700 + i as u64, i == 2, o);
        let what = format!("{} {:?} persist-dyn, {} CTAs", p.name, sh, dev.sms());
        let g = assert_runs_identical(dev, p, sh, *ty, &o, 3, &what);
        if i == cases.len() - 1 {
            // rows 0..5 (q < kv + 5 for every kv) see no kv: dQ exactly 0 there
            for h in 0..sh.hq {
                for q in 0..5 {
                    let row = &g.dq[(h * sh.lq + q) * sh.d..][..sh.d];
                    assert!(
                        row.iter().all(|b| from_bits(*b, *ty) == 0.0),
                        "persist-dyn: masked row {q} of head {h}: dq {row:?}"
                    );
                }
            }
        }
    }
}

/// A small case for compute-sanitizer (memcheck: the capture-gradient scatter stays in
/// its buffers): the bias-table sample at an odd GQA shape, and a learnable soft-cap
/// with a tensor read twice through `Bound::backward`.
fn gpu_backward_capture_sanitize(dev: &CudaDevice) {
    check_case(
        dev,
        &samples::bias_table(),
        shape(1, 4, 2, 67, 45, 64),
        InputType::Bf16,
        21,
        false,
    );
    let c = attnc::Compiled::from_source("capture_sources.attn", CAPTURE_SOURCES).unwrap();
    for name in ["read_twice", "learnable_softcap"] {
        let var = c.attention(name).unwrap();
        let sh = shape(1, 2, 1, 37, 70, 64);
        let caps = attnc::synth::captures(var.program(), &sh, 3);
        api_case(&var, sh, attnc::DType::BF16, &caps, 3, name);
    }
}

/// Device buffers of one caller-buffer backward (`Bound::backward_cuda_into_with`, the
/// Python package's path) for a binding of `shape` in `dt`: q, k, v from `synth::qkv(seed)`,
/// dO from `seed + 99` (as `api_case_with` makes them), O and LSE of the binding's forward
/// on them with `caps`, and the outputs, scratch rows and the fused dQ's workspace
/// poisoned as torch.empty may leave them (NaN, the semaphores nonzero).
struct CallerBwdBufs {
    ins: [cudarc::driver::CudaSlice<u16>; 5],
    lse: cudarc::driver::CudaSlice<f32>,
    outs: [cudarc::driver::CudaSlice<u16>; 3],
    rows: [cudarc::driver::CudaSlice<f32>; 2],
    work: Option<(
        cudarc::driver::CudaSlice<f32>,
        cudarc::driver::CudaSlice<u32>,
    )>,
}

impl CallerBwdBufs {
    #[allow(clippy::too_many_arguments)]
    fn new(
        dev: &CudaDevice,
        bound: &mut attnc::Bound,
        shape: Shape,
        dt: attnc::DType,
        seed: u64,
        caps: &attnc::Captures,
        bwd: &attnc::BackwardOptions,
    ) -> Self {
        use attnc::{DType, Tensor};
        let (q, k, v, d_o) = api_case_inputs(shape, dt, seed);
        let fwd = bound.forward(&q, &k, &v, caps).unwrap();
        let bits = |t: &Tensor| dev.upload_u16(&t.to_u16_bits().unwrap()).unwrap();
        let nan = match dt {
            DType::F16 => 0x7e00u16,
            _ => 0x7fc0,
        };
        let poison = |n: usize| dev.upload_u16(&vec![nan; n]).unwrap();
        let rows = shape.b * shape.hq * shape.lq;
        let work = bound.backward_cuda_workspace_with(bwd).unwrap();
        CallerBwdBufs {
            ins: [bits(&q), bits(&k), bits(&v), bits(&fwd.o), bits(&d_o)],
            lse: dev.upload(&fwd.lse.to_f32()).unwrap(),
            outs: [
                poison(shape.q_len()),
                poison(shape.k_len()),
                poison(shape.v_len()),
            ],
            rows: [0, 1].map(|_| dev.upload(&vec![f32::NAN; rows]).unwrap()),
            work: work.map(|(a, s)| {
                (
                    dev.upload(&vec![f32::NAN; a.max(1)]).unwrap(),
                    dev.upload(&vec![7u32; s.max(1)]).unwrap(),
                )
            }),
        }
    }

    /// The stream the buffers were made on.
    fn stream(&self) -> std::sync::Arc<cudarc::driver::CudaStream> {
        self.ins[0].stream().clone()
    }

    /// Their addresses, as the call takes them.
    fn pointers(&self) -> attnc::external::DeviceBackwardBuffers {
        use cudarc::driver::DevicePtr;
        let st = self.stream();
        let p16 = |x: &cudarc::driver::CudaSlice<u16>| x.device_ptr(&st).0;
        let p32 = |x: &cudarc::driver::CudaSlice<f32>| x.device_ptr(&st).0;
        let [q, k, v, o, d_o] = &self.ins;
        let [dq, dk, dv] = &self.outs;
        attnc::external::DeviceBackwardBuffers {
            q: p16(q),
            k: p16(k),
            v: p16(v),
            o: p16(o),
            lse: p32(&self.lse),
            d_o: p16(d_o),
            dlse: None,
            dq: p16(dq),
            dk: p16(dk),
            dv: p16(dv),
            delta: p32(&self.rows[0]),
            lse2: p32(&self.rows[1]),
            dq_work: self
                .work
                .as_ref()
                .map(|(a, m)| attnc::external::DeviceDqWorkspace {
                    accum: p32(a),
                    sem: m.device_ptr(&st).0,
                }),
        }
    }
}

/// The caller-buffer backward (`Bound::backward_cuda_into`, the Python package's path on
/// CUDA tensors) over buffers that hold garbage, as torch.empty gives them: the fused dQ's
/// workspace (`DqAccum` NaN, `DqSem` nonzero) and the outputs poisoned with NaN; a sliding
/// window at D128 with Lq > Lkv and GQA, so whole q blocks are visited by no kv block
/// (their dQ must come out 0, not the stale workspace) and rows are fully masked. The
/// gradients must be bit-identical to `Bound::backward`'s (zeroed buffers; checked
/// against the f64 oracle by `api_case`) and dQ of the fully masked rows exactly 0.
fn gpu_backward_caller_buffers(dev: &CudaDevice) {
    use attnc::external::DeviceGradWords;
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue};
    use std::collections::HashMap;
    let c = Compiled::from_file(&examples_dir().join("sliding_window.attn")).unwrap();
    let var = c.attention(c.names()[0]).unwrap();
    let window = 40;
    let caps = Captures::default().param("window", ParamValue::I32(window));
    let params = HashMap::from([("window".to_string(), ParamValue::I32(window))]);
    // the last: the non-deterministic kernels (`BackwardOptions { deterministic: false }`:
    // unordered dQ into a zeroed accumulator, which the call must zero: it is NaN here)
    for (dt, seed, det) in [
        (DType::BF16, 21u64, true),
        (DType::F16, 22, true),
        (DType::BF16, 23, false),
    ] {
        let bwd = attnc::BackwardOptions { deterministic: det };
        let shape = Shape {
            b: 2,
            hq: 8,
            hkv: 2,
            lq: 131,
            lkv: 77,
            d: 128,
            dv: 128,
        };
        let what = format!("caller buffers sliding_window {shape:?} {dt:?} {bwd:?}");
        // the host API's gradients, checked against the oracle
        let want = api_case_with(&var, shape, dt, &caps, seed, &what, &bwd);
        let mut bound = var
            .bind(BindOptions::new(Backend::Cuda, shape, dt))
            .unwrap();
        // the same inputs as api_case makes them; outputs and workspace poisoned
        let cb = CallerBwdBufs::new(dev, &mut bound, shape, dt, seed, &caps, &bwd);
        let (bufs, st) = (cb.pointers(), cb.stream());
        let work = cb.work.as_ref();
        // SAFETY: every buffer above is a live allocation of this device sized for the
        // bound shape (the workspace as backward_cuda_workspace says), on stream `st`,
        // which the downloads below synchronize; no capture gradients (no words).
        unsafe {
            bound
                .backward_cuda_into_with(
                    &bufs,
                    &HashMap::new(),
                    &params,
                    &DeviceGradWords::default(),
                    None,
                    &bwd,
                    st.cu_stream() as u64,
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        st.synchronize().unwrap();
        let [dq, dk, dv] = &cb.outs;
        for (nm, got, w) in [
            ("dq", dq, &want.dq),
            ("dk", dk, &want.dk),
            ("dv", dv, &want.dv),
        ] {
            let got = dev.download(got).unwrap();
            if !det && nm == "dq" {
                // unordered additions: the host call's dq (checked against the oracle)
                // within the tolerance, not bit for bit
                let ty = InputType::Bf16;
                compare("caller dq", &got, &w.to_f32(), ty);
                continue;
            }
            assert!(
                got == w.to_u16_bits().unwrap(),
                "{what}: {nm} differs from Bound::backward's (fused dQ: {})",
                work.is_some()
            );
        }
        // rows whose window lies past the keys (q - window >= lkv) are fully masked
        let got = dev.download(dq).unwrap();
        let d = shape.d;
        for bh in 0..shape.b * shape.hq {
            for row in (shape.lkv + window as usize)..shape.lq {
                let at = (bh * shape.lq + row) * d;
                assert!(
                    got[at..at + d].iter().all(|&x| x == 0),
                    "{what}: dq of fully masked row {row} (b*h {bh}) is not 0"
                );
            }
        }
        println!(
            "  {what}: bit-identical to Bound::backward, fused dQ {}",
            work.is_some()
        );
    }
}

/// Document ids for `b` rows of `n` positions: sorted (documents of random lengths) or
/// not (sparse matches), `docs` distinct values; a fixed LCG per seed.
fn doc_ids_for(seed: u64, b: usize, n: usize, docs: u64, sorted: bool) -> Vec<i32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::new();
    for _ in 0..b {
        let mut ids: Vec<i32> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % docs) as i32
            })
            .collect();
        if sorted {
            ids.sort();
        }
        out.extend(ids);
    }
    out
}

/// The caller-buffer backward of masks over captured tensors in device memory (the
/// Python package's autograd without a block mask): its block ranges, made on the device
/// (the block-table kernel at the backward's tiles and the backward-ranges kernel), equal
/// word for word the host functions' from the same data (`kv_ranges` / `q_ranges` of the
/// exact block maps at those tiles, `brute_force_maps_like_tables`), and its gradients are
/// bit-identical to `Bound::backward`'s
/// on host tensors (checked against the f64 oracle by `api_case_with`). Cases: document +
/// causal with sorted ids (documents of random lengths: full, partial and empty blocks)
/// and unsorted ids (sparse matches: rows of several runs), Lq != Lkv (Lq < Lkv: the ids
/// are indexed by q too), odd lengths, GQA; a mask over a per-head tensor with GQA (maps per query head: the dK/dV
/// ranges are the group's union, full only where full for every head); D64 and D128,
/// bf16 and f16. A second call on other ids reuses the stream's buffers and rebuilds the
/// ranges from the new data.
fn gpu_backward_caller_device_tables(dev: &CudaDevice) {
    use attnc::external::{DeviceGradWords, DeviceTensor};
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, Tensor};
    use cudarc::driver::DevicePtr;
    use std::collections::HashMap;
    let doc_file = Compiled::from_file(&examples_dir().join("document_causal.attn")).unwrap();
    let per_head = Compiled::from_source(
        "per_head.attn",
        "tensor t: i32[H, KV];\nmask m(b, h, q, kv) { q >= kv && t[h, q] == t[h, kv] }\nattention per_head { mask = m; }",
    )
    .unwrap();
    // (tensor name: `doc` document + causal, `t` the per-head mask; shape, dtype, sorted
    // ids, distinct ids)
    let cases = [
        ("doc", shape(2, 8, 2, 333, 333, 128), DType::BF16, true, 5),
        ("doc", shape(2, 4, 4, 200, 517, 64), DType::F16, true, 3),
        ("doc", shape(1, 4, 2, 300, 517, 128), DType::BF16, false, 3),
        ("t", shape(1, 8, 2, 300, 300, 128), DType::BF16, true, 4),
        ("t", shape(2, 4, 1, 129, 129, 64), DType::F16, true, 2),
    ];
    let mut full_seen = 0;
    for (ci, (tname, shape, dt, sorted, docs)) in cases.into_iter().enumerate() {
        let var = match tname {
            "doc" => doc_file.attention("document_causal").unwrap(),
            _ => per_head.attention("per_head").unwrap(),
        };
        let rows = if tname == "doc" { shape.b } else { shape.hq };
        let ty = match dt {
            DType::F16 => InputType::F16,
            _ => InputType::Bf16,
        };
        let mut bound = var
            .bind(BindOptions::new(Backend::Cuda, shape, dt))
            .unwrap();
        for round in 0..2u64 {
            let seed = 700 + 10 * ci as u64 + round;
            let ids = doc_ids_for(seed, rows, shape.lkv, docs, sorted);
            let host_t = Tensor::from_i32(vec![rows, shape.lkv], &ids);
            let caps = Captures::default().tensor(tname, host_t);
            let what = format!(
                "device tables {} {shape:?} {dt:?} sorted {sorted} round {round}",
                var.program().name
            );
            let bwd = attnc::BackwardOptions {
                deterministic: true,
            };
            // (the host API on the same block ranges: without a block mask the caller
            // path runs no document tiles, `Bound::backward` and `forward` would on sorted
            // ids)
            let mut host = var
                .bind(BindOptions {
                    doc_tiles: false,
                    ..BindOptions::new(Backend::Cuda, shape, dt)
                })
                .unwrap();
            let want = api_case_bound(&mut host, &var, &caps, seed, &what, &bwd);
            // (O and LSE from that binding's forward, which runs no document tiles either)
            let cb = CallerBwdBufs::new(dev, &mut host, shape, dt, seed, &caps, &bwd);
            let (bufs, st) = (cb.pointers(), cb.stream());
            let idd = dev.upload(&ids).unwrap();
            let tensors = HashMap::from([(
                tname.to_string(),
                DeviceTensor {
                    ptr: idd.device_ptr(&st).0,
                    dims: vec![rows, shape.lkv],
                    dtype: DType::I32,
                },
            )]);
            // SAFETY: every buffer above is a live allocation of this device sized for the
            // bound shape (the workspace as backward_cuda_workspace says, the ids
            // rows x Lkv i32), on stream `st`, which the downloads below synchronize.
            unsafe {
                bound
                    .backward_cuda_into_with(
                        &bufs,
                        &tensors,
                        &HashMap::new(),
                        &DeviceGradWords::default(),
                        None,
                        &bwd,
                        st.cu_stream() as u64,
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            st.synchronize().unwrap();
            let seen = bound
                .caller_backward_ranges(st.cu_stream() as u64)
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: no ranges"));
            assert!(seen.on_device, "{what}: ranges not made on the device");
            let plan = Plan::new(var.program());
            let bind = bound.bindings(&caps).unwrap();
            let (qb, kb) = (seen.tiles.0 as usize, seen.tiles.1 as usize);
            // (exact: every point evaluated, as the device's table; the host's own maps
            // classify from summaries of the ids, which may leave a full block partial)
            let maps = attnc_compiler::analysis::classify::brute_force_maps_like_tables(
                var.program(),
                plan.mask(),
                &shape,
                qb,
                kb,
                &bind,
            )
            .unwrap();
            let (kv_want, _) = attnc::cuda::backward::kv_ranges(&maps, &shape);
            let (q_want, _) = attnc::cuda::backward::q_ranges(&maps);
            let nonempty = |v: Vec<i32>| if v.is_empty() { vec![0] } else { v };
            assert_eq!(seen.q, nonempty(q_want), "{what}: dQ ranges ({qb}x{kb})");
            assert_eq!(
                seen.kv,
                nonempty(kv_want.clone()),
                "{what}: dK/dV ranges ({qb}x{kb})"
            );
            full_seen += kv_want.chunks(4).filter(|r| r[3] > r[2]).count();
            let [dq, dk, dv] = &cb.outs;
            for (nm, got, w) in [
                ("dq", dq, &want.dq),
                ("dk", dk, &want.dk),
                ("dv", dv, &want.dv),
            ] {
                let got = dev.download(got).unwrap();
                assert!(
                    got == w.to_u16_bits().unwrap(),
                    "{what}: {nm} differs from Bound::backward's ({})",
                    ty.name()
                );
            }
            println!(
                "  {what}: ranges as the exact maps give them ({qb}x{kb}), gradients bit-identical"
            );
        }
    }
    assert!(full_seen > 0, "no case had a full block range");
}

/// `Bound::backward` of document masks on host tensors (the Rust API and the CLI) runs the
/// kernels on document kv tiles (`PtxOptions::bwd_doc_tiles`, counted by
/// `Bound::doc_tile_backward_calls`) where the ids form contiguous documents and the
/// binding's kernels have them (sm_90, D64 and D128): document and causal, with a sliding
/// window, with ALiBi and a window; GQA, odd lengths, many short documents (one-row ones among
/// them), bf16 and f16, against the reference backend ([`api_case_bound`]); each twice,
/// bit-identical, and within the bf16/f16 tolerance of the same binding's block ranges
/// (`BindOptions::doc_tiles` false). Ids that come back after another document, `Lq !=
/// Lkv`, checked mode and `doc_tiles: false` run the binding's own kernels (the count
/// unchanged), also against the reference.
fn gpu_backward_api_document_tiles(dev: &CudaDevice) {
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Tensor};
    let sm90 = dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90;
    let file = |f: &str| Compiled::from_file(&examples_dir().join(f)).unwrap();
    let (dc, ds, da) = (
        file("document_causal.attn"),
        file("document_sliding_causal.attn"),
        file("document_alibi.attn"),
    );
    let det = attnc::BackwardOptions::default();
    let causal = dc.attention("document_causal").unwrap();
    let sliding = ds.attention("document_sliding_causal").unwrap();
    let alibi = da.attention("document_alibi").unwrap();
    // how a case runs: on the document kv tiles, or on the binding's own kernels because
    // its ids come back, because Lq != Lkv (the shape says it), in checked mode, or with
    // `doc_tiles: false`
    #[derive(Clone, Copy, PartialEq)]
    enum How {
        Tiles,
        Unsorted,
        Cross,
        Checked,
        Off,
    }
    use How::*;
    // (attention, shape, dtype, distinct ids, how)
    let cases = [
        (
            &causal,
            shape(2, 8, 2, 333, 333, 128),
            DType::BF16,
            5,
            Tiles,
        ),
        (&causal, shape(1, 4, 4, 517, 517, 64), DType::F16, 3, Tiles),
        (
            &causal,
            shape(2, 4, 1, 700, 700, 128),
            DType::BF16,
            90,
            Tiles,
        ),
        (
            &sliding,
            shape(1, 8, 2, 611, 611, 128),
            DType::BF16,
            4,
            Tiles,
        ),
        (&alibi, shape(2, 16, 4, 259, 259, 64), DType::BF16, 3, Tiles),
        (
            &causal,
            shape(1, 4, 2, 300, 300, 128),
            DType::BF16,
            3,
            Unsorted,
        ),
        (
            &causal,
            shape(1, 4, 2, 200, 333, 128),
            DType::BF16,
            3,
            Cross,
        ),
        (
            &causal,
            shape(1, 4, 2, 300, 300, 64),
            DType::BF16,
            3,
            Checked,
        ),
        (&causal, shape(1, 4, 2, 300, 300, 128), DType::BF16, 3, Off),
    ];
    let mut tiled = 0;
    for (ci, (var, shape, dt, docs, how)) in cases.into_iter().enumerate() {
        let (sorted, checked, doc_tiles) = (how != Unsorted, how == Checked, how != Off);
        let runs = how == Tiles;
        let seed = 900 + ci as u64;
        let ids = doc_ids_for(seed, shape.b, shape.lkv, docs, sorted);
        let mut caps =
            Captures::default().tensor("doc", Tensor::from_i32(vec![shape.b, shape.lkv], &ids));
        if var.program().param("window").is_some() {
            caps = caps.param("window", ParamValue::I32(150));
        }
        let opts = BindOptions {
            checked,
            doc_tiles,
            ..BindOptions::new(Backend::Cuda, shape, dt)
        };
        let mut bound = var.bind(opts.clone()).unwrap();
        let what = format!(
            "document tiles {} {shape:?} {dt:?} ids {docs} sorted {sorted} checked {checked} doc_tiles {doc_tiles}",
            var.program().name
        );
        let before = bound.doc_tile_backward_calls();
        let got = api_case_bound(&mut bound, var, &caps, seed, &what, &det);
        let ran = bound.doc_tile_backward_calls() - before;
        let want_runs = runs && sm90;
        assert_eq!(
            ran,
            u64::from(want_runs),
            "{what}: calls on document kv tiles"
        );
        tiled += ran;
        // twice: bit-identical
        let again = api_case_bound(&mut bound, var, &caps, seed, &what, &det);
        for (nm, a, b) in [
            ("dq", &got.dq, &again.dq),
            ("dk", &got.dk, &again.dk),
            ("dv", &got.dv, &again.dv),
        ] {
            assert!(
                a.to_u16_bits() == b.to_u16_bits(),
                "{what}: {nm} differs run to run"
            );
        }
        if want_runs {
            // the same binding's block ranges: the same gradients up to the 16-bit
            // roundings of dQ's additions in another order
            let mut ranges = var
                .bind(BindOptions {
                    doc_tiles: false,
                    ..opts
                })
                .unwrap();
            let base = api_case_bound(&mut ranges, var, &caps, seed, &what, &det);
            assert_eq!(ranges.doc_tile_backward_calls(), 0, "{what}: option off");
            let ty = match dt {
                DType::F16 => InputType::F16,
                _ => InputType::Bf16,
            };
            for (nm, a, b) in [
                ("dq", &got.dq, &base.dq),
                ("dk", &got.dk, &base.dk),
                ("dv", &got.dv, &base.dv),
            ] {
                compare_f32(
                    &format!("{nm} vs block ranges"),
                    &a.to_f32(),
                    &b.to_f32(),
                    ty,
                );
            }
        }
        println!("  {what}: matches the reference, document kv tiles {ran}");
    }
    if sm90 {
        assert_eq!(tiled, 5, "calls on document kv tiles");
    }
}

/// `Bound::backward_device_time_ms` (what `attnc bench --grad` reports on CUDA): a
/// positive time for a dense D128 and a document + causal D64 binding (the latter on the
/// document kv tiles where the binding has them: sm_90), the count of document calls
/// moving with it, and the gradients of a `backward` after the timings still those of
/// the reference (the timed launches leave nothing behind).
fn gpu_backward_device_time(dev: &CudaDevice) {
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, Tensor};
    let sm90 = dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90;
    let dense = Compiled::from_file(&examples_dir().join("dense.attn")).unwrap();
    let docs = Compiled::from_file(&examples_dir().join("document_causal.attn")).unwrap();
    let det = attnc::BackwardOptions::default();
    for (var, sh, doc) in [
        (
            dense.attention(dense.names()[0]).unwrap(),
            shape(2, 8, 2, 1000, 1000, 128),
            false,
        ),
        (
            docs.attention("document_causal").unwrap(),
            shape(2, 4, 2, 777, 777, 64),
            true,
        ),
    ] {
        let mut caps = Captures::default();
        if doc {
            let ids = doc_ids_for(5, sh.b, sh.lkv, 6, true);
            caps = caps.tensor("doc", Tensor::from_i32(vec![sh.b, sh.lkv], &ids));
        }
        let mut bound = var
            .bind(BindOptions::new(Backend::Cuda, sh, DType::BF16))
            .unwrap();
        let (q, k, v, d_o) = api_case_inputs(sh, DType::BF16, 31);
        let fwd = bound.forward(&q, &k, &v, &caps).unwrap();
        let before = bound.doc_tile_backward_calls();
        let ms = bound
            .backward_device_time_ms(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, &caps, 5, &det)
            .unwrap()
            .expect("a device time on CUDA");
        let what = format!("device time {} {sh:?}", var.program().name);
        assert!(ms > 0.0 && ms.is_finite(), "{what}: {ms} ms");
        assert_eq!(
            bound.doc_tile_backward_calls() - before,
            u64::from(doc && sm90),
            "{what}: document kv tiles"
        );
        println!("  {what}: {ms:.3} ms");
        api_case_bound(&mut bound, &var, &caps, 31, &what, &det);
    }
}

/// The non-deterministic backward (`BackwardOptions { deterministic: false }`: the
/// runtime's `backward::nondeterministic` on each binding's options — on sm_90 the fused
/// dQ's parts added unordered into a zeroed accumulator, `bwd_dq_free`, and at dense D128
/// q tiles of 80, `backward_q80`; bands and block tables keep their deterministic kernels,
/// faster there) against the f64 reference with the deterministic tolerances: dense and
/// causal at D128 and D64, odd lengths, Lq != Lkv, GQA, f16 and bf16, a band (sliding
/// window), a block table (document + causal) and capture gradients (bias table).
/// Three cases twice: dK, dV and capture gradients bit-identical (only dQ's additions
/// are unordered). Then `Bound::backward_with` on the CUDA backend against the reference
/// backend (dense D128 f16, causal D64 GQA), and deterministic=true through the API
/// bit-identical to `Bound::backward` and to itself.
fn gpu_backward_nondeterministic(dev: &CudaDevice) {
    use attnc::backward::nondeterministic;
    use attnc_compiler::backend::llvm::Arch;
    let sm90 = dev.arch() == Arch::Sm90;
    let cases = [
        (
            samples::dense(),
            shape(1, 4, 2, 333, 333, 128),
            InputType::Bf16,
        ),
        (
            samples::dense(),
            shape(2, 2, 2, 200, 131, 128),
            InputType::F16,
        ),
        (
            samples::causal(),
            shape(2, 4, 2, 257, 131, 128),
            InputType::Bf16,
        ),
        (
            samples::causal(),
            shape(1, 4, 1, 193, 193, 64),
            InputType::F16,
        ),
        (
            samples::dense(),
            shape(1, 4, 2, 150, 211, 64),
            InputType::Bf16,
        ),
        (
            samples::sliding(),
            shape(1, 4, 2, 1000, 1000, 128),
            InputType::Bf16,
        ),
        (
            samples::document_causal(),
            shape(2, 2, 1, 300, 300, 128),
            InputType::F16,
        ),
        (
            samples::bias_table(),
            shape(1, 4, 2, 190, 77, 128),
            InputType::Bf16,
        ),
    ];
    for (i, (p, sh, ty)) in cases.iter().enumerate() {
        let plan = Plan::new(p);
        let det = test_options(dev.arch(), p, sh, *ty);
        let o = nondeterministic(det, &plan);
        let dense128 = p.mask.is_none() && p.score.is_none() && sh.d == 128;
        let early = attnc_compiler::backend::llvm::backward::convert_early(&det);
        // (session 34: D128's causal-type bindings keep their deterministic kernels)
        let kept = det.d == 128 && det.bwd_lpt && det.bwd_two_writers;
        if sm90
            && det.bwd_dq == attnc_compiler::backend::llvm::BwdDq::OrderedBulk
            && !early
            && !kept
        {
            assert!(o.bwd_dq_free, "{} {sh:?}: unordered dQ", p.name);
            assert_eq!(
                o.q_block == 80,
                dense128,
                "{} {sh:?}: q tiles of 80",
                p.name
            );
        } else {
            assert_eq!(o, det, "{} {sh:?}: no non-deterministic variant", p.name);
        }
        println!(
            "  {} nondeterministic: free {} q_block {}",
            p.name, o.bwd_dq_free, o.q_block
        );
        check_case_with(dev, p, *sh, *ty, 1700 + i as u64, i % 3 == 1, o);
        // twice (q tiles of 80, a block table, capture gradients): everything but dQ
        // bit-identical
        if ![0, 6, 7].contains(&i) {
            continue;
        }
        let ks = emit_backward_kernels(&plan, &o).unwrap();
        let bw = CudaBackward::load(dev, &ks).unwrap();
        let x = inputs(p, sh, *ty, 1700 + i as u64, false);
        let b = blocks_of(&bw, p, sh, &x);
        let (g1, g2) = (
            run(dev, &bw, sh, &x, b.as_blocks()),
            run(dev, &bw, sh, &x, b.as_blocks()),
        );
        assert!(
            g1.dk == g2.dk && g1.dv == g2.dv,
            "{} {sh:?}: dK/dV differ between runs",
            p.name
        );
        assert!(
            g1.tensors == g2.tensors,
            "{} {sh:?}: capture gradients differ",
            p.name
        );
    }
    // through the API: `Bound::backward_with`
    use attnc::{Backend, BackwardOptions, BindOptions, Compiled, DType, synth};
    let nd = BackwardOptions::nondeterministic();
    for (file, shape, dt) in [
        ("dense.attn", shape(1, 4, 4, 200, 200, 128), DType::F16),
        ("causal.attn", shape(2, 4, 2, 131, 257, 64), DType::BF16),
    ] {
        let c = Compiled::from_file(&examples_dir().join(file)).unwrap();
        let var = c.attention(c.names()[0]).unwrap();
        let what = format!("api {file} {shape:?} nondeterministic");
        api_case_with(&var, shape, dt, &Default::default(), 77, &what, &nd);
        // deterministic through the options: bit-identical to `backward`, run to run
        let (q, k, v) = synth::qkv(&shape, dt, 78);
        let (d_o, _, _) = synth::qkv(
            &Shape {
                d: shape.dv,
                lkv: shape.lq,
                hkv: shape.hq,
                ..shape
            },
            dt,
            79,
        );
        let mut b = var
            .bind(BindOptions::new(Backend::Cuda, shape, dt))
            .unwrap();
        let caps = Default::default();
        let f = b.forward(&q, &k, &v, &caps).unwrap();
        let plain = b
            .backward(&q, &k, &v, &f.o, &f.lse, &d_o, None, &caps)
            .unwrap();
        for _ in 0..2 {
            let g = b
                .backward_with(
                    &q,
                    &k,
                    &v,
                    &f.o,
                    &f.lse,
                    &d_o,
                    None,
                    &caps,
                    &BackwardOptions::default(),
                )
                .unwrap();
            for (a, r) in [(&g.dq, &plain.dq), (&g.dk, &plain.dk), (&g.dv, &plain.dv)] {
                assert!(
                    a.to_u16_bits() == r.to_u16_bits(),
                    "{what}: deterministic differs"
                );
            }
        }
        println!("  {what}: deterministic=true bit-identical to backward, twice");
    }
}

type TestFn = fn(&CudaDevice);

const TESTS: &[(&str, TestFn)] = &[
    (
        "gpu_backward_samples_match_reference",
        gpu_backward_samples_match_reference,
    ),
    (
        "gpu_backward_fully_masked_rows",
        gpu_backward_fully_masked_rows,
    ),
    ("gpu_backward_head_dim_256", gpu_backward_head_dim_256),
    ("gpu_backward_d256_sanitize", gpu_backward_d256_sanitize),
    (
        "gpu_backward_head_dim_256_mma_sync",
        gpu_backward_head_dim_256_mma_sync,
    ),
    ("gpu_backward_dlse", gpu_backward_dlse),
    ("gpu_backward_convert_timeout", gpu_backward_convert_timeout),
    (
        "gpu_backward_is_deterministic",
        gpu_backward_is_deterministic,
    ),
    (
        "gpu_backward_api_every_example",
        gpu_backward_api_every_example,
    ),
    (
        "gpu_backward_api_document_tiles",
        gpu_backward_api_document_tiles,
    ),
    ("gpu_backward_device_time", gpu_backward_device_time),
    ("gpu_backward_capture_grads", gpu_backward_capture_grads),
    ("gpu_backward_uniform_reads", gpu_backward_uniform_reads),
    (
        "gpu_backward_padded_head_dims",
        gpu_backward_padded_head_dims,
    ),
    ("gpu_backward_dq_schemes", gpu_backward_dq_schemes),
    (
        "gpu_backward_capture_sanitize",
        gpu_backward_capture_sanitize,
    ),
    ("gpu_backward_fused_sanitize", gpu_backward_fused_sanitize),
    ("gpu_backward_wscan", gpu_backward_wscan),
    ("gpu_backward_persist", gpu_backward_persist),
    ("gpu_backward_persist_dyn", gpu_backward_persist_dyn),
    ("gpu_backward_element_orders", gpu_backward_element_orders),
    ("gpu_backward_q80", gpu_backward_q80),
    ("gpu_backward_caller_buffers", gpu_backward_caller_buffers),
    (
        "gpu_backward_caller_device_tables",
        gpu_backward_caller_device_tables,
    ),
    (
        "gpu_backward_nondeterministic",
        gpu_backward_nondeterministic,
    ),
];

/// Ignored trials, run with `--ignored` (`gpu_backward --ignored bench`).
const BENCHES: &[(&str, TestFn)] = &[
    ("gpu_backward_bench", gpu_backward_bench),
    ("gpu_backward_runtime_bench", gpu_backward_runtime_bench),
    ("gpu_backward_paths_bench", gpu_backward_paths_bench),
];

fn main() {
    gpu_util::run_gpu_tests_and_benches(TESTS, BENCHES)
}
