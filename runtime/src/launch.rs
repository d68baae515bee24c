//! The seam between compiling and launching: per backend, what `bind` prepares and
//! how `forward` runs it.
//!
//! In: a verified `Program`, bind options, host inputs and the converted captures.
//! Out: `O` and `LSE` as f32 vectors in the layouts of `attnc_compiler::shape`.
//! Block maps: index-only masks are classified once at bind time (the shape is known);
//! masks over params are classified at each launch from the param values; masks over
//! captured tensors, on the CUDA backend, get their table built on the GPU at each
//! launch by the block-table kernel (JIT-compiled and cached beside the attention
//! kernel; exact; same stream, no host pass), and elsewhere (CPU, or
//! `BindOptions::gpu_block_tables` off, or a table too large for the device) from
//! per-block tensor summaries on the host (never by evaluating every point).
//! The GPU builder is passed the bounds of the mask's linear conjuncts for the launch
//! (`classify::Implied`, so it skips the tiles outside them), and its table is kept
//! after a successful call with the exact bits of the mask's tensors and params, the
//! shape and tiles ([`TableDeps`]): the next call with equal ones reuses it and launches
//! the attention kernel alone.
//! CUDA kernels whose kv bounds are a closed form (`PtxKernel::kv_bounds`: no mask, or
//! a conjunction of linear constraints) get no block maps at all: each launch passes the
//! closed form's offsets for its params (`classify::closed_form_bounds`), or asks for
//! every block partial when the mask's i32 arithmetic may wrap for that launch.
//! CUDA JIT: `bind` gets a [`JitKernel`] from the process's [`JitCache`] under the tier
//! policy of the bind options (or `ATTNC_JIT_TIERS`); each `forward` takes the module
//! current at its start and releases retired ones after it has synchronized.

use crate::api::{BindOptions, Variant, out_of_bounds};
use crate::cache::DiskCache;
use crate::cuda::{
    BuiltTable, CudaDevice, CudaError, CudaKernel, DeviceProblem, DeviceTable, JitCache, JitKernel,
    JitStats, JitTier, JitTiers, KvBlocks,
};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::classify::{
    Implied, MaskInfo, Tier, analyze, build_block_maps, closed_form_bounds,
};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions};
use attnc_compiler::backend::llvm::{InputType, KvBounds, PtxOptions};
use attnc_compiler::interp::EvalError;
use attnc_compiler::interp::{Bindings, TensorData};
use attnc_compiler::ir::{Inst, Program, Scalar};
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use std::sync::{Arc, OnceLock};

/// What a bound variant holds for its backend.
pub(crate) enum Kernel {
    Reference,
    Cpu {
        kernel: Box<CpuKernel>,
        info: MaskInfo,
        maps: Option<BlockMaps>,
        /// q, k, v as f32, reused between calls.
        inputs: [Vec<f32>; 3],
    },
    Cuda {
        /// The best module loaded so far (tiered JIT: swapped to the optimized one when
        /// it is ready; each call takes the current one once).
        kernel: Arc<JitKernel>,
        /// How the JIT served the bind.
        jit: JitStats,
        info: MaskInfo,
        maps: Option<BlockMaps>,
        /// The block-table kernel, for masks over captured tensors with
        /// `gpu_block_tables` on, with the mask's linear conjuncts whose bounds each
        /// launch passes it (when it was built to skip the tiles outside them).
        table: Option<TableBuilder>,
        /// The table the builder made at the last successful `forward`, with what it was
        /// built from; reused while that stays the same.
        kept: Option<Box<KeptTable>>,
        /// `(built, reused)`: forwards that ran the block-table kernel / reused a kept table.
        table_counts: (u64, u64),
    },
}

/// The block-table kernel of a binding and what its launches need from the host.
pub(crate) struct TableBuilder {
    kernel: Arc<CudaKernel>,
    /// The mask's linear conjuncts, when the kernel skips the tiles outside them
    /// (`PtxKernel::table_skip`).
    implied: Option<Box<Implied>>,
    deps: TableDeps,
}

/// The captured tensors and params a mask reads (indices into `Bindings`): what its
/// block table depends on besides the shape and tiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableDeps {
    mask_tensors: Vec<usize>,
    mask_params: Vec<usize>,
}

