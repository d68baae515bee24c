//! Hand-built [`Program`]s of the benchmark variants (dense, causal, sliding window,
//! ALiBi, tanh soft-capping, document masking), for GPU tests and benchmarks that run
//! before (and independently of) the `.attn` front end.
//!
//! In: nothing. Out: verified programs equivalent to the examples of design.md section 2.

use crate::ir::{
    Arg, BinOp, Cmp, DimSpec, ElemType, FnKind, Function, Inst, ParamId, ParamInfo, Program,
    TensorId, TensorInfo, Type, UnOp, Value,
};
use attnc_grammar::ast::Span;

fn push(f: &mut Function, i: Inst, t: Type) -> Value {
    f.push(i, t, Span::default())
}

fn program(name: &str, mask: Option<Function>, score: Option<Function>) -> Program {
    Program {
        name: name.into(),
        span: Span::default(),
        params: vec![],
        tensors: vec![],
        mask,
        score,
    }
}

/// `q >= kv` as a mask function.
fn causal_fn() -> Function {
    let mut f = Function::new(FnKind::Mask);
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    f.ret = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Ge), q, kv),
        Type::Bool,
    );
    f
}

pub fn dense() -> Program {
    program("dense", None, None)
}

pub fn causal() -> Program {
    program("causal", Some(causal_fn()), None)
}

/// `q >= kv && q - kv < window` with `param window: i32`.
pub fn sliding() -> Program {
    let mut f = Function::new(FnKind::Mask);
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    let c = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Ge), q, kv),
        Type::Bool,
    );
    let d = push(&mut f, Inst::Binary(BinOp::ISub, q, kv), Type::I32);
    let w = push(&mut f, Inst::Param(ParamId(0)), Type::I32);
    let lt = push(&mut f, Inst::Binary(BinOp::ICmp(Cmp::Lt), d, w), Type::Bool);
    f.ret = push(&mut f, Inst::Binary(BinOp::And, c, lt), Type::Bool);
    let mut p = program("sliding", Some(f), None);
    p.params.push(ParamInfo {
        name: "window".into(),
        ty: Type::I32,
        span: Span::default(),
    });
    p
}

/// Causal mask, score `s + exp2(-8 (h + 1) / HEADS) * (kv - q)`.
pub fn alibi_causal(heads: i32) -> Program {
    let mut f = Function::new(FnKind::Score);
    let s = push(&mut f, Inst::Arg(Arg::S), Type::F32);
    let h = push(&mut f, Inst::Arg(Arg::H), Type::I32);
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    let one = push(&mut f, Inst::ConstI32(1), Type::I32);
    let h1 = push(&mut f, Inst::Binary(BinOp::IAdd, h, one), Type::I32);
    let h1f = push(&mut f, Inst::Unary(UnOp::I2F, h1), Type::F32);
    let m8 = push(&mut f, Inst::f32(-8.0), Type::F32);
    let x = push(&mut f, Inst::Binary(BinOp::FMul, m8, h1f), Type::F32);
    let hs = push(&mut f, Inst::f32(heads as f32), Type::F32);
    let x = push(&mut f, Inst::Binary(BinOp::FDiv, x, hs), Type::F32);
    let slope = push(&mut f, Inst::Unary(UnOp::Exp2, x), Type::F32);
    let d = push(&mut f, Inst::Binary(BinOp::ISub, kv, q), Type::I32);
    let df = push(&mut f, Inst::Unary(UnOp::I2F, d), Type::F32);
    let bias = push(&mut f, Inst::Binary(BinOp::FMul, slope, df), Type::F32);
    f.ret = push(&mut f, Inst::Binary(BinOp::FAdd, s, bias), Type::F32);
    program("alibi_causal", Some(causal_fn()), Some(f))
}

/// Causal mask, score `30 tanh(s / 30)`.
pub fn softcap_causal() -> Program {
    let mut f = Function::new(FnKind::Score);
    let s = push(&mut f, Inst::Arg(Arg::S), Type::F32);
    let c = push(&mut f, Inst::f32(30.0), Type::F32);
    let x = push(&mut f, Inst::Binary(BinOp::FDiv, s, c), Type::F32);
    let t = push(&mut f, Inst::Unary(UnOp::Tanh, x), Type::F32);
    f.ret = push(&mut f, Inst::Binary(BinOp::FMul, c, t), Type::F32);
    program("softcap_causal", Some(causal_fn()), Some(f))
}

