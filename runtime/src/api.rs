//! The library API: compile a source once, bind it to shapes, dtypes and a backend, and
//! call `forward` many times.
//!
//! In: `.attn` source text, host [`Tensor`]s for q/k/v and captures, param values.
//! Out: `O` (in the input dtype) and `LSE` (f32) as host tensors, or an [`Error`].
//! The runtime never sees the AST: it holds `attnc_compiler::ir::Program`s.
//!
//! ```no_run
//! use attnc::{Backend, BindOptions, Captures, Compiled, DType, Shape, Tensor};
//! let compiled = Compiled::from_source("causal.attn", "mask c(b, h, q, kv) { q >= kv } attention causal { mask = c; }")?;
//! let variant = compiled.attention("causal")?;
//! let shape = Shape { b: 1, hq: 2, hkv: 2, lq: 5, lkv: 5, d: 8, dv: 8 };
//! let mut bound = variant.bind(BindOptions::new(Backend::Reference, shape, DType::F32))?;
//! let q = Tensor::from_f32(vec![1, 2, 5, 8], &vec![0.1; 80]);
//! let out = bound.forward(&q, &q, &q, &Captures::default())?;
//! assert_eq!(out.lse.shape(), &[1, 2, 5]);
//! # Ok::<(), attnc::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::exec::{Exec, ExecError};
use crate::head_pad::HeadPad;
pub use crate::options::{Backend, BindOptions, DecodeKernel, DecodeTuning};
use crate::tensor::{DType, Tensor};
use attnc_compiler::diag::Diagnostic;
use attnc_compiler::interp::{Bindings, BoundTensor, EvalError, TensorData};
use attnc_compiler::ir::{DimSpec, ElemType, Program, Scalar, Type};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use std::collections::HashMap;
use std::sync::Arc;

/// The source a program came from, kept for rendering bind-time diagnostics.
#[derive(Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A compiled source file: every attention in it, lowered and verified.
#[derive(Clone, Debug)]
pub struct Compiled {
    source: Arc<SourceFile>,
    programs: Vec<Program>,
}

impl Compiled {
    /// Compiles source text. `name` is used in diagnostics.
    pub fn from_source(name: &str, text: &str) -> Result<Compiled> {
        let source = Arc::new(SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        });
        match attnc_compiler::compile_source(text) {
            Ok(m) => Ok(Compiled {
                source,
                programs: m.programs,
            }),
            Err(diags) => Err(Error::Compile {
                rendered: attnc_compiler::render(&diags, name, text),
                count: diags.iter().filter(|d| d.is_error()).count(),
            }),
        }
    }
    /// Reads and compiles a file.
    pub fn from_file(path: &std::path::Path) -> Result<Compiled> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_source(&path.display().to_string(), &text)
    }
    pub fn names(&self) -> Vec<&str> {
        self.programs.iter().map(|p| p.name.as_str()).collect()
    }
    pub fn source(&self) -> &SourceFile {
        &self.source
    }
    /// One attention of the file.
    pub fn attention(&self, name: &str) -> Result<Variant> {
        match self.programs.iter().find(|p| p.name == name) {
            Some(p) => Ok(Variant {
                source: self.source.clone(),
                program: Arc::new(p.clone()),
            }),
            None => Err(Error::UnknownAttention {
                name: name.to_string(),
                file: self.source.name.clone(),
                available: self.names().join(", "),
            }),
        }
    }
    /// The only attention of the file, or the one named; an error when ambiguous.
    pub fn select(&self, name: Option<&str>) -> Result<Variant> {
        match name {
            Some(n) => self.attention(n),
            None if self.programs.len() == 1 => self.attention(&self.programs[0].name.clone()),
            None => Err(Error::Usage(format!(
                "{} defines {} attentions ({}); choose one with --attention NAME",
                self.source.name,
                self.programs.len(),
                self.names().join(", ")
            ))),
        }
    }
}

/// One attention, ready to bind.
#[derive(Clone, Debug)]
pub struct Variant {
    source: Arc<SourceFile>,
    program: Arc<Program>,
}

/// A runtime scalar for a `param`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    I32(i32),
    F32(f32),
}

impl std::fmt::Display for ParamValue {
    /// The value as written in source or on the command line: `25`, `1.5`, `true`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::I32(i) => write!(f, "{i}"),
            ParamValue::F32(x) => write!(f, "{x:?}"),
        }
    }
}

