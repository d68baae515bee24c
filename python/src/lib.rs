//! `attnc._attnc`: the extension module behind the `attnc` Python package (PyO3, stable
//! ABI). The package's Python code (`python/attnc/`) is the public API; this module is
//! private to it.
//!
//! In: `.attn` source text; torch tensors (q, k, v, and the o/lse buffers the package
//! allocated with torch) read by pointer, shape, strides, dtype and device; captures
//! and params by name. Out: [`Module`] and [`Attention`] objects, o/lse written in
//! place, or `attnc.AttncError` / `attnc.CompileError` (errors.rs). Every entry point
//! runs under [`errors::guard`], so a panic becomes an exception, never an abort.
//!
//! An [`Attention`] keeps one runtime binding (`attnc::Bound`: the JIT-compiled kernel
//! and its block maps) per (backend, device, shape, dtype, scale); calls with other param
//! values or captured tensors reuse it. CUDA tensors of device N run in device N's
//! primary context on the stream the package passes (torch's current stream there).
//! Besides the forward and backward: zero-copy CUDA decoding (`decode_workspace`,
//! `decode_cuda`) and block masks (`block_mask_tables`; the tables come back with a
//! call as int32 tensors, read and checked once into a `BlockMaskHandle`). Compute runs
//! with the GIL released. CUDA bindings skip the driver's per-pointer device query
//! (`Bound::vouch_for_device_pointers`): every entry here checks each tensor's device
//! from torch first.

mod args;
mod errors;

use args::{Device, TensorArg, param_value, param_values};
use attnc::external::{
    DeviceBackwardBuffers, DeviceBuffers, DeviceDqWorkspace, DeviceGradWords, DeviceTensor,
};
use attnc::host_trace::{Laps, Stage};
use attnc::{
    Backend, BackwardOptions, BindOptions, Captures, Compiled, DType, KvCache, Shape, Variant,
};
use errors::{DiagInfo, attnc_error, code, guard, runtime_error};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// A compiled `.attn` source: every attention it defines.
#[pyclass(frozen, module = "attnc._attnc")]
struct Module {
    compiled: Compiled,
}

/// Compiles source text; `name` is the file name used in diagnostics.
#[pyfunction]
fn compile(py: Python<'_>, source: &str, name: &str) -> PyResult<Module> {
    guard(py, || match Compiled::from_source(name, source) {
        Ok(compiled) => Ok(Module { compiled }),
        Err(attnc::Error::Compile { rendered, .. }) => {
            // the structured diagnostics, for `.code`, `.spans`, `.diagnostics`
            let diags = match attnc_compiler::compile_source(source) {
                Err(ds) => ds
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| DiagInfo::from_diagnostic(d, source))
                    .collect(),
                Ok(_) => Vec::new(),
            };
            Err(errors::compile_error(py, &rendered, &diags))
        }
        Err(e) => Err(runtime_error(py, &e, &|_| None)),
    })
}

#[pymethods]
impl Module {
    /// The attentions of the source, in order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.compiled
            .names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    #[getter]
    fn source_name(&self) -> String {
        self.compiled.source().name.clone()
    }
    /// One attention by name, or the only one when `name` is None.
    #[pyo3(signature = (name=None))]
    fn attention(&self, py: Python<'_>, name: Option<&str>) -> PyResult<Attention> {
        guard(py, || match self.compiled.select(name) {
            Ok(variant) => Ok(Attention {
                variant,
                bound: Mutex::new(HashMap::new()),
            }),
            Err(e) => {
                let msg = match (&e, name) {
                    (attnc::Error::Usage(_), None) => format!(
                        "{} defines {} attentions ({}); choose one with .attention(name)",
                        self.compiled.source().name,
                        self.compiled.names().len(),
                        self.compiled.names().join(", ")
                    ),
                    _ => e.to_string(),
                };
                Err(attnc_error(py, code::UNKNOWN_ATTENTION, &msg))
            }
        })
    }
}

/// What a binding depends on besides the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BindKey {
    backend: Backend,
    device: Device,
    shape: Shape,
    dtype: DType,
    /// `None`: the default `1/sqrt(D)`.
    scale: Option<u32>,
    /// CPU threads (torch's intra-op thread count); 0 for other backends.
    threads: usize,
}

/// A call's `scale` as the key holds it (`None`: the default).
fn scale_bits(scale: Option<f64>) -> Option<u32> {
    scale.map(|x| (x as f32).to_bits())
}

impl BindKey {
    /// The CUDA binding of a call on `device` (a CUDA device).
    fn cuda(device: Device, shape: Shape, dtype: DType, scale: Option<f64>) -> BindKey {
        BindKey {
            backend: Backend::Cuda,
            device,
            shape,
            dtype,
            scale: scale_bits(scale),
            threads: 0,
        }
    }

    /// The binding of a call on host copies: the CUDA backend (on `cuda`'s device) when
    /// `cuda` is set, else the oracle when `oracle`, else the CPU backend with `threads`
    /// on `device`.
    fn host_call(
        cuda: Option<i64>,
        oracle: bool,
        device: Device,
        shape: Shape,
        dtype: DType,
        scale: Option<f64>,
        threads: usize,
    ) -> BindKey {
        BindKey {
            backend: match (cuda, oracle) {
                (Some(_), _) => Backend::Cuda,
                (None, true) => Backend::Reference,
                (None, false) => Backend::Cpu,
            },
            device: cuda.map_or(device, Device::Cuda),
            shape,
            dtype,
            scale: scale_bits(scale),
            threads: if cuda.is_some() || oracle { 0 } else { threads },
        }
    }
}

/// Copies a result computed on host copies into the CPU tensor `arg` that the package
/// allocated for it (`what` names it in the error: "gradient", "decode output").
fn write_host_output(
    py: Python<'_>,
    what: &str,
    g: &attnc::Tensor,
    arg: &TensorArg,
) -> PyResult<()> {
    let bytes = g.bytes();
    if bytes.len() != arg.numel() * g.dtype().size() || Some(g.dtype()) != arg.dtype {
        return Err(attnc_error(
            py,
            code::BACKEND,
            &format!("{what} `{}`: size or dtype mismatch", arg.name),
        ));
    }
    if !bytes.is_empty() {
        // SAFETY: every caller passed `arg` through `check_buffer` (a contiguous CPU
        // tensor of `g`'s shape and dtype; its byte count checked again just above),
        // allocated by the package for this call and written by nobody else; `bytes` is
        // a separate host buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), arg.ptr as *mut u8, bytes.len()) };
    }
    Ok(())
}

/// Bindings kept per attention; past this many the oldest are dropped (a model that
/// sees many sequence lengths keeps the recent ones).
const MAX_BINDINGS: usize = 64;

/// The runtime bindings of one attention, in order of first use.
type Bindings = HashMap<BindKey, (u64, attnc::Bound)>;

/// One attention of a module, callable on torch tensors.
#[pyclass(frozen, module = "attnc._attnc")]
struct Attention {
    variant: Variant,
    bound: Mutex<Bindings>,
}

/// The captures of a CUDA call as the runtime takes them
/// ([`Attention::device_captures`]), with the tensors torch converted for the kernels:
/// the caller holds it until the launch is enqueued.
struct DeviceCaptures<'py> {
    tensors: HashMap<String, DeviceTensor>,
    params: HashMap<String, attnc::ParamValue>,
    /// Kept alive: the device pointers in `tensors` may point into them.
    _converted: Vec<Bound<'py, PyAny>>,
}

/// Raw pointers into torch's memory, moved into the GIL-free section of a call.
struct Buffers {
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    lse: usize,
}