/// What a device-built block table was built from: the shape, the tiles and the exact
/// bits of the params and captured tensors (dims and elements) the mask reads. Equal
/// keys give equal tables (the builder is deterministic), so the table is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableKey {
    shape: Shape,
    tiles: (u32, u32),
    params: Vec<u32>,
    tensors: Vec<(Vec<usize>, Vec<u32>)>,
}

/// A device-built table kept after a successful forward.
pub(crate) struct KeptTable {
    key: TableKey,
    table: BuiltTable,
}

fn scalar_bits(x: &Scalar) -> u32 {
    match x {
        Scalar::Bool(b) => *b as u32,
        Scalar::I32(v) => *v as u32,
        Scalar::F32(v) => v.to_bits(),
    }
}

fn tensor_bits(d: &TensorData) -> Vec<u32> {
    match d {
        TensorData::I32(v) => v.iter().map(|x| *x as u32).collect(),
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
    }
}

/// Whether `d` holds exactly the elements `bits` (float bits compared, so -0.0 and NaN
/// payloads count as changes).
fn same_bits(d: &TensorData, bits: &[u32]) -> bool {
    match d {
        TensorData::I32(v) => {
            v.len() == bits.len() && v.iter().zip(bits).all(|(a, b)| *a as u32 == *b)
        }
        TensorData::F32(v) => {
            v.len() == bits.len() && v.iter().zip(bits).all(|(a, b)| a.to_bits() == *b)
        }
    }
}

impl TableBuilder {
    fn new(kernel: Arc<CudaKernel>, program: &Program) -> Self {
        // the builder's skip form is derived from the same program (deterministic)
        let implied = kernel
            .meta()
            .table_skip
            .as_ref()
            .and_then(|_| Implied::derive(program))
            .map(Box::new);
        TableBuilder {
            kernel,
            implied,
            deps: TableDeps::new(program),
        }
    }

    /// The skip bounds of one launch (`None`: skip nothing, or no skip form).
    fn skip(&self, opts: &BindOptions, bindings: &Bindings) -> Result<Option<Vec<Bound>>> {
        match &self.implied {
            Some(imp) => imp
                .bounds(&opts.shape, bindings)
                .map_err(|e| Error::Backend {
                    backend: "blocks",
                    message: e.to_string(),
                }),
            None => Ok(None),
        }
    }
}

impl TableDeps {
    fn new(program: &Program) -> Self {
        let (mut mask_tensors, mut mask_params) = (Vec::new(), Vec::new());
        if let Some(f) = &program.mask {
            for (live, inst) in f.live().iter().zip(&f.insts) {
                match inst {
                    Inst::Load { tensor, .. } if *live => mask_tensors.push(tensor.0 as usize),
                    Inst::Param(p) if *live => mask_params.push(p.0 as usize),
                    _ => {}
                }
            }
        }
        mask_tensors.sort_unstable();
        mask_tensors.dedup();
        mask_params.sort_unstable();
        mask_params.dedup();
        TableDeps {
            mask_tensors,
            mask_params,
        }
    }

    /// The key of a launch (copies the mask's tensors: call on a miss only).
    fn key(&self, shape: &Shape, tiles: (u32, u32), bind: &Bindings) -> TableKey {
        TableKey {
            shape: *shape,
            tiles,
            params: self
                .mask_params
                .iter()
                .map(|&i| bind.params.get(i).map_or(u32::MAX, scalar_bits))
                .collect(),
            tensors: self
                .mask_tensors
                .iter()
                .map(|&i| match bind.tensors.get(i) {
                    Some(t) => (t.dims.clone(), tensor_bits(&t.data)),
                    None => (vec![], vec![]),
                })
                .collect(),
        }
    }

    /// Whether a launch has key `key`, compared in place (no copy).
    fn matches(&self, key: &TableKey, shape: &Shape, tiles: (u32, u32), bind: &Bindings) -> bool {
        key.shape == *shape
            && key.tiles == tiles
            && key.params.len() == self.mask_params.len()
            && self
                .mask_params
                .iter()
                .zip(&key.params)
                .all(|(&i, w)| bind.params.get(i).is_some_and(|x| scalar_bits(x) == *w))
            && key.tensors.len() == self.mask_tensors.len()
            && self
                .mask_tensors
                .iter()
                .zip(&key.tensors)
                .all(|(&i, (dims, bits))| {
                    bind.tensors
                        .get(i)
                        .is_some_and(|t| t.dims == *dims && same_bits(&t.data, bits))
                })
    }
}

