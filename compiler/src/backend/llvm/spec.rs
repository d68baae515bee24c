//! Kernels as data: the launch description of each kernel kind, and the one entry point
//! that generates any kind.
//!
//! In: a [`Plan`], a [`KernelKind`] and [`PtxOptions`]. Out: a [`KernelSpec`] (entry name,
//! parameters in launch order, grid rule, threads, dynamic shared memory, tiles, the kv
//! source) from [`spec`] without generating code, or a [`PtxKernel`] (the spec with its
//! PTX and LLVM IR text) from [`generate`]. A runtime binds a spec's parameters by name
//! ([`KernelParam`]) and sizes its grid from the [`GridDim`]s, so it needs no code per kind.
//!
//! Adding a kind: its variant in `backend/kind.rs`, its generator module, and one arm in
//! each `match kind` below ([`spec`]: the launch description; [`generate`]: the builder
//! and its pass pipeline).

use super::{
    EmitText, EmitTimes, KernelParam, LlvmError, PASSES, PtxKernel, PtxOptions, TABLE_PASSES,
    blocktable, kernel, run_pipeline, sanitize,
};
use crate::analysis::linear::ClosedForm;
use crate::backend::KernelKind;
use crate::plan::{KvBounds, Plan};
use std::fmt;

/// One axis of a launch grid, named by what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridDim {
    /// 1.
    One,
    /// `ceil(Lq / q_block)`.
    QBlocks,
    /// `Hq`.
    Heads,
    /// `B`.
    Batches,
    /// Block-table maps over heads: `Hq` when the mask reads `h`, else 1.
    MapHeads,
    /// Block-table maps over batches: `B` when the mask reads `b`, else 1.
    MapBatches,
    /// `ceil(Lkv / kv_block)`.
    KvBlocks,
    /// `Hkv`.
    KvHeads,
    /// `ceil(B Hq Lq / rows per CTA)` of the backward's pre kernel.
    PreRows,
}

/// How to launch a generated kernel, and what it was generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub kind: KernelKind,
    pub entry: String,
    pub options: PtxOptions,
    pub q_block: u32,
    pub kv_block: u32,
    /// Threads per CTA (block = (threads, 1, 1)).
    pub threads: u32,
    /// Dynamic shared memory per CTA in bytes.
    pub smem_bytes: u32,
    /// The kernel's parameters in launch order.
    pub params: Vec<KernelParam>,
    /// The grid: (x, y, z).
    pub grid: [GridDim; 3],
    /// Where an attention kernel reads its kv blocks from: the closed form (computed in
    /// the kernel; the runtime passes offsets and builds no block maps) or the block
    /// table (`Table` for a block-table builder, which writes one).
    pub kv_bounds: KvBounds,
    /// Block-table builders only: the closed form of the mask's linear conjuncts
    /// (`Plan::table_skip`) whose per-q-block kv range the kernel computes to classify
    /// the tiles outside it empty without evaluating them (one [`KernelParam::KvOffset`]
    /// per constraint, and [`KernelParam::KvAllPartial`] to skip nothing); `None` for
    /// other kinds and builders that evaluate every tile.
    pub table_skip: Option<ClosedForm>,
}

impl KernelSpec {
    /// `grid = (x, y, z), block = (threads, 1, 1)` in words.
    pub fn launch_text(&self) -> String {
        let [x, y, z] = self.grid;
        format!("grid = ({x}, {y}, {z}), block = ({}, 1, 1)", self.threads)
    }
}

impl fmt::Display for GridDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GridDim::One => "1",
            GridDim::QBlocks => "NumQBlocks",
            GridDim::Heads => "Hq",
            GridDim::Batches => "B",
            GridDim::MapHeads => "maps over h",
            GridDim::MapBatches => "maps over b",
            GridDim::KvBlocks => "NumKvBlocks",
            GridDim::KvHeads => "Hkv",
            GridDim::PreRows => "ceil(B Hq Lq / rows per CTA)",
        })
    }
}

