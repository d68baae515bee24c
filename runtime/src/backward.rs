//! The backward pass of a bound attention: [`Bound::backward`].
//!
//! In: the forward's inputs q, k, v, its outputs o, lse, the output gradients dO (and
//! optionally dLSE), and the captures (as for `forward`). Out: [`Gradients`]: dQ, dK,
//! dV (the layouts and dtype of q, k, v), the gradient of every captured f32/f16/bf16
//! tensor (its shape and dtype, accumulated in f32) and of every f32 param. Integer
//! tensors and params have none ([`Bound::check_differentiable`] says so with E0307);
//! masks have none.
//!
//! Backends: `Reference` runs the f64 oracle (`attnc_compiler::reference_grad`, which
//! recomputes O and LSE itself and ignores `o`/`lse`); `Cpu` the Cranelift backward
//! (`backend::cranelift::backward`, compiled on the first call and kept), with the
//! forward's block maps; `Cuda` runs the GPU kernels of `cuda::backward` (dQ, dK, dV and
//! the capture gradients, which its dQ kernel accumulates deterministically in fixed
//! point): a document mask whose call has contiguous documents on the kernels' document kv
//! tiles where the binding has them ([`doc_backward_options`], `doc_backward_applies`;
//! `Bound::doc_tile_backward_calls` counts those calls), else the binding's own.
//!
//! [`BackwardOptions`] (`Bound::backward_with`, and the caller-buffer entries'
//! `*_with` forms in `external`): `deterministic` (default true) keeps the gradients
//! bit-identical run to run; `false` lets a CUDA binding run the fastest non-deterministic
//! variant of its backward kernels ([`nondeterministic`]: the fused dQ's tiles added in
//! any order, `PtxOptions::bwd_dq_free`, and at dense D128 q tiles of 80,
//! `PtxOptions::backward_q80`; measured 1.10–1.13x the deterministic default at dense
//! D128 on an H200, docs/performance.md "Session 16 final check"; bands and block tables
//! keep their deterministic kernels, which are faster there). The gradients then
//! differ from run to run in the last bits of dQ (float additions in another order);
//! dK, dV and the capture gradients stay deterministic. The CPU and reference backends
//! are deterministic either way and accept the option.

use crate::api::{Bound, Captures, check_input};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use attnc_compiler::backend::cranelift::CpuOptions;
use attnc_compiler::backend::cranelift::backward::{CpuBackward, compile_backward};
use attnc_compiler::backend::llvm::{InputType, PtxOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::{ElemType, Type};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The gradients of one backward call.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// `[B, Hq, Lq, D]`, `[B, Hkv, Lkv, D]`, `[B, Hkv, Lkv, Dv]` in the input dtype.
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    /// By name: the gradient of every f32/f16/bf16 captured tensor (shape and dtype of
    /// the tensor; zero where the score does not read it).
    pub tensors: BTreeMap<String, Tensor>,
    /// By name: the gradient of every f32 param.
    pub params: BTreeMap<String, f32>,
}

/// How a backward call runs (`Bound::backward_with`, `Bound::backward_cuda_into_with`,
/// `Bound::backward_cuda_workspace_with`). `Default`: deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackwardOptions {
    /// Bit-identical gradients run to run (default true). `false`: a CUDA binding may run
    /// the fastest non-deterministic variant of its kernels ([`backward_kernel_options`]:
    /// on sm_90 the fused dQ's parts added in any order, and q tiles of 80 at dense D128;
    /// 1.10–1.13x the deterministic backward there on an H200), whose dQ then differs in
    /// its last bits from run to run (dK, dV and capture gradients stay deterministic);
    /// where no faster variant exists (the two-kernel backward of other GPUs, D other than
    /// 64/128, bands and block tables: [`nondeterministic`]) the deterministic kernels run. The CPU and reference backends are
    /// deterministic either way.
    pub deterministic: bool,
}

impl Default for BackwardOptions {
    fn default() -> Self {
        BackwardOptions {
            deterministic: true,
        }
    }
}

impl BackwardOptions {
    /// `deterministic: false` (see the field).
    pub fn nondeterministic() -> Self {
        BackwardOptions {
            deterministic: false,
        }
    }
}

/// What a binding keeps for its backward calls.
#[derive(Default)]
pub(crate) struct BackwardState {
    cpu: Option<Box<CpuBackward>>,
    /// The CUDA kernels of the caller-buffer entry points (those of `Bound::backward`,
    /// their dQ workspace allocated by the caller; dQ by a second kernel under
    /// `ATTNC_BWD_DQ=separate`), from the process's JIT cache, looked up on the first call;
    /// `[deterministic, non-deterministic]` ([`BackwardOptions`]).
    pub(crate) cuda: [Option<Arc<crate::cuda::backward::CudaBackward>>; 2],
    /// The CUDA kernels of `Bound::backward` (`PtxOptions::backward`'s defaults: dQ fused
    /// into the dK/dV kernel on sm_90, its workspace allocated per call), likewise.
    pub(crate) cuda_host: [Option<Arc<crate::cuda::backward::CudaBackward>>; 2],
    /// The document kv tiles' variant of `cuda` ([`doc_backward_options`]), where the
    /// binding has one, looked up when a block mask first carries document kv tiles.
    pub(crate) cuda_doc: [Option<Option<Arc<crate::cuda::backward::CudaBackward>>>; 2],
    /// The CPU backward of a document mask's linear part (`Plan::doc_split`), compiled
    /// on the first call that can run document tiles (`None` inside: the binding has none).
    cpu_doc: Option<Option<Box<CpuBackward>>>,
    /// `Bound::backward` calls that ran document tiles
    /// ([`Bound::doc_tile_backward_calls`]).
    doc_calls: u64,
}

/// The backward's document kv tiles (`PtxOptions::bwd_doc_tiles`) of one call, for kernels of tiles
/// `(q_block, kv_block)`: four i32 words an entry `(b, row0, rows, kj)`, and the entries
/// `[first, end, full_first, full_end]` adding into each (batch, q block)
/// (`backend::llvm::bounds::doc_kv_ranges`); made by `Bound::doc_backward_list`, carried by
/// block masks (`external::BlockMaskTables`) and used by `Bound::backward`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocBackwardList {
    pub tiles_shape: (u32, u32),
    pub tiles: Vec<i32>,
    pub ranges: Vec<i32>,
}

/// Whether a binding bound with `opts` runs the backward's document kv tiles where its
/// kernels have them ([`doc_backward_options`]) and a call's ids form contiguous
/// documents: `BindOptions::doc_tiles` (as the forward's document tiles), fast mode, `Lq ==
/// Lkv` (the list covers the keys of the rows' documents only), no paged cache or device
/// lengths. `Bound::backward` on host tensors and the block masks of the caller-buffer
/// backward (`Bound::block_mask_tables`) both ask it.
pub(crate) fn doc_backward_applies(opts: &crate::options::BindOptions) -> bool {
    opts.doc_tiles
        && !opts.checked
        && !opts.kv_pages
        && !opts.device_lens
        && opts.shape.lq == opts.shape.lkv
}

impl Bound {
    /// Whether `name` (a captured tensor or param of this attention) has a gradient:
    /// `Ok` for f32/f16/bf16 tensors and f32 params; E0307 for integer ones (and an
    /// error for names the attention does not declare).
    pub fn check_differentiable(&self, name: &str) -> Result<()> {
        let variant = self.variant();
        let p = variant.program();
        let (span, what) = if let Some(t) = p.tensor(name) {
            let info = &p.tensors[t.0 as usize];
            if info.elem.read_type() == Type::F32 {
                return Ok(());
            }
            (
                info.span,
                format!("tensor `{name}` is {}", info.elem.name()),
            )
        } else if let Some(id) = p.param(name) {
            let info = &p.params[id.0 as usize];
            if info.ty == Type::F32 {
                return Ok(());
            }
            (info.span, format!("param `{name}` is {}", info.ty))
        } else {
            let declared: Vec<&str> = p
                .tensors
                .iter()
                .map(|t| t.name.as_str())
                .chain(p.params.iter().map(|x| x.name.as_str()))
                .collect();
            return Err(Error::UnknownCapture {
                name: name.into(),
                attention: p.name.clone(),
                declared: if declared.is_empty() {
                    "nothing".into()
                } else {
                    declared.join(", ")
                },
            });
        };
        Err(Error::Capture {
            name: name.into(),
            message: format!("{what}: integer captures have no gradient"),
            rendered: variant.render_at(
                span,
                "E0307",
                &format!("`{name}` needs a gradient but is integer-typed"),
                "declared here",
                Some("only f32/f16/bf16 tensors and f32 params are differentiable; do not request a gradient for it"),
            ),
        })
    }

