//! The IR verifier: every backend may assume what it checks.
//!
//! In: a [`Function`] or [`Program`]. Out: `Ok(())` or the first broken rule. Rules:
//! operands are defined before use; operand and result types match each op's
//! signature; `Arg(S)` appears only in score functions; loads name a declared tensor
//! with as many i32 indices as its rank and a bool guard; params exist and have the
//! recorded type; the return value exists and has the function's return type.

use super::{Arg, BinOp, FnKind, Function, Inst, Program, Type, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("IR verifier: {what} at v{at}")]
pub struct VerifyError {
    pub at: usize,
    pub what: String,
}

pub fn verify_program(p: &Program) -> Result<(), VerifyError> {
    if let Some(m) = &p.mask {
        if m.kind != FnKind::Mask {
            return Err(VerifyError {
                at: 0,
                what: "mask function has kind score".into(),
            });
        }
        verify_function(m, p)?;
    }
    if let Some(s) = &p.score {
        if s.kind != FnKind::Score {
            return Err(VerifyError {
                at: 0,
                what: "score function has kind mask".into(),
            });
        }
        verify_function(s, p)?;
    }
    Ok(())
}

pub fn verify_function(f: &Function, p: &Program) -> Result<(), VerifyError> {
    let n = f.insts.len();
    if f.types.len() != n || f.spans.len() != n {
        return Err(VerifyError {
            at: 0,
            what: "types/spans length differs from insts".into(),
        });
    }
    if n == 0 {
        return Err(VerifyError {
            at: 0,
            what: "empty function".into(),
        });
    }
    for (i, inst) in f.insts.iter().enumerate() {
        let err = |what: String| VerifyError { at: i, what };
        for op in inst.operands() {
            if op.index() >= i {
                return Err(err(format!("operand {op} is not defined before use")));
            }
        }
        let ty = |v: Value| f.types[v.index()];
        let expect = |v: Value, t: Type| -> Result<(), VerifyError> {
            if ty(v) == t {
                Ok(())
            } else {
                Err(err(format!("operand {v} has type {}, expected {t}", ty(v))))
            }
        };
        let result = match inst {
            Inst::Arg(a) => {
                if *a == Arg::S && f.kind == FnKind::Mask {
                    return Err(err("argument s in a mask function".into()));
                }
                a.ty()
            }
            Inst::ConstBool(_) => Type::Bool,
            Inst::ConstI32(_) => Type::I32,
            Inst::ConstF32(_) => Type::F32,
            Inst::Param(id) => match p.params.get(id.0 as usize) {
                Some(info) => info.ty,
                None => return Err(err(format!("param p{} does not exist", id.0))),
            },
            Inst::Unary(op, a) => {
                let (arg, res) = op.signature();
                expect(*a, arg)?;
                res
            }
            Inst::Binary(op, a, b) => {
                let (arg, res) = op.signature();
                expect(*a, arg)?;
                expect(*b, arg)?;
                let _: BinOp = *op;
                res
            }
            Inst::Select(c, a, b) => {
                expect(*c, Type::Bool)?;
                if ty(*a) != ty(*b) {
                    return Err(err("select arms differ in type".into()));
                }
                ty(*a)
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let Some(info) = p.tensors.get(tensor.0 as usize) else {
                    return Err(err(format!("tensor t{} does not exist", tensor.0)));
                };
                if indices.len() != info.dims.len() {
                    return Err(err(format!(
                        "load of {} with {} indices, rank is {}",
                        info.name,
                        indices.len(),
                        info.dims.len()
                    )));
                }
                for v in indices {
                    expect(*v, Type::I32)?;
                }
                expect(*guard, Type::Bool)?;
                info.elem.read_type()
            }
        };
        if f.types[i] != result {
            return Err(err(format!(
                "recorded type {} but the instruction yields {result}",
                f.types[i]
            )));
        }
    }
    if f.ret.index() >= n {
        return Err(VerifyError {
            at: n,
            what: "return value is not defined".into(),
        });
    }
    if f.types[f.ret.index()] != f.ret_type() {
        return Err(VerifyError {
            at: f.ret.index(),
            what: format!(
                "returns {}, expected {}",
                f.types[f.ret.index()],
                f.ret_type()
            ),
        });
    }
    Ok(())
}