impl Kernel {
    /// The kv-bounds source of a CUDA kernel.
    pub(crate) fn kv_bounds(&self) -> Option<KvBounds> {
        match self {
            Kernel::Cuda { kernel, .. } => Some(kernel.current().0.meta().kv_bounds.clone()),
            _ => None,
        }
    }
}

/// The process's CUDA device 0 and its JIT cache (in memory, PTX and cubins on disk), opened
/// on first use. Opening a context costs tens of milliseconds, so all bindings share it.
struct Gpu {
    device: CudaDevice,
    jit: JitCache,
}

static GPU: OnceLock<Result<Gpu, CudaError>> = OnceLock::new();

fn gpu() -> Result<&'static Gpu, CudaError> {
    GPU.get_or_init(|| {
        let device = CudaDevice::new(0)?;
        let level = crate::cuda::jit::opt_level_from_env().map_err(CudaError::Mismatch)?;
        Ok(Gpu {
            device,
            jit: JitCache::new(DiskCache::from_env()).with_opt_level(level),
        })
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// The process's CUDA device (opened on first use), for the decode kernels.
pub(crate) fn cuda_device() -> Result<&'static CudaDevice> {
    gpu()
        .map(|g| &g.device)
        .map_err(|e| Error::BackendUnavailable {
            backend: "cuda",
            reason: e.to_string(),
        })
}

/// Waits (at most `timeout` in all) for the tiered JIT's background compiles of this
/// process to finish, so that their optimized cubins reach the disk cache before a
/// short-lived program exits. Returns at once when the CUDA backend was never used.
pub fn wait_for_background_jit(timeout: std::time::Duration) {
    if let Some(Ok(g)) = GPU.get() {
        g.jit.wait_pending(timeout);
    }
}

/// Name and compute capability of the GPU the CUDA backend would use.
pub fn cuda_device_info() -> Result<String> {
    let g = gpu().map_err(|e| Error::BackendUnavailable {
        backend: "cuda",
        reason: e.to_string(),
    })?;
    let (major, minor) = g.device.capability();
    let arch = g.device.arch();
    let at = |d| PtxOptions::new(arch, d, d, InputType::Bf16).target_cpu();
    Ok(format!(
        "{} (sm_{major}{minor}, PTX target {} at D64/D128, {} otherwise)",
        g.device.name(),
        at(128),
        at(96)
    ))
}

/// The CUDA backward of one `Bound::backward` call (`cuda::backward`), on the process's
/// device: the program's three backward kernels (generated and loaded once per process),
/// its launch blocks, upload, launches, download. Gradients of captured tensors and
/// params are not computed on the GPU: a program whose score needs them is refused.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_backward(
    variant: &Variant,
    shape: &attnc_compiler::shape::Shape,
    dtype: DType,
    checked: bool,
    (q, k, v, o, dout): (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor),
    lse: &[f32],
    dlse: Option<&[f32]>,
    scale: f32,
    bind: &Bindings,
) -> Result<attnc_compiler::backend::cranelift::backward::Gradients> {
    use crate::cuda::backward::{BackwardJit, LaunchBlocks};
    static JIT: OnceLock<BackwardJit> = OnceLock::new();
    let input = match dtype {
        DType::BF16 => InputType::Bf16,
        DType::F16 => InputType::F16,
        other => {
            return Err(Error::InputDType {
                which: "q, k, v, o, do (the CUDA backend takes bf16 or f16; use the cpu backend for f32)".into(),
                expected: "bf16 or f16".into(),
                got: other,
            });
        }
    };
    let p = variant.program();
    let err = |e| cuda_error(variant, e);
    let g = gpu().map_err(err)?;
    let mut opts = PtxOptions::backward(g.device.arch(), shape.d as u32, shape.dv as u32, input);
    opts.checked = checked;
    let kernels = JIT
        .get_or_init(BackwardJit::default)
        .get(&g.device, p, &opts)
        .map_err(err)?;
    let blocks = LaunchBlocks::new(&kernels, p, shape, bind).map_err(err)?;
    let bits = |t: &Tensor| t.to_u16_bits().unwrap_or_default();
    let grads = kernels
        .backward_host(
            &g.device,
            shape,
            (&bits(q), &bits(k), &bits(v), &bits(o)),
            lse,
            &bits(dout),
            dlse,
            scale,
            bind,
            blocks.as_blocks(),
        )
        .map_err(err)?;
    let f32s = |x: Vec<u16>| -> Vec<f32> {
        x.into_iter()
            .map(|b| match input {
                InputType::Bf16 => half::bf16::from_bits(b).to_f32(),
                InputType::F16 => half::f16::from_bits(b).to_f32(),
            })
            .collect()
    };
    Ok(attnc_compiler::backend::cranelift::backward::Gradients {
        dq: f32s(grads.dq),
        dk: f32s(grads.dk),
        dv: f32s(grads.dv),
        tensors: vec![None; p.tensors.len()],
        params: vec![None; p.params.len()],
    })
}