    /// The backward pass (module docs). `o` and `lse` are `forward`'s outputs for the
    /// same inputs and captures; `dout` has o's shape and dtype, `dlse` lse's (f32).
    /// Deterministic ([`BackwardOptions::default`]; [`Self::backward_with`] takes others).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dlse: Option<&Tensor>,
        captures: &Captures,
    ) -> Result<Gradients> {
        self.backward_with(
            q,
            k,
            v,
            o,
            lse,
            dout,
            dlse,
            captures,
            &BackwardOptions::default(),
        )
    }

    /// [`Self::backward`] under `bwd` ([`BackwardOptions`]: `deterministic: false` lets
    /// a CUDA binding run its non-deterministic kernels; the CPU and reference backends
    /// are deterministic either way).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dlse: Option<&Tensor>,
        captures: &Captures,
        bwd: &BackwardOptions,
    ) -> Result<Gradients> {
        let Some((p, [q, k, v, o, dout])) = self.widen_for_kernels([q, k, v, o, dout])? else {
            return self.backward_at_kernels(q, k, v, o, lse, dout, dlse, captures, bwd);
        };
        let g = self.backward_at_kernels(&q, &k, &v, &o, lse, &dout, dlse, captures, bwd)?;
        Ok(Gradients {
            dq: p.narrow_qk(g.dq),
            dk: p.narrow_qk(g.dk),
            dv: p.narrow_v(g.dv),
            ..g
        })
    }

    /// Head dims the kernels do not take (`head_pad`): `[q, k, v, o, do]` checked at the
    /// caller's dims and widened with zero columns to the kernels'; `None` where the
    /// binding pads nothing (the tensors are then checked at the kernels' dims).
    fn widen_for_kernels(
        &self,
        [q, k, v, o, dout]: [&Tensor; 5],
    ) -> Result<Option<(crate::head_pad::HeadPad, [Tensor; 5])>> {
        let Some(p) = self.head_pad() else {
            return Ok(None);
        };
        let (c, dt) = (self.shape(), self.options().dtype);
        self.check_qkv(q, k, v)?;
        check_input("o", o, &[c.b, c.hq, c.lq, c.dv], dt)?;
        check_input("do", dout, &[c.b, c.hq, c.lq, c.dv], dt)?;
        let widened = [q, k, v, o, dout].map(|t| p.widen(t));
        Ok(Some((p, widened)))
    }

    /// The kernels a CUDA backward call with `bindings` (host data) runs: those on document
    /// kv tiles with the call's list where they apply (`doc_backward_host`), else the
    /// binding's own (`PtxOptions::backward`).
    fn cuda_kernels_for_call(
        &mut self,
        bindings: &Bindings,
        deterministic: bool,
    ) -> Result<(
        Arc<crate::cuda::backward::CudaBackward>,
        Option<DocBackwardList>,
    )> {
        Ok(match self.doc_backward_host(bindings, deterministic)? {
            Some((k, list)) => (k, Some(list)),
            None => (self.cuda_host_backward_kernels(deterministic)?, None),
        })
    }

    /// The shapes and dtypes of one backward call's tensors `[q, k, v, o, lse, do]` and
    /// dLSE at the kernels' head dims (each error names its tensor).
    fn check_backward_inputs(
        &self,
        [q, k, v, o, lse, dout]: [&Tensor; 6],
        dlse: Option<&Tensor>,
    ) -> Result<()> {
        let (s, dt) = (self.options().shape, self.options().dtype);
        check_input("q", q, &[s.b, s.hq, s.lq, s.d], dt)?;
        check_input("k", k, &[s.b, s.hkv, s.lkv, s.d], dt)?;
        check_input("v", v, &[s.b, s.hkv, s.lkv, s.dv], dt)?;
        check_input("o", o, &[s.b, s.hq, s.lq, s.dv], dt)?;
        check_input("lse", lse, &[s.b, s.hq, s.lq], DType::F32)?;
        check_input("do", dout, &[s.b, s.hq, s.lq, s.dv], dt)?;
        if let Some(x) = dlse {
            check_input("dlse", x, &[s.b, s.hq, s.lq], DType::F32)?;
        }
        Ok(())
    }

    /// The device time of this binding's backward in milliseconds (CUDA: the inputs
    /// uploaded once, `iters` back-to-back backwards timed with events, the median of 3;
    /// the kernels `backward_with` runs under `bwd`, document kv tiles included), `None`
    /// for host backends. The tensors and captures are checked as by `backward`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_device_time_ms(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        captures: &Captures,
        iters: usize,
        bwd: &BackwardOptions,
    ) -> Result<Option<f64>> {
        match self.widen_for_kernels([q, k, v, o, dout])? {
            Some((_, [q, k, v, o, dout])) => {
                let t = [&q, &k, &v, &o, lse, &dout];
                self.backward_time_at_kernels(t, captures, iters, bwd)
            }
            None => {
                let t = [q, k, v, o, lse, dout];
                self.backward_time_at_kernels(t, captures, iters, bwd)
            }
        }
    }

    /// [`Self::backward_device_time_ms`] on tensors at the kernels' head dims.
    fn backward_time_at_kernels(
        &mut self,
        t: [&Tensor; 6],
        captures: &Captures,
        iters: usize,
        bwd: &BackwardOptions,
    ) -> Result<Option<f64>> {
        self.check_backward_inputs(t, None)?;
        if self.options().backend != crate::api::Backend::Cuda {
            return Ok(None);
        }
        let [q, k, v, o, lse, dout] = t;
        let bindings = self.bindings_reusing(captures)?;
        let (kernels, docs) = self.cuda_kernels_for_call(&bindings, bwd.deterministic)?;
        let variant = self.variant().clone();
        let (device, problem) = cuda_backward_upload(
            &variant,
            self.options().device,
            &kernels,
            self.plan(),
            &self.options().shape,
            (q, k, v, o, dout),
            &lse.to_f32(),
            None,
            self.scale(),
            &bindings,
            docs.as_ref(),
        )?;
        let ms = kernels
            .time(device, &problem, 1, iters.max(1), 3)
            .map_err(|e| variant.render(crate::exec::ExecError::Cuda(e)))?;
        if docs.is_some() {
            self.extension::<BackwardState>().doc_calls += 1;
        }
        self.keep_bindings(bindings);
        Ok(Some(ms))
    }

    /// [`Self::backward_with`] on tensors at the kernels' head dims.
    #[allow(clippy::too_many_arguments)]
    fn backward_at_kernels(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dlse: Option<&Tensor>,
        captures: &Captures,
        bwd: &BackwardOptions,
    ) -> Result<Gradients> {
        let opts = self.options().clone();
        let s = opts.shape;
        let dt = opts.dtype;
        self.check_backward_inputs([q, k, v, o, lse, dout], dlse)?;
        let bindings = self.bindings_reusing(captures)?;
        let scale = self.scale();
        let variant = self.variant().clone();
        let program = variant.program();
        let dlse_f = dlse.map(|x| x.to_f32());
        // dQ, dK, dV written by the CPU kernel straight into the output tensors (f32)
        let mut direct: Option<[Tensor; 3]> = None;
        let grads = match opts.backend {
            crate::api::Backend::Reference => attnc_compiler::reference_grad::backward(
                program,
                &s,
                &q.to_f32(),
                &k.to_f32(),
                &v.to_f32(),
                &dout.to_f32(),
                dlse_f.as_deref(),
                scale,
                &bindings,
            )
            .map_err(|e| crate::api::out_of_bounds(&variant, &e))?,
            crate::api::Backend::Cpu => {
                let cpu_err = |e: attnc_compiler::backend::cranelift::CpuError| Error::Backend {
                    backend: "cpu",
                    message: e.to_string(),
                };
                let state = self.extension::<BackwardState>();
                if state.cpu.is_none() {
                    let kern =
                        compile_backward(program, &CpuOptions::default()).map_err(cpu_err)?;
                    state.cpu = Some(Box::new(kern));
                }
                let (qb, kb) = match &state.cpu {
                    Some(k) => (k.q_block(), k.kv_block()),
                    None => unreachable!("compiled above"),
                };
                // a document mask whose ids form contiguous documents: the kernel of its
                // linear part on document tiles; else the binding's kernel on its maps
                let docs = self.cpu_doc_table(&bindings).map_err(cpu_err)?;
                let maps = match docs {
                    Some(_) => None,
                    None => Some(
                        crate::policy::launch_maps(self.plan(), &opts, qb, kb, &bindings).map_err(
                            |e| Error::Backend {
                                backend: "blocks",
                                message: e.to_string(),
                            },
                        )?,
                    ),
                };
                let state = self.extension::<BackwardState>();
                let kern = state.cpu.as_ref().expect("compiled above");
                let doc_kern = state.cpu_doc.as_ref().and_then(|k| k.as_deref());
                let workers = crate::exec::pool::pool(opts.threads);
                let (qf, kf, vf) = (f32s(q), f32s(k), f32s(v));
                let (of, lf, df) = (f32s(o), f32s(lse), f32s(dout));
                let inputs = [&qf[..], &kf[..], &vf[..], &of[..], &lf[..], &df[..]];
                // f32 outputs: zeroed tensors (fresh pages, first touched by the
                // kernel's threads) written in place; other dtypes converted below
                let zeros = |shape: Vec<usize>, n: usize| Tensor::from_f32_vec(shape, vec![0.0; n]);
                let mut outs = (dt == DType::F32).then(|| {
                    [
                        zeros(vec![s.b, s.hq, s.lq, s.d], s.q_len()),
                        zeros(vec![s.b, s.hkv, s.lkv, s.d], s.k_len()),
                        zeros(vec![s.b, s.hkv, s.lkv, s.dv], s.v_len()),
                    ]
                });
                let run = |out: [&mut [f32]; 3]| {
                    let (d, b) = (dlse_f.as_deref(), &bindings);
                    match (&docs, doc_kern, &maps) {
                        (Some((tiles, row_start, runs)), Some(dk), _) => {
                            let table = attnc_compiler::backend::cranelift::DocTable {
                                tiles,
                                row_start,
                                runs,
                            };
                            dk.run_docs_into(&s, inputs, d, scale, b, table, workers, out)
                        }
                        (_, _, Some(maps)) => {
                            kern.run_into(&s, inputs, d, scale, b, maps, workers, out)
                        }
                        _ => unreachable!("document tiles come with their kernel, else maps"),
                    }
                };
                let g = match outs
                    .as_mut()
                    .map(|[a, b, c]| [a.f32_slice_mut(), b.f32_slice_mut(), c.f32_slice_mut()])
                {
                    Some([Some(dq), Some(dk), Some(dv)]) => {
                        let c = run([dq, dk, dv]).map_err(cpu_err)?;
                        direct = outs;
                        attnc_compiler::backend::cranelift::backward::Gradients {
                            dq: Vec::new(),
                            dk: Vec::new(),
                            dv: Vec::new(),
                            tensors: c.tensors,
                            params: c.params,
                        }
                    }
                    _ => {
                        let mut g = [s.q_len(), s.k_len(), s.v_len()].map(|n| vec![0f32; n]);
                        let [dq, dk, dv] = &mut g;
                        let c = run([dq, dk, dv]).map_err(cpu_err)?;
                        let [dq, dk, dv] = g;
                        attnc_compiler::backend::cranelift::backward::Gradients {
                            dq,
                            dk,
                            dv,
                            tensors: c.tensors,
                            params: c.params,
                        }
                    }
                };
                if docs.is_some() {
                    self.extension::<BackwardState>().doc_calls += 1;
                }
                g
            }
            crate::api::Backend::Cuda => {
                let (kernels, docs) = self.cuda_kernels_for_call(&bindings, bwd.deterministic)?;
                let g = cuda_backward(
                    &variant,
                    self.options().device,
                    kernels,
                    self.plan(),
                    &s,
                    dt,
                    (q, k, v, o, dout),
                    &lse.to_f32(),
                    dlse_f.as_deref(),
                    scale,
                    &bindings,
                    docs.as_ref(),
                )?;
                if docs.is_some() {
                    self.extension::<BackwardState>().doc_calls += 1;
                }
                g
            }
        };
        self.keep_bindings(bindings);
        let mut tensors = BTreeMap::new();
        for (info, g) in program.tensors.iter().zip(grads.tensors) {
            if let Some(g) = g {
                let shape = captures.tensors[&info.name].shape().to_vec();
                let dtype = match info.elem {
                    ElemType::F16 => DType::F16,
                    ElemType::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                tensors.insert(info.name.clone(), Tensor::from_f32_vec_as(shape, g, dtype));
            }
        }
        let params = program
            .params
            .iter()
            .zip(grads.params)
            .filter_map(|(info, g)| g.map(|g| (info.name.clone(), g)))
            .collect();
        let [dq, dk, dv] = direct.unwrap_or_else(|| {
            [
                Tensor::from_f32_vec_as(vec![s.b, s.hq, s.lq, s.d], grads.dq, dt),
                Tensor::from_f32_vec_as(vec![s.b, s.hkv, s.lkv, s.d], grads.dk, dt),
                Tensor::from_f32_vec_as(vec![s.b, s.hkv, s.lkv, s.dv], grads.dv, dt),
            ]
        });
        Ok(Gradients {
            dq,
            dk,
            dv,
            tensors,
            params,
        })
    }
}

