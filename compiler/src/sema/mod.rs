//! The front end's second half: names, types, and lowering to the IR.
//!
//! In: source text (parsed here with `attnc_grammar::parse`). Out: one [`Program`] per
//! `attention` in the file (helper fns inlined, mask compositions merged, optimized and
//! verified), or every [`Diagnostic`] found. Nothing the user writes can panic this
//! module: all failures are diagnostics with spans.
//!
//! Order of work: collect the items (duplicates), evaluate consts, check every fn,
//! mask and score on its own (so errors in unused items are reported too), and only
//! when all of that is clean, lower each attention.

mod builtins;
mod lower;

use crate::diag::Diagnostic;
use crate::ir::{self, DimSpec, ElemType, ParamInfo, Program, Scalar, TensorInfo, Type};
use crate::passes;
use attnc_grammar::ast::{self, Span};
use std::collections::HashMap;

pub use lower::MAX_INSTS;

/// The result of compiling a source file.
#[derive(Clone, Debug)]
pub struct Module {
    pub programs: Vec<Program>,
}

impl Module {
    pub fn attention(&self, name: &str) -> Option<&Program> {
        self.programs.iter().find(|p| p.name == name)
    }
    pub fn names(&self) -> Vec<&str> {
        self.programs.iter().map(|p| p.name.as_str()).collect()
    }
}

/// Parses, checks and lowers a source file. Returns the module, or every diagnostic
/// (parse errors first, then semantic errors in source order).
pub fn compile_source(source: &str) -> Result<Module, Vec<Diagnostic>> {
    let _span = tracing::info_span!("front_end", bytes = source.len()).entered();
    let (file, parse_errors) = attnc_grammar::parse(source);
    let mut diags: Vec<Diagnostic> = parse_errors
        .iter()
        .map(|e| {
            let mut d = Diagnostic::error(e.kind.code(), e.span, e.message.clone());
            if let Some(h) = &e.hint {
                d = d.with_hint(h.clone());
            }
            d
        })
        .collect();
    let parse_spans: Vec<Span> = diags.iter().map(|d| d.span).collect();
    let mut semantic = Vec::new();
    let programs = check_file(&file, &mut semantic);
    // One report per (code, place): inlining can reach the same mistake twice.
    let mut seen = std::collections::HashSet::new();
    for d in semantic {
        // A block left without a value by a syntax error was already reported by the parser.
        let follows_parse_error = d.code == "E0215"
            && parse_spans
                .iter()
                .any(|p| d.span.start <= p.start && p.end <= d.span.end);
        // Growth past the size limit is reported once, where it is first found.
        let repeated_limit = d.code == "E0113" && !seen.insert(("E0113", 0, 0, String::new()));
        if !follows_parse_error
            && !repeated_limit
            && seen.insert((d.code, d.span.start, d.span.end, d.message.clone()))
        {
            diags.push(d);
        }
    }
    if diags.iter().any(|d| d.is_error()) {
        Err(diags)
    } else {
        Ok(Module { programs })
    }
}

/// What a top-level name refers to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ItemRef<'a> {
    Const(usize),
    Param(usize),
    Tensor(usize),
    Fn(&'a ast::FnDecl),
    Mask(&'a ast::MaskDecl),
    Score(&'a ast::ScoreDecl),
    Attention,
}

/// Everything lowering needs to know about the file's items.
pub(crate) struct Items<'a> {
    pub names: HashMap<&'a str, ItemRef<'a>>,
    pub consts: Vec<(String, Option<Scalar>, Type, Span)>,
    pub params: Vec<ParamInfo>,
    pub tensors: Vec<TensorInfo>,
    /// Helpers whose own check passed a size or depth limit (E0113, E0115), with that
    /// code: callers report it at their call instead of inlining them again.
    pub gave_up: std::cell::RefCell<HashMap<String, &'static str>>,
}

impl<'a> Items<'a> {
    /// All top-level names, for "did you mean" hints.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().copied()
    }
}

pub(crate) fn type_of_name(t: &ast::TypeName) -> Option<Type> {
    match t.name.as_str() {
        "bool" => Some(Type::Bool),
        "i32" => Some(Type::I32),
        "f32" => Some(Type::F32),
        _ => None,
    }
}

