//! The document-tiled forward of a CUDA binding (`PtxOptions::doc_tiles`): a document
//! mask `L && doc[b, q] == doc[b, kv]` over packed sequences run as FlashAttention's
//! varlen kernels run packed documents — each q tile inside one document, its kv blocks
//! from the document's first row, the kernel of `L` alone.
//!
//! In: the plan and bind options of a binding, and per call its bindings and q/k/v. Out:
//! at bind, the document-tiled options of the kernel of `Plan::doc_split`'s program (kept
//! by the binding's plan; where `BindOptions::doc_tiles`, on by default, and the binding
//! allow), the kernel compiled at the first call that runs it; per call on host inputs, the device problem
//! with its tile list (`analysis::documents`), or `None` when this call's ids do not form
//! contiguous documents (then the binding's own kernel runs). Calls on caller buffers
//! (Python's) run it where their block mask, made once from host copies of the ids
//! (`Bound::block_mask_tables`), carries this call's tile list ([`DocExec::tiles`], the
//! kernel compiled then, not in a call); without one they run the binding's own kernel.

use super::{Gpu, bits, env_switch, forward_options_for, input_type};
use crate::cuda::{CudaKernel, DeviceProblem, JitKernel, JitTiers, KvBlocks, Qkv};
use crate::exec::ExecResult;
use crate::options::BindOptions;
use crate::tensor::Tensor;
use attnc_compiler::analysis::documents::call_tiles;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{KvBounds, PtxOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;
use std::sync::Arc;

/// The document-tiled kernel of a binding (of its plan's `Plan::doc_split` program).
pub(crate) struct DocExec {
    /// Its kernel's options.
    opts: PtxOptions,
    /// The kernel, from the JIT cache at the first call that runs it.
    kernel: Option<Arc<JitKernel>>,
}

/// Whether a binding may run document tiles (before its mask is looked at): the
/// warp-specialized forward, fast mode, a contiguous cache with lengths on the host,
/// `Lq == Lkv`, and `BindOptions::doc_tiles`.
fn applies(opts: &BindOptions, popts: &PtxOptions) -> bool {
    opts.doc_tiles
        && popts.ws
        && !opts.checked
        && !opts.kv_pages
        && !opts.device_lens
        && opts.shape.lq == opts.shape.lkv
}

impl DocExec {
    /// The document-tiled program and options of `plan` bound with `opts` (`popts`: the
    /// binding's own forward options), where they apply; no kernel is compiled here.
    pub(crate) fn prepare(
        g: &Gpu,
        plan: &Plan,
        opts: &BindOptions,
        popts: &PtxOptions,
    ) -> ExecResult<Option<Self>> {
        if !applies(opts, popts) {
            return Ok(None);
        }
        let Some((dplan, _)) = plan.doc_split() else {
            return Ok(None);
        };
        let mut dopts =
            forward_options_for(dplan, opts, g.device.arch(), input_type(opts)?)?.for_doc_tiles();
        // (`ATTNC_FWD_DOC_PERSISTENT=0`: one CTA per tile; `=1`: persistent CTAs with the
        // tile counter; unset: as the program of `L` binds)
        match env_switch("ATTNC_FWD_DOC_PERSISTENT") {
            Some(false) => {
                dopts.persistent = false;
                dopts.dynamic_tiles = false;
                dopts.q_double = false;
                dopts.early_claim = false;
            }
            Some(true) => {
                dopts.persistent = true;
                dopts.dynamic_tiles = true;
            }
            None => {}
        }
        if !dopts.ws {
            return Ok(None);
        }
        Ok(Some(DocExec {
            opts: dopts,
            kernel: None,
        }))
    }

    /// The q tile height of the kernel's tiles (what a tile list is made for).
    pub(crate) fn q_block(&self) -> u32 {
        self.opts.q_block
    }

    /// The kernel of `dplan` (the split program), from the JIT cache at its first use.
    pub(crate) fn kernel(&mut self, g: &Gpu, dplan: &Plan) -> ExecResult<Arc<CudaKernel>> {
        let jit = match &self.kernel {
            Some(k) => k.clone(),
            None => {
                let (k, _) = g.jit.get(
                    &g.device,
                    dplan,
                    KernelKind::Forward,
                    &self.opts,
                    JitTiers::Off,
                )?;
                self.kernel.insert(k).clone()
            }
        };
        Ok(jit.current().0)
    }

    /// The tile list (`analysis::documents::call_tiles`, four words a tile) of a call of
    /// the binding of `plan` with `bindings` (the ids' data on the host), or `None` when
    /// its ids do not form contiguous documents or the kernel of `L` has no closed form;
    /// the kernel is compiled here where the list exists.
    pub(crate) fn tiles(
        &mut self,
        g: &Gpu,
        plan: &Plan,
        opts: &BindOptions,
        bindings: &Bindings,
    ) -> ExecResult<Option<(Arc<CudaKernel>, Vec<i32>)>> {
        let shape = &opts.shape;
        let Some((dplan, id)) = plan.doc_split() else {
            return Ok(None);
        };
        // (the tiles first: a call whose ids are not contiguous documents compiles nothing)
        let grows = dplan.kv_bounds(false).work_grows_with_q();
        let q_block = self.opts.q_block as usize;
        let Some(tiles) = call_tiles(
            id,
            dplan.program(),
            bindings,
            shape.b,
            shape.lq,
            q_block,
            grows,
        ) else {
            return Ok(None);
        };
        let kernel = self.kernel(g, dplan)?;
        if !matches!(kernel.spec().kv_bounds, KvBounds::ClosedForm(_)) {
            return Ok(None);
        }
        Ok(Some((kernel, tiles)))
    }

    /// This call of the binding of `plan` on the document-tiled kernel: the kernel and its
    /// problem (inputs uploaded, the closed form's offsets of `L`, the tile list), or
    /// `None` when the call's ids do not form contiguous documents.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn problem(
        &mut self,
        g: &Gpu,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
    ) -> ExecResult<Option<(Arc<CudaKernel>, DeviceProblem)>> {
        let Some((kernel, tiles)) = self.tiles(g, plan, opts, bindings)? else {
            return Ok(None);
        };
        let Some((dplan, _)) = plan.doc_split() else {
            return Ok(None);
        };
        let spec = kernel.spec();
        let KvBounds::ClosedForm(cf) = &spec.kv_bounds else {
            return Ok(None);
        };
        let shape = &opts.shape;
        let bounds = dplan.closed_form_bounds(cf, shape, bindings)?;
        let (q, k, v) = (bits(q)?, bits(k)?, bits(v)?);
        let mut p = kernel.upload(
            &g.device,
            shape,
            Qkv::Host(&q, &k, &v),
            scale,
            bindings,
            KvBlocks::ClosedForm(bounds.as_deref()),
        )?;
        p.set_doc_tiles(&g.device, &tiles, spec.q_block)?;
        Ok(Some((kernel, p)))
    }
}
