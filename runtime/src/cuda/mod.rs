//! The CUDA runtime: loads the PTX kernels of `attnc_compiler::backend::llvm` with the
//! driver API (through cudarc, loaded dynamically) and launches them.
//!
//! In: a [`PtxKernel`], a [`Shape`], Q/K/V as 16-bit bit patterns (bf16 or f16, the
//! kernel's input type), the softmax scale, [`Bindings`] (params, captured tensors as
//! i32/f32) and the launch's [`KvBlocks`]: [`BlockMaps`] built for the kernel's
//! `q_block` x `kv_block` when the kernel reads the block table, or the closed form's
//! bounds when it computes its kv ranges itself ([`PtxKernel::kv_bounds`]; no table is
//! uploaded then, only one i64 offset per constraint).
//! Out: O (same 16-bit type) and LSE (f32, natural log), or a [`CudaError`].
//!
//! Everything builds and runs without CUDA: [`CudaDevice::new`] returns
//! [`CudaError::NoDriver`] / [`CudaError::NoDevice`] where there is no driver or GPU.
//!
//! API:
//! - [`CudaDevice::new`]`(ordinal)`: context + stream; [`CudaDevice::arch`] picks sm_80/sm_90.
//! - [`CudaKernel::load`]`(&dev, &PtxKernel)`: `cuModuleLoadData`, raises the dynamic
//!   shared-memory limit when the kernel needs more than 48 KiB.
//! - [`CudaKernel::forward_host`]: upload, launch, download (one call).
//! - [`CudaKernel::upload`] / [`CudaKernel::launch`] / [`CudaKernel::download`] and
//!   [`CudaKernel::time`]: the device-resident path for benchmarks (CUDA events).
//! - [`CudaKernel::upload_for_table`] + [`CudaKernel::build_table`]: the block table made
//!   on the device by the block-table kernel (`backend::llvm::blocktable`) from the
//!   device-resident captured tensors, on the same stream, before the attention launch
//!   (masks over captured tensors; no host pass and no table upload);
//!   [`CudaKernel::download_table`] reads it back (tests), [`CudaKernel::time_table`]
//!   times it. `build_table` takes the launch's bounds of the mask's linear conjuncts
//!   (`PtxKernel::table_skip`; tiles outside them are not evaluated). The table can be
//!   kept ([`DeviceProblem::built_table`]) and read by a later launch
//!   ([`CudaKernel::upload_with_table`]) when its inputs are unchanged.
//! - [`JitCache`]: program + options -> loaded kernel ([`JitKernel`]; attention or
//!   block-table builder, under different keys), through an in-memory map and the on-disk
//!   cache of [`crate::cache`]: the optimized cubin (keyed by the device and driver too)
//!   is loaded without any PTX compile; else the PTX (from disk or generated) is compiled
//!   by the driver's linker, in tiers (see [`jit`]).

pub mod backward;
pub mod decode;
pub mod jit;

pub use jit::{JitKernel, JitTier, JitTiers, OPTIMIZED_LEVEL, ReadyStats};

use crate::cache::{DiskCache, Lookup, cache_key, compiler_build_id, cubin_key};
use attnc_compiler::analysis::blockmap::{BlockMaps, Run};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::llvm::bounds::kernel_offsets;
use attnc_compiler::backend::llvm::{
    self, Arch, EmitText, EmitTimes, KernelParam, KvBounds, LlvmError, PtxKernel, PtxOptions,
};
use attnc_compiler::interp::{Bindings, TensorData};
use attnc_compiler::ir::{Program, Scalar, write_program};
use attnc_compiler::shape::Shape;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda is not installed)")]
    NoDriver,
    #[error("no CUDA device with ordinal {0}")]
    NoDevice(usize),
    #[error("unsupported GPU: compute capability {0}.{1} (attnc needs 8.0 or newer)")]
    UnsupportedGpu(i32, i32),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("PTX generation: {0}")]
    Codegen(#[from] LlvmError),
    #[error("{0}")]
    Mismatch(String),
    /// Checked mode: the first out-of-range captured-tensor read of the launch.
    #[error("out-of-range read of tensor #{tensor} at {index:?} (instruction v{inst} of the {})", if *in_score { "score" } else { "mask" })]
    OutOfBounds {
        in_score: bool,
        inst: u32,
        tensor: u32,
        index: Vec<i32>,
    },
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

/// What one launch tells the kernel about its kv blocks; must match the kernel's
/// [`PtxKernel::kv_bounds`].
#[derive(Clone, Copy, Debug)]
pub enum KvBlocks<'a> {
    /// Block maps for a [`KvBounds::Table`] kernel, built for its block sizes.
    Maps(&'a BlockMaps),
    /// For a [`KvBounds::ClosedForm`] kernel: the closed form's bounds for this launch's
    /// params (`classify::closed_form_bounds`), or `None` when the closed form cannot be
    /// trusted for this launch (the mask's i32 arithmetic may wrap): then the kernel visits
    /// every kv block as partial.
    ClosedForm(Option<&'a [Bound]>),
    /// For a [`KvBounds::Table`] kernel whose table the block-table kernel builds on the
    /// device ([`CudaKernel::upload_for_table`], [`CudaKernel::build_table`]).
    DeviceBuilt,
}

/// A block table on the device: (one (begin, end) pair per row, runs as u32 triples).
type TableBufs = (CudaSlice<u32>, CudaSlice<u32>);

/// A block table built on the device by the block-table kernel, kept after its launch so
/// that a later launch of the same shape whose mask inputs did not change can read it
/// again instead of rebuilding it ([`DeviceProblem::built_table`],
/// [`CudaKernel::upload_with_table`]). Only the attention kernel reads it then.
#[derive(Clone)]
pub struct BuiltTable {
    shape: Shape,
    geom: DeviceTable,
    strides: (i32, i32),
    bufs: Arc<TableBufs>,
}

impl BuiltTable {
    pub fn geometry(&self) -> DeviceTable {
        self.geom
    }
}

/// What [`CudaKernel::upload_rest`] stores about a launch's kv blocks.
#[derive(Default)]
struct KvLaunch {
    table: Option<Arc<TableBufs>>,
    /// (map b stride, map h stride) of the table.
    strides: (i32, i32),
    offsets: Vec<i64>,
    all_partial: i32,
    device_table: Option<DeviceTable>,
}

/// A GPU with its context and the stream every launch uses.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    capability: (i32, i32),
}

impl CudaDevice {
    /// Opens device `ordinal`; a clean error (never a panic) without driver or device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen libcuda; no driver call is made without it.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|_| CudaError::NoDevice(ordinal))?;
        if ordinal as i32 >= count {
            return Err(CudaError::NoDevice(ordinal));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream, ordered launches: no per-buffer event tracking needed.
        // SAFETY: every buffer of this device is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let capability = ctx.compute_capability()?;
        let arch = Arch::for_capability(capability.0, capability.1)
            .ok_or(CudaError::UnsupportedGpu(capability.0, capability.1))?;
        let name = ctx.name()?;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            arch,
            name,
            capability,
        })
    }
    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }
    /// Uploads 16-bit data (for benchmarks that keep inputs on the device).
    pub fn upload_u16(&self, data: &[u16]) -> Result<CudaSlice<u16>, CudaError> {
        Ok(self.stream.clone_htod(data)?)
    }
}

