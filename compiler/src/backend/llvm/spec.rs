//! Kernels as data: the launch description of each kernel kind, and the one entry point
//! that generates any kind.
//!
//! In: a [`Plan`], a [`KernelKind`] and [`PtxOptions`]. Out: a [`KernelSpec`] (entry name,
//! parameters in launch order, grid rule, threads, dynamic shared memory, tiles, the kv
//! source) from [`spec`] without generating code, or a [`PtxKernel`] (the spec with its
//! PTX and LLVM IR text) from [`generate`]. A runtime binds a spec's parameters by name
//! ([`KernelParam`](super::KernelParam)) and sizes its grid from the [`GridDim`]s, so it needs no code per kind.
//!
//! Adding a kind: its variant in `backend/kind.rs`, its generator module, and one arm in
//! each `match kind` below ([`spec`]: the launch description; [`generate`]: the builder
//! and its pass pipeline).

pub use super::launch_spec::{GridDim, KernelSpec};
use super::{
    EmitText, EmitTimes, LlvmError, PASSES, PtxKernel, PtxOptions, TABLE_PASSES, blocktable,
    kernel, run_pipeline, sanitize,
};
use crate::backend::KernelKind;
use crate::plan::{KvBounds, Plan};

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
