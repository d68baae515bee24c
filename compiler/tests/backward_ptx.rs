//! PTX of the GPU backward kernels (`backend::llvm::backward`: pre, dK/dV, dQ; sm_80,
//! bf16, D = 64) for a few example attentions — no mask, a linear mask (closed form,
//! transposed for dK/dV), a score with a derivative (ALiBi, tanh soft-capping) and a
//! tensor mask (host-made block ranges), a relative-position table (capture gradients in
//! the dQ kernel) — snapshot-tested and generated twice to check it is byte-identical. No
//! float atomics anywhere (the backward is deterministic); capture gradients use integer
//! atomics (`atom.global.add.u64`) only, in the dQ kernel only.
//! Runs without a GPU; runtime/tests/gpu_backward.rs runs the kernels.

use attnc_compiler::backend::llvm::backward::{BackwardKind, emit_backward};
use attnc_compiler::backend::llvm::{Arch, GridDim, InputType, KernelParam, PtxKernel, PtxOptions};
use attnc_compiler::ir::Program;
use attnc_compiler::plan::Plan;
use std::path::Path;

/// The attention `name` of `examples/{file}.attn`.
fn example(file: &str, name: &str) -> Program {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{file}.attn")),
    )
    .unwrap();
    let module = attnc_compiler::compile_source(&src).expect("examples compile");
    module
        .programs
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{file}.attn has no `{name}`"))
}

/// The dK/dV kernel of `o`, emitted twice and asserted byte-identical (`tag` names the
/// case); with `ATTNC_BWD_PTX_DIR=dir` also written to `dir/{file}` (for `ptxas -v`).
fn dkdv_twice(plan: &Plan, o: &PtxOptions, tag: &str, file: &str) -> PtxKernel {
    let a = emit_backward(plan, o, BackwardKind::DkDv).unwrap();
    let b = emit_backward(plan, o, BackwardKind::DkDv).unwrap();
    assert_eq!(a.ptx, b.ptx, "{tag}: PTX differs between two runs");
    if let Ok(dir) = std::env::var("ATTNC_BWD_PTX_DIR") {
        std::fs::write(format!("{dir}/{file}"), &a.ptx).unwrap();
    }
    a
}

#[test]
fn backward_kernels_have_deterministic_ptx() {
    let opts = PtxOptions::backward(Arch::Sm80, 64, 64, InputType::Bf16);
    let mut count = 0;
    for (file, name) in [
        ("dense", "dense"),
        ("causal", "causal_attention"),
        ("alibi_causal", "alibi_causal"),
        ("softcap", "softcap_causal"),
        ("document_causal", "document_causal"),
        ("relative_bias_table", "relative_bias_table"),
    ] {
        let p = &example(file, name);
        for kind in [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq] {
            let plan = Plan::new(p);
            let a = emit_backward(&plan, &opts, kind).unwrap_or_else(|e| panic!("{name}: {e}"));
            let b = emit_backward(&plan, &opts, kind).unwrap();
            assert_eq!(
                a.ptx, b.ptx,
                "{name} {kind:?}: PTX differs between two runs"
            );
            assert!(a.ptx.contains(&format!(".visible .entry {}", a.entry)));
            assert!(
                !a.ptx.contains("atom.global.add.f32") && !a.ptx.contains("red.global.add.f32")
            );
            if kind != BackwardKind::Pre {
                assert!(
                    a.ptx
                        .contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
                    "{name} {kind:?}: no tensor-core mma"
                );
            }
            let caps = !attnc_compiler::backend::llvm::backward::capture_grads(p).is_empty();
            assert_eq!(
                a.ptx.contains("atom.global.add.u64"),
                caps && kind == BackwardKind::Dq,
                "{name} {kind:?}: integer atomics exactly where capture gradients are summed"
            );
            insta::assert_snapshot!(
                format!("bwd_ptx_sm80_bf16_d64__{name}__{}", kind.name()),
                a.ptx
            );
            count += 1;
        }
    }
    assert_eq!(count, 18);
}

