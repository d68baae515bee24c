//! CPU-side tests of the PTX generator: every sample emits a `.entry` with the mma,
//! ldmatrix and cp.async instructions, deterministically, for both archs and input types.

use super::*;
use crate::backend::KernelKind;
use crate::ir::verify_program;
use crate::plan::Plan;

/// The forward kernel of `p` with its LLVM IR text.
fn emit(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    generate(
        &Plan::new(p),
        KernelKind::Forward,
        opts,
        EmitText::PtxAndLlvm,
    )
    .map(|(k, _)| k)
}

#[test]
fn samples_emit_ptx_entries_deterministically() {
    for (p, (d, ty, arch, mt)) in crate::test_matrix::cases(
        &samples::all(16),
        &[
            (128, InputType::Bf16, Arch::Sm90, 1),
            (64, InputType::F16, Arch::Sm80, 1),
            (128, InputType::Bf16, Arch::Sm90, 2),
            (64, InputType::Bf16, Arch::Sm90, 2),
        ],
    ) {
        verify_program(&p).unwrap();
        let mut opts = PtxOptions::sync(arch, d, d, ty).with_m_tiles(mt);
        if mt == 2 {
            opts.q_block = 128;
        }
        let k = emit(&p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(
            k.ptx.contains(&format!(".visible .entry {}", k.entry)),
            "{}",
            p.name
        );
        assert!(
            k.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32"),
            "{}",
            p.name
        );
        assert!(
            k.ptx
                .contains("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"),
            "{}",
            p.name
        );
        assert!(k.ptx.contains("cp.async.cg.shared.global"), "{}", p.name);
        assert!(
            !k.ptx.contains(".extern .func"),
            "{}: unresolved intrinsic",
            p.name
        );
        assert!(k.ptx.contains("bar.sync"), "{}", p.name);
        assert!(
            !k.ptx.contains(".local"),
            "{}: registers spilled to local memory",
            p.name
        );
        let again = emit(&p, &opts).unwrap();
        assert_eq!(k.ptx, again.ptx, "{}: PTX is not deterministic", p.name);
        assert_eq!(k.llvm_ir, again.llvm_ir);
    }
}

#[test]
fn checked_mode_records_errors() {
    let p = samples::document_causal();
    let mut opts = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    opts.checked = true;
    let k = emit(&p, &opts).unwrap();
    assert!(
        k.ptx.contains("atom.") && k.ptx.contains(".cas.b32"),
        "no compare-and-swap in checked mode"
    );
}

#[test]
fn rejects_unsupported_dims() {
    // 72 is no multiple of 16; 48, 96 and 160 are, but D / 8 is no power of two (the
    // swizzled tiles need one)
    for d in [72, 48, 96, 160] {
        let opts = PtxOptions::new(Arch::Sm90, d, d, InputType::Bf16);
        assert!(
            matches!(
                emit(&samples::dense(), &opts),
                Err(LlvmError::Unsupported(_))
            ),
            "D{d}"
        );
    }
    let mixed = PtxOptions::new(Arch::Sm80, 64, 96, InputType::Bf16);
    assert!(matches!(
        emit(&samples::dense(), &mixed),
        Err(LlvmError::Unsupported(_))
    ));
}

/// `ATTNC_PTX_DUMP=DIR cargo test -p attnc-compiler dump_ptx -- --ignored` writes each
/// sample's PTX and LLVM IR to DIR (for reading and for `ptxas` on a GPU machine).
#[test]
#[ignore = "a tool: writes PTX files (ATTNC_PTX_DUMP=DIR ... -- --ignored dump_ptx)"]
fn dump_ptx() {
    let dir = std::env::var("ATTNC_PTX_DUMP").unwrap_or_else(|_| "/tmp/attnc_ptx".into());
    std::fs::create_dir_all(&dir).unwrap();
    for p in samples::all(16) {
        for (d, ty, checked, wg) in [
            (128, InputType::Bf16, false, 0),
            (64, InputType::Bf16, false, 0),
            (128, InputType::F16, true, 0),
            (128, InputType::Bf16, false, 1),
            (128, InputType::Bf16, false, 2),
            (64, InputType::Bf16, false, 2),
            (128, InputType::Bf16, false, 3),
            (128, InputType::Bf16, false, 4),
            (64, InputType::Bf16, false, 4),
            (128, InputType::Bf16, false, 5),
            (64, InputType::Bf16, false, 5),
            (128, InputType::Bf16, false, 6),
            (64, InputType::Bf16, false, 6),
            (128, InputType::Bf16, false, 7),
            (64, InputType::Bf16, false, 7),
        ] {
            let mut opts = PtxOptions::sync(Arch::Sm90, d, d, ty);
            if wg == 1 {
                opts = opts.wgmma();
            } else if wg == 2 {
                opts = opts.warp_specialized(128, 2);
            } else if wg == 3 {
                opts = PtxOptions {
                    lpt_group: 8,
                    ..opts.warp_specialized(128, 2)
                };
            } else if wg == 4 {
                // persistent CTAs (three consumers at D64)
                opts = PtxOptions {
                    lpt_group: 8,
                    persistent: true,
                    q_block: if d == 64 { 192 } else { 128 },
                    ..opts.warp_specialized(128, 2)
                };
            } else if wg == 5 {
                // the runtime's choice for causal-type masks: the dynamic tile scheduler,
                // q blocks from the end
                opts = PtxOptions {
                    lpt_group: 8,
                    persistent: true,
                    dynamic_tiles: true,
                    q_from_end: true,
                    split_tail: true,
                    q_block: if d == 64 { 192 } else { 128 },
                    ..opts.warp_specialized(128, 2)
                };
            } else if wg >= 6 {
                // two Q buffers (`q_double`): static rounds (6) and the dynamic scheduler (7)
                opts = PtxOptions {
                    persistent: true,
                    dynamic_tiles: wg == 7,
                    q_double: true,
                    split_tail: d == 128,
                    q_from_end: wg == 7,
                    lpt_group: if wg == 7 { 8 } else { 0 },
                    q_block: if d == 64 { 192 } else { 128 },
                    ..opts.warp_specialized(128, 2)
                };
            }
            opts.checked = checked;
            let k = emit(&p, &opts).unwrap();
            let stem = format!(
                "{dir}/{}_d{d}_{}{}{}",
                p.name,
                ty.name(),
                if checked { "_checked" } else { "" },
                [
                    "",
                    "_wgmma",
                    "_ws",
                    "_ws_lpt",
                    "_ws_persistent",
                    "_ws_dyn_qend",
                    "_ws_persistent_q2",
                    "_ws_dyn_qend_q2"
                ][wg]
            );
            std::fs::write(format!("{stem}.ptx"), &k.ptx).unwrap();
            std::fs::write(format!("{stem}.ll"), &k.llvm_ir).unwrap();
        }
    }
}

/// `cargo test --release -p attnc-compiler emit_latency -- --ignored --nocapture`: the
/// time of `emit` (LLVM IR, passes, NVPTX codegen) at D128 for four samples.
#[test]
#[ignore = "a timing run: --release -- --ignored --nocapture emit_latency"]
fn emit_latency() {
    for p in [
        samples::dense(),
        samples::causal(),
        samples::softcap_causal(),
        samples::document_causal(),
    ] {
        let opts = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
        let _ = emit(&p, &opts).unwrap();
        let t = std::time::Instant::now();
        let k = emit(&p, &opts).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{}: emit {ms:.1} ms, {} bytes of PTX", p.name, k.ptx.len());
    }
}

#[test]
fn emit_timed_ptx_only_gives_the_same_ptx_and_a_consistent_breakdown() {
    let p = samples::document_causal();
    let opts = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let full = emit(&p, &opts).unwrap();
    let (k, t) = generate(
        &Plan::new(&p),
        KernelKind::Forward,
        &opts,
        EmitText::PtxOnly,
    )
    .unwrap();
    assert_eq!(
        k.ptx, full.ptx,
        "PTX must not depend on printing the LLVM IR"
    );
    assert!(k.llvm_ir.is_empty() && !full.llvm_ir.is_empty());
    assert!(
        t.build_ms > 0.0 && t.opt_ms > 0.0 && t.ptx_ms > 0.0,
        "{t:?}"
    );
    assert!(
        t.build_ms + t.opt_ms + t.ptx_ms <= t.total_ms + 1e-9,
        "stages exceed the total: {t:?}"
    );
}

#[test]
fn wgmma_path_emits_sm90a_warpgroup_mma_deterministically() {
    for (p, (d, ty, kvb, overlap)) in crate::test_matrix::cases(
        &samples::all(16),
        &[
            (128, InputType::Bf16, 64, false),
            (64, InputType::F16, 128, false),
            (128, InputType::F16, 128, false),
            (128, InputType::Bf16, 64, true),
            (64, InputType::Bf16, 128, true),
        ],
    ) {
        let mut opts = PtxOptions::new(Arch::Sm90, d, d, ty).wgmma();
        opts.kv_block = kvb;
        opts.overlap = overlap;
        let k = emit(&p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(k.ptx.contains(".target sm_90a"), "{}", p.name);
        assert_eq!(k.threads, 256);
        let t = ty.name();
        for want in [
            format!("wgmma.mma_async.sync.aligned.m64n{kvb}k16.f32.{t}.{t}"),
            format!("wgmma.mma_async.sync.aligned.m64n{d}k16.f32.{t}.{t}"),
            "wgmma.fence.sync.aligned".into(),
            "wgmma.commit_group.sync.aligned".into(),
            "wgmma.wait_group.sync.aligned 0".into(),
            format!("wgmma.wait_group.sync.aligned {}", overlap as u32),
            "fence.proxy.async.shared::cta".into(),
            ".align 1024 .b8 smem".into(),
        ] {
            assert!(k.ptx.contains(&want), "{}: no {want}", p.name);
        }
        assert!(!k.ptx.contains("mma.sync"), "{}", p.name);
        assert!(!k.ptx.contains(".local"), "{}: spills", p.name);
        assert_eq!(k.ptx, emit(&p, &opts).unwrap().ptx, "{}", p.name);
    }
}

#[test]
fn warp_specialized_kernel_emits_tma_mbarriers_and_pingpong_deterministically() {
    for (p, (d, dv, ty, kvb, stages)) in crate::test_matrix::cases(
        &samples::all(16),
        &[
            (128, 128, InputType::Bf16, 128, 2),
            (64, 64, InputType::F16, 128, 3),
            (64, 128, InputType::Bf16, 64, 2),
        ],
    ) {
        let opts = PtxOptions::new(Arch::Sm90, d, dv, ty).warp_specialized(kvb, stages);
        let k = emit(&p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(k.threads, 384);
        assert_eq!(
            &k.params[k.params.len() - 3..],
            &[KernelParam::TmaQ, KernelParam::TmaK, KernelParam::TmaV]
        );
        let t = ty.name();
        for want in [
            format!("wgmma.mma_async.sync.aligned.m64n{kvb}k16.f32.{t}.{t}"),
            format!("wgmma.mma_async.sync.aligned.m64n{dv}k16.f32.{t}.{t}"),
            "wgmma.wait_group.sync.aligned 1".into(),
            "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                .into(),
            "mbarrier.try_wait.parity.shared::cta.b64".into(),
            "mbarrier.arrive.expect_tx.shared::cta.b64".into(),
            "mbarrier.init.shared::cta.b64".into(),
            "], 256;".into(),
            "setmaxnreg.dec.sync.aligned.u32 40".into(),
            "setmaxnreg.inc.sync.aligned.u32 232".into(),
            "bar.arrive 2, 256".into(),
            ".param .align 64 .b8".into(),
            ".maxntid 384".into(),
            ".minnctapersm 1".into(),
        ] {
            assert!(k.ptx.contains(&want), "{}: no {want}", p.name);
        }
        // no cp.async of the all-threads loader, no IEEE division subroutine (a call
        // serializes wgmma in the driver's relocatable compile)
        for not in ["cp.async.cg", "rcp.rn", "div.rn", "call"] {
            assert!(!k.ptx.contains(not), "{}: {not}", p.name);
        }
        assert!(!k.ptx.contains(".local"), "{}: spills", p.name);
        assert_eq!(k.ptx, emit(&p, &opts).unwrap().ptx, "{}", p.name);
    }
    // what it does not run
    let base = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    for bad in [
        PtxOptions {
            q_block: 64,
            ..base
        },
        PtxOptions { stages: 5, ..base },
        PtxOptions { stages: 4, ..base },
        // D256 with kv tiles of 128: Q and two K/V stages need 320 KB of shared memory
        PtxOptions::new(Arch::Sm90, 256, 256, InputType::Bf16).warp_specialized(128, 2),
        PtxOptions {
            mma: Mma::Sync,
            ..base
        },
    ] {
        assert!(
            matches!(
                emit(&samples::dense(), &bad),
                Err(LlvmError::Unsupported(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn lpt_order_reads_the_grid_size_and_changes_only_the_place() {
    let base = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let lpt = PtxOptions {
        lpt_group: 8,
        ..base
    };
    assert_ne!(base.key(), lpt.key());
    let (a, b) = (
        emit(&samples::causal(), &base).unwrap(),
        emit(&samples::causal(), &lpt).unwrap(),
    );
    assert!(!a.ptx.contains("%nctaid.z") && b.ptx.contains("%nctaid.z"));
    assert_eq!(
        (a.threads, a.smem_bytes, &a.params),
        (b.threads, b.smem_bytes, &b.params)
    );
    assert_eq!(b.ptx, emit(&samples::causal(), &lpt).unwrap().ptx);
}

/// The dynamic tile scheduler (`dynamic_tiles`): on every sample, both consumer counts
/// and both tile orders, the persistent kernel plus the counter parameter, one more
/// 8-byte slot of shared memory, the producer's atomic add and the counter's reset, the
/// slot written by the producer and read by the consumers; deterministic; refused
/// without persistent CTAs.
#[test]
fn dynamic_tiles_take_the_next_tile_from_a_counter() {
    let pers = PtxOptions {
        persistent: true,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
    };
    let d64 = PtxOptions {
        q_block: 192,
        persistent: true,
        ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16).warp_specialized(128, 2)
    };
    let atom = "atom.relaxed.gpu.global.add.u32";
    for (p, (o, lpt)) in
        crate::test_matrix::cases(&samples::all(16), &[(pers, 0), (pers, 8), (d64, 8)])
    {
        let o = PtxOptions {
            lpt_group: lpt,
            ..o
        };
        let dynamic = PtxOptions {
            dynamic_tiles: true,
            ..o
        };
        assert_ne!(o.key(), dynamic.key());
        let (a, b) = (emit(&p, &o).unwrap(), emit(&p, &dynamic).unwrap());
        assert_eq!(b.grid, [GridDim::Persistent, GridDim::One, GridDim::One]);
        assert_eq!(
            b.params.last(),
            Some(&KernelParam::TileCounter),
            "{}",
            p.name
        );
        assert_eq!(&b.params[..b.params.len() - 1], &a.params[..]);
        assert_eq!((b.threads, b.smem_bytes), (a.threads, a.smem_bytes + 8));
        // one add per tile (the producer), one counted end (acq_rel_inc), two resets
        assert_eq!(b.ptx.matches(atom).count(), 2, "{}", p.name);
        assert_eq!(b.ptx.matches("st.relaxed.gpu.global.u32").count(), 2);
        assert!(b.ptx.contains("st.shared.u32") && b.ptx.contains("ld.shared.u32"));
        assert!(!a.ptx.contains(atom) && !a.ptx.contains("ld.shared.u32"));
        assert_eq!(b.ptx, emit(&p, &dynamic).unwrap().ptx);
    }
    let static_grid = PtxOptions {
        dynamic_tiles: true,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
    };
    assert!(matches!(
        emit(&samples::dense(), &static_grid),
        Err(LlvmError::Unsupported(_))
    ));
}

/// The last tiles split along kv (`tail_split`): on every sample, D128 (two consumers)
/// and D64 (three), closed form and block table: a closed-form kernel gains the counters
/// and the workspace as its last parameters, 8 bytes of shared memory (the merge flag),
/// one release-acquire add (its count), the parts' stores and volatile loads, and the
/// counter's reset; a table kernel keeps its parameters (the option does not apply);
/// deterministic; refused without persistent CTAs and with the dynamic scheduler.
/// `ATTNC_PTX_DUMP=DIR` also writes each kernel (for ptxas).
#[test]
fn tail_split_cuts_the_last_tiles_along_kv() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    let add = "atom.relaxed.gpu.global.add.u32";
    for (p, (d, qb)) in crate::test_matrix::cases(&samples::all(16), &[(128, 128), (64, 192)]) {
        for table in [false, true] {
            let pers = PtxOptions {
                persistent: true,
                q_double: true,
                kv_table: table,
                q_block: qb,
                ..PtxOptions::new(Arch::Sm90, d, d, InputType::Bf16).warp_specialized(128, 2)
            };
            let tail = PtxOptions {
                tail_split: true,
                ..pers
            };
            assert_ne!(pers.key(), tail.key());
            let (a, b) = (emit(&p, &pers).unwrap(), emit(&p, &tail).unwrap());
            assert_eq!(b.grid, [GridDim::Persistent, GridDim::One, GridDim::One]);
            assert_eq!((b.threads, b.smem_bytes), (a.threads, a.smem_bytes + 8));
            if let Some(dir) = &dump {
                let _ = std::fs::create_dir_all(dir);
                let name = format!("{dir}/tail_{}_d{d}_q{qb}_t{}.ptx", p.name, table as u8);
                std::fs::write(name, &b.ptx).unwrap();
            }
            let closed = !table && Plan::new(&p).kv_bounds(false).is_closed_form();
            if closed {
                let n = b.params.len();
                assert_eq!(
                    &b.params[n - 2..],
                    &[KernelParam::TileCounter, KernelParam::TailWork],
                    "{}",
                    p.name
                );
                assert_eq!(&b.params[..n - 2], &a.params[..]);
                assert_eq!(b.ptx.matches(add).count(), 1, "{}", p.name);
                assert_eq!(b.ptx.matches("st.relaxed.gpu.global.u32").count(), 1);
                assert!(b.ptx.contains("ld.volatile.global"), "{}", p.name);
                assert!(b.ptx.contains("st.shared.u32") && b.ptx.contains("ld.shared.u32"));
            } else {
                assert_eq!(b.params, a.params, "{}", p.name);
                assert!(!b.ptx.contains(add));
            }
            assert!(!a.ptx.contains(add) && !a.ptx.contains("ld.volatile"));
            assert_eq!(b.ptx, emit(&p, &tail).unwrap().ptx);
        }
    }
    let base = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    for o in [
        PtxOptions {
            tail_split: true,
            ..base
        },
        PtxOptions {
            tail_split: true,
            persistent: true,
            dynamic_tiles: true,
            ..base
        },
    ] {
        assert!(matches!(
            emit(&samples::dense(), &o),
            Err(LlvmError::Unsupported(_))
        ));
    }
}

/// `tail_split` on a band (`hopper::Tail::clamp`): a tile's `nkv` units count from its
/// first kv block `first`, the piece ending at unit `nkv` runs to the tile's end. Over
/// every cut of the units into pieces and spans shorter, equal and longer than `nkv`,
/// the pieces' blocks cover the tile's blocks `first..end` exactly once.
#[test]
fn tail_split_band_pieces_cover_the_band_once() {
    for nkv in 1..=6u64 {
        for first in [0u64, 3, 17] {
            for span in 0..=2 * nkv + 1 {
                let end = first + span;
                // every cut of 0..nkv into pieces: the bits of `cuts` mark piece ends
                for cuts in 0..(1u64 << (nkv - 1)) {
                    let mut seen = vec![0u32; span as usize];
                    let mut lo = 0;
                    for u in 1..=nkv {
                        if u < nkv && cuts & (1 << (u - 1)) == 0 {
                            continue;
                        }
                        let hi = u;
                        let (a, b) = (first + lo, if hi == nkv { end } else { first + hi });
                        // (the runs clamped into a..b)
                        for blk in a.max(first)..b.min(end) {
                            seen[(blk - first) as usize] += 1;
                        }
                        lo = hi;
                    }
                    assert!(
                        seen.iter().all(|n| *n == 1),
                        "nkv {nkv} first {first} span {span} cuts {cuts:b}"
                    );
                }
            }
        }
    }
}

/// One piece of the model below: (tile, lo, hi, part, slot).
type ModelPiece = (u64, u64, u64, bool, u64);

/// A model of `tail_split`'s walk (`hopper::for_each_piece`) and of the merge's search
/// (`hopper::publish_and_merge`), in host integers: for `tiles` tiles on `grid` CTAs
/// with `nkv` kv blocks each, every CTA's pieces `(tile, lo, hi, part, slot)`.
fn tail_pieces(tiles: u64, grid: u64, nkv: u64) -> Vec<Vec<ModelPiece>> {
    let rem = tiles % grid;
    let n_split = if rem != 0 { rem + grid } else { 0 };
    let whole = tiles - n_split;
    let units = n_split * nkv;
    (0..grid)
        .map(|c| {
            let mut v = Vec::new();
            for r in 0..whole / grid {
                let t = r * grid + if r % 2 == 1 { grid - 1 - c } else { c };
                v.push((t, 0, nkv, false, 0));
            }
            let (beg, end) = (c * units / grid, (c + 1) * units / grid);
            let mut u = beg;
            while u < end {
                let (k, lo) = (u / nkv, u % nkv);
                let hi = nkv.min(lo + end - u);
                let part = !(lo == 0 && hi == nkv);
                v.push((whole + k, lo, hi, part, 2 * c + (u != beg) as u64));
                u += hi - lo;
            }
            v
        })
        .collect()
}

/// The model's walk covers every (tile, kv block) once; a tile is either one whole piece
/// or parts in consecutive CTAs `owner(first unit) ..= owner(last unit)` (the merge's
/// search, `floor(((u + 1) G - 1) / U)`), each part in the slot the merge computes for
/// its CTA (`2 c`, or `2 c + 1` when the CTA's range starts before the tile), slots
/// unique; no CTA holds more than two parts; every CTA's last work is at most
/// `ceil((R + G) nkv / G)` kv blocks, so the split tiles leave no round of a few tiles.
#[test]
fn tail_split_pieces_cover_each_block_once() {
    for tiles in 1..=90u64 {
        for grid in (1..=tiles.min(29)).chain([tiles.min(132)]) {
            for nkv in [1u64, 2, 3, 5, 8] {
                let walk = tail_pieces(tiles, grid, nkv);
                let rem = tiles % grid;
                let n_split = if rem != 0 { rem + grid } else { 0 };
                let (whole, units) = (tiles - n_split, n_split * nkv);
                let mut seen = vec![0u32; (tiles * nkv) as usize];
                let mut parts: std::collections::BTreeMap<u64, Vec<(u64, u64)>> =
                    Default::default();
                let mut slots = std::collections::BTreeSet::new();
                for (c, pieces) in walk.iter().enumerate() {
                    let c = c as u64;
                    assert!(pieces.iter().filter(|p| p.3).count() <= 2);
                    let split_blocks: u64 = pieces
                        .iter()
                        .filter(|p| p.0 >= whole)
                        .map(|p| p.2 - p.1)
                        .sum();
                    assert!(split_blocks <= units.div_ceil(grid));
                    for &(t, lo, hi, part, slot) in pieces {
                        assert!(t < tiles && lo < hi && hi <= nkv);
                        for j in lo..hi {
                            seen[(t * nkv + j) as usize] += 1;
                        }
                        if part {
                            assert!(slots.insert(slot), "slot {slot} twice");
                            parts.entry(t).or_default().push((c, slot));
                        }
                    }
                }
                assert!(seen.iter().all(|n| *n == 1), "{tiles} {grid} {nkv}");
                let start = |c: u64| c * units / grid;
                let owner = |u: u64| ((u + 1) * grid - 1) / units;
                for (t, ps) in parts {
                    let first = (t - whole) * nkv;
                    let (c0, c1) = (owner(first), owner(first + nkv - 1));
                    let want: Vec<(u64, u64)> = (c0..=c1)
                        .map(|c| (c, 2 * c + (start(c) < first) as u64))
                        .collect();
                    assert_eq!(ps, want, "tile {t} of {tiles} on {grid}, nkv {nkv}");
                }
            }
        }
    }
}

/// q blocks from the end (`q_from_end`): on every sample, both consumer counts, one CTA
/// per tile and the dynamic scheduler, the same parameters and shared memory, the pad
/// subtracted from the first row and unsigned row checks (`setp.lt.u32` against Lq where
/// the kernel without it compares signed); a kernel reading a block table is unchanged
/// (its rows are q blocks from 0); deterministic; refused without `ws`.
#[test]
fn q_blocks_from_the_end_shift_the_rows() {
    let d128 = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let d64 = PtxOptions {
        q_block: 192,
        ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16).warp_specialized(128, 2)
    };
    let dynamic = |o: PtxOptions| PtxOptions {
        persistent: true,
        dynamic_tiles: true,
        lpt_group: 8,
        ..o
    };
    for (p, o) in
        crate::test_matrix::cases(&samples::all(16), &[d128, d64, dynamic(d128), dynamic(d64)])
    {
        let end = PtxOptions {
            q_from_end: true,
            ..o
        };
        assert_ne!(o.key(), end.key());
        let (a, b) = (emit(&p, &o).unwrap(), emit(&p, &end).unwrap());
        assert_eq!(
            (&a.params, a.threads, a.smem_bytes, &a.grid),
            (&b.params, b.threads, b.smem_bytes, &b.grid),
            "{}",
            p.name
        );
        let table = a.params.contains(&KernelParam::RowStart);
        if table {
            assert_eq!(a.ptx, b.ptx, "{}: a block table ignores q_from_end", p.name);
        } else {
            assert_ne!(a.ptx, b.ptx, "{}", p.name);
            // the epilogue's row check (and the score's on partial blocks) unsigned
            assert!(b.ptx.contains("setp.lt.u32") || b.ptx.contains("setp.gt.u32"));
        }
        assert_eq!(b.ptx, emit(&p, &end).unwrap().ptx);
    }
    let plain = PtxOptions {
        q_from_end: true,
        ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16)
    };
    assert!(matches!(
        emit(&samples::causal(), &plain),
        Err(LlvmError::Unsupported(_))
    ));
}

/// The score's own path for partial blocks inside the sequence (`split_tail`): on every
/// sample with a mask and every kernel kind, a longer kernel with the same parameters,
/// threads and shared memory, one kv bounds compare per element fewer on that path;
/// without a mask (no partial blocks but the tail) the same PTX; deterministic.
#[test]
fn split_tail_gives_inner_partial_blocks_their_own_path() {
    let ws = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let kinds = [
        ws,
        PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16),
        PtxOptions::sync(Arch::Sm80, 64, 64, InputType::F16),
    ];
    for (p, o) in crate::test_matrix::cases(&samples::all(16), &kinds) {
        let split = PtxOptions {
            split_tail: true,
            ..o
        };
        assert_ne!(o.key(), split.key());
        let (a, b) = (emit(&p, &o).unwrap(), emit(&p, &split).unwrap());
        assert_eq!(
            (&a.params, a.threads, a.smem_bytes),
            (&b.params, b.threads, b.smem_bytes)
        );
        if p.mask.is_none() {
            assert_eq!(a.ptx, b.ptx, "{}", p.name);
        } else {
            assert!(b.ptx.len() > a.ptx.len(), "{}", p.name);
        }
        assert_eq!(b.ptx, emit(&p, &split).unwrap().ptx);
    }
}

/// The persistent warp-specialized kernel: a grid of `min(tiles, SMs)` CTAs walking the
/// tiles (`nctaid.x` strides, B as a parameter), one more mbarrier (q_empty), on every
/// sample and both consumer counts; refused without `ws`.
#[test]
fn persistent_ws_kernel_walks_the_tiles() {
    let base = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let pers = PtxOptions {
        persistent: true,
        ..base
    };
    assert_ne!(base.key(), pers.key());
    let d64 = PtxOptions {
        q_block: 192,
        persistent: true,
        ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16).warp_specialized(128, 2)
    };
    for (p, (o, lpt)) in
        crate::test_matrix::cases(&samples::all(16), &[(pers, 0), (pers, 8), (d64, 0)])
    {
        let o = PtxOptions {
            lpt_group: lpt,
            ..o
        };
        let (a, b) = (
            emit(
                &p,
                &PtxOptions {
                    persistent: false,
                    ..o
                },
            )
            .unwrap(),
            emit(&p, &o).unwrap(),
        );
        assert_eq!(b.grid, [GridDim::Persistent, GridDim::One, GridDim::One]);
        assert_eq!(a.grid, [GridDim::QBlocks, GridDim::Heads, GridDim::Batches]);
        assert_eq!(b.params.last(), Some(&KernelParam::Batch), "{}", p.name);
        assert_eq!(&b.params[..b.params.len() - 1], &a.params[..]);
        assert_eq!((b.threads, b.smem_bytes), (a.threads, a.smem_bytes + 8));
        assert!(b.ptx.contains("%nctaid.x") && !a.ptx.contains("%nctaid.x"));
        assert!(!b.ptx.contains("%ctaid.y") && !b.ptx.contains("%nctaid.z"));
        assert_eq!(b.ptx, emit(&p, &o).unwrap().ptx);
    }
    let plain = PtxOptions {
        persistent: true,
        ..base.wgmma()
    };
    assert!(matches!(
        emit(&samples::dense(), &plain),
        Err(LlvmError::Unsupported(_))
    ));
}

/// Two Q buffers for persistent CTAs (`PtxOptions::q_double`): one more Q tile of
/// shared memory and the second buffer's q_full, q_empty (and tile slot) mbarriers, the
/// same parameters and grid, on every sample with static rounds and the dynamic
/// scheduler at both consumer counts; off, the PTX is the single buffer's; refused
/// without persistent CTAs and where the shared memory does not fit (3 stages at D128).
#[test]
fn two_q_buffers_for_persistent_ctas() {
    let d128 = PtxOptions {
        persistent: true,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
    };
    let d64 = PtxOptions {
        q_block: 192,
        persistent: true,
        ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16).warp_specialized(128, 2)
    };
    for (p, (o, dynamic_tiles)) in crate::test_matrix::cases(
        &samples::all(16),
        &[(d128, false), (d128, true), (d64, false), (d64, true)],
    ) {
        let one = PtxOptions { dynamic_tiles, ..o };
        let two = PtxOptions {
            q_double: true,
            ..one
        };
        assert_ne!(one.key(), two.key());
        let (a, b) = (emit(&p, &one).unwrap(), emit(&p, &two).unwrap());
        let q_tile = o.q_block * o.d * 2;
        // (q_full1, q_empty1, slot1, and the slot's place without the scheduler)
        let bars = if dynamic_tiles { 24 } else { 32 };
        assert_eq!(
            (b.threads, b.smem_bytes),
            (a.threads, a.smem_bytes + q_tile + bars)
        );
        assert_eq!((&b.params, b.grid), (&a.params, a.grid), "{}", p.name);
        assert_ne!(a.ptx, b.ptx, "{}", p.name);
        assert_eq!(b.ptx, emit(&p, &two).unwrap().ptx);
    }
    let not_persistent = PtxOptions {
        q_double: true,
        persistent: false,
        ..d128
    };
    let three_stages = PtxOptions {
        q_double: true,
        ..d128.warp_specialized(128, 3)
    };
    let three_one_q = PtxOptions {
        persistent: true,
        ..d128.warp_specialized(128, 3)
    };
    assert!(emit(&samples::dense(), &three_one_q).is_ok());
    for o in [not_persistent, three_stages] {
        assert!(matches!(
            emit(&samples::dense(), &o),
            Err(LlvmError::Unsupported(_))
        ));
    }
}

#[test]
fn wgmma_rejects_what_it_cannot_run() {
    let base = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma();
    let sm80 = PtxOptions {
        arch: Arch::Sm80,
        ..base
    };
    let d96 = PtxOptions {
        d: 96,
        dv: 96,
        ..base
    };
    let mt2 = PtxOptions { m_tiles: 2, ..base };
    let kv32 = PtxOptions {
        kv_block: 32,
        ..base
    };
    for o in [sm80, d96, mt2, kv32] {
        assert!(
            matches!(emit(&samples::dense(), &o), Err(LlvmError::Unsupported(_))),
            "{o:?}"
        );
    }
}

#[test]
fn defaults_pick_wgmma_on_sm90_for_d64_and_d128_only() {
    let ty = InputType::Bf16;
    // D or Dv 128: the warp-specialized TMA kernel; D64: the plain wgmma kernel
    let d128 = PtxOptions::new(Arch::Sm90, 128, 128, ty);
    assert_eq!(
        (d128.mma, d128.ws, d128.q_block, d128.kv_block, d128.stages),
        (Mma::Wgmma, true, 128, 128, 2)
    );
    assert_eq!(d128.threads(), 384);
    let d64 = PtxOptions::new(Arch::Sm90, 64, 64, ty);
    assert_eq!(
        (d64.mma, d64.ws, d64.q_block, d64.kv_block),
        (Mma::Wgmma, false, 128, 128)
    );
    let mixed = PtxOptions::new(Arch::Sm90, 64, 128, ty);
    assert_eq!(
        (mixed.mma, mixed.ws, mixed.kv_block),
        (Mma::Wgmma, true, 128)
    );
    for (arch, d) in [
        (Arch::Sm80, 128),
        (Arch::Sm80, 64),
        (Arch::Sm90, 96),
        (Arch::Sm90, 256),
    ] {
        let o = PtxOptions::new(arch, d, d, ty);
        assert_eq!(o, PtxOptions::sync(arch, d, d, ty), "{arch} D{d}");
        assert_eq!(o.mma, Mma::Sync);
    }
    // the defaults are valid kernels
    for o in [d128, d64, mixed] {
        emit(&samples::causal(), &o).unwrap();
    }
}

#[test]
fn min_ctas_becomes_minnctapersm() {
    let mut o = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma();
    assert_eq!(
        o.min_ctas, 2,
        "the wgmma default caps registers for 2 CTAs per SM"
    );
    assert!(
        PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
            .warp_specialized(128, 2)
            .min_ctas
            == 1,
        "the warp-specialized kernel: 1 CTA per SM (setmaxnreg needs the entry cap)"
    );
    o.min_ctas = 0;
    assert!(
        !emit(&samples::alibi_causal(16), &o)
            .unwrap()
            .ptx
            .contains(".minnctapersm")
    );
    o.min_ctas = 2;
    let k = emit(&samples::alibi_causal(16), &o).unwrap();
    assert!(
        k.ptx.contains(".minnctapersm 2"),
        "{}",
        &k.ptx[..2000.min(k.ptx.len())]
    );
}

#[test]
fn decode_kinds_are_specs_like_every_kind() {
    use decode::DecodeOptions;
    for p in samples::all(16) {
        let plan = Plan::new(&p);
        for (paged, rows, d) in [(false, 4, 128), (true, 8, 64)] {
            let dopts = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input: InputType::F16,
                rows,
                paged,
                copy: 0,
            };
            let opts = dopts.ptx_options();
            assert_eq!(DecodeOptions::from_ptx(&opts), dopts);
            for kind in [KernelKind::Decode, KernelKind::DecodeCombine] {
                check_decode_spec(&plan, kind, &opts, &dopts, rows);
            }
            // the tensor-core kernel (16 rows per m-tile) and its combine kernel
            let mopts = DecodeOptions {
                rows: 16 * rows / 4,
                ..dopts
            };
            for kind in [
                KernelKind::DecodeMma,
                KernelKind::DecodeMmaFused,
                KernelKind::DecodeCombine,
            ] {
                check_decode_spec(&plan, kind, &mopts.ptx_options(), &mopts, mopts.rows);
            }
            // the layout is part of the options' key (so of the cache key)
            let other = DecodeOptions {
                paged: !paged,
                ..dopts
            }
            .ptx_options();
            assert_ne!(opts.key(), other.key());
        }
    }
    decode_options_refused();
}

/// A decode kind's spec equals the generated kernel's and describes its PTX.
fn check_decode_spec(
    plan: &Plan,
    kind: KernelKind,
    opts: &PtxOptions,
    dopts: &decode::DecodeOptions,
    rows: u32,
) {
    let p = plan.program();
    let s = spec(plan, kind, opts).unwrap();
    let (k, _) = generate(plan, kind, opts, EmitText::PtxOnly).unwrap();
    // the spec without code is the spec of the code, and names its entry
    assert_eq!(k.spec, s, "{} {kind}", p.name);
    assert!(
        k.ptx.contains(&format!(".entry {}(", s.entry)),
        "{}",
        s.entry
    );
    assert_eq!(
        (s.kind, s.threads, s.q_block),
        (kind, decode::THREADS, rows)
    );
    // one argument per parameter in the PTX signature
    let sig = &k.ptx[k.ptx.find(".entry").unwrap()..];
    let sig = &sig[..sig.find(')').unwrap()];
    assert_eq!(sig.matches(".param").count(), s.params.len(), "{}", s.entry);
    match kind {
        KernelKind::Decode | KernelKind::DecodeMma | KernelKind::DecodeMmaFused => {
            assert_eq!(
                s.grid,
                [GridDim::Splits, GridDim::KvHeadRowGroups, GridDim::Batches]
            );
            let smem = if kind != KernelKind::Decode {
                decode_mma::smem_bytes(dopts)
            } else {
                dopts.smem_bytes()
            };
            assert_eq!(s.smem_bytes, smem);
            for want in [
                KernelParam::PageTable,
                KernelParam::Ranges,
                KernelParam::PartO,
            ] {
                assert!(s.params.contains(&want), "{want:?}");
            }
            // only the fused kernel writes O and LSE (and counts in DecodeSem)
            let fused = kind == KernelKind::DecodeMmaFused;
            for want in [KernelParam::O, KernelParam::Lse, KernelParam::DecodeSem] {
                assert_eq!(s.params.contains(&want), fused, "{kind} {want:?}");
            }
        }
        _ => {
            assert_eq!(s.grid, [GridDim::QRows, GridDim::Heads, GridDim::Batches]);
            // the warps' partial sums of O, a max and a sum per warp
            assert_eq!(s.smem_bytes, decode::combine_smem_bytes(dopts.d));
            assert_eq!(s.smem_bytes, 4 * 4 * (dopts.d + 2));
            assert!(s.params.contains(&KernelParam::O));
        }
    }
}

fn decode_options_refused() {
    use decode::DecodeOptions;
    // rows outside 1..=16 and D != Dv are refused with a clear error
    let p = &samples::all(16)[0];
    let plan = Plan::new(p);
    let bad = DecodeOptions {
        arch: Arch::Sm90,
        d: 64,
        input: InputType::Bf16,
        rows: 32,
        paged: false,
        copy: 0,
    }
    .ptx_options();
    assert!(spec(&plan, KernelKind::Decode, &bad).is_err());
    let mut uneven = DecodeOptions {
        rows: 4,
        ..DecodeOptions::from_ptx(&bad)
    }
    .ptx_options();
    uneven.dv = 128;
    let e = spec(&plan, KernelKind::Decode, &uneven)
        .unwrap_err()
        .to_string();
    assert!(e.contains("D = Dv"), "{e}");
}

/// The per-binding refinement of the defaults: the three-consumer kernel at D64 for
/// closed-form ranges that are not bands, the LPT order where the range grows with q,
/// float positions below the bound; every result validates and generates.
#[test]
fn binding_options_follow_the_plan() {
    let plan_of = |src: &str| {
        let m = crate::compile_source(src).unwrap();
        Plan::new(&m.programs[0])
    };
    let causal = plan_of("mask m(b, h, q, kv) { q >= kv } attention a { mask = m; }");
    let dense = plan_of("attention a { }");
    let band = plan_of("mask m(b, h, q, kv) { q >= kv && q - kv < 256 } attention a { mask = m; }");
    let doc = plan_of(
        "tensor doc: i32[B, KV]; mask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] } attention a { mask = m; }",
    );
    let d64 = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
    let d128 = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let alibi = plan_of(
        "score s(s, b, h, q, kv) { s + (kv - q) as f32 * 0.5 } mask m(b, h, q, kv) { q >= kv } attention a { score = s; mask = m; }",
    );
    let bias = plan_of(
        "tensor t: f32[KV]; score s(s, b, h, q, kv) { s + t[kv] } attention a { score = s; }",
    );
    let softcap = plan_of(
        "score s(s, b, h, q, kv) { 30.0 * tanh(s / 30.0) } mask m(b, h, q, kv) { q >= kv } attention a { score = s; mask = m; }",
    );
    let at = |p: &Plan, o: PtxOptions, len| o.for_binding(p, len);
    let o = at(&causal, d64, 4096);
    assert_eq!(
        (o.ws, o.q_block, o.lpt_group, o.float_positions),
        (true, 192, 8, true)
    );
    // a score reading positions or tensors per element: two consumer warpgroups
    let o = at(&alibi, d64, 4096);
    assert_eq!((o.ws, o.q_block, o.lpt_group), (true, 128, 8));
    let o = at(&bias, d64, 4096);
    assert_eq!((o.ws, o.q_block, o.lpt_group), (true, 128, 0));
    // arithmetic on the score alone keeps three
    let o = at(&softcap, d64, 4096);
    assert_eq!((o.ws, o.q_block, o.lpt_group), (true, 192, 8));
    let o = at(&dense, d64, 4096);
    assert_eq!((o.ws, o.q_block, o.lpt_group), (true, 192, 0));
    // persistent CTAs with static rounds: no mask at D64 (three consumers), bands at
    // D128 and dense D128; with the dynamic tile scheduler: causal-type ranges and block
    // tables (on the warp-specialized kernel); neither elsewhere
    assert!(o.persistent && !o.dynamic_tiles);
    let schedule = |p: &Plan, o: PtxOptions| {
        let o = at(p, o, 4096);
        // (two Q buffers exactly where the CTAs are persistent)
        assert_eq!(o.q_double, o.persistent, "{o:?}");
        (o.persistent, o.dynamic_tiles)
    };
    assert_eq!(schedule(&band, d128), (true, false));
    assert_eq!(schedule(&dense, d128), (true, false));
    for (p, o) in [
        (&causal, d64),
        (&softcap, d64),
        (&alibi, d64),
        (&causal, d128),
        (&alibi, d128),
        (&softcap, d128),
        (&doc, d128),
    ] {
        assert_eq!(schedule(p, o), (true, true), "{o:?}");
    }
    for (p, o) in [(&band, d64), (&bias, d64), (&doc, d64), (&bias, d128)] {
        assert_eq!(schedule(p, o), (false, false), "{o:?}");
    }
    // the last tiles split along kv (session 18) on dense attention: D128 (now
    // persistent in static rounds) and D64 (three consumers); not on bands (slower),
    // with a score, the dynamic scheduler or off the warp-specialized kernel
    for (p, o) in [(&dense, d128), (&dense, d64)] {
        let o = at(p, o, 4096);
        assert!(o.tail_split && o.persistent && !o.dynamic_tiles && o.q_double);
        assert!(o.validate().is_ok(), "{o:?}");
    }
    for (p, o) in [
        (&band, d128),
        (&bias, d128),
        (&bias, d64),
        (&causal, d128),
        (&causal, d64),
        (&doc, d128),
        (&band, d64),
        (&softcap, d64),
        (&alibi, d128),
    ] {
        assert!(!at(p, o, 4096).tail_split, "{o:?}");
    }
    // q blocks from the end where the closed-form range grows with q (the partial q
    // block is then the lightest); not for tables, bands, no mask or the plain kernel
    for (p, o) in [
        (&causal, d64),
        (&softcap, d64),
        (&alibi, d64),
        (&causal, d128),
        (&alibi, d128),
        (&softcap, d128),
    ] {
        assert!(at(p, o, 4096).q_from_end, "{o:?}");
    }
    for (p, o) in [
        (&doc, d128),
        (&band, d128),
        (&dense, d128),
        (&dense, d64),
        (&band, d64),
        (&doc, d64),
        (&bias, d64),
    ] {
        assert!(!at(p, o, 4096).q_from_end, "{o:?}");
    }
    // O through shared memory and TMA stores (session 20): causal-type closed forms
    // without a score or with a position bias (ALiBi) at D = Dv = 128 (the dynamic
    // scheduler's); not with other scores, on tables, bands, dense, D64 or three stages
    assert!(at(&causal, d128, 4096).o_tma && at(&causal, d128, 4096).validate().is_ok());
    assert!(at(&alibi, d128, 4096).o_tma && at(&alibi, d128, 4096).validate().is_ok());
    for (p, o) in [
        (&alibi, d64),
        (&softcap, d128),
        (&doc, d128),
        (&band, d128),
        (&dense, d128),
        (&causal, d64),
        (&bias, d128),
    ] {
        assert!(!at(p, o, 4096).o_tma, "{o:?}");
    }
    let three = PtxOptions { stages: 3, ..d128 };
    assert!(!at(&causal, three, 4096).o_tma);
    // the partial blocks' own path on the two-consumer warp-specialized kernel only
    // and without a score function
    assert!(at(&causal, d128, 4096).split_tail && at(&doc, d128, 4096).split_tail);
    assert!(!at(&causal, d64, 4096).split_tail && !at(&band, d64, 4096).split_tail);
    assert!(!at(&alibi, d64, 4096).split_tail && !at(&alibi, d128, 4096).split_tail);
    // D64 bands and block tables: the plain wgmma kernel with tiles of 64 x 64
    let o = at(&band, d64, 4096);
    assert_eq!(
        (o.ws, o.q_block, o.kv_block, o.lpt_group),
        (false, 64, 64, 0)
    );
    let o = at(&doc, d64, 4096);
    assert_eq!(
        (o.ws, o.q_block, o.kv_block, o.lpt_group),
        (false, 64, 64, 0)
    );
    assert!(o.validate().is_ok());
    // block tables on the warp-specialized kernel: longest-first groups of 8 slices too
    let o = at(&doc, d128, 4096);
    assert_eq!((o.ws, o.q_block, o.lpt_group), (true, 128, 8));
    let o = at(&causal, d128, 1 << 22);
    assert_eq!(
        (o.ws, o.q_block, o.lpt_group, o.float_positions),
        (true, 128, 8, false)
    );
    // D256: the warp-specialized kernel with kv tiles of 64 (mma.sync off sm_90)
    let d256 = PtxOptions::new(Arch::Sm90, 256, 256, InputType::Bf16);
    let o = at(&causal, d256, 8192);
    assert!(!o.q_from_end && !o.split_tail);
    assert_eq!(
        (o.ws, o.q_block, o.kv_block, o.lpt_group),
        (true, 128, 64, 8)
    );
    let sm80 = PtxOptions::new(Arch::Sm80, 64, 64, InputType::Bf16);
    assert_eq!(at(&causal, sm80, 100).lpt_group, 0);
    let o = at(
        &causal,
        PtxOptions::new(Arch::Sm80, 256, 256, InputType::Bf16),
        100,
    );
    assert_eq!((o.ws, o.mma), (false, Mma::Sync));
    for p in [&causal, &dense, &band, &doc, &alibi, &bias, &softcap] {
        for base in [d64, d128, d256, sm80] {
            let o = at(p, base, 1000);
            o.validate().unwrap();
            emit(p.program(), &o).unwrap();
        }
    }
}

/// `KernelSpec::reallocates_registers` (what makes a runtime load a kernel from PTX, as a
/// whole program) says exactly which kernels contain `setmaxnreg`: forward plain, warp
/// specialized and persistent, the backward's three kinds under every dQ scheme, D64
/// and D128, on a few samples (the masks do not change which warps there are).
#[test]
fn setmaxnreg_kernels_are_the_ones_that_reallocate_registers() {
    let d128 = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    let ws = d128.warp_specialized(128, 2);
    let fwd = [
        d128,
        PtxOptions::sync(Arch::Sm90, 128, 128, InputType::Bf16),
        ws,
        PtxOptions {
            persistent: true,
            ..ws
        },
    ];
    let bwd = [
        PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16),
        PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16).backward_fused(BwdDq::Ordered),
        PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16),
        PtxOptions::backward(Arch::Sm90, 64, 64, InputType::Bf16),
        PtxOptions::backward(Arch::Sm80, 128, 128, InputType::F16),
    ];
    let mut seen = [0usize; 2];
    for p in [
        samples::dense(),
        samples::causal(),
        samples::softcap_causal(),
    ] {
        let plan = Plan::new(&p);
        let kinds = fwd
            .iter()
            .map(|o| (KernelKind::Forward, o))
            .chain(bwd.iter().flat_map(|o| {
                [
                    KernelKind::BackwardPre,
                    KernelKind::BackwardDkDv,
                    KernelKind::BackwardDq,
                ]
                .map(|k| (k, o))
            }));
        for (kind, o) in kinds {
            let (k, _) = generate(&plan, kind, o, EmitText::PtxOnly).unwrap();
            let has = k.ptx.contains("setmaxnreg");
            assert_eq!(
                k.spec.reallocates_registers(),
                has,
                "{} {kind} {}",
                p.name,
                o.key()
            );
            seen[has as usize] += 1;
        }
    }
    // both answers occur: the forward ws kernels and the default D128 fused backward
    assert!(seen[0] > 0 && seen[1] >= 3 * 3, "{seen:?}");
}