/// Captured tensors and params, by name.
#[derive(Clone, Debug, Default)]
pub struct Captures {
    pub tensors: HashMap<String, Tensor>,
    pub params: HashMap<String, ParamValue>,
}

impl Captures {
    pub fn tensor(mut self, name: &str, t: Tensor) -> Self {
        self.tensors.insert(name.to_string(), t);
        self
    }
    pub fn param(mut self, name: &str, v: ParamValue) -> Self {
        self.params.insert(name.to_string(), v);
        self
    }
}

/// Result of one forward call.
#[derive(Clone, Debug)]
pub struct Output {
    /// `[B, Hq, Lq, Dv]` in the input dtype.
    pub o: Tensor,
    /// `[B, Hq, Lq]`, f32, natural log; `-inf` for fully masked rows.
    pub lse: Tensor,
}

impl Variant {
    pub fn program(&self) -> &Program {
        &self.program
    }
    pub fn name(&self) -> &str {
        &self.program.name
    }
    pub fn source(&self) -> &SourceFile {
        &self.source
    }

    /// Prepares the variant for one shape, dtype and backend (JIT-compiling for CPU and
    /// GPU): the plan (every analysis, once) and the backend's executor.
    pub fn bind(&self, opts: BindOptions) -> Result<Bound> {
        crate::validate::bind_options(&opts)?;
        // head dims the backend does not take: the kernels bound at a padded one
        let pad = HeadPad::choose(&opts)?;
        let opts = match pad {
            Some(p) => p.kernel_options(&opts),
            None => opts,
        };
        let plan = Plan::new(&self.program);
        let exec = Exec::prepare(&plan, &opts).map_err(|e| self.render(e))?;
        Ok(Bound {
            variant: self.clone(),
            opts,
            plan,
            exec,
            extensions: Vec::new(),
            devices_vouched: false,
            kept_captures: Vec::new(),
            pad,
        })
    }

    /// The same source with another program (a transformed form of this one, e.g. the
    /// position-offset program of decoding); diagnostics still point into the source.
    pub(crate) fn derived(&self, program: Program) -> Variant {
        Variant {
            source: self.source.clone(),
            program: Arc::new(program),
        }
    }

    /// Renders a backend's raw error: out-of-range reads point at the read in the source.
    pub(crate) fn render(&self, e: ExecError) -> Error {
        use crate::cuda::CudaError;
        match e {
            ExecError::Api(e) => e,
            ExecError::Reference(e) => out_of_bounds(self, &e),
            ExecError::Cpu(attnc_compiler::backend::cranelift::CpuError::Eval(e)) => {
                out_of_bounds(self, &e)
            }
            ExecError::Cpu(other) => Error::Backend {
                backend: "cpu",
                message: other.to_string(),
            },
            ExecError::Blocks(e) => Error::Backend {
                backend: "blocks",
                message: e.to_string(),
            },
            ExecError::CudaUnavailable(e) => Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            },
            ExecError::Cuda(CudaError::OutOfBounds {
                in_score,
                inst,
                tensor,
                index,
            }) => {
                let p = self.program();
                let f = if in_score {
                    p.score.as_ref()
                } else {
                    p.mask.as_ref()
                };
                let span = f
                    .and_then(|f| f.spans.get(inst as usize).copied())
                    .unwrap_or(p.span);
                let info = p.tensors.get(tensor as usize);
                let e = EvalError::OutOfBounds {
                    tensor: info
                        .map(|t| t.name.clone())
                        .unwrap_or_else(|| format!("#{tensor}")),
                    index: index.iter().map(|x| *x as i64).collect(),
                    dims: Vec::new(),
                    span,
                };
                out_of_bounds(self, &e)
            }
            ExecError::Cuda(
                e @ (CudaError::NoDriver | CudaError::NoDevice(_) | CudaError::UnsupportedGpu(..)),
            ) => Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            },
            ExecError::Cuda(other) => Error::Backend {
                backend: "cuda",
                message: other.to_string(),
            },
        }
    }

    /// A diagnostic pointing at a declaration of this program, rendered.
    pub(crate) fn render_at(
        &self,
        span: attnc_grammar::ast::Span,
        code: &'static str,
        message: &str,
        label: &str,
        hint: Option<&str>,
    ) -> String {
        let mut d = Diagnostic::error(code, span, message).with_label(label);
        if let Some(h) = hint {
            d = d.with_hint(h);
        }
        attnc_compiler::render(&[d], &self.source.name, &self.source.text)
    }
}

