//! The PTX lowering of float `min`/`max` implements `ir::scalar`'s definition (issue 14):
//! `-0.0 < +0.0` on top of `min.f32`/`max.f32` (which leave an equal pair of zeros open):
//! equal operands are combined bitwise (`or.b32` for min, `and.b32` for max) and
//! selected. Read from the emitted PTX; the GPU run is in the device checks.

use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, PtxOptions, generate};
use attnc_compiler::plan::Plan;

fn ptx(score: &str) -> String {
    let src = format!(
        "param fp: f32;\nscore f(s, b, h, q, kv) {{ {score} }}\nattention a {{ score = f; }}\n"
    );
    let m = attnc_compiler::compile_source(&src).unwrap();
    let p = &m.programs[0];
    let opts = PtxOptions::new(Arch::parse("sm_90").unwrap(), 64, 64, InputType::Bf16);
    generate(&Plan::new(p), KernelKind::Forward, &opts, EmitText::PtxOnly)
        .unwrap()
        .0
        .ptx
}

fn count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

#[test]
fn float_min_and_max_order_signed_zeros_in_ptx() {
    // against a kernel with `+` in the same place: the extra instructions are the fixup
    let base = ptx("s + fp");
    let min = ptx("min(s, fp)");
    assert!(
        count(&min, "min.f32") > count(&base, "min.f32"),
        "no min.f32"
    );
    assert!(
        count(&min, "setp.eq.f32") > count(&base, "setp.eq.f32"),
        "no equality test"
    );
    assert!(
        count(&min, "or.b32") > count(&base, "or.b32"),
        "min does not OR the sign bits"
    );
    let max = ptx("max(s, fp)");
    assert!(
        count(&max, "setp.eq.f32") > count(&base, "setp.eq.f32"),
        "no equality test"
    );
    assert!(
        count(&max, "and.b32") > count(&base, "and.b32"),
        "max does not AND the sign bits"
    );
}