/// A tensor's values as f32: borrowed from an f32 tensor (no copy), else converted.
fn f32s(t: &Tensor) -> Cow<'_, [f32]> {
    t.f32_slice()
        .map_or_else(|| Cow::Owned(t.to_f32()), Cow::Borrowed)
}

/// The CUDA backward of one `Bound::backward` call (`cuda::backward`), on the binding's
/// device: the program's three backward kernels (generated and loaded once per process),
/// its launch blocks (with `docs`, kernels on document kv tiles, the call's list and
/// ranges), upload, launches, download. As on the CPU, every float tensor gets
/// a gradient (zeros where the score does not read it) and every f32 param one.
#[allow(clippy::too_many_arguments)]
fn cuda_backward(
    variant: &crate::api::Variant,
    ordinal: usize,
    kernels: Arc<crate::cuda::backward::CudaBackward>,
    plan: &attnc_compiler::plan::Plan,
    shape: &attnc_compiler::shape::Shape,
    dtype: DType,
    (q, k, v, o, dout): (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor),
    lse: &[f32],
    dlse: Option<&[f32]>,
    scale: f32,
    bind: &Bindings,
    docs: Option<&DocBackwardList>,
) -> Result<attnc_compiler::backend::cranelift::backward::Gradients> {
    let input = input_type(dtype)?;
    let p = variant.program();
    let err = |e| variant.render(crate::exec::ExecError::Cuda(e));
    let (device, problem) = cuda_backward_upload(
        variant,
        ordinal,
        &kernels,
        plan,
        shape,
        (q, k, v, o, dout),
        lse,
        dlse,
        scale,
        bind,
        docs,
    )?;
    kernels.launch(device, &problem).map_err(err)?;
    let grads = kernels.download(device, &problem).map_err(err)?;
    let f32s = |x: Vec<u16>| -> Vec<f32> {
        x.into_iter()
            .map(|b| match input {
                InputType::Bf16 => half::bf16::from_bits(b).to_f32(),
                InputType::F16 => half::f16::from_bits(b).to_f32(),
            })
            .collect()
    };
    let tensors = p
        .tensors
        .iter()
        .zip(grads.tensors)
        .zip(&bind.tensors)
        .map(|((info, g), t)| {
            (info.elem.read_type() == Type::F32)
                .then(|| g.unwrap_or_else(|| vec![0.0; t.dims.iter().product()]))
        })
        .collect();
    let params = p
        .params
        .iter()
        .enumerate()
        .map(|(i, info)| {
            (info.ty == Type::F32).then(|| {
                grads
                    .params
                    .as_ref()
                    .and_then(|x| x.get(i).copied())
                    .unwrap_or(0.0)
            })
        })
        .collect();
    Ok(attnc_compiler::backend::cranelift::backward::Gradients {
        dq: f32s(grads.dq),
        dk: f32s(grads.dk),
        dv: f32s(grads.dv),
        tensors,
        params,
    })
}

/// One CUDA backward's inputs on the binding's device (`CudaBackward::upload`): its launch
/// blocks made here (with `docs`, kernels on document kv tiles, the call's list and
/// ranges), the tensors' 16-bit words, LSE, dLSE.
#[allow(clippy::too_many_arguments)]
fn cuda_backward_upload(
    variant: &crate::api::Variant,
    ordinal: usize,
    kernels: &crate::cuda::backward::CudaBackward,
    plan: &attnc_compiler::plan::Plan,
    shape: &attnc_compiler::shape::Shape,
    (q, k, v, o, dout): (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor),
    lse: &[f32],
    dlse: Option<&[f32]>,
    scale: f32,
    bind: &Bindings,
    docs: Option<&DocBackwardList>,
) -> Result<(
    &'static crate::cuda::CudaDevice,
    crate::cuda::backward::BackwardProblem,
)> {
    use crate::cuda::backward::{BwdBlocks, LaunchBlocks};
    let err = |e| variant.render(crate::exec::ExecError::Cuda(e));
    let device = crate::exec::cuda::device_at(ordinal).map_err(|e| variant.render(e))?;
    let blocks = LaunchBlocks::new(kernels, plan, shape, bind).map_err(err)?;
    let bits = |t: &Tensor| t.to_u16_bits().unwrap_or_default();
    let problem = kernels
        .upload(
            device,
            shape,
            (&bits(q), &bits(k), &bits(v), &bits(o)),
            lse,
            &bits(dout),
            dlse,
            scale,
            bind,
            match (docs, &blocks) {
                (Some(d), LaunchBlocks::Maps(maps)) => BwdBlocks::Documents {
                    maps,
                    tiles: &d.tiles,
                    ranges: &d.ranges,
                },
                _ => blocks.as_blocks(),
            },
        )
        .map_err(err)?;
    Ok((device, problem))
}