/// A variant bound to a shape, dtype and backend.
pub struct Bound {
    variant: Variant,
    opts: BindOptions,
    /// Every analysis of the program, computed once at bind.
    plan: Plan,
    exec: Exec,
    /// What extensions of the API keep between calls (see [`Bound::extension`]).
    extensions: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// Whether the caller-buffer entries skip the driver's per-pointer device query
    /// (`external`: `Bound::vouch_for_device_pointers`).
    devices_vouched: bool,
    /// The caller's head dims when the kernels run at a padded one (`head_pad`): `opts`
    /// then holds the kernels' shape, and the host-tensor calls resize their tensors.
    pad: Option<HeadPad>,
    /// The f32 buffers of the last host call's converted float captures, by tensor
    /// (empty where none): the next call converts into them, so a large capture (a
    /// `[B, H, Q, KV]` bias) costs a copy, not fresh pages, per call
    /// ([`Self::bindings_reusing`]).
    kept_captures: Vec<Vec<f32>>,
}

impl Bound {
    /// The options the kernels were bound with: the caller's, except where head dims are
    /// padded ([`Self::head_pad`]): there the padded shape and the scale fixed.
    pub fn options(&self) -> &BindOptions {
        &self.opts
    }
    /// The caller's problem shape (the head dims of the tensors its calls take and
    /// return; [`Self::options`]' shape is the kernels').
    pub fn shape(&self) -> Shape {
        let mut s = self.opts.shape;
        if let Some(p) = self.pad {
            (s.d, s.dv) = (p.d, p.dv);
        }
        s
    }
    /// The head-dim padding of this binding (`crate::head_pad`), if any.
    pub fn head_pad(&self) -> Option<HeadPad> {
        self.pad
    }
    /// An error for a caller-buffer entry (`what`) on a binding with padded head dims:
    /// those read the kernels' shape in place.
    pub(crate) fn refuse_padded(&self, what: &str) -> Result<()> {
        match self.pad {
            Some(p) => Err(p.caller_buffers_refused(what)),
            None => Ok(()),
        }
    }
    /// q, k, v at the kernels' head dim (copies where padded; `None`: use them as given).
    pub(crate) fn widen_qkv(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Option<[Tensor; 3]> {
        self.pad.map(|p| [p.widen(q), p.widen(k), p.widen(v)])
    }
    /// Points a CUDA binding at another `shape` (the rest of its options kept) when that
    /// shape selects the forward kernel it loaded (`CudaExec::reshape`): true, and the
    /// binding is `shape`'s from now on (the extensions' state, kept per shape, dropped);
    /// false (another backend, or the kernel would differ: bind anew), nothing changed.
    /// For callers whose lengths change every call (chunked prefill's runs,
    /// `decode::cuda`), which then skip a bind per call.
    pub(crate) fn reshape(&mut self, shape: Shape) -> Result<bool> {
        if shape == self.opts.shape {
            return Ok(true);
        }
        let o = BindOptions {
            shape,
            ..self.opts.clone()
        };
        crate::validate::bind_options(&o)?;
        let Some(c) = self.exec.cuda_mut() else {
            return Ok(false);
        };
        if !c
            .reshape(&self.plan, &o)
            .map_err(|e| self.variant.render(e))?
        {
            return Ok(false);
        }
        self.opts = o;
        self.extensions.clear();
        Ok(true)
    }
    pub fn variant(&self) -> &Variant {
        &self.variant
    }
    /// The state an extension of the API keeps between calls, one value per type,
    /// created empty on first use (`forward_with_cache`: `Option<DecodeState>`;
    /// `backward`: `BackwardState`). Type-erased, so that this module does not depend on
    /// the extensions that depend on it.
    pub(crate) fn extension<T: std::any::Any + Send + Sync + Default>(&mut self) -> &mut T {
        let i = match self.extensions.iter().position(|e| e.is::<T>()) {
            Some(i) => i,
            None => {
                self.extensions.push(Box::new(T::default()));
                self.extensions.len() - 1
            }
        };
        match self.extensions[i].downcast_mut::<T>() {
            Some(t) => t,
            None => unreachable!("the extension at {i} has this type"),
        }
    }
    /// Whether the caller vouched for the device of every pointer it passes
    /// (`Bound::vouch_for_device_pointers`).
    pub(crate) fn devices_vouched(&self) -> bool {
        self.devices_vouched
    }
    pub(crate) fn set_devices_vouched(&mut self, yes: bool) {
        self.devices_vouched = yes;
    }
    pub fn scale(&self) -> f32 {
        self.opts
            .scale
            .unwrap_or_else(|| self.opts.shape.default_scale())
    }

    /// Where the GPU kernel finds its kv blocks (closed form or block table); `None` for
    /// backends other than CUDA.
    pub fn kv_bounds(&self) -> Option<attnc_compiler::backend::llvm::KvBounds> {
        self.exec.cuda().map(|c| c.kv_bounds())
    }

    /// The options of the CUDA forward kernel this binding launches (its tiles and
    /// schedule: `PtxOptions::for_binding` refined by the environment's overrides);
    /// `None` for backends other than CUDA.
    pub fn cuda_forward_options(&self) -> Option<attnc_compiler::backend::llvm::PtxOptions> {
        self.exec.cuda().map(|c| c.forward_options())
    }

    /// The plan of this binding (every analysis result of the program).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// CUDA backend: `(built, reused)`, how many successful `forward` calls built the
    /// block table on the GPU and how many reused the table of an earlier call because
    /// the mask's captured tensors and params were bit-for-bit the same (the shape is
    /// fixed per binding). `None` for other backends; `(0, 0)` where tables do not come
    /// from the GPU builder.
    pub fn gpu_table_counts(&self) -> Option<(u64, u64)> {
        self.exec.cuda().map(|c| c.table_counts())
    }

    /// CPU and CUDA backends: how many successful `forward` calls (and CUDA
    /// `device_time` timings) ran the document-tiled kernel (`BindOptions::doc_tiles`; a
    /// call whose ids do not form contiguous documents runs the binding's own kernel).
    /// `None` for the reference backend.
    pub fn doc_tile_calls(&self) -> Option<u64> {
        match &self.exec {
            crate::exec::Exec::Cpu(c) => Some(c.doc_tile_calls()),
            crate::exec::Exec::Cuda(c) => Some(c.doc_tile_calls()),
            crate::exec::Exec::Reference => None,
        }
    }

    /// The binding's executor (read-only), for entry points outside this module.
    pub(crate) fn exec(&self) -> &Exec {
        &self.exec
    }

    /// The binding's executor, plan, variant and options, for launch paths outside this
    /// module (`external`: caller-owned buffers).
    pub(crate) fn parts_mut(&mut self) -> (&mut Exec, &Plan, &Variant, &BindOptions) {
        (&mut self.exec, &self.plan, &self.variant, &self.opts)
    }

    /// q, k and v against the bound shape and dtype (an error naming the tensor), as every
    /// entry that takes them checks them.
    pub(crate) fn check_qkv(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
        let (s, dt) = (self.shape(), self.opts.dtype);
        check_input("q", q, &[s.b, s.hq, s.lq, s.d], dt)?;
        check_input("k", k, &[s.b, s.hkv, s.lkv, s.d], dt)?;
        check_input("v", v, &[s.b, s.hkv, s.lkv, s.dv], dt)
    }

    /// Checks and converts the captures against the program's declarations.
    pub fn bindings(&self, captures: &Captures) -> Result<Bindings> {
        bind_captures(&self.variant, &self.opts.shape, captures)
    }

    /// [`Self::bindings`] converting float captures into the buffers the last call
    /// returned ([`Self::keep_bindings`]).
    pub(crate) fn bindings_reusing(&mut self, captures: &Captures) -> Result<Bindings> {
        let mut kept = std::mem::take(&mut self.kept_captures);
        bind_captures_into(&self.variant, &self.opts.shape, captures, &mut kept)
    }

    /// Keeps `b`'s f32 buffers for the next call's [`Self::bindings_reusing`].
    pub(crate) fn keep_bindings(&mut self, b: Bindings) {
        self.kept_captures = b
            .tensors
            .into_iter()
            .map(|t| match t.data {
                TensorData::F32(x) => x,
                TensorData::I32(_) => Vec::new(),
            })
            .collect();
    }

    /// Runs attention on host tensors.
    pub fn forward(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        captures: &Captures,
    ) -> Result<Output> {
        self.check_qkv(q, k, v)?;
        let s = self.opts.shape;
        let bindings = self.bindings_reusing(captures)?;
        let scale = self.scale();
        let wide = self.widen_qkv(q, k, v);
        let (q, k, v) = wide.as_ref().map_or((q, k, v), |[q, k, v]| (q, k, v));
        let (o, lse) = self
            .exec
            .forward(&self.plan, &self.opts, scale, q, k, v, &bindings)
            .map_err(|e| self.variant.render(e))?;
        self.keep_bindings(bindings);
        Ok(Output {
            o: match self.pad {
                Some(p) => p.narrow_v(o),
                None => o,
            },
            lse: Tensor::from_f32(vec![s.b, s.hq, s.lq], &lse),
        })
    }
}

impl Bound {
    /// Device-side milliseconds per build of the block table on the GPU (CUDA backend,
    /// masks over captured tensors with `gpu_block_tables`); `None` where the table is
    /// not built on the device. q, k, v and the captures are checked as by `forward`, on
    /// every backend.
    pub fn block_table_time_ms(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        captures: &Captures,
        iters: usize,
    ) -> Result<Option<f64>> {
        self.check_qkv(q, k, v)?;
        let bindings = self.bindings(captures)?;
        let scale = self.scale();
        let wide = self.widen_qkv(q, k, v);
        let (q, k, v) = wide.as_ref().map_or((q, k, v), |[q, k, v]| (q, k, v));
        let Some(c) = self.exec.cuda_mut() else {
            return Ok(None);
        };
        c.table_time(&self.plan, &self.opts, scale, q, k, v, &bindings, iters)
            .map_err(|e| self.variant.render(e))
    }

