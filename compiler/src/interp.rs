//! The reference interpreter of the IR: the definition of what a mask or score computes.
//!
//! In: a verified [`Function`], its [`Program`], argument values and [`Bindings`] (param
//! values and captured tensor data, already converted to i32/f32). Out: the returned
//! [`Scalar`], or the first out-of-range tensor read (whose guard held) as an
//! [`EvalError`] naming the tensor, the index and the source span.

use crate::ir::{Arg, Function, Inst, Program, Scalar, Type, eval_binary, eval_unary};
use attnc_grammar::ast::Span;

/// Data of a captured tensor, converted for reading: integer tensors as i32 (i64 values
/// are truncated), float tensors as f32.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    I32(Vec<i32>),
    F32(Vec<f32>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::I32(v) => v.len(),
            TensorData::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, i: usize) -> Scalar {
        match self {
            TensorData::I32(v) => Scalar::I32(v[i]),
            TensorData::F32(v) => Scalar::F32(v[i]),
        }
    }
}

/// A captured tensor bound to a [`Program`]'s tensor slot.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundTensor {
    pub dims: Vec<usize>,
    pub data: TensorData,
}

/// Values for a program's params and tensors, indexed like `Program::params` / `tensors`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bindings {
    pub params: Vec<Scalar>,
    pub tensors: Vec<BoundTensor>,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("index {index:?} is out of range for tensor `{tensor}` of shape {dims:?}")]
    OutOfBounds {
        tensor: String,
        index: Vec<i64>,
        dims: Vec<usize>,
        span: Span,
    },
}

/// The argument values of one mask or score evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Args {
    pub s: f32,
    pub b: i32,
    pub h: i32,
    pub q: i32,
    pub kv: i32,
}

impl Args {
    /// The arguments at element `(b, h, q, kv)` with score input `s`, the indices
    /// converted `as i32` (they fit for a shape that passes `Shape::validate`).
    pub fn at(s: f32, [b, h, q, kv]: [usize; 4]) -> Args {
        Args {
            s,
            b: b as i32,
            h: h as i32,
            q: q as i32,
            kv: kv as i32,
        }
    }

    /// The value of argument `a`.
    pub fn get(&self, a: Arg) -> Scalar {
        match a {
            Arg::S => Scalar::F32(self.s),
            Arg::B => Scalar::I32(self.b),
            Arg::H => Scalar::I32(self.h),
            Arg::Q => Scalar::I32(self.q),
            Arg::Kv => Scalar::I32(self.kv),
        }
    }
}

/// Evaluates `f` once. `scratch` is reused between calls to avoid allocation.
pub fn eval(
    f: &Function,
    p: &Program,
    args: Args,
    bind: &Bindings,
    scratch: &mut Vec<Scalar>,
) -> Result<Scalar, EvalError> {
    scratch.clear();
    scratch.reserve(f.insts.len());
    for (i, inst) in f.insts.iter().enumerate() {
        let val = match inst {
            Inst::Arg(a) => args.get(*a),
            Inst::ConstBool(b) => Scalar::Bool(*b),
            Inst::ConstI32(x) => Scalar::I32(*x),
            Inst::ConstF32(bits) => Scalar::F32(f32::from_bits(*bits)),
            Inst::Param(id) => bind.params[id.0 as usize],
            Inst::Unary(op, a) => eval_unary(*op, scratch[a.index()]),
            Inst::Binary(op, a, b) => eval_binary(*op, scratch[a.index()], scratch[b.index()]),
            Inst::Select(c, a, b) => {
                if scratch[c.index()].as_bool() {
                    scratch[a.index()]
                } else {
                    scratch[b.index()]
                }
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                if !scratch[guard.index()].as_bool() {
                    zero(f.types[i])
                } else {
                    let t = &bind.tensors[tensor.0 as usize];
                    let mut flat: usize = 0;
                    let mut oob = false;
                    for (k, v) in indices.iter().enumerate() {
                        let x = scratch[v.index()].as_i32();
                        if x < 0 || x as usize >= t.dims[k] {
                            oob = true;
                            break;
                        }
                        flat = flat * t.dims[k] + x as usize;
                    }
                    if oob {
                        return Err(EvalError::OutOfBounds {
                            tensor: p.tensors[tensor.0 as usize].name.clone(),
                            index: indices
                                .iter()
                                .map(|v| scratch[v.index()].as_i32() as i64)
                                .collect(),
                            dims: t.dims.clone(),
                            span: f.spans[i],
                        });
                    }
                    t.data.get(flat)
                }
            }
        };
        scratch.push(val);
    }
    Ok(scratch[f.ret.index()])
}

fn zero(t: Type) -> Scalar {
    match t {
        Type::Bool => Scalar::Bool(false),
        Type::I32 => Scalar::I32(0),
        Type::F32 => Scalar::F32(0.0),
    }
}