/// The launch description of `kind` for `plan` under `opts`, without generating code.
pub fn spec(plan: &Plan, kind: KernelKind, opts: &PtxOptions) -> Result<KernelSpec, LlvmError> {
    opts.validate()?;
    let p = plan.program();
    match kind {
        KernelKind::Forward => {
            let (threads, smem_bytes) = kernel::sizes(opts);
            let kv_bounds = plan.kv_bounds(opts.kv_table);
            Ok(KernelSpec {
                kind,
                entry: format!("attnc_{}", sanitize(&p.name)),
                options: *opts,
                q_block: opts.q_block,
                kv_block: opts.kv_block,
                threads,
                smem_bytes,
                params: kernel::param_list(p, &kv_bounds),
                grid: [GridDim::QBlocks, GridDim::Heads, GridDim::Batches],
                kv_bounds,
                table_skip: None,
            })
        }
        KernelKind::BlockTable => {
            if p.mask.is_none() {
                return Err(LlvmError::Unsupported(format!(
                    "`{}` has no mask: its block table is dense and needs no builder",
                    p.name
                )));
            }
            let skip = plan.table_skip(opts.checked).cloned();
            Ok(KernelSpec {
                kind,
                entry: format!("attnc_blocks_{}", sanitize(&p.name)),
                options: *opts,
                q_block: opts.q_block,
                kv_block: opts.kv_block,
                threads: blocktable::THREADS,
                smem_bytes: blocktable::smem_bytes(),
                params: blocktable::param_list(p, skip.as_ref()),
                grid: [GridDim::QBlocks, GridDim::MapHeads, GridDim::MapBatches],
                kv_bounds: KvBounds::Table,
                table_skip: skip,
            })
        }
        KernelKind::BackwardPre | KernelKind::BackwardDkDv | KernelKind::BackwardDq => {
            super::backward::backward_layout(p, opts, backward_kind(kind))
        }
    }
}

/// The backward generator's name for a backward kind.
fn backward_kind(kind: KernelKind) -> super::backward::BackwardKind {
    use super::backward::BackwardKind;
    match kind {
        KernelKind::BackwardDkDv => BackwardKind::DkDv,
        KernelKind::BackwardDq => BackwardKind::Dq,
        _ => BackwardKind::Pre,
    }
}

/// Generates `kind` for `plan` under `opts`: the spec with its PTX (and the optimized
/// LLVM IR text with [`EmitText::PtxAndLlvm`]), and the time of each stage.
pub fn generate(
    plan: &Plan,
    kind: KernelKind,
    opts: &PtxOptions,
    text: EmitText,
) -> Result<(PtxKernel, EmitTimes), LlvmError> {
    let t0 = std::time::Instant::now();
    let p = plan.program();
    let _span = tracing::info_span!("codegen", backend = "llvm", kind = %kind, attention = %p.name)
        .entered();
    if matches!(
        kind,
        KernelKind::BackwardPre | KernelKind::BackwardDkDv | KernelKind::BackwardDq
    ) {
        let k = super::backward::emit_backward(p, opts, backward_kind(kind))?;
        let times = EmitTimes {
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..EmitTimes::default()
        };
        return Ok((k, times));
    }
    let spec = spec(plan, kind, opts)?;
    let passes = match kind {
        KernelKind::BlockTable => TABLE_PASSES,
        _ => PASSES,
    };
    let (ptx, llvm_ir, mut times) = run_pipeline(
        p,
        opts,
        &spec.entry,
        passes,
        text,
        |ctx, module| match kind {
            KernelKind::Forward => {
                let built = kernel::build(ctx, module, p, opts, &spec.kv_bounds, &spec.entry)?;
                debug_assert_eq!(
                    (spec.threads, spec.smem_bytes, &spec.params),
                    (built.threads, built.smem_bytes, &built.params)
                );
                Ok(built.module)
            }
            KernelKind::BlockTable => {
                blocktable::build(ctx, module, p, opts, spec.table_skip.as_ref(), &spec.entry)
            }
            _ => Err(LlvmError::Internal("backward kinds are generated above")),
        },
    )?;
    times.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok((PtxKernel { spec, ptx, llvm_ir }, times))
}