    /// Device-side time per call in milliseconds for device backends (inputs uploaded
    /// once, launches timed with events); `None` for host backends. q, k, v and the
    /// captures are checked as by `forward`, on every backend.
    pub fn device_time_ms(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        captures: &Captures,
        iters: usize,
    ) -> Result<Option<f64>> {
        Ok(self
            .device_time(q, k, v, captures, iters)?
            .map(|(ms, _)| ms))
    }

    /// [`Self::device_time_ms`] with the JIT tier of the module that was timed.
    pub fn device_time(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        captures: &Captures,
        iters: usize,
    ) -> Result<Option<(f64, crate::cuda::JitTier)>> {
        self.check_qkv(q, k, v)?;
        let bindings = self.bindings(captures)?;
        let scale = self.scale();
        let wide = self.widen_qkv(q, k, v);
        let (q, k, v) = wide.as_ref().map_or((q, k, v), |[q, k, v]| (q, k, v));
        let Some(c) = self.exec.cuda_mut() else {
            return Ok(None);
        };
        c.device_time(&self.plan, &self.opts, scale, q, k, v, &bindings, iters)
            .map(Some)
            .map_err(|e| self.variant.render(e))
    }
}

impl Bound {
    /// CUDA: how the JIT served this binding (cache hits, codegen/driver/load times, the
    /// first module's tier); `None` for other backends.
    pub fn jit_stats(&self) -> Option<crate::cuda::JitStats> {
        self.exec.cuda().map(|c| c.jit_stats())
    }

