//! GPU differential tests: every sample kernel against the f64 oracle
//! (`reference::attention`) on random shapes (odd lengths, Lq != Lkv, GQA, D 64/128,
//! bf16 and f16), fully masked rows, and checked mode. Every case runs on each matrix
//! path the device has (`mma.sync`; on sm_90 also `wgmma` where the case's tile and head
//! dim fit it), each with both K pipelines; `ATTNC_GPU_MMA=sync|wgmma` keeps one path.
//!
//! This is a `harness = false` test: `main` runs each test by name and prints
//! `test NAME ... ok | FAILED | SKIPPED (no CUDA device)` and a summary line
//! `gpu tests: N passed, M failed, K skipped`; without a CUDA device every test is
//! reported as skipped by name. The first non-flag argument filters test names by
//! substring (`gpu gpu_all_partial_maps`); libtest flags such as `--test-threads=1` and
//! `--nocapture` are accepted and ignored (tests always run sequentially, uncaptured).
//!
//! Tolerance (bf16/f16 inputs, f32 accumulation, P rounded to the input type for P·V):
//! |O - O_ref| <= 0.03 + 0.02 |O_ref| for bf16 (0.01 + 0.01 |O_ref| for f16), and
//! |LSE - LSE_ref| <= 0.01 (|LSE| <= 0.5% relative beyond 2); -inf LSE must match exactly;
//! NaN never passes. The oracle sees the same rounded inputs, so the error comes only from
//! the P rounding (relative 2^-8 for bf16, 2^-11 for f16) and the approximate ex2/lg2/tanh.

mod gpu_util;

use attnc::cuda::{CudaDevice, CudaError, CudaKernel};
use attnc_compiler::analysis::blockmap::{BlockMap, BlockMaps};
use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions, emit, samples};
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::Program;
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use gpu_util::*;

struct Case {
    shape: Shape,
    ty: InputType,
    qb: u32,
    kvb: u32,
    /// m16 tiles per warp
    mt: u32,
}

fn cases() -> Vec<Case> {
    let s = |b, hq, hkv, lq, lkv, d| Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    };
    vec![
        Case {
            shape: s(2, 4, 2, 77, 131, 128),
            ty: InputType::Bf16,
            qb: 128,
            kvb: 64,
            mt: 1,
        },
        Case {
            shape: s(1, 4, 1, 200, 63, 64),
            ty: InputType::F16,
            qb: 64,
            kvb: 64,
            mt: 1,
        },
        Case {
            shape: s(2, 2, 2, 129, 129, 64),
            ty: InputType::Bf16,
            qb: 128,
            kvb: 128,
            mt: 1,
        },
        Case {
            shape: s(1, 3, 3, 300, 257, 128),
            ty: InputType::F16,
            qb: 64,
            kvb: 32,
            mt: 1,
        },
        Case {
            shape: s(1, 2, 1, 1, 70, 128),
            ty: InputType::Bf16,
            qb: 64,
            kvb: 64,
            mt: 1,
        },
        // D != Dv (a wgmma default: the V slabs differ from the Q/K slabs)
        Case {
            shape: Shape {
                dv: 128,
                ..s(1, 2, 1, 100, 150, 64)
            },
            ty: InputType::Bf16,
            qb: 128,
            kvb: 64,
            mt: 1,
        },
        // two m-tiles per warp (Q re-read from shared memory at D128)
        Case {
            shape: s(2, 4, 2, 77, 131, 128),
            ty: InputType::Bf16,
            qb: 128,
            kvb: 64,
            mt: 2,
        },
        Case {
            shape: s(1, 3, 3, 300, 257, 64),
            ty: InputType::F16,
            qb: 128,
            kvb: 128,
            mt: 2,
        },
        Case {
            shape: s(1, 2, 1, 200, 63, 128),
            ty: InputType::F16,
            qb: 64,
            kvb: 32,
            mt: 2,
        },
    ]
}

/// Runs `p` on the GPU and the oracle; returns the number of compared rows.
fn check_one(
    dev: &attnc::cuda::CudaDevice,
    p: &Program,
    c: &Case,
    bind: &Bindings,
    maps: Option<BlockMaps>,
    seed: u64,
) -> Result<(), String> {
    check_scaled(dev, p, c, bind, maps, seed, c.shape.default_scale())
}