/// Every example attention with capture gradients, and a learnable f32 param: the dQ
/// kernel takes one gradient buffer per differentiable tensor (and one for the params),
/// sums with integer atomics only, and its PTX is byte-identical twice, at D 64 and 128,
/// bf16 and f16. `ATTNC_BWD_PTX_DIR=dir` writes the PTX there (for `ptxas -v`).
#[test]
fn capture_gradient_kernels() {
    use attnc_compiler::backend::llvm::KernelParam;
    use attnc_compiler::backend::llvm::backward::capture_grads;
    let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
    let mut sources: Vec<String> = ["learned_bias", "relative_bias_table", "t5_relative_bias"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{f}.attn")),
            )
            .unwrap()
        })
        .collect();
    sources.push(
        "param cap: f32; tensor w: f32[H, 64];\n\
         mask causal(b, h, q, kv) { q >= kv }\n\
         score sc(s, b, h, q, kv) { cap * tanh(s / cap) + w[h, kv % 64] * w[h, q % 64] }\n\
         attention learnable_softcap_twice { mask = causal; score = sc; }"
            .into(),
    );
    let mut n = 0;
    for src in &sources {
        let module = attnc_compiler::compile_source(src).expect("compiles");
        for p in &module.programs {
            let caps = capture_grads(p);
            assert!(!caps.is_empty(), "{}", p.name);
            for (d, ty) in [(64, InputType::Bf16), (128, InputType::F16)] {
                let opts = PtxOptions::backward(Arch::Sm80, d, d, ty);
                let plan = Plan::new(p);
                let a = emit_backward(&plan, &opts, BackwardKind::Dq).unwrap();
                let b = emit_backward(&plan, &opts, BackwardKind::Dq).unwrap();
                assert_eq!(a.ptx, b.ptx, "{}: PTX differs between two runs", p.name);
                assert!(a.ptx.contains("atom.global.add.u64"), "{}", p.name);
                assert!(!a.ptx.contains("atom.global.add.f32"));
                assert!(!a.ptx.contains("red.global.add.f32"));
                let grads: Vec<u32> = a
                    .params
                    .iter()
                    .filter_map(|k| match k {
                        KernelParam::TensorGrad(t) => Some(*t),
                        _ => None,
                    })
                    .collect();
                assert_eq!(grads, caps.tensors, "{}", p.name);
                assert_eq!(
                    a.params.contains(&KernelParam::ParamGrad),
                    !caps.params.is_empty()
                );
                if let Some(dir) = &dir {
                    std::fs::write(format!("{dir}/{}_d{d}_{}.ptx", a.entry, ty.name()), &a.ptx)
                        .unwrap();
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 10);
}

/// The fused sm_90 backward (dQ inside the dK/dV kernel, `backward/fused.rs`) at D128,
/// bf16, for a dense, a causal, a soft-capped, an ALiBi and a relative-position-table
/// attention under the three fused schemes: byte-identical twice; `Ordered` adds with
/// vector reductions after a semaphore wait, `OrderedBulk` hands the parts to a writer
/// warpgroup (setmaxnreg, shared-memory slots, one bulk reduction per tile), `Atomic`
/// neither waits nor counts; each also with `overlap` (`early`: S/dP issued before the
/// next visit's loads, P computed under dP, dV issued before the dS barrier, dK after
/// the first dQ chunk); `OrderedBulk` also with `bwd_tma` (Q/dO by the producer warp's
/// TMA copies), with and without `overlap`, and with `bwd_lpt` (the grid's kv blocks
/// ascending on y, heads on x); `Ordered` also with `bwd_lpt`.
/// Snapshots of the dense dK/dV + dQ kernel under `Ordered`, `OrderedBulk` (the default),
/// `OrderedBulk` with `overlap` and `OrderedBulk` with `bwd_tma`. `ATTNC_BWD_PTX_DIR=dir` writes every kernel there (for
/// `ptxas -arch=sm_90a -v`).
#[test]
fn fused_sm90_kernels() {
    use attnc_compiler::backend::llvm::BwdDq;
    let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
    let settings: Vec<_> = [BwdDq::Ordered, BwdDq::OrderedBulk, BwdDq::Atomic]
        .into_iter()
        .flat_map(|dq| [(dq, false, false, false), (dq, true, false, false)])
        .chain([
            (BwdDq::OrderedBulk, false, true, false),
            (BwdDq::OrderedBulk, true, true, false),
            (BwdDq::OrderedBulk, false, true, true),
            (BwdDq::Ordered, false, false, true),
        ])
        .collect();
    for ((file, name), (dq, early, tma, lpt)) in attnc_compiler::test_matrix::cases(
        &[
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("softcap", "softcap_causal"),
            ("alibi_causal", "alibi_causal"),
            ("relative_bias_table", "relative_bias_table"),
        ],
        &settings,
    ) {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let def = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
        assert_eq!(def.bwd_dq, BwdDq::OrderedBulk);
        let opts = PtxOptions {
            overlap: early,
            bwd_tma: tma,
            bwd_lpt: lpt,
            ..def.backward_fused(dq)
        };
        for kind in [BackwardKind::DkDv, BackwardKind::Dq] {
            let a = emit_backward(&plan, &opts, kind).unwrap();
            let b = emit_backward(&plan, &opts, kind).unwrap();
            assert_eq!(a.ptx, b.ptx, "{name} {dq:?} {kind:?}: PTX differs");
            let tag = format!("{dq:?}").to_lowercase()
                + if tma { "_tma" } else { "" }
                + if lpt { "_lpt" } else { "" }
                + if early { "_early" } else { "" };
            if let Some(dir) = &dir {
                std::fs::write(format!("{dir}/{name}_{tag}_{}.ptx", kind.name()), &a.ptx).unwrap();
            }
            let has = |x: &str| a.ptx.contains(x);
            if kind == BackwardKind::Dq {
                // the convert kernel: the deterministic schemes never zero DqAccum (the
                // first adder stores), so a q block no kv block visited must read its
                // DqSem (0: dQ = 0) instead of converting stale workspace
                assert_eq!(
                    has("ld.global.b32"),
                    dq != BwdDq::Atomic,
                    "{name} {dq:?}: the convert kernel's DqSem read"
                );
                continue;
            }
            assert_eq!(has("ld.acquire.gpu"), dq != BwdDq::Atomic, "{name} {dq:?}");
            assert_eq!(
                has("red.relaxed.gpu.global.add.v4.f32"),
                dq != BwdDq::OrderedBulk,
                "{name} {dq:?}"
            );
            let bulk = dq == BwdDq::OrderedBulk;
            // bwd_lpt: kv heads on x, kv blocks (ascending) on y
            let lpt_grid = [GridDim::KvHeads, GridDim::KvBlocks, GridDim::Batches];
            assert_eq!(a.grid == lpt_grid, lpt, "{name} {tag}");
            // bwd_tma: Q and dO by TMA (two boxes of 64 columns each per visit), the
            // maps as parameters; K and V still by cp.async
            assert_eq!(
                a.ptx.matches("cp.async.bulk.tensor.3d").count(),
                if tma { 4 } else { 0 },
                "{name} {tag}"
            );
            assert_eq!(
                a.params.contains(&KernelParam::TmaQ) && a.params.contains(&KernelParam::TmaDo),
                tma
            );
            assert!(has("cp.async.cg.shared.global"), "{name} {tag}: K/V copies");
            assert_eq!(has("mbarrier.arrive.expect_tx"), tma, "{name} {tag}");
            assert_eq!(has("cp.reduce.async.bulk.global.shared::cta"), bulk);
            assert_eq!(has("setmaxnreg.dec.sync.aligned.u32 24"), bulk);
            assert_eq!(has("setmaxnreg.inc.sync.aligned.u32 240"), bulk);
            assert_eq!(a.threads, if bulk { 384 } else { 256 });
            // `wait_group 1`: the first dQ chunk before dK (early) or dV and dK; early
            // without capture gradients also Sᵀ before dPᵀ and dPᵀ before dV
            let waits_1 = a.ptx.matches("wgmma.wait_group.sync.aligned 1;").count();
            let caps = name == "relative_bias_table";
            let want = if early && !caps { 3 } else { 1 };
            assert_eq!(waits_1, want, "{name} {tag}");
            if name == "dense"
                && dq != BwdDq::Atomic
                && (!early || bulk)
                && (!tma || !early)
                && !lpt
            {
                insta::assert_snapshot!(
                    format!("bwd_ptx_sm90_bf16_d128__dense__bwd_dkdv_{tag}"),
                    a.ptx
                );
            }
        }
    }
}

/// The runtime's backward for a binding (`PtxOptions::backward_for_binding`, sm_90, D128,
/// bf16, L8192): the fused kernel's longest-first CTA order (`bwd_lpt`: kv heads on x, kv
/// blocks ascending on y) exactly for the causal-type masks (a kv block's work varies with
/// the block), the plain order for dense, a band and a block table; positions as exact
/// floats below 2^22, so ALiBi converts no position per element: the dK/dV kernel's
/// `cvt.rn.f32.s32` are the bases and the slope's head (one per element without). The
/// ALiBi + causal dK/dV kernel of these options is snapshot-tested. The warp-wide visit
/// search (`bwd_wscan`) exactly for the band and the block table.
/// `ATTNC_BWD_PTX_DIR=dir` writes each dK/dV kernel there (for `ptxas -v`).
#[test]
fn binding_defaults() {
    use attnc_compiler::backend::llvm::BwdDq;
    let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
    let def = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
    let lpt_grid = [GridDim::KvHeads, GridDim::KvBlocks, GridDim::Batches];
    for (file, name, lpt) in [
        ("dense", "dense", false),
        ("causal", "causal_attention", true),
        ("sliding_window", "sliding_window", false),
        ("alibi_causal", "alibi_causal", true),
        ("softcap", "softcap_causal", true),
        ("document_causal", "document_causal", false),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let o = def.backward_for_binding(&plan, 8192);
        assert_eq!(o.bwd_lpt, lpt, "{name}");
        // the warp-wide visit search exactly for the band and the block table
        let wscan = matches!(name, "sliding_window" | "document_causal");
        assert_eq!(o.bwd_wscan, wscan, "{name}");
        // the search under Sᵀ and dPᵀ only at D64 (no gain measured at D128)
        assert!(!o.bwd_scan_under, "{name}");
        assert!(o.float_positions, "{name}");
        assert_eq!(o.bwd_dq, BwdDq::OrderedBulk);
        assert!(o.bwd_tma);
        // positions at 2^22 are past the bound: no float positions
        assert!(!def.backward_for_binding(&plan, 1 << 22).float_positions);
        // the two-kernel path (caller buffers) takes float positions, never the order
        let sep = PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert!(sep.float_positions && !sep.bwd_lpt);
        let a = emit_backward(&plan, &o, BackwardKind::DkDv).unwrap();
        let b = emit_backward(&plan, &o, BackwardKind::DkDv).unwrap();
        assert_eq!(a.ptx, b.ptx, "{name}: PTX differs between two runs");
        assert_eq!(a.grid == lpt_grid, lpt, "{name}");
        if let Some(dir) = &dir {
            std::fs::write(format!("{dir}/{name}_binding_bwd_dkdv.ptx"), &a.ptx).unwrap();
        }
        // the warp-wide search: a ballot per step in the math warps, the producer and the
        // writer; none without it
        let ballots = a.ptx.matches("vote.sync.ballot").count();
        assert_eq!(ballots >= 3, wscan, "{name}: {ballots} ballots");
        // the fused bindings' dQ conversion (session 14: whole 64-byte pieces, every load
        // first, 16-byte stores): the dense binding's kernel is snapshot-tested
        assert!(o.bwd_convert_wide, "{name}");
        if name == "dense" {
            let q = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
            let q2 = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
            assert_eq!(
                q.ptx, q2.ptx,
                "{name}: dQ conversion PTX differs between two runs"
            );
            assert!(q.ptx.contains("ld.global.v4.f32") || q.ptx.contains("ld.global.v4.b32"));
            insta::assert_snapshot!("bwd_ptx_sm90_bf16_d128__dense__binding_bwd_dq", q.ptx);
        }
        let cvts = a.ptx.matches("cvt.rn.f32.s32").count();
        if name == "alibi_causal" {
            let before = emit_backward(&plan, &def, BackwardKind::DkDv).unwrap();
            assert!(before.ptx.matches("cvt.rn.f32.s32").count() >= 32);
            assert!(cvts <= 6, "{name}: {cvts} int-to-float conversions");
            insta::assert_snapshot!(
                "bwd_ptx_sm90_bf16_d128__alibi_causal__binding_bwd_dkdv",
                a.ptx
            );
            // and the dQ kernel of the two-kernel path
            let q = emit_backward(&plan, &sep, BackwardKind::Dq).unwrap();
            let q0 = emit_backward(
                &plan,
                &PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16),
                BackwardKind::Dq,
            )
            .unwrap();
            let (n, n0) = (
                q.ptx.matches("cvt.rn.f32.s32").count(),
                q0.ptx.matches("cvt.rn.f32.s32").count(),
            );
            assert!(
                n <= 6 && n0 >= 16,
                "dq: {n} / {n0} int-to-float conversions"
            );
        }
    }
}

/// The fused sm_90 backward at D64 (the default since session 9: `OrderedBulk` with the
/// TMA producer, kv tiles of 128) under the binding's options
/// (`PtxOptions::backward_for_binding`): q tiles of 128 with the longest-first order for
/// dense, causal and soft-cap (each math warpgroup computing 64 rows of dQ over every
/// column: one `m64n64k16` per 16 kv rows; Sᵀ and dPᵀ `m64n128k16`), q tiles of 64 for
/// scores that read positions or tensors per element (ALiBi, a relative-position table:
/// each math warpgroup computing 32 of dQ's 64 columns with one `m64n32k16` per 16 kv
/// rows), the longest-first order for causal-type masks; byte-identical twice; one TMA
/// box of 64 columns for Q and one for dO per visit; the writer warpgroup's bulk
/// reductions; the dense dK/dV kernel snapshot-tested at q tiles of 64 (no binding) and
/// at the binding's; the warp-wide visit search (`bwd_wscan`) for the band and the block
/// table. `ATTNC_BWD_PTX_DIR=dir` writes each dK/dV kernel there (for
/// `ptxas -arch=sm_90a -v`).
#[test]
fn fused_sm90_d64_kernels() {
    use attnc_compiler::backend::llvm::BwdDq;
    let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
    let def = PtxOptions::backward(Arch::Sm90, 64, 64, InputType::Bf16);
    assert_eq!(
        (def.bwd_dq, def.q_block, def.kv_block, def.bwd_tma),
        (BwdDq::OrderedBulk, 64, 128, true)
    );
    for (file, name, lpt, q128) in [
        ("dense", "dense", true, true),
        ("causal", "causal_attention", true, true),
        ("softcap", "softcap_causal", true, true),
        // session 13: also where the score reads positions (`backward_q128_positions`)
        ("alibi_causal", "alibi_causal", true, true),
        ("relative_bias_table", "relative_bias_table", false, false),
        ("sliding_window", "sliding_window", false, false),
        ("document_causal", "document_causal", false, false),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let o = def.backward_for_binding(&plan, 4096);
        assert_eq!(o.bwd_lpt, lpt, "{name}");
        assert_eq!(o.q_block, if q128 { 128 } else { 64 }, "{name}");
        // the warp-wide visit search for the band and the block table
        let wscan = matches!(name, "sliding_window" | "document_causal");
        assert_eq!(o.bwd_wscan, wscan, "{name}");
        // the math warps' search under Sᵀ and dPᵀ: every D64 fused binding (session 11)
        assert!(o.bwd_scan_under, "{name}");
        // the two-kernel path keeps q tiles of 64
        let sep = PtxOptions::backward_separate(Arch::Sm90, 64, 64, InputType::Bf16)
            .backward_for_binding(&plan, 4096);
        assert!(sep.q_block == 64 && !sep.bwd_lpt);
        let a = emit_backward(&plan, &o, BackwardKind::DkDv).unwrap();
        let b = emit_backward(&plan, &o, BackwardKind::DkDv).unwrap();
        assert_eq!(a.ptx, b.ptx, "{name}: PTX differs between two runs");
        let has = |x: &str| a.ptx.contains(x);
        assert_eq!(a.threads, 384, "{name}");
        assert_eq!(
            a.ptx.matches("cp.async.bulk.tensor.3d").count(),
            2,
            "{name}"
        );
        assert!(has("cp.reduce.async.bulk.global.shared::cta"), "{name}");
        // (session 24: bands and tables with the writer at 40 registers, the math at 232)
        let inc = if o.bwd_writer_regs == 40 { 232 } else { 240 };
        assert!(
            has(&format!("setmaxnreg.inc.sync.aligned.u32 {inc}")),
            "{name}"
        );
        assert!(a.smem_bytes <= 227 * 1024);
        let count = |x: &str| a.ptx.matches(x).count();
        // the math warpgroups' turns (session 13: D64 without mask or score) issue the
        // first Sᵀ, dPᵀ before the loop and the last dQ part after it
        assert_eq!(o.bwd_pingpong, name == "dense", "{name}");
        let pp = o.bwd_pingpong as usize;
        if q128 {
            // dQ, dV and dK: 8 products each; Sᵀ and dPᵀ: 4 each, 128 q columns wide
            assert_eq!(
                count("wgmma.mma_async.sync.aligned.m64n64k16"),
                24 + 8 * pp,
                "{name}"
            );
            assert_eq!(
                count("wgmma.mma_async.sync.aligned.m64n128k16"),
                8 + 8 * pp,
                "{name}"
            );
            assert_eq!(count("wgmma.mma_async.sync.aligned.m64n32k16"), 0, "{name}");
        } else {
            // dQ: 32 columns per warpgroup, 8 products of 16 kv rows
            assert_eq!(count("wgmma.mma_async.sync.aligned.m64n32k16"), 8, "{name}");
        }
        assert!(!has("atom.global.add.f32") && !has("red.relaxed.gpu.global.add.v4.f32"));
        let conv = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
        assert!(conv.params.contains(&KernelParam::DqAccum), "{name}");
        if let Some(dir) = &dir {
            std::fs::write(format!("{dir}/{name}_d64_binding_bwd_dkdv.ptx"), &a.ptx).unwrap();
        }
        if name == "dense" {
            insta::assert_snapshot!("bwd_ptx_sm90_bf16_d64__dense__binding_bwd_dkdv", a.ptx);
            // q tiles of 64 (the options without a binding, float positions as the
            // binding's: what session 9's first commit snapshot-tested; without session
            // 12's instruction cuts, nor session 23's bulk statistics)
            let o64 = PtxOptions {
                q_block: 64,
                bwd_lpt: false,
                bwd_scan_under: false,
                bwd_pingpong: false,
                bwd_stats_bulk: false,
                ..before_cuts(o)
            };
            let a64 = emit_backward(&plan, &o64, BackwardKind::DkDv).unwrap();
            insta::assert_snapshot!(
                "bwd_ptx_sm90_bf16_d64__dense__bwd_dkdv_orderedbulk_tma",
                a64.ptx
            );
        }
    }
}

/// The fused sm_90 backward with each math warpgroup's own dQ part
/// (`PtxOptions::bwd_wg_dq`) on the binding's options at D128 and D64 (q tiles of 64 and
/// 128): byte-identical twice; no barrier of both math warpgroups in the visit loop (the
/// named barrier of 256 threads only at K/V's arrival), the warpgroups' own barriers (an
/// id in a register, 128 threads); `dS K` only over the warpgroup's 64 kv rows (4
/// `m64n64k16` per chunk of 64 columns, one chunk per 64 columns of D and 64 q rows);
/// the writer's bulk additions as before. Refused without the TMA producer and with
/// `overlap`. `ATTNC_BWD_PTX_DIR=dir` writes each dK/dV kernel there (for `ptxas -v`).
#[test]
fn fused_wg_dq_kernels() {
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("softcap", "softcap_causal"),
            ("alibi_causal", "alibi_causal"),
            ("relative_bias_table", "relative_bias_table"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let def = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16);
            let o = PtxOptions {
                bwd_wg_dq: true,
                ..def.backward_for_binding(&plan, 8192).static_tiles()
            };
            let a = dkdv_twice(
                &plan,
                &o,
                &format!("{name} D{d}"),
                &format!("wgdq_d{d}_q{}_{name}_bwd_dkdv.ptx", o.q_block),
            );
            let tag = format!("{name} D{d} q{}", o.q_block);
            assert_eq!(a.ptx.matches("bar.sync 1, 256;").count(), 1, "{tag}");
            assert!(
                a.ptx.contains(", 128;") && a.ptx.contains("bar.sync %r"),
                "{tag}"
            );
            assert!(
                a.ptx.contains("cp.reduce.async.bulk.global.shared::cta"),
                "{tag}"
            );
            // dS K: per chunk 4 m64n64k16 over this warpgroup's kv rows
            let chunks = (o.q_block / 64) * (d / 64);
            let n64 = a
                .ptx
                .matches("wgmma.mma_async.sync.aligned.m64n64k16")
                .count();
            // besides: Sᵀ and dPᵀ at q tiles of 64, dV and dK at D64
            let sdp = if o.q_block == 64 { 2 * d / 16 } else { 0 };
            let dkdv = if d == 64 { 2 * o.q_block / 16 } else { 0 };
            assert_eq!(n64 as u32, sdp + dkdv + 4 * chunks, "{tag}");
            // (without visit records, whose own refusal without the TMA producer would
            // come first: `fused_visit_rec_kernels`)
            let o_rec = PtxOptions {
                bwd_visit_rec: false,
                ..o
            };
            let off = PtxOptions {
                bwd_tma: false,
                ..o_rec
            };
            let early = PtxOptions {
                overlap: true,
                ..o_rec
            };
            for x in [off, early] {
                let e = emit_backward(&plan, &x, BackwardKind::DkDv)
                    .unwrap_err()
                    .to_string();
                // (q tiles of 128 need the TMA producer and no `overlap` themselves)
                let q128 =
                    "128 at D = Dv = 64 with the TMA producer, kv tiles of 128 and no `overlap`";
                assert!(
                    e.contains("(`bwd_wg_dq`)") || e.contains(q128),
                    "{tag}: {e}"
                );
            }
        }
    }
}