/// `q >= kv && doc[b, q] == doc[b, kv]` with `tensor doc: i32[B, KV]` (Lq == Lkv).
pub fn document_causal() -> Program {
    let mut f = Function::new(FnKind::Mask);
    let b = push(&mut f, Inst::Arg(Arg::B), Type::I32);
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    let c = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Ge), q, kv),
        Type::Bool,
    );
    let g = push(&mut f, Inst::ConstBool(true), Type::Bool);
    let dq = push(
        &mut f,
        Inst::Load {
            tensor: TensorId(0),
            indices: vec![b, q],
            guard: g,
        },
        Type::I32,
    );
    let dk = push(
        &mut f,
        Inst::Load {
            tensor: TensorId(0),
            indices: vec![b, kv],
            guard: g,
        },
        Type::I32,
    );
    let same = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Eq), dq, dk),
        Type::Bool,
    );
    f.ret = push(&mut f, Inst::Binary(BinOp::And, c, same), Type::Bool);
    let mut p = program("document_causal", Some(f), None);
    p.tensors.push(TensorInfo {
        name: "doc".into(),
        elem: ElemType::I32,
        dims: vec![DimSpec::B, DimSpec::Kv],
        span: Span::default(),
    });
    p
}

/// Score `s + bias[h, q % 7] * 0.5 + floor-div/rem exercise`: reads an f32 table with a
/// computed index, uses `/`, `%`, `min`, `max`, a select and `exp` (for op coverage).
pub fn bias_table() -> Program {
    let mut f = Function::new(FnKind::Score);
    let s = push(&mut f, Inst::Arg(Arg::S), Type::F32);
    let h = push(&mut f, Inst::Arg(Arg::H), Type::I32);
    let q = push(&mut f, Inst::Arg(Arg::Q), Type::I32);
    let kv = push(&mut f, Inst::Arg(Arg::Kv), Type::I32);
    let d = push(&mut f, Inst::Binary(BinOp::ISub, kv, q), Type::I32);
    let five = push(&mut f, Inst::ConstI32(5), Type::I32);
    let dq = push(&mut f, Inst::Binary(BinOp::IDiv, d, five), Type::I32);
    let dr = push(&mut f, Inst::Binary(BinOp::IRem, d, five), Type::I32);
    let m3 = push(&mut f, Inst::ConstI32(-3), Type::I32);
    let p3 = push(&mut f, Inst::ConstI32(3), Type::I32);
    let cl = push(&mut f, Inst::Binary(BinOp::IMax, dq, m3), Type::I32);
    let cl = push(&mut f, Inst::Binary(BinOp::IMin, cl, p3), Type::I32);
    let idx = push(&mut f, Inst::Binary(BinOp::IAdd, cl, p3), Type::I32);
    let g = push(&mut f, Inst::ConstBool(true), Type::Bool);
    let bias = push(
        &mut f,
        Inst::Load {
            tensor: TensorId(0),
            indices: vec![h, idx],
            guard: g,
        },
        Type::F32,
    );
    let rf = push(&mut f, Inst::Unary(UnOp::I2F, dr), Type::F32);
    let tenth = push(&mut f, Inst::f32(-0.1), Type::F32);
    let e = push(&mut f, Inst::Binary(BinOp::FMul, rf, tenth), Type::F32);
    let e = push(&mut f, Inst::Unary(UnOp::Exp, e), Type::F32);
    let zero = push(&mut f, Inst::ConstI32(0), Type::I32);
    let neg = push(
        &mut f,
        Inst::Binary(BinOp::ICmp(Cmp::Lt), d, zero),
        Type::Bool,
    );
    let sel = push(&mut f, Inst::Select(neg, e, bias), Type::F32);
    f.ret = push(&mut f, Inst::Binary(BinOp::FAdd, s, sel), Type::F32);
    let mut p = program("bias_table", None, Some(f));
    p.tensors.push(TensorInfo {
        name: "bias".into(),
        elem: ElemType::F32,
        dims: vec![DimSpec::H, DimSpec::Fixed(7)],
        span: Span::default(),
    });
    p
}

/// All samples with their names.
pub fn all(heads: i32) -> Vec<Program> {
    vec![
        dense(),
        causal(),
        sliding(),
        alibi_causal(heads),
        softcap_causal(),
        document_causal(),
        bias_table(),
    ]
}