fn elem_of_name(t: &ast::TypeName) -> Option<ElemType> {
    match t.name.as_str() {
        "i32" => Some(ElemType::I32),
        "i64" => Some(ElemType::I64),
        "f16" => Some(ElemType::F16),
        "bf16" => Some(ElemType::BF16),
        "f32" => Some(ElemType::F32),
        _ => None,
    }
}

pub(crate) fn unknown_type(t: &ast::TypeName, allowed: &str) -> Diagnostic {
    let mut d = Diagnostic::error("E0105", t.span, format!("unknown type `{}`", t.name))
        .with_label("not a type here")
        .with_hint(format!("the types allowed here are {allowed}"));
    if matches!(t.name.as_str(), "i64" | "f16" | "bf16") {
        d = d.with_hint(format!(
            "`{}` is only a tensor element type; values are bool, i32 or f32 (tensor reads yield i32 or f32)",
            t.name
        ));
    }
    d
}

fn check_file(file: &ast::File, diags: &mut Vec<Diagnostic>) -> Vec<Program> {
    let mut items = Items {
        names: HashMap::new(),
        consts: Vec::new(),
        params: Vec::new(),
        tensors: Vec::new(),
        gave_up: Default::default(),
    };
    let mut first_span: HashMap<&str, Span> = HashMap::new();
    // 1. collect names, params and tensor declarations
    for item in &file.items {
        let name = item.name();
        if let Some(prev) = first_span.get(name.name.as_str()) {
            diags.push(
                Diagnostic::error(
                    "E0102",
                    name.span,
                    format!("`{}` is defined more than once", name.name),
                )
                .with_label("redefined here")
                .with_secondary(*prev, "first defined here")
                .with_hint("rename one of the two definitions"),
            );
            continue;
        }
        if is_reserved(&name.name) {
            diags.push(
                Diagnostic::error("E0112", name.span, format!("`{}` is a reserved name", name.name))
                    .with_label("reserved")
                    .with_hint("the attention dimension names B, H, Q, KV and the builtin function names cannot be redefined"),
            );
            continue;
        }
        first_span.insert(&name.name, name.span);
        let r = match item {
            ast::Item::Const(c) => {
                items
                    .consts
                    .push((c.name.name.clone(), None, Type::I32, c.span));
                ItemRef::Const(items.consts.len() - 1)
            }
            ast::Item::Param(p) => {
                let ty = match type_of_name(&p.ty) {
                    Some(t) => t,
                    None => {
                        diags.push(unknown_type(&p.ty, "`bool`, `i32` and `f32`"));
                        Type::I32
                    }
                };
                items.params.push(ParamInfo {
                    name: p.name.name.clone(),
                    ty,
                    span: p.span,
                });
                ItemRef::Param(items.params.len() - 1)
            }
            ast::Item::Tensor(t) => {
                let elem = match elem_of_name(&t.elem) {
                    Some(e) => e,
                    None => {
                        diags.push(unknown_type(
                            &t.elem,
                            "`i32`, `i64`, `f16`, `bf16` and `f32`",
                        ));
                        ElemType::F32
                    }
                };
                items.tensors.push(TensorInfo {
                    name: t.name.name.clone(),
                    elem,
                    dims: Vec::new(),
                    span: t.span,
                });
                ItemRef::Tensor(items.tensors.len() - 1)
            }
            ast::Item::Fn(f) => ItemRef::Fn(f),
            ast::Item::Mask(m) => ItemRef::Mask(m),
            ast::Item::Score(s) => ItemRef::Score(s),
            ast::Item::Attention(_) => ItemRef::Attention,
        };
        items.names.insert(&name.name, r);
    }
    // 2. consts, in source order (a const may use consts defined before it)
    let mut ci = 0;
    for item in &file.items {
        if let ast::Item::Const(c) = item {
            if !matches!(items.names.get(c.name.name.as_str()), Some(ItemRef::Const(i)) if *i == ci)
            {
                continue; // a duplicate, already reported
            }
            let value = lower::eval_const(c, ci, &items, diags);
            if let Some((v, t)) = value {
                items.consts[ci].1 = Some(v);
                items.consts[ci].2 = t;
            }
            ci += 1;
        }
    }
    // 3. tensor dims (may name consts)
    let mut ti = 0;
    for item in &file.items {
        if let ast::Item::Tensor(t) = item {
            if !matches!(items.names.get(t.name.name.as_str()), Some(ItemRef::Tensor(i)) if *i == ti)
            {
                continue;
            }
            let dims = tensor_dims(t, &items, diags);
            items.tensors[ti].dims = dims;
            ti += 1;
        }
    }
    // 4. check every fn, mask and score on its own
    for item in &file.items {
        let before = diags.len();
        match item {
            ast::Item::Fn(f) => lower::check_fn(f, &items, diags),
            ast::Item::Mask(m) => lower::check_mask(m, &items, diags),
            ast::Item::Score(s) => lower::check_score(s, &items, diags),
            _ => continue,
        }
        if let Some(d) = diags[before..]
            .iter()
            .find(|d| matches!(d.code, "E0113" | "E0115"))
        {
            let name = item.name().name.clone();
            items.gave_up.borrow_mut().insert(name, d.code);
        }
    }
    // 5. attentions: check fields
    let mut programs = Vec::new();
    let had_errors = diags.iter().any(|d| d.is_error());
    for item in &file.items {
        if let ast::Item::Attention(a) = item {
            let mut local = Vec::new();
            let p = lower::lower_attention(a, &items, &mut local);
            let ok = local.is_empty();
            diags.extend(local);
            if let (Some(p), true, false) = (p, ok, had_errors) {
                let p = finish(p, diags);
                if let Some(p) = p {
                    programs.push(p);
                }
            }
        }
    }
    programs
}