/// A loaded kernel.
pub struct CudaKernel {
    _module: Arc<CudaModule>,
    func: CudaFunction,
    meta: PtxKernel,
    /// Milliseconds `cuModuleLoadData` + function lookup took.
    pub load_ms: f64,
}

/// Inputs, outputs and tables of one problem, resident on the device.
pub struct DeviceProblem {
    pub shape: Shape,
    pub scale: f32,
    pub q: CudaSlice<u16>,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
    pub o: CudaSlice<u16>,
    pub lse: CudaSlice<f32>,
    /// (one (begin, end) pair per row, runs as u32 triples) of a table kernel; `None`
    /// for a closed-form kernel. Shared with a [`BuiltTable`] kept for later launches.
    table: Option<Arc<TableBufs>>,
    /// `KvOffset` params of a closed-form kernel, and its `KvAllPartial` flag.
    kv_offsets: Vec<i64>,
    kv_all_partial: i32,
    params: CudaSlice<u32>,
    err: CudaSlice<u32>,
    tensors: Vec<(CudaSlice<u32>, Vec<i32>)>,
    n_q_blocks: u32,
    map_b_stride: i32,
    map_h_stride: i32,
    /// Set when the table is to be built on the device ([`CudaKernel::build_table`]).
    device_table: Option<DeviceTable>,
}

/// The geometry of a block table built on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTable {
    pub q_block: u32,
    pub kv_block: u32,
    /// Maps over batches (B or 1) and over heads (Hq or 1).
    pub b_maps: u32,
    pub h_maps: u32,
}

impl DeviceProblem {
    /// The block table of this problem when it is built on the device (allocated by
    /// [`CudaKernel::upload_for_table`] or taken over by
    /// [`CudaKernel::upload_with_table`]), to keep for later launches; sharing its buffers.
    pub fn built_table(&self) -> Option<BuiltTable> {
        Some(BuiltTable {
            shape: self.shape,
            geom: self.device_table?,
            strides: (self.map_b_stride, self.map_h_stride),
            bufs: self.table.clone()?,
        })
    }
}

impl DeviceTable {
    /// The table of a mask reading `b` / `h` (as `MaskInfo::uses_b` / `uses_h`).
    pub fn new(shape: &Shape, q_block: u32, kv_block: u32, uses_b: bool, uses_h: bool) -> Self {
        DeviceTable {
            q_block,
            kv_block,
            b_maps: if uses_b { shape.b as u32 } else { 1 },
            h_maps: if uses_h { shape.hq as u32 } else { 1 },
        }
    }
    fn maps(&self) -> usize {
        self.b_maps as usize * self.h_maps as usize
    }
    /// Capacity in runs: every row gets room for `n_kv_blocks` runs. `None` when the
    /// table would not fit in [`DEVICE_TABLE_MAX_BYTES`] (or overflows u32 run indices):
    /// build it on the host then.
    pub fn capacity(&self, shape: &Shape) -> Option<usize> {
        let nq = shape.lq.div_ceil(self.q_block as usize);
        let nkv = shape.lkv.div_ceil(self.kv_block as usize);
        let runs = self.maps().checked_mul(nq)?.checked_mul(nkv)?;
        let bytes = runs.checked_mul(12)?;
        (runs < u32::MAX as usize && bytes <= DEVICE_TABLE_MAX_BYTES).then_some(runs)
    }
}