fn cuda_error(variant: &Variant, e: CudaError) -> Error {
    match e {
        CudaError::OutOfBounds {
            in_score,
            inst,
            tensor,
            index,
        } => {
            let p = variant.program();
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
            out_of_bounds(variant, &e)
        }
        CudaError::NoDriver | CudaError::NoDevice(_) | CudaError::UnsupportedGpu(..) => {
            Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            }
        }
        other => Error::Backend {
            backend: "cuda",
            message: other.to_string(),
        },
    }
}

fn cpu_error(variant: &Variant, e: CpuError) -> Error {
    match e {
        CpuError::Eval(e) => out_of_bounds(variant, &e),
        other => Error::Backend {
            backend: "cpu",
            message: other.to_string(),
        },
    }
}

pub(crate) fn prepare(program: &Program, opts: &BindOptions) -> Result<Kernel> {
    match opts.backend {
        crate::api::Backend::Reference => Ok(Kernel::Reference),
        crate::api::Backend::Cpu => {
            let cpu_opts = CpuOptions {
                checked: opts.checked,
                ..CpuOptions::default()
            };
            let kernel =
                attnc_compiler::backend::cranelift::compile(program, &cpu_opts).map_err(|e| {
                    Error::Backend {
                        backend: "cpu",
                        message: e.to_string(),
                    }
                })?;
            let info = analyze(program);
            Ok(Kernel::Cpu {
                kernel: Box::new(kernel),
                info,
                maps: None,
                inputs: Default::default(),
            })
        }
        crate::api::Backend::Cuda => {
            let input = match opts.dtype {
                DType::BF16 => InputType::Bf16,
                DType::F16 => InputType::F16,
                other => {
                    return Err(Error::InputDType {
                        which: "q, k, v (the CUDA backend takes bf16 or f16; convert them, or use the cpu backend for f32)".into(),
                        expected: "bf16 or f16".into(),
                        got: other,
                    });
                }
            };
            // a bad setting is reported before (and without) a device
            let tiers = match opts.jit_tiers {
                Some(t) => t,
                None => JitTiers::from_env().map_err(Error::Usage)?,
            };
            let g = gpu().map_err(|e| Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            })?;
            let mut popts = PtxOptions::new(
                g.device.arch(),
                opts.shape.d as u32,
                opts.shape.dv as u32,
                input,
            );
            popts.checked = opts.checked;
            let (kernel, jit) = g
                .jit
                .get_tiered(&g.device, program, &popts, tiers)
                .map_err(|e| Error::Backend {
                    backend: "cuda",
                    message: e.to_string(),
                })?;
            let info = analyze(program);
            let table = if info.tier == Tier::Tensors && opts.gpu_block_tables {
                let (t, _stats) =
                    g.jit
                        .get_table(&g.device, program, &popts)
                        .map_err(|e| Error::Backend {
                            backend: "cuda",
                            message: e.to_string(),
                        })?;
                Some(TableBuilder::new(t, program))
            } else {
                None
            };
            Ok(Kernel::Cuda {
                kernel,
                jit,
                info,
                maps: None,
                table,
                kept: None,
                table_counts: (0, 0),
            })
        }
    }
}

/// Whether a launch's block maps stay valid for every later launch of the binding.
fn reusable(info: &MaskInfo, opts: &BindOptions) -> bool {
    matches!(info.tier, Tier::Dense | Tier::IndexOnly) && !opts.checked
}