impl Attention {
    /// The declaration of a capture, for errors that point at it.
    fn locate(&self, name: &str) -> Option<DiagInfo> {
        let p = self.variant.program();
        let span = p
            .tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.span)
            .or_else(|| p.params.iter().find(|x| x.name == name).map(|x| x.span))?;
        let text = &self.variant.source().text;
        Some(DiagInfo::at("", "", (span.start, span.end), text))
    }

    fn error(&self, py: Python<'_>, e: &attnc::Error) -> PyErr {
        runtime_error(py, e, &|n| self.locate(n))
    }

    /// Builds the runtime captures from `(name, value)` pairs: tensors (host copies)
    /// and params.
    fn captures(
        &self,
        py: Python<'_>,
        tensors: &[(String, Bound<'_, PyAny>)],
        params: &[(String, Bound<'_, PyAny>)],
    ) -> PyResult<Captures> {
        let mut caps = Captures::default();
        for (name, t) in tensors {
            let arg = TensorArg::read(py, name, t)?;
            caps.tensors.insert(name.clone(), arg.to_host_tensor(py)?);
        }
        for (name, v) in params {
            caps.params.insert(name.clone(), param_value(py, name, v)?);
        }
        Ok(caps)
    }

    /// The captures of a CUDA call ([`DeviceCaptures`]): the captured tensors as device
    /// pointers, each on `device`, of a dtype captures take, those the kernels cannot
    /// read in place (int64, float16, bfloat16: the kernels read i32/f32 words)
    /// converted on the device by torch on the current stream; and the params' values.
    fn device_captures<'py>(
        &self,
        py: Python<'py>,
        device: Device,
        tensors: &[(String, Bound<'py, PyAny>)],
        params: &[(String, Bound<'py, PyAny>)],
    ) -> PyResult<DeviceCaptures<'py>> {
        let mut converted = Vec::new();
        let mut devt = HashMap::new();
        for (name, t) in tensors {
            let a = TensorArg::read(py, name, t)?;
            if a.device != device {
                return Err(attnc_error(
                    py,
                    code::DEVICE,
                    &format!(
                        "tensor `{name}` is on {}, but q is on {device}; q, k, v and the captures must be on one device",
                        a.device
                    ),
                ));
            }
            let Some(dt) = a.dtype else {
                return Err(attnc_error(
                    py,
                    code::INPUT_DTYPE,
                    &format!(
                        "tensor `{name}` has dtype {}; captured tensors are int32, int64, float32, float16 or bfloat16",
                        a.torch_dtype
                    ),
                ));
            };
            // the words the kernels read (the dtype checked against the declaration is
            // the tensor's own, `dt`)
            let words = match dt {
                DType::I64 => Some("int32"),
                DType::F16 | DType::BF16 => Some("float32"),
                _ => None,
            };
            let w = match words {
                Some(target) => {
                    let c = t
                        .call_method1("to", (py.import("torch")?.getattr(target)?,))?
                        .call_method0("contiguous")?;
                    let arg = TensorArg::read(py, name, &c)?;
                    converted.push(c);
                    arg
                }
                None => a.clone(),
            };
            if !w.contiguous() {
                return Err(attnc_error(
                    py,
                    code::INPUT_SHAPE,
                    &format!(
                        "tensor `{name}` is not contiguous (strides {:?}); the attnc package passes contiguous tensors",
                        w.strides
                    ),
                ));
            }
            devt.insert(
                name.clone(),
                DeviceTensor {
                    ptr: w.ptr as u64,
                    dims: a.shape.clone(),
                    dtype: dt,
                },
            );
        }
        Ok(DeviceCaptures {
            tensors: devt,
            params: param_values(py, params)?,
            _converted: converted,
        })
    }

    /// The CUDA part of `forward`: q, k, v, o, lse (checked by the caller: dtype, shape,
    /// contiguity, one device, no overlap) and the captures as device pointers, launched
    /// on `stream` (torch's current stream of q's device) with no copy of q/k/v/o/lse and
    /// no synchronization. Captured tensors the kernels cannot read in place (int64,
    /// float16, bfloat16: the kernels read i32/f32 words) are converted on the device by
    /// torch, on the same stream, and kept alive until the launch is enqueued.
    #[allow(clippy::too_many_arguments)]
    fn forward_cuda(
        &self,
        py: Python<'_>,
        index: i64,
        shape: Shape,
        dtype: DType,
        scale: Option<u32>,
        [q, k, v, o, lse]: [&TensorArg; 5],
        tensors: &[(String, Bound<'_, PyAny>)],
        params: &[(String, Bound<'_, PyAny>)],
        mask: Option<&attnc::external::DeviceBlockMask>,
        stream: usize,
    ) -> PyResult<()> {
        let device = Device::Cuda(index);
        let caps = self.device_captures(py, device, tensors, params)?;
        let key = BindKey {
            scale,
            ..BindKey::cuda(device, shape, dtype, None)
        };
        let bufs = DeviceBuffers {
            q: q.ptr as u64,
            k: k.ptr as u64,
            v: v.ptr as u64,
            o: o.ptr as u64,
            lse: lse.ptr as u64,
        };
        let stream = stream as u64;
        self.run(py, key, |bound| {
            // SAFETY: q, k, v, o, lse are contiguous CUDA tensors of one device with the
            // bound shape and dtype (checked by `forward`; the runtime checks null,
            // alignment, overlap and, outside graph capture, that each is memory of
            // q's device), o/lse fresh torch buffers; the captures are contiguous tensors
            // of the same device in i32/f32 words (converted above; dims and dtype
            // checked by the runtime against the declarations). The caller's frame
            // (and `caps`) holds them all for the call, and torch's caching
            // allocator reuses their memory only in order on the stream they were
            // made on, which is `stream` (torch's current stream, where the package
            // allocated o/lse and made the inputs contiguous), so the queued launch
            // reads live memory; torch's streams live as long as the process.
            // A block mask's tables are int32 tensors the package made from
            // `block_mask_tables` on this device and keeps private (checked by
            // `read_block_mask` and the runtime: device, dtype, lengths, tiles).
            unsafe {
                bound.forward_cuda_into_masked(&bufs, &caps.tensors, &caps.params, mask, stream)
            }
        })
    }

    /// Runs `f` on the binding for `key`, binding (JIT-compiling) on first use.
    fn with_bound<T>(
        &self,
        key: BindKey,
        f: impl FnOnce(&mut attnc::Bound) -> attnc::Result<T>,
    ) -> attnc::Result<T> {
        let mut map = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) {
            let mut opts = BindOptions::new(key.backend, key.shape, key.dtype);
            opts.scale = key.scale.map(f32::from_bits);
            // torch's intra-op count, capped at the runtime's limit (a machine with more
            // cores runs attnc on that many)
            opts.threads = key.threads.min(attnc::options::MAX_THREADS);
            if let Device::Cuda(index) = key.device {
                opts.device = index as usize;
            }
            if key.backend == Backend::Cuda {
                // no tier swap: a retired module is released only after a synchronization
                // of attnc's own stream, which does not order the caller's streams
                opts.jit_tiers = Some(attnc::cuda::JitTiers::Off);
            }
            let mut bound = self.variant.bind(opts)?;
            if key.backend == Backend::Cuda {
                // SAFETY: every entry of this module that passes device pointers to the
                // binding's caller-buffer calls (`forward`, `backward_cuda`,
                // `decode_cuda`) first checks the device of each tensor behind them from
                // torch (`check_buffer`, `check_outputs`, `device_captures`, the block
                // mask's tables in `read_block_mask` / `MaskArg::read`, the workspace in
                // `decode_cuda`): each is memory of this binding's device, so the
                // driver's per-pointer query (about 1 us each, ~30 per training step) is
                // redundant here.
                unsafe { bound.vouch_for_device_pointers() };
            }
            if map.len() >= MAX_BINDINGS {
                // drop the oldest binding
                if let Some(old) = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k) {
                    map.remove(&old);
                }
            }
            let next = map.values().map(|(t, _)| *t + 1).max().unwrap_or(0);
            map.insert(key, (next, bound));
        }
        let (_, bound) = map.get_mut(&key).expect("inserted above");
        f(bound)
    }

    /// [`Self::with_bound`] with the GIL released, an error as the Python exception; for
    /// a CUDA binding torch's current device stays what it was (the bind and the
    /// launches make the device's primary context current on this thread).
    /// `f` on the CUDA binding of a cache call without lengths (q, the caches, the page
    /// table: [`CacheCall::read`]) and the call read.
    #[allow(clippy::type_complexity)]
    fn cache_bound<T: Send>(
        &self,
        py: Python<'_>,
        (q, k_cache, v_cache, page_table): (
            &Bound<'_, PyAny>,
            &Bound<'_, PyAny>,
            &Bound<'_, PyAny>,
            Option<Bound<'_, PyAny>>,
        ),
        scale: Option<f64>,
        f: impl FnOnce(&mut attnc::Bound, &CacheCall) -> attnc::Result<T> + Send,
    ) -> PyResult<T> {
        let call = CacheCall::read(py, q, k_cache, v_cache, None, page_table)?;
        let key = call.cuda_key(py, scale)?;
        self.run(py, key, |bound| f(bound, &call))
    }

    fn run<T: Send>(
        &self,
        py: Python<'_>,
        key: BindKey,
        f: impl FnOnce(&mut attnc::Bound) -> attnc::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            if key.backend == Backend::Cuda {
                attnc::external::preserving_current_context(|| self.with_bound(key, f))
            } else {
                self.with_bound(key, f)
            }
        })
        .map_err(|e| self.error(py, &e))
    }
}

/// The shape of a call from q `[B, Hq, Lq, D]`, k `[B, Hkv, Lkv, D]`, v `[B, Hkv, Lkv, Dv]`.
fn call_shape(py: Python<'_>, q: &TensorArg, k: &TensorArg, v: &TensorArg) -> PyResult<Shape> {
    for t in [q, k, v] {
        if t.shape.len() != 4 {
            return Err(attnc_error(
                py,
                code::INPUT_SHAPE,
                &format!(
                    "`{}` has shape {:?}; q, k and v are [B, H, L, D] (rank 4)",
                    t.name, t.shape
                ),
            ));
        }
    }
    let (qs, ks, vs) = (&q.shape, &k.shape, &v.shape);
    let bad = |what: &str| {
        Err(attnc_error(
            py,
            code::INPUT_SHAPE,
            &format!("q {qs:?}, k {ks:?}, v {vs:?}: {what}"),
        ))
    };
    if ks[0] != qs[0] || vs[0] != qs[0] {
        return bad("batch sizes differ");
    }
    if ks[1] != vs[1] || ks[2] != vs[2] {
        return bad("k and v differ in heads or length");
    }
    if ks[3] != qs[3] {
        return bad("q and k differ in head dimension D");
    }
    if ks[1] == 0 || qs[1] % ks[1] != 0 {
        return bad("the query heads must be a positive multiple of the kv heads (GQA)");
    }
    Ok(Shape {
        b: qs[0],
        hq: qs[1],
        hkv: ks[1],
        lq: qs[2],
        lkv: ks[2],
        d: qs[3],
        dv: vs[3],
    })
}

/// q, k, v of a call read as attnc sees them, and the call's shape ([`call_shape`]).
fn read_qkv(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
) -> PyResult<(TensorArg, TensorArg, TensorArg, Shape)> {
    let (q, k, v) = (
        TensorArg::read(py, "q", q)?,
        TensorArg::read(py, "k", k)?,
        TensorArg::read(py, "v", v)?,
    );
    let shape = call_shape(py, &q, &k, &v)?;
    Ok((q, k, v, shape))
}

/// The dims of a call's tensors: q (and dq), k (and dk), v (and dv), o (and dO), lse (and
/// dLSE).
struct Dims {
    q: [usize; 4],
    k: [usize; 4],
    v: [usize; 4],
    o: [usize; 4],
    lse: [usize; 3],
}

impl Dims {
    fn of(s: &Shape) -> Dims {
        Dims {
            q: [s.b, s.hq, s.lq, s.d],
            k: [s.b, s.hkv, s.lkv, s.d],
            v: [s.b, s.hkv, s.lkv, s.dv],
            o: [s.b, s.hq, s.lq, s.dv],
            lse: [s.b, s.hq, s.lq],
        }
    }
}

/// The dtype of a CUDA call's q: bfloat16 or float16, else E0313 saying that `what`
/// takes those.
fn cuda_dtype(py: Python<'_>, q: &TensorArg, what: &str) -> PyResult<DType> {
    match q.dtype {
        Some(d @ (DType::BF16 | DType::F16)) => Ok(d),
        _ => Err(attnc_error(
            py,
            code::INPUT_DTYPE,
            &format!(
                "q has dtype {} on {}; {what} takes bfloat16 or float16",
                q.torch_dtype, q.device
            ),
        )),
    }
}

/// The dtype of a call on host tensors: float32, or with `cuda` (host copies of a CUDA
/// call) bfloat16/float16; else E0313 saying that `what` takes those.
fn host_dtype(py: Python<'_>, q: &TensorArg, cuda: bool, what: &str) -> PyResult<DType> {
    match (cuda, q.dtype) {
        (false, Some(DType::F32)) => Ok(DType::F32),
        (true, Some(d @ (DType::BF16 | DType::F16))) => Ok(d),
        _ => Err(attnc_error(
            py,
            code::INPUT_DTYPE,
            &format!(
                "q has dtype {}; {what} takes float32 (CPU) or bfloat16/float16 (CUDA)",
                q.torch_dtype
            ),
        )),
    }
}

/// The CUDA binding of a call of `shape` on q's device: q must be a bfloat16/float16
/// CUDA tensor (else E0314 or E0313 saying that `what` takes those).
fn cuda_key(
    py: Python<'_>,
    q: &TensorArg,
    shape: Shape,
    scale: Option<f64>,
    what: &str,
) -> PyResult<BindKey> {
    let Device::Cuda(_) = q.device else {
        return Err(attnc_error(
            py,
            code::DEVICE,
            &format!("{what} takes CUDA tensors; q is on {}", q.device),
        ));
    };
    let dtype = cuda_dtype(py, q, what)?;
    Ok(BindKey::cuda(q.device, shape, dtype, scale))
}

/// [`check_buffer`] over each `(buffer, dims, dtype)`, in order.
fn check_buffers(
    py: Python<'_>,
    device: Device,
    bufs: &[(&TensorArg, &[usize], DType)],
) -> PyResult<()> {
    for (t, dims, dtype) in bufs {
        check_buffer(py, t, dims, *dtype, device)?;
    }
    Ok(())
}

/// Checks a call's o (`[B, Hq, Lq, Dv]`, the call's dtype) and lse (`[B, Hq, Lq]`,
/// float32) as [`check_buffer`] does.
fn check_outputs(
    py: Python<'_>,
    device: Device,
    shape: &Shape,
    dtype: DType,
    o: &TensorArg,
    lse: &TensorArg,
) -> PyResult<()> {
    let n = Dims::of(shape);
    check_buffers(py, device, &[(o, &n.o, dtype), (lse, &n.lse, DType::F32)])
}

/// A backward's buffers with their dims and dtypes for [`check_buffers`]: q, k, v, o,
/// lse, dO, dq, dk, dv (in that order in `t`).
fn io_buffers<'a>(
    n: &'a Dims,
    dtype: DType,
    t: [&'a TensorArg; 9],
) -> Vec<(&'a TensorArg, &'a [usize], DType)> {
    let [q, k, v, o, lse, dout, dq, dk, dv] = t;
    vec![
        (q, &n.q, dtype),
        (k, &n.k, dtype),
        (v, &n.v, dtype),
        (o, &n.o, dtype),
        (lse, &n.lse, DType::F32),
        (dout, &n.o, dtype),
        (dq, &n.q, dtype),
        (dk, &n.k, dtype),
        (dv, &n.v, dtype),
    ]
}

/// Checks that a buffer has this exact shape and dtype, is contiguous and on `device`.
fn check_buffer(
    py: Python<'_>,
    t: &TensorArg,
    shape: &[usize],
    dtype: DType,
    device: Device,
) -> PyResult<()> {
    if t.device != device {
        return Err(attnc_error(
            py,
            code::DEVICE,
            &format!(
                "`{}` is on {}, but q is on {device}; q, k, v and the captures must be on one device",
                t.name, t.device
            ),
        ));
    }
    if t.dtype != Some(dtype) {
        return Err(attnc_error(
            py,
            code::INPUT_DTYPE,
            &format!("`{}` has dtype {}, expected {dtype}", t.name, t.torch_dtype),
        ));
    }
    if t.shape != shape {
        return Err(attnc_error(
            py,
            code::INPUT_SHAPE,
            &format!("`{}` has shape {:?}, expected {shape:?}", t.name, t.shape),
        ));
    }
    if !t.contiguous() {
        return Err(attnc_error(
            py,
            code::INPUT_SHAPE,
            &format!(
                "`{}` is not contiguous (strides {:?}); the attnc package passes contiguous tensors",
                t.name, t.strides
            ),
        ));
    }
    Ok(())
}

/// The length of each of a backward's two f32 scratch rows: `B * Hq * Lq` rounded up to
/// a multiple of 4 (the second row 16-byte aligned).
fn scratch_rows(s: &Shape) -> usize {
    (s.b * s.hq * s.lq).div_ceil(4) * 4
}

/// A packed backward scratch (`backward_scratch`): the two rows of `rows` f32 words at 0
/// and `rows`, then, where the backward fuses dQ (`work`: `(accum, sem)` element counts),
/// its f32 accumulator and its int32 semaphores, each at a multiple of 64 words (256
/// bytes) from the start. Returns the workspace's `(accum, sem)` offsets in 4-byte words
/// and the total length.
fn packed_scratch(rows: usize, work: Option<(usize, usize)>) -> (Option<(usize, usize)>, usize) {
    match work {
        None => (None, 2 * rows),
        Some((accum, sem)) => {
            let a = (2 * rows).next_multiple_of(64);
            let m = (a + accum).next_multiple_of(64);
            (Some((a, m)), m + sem)
        }
    }
}

/// An f32 slice over a checked buffer.
///
/// # Safety
/// `ptr` must point to `len` f32 values that stay alive and are not written by anyone
/// else for `'a`.
unsafe fn f32_slice<'a>(ptr: usize, len: usize) -> &'a [f32] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr as *const f32, len) }
}

#[pymethods]
impl Attention {
    #[getter]
    fn name(&self) -> String {
        self.variant.name().to_string()
    }
    /// The captured tensors: `(name, dtype, dims)`, dims as written (`B`, `H`, `Q`,
    /// `KV`, a number or a symbol).
    #[getter]
    fn tensors(&self) -> Vec<(String, String, Vec<String>)> {
        self.variant
            .program()
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.elem.name().to_string(),
                    t.dims.iter().map(|d| d.to_string()).collect(),
                )
            })
            .collect()
    }
    /// The params: `(name, type)` with type `i32`, `f32` or `bool`.
    #[getter]
    fn params(&self) -> Vec<(String, String)> {
        self.variant
            .program()
            .params
            .iter()
            .map(|p| (p.name.clone(), p.ty.to_string()))
            .collect()
    }
    /// What the CUDA backward sums in fixed point besides dq, dk, dv: the names of the
    /// captured tensors the score reads differentiably, and whether it reads f32 params
    /// so (the gradient words `backward_cuda` takes).
    #[getter]
    fn grad_words(&self) -> (Vec<String>, bool) {
        let p = self.variant.program();
        let g = attnc_compiler::backend::llvm::backward::capture_grads(p);
        (
            g.tensors
                .iter()
                .map(|t| p.tensors[*t as usize].name.clone())
                .collect(),
            !g.params.is_empty(),
        )
    }
    /// How many bindings (compiled kernels for a shape, dtype, device and scale) this
    /// attention holds.
    fn binding_count(&self) -> usize {
        self.bound.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Runs attention: reads q, k, v and writes o `[B, Hq, Lq, Dv]` and lse
    /// `[B, Hq, Lq]` (f32), all allocated by the caller (contiguous, one device).
    /// `tensors` and `params` are `(name, value)` pairs. `stream`: the CUDA stream
    /// (unused on the CPU).
    #[pyo3(signature = (q, k, v, o, lse, scale, tensors, params, stream=0, threads=0, block_mask=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        stream: usize,
        threads: usize,
        block_mask: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(py, || {
            let (q, k, v, shape) = read_qkv(py, q, k, v)?;
            let o = TensorArg::read(py, "o", o)?;
            let lse = TensorArg::read(py, "lse", lse)?;
            let device = q.device;
            let dtype = match (device, q.dtype) {
                (Device::Cpu, Some(DType::F32)) => DType::F32,
                (Device::Cuda(_), Some(d @ (DType::BF16 | DType::F16))) => d,
                (Device::Cpu, _) => {
                    return Err(attnc_error(
                        py,
                        code::INPUT_DTYPE,
                        &format!(
                            "q has dtype {} on the cpu; attnc's CPU backend takes float32 (convert with .float())",
                            q.torch_dtype
                        ),
                    ));
                }
                (Device::Cuda(_), _) => {
                    return Err(attnc_error(
                        py,
                        code::INPUT_DTYPE,
                        &format!(
                            "q has dtype {} on cuda; attnc's CUDA backend takes bfloat16 or float16 (convert with .bfloat16())",
                            q.torch_dtype
                        ),
                    ));
                }
            };
            let (s, n) = (shape, Dims::of(&shape));
            check_buffers(
                py,
                device,
                &[
                    (&q, &n.q, dtype),
                    (&k, &n.k, dtype),
                    (&v, &n.v, dtype),
                    (&o, &n.o, dtype),
                    (&lse, &n.lse, DType::F32),
                ],
            )?;
            let outputs = [(&o, dtype.size()), (&lse, 4)];
            for (out, size) in outputs {
                for t in [&q, &k, &v] {
                    let (a, b) = (t.ptr, t.ptr + t.numel() * dtype.size());
                    let (c, d) = (out.ptr, out.ptr + out.numel() * size);
                    if out.numel() > 0 && t.numel() > 0 && c < b && a < d {
                        return Err(attnc_error(
                            py,
                            code::INPUT_SHAPE,
                            &format!("output `{}` overlaps `{}`", out.name, t.name),
                        ));
                    }
                }
            }
            let scale_bits = scale_bits(scale);
            if let Device::Cuda(index) = device {
                let mask = MaskArg::read(py, block_mask.as_ref(), device)?;
                let mask = mask.as_ref().map(MaskArg::get);
                return self.forward_cuda(
                    py,
                    index,
                    shape,
                    dtype,
                    scale_bits,
                    [&q, &k, &v, &o, &lse],
                    &tensors,
                    &params,
                    mask,
                    stream,
                );
            }
            if block_mask.is_some() {
                return Err(attnc_error(
                    py,
                    code::DEVICE,
                    "block masks are for CUDA tensors",
                ));
            }
            let caps = self.captures(py, &tensors, &params)?;
            let key = BindKey {
                backend: Backend::Cpu,
                device,
                shape,
                dtype,
                scale: scale_bits,
                threads,
            };
            let bufs = Buffers {
                q: q.ptr,
                k: k.ptr,
                v: v.ptr,
                o: o.ptr,
                lse: lse.ptr,
            };
            self.run(py, key, |bound| {
                // SAFETY: q, k, v, o, lse were checked above (f32, contiguous, on the
                // CPU, exactly the bound shape's lengths; o/lse overlap no input);
                // the caller's Python frame holds the tensors for the whole call, and
                // o/lse are fresh buffers nobody else writes during it.
                let (qs, ks, vs, os, ls) = unsafe {
                    (
                        f32_slice(bufs.q, s.q_len()),
                        f32_slice(bufs.k, s.k_len()),
                        f32_slice(bufs.v, s.v_len()),
                        f32_slice_mut(bufs.o, s.o_len()),
                        f32_slice_mut(bufs.lse, s.lse_len()),
                    )
                };
                bound.forward_f32_into(qs, ks, vs, &caps, os, ls)
            })
        })
    }

    /// The backward pass (CPU): reads q, k, v, o, lse, dO, dLSE and writes dq, dk, dv
    /// (caller-allocated like q, k, v) and the gradients of the captured tensors named in
    /// `wanted` (`(name, buffer)`, each buffer like its tensor). `cuda`: the tensors are
    /// host copies of a CUDA call (bf16/f16): the CUDA binding's backward runs on them
    /// (it uploads and downloads them: not zero-copy; the package's autograd uses
    /// `backward_cuda`). `oracle`: the f64 reference backward (f32 host tensors; it
    /// recomputes O and LSE, ignoring `o` and `lse`). `deterministic` (default true): false
    /// runs the CUDA binding's non-deterministic kernels (`attnc::BackwardOptions`); the
    /// CPU and the oracle are deterministic either way.
    #[pyo3(signature = (q, k, v, o, lse, dout, dlse, dq, dk, dv, scale, tensors, params, wanted, threads=0, cuda=false, oracle=false, deterministic=true))]
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        dout: &Bound<'_, PyAny>,
        dlse: &Bound<'_, PyAny>,
        dq: &Bound<'_, PyAny>,
        dk: &Bound<'_, PyAny>,
        dv: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        wanted: Vec<(String, Bound<'_, PyAny>)>,
        threads: usize,
        cuda: bool,
        oracle: bool,
        deterministic: bool,
    ) -> PyResult<()> {
        guard(py, || {
            let read = |name: &str, t: &Bound<'_, PyAny>| TensorArg::read(py, name, t);
            let (q, k, v, shape) = read_qkv(py, q, k, v)?;
            let device = q.device;
            if device != Device::Cpu {
                return Err(attnc_error(
                    py,
                    code::DEVICE,
                    "the backward entry takes host tensors (host copies of a CUDA call with cuda=True)",
                ));
            }
            let dtype = host_dtype(py, &q, cuda, "the backward")?;
            let n = Dims::of(&shape);
            let (o, lse, dout, dlse) = (
                read("o", o)?,
                read("lse", lse)?,
                read("do", dout)?,
                read("dlse", dlse)?,
            );
            let (dq, dk, dv) = (read("dq", dq)?, read("dk", dk)?, read("dv", dv)?);
            let mut bufs = io_buffers(&n, dtype, [&q, &k, &v, &o, &lse, &dout, &dq, &dk, &dv]);
            bufs.push((&dlse, &n.lse, DType::F32));
            check_buffers(py, device, &bufs)?;
            let host = |t: &TensorArg| t.to_host_tensor(py);
            let (qh, kh, vh) = (host(&q)?, host(&k)?, host(&v)?);
            let (oh, lh, doh, dlh) = (host(&o)?, host(&lse)?, host(&dout)?, host(&dlse)?);
            let caps = self.captures(py, &tensors, &params)?;
            let mut outs = Vec::new();
            for (name, buf) in &wanted {
                let arg = TensorArg::read(py, &format!("grad of {name}"), buf)?;
                let Some(cap) = caps.tensors.get(name) else {
                    return Err(attnc_error(
                        py,
                        code::UNKNOWN_CAPTURE,
                        &format!(
                            "a gradient was asked for `{name}`, which is not a captured tensor of this call"
                        ),
                    ));
                };
                check_buffer(py, &arg, cap.shape(), cap.dtype(), device)?;
                outs.push((name.clone(), arg));
            }
            let key = BindKey::host_call(
                cuda.then_some(0),
                oracle,
                device,
                shape,
                dtype,
                scale,
                threads,
            );
            let grads = self.run(py, key, |bound| {
                for (name, _) in &outs {
                    bound.check_differentiable(name)?;
                }
                let bwd = BackwardOptions { deterministic };
                bound.backward_with(&qh, &kh, &vh, &oh, &lh, &doh, Some(&dlh), &caps, &bwd)
            })?;
            let mut copies = vec![(&grads.dq, &dq), (&grads.dk, &dk), (&grads.dv, &dv)];
            for (name, arg) in &outs {
                let g = grads.tensors.get(name).ok_or_else(|| {
                    attnc_error(
                        py,
                        code::BACKEND,
                        &format!("the backward pass returned no gradient for `{name}`"),
                    )
                })?;
                copies.push((g, arg));
            }
            for (g, arg) in copies {
                write_host_output(py, "gradient", g, arg)?;
            }
            Ok(())
        })
    }

    /// The workspace of the fused dQ that `backward_cuda` needs for q, k, v (shape,
    /// dtype, device; not read) and `scale`: `(accum, sem)` element counts (float32,
    /// int32) where the binding's backward fuses dQ into the dK/dV kernel (sm_90 at
    /// D128, as `attnc::Bound::backward`), None where dQ is a second kernel; of the
    /// non-deterministic kernels with `deterministic=False` (`backward_cuda`'s). Binds
    /// (and looks the backward kernels up) on first use.
    #[pyo3(signature = (q, k, v, scale, deterministic=true))]
    fn backward_workspace(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scale: Option<f64>,
        deterministic: bool,
    ) -> PyResult<Option<(usize, usize)>> {
        guard(py, || {
            let (q, _, _, shape) = read_qkv(py, q, k, v)?;
            let key = cuda_key(py, &q, shape, scale, "the CUDA backward")?;
            let bwd = BackwardOptions { deterministic };
            self.run(py, key, |bound| bound.backward_cuda_workspace_with(&bwd))
        })
    }

    /// The length (float32 elements) of `backward_cuda`'s packed `scratch` for q, k, v
    /// (shape, dtype, device; not read), `scale` and `deterministic`: one buffer holding
    /// the two scratch rows and, where the binding's backward fuses dQ, its workspace
    /// (`packed_scratch`), so that a backward allocates one buffer instead of three.
    /// Binds on first use, like `backward_workspace`.
    #[pyo3(signature = (q, k, v, scale, deterministic=true))]
    fn backward_scratch(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scale: Option<f64>,
        deterministic: bool,
    ) -> PyResult<usize> {
        guard(py, || {
            let (q, _, _, shape) = read_qkv(py, q, k, v)?;
            let key = cuda_key(py, &q, shape, scale, "the CUDA backward")?;
            let bwd = BackwardOptions { deterministic };
            let need = self.run(py, key, |bound| bound.backward_cuda_workspace_with(&bwd))?;
            Ok(packed_scratch(scratch_rows(&shape), need).1)
        })
    }

    /// The CUDA backward on the caller's stream (zero copy): reads q, k, v, o, lse, dO and
    /// dLSE (or None) and writes dq, dk, dv, the scratch rows (`scratch`: float32
    /// `[2, R]`, R >= B*Hq*Lq rounded up to 4), the fused dQ's workspace (`dq_work`:
    /// `(float32 [accum], int32 [sem])` as `backward_workspace` says, None where it says
    /// None) and the fixed-point gradient words
    /// (`words`: `(name, int64 [max(1, numel), 3])` for each tensor of `grad_words`;
    /// `param_words`: int64 `[max(1, params), 3]` when `grad_words` says so), all
    /// allocated by the caller with torch on `stream` (torch's current stream).
    /// `deterministic=False` runs the binding's non-deterministic kernels
    /// (`attnc::BackwardOptions`; `dq_work` then as `backward_workspace(...,
    /// deterministic=False)` says). Or `scratch` packed: one float32 `[L]` with L from
    /// `backward_scratch` (the rows and the fused dQ's workspace), `dq_work` None.
    #[pyo3(signature = (q, k, v, o, lse, dout, dlse, dq, dk, dv, scratch, scale, tensors, params, words, param_words, stream, block_mask=None, dq_work=None, deterministic=true))]
    #[allow(clippy::too_many_arguments)]
    fn backward_cuda(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        dout: &Bound<'_, PyAny>,
        dlse: Option<Bound<'_, PyAny>>,
        dq: &Bound<'_, PyAny>,
        dk: &Bound<'_, PyAny>,
        dv: &Bound<'_, PyAny>,
        scratch: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        words: Vec<(String, Bound<'_, PyAny>)>,
        param_words: Option<Bound<'_, PyAny>>,
        stream: usize,
        block_mask: Option<Bound<'_, PyAny>>,
        dq_work: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        deterministic: bool,
    ) -> PyResult<()> {
        guard(py, || {
            let read = |name: &str, t: &Bound<'_, PyAny>| TensorArg::read(py, name, t);
            let (q, k, v, shape) = read_qkv(py, q, k, v)?;
            let key = cuda_key(py, &q, shape, scale, "backward_cuda")?;
            let (device, dtype) = (key.device, key.dtype);
            let (o, lse, dout) = (read("o", o)?, read("lse", lse)?, read("do", dout)?);
            let dlse = dlse.map(|t| read("dlse", &t)).transpose()?;
            let (dq, dk, dv) = (read("dq", dq)?, read("dk", dk)?, read("dv", dv)?);
            let scratch = read("scratch", scratch)?;
            let pad = scratch_rows(&shape);
            let n = Dims::of(&shape);
            // packed: one float32 [L] holding the rows and the fused dQ's workspace
            // (`backward_scratch`; its length checked against the binding's below)
            let packed = scratch.shape.len() == 1;
            if packed && dq_work.is_some() {
                return Err(attnc_error(
                    py,
                    code::INPUT_SHAPE,
                    "`dq_work` must be None with a packed `scratch` (float32 [backward_scratch(...)]), which holds the fused dQ's workspace",
                ));
            }
            let scratch_dims = if packed {
                scratch.shape.clone()
            } else {
                vec![2, pad]
            };
            let mut checks = io_buffers(&n, dtype, [&q, &k, &v, &o, &lse, &dout, &dq, &dk, &dv]);
            checks.push((&scratch, &scratch_dims, DType::F32));
            if let Some(d) = &dlse {
                checks.push((d, &n.lse, DType::F32));
            }
            check_buffers(py, device, &checks)?;
            let work = dq_work
                .map(|(a, m)| -> PyResult<_> {
                    let (a, m) = (read("dq accumulator", &a)?, read("dq semaphores", &m)?);
                    check_buffers(
                        py,
                        device,
                        &[
                            (&a, &a.shape.clone(), DType::F32),
                            (&m, &m.shape.clone(), DType::I32),
                        ],
                    )?;
                    Ok((a, m))
                })
                .transpose()?;
            let caps = self.device_captures(py, device, &tensors, &params)?;
            let mask = MaskArg::read(py, block_mask.as_ref(), device)?;
            let mask = mask.as_ref().map(MaskArg::get);
            let word_buf = |name: &str, t: &Bound<'_, PyAny>, n: usize| -> PyResult<u64> {
                let a = read(name, t)?;
                check_buffer(py, &a, &[n.max(1), 3], DType::I64, device)?;
                Ok(a.ptr as u64)
            };
            let mut grads = DeviceGradWords::default();
            for (name, t) in &words {
                let Some(cap) = caps.tensors.get(name) else {
                    return Err(attnc_error(
                        py,
                        code::UNKNOWN_CAPTURE,
                        &format!(
                            "gradient words were given for `{name}`, which is not a captured tensor of this call"
                        ),
                    ));
                };
                let n = cap.dims.iter().product();
                grads.tensors.insert(
                    name.clone(),
                    word_buf(&format!("gradient words of {name}"), t, n)?,
                );
            }
            if let Some(t) = &param_words {
                grads.params = Some(word_buf(
                    "params gradient words",
                    t,
                    self.variant.program().params.len(),
                )?);
            }
            let mut bufs = DeviceBackwardBuffers {
                q: q.ptr as u64,
                k: k.ptr as u64,
                v: v.ptr as u64,
                o: o.ptr as u64,
                lse: lse.ptr as u64,
                d_o: dout.ptr as u64,
                dlse: dlse.as_ref().map(|d| d.ptr as u64),
                dq: dq.ptr as u64,
                dk: dk.ptr as u64,
                dv: dv.ptr as u64,
                delta: scratch.ptr as u64,
                lse2: (scratch.ptr + 4 * pad) as u64,
                dq_work: work.as_ref().map(|(a, m)| DeviceDqWorkspace {
                    accum: a.ptr as u64,
                    sem: m.ptr as u64,
                }),
            };
            let lens = work.as_ref().map(|(a, m)| (a.numel(), m.numel()));
            let stream = stream as u64;
            let bwd = BackwardOptions { deterministic };
            let scratch_len = scratch.numel();
            self.run(py, key, |bound| {
                let need = bound.backward_cuda_workspace_with(&bwd)?;
                if packed {
                    let (parts, total) = packed_scratch(pad, need);
                    if scratch_len != total {
                        return Err(attnc::Error::Usage(format!(
                            "a packed `scratch` must be float32 [{total}] on {device} for this binding's backward (backward_scratch); got {scratch_len} elements"
                        )));
                    }
                    bufs.dq_work = parts.map(|(a, m)| DeviceDqWorkspace {
                        accum: (scratch.ptr + 4 * a) as u64,
                        sem: (scratch.ptr + 4 * m) as u64,
                    });
                } else if need != lens {
                    return Err(attnc::Error::Usage(match need {
                        Some((a, m)) => format!(
                            "`dq_work` must be (float32 [{a}], int32 [{m}]) on {device}: this binding's backward fuses dQ (backward_workspace); got {lens:?} elements"
                        ),
                        None => "`dq_work` must be None: this binding's backward computes dQ in a second kernel (backward_workspace)".into(),
                    }));
                }
                // SAFETY: every buffer is a contiguous CUDA tensor of q's device with
                // the shape and dtype the bound shape gives it (checked above: q..dv,
                // the scratch rows [2, R] with R >= B*Hq*Lq a multiple of 4, so the
                // second row is 16-byte aligned, the dQ workspace of the lengths
                // `backward_cuda_workspace` gives (checked just above; or, packed, the
                // rows and that workspace at `packed_scratch`'s 256-byte aligned offsets
                // of one float32 buffer of exactly their total length), and the
                // [max(1, n), 3] int64 gradient words); the runtime checks null,
                // alignment, overlap and, outside graph capture, that each is device
                // memory of q's device. The outputs (dq, dk, dv, scratch, workspace,
                // words) were allocated by the package for this call on `stream`,
                // torch's current stream, which orders every later use of their
                // memory after the queued launches (as for the forward, whose SAFETY
                // note in `forward_cuda` covers the inputs and captures).
                unsafe {
                    bound.backward_cuda_into_with(
                        &bufs,
                        &caps.tensors,
                        &caps.params,
                        &grads,
                        mask,
                        &bwd,
                        stream,
                    )
                }
            })
        })
    }

    /// Attention of q's new rows against a KV cache (`attnc::decode`: row `i` of
    /// sequence `b` at position `seq_lens[b] - Lq + i`, keys `0..seq_lens[b]`): host
    /// tensors in, `o`/`lse` (caller-allocated, like `forward`'s) written. Contiguous
    /// cache: `k_cache [B, Hkv, Lkv_max, D]`, `v_cache [.., Dv]`; paged (with
    /// `page_table: int [B, max_pages]`): `[num_pages, page_size, Hkv, D]`. `seq_lens`:
    /// int `[B]`. float32 on the CPU backend; `cuda`: bfloat16/float16 host copies of
    /// CUDA tensors of device `cuda_device`, run by that device's CUDA binding (uploaded
    /// and downloaded: not zero-copy; the package's zero-copy path is `decode_cuda`).
    /// `oracle`: the f64 reference (float32 host tensors).
    #[pyo3(signature = (q, k_cache, v_cache, seq_lens, page_table, o, lse, scale, tensors, params, threads=0, cuda=false, oracle=false, cuda_device=0))]
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        seq_lens: &Bound<'_, PyAny>,
        page_table: Option<Bound<'_, PyAny>>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        threads: usize,
        cuda: bool,
        oracle: bool,
        cuda_device: i64,
    ) -> PyResult<()> {
        guard(py, || {
            let call = CacheCall::read(py, q, k_cache, v_cache, Some(seq_lens), page_table)?;
            let (shape, seq) = (
                call.shape,
                call.seq_lens.as_ref().expect("read with seq_lens"),
            );
            let (q, k, v, table) = (&call.q, &call.k, &call.v, &call.table);
            let (o, lse) = (
                TensorArg::read(py, "o", o)?,
                TensorArg::read(py, "lse", lse)?,
            );
            let dtype = host_dtype(py, q, cuda, "decoding")?;
            for t in [q, k, v, seq, &o, &lse].into_iter().chain(table.as_ref()) {
                if t.device != Device::Cpu {
                    return Err(attnc_error(
                        py,
                        code::DEVICE,
                        &format!(
                            "the decode entry takes host tensors; `{}` is on {}",
                            t.name, t.device
                        ),
                    ));
                }
            }
            check_outputs(py, Device::Cpu, &shape, dtype, &o, &lse)?;
            let host = |t: &TensorArg| t.to_host_tensor(py);
            let (qh, kh, vh, sh) = (host(q)?, host(k)?, host(v)?, host(seq)?);
            let th = table.as_ref().map(host).transpose()?;
            let caps = self.captures(py, &tensors, &params)?;
            let key = BindKey::host_call(
                cuda.then_some(cuda_device),
                oracle,
                Device::Cpu,
                shape,
                dtype,
                scale,
                threads,
            );
            let out = self.run(py, key, |bound| {
                let cache = KvCache::new(&kh, &vh, th.as_ref(), &sh);
                bound.forward_with_cache(&qh, &cache, &caps)
            })?;
            for (g, arg) in [(&out.o, &o), (&out.lse, &lse)] {
                write_host_output(py, "decode output", g, arg)?;
            }
            Ok(())
        })
    }

    /// The tables of a block mask (`attnc.Attention.block_mask`) for the CUDA binding of
    /// q, k, v (their shape, dtype and device; not read) and `scale`, from host copies of
    /// the captures: `(shape, forward, backward, tensors, params, documents,
    /// backward_documents)` with `forward =
    /// (row_start, runs, strides, tiles)`, `backward = (tiles, kv, kv_strides, q,
    /// q_strides)` or None, `tensors` the `(name, dims)` and `params` the `(name, word)`
    /// of the captures the mask reads, `documents` the document-tiled forward's
    /// `(q_block, tiles)` (four int32 words a tile) or None, and `backward_documents` the
    /// backward's document kv tiles `((q_block, kv_block), tiles, ranges)` or None
    /// (`Bound::block_mask_tables`).
    #[pyo3(signature = (q, k, v, scale, tensors, params, backward=true))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn block_mask_tables(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        backward: bool,
    ) -> PyResult<BlockMaskTuple> {
        guard(py, || {
            let (q, _, _, shape) = read_qkv(py, q, k, v)?;
            let dtype = match (q.device, q.dtype) {
                (Device::Cuda(_), Some(d @ (DType::BF16 | DType::F16))) => d,
                _ => {
                    return Err(attnc_error(
                        py,
                        code::INPUT_DTYPE,
                        &format!(
                            "block masks are for CUDA tensors of bfloat16 or float16; q is {} on {}",
                            q.torch_dtype, q.device
                        ),
                    ));
                }
            };
            for (name, t) in &tensors {
                let a = TensorArg::read(py, name, t)?;
                if a.device != Device::Cpu {
                    return Err(attnc_error(
                        py,
                        code::DEVICE,
                        &format!(
                            "block_mask_tables takes host copies of the captures; `{name}` is on {}",
                            a.device
                        ),
                    ));
                }
            }
            let caps = self.captures(py, &tensors, &params)?;
            let key = BindKey::cuda(q.device, shape, dtype, scale);
            let t = self.run(py, key, |bound| bound.block_mask_tables(&caps, backward))?;
            let s = t.shape;
            Ok((
                (s.b, s.hq, s.hkv, s.lq, s.lkv, s.d, s.dv),
                (
                    t.forward.row_start,
                    t.forward.runs,
                    t.forward.strides,
                    t.forward.tiles,
                ),
                t.backward
                    .map(|r| (r.tiles, r.kv, r.kv_strides, r.q, r.q_strides)),
                t.tensors,
                t.params,
                t.documents.map(|d| (d.q_block, d.tiles)),
                t.backward_documents
                    .map(|d| (d.tiles_shape, d.tiles, d.ranges)),
            ))
        })
    }

    /// The path the last zero-copy CUDA decode call of this binding took
    /// (`Bound::cache_path`: "split-kv", "split-kv-mma" or "prefill"; None before the
    /// first call), for q, the caches and the page table (or None) of the call.
    #[pyo3(signature = (q, k_cache, v_cache, page_table, scale))]
    fn decode_path(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        page_table: Option<Bound<'_, PyAny>>,
        scale: Option<f64>,
    ) -> PyResult<Option<&'static str>> {
        guard(py, || {
            self.cache_bound(py, (q, k_cache, v_cache, page_table), scale, |bound, _| {
                Ok(bound.cache_path())
            })
        })
    }

    /// The workspace a zero-copy CUDA decode call needs (`decode_cuda`): `(part_o,
    /// part_lse, ranges)` element counts (f32, f32, int32) for q, the caches and the page
    /// table (or None) of the call. Binds (and JIT-compiles) on first use.
    #[pyo3(signature = (q, k_cache, v_cache, page_table, scale))]
    fn decode_workspace(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        page_table: Option<Bound<'_, PyAny>>,
        scale: Option<f64>,
    ) -> PyResult<(usize, usize, usize)> {
        guard(py, || {
            let ws =
                self.cache_bound(py, (q, k_cache, v_cache, page_table), scale, |bound, c| {
                    bound.decode_cuda_workspace(c.layout)
                })?;
            Ok((ws.part_o, ws.part_lse, ws.ranges))
        })
    }

    /// Whether zero-copy CUDA decoding (`decode_cuda`) runs calls of this shape on this
    /// binding (`Bound::decode_cuda_takes`): every shape `decode_cuda_applies` names, and
    /// chunked prefill at head dim 256 where the prefill kernel reads the cache in place
    /// (sm_90, a closed-form mask). Binds on first use.
    #[pyo3(signature = (q, k_cache, v_cache, page_table, scale))]
    fn decode_cuda_takes(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        page_table: Option<Bound<'_, PyAny>>,
        scale: Option<f64>,
    ) -> PyResult<bool> {
        guard(py, || {
            self.cache_bound(py, (q, k_cache, v_cache, page_table), scale, |bound, c| {
                bound.decode_cuda_takes(c.layout)
            })
        })
    }

    /// Zero-copy CUDA decoding on `stream` (torch's current stream of q's device): reads
    /// q, the caches, `seq_lens` (int32 `[B]`) and the page table (int32 `[B,
    /// max_pages]`, or None), writes o, lse and the workspace (`workspace`: float32
    /// `[part_o + part_lse]`, `ranges`: int32 `[3 B]`, sized by `decode_workspace`; or
    /// `ranges` None and the ranges inside `workspace`, float32 `[n + n % 2 + ranges]` with
    /// `n = part_o + part_lse`: one allocation, the ranges 8-byte aligned after the
    /// partial LSE), all allocated by the caller with torch on `stream`. No host copy, no
    /// synchronization.
    /// `seq_lens_host`: the same lengths known on the host (a CPU tensor's), which lets
    /// chunked prefill run in batched runs on the prefill kernel
    /// (`Bound::decode_cuda_into_with_lengths`).
    #[pyo3(signature = (q, k_cache, v_cache, seq_lens, page_table, o, lse, workspace, ranges, scale, tensors, params, stream, seq_lens_host=None))]
    #[allow(clippy::too_many_arguments)]
    fn decode_cuda(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        seq_lens: &Bound<'_, PyAny>,
        page_table: Option<Bound<'_, PyAny>>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        workspace: &Bound<'_, PyAny>,
        ranges: Option<Bound<'_, PyAny>>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        stream: usize,
        seq_lens_host: Option<Vec<i32>>,
    ) -> PyResult<()> {
        guard(py, || {
            let mut laps = Laps::start();
            let (call, key, o, lse) = CacheCall::read_checked(
                py,
                (q, k_cache, v_cache),
                Some(seq_lens),
                page_table,
                (o, lse),
                scale,
            )?;
            let (device, s) = (key.device, call.shape);
            let read = |name: &str, t: &Bound<'_, PyAny>| TensorArg::read(py, name, t);
            let ws = read("workspace", workspace)?;
            let rg = ranges.map(|r| read("ranges", &r)).transpose()?;
            let seq = call.seq_lens.as_ref().expect("read with seq_lens");
            if let Some(rg) = &rg {
                check_buffer(py, rg, &[3 * s.b], DType::I32, device)?;
            }
            laps.lap(Stage::Read);
            let caps = self.device_captures(py, device, &tensors, &params)?;
            laps.lap(Stage::Captures);
            let layout = call.layout;
            let ptr = |t: &TensorArg| t.ptr as u64;
            let stream = stream as u64;
            let (qp, kp, vp, sp) = (ptr(&call.q), ptr(&call.k), ptr(&call.v), ptr(seq));
            let tp = call.table.as_ref().map(ptr);
            let laps_in = &mut laps;
            let done = self.run(py, key, |bound| {
                        laps_in.lap(Stage::Enter);
                        let w = bound.decode_cuda_workspace(layout)?;
                        // the ranges inside the workspace (`ranges` None): 8-byte aligned
                        // after the partial LSE
                        let parts = w.part_o + w.part_lse;
                        let inside = parts + (parts & 1);
                        let want = if rg.is_some() { parts } else { inside + w.ranges };
                        if ws.dtype != Some(DType::F32) || ws.numel() != want
                            || !ws.contiguous() || ws.device != device
                        {
                            return Err(attnc::Error::Usage(format!(
                                "`workspace` must be a contiguous float32 tensor of {want} elements on {device} (decode_workspace)"
                            )));
                        }
                        let bufs = attnc::external::DeviceDecodeBuffers {
                            q: qp,
                            k_cache: kp,
                            v_cache: vp,
                            seq_lens: sp,
                            page_table: tp,
                            o: o.ptr as u64,
                            lse: lse.ptr as u64,
                            part_o: ws.ptr as u64,
                            part_lse: ws.ptr as u64 + 4 * w.part_o as u64,
                            ranges: match &rg {
                                Some(rg) => rg.ptr as u64,
                                None => ws.ptr as u64 + 4 * inside as u64,
                            },
                        };
                        // SAFETY: every buffer is a contiguous CUDA tensor of q's device
                        // with the shape and dtype the binding's shape and the layout
                        // give it (checked above and by `CacheCall::read`), the workspace
                        // of the size `decode_cuda_workspace` gives (checked just above;
                        // the partial LSE starts 4 * part_o bytes in, a multiple of 128
                        // bytes since part_o is a multiple of D; without `ranges` the
                        // ranges' 3 B words start 4 * `inside` bytes in, inside the
                        // checked size, 8-byte aligned); the runtime checks null,
                        // alignment, overlap and, outside graph capture, the device of
                        // each. Outputs and workspace were allocated by the package for
                        // this call on `stream`, torch's current stream, which orders
                        // every later use of their memory after the queued launches (the
                        // SAFETY note of `forward_cuda` covers inputs and captures).
                        // `seq_lens_host` is what `seq_lens` holds (the package copied
                        // it from the CPU tensor the caller gave)
                        let r = match &seq_lens_host {
                            Some(h) => unsafe {
                                bound.decode_cuda_into_with_lengths(
                                    layout, &bufs, h, &caps.tensors, &caps.params, stream,
                                )
                            },
                            None => unsafe {
                                bound.decode_cuda_into(layout, &bufs, &caps.tensors, &caps.params, stream)
                            },
                        };
                        laps_in.lap(Stage::Call);
                        r
            });
            laps.lap(Stage::Leave);
            done
        })
    }

    /// Chunked prefill's batched runs alone, for lengths known on the host
    /// (`seq_lens_host`, a CPU tensor's): enqueues them on `stream` and returns True when
    /// they take the call (`Bound::decode_cuda_runs`), else returns False having enqueued
    /// nothing (the caller then runs `decode_cuda` with the split-KV kernels' workspace
    /// and the lengths on the device). Reads q, the caches, the page table, o and lse
    /// (checked as `decode_cuda` checks them): no workspace, no device copy of the lengths.
    #[pyo3(signature = (q, k_cache, v_cache, seq_lens_host, page_table, o, lse, scale, tensors, params, stream))]
    #[allow(clippy::too_many_arguments)]
    fn decode_cuda_runs(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        seq_lens_host: Vec<i32>,
        page_table: Option<Bound<'_, PyAny>>,
        o: &Bound<'_, PyAny>,
        lse: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
        stream: usize,
    ) -> PyResult<bool> {
        guard(py, || {
            let (call, key, o, lse) = CacheCall::read_checked(
                py,
                (q, k_cache, v_cache),
                None,
                page_table,
                (o, lse),
                scale,
            )?;
            if seq_lens_host.len() != call.shape.b {
                return Err(attnc_error(
                    py,
                    "E0320",
                    &format!(
                        "`seq_lens` has {} lengths, expected [{}]",
                        seq_lens_host.len(),
                        call.shape.b
                    ),
                ));
            }
            let caps = self.device_captures(py, key.device, &tensors, &params)?;
            let layout = call.layout;
            let ptr = |t: &TensorArg| t.ptr as u64;
            let bufs = attnc::external::DeviceDecodeBuffers {
                q: ptr(&call.q),
                k_cache: ptr(&call.k),
                v_cache: ptr(&call.v),
                seq_lens: 0,
                page_table: call.table.as_ref().map(ptr),
                o: ptr(&o),
                lse: ptr(&lse),
                part_o: 0,
                part_lse: 0,
                ranges: 0,
            };
            let stream = stream as u64;
            self.run(py, key, |bound| {
                // SAFETY: as `decode_cuda`'s note for the buffers the runs read (q, the
                // caches, the page table, o, lse: checked by `CacheCall::read_checked`);
                // `Bound::decode_cuda_runs` reads none of the zero ones.
                unsafe {
                    bound.decode_cuda_runs(
                        layout,
                        &bufs,
                        &seq_lens_host,
                        &caps.tensors,
                        &caps.params,
                        stream,
                    )
                }
            })
        })
    }

    /// The f64 reference implementation (the oracle) on host copies: returns `(o, lse)`
    /// as flat lists of f32 (slow; for tests and debugging).
    #[pyo3(signature = (q, k, v, scale, tensors, params))]
    #[allow(clippy::too_many_arguments)]
    fn reference(
        &self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scale: Option<f64>,
        tensors: Vec<(String, Bound<'_, PyAny>)>,
        params: Vec<(String, Bound<'_, PyAny>)>,
    ) -> PyResult<(Vec<f32>, Vec<f32>)> {
        guard(py, || {
            let (q, k, v, shape) = read_qkv(py, q, k, v)?;
            let (qt, kt, vt) = (
                q.to_host_tensor(py)?,
                k.to_host_tensor(py)?,
                v.to_host_tensor(py)?,
            );
            let caps = self.captures(py, &tensors, &params)?;
            let key = BindKey {
                backend: Backend::Reference,
                device: Device::Cpu,
                shape,
                dtype: qt.dtype(),
                scale: scale_bits(scale),
                threads: 0,
            };
            let out = self.run(py, key, |b| b.forward(&qt, &kt, &vt, &caps))?;
            Ok((out.o.to_f32(), out.lse.to_f32()))
        })
    }
}

/// What `block_mask_tables` returns (see there).
type BlockMaskTuple = (
    (usize, usize, usize, usize, usize, usize, usize),
    (Vec<u32>, Vec<u32>, (i32, i32), (u32, u32)),
    Option<((u32, u32), Vec<i32>, (i32, i32), Vec<i32>, (i32, i32))>,
    Vec<(String, Vec<usize>)>,
    Vec<(String, u32)>,
    Option<(u32, Vec<i32>)>,
    Option<((u32, u32), Vec<i32>, Vec<i32>)>,
);

/// What a malformed block mask tuple is told.
const BLOCK_MASK_LAYOUT: &str = "a block mask's tables are (shape, (row_start, runs, strides, tiles), backward or None, tensors, params, documents or None, backward documents or None)";

/// A block mask as the package passes it (`BlockMask._rust`): `(shape, (row_start, runs,
/// strides, tiles), backward or None, tensors, params, documents or None, backward
/// documents or None)` with the tables as int32 tensors on `device` (`backward`: `(tiles,
/// kv, kv_strides, q, q_strides)`, `documents`: `(q_block, tiles)`, backward documents:
/// `((q_block, kv_block), tiles, ranges)`), `tensors` the `(name, dims)` of the captures it was
/// made from (their identity and version are checked by the package), `params` their
/// `(name, word)`.
fn read_block_mask(
    py: Python<'_>,
    m: &Bound<'_, PyAny>,
    device: Device,
) -> PyResult<attnc::external::DeviceBlockMask> {
    type Fwd<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, (i32, i32), (u32, u32));
    type Bwd<'py> = (
        (u32, u32),
        Bound<'py, PyAny>,
        (i32, i32),
        Bound<'py, PyAny>,
        (i32, i32),
    );
    type Whole<'py> = (
        (usize, usize, usize, usize, usize, usize, usize),
        Fwd<'py>,
        Option<Bwd<'py>>,
        Vec<(String, Vec<usize>)>,
        Vec<(String, u32)>,
        Option<(u32, Bound<'py, PyAny>)>,
        Option<((u32, u32), Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    );
    let (shape, (rs, runs, strides, tiles), bwd, tensors, params, docs, bwd_docs): Whole<'_> = m
        .extract()
        .map_err(|_| attnc_error(py, code::INPUT_SHAPE, BLOCK_MASK_LAYOUT))?;
    let words = |name: &str, t: &Bound<'_, PyAny>| -> PyResult<attnc::external::DeviceWords> {
        let a = TensorArg::read(py, name, t)?;
        check_buffer(py, &a, &a.shape.clone(), DType::I32, device)?;
        if a.shape.len() != 1 {
            return Err(attnc_error(
                py,
                code::INPUT_SHAPE,
                &format!("`{name}` must be one-dimensional"),
            ));
        }
        Ok((a.ptr as u64, a.numel()))
    };
    let (b, hq, hkv, lq, lkv, d, dv) = shape;
    Ok(attnc::external::DeviceBlockMask {
        shape: Shape {
            b,
            hq,
            hkv,
            lq,
            lkv,
            d,
            dv,
        },
        tiles,
        row_start: words("block mask row starts", &rs)?,
        runs: words("block mask runs", &runs)?,
        strides,
        backward: bwd
            .map(|(t, kv, ks, q, qs)| -> PyResult<_> {
                Ok((
                    t,
                    words("block mask kv ranges", &kv)?,
                    ks,
                    words("block mask q ranges", &q)?,
                    qs,
                ))
            })
            .transpose()?,
        documents: docs
            .map(|(qb, t)| -> PyResult<_> { Ok((qb, words("block mask document tiles", &t)?)) })
            .transpose()?,
        backward_documents: bwd_docs
            .map(|(tiles, t, r)| -> PyResult<_> {
                Ok((
                    tiles,
                    words("block mask backward document tiles", &t)?,
                    words("block mask backward document ranges", &r)?,
                ))
            })
            .transpose()?,
        // identity is the package's check (torch's version counters); 0: not compared
        tensors: tensors.into_iter().map(|(n, dims)| (n, 0, dims)).collect(),
        params,
    })
}

