//! The plan of one attention: every analysis result the backends and the runtime need,
//! computed once.
//!
//! In: a verified [`Program`] (`ir::verify_program`). Out: a [`Plan`] holding
//! - the mask's tier and dependencies ([`MaskInfo`]: dense / index-only / params /
//!   tensors, whether it reads `b` / `h`, the closed form of a linear mask);
//! - the kv-loop source of the GPU kernels ([`Plan::kv_bounds`]: the closed form, with
//!   the coefficient filter [`MAX_COEF`], or the block table);
//! - the implied linear conjuncts of the mask ([`Implied`], what the block-table kernel
//!   skips tiles with: [`Plan::table_skip`]);
//! - which params and captured tensors the mask and the score read ([`Reads`]);
//! - the recipe of the block maps ([`MapRecipe`]) and their builders for a launch
//!   ([`Plan::block_maps`], [`Plan::closed_form_bounds`], [`Plan::skip_bounds`]);
//! - the plan key ([`Plan::key`]: the program's IR text and name), what kernel caches key
//!   generated code by (with the kernel kind and the options).
//!
//! The runtime builds one plan per bind; the backends (`backend::llvm`,
//! `backend::cranelift`) generate a kernel kind from `(plan, kind, options)` and never run
//! an analysis themselves: `classify::analyze` and `ClosedForm::derive_implied` are
//! `pub(crate)` and called only here (the test `analysis_runs_once_per_plan` counts the
//! calls; `backend_and_runtime_never_call_the_analyses` checks the sources).

use crate::analysis::blockmap::BlockMaps;
use crate::analysis::classify::{self, BlockError, Implied, MaskInfo, Tier};
use crate::analysis::linear::{Bound, ClosedForm};
use crate::interp::Bindings;
use crate::ir::{Arg, Function, Inst, Program, write_program};
use crate::shape::Shape;
use std::fmt;

/// Largest coefficient magnitude of `q` or `kv` compiled into a closed-form GPU kernel
/// (the i64 arithmetic of `backend::llvm::bounds` needs the bound; larger ones take the
/// block table).
pub const MAX_COEF: i64 = 1 << 30;

/// How a GPU kernel finds the kv blocks of each q block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvBounds {
    /// In-kernel arithmetic on the closed form (no constraints: no mask, every block
    /// full); takes one `KernelParam::KvOffset` per constraint, and
    /// `KernelParam::KvAllPartial` when there is a mask.
    ClosedForm(ClosedForm),
    /// The block table (`RowStart` (begin, end) pairs + `Runs`, strides
    /// `MapBStride`/`MapHStride`), built by the host from the block analysis or, for masks
    /// over captured tensors, on the GPU by the block-table kernel.
    Table,
}

impl KvBounds {
    pub fn is_closed_form(&self) -> bool {
        matches!(self, KvBounds::ClosedForm(_))
    }

    /// The kv range of a q block is a closed form whose end grows with q and whose start
    /// does not (a causal triangle, possibly with other q-only or constant limits): later
    /// q blocks have more work, so a longest-first CTA order pays
    /// (`PtxOptions::lpt_group`). Not for a band (a sliding window: every row the same
    /// work), no mask, or a table.
    pub fn work_grows_with_q(&self) -> bool {
        self.is_closed_form()
            && self.coefficients().iter().any(|&(q, kv)| q > 0 && kv < 0)
            && !self.bounds_kv_below()
    }

    /// Some constraint bounds kv from below (`a_kv > 0`): a band such as a sliding window.
    pub fn bounds_kv_below(&self) -> bool {
        self.coefficients().iter().any(|&(_, kv)| kv > 0)
    }

    /// The (a_q, a_kv) coefficients compiled into a closed-form kernel.
    pub fn coefficients(&self) -> Vec<(i64, i64)> {
        match self {
            KvBounds::ClosedForm(cf) => cf
                .constraints
                .iter()
                .map(|c| (c.expr.q, c.expr.kv))
                .collect(),
            KvBounds::Table => vec![],
        }
    }