/// The cross-tile issue (`cross_tile`): on every sample, D128 (two consumers) and D64
/// (three), closed form and block table, the dynamic kernel's parameters and shared
/// memory, one more S issue (the next tile's first, beside the last P V) and its score
/// code; deterministic; refused without the dynamic tile scheduler.
/// `ATTNC_PTX_DUMP=DIR` also writes each kernel (for ptxas).
#[test]
fn cross_tile_issues_the_next_first_s_with_the_last_pv() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, qb)) in
        crate::test_matrix::cases(&samples::all(16), &[(128, 128), (64, 192), (64, 128)])
    {
        for table in [false, true] {
            let dynamic = PtxOptions {
                lpt_group: 8,
                persistent: true,
                dynamic_tiles: true,
                q_double: true,
                q_from_end: !table,
                split_tail: d == 128 && p.score.is_none(),
                kv_table: table,
                q_block: qb,
                ..PtxOptions::new(Arch::Sm90, d, d, InputType::Bf16).warp_specialized(128, 2)
            };
            let cross = PtxOptions {
                cross_tile: true,
                early_claim: table,
                ..dynamic
            };
            assert_ne!(dynamic.key(), cross.key());
            let (a, b) = (emit(&p, &dynamic).unwrap(), emit(&p, &cross).unwrap());
            assert_eq!(
                (&a.params, a.threads, a.smem_bytes, a.grid),
                (&b.params, b.threads, b.smem_bytes, b.grid)
            );
            let issues = |k: &str| k.matches("wgmma.commit_group").count();
            assert!(
                issues(&b.ptx) > issues(&a.ptx),
                "{} d{d}: {} / {} commits",
                p.name,
                issues(&b.ptx),
                issues(&a.ptx)
            );
            assert_eq!(b.ptx, emit(&p, &cross).unwrap().ptx);
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                let t = if table { "_table" } else { "" };
                std::fs::write(format!("{dir}/{}_d{d}_q{qb}{t}.ptx", p.name), &b.ptx).unwrap();
                std::fs::write(format!("{dir}/{}_d{d}_q{qb}{t}_base.ptx", p.name), &a.ptx).unwrap();
            }
        }
    }
    let static_rounds = PtxOptions {
        persistent: true,
        cross_tile: true,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).warp_specialized(128, 2)
    };
    assert!(matches!(
        emit(&samples::dense(), &static_rounds),
        Err(LlvmError::Unsupported(_))
    ));
}

