//! PTX of every example attention (sm_90, bf16, D = 64), snapshot-tested, and generated
//! twice to check it is byte-identical (the kernel cache keys depend on it). Runs without
//! a GPU: only code generation is exercised here; runtime/tests/gpu.rs runs the kernels.

use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{
    Arch, EmitText, InputType, LlvmError, Mma, PtxKernel, PtxOptions, generate,
};
use attnc_compiler::ir::Program;
use attnc_compiler::plan::Plan;
mod common;

use common::example_files;
use std::path::Path;

/// The kernel `kind` of `p`.
fn emit_kind(p: &Program, kind: KernelKind, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    generate(&Plan::new(p), kind, opts, EmitText::PtxAndLlvm).map(|(k, _)| k)
}

/// `examples/{file}` compiled.
fn example_module(file: &str) -> attnc_compiler::Module {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file),
    )
    .unwrap();
    attnc_compiler::compile_source(&src).unwrap()
}

fn emit(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    emit_kind(p, KernelKind::Forward, opts)
}

fn emit_block_table(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    emit_kind(p, KernelKind::BlockTable, opts)
}

#[test]
fn every_example_has_deterministic_ptx() {
    let opts = PtxOptions::sync(Arch::Sm90, 64, 64, InputType::Bf16);
    let mut count = 0;
    for path in example_files() {
        let src = std::fs::read_to_string(&path).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            let a = emit(p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let b = emit(p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(a.ptx, b.ptx, "{}: PTX differs between two runs", p.name);
            assert!(
                a.ptx.contains(".visible .entry"),
                "{}: no kernel entry in the PTX",
                p.name
            );
            assert!(
                a.ptx
                    .contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
                "{}: no tensor-core mma",
                p.name
            );
            insta::assert_snapshot!(format!("ptx_sm90_bf16_d64__{}", p.name), a.ptx);
            count += 1;
        }
    }
    assert!(count >= 16, "only {count} attentions");
}

#[test]
fn sm80_f16_and_d128_generate() {
    let module = example_module("document_alibi.attn");
    let p = &module.programs[0];
    let k = emit(p, &PtxOptions::new(Arch::Sm80, 128, 128, InputType::F16)).unwrap();
    assert!(k.ptx.contains(".target sm_80"));
    assert!(
        k.ptx
            .contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
    );
    insta::assert_snapshot!("ptx_sm80_f16_d128__document_alibi", k.ptx);
}

/// The block-table kernels of the examples whose masks read captured tensors (sm_90,
/// 128x64 tiles): deterministic, a `.entry`, warp votes, and the snapshot.
#[test]
fn tensor_masks_have_deterministic_block_table_ptx() {
    use attnc_compiler::analysis::classify::Tier;
    let opts = PtxOptions {
        kv_block: 64,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma()
    };
    assert_eq!((opts.q_block, opts.kv_block), (128, 64));
    let mut names = Vec::new();
    for path in example_files() {
        let src = std::fs::read_to_string(&path).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            if Plan::new(p).tier() != Tier::Tensors {
                continue;
            }
            let a = emit_block_table(p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let b = emit_block_table(p, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(a.ptx, b.ptx, "{}: PTX differs between two runs", p.name);
            let entry = format!(".visible .entry attnc_blocks_{}", p.name);
            assert!(a.ptx.contains(&entry), "{}: no {entry}", p.name);
            assert!(
                a.ptx.contains("vote.sync.any.pred"),
                "{}: no warp vote",
                p.name
            );
            assert!(
                !a.ptx.contains("mma.sync"),
                "{}: an mma in the table kernel",
                p.name
            );
            // the unchecked kernel stops a tile once it is known partial; the checked one
            // evaluates every point and records out-of-range reads (atom.cas)
            let checked = PtxOptions {
                checked: true,
                ..opts
            };
            let c = emit_block_table(p, &checked).unwrap();
            // the linear conjuncts (causal, the window) bound the tiles evaluated, one
            // i64 offset each plus the KvAllPartial flag; never in checked mode
            use attnc_compiler::backend::llvm::KernelParam;
            let offsets = |k: &attnc_compiler::backend::llvm::PtxKernel| {
                k.params
                    .iter()
                    .filter(|x| matches!(x, KernelParam::KvOffset(_)))
                    .count()
            };
            let implied = Plan::new(p).implied().map(|i| i.closed_form.clone());
            assert_eq!(a.table_skip, implied, "{}", p.name);
            assert_eq!(
                offsets(&a),
                implied.as_ref().map_or(0, |cf| cf.constraints.len()),
                "{}",
                p.name
            );
            assert_eq!(
                a.params.contains(&KernelParam::KvAllPartial),
                implied.is_some(),
                "{}",
                p.name
            );
            if p.name.starts_with("document") {
                assert!(implied.is_some(), "{}: no linear conjunct found", p.name);
            }
            assert_eq!(
                (offsets(&c), c.table_skip.is_none()),
                (0, true),
                "{}",
                p.name
            );
            assert!(
                c.ptx.contains(".global.cas.b32"),
                "{}: checked mode records nothing",
                p.name
            );
            assert!(
                !a.ptx.contains("atom."),
                "{}: fast mode has an atomic",
                p.name
            );
            if p.name.starts_with("document") {
                insta::assert_snapshot!(format!("ptx_blocks_sm90_128x64__{}", p.name), a.ptx);
            }
            names.push(p.name.clone());
        }
    }
    assert!(
        names.iter().any(|n| n == "document_causal") && names.len() >= 4,
        "tensor-mask examples: {names:?}"
    );
}

/// The wgmma paths (sm_90a) on a few examples: the plain kernel at D128 bf16 with kv
/// tiles of 64, D64 f16 with the pipelined P V (the D64 default's kernel), and the
/// warp-specialized TMA kernel (the D128 default, kv tiles of 128); ALiBi + causal on it
/// with the positions as exact floats (`float_positions`, what the runtime binds below
/// 2^22 positions: no `cvt` per element) and the position bias in fused multiply-adds
/// (`pos_bias`, bound with it).
#[test]
fn wgmma_ptx_snapshots() {
    for (file, d, ty, overlap, ws, fpos) in [
        ("causal.attn", 128, InputType::Bf16, false, false, false),
        ("alibi.attn", 128, InputType::Bf16, false, false, false),
        (
            "sliding_window.attn",
            64,
            InputType::F16,
            true,
            false,
            false,
        ),
        ("causal.attn", 128, InputType::Bf16, false, true, false),
        ("softcap.attn", 128, InputType::Bf16, false, true, false),
        ("alibi_causal.attn", 128, InputType::Bf16, false, true, true),
    ] {
        let module = example_module(file);
        let p = &module.programs[0];
        let mut opts = PtxOptions::new(Arch::Sm90, d, d, ty);
        assert_eq!((opts.mma, opts.ws), (Mma::Wgmma, d == 128));
        if !ws {
            opts = PtxOptions {
                kv_block: if d == 128 { 64 } else { 128 },
                ..opts.wgmma()
            };
        }
        opts.overlap = overlap;
        opts.float_positions = fpos;
        // (with float positions the runtime also binds `pos_bias`: ALiBi's score in two
        // fused multiply-adds an element)
        opts.pos_bias = fpos;
        let k = emit(p, &opts).unwrap();
        assert_eq!(
            k.ptx,
            emit(p, &opts).unwrap().ptx,
            "{file}: not deterministic"
        );
        assert!(k.ptx.contains(".target sm_90a"));
        assert!(k.ptx.contains("wgmma.mma_async.sync.aligned"));
        if fpos {
            // the position conversions: per row and per column base, not per element
            let cvts = k.ptx.matches("cvt.rn.f32.s32").count();
            assert!(cvts <= 16, "{file}: {cvts} int-to-float conversions");
            // `pos_bias`: no product per element (the IR's order has two: the bias and
            // log2 e; 650 `mul.f32` in this kernel without the option)
            let muls = k.ptx.matches("mul.f32").count();
            assert!(muls <= 300, "{file}: {muls} f32 products");
        }
        insta::assert_snapshot!(
            format!(
                "ptx_{}_{}_d{d}{}{}__{}",
                if ws { "ws" } else { "wgmma" },
                ty.name(),
                if overlap { "_overlap" } else { "" },
                if fpos { "_fpos" } else { "" },
                p.name
            ),
            k.ptx
        );
    }
}

/// The warp-specialized kernel with three consumer warpgroups (q blocks of 192 rows, D64:
/// FA3's D64 shape) generates for every example (each with its own mask, score and
/// captures), with 512 threads and the registers split 32 / 160; one snapshot (causal).
#[test]
fn ws_three_consumers_generate_for_every_example() {
    let mut seen = 0;
    for path in example_files() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        let module = attnc_compiler::compile_source(&src).unwrap();
        for p in &module.programs {
            let opts = PtxOptions {
                q_block: 192,
                float_positions: true,
                ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16).warp_specialized(128, 2)
            };
            let k = emit(p, &opts).unwrap_or_else(|e| panic!("{name}/{}: {e}", p.name));
            assert!(k.ptx.contains(".maxntid 512"), "{name}/{}", p.name);
            assert!(k.ptx.contains("setmaxnreg.inc.sync.aligned.u32 160"));
            assert!(k.ptx.contains("setmaxnreg.dec.sync.aligned.u32 32"));
            if name == "causal.attn" {
                insta::assert_snapshot!("ptx_ws3_bf16_d64__causal", k.ptx);
            }
            seen += 1;
        }
    }
    assert!(seen >= 20, "{seen} programs");
    // not at D128 (the 64 x 128 accumulators of three warpgroups do not fit 160 registers)
    let opts = PtxOptions {
        q_block: 192,
        ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
    };
    let causal =
        attnc_compiler::compile_source("mask m(b, h, q, kv) { q >= kv } attention a { mask = m; }")
            .unwrap();
    let e = emit(&causal.programs[0], &opts).unwrap_err().to_string();
    assert!(e.contains("tile 192x"), "{e}");
}