/// The fused kernel on persistent CTAs (`PtxOptions::bwd_persist`, with the TMA producer):
/// a grid of `min(kv tiles, SMs)` CTAs (`GridDim::KvPersistent`), the batch count as a
/// parameter, each role walking the tiles by `nctaid.x`; deterministic PTX; refused
/// without the TMA producer and for a score with capture gradients.
/// `ATTNC_BWD_PTX_DIR=dir` writes each dK/dV kernel there (for `ptxas -v`).
#[test]
fn fused_persist_kernels() {
    for d in [128u32, 64] {
        for (file, name) in [
            ("sliding_window", "sliding_window"),
            ("document_causal", "document_causal"),
            ("causal", "causal_attention"),
            ("dense", "dense"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let def = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            // bands and tables on session 12's options (as gpu_backward_persist and the
            // runtime's ATTNC_BWD_PERSIST=1: visit records need the non-persistent kernel)
            let o = PtxOptions {
                bwd_persist: true,
                bwd_persist_dyn: false,
                bwd_visit_rec: false,
                bwd_band_keep: false,
                bwd_stmatrix: def.bwd_stmatrix && !def.bwd_wscan,
                bwd_desc: def.bwd_desc && !def.bwd_wscan,
                bwd_ds_unguarded: def.bwd_ds_unguarded && !def.bwd_wscan,
                ..def
            };
            let tag = format!("{name} D{d}");
            let a = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("persist_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_eq!(
                a.grid,
                [GridDim::KvPersistent, GridDim::One, GridDim::One],
                "{tag}"
            );
            assert_eq!(a.params.last(), Some(&KernelParam::Batch), "{tag}");
            // the producer, the writer warp and the math warps each step by the grid
            assert!(a.ptx.contains("%nctaid.x"), "{tag}");
            // (the grid's order: session 23's defaults take the counter's tiles on bands
            // and tables)
            let plain = emit_backward(&plan, &def.static_tiles(), BackwardKind::DkDv).unwrap();
            assert!(!plain.ptx.contains("%nctaid.x"), "{tag}");
            let off = PtxOptions {
                bwd_tma: false,
                ..o
            };
            let e = emit_backward(&plan, &off, BackwardKind::DkDv)
                .unwrap_err()
                .to_string();
            // (D64's q tiles of 128 need the TMA producer themselves)
            let q128 = "128 at D = Dv = 64 with the TMA producer";
            assert!(
                e.contains("(bwd_persist): the TMA producer") || e.contains(q128),
                "{tag}: {e}"
            );
        }
    }
    let p = &example("relative_bias_table", "relative_bias_table");
    let plan = Plan::new(p);
    let o = PtxOptions {
        bwd_persist: true,
        ..PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192)
    };
    let e = emit_backward(&plan, &o, BackwardKind::DkDv)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bwd_persist") && e.contains("capture gradients"),
        "{e}"
    );
}

/// `bwd_writer_regs` (session 24): the writer warpgroup's `setmaxnreg.dec` and the math
/// warpgroups' `setmaxnreg.inc` take the split it names (40: 40 / 232, 56: 56 / 224;
/// the default 24 / 240), on the binding's fused kernels (D128 ALiBi + causal, a band at
/// D64); deterministic PTX; counts outside 24..=56 or not a multiple of 8 refused.
/// `ATTNC_BWD_PTX_DIR=dir` writes the kernels there (for `ptxas -v`: the spills move
/// between the roles).
#[test]
fn fused_writer_regs_kernels() {
    for (d, file, name) in [
        (128u32, "alibi_causal", "alibi_causal"),
        (64, "sliding_window", "sliding_window"),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let def = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        for (w, dec, inc) in [(0u32, 24u32, 240u32), (40, 40, 232), (56, 56, 224)] {
            let o = PtxOptions {
                bwd_writer_regs: w,
                ..def
            };
            let tag = format!("{name} D{d} writer {w}");
            let k = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("regs{w}_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_eq!(
                k.ptx
                    .matches(&format!("setmaxnreg.dec.sync.aligned.u32 {dec};"))
                    .count(),
                1,
                "{tag}"
            );
            assert_eq!(
                k.ptx
                    .matches(&format!("setmaxnreg.inc.sync.aligned.u32 {inc};"))
                    .count(),
                1,
                "{tag}"
            );
            assert_eq!(k.ptx.matches("setmaxnreg").count(), 2, "{tag}");
        }
        for bad in [16u32, 20, 36, 64] {
            let o = PtxOptions {
                bwd_writer_regs: bad,
                ..def
            };
            let e = emit_backward(&plan, &o, BackwardKind::DkDv)
                .unwrap_err()
                .to_string();
            assert!(e.contains("bwd_writer_regs"), "{bad}: {e}");
        }
    }
}

/// Which bindings take the tile counter's persistent CTAs (`bwd_persist` +
/// `bwd_persist_dyn`) by default, as measured on the H200 (sessions 23 and 24): every band
/// and block table (D64 and D128) and D64's causal-type bindings (causal, ALiBi, soft-cap);
/// not D128 dense, causal, ALiBi or soft-cap, nor D64 dense, nor bindings with capture
/// gradients. And which have bulk statistics (`bwd_stats_bulk`): every D64 binding
/// without capture gradients, and at D128 dense and (session 34) the causal-type closed
/// forms; and which give the writer warpgroup 40
/// registers (`bwd_writer_regs`): D128 causal and ALiBi + causal, D64 bands and tables.
#[test]
fn tile_counter_and_stats_bulk_defaults() {
    for (d, file, name, counter, bulk) in [
        (128u32, "dense", "dense", false, true),
        (128, "causal", "causal_attention", false, true),
        (128, "alibi_causal", "alibi_causal", false, true),
        (128, "softcap", "softcap_causal", false, true),
        (128, "sliding_window", "sliding_window", true, false),
        (128, "document_causal", "document_causal", true, false),
        (128, "learned_bias", "learned_bias", false, false),
        (64, "dense", "dense", false, true),
        (64, "learned_bias", "learned_bias", false, false),
        (64, "causal", "causal_attention", true, true),
        (64, "alibi_causal", "alibi_causal", true, true),
        (64, "softcap", "softcap_causal", true, true),
        (64, "sliding_window", "sliding_window", true, true),
        (64, "document_causal", "document_causal", true, true),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let o = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        let tag = format!("{name} D{d}");
        // the writer warpgroup's registers (session 24): 40 on D128 causal and ALiBi +
        // causal, D64 bands and tables
        let regs40 = matches!(
            (d, name),
            (128, "causal_attention" | "alibi_causal") | (64, "sliding_window" | "document_causal")
        );
        assert_eq!(
            o.bwd_writer_regs,
            if regs40 { 40 } else { 0 },
            "{tag}: writer registers"
        );
        assert_eq!(o.bwd_persist_dyn, counter, "{tag}: the tile counter");
        assert_eq!(o.bwd_persist, counter, "{tag}: persistent CTAs");
        assert_eq!(o.bwd_stats_bulk, bulk, "{tag}: bulk statistics");
        if counter {
            // what the runtime's ATTNC_BWD_PERSIST=0 and the non-deterministic path run
            let s = o.static_tiles();
            assert!(!s.bwd_persist && !s.bwd_persist_dyn, "{tag}");
            assert!(
                emit_backward(&plan, &o, BackwardKind::DkDv).is_ok(),
                "{tag}"
            );
        }
    }
}

/// The fused kernel on persistent CTAs that take their tiles from a global counter
/// (`PtxOptions::bwd_persist_dyn`) on the binding's defaults, visit records included
/// (causal, ALiBi + causal, a sliding window, documents; D128 and D64): deterministic
/// PTX, the persistent grid, one `atom.relaxed.gpu.global.add.u32` (the producer's lane 0
/// takes the next tile) where the static order has none, the tile ring's mbarriers;
/// refused without `bwd_persist`, with `bwd_s_ahead`, and visit records still refused
/// on the static order. `ATTNC_BWD_PTX_DIR=dir` writes each dK/dV kernel there (for
/// `ptxas -v`).
#[test]
fn fused_persist_dyn_kernels() {
    for d in [128u32, 64] {
        for (file, name) in [
            ("causal", "causal_attention"),
            ("alibi_causal", "alibi_causal"),
            ("sliding_window", "sliding_window"),
            ("document_causal", "document_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let def = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            let o = PtxOptions {
                bwd_persist: true,
                bwd_persist_dyn: true,
                ..def
            };
            let tag = format!("{name} D{d}");
            if d == 128 {
                assert!(o.bwd_visit_rec, "{tag}: the default has visit records");
            }
            // (the binding's default next to it, for ptxas)
            dkdv_twice(
                &plan,
                &def,
                &tag,
                &format!("default_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let a = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("persist_dyn_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_eq!(
                a.grid,
                [GridDim::KvPersistent, GridDim::One, GridDim::One],
                "{tag}"
            );
            assert_eq!(a.params.last(), Some(&KernelParam::Batch), "{tag}");
            let atom = "atom.relaxed.gpu.global.add.u32";
            assert_eq!(
                a.ptx.matches(atom).count(),
                1,
                "{tag}: one tile counter add"
            );
            // the static order (visit records refused there) has none
            let stat = PtxOptions {
                bwd_persist_dyn: false,
                bwd_visit_rec: false,
                bwd_band_keep: false,
                ..o
            };
            let b = emit_backward(&plan, &stat, BackwardKind::DkDv).unwrap();
            assert!(!b.ptx.contains(atom), "{tag}");
            assert!(
                a.ptx.matches("mbarrier.init").count()
                    == b.ptx.matches("mbarrier.init").count() + 4,
                "{tag}: the tile ring's four mbarriers"
            );
            if o.bwd_visit_rec {
                let with_rec = PtxOptions {
                    bwd_persist_dyn: false,
                    ..o
                };
                let e = emit_backward(&plan, &with_rec, BackwardKind::DkDv)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("visit records"), "{tag}: {e}");
            }
            let ahead = PtxOptions {
                bwd_s_ahead: true,
                ..o
            };
            let e = emit_backward(&plan, &ahead, BackwardKind::DkDv)
                .unwrap_err()
                .to_string();
            assert!(e.contains("bwd_persist_dyn"), "{tag}: {e}");
        }
    }
    let p = &example("causal", "causal_attention");
    let plan = Plan::new(p);
    let o = PtxOptions {
        bwd_persist_dyn: true,
        ..PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192)
    };
    let e = emit_backward(&plan, &o, BackwardKind::DkDv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs persistent CTAs"), "{e}");
}

/// `PtxOptions::bwd_stmatrix` on the binding's fused kernel (D64 and D128: dense, causal,
/// a sliding window, ALiBi + causal, soft-cap): deterministic, dSᵀ stored with
/// `stmatrix.sync.aligned.m8n8.x4.shared.b16` (Br / 16 per thread and store site instead
/// of the default's Br / 4 `st.shared.b32`) and L2/Delta pairs through one
/// `ld.shared.v2.b32` each instead of two `ld.shared.b32`; the binding's options before session 12 emit neither. The stores' addresses are checked against the default's in
/// the fused module's unit test `stmatrix_ds_stores_match_pair_stores`.
/// `ATTNC_BWD_PTX_DIR=dir` writes both dK/dV kernels there (for `ptxas -v`).
#[test]
fn fused_stmatrix_kernels() {
    let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("sliding_window", "sliding_window"),
            ("alibi_causal", "alibi_causal"),
            ("softcap", "softcap"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let def = before_cuts(
                PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                    .backward_for_binding(&plan, 8192),
            );
            let o = PtxOptions {
                bwd_stmatrix: true,
                ..def
            };
            assert_ne!(o.key(), def.key());
            let plain = emit_backward(&plan, &def, BackwardKind::DkDv).unwrap();
            let tag = format!("{name} D{d}");
            let a = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("stmatrix_d{d}_{name}_bwd_dkdv.ptx"),
            );
            if let Some(dir) = &dir {
                std::fs::write(format!("{dir}/stmdef_d{d}_{name}_bwd_dkdv.ptx"), &plain.ptx)
                    .unwrap();
            }
            let stm = "stmatrix.sync.aligned.m8n8.x4.shared.b16";
            let (n, n0) = (count(&a.ptx, stm), count(&plain.ptx, stm));
            println!(
                "{tag}: q tile {}, stmatrix {n}, st.shared.b32 {} (default {}), ld.shared.v2.b32 {} (default {}), ld.shared.b32 {} (default {})",
                def.q_block,
                count(&a.ptx, "st.shared.b32"),
                count(&plain.ptx, "st.shared.b32"),
                count(&a.ptx, "ld.shared.v2.b32"),
                count(&plain.ptx, "ld.shared.v2.b32"),
                count(&a.ptx, "ld.shared.b32"),
                count(&plain.ptx, "ld.shared.b32"),
            );
            assert_eq!(n0, 0, "{tag}");
            let per_site = (def.q_block / 16) as usize;
            assert!(n > 0 && n % per_site == 0, "{tag}: {n} stmatrix");
            // each stmatrix replaces 4 per-pair stores, each v2 load 2 loads
            let st = count(&plain.ptx, "st.shared.b32") - count(&a.ptx, "st.shared.b32");
            assert_eq!(st, 4 * n, "{tag}");
            let v2 = count(&a.ptx, "ld.shared.v2.b32") - count(&plain.ptx, "ld.shared.v2.b32");
            let ld = count(&plain.ptx, "ld.shared.b32") - count(&a.ptx, "ld.shared.b32");
            assert!(
                v2 > 0 && ld == 2 * v2,
                "{tag}: {v2} v2 loads, {ld} fewer loads"
            );
        }
    }
}