/// A block mask's tables read and checked once (`block_mask_handle`): what `forward` and
/// `backward_cuda` take as `block_mask` in place of the tables' tuple, so that a call
/// does not read and check the four tables again. Holds the tuple (the tables' memory
/// stays alive while the handle does).
#[pyclass(frozen, module = "attnc._attnc")]
struct BlockMaskHandle {
    mask: attnc::external::DeviceBlockMask,
    /// The device of the tables.
    device: Device,
    _tables: Py<PyAny>,
}

/// Reads a block mask's tuple (`BlockMask._rust`'s layout, see [`read_block_mask`]) once,
/// its tables checked on the device of the first (int32, one-dimensional, contiguous):
/// the handle `forward` and `backward_cuda` take as `block_mask`.
#[pyfunction]
fn block_mask_handle(py: Python<'_>, tables: Bound<'_, PyAny>) -> PyResult<BlockMaskHandle> {
    guard(py, || {
        let first = tables
            .get_item(1)
            .and_then(|f| f.get_item(0))
            .map_err(|_| attnc_error(py, code::INPUT_SHAPE, BLOCK_MASK_LAYOUT))?;
        let device = TensorArg::read(py, "block mask row starts", &first)?.device;
        let mask = read_block_mask(py, &tables, device)?;
        Ok(BlockMaskHandle {
            mask,
            device,
            _tables: tables.unbind(),
        })
    })
}