/// `PtxOptions::uniform_reads` (the runtime's default for a binding since session 39)
/// against the same binding without it (sm_90, warp-specialized, D128 and D64, and
/// sm_80's mma.sync path): the kernel of every example
/// attention whose score reads tensors with interval rules for their indices
/// (`backend::llvm::uniform`: the relative-position table) or with indices through
/// `kv - q` alone (the diagonal scan: T5's buckets, since session 46) gains the
/// uniform-read path —
/// byte-identical twice, one more copy of the score's element code (the exponentials
/// are the softmax's, not per path: the path shows as `vote.sync.all`) — and every other
/// example's kernel that reads tensors is unchanged by the option. `ATTNC_FWD_PTX_DIR=dir` writes the
/// changed kernels there (for `ptxas -v`).
#[test]
fn uniform_reads_forward_kernels() {
    let dir = std::env::var("ATTNC_FWD_PTX_DIR").ok();
    let mut changed = Vec::new();
    for file in example_files() {
        let src = std::fs::read_to_string(&file).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            // (an attention that reads no tensor has nothing the option could change)
            if p.tensors.is_empty() {
                continue;
            }
            let plan = Plan::new(p);
            for (arch, d) in [(Arch::Sm90, 128), (Arch::Sm90, 64), (Arch::Sm80, 64)] {
                let u = PtxOptions::new(arch, d, d, InputType::Bf16).for_binding(&plan, 8192);
                assert!(u.uniform_reads, "the binding's default since session 39");
                let o = PtxOptions {
                    uniform_reads: false,
                    ..u
                };
                let a = emit(p, &o).unwrap();
                let b = emit(p, &u).unwrap();
                assert_eq!(
                    b.ptx,
                    emit(p, &u).unwrap().ptx,
                    "{}: not deterministic",
                    p.name
                );
                if a.ptx != b.ptx {
                    assert!(b.ptx.contains("vote.sync.all"), "{}", p.name);
                    changed.push(format!("{} {arch:?} d{d}", p.name));
                    if let Some(dir) = &dir {
                        let name = format!("{dir}/{}_{arch:?}_d{d}_uniform.ptx", p.name);
                        std::fs::write(name, &b.ptx).unwrap();
                    }
                }
            }
        }
    }
    assert_eq!(
        changed,
        [
            "relative_bias_table Sm90 d128",
            "relative_bias_table Sm90 d64",
            "relative_bias_table Sm80 d64",
            "t5_encoder Sm90 d128",
            "t5_encoder Sm90 d64",
            "t5_encoder Sm80 d64",
            "t5_decoder Sm90 d128",
            "t5_decoder Sm90 d64",
            "t5_decoder Sm80 d64"
        ]
    );
}