    /// A short name: `closed form` or `block table`.
    pub fn name(&self) -> &'static str {
        match self {
            KvBounds::ClosedForm(_) => "closed form",
            KvBounds::Table => "block table",
        }
    }
}

impl fmt::Display for KvBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvBounds::ClosedForm(cf) if cf.constraints.is_empty() => {
                write!(f, "closed form (no mask: every kv block full)")
            }
            KvBounds::ClosedForm(cf) => {
                let parts: Vec<String> = cf
                    .constraints
                    .iter()
                    .map(|c| {
                        let mut one = ClosedForm {
                            constraints: vec![c.clone()],
                            param_names: cf.param_names.clone(),
                        }
                        .to_string();
                        one = one.lines().next().unwrap_or("").to_string();
                        one.trim_start_matches("mask = ").to_string()
                    })
                    .collect();
                write!(
                    f,
                    "closed form ({}; computed in the kernel)",
                    parts.join(" && ")
                )
            }
            KvBounds::Table => write!(f, "block table (runs per q block)"),
        }
    }
}

/// The params and captured tensors (indices into `Program::params` / `tensors`, sorted)
/// that one function reads (live instructions only), and whether it reads the query or
/// key position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub params: Vec<usize>,
    pub tensors: Vec<usize>,
    /// A live `q` or `kv` argument.
    pub positions: bool,
}

impl Reads {
    fn of(f: Option<&Function>) -> Reads {
        let mut r = Reads::default();
        if let Some(f) = f {
            for (live, inst) in f.live().iter().zip(&f.insts) {
                match inst {
                    Inst::Load { tensor, .. } if *live => r.tensors.push(tensor.0 as usize),
                    Inst::Param(p) if *live => r.params.push(p.0 as usize),
                    Inst::Arg(Arg::Q | Arg::Kv) if *live => r.positions = true,
                    _ => {}
                }
            }
        }
        r.params.sort_unstable();
        r.params.dedup();
        r.tensors.sort_unstable();
        r.tensors.dedup();
        r
    }
    /// Whether the function computes something per (q, kv) element beyond arithmetic on
    /// the score: a position or a captured tensor read. Such a score holds index and
    /// address registers per accumulator element (the kernel choice in
    /// `PtxOptions::for_binding` reads this).
    pub fn per_element(&self) -> bool {
        self.positions || !self.tensors.is_empty()
    }
}

/// When and how a launch gets its block maps (for kernels that read a block table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRecipe {
    /// No mask, or a mask over indices only: the shape fixes the maps; build them once
    /// per bind and reuse them.
    PerShape,
    /// A mask over params: classified at each launch with the param values.
    PerLaunch,
    /// A mask over captured tensors: classified at each launch from tensor summaries
    /// (host), or built exactly on the GPU by the block-table kernel.
    Tensors,
}

/// Every analysis result of one program (see the module header).
#[derive(Clone, Debug)]
pub struct Plan {
    program: Program,
    key: String,
    mask: MaskInfo,
    implied: Option<Implied>,
    mask_reads: Reads,
    score_reads: Reads,
    /// [`Plan::doc_split`]'s result, made at its first call (the split program's analyses
    /// run once per plan).
    doc: std::sync::OnceLock<Option<Box<(Plan, Function)>>>,
}

