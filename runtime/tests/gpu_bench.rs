//! GPU benchmark (run explicitly: `gpu_bench -- --ignored --nocapture`): attnc kernels on
//! the FlexAttention anchor variants (dense, causal, sliding 1024, ALiBi+causal,
//! softcap+causal, document+causal with 8 sorted documents), bf16, at
//! B2 H16 L8192 D128 and B4 H16 L4096 D64 (`ATTNC_BENCH_DIMS=128,64,256,gqa` picks head
//! dims; D256 at B2 H16 L8192; `gqa`: B1 Hq32 Hkv8 L16384 D128). TFLOP/s counts only unmasked pairs
//! (4 B H Lq Lkv D density). Also the JIT latency: cold (PTX generated, compiled to the
//! optimized cubin by the driver, loaded), disk-warm (a new process's path: the cubin
//! from the disk cache, loaded) and memory-warm. Writes JSON to `$ATTNC_BENCH_JSON` (default `$OUT/attnc_bench.json`).
//! `ATTNC_BENCH_QUICK=1` runs only dense and causal, `ATTNC_BENCH_VARIANTS=full,causal,
//! alibi_causal` only the variants named; `ATTNC_BENCH_TILES=128x64,64x64`
//! picks the tile configurations tried on dense before the variants (best is kept).
//! Kernels take their own kv-bounds source (closed form for dense, causal, sliding,
//! ALiBi and softcap; block table for documents); `ATTNC_BENCH_KV_TABLE=1` forces the
//! block table everywhere, to compare the two.
//! `ATTNC_BENCH_EXTRA` lists tiles timed on every variant besides the dense winner and
//! the defaults. Tile letters: `w` wgmma, `o` overlap, `t`/`u` warp-specialized with 2/3
//! stages, `g` LPT order (`g4`: groups of 4 slices), `z` persistent CTAs (`y`: with the dynamic tile scheduler), `e` q blocks from the end (`PtxOptions::q_from_end`), `m` partial blocks without the kv bounds check (`PtxOptions::split_tail`), `d` two Q buffers (`PtxOptions::q_double`), `q` the last tiles split along kv (`PtxOptions::tail_split`, with `z`), `h` the next tile's first S with the last P V (`PtxOptions::cross_tile`, with `y`), `f` the next tile claimed early (`PtxOptions::early_claim`, with `y`), `A` the next tile's Q after this tile's first K and V (`PtxOptions::q_ahead`, with `yd`), `a` the wait for the last P V after the exponentials (`PtxOptions::pv_wait_late`), `b` the softmax's reductions over four chains (`PtxOptions::softmax_ilp`), `k` a partial block's mask evaluated before the wait for S (`PtxOptions::mask_early`), `v` a position bias score (ALiBi) in the IR's order, not in two FMAs an element (`PtxOptions::pos_bias` off; on by default with float positions, as the runtime binds it), `j` partial blocks by conjunct kind (`PtxOptions::mask_kinds`; a table kernel's table then built on the GPU by the builder of the same options, not from the host's maps), `c` 2 CTAs per SM, `r`/`s` Q in registers/shared, `n`/`p` K
//! prefetch off/on, `l` late sync, `i` positions converted per element (no
//! `float_positions`).

mod gpu_util;

use attnc::cache::DiskCache;
use attnc::cuda::{CudaKernel, JitCache, KvBlocks, LaunchArgs, Qkv};
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::classify::closed_form_bounds;
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::llvm::KvBounds;
use attnc_compiler::backend::llvm::{InputType, PtxOptions, samples};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use gpu_util::*;
use rand::Rng;
use std::fmt::Write as _;

struct Variant {
    name: &'static str,
    program: Program,
}

fn variants(h: i32) -> Vec<Variant> {
    vec![
        Variant {
            name: "full",
            program: samples::dense(),
        },
        Variant {
            name: "causal",
            program: samples::causal(),
        },
        Variant {
            name: "sliding1024",
            program: samples::sliding(),
        },
        Variant {
            name: "alibi_causal",
            program: samples::alibi_causal(h),
        },
        Variant {
            name: "softcap_causal",
            program: samples::softcap_causal(),
        },
        Variant {
            name: "doc_causal",
            program: samples::document_causal(),
        },
    ]
}