/// The block maps of one launch for a kernel with these block sizes. In checked mode
/// every block is partial, so that every mask read the source performs is checked.
pub(crate) fn launch_maps(
    program: &Program,
    info: &MaskInfo,
    opts: &BindOptions,
    q_block: usize,
    kv_block: usize,
    bindings: &Bindings,
) -> Result<BlockMaps> {
    if opts.checked && program.mask.is_some() {
        let s = opts.shape;
        return Ok(BlockMaps::single(
            attnc_compiler::analysis::blockmap::BlockMap::all_partial(
                s.lq, s.lkv, q_block, kv_block,
            ),
        ));
    }
    build_block_maps(program, info, &opts.shape, q_block, kv_block, bindings).map_err(|e| {
        Error::Backend {
            backend: "blocks",
            message: e.to_string(),
        }
    })
}

/// The closed form's bounds of one launch of a closed-form CUDA kernel (`None`: every
/// block partial, see `classify::closed_form_bounds`); `Ok(None)` for a table kernel.
fn closed_form_launch(
    kernel: &CudaKernel,
    program: &Program,
    opts: &BindOptions,
    bindings: &Bindings,
) -> Result<Option<Option<Vec<Bound>>>> {
    let KvBounds::ClosedForm(cf) = &kernel.meta().kv_bounds else {
        return Ok(None);
    };
    closed_form_bounds(program, cf, &opts.shape, bindings)
        .map(Some)
        .map_err(|e| Error::Backend {
            backend: "blocks",
            message: e.to_string(),
        })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
) -> Result<(Vec<f32>, Vec<f32>)> {
    match kernel {
        Kernel::Reference => {
            let out = reference::attention(
                variant.program(),
                &opts.shape,
                &q.to_f32(),
                &k.to_f32(),
                &v.to_f32(),
                scale,
                bindings,
            )
            .map_err(|e| out_of_bounds(variant, &e))?;
            Ok((out.o, out.lse))
        }
        Kernel::Cpu { inputs, .. } => {
            let s = opts.shape;
            let mut o = vec![0f32; s.o_len()];
            let mut lse = vec![0f32; s.lse_len()];
            let [qf, kf, vf] = std::mem::take(inputs);
            let (mut qf, mut kf, mut vf) = (qf, kf, vf);
            q.read_f32_into(&mut qf);
            k.read_f32_into(&mut kf);
            v.read_f32_into(&mut vf);
            let r = cpu_forward_into(
                kernel, variant, opts, scale, &qf, &kf, &vf, bindings, &mut o, &mut lse,
            );
            if let Kernel::Cpu { inputs, .. } = kernel {
                *inputs = [qf, kf, vf];
            }
            r.map(|()| (o, lse))
        }
        Kernel::Cuda {
            kernel: jit,
            info,
            maps,
            table,
            kept,
            table_counts,
            ..
        } => {
            let g = gpu().map_err(|e| cuda_error(variant, e))?;
            // this call keeps the module it starts with, whatever is swapped in meanwhile
            let (kernel, _) = jit.current();
            let (p, built) = cuda_problem(
                g, &kernel, info, maps, table, kept, variant, opts, scale, q, k, v, bindings,
            )?;
            kernel
                .launch(&g.device, &p)
                .map_err(|e| cuda_error(variant, e))?;
            let (o, lse) = kernel
                .download(&g.device, &p)
                .map_err(|e| cuda_error(variant, e))?;
            // a table built by this call (and free of checked-mode errors) serves later
            // calls with the same key
            match (built, p.built_table()) {
                (Some(key), Some(table)) => {
                    *kept = Some(Box::new(KeptTable { key, table }));
                    table_counts.0 += 1;
                }
                (None, Some(_)) => table_counts.1 += 1,
                _ => {}
            }
            drop(kernel);
            jit.release_retired(&g.device)
                .map_err(|e| cuda_error(variant, e))?;
            let o_t = Tensor::from_bytes(
                vec![o.len()],
                opts.dtype,
                o.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
            .ok_or_else(|| Error::Backend {
                backend: "cuda",
                message: "output size".into(),
            })?;
            Ok((o_t.to_f32(), lse))
        }
    }
}

/// CPU backend: runs the kernel of a binding on f32 slices in the layouts of
/// `attnc_compiler::shape` and writes `o` and `lse` (caller-owned buffers of the shape's
/// lengths; checked). Block maps are built per launch, or once where the shape fixes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cpu_forward_into(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bindings: &Bindings,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    let Kernel::Cpu {
        kernel, info, maps, ..
    } = kernel
    else {
        return Err(Error::Usage(format!(
            "this binding runs on the {} backend, not on the CPU",
            opts.backend.name()
        )));
    };
    let launch;
    let maps = match maps {
        Some(m) => &*m,
        None => {
            let built = launch_maps(
                variant.program(),
                info,
                opts,
                kernel.q_block(),
                kernel.kv_block(),
                bindings,
            )?;
            if reusable(info, opts) {
                // index-only: the shape fixes the maps; keep them for later calls
                &*maps.insert(built)
            } else {
                launch = built;
                &launch
            }
        }
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    kernel
        .run(&opts.shape, q, k, v, scale, bindings, maps, threads, o, lse)
        .map_err(|e| cpu_error(variant, e))
}