/// `check_one` with an explicit softmax scale.
fn check_scaled(
    dev: &attnc::cuda::CudaDevice,
    p: &Program,
    c: &Case,
    bind: &Bindings,
    maps: Option<BlockMaps>,
    seed: u64,
    scale: f32,
) -> Result<(), String> {
    for opts in paths(dev, c) {
        // both K pipelines (prefetch a whole iteration ahead, or after the softmax)
        // (with `overlap` K is always double-buffered: one run)
        let kpfs = if opts.overlap {
            vec![true]
        } else {
            vec![opts.k_prefetch, !opts.k_prefetch]
        };
        for kpf in kpfs {
            let opts = PtxOptions {
                k_prefetch: kpf,
                ..opts
            };
            check_opts(dev, p, c, bind, maps.clone(), seed, scale, &opts)?;
        }
    }
    Ok(())
}

/// The kernel options of case `c` on every matrix path this device runs: mma.sync with
/// the case's m-tiles, and on sm_90 wgmma when the case's tile (q 64/128, kv 64/128) and
/// head dims (multiples of 64) fit it. `ATTNC_GPU_MMA=sync|wgmma` keeps one path.
fn paths(dev: &CudaDevice, c: &Case) -> Vec<PtxOptions> {
    let sh = &c.shape;
    let base = PtxOptions::sync(dev.arch(), sh.d as u32, sh.dv as u32, c.ty);
    let mut sync = base.with_m_tiles(c.mt);
    sync.q_block = c.qb;
    sync.kv_block = c.kvb;
    let only = std::env::var("ATTNC_GPU_MMA").unwrap_or_default();
    let mut v = Vec::new();
    if only != "wgmma" {
        v.push(sync);
    }
    let fits = dev.arch() == Arch::Sm90
        && matches!(c.qb, 64 | 128)
        && matches!(c.kvb, 64 | 128)
        && sh.d.is_multiple_of(64)
        && sh.dv.is_multiple_of(64);
    if fits && only != "sync" {
        let mut w = base.wgmma();
        w.q_block = c.qb;
        w.kv_block = c.kvb;
        v.push(w);
        v.push(PtxOptions { overlap: true, ..w });
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn check_opts(
    dev: &attnc::cuda::CudaDevice,
    p: &Program,
    c: &Case,
    bind: &Bindings,
    maps: Option<BlockMaps>,
    seed: u64,
    scale: f32,
    opts: &PtxOptions,
) -> Result<(), String> {
    let sh = &c.shape;
    let k = emit(p, opts).map_err(|e| e.to_string())?;
    let kern = CudaKernel::load(dev, &k).map_err(|e| e.to_string())?;
    let mut r = rng(seed);
    let (qb, qf) = random_input(&mut r, sh.q_len(), 2.0, c.ty);
    let (kb, kf) = random_input(&mut r, sh.k_len(), 2.0, c.ty);
    let (vb, vf) = random_input(&mut r, sh.v_len(), 1.0, c.ty);
    let maps = maps.unwrap_or_else(|| interp_maps(p, sh, bind, c.qb as usize, c.kvb as usize));
    let (o, lse) = kern
        .forward_host(dev, sh, &qb, &kb, &vb, scale, bind, &maps)
        .map_err(|e| {
            format!(
                "{:?} overlap {} kpf {}: {e}",
                opts.mma, opts.overlap, opts.k_prefetch
            )
        })?;
    let want =
        reference::attention(p, sh, &qf, &kf, &vf, scale, bind).map_err(|e| e.to_string())?;
    let (abs, rel) = if c.ty == InputType::Bf16 {
        (0.03, 0.02)
    } else {
        (0.01, 0.01)
    };
    let mut worst = 0f32;
    for (i, (got, w)) in o.iter().zip(&want.o).enumerate() {
        let g = from_bits(*got, c.ty);
        let err = (g - w).abs();
        if g.is_nan() || err > abs + rel * w.abs() {
            return Err(format!(
                "{:?} overlap {} kpf {}: O[{i}] = {g}, oracle {w} (row {}, col {})",
                opts.mma,
                opts.overlap,
                opts.k_prefetch,
                i / sh.dv,
                i % sh.dv
            ));
        }
        worst = worst.max(err);
    }
    for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 0.01 + 0.005 * w.abs()
        };
        if !ok || g.is_nan() {
            return Err(format!(
                "{:?} overlap {} kpf {}: LSE[{i}] = {g}, oracle {w}",
                opts.mma, opts.overlap, opts.k_prefetch
            ));
        }
    }
    println!(
        "  ok {} {:?} {} qb{} kvb{} mt{} kpf {} {:?} overlap {}: max |dO| {worst:.2e}",
        p.name,
        sh,
        c.ty.name(),
        c.qb,
        c.kvb,
        c.mt,
        opts.k_prefetch,
        opts.mma,
        opts.overlap
    );
    Ok(())
}