/// Options for tile `qb x kvb x mt` (`mt`: m-tiles per warp, then `r`/`s` to keep Q in
/// registers / re-read it from shared memory, `n`/`p` to turn the K prefetch off/on, `l` for the late V sync;
/// `w` alone or as a suffix: the wgmma path (sm_90), e.g. `128x64xw`, `128x128xwn`, and
/// `wo` for wgmma with the pipelined P V (`overlap`); `c`: at least 2 CTAs per SM; `t`
/// / `u`: the warp-specialized TMA kernel with 2 / 3 K/V stages, e.g. `128x128xt`; `g`:
/// the longest-first CTA order over groups of 8 slices, e.g. `128x128xtg`, or of the
/// digits after it, `128x128xtg4`; `z`: persistent CTAs, e.g. `128x128xtgz`; `y`:
/// persistent CTAs with the dynamic tile scheduler, e.g. `128x128xtgy`).
fn tile_opts(
    arch: attnc_compiler::backend::llvm::Arch,
    d: u32,
    ty: InputType,
    qb: u32,
    kvb: u32,
    mt: &str,
) -> PtxOptions {
    let n: u32 = mt
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or(1);
    let mut o = PtxOptions::sync(arch, d, d, ty).with_m_tiles(n);
    if mt.contains('w') {
        o = o.wgmma();
        o.overlap = mt.contains('o');
    }
    if mt.contains('t') || mt.contains('u') {
        // the warp-specialized TMA kernel, 2 (`t`) or 3 (`u`) K/V stages
        o = o.warp_specialized(kvb, if mt.contains('u') { 3 } else { 2 });
    }
    if let Some(at) = mt.find('g') {
        // the longest-first CTA order over groups of 8 (or the digits after `g`) (head,
        // batch) slices
        let digits: String = mt[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        o.lpt_group = digits.parse().unwrap_or(8);
    }
    if mt.contains('z') || mt.contains('y') {
        // persistent CTAs (the warp-specialized kernel); `y`: with the dynamic tile
        // scheduler
        o.persistent = true;
        o.dynamic_tiles = mt.contains('y');
    }
    if mt.contains('e') {
        // q blocks from the end (the partial one first)
        o.q_from_end = true;
    }
    if mt.contains('m') {
        // partial blocks inside the sequence without the kv bounds check
        o.split_tail = true;
    }
    if mt.contains('d') {
        // two Q buffers (persistent CTAs)
        o.q_double = true;
    }
    if mt.contains('q') {
        // the last tiles split along kv (persistent CTAs in static rounds, `z`)
        o.tail_split = true;
    }
    if mt.contains('f') {
        // the next tile claimed when a tile starts (the dynamic scheduler)
        o.early_claim = true;
    }
    if mt.contains('A') {
        // the next tile's Q after this tile's first K and V (the dynamic scheduler, two Q
        // buffers)
        o.q_ahead = true;
    }
    if mt.contains('h') {
        // the next tile's first S with this tile's last P V (the dynamic scheduler)
        o.cross_tile = true;
    }
    if mt.contains('a') {
        // the wait for the last P V after the exponentials' block
        o.pv_wait_late = true;
    }
    if mt.contains('b') {
        // the softmax's row max and sum over four chains per row
        o.softmax_ilp = true;
    }
    if mt.contains('k') {
        // a partial block's mask as keep bits before the wait for S
        o.mask_early = true;
    }
    if mt.contains('j') {
        // partial blocks by conjunct kind (the table built on the GPU)
        o.mask_kinds = true;
    }
    if mt.contains('c') {
        o.min_ctas = 2;
    }
    // positions converted as exact floats (the runtime's choice below 2^22 positions),
    // unless `i`: an integer-to-float conversion per element, as before
    o.float_positions = !mt.contains('i');
    // a position bias score (ALiBi) in two FMAs an element, bound with float positions as
    // the runtime does, unless `v`: the IR's order (`PtxOptions::pos_bias`)
    o.pos_bias = o.float_positions && !mt.contains('v');
    o.q_block = qb;
    o.kv_block = kvb;
    if mt.contains('r') {
        o.q_in_regs = true;
    } else if mt.contains('s') {
        o.q_in_regs = false;
    }
    if mt.contains('n') {
        o.k_prefetch = false;
    } else if mt.contains('p') {
        o.k_prefetch = true;
    }
    if mt.contains('l') {
        o.early_sync = false;
    }
    o.kv_table = std::env::var("ATTNC_BENCH_KV_TABLE").is_ok_and(|v| v == "1");
    o
}

/// The closed form's bounds of a launch of `kern` (`None` for a table kernel).
fn closed(
    kern: &CudaKernel,
    p: &Program,
    shape: &Shape,
    bind: &Bindings,
) -> Option<Option<Vec<Bound>>> {
    match &kern.meta().kv_bounds {
        KvBounds::ClosedForm(cf) => Some(closed_form_bounds(p, cf, shape, bind).unwrap()),
        KvBounds::Table => None,
    }
}

/// What a launch passes: the closed form's bounds, or `maps` for a table kernel.
fn blocks<'a>(closed: &'a Option<Option<Vec<Bound>>>, maps: &'a BlockMaps) -> KvBlocks<'a> {
    match closed {
        Some(b) => KvBlocks::ClosedForm(b.as_deref()),
        None => KvBlocks::Maps(maps),
    }
}

#[test]
#[ignore = "benchmark on the GPU machine: --ignored gpu_bench"]
fn gpu_bench() {
    let Some(dev) = device_or_skip("gpu_bench") else {
        return;
    };
    println!(
        "device: {} {:?} {}",
        dev.name(),
        dev.capability(),
        dev.arch()
    );
    let quick = std::env::var("ATTNC_BENCH_QUICK").is_ok();
    // q_block x kv_block x m-tiles per warp, then `r` (Q in registers) or `s` (Q re-read
    // from shared memory) to override the default
    let tiles: Vec<(u32, u32, String)> = std::env::var("ATTNC_BENCH_TILES")
        .unwrap_or_else(|_| {
            if dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90 {
                "128x64x2,128x128x2,64x64x1,128x64x1,128x64xw,128x128xw,128x64xwo,128x128xwo,128x128xt".into()
            } else {
                "128x64x2,128x128x2,64x64x1,128x64x1".into()
            }
        })
        .split(',')
        .filter_map(|t| {
            let mut it = t.split('x');
            let (a, b) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
            let _ = &mut it;
            let mt = t.splitn(3, 'x').nth(2).unwrap_or("1").to_string();
            Some((a, b, mt))
        })
        .collect();
    let cache_dir = std::env::temp_dir().join(format!("attnc-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let mut json = String::from("{\n");
    let mut table = String::new();
    // ATTNC_BENCH_DIMS=128,64,256: the head dims to run (D256 at B2 H16 L8192)
    let dims = std::env::var("ATTNC_BENCH_DIMS").unwrap_or_else(|_| "128,64".into());
    // (`gqa`: Llama-3's B1 Hq32 Hkv8 L16384 D128)
    let shapes: Vec<(usize, usize, usize, usize, usize)> = dims
        .split(',')
        .filter_map(|d| match d.trim() {
            "128" => Some((2, 16, 16, 8192, 128)),
            "64" => Some((4, 16, 16, 4096, 64)),
            "256" => Some((2, 16, 16, 8192, 256)),
            "gqa" => Some((1, 32, 8, 16384, 128)),
            _ => None,
        })
        .collect();
    for (b, h, hkv, l, d) in shapes {
        let shape = Shape {
            b,
            hq: h,
            hkv,
            lq: l,
            lkv: l,
            d,
            dv: d,
        };
        let mut r = rng(42);
        let ty = InputType::Bf16;
        let (q, _) = random_input(&mut r, shape.q_len(), 1.0, ty);
        let (k, _) = random_input(&mut r, shape.k_len(), 1.0, ty);
        let (v, _) = random_input(&mut r, shape.v_len(), 1.0, ty);
        let (qd, kd, vd) = (
            dev.upload_u16(&q).unwrap(),
            dev.upload_u16(&k).unwrap(),
            dev.upload_u16(&v).unwrap(),
        );
        // 8 sorted documents, as flex_anchors.py (per batch row)
        let docs: Vec<i32> = (0..b)
            .flat_map(|_| {
                let mut ids: Vec<i32> = (0..l).map(|_| r.random_range(0..8)).collect();
                ids.sort();
                ids
            })
            .collect();
        // pick the tile configuration on dense
        let mut best = (tiles[0].clone(), f64::INFINITY);
        if tiles.len() > 1 {
            for (qb, kvb, mt) in tiles.iter().cloned() {
                let opts = tile_opts(dev.arch(), d as u32, ty, qb, kvb, &mt);
                let Ok(kern) = emit(&samples::dense(), &opts)
                    .map_err(|e| println!("tile {qb}x{kvb}x{mt}: {e}"))
                    .and_then(|k| {
                        CudaKernel::load(&dev, &k)
                            .map_err(|e| println!("tile {qb}x{kvb}x{mt}: {e}"))
                    })
                else {
                    continue;
                };
                let maps = BlockMaps::single(attnc_compiler::analysis::blockmap::BlockMap::dense(
                    l,
                    l,
                    qb as usize,
                    kvb as usize,
                ));
                let cf = closed(&kern, &samples::dense(), &shape, &Bindings::default());
                let p = kern
                    .upload(
                        &dev,
                        &shape,
                        Qkv::Device(qd.clone(), kd.clone(), vd.clone()),
                        shape.default_scale(),
                        &Bindings::default(),
                        blocks(&cf, &maps),
                    )
                    .unwrap();
                let ms = kern.time(&dev, &p, &LaunchArgs::new(), 2, 5, 3).unwrap();
                let tf = 4.0 * (b * h * l * l * d) as f64 / ms / 1e9;
                if let Ok(dir) = std::env::var("ATTNC_PTX_DUMP") {
                    let _ = std::fs::create_dir_all(&dir);
                    if let Ok(k) = emit(&samples::dense(), &opts) {
                        let _ =
                            std::fs::write(format!("{dir}/tile_d{d}_{qb}x{kvb}x{mt}.ptx"), k.ptx);
                    }
                }
                println!("tile {qb}x{kvb}x{mt} D{d}: dense {ms:.3} ms {tf:.1} TFLOP/s");
                if ms < best.1 {
                    best = ((qb, kvb, mt), ms);
                }
            }
        }
        let (qb, kvb, mt) = best.0.clone();
        println!("using tile {qb}x{kvb}x{mt} for D{d}");
        for var in variants(h as i32) {
            if quick && !matches!(var.name, "full" | "causal") {
                continue;
            }
            // ATTNC_BENCH_VARIANTS=full,causal,...: only these variants
            if let Ok(only) = std::env::var("ATTNC_BENCH_VARIANTS")
                && !only.split(',').any(|v| v.trim() == var.name)
            {
                continue;
            }
            let p = &var.program;
            // bindings and block maps
            let mut bind = Bindings::default();
            let keep: Box<dyn Fn(usize, usize, usize, usize) -> bool> = match var.name {
                "full" => Box::new(|_, _, _, _| true),
                "sliding1024" => {
                    bind.params.push(Scalar::I32(1024));
                    Box::new(|_, _, q, kv| q >= kv && q - kv < 1024)
                }
                "doc_causal" => {
                    bind.tensors.push(BoundTensor {
                        dims: vec![b, l],
                        data: TensorData::I32(docs.clone()),
                    });
                    let docs = docs.clone();
                    Box::new(move |bb, _, q, kv| q >= kv && docs[bb * l + q] == docs[bb * l + kv])
                }
                _ => Box::new(|_, _, q, kv| q >= kv),
            };
            let per_b = var.name == "doc_causal";
            // device time of `kern` (tiles qb x kvb) on the resident inputs: its kv bounds
            // (closed form, or block maps by brute force) uploaded, then timed with events
            // (with `PtxOptions::mask_kinds` and a table: the table built on the GPU by
            // the builder of the same options, whose partial blocks carry their kinds)
            let time_kernel =
                |kern: &CudaKernel, o: &PtxOptions, qb: u32, kvb: u32, (warmup, iters, reps)| {
                    let maps =
                        brute_force_maps(&shape, qb as usize, kvb as usize, (per_b, false), &keep);
                    let cf = closed(kern, p, &shape, &bind);
                    let plan = Plan::new(p);
                    let build = cf.is_none() && o.mask_kinds && !plan.program().tensors.is_empty();
                    let kv = if build {
                        KvBlocks::Build {
                            uses_b: plan.mask().uses_b,
                            uses_h: plan.mask().uses_h,
                        }
                    } else {
                        blocks(&cf, &maps)
                    };
                    let prob = kern
                        .upload(
                            &dev,
                            &shape,
                            Qkv::Device(qd.clone(), kd.clone(), vd.clone()),
                            shape.default_scale(),
                            &bind,
                            kv,
                        )
                        .unwrap();
                    if build {
                        let builder =
                            CudaKernel::load(&dev, &emit_block_table(p, o).unwrap()).unwrap();
                        let skip = plan.skip_bounds(&shape, &bind).unwrap();
                        build_table(&dev, &builder, &prob, skip.as_deref()).unwrap();
                    }
                    kern.time(&dev, &prob, &LaunchArgs::new(), warmup, iters, reps)
                        .unwrap()
                };
            // the tile per variant: the dense winner and the two defaults, timed briefly
            let mut cands = vec![(qb, kvb, mt.clone())];
            // (ATTNC_BENCH_NO_DEFAULTS=1: only the dense winner and ATTNC_BENCH_EXTRA)
            let mut defaults = vec![(128, 64, "2".to_string()), (64, 64, "1".to_string())];
            if std::env::var("ATTNC_BENCH_NO_DEFAULTS").is_ok_and(|v| v == "1") {
                defaults.clear();
            }
            if dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90 && !defaults.is_empty() {
                // the API's default of this head dim: the warp-specialized kernel (`t`, its
                // 2 stages) or the plain wgmma one
                let o = PtxOptions::new(dev.arch(), d as u32, d as u32, ty);
                let kind = if o.ws { "t" } else { "w" };
                defaults.push((o.q_block, o.kv_block, kind.to_string()));
            }
            // ATTNC_BENCH_EXTRA=128x64xwc,...: more tiles timed on every variant
            for t in std::env::var("ATTNC_BENCH_EXTRA")
                .unwrap_or_default()
                .split(',')
            {
                let mut it = t.splitn(3, 'x');
                if let (Some(a), Some(b), Some(m)) = (it.next(), it.next(), it.next())
                    && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
                {
                    defaults.push((a, b, m.to_string()));
                }
            }
            for t in defaults {
                if !cands.contains(&t) {
                    cands.push(t);
                }
            }
            let mut vbest = (cands[0].clone(), f64::INFINITY);
            for (cq, ck, cm) in cands.iter().cloned() {
                let o = tile_opts(dev.arch(), d as u32, ty, cq, ck, &cm);
                let Ok(kern) = emit(p, &o)
                    .map_err(|e| e.to_string())
                    .and_then(|k| CudaKernel::load(&dev, &k).map_err(|e| e.to_string()))
                else {
                    continue;
                };
                let ms = time_kernel(&kern, &o, cq, ck, (2, 5, 3));
                println!("  {} D{d} tile {cq}x{ck}x{cm}: {ms:.3} ms", var.name);
                if ms < vbest.1 {
                    vbest = ((cq, ck, cm), ms);
                }
            }
            let (qb, kvb, mt) = vbest.0.clone();
            let opts = tile_opts(dev.arch(), d as u32, ty, qb, kvb, &mt);
            // JIT latency: cold (fresh disk cache), disk-warm (new in-memory cache), memory-warm
            let cold = JitCache::new(Some(DiskCache::new(&cache_dir)));
            let (kern, s_cold) = jit_forward(&cold, &dev, p, &opts).unwrap();
            if let Ok(dir) = std::env::var("ATTNC_PTX_DUMP") {
                let _ = std::fs::create_dir_all(&dir);
                let k = emit(p, &opts).unwrap();
                let _ = std::fs::write(
                    format!("{dir}/{}_d{d}_{qb}x{kvb}x{mt}.ptx", var.name),
                    k.ptx,
                );
            }
            let warm_disk = JitCache::new(Some(DiskCache::new(&cache_dir)));
            let (_, s_disk) = jit_forward(&warm_disk, &dev, p, &opts).unwrap();
            let (_, s_mem) = jit_forward(&warm_disk, &dev, p, &opts).unwrap();
            let kv_name = kern.meta().kv_bounds.name();
            // density over unmasked pairs (exact, batch-averaged)
            let mut kept = 0u64;
            for bb in 0..if per_b { b } else { 1 } {
                for q in 0..l {
                    for kv in 0..l {
                        kept += keep(bb, 0, q, kv) as u64;
                    }
                }
            }
            let density = kept as f64 / (l * l * if per_b { b } else { 1 }) as f64;
            let ms = time_kernel(&kern, &opts, qb, kvb, (3, 10, 5));
            let tf = 4.0 * (b * h * l * l * d) as f64 * density / ms / 1e9;
            let kvh = if hkv == h {
                String::new()
            } else {
                format!("Hkv{hkv}")
            };
            let key = format!("attnc/{}/B{b}H{h}{kvh}S{l}D{d}", var.name);
            let tile = format!("{qb}x{kvb}x{mt}");
            println!(
                "{key} {ms:.3} ms {tf:.1} TFLOP/s density {density:.4} kv {kv_name} | JIT cold {:.1} ms (codegen {:.1}, driver {:.1}, load {:.1}), disk-warm (cubin) {:.1} ms, memory-warm {:.3} ms",
                s_cold.total_ms,
                s_cold.codegen_ms,
                s_cold.driver_ms,
                s_cold.load_ms,
                s_disk.total_ms,
                s_mem.total_ms
            );
            let _ = writeln!(
                table,
                "{key:<40} {tf:>7.1} TFLOP/s  {ms:>8.3} ms  tile {tile}  kv {kv_name}"
            );
            let _ = writeln!(
                json,
                "  \"{key}\": {{\"ms\": {ms}, \"tflops\": {tf}, \"density\": {density}, \"tile\": \"{qb}x{kvb}x{mt}\", \"kv_bounds\": \"{kv_name}\", \"jit_cold_ms\": {}, \"jit_codegen_ms\": {}, \"jit_load_ms\": {}, \"jit_disk_warm_ms\": {}, \"jit_mem_warm_ms\": {}}},",
                s_cold.total_ms, s_cold.codegen_ms, s_cold.load_ms, s_disk.total_ms, s_mem.total_ms
            );
        }
    }
    json.push_str(&format!("  \"device\": \"{}\"\n}}\n", dev.name()));
    let path = std::env::var("ATTNC_BENCH_JSON").unwrap_or_else(|_| {
        format!(
            "{}/attnc_bench.json",
            std::env::var("OUT").unwrap_or_else(|_| ".".into())
        )
    });
    let _ = std::fs::write(&path, json);
    let _ = std::fs::remove_dir_all(&cache_dir);
    println!("\n{table}");
}

/// The block table of document + causal (8 sorted documents per batch row) built on the
/// GPU (`backend::llvm::blocktable`, exact) next to the host build from tensor summaries
/// (`classify::build_block_maps`, what the runtime does without the GPU builder), at
/// B2 H16 L8192 D128 (tiles of the D128 default, one map per batch; also the attention
/// time through the GPU-built table) and B1 L131072 (the table does not depend on H).
/// Compare with FlexAttention's `create_block_mask` for the same mask
/// (`scripts/gpu_bench_torch.py`). Checks that the host table is sound against the
/// exact GPU one (same block or partial).
#[test]
#[ignore = "benchmark on the GPU machine: --ignored gpu_bench_block_table"]
fn gpu_bench_block_table() {
    use attnc_compiler::analysis::blockmap::BlockKind;
    use attnc_compiler::plan::Plan;
    let Some(dev) = device_or_skip("gpu_bench_block_table") else {
        return;
    };
    let p = samples::document_causal();
    let plan = Plan::new(&p);
    let info = plan.mask();
    for (b, h, l, d) in [(2usize, 16usize, 8192usize, 128usize), (1, 1, 131072, 64)] {
        let shape = Shape {
            b,
            hq: h,
            hkv: h,
            lq: l,
            lkv: l,
            d,
            dv: d,
        };
        let ty = InputType::Bf16;
        let opts = PtxOptions::new(dev.arch(), d as u32, d as u32, ty);
        let (qb, kvb) = (opts.q_block as usize, opts.kv_block as usize);
        let mut r = rng(7);
        let docs: Vec<i32> = (0..b)
            .flat_map(|_| {
                let mut ids: Vec<i32> = (0..l).map(|_| r.random_range(0..8)).collect();
                ids.sort();
                ids
            })
            .collect();
        let mut bind = Bindings::default();
        bind.tensors.push(BoundTensor {
            dims: vec![b, l],
            data: TensorData::I32(docs),
        });
        // host: tensor summaries + quadtree (median of 3)
        let mut host_ms = Vec::new();
        let mut host = None;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            host = Some(plan.block_maps(&shape, qb, kvb, &bind).unwrap());
            host_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        host_ms.sort_by(|a, b| a.total_cmp(b));
        let host = host.unwrap();
        // GPU: block-table kernel on the device-resident doc ids
        let attn = CudaKernel::load(&dev, &emit(&p, &opts).unwrap()).unwrap();
        let builder = CudaKernel::load(&dev, &emit_block_table(&p, &opts).unwrap()).unwrap();
        let mut r = rng(42);
        let (q, _) = random_input(&mut r, shape.q_len(), 1.0, ty);
        let (k, _) = random_input(&mut r, shape.k_len(), 1.0, ty);
        let (v, _) = random_input(&mut r, shape.v_len(), 1.0, ty);
        let prob = attn
            .upload(
                &dev,
                &shape,
                Qkv::Host(&q, &k, &v),
                shape.default_scale(),
                &bind,
                KvBlocks::Build {
                    uses_b: info.uses_b,
                    uses_h: info.uses_h,
                },
            )
            .unwrap();
        // every tile evaluated (KvAllPartial, the builder before linear skipping), then
        // the tiles outside the causal range skipped (what `forward` does); same table
        let all_ms = time_table(&dev, &builder, &prob, None, (2, 10, 5)).unwrap();
        let all = prob.download_table(&dev).unwrap();
        let skip = plan
            .skip_bounds(&shape, &bind)
            .unwrap()
            .expect("no i32 wrap at these lengths");
        assert!(
            builder.meta().table_skip.is_some(),
            "builder without skip form"
        );
        let gpu_ms = time_table(&dev, &builder, &prob, Some(&skip), (2, 10, 5)).unwrap();
        let gpu = prob.download_table(&dev).unwrap();
        assert!(
            gpu == all,
            "the table with linear skipping differs from the fully evaluated one"
        );
        let (mut same, mut coarser) = (0usize, 0usize);
        for bb in 0..b {
            let (g, hm) = (gpu.get(bb, 0), host.get(bb, 0));
            for i in 0..g.n_q_blocks() {
                for j in 0..g.n_kv_blocks() {
                    let (gk, hk) = (g.kind(i, j), hm.kind(i, j));
                    if gk == hk {
                        same += 1;
                    } else {
                        assert_eq!(
                            hk,
                            BlockKind::Partial,
                            "b{bb} block ({i}, {j}): host {hk:?} but exact {gk:?}"
                        );
                        coarser += 1;
                    }
                }
            }
        }
        let (e, pa, f) = gpu.maps.iter().fold((0, 0, 0), |a, m| {
            let c = m.counts();
            (a.0 + c.0, a.1 + c.1, a.2 + c.2)
        });
        let attn_ms = if h > 1 {
            format!(
                ", attention through it {:.3} ms",
                attn.time(&dev, &prob, &LaunchArgs::new(), 2, 5, 3).unwrap()
            )
        } else {
            String::new()
        };
        println!(
            "block table doc_causal B{b} L{l} {qb}x{kvb}: gpu {gpu_ms:.3} ms (every tile evaluated: {all_ms:.3} ms), host (summaries) {:.3} ms; \
             blocks empty/partial/full {e}/{pa}/{f}, host = exact on {same}, host partial where exact is not on {coarser}{attn_ms}",
            host_ms[1]
        );
    }
}

/// The last tiles split along kv (`PtxOptions::tail_split`) against the binding's kernel
/// without it, alternated in one process (the GPU's clocks drift under a sustained load,
/// so candidates timed one after the other do not separate; session 17 (fwd)). Per case
/// (`ATTNC_AB_CASES`, default `dense128,densegqa,dense64,sliding128,slidinggqa`: dense
/// B2 H16 L8192 D128, dense B1 Hq32 Hkv8 L16384 D128, dense B4 H16 L4096 D64, sliding
/// window 1024 at both D128 shapes; bf16): `whole` is the runtime's kernel
/// (`PtxOptions::for_binding`) without the split (dense D128: one CTA per tile, as before
/// session 18; the others persistent in static rounds), `tail` the same with persistent
/// CTAs in static rounds, two Q buffers and the split. `ATTNC_AB_ROUNDS` rounds (default
/// 12), each timing both (`ATTNC_AB_ITERS` launches after 2, default 10) in the order
/// AB, then BA in the next round; prints every time, the min and median of each and how
/// many rounds each won, and the largest difference of their outputs (O, LSE).
/// `ATTNC_AB_B=letters` compares other options instead: `whole` is then the binding's
/// kernel as it is and `tail` the same with the letters applied (`A` the next tile's Q
/// ahead, `PtxOptions::q_ahead`; `f` the early claim, `PtxOptions::early_claim`; `u` three
/// K/V stages with one Q buffer; `w` O through shared memory and TMA stores,
/// `PtxOptions::o_tma`; `g` and digits the LPT group); cases `causal128` (B2 H16
/// L8192 D128) and `causalgqa` (B1 Hq32 Hkv8 L16384 D128) run the causal mask.
#[test]
#[ignore = "benchmark on the GPU machine: --ignored gpu_bench_ab"]
fn gpu_bench_ab() {
    let Some(dev) = device_or_skip("gpu_bench_ab") else {
        return;
    };
    let env_n = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    let rounds = env_n("ATTNC_AB_ROUNDS", 12);
    let iters = env_n("ATTNC_AB_ITERS", 10);
    let cases = std::env::var("ATTNC_AB_CASES")
        .unwrap_or_else(|_| "dense128,densegqa,dense64,sliding128,slidinggqa".into());
    let ty = InputType::Bf16;
    let mut summary = String::new();
    for case in cases.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (b, h, hkv, l, d) = match case {
            "dense128" | "sliding128" | "causal128" => (2, 16, 16, 8192, 128),
            "densegqa" | "slidinggqa" | "causalgqa" => (1, 32, 8, 16384, 128),
            "dense64" | "sliding64" => (4, 16, 16, 4096, 64),
            _ => {
                println!("{case}: unknown case");
                continue;
            }
        };
        let sliding = case.starts_with("sliding");
        let causal = case.starts_with("causal");
        let (p, mut bind) = (
            if sliding {
                samples::sliding()
            } else if causal {
                samples::causal()
            } else {
                samples::dense()
            },
            Bindings::default(),
        );
        if sliding {
            bind.params.push(Scalar::I32(1024));
        }
        let shape = Shape {
            b,
            hq: h,
            hkv,
            lq: l,
            lkv: l,
            d,
            dv: d,
        };
        let mut r = rng(42);
        let (q, _) = random_input(&mut r, shape.q_len(), 1.0, ty);
        let (k, _) = random_input(&mut r, shape.k_len(), 1.0, ty);
        let (v, _) = random_input(&mut r, shape.v_len(), 1.0, ty);
        let (qd, kd, vd) = (
            dev.upload_u16(&q).unwrap(),
            dev.upload_u16(&k).unwrap(),
            dev.upload_u16(&v).unwrap(),
        );
        let plan = Plan::new(&p);
        let bound = PtxOptions::new(dev.arch(), d as u32, d as u32, ty).for_binding(&plan, l);
        let mut whole = PtxOptions {
            tail_split: false,
            ..bound
        };
        if !sliding && d == 128 {
            // (dense D128 before session 18: one CTA per tile)
            whole.persistent = false;
            whole.q_double = false;
        }
        let mut tail = PtxOptions {
            persistent: true,
            dynamic_tiles: false,
            q_double: true,
            tail_split: true,
            ..whole
        };
        if let Ok(letters) = std::env::var("ATTNC_AB_B") {
            (whole, tail) = (bound, bound);
            tail.q_ahead = letters.contains('A');
            tail.early_claim = letters.contains('f');
            if letters.contains('u') {
                (tail.stages, tail.q_double, tail.q_ahead) = (3, false, false);
            }
            tail.o_tma = letters.contains('w') && tail.stages == 2;
            if let Some(at) = letters.find('g') {
                let digits: String = letters[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                tail.lpt_group = digits.parse().unwrap_or(8);
            }
        }
        let pairs = (2 * b * h * l * l * d) as f64;
        let density = if causal {
            (l * (l + 1) / 2) as f64 / (l * l) as f64
        } else if sliding {
            // (exact count of the band's pairs: q - kv in 0..1024)
            let w = 1024usize.min(l);
            (l * w - w * (w - 1) / 2) as f64 / (l * l) as f64
        } else {
            1.0
        };
        let mut probs = Vec::new();
        for o in [&whole, &tail] {
            let kern = CudaKernel::load(&dev, &emit(&p, o).unwrap()).unwrap();
            let maps = BlockMaps::single(attnc_compiler::analysis::blockmap::BlockMap::dense(
                l,
                l,
                o.q_block as usize,
                o.kv_block as usize,
            ));
            let cf = closed(&kern, &p, &shape, &bind);
            let prob = kern
                .upload(
                    &dev,
                    &shape,
                    Qkv::Device(qd.clone(), kd.clone(), vd.clone()),
                    shape.default_scale(),
                    &bind,
                    blocks(&cf, &maps),
                )
                .unwrap();
            probs.push((kern, prob));
        }
        println!(
            "{case}: B{b} Hq{h} Hkv{hkv} L{l} D{d}, whole = {}, tail = {}",
            whole.key(),
            tail.key()
        );
        let mut times = [Vec::new(), Vec::new()];
        let mut wins = [0usize; 2];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut t = [0.0f64; 2];
            for i in order {
                let (kern, prob) = &probs[i];
                t[i] = kern
                    .time(&dev, prob, &LaunchArgs::new(), 2, iters, 1)
                    .unwrap();
                times[i].push(t[i]);
            }
            wins[(t[1] < t[0]) as usize] += 1;
            println!(
                "  round {round:>2} ({}): whole {:.4} ms, tail {:.4} ms, tail/whole {:.4}",
                if order[0] == 0 { "AB" } else { "BA" },
                t[0],
                t[1],
                t[1] / t[0]
            );
        }
        let stat = |v: &Vec<f64>| {
            let mut s = v.clone();
            s.sort_by(|a, b| a.total_cmp(b));
            (s[0], s[s.len() / 2], s[s.len() - 1])
        };
        let (a, bb) = (stat(&times[0]), stat(&times[1]));
        let tf = |ms: f64| 2.0 * pairs * density / ms / 1e9;
        // outputs of the last launches (both complete: `time` waited for its events)
        let (oa, la) = probs[0].1.download(&dev).unwrap();
        let (ob, lb) = probs[1].1.download(&dev).unwrap();
        let o_diff = oa
            .iter()
            .zip(&ob)
            .map(|(x, y)| (from_bits(*x, ty) - from_bits(*y, ty)).abs())
            .fold(0.0f32, f32::max);
        let l_diff = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
            .fold(0.0f32, f32::max);
        let counters = probs[1].1.tile_counter(&dev).unwrap();
        let line = format!(
            "{case}: whole min {:.4} med {:.4} max {:.4} ms ({:.1} / {:.1} TFLOP/s), tail min {:.4} med {:.4} max {:.4} ms ({:.1} / {:.1} TFLOP/s); tail/whole min {:.4} med {:.4}; rounds won whole {} tail {}; max |O diff| {o_diff:.5}, |LSE diff| {l_diff:.5}{}{}",
            a.0,
            a.1,
            a.2,
            tf(a.0),
            tf(a.1),
            bb.0,
            bb.1,
            bb.2,
            tf(bb.0),
            tf(bb.1),
            bb.0 / a.0,
            bb.1 / a.1,
            wins[0],
            wins[1],
            if o_diff > 0.02 || l_diff > 0.01 {
                " MISMATCH"
            } else {
                ""
            },
            if counters.iter().any(|&w| w != 0) {
                " COUNTERS NOT ZERO"
            } else {
                ""
            }
        );
        println!("{line}");
        let _ = writeln!(summary, "{line}");
    }
    println!("\n{summary}");
    if let Ok(out) = std::env::var("OUT") {
        let _ = std::fs::write(format!("{out}/gpu_bench_ab.txt"), &summary);
    }
}

/// The document-tiled forward (`BindOptions::doc_tiles`) against the binding's own
/// kernel (block table built on the GPU) on document + causal through `Bound`, with the
/// anchors' ids (`flex_anchors.py`: `L / 1024` sorted uniform ids per batch row), in
/// `ATTNC_DOC_ROUNDS` interleaved rounds (default 5; `Bound::device_time_ms`, 10
/// launches, median of 3): B2 H16 L8192 D128, B1 Hq32 Hkv8 L16384 D128 and B4 H16 L4096
/// D64 (`ATTNC_DOC_CASES=b2,gqa,d64`), TFLOP/s over unmasked pairs, and the largest
/// difference of the two outputs.
#[test]
#[ignore = "benchmark on the GPU machine: --ignored gpu_bench_doc_tiles"]
fn gpu_bench_doc_tiles() {
    use attnc::{Backend, BindOptions, Captures, Compiled, DType, Tensor};
    let Some(_dev) = device_or_skip("gpu_bench_doc_tiles") else {
        return;
    };
    let src = "tensor doc: i32[B, KV];\nmask causal(b, h, q, kv) { q >= kv }\nmask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }\nattention doc_causal { mask = causal & same_doc; }\n";
    let compiled = Compiled::from_source("doc.attn", src).unwrap();
    let variant = compiled.attention("doc_causal").unwrap();
    let rounds: usize = std::env::var("ATTNC_DOC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let cases = std::env::var("ATTNC_DOC_CASES").unwrap_or_else(|_| "b2,gqa,d64".into());
    for case in cases.split(',') {
        let (b, hq, hkv, l, d) = match case.trim() {
            "b2" => (2, 16, 16, 8192, 128),
            "gqa" => (1, 32, 8, 16384, 128),
            "d64" => (4, 16, 16, 4096, 64),
            other => {
                println!("{other}: unknown case");
                continue;
            }
        };
        let shape = attnc::Shape {
            b,
            hq,
            hkv,
            lq: l,
            lkv: l,
            d,
            dv: d,
        };
        let mut r = rng(77);
        let ids: Vec<i32> = (0..b)
            .flat_map(|_| {
                let mut x: Vec<i32> = (0..l)
                    .map(|_| r.random_range(0..(l / 1024) as i32))
                    .collect();
                x.sort();
                x
            })
            .collect();
        // unmasked pairs (per batch row: sum over documents of n (n + 1) / 2)
        let mut pairs = 0f64;
        for row in ids.chunks(l) {
            let mut n = 1f64;
            for w in row.windows(2) {
                if w[0] == w[1] {
                    n += 1.0;
                } else {
                    pairs += n * (n + 1.0) / 2.0;
                    n = 1.0;
                }
            }
            pairs += n * (n + 1.0) / 2.0;
        }
        let flops = 4.0 * pairs * hq as f64 * d as f64;
        let input = |r: &mut rand::rngs::StdRng, dims: Vec<usize>| {
            let n: usize = dims.iter().product();
            let x: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
            Tensor::from_f32_as(dims, &x, DType::BF16)
        };
        let q = input(&mut r, vec![b, hq, l, d]);
        let k = input(&mut r, vec![b, hkv, l, d]);
        let v = input(&mut r, vec![b, hkv, l, d]);
        let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![b, l], &ids));
        // the binding's own kernel; document tiles as `L`'s program binds (persistent CTAs
        // on causal); document tiles one CTA per tile (`ATTNC_FWD_DOC_PERSISTENT=0`)
        let mut bounds = [(false, "1"), (true, "1"), (true, "0")].map(|(on, persistent)| {
            // SAFETY: this benchmark runs alone (`--exact`), nothing reads the
            // environment concurrently
            unsafe { std::env::set_var("ATTNC_FWD_DOC_PERSISTENT", persistent) };
            let mut o = BindOptions::new(Backend::Cuda, shape, DType::BF16);
            o.doc_tiles = on;
            variant.bind(o).unwrap()
        });
        let outs: Vec<Vec<f32>> = bounds
            .iter_mut()
            .map(|bd| bd.forward(&q, &k, &v, &caps).unwrap().o.to_f32())
            .collect();
        let diff = |x: &[f32]| {
            outs[0]
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let diffs = (diff(&outs[1]), diff(&outs[2]));
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
            for i in order {
                let ms = bounds[i]
                    .device_time_ms(&q, &k, &v, &caps, 10)
                    .unwrap()
                    .unwrap();
                times[i].push(ms);
            }
        }
        let med = |t: &mut Vec<f64>| {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[t.len() / 2]
        };
        let (m0, m1, m2) = (med(&mut times[0]), med(&mut times[1]), med(&mut times[2]));
        println!(
            "doc_causal {case} B{b} Hq{hq} Hkv{hkv} L{l} D{d} density {:.4}: table {m0:.4} ms ({:.1} TFLOP/s) | doc tiles {m1:.4} ms ({:.1} TFLOP/s, {:.3}x) | one CTA a tile {m2:.4} ms ({:.1} TFLOP/s, {:.3}x) | calls {:?} {:?} | max |dO| {:.2e} {:.2e} | all {:?} / {:?} / {:?}",
            pairs / (l as f64 * l as f64 * b as f64),
            flops / m0 / 1e9,
            flops / m1 / 1e9,
            m0 / m1,
            flops / m2 / 1e9,
            m0 / m2,
            bounds[1].doc_tile_calls(),
            bounds[2].doc_tile_calls(),
            diffs.0,
            diffs.1,
            times[0],
            times[1],
            times[2],
        );
    }
}