/// The block-table kernel to use for this launch, if the table is built on the GPU: a
/// builder exists (tensor masks, `gpu_block_tables`) and the table fits on the device.
fn device_table<'a>(
    kernel: &CudaKernel,
    table: &'a Option<TableBuilder>,
    info: &MaskInfo,
    opts: &BindOptions,
) -> Option<&'a TableBuilder> {
    let t = table.as_ref()?;
    let m = kernel.meta();
    let geom = DeviceTable::new(&opts.shape, m.q_block, m.kv_block, info.uses_b, info.uses_h);
    geom.capacity(&opts.shape).map(|_| t)
}

/// Uploads one launch's inputs and provides its block table: the device-built table of
/// an earlier call (`kept`) when the mask's tensors, params and the shape are the same;
/// else built on the device by the block-table kernel (enqueued, same stream; the key
/// it was built from comes back, for the caller to keep the table under once the call
/// succeeded); or built on the host (kept for later calls where it cannot change) and
/// uploaded.
#[allow(clippy::too_many_arguments)]
fn cuda_problem(
    g: &Gpu,
    kernel: &CudaKernel,
    info: &MaskInfo,
    maps: &mut Option<BlockMaps>,
    table: &Option<TableBuilder>,
    kept: &Option<Box<KeptTable>>,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
) -> Result<(DeviceProblem, Option<TableKey>)> {
    let bits = |t: &Tensor| {
        t.to_u16_bits().ok_or_else(|| Error::InputDType {
            which: "q/k/v".into(),
            expected: "bf16 or f16".into(),
            got: t.dtype(),
        })
    };
    let (q, k, v) = (bits(q)?, bits(k)?, bits(v)?);
    if let Some(builder) = device_table(kernel, table, info, opts) {
        let tiles = (kernel.meta().q_block, kernel.meta().kv_block);
        if let Some(kt) = kept
            && builder.deps.matches(&kt.key, &opts.shape, tiles, bindings)
        {
            let p = kernel
                .upload_with_table(
                    &g.device,
                    &opts.shape,
                    &q,
                    &k,
                    &v,
                    scale,
                    bindings,
                    &kt.table,
                )
                .map_err(|e| cuda_error(variant, e))?;
            return Ok((p, None));
        }
        let key = builder.deps.key(&opts.shape, tiles, bindings);
        let p = kernel
            .upload_for_table(
                &g.device,
                &opts.shape,
                &q,
                &k,
                &v,
                scale,
                bindings,
                info.uses_b,
                info.uses_h,
            )
            .map_err(|e| cuda_error(variant, e))?;
        let skip = builder.skip(opts, bindings)?;
        builder
            .kernel
            .build_table(&g.device, &p, skip.as_deref())
            .map_err(|e| cuda_error(variant, e))?;
        return Ok((p, Some(key)));
    }
    if let Some(bounds) = closed_form_launch(kernel, variant.program(), opts, bindings)? {
        return kernel
            .upload(
                &g.device,
                &opts.shape,
                &q,
                &k,
                &v,
                scale,
                bindings,
                KvBlocks::ClosedForm(bounds.as_deref()),
            )
            .map(|p| (p, None))
            .map_err(|e| cuda_error(variant, e));
    }
    let (qb, kb) = (
        kernel.meta().q_block as usize,
        kernel.meta().kv_block as usize,
    );
    let launch;
    let maps = match maps {
        Some(m) => &*m,
        None => {
            let built = launch_maps(variant.program(), info, opts, qb, kb, bindings)?;
            if reusable(info, opts) {
                &*maps.insert(built)
            } else {
                launch = built;
                &launch
            }
        }
    };
    kernel
        .upload(
            &g.device,
            &opts.shape,
            &q,
            &k,
            &v,
            scale,
            bindings,
            KvBlocks::Maps(maps),
        )
        .map(|p| (p, None))
        .map_err(|e| cuda_error(variant, e))
}

