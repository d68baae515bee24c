//! The stable textual form of the IR (what `attnc emit ir` prints and the snapshots hold).
//!
//! In: a [`Program`]. Out: text, one instruction per line, `vN: TYPE = OP OPERANDS`.
//! Deterministic: the same program always prints the same bytes.

use super::{Function, Inst, Program};
use std::fmt::Write;

/// Prints a whole program.
pub fn write_program(p: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "attention {}", p.name);
    write_captures(&mut out, p);
    match &p.mask {
        Some(f) => write_function(&mut out, "mask(b, h, q, kv) -> bool", f, p),
        None => out.push_str("mask: none (dense)\n"),
    }
    match &p.score {
        Some(f) => write_function(&mut out, "score(s, b, h, q, kv) -> f32", f, p),
        None => out.push_str("score: none (identity)\n"),
    }
    out
}

/// The program's captures, one line each: `param pN name: type`, then
/// `tensor tN name: elem[dims]` (the header of [`write_program`] and of the score
/// gradient's text).
pub(crate) fn write_captures(out: &mut String, p: &Program) {
    for (i, param) in p.params.iter().enumerate() {
        let _ = writeln!(out, "  param p{i} {}: {}", param.name, param.ty);
    }
    for (i, t) in p.tensors.iter().enumerate() {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            out,
            "  tensor t{i} {}: {}[{}]",
            t.name,
            t.elem.name(),
            dims.join(", ")
        );
    }
}

pub(crate) fn write_function(out: &mut String, header: &str, f: &Function, p: &Program) {
    let _ = writeln!(out, "{header} {{");
    for (i, inst) in f.insts.iter().enumerate() {
        let _ = write!(out, "  v{i}: {} = ", f.types[i]);
        let _ = match inst {
            Inst::Arg(a) => writeln!(out, "arg {}", a.name()),
            Inst::ConstBool(b) => writeln!(out, "const {b}"),
            Inst::ConstI32(x) => writeln!(out, "const {x}"),
            Inst::ConstF32(bits) => writeln!(out, "const {}", fmt_f32(f32::from_bits(*bits))),
            Inst::Param(id) => writeln!(
                out,
                "param p{} ({})",
                id.0,
                p.params
                    .get(id.0 as usize)
                    .map(|x| x.name.as_str())
                    .unwrap_or("?")
            ),
            Inst::Unary(op, a) => writeln!(out, "{} {a}", op.name()),
            Inst::Binary(op, a, b) => writeln!(out, "{} {a}, {b}", op.name()),
            Inst::Select(c, a, b) => writeln!(out, "select {c}, {a}, {b}"),
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let idx: Vec<String> = indices.iter().map(|v| v.to_string()).collect();
                let name = p
                    .tensors
                    .get(tensor.0 as usize)
                    .map(|x| x.name.as_str())
                    .unwrap_or("?");
                writeln!(
                    out,
                    "load t{}({name})[{}] if {guard}",
                    tensor.0,
                    idx.join(", ")
                )
            }
        };
    }
    let _ = writeln!(out, "  return {}", f.ret);
    out.push_str("}\n");
}

/// Prints an f32 so that it reads back to the same bits (`-inf`, `nan`, `1.5`, `1e-7`).
pub fn fmt_f32(x: f32) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        let s = format!("{x:?}");
        s
    }
}