/// `PtxOptions::q_ahead` (the next tile's Q after this tile's first K and V): on every
/// sample, D128 and D64 (three consumers at q blocks of 192), closed forms and the table
/// forced, the runtime's dynamic-scheduler kernel with the option keeps its parameters,
/// threads, shared memory and grid, emits the Q copy in one or two more places (the CTA's
/// first tile before the walk, the next tile after the first block's copies and on a tile
/// without blocks, which LLVM may merge), claims each tile once per walk step as
/// before, leaves the consumers' code alone (the same wgmma issues and waits) and is
/// deterministic; it is refused without two Q buffers, without the dynamic scheduler and
/// with `cross_tile`. `ATTNC_PTX_DUMP=DIR` writes each kernel and its base (for ptxas).
#[test]
fn q_ahead_copies_the_next_q_after_the_first_block() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, qb)) in crate::test_matrix::cases(&samples::all(16), &[(128, 128), (64, 192)]) {
        for table in [false, true] {
            let base = ws_runtime_options(&p, d, qb, true, table);
            let ahead = PtxOptions {
                q_ahead: true,
                ..base
            };
            assert_ne!(base.key(), ahead.key());
            let (a, b) = (emit(&p, &base).unwrap(), emit(&p, &ahead).unwrap());
            assert_eq!(
                (&a.params, a.threads, a.smem_bytes, a.grid),
                (&b.params, b.threads, b.smem_bytes, b.grid)
            );
            let count = |k: &str, what: &str| k.matches(what).count();
            // Q is D / 64 boxes, K and V too: the copies grow by one or two Q sites
            // (the walk's next-tile sites may be merged into one by LLVM)
            let boxes = (d / 64) as usize;
            let copies = |k: &str| count(k, "cp.async.bulk.tensor");
            let more = copies(&b.ptx) - copies(&a.ptx).min(copies(&b.ptx));
            assert!(
                more == boxes || more == 2 * boxes,
                "{} d{d} table {table}: {} / {} copies",
                p.name,
                copies(&b.ptx),
                copies(&a.ptx)
            );
            for what in [
                "atom.relaxed.gpu.global.add.u32",
                "wgmma.commit_group",
                "wgmma.wait_group",
                "setmaxnreg",
            ] {
                assert_eq!(
                    count(&b.ptx, what),
                    count(&a.ptx, what),
                    "{} d{d} table {table}: {what}",
                    p.name
                );
            }
            assert_eq!(b.ptx, emit(&p, &ahead).unwrap().ptx);
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                let t = if table { "_table" } else { "" };
                let stem = format!("{dir}/{}_d{d}_q{qb}{t}", p.name);
                std::fs::write(format!("{stem}_ahead.ptx"), &b.ptx).unwrap();
                std::fs::write(format!("{stem}_base.ptx"), &a.ptx).unwrap();
            }
        }
    }
    // the option sets of the GPU test (`gpu_q_ahead_matches_oracle`), one per (sample,
    // shape) in turn as there: the plain order without q blocks from the end, checked mode,
    // f16 (LLVM's instcombine needed a second iteration on some: a fatal error with its
    // fixpoint check on)
    let sets = [(0, false, false), (3, true, false), (8, false, true)];
    for (j, p) in samples::all(4).into_iter().enumerate() {
        for (i, (d, qb, ty)) in [
            (128, 128, InputType::Bf16),
            (128, 128, InputType::F16),
            (64, 192, InputType::Bf16),
        ]
        .into_iter()
        .enumerate()
        {
            let k = (i + j) % 3;
            let (lpt, kv_table, q_from_end) = sets[k];
            let o = PtxOptions {
                persistent: true,
                dynamic_tiles: true,
                q_double: true,
                q_ahead: true,
                float_positions: true,
                q_block: qb,
                lpt_group: lpt,
                kv_table,
                q_from_end,
                split_tail: qb == 128 && p.score.is_none() && k != 1,
                checked: i == 1 && k == 0,
                ..PtxOptions::new(Arch::Sm90, d, d, ty).warp_specialized(128, 2)
            };
            emit(&p, &o).unwrap();
        }
    }
    let dynamic = ws_runtime_options(&samples::causal(), 128, 128, true, false);
    for bad in [
        PtxOptions {
            q_ahead: true,
            q_double: false,
            ..dynamic
        },
        PtxOptions {
            q_ahead: true,
            dynamic_tiles: false,
            ..dynamic
        },
        PtxOptions {
            q_ahead: true,
            cross_tile: true,
            ..dynamic
        },
    ] {
        assert!(matches!(
            emit(&samples::causal(), &bad),
            Err(LlvmError::Unsupported(_))
        ));
    }
}

