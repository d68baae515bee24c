//! The typed expression IR of one attention variant.
//!
//! In: built by `lower` from the checked AST (helper fns inlined, mask compositions
//! merged into one function). Out: read by the passes (`fold`, `cse`), the analyses
//! (block sparsity) and every backend (interpreter, Cranelift, LLVM).
//!
//! A [`Function`] is a straight-line SSA list: instruction `i` defines [`Value`] `i` and
//! may only use values defined before it. Control flow of the source (`if`, `&&`, `||`)
//! becomes [`Inst::Select`] and bool operators over values that are all safe to compute;
//! the one effect that is not, a tensor read, carries a *guard*: the condition under
//! which the source would have performed it. A read whose guard is false is never
//! reported out of range and yields zero. Spans of the source stay beside each
//! instruction (`Function::spans`), naga-style.
//!
//! Semantics that every backend must implement exactly:
//! - i32 `+ - *` wrap (two's complement); `IDiv`/`IRem` are floor division and the
//!   matching remainder (sign of the divisor), as in PyTorch; division by zero gives 0
//!   for both; `i32::MIN / -1` wraps to `i32::MIN` (remainder 0).
//! - i32 `IAnd`/`IOr`/`IXor` are bitwise; `IShl` is `a << n` with 0 for a shift amount
//!   outside 0..32, `IShr` the arithmetic `a >> n` with the sign (0 or -1) outside 0..32
//!   (PyTorch's int32 `bitwise_left_shift`/`bitwise_right_shift`; `scalar::shl`/`shr`).
//! - f32 arithmetic is IEEE single precision; `F2I` truncates toward zero, saturates,
//!   and maps NaN to 0 (Rust's `as`); `B2I` is 0/1.
//! - `FMin`/`FMax` return the other operand when one is NaN, and order `-0.0` below
//!   `+0.0` (IEEE 754-2019 minimumNumber/maximumNumber; `scalar::fmin`/`fmax`).

mod scalar;
mod text;
mod verify;

pub use scalar::{Scalar, eval_binary, eval_unary, floor_div, floor_rem, fmax, fmin, shl, shr};
pub use text::{fmt_f32, write_program};
pub(crate) use text::{write_captures, write_function};
pub use verify::{VerifyError, verify_function, verify_program};

use attnc_grammar::ast::Span;
use std::fmt;

/// Handle of an instruction, and of the value it defines, inside one [`Function`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub u32);

impl Value {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Index into [`Program::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

/// Index into [`Program::tensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// The value types of the IR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Bool,
    I32,
    F32,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "bool",
            Type::I32 => "i32",
            Type::F32 => "f32",
        })
    }
}

/// The arguments a mask or score function receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arg {
    /// The scaled dot product `scale * q·k` (f32); score functions only.
    S,
    /// Batch index (i32).
    B,
    /// Query head index (i32).
    H,
    /// Query position (i32).
    Q,
    /// Key/value position (i32).
    Kv,
}

