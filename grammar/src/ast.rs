//! The abstract syntax tree of an `.attn` file.
//!
//! In: nothing (plain data). Out: the tree the parser builds and the compiler's name
//! resolution and type checking consume. Every node carries the [`Span`] of the source
//! text it came from, so that every later diagnostic can point at the user's code.
//! After a parse error the parser still returns a tree: the broken part becomes
//! [`ExprKind::Error`] or is left out, and the error is reported beside the tree.

use std::fmt;

/// A half-open byte range `start..end` in the source text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub const fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    pub fn range(self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A type as written: `bool`, `i32`, `f32`, and for tensor elements also `i64`, `f16`, `bf16`.
/// The parser accepts any identifier here; the compiler checks the name.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeName {
    pub name: String,
    pub span: Span,
}

/// A whole source file: its items in source order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Const(ConstDecl),
    Param(ParamDecl),
    Tensor(TensorDecl),
    Fn(FnDecl),
    Mask(MaskDecl),
    Score(ScoreDecl),
    Attention(AttentionDecl),
}

impl Item {
    pub fn name(&self) -> &Ident {
        match self {
            Item::Const(d) => &d.name,
            Item::Param(d) => &d.name,
            Item::Tensor(d) => &d.name,
            Item::Fn(d) => &d.name,
            Item::Mask(d) => &d.name,
            Item::Score(d) => &d.name,
            Item::Attention(d) => &d.name,
        }
    }
    pub fn span(&self) -> Span {
        match self {
            Item::Const(d) => d.span,
            Item::Param(d) => d.span,
            Item::Tensor(d) => d.span,
            Item::Fn(d) => d.span,
            Item::Mask(d) => d.span,
            Item::Score(d) => d.span,
            Item::Attention(d) => d.span,
        }
    }
}

/// `const NAME: TYPE = EXPR;`
#[derive(Clone, Debug, PartialEq)]
pub struct ConstDecl {
    pub name: Ident,
    pub ty: TypeName,
    pub value: Expr,
    pub span: Span,
}

/// `param NAME: TYPE;` — a runtime scalar; changing its value never recompiles.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: TypeName,
    pub span: Span,
}

/// `tensor NAME: ELEM[DIM, ...];` — a tensor captured from the host at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    pub name: Ident,
    pub elem: TypeName,
    pub dims: Vec<Dim>,
    pub span: Span,
}

/// One dimension of a tensor declaration.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// `B`, `H`, `Q`, `KV`, a `const` name, or any other symbol (checked at bind time).
    Name(Ident),
    /// An integer literal.
    Int(i64, Span),
}

impl Dim {
    pub fn span(&self) -> Span {
        match self {
            Dim::Name(i) => i.span,
            Dim::Int(_, s) => *s,
        }
    }
}

/// `fn NAME(a: T, ...) -> T { BODY }` — a pure helper, inlined at every call.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: TypeName,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: TypeName,
    pub span: Span,
}

/// `mask NAME(b, h, q, kv) { BODY }` or `mask NAME = COMPOSITION;`
#[derive(Clone, Debug, PartialEq)]
pub struct MaskDecl {
    pub name: Ident,
    pub body: MaskBody,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MaskBody {
    /// Parameters (the four attention indices b, h, q, kv, named freely) and a body of type bool.
    Fn { params: Vec<Ident>, body: Block },
    /// A composition of other masks with `&`, `|`, `!` (also `&&`, `||`) and parentheses.
    Compose(Expr),
}

/// `score NAME(s, b, h, q, kv) { BODY }` — the body has type f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreDecl {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Block,
    pub span: Span,
}

/// `attention NAME { mask = EXPR; score = EXPR; }`
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionDecl {
    pub name: Ident,
    pub fields: Vec<AttnField>,
    pub span: Span,
}

/// `KEY = VALUE;` inside an attention. The compiler knows the keys `mask` and `score`;
/// a mask value is a composition (names of masks with `& | !`), a score value a name.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnField {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

/// `{ let x = e; ...; tail }`
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub lets: Vec<Let>,
    /// The value of the block; `None` when missing (the compiler reports it).
    pub tail: Option<Box<Expr>>,
    pub span: Span,
}

/// `let NAME[: TYPE] = VALUE;`
#[derive(Clone, Debug, PartialEq)]
pub struct Let {
    pub name: Ident,
    pub ty: Option<TypeName>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// An integer literal as written (range is checked by the compiler).
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `e as T`
    Cast(Box<Expr>, TypeName),
    /// `f(args)`: a helper fn, a builtin, or a mask / score used as a function.
    Call(Ident, Vec<Expr>),
    /// `t[i, j]`: a read of a captured tensor.
    Index(Ident, Vec<Expr>),
    /// `if c { a } else { b }`; `else if` nests another `If` in the else branch.
    If(Box<Expr>, Block, Box<Expr>),
    Block(Block),
    /// Where the parser recovered from an error; the error is already reported.
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `&&` (short-circuit)
    AndAnd,
    /// `||` (short-circuit)
    OrOr,
    /// `&` (bools, logical with guards; composition of masks in an attention; bitwise on
    /// i32)
    And,
    /// `|` (bools, logical with guards; composition of masks in an attention; bitwise on
    /// i32)
    Or,
    /// `^`: bitwise exclusive or on i32, `!=` on bools
    Xor,
    /// `<<`: i32 left shift (0 for a shift outside 0..32)
    Shl,
    /// `>>`: i32 arithmetic right shift (the sign for a shift outside 0..32)
    Shr,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::AndAnd => "&&",
            BinOp::OrOr => "||",
            BinOp::And => "&",
            BinOp::Or => "|",
            BinOp::Xor => "^",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
        }
    }
}