/// `PtxOptions::o_tma` (O through a staging buffer and TMA stores): on every sample, D128
/// (and D64 with Dv 128), closed forms and the table forced, with and without `q_ahead`
/// and `cross_tile`, the dynamic-scheduler kernel with the option takes one more
/// parameter (`TmaO`, after `TmaV`, a tensor map), 32 KB more shared memory (the same
/// threads and grid), writes O with 8 `stmatrix.x4` and 2 TMA stores per epilogue site
/// instead of 4-byte global stores (the global stores left are the LSE's and the
/// counter's: as many `st.global.f32` as without; with q blocks from the end also 8
/// 16-byte copies from the buffer for the first q block's boxes, which start above row
/// 0), keeps the products (the same wgmma
/// issues and waits and claims) and is deterministic; it is refused without the
/// dynamic scheduler, at Dv 64, with three K/V stages beside two Q buffers (no room) and
/// on the three-consumer D64 kernel. `ATTNC_PTX_DUMP=DIR` writes each kernel and its
/// base (for ptxas).
#[test]
fn o_tma_stores_o_through_shared_memory() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, extra)) in
        crate::test_matrix::cases(&samples::all(16), &[(128, 0), (128, 1), (128, 2), (64, 0)])
    {
        for table in [false, true] {
            let mut base = ws_runtime_options(&p, d, 128, true, table);
            base.dv = 128;
            base.q_ahead = extra == 1;
            base.cross_tile = extra == 2;
            let on = PtxOptions {
                o_tma: true,
                ..base
            };
            assert_ne!(base.key(), on.key());
            let (a, b) = (emit(&p, &base).unwrap(), emit(&p, &on).unwrap());
            let what = format!("{} d{d} extra {extra} table {table}", p.name);
            let mut params = a.params.clone();
            let at = params.iter().position(|k| *k == KernelParam::TmaV).unwrap();
            params.insert(at + 1, KernelParam::TmaO);
            assert_eq!(b.params, params, "{what}");
            assert_eq!(
                (a.threads, a.smem_bytes + 32768, a.grid),
                (b.threads, b.smem_bytes, b.grid),
                "{what}"
            );
            assert!(b.smem_bytes <= 227 * 1024, "{what}");
            let count = |k: &str, what: &str| k.matches(what).count();
            let stores = count(&b.ptx, "cp.async.bulk.tensor.3d.global.shared::cta");
            let stm = count(&b.ptx, "stmatrix.sync.aligned");
            assert!(
                stores >= 2 && stores % 2 == 0,
                "{what}: {stores} TMA stores"
            );
            assert_eq!(stm, 4 * stores, "{what}: {stm} stmatrix");
            assert_eq!(count(&a.ptx, "stmatrix"), 0, "{what}");
            assert_eq!(count(&a.ptx, "shared::cta.tile.bulk_group"), 0, "{what}");
            // O's 4-byte global stores are gone (16 per epilogue site and row half;
            // the LSE's and the counter's stay), except, with q blocks from the end
            // (closed forms), on the direct path of boxes that start above row 0
            let (wa, wb) = (
                count(&a.ptx, "st.global.b32"),
                count(&b.ptx, "st.global.b32"),
            );
            assert!(
                wa >= wb + 32 && wb <= 2,
                "{what}: {wb} / {wa} 4-byte stores"
            );
            // (the causal closed form runs q blocks from the end: boxes above row 0
            // are copied from the buffer, 8 16-byte stores per thread)
            let v4 = |k: &str| count(k, "st.global.v4");
            if p.name == "causal" && !table {
                assert_eq!(v4(&b.ptx), v4(&a.ptx) + 8, "{what}: no direct copy");
            }
            assert_eq!(
                count(&b.ptx, "st.global.f32"),
                count(&a.ptx, "st.global.f32"),
                "{what}"
            );
            assert!(b.ptx.contains("cp.async.bulk.wait_group.read 0"), "{what}");
            assert!(b.ptx.contains("cp.async.bulk.wait_group 0"), "{what}");
            for w in [
                "atom.relaxed.gpu.global.add.u32",
                "wgmma.commit_group",
                "wgmma.wait_group",
                "setmaxnreg",
                "cp.async.bulk.tensor.3d.shared::cluster.global",
            ] {
                assert_eq!(count(&b.ptx, w), count(&a.ptx, w), "{what}: {w}");
            }
            assert_eq!(b.ptx, emit(&p, &on).unwrap().ptx);
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                let t = if table { "_table" } else { "" };
                let stem = format!("{dir}/{}_d{d}_x{extra}{t}", p.name);
                std::fs::write(format!("{stem}_otma.ptx"), &b.ptx).unwrap();
                std::fs::write(format!("{stem}_base.ptx"), &a.ptx).unwrap();
            }
        }
    }
    // the GPU test's other option sets: f16, checked mode, the plain order
    for (ty, checked, lpt) in [(InputType::F16, false, 0), (InputType::Bf16, true, 3)] {
        let o = PtxOptions {
            o_tma: true,
            checked,
            lpt_group: lpt,
            ..ws_runtime_options(&samples::causal(), 128, 128, true, false)
        };
        let o = PtxOptions { input: ty, ..o };
        emit(&samples::causal(), &o).unwrap();
    }
    let dynamic = PtxOptions {
        o_tma: true,
        ..ws_runtime_options(&samples::causal(), 128, 128, true, false)
    };
    for bad in [
        PtxOptions {
            dynamic_tiles: false,
            ..dynamic
        },
        PtxOptions {
            dv: 64,
            d: 64,
            ..dynamic
        },
        PtxOptions {
            stages: 3,
            ..dynamic
        },
        PtxOptions {
            stages: 3,
            q_double: false,
            ..dynamic
        },
        ws_runtime_options(&samples::causal(), 64, 192, true, false),
    ] {
        let bad = PtxOptions { o_tma: true, ..bad };
        assert!(
            matches!(
                emit(&samples::causal(), &bad),
                Err(LlvmError::Unsupported(_))
            ),
            "{}",
            bad.key()
        );
    }
}

