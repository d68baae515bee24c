//! The CPU executor: the Cranelift kernel of the plan, its block maps, and the launch.
//!
//! In: the plan, bind options, host q/k/v and bindings. Out: O and LSE (f32), or the
//! kernel's raw [`CpuError`] / the maps' `BlockError`.

use super::{ExecError, ExecResult};
use crate::options::BindOptions;
use crate::policy;
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::cranelift::{self, CpuKernel, CpuOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;

/// A CPU binding.
pub(crate) struct CpuExec {
    kernel: CpuKernel,
    /// Block maps fixed by the shape (kept after the first call).
    maps: Option<BlockMaps>,
    /// q, k, v as f32, reused between calls.
    inputs: [Vec<f32>; 3],
}

impl CpuExec {
    pub(crate) fn prepare(plan: &Plan, opts: &BindOptions) -> ExecResult<Self> {
        let cpu_opts = CpuOptions {
            checked: opts.checked,
            ..CpuOptions::default()
        };
        let kernel = cranelift::compile(plan, KernelKind::Forward, &cpu_opts)?;
        Ok(CpuExec {
            kernel,
            maps: None,
            inputs: Default::default(),
        })
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
        let workers = super::pool::pool(opts.threads);
        self.kernel
            .run(&opts.shape, q, k, v, scale, bindings, maps, workers, o, lse)?;
        Ok(())
    }
}