/// For the CUDA backend: uploads the inputs once and times `iters` back-to-back launches
/// on the device (CUDA events, median of 3 repetitions), excluding host transfers, of the
/// module current at the start (a tier swapped in meanwhile is not mixed in); returns the
/// milliseconds and that module's tier. `None` for backends that run on the host (time
/// `forward` instead).
#[allow(clippy::too_many_arguments)]
pub(crate) fn device_time_ms(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
    iters: usize,
) -> Result<Option<(f64, JitTier)>> {
    let Kernel::Cuda {
        kernel: jit,
        info,
        maps,
        table,
        kept,
        ..
    } = kernel
    else {
        return Ok(None);
    };
    let g = gpu().map_err(|e| cuda_error(variant, e))?;
    let (kernel, tier) = jit.current();
    // times the attention kernel alone; a table built here is not kept (no error check)
    let (problem, _) = cuda_problem(
        g, &kernel, info, maps, table, kept, variant, opts, scale, q, k, v, bindings,
    )?;
    let ms = kernel
        .time(&g.device, &problem, 3, iters.max(1), 3)
        .map_err(|e| cuda_error(variant, e))?;
    Ok(Some((ms, tier)))
}

/// `(built, reused)`: the forwards of a CUDA binding that built the block table on the
/// GPU and that reused the one kept from an earlier call; `None` for other backends.
pub(crate) fn gpu_table_counts(kernel: &Kernel) -> Option<(u64, u64)> {
    match kernel {
        Kernel::Cuda { table_counts, .. } => Some(*table_counts),
        _ => None,
    }
}

/// The JIT's report of a CUDA binding (`None` for other backends).
pub(crate) fn jit_stats(kernel: &Kernel) -> Option<JitStats> {
    match kernel {
        Kernel::Cuda { jit, .. } => Some(*jit),
        _ => None,
    }
}

/// For a CUDA binding: waits (at most `timeout`) until the optimized module is in use;
/// its timings, or the reason it is not. `None` for other backends.
pub(crate) fn wait_optimized(
    kernel: &Kernel,
    timeout: std::time::Duration,
) -> Option<Result<crate::cuda::ReadyStats, CudaError>> {
    match kernel {
        Kernel::Cuda { kernel, .. } => Some(kernel.wait_optimized(timeout)),
        _ => None,
    }
}