impl Arg {
    pub fn name(self) -> &'static str {
        match self {
            Arg::S => "s",
            Arg::B => "b",
            Arg::H => "h",
            Arg::Q => "q",
            Arg::Kv => "kv",
        }
    }
    pub fn ty(self) -> Type {
        if self == Arg::S { Type::F32 } else { Type::I32 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// i32 -> i32, wrapping
    INeg,
    /// i32 -> i32, wrapping (`abs(i32::MIN) = i32::MIN`)
    IAbs,
    FNeg,
    FAbs,
    Not,
    Exp,
    Exp2,
    Log,
    Log2,
    Sqrt,
    Tanh,
    Floor,
    Ceil,
    /// i32 -> f32
    I2F,
    /// f32 -> i32, truncating, saturating, NaN -> 0
    F2I,
    /// bool -> i32 (0 or 1)
    B2I,
}

impl UnOp {
    pub fn name(self) -> &'static str {
        match self {
            UnOp::INeg => "ineg",
            UnOp::IAbs => "iabs",
            UnOp::FNeg => "fneg",
            UnOp::FAbs => "fabs",
            UnOp::Not => "not",
            UnOp::Exp => "exp",
            UnOp::Exp2 => "exp2",
            UnOp::Log => "log",
            UnOp::Log2 => "log2",
            UnOp::Sqrt => "sqrt",
            UnOp::Tanh => "tanh",
            UnOp::Floor => "floor",
            UnOp::Ceil => "ceil",
            UnOp::I2F => "i2f",
            UnOp::F2I => "f2i",
            UnOp::B2I => "b2i",
        }
    }
    /// (operand type, result type)
    pub fn signature(self) -> (Type, Type) {
        use Type::*;
        match self {
            UnOp::INeg | UnOp::IAbs => (I32, I32),
            UnOp::Not => (Bool, Bool),
            UnOp::I2F => (I32, F32),
            UnOp::F2I => (F32, I32),
            UnOp::B2I => (Bool, I32),
            _ => (F32, F32),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    IAdd,
    ISub,
    IMul,
    /// floor division; x / 0 = 0
    IDiv,
    /// floor remainder (sign of divisor); x % 0 = 0
    IRem,
    IMin,
    IMax,
    FAdd,
    FSub,
    FMul,
    FDiv,
    FMin,
    FMax,
    /// `pow(a, b)` on f32
    FPow,
    ICmp(Cmp),
    FCmp(Cmp),
    /// bool and (both operands are always safe to compute)
    And,
    /// bool or
    Or,
    /// bool equality (`==` on bools); `!=` on bools is `Xor`
    BEq,
    Xor,
    /// i32 bitwise and, or, exclusive or
    IAnd,
    IOr,
    IXor,
    /// i32 left shift; a shift amount outside 0..32 gives 0
    IShl,
    /// i32 arithmetic right shift; a shift amount outside 0..32 gives the sign (0 or -1)
    IShr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn name(self) -> &'static str {
        match self {
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
            Cmp::Lt => "lt",
            Cmp::Le => "le",
            Cmp::Gt => "gt",
            Cmp::Ge => "ge",
        }
    }
    /// The comparison with operands swapped: `a < b` iff `b > a`.
    pub fn swap(self) -> Cmp {
        match self {
            Cmp::Eq => Cmp::Eq,
            Cmp::Ne => Cmp::Ne,
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
        }
    }
    /// The negated comparison (for integers; for floats NaN breaks this).
    pub fn negate(self) -> Cmp {
        match self {
            Cmp::Eq => Cmp::Ne,
            Cmp::Ne => Cmp::Eq,
            Cmp::Lt => Cmp::Ge,
            Cmp::Le => Cmp::Gt,
            Cmp::Gt => Cmp::Le,
            Cmp::Ge => Cmp::Lt,
        }
    }
    pub fn eval<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

impl BinOp {
    pub fn name(self) -> String {
        match self {
            BinOp::IAdd => "iadd".into(),
            BinOp::ISub => "isub".into(),
            BinOp::IMul => "imul".into(),
            BinOp::IDiv => "idiv".into(),
            BinOp::IRem => "irem".into(),
            BinOp::IMin => "imin".into(),
            BinOp::IMax => "imax".into(),
            BinOp::FAdd => "fadd".into(),
            BinOp::FSub => "fsub".into(),
            BinOp::FMul => "fmul".into(),
            BinOp::FDiv => "fdiv".into(),
            BinOp::FMin => "fmin".into(),
            BinOp::FMax => "fmax".into(),
            BinOp::FPow => "fpow".into(),
            BinOp::ICmp(c) => format!("icmp.{}", c.name()),
            BinOp::FCmp(c) => format!("fcmp.{}", c.name()),
            BinOp::And => "and".into(),
            BinOp::Or => "or".into(),
            BinOp::BEq => "beq".into(),
            BinOp::Xor => "xor".into(),
            BinOp::IAnd => "iand".into(),
            BinOp::IOr => "ior".into(),
            BinOp::IXor => "ixor".into(),
            BinOp::IShl => "ishl".into(),
            BinOp::IShr => "ishr".into(),
        }
    }
    /// (operand type, result type)
    pub fn signature(self) -> (Type, Type) {
        use Type::*;
        match self {
            BinOp::IAdd
            | BinOp::ISub
            | BinOp::IMul
            | BinOp::IDiv
            | BinOp::IRem
            | BinOp::IMin
            | BinOp::IMax
            | BinOp::IAnd
            | BinOp::IOr
            | BinOp::IXor
            | BinOp::IShl
            | BinOp::IShr => (I32, I32),
            BinOp::FAdd
            | BinOp::FSub
            | BinOp::FMul
            | BinOp::FDiv
            | BinOp::FMin
            | BinOp::FMax
            | BinOp::FPow => (F32, F32),
            BinOp::ICmp(_) => (I32, Bool),
            BinOp::FCmp(_) => (F32, Bool),
            BinOp::And | BinOp::Or | BinOp::BEq | BinOp::Xor => (Bool, Bool),
        }
    }
    pub fn is_commutative(self) -> bool {
        matches!(
            self,
            BinOp::IAdd
                | BinOp::IMul
                | BinOp::IMin
                | BinOp::IMax
                | BinOp::FAdd
                | BinOp::FMul
                | BinOp::And
                | BinOp::Or
                | BinOp::BEq
                | BinOp::Xor
                | BinOp::IAnd
                | BinOp::IOr
                | BinOp::IXor
                | BinOp::ICmp(Cmp::Eq)
                | BinOp::ICmp(Cmp::Ne)
        )
    }
}

/// One instruction; it defines the value of the same index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Inst {
    Arg(Arg),
    ConstBool(bool),
    ConstI32(i32),
    /// An f32 constant, kept as its bits so that instructions hash and compare exactly.
    ConstF32(u32),
    /// A runtime scalar `param`.
    Param(ParamId),
    Unary(UnOp, Value),
    Binary(BinOp, Value, Value),
    /// `cond ? a : b`
    Select(Value, Value, Value),
    /// Read `tensor[indices]` (row-major), performed only when `guard` is true.
    Load {
        tensor: TensorId,
        indices: Vec<Value>,
        guard: Value,
    },
}

impl Inst {
    pub fn f32(x: f32) -> Inst {
        Inst::ConstF32(x.to_bits())
    }
    /// The values this instruction reads, in order.
    pub fn operands(&self) -> Vec<Value> {
        match self {
            Inst::Arg(_)
            | Inst::ConstBool(_)
            | Inst::ConstI32(_)
            | Inst::ConstF32(_)
            | Inst::Param(_) => vec![],
            Inst::Unary(_, a) => vec![*a],
            Inst::Binary(_, a, b) => vec![*a, *b],
            Inst::Select(c, a, b) => vec![*c, *a, *b],
            Inst::Load { indices, guard, .. } => {
                let mut v = indices.clone();
                v.push(*guard);
                v
            }
        }
    }
}

/// Whether a function is a mask (returns bool; args b, h, q, kv) or a score (returns f32;
/// args s, b, h, q, kv).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FnKind {
    Mask,
    Score,
}