    /// CUDA: waits at most `timeout` for the optimized module of a tiered JIT to be in
    /// use; its timings. `Ok(None)` for other backends; an error when the background
    /// compile failed or timed out (the binding keeps working with the low tier).
    pub fn wait_optimized(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<crate::cuda::ReadyStats>> {
        match self.exec.cuda().map(|c| c.wait_optimized(timeout)) {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(e)) => Err(Error::Backend {
                backend: "cuda",
                message: e.to_string(),
            }),
        }
    }
}

pub(crate) fn check_input(which: &str, t: &Tensor, shape: &[usize], dtype: DType) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::InputShape {
            which: which.into(),
            expected: format!("{shape:?}"),
            got: t.shape().to_vec(),
        });
    }
    if t.dtype() != dtype {
        return Err(Error::InputDType {
            which: which.into(),
            expected: dtype.name().into(),
            got: t.dtype(),
        });
    }
    Ok(())
}

fn elem_dtype(e: ElemType) -> DType {
    match e {
        ElemType::I32 => DType::I32,
        ElemType::I64 => DType::I64,
        ElemType::F16 => DType::F16,
        ElemType::BF16 => DType::BF16,
        ElemType::F32 => DType::F32,
    }
}

/// Checks every declared capture is present with the declared dtype and shape, and
/// converts them for kernels. Unknown names are errors too (likely typos).
pub(crate) fn bind_captures(
    variant: &Variant,
    shape: &Shape,
    captures: &Captures,
) -> Result<Bindings> {
    bind_captures_into(variant, shape, captures, &mut Vec::new())
}