/// A call's block mask: a [`BlockMaskHandle`] (read when it was made) or the tables'
/// tuple, read now.
enum MaskArg<'py> {
    Handle(PyRef<'py, BlockMaskHandle>),
    Read(Box<attnc::external::DeviceBlockMask>),
}

impl<'py> MaskArg<'py> {
    /// The block mask of a call on `device`, if any: a handle's tables must be on
    /// `device` (E0314 otherwise).
    fn read(
        py: Python<'py>,
        m: Option<&Bound<'py, PyAny>>,
        device: Device,
    ) -> PyResult<Option<MaskArg<'py>>> {
        let Some(m) = m else { return Ok(None) };
        if let Ok(h) = m.extract::<PyRef<'py, BlockMaskHandle>>() {
            if h.device != device {
                return Err(attnc_error(
                    py,
                    code::DEVICE,
                    &format!(
                        "the block mask's tables are on {}, but q is on {device}",
                        h.device
                    ),
                ));
            }
            return Ok(Some(MaskArg::Handle(h)));
        }
        Ok(Some(MaskArg::Read(Box::new(read_block_mask(
            py, m, device,
        )?))))
    }

    fn get(&self) -> &attnc::external::DeviceBlockMask {
        match self {
            MaskArg::Handle(h) => &h.mask,
            MaskArg::Read(m) => m,
        }
    }
}