/// The largest block table built on the device (runs at 12 bytes, `n_kv_blocks` per row):
/// 1 GiB, e.g. B = 8 one map per batch at L = 131072 with 128x64 tiles needs 200 MiB.
pub const DEVICE_TABLE_MAX_BYTES: usize = 1 << 30;

impl CudaKernel {
    pub fn load(dev: &CudaDevice, k: &PtxKernel) -> Result<Self, CudaError> {
        let t = Instant::now();
        let module = dev
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(k.ptx.clone()))?;
        let func = module.load_function(&k.entry)?;
        if k.smem_bytes > 48 * 1024 {
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                k.smem_bytes as i32,
            )?;
        }
        Ok(CudaKernel {
            _module: module,
            func,
            meta: strip(k),
            load_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn meta(&self) -> &PtxKernel {
        &self.meta
    }

    fn check(&self, shape: &Shape, bind: &Bindings, blocks: KvBlocks) -> Result<(), CudaError> {
        shape
            .validate()
            .map_err(|e| CudaError::Mismatch(e.to_string()))?;
        let o = &self.meta.options;
        if shape.d != o.d as usize || shape.dv != o.dv as usize {
            return Err(CudaError::Mismatch(format!(
                "kernel built for D={} Dv={}, called with D={} Dv={}",
                o.d, o.dv, shape.d, shape.dv
            )));
        }
        match (blocks, &self.meta.kv_bounds) {
            (KvBlocks::Maps(maps), KvBounds::Table) => check_maps(shape, o, maps)?,
            (KvBlocks::ClosedForm(bounds), kv @ KvBounds::ClosedForm(_)) => {
                if let Some(b) = bounds {
                    let got: Vec<(i128, i128)> = b.iter().map(|b| (b.a_q, b.a_kv)).collect();
                    let want: Vec<(i128, i128)> = kv
                        .coefficients()
                        .iter()
                        .map(|&(q, k)| (q as i128, k as i128))
                        .collect();
                    if got != want {
                        return Err(CudaError::Mismatch(format!(
                            "closed-form bounds with coefficients {got:?}, the kernel was built for {want:?}"
                        )));
                    }
                }
            }
            (KvBlocks::DeviceBuilt, KvBounds::Table) => {}
            (KvBlocks::DeviceBuilt, KvBounds::ClosedForm(_)) => {
                return Err(CudaError::Mismatch(
                    "this kernel computes its kv blocks from the closed form of the mask and needs no block table".into(),
                ));
            }
            (KvBlocks::Maps(_), KvBounds::ClosedForm(_)) => {
                return Err(CudaError::Mismatch(
                    "this kernel computes its kv blocks from the closed form of the mask and takes no block maps (pass KvBlocks::ClosedForm)".into(),
                ));
            }
            (KvBlocks::ClosedForm(_), KvBounds::Table) => {
                return Err(CudaError::Mismatch(
                    "this kernel reads the block table: pass block maps (KvBlocks::Maps)".into(),
                ));
            }
        }
        let n_tensors = self
            .meta
            .params
            .iter()
            .filter(|p| matches!(p, KernelParam::Tensor(_)))
            .count();
        if bind.tensors.len() != n_tensors {
            return Err(CudaError::Mismatch(format!(
                "{} captured tensors bound, the kernel reads {n_tensors}",
                bind.tensors.len()
            )));
        }
        Ok(())
    }

    /// Uploads everything one launch needs.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        scale: f32,
        bind: &Bindings,
        blocks: KvBlocks,
    ) -> Result<DeviceProblem, CudaError> {
        check_qkv_lengths(shape, q, k, v)?;
        let s = &dev.stream;
        let (q, k, v) = (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?);
        self.upload_device(dev, shape, q, k, v, scale, bind, blocks)
    }

    /// Like [`Self::upload`] with Q/K/V already on the device.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_device(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        q: CudaSlice<u16>,
        k: CudaSlice<u16>,
        v: CudaSlice<u16>,
        scale: f32,
        bind: &Bindings,
        blocks: KvBlocks,
    ) -> Result<DeviceProblem, CudaError> {
        self.check(shape, bind, blocks)?;
        let s = &dev.stream;
        let mut kv = KvLaunch::default();
        match blocks {
            KvBlocks::Maps(maps) => {
                let (row_start, runs) = maps.flatten();
                let runs: Vec<u32> = runs.iter().flat_map(|r| [r.start, r.end, r.full]).collect();
                kv.table = Some(Arc::new((
                    s.clone_htod(&nonempty(row_start))?,
                    s.clone_htod(&nonempty(runs))?,
                )));
                kv.strides = (maps.b_stride as i32, maps.h_stride as i32);
            }
            KvBlocks::ClosedForm(Some(bounds)) => kv.offsets = kernel_offsets(bounds),
            KvBlocks::ClosedForm(None) => {
                kv.offsets = vec![0; self.meta.kv_bounds.coefficients().len()];
                kv.all_partial = 1;
            }
            KvBlocks::DeviceBuilt => {
                return Err(CudaError::Mismatch(
                    "a table built on the device is allocated by upload_for_table".into(),
                ));
            }
        }
        self.upload_rest(dev, shape, (q, k, v), scale, bind, kv)
    }

    /// Uploads Q/K/V, params and captured tensors like [`Self::upload`], and allocates a
    /// block table for [`Self::build_table`] to fill on the device instead of taking one
    /// from the host. `uses_b` / `uses_h`: whether the mask reads `b` / `h`
    /// (`MaskInfo`), which fixes the number of maps and their strides.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_for_table(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        scale: f32,
        bind: &Bindings,
        uses_b: bool,
        uses_h: bool,
    ) -> Result<DeviceProblem, CudaError> {
        check_qkv_lengths(shape, q, k, v)?;
        self.check(shape, bind, KvBlocks::DeviceBuilt)?;
        let o = &self.meta.options;
        let table = DeviceTable::new(shape, o.q_block, o.kv_block, uses_b, uses_h);
        let cap = table.capacity(shape).ok_or_else(|| {
            CudaError::Mismatch(format!(
                "a device block table for {shape:?} would exceed {} bytes",
                DEVICE_TABLE_MAX_BYTES
            ))
        })?;
        let s = &dev.stream;
        let nq = shape.lq.div_ceil(o.q_block as usize);
        let kv = KvLaunch {
            table: Some(Arc::new((
                s.alloc_zeros::<u32>((2 * table.maps() * nq).max(1))?,
                s.alloc_zeros::<u32>((3 * cap).max(1))?,
            ))),
            strides: (
                if uses_b { table.h_maps as i32 } else { 0 },
                if uses_h { 1 } else { 0 },
            ),
            device_table: Some(table),
            ..KvLaunch::default()
        };
        let qkv = (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?);
        self.upload_rest(dev, shape, qkv, scale, bind, kv)
    }

    /// Uploads Q/K/V, params and captured tensors like [`Self::upload_for_table`], but
    /// takes the block table built on the device by an earlier launch instead of
    /// allocating one: the caller vouches that nothing the table depends on changed (the
    /// mask's captured tensors and params; the shape and tiles are checked here), and
    /// launches no builder. The problem shares the table's buffers with `table`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_with_table(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        scale: f32,
        bind: &Bindings,
        table: &BuiltTable,
    ) -> Result<DeviceProblem, CudaError> {
        check_qkv_lengths(shape, q, k, v)?;
        self.check(shape, bind, KvBlocks::DeviceBuilt)?;
        let o = &self.meta.options;
        if table.shape != *shape
            || (table.geom.q_block, table.geom.kv_block) != (o.q_block, o.kv_block)
        {
            return Err(CudaError::Mismatch(format!(
                "a kept block table of {}x{} tiles for {:?} does not fit a launch of {}x{} tiles for {shape:?}",
                table.geom.q_block, table.geom.kv_block, table.shape, o.q_block, o.kv_block
            )));
        }
        let s = &dev.stream;
        let kv = KvLaunch {
            table: Some(table.bufs.clone()),
            strides: table.strides,
            device_table: Some(table.geom),
            ..KvLaunch::default()
        };
        let qkv = (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?);
        self.upload_rest(dev, shape, qkv, scale, bind, kv)
    }

    fn upload_rest(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        (q, k, v): (CudaSlice<u16>, CudaSlice<u16>, CudaSlice<u16>),
        scale: f32,
        bind: &Bindings,
        kv: KvLaunch,
    ) -> Result<DeviceProblem, CudaError> {
        let s = &dev.stream;
        let words: Vec<u32> = bind
            .params
            .iter()
            .map(|p| match p {
                Scalar::Bool(b) => *b as u32,
                Scalar::I32(x) => *x as u32,
                Scalar::F32(x) => x.to_bits(),
            })
            .collect();
        let mut tensors = Vec::new();
        for t in &bind.tensors {
            let data: Vec<u32> = match &t.data {
                TensorData::I32(v) => v.iter().map(|x| *x as u32).collect(),
                TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            };
            // an empty tensor reads as zeros (dims raised to 1, one zero element)
            let dims: Vec<i32> = t
                .dims
                .iter()
                .map(|d| (*d).clamp(1, i32::MAX as usize) as i32)
                .collect();
            let n: usize = dims.iter().map(|d| *d as usize).product();
            let mut data = nonempty(data);
            data.resize(n.max(data.len()), 0);
            tensors.push((s.clone_htod(&data)?, dims));
        }
        Ok(DeviceProblem {
            shape: *shape,
            scale,
            q,
            k,
            v,
            o: s.alloc_zeros(shape.o_len().max(1))?,
            lse: s.alloc_zeros(shape.lse_len().max(1))?,
            table: kv.table,
            kv_offsets: kv.offsets,
            kv_all_partial: kv.all_partial,
            params: s.clone_htod(&nonempty(words))?,
            err: s.alloc_zeros(8)?,
            tensors,
            n_q_blocks: shape.lq.div_ceil(self.meta.q_block as usize) as u32,
            map_b_stride: kv.strides.0,
            map_h_stride: kv.strides.1,
            device_table: kv.device_table,
        })
    }

    /// Launches this block-table kernel (`backend::llvm::emit_block_table`) on `p`, whose
    /// table was allocated by [`Self::upload_for_table`] for tiles of the same size.
    /// Asynchronous, on the stream of the attention launch that follows.
    ///
    /// `skip`: for a builder with a `table_skip` form (the mask's linear conjuncts), their
    /// bounds for this launch (`classify::Implied::bounds`): tiles outside their kv range
    /// are classified empty without being evaluated; `None` when they cannot be trusted
    /// for this launch (their i32 arithmetic may wrap): then every tile is evaluated.
    /// Ignored by a builder without one.
    pub fn build_table(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        skip: Option<&[Bound]>,
    ) -> Result<(), CudaError> {
        let (offsets, all_partial) = self.skip_params(skip)?;
        let Some(t) = p.device_table else {
            return Err(CudaError::Mismatch(
                "this problem's block table comes from the host".into(),
            ));
        };
        if (t.q_block, t.kv_block) != (self.meta.q_block, self.meta.kv_block)
            || !self.meta.entry.starts_with("attnc_blocks_")
        {
            return Err(CudaError::Mismatch(format!(
                "kernel {} ({}x{} tiles) does not build a table of {}x{} tiles",
                self.meta.entry, self.meta.q_block, self.meta.kv_block, t.q_block, t.kv_block
            )));
        }
        let sh = &p.shape;
        if sh.lq == 0 || t.maps() == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (p.n_q_blocks, t.h_maps, t.b_maps),
            block_dim: (self.meta.threads, 1, 1),
            shared_mem_bytes: self.meta.smem_bytes,
        };
        self.launch_with(dev, p, cfg, &offsets, all_partial)
    }

    /// The `KvOffset` / `KvAllPartial` values of a builder launch (see [`Self::build_table`]).
    fn skip_params(&self, skip: Option<&[Bound]>) -> Result<(Vec<i64>, i32), CudaError> {
        let Some(cf) = &self.meta.table_skip else {
            return Ok((vec![], 0));
        };
        match skip {
            None => Ok((vec![0; cf.constraints.len()], 1)),
            Some(b) => {
                let got: Vec<(i128, i128)> = b.iter().map(|b| (b.a_q, b.a_kv)).collect();
                let want: Vec<(i128, i128)> = cf
                    .constraints
                    .iter()
                    .map(|c| (c.expr.q as i128, c.expr.kv as i128))
                    .collect();
                if got != want {
                    return Err(CudaError::Mismatch(format!(
                        "block-table skip bounds with coefficients {got:?}, the builder was built for {want:?}"
                    )));
                }
                Ok((kernel_offsets(b), 0))
            }
        }
    }

    /// Waits, then reads back a table built by [`Self::build_table`] (for tests and tools).
    pub fn download_table(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
    ) -> Result<BlockMaps, CudaError> {
        let t = p
            .device_table
            .ok_or_else(|| CudaError::Mismatch("no device table".into()))?;
        let (row_start, runs) = &**p
            .table
            .as_ref()
            .ok_or_else(|| CudaError::Mismatch("no device table".into()))?;
        let s = &dev.stream;
        s.synchronize()?;
        self.check_err(dev, p)?;
        let nq = p.n_q_blocks as usize;
        let mut ranges = s.clone_dtoh(row_start)?;
        ranges.truncate(2 * t.maps() * nq);
        let words = s.clone_dtoh(runs)?;
        let runs: Vec<Run> = words
            .chunks_exact(3)
            .map(|w| Run {
                start: w[0],
                end: w[1],
                full: w[2],
            })
            .collect();
        BlockMaps::from_pairs(
            &ranges,
            &runs,
            t.maps(),
            p.shape.lq,
            p.shape.lkv,
            t.q_block as usize,
            t.kv_block as usize,
            p.map_b_stride as usize,
            p.map_h_stride as usize,
        )
        .ok_or_else(|| CudaError::Mismatch("the device block table is malformed".into()))
    }

    /// Median milliseconds per [`Self::build_table`] (CUDA events), as [`Self::time`].
    pub fn time_table(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        skip: Option<&[Bound]>,
        warmup: usize,
        iters: usize,
        reps: usize,
    ) -> Result<f64, CudaError> {
        time_events(dev, warmup, iters, reps, || self.build_table(dev, p, skip))
    }

    /// Enqueues one launch (asynchronous).
    pub fn launch(&self, dev: &CudaDevice, p: &DeviceProblem) -> Result<(), CudaError> {
        let sh = &p.shape;
        if sh.lq == 0 || sh.b == 0 || sh.hq == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (p.n_q_blocks, sh.hq as u32, sh.b as u32),
            block_dim: (self.meta.threads, 1, 1),
            shared_mem_bytes: self.meta.smem_bytes,
        };
        self.launch_with(dev, p, cfg, &p.kv_offsets, p.kv_all_partial)
    }

    /// Launches this kernel with its parameters (`meta.params`) taken from `p`, and the
    /// `KvOffset` / `KvAllPartial` values given (`p`'s for the attention kernel, the skip
    /// bounds' for a block-table builder).
    fn launch_with(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        cfg: LaunchConfig,
        kv_offsets: &[i64],
        kv_all_partial: i32,
    ) -> Result<(), CudaError> {
        let sh = &p.shape;
        let s = &dev.stream;
        let ptr = |x: &CudaSlice<u16>| x.device_ptr(s).0;
        let ptr32 = |x: &CudaSlice<u32>| x.device_ptr(s).0;
        let mut ptrs: Vec<u64> = Vec::new();
        let mut ints: Vec<i32> = Vec::new();
        let mut longs: Vec<i64> = Vec::new();
        // first pass: collect values (stable addresses: no push after the arg pass starts)
        enum A {
            P(usize),
            I(usize),
            L(usize),
            F,
        }
        let table = || {
            p.table.as_ref().ok_or_else(|| {
                CudaError::Mismatch("a table kernel launched without block maps".into())
            })
        };
        let mut order = Vec::with_capacity(self.meta.params.len());
        for kp in &self.meta.params {
            let a = match kp {
                KernelParam::Q => {
                    ptrs.push(ptr(&p.q));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::K => {
                    ptrs.push(ptr(&p.k));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::V => {
                    ptrs.push(ptr(&p.v));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::O => {
                    ptrs.push(ptr(&p.o));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::Lse => {
                    ptrs.push(p.lse.device_ptr(s).0);
                    A::P(ptrs.len() - 1)
                }
                KernelParam::RowStart => {
                    ptrs.push(ptr32(&table()?.0));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::Runs => {
                    ptrs.push(ptr32(&table()?.1));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::KvOffset(i) => {
                    longs.push(*kv_offsets.get(*i as usize).ok_or_else(|| {
                        CudaError::Mismatch("closed-form offsets missing".into())
                    })?);
                    A::L(longs.len() - 1)
                }
                KernelParam::Params => {
                    ptrs.push(ptr32(&p.params));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::Err => {
                    ptrs.push(ptr32(&p.err));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::Tensor(t) => {
                    ptrs.push(ptr32(&p.tensors[*t as usize].0));
                    A::P(ptrs.len() - 1)
                }
                KernelParam::Scale => A::F,
                other => {
                    ints.push(match other {
                        KernelParam::Lq => sh.lq as i32,
                        KernelParam::Lkv => sh.lkv as i32,
                        KernelParam::Hq => sh.hq as i32,
                        KernelParam::Hkv => sh.hkv as i32,
                        KernelParam::NumQBlocks => p.n_q_blocks as i32,
                        KernelParam::MapBStride => p.map_b_stride,
                        KernelParam::MapHStride => p.map_h_stride,
                        KernelParam::KvAllPartial => kv_all_partial,
                        KernelParam::TensorDim { tensor, dim } => {
                            p.tensors[*tensor as usize].1[*dim as usize]
                        }
                        _ => unreachable!("pointer params handled above"),
                    });
                    A::I(ints.len() - 1)
                }
            };
            order.push(a);
        }
        let mut b = s.launch_builder(&self.func);
        for a in &order {
            match a {
                A::P(i) => b.arg(&ptrs[*i]),
                A::I(i) => b.arg(&ints[*i]),
                A::L(i) => b.arg(&longs[*i]),
                A::F => b.arg(&p.scale),
            };
        }
        // SAFETY: the argument list follows `meta.params` (the kernel's signature) and every
        // buffer has the size the kernel indexes (checked in `check` / built in `upload`;
        // a device table has room for `n_kv_blocks` runs per row, `DeviceTable::capacity`).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Waits, then copies O and LSE back and reports a checked-mode error if one was recorded.
    pub fn download(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
    ) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        let s = &dev.stream;
        s.synchronize()?;
        self.check_err(dev, p)?;
        let mut o = s.clone_dtoh(&p.o)?;
        let mut lse = s.clone_dtoh(&p.lse)?;
        o.truncate(p.shape.o_len());
        lse.truncate(p.shape.lse_len());
        Ok((o, lse))
    }

    /// The checked-mode error recorded by any kernel of `p` (call after a synchronize).
    fn check_err(&self, dev: &CudaDevice, p: &DeviceProblem) -> Result<(), CudaError> {
        let err = dev.stream.clone_dtoh(&p.err)?;
        if err[0] != 0 {
            let rank = self_rank(&self.meta, err[1]);
            return Err(CudaError::OutOfBounds {
                in_score: err[0] & (1 << 16) != 0,
                inst: (err[0] & 0xffff) - 1,
                tensor: err[1],
                index: err[2..2 + rank.min(6)].iter().map(|x| *x as i32).collect(),
            });
        }
        Ok(())
    }

    /// Upload, launch, download.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_host(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        scale: f32,
        bind: &Bindings,
        blocks: KvBlocks,
    ) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        let p = self.upload(dev, shape, q, k, v, scale, bind, blocks)?;
        self.launch(dev, &p)?;
        self.download(dev, &p)
    }

    /// Median milliseconds per launch over `reps` repetitions of `iters` back-to-back
    /// launches, timed with CUDA events after `warmup` launches.
    pub fn time(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        warmup: usize,
        iters: usize,
        reps: usize,
    ) -> Result<f64, CudaError> {
        time_events(dev, warmup, iters, reps, || self.launch(dev, p))
    }
}

/// Median milliseconds per call of `launch` over `reps` repetitions of `iters` calls,
/// timed with CUDA events after `warmup` calls.
fn time_events(
    dev: &CudaDevice,
    warmup: usize,
    iters: usize,
    reps: usize,
    launch: impl Fn() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    for _ in 0..warmup {
        launch()?;
    }
    dev.synchronize()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = dev
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = dev
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&dev.stream)?;
        for _ in 0..iters.max(1) {
            launch()?;
        }
        end.record(&dev.stream)?;
        end.synchronize()?;
        ts.push(start.elapsed_ms(&end)? as f64 / iters.max(1) as f64);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

fn nonempty(v: Vec<u32>) -> Vec<u32> {
    if v.is_empty() { vec![0u32] } else { v }
}

/// Host Q/K/V hold exactly the elements of `shape`.
fn check_qkv_lengths(shape: &Shape, q: &[u16], k: &[u16], v: &[u16]) -> Result<(), CudaError> {
    if q.len() != shape.q_len() || k.len() != shape.k_len() || v.len() != shape.v_len() {
        return Err(CudaError::Mismatch(
            "q/k/v lengths do not match the shape".into(),
        ));
    }
    Ok(())
}

/// Block maps fit the kernel's block sizes and the shape, and cover every (b, h).
fn check_maps(shape: &Shape, o: &PtxOptions, maps: &BlockMaps) -> Result<(), CudaError> {
    for m in &maps.maps {
        if (m.q_block, m.kv_block) != (o.q_block as usize, o.kv_block as usize)
            || (m.lq, m.lkv) != (shape.lq, shape.lkv)
        {
            return Err(CudaError::Mismatch(format!(
                "block map for {}x{} blocks of {}x{}, kernel needs {}x{} blocks of {}x{}",
                m.q_block, m.kv_block, m.lq, m.lkv, o.q_block, o.kv_block, shape.lq, shape.lkv
            )));
        }
    }
    let last = (shape.b - 1) * maps.b_stride + (shape.hq - 1) * maps.h_stride;
    if maps.maps.is_empty() || last >= maps.maps.len() {
        return Err(CudaError::Mismatch(format!(
            "{} block maps with strides ({}, {}) do not cover B={} H={}",
            maps.maps.len(),
            maps.b_stride,
            maps.h_stride,
            shape.b,
            shape.hq
        )));
    }
    Ok(())
}

fn self_rank(meta: &PtxKernel, tensor: u32) -> usize {
    meta.params
        .iter()
        .filter(|p| matches!(p, KernelParam::TensorDim { tensor: t, .. } if *t == tensor))
        .count()
}

/// The metadata of a kernel without its (large) texts.
fn strip(k: &PtxKernel) -> PtxKernel {
    PtxKernel {
        ptx: String::new(),
        llvm_ir: String::new(),
        ..k.clone()
    }
}

/// How a [`JitCache::get_tiered`] was served, with its timings (milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct JitStats {
    /// Found loaded in memory.
    pub memory_hit: bool,
    /// The optimized cubin on disk (`None` without a disk cache or on a memory hit).
    pub cubin: Option<Lookup>,
    /// The PTX on disk (`None` without a disk cache, or when the cubin was found).
    pub disk: Option<Lookup>,
    /// Generating PTX (0 when it came from disk or a cubin was found).
    pub codegen_ms: f64,
    /// The stages of [`Self::codegen_ms`].
    pub codegen: EmitTimes,
    /// The driver compiling PTX to the first usable module's cubin (0 for a cubin from disk).
    pub driver_ms: f64,
    /// Loading the first usable module (`cuModuleLoadData` of the cubin + function lookup).
    pub load_ms: f64,
    /// From the call to a usable kernel.
    pub total_ms: f64,
    /// The tier of the first usable module.
    pub tier: JitTier,
}

/// Program + options -> loaded kernel, cached in memory (per device) and on disk (PTX,
/// and the optimized cubin per device and driver).
pub struct JitCache {
    disk: Option<DiskCache>,
    mem: Mutex<HashMap<String, Arc<JitKernel>>>,
    /// `ptxas` level of the optimized tier.
    opt_level: u8,
}

impl JitCache {
    pub fn new(disk: Option<DiskCache>) -> Self {
        JitCache {
            disk,
            mem: Mutex::new(HashMap::new()),
            opt_level: OPTIMIZED_LEVEL,
        }
    }

    /// A cache whose optimized tier is compiled at `ptxas` level `level` (0..=4) instead
    /// of [`OPTIMIZED_LEVEL`] (for measuring the levels; the level is part of the cubin key).
    pub fn with_opt_level(mut self, level: u8) -> Self {
        self.opt_level = level.min(OPTIMIZED_LEVEL);
        self
    }

    /// The cache key of a program's kernel (its PTX).
    pub fn key(program: &Program, opts: &PtxOptions) -> String {
        cache_key(&[
            write_program(program).as_bytes(),
            program.name.as_bytes(),
            opts.key().as_bytes(),
            compiler_build_id().as_bytes(),
        ])
    }

    /// The cache key of a program's block-table kernel (never equal to [`Self::key`]).
    pub fn table_key(program: &Program, opts: &PtxOptions) -> String {
        cache_key(&[
            b"block-table",
            write_program(program).as_bytes(),
            program.name.as_bytes(),
            opts.key().as_bytes(),
            compiler_build_id().as_bytes(),
        ])
    }

    /// The optimized attention kernel: [`Self::get_tiered`] with tiers off (blocks until
    /// the optimized module is loaded, or takes the one in memory, which may still be low).
    pub fn get(
        &self,
        dev: &CudaDevice,
        program: &Program,
        opts: &PtxOptions,
    ) -> Result<(Arc<CudaKernel>, JitStats), CudaError> {
        let (k, stats) = self.get_kind(dev, program, opts, JitTiers::Off, false)?;
        Ok((k.current().0, stats))
    }

    /// The block-table kernel of `program`'s mask (`llvm::emit_block_table`) for the tiles
    /// of the attention kernel with the same options (optimized; tiers off).
    pub fn get_table(
        &self,
        dev: &CudaDevice,
        program: &Program,
        opts: &PtxOptions,
    ) -> Result<(Arc<CudaKernel>, JitStats), CudaError> {
        let (k, stats) = self.get_kind(dev, program, opts, JitTiers::Off, true)?;
        Ok((k.current().0, stats))
    }

    /// The attention kernel of `program`, loaded under the tier policy `tiers`.
    pub fn get_tiered(
        &self,
        dev: &CudaDevice,
        program: &Program,
        opts: &PtxOptions,
        tiers: JitTiers,
    ) -> Result<(Arc<JitKernel>, JitStats), CudaError> {
        self.get_kind(dev, program, opts, tiers, false)
    }

    /// The attention kernel (`table` false) or the block-table kernel (`table` true).
    fn get_kind(
        &self,
        dev: &CudaDevice,
        program: &Program,
        opts: &PtxOptions,
        tiers: JitTiers,
        table: bool,
    ) -> Result<(Arc<JitKernel>, JitStats), CudaError> {
        let t0 = Instant::now();
        let key = if table {
            Self::table_key(program, opts)
        } else {
            Self::key(program, opts)
        };
        let lock_err = || CudaError::Driver("JIT cache lock poisoned".into());
        if let Some(k) = self.mem.lock().map_err(|_| lock_err())?.get(&key) {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            return Ok((
                k.clone(),
                JitStats {
                    memory_hit: true,
                    cubin: None,
                    disk: None,
                    codegen_ms: 0.0,
                    codegen: EmitTimes::default(),
                    driver_ms: 0.0,
                    load_ms: 0.0,
                    total_ms: ms,
                    tier: k.tier(),
                },
            ));
        }
        let meta = if table {
            llvm::block_table_layout(program, opts)?
        } else {
            llvm::layout(program, opts)?
        };
        let target = jit::cubin_target(dev)?;
        let ckey = cubin_key(&key, &target, self.opt_level as u32);
        let mut cubin_lookup = None;
        if let Some(d) = &self.disk {
            let (found, how) = jit::load_cached_cubin(dev, d, &ckey, &meta, t0);
            cubin_lookup = Some(how);
            if let Some(first) = found {
                return Ok(self.finish(key, first, None, EmitTimes::default(), t0));
            }
        }
        let mut codegen = EmitTimes::default();
        let mut gen_ptx = || -> Result<Vec<u8>, CudaError> {
            let (k, t) = if table {
                let t = Instant::now();
                let k = llvm::emit_block_table(program, opts)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                (
                    k,
                    EmitTimes {
                        total_ms: ms,
                        ..EmitTimes::default()
                    },
                )
            } else {
                llvm::emit_timed(program, opts, EmitText::PtxOnly)?
            };
            codegen = t;
            Ok(k.ptx.into_bytes())
        };
        let (ptx, disk) = match &self.disk {
            Some(d) => {
                let (b, how) = d.get_or_insert_with(&key, "ptx", &mut gen_ptx)?;
                (b, Some(how))
            }
            None => (gen_ptx()?, None),
        };
        let ptx = String::from_utf8(ptx)
            .map_err(|_| CudaError::Driver("cached PTX is not UTF-8".into()))?;
        let mut first = jit::compile_and_load(
            dev,
            ptx,
            &meta,
            tiers,
            self.opt_level,
            self.disk.clone(),
            ckey,
            t0,
        )?;
        first.cubin = cubin_lookup;
        Ok(self.finish(key, first, disk, codegen, t0))
    }

    /// Waits (at most `timeout` in all) until no kernel of this cache has a background
    /// compile pending.
    pub fn wait_pending(&self, timeout: std::time::Duration) {
        let deadline = Instant::now() + timeout;
        let kernels: Vec<Arc<JitKernel>> = match self.mem.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for k in kernels {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = k.wait_optimized(left);
        }
    }

    fn finish(
        &self,
        key: String,
        first: jit::FirstLoad,
        disk: Option<Lookup>,
        codegen: EmitTimes,
        t0: Instant,
    ) -> (Arc<JitKernel>, JitStats) {
        let k = Arc::new(first.kernel);
        // two threads may compile one kernel at once; the first to finish is kept
        let k = match self.mem.lock() {
            Ok(mut m) => m.entry(key).or_insert(k).clone(),
            Err(_) => k,
        };
        let stats = JitStats {
            memory_hit: false,
            cubin: first.cubin,
            disk,
            codegen_ms: codegen.total_ms,
            codegen,
            driver_ms: first.driver_ms,
            load_ms: first.load_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            tier: first.tier,
        };
        (k, stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_is_a_clean_error() {
        match CudaDevice::new(0) {
            Ok(d) => eprintln!("CUDA device present: {}", d.name()),
            Err(e) => assert!(
                matches!(e, CudaError::NoDriver | CudaError::NoDevice(_)),
                "{e}"
            ),
        }
        assert!(matches!(
            CudaDevice::new(1 << 20),
            Err(CudaError::NoDriver | CudaError::NoDevice(_))
        ));
    }
}