/// `PtxOptions::diag_cse`: with `kv - q` shared along the fragment's diagonals, LLVM
/// computes T5's bucket (one `lg2` each) and reads its table once per diagonal of a
/// thread's fragment, not per element — fewer `lg2` and global loads than without it on
/// the mma.sync and the warp-specialized wgmma kernels; a score that does not read
/// `kv - q` (dense) gets the same PTX either way.
#[test]
fn diagonal_cse_computes_t5_buckets_once_per_diagonal() {
    let module = example_module("t5_relative_bias.attn");
    let dense = example_module("dense.attn");
    let count = |ptx: &str, what: &str| ptx.matches(what).count();
    // (`PtxOptions::new` at D128 on sm_90: the warp-specialized wgmma kernel)
    let ws = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16);
    assert!(ws.ws);
    for base in [PtxOptions::sync(Arch::Sm90, 64, 64, InputType::Bf16), ws] {
        for p in &module.programs {
            let off = emit(p, &base).unwrap().ptx;
            let on = emit(
                p,
                &PtxOptions {
                    diag_cse: true,
                    ..base
                },
            )
            .unwrap()
            .ptx;
            for what in ["lg2.approx", "ld.global"] {
                let (a, b) = (count(&off, what), count(&on, what));
                assert!(
                    b > 0 && 4 * b <= 3 * a,
                    "{}: {what} {a} without the option, {b} with it",
                    p.name
                );
            }
        }
        let p = &dense.programs[0];
        let on = PtxOptions {
            diag_cse: true,
            ..base
        };
        assert_eq!(emit(p, &base).unwrap().ptx, emit(p, &on).unwrap().ptx);
    }
}