/// The tensors of a decode call read as attnc sees them, with the binding's shape
/// (`lkv` = the cache's capacity) and the cache layout; ranks and head counts checked
/// (E0320 naming the tensor).
struct CacheCall {
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    seq_lens: Option<TensorArg>,
    table: Option<TensorArg>,
    shape: Shape,
    layout: attnc::external::CacheLayout,
}

impl CacheCall {
    fn read(
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        seq_lens: Option<&Bound<'_, PyAny>>,
        page_table: Option<Bound<'_, PyAny>>,
    ) -> PyResult<CacheCall> {
        use attnc::external::CacheLayout;
        let read = |name: &str, t: &Bound<'_, PyAny>| TensorArg::read(py, name, t);
        let paged = page_table.is_some();
        let (kn, vn) = if paged {
            ("k_cache", "v_cache")
        } else {
            ("k", "v")
        };
        let (q, k, v) = (read("q", q)?, read(kn, k_cache)?, read(vn, v_cache)?);
        let seq_lens = seq_lens.map(|t| read("seq_lens", t)).transpose()?;
        let table = page_table.map(|t| read("page_table", &t)).transpose()?;
        let err = |name: &str, what: String| attnc_error(py, "E0320", &format!("`{name}` {what}"));
        for t in [&q, &k, &v] {
            if t.shape.len() != 4 {
                return Err(err(
                    &t.name,
                    format!("has shape {:?}, expected rank 4", t.shape),
                ));
            }
        }
        let (hkv, layout) = match &table {
            None => (
                k.shape[1],
                CacheLayout::Contiguous {
                    lkv_max: k.shape[2],
                },
            ),
            Some(t) => {
                if t.shape.len() != 2 || t.shape[0] != q.shape[0] {
                    return Err(err(
                        "page_table",
                        format!(
                            "has shape {:?}, expected [B, max_pages] with B = {}",
                            t.shape, q.shape[0]
                        ),
                    ));
                }
                let layout = CacheLayout::Paged {
                    num_pages: k.shape[0],
                    page_size: k.shape[1],
                    max_pages: t.shape[1],
                };
                (k.shape[2], layout)
            }
        };
        let shape = Shape {
            b: q.shape[0],
            hq: q.shape[1],
            hkv,
            lq: q.shape[2],
            lkv: layout.capacity(),
            d: q.shape[3],
            dv: v.shape[3],
        };
        if shape.hkv == 0 || !shape.hq.is_multiple_of(shape.hkv) {
            return Err(err(
                kn,
                format!(
                    "has {} kv heads; q's {} heads must be a positive multiple of them (GQA)",
                    shape.hkv, shape.hq
                ),
            ));
        }
        let want_k: Vec<usize> = match layout {
            CacheLayout::Contiguous { lkv_max } => vec![shape.b, hkv, lkv_max, shape.d],
            CacheLayout::Paged {
                num_pages,
                page_size,
                ..
            } => vec![num_pages, page_size, hkv, shape.d],
        };
        let mut want_v = want_k.clone();
        want_v[3] = shape.dv;
        for (t, want) in [(&k, &want_k), (&v, &want_v)] {
            if &t.shape != want {
                return Err(err(
                    &t.name,
                    format!("has shape {:?}, expected {want:?}", t.shape),
                ));
            }
        }
        if let Some(sl) = &seq_lens
            && sl.shape != [shape.b]
        {
            return Err(err(
                "seq_lens",
                format!("has shape {:?}, expected [{}]", sl.shape, shape.b),
            ));
        }
        Ok(CacheCall {
            q,
            k,
            v,
            seq_lens,
            table,
            shape,
            layout,
        })
    }