/// The warp-specialized kernel's options as the runtime sets them for `p` at head dim `d`
/// and q tiles of `qb`: `dynamic` = persistent CTAs taking tiles from a counter in
/// longest-first groups, q blocks from the end and two Q buffers; `table` = kv block table.
/// A paged K/V cache on the warp-specialized forward (`kv_cache = Paged`, session 25:
/// chunked prefill's runs): on every sample, D128 and D64, closed forms and tables, one CTA
/// per tile and the dynamic scheduler, the kernel takes the page table and its three
/// scalars after the tensor maps, loads the page id of each box of a tile (4-byte global
/// loads: one where the page holds the tile, else up to `kv_block / 16` boxes, one per
/// page the tile spans), issues one TMA box per slab for each (the small pages' boxes
/// predicated on lying in the tile), also for the V
/// tile's once more on the path of a tile that ends past `Lkv` (to its own mbarrier, 8
/// bytes more shared memory, waited for by state, the unused slots of the last page
/// zeroed by 16-byte stores and fenced for the async proxy before `v_full`'s arrival), and
/// is deterministic; the contiguous kernel is unchanged by the option's existence (it
/// takes no page table); a kernel without `ws` refuses the option. `ATTNC_PTX_DUMP=DIR`
/// writes each kernel (for ptxas).
#[test]
fn paged_kv_forward_reads_tiles_by_page() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, qb, dynamic)) in crate::test_matrix::cases(
        &samples::all(16),
        &[(128, 128, false), (128, 128, true), (64, 192, false)],
    ) {
        for table in [false, true] {
            let base = ws_runtime_options(&p, d, qb, dynamic, table);
            let on = PtxOptions {
                kv_cache: KvCache::Paged,
                ..base
            };
            assert_ne!(base.key(), on.key());
            let (a, b) = (emit(&p, &base).unwrap(), emit(&p, &on).unwrap());
            let what = format!("{} d{d} dynamic {dynamic} table {table}", p.name);
            let mut params = a.params.clone();
            assert!(!params.contains(&KernelParam::PageTable), "{what}");
            let at = params.iter().position(|k| *k == KernelParam::TmaV).unwrap();
            for (i, k) in [
                KernelParam::PageTable,
                KernelParam::PageShift,
                KernelParam::MaxPages,
                KernelParam::NumPages,
            ]
            .into_iter()
            .enumerate()
            {
                params.insert(at + 1 + i, k);
            }
            assert_eq!(b.params, params, "{what}");
            assert_eq!(
                (a.threads, a.smem_bytes + 8, a.grid),
                (b.threads, b.smem_bytes, b.grid),
                "{what}"
            );
            let count = |k: &str, w: &str| k.matches(w).count();
            let tma = "cp.async.bulk.tensor.3d.shared::cluster.global";
            // K and V and the tail's V: one box per slab for the whole page's arm
            // and for each of kv_block / 16 boxes of the small pages' arm (pages of 16
            // rows up), in place of K's and V's one
            let (slabs, boxes) = (d as usize / 64, b.kv_block as usize / 16);
            let more = (3 * (boxes + 1) - 2) * slabs;
            assert_eq!(count(&a.ptx, tma) + more, count(&b.ptx, tma), "{what}");
            let by_state = "mbarrier.try_wait.shared::cta.b64";
            assert_eq!((count(&a.ptx, by_state), count(&b.ptx, by_state)), (0, 1));
            let fence = "fence.proxy.async.shared::cta";
            assert!(count(&b.ptx, fence) > count(&a.ptx, fence), "{what}");
            assert!(
                count(&b.ptx, "st.shared.v4") >= count(&a.ptx, "st.shared.v4") + 8 * slabs,
                "{what}: the tail rows' zero stores"
            );
            let (la, lb) = (
                count(&a.ptx, "ld.global.u32") + count(&a.ptx, "ld.global.b32"),
                count(&b.ptx, "ld.global.u32") + count(&b.ptx, "ld.global.b32"),
            );
            assert!(lb > la, "{what}: {lb} / {la} 4-byte global loads");
            assert_eq!(emit(&p, &on).unwrap().ptx, b.ptx, "{what}: deterministic");
            // V's copies on a second producer thread: the same copies, split between
            // two threads; under the dynamic scheduler that thread reads the tile slot
            // and counts at each `q_empty` besides the consumers
            let two = emit(&p, &PtxOptions { producers: 2, ..on }).unwrap();
            assert_eq!(count(&two.ptx, tma), count(&b.ptx, tma), "{what}");
            assert_eq!(
                (&two.params, two.smem_bytes, two.threads),
                (&b.params, b.smem_bytes, b.threads),
                "{what}"
            );
            assert_ne!(two.ptx, b.ptx, "{what}: v_producer");
            let init = |k: &str, n: u32| count(k, &format!(", {n};"));
            let consumers = b.threads - 128;
            if dynamic {
                // q_empty and q_empty1 (two Q buffers): one more arrival each
                assert_eq!(
                    (init(&two.ptx, consumers + 1), init(&b.ptx, consumers + 1)),
                    (2, 0),
                    "{what}: q_empty's count"
                );
                assert_eq!(
                    count(&two.ptx, "ld.shared.u32") + count(&two.ptx, "ld.shared.b32"),
                    count(&b.ptx, "ld.shared.u32") + count(&b.ptx, "ld.shared.b32") + 1,
                    "{what}: the V thread's read of the tile slot"
                );
            }
            // four producer threads: K's and V's boxes (or slabs) each split between
            // two threads, the same copies and one byte count per tile and tensor; under
            // the dynamic scheduler three threads read the tile slot
            let four = emit(&p, &PtxOptions { producers: 4, ..on }).unwrap();
            assert_eq!(count(&four.ptx, tma), count(&b.ptx, tma), "{what}: four");
            let expect = "mbarrier.arrive.expect_tx";
            assert_eq!(
                count(&four.ptx, expect),
                count(&b.ptx, expect),
                "{what}: one byte count per tile"
            );
            assert_eq!(
                (&four.params, four.smem_bytes, four.threads),
                (&b.params, b.smem_bytes, b.threads),
                "{what}"
            );
            assert!(four.ptx != two.ptx && four.ptx != b.ptx, "{what}: four");
            if dynamic {
                assert_eq!(
                    (init(&four.ptx, consumers + 3), init(&b.ptx, consumers + 3)),
                    (2, 0),
                    "{what}: q_empty's count with four producer threads"
                );
            }
            if let Some(dir) = &dump {
                let name = format!("{dir}/paged_{}_d{d}_{dynamic}_{table}.ptx", p.name);
                std::fs::write(name, &b.ptx).unwrap();
                let name = format!("{dir}/vprod_{}_d{d}_{dynamic}_{table}.ptx", p.name);
                std::fs::write(name, &two.ptx).unwrap();
                let name = format!("{dir}/prod4_{}_d{d}_{dynamic}_{table}.ptx", p.name);
                std::fs::write(name, &four.ptx).unwrap();
            }
        }
    }
    for p in samples::all(16) {
        // persistent CTAs in static rounds (the tail split on dense D128): the second
        // producer thread walks the same tiles and pieces
        let persistent = PtxOptions {
            persistent: true,
            kv_cache: KvCache::Paged,
            ..ws_runtime_options(&p, 128, 128, false, false)
        };
        let (one, two) = (
            emit(&p, &persistent).unwrap(),
            emit(
                &p,
                &PtxOptions {
                    producers: 2,
                    ..persistent
                },
            )
            .unwrap(),
        );
        let tma = "cp.async.bulk.tensor.3d.shared::cluster.global";
        assert_ne!(one.ptx, two.ptx, "{}", p.name);
        assert_eq!(
            one.ptx.matches(tma).count(),
            two.ptx.matches(tma).count(),
            "{}",
            p.name
        );
        if let Some(dir) = &dump {
            std::fs::write(format!("{dir}/vprod_{}_persistent.ptx", p.name), &two.ptx).unwrap();
        }
        let plain = PtxOptions {
            kv_cache: KvCache::Paged,
            ws: false,
            ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
        };
        let e = emit(&p, &plain).unwrap_err().to_string();
        assert!(e.contains("paged") && e.contains("ws"), "{e}");
    }
}