/// A straight-line SSA function. `insts[i]` defines `Value(i)` of type `types[i]`;
/// `spans[i]` is the source it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub kind: FnKind,
    pub insts: Vec<Inst>,
    pub types: Vec<Type>,
    pub spans: Vec<Span>,
    pub ret: Value,
}

impl Function {
    pub fn new(kind: FnKind) -> Self {
        Function {
            kind,
            insts: Vec::new(),
            types: Vec::new(),
            spans: Vec::new(),
            ret: Value(0),
        }
    }
    pub fn ret_type(&self) -> Type {
        match self.kind {
            FnKind::Mask => Type::Bool,
            FnKind::Score => Type::F32,
        }
    }
    /// Appends an instruction without deduplication.
    pub fn push(&mut self, inst: Inst, ty: Type, span: Span) -> Value {
        let v = Value(self.insts.len() as u32);
        self.insts.push(inst);
        self.types.push(ty);
        self.spans.push(span);
        v
    }
    pub fn inst(&self, v: Value) -> &Inst {
        &self.insts[v.index()]
    }
    pub fn ty(&self, v: Value) -> Type {
        self.types[v.index()]
    }
    pub fn len(&self) -> usize {
        self.insts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.insts.is_empty()
    }
    /// Which arguments the function reads (after dead code is removed, this is what it depends on).
    pub fn uses_arg(&self, arg: Arg) -> bool {
        self.live()
            .iter()
            .zip(&self.insts)
            .any(|(live, i)| *live && *i == Inst::Arg(arg))
    }
    /// Whether any live instruction reads a param / a tensor.
    pub fn uses_params(&self) -> bool {
        self.live()
            .iter()
            .zip(&self.insts)
            .any(|(live, i)| *live && matches!(i, Inst::Param(_)))
    }
    pub fn uses_tensors(&self) -> bool {
        self.live()
            .iter()
            .zip(&self.insts)
            .any(|(live, i)| *live && matches!(i, Inst::Load { .. }))
    }
    /// `live[i]` is true when value `i` contributes to the return value.
    pub fn live(&self) -> Vec<bool> {
        self.live_from(&[self.ret])
    }
    /// `live[i]` is true when value `i` contributes to one of `roots`.
    pub fn live_from(&self, roots: &[Value]) -> Vec<bool> {
        self.live_from_until(roots, |_| false)
    }
    /// [`Function::live_from`] with the values `leaf` picks taken as given: live when
    /// reached, their operands not through them (`Lowering::tabulate`'s table reads).
    pub fn live_from_until(&self, roots: &[Value], leaf: impl Fn(Value) -> bool) -> Vec<bool> {
        let mut live = vec![false; self.insts.len()];
        if self.insts.is_empty() {
            return live;
        }
        for r in roots {
            live[r.index()] = true;
        }
        for i in (0..self.insts.len()).rev() {
            if live[i] && !leaf(Value(i as u32)) {
                for op in self.insts[i].operands() {
                    live[op.index()] = true;
                }
            }
        }
        live
    }
}