/// [`bind_captures`], float tensors converted into `kept[i]` for tensor `i` where given
/// (their memory reused; taken from `kept`).
pub(crate) fn bind_captures_into(
    variant: &Variant,
    shape: &Shape,
    captures: &Captures,
    kept: &mut [Vec<f32>],
) -> Result<Bindings> {
    let p = &variant.program;
    check_names(
        variant,
        captures.tensors.keys().chain(captures.params.keys()),
    )?;
    let params = bind_params(variant, &captures.params)?;
    let mut tensors = Vec::new();
    let mut symbols: HashMap<&str, usize> = HashMap::new();
    for (i, info) in p.tensors.iter().enumerate() {
        let t = captures.tensors.get(&info.name);
        check_tensor(
            variant,
            shape,
            info,
            t.map(|t| (t.dtype(), t.shape())),
            &mut symbols,
        )?;
        let t = t.expect("checked: present");
        let data = match info.elem.read_type() {
            Type::I32 => TensorData::I32(t.to_i32()),
            _ => {
                let mut buf = kept.get_mut(i).map(std::mem::take).unwrap_or_default();
                t.read_f32_into(&mut buf);
                TensorData::F32(buf)
            }
        };
        tensors.push(BoundTensor {
            dims: t.shape().to_vec(),
            data,
        });
    }
    Ok(Bindings { params, tensors })
}

/// Every name given is a declared tensor or param (E0311 otherwise, likely a typo).
pub(crate) fn check_names<'a>(
    variant: &Variant,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    let p = &variant.program;
    for name in names {
        if p.tensor(name).is_none() && p.param(name).is_none() {
            let mut declared: Vec<&str> = p
                .tensors
                .iter()
                .map(|t| t.name.as_str())
                .chain(p.params.iter().map(|x| x.name.as_str()))
                .collect();
            declared.sort();
            return Err(Error::UnknownCapture {
                name: name.clone(),
                attention: p.name.clone(),
                declared: if declared.is_empty() {
                    "nothing".into()
                } else {
                    declared.join(", ")
                },
            });
        }
    }
    Ok(())
}

/// The params in declaration order, each given with its declared type (an int is taken
/// for an f32 param): E0301 missing, E0302 wrong type.
pub(crate) fn bind_params(
    variant: &Variant,
    given: &HashMap<String, ParamValue>,
) -> Result<Vec<Scalar>> {
    let p = &variant.program;
    let mut params = Vec::new();
    for info in &p.params {
        let Some(v) = given.get(&info.name) else {
            return Err(Error::Capture {
                name: info.name.clone(),
                message: format!(
                    "param `{}` of attention `{}` was not given a value",
                    info.name, p.name
                ),
                rendered: variant.render_at(
                    info.span,
                    "E0301",
                    &format!("missing value for param `{}`", info.name),
                    "declared here",
                    Some("pass it in Captures::params (CLI: --param NAME=VALUE)"),
                ),
            });
        };
        let s = match (info.ty, v) {
            (Type::I32, ParamValue::I32(x)) => Scalar::I32(*x),
            (Type::F32, ParamValue::F32(x)) => Scalar::F32(*x),
            (Type::F32, ParamValue::I32(x)) => Scalar::F32(*x as f32),
            (Type::Bool, ParamValue::Bool(x)) => Scalar::Bool(*x),
            (t, v) => {
                return Err(Error::Capture {
                    name: info.name.clone(),
                    message: format!(
                        "param `{}` is declared `{t}` but was given the {} value {v}",
                        info.name,
                        match v {
                            ParamValue::Bool(_) => "bool",
                            ParamValue::I32(_) => "i32",
                            ParamValue::F32(_) => "f32",
                        }
                    ),
                    rendered: variant.render_at(
                        info.span,
                        "E0302",
                        &format!("wrong type for param `{}`", info.name),
                        &format!("declared `{t}` here"),
                        None,
                    ),
                });
            }
        };
        params.push(s);
    }
    Ok(params)
}

