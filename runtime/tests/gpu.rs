//! GPU differential tests: every sample kernel against the f64 oracle
//! (`reference::attention`) on random shapes (odd lengths, Lq != Lkv, GQA, D 64/128,
//! bf16 and f16), fully masked rows, and checked mode; block tables built on the GPU
//! (`backend::llvm::blocktable`) against brute force (`classify::brute_force_maps`) and
//! attention through them against the oracle, through the kernel API and through
//! `Bound::forward` (GPU table and host table paths). Both kv-bounds sources are run:
//! kernels whose mask has a closed form (no mask, causal, sliding window, bands with
//! empty first or last rows) compute their kv ranges in the kernel, and the same masks
//! are run again with the block table forced (`PtxOptions::kv_table`), so the table path
//! stays tested on index-only masks too. The JIT's cubin cache and tiered swap:
//! `gpu_jit/mod.rs`.
//! Every case runs on each matrix path the device has (`mma.sync`; on sm_90 also
//! `wgmma` where the case's tile and head dim fit it, plain, overlapped and
//! warp-specialized with TMA (`PtxOptions::ws`)), each with both K pipelines;
//! `ATTNC_GPU_MMA=sync|wgmma|ws` keeps one path; `ATTNC_GPU_PERSISTENT=1|dyn|0` makes the
//! warp-specialized paths persistent (`PtxOptions::persistent`; `dyn`: with
//! `PtxOptions::dynamic_tiles`) or not, and `ATTNC_GPU_Q2=1` gives those two Q buffers
//! (`PtxOptions::q_double`), `ATTNC_GPU_CROSS=1` with `dyn` the cross-tile issue
//! (`PtxOptions::cross_tile`). Every path but the plain wgmma kernel
//! converts positions as exact floats (`PtxOptions::float_positions`, the runtime's
//! default at these lengths); the plain wgmma kernel converts per element.
//!
//! This is a `harness = false` test run by libtest-mimic (`gpu_util::run_gpu_tests`):
//! libtest's filters, `--exact`, `--skip`, `--list` and summary line; tests run one at a
//! time. Without a CUDA device every test prints `test NAME ... SKIPPED (no CUDA device)`
//! and counts as ignored. `examples/` is found from the working directory or
//! `$ATTNC_EXAMPLES` (`gpu_util::examples_dir`), so a copied binary runs anywhere.
//!
//! Tolerance (bf16/f16 inputs, f32 accumulation, P rounded to the input type for P·V):
//! |O - O_ref| <= 0.03 + 0.02 |O_ref| for bf16 (0.01 + 0.01 |O_ref| for f16), and
//! |LSE - LSE_ref| <= 0.01 (|LSE| <= 0.5% relative beyond 2); -inf LSE must match exactly;
//! NaN never passes. The oracle sees the same rounded inputs, so the error comes only from
//! the P rounding (relative 2^-8 for bf16, 2^-11 for f16) and the approximate ex2/lg2/tanh.

mod gpu_jit;
mod gpu_util;

use attnc::cuda::{CudaDevice, CudaError, CudaKernel, KvBlocks, LaunchArgs, Qkv};
use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Tensor};
use attnc_compiler::analysis::blockmap::{BlockMap, BlockMaps};
use attnc_compiler::analysis::classify::{brute_force_maps, closed_form_bounds};
use attnc_compiler::backend::llvm::{Arch, InputType, KvBounds, PtxOptions, samples};
use attnc_compiler::interp::Bindings;
use attnc_compiler::interp::{BoundTensor, TensorData};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::plan::Plan;
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use gpu_util::*;
use rand::Rng;

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