fn gpu_samples_match_oracle(dev: &CudaDevice) {
    let mut failures = Vec::new();
    for (ci, c) in cases().iter().enumerate() {
        for p in samples::all(c.shape.hq as i32) {
            // the document mask reads doc[b, q]: needs q < Lkv
            if p.name == "document_causal" && c.shape.lq > c.shape.lkv {
                continue;
            }
            let mut r = rng(ci as u64 * 100 + 7);
            let bind = bindings(&p, &c.shape, &mut r, 37, 4);
            if let Err(e) = check_one(dev, &p, c, &bind, None, ci as u64) {
                failures.push(format!(
                    "{} case {ci} ({:?} {}): {e}",
                    p.name,
                    c.shape,
                    c.ty.name()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn gpu_all_partial_maps_match_oracle(dev: &CudaDevice) {
    // every block partial: the mask path everywhere gives the same result
    let c = Case {
        shape: Shape {
            b: 1,
            hq: 2,
            hkv: 1,
            lq: 150,
            lkv: 190,
            d: 64,
            dv: 64,
        },
        ty: InputType::Bf16,
        qb: 64,
        kvb: 64,
        mt: 1,
    };
    for p in [samples::dense(), samples::causal(), samples::sliding()] {
        let mut r = rng(3);
        let bind = bindings(&p, &c.shape, &mut r, 50, 4);
        let maps = BlockMaps::single(BlockMap::all_partial(c.shape.lq, c.shape.lkv, 64, 64));
        check_one(dev, &p, &c, &bind, Some(maps), 11).unwrap();
    }
}

fn gpu_fully_masked_rows_give_zero_and_neg_inf(dev: &CudaDevice) {
    // sliding window 0: q >= kv && q - kv < 0 holds nowhere
    let p = samples::sliding();
    let c = Case {
        shape: Shape {
            b: 1,
            hq: 2,
            hkv: 2,
            lq: 70,
            lkv: 90,
            d: 128,
            dv: 128,
        },
        ty: InputType::Bf16,
        qb: 128,
        kvb: 64,
        mt: 1,
    };
    let mut r = rng(5);
    let bind = bindings(&p, &c.shape, &mut r, 0, 4);
    // all-partial maps so the kernel really evaluates the mask everywhere
    let maps = BlockMaps::single(BlockMap::all_partial(70, 90, 128, 64));
    check_one(dev, &p, &c, &bind, Some(maps), 1).unwrap();
    // and empty maps (no block visited)
    let empty = BlockMaps::single(BlockMap::from_fn(70, 90, 128, 64, |_, _| {
        attnc_compiler::analysis::blockmap::BlockKind::Empty
    }));
    check_one(dev, &p, &c, &bind, Some(empty), 2).unwrap();
}

fn gpu_checked_mode_reports_out_of_range_reads(dev: &CudaDevice) {
    // doc is [B, KV] but read at doc[b, q] with Lq > Lkv: out of range
    let p = samples::document_causal();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 100,
        lkv: 60,
        d: 64,
        dv: 64,
    };
    let mut r = rng(9);
    let bind = bindings(&p, &shape, &mut r, 0, 3);
    let maps = BlockMaps::single(BlockMap::all_partial(100, 60, 64, 64));
    let (qb, _) = random_input(&mut r, shape.q_len(), 1.0, InputType::Bf16);
    let (kb, _) = random_input(&mut r, shape.k_len(), 1.0, InputType::Bf16);
    let (vb, _) = random_input(&mut r, shape.v_len(), 1.0, InputType::Bf16);
    let case = Case {
        shape,
        ty: InputType::Bf16,
        qb: 64,
        kvb: 64,
        mt: 1,
    };
    for (checked, base) in paths(dev, &case)
        .into_iter()
        .flat_map(|o| [(false, o), (true, o)])
    {
        let mut opts = base;
        opts.checked = checked;
        let k = CudaKernel::load(dev, &emit(&p, &opts).unwrap()).unwrap();
        let res = k.forward_host(dev, &shape, &qb, &kb, &vb, 0.125, &bind, &maps);
        if checked {
            match res {
                Err(CudaError::OutOfBounds {
                    in_score: false,
                    tensor: 0,
                    index,
                    ..
                }) => {
                    assert_eq!(index.len(), 2);
                    assert!(index[1] >= 60, "reported index {index:?} is in range");
                }
                other => panic!("checked mode: expected OutOfBounds, got {other:?}"),
            }
        } else {
            let (o, lse) = res.expect("fast mode clamps and never fails");
            assert!(
                o.iter().all(|x| !from_bits(*x, InputType::Bf16).is_nan())
                    && lse.iter().all(|x| !x.is_nan())
            );
        }
    }
    let _ = Arch::Sm90;
}

fn gpu_negative_and_zero_scale_match_oracle(dev: &CudaDevice) {
    // the identity-score path keeps raw scores and negates Q for a negative scale
    for (mt, qb, d) in [(1, 64, 64), (2, 128, 128)] {
        let c = Case {
            shape: Shape {
                b: 1,
                hq: 2,
                hkv: 1,
                lq: 150,
                lkv: 190,
                d,
                dv: d,
            },
            ty: InputType::Bf16,
            qb,
            kvb: 64,
            mt,
        };
        for p in [
            samples::dense(),
            samples::causal(),
            samples::softcap_causal(),
        ] {
            for scale in [-0.09f32, 0.0] {
                let mut r = rng(4);
                let bind = bindings(&p, &c.shape, &mut r, 50, 4);
                check_scaled(dev, &p, &c, &bind, None, 12, scale)
                    .unwrap_or_else(|e| panic!("{} scale {scale} mt{mt}: {e}", p.name));
            }
        }
    }
}

type TestFn = fn(&CudaDevice);

const TESTS: &[(&str, TestFn)] = &[
    ("gpu_samples_match_oracle", gpu_samples_match_oracle),
    (
        "gpu_all_partial_maps_match_oracle",
        gpu_all_partial_maps_match_oracle,
    ),
    (
        "gpu_fully_masked_rows_give_zero_and_neg_inf",
        gpu_fully_masked_rows_give_zero_and_neg_inf,
    ),
    (
        "gpu_negative_and_zero_scale_match_oracle",
        gpu_negative_and_zero_scale_match_oracle,
    ),
    (
        "gpu_checked_mode_reports_out_of_range_reads",
        gpu_checked_mode_reports_out_of_range_reads,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // libtest-style flags (--test-threads=1, --nocapture, --ignored, ...) are accepted
    // and ignored; a flag's separate value (`--test-threads 1`) is skipped too
    let mut filter: Option<String> = None;
    let mut list = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--list" {
            list = true;
        } else if a == "--test-threads" || a == "--skip" || a == "--format" {
            i += 1;
        } else if !a.starts_with('-') && filter.is_none() {
            filter = Some(a.clone());
        }
        i += 1;
    }
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    if list {
        for (n, _) in &selected {
            println!("{n}: test");
        }
        return;
    }
    println!("\nrunning {} gpu tests", selected.len());
    let dev = device_or_skip("gpu tests");
    if let Some(d) = &dev {
        println!("device: {} ({:?}, {})", d.name(), d.capability(), d.arch());
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    for (name, f) in &selected {
        let Some(d) = &dev else {
            println!("test {name} ... SKIPPED (no CUDA device)");
            skipped += 1;
            continue;
        };
        println!("test {name} ...");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(d)));
        match r {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("test {name} ... FAILED");
                failures.push(format!("{name}: {msg}"));
                failed += 1;
            }
        }
    }
    for f in &failures {
        println!("---- {f}");
    }
    println!("gpu tests: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