    /// The CUDA binding of the call: q's device, bf16/f16.
    fn cuda_key(&self, py: Python<'_>, scale: Option<f64>) -> PyResult<BindKey> {
        cuda_key(py, &self.q, self.shape, scale, "decoding on CUDA")
    }

    /// A zero-copy CUDA call's tensors read ([`Self::read`]), its binding's key, and the
    /// inputs, `seq_lens` (when given), the page table and the outputs o, lse checked as
    /// the kernels read them: contiguous, q's device, their dtypes and shapes.
    #[allow(clippy::type_complexity)]
    fn read_checked(
        py: Python<'_>,
        (q, k_cache, v_cache): (&Bound<'_, PyAny>, &Bound<'_, PyAny>, &Bound<'_, PyAny>),
        seq_lens: Option<&Bound<'_, PyAny>>,
        page_table: Option<Bound<'_, PyAny>>,
        (o, lse): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
        scale: Option<f64>,
    ) -> PyResult<(CacheCall, BindKey, TensorArg, TensorArg)> {
        let call = CacheCall::read(py, q, k_cache, v_cache, seq_lens, page_table)?;
        let key = call.cuda_key(py, scale)?;
        let (device, dtype, s) = (key.device, key.dtype, call.shape);
        let (o, lse) = (
            TensorArg::read(py, "o", o)?,
            TensorArg::read(py, "lse", lse)?,
        );
        if let Some(seq) = &call.seq_lens {
            check_buffer(py, seq, &[s.b], DType::I32, device)?;
        }
        if let Some(t) = &call.table {
            check_buffer(py, t, &t.shape.clone(), DType::I32, device)?;
        }
        for t in [&call.q, &call.k, &call.v] {
            check_buffer(py, t, &t.shape.clone(), dtype, device)?;
        }
        check_outputs(py, device, &s, dtype, &o, &lse)?;
        Ok((call, key, o, lse))
    }
}

/// Turns on (or off) the process-wide host-time laps of the zero-copy decode call's steps
/// (`attnc::host_trace`; off by default), for `python/bench/decode_host.py`.
#[pyfunction]
fn host_trace(on: bool) {
    attnc::host_trace::enable(on);
}

/// Each step's summed nanoseconds and lap count since the last call, then zeroed:
/// `[(name, ns, laps)]` in call order (`attnc::host_trace::take`).
#[pyfunction]
fn host_trace_take() -> Vec<(&'static str, u64, u64)> {
    attnc::host_trace::take()
}

/// Whether `Attention.decode` on CUDA tensors of this shape runs zero-copy (the split-KV
/// kernels: D = Dv in {64, 128} at any Lq, chunked prefill included, or in {32, 256} at
/// Lq <= 16); other shapes take host copies.
#[pyfunction]
fn decode_cuda_applies(lq: usize, d: usize, dv: usize) -> bool {
    attnc::external::decode_cuda_applies(lq, d, dv)
}

/// A mutable f32 slice over a checked output buffer.
///
/// # Safety
/// As [`f32_slice`], and nothing else reads or writes the buffer during `'a`.
unsafe fn f32_slice_mut<'a>(ptr: usize, len: usize) -> &'a mut [f32] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(ptr as *mut f32, len) }
}

#[pymodule]
fn _attnc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(decode_cuda_applies, m)?)?;
    m.add_function(wrap_pyfunction!(host_trace, m)?)?;
    m.add_function(wrap_pyfunction!(host_trace_take, m)?)?;
    m.add_function(wrap_pyfunction!(block_mask_handle, m)?)?;
    m.add_class::<Module>()?;
    m.add_class::<BlockMaskHandle>()?;
    m.add_class::<Attention>()?;
    m.add("AttncError", m.py().get_type::<errors::AttncError>())?;
    m.add("CompileError", m.py().get_type::<errors::CompileError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DECODE_RUNS_MIN_LQ", attnc::external::DECODE_RUNS_MIN_LQ)?;
    Ok(())
}