/// Runs `p` on the GPU and the oracle. With `maps`, the table path is forced and reads
/// them; without, the kernel takes its own path (closed form where the mask has one,
/// else maps from the interpreter).
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
        if maps.is_some() && opts.q_block != c.qb {
            continue; // the given maps are for the case's tiles
        }
        // both K pipelines (prefetch a whole iteration ahead, or after the softmax)
        // (with `overlap` K is always double-buffered, `ws` streams through its ring: one run)
        let kpfs = if opts.overlap || opts.ws {
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
/// head dims (multiples of 64) fit it, and the warp-specialized kernel at q blocks of 128
/// (with `split_tail`) and D, Dv <= 128. `ATTNC_GPU_MMA=sync|wgmma|ws` keeps one path (`wgmma`: both wgmma
/// kernels).
fn paths(dev: &CudaDevice, c: &Case) -> Vec<PtxOptions> {
    let sh = &c.shape;
    let base = PtxOptions::sync(dev.arch(), sh.d as u32, sh.dv as u32, c.ty);
    let mut sync = base.with_m_tiles(c.mt);
    sync.q_block = c.qb;
    sync.kv_block = c.kvb;
    // the positions as exact floats (the runtime's default at these lengths) on every
    // path but the plain wgmma kernel, which keeps the conversion per element
    sync.float_positions = true;
    let only = std::env::var("ATTNC_GPU_MMA").unwrap_or_default();
    let mut v = Vec::new();
    if only != "wgmma" && only != "ws" {
        v.push(sync);
    }
    let fits = dev.arch() == Arch::Sm90
        && matches!(c.qb, 64 | 128)
        && matches!(c.kvb, 64 | 128)
        && sh.d.is_multiple_of(64)
        && sh.dv.is_multiple_of(64);
    if fits && only != "sync" && only != "ws" {
        let mut w = base.wgmma();
        w.q_block = c.qb;
        w.kv_block = c.kvb;
        v.push(w);
        v.push(PtxOptions {
            overlap: true,
            float_positions: true,
            pos_bias: true,
            ..w
        });
    }
    // the warp-specialized TMA kernel (128 query rows); `ATTNC_GPU_PERSISTENT=1|0` turns
    // its persistent CTAs on or off (else its default)
    let ws = persistent_from_env(base.warp_specialized(c.kvb, 2));
    if fits && only != "sync" && c.qb == 128 && sh.d.max(sh.dv) <= 128 {
        // (with the partial blocks' own path inside the sequence and, on block tables,
        // their kinds by conjunct, as the runtime's two-consumer kernels)
        v.push(PtxOptions {
            float_positions: true,
            pos_bias: true,
            split_tail: true,
            mask_kinds: true,
            ..ws
        });
        // at D, Dv 64 also its three-consumer shape: q blocks of 192 rows
        if sh.d.max(sh.dv) <= 64 {
            v.push(PtxOptions {
                float_positions: true,
                q_block: 192,
                ..ws
            });
        }
    }
    // `ATTNC_GPU_MASK_KINDS=1|0`: partial blocks by conjunct kind on every path, or on
    // none (`PtxOptions::mask_kinds`; the GPU-built tables follow)
    if let Ok(k) = std::env::var("ATTNC_GPU_MASK_KINDS") {
        for o in &mut v {
            o.mask_kinds = k == "1";
        }
    }
    // `ATTNC_GPU_POS_BIAS=1|0`: a position bias score (ALiBi) in two instructions an
    // element on every path, or on none (`PtxOptions::pos_bias`; with float positions)
    if let Ok(k) = std::env::var("ATTNC_GPU_POS_BIAS") {
        for o in &mut v {
            o.pos_bias = k == "1";
        }
    }
    v
}

/// `o` with `ATTNC_GPU_PERSISTENT=1|dyn|0` applied (persistent CTAs on, on with the
/// dynamic tile scheduler, or off) and, with persistent CTAs, `ATTNC_GPU_Q2=1` (two Q
/// buffers, `PtxOptions::q_double`), with the dynamic scheduler `ATTNC_GPU_CROSS=1` (the
/// next tile's first S with the last P V, `PtxOptions::cross_tile`) and `ATTNC_GPU_OTMA=1`
/// (O through shared memory and TMA, `PtxOptions::o_tma`); `ATTNC_GPU_LATE=1`,
/// `ATTNC_GPU_ILP=1`, `ATTNC_GPU_MASK_EARLY=1` (`PtxOptions::pv_wait_late`,
/// `PtxOptions::softmax_ilp`, `PtxOptions::mask_early`).
fn persistent_from_env(mut o: PtxOptions) -> PtxOptions {
    match std::env::var("ATTNC_GPU_PERSISTENT").as_deref() {
        Ok("1") => (o.persistent, o.dynamic_tiles) = (true, false),
        Ok("dyn") => (o.persistent, o.dynamic_tiles) = (true, true),
        Ok("0") => (o.persistent, o.dynamic_tiles) = (false, false),
        _ => {}
    }
    o.q_double = o.persistent && std::env::var("ATTNC_GPU_Q2").is_ok_and(|v| v == "1");
    o.cross_tile = o.dynamic_tiles && std::env::var("ATTNC_GPU_CROSS").is_ok_and(|v| v == "1");
    o.early_claim = o.cross_tile;
    // `ATTNC_GPU_QAHEAD=1`: the next tile's Q after this tile's first K and V
    // (`PtxOptions::q_ahead`, with the dynamic scheduler and two Q buffers)
    o.q_ahead = o.dynamic_tiles
        && o.q_double
        && !o.cross_tile
        && std::env::var("ATTNC_GPU_QAHEAD").is_ok_and(|v| v == "1");
    // `ATTNC_GPU_OTMA=1`: O through shared memory and TMA stores (`PtxOptions::o_tma`,
    // with the dynamic scheduler, q blocks of 128 at Dv 128, no third stage beside two Q
    // buffers)
    o.o_tma = o.dynamic_tiles
        && o.q_block == 128
        && o.dv == 128
        && o.d <= 128
        && (o.stages == 2 || !o.q_double)
        && std::env::var("ATTNC_GPU_OTMA").is_ok_and(|v| v == "1");
    // `ATTNC_GPU_LATE=1` / `ATTNC_GPU_ILP=1`: the wait for the last P V after the
    // exponentials (`PtxOptions::pv_wait_late`), the softmax's reductions over four chains
    // (`PtxOptions::softmax_ilp`)
    o.pv_wait_late = std::env::var("ATTNC_GPU_LATE").is_ok_and(|v| v == "1");
    o.softmax_ilp = std::env::var("ATTNC_GPU_ILP").is_ok_and(|v| v == "1");
    o.mask_early = std::env::var("ATTNC_GPU_MASK_EARLY").is_ok_and(|v| v == "1");
    o
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
    let opts = PtxOptions {
        kv_table: opts.kv_table || maps.is_some(),
        ..*opts
    };
    let k = emit(p, &opts).map_err(|e| e.to_string())?;
    let kern = CudaKernel::load(dev, &k).map_err(|e| e.to_string())?;
    run_vs_oracle(dev, &kern, p, c, bind, maps, seed, scale)
}

/// `CudaKernel::forward_host`; with the dynamic tile scheduler or the last tiles split
/// along kv (`tail_split`) the kernel runs a second time on the same problem with O
/// poisoned (NaN) in between, and its counters must be zero after each launch: a
/// counter left over would hand the second launch the wrong tiles (or merge a tile
/// early), leaving NaN rows.
fn forward_host(
    kern: &CudaKernel,
    dev: &attnc::cuda::CudaDevice,
    sh: &Shape,
    (q, k, v): (&[u16], &[u16], &[u16]),
    scale: f32,
    bind: &Bindings,
    blocks: KvBlocks,
) -> Result<(Vec<u16>, Vec<f32>), attnc::cuda::CudaError> {
    let o = &kern.meta().options;
    if !o.dynamic_tiles && !o.tail_split {
        return kern.forward_host(dev, sh, q, k, v, scale, bind, blocks);
    }
    let mut p = kern.upload(dev, sh, Qkv::Host(q, k, v), scale, bind, blocks)?;
    let fresh = |p: &attnc::cuda::DeviceProblem| -> Result<(), attnc::cuda::CudaError> {
        let t = p.tile_counter(dev)?;
        assert!(
            t.iter().all(|w| *w == 0),
            "tile counter after a launch: {t:?}"
        );
        Ok(())
    };
    kern.launch(dev, &p, &LaunchArgs::new())?;
    fresh(&p)?;
    p.o = dev.upload_u16(&vec![0x7fc0; sh.b * sh.hq * sh.lq * sh.dv])?;
    kern.launch(dev, &p, &LaunchArgs::new())?;
    fresh(&p)?;
    p.download(dev)
}

/// Runs a loaded kernel on random inputs and compares it with the oracle. Table kernels
/// read `maps` (default: brute-force maps from the interpreter); closed-form kernels get
/// the closed form's bounds for `bind` (`maps` must be None).
#[allow(clippy::too_many_arguments)]
fn run_vs_oracle(
    dev: &attnc::cuda::CudaDevice,
    kern: &CudaKernel,
    p: &Program,
    c: &Case,
    bind: &Bindings,
    maps: Option<BlockMaps>,
    seed: u64,
    scale: f32,
) -> Result<(), String> {
    let sh = &c.shape;
    let opts = &kern.meta().options;
    let mut r = rng(seed);
    let (qb, qf) = random_input(&mut r, sh.q_len(), 2.0, c.ty);
    let (kb, kf) = random_input(&mut r, sh.k_len(), 2.0, c.ty);
    let (vb, vf) = random_input(&mut r, sh.v_len(), 1.0, c.ty);
    // the block source outlives the call: the closed form's bounds, or the maps
    let (bounds, table);
    let blocks = match &kern.meta().kv_bounds {
        KvBounds::ClosedForm(cf) => {
            assert!(maps.is_none(), "maps given to a closed-form kernel");
            bounds = closed_form_bounds(p, cf, sh, bind).map_err(|e| e.to_string())?;
            KvBlocks::ClosedForm(bounds.as_deref())
        }
        KvBounds::Table => {
            table = maps.unwrap_or_else(|| {
                interp_maps(p, sh, bind, opts.q_block as usize, opts.kv_block as usize)
            });
            KvBlocks::Maps(&table)
        }
    };
    let (o, lse) =
        forward_host(kern, dev, sh, (&qb, &kb, &vb), scale, bind, blocks).map_err(|e| {
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
        "  ok {} {:?} {} qb{} kvb{} mt{} kpf {} {:?} overlap {} kv {}: max |dO| {worst:.2e}",
        p.name,
        sh,
        c.ty.name(),
        opts.q_block,
        opts.kv_block,
        c.mt,
        opts.k_prefetch,
        opts.mma,
        opts.overlap,
        kern.meta().kv_bounds.name()
    );
    Ok(())
}

/// The table path with `maps`, on every matrix path of the case (default pipelines).
fn check_table(
    dev: &CudaDevice,
    p: &Program,
    c: &Case,
    bind: &Bindings,
    maps: BlockMaps,
    seed: u64,
) -> Result<(), String> {
    let sh = &c.shape;
    for opts in paths(dev, c) {
        let opts = PtxOptions {
            kv_table: true,
            ..opts
        };
        // (the three-consumer kernel's q blocks are not the case's: its own maps)
        let maps = if opts.q_block == c.qb {
            maps.clone()
        } else {
            interp_maps(p, sh, bind, opts.q_block as usize, opts.kv_block as usize)
        };
        check_opts(dev, p, c, bind, Some(maps), seed, sh.default_scale(), &opts)?;
    }
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
            // closed-form masks through the block table too (maps from the interpreter)
            if p.tensors.is_empty() {
                let maps = interp_maps(&p, &c.shape, &bind, c.qb as usize, c.kvb as usize);
                if let Err(e) = check_table(dev, &p, c, &bind, maps, ci as u64) {
                    failures.push(format!(
                        "{} (table forced) case {ci} ({:?} {}): {e}",
                        p.name,
                        c.shape,
                        c.ty.name()
                    ));
                }
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
    // q blocks of 64 and of 128 (the warp-specialized kernel's)
    for qb in [64, 128] {
        let c = Case { qb, ..c };
        for p in [samples::dense(), samples::causal(), samples::sliding()] {
            let mut r = rng(3);
            let bind = bindings(&p, &c.shape, &mut r, 50, 4);
            let maps = BlockMaps::single(BlockMap::all_partial(
                c.shape.lq,
                c.shape.lkv,
                qb as usize,
                64,
            ));
            check_one(dev, &p, &c, &bind, Some(maps), 11).unwrap();
        }
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
    let (qb, _) = random_input(&mut r, shape.q_len(), 1.0, InputType::Bf16);
    let (kb, _) = random_input(&mut r, shape.k_len(), 1.0, InputType::Bf16);
    let (vb, _) = random_input(&mut r, shape.v_len(), 1.0, InputType::Bf16);
    // q blocks of 64 and of 128 (the warp-specialized kernel's)
    for (checked, base, maps) in [64u32, 128].into_iter().flat_map(|q_block| {
        let case = Case {
            shape,
            ty: InputType::Bf16,
            qb: q_block,
            kvb: 64,
            mt: 1,
        };
        paths(dev, &case)
            .into_iter()
            .flat_map(move |o| {
                // maps of the kernel's own q blocks (the three-consumer kernel's are 192)
                let maps =
                    BlockMaps::single(BlockMap::all_partial(100, 60, o.q_block as usize, 64));
                [(false, o, maps.clone()), (true, o, maps)]
            })
            .collect::<Vec<_>>()
    }) {
        let mut opts = base;
        opts.checked = checked;
        let k = CudaKernel::load(dev, &emit(&p, &opts).unwrap()).unwrap();
        let res = k.forward_host(
            dev,
            &shape,
            &qb,
            &kb,
            &vb,
            0.125,
            &bind,
            KvBlocks::Maps(&maps),
        );
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

/// The longest-first CTA order (`PtxOptions::lpt_group`) on the warp-specialized kernel:
/// groups of 3 (head, batch) slices, so B Hq = 8 and 9 give a partial and no partial last
/// group; every q block is computed once (closed form and block table).
fn gpu_lpt_order_matches_oracle(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    for (b, hq, hkv, lq, lkv) in [(2, 4, 2, 300, 257), (3, 3, 1, 129, 400)] {
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d: 128,
                dv: 128,
            },
            ty: InputType::Bf16,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        let opts = PtxOptions {
            lpt_group: 3,
            ..PtxOptions::new(Arch::Sm90, 128, 128, c.ty)
        };
        for p in [samples::causal(), samples::document_causal()] {
            if p.name == "document_causal" && lq > lkv {
                continue;
            }
            let mut r = rng(21);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            check_opts(dev, &p, &c, &bind, None, 21, c.shape.default_scale(), &opts)
                .unwrap_or_else(|e| panic!("{} {:?}: {e}", p.name, c.shape));
        }
    }
}

/// Persistent CTAs (`PtxOptions::persistent`) on the warp-specialized kernel: every
/// sample with grids of 1, 5 and 11 CTAs (`CudaDevice::with_sms`), so that each CTA walks
/// many tiles (its ring position, Q buffer phase and turn barriers carried across tiles,
/// tiles without kv blocks among them), in the plain and the longest-first order, with
/// static rounds and with the dynamic tile scheduler (`PtxOptions::dynamic_tiles`: run
/// twice on one problem, its counter zero after each launch), each with one and with two
/// Q buffers (`PtxOptions::q_double`), at D128 (two consumers)
/// and D64 (three); odd lengths, Lq != Lkv, GQA, bf16 and f16; also the device's own
/// grid.
fn gpu_persistent_matches_oracle(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    let cases = [
        ((2, 4, 2, 300, 257), 128, InputType::Bf16),
        ((3, 3, 1, 129, 400), 128, InputType::F16),
        ((2, 2, 1, 777, 190), 64, InputType::Bf16),
        ((1, 4, 4, 520, 333), 64, InputType::F16),
    ];
    // ATTNC_GPU_PERSISTENT_QUICK=1 (for compute-sanitizer): two cases, three samples;
    // ATTNC_GPU_PERSISTENT_ONLY=dyn|static: one of the two schedules
    let quick = std::env::var("ATTNC_GPU_PERSISTENT_QUICK").is_ok_and(|v| v == "1");
    let only = std::env::var("ATTNC_GPU_PERSISTENT_ONLY").unwrap_or_default();
    for (i, ((b, hq, hkv, lq, lkv), d, ty)) in cases.into_iter().enumerate() {
        if quick && i % 2 == 1 {
            continue;
        }
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d,
                dv: d,
            },
            ty,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        let base = PtxOptions::new(Arch::Sm90, d as u32, d as u32, ty);
        let ws = PtxOptions {
            persistent: true,
            float_positions: true,
            q_block: if d == 64 { 192 } else { 128 },
            ..base.warp_specialized(128, 2)
        };
        for (j, p) in samples::all(hq as i32).into_iter().enumerate() {
            if p.name == "document_causal" && lq > lkv
                || quick && !matches!(p.name.as_str(), "dense" | "causal" | "document_causal")
            {
                continue;
            }
            let sms = [1, 5, 11, dev.sms()][(i + j) % 4];
            let small = dev.with_sms(sms);
            let mut r = rng(31);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            // the static rounds and the dynamic tile scheduler, plain and LPT order, each
            // with one Q buffer and two (`q_double`)
            for (lpt, dynamic_tiles, q_double) in [
                (0, false, false),
                (3, false, true),
                (0, true, true),
                (3, true, false),
            ] {
                if (only == "dyn" && !dynamic_tiles) || (only == "static" && dynamic_tiles) {
                    continue;
                }
                let opts = PtxOptions {
                    lpt_group: lpt,
                    dynamic_tiles,
                    q_double,
                    ..ws
                };
                let opts = PtxOptions {
                    q_block: if d == 64 { opts.q_block } else { 128 },
                    ..opts
                };
                check_opts(
                    &small,
                    &p,
                    &c,
                    &bind,
                    None,
                    31,
                    c.shape.default_scale(),
                    &opts,
                )
                .unwrap_or_else(|e| {
                    panic!(
                        "{} {:?} {sms} CTAs lpt {lpt} dynamic {dynamic_tiles} q2 {q_double}: {e}",
                        p.name, c.shape
                    )
                });
            }
        }
    }
}

/// The last tiles split along kv (`PtxOptions::tail_split`, persistent CTAs in static
/// rounds): every sample (block tables ignore the option) on grids of 2, 3, 5, 7, 11 and
/// 13 CTAs, so that the tiles leave a remainder and the split tiles' pieces start and end
/// inside tiles (several parts per tile, a CTA holding the end of one tile and the start
/// of the next, Lkv below one kv block); D128 (two consumers) and D64 (three, q blocks of
/// 192), odd lengths, Lq != Lkv, GQA, bf16 and f16, one Q buffer and two, and q blocks
/// from the end on causal-type ranges. Each problem runs twice with O poisoned in
/// between and every counter word zero after each launch (`forward_host`).
fn gpu_tail_split_matches_oracle(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    if matches!(
        std::env::var("ATTNC_GPU_MMA").as_deref(),
        Ok("sync" | "wgmma")
    ) {
        println!("  ATTNC_GPU_MMA keeps another path: the warp-specialized kernel only");
        return;
    }
    let cases = [
        ((2, 4, 2, 300, 257), 128, InputType::Bf16),
        ((3, 3, 1, 129, 400), 128, InputType::F16),
        ((1, 5, 5, 1000, 90), 128, InputType::Bf16),
        ((2, 2, 1, 777, 190), 64, InputType::Bf16),
        ((1, 4, 4, 520, 333), 64, InputType::F16),
    ];
    // ATTNC_GPU_TAIL_QUICK=1 (for compute-sanitizer): two cases, three samples
    let quick = std::env::var("ATTNC_GPU_TAIL_QUICK").is_ok_and(|v| v == "1");
    // ATTNC_GPU_TAIL_CASES=3,4: only these cases (by index; to share them among
    // processes under a time limit)
    let only: Option<Vec<usize>> = std::env::var("ATTNC_GPU_TAIL_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let mut failures = Vec::new();
    for (i, ((b, hq, hkv, lq, lkv), d, ty)) in cases.into_iter().enumerate() {
        if quick && i % 2 == 1 || only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d,
                dv: d,
            },
            ty,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        let base = PtxOptions::new(Arch::Sm90, d as u32, d as u32, ty);
        let ws = PtxOptions {
            persistent: true,
            tail_split: true,
            float_positions: true,
            q_block: if d == 64 { 192 } else { 128 },
            ..base.warp_specialized(128, 2)
        };
        for (j, p) in samples::all(hq as i32).into_iter().enumerate() {
            if p.name == "document_causal" && lq > lkv
                || quick && !matches!(p.name.as_str(), "dense" | "causal" | "sliding_window")
            {
                continue;
            }
            let sms = [2, 3, 5, 7, 11, 13][(i + j) % 6];
            let small = dev.with_sms(sms);
            let mut r = rng(37);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            let plan = Plan::new(&p);
            let grows = plan.kv_bounds(false).work_grows_with_q();
            for (q_double, q_from_end) in [(false, false), (true, grows)] {
                let opts = PtxOptions {
                    q_double,
                    q_from_end,
                    ..ws
                };
                if let Err(e) = check_opts(
                    &small,
                    &p,
                    &c,
                    &bind,
                    None,
                    37,
                    c.shape.default_scale(),
                    &opts,
                ) {
                    let f = format!(
                        "{} {:?} {sms} CTAs q2 {q_double} qend {q_from_end}: {e}",
                        p.name, c.shape
                    );
                    println!("  FAILED {f}");
                    failures.push(f);
                }
            }
        }
        // (progress, for a run cut by a time limit)
        println!(
            "  case {i} {:?} D{d}: {} failures so far",
            c.shape,
            failures.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// q blocks from the end (`PtxOptions::q_from_end`, the runtime's choice for causal-type
/// masks): the first q block starts below row 0 (rows TMA reads as zeros, masked and
/// never stored). Every sample with a closed-form range (the document mask's table
/// ignores the option) on the warp-specialized kernel with one CTA per tile and with the
/// dynamic tile scheduler (the runtime's schedule, grids of 1, 7 and all SMs), D128 (two
/// consumers) and D64 (two and three: q blocks of 128 and 192), lengths that leave a
/// partial block of every size and Lq below one q block, Lq != Lkv, GQA, bf16 and f16
/// (with and without `split_tail` at q blocks of 128);
/// a negative scale (Q negated in shared memory) and checked mode (no read reported at
/// rows below 0) on one case each.
fn gpu_q_from_end_matches_oracle(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    if matches!(
        std::env::var("ATTNC_GPU_MMA").as_deref(),
        Ok("sync" | "wgmma")
    ) {
        println!("  ATTNC_GPU_MMA keeps another path: the warp-specialized kernel only");
        return;
    }
    let cases = [
        ((2, 4, 2, 300, 257), 128, 128, InputType::Bf16),
        ((1, 3, 1, 100, 250), 64, 192, InputType::F16),
        ((2, 2, 1, 449, 449), 64, 192, InputType::Bf16),
        ((1, 4, 4, 577, 300), 64, 192, InputType::F16),
        ((3, 2, 2, 1, 65), 64, 128, InputType::Bf16),
        ((1, 2, 1, 330, 700), 64, 128, InputType::Bf16),
    ];
    // ATTNC_GPU_QEND_QUICK=1 (for compute-sanitizer): three cases, three samples
    let quick = std::env::var("ATTNC_GPU_QEND_QUICK").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (i, ((b, hq, hkv, lq, lkv), d, qb, ty)) in cases.into_iter().enumerate() {
        if quick && i % 2 == 1 {
            continue;
        }
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d,
                dv: d,
            },
            ty,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        let ws = PtxOptions {
            float_positions: true,
            q_from_end: true,
            split_tail: qb == 128 && i % 2 == 0,
            q_block: qb,
            ..PtxOptions::new(Arch::Sm90, d as u32, d as u32, ty).warp_specialized(128, 2)
        };
        for (j, p) in samples::all(hq as i32).into_iter().enumerate() {
            if p.name == "document_causal"
                || quick && !matches!(p.name.as_str(), "causal" | "alibi_causal" | "dense")
            {
                continue;
            }
            let mut r = rng(41);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            let sms = [1, 7, dev.sms()][(i + j) % 3];
            let small = dev.with_sms(sms);
            for (k, dynamic) in [false, true].into_iter().enumerate() {
                let opts = PtxOptions {
                    persistent: dynamic,
                    dynamic_tiles: dynamic,
                    lpt_group: if dynamic { 8 } else { 0 },
                    checked: i == 1 && k == (1 + j) % 3,
                    // (two Q buffers on half the dynamic runs: the negative scale's
                    // negation of the second buffer included)
                    q_double: dynamic && (i + j) % 2 == 0,
                    ..ws
                };
                let scale = if i == 2 && k == 1 {
                    -c.shape.default_scale()
                } else {
                    c.shape.default_scale()
                };
                if let Err(e) = check_opts(&small, &p, &c, &bind, None, 41, scale, &opts) {
                    failures.push(format!(
                        "{} {:?} q block {qb} dynamic {dynamic} q2 {} {sms} CTAs: {e}",
                        p.name, c.shape, opts.q_double
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One case of a sweep over the dynamic tile scheduler (`run_sweep`): (B, Hq, Hkv, Lq,
/// Lkv), D, Dv, the q block, the element type.
type SweepCase = (
    (usize, usize, usize, usize, usize),
    usize,
    usize,
    u32,
    InputType,
);

/// One option set of such a sweep: the LPT group, two Q buffers, the block table forced,
/// q blocks from the end.
#[derive(Clone, Copy)]
struct SweepSet {
    lpt: u32,
    q_double: bool,
    kv_table: bool,
    q_from_end: bool,
}

impl SweepSet {
    const fn new(lpt: u32, q_double: bool, kv_table: bool, q_from_end: bool) -> Self {
        SweepSet {
            lpt,
            q_double,
            kv_table,
            q_from_end,
        }
    }
}

/// A warp-specialized option swept over the dynamic tile scheduler (the q_ahead, o_tma
/// and cross_tile tests): every sample (document + causal left out where Lq > Lkv) on
/// grids of 1, 5, 11 CTAs and all SMs in turn, so CTAs run many tiles (tiles without
/// blocks, tiles of one block, the end marker next to a tile's last block); one option
/// set per (case, sample) in turn; checked mode on case 1's first set, a negative scale
/// (Q negated in shared memory) on case 0 once per three samples. `opts(i, case, sample,
/// k)` gives the kernel's options; the set's fields and checked mode are laid over them.
/// Each launch runs twice with O poisoned in between and the counters zero after each
/// (`forward_host`).
///
/// Environment (`TAG` = `tag`): `ATTNC_GPU_TAG_FULL=1` runs every set,
/// `ATTNC_GPU_TAG_CASES=i,..` / `ATTNC_GPU_TAG_VARIANTS=k,..` only those cases / sets (to
/// split a full run over processes), `ATTNC_GPU_TAG_QUICK=1` (for compute-sanitizer,
/// where `quick_samples` is not empty) every other case and those samples only.
struct Sweep<'a> {
    tag: &'a str,
    seed: u64,
    cases: &'a [SweepCase],
    sets: &'a [SweepSet],
    quick_samples: &'a [&'a str],
}

fn run_sweep(
    dev: &CudaDevice,
    sw: &Sweep,
    opts: impl Fn(usize, &SweepCase, &Program, usize) -> PtxOptions,
) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    if matches!(
        std::env::var("ATTNC_GPU_MMA").as_deref(),
        Ok("sync" | "wgmma")
    ) {
        println!("  ATTNC_GPU_MMA keeps another path: the warp-specialized kernel only");
        return;
    }
    let var = |name: &str| std::env::var(format!("ATTNC_GPU_{}_{name}", sw.tag)).ok();
    let list = |name: &str| {
        var(name).map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<usize>>()
        })
    };
    let quick = !sw.quick_samples.is_empty() && var("QUICK").is_some_and(|v| v == "1");
    let only = list("CASES");
    let only_k = list("VARIANTS");
    let full = var("FULL").is_some_and(|v| v == "1") || only_k.is_some();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, case) in sw.cases.iter().enumerate() {
        let &((b, hq, hkv, lq, lkv), d, dv, qb, ty) = case;
        if quick && i % 2 == 1 || only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d,
                dv,
            },
            ty,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        for (j, p) in samples::all(hq as i32).into_iter().enumerate() {
            if p.name == "document_causal" && lq > lkv
                || quick && !sw.quick_samples.contains(&p.name.as_str())
            {
                continue;
            }
            let sms = [1, 5, 11, dev.sms()][(i + j) % 4];
            let small = dev.with_sms(sms);
            let mut r = rng(sw.seed);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            for (k, set) in sw.sets.iter().enumerate() {
                if only_k.as_ref().is_some_and(|o| !o.contains(&k))
                    || !full && k != (i + j) % sw.sets.len()
                {
                    continue;
                }
                let o = PtxOptions {
                    lpt_group: set.lpt,
                    q_double: set.q_double,
                    kv_table: set.kv_table,
                    q_from_end: set.q_from_end,
                    checked: i == 1 && k == 0,
                    ..opts(i, case, &p, k)
                };
                let scale = if i == 0 && k == j % 3 {
                    -c.shape.default_scale()
                } else {
                    c.shape.default_scale()
                };
                ran += 1;
                if let Err(e) = check_opts(&small, &p, &c, &bind, None, sw.seed, scale, &o) {
                    failures.push(format!(
                        "{} {:?} q block {qb} lpt {} q2 {} table {} qend {} {sms} CTAs: {e}",
                        p.name, c.shape, set.lpt, set.q_double, set.kv_table, set.q_from_end
                    ));
                }
            }
        }
    }
    println!("  {ran} kernels, {} failed", failures.len());
    assert!(ran > 0, "no kernel ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The next tile's Q copied after this tile's first K and V (`PtxOptions::q_ahead`, the
/// dynamic tile scheduler with two Q buffers), swept as `run_sweep` says: D128 (two
/// consumers) and D64 (three at q blocks of 192), the plain and the LPT order, q blocks
/// from the end, closed forms and the block table forced; odd lengths, Lq != Lkv (rows
/// with no kv block: fully masked), GQA, bf16 and f16. `ATTNC_GPU_QAHEAD_FULL=1` runs all
/// three option sets, `ATTNC_GPU_QAHEAD_CASES=i,..` only those cases.
fn gpu_q_ahead_matches_oracle(dev: &CudaDevice) {
    let sweep = Sweep {
        tag: "QAHEAD",
        seed: 47,
        cases: &[
            ((2, 4, 2, 300, 257), 128, 128, 128, InputType::Bf16),
            ((3, 3, 1, 129, 400), 128, 128, 128, InputType::F16),
            ((2, 2, 1, 777, 190), 64, 64, 192, InputType::Bf16),
            ((2, 2, 1, 1100, 1100), 128, 128, 128, InputType::Bf16),
        ],
        sets: &[
            SweepSet::new(0, true, false, false),
            SweepSet::new(3, true, true, false),
            SweepSet::new(8, true, false, true),
        ],
        quick_samples: &[],
    };
    run_sweep(dev, &sweep, |_, &(_, d, dv, qb, ty), p, k| PtxOptions {
        persistent: true,
        dynamic_tiles: true,
        q_ahead: true,
        float_positions: true,
        q_block: qb,
        split_tail: qb == 128 && p.score.is_none() && k != 1,
        ..PtxOptions::new(Arch::Sm90, d as u32, dv as u32, ty).warp_specialized(128, 2)
    });
}

/// O written through shared memory and TMA stores (`PtxOptions::o_tma`, the dynamic tile
/// scheduler with two Q buffers), swept as `run_sweep` says (each warpgroup's staging
/// buffer reused over many tiles per CTA: a copy still reading it would show): D128 and
/// D64 with Dv 128, the plain and the LPT order, q blocks from the end (the first q
/// block's box starts at a negative row: those rows must not be written), closed forms
/// and the block table forced, `q_ahead` on one case; odd lengths (rows past Lq in the
/// last box), Lq != Lkv (rows with no kv block: zeros and -inf), GQA, bf16 and f16. O is
/// poisoned with NaN between the two launches, so a row the copies miss shows as NaN.
/// `ATTNC_GPU_OTMA_FULL=1` runs all three option sets, `ATTNC_GPU_OTMA_CASES=i,..` only
/// those cases.
fn gpu_o_tma_matches_oracle(dev: &CudaDevice) {
    let sweep = Sweep {
        tag: "OTMA",
        seed: 53,
        cases: &[
            ((2, 4, 2, 300, 257), 128, 128, 128, InputType::Bf16),
            ((3, 3, 1, 129, 400), 128, 128, 128, InputType::F16),
            ((1, 4, 4, 520, 333), 64, 128, 128, InputType::F16),
            ((2, 2, 1, 1100, 1100), 128, 128, 128, InputType::Bf16),
        ],
        sets: &[
            SweepSet::new(0, true, false, false),
            SweepSet::new(3, true, true, false),
            SweepSet::new(8, true, false, true),
        ],
        quick_samples: &[],
    };
    run_sweep(dev, &sweep, |i, &(_, d, dv, _, ty), p, k| PtxOptions {
        persistent: true,
        dynamic_tiles: true,
        q_ahead: i == 3,
        o_tma: true,
        float_positions: true,
        split_tail: d == 128 && p.score.is_none() && k != 1,
        ..PtxOptions::new(Arch::Sm90, d as u32, dv as u32, ty).warp_specialized(128, 2)
    });
}

/// The cross-tile issue (`PtxOptions::cross_tile`: the next tile's first S with this
/// tile's last P V, its softmax before this tile's epilogue) on the dynamic tile
/// scheduler, swept as `run_sweep` says: D128 (two consumers) and D64 (three at q blocks
/// of 192, two at 128), one and two Q buffers, the plain and the LPT order, q blocks from
/// the end, closed forms and the block table forced; odd lengths, Lq != Lkv, GQA, bf16 and
/// f16; the negative scale takes the fallback to the last P V alone. By default one
/// option set per (case, sample), in turn (35 kernels); `ATTNC_GPU_CROSS_FULL=1` all
/// three (105 kernels, ~140 s on one process); `ATTNC_GPU_CROSS_QUICK=1` (for
/// compute-sanitizer) three cases, three samples; `ATTNC_GPU_CROSS_CASES=0,3` /
/// `ATTNC_GPU_CROSS_VARIANTS=1,2` only those cases / option sets.
fn gpu_cross_tile_matches_oracle(dev: &CudaDevice) {
    let sweep = Sweep {
        tag: "CROSS",
        seed: 43,
        cases: &[
            ((2, 4, 2, 300, 257), 128, 128, 128, InputType::Bf16),
            ((3, 3, 1, 129, 400), 128, 128, 128, InputType::F16),
            ((2, 2, 1, 777, 190), 64, 64, 192, InputType::Bf16),
            ((1, 4, 4, 520, 333), 64, 64, 128, InputType::F16),
            ((2, 2, 1, 1100, 1100), 128, 128, 128, InputType::Bf16),
        ],
        sets: &[
            SweepSet::new(0, true, false, false),
            SweepSet::new(3, false, true, false),
            SweepSet::new(8, true, false, true),
        ],
        quick_samples: &["dense", "causal", "document_causal"],
    };
    run_sweep(dev, &sweep, |_, &(_, d, dv, qb, ty), p, k| PtxOptions {
        persistent: true,
        dynamic_tiles: true,
        cross_tile: true,
        float_positions: true,
        q_block: qb,
        split_tail: qb == 128 && p.score.is_none() && k != 1,
        early_claim: k != 1,
        ..PtxOptions::new(Arch::Sm90, d as u32, dv as u32, ty).warp_specialized(128, 2)
    });
}

/// The wait for the last P V after the exponentials (`PtxOptions::pv_wait_late`), the
/// softmax's reductions over four chains (`PtxOptions::softmax_ilp`) and the mask before
/// the wait for S (`PtxOptions::mask_early`) on the warp-specialized kernel: every
/// sample, one option set per (case, sample) in turn — the first two on one CTA per tile,
/// all three on the dynamic scheduler (LPT, two Q buffers, q blocks from the end) with
/// the block table forced on every other sample, each of the first two alone (the second
/// with the mask before the wait); D128
/// (two consumers) and D64 (three at q blocks of 192), odd lengths that leave partial
/// blocks of several sizes, Lq != Lkv, GQA, bf16 and f16, a negative scale and checked
/// mode on one case each. Many kv blocks per row (lengths up to 1100) so that rows move
/// their max after their first block (the rescale arm of the branch). Both options are
/// off by default (measured no faster on an H200, docs/performance.md "Session 13 (fwd)").
fn gpu_late_wait_and_ilp_match_oracle(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    if matches!(
        std::env::var("ATTNC_GPU_MMA").as_deref(),
        Ok("sync" | "wgmma")
    ) {
        println!("  ATTNC_GPU_MMA keeps another path: the warp-specialized kernel only");
        return;
    }
    let cases = [
        ((2, 4, 2, 300, 1057), 128, 128, InputType::Bf16),
        ((1, 3, 1, 129, 700), 128, 128, InputType::F16),
        ((2, 2, 1, 777, 520), 64, 192, InputType::Bf16),
        ((2, 2, 2, 1100, 1100), 128, 128, InputType::Bf16),
    ];
    // by default cases 0 and 2 (14 kernels, ~12 s on an H200); ATTNC_GPU_LATE_FULL=1: all
    // four (28 kernels, ~28 s on one process); ATTNC_GPU_LATE_CASES=0,3: only those cases
    // (to split the full test over processes)
    let full = std::env::var("ATTNC_GPU_LATE_FULL").is_ok_and(|v| v == "1");
    let only: Option<Vec<usize>> = std::env::var("ATTNC_GPU_LATE_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .or_else(|| (!full).then(|| vec![0, 2]));
    let mut failures = Vec::new();
    for (i, ((b, hq, hkv, lq, lkv), d, qb, ty)) in cases.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let c = Case {
            shape: Shape {
                b,
                hq,
                hkv,
                lq,
                lkv,
                d,
                dv: d,
            },
            ty,
            qb: 128,
            kvb: 128,
            mt: 1,
        };
        let ws = PtxOptions {
            float_positions: true,
            q_block: qb,
            ..PtxOptions::new(Arch::Sm90, d as u32, d as u32, ty).warp_specialized(128, 2)
        };
        for (j, p) in samples::all(hq as i32).into_iter().enumerate() {
            if p.name == "document_causal" && lq > lkv {
                continue;
            }
            let mut r = rng(47);
            let bind = bindings(&p, &c.shape, &mut r, 40, 4);
            let k = (i + j) % 4;
            let dynamic = k == 1;
            let opts = PtxOptions {
                pv_wait_late: k != 3,
                softmax_ilp: k != 2,
                mask_early: k % 2 == 1,
                persistent: dynamic,
                dynamic_tiles: dynamic,
                lpt_group: if dynamic { 8 } else { 0 },
                q_double: dynamic,
                q_from_end: dynamic,
                kv_table: dynamic && j % 2 == 0,
                split_tail: qb == 128 && p.score.is_none(),
                checked: i == 1 && j % 3 == 0,
                ..ws
            };
            let sms = [1, 7, dev.sms()][(i + j) % 3];
            let small = dev.with_sms(sms);
            let scale = if i == 2 && j % 4 == 0 {
                -c.shape.default_scale()
            } else {
                c.shape.default_scale()
            };
            if let Err(e) = check_opts(&small, &p, &c, &bind, None, 47, scale, &opts) {
                failures.push(format!(
                    "{} {:?} q block {qb} late {} ilp {} mask early {} dynamic {dynamic} table {} {sms} CTAs: {e}",
                    p.name,
                    c.shape,
                    opts.pv_wait_late,
                    opts.softmax_ilp,
                    opts.mask_early,
                    opts.kv_table
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Head dim 256 (Gemma-2's): every sample against the oracle on the mma.sync kernel (64
/// query rows, kv tiles of 64) and, on sm_90, the warp-specialized kernel with kv tiles
/// of 64 (Q 64 KB and two K/V stages of 64 KB each in shared memory; each consumer's O
/// fragment is 128 registers): odd lengths, Lq != Lkv, GQA, bf16 and f16.
fn gpu_d256_matches_oracle(dev: &CudaDevice) {
    let s = |b, hq, hkv, lq, lkv| Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d: 256,
        dv: 256,
    };
    let cases = [
        (s(1, 4, 2, 77, 131), InputType::Bf16),
        (s(2, 2, 1, 200, 63), InputType::F16),
        (s(1, 2, 2, 129, 257), InputType::Bf16),
    ];
    let only = std::env::var("ATTNC_GPU_MMA").unwrap_or_default();
    let mut failures = Vec::new();
    for (ci, &(shape, ty)) in cases.iter().enumerate() {
        let mut paths = Vec::new();
        let sync = PtxOptions::sync(dev.arch(), 256, 256, ty);
        if only != "wgmma" && only != "ws" {
            paths.push(PtxOptions {
                float_positions: true,
                ..sync
            });
        }
        if dev.arch() == Arch::Sm90 && only != "sync" {
            paths.push(PtxOptions {
                float_positions: true,
                ..sync.warp_specialized(64, 2)
            });
        }
        for p in samples::all(shape.hq as i32) {
            if p.name == "document_causal" && shape.lq > shape.lkv {
                continue;
            }
            for opts in &paths {
                let c = Case {
                    shape,
                    ty,
                    qb: opts.q_block,
                    kvb: opts.kv_block,
                    mt: opts.m_tiles,
                };
                let mut r = rng(ci as u64 * 31 + 5);
                let bind = bindings(&p, &shape, &mut r, 37, 4);
                if let Err(e) = check_opts(
                    dev,
                    &p,
                    &c,
                    &bind,
                    None,
                    ci as u64,
                    shape.default_scale(),
                    opts,
                ) {
                    failures.push(format!(
                        "{} case {ci} ({shape:?} {}, ws {}): {e}",
                        p.name,
                        ty.name(),
                        opts.ws
                    ));
                }
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

/// Masks over captured tensors for the block-table tests: (source, attention).
const TABLE_SOURCES: &str = r#"
tensor doc: i32[B, KV];
tensor qdoc: i32[B, Q];
tensor w: f32[B, KV];
param window: i32;
param prefix: i32;
param thr: f32;
mask causal(b, h, q, kv) { q >= kv }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
attention doc_only { mask = same_doc; }
attention doc_causal { mask = causal & same_doc; }
mask local(b, h, q, kv) { q - kv <= window }
attention doc_sliding_causal { mask = causal & local & same_doc; }
mask doc_or_prefix(b, h, q, kv) { doc[b, q] == doc[b, kv] || kv < prefix }
attention doc_or_prefix_causal { mask = causal & doc_or_prefix; }
mask cross(b, h, q, kv) { qdoc[b, q] == kdoc(b, kv) }
fn kdoc(b: i32, kv: i32) -> i32 { doc[b, kv] }
attention cross_doc { mask = cross; }
mask by_head(b, h, q, kv) { (doc[b, q] + h) % 3 == doc[b, kv] % 3 }
attention head_doc { mask = by_head; }
mask weight(b, h, q, kv) { w[b, kv] >= thr + 0.25 * (q % 4) as f32 }
attention weight_param { mask = weight; }
"#;

/// Document ids [B, n]: sorted (packed documents) or random (unsorted).
fn doc_ids(r: &mut rand::rngs::StdRng, b: usize, n: usize, docs: i32, sorted: bool) -> Vec<i32> {
    let mut out = Vec::new();
    for _ in 0..b {
        let mut ids: Vec<i32> = (0..n).map(|_| r.random_range(0..docs)).collect();
        if sorted {
            ids.sort();
        }
        out.extend(ids);
    }
    out
}

/// Bindings of `TABLE_SOURCES` programs.
fn table_bindings(p: &Program, sh: &Shape, seed: u64, sorted: bool) -> Bindings {
    let mut r = rng(seed);
    let mut bind = Bindings::default();
    for param in &p.params {
        bind.params.push(match param.name.as_str() {
            "window" => Scalar::I32(40),
            "prefix" => Scalar::I32(20),
            "thr" => Scalar::F32(-0.3),
            other => panic!("no value for param {other}"),
        });
    }
    for t in &p.tensors {
        let (dims, data) = match t.name.as_str() {
            "doc" => (
                vec![sh.b, sh.lkv],
                TensorData::I32(doc_ids(&mut r, sh.b, sh.lkv, 5, sorted)),
            ),
            "qdoc" => (
                vec![sh.b, sh.lq],
                TensorData::I32(doc_ids(&mut r, sh.b, sh.lq, 5, sorted)),
            ),
            "w" => (
                vec![sh.b, sh.lkv],
                TensorData::F32(
                    (0..sh.b * sh.lkv)
                        .map(|_| r.random_range(-1.0..1.0))
                        .collect(),
                ),
            ),
            other => panic!("no data for tensor {other}"),
        };
        bind.tensors.push(BoundTensor { dims, data });
    }
    bind
}

/// O/LSE against the oracle with the bf16 tolerance of this file.
fn compare_bf16(
    o: &[f32],
    lse: &[f32],
    want: &reference::Output,
    dv: usize,
) -> Result<f32, String> {
    let mut worst = 0f32;
    for (i, (g, w)) in o.iter().zip(&want.o).enumerate() {
        let err = (g - w).abs();
        if g.is_nan() || err > 0.03 + 0.02 * w.abs() {
            return Err(format!("O[{i}] = {g}, oracle {w} (row {})", i / dv));
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
            return Err(format!("LSE[{i}] = {g}, oracle {w}"));
        }
    }
    Ok(worst)
}

/// Builds `p`'s table on the GPU for `qb` x `kvb` tiles, compares it block by block with
/// brute force for every (b, h), then runs attention through it against the oracle.
/// Returns the (empty, partial, full) block counts of the exact maps.
fn check_gpu_table(
    dev: &CudaDevice,
    p: &Program,
    sh: &Shape,
    bind: &Bindings,
    qb: u32,
    kvb: u32,
    seed: u64,
) -> Result<(usize, usize, usize), String> {
    // the attention kernel on every matrix path that fits the tile (the table kernel is
    // the same for both; its options follow the attention kernel's)
    let c = Case {
        shape: *sh,
        ty: InputType::Bf16,
        qb,
        kvb,
        mt: 1,
    };
    let mut counts = None;
    for opts in paths(dev, &c) {
        let got = check_gpu_table_opts(dev, p, sh, bind, &opts, seed)
            .map_err(|e| format!("{:?}: {e}", opts.mma))?;
        counts.get_or_insert(got);
    }
    match counts {
        Some(c) => Ok(c),
        // `ATTNC_GPU_MMA` kept a path that has no kernel of this tile (e.g. `ws` at 64-row
        // tiles): nothing to check here; the unfiltered run covers it
        None if std::env::var("ATTNC_GPU_MMA").is_ok_and(|m| !m.is_empty()) => {
            println!(
                "  {} {qb}x{kvb}: no kernel on the ATTNC_GPU_MMA path, skipped",
                p.name
            );
            Ok((0, 0, 0))
        }
        None => Err("no matrix path for this tile".to_string()),
    }
}

fn check_gpu_table_opts(
    dev: &CudaDevice,
    p: &Program,
    sh: &Shape,
    bind: &Bindings,
    opts: &PtxOptions,
    seed: u64,
) -> Result<(usize, usize, usize), String> {
    let opts = *opts;
    let (qb, kvb) = (opts.q_block, opts.kv_block);
    let attn = CudaKernel::load(dev, &emit(p, &opts).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let builder = CudaKernel::load(dev, &emit_block_table(p, &opts).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let plan = Plan::new(p);
    let info = plan.mask();
    let mut r = rng(seed);
    let (qh, qf) = random_input(&mut r, sh.q_len(), 2.0, InputType::Bf16);
    let (kh, kf) = random_input(&mut r, sh.k_len(), 2.0, InputType::Bf16);
    let (vh, vf) = random_input(&mut r, sh.v_len(), 1.0, InputType::Bf16);
    let scale = sh.default_scale();
    let prob = attn
        .upload(
            dev,
            sh,
            Qkv::Host(&qh, &kh, &vh),
            scale,
            bind,
            KvBlocks::Build {
                uses_b: info.uses_b,
                uses_h: info.uses_h,
            },
        )
        .map_err(|e| e.to_string())?;
    let want =
        brute_force_maps(p, sh, qb as usize, kvb as usize, bind).map_err(|e| e.to_string())?;
    // the builder skips the tiles outside the range of the mask's linear conjuncts with
    // the launch's bounds (as `forward` does); `None` bounds (not trusted for this launch,
    // or passed on purpose) make it evaluate every tile: both must give the exact table
    let implied = plan.implied();
    if builder.meta().table_skip.is_some() != implied.is_some() {
        return Err(format!(
            "builder skip form {:?}, implied {:?}",
            builder.meta().table_skip,
            implied.as_ref().map(|i| &i.closed_form)
        ));
    }
    let skip = match &implied {
        Some(i) => i.bounds(sh, bind).map_err(|e| e.to_string())?,
        None => None,
    };
    let skipped = implied.is_some() && skip.is_some();
    if skipped {
        build_table(dev, &builder, &prob, None).map_err(|e| e.to_string())?;
        let every = prob.download_table(dev).map_err(|e| e.to_string())?;
        compare_tables(&every, &want, sh).map_err(|e| format!("without skipping: {e}"))?;
    }
    build_table(dev, &builder, &prob, skip.as_deref()).map_err(|e| e.to_string())?;
    let got = prob.download_table(dev).map_err(|e| e.to_string())?;
    let expect_maps = if info.uses_b { sh.b } else { 1 } * if info.uses_h { sh.hq } else { 1 };
    if got.maps.len() != expect_maps {
        return Err(format!("{} maps, expected {expect_maps}", got.maps.len()));
    }
    let counts = compare_tables(&got, &want, sh)?;
    let kinds = check_table_kinds(dev, p, sh, bind, &opts, &prob)?;
    // attention through the GPU-built table
    attn.launch(dev, &prob, &LaunchArgs::new())
        .map_err(|e| e.to_string())?;
    let (o, lse) = prob.download(dev).map_err(|e| e.to_string())?;
    let o: Vec<f32> = o.iter().map(|x| from_bits(*x, InputType::Bf16)).collect();
    let oracle =
        reference::attention(p, sh, &qf, &kf, &vf, scale, bind).map_err(|e| e.to_string())?;
    let worst = compare_bf16(&o, &lse, &oracle, sh.dv).map_err(|e| format!("attention: {e}"))?;
    let how = match (&implied, skipped) {
        (None, _) => "every tile evaluated (no linear conjunct)",
        (Some(_), true) => "tiles outside the linear conjuncts skipped",
        (Some(_), false) => "linear conjuncts not trusted here (i32 wrap): every tile evaluated",
    };
    println!(
        "  ok {} {:?} {qb}x{kvb}: table = brute force (empty/partial/full {counts:?}; {how}{kinds}), max |dO| {worst:.2e}",
        p.name, sh
    );
    Ok(counts)
}

/// `PtxOptions::mask_kinds`: every partial block of the GPU-built table has the kind
/// brute force gives it: 2 where the mask's other conjuncts `N` hold wherever its linear
/// ones `L` do (the interpreter at every point inside Lq x Lkv: the mask is `L` there),
/// else 3 where `L` holds at every point (brute force over the mask `L`), else 0 (the
/// builder's walk and its ranges' shortcuts decide exactly these; a builder that tagged
/// no block, or a wrong one, fails here). A note for the report with
/// the blocks of each kind (empty without the option or without a split mask).
fn check_table_kinds(
    dev: &CudaDevice,
    p: &Program,
    sh: &Shape,
    bind: &Bindings,
    opts: &PtxOptions,
    prob: &attnc::cuda::DeviceProblem,
) -> Result<String, String> {
    use attnc_compiler::analysis::blockmap::BlockKind;
    let split = p
        .mask
        .as_ref()
        .and_then(attnc_compiler::analysis::linear::split_conjuncts);
    let Some((l, n)) = split.filter(|_| opts.mask_kinds && !opts.checked) else {
        return Ok(String::new());
    };
    let (qb, kvb) = (opts.q_block as usize, opts.kv_block as usize);
    // (the maps of the mask L alone: where L holds on a whole block)
    let only_l = Program {
        mask: Some(l.clone()),
        ..p.clone()
    };
    let holds_l = brute_force_maps(&only_l, sh, qb, kvb, bind).map_err(|e| e.to_string())?;
    let exact = brute_force_maps(p, sh, qb, kvb, bind).map_err(|e| e.to_string())?;
    // whether N holds wherever L does on block (i, j) of slice (b, h) (points inside Lq x
    // Lkv): the mask is L there, run kind 2
    let n_where_l = |b: usize, h: usize, i: usize, j: usize| -> Result<bool, String> {
        use attnc_compiler::interp::{Args, eval};
        let mut scratch = Vec::new();
        for q in i * qb..((i + 1) * qb).min(sh.lq) {
            for kv in j * kvb..((j + 1) * kvb).min(sh.lkv) {
                let at = || Args::at(0.0, [b, h, q, kv]);
                let lv = eval(&l, p, at(), bind, &mut scratch).map_err(|e| e.to_string())?;
                if lv.as_bool()
                    && !eval(&n, p, at(), bind, &mut scratch)
                        .map_err(|e| e.to_string())?
                        .as_bool()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    let (ranges, runs) = prob.download_table_runs(dev).map_err(|e| e.to_string())?;
    let info = Plan::new(p).mask().clone();
    let (nq, nkv) = (sh.lq.div_ceil(qb), sh.lkv.div_ceil(kvb));
    let n_h = if info.uses_h { sh.hq } else { 1 };
    let mut tagged = [0usize; 2];
    for b in 0..sh.b {
        for h in 0..sh.hq {
            let m = if info.uses_b { b } else { 0 } * n_h + if info.uses_h { h } else { 0 };
            for i in 0..nq {
                let r = m * nq + i;
                // the GPU's run kind of each kv block of this row (None: no run, empty)
                let mut gpu = vec![None; nkv];
                for run in &runs[ranges[2 * r] as usize..ranges[2 * r + 1] as usize] {
                    for k in &mut gpu[run.start as usize..(run.end as usize).min(nkv)] {
                        *k = Some(run.full);
                    }
                }
                for (j, got) in gpu.iter().enumerate() {
                    if exact.get(b, h).kind(i, j) != BlockKind::Partial {
                        continue;
                    }
                    let l_full = holds_l.get(b, h).kind(i, j) == BlockKind::Full;
                    let n_ok = n_where_l(b, h, i, j)?;
                    let want = if n_ok {
                        2
                    } else if l_full {
                        3
                    } else {
                        0
                    };
                    if *got != Some(want) {
                        return Err(format!(
                            "slice (b={b}, h={h}) partial block ({i}, {j}): GPU run kind {got:?}, brute force over L and N: {want} (N holds wherever L does: {n_ok}, L {:?})",
                            holds_l.get(b, h).kind(i, j)
                        ));
                    }
                    if want > 0 {
                        tagged[want as usize - 2] += 1;
                    }
                }
            }
        }
    }
    Ok(format!(
        "; mask kinds: {} partial blocks where N holds wherever L does, {} where L holds",
        tagged[0], tagged[1]
    ))
}

/// Every block of every (b, h) slice of the GPU table equals brute force; returns the
/// (empty, partial, full) counts of the exact maps.
fn compare_tables(
    got: &BlockMaps,
    want: &BlockMaps,
    sh: &Shape,
) -> Result<(usize, usize, usize), String> {
    let mut counts = (0, 0, 0);
    for b in 0..sh.b {
        for h in 0..sh.hq {
            let (g, w) = (got.get(b, h), want.get(b, h));
            for i in 0..w.n_q_blocks() {
                for j in 0..w.n_kv_blocks() {
                    if g.kind(i, j) != w.kind(i, j) {
                        return Err(format!(
                            "slice (b={b}, h={h}) block ({i}, {j}): GPU table says {:?}, brute force {:?}",
                            g.kind(i, j),
                            w.kind(i, j)
                        ));
                    }
                }
            }
            let c = w.counts();
            counts = (counts.0 + c.0, counts.1 + c.1, counts.2 + c.2);
        }
    }
    Ok(counts)
}

fn gpu_block_tables_match_brute_force(dev: &CudaDevice) {
    let module = attnc_compiler::compile_source(TABLE_SOURCES).expect("table sources compile");
    let s = |b, hq, hkv, lq, lkv, d| Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    };
    // (shape, q_block, kv_block): odd lengths, Lq < Lkv, Lq > Lkv (cross_doc only: the
    // others read doc[b, q] with doc sized by Lkv), several b, GQA, every tile size
    let shapes = [
        (s(3, 2, 1, 333, 333, 64), 128, 64),
        (s(2, 2, 2, 130, 301, 64), 64, 64),
        (s(2, 4, 2, 257, 257, 64), 64, 32),
        (s(1, 1, 1, 1, 70, 64), 128, 128),
        (s(2, 1, 1, 300, 1100, 128), 128, 64),
    ];
    let mut failures = Vec::new();
    let mut total = (0, 0, 0);
    for p in &module.programs {
        for (si, (sh, qb, kvb)) in shapes.iter().enumerate() {
            for sorted in [true, false] {
                let bind = table_bindings(p, sh, si as u64 * 10 + sorted as u64, sorted);
                match check_gpu_table(dev, p, sh, &bind, *qb, *kvb, si as u64) {
                    Ok(c) => total = (total.0 + c.0, total.1 + c.1, total.2 + c.2),
                    Err(e) => {
                        failures.push(format!("{} {sh:?} {qb}x{kvb} sorted={sorted}: {e}", p.name))
                    }
                }
            }
        }
        // Lq > Lkv where the mask reads only in-range indices
        if p.name == "cross_doc" {
            let sh = s(2, 2, 1, 300, 130, 64);
            let bind = table_bindings(p, &sh, 99, false);
            if let Err(e) = check_gpu_table(dev, p, &sh, &bind, 64, 64, 5) {
                failures.push(format!("cross_doc Lq > Lkv: {e}"));
            }
        }
    }
    // a param-dependent linear conjunct (the window of doc_sliding_causal: the builder
    // skips tiles left of q - window and right of q) over several windows, negative and
    // zero ones included (every tile empty), Lq != Lkv; and a linear conjunct whose i32
    // arithmetic wraps for some params (kv + off <= q with off near i32::MAX: the host
    // passes no bounds and every tile is evaluated)
    let wrap = attnc_compiler::compile_source(
        "tensor doc: i32[B, KV]; param off: i32; \
         mask m(b, h, q, kv) { kv + off <= q && doc[b, q] == doc[b, kv] } \
         attention wrap_doc { mask = m; }",
    )
    .expect("compiles")
    .programs
    .remove(0);
    let sliding = module
        .programs
        .iter()
        .find(|p| p.name == "doc_sliding_causal")
        .expect("doc_sliding_causal");
    for (si, (sh, qb, kvb)) in [
        (s(2, 2, 1, 200, 333, 64), 64, 64),
        (s(1, 2, 2, 517, 517, 64), 128, 64),
        (s(2, 1, 1, 129, 1000, 128), 128, 128),
    ]
    .iter()
    .enumerate()
    {
        for (wi, window) in [-5, 0, 1, 63, 200, i32::MAX].into_iter().enumerate() {
            let mut bind = table_bindings(sliding, sh, 500 + si as u64, wi % 2 == 0);
            bind.params[0] = Scalar::I32(window);
            match check_gpu_table(dev, sliding, sh, &bind, *qb, *kvb, 7) {
                Ok(c) => total = (total.0 + c.0, total.1 + c.1, total.2 + c.2),
                Err(e) => failures.push(format!("doc_sliding_causal window {window} {sh:?}: {e}")),
            }
        }
        for off in [3, -50, i32::MAX - 100, i32::MIN + 5] {
            let mut r = rng(600 + si as u64);
            let bind = Bindings {
                params: vec![Scalar::I32(off)],
                tensors: vec![BoundTensor {
                    dims: vec![sh.b, sh.lkv],
                    data: TensorData::I32(doc_ids(&mut r, sh.b, sh.lkv, 4, true)),
                }],
            };
            match check_gpu_table(dev, &wrap, sh, &bind, *qb, *kvb, 8) {
                Ok(c) => total = (total.0 + c.0, total.1 + c.1, total.2 + c.2),
                Err(e) => failures.push(format!("wrap_doc off {off} {sh:?}: {e}")),
            }
        }
    }
    // the cases exercise every kind of block
    assert!(
        total.0 > 0 && total.1 > 0 && total.2 > 0,
        "block kinds seen (empty, partial, full): {total:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn compile(src: &str) -> Program {
    attnc_compiler::compile_source(src)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .programs
        .remove(0)
}

/// Closed-form masks beyond causal and sliding: empty first rows, empty last rows, a
/// steeper band with a param; with the param value each is run with.
fn closed_form_programs() -> Vec<(Program, Vec<Scalar>)> {
    vec![
        // rows q < 5 see nothing (empty rows at the start of the first q block)
        (
            compile("mask m(b, h, q, kv) { q - kv >= 5 } attention late_start { mask = m; }"),
            vec![],
        ),
        // rows q >= Lkv - 6 see nothing
        (
            compile("mask m(b, h, q, kv) { kv > q + 5 } attention strictly_ahead { mask = m; }"),
            vec![],
        ),
        // position biases (`PtxOptions::pos_bias`): `±q ± kv + k` other than ALiBi's
        // `kv - q`, the constant factor before or after the conversion
        (
            compile(
                "mask m(b, h, q, kv) { q - kv >= 5 } \
                 score sb(s, b, h, q, kv) { s + (q - kv + 3) as f32 * -0.25 } \
                 attention late_start_bias { mask = m; score = sb; }",
            ),
            vec![],
        ),
        (
            compile(
                "mask m(b, h, q, kv) { kv > q + 5 } \
                 score sb(s, b, h, q, kv) { s + ((h + 1) as f32 * 0.03125) * (kv + 7) as f32 } \
                 attention strictly_ahead_bias { mask = m; score = sb; }",
            ),
            vec![],
        ),
        (
            compile(
                "param off: i32; mask m(b, h, q, kv) { 2 * kv <= 3 * q + off && kv + 70 >= q } \
                 attention band { mask = m; }",
            ),
            vec![Scalar::I32(-40)],
        ),
    ]
}

fn gpu_closed_form_matches_oracle(dev: &CudaDevice) {
    // odd lengths, Lq < Lkv and Lq > Lkv, GQA, D 64 and 128, 1 and 2 m-tiles (cases())
    let mut failures = Vec::new();
    for (ci, c) in cases().iter().enumerate() {
        for (p, params) in closed_form_programs() {
            let bind = Bindings {
                params,
                tensors: vec![],
            };
            let opts = PtxOptions::new(dev.arch(), c.shape.d as u32, c.shape.dv as u32, c.ty);
            assert!(
                emit(&p, &opts).unwrap().kv_bounds.is_closed_form(),
                "{}: expected the closed-form path",
                p.name
            );
            if let Err(e) = check_one(dev, &p, c, &bind, None, 30 + ci as u64) {
                failures.push(format!("{} case {ci} ({:?}): {e}", p.name, c.shape));
            }
            // the same mask through the block table
            let maps = interp_maps(&p, &c.shape, &bind, c.qb as usize, c.kvb as usize);
            if let Err(e) = check_table(dev, &p, c, &bind, maps, 30 + ci as u64) {
                failures.push(format!("{} (table) case {ci} ({:?}): {e}", p.name, c.shape));
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

/// Score tensor reads that are one element over a thread's box of positions, read once
/// (`PtxOptions::uniform_reads`, the forward's uniform-read path, on in `for_binding` since session 39) on every
/// matrix path this device runs (`paths`: mma.sync, wgmma, the warp-specialized kernel),
/// for each program of `gpu_util/uniform_reads.attn` (one per interval rule of
/// `backend::llvm::uniform`) against the oracle: rows long enough that most blocks read
/// one table element, odd lengths, Lq != Lkv, GQA, D 64 / 128, bf16 and f16.
fn gpu_uniform_reads_match_oracle(dev: &CudaDevice) {
    let c = attnc::Compiled::from_source(
        "uniform_reads.attn",
        include_str!("gpu_util/uniform_reads.attn"),
    )
    .unwrap();
    let s = |b, hq, hkv, lq, lkv, d| Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    };
    let case = |shape, ty, qb| Case {
        shape,
        ty,
        qb,
        kvb: qb,
        mt: 1,
    };
    let cases = [
        case(s(1, 4, 2, 1000, 777, 128), InputType::Bf16, 128),
        case(s(2, 2, 1, 517, 903, 64), InputType::F16, 128),
        case(s(1, 3, 1, 901, 1000, 64), InputType::Bf16, 64),
    ];
    let (mut failures, mut ran) = (Vec::new(), 0);
    for name in c.names() {
        let p = c.attention(name).unwrap().program().clone();
        for (ci, cs) in cases.iter().enumerate() {
            let seed = 60 + ci as u64;
            let bind = bindings(&p, &cs.shape, &mut rng(seed), 37, 4);
            for o in paths(dev, cs) {
                let o = PtxOptions {
                    uniform_reads: true,
                    ..o
                };
                ran += 1;
                let scale = cs.shape.default_scale();
                if let Err(e) = check_opts(dev, &p, cs, &bind, None, seed, scale, &o) {
                    failures.push(format!("{name} case {ci} ({}): {e}", o.key()));
                }
            }
        }
    }
    println!("  {ran} kernels, {} failed", failures.len());
    assert!(ran > 0, "no kernel ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `Bound::forward` on the CUDA backend for the document examples: the table built on the
/// GPU (the default) and on the host (`gpu_block_tables` off) both match the oracle, and
/// the bench's device table timing is reported only for the GPU path.
fn gpu_forward_with_gpu_tables_matches_oracle(dev: &CudaDevice) {
    let _ = dev;
    let compiled = Compiled::from_source("t.attn", TABLE_SOURCES).expect("compiles");
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 259,
        lkv: 390,
        d: 64,
        dv: 64,
    };
    let mut r = rng(21);
    let q = Tensor::from_f32_as(
        vec![shape.b, shape.hq, shape.lq, shape.d],
        &(0..shape.q_len())
            .map(|_| r.random_range(-2.0..2.0))
            .collect::<Vec<f32>>(),
        DType::BF16,
    );
    let k = Tensor::from_f32_as(
        vec![shape.b, shape.hkv, shape.lkv, shape.d],
        &(0..shape.k_len())
            .map(|_| r.random_range(-2.0..2.0))
            .collect::<Vec<f32>>(),
        DType::BF16,
    );
    let v = Tensor::from_f32_as(
        vec![shape.b, shape.hkv, shape.lkv, shape.dv],
        &(0..shape.v_len())
            .map(|_| r.random_range(-1.0..1.0))
            .collect::<Vec<f32>>(),
        DType::BF16,
    );
    let doc = doc_ids(&mut r, shape.b, shape.lkv, 6, false);
    let qdoc = doc_ids(&mut r, shape.b, shape.lq, 6, false);
    let w: Vec<f32> = (0..shape.b * shape.lkv)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    for name in [
        "doc_causal",
        "doc_or_prefix_causal",
        "head_doc",
        "cross_doc",
        "weight_param",
    ] {
        let variant = compiled.attention(name).unwrap();
        // exactly the captures this attention declares
        let mut caps = Captures::default();
        for t in &variant.program().tensors {
            caps = match t.name.as_str() {
                "doc" => caps.tensor("doc", Tensor::from_i32(vec![shape.b, shape.lkv], &doc)),
                "qdoc" => caps.tensor("qdoc", Tensor::from_i32(vec![shape.b, shape.lq], &qdoc)),
                "w" => caps.tensor("w", Tensor::from_f32(vec![shape.b, shape.lkv], &w)),
                other => panic!("no data for {other}"),
            };
        }
        for prm in &variant.program().params {
            caps = match prm.name.as_str() {
                "window" => caps.param("window", ParamValue::I32(50)),
                "prefix" => caps.param("prefix", ParamValue::I32(9)),
                "thr" => caps.param("thr", ParamValue::F32(0.1)),
                other => panic!("no value for {other}"),
            };
        }
        let mut want = None;
        for gpu_tables in [true, false] {
            let mut opts = BindOptions::new(Backend::Cuda, shape, DType::BF16);
            opts.gpu_block_tables = gpu_tables;
            let mut bound = variant.bind(opts).unwrap();
            let out = bound.forward(&q, &k, &v, &caps).unwrap();
            let oracle = want.get_or_insert_with(|| {
                let mut ro = BindOptions::new(Backend::Reference, shape, DType::BF16);
                ro.gpu_block_tables = false;
                let mut rb = variant.bind(ro).unwrap();
                rb.forward(&q, &k, &v, &caps).unwrap()
            });
            let want_out = reference::Output {
                o: oracle.o.to_f32(),
                lse: oracle.lse.to_f32(),
            };
            let worst = compare_bf16(&out.o.to_f32(), &out.lse.to_f32(), &want_out, shape.dv)
                .unwrap_or_else(|e| panic!("{name} gpu_block_tables={gpu_tables}: {e}"));
            let t = bound.block_table_time_ms(&q, &k, &v, &caps, 2).unwrap();
            assert_eq!(t.is_some(), gpu_tables, "{name}: table timing");
            println!(
                "  ok {name} gpu_block_tables={gpu_tables}: max |dO| {worst:.2e}, table {t:?} ms"
            );
        }
    }
}

/// Document masks over packed sequences for the document-tiled forward: (source).
const DOC_TILE_SOURCES: &str = r#"
tensor doc: i32[B, KV];
param window: i32;
mask causal(b, h, q, kv) { q >= kv }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
mask local(b, h, q, kv) { q - kv <= window }
score alibi(s, b, h, q, kv) { s + 0.0625 * (kv - q) as f32 }
score at_row(s, b, h, q, kv) { s + 0.25 * (q % 7) as f32 - 0.125 * (kv % 5) as f32 }
attention doc_only { mask = same_doc; }
attention doc_causal { mask = causal & same_doc; }
attention doc_sliding_causal { mask = causal & local & same_doc; }
attention doc_alibi_causal { mask = causal & same_doc; score = alibi; }
attention doc_at_row { mask = same_doc & causal; score = at_row; }
"#;

/// The document-tiled forward (`BindOptions::doc_tiles`, `PtxOptions::doc_tiles`) through
/// `Bound::forward` against the oracle: document masks with and without a causal / window
/// part and scores over absolute positions, documents of random lengths (many shorter
/// than a tile, one of a single row, some longer than several tiles), GQA, odd lengths,
/// D64 / D128, bf16 / f16; every such call runs the document-tiled kernel
/// (`doc_tile_calls`), while ids that come back after another document (not
/// contiguous) and a binding without the option run the binding's own kernel, also
/// against the oracle.
fn gpu_doc_tiles_match_oracle(dev: &CudaDevice) {
    let _ = dev;
    let compiled = Compiled::from_source("docs.attn", DOC_TILE_SOURCES).expect("compiles");
    let shape = |b, hq, hkv, l, d| Shape {
        b,
        hq,
        hkv,
        lq: l,
        lkv: l,
        d,
        dv: d,
    };
    let cases = [
        (shape(2, 4, 2, 1000, 128), DType::BF16, 6),
        (shape(1, 3, 1, 517, 64), DType::F16, 40),
        (shape(2, 2, 2, 300, 128), DType::F16, 1),
        (shape(1, 2, 1, 1537, 128), DType::BF16, 3),
        (shape(3, 2, 1, 129, 64), DType::BF16, 129),
    ];
    let mut ran = 0;
    for (ci, &(sh, dtype, docs)) in cases.iter().enumerate() {
        let mut r = rng(500 + ci as u64);
        let rand = |r: &mut rand::rngs::StdRng, n: usize, a: f32| {
            (0..n).map(|_| r.random_range(-a..a)).collect::<Vec<f32>>()
        };
        let q = Tensor::from_f32_as(
            vec![sh.b, sh.hq, sh.lq, sh.d],
            &rand(&mut r, sh.q_len(), 2.0),
            dtype,
        );
        let k = Tensor::from_f32_as(
            vec![sh.b, sh.hkv, sh.lkv, sh.d],
            &rand(&mut r, sh.k_len(), 2.0),
            dtype,
        );
        let v = Tensor::from_f32_as(
            vec![sh.b, sh.hkv, sh.lkv, sh.dv],
            &rand(&mut r, sh.v_len(), 1.0),
            dtype,
        );
        // sorted ids: packed documents; one batch row of the first case with a
        // single-row document at the start; unsorted: ids that come back
        let mut packed = doc_ids(&mut r, sh.b, sh.lkv, docs, true);
        if ci == 0 {
            packed[0] = -1;
        }
        let unsorted = doc_ids(&mut r, sh.b, sh.lkv, docs.max(2), false);
        for name in compiled.names() {
            let variant = compiled.attention(name).unwrap();
            for (ids, tiled) in [(&packed, true), (&unsorted, false)] {
                let mut caps =
                    Captures::default().tensor("doc", Tensor::from_i32(vec![sh.b, sh.lkv], ids));
                if variant.program().params.iter().any(|p| p.name == "window") {
                    caps = caps.param("window", ParamValue::I32(150));
                }
                let mut ro = BindOptions::new(Backend::Reference, sh, dtype);
                ro.gpu_block_tables = false;
                let oracle = variant
                    .bind(ro)
                    .unwrap()
                    .forward(&q, &k, &v, &caps)
                    .unwrap();
                let want = reference::Output {
                    o: oracle.o.to_f32(),
                    lse: oracle.lse.to_f32(),
                };
                for on in [true, false] {
                    let mut opts = BindOptions::new(Backend::Cuda, sh, dtype);
                    opts.doc_tiles = on;
                    let mut bound = variant.bind(opts).unwrap();
                    let out = bound.forward(&q, &k, &v, &caps).unwrap();
                    let what = format!("{name} case {ci} packed {tiled} doc_tiles {on}");
                    let worst = compare_bf16(&out.o.to_f32(), &out.lse.to_f32(), &want, sh.dv)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    // (document tiles run where `L`'s program binds the warp-specialized
                    // kernel: D128 here; at D64 the plain wgmma kernel runs masks)
                    let calls = bound.doc_tile_calls().unwrap();
                    let tiles = on && tiled && sh.d == 128;
                    assert_eq!(calls, tiles as u64, "{what}: document-tiled calls");
                    ran += 1;
                    if on {
                        println!("  ok {what}: max |dO| {worst:.2e}");
                    }
                }
            }
        }
    }
    assert!(ran >= 80, "{ran}");
}

/// `Bound::forward` keeps the GPU-built table of a call and reuses it while the mask's
/// captured tensors and params are unchanged (`gpu_table_counts` = (built, reused)); a
/// changed document id, a changed window (negative included: every row empty) rebuild,
/// new q/k/v alone do not; every call matches the oracle. doc_sliding_causal, Lq < Lkv,
/// GQA, unsorted documents (mostly partial tiles) and sorted ones (empty and full tiles,
/// where a stale table would skip or not mask blocks).
fn gpu_forward_reuses_and_rebuilds_tables(dev: &CudaDevice) {
    let _ = dev;
    let compiled = Compiled::from_source("t.attn", TABLE_SOURCES).expect("compiles");
    let variant = compiled.attention("doc_sliding_causal").unwrap();
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 300,
        lkv: 390,
        d: 64,
        dv: 64,
    };
    let mut r = rng(33);
    let mut input = |n: Vec<usize>, amp: f32| {
        let len: usize = n.iter().product();
        Tensor::from_f32_as(
            n,
            &(0..len)
                .map(|_| r.random_range(-amp..amp))
                .collect::<Vec<f32>>(),
            DType::BF16,
        )
    };
    let q = input(vec![shape.b, shape.hq, shape.lq, shape.d], 2.0);
    let q2 = input(vec![shape.b, shape.hq, shape.lq, shape.d], 2.0);
    let k = input(vec![shape.b, shape.hkv, shape.lkv, shape.d], 2.0);
    let v = input(vec![shape.b, shape.hkv, shape.lkv, shape.dv], 1.0);
    let mut oracle = variant
        .bind(BindOptions::new(Backend::Reference, shape, DType::BF16))
        .unwrap();
    for sorted in [false, true] {
        let mut r = rng(34 + sorted as u64);
        let doc = doc_ids(&mut r, shape.b, shape.lkv, 6, sorted);
        let mut doc2 = doc.clone();
        // one id in batch 1 moved to another document
        doc2[shape.lkv + 150] = (doc2[shape.lkv + 150] + 1) % 6;
        let caps = |d: &[i32], window: i32| {
            Captures::default()
                .tensor("doc", Tensor::from_i32(vec![shape.b, shape.lkv], d))
                .param("window", ParamValue::I32(window))
        };
        let mut opts = BindOptions::new(Backend::Cuda, shape, DType::BF16);
        opts.gpu_block_tables = true;
        let mut bound = variant.bind(opts).unwrap();
        // (step, q, captures, (built, reused) after the call)
        let steps: Vec<(&str, &Tensor, Captures, (u64, u64))> = vec![
            ("first call", &q, caps(&doc, 50), (1, 0)),
            ("same inputs", &q, caps(&doc, 50), (1, 1)),
            ("one doc id changed", &q, caps(&doc2, 50), (2, 1)),
            ("same again", &q, caps(&doc2, 50), (2, 2)),
            ("window 7", &q, caps(&doc2, 7), (3, 2)),
            ("window -3 (every row empty)", &q, caps(&doc2, -3), (4, 2)),
            ("back to the first inputs", &q, caps(&doc, 50), (5, 2)),
            ("new q only", &q2, caps(&doc, 50), (5, 3)),
        ];
        for (what, qq, c, counts) in steps {
            let out = bound
                .forward(qq, &k, &v, &c)
                .unwrap_or_else(|e| panic!("sorted={sorted} {what}: {e}"));
            let want = oracle.forward(qq, &k, &v, &c).unwrap();
            let want = reference::Output {
                o: want.o.to_f32(),
                lse: want.lse.to_f32(),
            };
            let worst = compare_bf16(&out.o.to_f32(), &out.lse.to_f32(), &want, shape.dv)
                .unwrap_or_else(|e| panic!("sorted={sorted} {what}: {e}"));
            assert_eq!(
                bound.gpu_table_counts(),
                Some(counts),
                "sorted={sorted} {what}: (built, reused)"
            );
            println!(
                "  ok sorted={sorted} {what}: (built, reused) {counts:?}, max |dO| {worst:.2e}"
            );
        }
        // the bench's build timing builds into its own table and leaves the kept one alone
        let t = bound
            .block_table_time_ms(&q, &k, &v, &caps(&doc2, 50), 2)
            .unwrap();
        assert!(t.is_some());
        let out = bound.forward(&q, &k, &v, &caps(&doc, 50)).unwrap();
        assert_eq!(bound.gpu_table_counts(), Some((5, 4)), "after timing");
        let want = oracle.forward(&q, &k, &v, &caps(&doc, 50)).unwrap();
        let want = reference::Output {
            o: want.o.to_f32(),
            lse: want.lse.to_f32(),
        };
        compare_bf16(&out.o.to_f32(), &out.lse.to_f32(), &want, shape.dv)
            .unwrap_or_else(|e| panic!("sorted={sorted} after timing: {e}"));
    }
}

/// Checked mode with the table built on the GPU: the builder evaluates every point and
/// records the first out-of-range mask read (doc[b, q] with Lq > Lkv) like the attention
/// kernel; the fast mode clamps and succeeds.
fn gpu_checked_mode_with_gpu_tables(dev: &CudaDevice) {
    let _ = dev;
    let compiled = Compiled::from_source("t.attn", TABLE_SOURCES).expect("compiles");
    let variant = compiled.attention("doc_only").unwrap();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 100,
        lkv: 60,
        d: 64,
        dv: 64,
    };
    let zeros = |n: Vec<usize>| {
        let len: usize = n.iter().product();
        Tensor::from_f32_as(n, &vec![0.5f32; len], DType::BF16)
    };
    let (q, k, v) = (
        zeros(vec![1, 1, 100, 64]),
        zeros(vec![1, 1, 60, 64]),
        zeros(vec![1, 1, 60, 64]),
    );
    let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![1, 60], &[1; 60]));
    for checked in [true, false] {
        let mut opts = BindOptions::new(Backend::Cuda, shape, DType::BF16);
        opts.checked = checked;
        opts.gpu_block_tables = true;
        let mut bound = variant.bind(opts).unwrap();
        let res = bound.forward(&q, &k, &v, &caps);
        if checked {
            match res {
                Err(attnc::Error::OutOfBounds { message, .. }) => {
                    assert!(message.contains("`doc`"), "{message}");
                    println!("  ok checked: {message}");
                }
                Err(e) => panic!("checked mode: expected an out-of-range report, got {e}"),
                Ok(_) => panic!("checked mode: expected an out-of-range report, got a result"),
            }
        } else {
            let out = res.expect("fast mode clamps");
            assert!(out.lse.to_f32().iter().all(|x| !x.is_nan()));
        }
    }
}

fn gpu_closed_form_param_changes_without_recompiling(dev: &CudaDevice) {
    // one loaded sliding-window kernel, the window changed between launches (0 and
    // negative windows: every row empty, O = 0 and LSE = -inf)
    let p = samples::sliding();
    for (shape, d, ty, qb, mt) in [
        ((1, 4, 2, 200, 333), 64, InputType::Bf16, 64, 1),
        ((2, 2, 1, 257, 130), 128, InputType::F16, 128, 2),
    ] {
        let c = Case {
            shape: Shape {
                b: shape.0,
                hq: shape.1,
                hkv: shape.2,
                lq: shape.3,
                lkv: shape.4,
                d,
                dv: d,
            },
            ty,
            qb,
            kvb: 64,
            mt,
        };
        for opts in paths(dev, &c) {
            let k = emit(&p, &opts).unwrap();
            assert!(k.kv_bounds.is_closed_form());
            let kern = CudaKernel::load(dev, &k).unwrap();
            for window in [1, 64, 0, 65, 200, -3, 1000, 7] {
                let bind = Bindings {
                    params: vec![Scalar::I32(window)],
                    tensors: vec![],
                };
                run_vs_oracle(dev, &kern, &p, &c, &bind, None, 5, c.shape.default_scale())
                    .unwrap_or_else(|e| {
                        panic!("window {window} {:?} {:?}: {e}", c.shape, opts.mma)
                    });
            }
        }
    }
}

fn gpu_closed_form_fallback_and_mismatches(dev: &CudaDevice) {
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 150,
        lkv: 190,
        d: 64,
        dv: 64,
    };
    let c = Case {
        shape,
        ty: InputType::Bf16,
        qb: 64,
        kvb: 64,
        mt: 1,
    };
    // `q - kv - w` wraps in i32 for w near i32::MIN: the host does not trust the closed
    // form and the kernel visits every block as partial (the mask with wrapping
    // arithmetic, as the oracle evaluates it)
    let p = compile(
        "param w: i32; mask m(b, h, q, kv) { q - kv - w >= 0 } attention wrap { mask = m; }",
    );
    let opts = PtxOptions::new(dev.arch(), 64, 64, InputType::Bf16);
    let k = emit(&p, &opts).unwrap();
    assert!(k.kv_bounds.is_closed_form());
    let kern = CudaKernel::load(dev, &k).unwrap();
    for w in [i32::MIN + 100, 3, -20] {
        let bind = Bindings {
            params: vec![Scalar::I32(w)],
            tensors: vec![],
        };
        let KvBounds::ClosedForm(cf) = &k.kv_bounds else {
            unreachable!()
        };
        let trusted = closed_form_bounds(&p, cf, &shape, &bind).unwrap().is_some();
        assert_eq!(trusted, w != i32::MIN + 100, "w = {w}");
        run_vs_oracle(dev, &kern, &p, &c, &bind, None, 8, shape.default_scale())
            .unwrap_or_else(|e| panic!("w = {w}: {e}"));
    }
    // every block partial on purpose (KvBlocks::ClosedForm(None)) on causal
    let causal = samples::causal();
    let kc = CudaKernel::load(dev, &emit(&causal, &opts).unwrap()).unwrap();
    let mut r = rng(2);
    let (qb, qf) = random_input(&mut r, shape.q_len(), 2.0, c.ty);
    let (kb, kf) = random_input(&mut r, shape.k_len(), 2.0, c.ty);
    let (vb, vf) = random_input(&mut r, shape.v_len(), 1.0, c.ty);
    let none = Bindings::default();
    let scale = shape.default_scale();
    let (o, lse) = kc
        .forward_host(
            dev,
            &shape,
            &qb,
            &kb,
            &vb,
            scale,
            &none,
            KvBlocks::ClosedForm(None),
        )
        .unwrap();
    let want = reference::attention(&causal, &shape, &qf, &kf, &vf, scale, &none).unwrap();
    for (g, w) in o.iter().zip(&want.o) {
        let g = from_bits(*g, c.ty);
        assert!((g - w).abs() <= 0.03 + 0.02 * w.abs(), "O {g} vs {w}");
    }
    for (g, w) in lse.iter().zip(&want.lse) {
        assert!((g - w).abs() <= 0.01 + 0.005 * w.abs(), "LSE {g} vs {w}");
    }
    // the wrong kind of kv blocks is a clean error, never a launch
    let maps = BlockMaps::single(BlockMap::dense(150, 190, 64, 64));
    let e = kc
        .forward_host(
            dev,
            &shape,
            &qb,
            &kb,
            &vb,
            scale,
            &none,
            KvBlocks::Maps(&maps),
        )
        .unwrap_err();
    assert!(matches!(e, CudaError::Mismatch(_)), "{e}");
    let kt = CudaKernel::load(
        dev,
        &emit(
            &causal,
            &PtxOptions {
                kv_table: true,
                ..opts
            },
        )
        .unwrap(),
    )
    .unwrap();
    let e = kt
        .forward_host(
            dev,
            &shape,
            &qb,
            &kb,
            &vb,
            scale,
            &none,
            KvBlocks::ClosedForm(None),
        )
        .unwrap_err();
    assert!(matches!(e, CudaError::Mismatch(_)), "{e}");
}

fn gpu_api_closed_form_and_table_agree_with_reference(dev: &CudaDevice) {
    // through the runtime (bind once, forward with a changed param): the CUDA backend
    // (closed form for sliding_window, table for prefix_lm) against the reference backend
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue};
    let _ = dev;
    let shape = attnc::Shape {
        b: 1,
        hq: 4,
        hkv: 2,
        lq: 190,
        lkv: 221,
        d: 64,
        dv: 64,
    };
    let (q, k, v) = attnc::synth::qkv(&shape, DType::BF16, 3);
    for (file, param) in [
        ("sliding_window.attn", "window"),
        ("prefix_lm.attn", "prefix"),
    ] {
        let path = gpu_util::examples_dir().join(file);
        let compiled = Compiled::from_file(&path).unwrap();
        let variant = compiled.select(None).unwrap();
        let mut gpu = variant
            .bind(BindOptions::new(Backend::Cuda, shape, DType::BF16))
            .unwrap();
        let expect_closed = file == "sliding_window.attn";
        assert_eq!(
            gpu.kv_bounds().map(|k| k.is_closed_form()),
            Some(expect_closed),
            "{file}"
        );
        let mut reference = variant
            .bind(BindOptions::new(Backend::Reference, shape, DType::BF16))
            .unwrap();
        for value in [16, 0, 100, -1, 300] {
            let caps = Captures::default().param(param, ParamValue::I32(value));
            let got = gpu.forward(&q, &k, &v, &caps).unwrap();
            let want = reference.forward(&q, &k, &v, &caps).unwrap();
            for (g, w) in got.o.to_f32().iter().zip(want.o.to_f32()) {
                assert!(
                    (g - w).abs() <= 0.03 + 0.02 * w.abs(),
                    "{file} {param}={value}: O {g} vs {w}"
                );
            }
            for (g, w) in got.lse.to_f32().iter().zip(want.lse.to_f32()) {
                let ok = if w.is_infinite() {
                    *g == w
                } else {
                    (g - w).abs() <= 0.01 + 0.005 * w.abs()
                };
                assert!(ok, "{file} {param}={value}: LSE {g} vs {w}");
            }
        }
        // a missing param is a clean error naming it
        let e = gpu
            .forward(&q, &k, &v, &Captures::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("E0301") && e.contains(param), "{file}: {e}");
    }
}

/// The last tiles split along kv (`PtxOptions::tail_split`) through the runtime, the
/// whole call users make: dense D128 (GQA) and dense D64 (three consumers, q blocks of
/// 192), bound with the runtime's default (session 18: the split is on for both;
/// `ATTNC_FWD_TAIL=0` turns it off and the check below then fails), and a sliding window
/// at D128 (split only with `ATTNC_FWD_TAIL=1`: bands count a tile's units from its
/// first block), on all of the device's SMs at shapes whose tiles leave a remainder (a round
/// of whole tiles and then the split, or the split alone), Lq != Lkv and kv lengths
/// off the blocks. Against the CPU backend, and a second call bit-for-bit the first
/// (the parts merge in a fixed order; every tile's count is zeroed for the next launch).
fn gpu_api_tail_split_matches_cpu(dev: &CudaDevice) {
    if dev.arch() != Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    let sms = dev.sms() as usize;
    // (tiles = B Hq ceil(Lq / q_block): 2 G + 36 and G + 12 on 132 SMs)
    let cases = [
        ("dense.attn", None, 2, 10, 5, 128, 128, 390, 2 * sms + 36),
        ("dense.attn", None, 1, 12, 4, 128, 128, 700, sms + 12),
        ("dense.attn", None, 2, 6, 3, 64, 192, 333, 2 * sms + 36),
        (
            "sliding_window.attn",
            Some(300),
            2,
            10,
            5,
            128,
            128,
            0,
            2 * sms + 36,
        ),
    ];
    let forced = std::env::var("ATTNC_FWD_TAIL").is_ok_and(|v| v == "1");
    for (file, window, b, hq, hkv, d, qb, lkv, tiles) in cases {
        // Lq: the q blocks that make `tiles`, the last one partial
        let nqb = tiles.div_ceil(b * hq);
        let lq = nqb * qb - 7;
        let lkv = if lkv == 0 { lq } else { lkv };
        let shape = attnc::Shape {
            b,
            hq,
            hkv,
            lq,
            lkv,
            d,
            dv: d,
        };
        let (q, k, v) = attnc::synth::qkv(&shape, DType::BF16, 11);
        let compiled = Compiled::from_file(&gpu_util::examples_dir().join(file)).unwrap();
        let variant = compiled.select(None).unwrap();
        let mut gpu = variant
            .bind(BindOptions::new(Backend::Cuda, shape, DType::BF16))
            .unwrap();
        let o = gpu.cuda_forward_options().unwrap();
        assert!(
            (window.is_some() && !forced) || (o.tail_split && o.persistent && !o.dynamic_tiles),
            "{file} D{d}: the binding's kernel does not split its last tiles: {}",
            o.key()
        );
        assert_eq!(o.q_block as usize, qb, "{file} D{d}");
        let mut cpu = variant
            .bind(BindOptions::new(Backend::Cpu, shape, DType::BF16))
            .unwrap();
        let caps = match window {
            Some(w) => Captures::default().param("window", ParamValue::I32(w)),
            None => Captures::default(),
        };
        let got = gpu.forward(&q, &k, &v, &caps).unwrap();
        let again = gpu.forward(&q, &k, &v, &caps).unwrap();
        let want = cpu.forward(&q, &k, &v, &caps).unwrap();
        let what = format!("{file} {shape:?}");
        let (go, ao) = (got.o.to_f32(), again.o.to_f32());
        assert!(
            go.iter().zip(&ao).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: a second call differs"
        );
        let mut worst = 0.0f32;
        for (g, w) in go.iter().zip(want.o.to_f32()) {
            assert!(
                (g - w).abs() <= 0.03 + 0.02 * w.abs(),
                "{what}: O {g} vs {w}"
            );
            worst = worst.max((g - w).abs());
        }
        for (g, w) in got.lse.to_f32().iter().zip(want.lse.to_f32()) {
            let ok = if w.is_infinite() {
                *g == w
            } else {
                (g - w).abs() <= 0.01 + 0.005 * w.abs()
            };
            assert!(ok, "{what}: LSE {g} vs {w}");
        }
        println!("  {what}: {tiles} tiles on {sms} SMs, max |O - cpu| {worst:.4}");
    }
}

type TestFn = fn(&CudaDevice);

const TESTS: &[(&str, TestFn)] = &[
    ("gpu_samples_match_oracle", gpu_samples_match_oracle),
    (
        "gpu_uniform_reads_match_oracle",
        gpu_uniform_reads_match_oracle,
    ),
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
    (
        "gpu_block_tables_match_brute_force",
        gpu_block_tables_match_brute_force,
    ),
    (
        "gpu_forward_reuses_and_rebuilds_tables",
        gpu_forward_reuses_and_rebuilds_tables,
    ),
    (
        "gpu_forward_with_gpu_tables_matches_oracle",
        gpu_forward_with_gpu_tables_matches_oracle,
    ),
    (
        "gpu_checked_mode_with_gpu_tables",
        gpu_checked_mode_with_gpu_tables,
    ),
    ("gpu_doc_tiles_match_oracle", gpu_doc_tiles_match_oracle),
    (
        "gpu_closed_form_matches_oracle",
        gpu_closed_form_matches_oracle,
    ),
    (
        "gpu_closed_form_param_changes_without_recompiling",
        gpu_closed_form_param_changes_without_recompiling,
    ),
    (
        "gpu_closed_form_fallback_and_mismatches",
        gpu_closed_form_fallback_and_mismatches,
    ),
    (
        "gpu_api_closed_form_and_table_agree_with_reference",
        gpu_api_closed_form_and_table_agree_with_reference,
    ),
    // JIT: cubins through the disk cache, tiered swap (tests/gpu_jit/mod.rs)
    (
        "gpu_jit_cubin_round_trip",
        gpu_jit::gpu_jit_cubin_round_trip,
    ),
    ("gpu_lpt_order_matches_oracle", gpu_lpt_order_matches_oracle),
    (
        "gpu_persistent_matches_oracle",
        gpu_persistent_matches_oracle,
    ),
    (
        "gpu_q_from_end_matches_oracle",
        gpu_q_from_end_matches_oracle,
    ),
    (
        "gpu_tail_split_matches_oracle",
        gpu_tail_split_matches_oracle,
    ),
    (
        "gpu_api_tail_split_matches_cpu",
        gpu_api_tail_split_matches_cpu,
    ),
    (
        "gpu_cross_tile_matches_oracle",
        gpu_cross_tile_matches_oracle,
    ),
    ("gpu_q_ahead_matches_oracle", gpu_q_ahead_matches_oracle),
    ("gpu_o_tma_matches_oracle", gpu_o_tma_matches_oracle),
    (
        "gpu_late_wait_and_ilp_match_oracle",
        gpu_late_wait_and_ilp_match_oracle,
    ),
    ("gpu_d256_matches_oracle", gpu_d256_matches_oracle),
    ("gpu_jit_tiered_swap", gpu_jit::gpu_jit_tiered_swap),
    (
        "gpu_jit_warp_specialized_loads_from_ptx",
        gpu_jit::gpu_jit_warp_specialized_loads_from_ptx,
    ),
    (
        "gpu_jit_bound_forward_across_the_swap",
        gpu_jit::gpu_jit_bound_forward_across_the_swap,
    ),
];

fn main() {
    gpu_util::run_gpu_tests(TESTS)
}