/// The kernels' input type of a CUDA binding's dtype.
fn input_type(dtype: DType) -> Result<InputType> {
    match dtype {
        DType::BF16 => Ok(InputType::Bf16),
        DType::F16 => Ok(InputType::F16),
        other => Err(Error::InputDType {
            which:
                "q, k, v, o, do (the CUDA backend takes bf16 or f16; use the cpu backend for f32)"
                    .into(),
            expected: "bf16 or f16".into(),
            got: other,
        }),
    }
}

impl Bound {
    /// The CUDA binding's backward kernels for the caller-buffer entry points:
    /// `PtxOptions::backward`, as `Bound::backward` (on sm_90 at D64 and D128 dQ fused into the
    /// dK/dV kernel, its workspace allocated by the caller: `backward_cuda_workspace`),
    /// or `PtxOptions::backward_separate` (pre, dK/dV, dQ; no workspace) when the
    /// environment says `ATTNC_BWD_DQ=separate` at the first call; with `deterministic`
    /// false their non-deterministic variant ([`backward_kernel_options`]); from the
    /// process's JIT cache on the first call (one lookup per kind) and kept by the binding.
    pub(crate) fn cuda_backward_kernels(
        &mut self,
        deterministic: bool,
    ) -> Result<Arc<crate::cuda::backward::CudaBackward>> {
        self.cuda_kernels_with(false, deterministic)
    }

    /// The CUDA binding's backward kernels for `Bound::backward` (`PtxOptions::backward`:
    /// on sm_90 dQ fused into the dK/dV kernel; deterministic unless `deterministic` is
    /// false).
    pub(crate) fn cuda_host_backward_kernels(
        &mut self,
        deterministic: bool,
    ) -> Result<Arc<crate::cuda::backward::CudaBackward>> {
        self.cuda_kernels_with(true, deterministic)
    }

    /// The document kv tiles' variant of [`Self::cuda_backward_kernels`]
    /// ([`doc_backward_options`]), or `None` where its options do not allow it; from the
    /// process's JIT cache on the first call and kept by the binding.
    pub(crate) fn cuda_doc_backward_kernels(
        &mut self,
        deterministic: bool,
    ) -> Result<Option<Arc<crate::cuda::backward::CudaBackward>>> {
        let slot = usize::from(!deterministic);
        if let Some(k) = &self.extension::<BackwardState>().cuda_doc[slot] {
            return Ok(k.clone());
        }
        let base = self.cuda_backward_kernels(deterministic)?;
        let k = match doc_backward_options(base.options(), self.plan()) {
            Some(popts) => Some(self.load_backward_kernels(&popts)?),
            None => None,
        };
        self.extension::<BackwardState>().cuda_doc[slot] = Some(k.clone());
        Ok(k)
    }

    /// The backward's document kv tiles of calls with `bindings` (host data), where the
    /// binding runs them ([`doc_backward_applies`]), its backward kernels have a
    /// document variant and the ids form contiguous documents; the variant's kernels
    /// loaded here.
    pub(crate) fn doc_backward_list(
        &mut self,
        bindings: &Bindings,
    ) -> Result<Option<DocBackwardList>> {
        if !doc_backward_applies(self.options()) || self.plan().doc_split().is_none() {
            return Ok(None);
        }
        let Some(kernels) = self.cuda_doc_backward_kernels(true)? else {
            return Ok(None);
        };
        let ko = *kernels.options();
        let shape = self.options().shape;
        let plan = self.plan();
        let Some((dplan, id)) = plan.doc_split() else {
            return Ok(None);
        };
        let render = |e: attnc_compiler::interp::EvalError| Error::Backend {
            backend: "documents",
            message: format!("{e}"),
        };
        let Some(docs) = attnc_compiler::analysis::documents::document_runs(
            id,
            dplan.program(),
            bindings,
            shape.b,
            shape.lq,
        )
        .map_err(render)?
        else {
            return Ok(None);
        };
        let kvb = dplan.kv_bounds(false);
        let attnc_compiler::plan::KvBounds::ClosedForm(cf) = &kvb else {
            return Ok(None);
        };
        let bounds = dplan
            .closed_form_bounds(cf, &shape, bindings)
            .map_err(|e| Error::Usage(format!("{e}")))?;
        let (tiles, ranges) = attnc_compiler::backend::llvm::bounds::doc_kv_ranges(
            &docs,
            &kvb.coefficients(),
            bounds.as_deref(),
            dplan.program().mask.is_some(),
            shape.lq,
            ko.q_block as usize,
            ko.kv_block as usize,
        );
        Ok(Some(DocBackwardList {
            tiles_shape: (ko.q_block, ko.kv_block),
            tiles,
            ranges,
        }))
    }

    /// `Bound::backward` calls (and `backward_device_time_ms` timings) that ran on
    /// document tiles: on CUDA the kernels on document kv tiles
    /// (`PtxOptions::bwd_doc_tiles`), on the CPU the kernel of the mask's linear part on
    /// each document's tiles (`CpuBackward::run_docs_into`); where a document mask's ids
    /// form contiguous documents, in fast mode, `Lq == Lkv`, `BindOptions::doc_tiles`. The
    /// others ran the binding's own kernels.
    pub fn doc_tile_backward_calls(&mut self) -> u64 {
        self.extension::<BackwardState>().doc_calls
    }

    /// The document tile table of a CPU backward call with `bindings` (host data): `(tiles,
    /// row starts, runs)` for the tiles of the document kernel (`Plan::doc_split`'s linear
    /// part, compiled here on the first call that needs it), where the binding runs
    /// document tiles ([`doc_backward_applies`]), the linear part has a closed form and the
    /// ids form contiguous documents; `None` otherwise.
    #[allow(clippy::type_complexity)]
    fn cpu_doc_table(
        &mut self,
        bindings: &Bindings,
    ) -> std::result::Result<
        Option<(
            Vec<i32>,
            Vec<u32>,
            Vec<attnc_compiler::analysis::blockmap::Run>,
        )>,
        attnc_compiler::backend::cranelift::CpuError,
    > {
        use attnc_compiler::analysis::documents::call_tiles;
        use attnc_compiler::backend::llvm::bounds::doc_tile_runs;
        use attnc_compiler::plan::KvBounds;
        if !doc_backward_applies(self.options()) {
            return Ok(None);
        }
        let shape = self.options().shape;
        if self.extension::<BackwardState>().cpu_doc.is_none() {
            let k = match self.plan().doc_split() {
                Some((dplan, _)) if matches!(dplan.kv_bounds(false), KvBounds::ClosedForm(_)) => {
                    Some(Box::new(compile_backward(
                        dplan.program(),
                        &CpuOptions::default(),
                    )?))
                }
                _ => None,
            };
            self.extension::<BackwardState>().cpu_doc = Some(k);
        }
        let Some(Some(k)) = &self.extension::<BackwardState>().cpu_doc else {
            return Ok(None);
        };
        let (qb, kb) = (k.q_block(), k.kv_block());
        let Some((dplan, id)) = self.plan().doc_split() else {
            return Ok(None);
        };
        let kvb = dplan.kv_bounds(false);
        let KvBounds::ClosedForm(cf) = &kvb else {
            return Ok(None);
        };
        let grows = kvb.work_grows_with_q();
        let Some(tiles) = call_tiles(id, dplan.program(), bindings, shape.b, shape.lq, qb, grows)
        else {
            return Ok(None);
        };
        let Ok(bounds) = dplan.closed_form_bounds(cf, &shape, bindings) else {
            return Ok(None);
        };
        let has_mask = dplan.program().mask.is_some();
        let (row_start, runs) = doc_tile_runs(
            &tiles,
            &kvb.coefficients(),
            bounds.as_deref(),
            has_mask,
            qb,
            kb,
        );
        Ok(Some((tiles, row_start, runs)))
    }

