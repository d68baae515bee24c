//! The CPU executor: the Cranelift kernel of the plan, its block maps, and the launch.
//!
//! In: the plan, bind options, host q/k/v and bindings. Out: O and LSE (f32), or the
//! kernel's raw [`CpuError`] / the maps' `BlockError`. A document mask over packed
//! sequences (`Plan::doc_split`, `BindOptions::doc_tiles`, `Lq == Lkv`, fast mode) runs,
//! where a call's ids form contiguous documents, the kernel of the mask's linear part over
//! a document tile list (`CpuOptions::doc_tiles`: q tiles and kv blocks from each
//! document's first row, no block across two documents), else the binding's own kernel.

use super::{ExecError, ExecResult};
use crate::options::BindOptions;
use crate::policy;
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::documents::call_tiles;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::cranelift::{self, CpuKernel, CpuOptions, DocTable};
use attnc_compiler::backend::llvm::bounds::doc_tile_runs;
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::{KvBounds, Plan};

/// A CPU binding.
pub(crate) struct CpuExec {
    kernel: CpuKernel,
    /// Block maps fixed by the shape (kept after the first call).
    maps: Option<BlockMaps>,
    /// q, k, v converted to f32 (dtypes other than f32), reused between calls.
    inputs: [Vec<f32>; 3],
    /// The kernel of `Plan::doc_split`'s program with `CpuOptions::doc_tiles` (a document
    /// mask's linear part), where document tiles apply.
    doc: Option<CpuKernel>,
    /// Calls that ran the document-tiled kernel.
    doc_calls: u64,
}

impl CpuExec {
    pub(crate) fn prepare(plan: &Plan, opts: &BindOptions) -> ExecResult<Self> {
        let tiles = |o: CpuOptions| match opts.cpu_tiles {
            Some((q_block, kv_block)) => CpuOptions {
                q_block,
                kv_block,
                ..o
            },
            None => o,
        };
        let cpu_opts = tiles(CpuOptions {
            checked: opts.checked,
            ..CpuOptions::default()
        });
        let kernel = cranelift::compile(plan, KernelKind::Forward, &cpu_opts)?;
        let s = opts.shape;
        let applies = opts.doc_tiles && !opts.checked && s.lq == s.lkv;
        let doc = match applies.then(|| plan.doc_split()).flatten() {
            Some((dplan, _)) => {
                let o = tiles(CpuOptions {
                    doc_tiles: true,
                    ..CpuOptions::default()
                });
                Some(cranelift::compile(dplan, KernelKind::Forward, &o)?)
            }
            None => None,
        };
        Ok(CpuExec {
            kernel,
            maps: None,
            inputs: Default::default(),
            doc,
            doc_calls: 0,
        })
    }

    /// Calls that ran the document-tiled kernel.
    pub(crate) fn doc_tile_calls(&self) -> u64 {
        self.doc_calls
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
    ) -> ExecResult<(Vec<f32>, Vec<f32>)> {
        let s = opts.shape;
        let mut o = vec![0f32; s.o_len()];
        let mut lse = vec![0f32; s.lse_len()];
        // f32 tensors are read in place (a copy of q, k and v was a serial ~15% of a
        // 16-thread call at L4096 D128); other dtypes are converted into reused buffers
        if let (Some(qs), Some(ks), Some(vs)) = (q.f32_slice(), k.f32_slice(), v.f32_slice()) {
            self.forward_into(plan, opts, scale, qs, ks, vs, bindings, &mut o, &mut lse)?;
            return Ok((o, lse));
        }
        let [mut qf, mut kf, mut vf] = std::mem::take(&mut self.inputs);
        q.read_f32_into(&mut qf);
        k.read_f32_into(&mut kf);
        v.read_f32_into(&mut vf);
        let r = self.forward_into(plan, opts, scale, &qf, &kf, &vf, bindings, &mut o, &mut lse);
        self.inputs = [qf, kf, vf];
        r.map(|()| (o, lse))
    }

    /// Runs the kernel on f32 slices in the layouts of `attnc_compiler::shape` and writes
    /// `o` and `lse` (caller-owned buffers of the shape's lengths; checked by the kernel).
    /// Block maps are built per launch, or once where the shape fixes them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_into(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bindings: &Bindings,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> ExecResult<()> {
        let workers = super::pool::pool(opts.threads);
        if let (Some(dk), Some((dplan, id))) = (&self.doc, plan.doc_split())
            && let KvBounds::ClosedForm(cf) = dplan.kv_bounds(false)
            && let Some(tiles) = call_tiles(
                id,
                dplan.program(),
                bindings,
                opts.shape.b,
                opts.shape.lq,
                dk.q_block(),
                dplan.kv_bounds(false).work_grows_with_q(),
            )
        {
            let bounds = dplan
                .closed_form_bounds(&cf, &opts.shape, bindings)
                .map_err(ExecError::Blocks)?;
            let has_mask = dplan.program().mask.is_some();
            let coefs = dplan.kv_bounds(false).coefficients();
            let (row_start, runs) = doc_tile_runs(
                &tiles,
                &coefs,
                bounds.as_deref(),
                has_mask,
                dk.q_block(),
                dk.kv_block(),
            );
            let table = DocTable {
                tiles: &tiles,
                row_start: &row_start,
                runs: &runs,
            };
            let s = &opts.shape;
            dk.run_docs(s, q, k, v, scale, bindings, table, workers, o, lse)?;
            self.doc_calls += 1;
            return Ok(());
        }
        let mut scratch = None;
        let maps = policy::maps_for(
            &mut self.maps,
            &mut scratch,
            plan,
            opts,
            self.kernel.q_block(),
            self.kernel.kv_block(),
            bindings,
        )
        .map_err(ExecError::Blocks)?;
        self.kernel
            .run(&opts.shape, q, k, v, scale, bindings, maps, workers, o, lse)?;
        Ok(())
    }
}