fn ws_runtime_options(p: &Program, d: u32, qb: u32, dynamic: bool, table: bool) -> PtxOptions {
    PtxOptions {
        lpt_group: if dynamic { 8 } else { 0 },
        persistent: dynamic,
        dynamic_tiles: dynamic,
        q_double: dynamic,
        q_from_end: dynamic,
        kv_table: table,
        split_tail: d == 128 && p.score.is_none(),
        q_block: qb,
        float_positions: true,
        ..PtxOptions::new(Arch::Sm90, d, d, InputType::Bf16).warp_specialized(128, 2)
    }
}

/// `pv_wait_late` and `softmax_ilp` on the warp-specialized kernel: on every sample, D128
/// (one CTA per tile, and the dynamic scheduler's causal shape) and D64 (three
/// consumers), each changes the PTX (`pv_wait_late`: two waits for the P V in the loop,
/// one per arm of the rescale branch), keeps the parameters and shared memory, and is
/// deterministic; the other kernels ignore them. `ATTNC_PTX_DUMP=DIR` also writes each
/// kernel (for ptxas).
#[test]
fn late_pv_wait_and_softmax_ilp_change_only_the_ws_loop() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, qb, dynamic)) in crate::test_matrix::cases(
        &samples::all(16),
        &[(128, 128, false), (128, 128, true), (64, 192, false)],
    ) {
        let base = ws_runtime_options(&p, d, qb, dynamic, false);
        let a = emit(&p, &base).unwrap();
        for (late, ilp) in [(true, false), (false, true), (true, true)] {
            let o = PtxOptions {
                pv_wait_late: late,
                softmax_ilp: ilp,
                ..base
            };
            assert_ne!(o.key(), base.key());
            let b = emit(&p, &o).unwrap();
            assert_eq!(
                (&a.params, a.threads, a.smem_bytes, a.grid),
                (&b.params, b.threads, b.smem_bytes, b.grid)
            );
            assert_ne!(a.ptx, b.ptx, "{} d{d} late {late} ilp {ilp}", p.name);
            let waits = |k: &str| k.matches("wgmma.wait_group.sync.aligned 0;").count();
            assert_eq!(
                waits(&b.ptx),
                waits(&a.ptx) + late as usize,
                "{} d{d} late {late}",
                p.name
            );
            assert_eq!(b.ptx, emit(&p, &o).unwrap().ptx);
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                let dy = if dynamic { "_dyn" } else { "" };
                let tag = format!(
                    "{}{}",
                    if late { "_late" } else { "" },
                    if ilp { "_ilp" } else { "" }
                );
                std::fs::write(format!("{dir}/{}_d{d}_q{qb}{dy}{tag}.ptx", p.name), &b.ptx)
                    .unwrap();
                std::fs::write(format!("{dir}/{}_d{d}_q{qb}{dy}_base.ptx", p.name), &a.ptx)
                    .unwrap();
            }
        }
    }
    // the other kernels ignore both
    for o in [
        PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma(),
        PtxOptions::new(Arch::Sm80, 128, 128, InputType::Bf16),
    ] {
        let x = PtxOptions {
            pv_wait_late: true,
            softmax_ilp: true,
            ..o
        };
        assert_eq!(
            emit(&samples::causal(), &o).unwrap().ptx,
            emit(&samples::causal(), &x).unwrap().ptx
        );
    }
}