    /// The kernels on document kv tiles and this call's list (`bindings`: host data) for
    /// `Bound::backward` on the CUDA backend, where the binding runs them
    /// ([`doc_backward_applies`], [`doc_backward_options`]) and the ids form contiguous
    /// documents; `None` otherwise.
    fn doc_backward_host(
        &mut self,
        bindings: &Bindings,
        deterministic: bool,
    ) -> Result<Option<(Arc<crate::cuda::backward::CudaBackward>, DocBackwardList)>> {
        let Some(list) = self.doc_backward_list(bindings)? else {
            return Ok(None);
        };
        let Some(k) = self.cuda_doc_backward_kernels(deterministic)? else {
            return Ok(None);
        };
        // (the list is made for the deterministic kernels' tiles, which the other ones keep
        // on block tables: `nondeterministic`)
        let ko = k.options();
        Ok(((ko.q_block, ko.kv_block) == list.tiles_shape).then_some((k, list)))
    }

    /// The backward kernels of `popts` for this binding's plan, from its device's JIT cache.
    fn load_backward_kernels(
        &self,
        popts: &PtxOptions,
    ) -> Result<Arc<crate::cuda::backward::CudaBackward>> {
        let ordinal = self.options().device;
        let device = crate::exec::cuda::cuda_device_at(ordinal)?;
        let jit = crate::exec::cuda::cuda_jit_at(ordinal)?;
        crate::cuda::backward::CudaBackward::from_jit(jit, device, self.plan(), popts)
            .map(Arc::new)
            .map_err(|e| self.variant().render(crate::exec::ExecError::Cuda(e)))
    }

    fn cuda_kernels_with(
        &mut self,
        host: bool,
        deterministic: bool,
    ) -> Result<Arc<crate::cuda::backward::CudaBackward>> {
        let slot = usize::from(!deterministic);
        let state = self.extension::<BackwardState>();
        if let Some(k) = &(if host { &state.cuda_host } else { &state.cuda })[slot] {
            return Ok(k.clone());
        }
        let opts = self.options().clone();
        let input = input_type(opts.dtype)?;
        let device = crate::exec::cuda::cuda_device_at(opts.device)?;
        let separate = !host && std::env::var("ATTNC_BWD_DQ").is_ok_and(|v| v == "separate");
        let mut popts = backward_kernel_options(
            self.plan(),
            &opts.shape,
            device.arch(),
            input,
            separate,
            deterministic,
        );
        popts.checked = opts.checked;
        let k = self.load_backward_kernels(&popts)?;
        let state = self.extension::<BackwardState>();
        (if host {
            &mut state.cuda_host
        } else {
            &mut state.cuda
        })[slot] = Some(k.clone());
        Ok(k)
    }
}

/// The backward kernels' options the runtime picks for a CUDA binding of `plan` at
/// `shape` on `arch` (the one place: `Bound::backward` and the caller-buffer entries):
/// `PtxOptions::backward` (or `backward_separate` with `separate`, the caller path under
/// `ATTNC_BWD_DQ=separate`) refined by `backward_for_binding` (float positions, the fused
/// kernel's CTA order and the per-binding defaults), then the environment's overrides
/// (`bwd_dq_override`), then, without `deterministic`, the fastest non-deterministic
/// variant ([`nondeterministic`]). `PtxOptions::key` tells them apart, so the JIT cache
/// keeps each variant's kernels under its own key.
pub fn backward_kernel_options(
    plan: &attnc_compiler::plan::Plan,
    shape: &attnc_compiler::shape::Shape,
    arch: attnc_compiler::backend::llvm::Arch,
    input: InputType,
    separate: bool,
    deterministic: bool,
) -> PtxOptions {
    let (d, dv) = (shape.d as u32, shape.dv as u32);
    // float positions and the fused kernel's CTA order for this binding's plan and
    // shape (`PtxOptions::backward_for_binding`), then the environment's overrides
    let base = if separate {
        PtxOptions::backward_separate(arch, d, dv, input)
    } else {
        PtxOptions::backward(arch, d, dv, input)
    };
    let base = base.backward_for_binding(plan, shape.lq.max(shape.lkv));
    let o = if separate {
        base
    } else {
        bwd_dq_override(base)
    };
    if deterministic {
        o
    } else {
        nondeterministic(o, plan)
    }
}

/// The document kv tiles' variant (`PtxOptions::bwd_doc_tiles`) of a binding's backward
/// options `o` (as [`backward_kernel_options`] makes them) for `plan`: where the plan is a
/// document mask over packed sequences (`Plan::doc_split`) read through block tables and
/// `o` is the fused kernel with the tile counter's persistent CTAs, not the longest-first
/// order (the binding's defaults on document masks at D64 and D128 on sm_90), unless
/// `ATTNC_BWD_DOC_TILES=0`. The runtime runs it where a block mask carries the tiles
/// (`Bound::block_mask_tables`: ids of contiguous documents).
pub fn doc_backward_options(
    o: &PtxOptions,
    plan: &attnc_compiler::plan::Plan,
) -> Option<PtxOptions> {
    use attnc_compiler::backend::llvm::BwdDq;
    use attnc_compiler::backend::llvm::backward::{backward_bounds, persist_dyn};
    let on = std::env::var("ATTNC_BWD_DOC_TILES").map_or(true, |v| v != "0");
    let o = PtxOptions {
        bwd_doc_tiles: true,
        ..*o
    };
    let fits = on
        && plan.doc_split().is_some()
        && !plan.mask().uses_h
        && matches!(
            backward_bounds(plan, &o),
            attnc_compiler::plan::KvBounds::Table
        )
        && o.bwd_dq == BwdDq::OrderedBulk
        && persist_dyn(&o)
        && !o.bwd_lpt
        && o.q_block != 80;
    fits.then_some(o)
}

/// The fastest non-deterministic variant of the backward options `o` (a binding's, as
/// [`backward_kernel_options`] makes them) that exists for `plan`: where dQ is fused with
/// ordered bulk additions (`BwdDq::OrderedBulk`: sm_90 at D64 and D128) the writer adds
/// each dQ part as soon as it is in its slot (`PtxOptions::bwd_dq_free`: no per-tile turn,
/// the accumulator zeroed per call), and at dense D128 (no mask, the identity score, no
/// capture gradients) q tiles of 80 (`PtxOptions::backward_q80`, which pays only without
/// the ordered chain). One H200 (session 16, B2 H16 L8192 D128 dense, whole backward
/// TFLOP/s, one process): default 557.0 / 545.0, unordered alone 573.4, q tiles of 80
/// alone 558.4, both 615.1. Not where the deterministic kernels convert each dQ tile
/// under the fused kernel's tail (`bwd_convert_early`: bands and block tables), which
/// needs the ordered chain's last-turn flag: without it the unordered kernels are slower
/// (one H200, session 17, document + causal B2 H16 L4096 D128, whole backward 0.291 ms
/// unordered against 0.254 deterministic), so those bindings keep their deterministic
/// kernels, and likewise D128's causal-type bindings since session 34 (their
/// deterministic kernels with two dQ writers are faster than the unordered ones). Other
/// options (the two-kernel backward, the fused `Ordered` / `Atomic`
/// schemes an `ATTNC_BWD_DQ` override picks) are returned as they are. The unordered
/// kernels run on the grid's tile order ([`PtxOptions::static_tiles`]).
pub fn nondeterministic(o: PtxOptions, plan: &attnc_compiler::plan::Plan) -> PtxOptions {
    use attnc_compiler::backend::llvm::BwdDq;
    use attnc_compiler::backend::llvm::backward::convert_early;
    if o.bwd_dq != BwdDq::OrderedBulk || convert_early(&o) {
        return o;
    }
    // D128's causal-type bindings (the longest-first order: causal, ALiBi, soft-cap):
    // session 34's deterministic kernels (two dQ writers, bulk statistics) are the faster
    // ones. One H200, whole backward TFLOP/s: causal 547.6, 545.4 deterministic against
    // 538.6, 541.3 with the same options unordered (one call), and session 20's unordered
    // kernels at ~534 (causal) / ~541 (ALiBi + causal) against 547-552 / 564-572 now
    if o.d == 128 && o.q_block == 64 && o.bwd_lpt && !o.bwd_wscan {
        return o;
    }
    // (the unordered D128 kernels run one dQ writer, as they were measured: dense's q
    // tiles of 80 take one; 604.8, 601.7 against the deterministic 563.3, 564.0 in one
    // session-34 call)
    let o = PtxOptions {
        bwd_two_writers: o.bwd_two_writers && o.d != 128,
        ..o
    };
    // (on the grid's tile order: the tile counter's persistent CTAs, session 23's default
    // on some deterministic bindings, were measured with the ordered chain only)
    PtxOptions {
        bwd_dq_free: true,
        ..o.static_tiles()
    }
    .backward_q80(plan)
}