impl Plan {
    /// Runs the analyses of `program` (which must pass `ir::verify_program`).
    pub fn new(program: &Program) -> Plan {
        let mask = classify::analyze(program);
        let implied = Implied::derive(program);
        Plan {
            key: format!("{}\n{}", program.name, write_program(program)),
            mask_reads: Reads::of(program.mask.as_ref()),
            score_reads: Reads::of(program.score.as_ref()),
            program: program.clone(),
            mask,
            implied,
            doc: std::sync::OnceLock::new(),
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// What generated code depends on besides the kernel kind and the options: the
    /// attention's name and its IR text (stable, `ir::write_program`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The mask's tier, dependencies and closed form.
    pub fn mask(&self) -> &MaskInfo {
        &self.mask
    }

    pub fn tier(&self) -> Tier {
        self.mask.tier
    }

    /// The params and captured tensors the mask reads (what its block maps depend on).
    pub fn mask_reads(&self) -> &Reads {
        &self.mask_reads
    }

    /// The params and captured tensors the score reads.
    pub fn score_reads(&self) -> &Reads {
        &self.score_reads
    }

    /// The closed form of the mask's linear conjuncts and the program they form
    /// (`None` when no top-level conjunct of the mask is linear).
    pub fn implied(&self) -> Option<&Implied> {
        self.implied.as_ref()
    }

    /// Where a GPU attention kernel's kv loop gets its blocks: the closed form when the
    /// program has no mask or a closed-form mask with coefficients up to [`MAX_COEF`]
    /// (and `kv_table` is off); else the block table.
    pub fn kv_bounds(&self, kv_table: bool) -> KvBounds {
        if kv_table {
            return KvBounds::Table;
        }
        if self.program.mask.is_none() {
            return KvBounds::ClosedForm(ClosedForm {
                constraints: vec![],
                param_names: self.program.params.iter().map(|x| x.name.clone()).collect(),
            });
        }
        match &self.mask.closed_form {
            Some(cf) if within_coef(cf) => KvBounds::ClosedForm(cf.clone()),
            _ => KvBounds::Table,
        }
    }

    /// The closed form of the mask's linear conjuncts whose kv range a block-table kernel
    /// computes per q block, classifying the tiles outside it empty without evaluating a
    /// point: `None` in checked mode (which evaluates every point so that every
    /// out-of-range read is recorded), when no conjunct is linear, or when a coefficient
    /// exceeds [`MAX_COEF`].
    pub fn table_skip(&self, checked: bool) -> Option<&ClosedForm> {
        if checked {
            return None;
        }
        self.implied
            .as_ref()
            .map(|i| &i.closed_form)
            .filter(|cf| within_coef(cf))
    }

    /// When the block maps of a launch are built.
    pub fn map_recipe(&self) -> MapRecipe {
        match self.mask.tier {
            Tier::Dense | Tier::IndexOnly => MapRecipe::PerShape,
            Tier::Params => MapRecipe::PerLaunch,
            Tier::Tensors => MapRecipe::Tensors,
        }
    }

    /// The block maps of one launch for tiles of `q_block` x `kv_block`
    /// (`classify::build_block_maps` with this plan's analysis).
    pub fn block_maps(
        &self,
        shape: &Shape,
        q_block: usize,
        kv_block: usize,
        bind: &Bindings,
    ) -> Result<BlockMaps, BlockError> {
        classify::build_block_maps(&self.program, &self.mask, shape, q_block, kv_block, bind)
    }

    /// One launch's bounds of a closed form `cf` of this program (`kv_bounds`): `Ok(None)`
    /// when the mask's i32 arithmetic may wrap for this launch (then every kv block is
    /// partial), see `classify::closed_form_bounds`.
    pub fn closed_form_bounds(
        &self,
        cf: &ClosedForm,
        shape: &Shape,
        bind: &Bindings,
    ) -> Result<Option<Vec<Bound>>, BlockError> {
        classify::closed_form_bounds(&self.program, cf, shape, bind)
    }

    /// One launch's bounds of the implied linear conjuncts (`Ok(None)`: none, or their
    /// i32 arithmetic may wrap for this launch, so they bound nothing).
    pub fn skip_bounds(
        &self,
        shape: &Shape,
        bind: &Bindings,
    ) -> Result<Option<Vec<Bound>>, BlockError> {
        match &self.implied {
            Some(imp) => imp.bounds(shape, bind),
            None => Ok(None),
        }
    }
}

impl Plan {
    /// The document-tiled form of this program (`analysis::linear::DocSplit`): the same
    /// program (params, tensors and score unchanged, so that the same bindings serve)
    /// with its mask replaced by the mask's linear part (none: no mask), and the function
    /// that gives each row's document. `None` unless the mask is such a document mask
    /// and its linear part has a closed form ([`Plan::kv_bounds`] of the new plan). The
    /// new plan is analysed at the first call and kept.
    pub fn doc_split(&self) -> Option<(&Plan, &Function)> {
        let made = self.doc.get_or_init(|| {
            let split = crate::analysis::linear::doc_split(self.program.mask.as_ref()?)?;
            let mut p = self.program.clone();
            p.mask = split.linear.map(|l| crate::passes::eliminate_dead_code(&l));
            let plan = Plan::new(&p);
            plan.kv_bounds(false)
                .is_closed_form()
                .then(|| Box::new((plan, crate::passes::eliminate_dead_code(&split.id))))
        });
        made.as_deref().map(|(plan, id)| (plan, id))
    }
}

fn within_coef(cf: &ClosedForm) -> bool {
    cf.constraints
        .iter()
        .all(|c| c.expr.q.abs() <= MAX_COEF && c.expr.kv.abs() <= MAX_COEF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(src: &str) -> Program {
        crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs
            .remove(0)
    }

    #[test]
    fn analysis_runs_once_per_plan() {
        let p = program(
            "tensor doc: i32[B, KV]; mask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] } \
             attention a { mask = m; }",
        );
        let before = crate::analysis::counts();
        let plan = Plan::new(&p);
        let after = crate::analysis::counts();
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
        // reading the plan runs nothing again
        let _ = (
            plan.kv_bounds(false),
            plan.table_skip(false),
            plan.map_recipe(),
        );
        assert_eq!(crate::analysis::counts(), after);
        assert_eq!(plan.mask_reads().tensors, vec![0]);
        assert!(plan.table_skip(false).is_some() && plan.table_skip(true).is_none());
    }

    #[test]
    fn triangular_work_takes_the_longest_first_order() {
        let grows = |mask: &str| {
            let p = program(&format!(
                "param w: i32; tensor doc: i32[B, KV]; mask m(b, h, q, kv) {{ {mask} }} attention a {{ mask = m; }}"
            ));
            Plan::new(&p).kv_bounds(false).work_grows_with_q()
        };
        assert!(grows("q >= kv"));
        assert!(grows("kv <= q + 5 && q < 1000"));
        assert!(!grows("q >= kv && q - kv < w"));
        assert!(!grows("kv < 10"));
        assert!(!grows("q >= kv && doc[b, q] == doc[b, kv]"));
        let dense = program("attention a { }");
        assert!(!Plan::new(&dense).kv_bounds(false).work_grows_with_q());
        assert!(!program_plan_table("q >= kv"));
    }

    fn program_plan_table(mask: &str) -> bool {
        let p = program(&format!(
            "mask m(b, h, q, kv) {{ {mask} }} attention a {{ mask = m; }}"
        ));
        Plan::new(&p).kv_bounds(true).work_grows_with_q()
    }

    /// The analysis entry points are reachable only through the plan: no module of the
    /// backends or the runtime names them (their visibility keeps other crates out).
    #[test]
    fn backend_and_runtime_never_call_the_analyses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["src/backend", "../runtime/src"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let path = e.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|x| x == "rs") {
                        files.push(path);
                    }
                }
            }
        }
        assert!(files.len() > 20, "{} files", files.len());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for banned in [
                "analyze(",
                "derive_implied(",
                "::derive(",
                "build_block_maps(",
                "closed_form_bounds(",
            ] {
                // a method of the plan (`plan.block_maps(..)`) is fine; a free call or a
                // path (`classify::analyze(`, `ClosedForm::derive(`) is not
                for (at, _) in text.match_indices(banned) {
                    let before = text[..at].chars().next_back();
                    assert!(
                        before == Some('.'),
                        "{} calls `{banned}`: read the Plan instead",
                        f.display()
                    );
                }
            }
        }
    }
}