/// `PtxOptions::mask_early`: on the warp-specialized kernel a masked program's partial
/// blocks read keep bits that were set between the issue of S and its wait (the mask's
/// tensor reads move there: a document mask's reads all precede the loop's first wait
/// for S); unmasked programs, checked mode and the other kernels are unchanged; the PTX
/// is deterministic. `ATTNC_PTX_DUMP=DIR` also writes each kernel (for ptxas).
#[test]
fn mask_early_moves_the_mask_before_the_wait_for_s() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    for (p, (d, qb, dynamic, table)) in crate::test_matrix::cases(
        &samples::all(16),
        &[
            (128, 128, false, false),
            (128, 128, true, false),
            (128, 128, true, true),
            (64, 192, false, false),
        ],
    ) {
        let base = ws_runtime_options(&p, d, qb, dynamic, table);
        let o = PtxOptions {
            mask_early: true,
            ..base
        };
        assert_ne!(o.key(), base.key());
        let a = emit(&p, &base).unwrap();
        let b = emit(&p, &o).unwrap();
        assert_eq!(
            (&a.params, a.threads, a.smem_bytes, a.grid),
            (&b.params, b.threads, b.smem_bytes, b.grid)
        );
        assert_eq!(b.ptx, emit(&p, &o).unwrap().ptx);
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).unwrap();
            let tag = format!(
                "{}{}",
                if dynamic { "_dyn" } else { "" },
                if table { "_table" } else { "" }
            );
            std::fs::write(
                format!("{dir}/{}_d{d}_q{qb}{tag}_early.ptx", p.name),
                &b.ptx,
            )
            .unwrap();
            std::fs::write(format!("{dir}/{}_d{d}_q{qb}{tag}_base.ptx", p.name), &a.ptx).unwrap();
        }
        if p.mask.is_none() {
            assert_eq!(a.ptx, b.ptx, "{} d{d}: no mask, no change", p.name);
            continue;
        }
        assert_ne!(a.ptx, b.ptx, "{} d{d} q{qb} dynamic {dynamic}", p.name);
        // checked mode keeps the per-element mask
        let checked = |x: &PtxOptions| {
            emit(
                &p,
                &PtxOptions {
                    checked: true,
                    ..*x
                },
            )
            .unwrap()
            .ptx
        };
        assert_eq!(checked(&base), checked(&o), "{} checked", p.name);
        if p.name == "document_causal" {
            // between the loop's wait for S (`wait_group 1`) and its wait for P V
            // the base kernel reads the ids (two paths), this one reads nothing
            let softmax_reads = |ptx: &str| {
                let w1 = ptx.find("wgmma.wait_group.sync.aligned 1;").unwrap();
                let w0 = w1 + ptx[w1..].find("wgmma.wait_group.sync.aligned 0;").unwrap();
                ptx[w1..w0].matches("ld.global").count()
            };
            assert!(softmax_reads(&a.ptx) >= 34, "{}", softmax_reads(&a.ptx));
            assert_eq!(softmax_reads(&b.ptx), 0, "d{d} q{qb} table {table}");
        }
    }
    // the other kernels ignore it
    for o in [
        PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma(),
        PtxOptions::new(Arch::Sm80, 128, 128, InputType::Bf16),
    ] {
        let x = PtxOptions {
            mask_early: true,
            ..o
        };
        assert_eq!(
            emit(&samples::document_causal(), &o).unwrap().ptx,
            emit(&samples::document_causal(), &x).unwrap().ptx
        );
    }
}