/// `ATTNC_BWD_DQ=ordered` runs the fused backward with the math warps adding their dQ
/// parts themselves (`BwdDq::Ordered`, the default before `OrderedBulk`; both
/// deterministic, the same order) where the defaults fuse dQ (sm_90, D128); `tma` /
/// `bulk` run `OrderedBulk` with / without Q and dO loaded by the TMA producer warp
/// (`PtxOptions::bwd_tma`); `separate` is read above (caller buffers: the two-kernel
/// path); any other value, or none, keeps the defaults. `ATTNC_BWD_LPT=1` / `0` turns the
/// fused kernel's longest-first CTA order (`PtxOptions::bwd_lpt`; on by default for
/// causal-type masks) on / off, `ATTNC_BWD_WSCAN=1` / `0` the warp-wide visit search
/// (`PtxOptions::bwd_wscan`; on by default for bands and block tables; not with the
/// longest-first order); `ATTNC_BWD_FPOS=0` turns float positions
/// (`PtxOptions::float_positions`) off (for comparing; on where the lengths allow);
/// `ATTNC_BWD_WGDQ=1` / `0` turns each math warpgroup's own dQ part
/// (`PtxOptions::bwd_wg_dq`, with the TMA producer only) on / off; `ATTNC_BWD_PERSIST=1`
/// / `0` the fused kernel's persistent CTAs (`PtxOptions::bwd_persist`, with the TMA
/// producer only; no capture gradients; `1` walks the tiles in the static order, `0` also
/// turns off the counter's order, `bwd_persist_dyn`, the default on every band and block
/// table and on D64's causal-type bindings since session 24); `ATTNC_BWD_STATS_BULK=1` /
/// `0` the producer's L2 / Delta rows by bulk copies (`PtxOptions::bwd_stats_bulk`, the
/// default at D64 and on D128 dense since session 24); `ATTNC_BWD_WRITER_REGS=n` the fused
/// kernel's writer warpgroup's registers (`PtxOptions::bwd_writer_regs`: 0 = 24, or 32 .. 56
/// in steps of 8; 40 on D128 causal / ALiBi + causal and D64 bands / tables since session
/// 24); `ATTNC_BWD_TWO_WRITERS=1` / `0` its two dQ writer
/// threads (`PtxOptions::bwd_two_writers`, bulk additions only) and
/// `ATTNC_BWD_STORE_PAIRS=1` / `0` its dK/dV stores in pairs (`PtxOptions::bwd_store_pairs`;
/// both on by default with the warp-wide search). For A/B runs of the later per-binding
/// defaults (session 17: the Python document step): `ATTNC_BWD_PDL=0` / `1` turns the
/// kernels' chaining by programmatic dependent launch and the early dQ conversion
/// (`PtxOptions::bwd_pdl`, `bwd_convert_early`; session 15, bands and block tables) off /
/// on (fused schemes), `ATTNC_BWD_EARLY=0` the early conversion alone off,
/// `ATTNC_BWD_WIDE=0` the wide dQ conversion (`bwd_convert_wide`, session 14) off,
/// `ATTNC_BWD_REC=0` the visits from the producer's records (`bwd_visit_rec`, sessions 13
/// and 16) off and `ATTNC_BWD_CUTS=0` / `1` the math warps' instruction cuts (`bwd_stmatrix`,
/// `bwd_desc`, `bwd_ds_unguarded`, session 12/13) off / on (on: with the TMA producer
/// outside the warp-wide search). `ATTNC_BWD_UNIFORM=1` / `0` turns
/// the uniform-read path of capture gradients (`PtxOptions::bwd_uniform_reads`, sessions
/// 37 and 39, on by default) on / off in the fused kernels.
fn bwd_dq_override(o: PtxOptions) -> PtxOptions {
    bwd_overrides(o, |name| std::env::var(name).ok())
}