/// The binding's options without session 12's instruction cuts (`bwd_stmatrix`,
/// `bwd_desc`, `bwd_ds_unguarded`: the binding's default where measured), so that the
/// tests below compare each cut against the kernel without it.
fn before_cuts(o: PtxOptions) -> PtxOptions {
    PtxOptions {
        bwd_stmatrix: false,
        bwd_desc: false,
        bwd_ds_unguarded: false,
        ..o
    }
}

/// `PtxOptions::bwd_desc` on the binding's fused kernel (D64 and D128: dense, causal,
/// sliding window, ALiBi + causal, soft-cap), alone and with `bwd_stmatrix`: deterministic
/// PTX, the same wgmma instructions, fewer descriptor computations (the `shr.u32 .., 4`
/// of each descriptor's start address), the warpgroup index read through `shfl.sync`.
#[test]
fn fused_desc_kernels() {
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for (d, (file, name)) in attnc_compiler::test_matrix::cases(
        &[128u32, 64],
        &[
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("sliding_window", "sliding_window"),
            ("alibi_causal", "alibi_causal"),
            ("softcap", "softcap"),
        ],
    ) {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let def = before_cuts(
            PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192),
        );
        for stm in [false, true] {
            let base = PtxOptions {
                bwd_stmatrix: stm,
                ..def
            };
            let o = PtxOptions {
                bwd_desc: true,
                ..base
            };
            assert_ne!(o.key(), base.key());
            let plain = emit_backward(&plan, &base, BackwardKind::DkDv).unwrap();
            let tag = format!("{name} D{d} stmatrix {stm}");
            let x = if stm { "x" } else { "" };
            let a = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("desc{x}_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let wg = "wgmma.mma_async";
            assert_eq!(count(&a.ptx, wg), count(&plain.ptx, wg), "{tag}");
            let sh = |ptx: &str| {
                ptx.lines()
                    .filter(|l| l.contains("shr.u32") && l.trim_end().ends_with(", 4;"))
                    .count()
            };
            println!(
                "{tag}: wgmma {}, descriptor shifts {} (without {}), shfl.sync.idx {}",
                count(&a.ptx, wg),
                sh(&a.ptx),
                sh(&plain.ptx),
                count(&a.ptx, "shfl.sync.idx"),
            );
            assert!(sh(&a.ptx) * 2 < sh(&plain.ptx), "{tag}");
            assert!(count(&a.ptx, "shfl.sync.idx") > count(&plain.ptx, "shfl.sync.idx"));
            // bwd_ds_unguarded on top: the identity score's full-block selects go
            let u = PtxOptions {
                bwd_ds_unguarded: true,
                ..o
            };
            assert_ne!(u.key(), o.key());
            let b = dkdv_twice(
                &plan,
                &u,
                &tag,
                &format!("desc{x}g_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let sel = |ptx: &str| count(ptx, "selp.f32");
            println!("{tag}: selp.f32 {} (guarded {})", sel(&b.ptx), sel(&a.ptx));
            if matches!(name, "dense" | "causal_attention" | "sliding_window") {
                assert_eq!(
                    sel(&a.ptx) - sel(&b.ptx),
                    (def.q_block / 2) as usize,
                    "{tag}"
                );
            } else {
                assert_eq!(sel(&a.ptx), sel(&b.ptx), "{tag}");
            }
        }
    }
}

/// Where `backward_for_binding` turns session 12's instruction cuts on (`bwd_stmatrix`,
/// `bwd_desc`, `bwd_ds_unguarded`: measured on an H200): the fused kernel with the TMA
/// producer at D128 and D64, except q tiles of 128 with a score function (D64 soft-cap);
/// bands and block tables (`bwd_wscan`) since session 13, there with the visit records
/// and row intervals (`bwd_visit_rec`, `bwd_band_keep`); the visit records also on the
/// longest-first (causal-type) bindings at D128 since session 16.
#[test]
fn binding_instruction_cuts() {
    for (d, file, name, on) in [
        (128, "dense", "dense", true),
        (128, "causal", "causal_attention", true),
        (128, "alibi_causal", "alibi_causal", true),
        (128, "softcap", "softcap", true),
        (128, "sliding_window", "sliding_window", true),
        (128, "document_causal", "document_causal", true),
        (64, "dense", "dense", true),
        (64, "causal", "causal_attention", true),
        (64, "alibi_causal", "alibi_causal", true),
        (64, "softcap", "softcap", false),
        (64, "sliding_window", "sliding_window", true),
        (64, "document_causal", "document_causal", true),
    ] {
        let p = &example(file, name);
        let o = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&Plan::new(p), 8192);
        assert_eq!(
            (o.bwd_stmatrix, o.bwd_desc, o.bwd_ds_unguarded),
            (on, on, on),
            "{name} D{d}"
        );
        // visit records also on the causal-type bindings at D128 since session 16
        assert_eq!(
            (o.bwd_visit_rec, o.bwd_band_keep),
            (o.bwd_wscan || (d == 128 && o.bwd_lpt), o.bwd_wscan),
            "{name} D{d}"
        );
    }
}

/// `PtxOptions::bwd_two_writers` and `PtxOptions::bwd_store_pairs` on the binding's fused
/// kernel (D64 and D128: dense, causal, a sliding window, a document mask; both on by
/// default where the warp-wide search is, the bands and tables, and two writers at D128
/// on dense and causal too since session 34), against the
/// kernel without either: each option deterministic and its own kernel (cache key); with
/// `bwd_store_pairs` dK and dV go out
/// through `st.global.v2.b32` (two per pair of n8 column groups and row half: D / 8 + Dv
/// / 8 per thread) in place of twice as many `st.global.b32`, and one
/// `shfl.sync.idx.b32` per stored pair; the default emits none of those stores.
/// `ATTNC_BWD_PTX_DIR=dir` writes the kernels there (for `ptxas -v`).
#[test]
fn fused_two_writers_store_pairs_kernels() {
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("sliding_window", "sliding_window"),
            ("document_causal", "document_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            // the binding's default has both with the warp-wide search (bands, tables),
            // and two writers at D128 on dense and causal (session 34)
            let s34 = d == 128 && !bind.bwd_wscan;
            assert_eq!(bind.bwd_two_writers, bind.bwd_wscan || s34, "{name} D{d}");
            assert_eq!(bind.bwd_store_pairs, bind.bwd_wscan, "{name} D{d}");
            let def = PtxOptions {
                bwd_two_writers: false,
                bwd_store_pairs: false,
                ..bind
            };
            let plain = emit_backward(&plan, &def, BackwardKind::DkDv).unwrap();
            let tag = format!("{name} D{d}");
            let two = PtxOptions {
                bwd_two_writers: true,
                ..def
            };
            let pairs = PtxOptions {
                bwd_store_pairs: true,
                ..def
            };
            assert!(two.key() != def.key() && pairs.key() != def.key() && two.key() != pairs.key());
            let a = dkdv_twice(
                &plan,
                &two,
                &tag,
                &format!("two_writers_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_ne!(a.ptx, plain.ptx, "{tag}");
            let b = dkdv_twice(
                &plan,
                &pairs,
                &tag,
                &format!("store_pairs_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let v2 = "st.global.v2.b32";
            let (n, n0) = (count(&b.ptx, v2), count(&plain.ptx, v2));
            let st = count(&plain.ptx, "st.global.b32") - count(&b.ptx, "st.global.b32");
            let shfl = count(&b.ptx, "shfl.sync.idx.b32") - count(&plain.ptx, "shfl.sync.idx.b32");
            println!(
                "{tag}: st.global.v2.b32 {n} (default {n0}), {st} fewer st.global.b32, {shfl} more shfl.sync.idx.b32"
            );
            assert_eq!(n0, 0, "{tag}");
            assert_eq!(n as u32, 2 * (d / 8 + d / 8) / 2, "{tag}");
            assert_eq!(st, 2 * n, "{tag}");
            assert_eq!(shfl, n, "{tag}");
        }
    }
}

/// `bwd_pingpong` (the math warpgroups' turns in the element code, each visit's dQ part
/// computed in the next visit) on the binding's fused kernels: deterministic, the same
/// products plus the first visit's Sᵀ and dPᵀ before the loop and the last visit's dQ
/// part after it (two more issue sites), no barrier of both math warpgroups per visit but
/// the turn barriers; its own key; ignored without the TMA producer. The binding's
/// default for D64 without mask or score.
#[test]
fn fused_pingpong_kernels() {
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("alibi_causal", "alibi_causal"),
            ("softcap", "softcap_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192)
                .static_tiles();
            // the binding's default at D64 without mask or score (session 13)
            assert_eq!(bind.bwd_pingpong, d == 64 && name == "dense", "{name} D{d}");
            let tag = format!("{name} D{d}");
            let off = PtxOptions {
                bwd_pingpong: false,
                bwd_visit_rec: false,
                ..bind
            };
            let plain = dkdv_twice(
                &plan,
                &off,
                &tag,
                &format!("plain_d{d}_{name}_bwd_dkdv.ptx"),
            );
            // (visit records, the D128 default since session 16, are refused with it)
            let pp = PtxOptions {
                bwd_pingpong: true,
                bwd_visit_rec: false,
                ..bind
            };
            assert!(pp.key() != off.key());
            let b = dkdv_twice(
                &plan,
                &pp,
                &tag,
                &format!("pingpong_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let wg = "wgmma.mma_async";
            let (n0, n1) = (count(&plain.ptx, wg), count(&b.ptx, wg));
            println!("{tag}: wgmma {n0} / ping-pong {n1}");
            // Sᵀ and dPᵀ (D / 16 k-steps each) before the loop, a dQ chunk (kv / 16) after
            assert_eq!(
                n1,
                n0 + 2 * (d as usize / 16) + bind.kv_block as usize / 16,
                "{tag}"
            );
            assert_eq!(count(&plain.ptx, "bar.arrive"), 0, "{tag}");
            assert_eq!(count(&b.ptx, "bar.arrive"), 2, "{tag}");
            // the math warps' barrier: per visit and once for K and V / once
            assert!(count(&plain.ptx, "bar.sync 1, 256") >= 2, "{tag}");
            assert_eq!(count(&b.ptx, "bar.sync 1, 256"), 1, "{tag}");
        }
    }
    let plan = Plan::new(&example("dense", "dense"));
    let sep = PtxOptions {
        bwd_pingpong: true,
        ..PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_fused(attnc_compiler::backend::llvm::BwdDq::OrderedBulk)
    };
    let sep_off = PtxOptions {
        bwd_pingpong: false,
        ..sep
    };
    // ignored without the TMA producer
    assert_eq!(
        emit_backward(&plan, &sep, BackwardKind::DkDv).unwrap().ptx,
        emit_backward(&plan, &sep_off, BackwardKind::DkDv)
            .unwrap()
            .ptx
    );
}

/// `PtxOptions::bwd_band_keep` on top of the binding's default (and with the instruction
/// cuts `bwd_stmatrix` + `bwd_desc` + `bwd_ds_unguarded`): the fused dK/dV kernel of an
/// exact closed-form mask (a band, a causal diagonal) changes, deterministic; without a
/// mask (dense) or with a block table (documents) the option changes nothing.
/// `ATTNC_BWD_PTX_DIR=dir` writes the kernels there (for `ptxas -v`).
#[test]
fn fused_band_keep_kernels() {
    for (d, (file, name, changes)) in attnc_compiler::test_matrix::cases(
        &[128u32, 64],
        &[
            ("dense", "dense", false),
            ("causal", "causal_attention", true),
            ("sliding_window", "sliding_window", true),
            ("document_causal", "document_causal", false),
        ],
    ) {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let binding = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        // the binding's default for bands (the warp-wide search) only
        assert_eq!(
            binding.bwd_band_keep,
            name == "sliding_window" || name == "document_causal",
            "{name} D{d}"
        );
        let bind = PtxOptions {
            bwd_band_keep: false,
            ..binding
        };
        let cuts = PtxOptions {
            bwd_stmatrix: true,
            bwd_desc: true,
            bwd_ds_unguarded: true,
            ..bind
        };
        for (base, tag) in [(bind, "band_keep"), (cuts, "band_keep_cuts")] {
            let plain = dkdv_twice(
                &plan,
                &base,
                name,
                &format!("{tag}_base_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let k = PtxOptions {
                bwd_band_keep: true,
                ..base
            };
            assert_ne!(k.key(), base.key());
            let t = format!("{tag} {name} D{d}");
            let a = dkdv_twice(&plan, &k, &t, &format!("{tag}_d{d}_{name}_bwd_dkdv.ptx"));
            assert_eq!(a.ptx != plain.ptx, changes, "{t}");
        }
    }
}

/// `PtxOptions::bwd_visit_rec` on top of the binding's default, with and without the band
/// mask (`bwd_band_keep`): every fused dK/dV kernel with the TMA producer changes and is
/// deterministic; with persistent CTAs it is refused. `ATTNC_BWD_PTX_DIR=dir` writes the
/// kernels there (for `ptxas -v`).
#[test]
fn fused_visit_rec_kernels() {
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("sliding_window", "sliding_window"),
            ("document_causal", "document_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let binding = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192)
                .static_tiles();
            // the binding's default with the warp-wide search (bands, tables) and, since
            // session 16, on the longest-first (causal-type) bindings at D128
            assert!(binding.bwd_tma, "{name} D{d}");
            assert_eq!(
                binding.bwd_visit_rec,
                binding.bwd_wscan || (d == 128 && binding.bwd_lpt),
                "{name} D{d}"
            );
            // (not with bwd_pingpong: refused; the binding's D64 dense default)
            let bind = PtxOptions {
                bwd_visit_rec: false,
                bwd_pingpong: false,
                ..binding
            };
            let plain = emit_backward(&plan, &bind, BackwardKind::DkDv).unwrap();
            let r = PtxOptions {
                bwd_visit_rec: true,
                ..bind
            };
            let t = format!("visit_rec {name} D{d}");
            let a = dkdv_twice(
                &plan,
                &r,
                &t,
                &format!("visit_rec_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_ne!(a.ptx, plain.ptx, "{t}");
            let rk = PtxOptions {
                bwd_band_keep: true,
                ..r
            };
            dkdv_twice(
                &plan,
                &rk,
                &t,
                &format!("visit_rec_band_keep_d{d}_{name}_bwd_dkdv.ptx"),
            );
            let persist = PtxOptions {
                bwd_persist: true,
                ..r
            };
            let e = emit_backward(&plan, &persist, BackwardKind::DkDv)
                .unwrap_err()
                .to_string();
            assert!(e.contains("visit records (bwd_visit_rec)"), "{t}: {e}");
        }
    }
}

/// `bwd_stats_early` (the visit's L2/Delta loads before the wait for Sᵀ and dPᵀ) and
/// `bwd_p_under_dp` (P computed while dPᵀ runs) on the binding's fused kernels at D128
/// (and D64's q tiles of 128): deterministic, their own keys; with `bwd_stats_early` the
/// loads sit between the Sᵀ/dPᵀ commits and the first wait (after it without), with
/// `bwd_p_under_dp` the first wait after those commits is `wait_group 1` (Sᵀ alone) and
/// the exponentials follow it before any other wait (D64's q tiles of 128 too since
/// session 19), and with `bwd_dv_early` as well dV is issued between the wait for dPᵀ and
/// the dS barrier; both leave the turns (`bwd_pingpong`, D64 dense) byte-identical.
/// `ATTNC_BWD_PTX_DIR=dir` writes each kernel there (for `ptxas -v`).
#[test]
fn fused_element_order_kernels() {
    // the text from the first wgmma commit on (the visit's Sᵀ; no issue before the loop
    // without the turns)
    let loop_text = |ptx: &str| -> String {
        let at = ptx.find("wgmma.commit_group").expect("a wgmma commit");
        ptx[at..].to_string()
    };
    let wait0 = "wgmma.wait_group.sync.aligned 0;";
    let wait1 = "wgmma.wait_group.sync.aligned 1;";
    let first = |t: &str, s: &str| t.find(s).unwrap_or(usize::MAX);
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("alibi_causal", "alibi_causal"),
            ("softcap", "softcap_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let binding = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192)
                .static_tiles();
            assert!(
                !binding.bwd_stats_early && !binding.bwd_p_under_dp,
                "{name} D{d}"
            );
            // D64 dense: the turns ignore both options; checked without the turns too
            let mut binds = vec![binding];
            if binding.bwd_pingpong {
                binds.push(PtxOptions {
                    bwd_pingpong: false,
                    ..binding
                });
            }
            for bind in binds {
                let no_turns = binding.bwd_pingpong && !bind.bwd_pingpong;
                let name = &format!("{name}{}", if no_turns { "_noturns" } else { "" });
                let tag = format!("{name} D{d} q{}", bind.q_block);
                let def = dkdv_twice(
                    &plan,
                    &bind,
                    &tag,
                    &format!("eo_def_d{d}_{name}_bwd_dkdv.ptx"),
                );
                let h = PtxOptions {
                    bwd_stats_early: true,
                    ..bind
                };
                // (without the D128 bindings' bwd_dv_early: its place is checked below)
                let e = PtxOptions {
                    bwd_p_under_dp: true,
                    bwd_dv_early: false,
                    ..bind
                };
                assert!(h.key() != bind.key() && e.key() != bind.key() && h.key() != e.key());
                let kh = dkdv_twice(&plan, &h, &tag, &format!("eo_h_d{d}_{name}_bwd_dkdv.ptx"));
                let ke = dkdv_twice(&plan, &e, &tag, &format!("eo_e_d{d}_{name}_bwd_dkdv.ptx"));
                if bind.bwd_pingpong {
                    // the turns' order: both ignored
                    assert_eq!(kh.ptx, def.ptx, "{tag}");
                    assert_eq!(ke.ptx, def.ptx, "{tag}");
                    continue;
                }
                let (t0, th) = (loop_text(&def.ptx), loop_text(&kh.ptx));
                let lds = if bind.bwd_stmatrix {
                    "ld.shared.v2"
                } else {
                    "ld.shared.b32"
                };
                assert!(
                    first(&t0, lds) > first(&t0, wait0),
                    "{tag}: default loads after the wait"
                );
                assert!(
                    first(&th, lds) < first(&th, wait0),
                    "{tag}: loads before the wait"
                );
                assert_eq!(
                    def.ptx.matches("wgmma.mma_async").count(),
                    kh.ptx.matches("wgmma.mma_async").count(),
                    "{tag}"
                );
                // (D64's q tiles of 128 too, since session 19: FlashAttention-4's hdim-64 order)
                let te = loop_text(&ke.ptx);
                let (w1, w0, ex) = (
                    first(&te, wait1),
                    first(&te, wait0),
                    first(&te, "ex2.approx"),
                );
                assert!(
                    w1 < w0 && w1 < ex && ex < w0,
                    "{tag}: P between the two waits"
                );
                // the default waits for both first
                assert!(first(&t0, wait0) < first(&t0, wait1), "{tag}");
                assert_eq!(
                    def.ptx.matches("wgmma.mma_async").count(),
                    ke.ptx.matches("wgmma.mma_async").count(),
                    "{tag}"
                );
                // with bwd_dv_early: dV issued between the wait for dPᵀ and the dS barrier (none
                // there without), the same products
                let ej = PtxOptions {
                    bwd_dv_early: true,
                    ..e
                };
                assert!(ej.key() != e.key(), "{tag}");
                let kej = dkdv_twice(&plan, &ej, &tag, &format!("eo_ej_d{d}_{name}_bwd_dkdv.ptx"));
                let before_ds_bar = |ptx: &str| -> String {
                    let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
                    let w = ptx[..at].rfind(wait0).expect("the wait for dPᵀ");
                    ptx[w..at].to_string()
                };
                assert!(!before_ds_bar(&ke.ptx).contains("wgmma.mma_async"), "{tag}");
                assert!(
                    before_ds_bar(&kej.ptx).contains("wgmma.mma_async"),
                    "{tag}: dV before the barrier"
                );
                assert_eq!(
                    kej.ptx.matches("wgmma.mma_async").count(),
                    ke.ptx.matches("wgmma.mma_async").count(),
                    "{tag}"
                );
            }
        }
    }
}

/// `bwd_exp_emu` (some exponentials of a full block on the FMA pipe) on the binding's
/// fused kernels: deterministic, their own keys; `k` of every 8 `ex2.approx` of the full
/// path replaced by the polynomial (two `add.rn.f32` around 1.5 * 2^23 per element), the
/// same number of products; D128 and D64. `ATTNC_BWD_PTX_DIR=dir` writes each kernel
/// there (for `ptxas -v`).
#[test]
fn fused_exp_emu_kernels() {
    for (d, (file, name)) in attnc_compiler::test_matrix::cases(
        &[128u32, 64],
        &[
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("softcap", "softcap_causal"),
        ],
    ) {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert_eq!(bind.bwd_exp_emu, 0, "{name} D{d}");
        let tag = format!("{name} D{d} q{}", bind.q_block);
        let def = dkdv_twice(
            &plan,
            &bind,
            &tag,
            &format!("em_def_d{d}_{name}_bwd_dkdv.ptx"),
        );
        let ex2 = |ptx: &str| ptx.matches("ex2.approx").count();
        let rn = |ptx: &str| ptx.matches("add.rn.f32").count();
        assert_eq!(rn(&def.ptx), 0, "{tag}");
        let mut last = ex2(&def.ptx);
        for k in [2u8, 4, 8] {
            let o = PtxOptions {
                bwd_exp_emu: k,
                ..bind
            };
            assert!(o.key() != bind.key(), "{tag}");
            let km = dkdv_twice(
                &plan,
                &o,
                &tag,
                &format!("em_m{k}_d{d}_{name}_bwd_dkdv.ptx"),
            );
            assert_eq!(
                def.ptx.matches("wgmma.mma_async").count(),
                km.ptx.matches("wgmma.mma_async").count(),
                "{tag}"
            );
            let (e, r) = (ex2(&km.ptx), rn(&km.ptx));
            assert!(
                e < last && r > 0 && r % 2 == 0,
                "{tag} m{k}: {e} ex2, {r} add.rn"
            );
            last = e;
        }
    }
    let o = PtxOptions {
        bwd_exp_emu: 9,
        ..PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
    };
    let plan = Plan::new(&example("dense", "dense"));
    let e = emit_backward(&plan, &o, BackwardKind::DkDv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bwd_exp_emu") && e.contains("got 9"), "{e}");
}

/// q tiles of 80 (`PtxOptions::backward_q80`, FlashAttention-3 / -4's dense hdim-128 tile)
/// on the dense D128 binding: deterministic, its own key; per visit 24 `m64n80k16` (Sᵀ,
/// dPᵀ, dQᵀ: 8 k-steps each) and 10 `m64n128k16` (dV, dK: 5 k-steps each), dS stored with
/// `stmatrix .trans`, the conversion kernel deterministic without float atomics;
/// bindings with a mask, and D64, keep q tiles of 64. `ATTNC_BWD_PTX_DIR=dir` writes the
/// kernels there (for `ptxas -v`).
#[test]
fn fused_q80_kernels() {
    let p = &example("dense", "dense");
    let plan = Plan::new(p);
    let bind = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
        .backward_for_binding(&plan, 8192);
    assert_eq!(bind.q_block, 64);
    // (the binding's two dQ writers since session 34 take q tiles of 64; the
    // non-deterministic path, where q tiles of 80 pay, runs one writer)
    assert_eq!(bind.backward_q80(&plan).q_block, 64);
    let o = PtxOptions {
        bwd_two_writers: false,
        ..bind
    }
    .backward_q80(&plan);
    assert_eq!(o.q_block, 80);
    assert!(o.key() != bind.key());
    let k = dkdv_twice(&plan, &o, "dense D128 q80", "q80_d128_dense_bwd_dkdv.ptx");
    assert_eq!(
        k.ptx
            .matches("wgmma.mma_async.sync.aligned.m64n80k16")
            .count(),
        24
    );
    assert_eq!(
        k.ptx
            .matches("wgmma.mma_async.sync.aligned.m64n128k16")
            .count(),
        10
    );
    assert!(
        k.ptx
            .contains("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16")
    );
    assert!(!k.ptx.contains("atom.global.add.f32") && !k.ptx.contains("red.global.add.f32"));
    let a = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
    let b = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
    assert_eq!(a.ptx, b.ptx, "q80 conversion: PTX differs between two runs");
    assert!(!a.ptx.contains("atom.global.add.f32") && !a.ptx.contains("red.global.add.f32"));
    if let Ok(dir) = std::env::var("ATTNC_BWD_PTX_DIR") {
        std::fs::write(format!("{dir}/q80_d128_dense_bwd_dq.ptx"), &a.ptx).unwrap();
    }
    for (file, name, d) in [
        ("causal", "causal_attention", 128u32),
        ("dense", "dense", 64),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert_eq!(
            bind.backward_q80(&plan).q_block,
            bind.q_block,
            "{name} D{d}"
        );
    }
}

/// `PtxOptions::bwd_desc64` (session 17) on the binding's fused kernels at D128 and D64
/// (dense, causal, sliding window, ALiBi + causal, soft-cap + causal; also with q tiles of
/// 80): deterministic PTX, its own key, the same wgmma instructions, each k-step's
/// descriptor one 64-bit add of a constant (`add.s64`) instead of a 32-bit add joined with
/// the constant high word (`cvt.u64.u32` + `or.b64`). Off in the binding.
/// `ATTNC_BWD_PTX_DIR=dir` writes the kernels there (for `ptxas -v`).
#[test]
fn fused_desc64_kernels() {
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for d in [128u32, 64] {
        for (file, name) in [
            ("dense", "dense"),
            ("causal", "causal_attention"),
            ("sliding_window", "sliding_window"),
            ("alibi_causal", "alibi_causal"),
            ("softcap", "softcap_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            assert!(!bind.bwd_desc64, "{name} D{d}");
            let mut cases = vec![(bind, "")];
            if d == 128 && name == "dense" {
                cases.push((bind.backward_q80(&plan), "q80_"));
            }
            for (base, q) in cases {
                let tag = format!("{name} D{d} {q}q{}", base.q_block);
                let o = PtxOptions {
                    bwd_desc64: true,
                    ..base
                };
                assert!(o.key() != base.key(), "{tag}");
                if !base.bwd_desc {
                    // (D64 soft-cap on q tiles of 128: no base descriptors, ignored)
                    let a = emit_backward(&plan, &o, BackwardKind::DkDv).unwrap();
                    let b = emit_backward(&plan, &base, BackwardKind::DkDv).unwrap();
                    assert_eq!(a.ptx, b.ptx, "{tag}");
                    continue;
                }
                let plain = dkdv_twice(
                    &plan,
                    &base,
                    &tag,
                    &format!("d64_def_{q}d{d}_{name}_bwd_dkdv.ptx"),
                );
                let a = dkdv_twice(
                    &plan,
                    &o,
                    &tag,
                    &format!("d64_on_{q}d{d}_{name}_bwd_dkdv.ptx"),
                );
                let wg = "wgmma.mma_async";
                assert_eq!(count(&a.ptx, wg), count(&plain.ptx, wg), "{tag}");
                let (add0, add1) = (count(&plain.ptx, "add.s64"), count(&a.ptx, "add.s64"));
                let (or0, or1) = (count(&plain.ptx, "or.b64"), count(&a.ptx, "or.b64"));
                println!(
                    "{tag}: wgmma {}, add.s64 {add0} -> {add1}, or.b64 {or0} -> {or1}",
                    count(&a.ptx, wg)
                );
                // every k-step after a tile's first: one 64-bit add instead of an or
                assert!(add1 > add0 && or1 < or0, "{tag}");
                assert!(add1 - add0 >= count(&a.ptx, wg) / 2, "{tag}");
            }
        }
    }
}

/// `PtxOptions::bwd_affine_unguarded` (session 17): on the ALiBi + causal binding (an
/// affine score, constant derivative) the full blocks compute P and dS on their own path
/// without the P = 0 selects of dS (one exponential per fragment element there: q_block /
/// 2 more `ex2` per thread in the kernel, the same `selp`s, all of them now on the
/// partial path); the identity score and soft-capping (not affine) emit the same PTX with
/// it. Deterministic, its own key, off in the binding.
#[test]
fn fused_affine_unguarded_kernels() {
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    for d in [128u32, 64] {
        for (file, name) in [
            ("alibi_causal", "alibi_causal"),
            ("dense", "dense"),
            ("softcap", "softcap_causal"),
        ] {
            let p = &example(file, name);
            let plan = Plan::new(p);
            let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            assert!(!bind.bwd_affine_unguarded, "{name} D{d}");
            let o = PtxOptions {
                bwd_affine_unguarded: true,
                ..bind
            };
            assert!(o.key() != bind.key());
            let tag = format!("{name} D{d} q{}", bind.q_block);
            let plain = emit_backward(&plan, &bind, BackwardKind::DkDv).unwrap();
            let a = dkdv_twice(&plan, &o, &tag, &format!("au_d{d}_{name}_bwd_dkdv.ptx"));
            let sel = |ptx: &str| count(ptx, "selp.f32");
            println!(
                "{tag}: selp.f32 {} (guarded {})",
                sel(&a.ptx),
                sel(&plain.ptx)
            );
            if name == "alibi_causal" {
                assert_eq!(sel(&plain.ptx), sel(&a.ptx), "{tag}");
                let ex2 = |ptx: &str| count(ptx, "ex2.approx");
                assert_eq!(
                    ex2(&a.ptx) - ex2(&plain.ptx),
                    (bind.q_block / 2) as usize,
                    "{tag}"
                );
            } else {
                assert_eq!(a.ptx, plain.ptx, "{tag}");
            }
        }
    }
}

/// `bwd_empty_late` and `bwd_dv_early` on the binding's fused kernels at D128 (dense,
/// causal, ALiBi + causal, soft-cap + causal), against those options off: without
/// `bwd_empty_late` the dQ slot's `empty` wait follows the dS barrier before any product
/// of the visit after it is issued; with the option the first
/// wgmma after that barrier comes before the wait, and the wait follows a
/// `wgmma.wait_group 1` (dQ completed, dV and dK in flight). The same number of waits.
#[test]
fn fused_empty_late_kernels() {
    let try_wait = "mbarrier.try_wait.parity";
    let mma = "wgmma.mma_async";
    // the text after the last `bar.sync 1, 256` (the dS barrier of the visit)
    let after_ds_bar = |ptx: &str| -> String {
        let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
        ptx[at..].to_string()
    };
    let first = |t: &str, s: &str| t.find(s).unwrap_or(usize::MAX);
    for (file, name) in [
        ("dense", "dense"),
        ("causal", "causal_attention"),
        ("alibi_causal", "alibi_causal"),
        ("softcap", "softcap_causal"),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let binding = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        // the binding's defaults since session 18: dV early on dense, both on causal and
        // ALiBi + causal, neither on soft-cap (not measured)
        let (dv_on, late_on) = match name {
            "dense" => (true, false),
            "softcap_causal" => (false, false),
            _ => (true, true),
        };
        assert_eq!(
            (binding.bwd_dv_early, binding.bwd_empty_late),
            (dv_on, late_on),
            "{name}"
        );
        let bind = PtxOptions {
            bwd_dv_early: false,
            bwd_empty_late: false,
            ..binding
        };
        let late = PtxOptions {
            bwd_empty_late: true,
            ..bind
        };
        assert!(late.key() != bind.key(), "{name}");
        let def = dkdv_twice(&plan, &bind, name, &format!("el_def_{name}_bwd_dkdv.ptx"));
        let new = dkdv_twice(&plan, &late, name, &format!("el_z_{name}_bwd_dkdv.ptx"));
        let (t0, t1) = (after_ds_bar(&def.ptx), after_ds_bar(&new.ptx));
        assert!(
            first(&t0, try_wait) < first(&t0, mma),
            "{name}: default waits for the slot before the products"
        );
        assert!(
            first(&t1, mma) < first(&t1, try_wait),
            "{name}: the products before the slot wait"
        );
        let w1 = first(&t1, "wgmma.wait_group.sync.aligned 1;");
        assert!(
            w1 < first(&t1, try_wait) && first(&t1, try_wait) < usize::MAX,
            "{name}: the slot wait after dQ's wait"
        );
        assert_eq!(
            def.ptx.matches(try_wait).count(),
            new.ptx.matches(try_wait).count(),
            "{name}"
        );
        // bwd_dv_early: a product issued between the element code's last wait and the dS
        // barrier (dV), none by default
        let dv = PtxOptions {
            bwd_dv_early: true,
            ..bind
        };
        assert!(dv.key() != bind.key() && dv.key() != late.key(), "{name}");
        let kj = dkdv_twice(&plan, &dv, name, &format!("el_j_{name}_bwd_dkdv.ptx"));
        let before_ds_bar = |ptx: &str| -> String {
            let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
            let w = ptx[..at].rfind("wgmma.wait_group").expect("a wait");
            ptx[w..at].to_string()
        };
        assert!(!before_ds_bar(&def.ptx).contains(mma), "{name}");
        assert!(
            before_ds_bar(&kj.ptx).contains(mma),
            "{name}: dV before the barrier"
        );
        let jz = PtxOptions {
            bwd_empty_late: true,
            ..dv
        };
        let kjz = dkdv_twice(&plan, &jz, name, &format!("el_jz_{name}_bwd_dkdv.ptx"));
        assert!(before_ds_bar(&kjz.ptx).contains(mma), "{name}");
        let t = after_ds_bar(&kjz.ptx);
        assert!(first(&t, mma) < first(&t, try_wait), "{name}");
    }
}

/// `bwd_dv_chunks` on the binding's fused kernels at D128 (dense, causal, ALiBi + causal,
/// soft-cap + causal; with `bwd_dv_early`): between the element code's last wait and the
/// dS barrier, dV's four RS k-steps each follow their own `wgmma.fence` and exponentials
/// are still emitted after the first step is issued (the later chunks' P); without the
/// option the four steps follow one fence after every exponential. The same products,
/// one path for full and partial blocks (no more `ex2` than before). With
/// `bwd_dk_chunks` dK's four steps are there too, each after its own fence. The options
/// leave the kernels of other settings unchanged (`bwd_dv_early` off: byte-identical).
#[test]
fn fused_dv_chunks_kernels() {
    let mma = "wgmma.mma_async";
    let fence = "wgmma.fence.sync.aligned;";
    // from the last wgmma wait before the dS barrier to the barrier: the element code
    let element_code = |ptx: &str| -> String {
        let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
        let w = ptx[..at].rfind("wgmma.wait_group").expect("a wait");
        ptx[w..at].to_string()
    };
    let first_mma = |t: &str| t.find(mma).expect("dV");
    for (file, name) in [
        ("dense", "dense"),
        ("causal", "causal_attention"),
        ("alibi_causal", "alibi_causal"),
        ("softcap", "softcap_causal"),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let binding = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert!(
            !binding.bwd_dv_chunks && !binding.bwd_dk_chunks,
            "{name}: off by default"
        );
        let base = PtxOptions {
            bwd_dv_early: true,
            ..binding
        };
        let chunks = PtxOptions {
            bwd_dv_chunks: true,
            ..base
        };
        assert!(chunks.key() != base.key(), "{name}");
        let def = dkdv_twice(&plan, &base, name, &format!("ch_def_{name}_bwd_dkdv.ptx"));
        let new = dkdv_twice(&plan, &chunks, name, &format!("ch_i_{name}_bwd_dkdv.ptx"));
        let (e0, e1) = (element_code(&def.ptx), element_code(&new.ptx));
        assert_eq!(e0.matches(mma).count(), 4, "{name}: dV's four steps");
        assert_eq!(e1.matches(mma).count(), 4, "{name}: dV's four steps");
        assert_eq!(e0.matches(fence).count(), 1, "{name}");
        assert_eq!(e1.matches(fence).count(), 4, "{name}: a fence per step");
        assert!(
            !e0[first_mma(&e0)..].contains("ex2.approx"),
            "{name}: every exponential before dV by default"
        );
        assert!(
            e1[first_mma(&e1)..].contains("ex2.approx"),
            "{name}: exponentials after dV's first step"
        );
        assert_eq!(
            def.ptx.matches(mma).count(),
            new.ptx.matches(mma).count(),
            "{name}: the same products"
        );
        // one path (ALiBi's affine path has one already)
        assert!(
            new.ptx.matches("ex2.approx").count() <= def.ptx.matches("ex2.approx").count(),
            "{name}: one path for full and partial blocks"
        );
        // bwd_dk_chunks: dK's four steps before the barrier as well, each after a fence
        let both = PtxOptions {
            bwd_dk_chunks: true,
            ..chunks
        };
        assert!(both.key() != chunks.key(), "{name}");
        let k2 = dkdv_twice(&plan, &both, name, &format!("ch_o_{name}_bwd_dkdv.ptx"));
        let e2 = element_code(&k2.ptx);
        assert_eq!(e2.matches(mma).count(), 8, "{name}: dV's and dK's steps");
        assert_eq!(e2.matches(fence).count(), 8, "{name}: a fence per step");
        assert_eq!(
            k2.ptx.matches(mma).count(),
            def.ptx.matches(mma).count(),
            "{name}: the same products"
        );
        // without bwd_dv_early the options change nothing
        let off = PtxOptions {
            bwd_dv_early: false,
            bwd_empty_late: false,
            ..binding
        };
        let a = dkdv_twice(&plan, &off, name, &format!("ch_off_{name}_bwd_dkdv.ptx"));
        let b = dkdv_twice(
            &plan,
            &PtxOptions {
                bwd_dv_chunks: true,
                bwd_dk_chunks: true,
                ..off
            },
            name,
            &format!("ch_offi_{name}_bwd_dkdv.ptx"),
        );
        assert_eq!(a.ptx, b.ptx, "{name}: ignored without bwd_dv_early");
    }
}

/// The binding's `bwd_dv_early` / `bwd_empty_late` since session 19: both on D64's
/// causal-type bindings on q tiles of 128 whose score reads no positions per element
/// (causal, soft-cap), neither on D64 ALiBi + causal (positions) and dense (the turns);
/// dV early on D128 bands and block tables (sliding window, document + causal). On the
/// D64 causal and the D128 sliding kernels dV is issued between the element code's last
/// wait and the dS barrier; on D64 causal the slot wait follows the first product after
/// that barrier.
#[test]
fn binding_dv_early_d64_and_tables() {
    let try_wait = "mbarrier.try_wait.parity";
    let mma = "wgmma.mma_async";
    let first = |t: &str, s: &str| t.find(s).unwrap_or(usize::MAX);
    for (file, name, d, want) in [
        ("causal", "causal_attention", 64u32, (true, true)),
        ("softcap", "softcap_causal", 64, (true, true)),
        ("alibi_causal", "alibi_causal", 64, (false, false)),
        ("dense", "dense", 64, (false, false)),
        ("sliding_window", "sliding_window", 128, (true, false)),
        ("document_causal", "document_causal", 128, (true, false)),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192)
            .static_tiles();
        assert_eq!(
            (bind.bwd_dv_early, bind.bwd_empty_late),
            want,
            "{name} D{d}"
        );
        if !matches!(name, "causal_attention" | "sliding_window") {
            continue;
        }
        let tag = format!("{name} D{d}");
        let off = PtxOptions {
            bwd_dv_early: false,
            bwd_empty_late: false,
            ..bind
        };
        let on = dkdv_twice(
            &plan,
            &bind,
            &tag,
            &format!("s19_on_d{d}_{name}_bwd_dkdv.ptx"),
        );
        let def = dkdv_twice(
            &plan,
            &off,
            &tag,
            &format!("s19_off_d{d}_{name}_bwd_dkdv.ptx"),
        );
        let before_ds_bar = |ptx: &str| -> String {
            let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
            let w = ptx[..at].rfind("wgmma.wait_group").expect("a wait");
            ptx[w..at].to_string()
        };
        assert!(!before_ds_bar(&def.ptx).contains(mma), "{tag}");
        assert!(
            before_ds_bar(&on.ptx).contains(mma),
            "{tag}: dV before the barrier"
        );
        assert_eq!(
            def.ptx.matches(mma).count(),
            on.ptx.matches(mma).count(),
            "{tag}"
        );
        if want.1 {
            let at = on.ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
            let t = &on.ptx[at..];
            assert!(first(t, mma) < first(t, try_wait), "{tag}: slot wait late");
        }
    }
}

/// `bwd_stat_acc` on the binding's fused kernels at D128: 1 starts dPᵀ's accumulator at
/// -Delta (loaded and copied before the fence that precedes Sᵀ), 2 also starts Sᵀ's at
/// -L2 / (scale log2 e); the element code then loads fewer
/// statistics (1: L2 only, 2: none) and subtracts no Delta. The same products. A score
/// function (ALiBi, soft-cap) takes 1 for 2.
#[test]
fn fused_stat_acc_kernels() {
    let fence = "wgmma.fence.sync.aligned;";
    let mma = "wgmma.mma_async";
    // the element code: from the last wgmma wait before the dS barrier to the barrier
    let element_code = |ptx: &str| -> String {
        let at = ptx.rfind("bar.sync 1, 256;").expect("the dS barrier");
        let w = ptx[..at].rfind("wgmma.wait_group").expect("a wait");
        ptx[w..at].to_string()
    };
    for (file, name) in [
        ("dense", "dense"),
        ("causal", "causal_attention"),
        ("alibi_causal", "alibi_causal"),
        ("softcap", "softcap_causal"),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert_eq!(bind.bwd_stat_acc, 0, "{name}: off by default");
        let def = dkdv_twice(&plan, &bind, name, &format!("sa0_{name}_bwd_dkdv.ptx"));
        let on = |k: u8| PtxOptions {
            bwd_stat_acc: k,
            ..bind
        };
        let k1 = dkdv_twice(&plan, &on(1), name, &format!("sa1_{name}_bwd_dkdv.ptx"));
        let k2 = dkdv_twice(&plan, &on(2), name, &format!("sa2_{name}_bwd_dkdv.ptx"));
        assert!(on(1).key() != bind.key() && on(2).key() != on(1).key());
        let score_fn = matches!(name, "alibi_causal" | "softcap_causal");
        if score_fn {
            // a score function: Delta only (2 is 1 there)
            assert_eq!(k1.ptx, k2.ptx, "{name}");
        }
        // the same products
        for k in [&k1, &k2] {
            assert_eq!(
                k.ptx.matches(mma).count(),
                def.ptx.matches(mma).count(),
                "{name}"
            );
            assert_eq!(
                k.ptx.matches(fence).count(),
                def.ptx.matches(fence).count(),
                "{name}"
            );
        }
        let loads = |t: &str| t.matches("ld.shared.v2.b32").count();
        // the starts' loads before the first product (Sᵀ): 8 pairs of Delta, and of L2
        let before = |ptx: &str| loads(&ptx[..ptx.find(mma).expect("a product")]);
        assert_eq!(before(&k1.ptx), before(&def.ptx) + 8, "{name}");
        if score_fn {
            let (e0, e1) = (element_code(&def.ptx), element_code(&k1.ptx));
            assert!(loads(&e1) < loads(&e0), "{name}: L2 only");
            continue;
        }
        assert_eq!(before(&k2.ptx), before(&def.ptx) + 16, "{name}");
        let (e0, e1, e2) = (
            element_code(&def.ptx),
            element_code(&k1.ptx),
            element_code(&k2.ptx),
        );
        assert!(loads(&e0) >= 16, "{name}: L2 and Delta by default");
        assert_eq!(loads(&e1) * 2, loads(&e0), "{name}: L2 only");
        assert_eq!(loads(&e2), 0, "{name}: no statistics");
        // dS' = P (dP - Delta): the subtraction goes
        let subs = |t: &str| t.matches("sub.f32").count() + t.matches("sub.rn.f32").count();
        assert!(
            subs(&e1) + 32 <= subs(&e0),
            "{name}: {} / {}",
            subs(&e1),
            subs(&e0)
        );
    }
}

/// `bwd_ping_next` on D64's q tiles of 128 with the turns (`bwd_pingpong`, the dense
/// binding's default; causal with the turns): dV and dK one group and the last visit's
/// dQ part another, the next visit's Sᵀ issued after the wait for dV and dK (one group
/// in flight) and its dPᵀ after the dQ part's slot stores; the same products, one more
/// group and fence per visit, two more `wait_group 1`. Off by default, ignored without
/// the turns (byte-identical).
#[test]
fn fused_ping_next_kernels() {
    let mma = "wgmma.mma_async";
    let fence = "wgmma.fence.sync.aligned;";
    let commit = "wgmma.commit_group.sync.aligned;";
    let wait1 = "wgmma.wait_group.sync.aligned 1;";
    for (file, name) in [("dense", "dense"), ("causal", "causal_attention")] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, 64, 64, InputType::Bf16)
            .backward_for_binding(&plan, 4096)
            .static_tiles();
        assert!(!bind.bwd_ping_next, "{name}: off by default");
        assert_eq!(bind.bwd_pingpong, name == "dense", "{name}");
        // without the turns: ignored
        let plain = dkdv_twice(&plan, &bind, name, &format!("pn0_{name}_bwd_dkdv.ptx"));
        let ignored = PtxOptions {
            bwd_ping_next: true,
            ..bind
        };
        assert!(
            ignored.key() != bind.key(),
            "{name}: the option is in the key"
        );
        if !bind.bwd_pingpong {
            let x = dkdv_twice(&plan, &ignored, name, &format!("pn1_{name}_bwd_dkdv.ptx"));
            assert_eq!(x.ptx, plain.ptx, "{name}: ignored without the turns");
        }
        let turns = PtxOptions {
            bwd_pingpong: true,
            bwd_visit_rec: false,
            ..bind
        };
        let def = dkdv_twice(&plan, &turns, name, &format!("pny_{name}_bwd_dkdv.ptx"));
        let on = dkdv_twice(
            &plan,
            &PtxOptions {
                bwd_ping_next: true,
                ..turns
            },
            name,
            &format!("pnn_{name}_bwd_dkdv.ptx"),
        );
        let n = |t: &str, s: &str| t.matches(s).count();
        assert_eq!(
            n(&on.ptx, mma),
            n(&def.ptx, mma),
            "{name}: the same products"
        );
        assert_eq!(n(&on.ptx, commit), n(&def.ptx, commit) + 1, "{name}");
        assert_eq!(n(&on.ptx, fence), n(&def.ptx, fence) + 1, "{name}");
        assert_eq!(n(&on.ptx, wait1), n(&def.ptx, wait1) + 2, "{name}");
        // the last visit's dQ part waited for (`wait_group 1`) with the next Sᵀ issued
        // before it: between the last two `wait_group 1` one product group (Sᵀ, 4 steps)
        let last = on.ptx.rfind(wait1).expect("a wait");
        let prev = on.ptx[..last].rfind(wait1).expect("the wait for dV and dK");
        let between = &on.ptx[prev..last];
        assert_eq!(n(between, mma), 4, "{name}: Sᵀ between the two waits");
        assert!(
            between.contains("mbarrier.try_wait"),
            "{name}: the next buffer's wait"
        );
        // its dPᵀ after the part's stores
        let tail = &on.ptx[last..];
        let st = tail.find("st.shared.v4").expect("the dQ part's stores");
        let dp = tail.find(mma).expect("dPᵀ");
        assert!(st < dp, "{name}: dPᵀ after the slot stores");
    }
}

/// `bwd_s_ahead` on the binding's fused kernels at D128 (dense, causal, ALiBi + causal:
/// `bwd_dv_early`'s element code): the next visit's Sᵀ is issued under dK (after dQ's
/// wait), the first visit's before the loop, and the visit issues dPᵀ alone. So the
/// kernel has Sᵀ's 8 k-steps once more (the prologue's), one more commit group, two more
/// fences (the prologue's; Sᵀ and dPᵀ each after their own), dV's and dK's waits leave
/// one group in flight (`wait_group 1`, two more) and the end waits for the last Sᵀ (one
/// `wait_group 0` for dV's and dK's two). Soft-cap (no `bwd_dv_early`) ignores it:
/// byte-identical.
#[test]
fn fused_s_ahead_kernels() {
    let mma = "wgmma.mma_async";
    let count = |t: &str, pat: &str| t.matches(pat).count();
    let wait = |n: u32| format!("wgmma.wait_group.sync.aligned {n};");
    for (file, name) in [
        ("dense", "dense"),
        ("causal", "causal_attention"),
        ("alibi_causal", "alibi_causal"),
        ("softcap", "softcap_causal"),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert!(!bind.bwd_s_ahead, "{name}: off by default");
        let def = dkdv_twice(&plan, &bind, name, &format!("sh0_{name}_bwd_dkdv.ptx"));
        let on_o = PtxOptions {
            bwd_s_ahead: true,
            ..bind
        };
        assert!(on_o.key() != bind.key(), "{name}");
        let on = dkdv_twice(&plan, &on_o, name, &format!("sh1_{name}_bwd_dkdv.ptx"));
        if !bind.bwd_dv_early {
            assert_eq!(on.ptx, def.ptx, "{name}: ignored without bwd_dv_early");
            continue;
        }
        assert!(
            name != "softcap_causal",
            "{name}: not measured, not the default"
        );
        let more = |pat: &str| count(&on.ptx, pat) as i64 - count(&def.ptx, pat) as i64;
        // Sᵀ: the warpgroup's 64 kv rows times Qᵀ over D = 128, 8 k-steps
        assert_eq!(more(mma), 8, "{name}: the prologue's Sᵀ");
        assert_eq!(more("wgmma.commit_group.sync.aligned;"), 1, "{name}");
        assert_eq!(more("wgmma.fence.sync.aligned;"), 2, "{name}");
        assert_eq!(more(&wait(1)), 2, "{name}: dV and dK leave Sᵀ in flight");
        assert_eq!(more(&wait(0)), -1, "{name}: the end waits for Sᵀ");
    }
}

/// `bwd_stats_bulk` (session 23: the default at D64 without a score function; session 24
/// at D128 dense; session 34 at D128 causal) on and off
/// the binding's fused kernels (D64 dense / causal on q tiles of 128,
/// D128 dense / causal on q tiles of 64, and the band at D128 with visit records): the
/// producer copies a visit's L2 and Delta rows with two `cp.async.bulk` global -> shared
/// on the buffer's `full` (which then expects their 8 Br bytes besides Q's and dO's), and
/// keeps the per-lane rows for q tiles past Lq (its arrival without them is still there);
/// off, neither the copies nor the larger count appear. The math warps' code is the same:
/// as many wgmma and shared loads.
#[test]
fn fused_stats_bulk_kernels() {
    let bulk = "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes";
    let count = |t: &str, pat: &str| t.matches(pat).count();
    for (d, file, name, len) in [
        (64u32, "dense", "dense", 4096usize),
        (64, "causal", "causal_attention", 4096),
        (128, "dense", "dense", 8192),
        (128, "causal", "causal_attention", 8192),
        (128, "sliding_window", "sliding_window", 8192),
    ] {
        let p = &example(file, name);
        let plan = Plan::new(p);
        let bind = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, len);
        // session 23: the default at D64 without a score function, session 24 on every
        // D64 binding and at D128 dense, session 34 at D128 causal; off on bands
        let default = d == 64 || name != "sliding_window";
        assert_eq!(bind.bwd_stats_bulk, default, "{name} D{d}: the default");
        let bind = PtxOptions {
            bwd_stats_bulk: false,
            ..bind
        };
        let tag = format!("{name} D{d}");
        let def = dkdv_twice(&plan, &bind, &tag, &format!("sb0_{name}_d{d}_bwd_dkdv.ptx"));
        let on_o = PtxOptions {
            bwd_stats_bulk: true,
            ..bind
        };
        assert!(on_o.key() != bind.key(), "{tag}");
        let on = dkdv_twice(&plan, &on_o, &tag, &format!("sb1_{name}_d{d}_bwd_dkdv.ptx"));
        assert_eq!(count(&def.ptx, bulk), 0, "{tag}");
        assert_eq!(count(&on.ptx, bulk), 2, "{tag}: L2 and Delta");
        // Q and dO: q_block x D bf16 each; the bulk path expects the rows' bytes too
        let tiles = 2 * bind.q_block * d * 2;
        let with = |ptx: &str, n: u32| {
            ptx.lines()
                .filter(|l| {
                    l.contains("mbarrier.arrive.expect_tx")
                        && l.trim_end().ends_with(&format!(", {n};"))
                })
                .count()
        };
        assert_eq!(with(&def.ptx, tiles), 1, "{tag}: the default's arrival");
        assert_eq!(with(&def.ptx, tiles + 8 * bind.q_block), 0, "{tag}");
        assert_eq!(
            with(&on.ptx, tiles),
            1,
            "{tag}: the per-lane path's arrival"
        );
        assert_eq!(
            with(&on.ptx, tiles + 8 * bind.q_block),
            1,
            "{tag}: with the rows' bytes"
        );
        for pat in ["wgmma.mma_async", "ld.shared", "st.shared", "stmatrix"] {
            assert_eq!(count(&on.ptx, pat), count(&def.ptx, pat), "{tag}: {pat}");
        }
    }
}

/// Head dim 256 (session 29): Gemma 2's local layers (`softcap_sliding`: tanh soft-cap, a
/// causal window) at D = Dv = 256 on sm_90 as the runtime binds them — the two-kernel
/// path, the dK/dV kernel's two warpgroups on one kv tile with Sᵀ / dPᵀ exchanged
/// (`bwd_xchg`), the dQ kernel on pairs of q tiles (`bwd_dq_pair`). Both kernels
/// snapshot-tested and emitted twice byte-identical; no float atomics.
#[test]
fn d256_binding_kernels() {
    use attnc_compiler::backend::llvm::BwdDq;
    use attnc_compiler::backend::llvm::backward::{dq_pair, xchg};
    let p = example("softcap_sliding", "softcap_sliding");
    let plan = Plan::new(&p);
    let o = PtxOptions::backward(Arch::Sm90, 256, 256, InputType::Bf16)
        .backward_for_binding(&plan, 4096);
    assert_eq!(o.bwd_dq, BwdDq::Separate);
    assert!(xchg(&o));
    let a = dkdv_twice(
        &plan,
        &o,
        "d256 softcap_sliding",
        "d256_softcap_sliding_bwd_dkdv.ptx",
    );
    assert!(dq_pair(&o, &a.kv_bounds));
    assert_eq!(a.threads, 256);
    assert!(a.smem_bytes > 224 * 1024 && a.smem_bytes <= 227 * 1024);
    let q = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
    let q2 = emit_backward(&plan, &o, BackwardKind::Dq).unwrap();
    assert_eq!(q.ptx, q2.ptx, "d256 dQ: PTX differs between two runs");
    assert_eq!(q.grid[0], GridDim::QBlockPairs);
    assert_eq!((q.threads, q.smem_bytes), (256, 224 * 1024));
    for k in [&a, &q] {
        assert!(!k.ptx.contains("atom.global.add.f32"), "no float atomics");
    }
    insta::assert_snapshot!(
        "bwd_ptx_sm90_bf16_d256__softcap_sliding__binding_bwd_dkdv",
        a.ptx
    );
    insta::assert_snapshot!(
        "bwd_ptx_sm90_bf16_d256__softcap_sliding__binding_bwd_dq",
        q.ptx
    );
}

/// `PtxOptions::bwd_uniform_reads` (the runtime's D128 / D64 bindings' default) against
/// the same bindings without it: the fused dK/dV
/// kernel of every capture-gradient attention whose reads' index arithmetic has interval
/// rules (`backend::llvm::uniform`: the relative-position table, a nested bucket table, a
/// param in the clamp) or is a function of `kv - q` (T5's float bucket arithmetic, by the
/// diagonal scan: a `vote.all` more) gains the uniform-read path — a copy of the element
/// code in place of the full blocks' (which then take the partial blocks' path: as many
/// `ex2` per thread at D128's q tiles of 64), byte-identical twice —
/// and the learned `[B, H, Q, KV]` bias, whose index is one-to-one in the positions, is
/// unchanged by the option.
/// `ATTNC_BWD_PTX_DIR=dir` writes each kernel there (for `ptxas -v`).
#[test]
fn fused_uniform_reads_kernels() {
    let nested = "tensor bucket: i32[257]; tensor tb: f32[H, 16]; param maxd: i32;\n\
                  mask causal(b, h, q, kv) { q >= kv }\n\
                  score nested(s, b, h, q, kv) { s + tb[h, bucket[clamp(q - kv, -maxd, maxd) + 128] % 16] }\n\
                  attention nested_bucket { mask = causal; score = nested; }";
    let nested = attnc_compiler::compile_source(nested)
        .unwrap()
        .programs
        .remove(0);
    let mut changed = Vec::new();
    for (p, d) in [
        (example("relative_bias_table", "relative_bias_table"), 128),
        (example("relative_bias_table", "relative_bias_table"), 64),
        (example("learned_bias", "learned_bias"), 128),
        (nested, 128),
        (example("t5_relative_bias", "t5_encoder"), 128),
    ] {
        let plan = Plan::new(&p);
        let u = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
            .backward_for_binding(&plan, 8192);
        assert!(
            u.bwd_uniform_reads,
            "the binding's default since session 39"
        );
        let o = PtxOptions {
            bwd_uniform_reads: false,
            ..u
        };
        let tag = format!("{} d{d}", p.name);
        let a = dkdv_twice(&plan, &o, &tag, &format!("{}_d{d}.ptx", p.name));
        let b = dkdv_twice(&plan, &u, &tag, &format!("{}_d{d}_uniform.ptx", p.name));
        let ex2 = |k: &PtxKernel| k.ptx.matches("ex2.approx").count();
        if a.ptx != b.ptx {
            if d == 128 {
                // the uniform path in place of the full blocks' (folded into the partial
                // blocks' path: `grad_scores`)
                assert_eq!(ex2(&b), ex2(&a), "{tag}: as many element paths");
            }
            let votes = |k: &PtxKernel| k.ptx.matches("vote.sync.all").count();
            // (each path's runs end in a warp vote, the uniform path's in place of the
            // full blocks'; the scan adds its own)
            let scan = p.name == "t5_encoder";
            assert_eq!(
                votes(&b),
                votes(&a) + usize::from(scan),
                "{tag}: the scan's vote"
            );
            changed.push(tag);
        }
    }
    assert_eq!(
        changed,
        [
            "relative_bias_table d128",
            "relative_bias_table d64",
            "nested_bucket d128",
            "t5_encoder d128"
        ]
    );
}

/// `PtxOptions::diag_cse` in the backward: `backward_for_binding` turns it on for T5
/// (a bucket computed from `kv - q` with a `log`) and for no other example among these;
/// with it, the fused dK/dV kernel (which recomputes the score and its derivative per
/// element) computes the bucket's `lg2` and reads the table once per diagonal of a
/// thread's fragment: fewer `lg2.approx` and global loads than without.
#[test]
fn diagonal_cse_in_the_backward() {
    let def = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
    for (file, name) in [
        ("dense", "dense"),
        ("alibi_causal", "alibi_causal"),
        ("relative_bias_table", "relative_bias_table"),
        ("sliding_window", "sliding_window"),
    ] {
        let plan = Plan::new(&example(file, name));
        assert!(!def.backward_for_binding(&plan, 8192).diag_cse, "{name}");
    }
    for name in ["t5_encoder", "t5_decoder"] {
        let plan = Plan::new(&example("t5_relative_bias", name));
        let on = def.backward_for_binding(&plan, 8192);
        assert!(on.diag_cse, "{name}");
        let off = PtxOptions {
            diag_cse: false,
            ..on
        };
        let count = |o: &PtxOptions, what: &str| {
            let k = emit_backward(&plan, o, BackwardKind::DkDv).unwrap();
            k.ptx.matches(what).count()
        };
        for what in ["lg2.approx", "ld.global"] {
            let (a, b) = (count(&off, what), count(&on, what));
            assert!(
                b > 0 && b < a,
                "{name}: {what} {a} without the option, {b} with it"
            );
            println!("{name}: {what} {a} -> {b}");
        }
    }
}