/// A captured tensor given as `(dtype, dims)` (`None`: not given) against its
/// declaration: E0303 missing, E0304 wrong dtype, E0305 wrong rank or dimension. A
/// symbolic dimension takes the first size seen for it (`symbols`).
pub(crate) fn check_tensor<'a>(
    variant: &Variant,
    shape: &Shape,
    info: &'a attnc_compiler::ir::TensorInfo,
    given: Option<(DType, &[usize])>,
    symbols: &mut HashMap<&'a str, usize>,
) -> Result<()> {
    let p = &variant.program;
    let decl_dims: Vec<String> = info.dims.iter().map(|d| d.to_string()).collect();
    let decl = format!("{}[{}]", info.elem.name(), decl_dims.join(", "));
    let Some((dtype, dims)) = given else {
        return Err(Error::Capture {
            name: info.name.clone(),
            message: format!(
                "tensor `{}` ({decl}) of attention `{}` was not given",
                info.name, p.name
            ),
            rendered: variant.render_at(
                info.span,
                "E0303",
                &format!("missing captured tensor `{}`", info.name),
                "declared here",
                Some("pass it in Captures::tensors (CLI: a tensor of this name in --inputs)"),
            ),
        });
    };
    let want = elem_dtype(info.elem);
    if dtype != want {
        return Err(Error::Capture {
            name: info.name.clone(),
            message: format!(
                "tensor `{}` has dtype {dtype}, but is declared {decl}",
                info.name,
            ),
            rendered: variant.render_at(
                info.span,
                "E0304",
                &format!("wrong dtype for tensor `{}`", info.name),
                &format!("declared {} here", info.elem.name()),
                Some(&format!(
                    "convert it to {want} on the host, or change the declaration to `{dtype}`",
                )),
            ),
        });
    }
    let mismatch = |detail: String| Error::Capture {
        name: info.name.clone(),
        message: format!(
            "tensor `{}` has shape {dims:?}, but is declared {decl}: {detail}",
            info.name,
        ),
        rendered: variant.render_at(
            info.span,
            "E0305",
            &format!("wrong shape for tensor `{}`", info.name),
            "declared here",
            None,
        ),
    };
    if dims.len() != info.dims.len() {
        return Err(mismatch(format!(
            "rank {} instead of {}",
            dims.len(),
            info.dims.len()
        )));
    }
    for (i, (d, got)) in info.dims.iter().zip(dims).enumerate() {
        let expect = match d {
            DimSpec::B => Some(shape.b),
            DimSpec::H => Some(shape.hq),
            DimSpec::Q => Some(shape.lq),
            DimSpec::Kv => Some(shape.lkv),
            DimSpec::Fixed(n) => Some(*n),
            DimSpec::Symbol(s) => match symbols.get(s.as_str()) {
                Some(n) => Some(*n),
                None => {
                    symbols.insert(s, *got);
                    None
                }
            },
        };
        if let Some(e) = expect
            && e != *got
        {
            return Err(mismatch(format!(
                "dimension {i} (`{d}`) is {got}, expected {e}"
            )));
        }
    }
    Ok(())
}

/// Renders an out-of-range read reported by a backend.
pub(crate) fn out_of_bounds(variant: &Variant, e: &EvalError) -> Error {
    match e {
        EvalError::OutOfBounds {
            tensor,
            index,
            dims,
            span,
        } => Error::OutOfBounds {
            message: format!(
                "out-of-range read of tensor `{tensor}` at {index:?} (shape {dims:?})"
            ),
            rendered: variant.render_at(
                *span,
                "E0306",
                &format!("index {index:?} is out of range for `{tensor}` of shape {dims:?}"),
                "this read",
                Some("clamp the index, or guard the read with `if` / `&&`"),
            ),
        },
    }
}