/// [`bwd_dq_override`] with the variables' values from `get` (tests).
fn bwd_overrides(mut o: PtxOptions, get: impl Fn(&str) -> Option<String>) -> PtxOptions {
    use attnc_compiler::backend::llvm::BwdDq;
    let bulk = o.bwd_dq == BwdDq::OrderedBulk;
    let fused = o.bwd_dq != BwdDq::Separate;
    let env_switch = |name: &str| match get(name).as_deref() {
        Some("1") => Some(true),
        Some("0") => Some(false),
        _ => None,
    };
    // `name=1` turns `switch` on where `allow` holds, `name=0` off; else it stays
    let set = |switch: &mut bool, name: &str, allow: bool| match env_switch(name) {
        Some(true) if allow => *switch = true,
        Some(false) => *switch = false,
        _ => {}
    };
    let off = |name: &str| env_switch(name) == Some(false);
    o.float_positions &= !off("ATTNC_BWD_FPOS");
    set(&mut o.diag_cse, "ATTNC_BWD_DIAG", true);
    set(&mut o.bwd_lpt, "ATTNC_BWD_LPT", fused);
    set(&mut o.bwd_uniform_reads, "ATTNC_BWD_UNIFORM", fused);
    set(&mut o.bwd_wscan, "ATTNC_BWD_WSCAN", fused && !o.bwd_lpt);
    match env_switch("ATTNC_BWD_PERSIST") {
        // (bands and tables: session 12's options, as gpu_backward_persist tests them;
        // visit records need the non-persistent kernel)
        Some(true) if bulk && o.bwd_tma => {
            o = PtxOptions {
                bwd_persist: true,
                bwd_persist_dyn: false,
                bwd_visit_rec: false,
                bwd_band_keep: false,
                bwd_stmatrix: o.bwd_stmatrix && !o.bwd_wscan,
                bwd_desc: o.bwd_desc && !o.bwd_wscan,
                bwd_ds_unguarded: o.bwd_ds_unguarded && !o.bwd_wscan,
                ..o
            }
        }
        Some(false) => {
            o.bwd_persist = false;
            o.bwd_persist_dyn = false;
        }
        _ => {}
    }
    set(
        &mut o.bwd_stats_bulk,
        "ATTNC_BWD_STATS_BULK",
        fused && o.bwd_tma,
    );
    // `ATTNC_BWD_WRITER_REGS=n`: the writer warpgroup's registers (0: the kernel's 24)
    if let Some(n) = get("ATTNC_BWD_WRITER_REGS").and_then(|v| v.parse::<u32>().ok())
        && bulk
        && attnc_compiler::backend::llvm::backward::writer_regs_allowed(n)
    {
        o.bwd_writer_regs = n;
    }
    set(&mut o.bwd_two_writers, "ATTNC_BWD_TWO_WRITERS", bulk);
    set(&mut o.bwd_store_pairs, "ATTNC_BWD_STORE_PAIRS", fused);
    set(&mut o.bwd_wg_dq, "ATTNC_BWD_WGDQ", bulk && o.bwd_tma);
    match env_switch("ATTNC_BWD_PDL") {
        Some(true) if fused => (o.bwd_pdl, o.bwd_convert_early) = (true, true),
        Some(false) => (o.bwd_pdl, o.bwd_convert_early) = (false, false),
        _ => {}
    }
    o.bwd_convert_early &= !off("ATTNC_BWD_EARLY");
    o.bwd_convert_wide &= !off("ATTNC_BWD_WIDE");
    o.bwd_visit_rec &= !off("ATTNC_BWD_REC");
    match env_switch("ATTNC_BWD_CUTS") {
        Some(false) => (o.bwd_stmatrix, o.bwd_desc, o.bwd_ds_unguarded) = (false, false, false),
        // (where `backward_for_binding` leaves them off: capture gradients, q tiles of 128
        // with a score function; the warp-wide search keeps its own)
        Some(true) if bulk && o.bwd_tma && !o.bwd_wscan => {
            (o.bwd_stmatrix, o.bwd_desc, o.bwd_ds_unguarded) = (true, true, true)
        }
        _ => {}
    }
    match get("ATTNC_BWD_DQ").as_deref() {
        // (without the TMA producer: no visit records, which its warp stores)
        Some("ordered") if bulk => PtxOptions {
            bwd_tma: false,
            bwd_wg_dq: false,
            bwd_visit_rec: false,
            ..o.backward_fused(BwdDq::Ordered)
        },
        Some("tma") if bulk => PtxOptions { bwd_tma: true, ..o },
        Some("bulk") if bulk => PtxOptions {
            bwd_tma: false,
            bwd_wg_dq: false,
            bwd_visit_rec: false,
            ..o
        },
        _ => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::backward::convert_early;
    use attnc_compiler::backend::llvm::{Arch, BwdDq, samples, spec};
    use attnc_compiler::plan::Plan;
    use attnc_compiler::shape::Shape;

    fn shape(l: usize, d: usize) -> Shape {
        Shape {
            b: 2,
            hq: 8,
            hkv: 2,
            lq: l,
            lkv: l,
            d,
            dv: d,
        }
    }

    /// What `BackwardOptions { deterministic: false }` selects per binding (no GPU needed):
    /// on sm_90 every fused (OrderedBulk) binding adds its dQ parts unordered, the early
    /// conversion off; dense D128 alone also on q tiles of 80; every other option as the
    /// deterministic binding's on the grid's tile order; the kernels exist (their specs), their JIT cache keys and
    /// workspaces differ from the deterministic ones'. The two-kernel backward (sm_80, D32,
    /// `ATTNC_BWD_DQ=separate`'s caller path) has no non-deterministic variant.
    #[test]
    fn nondeterministic_options_per_binding() {
        let cases = [
            ("dense", samples::dense(), 128, true),
            ("bias_table", samples::bias_table(), 128, false),
            ("dense", samples::dense(), 64, false),
            ("causal", samples::causal(), 64, false),
        ];
        // bands and block tables convert dQ early (the ordered chain's flags): their
        // deterministic kernels are the faster ones, kept; and (session 34) D128's
        // causal-type bindings, with two dQ writers
        for p in [
            samples::sliding(),
            samples::document_causal(),
            samples::causal(),
            samples::softcap_causal(),
            samples::alibi_causal(4),
        ] {
            let plan = Plan::new(&p);
            let sh = shape(1000, 128);
            let opts =
                |det| backward_kernel_options(&plan, &sh, Arch::Sm90, InputType::Bf16, false, det);
            let det = opts(true);
            assert!(
                convert_early(&det) || (det.bwd_lpt && det.bwd_two_writers),
                "{}",
                p.name
            );
            assert_eq!(opts(false), det, "{}", p.name);
        }
        for (name, p, d, q80) in cases {
            let plan = Plan::new(&p);
            let sh = shape(1000, d);
            let opts =
                |det| backward_kernel_options(&plan, &sh, Arch::Sm90, InputType::Bf16, false, det);
            let (det, nd) = (opts(true), opts(false));
            assert_eq!(det.bwd_dq, BwdDq::OrderedBulk, "{name} D{d}");
            assert!(!det.bwd_dq_free, "{name} D{d}: deterministic by default");
            assert!(!convert_early(&det), "{name} D{d}");
            assert!(nd.bwd_dq_free, "{name} D{d}: unordered dQ");
            assert!(!convert_early(&nd), "{name} D{d}");
            assert_eq!(nd.q_block == 80, q80, "{name} D{d}: q tiles of 80");
            let same = PtxOptions {
                bwd_dq_free: false,
                q_block: det.q_block,
                ..nd
            };
            // session 34's D128 defaults (two writers, bulk statistics; not with capture
            // gradients): dense's q tiles of 80 take one writer
            let s34 = d == 128 && name != "bias_table";
            assert_eq!(
                det.bwd_two_writers && det.bwd_stats_bulk,
                s34,
                "{name} D{d}"
            );
            let before = PtxOptions {
                bwd_two_writers: det.bwd_two_writers && !s34,
                ..det
            };
            assert_eq!(
                same,
                before.static_tiles(),
                "{name} D{d}: nothing else changes (the grid's tile order)"
            );
            for kind in [
                KernelKind::BackwardPre,
                KernelKind::BackwardDkDv,
                KernelKind::BackwardDq,
            ] {
                spec(&plan, kind, &nd).unwrap_or_else(|e| panic!("{name} D{d} {kind:?}: {e}"));
                assert_ne!(
                    crate::cuda::jit_cache::JitCache::key(&plan, kind, &det),
                    crate::cuda::jit_cache::JitCache::key(&plan, kind, &nd),
                    "{name} D{d}: one cache key per variant"
                );
            }
            let ws = |o| crate::cuda::backward::dq_workspace(o, &sh).expect("fused");
            let (wd, wn) = (ws(&det.static_tiles()), ws(&nd));
            let tiles = |qb: usize| 2 * 8 * 1000usize.div_ceil(qb);
            assert_eq!(
                wn,
                (
                    tiles(nd.q_block as usize) * nd.q_block as usize * d,
                    tiles(nd.q_block as usize)
                )
            );
            if !q80 {
                assert_eq!(wd, wn, "{name} D{d}");
            }
            assert!(crate::cuda::backward::dq_accum_zeroed(&nd));
            assert!(!crate::cuda::backward::dq_accum_zeroed(&det));
        }
        // the two-kernel backward: deterministic kernels either way
        let plan = Plan::new(&samples::causal());
        for (arch, d, separate) in [
            (Arch::Sm80, 128, false),
            (Arch::Sm90, 32, false),
            (Arch::Sm90, 128, true),
        ] {
            let sh = shape(333, d);
            let o = |det| backward_kernel_options(&plan, &sh, arch, InputType::F16, separate, det);
            assert_eq!(o(false), o(true), "{arch:?} D{d}");
            assert_eq!(o(true).bwd_dq, BwdDq::Separate);
        }
        assert!(BackwardOptions::default().deterministic);
        assert!(!BackwardOptions::nondeterministic().deterministic);
    }

    /// The environment's A/B switches (`bwd_dq_override`, read through `bwd_overrides`
    /// from a table instead of the process's environment): unset names and values other
    /// than `0` / `1` change nothing; `0` turns a switch off; `1` turns it on only where
    /// its scheme allows it (the warp-wide search not with the longest-first order, none
    /// of the fused kernel's switches on the two-kernel backward); the persistent kernel
    /// drops the visit records and band keeps; `ATTNC_BWD_PDL` moves the early conversion
    /// with the chaining, `ATTNC_BWD_EARLY=0` the conversion alone; `ATTNC_BWD_DQ` picks
    /// the fused scheme.
    #[test]
    fn backward_env_switches() {
        let with = |vars: &[(&str, &str)], o: PtxOptions| {
            bwd_overrides(o, |k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let plan = Plan::new(&samples::causal());
        let base = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&plan, 4096);
        assert_eq!(base.bwd_dq, BwdDq::OrderedBulk);
        assert!(base.bwd_lpt && base.bwd_tma && base.bwd_visit_rec && !base.bwd_wscan);
        assert_eq!(with(&[], base), base);
        assert_eq!(
            with(&[("ATTNC_BWD_LPT", "no"), ("ATTNC_BWD_CUTS", "")], base),
            base
        );
        let fpos = PtxOptions {
            float_positions: true,
            ..base
        };
        assert!(!with(&[("ATTNC_BWD_FPOS", "0")], fpos).float_positions);
        assert!(with(&[("ATTNC_BWD_FPOS", "1")], fpos).float_positions);
        assert!(!with(&[("ATTNC_BWD_LPT", "0")], base).bwd_lpt);
        // the warp-wide search: not with the longest-first order
        assert!(!with(&[("ATTNC_BWD_WSCAN", "1")], base).bwd_wscan);
        let o = with(&[("ATTNC_BWD_LPT", "0"), ("ATTNC_BWD_WSCAN", "1")], base);
        assert!(o.bwd_wscan && !o.bwd_lpt);
        let o = with(&[("ATTNC_BWD_PERSIST", "1")], base);
        assert!(o.bwd_persist && !o.bwd_visit_rec && !o.bwd_band_keep);
        assert_eq!(o.bwd_stmatrix, base.bwd_stmatrix);
        assert!(!with(&[("ATTNC_BWD_PERSIST", "0")], o).bwd_persist);
        let dyn_ = PtxOptions {
            bwd_persist: true,
            bwd_persist_dyn: true,
            ..base
        };
        let o = with(&[("ATTNC_BWD_PERSIST", "0")], dyn_);
        assert!(!o.bwd_persist && !o.bwd_persist_dyn);
        assert!(!with(&[("ATTNC_BWD_PERSIST", "1")], dyn_).bwd_persist_dyn);
        let bulk = PtxOptions {
            bwd_stats_bulk: true,
            ..base
        };
        assert!(!with(&[("ATTNC_BWD_STATS_BULK", "0")], bulk).bwd_stats_bulk);
        assert_eq!(
            with(&[("ATTNC_BWD_WRITER_REGS", "40")], base).bwd_writer_regs,
            40
        );
        let regs = PtxOptions {
            bwd_writer_regs: 40,
            ..base
        };
        assert_eq!(
            with(&[("ATTNC_BWD_WRITER_REGS", "0")], regs).bwd_writer_regs,
            0
        );
        // (not a count the kernel takes: unchanged)
        assert_eq!(
            with(&[("ATTNC_BWD_WRITER_REGS", "36")], regs).bwd_writer_regs,
            40
        );
        let o = with(&[("ATTNC_BWD_PDL", "1")], base);
        assert!(o.bwd_pdl && o.bwd_convert_early);
        let o = with(&[("ATTNC_BWD_PDL", "1"), ("ATTNC_BWD_EARLY", "0")], base);
        assert!(o.bwd_pdl && !o.bwd_convert_early);
        let o = with(&[("ATTNC_BWD_PDL", "0")], o);
        assert!(!o.bwd_pdl && !o.bwd_convert_early);
        let o = with(&[("ATTNC_BWD_CUTS", "0"), ("ATTNC_BWD_REC", "0")], base);
        assert!(!o.bwd_stmatrix && !o.bwd_desc && !o.bwd_ds_unguarded && !o.bwd_visit_rec);
        assert!(!with(&[("ATTNC_BWD_WIDE", "0")], base).bwd_convert_wide);
        let off = PtxOptions {
            bwd_two_writers: false,
            bwd_store_pairs: false,
            ..base
        };
        let o = with(&[("ATTNC_BWD_TWO_WRITERS", "1")], off);
        assert!(o.bwd_two_writers && !o.bwd_store_pairs);
        let o = with(&[("ATTNC_BWD_STORE_PAIRS", "1")], off);
        assert!(o.bwd_store_pairs && !o.bwd_two_writers);
        let both = [
            ("ATTNC_BWD_TWO_WRITERS", "0"),
            ("ATTNC_BWD_STORE_PAIRS", "0"),
        ];
        let o = with(
            &both,
            PtxOptions {
                bwd_two_writers: true,
                bwd_store_pairs: true,
                ..base
            },
        );
        assert!(!o.bwd_two_writers && !o.bwd_store_pairs);
        let o = with(&[("ATTNC_BWD_WGDQ", "1")], base);
        assert!(o.bwd_wg_dq);
        assert!(
            !with(
                &[("ATTNC_BWD_WGDQ", "1")],
                PtxOptions {
                    bwd_tma: false,
                    ..base
                }
            )
            .bwd_wg_dq
        );
        let o = with(&[("ATTNC_BWD_DQ", "ordered")], base);
        assert_eq!(o.bwd_dq, BwdDq::Ordered);
        assert!(!o.bwd_tma && !o.bwd_visit_rec && !o.bwd_wg_dq);
        let o = with(&[("ATTNC_BWD_DQ", "bulk")], base);
        assert!(o.bwd_dq == BwdDq::OrderedBulk && !o.bwd_tma && !o.bwd_visit_rec);
        assert!(with(&[("ATTNC_BWD_DQ", "tma")], o).bwd_tma);
        // the two-kernel backward: the fused kernel's switches do not apply
        let sep = PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16);
        let all_on = [
            "ATTNC_BWD_LPT",
            "ATTNC_BWD_WSCAN",
            "ATTNC_BWD_PERSIST",
            "ATTNC_BWD_TWO_WRITERS",
            "ATTNC_BWD_STORE_PAIRS",
            "ATTNC_BWD_WGDQ",
            "ATTNC_BWD_PDL",
        ]
        .map(|k| (k, "1"));
        assert_eq!(with(&all_on, sep), sep);
        assert_eq!(with(&[("ATTNC_BWD_DQ", "ordered")], sep), sep);
        assert_eq!(with(&[("ATTNC_BWD_WRITER_REGS", "40")], sep), sep);
    }

    /// The backward's document kv tiles ([`doc_backward_options`]) of every example whose
    /// mask is a document mask, at D64 and D128 on sm_90, bf16 and f16: the binding's
    /// options with `bwd_doc_tiles`, its three kernels generate deterministically, the
    /// fused kernel reads the list and its length, the conversion the length (its count of
    /// the fused grid's writers); the options differ from the binding's only there (the
    /// same dQ workspace); no variant for a program without a document mask, or the
    /// two-kernel backward. (For ptxas: `ATTNC_DOC_PTX_DIR=dir`.)
    #[test]
    fn doc_backward_kernels_generate_for_document_masks() {
        use attnc_compiler::backend::llvm::KernelParam;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut programs = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "attn") {
                let src = std::fs::read_to_string(&path).unwrap();
                programs.extend(attnc_compiler::compile_source(&src).unwrap().programs);
            }
        }
        let (mut made, mut none) = (0, 0);
        for p in &programs {
            let plan = Plan::new(p);
            for (d, input) in [(128, InputType::Bf16), (64, InputType::F16)] {
                let sh = shape(4096, d);
                let base = backward_kernel_options(&plan, &sh, Arch::Sm90, input, false, true);
                let what = format!("{} d{d}", p.name);
                let Some(o) = doc_backward_options(&base, &plan) else {
                    assert!(
                        plan.doc_split().is_none() || plan.mask().uses_h,
                        "{what}: a document mask without the variant ({})",
                        base.key()
                    );
                    none += 1;
                    continue;
                };
                assert!(o.bwd_doc_tiles && !base.bwd_doc_tiles, "{what}");
                assert_eq!(
                    PtxOptions {
                        bwd_doc_tiles: false,
                        ..o
                    },
                    base,
                    "{what}"
                );
                assert_eq!(
                    crate::cuda::backward::dq_workspace(&o, &sh),
                    crate::cuda::backward::dq_workspace(&base, &sh),
                    "{what}"
                );
                let emit = |kind| {
                    spec::generate(
                        &plan,
                        kind,
                        &o,
                        attnc_compiler::backend::llvm::EmitText::PtxOnly,
                    )
                    .unwrap_or_else(|e| panic!("{what} {kind:?}: {e}"))
                    .0
                };
                let dkdv = emit(KernelKind::BackwardDkDv);
                assert_eq!(dkdv.ptx, emit(KernelKind::BackwardDkDv).ptx, "{what}");
                for kp in [KernelParam::DocTiles, KernelParam::NumDocTiles] {
                    assert!(dkdv.spec.params.contains(&kp), "{what}: {kp:?}");
                }
                let dq = emit(KernelKind::BackwardDq);
                assert_eq!(
                    dq.spec.params.contains(&KernelParam::NumDocTiles),
                    convert_early(&o),
                    "{what}"
                );
                let pre = emit(KernelKind::BackwardPre);
                if let Ok(dir) = std::env::var("ATTNC_DOC_PTX_DIR") {
                    let base_dkdv = spec::generate(
                        &plan,
                        KernelKind::BackwardDkDv,
                        &base,
                        attnc_compiler::backend::llvm::EmitText::PtxOnly,
                    )
                    .unwrap()
                    .0;
                    for (tag, k) in [
                        ("dkdv", &dkdv),
                        ("dq", &dq),
                        ("pre", &pre),
                        ("dkdv_base", &base_dkdv),
                    ] {
                        let name = format!("{}_d{d}_{tag}.ptx", p.name);
                        std::fs::write(std::path::Path::new(&dir).join(name), &k.ptx).unwrap();
                    }
                }
                made += 1;
            }
        }
        // (the two-kernel backward has none)
        let sep = backward_kernel_options(
            &Plan::new(&samples::document_causal()),
            &shape(4096, 128),
            Arch::Sm90,
            InputType::Bf16,
            true,
            true,
        );
        assert!(doc_backward_options(&sep, &Plan::new(&samples::document_causal())).is_none());
        assert!(made >= 6 && none > 0, "{made} / {none}");
    }

    /// Which bindings run the backward's document kv tiles (`doc_backward_applies`): the
    /// forward's document-tile option on, fast mode, `Lq == Lkv` (a list of the rows'
    /// documents covers no key past `Lq`: with `Lq < Lkv` those keys' dK/dV would not be
    /// written), no paged cache, no device lengths.
    #[test]
    fn doc_backward_applies_to_self_attention_in_fast_mode() {
        use crate::options::BindOptions;
        use crate::{Backend, DType};
        let sh = |lq, lkv| Shape {
            b: 1,
            hq: 4,
            hkv: 2,
            lq,
            lkv,
            d: 128,
            dv: 128,
        };
        let base = BindOptions {
            doc_tiles: true,
            ..BindOptions::new(Backend::Cuda, sh(300, 300), DType::BF16)
        };
        assert!(doc_backward_applies(&base));
        let off: [BindOptions; 6] = [
            BindOptions {
                doc_tiles: false,
                ..base.clone()
            },
            BindOptions {
                checked: true,
                ..base.clone()
            },
            BindOptions {
                shape: sh(200, 333),
                ..base.clone()
            },
            BindOptions {
                shape: sh(333, 200),
                ..base.clone()
            },
            BindOptions {
                kv_pages: true,
                ..base.clone()
            },
            BindOptions {
                device_lens: true,
                ..base.clone()
            },
        ];
        for (i, o) in off.iter().enumerate() {
            assert!(!doc_backward_applies(o), "case {i}");
        }
    }
}