/// For the CUDA backend with the block table built on the GPU: uploads the inputs once
/// and times `iters` back-to-back builds of the table (CUDA events, median of 3).
/// `None` where the table is not built on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn table_time_ms(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
    iters: usize,
) -> Result<Option<f64>> {
    let Kernel::Cuda {
        kernel: jit,
        info,
        maps,
        table,
        ..
    } = kernel
    else {
        return Ok(None);
    };
    let (kernel, _) = jit.current();
    let Some(builder) = device_table(&kernel, table, info, opts) else {
        return Ok(None);
    };
    let g = gpu().map_err(|e| cuda_error(variant, e))?;
    // never the kept table: the build kernel itself is timed, into this problem's table
    let (problem, _) = cuda_problem(
        g, &kernel, info, maps, table, &None, variant, opts, scale, q, k, v, bindings,
    )?;
    let skip = builder.skip(opts, bindings)?;
    let ms = builder
        .kernel
        .time_table(&g.device, &problem, skip.as_deref(), 3, iters.max(1), 3)
        .map_err(|e| cuda_error(variant, e))?;
    Ok(Some(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::interp::BoundTensor;

    fn program() -> Program {
        attnc_compiler::compile_source(
            "tensor doc: i32[B, KV]; tensor bias: f32[KV]; tensor w: f32[KV]; \
             param window: i32; param temp: f32; \
             mask m(b, h, q, kv) { q - kv <= window && doc[b, q] == doc[b, kv] && w[kv] > 0.0 } \
             score s(s, b, h, q, kv) { s * temp + bias[kv] } \
             attention a { mask = m; score = s; }",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .programs
        .remove(0)
    }

    fn bindings(p: &Program) -> Bindings {
        let mut b = Bindings::default();
        for prm in &p.params {
            b.params.push(match prm.name.as_str() {
                "window" => Scalar::I32(16),
                "temp" => Scalar::F32(0.5),
                other => panic!("{other}"),
            });
        }
        for t in &p.tensors {
            b.tensors.push(match t.name.as_str() {
                "doc" => BoundTensor {
                    dims: vec![2, 8],
                    data: TensorData::I32((0..16).map(|i| i / 3).collect()),
                },
                "bias" => BoundTensor {
                    dims: vec![8],
                    data: TensorData::F32(vec![0.25; 8]),
                },
                "w" => BoundTensor {
                    dims: vec![8],
                    data: TensorData::F32(vec![1.0, -1.0, 0.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                },
                other => panic!("{other}"),
            });
        }
        b
    }

    fn index(p: &Program, name: &str) -> usize {
        p.tensors.iter().position(|t| t.name == name).unwrap()
    }

    /// The key of a kept GPU table: equal inputs reuse it; any change to a tensor or
    /// param the mask reads, to the shape or to the tiles rebuilds; what only the score
    /// reads does not count.
    #[test]
    fn table_key_changes_exactly_with_what_the_mask_reads() {
        let p = program();
        let deps = TableDeps::new(&p);
        let shape = Shape {
            b: 2,
            hq: 2,
            hkv: 2,
            lq: 8,
            lkv: 8,
            d: 16,
            dv: 16,
        };
        let tiles = (64, 64);
        let base = bindings(&p);
        let key = deps.key(&shape, tiles, &base);
        assert!(deps.matches(&key, &shape, tiles, &base));
        assert!(deps.matches(&key, &shape, tiles, &base.clone()));
        // each change that must rebuild
        let mut changed: Vec<(&str, Bindings)> = Vec::new();
        let mut b = base.clone();
        if let TensorData::I32(v) = &mut b.tensors[index(&p, "doc")].data {
            v[13] += 1; // one document id
        }
        changed.push(("one doc id", b));
        let mut b = base.clone();
        if let TensorData::F32(v) = &mut b.tensors[index(&p, "w")].data {
            v[2] = -0.0; // == 0.0, but other bits
        }
        changed.push(("0.0 -> -0.0 in w", b));
        let mut b = base.clone();
        b.tensors[index(&p, "doc")].dims = vec![1, 16];
        changed.push(("doc dims", b));
        let mut b = base.clone();
        let wi = p.params.iter().position(|x| x.name == "window").unwrap();
        b.params[wi] = Scalar::I32(-16);
        changed.push(("window", b));
        for (what, b) in &changed {
            assert!(!deps.matches(&key, &shape, tiles, b), "{what}: reused");
            // and the rebuilt table's key matches the new inputs
            let k2 = deps.key(&shape, tiles, b);
            assert!(deps.matches(&k2, &shape, tiles, b), "{what}");
            assert_ne!(k2, key, "{what}");
        }
        let other_shape = Shape { lq: 9, ..shape };
        assert!(!deps.matches(&key, &other_shape, tiles, &base));
        assert!(!deps.matches(&key, &shape, (128, 64), &base));
        // only the score reads `bias` and `temp`: changing them keeps the table
        let mut b = base.clone();
        if let TensorData::F32(v) = &mut b.tensors[index(&p, "bias")].data {
            v[0] = 9.0;
        }
        let ti = p.params.iter().position(|x| x.name == "temp").unwrap();
        b.params[ti] = Scalar::F32(2.0);
        assert!(deps.matches(&key, &shape, tiles, &b));
        // a missing tensor never matches
        let mut b = base.clone();
        b.tensors.truncate(index(&p, "doc"));
        assert!(!deps.matches(&key, &shape, tiles, &b));
    }
}
