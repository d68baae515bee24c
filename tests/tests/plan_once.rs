//! The analyses run once per bind: `classify::analyze` and `ClosedForm::derive_implied`
//! are called by `Plan::new` only — once for the program, and once more for the program
//! of a document mask's linear part where the bind runs document tiles (`Plan::doc_split`,
//! kept by the plan) — and binding, running (twice) and generating every kernel kind of a
//! plan for both backends (forward, block table, decode, decode combine) calls neither
//! again.

use attnc::{Backend, BindOptions, Captures, DType, Shape, synth};
use attnc_compiler::analysis::counts;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::cranelift::{CpuOptions, emit_clif};
use attnc_compiler::backend::llvm::decode::DecodeOptions;
use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, PtxOptions, generate};
use attnc_tests::*;

#[test]
fn analyses_run_once_per_bind() {
    let mut covered = 0;
    for ex in examples() {
        if !ex.self_attention_only() {
            continue;
        }
        let shape = Shape {
            b: 1,
            hq: 2,
            hkv: 2,
            lq: 70,
            lkv: 70,
            d: 16,
            dv: 16,
        };
        let caps: Captures = synth::captures(ex.program(), &shape, 1);
        let (q, k, v) = synth::qkv(&shape, DType::F32, 2);
        // counts are per thread; the CPU bind and its calls run on this one
        let before = counts();
        let mut bound = ex
            .variant
            .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
            .unwrap_or_else(|e| panic!("{}: {e}", ex.id()));
        let after_bind = counts();
        // (a document mask: its linear part's program too, for the document tiles)
        let doc = ex
            .program()
            .mask
            .as_ref()
            .and_then(attnc_compiler::analysis::linear::doc_split)
            .is_some() as u64;
        assert_eq!(
            (after_bind.0 - before.0, after_bind.1 - before.1),
            (1 + doc, 1 + doc),
            "{}: analyses at bind",
            ex.id()
        );
        let mut out = None;
        for _ in 0..2 {
            out = Some(
                bound
                    .forward(&q, &k, &v, &caps)
                    .unwrap_or_else(|e| panic!("{}: {e}", ex.id())),
            );
        }
        // the backward reads the bind's plan too
        let attnc::Output { o, lse } = out.expect("two forwards ran");
        bound
            .backward(&q, &k, &v, &o, &lse, &o, None, &caps)
            .unwrap_or_else(|e| panic!("{} backward: {e}", ex.id()));
        // the backends generate every kind from the bind's plan without analysing again
        let plan = bound.plan();
        emit_clif(plan, KernelKind::Forward, &CpuOptions::default()).unwrap();
        let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
        // (the backward kinds still derive their kv source from the program themselves)
        for kind in [KernelKind::Forward, KernelKind::BlockTable] {
            if kind == KernelKind::BlockTable && plan.program().mask.is_none() {
                continue;
            }
            generate(plan, kind, &opts, EmitText::PtxOnly)
                .unwrap_or_else(|e| panic!("{} {kind}: {e}", ex.id()));
        }
        // the decode kinds generate from the same plan
        let dopts = DecodeOptions {
            arch: Arch::Sm90,
            d: 64,
            input: InputType::Bf16,
            rows: 4,
            paged: true,
            copy: 0,
        }
        .ptx_options();
        for kind in [KernelKind::Decode, KernelKind::DecodeCombine] {
            generate(plan, kind, &dopts, EmitText::PtxOnly)
                .unwrap_or_else(|e| panic!("{} {kind}: {e}", ex.id()));
        }
        assert_eq!(counts(), after_bind, "{}: analyses after bind", ex.id());
        covered += 1;
    }
    assert!(covered >= 5, "{covered} examples");
}