/// Element type of a captured tensor as stored by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    I32,
    I64,
    F16,
    BF16,
    F32,
}

impl ElemType {
    /// The IR type a read of this element type yields.
    pub fn read_type(self) -> Type {
        match self {
            ElemType::I32 | ElemType::I64 => Type::I32,
            _ => Type::F32,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::F32 => "f32",
        }
    }
}

/// A dimension of a captured tensor, as declared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DimSpec {
    /// Must equal the batch size.
    B,
    /// Must equal the number of query heads.
    H,
    /// Must equal the query length.
    Q,
    /// Must equal the key/value length.
    Kv,
    /// A fixed size (a literal or a `const`).
    Fixed(usize),
    /// Any size; every use of the same symbol must agree at bind time.
    Symbol(String),
}

impl fmt::Display for DimSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimSpec::B => f.write_str("B"),
            DimSpec::H => f.write_str("H"),
            DimSpec::Q => f.write_str("Q"),
            DimSpec::Kv => f.write_str("KV"),
            DimSpec::Fixed(n) => write!(f, "{n}"),
            DimSpec::Symbol(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub ty: Type,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<DimSpec>,
    pub span: Span,
}

/// One `attention` lowered: its mask (None = dense) and score (None = identity), and the
/// params and tensors they read. Only params and tensors that the attention uses appear,
/// in source order, so `ParamId`/`TensorId` index these lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    pub span: Span,
    pub params: Vec<ParamInfo>,
    pub tensors: Vec<TensorInfo>,
    pub mask: Option<Function>,
    pub score: Option<Function>,
}

impl Program {
    pub fn param(&self, name: &str) -> Option<ParamId> {
        self.params
            .iter()
            .position(|p| p.name == name)
            .map(|i| ParamId(i as u32))
    }
    pub fn tensor(&self, name: &str) -> Option<TensorId> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .map(|i| TensorId(i as u32))
    }
}