/// `PtxOptions::mask_kinds`: on a mask that splits into linear and other conjuncts
/// (`document_causal`), the forward kernels (warp-specialized with the split tail path,
/// and the others) and the block-table kernel change, deterministically; the
/// warp-specialized kernel's two new partial paths read no captured tensor on the path of
/// kind 2 (only `q >= kv`); masks that do not split, checked mode and the parameters are
/// unchanged. `ATTNC_PTX_DUMP=DIR` also writes each kernel (for ptxas).
#[test]
fn mask_kinds_split_the_partial_path_by_conjunct() {
    let dump = std::env::var("ATTNC_PTX_DUMP").ok();
    let table = |p: &Program, o: &PtxOptions| {
        generate(&Plan::new(p), KernelKind::BlockTable, o, EmitText::PtxOnly)
            .map(|(k, _)| k.ptx)
            .unwrap()
    };
    for (p, (d, qb, dynamic)) in crate::test_matrix::cases(
        &samples::all(16),
        &[(128, 128, false), (128, 128, true), (64, 192, false)],
    ) {
        let splits = p
            .mask
            .as_ref()
            .and_then(crate::analysis::linear::split_conjuncts)
            .is_some();
        assert_eq!(splits, p.name == "document_causal", "{}", p.name);
        let base = ws_runtime_options(&p, d, qb, dynamic, true);
        let o = PtxOptions {
            mask_kinds: true,
            ..base
        };
        assert_ne!(o.key(), base.key());
        let a = emit(&p, &base).unwrap();
        let b = emit(&p, &o).unwrap();
        assert_eq!(
            (&a.params, a.threads, a.smem_bytes, a.grid),
            (&b.params, b.threads, b.smem_bytes, b.grid)
        );
        assert_eq!(b.ptx, emit(&p, &o).unwrap().ptx);
        let checked = |x: &PtxOptions| {
            emit(
                &p,
                &PtxOptions {
                    checked: true,
                    ..*x
                },
            )
            .unwrap()
            .ptx
        };
        assert_eq!(checked(&base), checked(&o), "{} checked", p.name);
        if p.mask.is_some() {
            let (ta, tb) = (table(&p, &base), table(&p, &o));
            assert_eq!(ta != tb, splits, "{} table", p.name);
            assert_eq!(tb, table(&p, &o));
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(format!("{dir}/{}_d{d}_q{qb}_table_kinds.ptx", p.name), &tb)
                    .unwrap();
            }
        }
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).unwrap();
            let tag = if dynamic { "_dyn" } else { "" };
            std::fs::write(
                format!("{dir}/{}_d{d}_q{qb}{tag}_kinds.ptx", p.name),
                &b.ptx,
            )
            .unwrap();
        }
        if !splits {
            assert_eq!(a.ptx, b.ptx, "{} d{d}: no split, no change", p.name);
            continue;
        }
        assert_ne!(a.ptx, b.ptx, "{} d{d} q{qb} dynamic {dynamic}", p.name);
        if o.split_tail {
            // the kind-2 path (the first of the two new ones in the IR) evaluates
            // `q >= kv` alone: no load between its label and the next path's
            let ir = &b.llvm_ir;
            let at = ir.find("\npartial_linear_block").unwrap();
            let next = at + ir[at..].find("\npartial_other_block").unwrap();
            let body = &ir[at..next];
            assert!(!body.contains("load i32, ptr addrspace(1)"), "{body}");
            assert!(ir[next..].contains("load i32, ptr addrspace(1)"));
        }
    }
    // the other kernels: changed (kind 1 alone is the fast path) and deterministic
    for o in [
        PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma(),
        PtxOptions::new(Arch::Sm80, 128, 128, InputType::Bf16),
    ] {
        let x = PtxOptions {
            mask_kinds: true,
            ..o
        };
        let p = samples::document_causal();
        assert_ne!(emit(&p, &o).unwrap().ptx, emit(&p, &x).unwrap().ptx);
        assert_eq!(emit(&p, &x).unwrap().ptx, emit(&p, &x).unwrap().ptx);
    }
}

/// Bit-interleaving masks (Morton-ordered neighbourhood attention over a 64 x 64 and a
/// 128 x 128 canvas) through the options a binding gets (`PtxOptions::new` then
/// `for_binding`, as the runtime's forward), both head dims and input types: LLVM 22's
/// instcombine needed a second iteration on these kernels, which its fixpoint check made a
/// fatal error that aborted the process (session 36, on the H200 through the Python
/// package; `examples/morton_natten.attn`'s own 32 x 32 canvas did not show it).
#[test]
fn bit_interleaving_masks_emit_with_binding_options() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/morton_natten.attn"
    ))
    .unwrap();
    for (w, k) in [(64, 7), (128, 15)] {
        let src = base
            .replace("CANVAS_W: i32 = 32", &format!("CANVAS_W: i32 = {w}"))
            .replace("CANVAS_H: i32 = 32", &format!("CANVAS_H: i32 = {w}"))
            .replace("KERNEL_W: i32 = 7", &format!("KERNEL_W: i32 = {k}"))
            .replace("KERNEL_H: i32 = 7", &format!("KERNEL_H: i32 = {k}"));
        assert_ne!(src, base);
        let p = crate::compile_source(&src).unwrap().programs.remove(0);
        let plan = Plan::new(&p);
        for (arch, d, ty) in [
            (Arch::Sm90, 128, InputType::Bf16),
            (Arch::Sm90, 64, InputType::Bf16),
            (Arch::Sm90, 128, InputType::F16),
            (Arch::Sm80, 128, InputType::Bf16),
        ] {
            let o = PtxOptions::new(arch, d, d, ty).for_binding(&plan, w * w);
            let ptx = emit(&p, &o).unwrap_or_else(|e| panic!("canvas {w} {arch:?} D{d}: {e}"));
            assert!(ptx.ptx.contains(".entry"));
        }
    }
}
