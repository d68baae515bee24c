//! PTX of the GPU backward kernels (`backend::llvm::backward`: pre, dK/dV, dQ; sm_80,
//! bf16, D = 64) for a few example attentions — no mask, a linear mask (closed form,
//! transposed for dK/dV), a score with a derivative (ALiBi, tanh soft-capping) and a
//! tensor mask (host-made block ranges) — snapshot-tested and generated twice to check
//! it is byte-identical. No float atomics anywhere (the backward is deterministic).
//! Runs without a GPU; runtime/tests/gpu_backward.rs runs the kernels.

use attnc_compiler::backend::llvm::backward::{BackwardKind, emit_backward};
use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions};
use std::path::Path;

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
    ] {
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{file}.attn")),
        )
        .unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        let p = module
            .programs
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{file}.attn has no `{name}`"));
        for kind in [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq] {
            let a = emit_backward(p, &opts, kind).unwrap_or_else(|e| panic!("{name}: {e}"));
            let b = emit_backward(p, &opts, kind).unwrap();
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
            insta::assert_snapshot!(
                format!("bwd_ptx_sm80_bf16_d64__{name}__{}", kind.name()),
                a.ptx
            );
            count += 1;
        }
    }
    assert_eq!(count, 15);
}