/// Optimizes, lifts a score's −∞ conditions into the mask (`lift`), compacts
/// params/tensors to those used, and verifies.
fn finish(mut p: Program, diags: &mut Vec<Diagnostic>) -> Option<Program> {
    p.mask = p.mask.map(|f| passes::optimize(&f));
    p.score = p.score.map(|f| passes::optimize(&f));
    if let Some(l) = crate::lift::lift_score_masks(&p) {
        p = l;
    }
    passes::compact_captures(&mut p);
    if let Err(e) = ir::verify_program(&p) {
        diags.push(
            Diagnostic::error("E0900", p.span, format!("internal compiler error: {e}"))
                .with_hint("this is a bug in attnc; please report it with this file"),
        );
        return None;
    }
    Some(p)
}

fn is_reserved(name: &str) -> bool {
    matches!(name, "B" | "H" | "Q" | "KV") || builtins::is_builtin(name)
}

fn tensor_dims(t: &ast::TensorDecl, items: &Items, diags: &mut Vec<Diagnostic>) -> Vec<DimSpec> {
    if t.dims.is_empty() || t.dims.len() > 4 {
        diags.push(
            Diagnostic::error(
                "E0219",
                t.name.span,
                format!("tensor `{}` has rank {}", t.name.name, t.dims.len()),
            )
            .with_label("declared here")
            .with_hint("captured tensors have rank 1 to 4"),
        );
    }
    t.dims
        .iter()
        .map(|d| match d {
            ast::Dim::Int(n, span) => {
                if *n <= 0 || *n > i32::MAX as i64 {
                    diags.push(
                        Diagnostic::error("E0219", *span, format!("tensor dimension {n} is not a positive i32"))
                            .with_label("invalid size"),
                    );
                    DimSpec::Fixed(1)
                } else {
                    DimSpec::Fixed(*n as usize)
                }
            }
            ast::Dim::Name(id) => match id.name.as_str() {
                "B" => DimSpec::B,
                "H" => DimSpec::H,
                "Q" => DimSpec::Q,
                "KV" => DimSpec::Kv,
                other => match items.names.get(other) {
                    Some(ItemRef::Const(i)) => match items.consts[*i].1 {
                        Some(Scalar::I32(n)) if n > 0 => DimSpec::Fixed(n as usize),
                        Some(_) => {
                            diags.push(
                                Diagnostic::error(
                                    "E0219",
                                    id.span,
                                    format!("const `{other}` used as a tensor dimension is not a positive i32"),
                                )
                                .with_label("invalid size")
                                .with_secondary(items.consts[*i].3, "defined here"),
                            );
                            DimSpec::Fixed(1)
                        }
                        None => DimSpec::Fixed(1),
                    },
                    Some(_) => {
                        diags.push(
                            Diagnostic::error(
                                "E0219",
                                id.span,
                                format!("`{other}` is not a const and cannot size a tensor dimension"),
                            )
                            .with_label("not a size")
                            .with_hint("use B, H, Q, KV, an integer, a const, or a fresh symbol checked at bind time"),
                        );
                        DimSpec::Fixed(1)
                    }
                    None => DimSpec::Symbol(other.to_string()),
                },
            },
        })
        .collect()
}
