//! The buffers of one attention call on the device, and where its kv blocks come from.
//!
//! In: a kernel's [`KernelSpec`] (tiles, head dims, kv source), a [`Shape`], Q/K/V as
//! 16-bit bit patterns (bf16 or f16; host slices or device buffers, [`Qkv`]), the
//! softmax scale, [`Bindings`] (params, captured tensors as i32/f32) and the call's
//! [`KvBlocks`]: host [`BlockMaps`] (table kernels), the closed form's bounds
//! (closed-form kernels: one i64 offset per constraint, no table), a table to be built on
//! the device by the block-table kernel, or one kept from an earlier call ([`BuiltTable`]).
//! Out: a [`DeviceProblem`]: the buffers, their named launch values
//! ([`DeviceProblem::args`]), and O / LSE / the block table read back.

use super::CudaError;
use super::args::{Arg, LaunchArgs};
use super::device::CudaDevice;
use attnc_compiler::analysis::blockmap::{BlockMaps, Run};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::bounds::kernel_offsets;
use attnc_compiler::backend::llvm::{GridDim, KernelParam, KernelSpec, KvBounds, PtxOptions};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::Scalar;
use attnc_compiler::shape::Shape;
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Q, K and V of a call: host bit patterns (uploaded) or buffers already on the device.
pub enum Qkv<'a> {
    Host(&'a [u16], &'a [u16], &'a [u16]),
    Device(CudaSlice<u16>, CudaSlice<u16>, CudaSlice<u16>),
}

/// What one call tells the kernel about its kv blocks; must match the kernel's
/// [`KernelSpec::kv_bounds`].
#[derive(Clone, Copy)]
pub enum KvBlocks<'a> {
    /// Block maps for a [`KvBounds::Table`] kernel, built for its block sizes.
    Maps(&'a BlockMaps),
    /// For a [`KvBounds::ClosedForm`] kernel: the closed form's bounds for this call's
    /// params (`Plan::closed_form_bounds`), or `None` when the closed form cannot be
    /// trusted for this call (the mask's i32 arithmetic may wrap): then the kernel visits
    /// every kv block as partial.
    ClosedForm(Option<&'a [Bound]>),
    /// For a [`KvBounds::Table`] kernel whose table the block-table kernel builds on the
    /// device: an empty table of one map per batch (`uses_b`) and per head (`uses_h`) is
    /// allocated, for a [`KernelKind::BlockTable`] launch to fill.
    Build { uses_b: bool, uses_h: bool },
    /// For a [`KvBounds::Table`] kernel: the table built on the device by an earlier call
    /// (the caller vouches that nothing it depends on changed: the mask's captured tensors
    /// and params; the shape and tiles are checked). Its buffers are shared.
    Kept(&'a BuiltTable),
}

/// A block table on the device: (one (begin, end) pair per row, runs as u32 triples).
type TableBufs = (CudaSlice<u32>, CudaSlice<u32>);

/// A block table built on the device by the block-table kernel, kept after its launch so
/// that a later call of the same shape whose mask inputs did not change can read it
/// again instead of rebuilding it ([`DeviceProblem::built_table`], [`KvBlocks::Kept`]).
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

/// The geometry of a block table built on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTable {
    pub q_block: u32,
    pub kv_block: u32,
    /// Maps over batches (B or 1) and over heads (Hq or 1).
    pub b_maps: u32,
    pub h_maps: u32,
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

/// Inputs, outputs and tables of one attention call, resident on the device.
pub struct DeviceProblem {
    pub shape: Shape,
    pub scale: f32,
    pub q: CudaSlice<u16>,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
    pub o: CudaSlice<u16>,
    pub lse: CudaSlice<f32>,
    /// The tiles and head dims of the kernels this problem was uploaded for.
    fits: (u32, u32, u32, u32),
    /// (one (begin, end) pair per row, runs as u32 triples) of a table kernel; `None`
    /// for a closed-form kernel. Shared with a [`BuiltTable`] kept for later launches.
    table: Option<Arc<TableBufs>>,
    /// `KvOffset` params of a closed-form kernel, and its `KvAllPartial` flag.
    kv_offsets: Vec<i64>,
    kv_all_partial: i32,
    params: CudaSlice<u32>,
    err: CudaSlice<u32>,
    /// The persistent kernels' counters (`KernelParam::TileCounter`,
    /// `PtxOptions::tile_counter_words` for this device's SMs): zero, and left zero by
    /// each launch.
    tiles: CudaSlice<u32>,
    /// `PtxOptions::tail_split`'s workspace (`KernelParam::TailWork`) when the kernel
    /// reads one, sized for this device's SMs: a problem runs on the device (and SM
    /// count) it was uploaded for.
    tail: Option<CudaSlice<f32>>,
    tensors: Vec<(CudaSlice<u32>, Vec<i32>)>,
    n_q_blocks: u32,
    map_b_stride: i32,
    map_h_stride: i32,
    /// Set when the table is built on the device.
    device_table: Option<DeviceTable>,
    /// The tile list of a document-tiled forward (`PtxOptions::doc_tiles`,
    /// [`DeviceProblem::set_doc_tiles`]) and its length.
    doc_tiles: Option<(CudaSlice<i32>, u32)>,
}

fn nonempty(v: Vec<u32>) -> Vec<u32> {
    if v.is_empty() { vec![0u32] } else { v }
}

/// A param's 32-bit word as the kernels read it (bool and i32 as integers, f32 bits).
pub(crate) fn param_word(x: &Scalar) -> u32 {
    match x {
        Scalar::Bool(b) => *b as u32,
        Scalar::I32(v) => *v as u32,
        Scalar::F32(v) => v.to_bits(),
    }
}

/// A captured tensor as the kernels read it: its elements' 32-bit words and its dims as
/// i32; an empty tensor reads as zeros (dims raised to 1, one zero element).
pub(crate) fn tensor_words(t: &BoundTensor) -> (Vec<u32>, Vec<i32>) {
    let dims: Vec<i32> = t
        .dims
        .iter()
        .map(|d| (*d).clamp(1, i32::MAX as usize) as i32)
        .collect();
    let n: usize = dims.iter().map(|d| *d as usize).product();
    let data: Vec<u32> = match &t.data {
        TensorData::I32(v) => v.iter().map(|x| *x as u32).collect(),
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
    };
    let mut data = nonempty(data);
    data.resize(n.max(data.len()), 0);
    (data, dims)
}

/// Uploads one call's buffers for kernels described by `spec` (see the module header).
#[allow(clippy::too_many_arguments)]
pub(crate) fn upload(
    dev: &CudaDevice,
    spec: &KernelSpec,
    shape: &Shape,
    qkv: Qkv,
    scale: f32,
    bind: &Bindings,
    blocks: KvBlocks,
) -> Result<DeviceProblem, CudaError> {
    check(spec, shape, bind, &blocks)?;
    let o = &spec.options;
    let (q, k, v) = match qkv {
        Qkv::Host(q, k, v) => {
            if q.len() != shape.q_len() || k.len() != shape.k_len() || v.len() != shape.v_len() {
                return Err(CudaError::Mismatch(
                    "q/k/v lengths do not match the shape".into(),
                ));
            }
            (dev.upload(q)?, dev.upload(k)?, dev.upload(v)?)
        }
        Qkv::Device(q, k, v) => {
            if q.len() < shape.q_len() || k.len() < shape.k_len() || v.len() < shape.v_len() {
                return Err(CudaError::Mismatch(
                    "device q/k/v buffers are smaller than the shape".into(),
                ));
            }
            (q, k, v)
        }
    };
    let nq = shape.lq.div_ceil(o.q_block as usize);
    let mut table = None;
    let mut strides = (0, 0);
    let mut kv_offsets = Vec::new();
    let mut kv_all_partial = 0;
    let mut device_table = None;
    match blocks {
        KvBlocks::Maps(maps) => {
            let (row_start, runs) = maps.flatten();
            let runs: Vec<u32> = runs.iter().flat_map(|r| [r.start, r.end, r.full]).collect();
            table = Some(Arc::new((
                dev.upload(&nonempty(row_start))?,
                dev.upload(&nonempty(runs))?,
            )));
            strides = (maps.b_stride as i32, maps.h_stride as i32);
        }
        KvBlocks::ClosedForm(Some(bounds)) => kv_offsets = kernel_offsets(bounds),
        KvBlocks::ClosedForm(None) => {
            kv_offsets = vec![0; spec.kv_bounds.coefficients().len()];
            kv_all_partial = 1;
        }
        KvBlocks::Build { uses_b, uses_h } => {
            let t = DeviceTable::new(shape, o.q_block, o.kv_block, uses_b, uses_h);
            let cap = t.capacity(shape).ok_or_else(|| {
                CudaError::Mismatch(format!(
                    "a device block table for {shape:?} would exceed {DEVICE_TABLE_MAX_BYTES} bytes"
                ))
            })?;
            table = Some(Arc::new((
                dev.zeros::<u32>(2 * t.maps() * nq)?,
                dev.zeros::<u32>(3 * cap)?,
            )));
            strides = (
                if uses_b { t.h_maps as i32 } else { 0 },
                if uses_h { 1 } else { 0 },
            );
            device_table = Some(t);
        }
        KvBlocks::Kept(t) => {
            table = Some(t.bufs.clone());
            strides = t.strides;
            device_table = Some(t.geom);
        }
    }
    let words: Vec<u32> = bind.params.iter().map(param_word).collect();
    let mut tensors = Vec::new();
    for t in &bind.tensors {
        let (data, dims) = tensor_words(t);
        tensors.push((dev.upload(&data)?, dims));
    }
    Ok(DeviceProblem {
        shape: *shape,
        scale,
        q,
        k,
        v,
        o: dev.zeros(shape.o_len())?,
        lse: dev.zeros(shape.lse_len())?,
        fits: (o.q_block, o.kv_block, o.d, o.dv),
        table,
        kv_offsets,
        kv_all_partial,
        params: dev.upload(&nonempty(words))?,
        err: dev.zeros(8)?,
        tiles: dev.zeros(PtxOptions::tile_counter_words(dev.sms()))?,
        tail: if spec.params.contains(&KernelParam::TailWork) {
            Some(dev.zeros(o.tail_work_floats(dev.sms()))?)
        } else {
            None
        },
        tensors,
        n_q_blocks: nq as u32,
        map_b_stride: strides.0,
        map_h_stride: strides.1,
        device_table,
        doc_tiles: None,
    })
}

/// A call's inputs fit the kernel (head dims, kv source, block maps, bindings).
fn check(
    spec: &KernelSpec,
    shape: &Shape,
    bind: &Bindings,
    blocks: &KvBlocks,
) -> Result<(), CudaError> {
    shape
        .validate()
        .map_err(|e| CudaError::Mismatch(e.to_string()))?;
    let o = &spec.options;
    if shape.d != o.d as usize || shape.dv != o.dv as usize {
        return Err(CudaError::Mismatch(format!(
            "kernel built for D={} Dv={}, called with D={} Dv={}",
            o.d, o.dv, shape.d, shape.dv
        )));
    }
    match (blocks, &spec.kv_bounds) {
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
        (KvBlocks::Build { .. }, KvBounds::Table) => {}
        (KvBlocks::Kept(t), KvBounds::Table) => {
            if t.shape != *shape || (t.geom.q_block, t.geom.kv_block) != (o.q_block, o.kv_block) {
                return Err(CudaError::Mismatch(format!(
                    "a kept block table of {}x{} tiles for {:?} does not fit a launch of {}x{} tiles for {shape:?}",
                    t.geom.q_block, t.geom.kv_block, t.shape, o.q_block, o.kv_block
                )));
            }
        }
        (KvBlocks::Build { .. } | KvBlocks::Kept(_), KvBounds::ClosedForm(_)) => {
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
    let n_tensors = spec
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

impl DeviceProblem {
    /// Whether kernels described by `spec` may run on this problem: the tiles and head
    /// dims it was uploaded for, and for a block-table builder a table allocated for it.
    pub(crate) fn check_fits(&self, spec: &KernelSpec) -> Result<(), CudaError> {
        let o = &spec.options;
        if self.fits != (spec.q_block, spec.kv_block, o.d, o.dv) {
            return Err(CudaError::Mismatch(format!(
                "kernel {} ({}x{} tiles, D={} Dv={}) launched on a problem uploaded for {:?}",
                spec.entry, spec.q_block, spec.kv_block, o.d, o.dv, self.fits
            )));
        }
        if o.doc_tiles != self.doc_tiles.is_some() {
            return Err(CudaError::Mismatch(format!(
                "kernel {} {} a tile list; this problem has {}",
                spec.entry,
                if o.doc_tiles { "reads" } else { "reads no" },
                if self.doc_tiles.is_some() {
                    "one"
                } else {
                    "none"
                }
            )));
        }
        if spec.kind == KernelKind::BlockTable && self.device_table.is_none() {
            return Err(CudaError::Mismatch(
                "this problem's block table comes from the host: no table to build".into(),
            ));
        }
        Ok(())
    }

    /// Gives this problem the tile list of a document-tiled forward (`(b, row0, rows, qi)`
    /// per tile, `analysis::documents::doc_tiles`) for q blocks of `q_block` rows. Every
    /// tile is checked here, so that the kernel reads and writes only rows of its batch:
    /// `b < B`, `rows >= 1`, `row0 + rows <= Lq = Lkv`, `qi q_block < rows`.
    pub fn set_doc_tiles(
        &mut self,
        dev: &CudaDevice,
        tiles: &[i32],
        q_block: u32,
    ) -> Result<(), CudaError> {
        let sh = &self.shape;
        let ok = sh.lq == sh.lkv
            && tiles.len().is_multiple_of(4)
            && tiles.chunks(4).all(|t| {
                attnc_compiler::analysis::documents::tile_in_sequence(
                    [t[0], t[1], t[2], t[3]],
                    sh.b,
                    sh.lq,
                    q_block as usize,
                )
            });
        if !ok {
            return Err(CudaError::Mismatch(
                "a document tile outside its sequence (or Lq != Lkv)".into(),
            ));
        }
        let n = (tiles.len() / 4) as u32;
        let buf = dev.upload(if tiles.is_empty() { &[0i32; 4] } else { tiles })?;
        self.doc_tiles = Some((buf, n));
        Ok(())
    }

    /// The launch values of this problem by name: every buffer and scalar an attention
    /// or block-table kernel reads, and the grid extents.
    pub fn args(&self, dev: &CudaDevice) -> LaunchArgs {
        use KernelParam as P;
        let s = &dev.stream;
        let sh = &self.shape;
        let mut a = LaunchArgs::new();
        a.buffer(P::Q, &self.q, s);
        a.buffer(P::K, &self.k, s);
        a.buffer(P::V, &self.v, s);
        a.buffer(P::O, &self.o, s);
        a.buffer(P::Lse, &self.lse, s);
        if let Some(t) = &self.table {
            a.buffer(P::RowStart, &t.0, s);
            a.buffer(P::Runs, &t.1, s);
        }
        for (i, k) in self.kv_offsets.iter().enumerate() {
            a.i64(P::KvOffset(i as u32), *k);
        }
        a.i32(P::KvAllPartial, self.kv_all_partial);
        a.buffer(P::Params, &self.params, s);
        a.buffer(P::Err, &self.err, s);
        a.buffer(P::TileCounter, &self.tiles, s);
        if let Some(t) = &self.tail {
            a.buffer(P::TailWork, t, s);
        }
        for (i, (buf, dims)) in self.tensors.iter().enumerate() {
            a.buffer(P::Tensor(i as u32), buf, s);
            for (d, n) in dims.iter().enumerate() {
                a.i32(
                    P::TensorDim {
                        tensor: i as u32,
                        dim: d as u32,
                    },
                    *n,
                );
            }
        }
        a.i32(P::Lq, sh.lq as i32);
        a.i32(P::Lkv, sh.lkv as i32);
        a.i32(P::Hq, sh.hq as i32);
        a.i32(P::Hkv, sh.hkv as i32);
        a.i32(P::NumQBlocks, self.n_q_blocks as i32);
        a.i32(P::Batch, sh.b as i32);
        a.i32(P::MapBStride, self.map_b_stride);
        a.i32(P::MapHStride, self.map_h_stride);
        a.scalar(P::Scale, Arg::F32(self.scale));
        a.extent(
            GridDim::QBlocks,
            if sh.b == 0 || sh.hq == 0 {
                0
            } else {
                self.n_q_blocks
            },
        );
        a.extent(GridDim::Heads, sh.hq as u32);
        a.extent(GridDim::Batches, sh.b as u32);
        if let Some(t) = self.device_table {
            a.extent(GridDim::MapHeads, t.h_maps);
            a.extent(GridDim::MapBatches, t.b_maps);
        }
        if let Some((t, n)) = &self.doc_tiles {
            a.doc_tiles(cudarc::driver::DevicePtr::device_ptr(t, s).0, *n, sh.hq);
        }
        a
    }

    /// The `KvOffset` / `KvAllPartial` values of a block-table builder launch: the bounds
    /// of the mask's linear conjuncts for this call (`Plan::skip_bounds`; tiles outside
    /// their kv range are classified empty without being evaluated), or `None` when they
    /// cannot be trusted for this call (their i32 arithmetic may wrap): every tile is
    /// evaluated. Empty for a builder without a skip form (`KernelSpec::table_skip`).
    pub fn skip_args(
        &self,
        builder: &KernelSpec,
        skip: Option<&[Bound]>,
    ) -> Result<LaunchArgs, CudaError> {
        builder_skip_args(builder, skip)
    }

    /// The block table of this problem when it is built on the device, to keep for later
    /// calls; sharing its buffers.
    pub fn built_table(&self) -> Option<BuiltTable> {
        Some(BuiltTable {
            shape: self.shape,
            geom: self.device_table?,
            strides: (self.map_b_stride, self.map_h_stride),
            bufs: self.table.clone()?,
        })
    }

    /// Waits, then copies O and LSE back and reports a checked-mode error if one was
    /// recorded.
    pub fn download(&self, dev: &CudaDevice) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        self.check_err(dev)?;
        let mut o = dev.download(&self.o)?;
        let mut lse = dev.download(&self.lse)?;
        o.truncate(self.shape.o_len());
        lse.truncate(self.shape.lse_len());
        Ok((o, lse))
    }

    /// Waits, then reads the persistent kernels' counters (`KernelParam::TileCounter`:
    /// every word is zero again after every launch).
    pub fn tile_counter(&self, dev: &CudaDevice) -> Result<Vec<u32>, CudaError> {
        dev.download(&self.tiles)
    }

    /// Waits, then reports the checked-mode error recorded by any kernel of this problem.
    pub fn check_err(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        let err = dev.download(&self.err)?;
        if err[0] != 0 {
            let rank = self.tensors.get(err[1] as usize).map_or(0, |t| t.1.len());
            return Err(CudaError::OutOfBounds {
                in_score: err[0] & (1 << 16) != 0,
                inst: (err[0] & 0xffff) - 1,
                tensor: err[1],
                index: err[2..2 + rank.min(6)].iter().map(|x| *x as i32).collect(),
            });
        }
        Ok(())
    }

    /// Waits, then reads back a table built on the device as written: each row's
    /// (begin, end) pair (map `m`, q block `i` at row `m * n_q_blocks + i`) and the runs,
    /// with their kinds (0 partial, 1 full, 2 and 3 partial by conjunct:
    /// `PtxOptions::mask_kinds`). For tests and tools.
    pub fn download_table_runs(&self, dev: &CudaDevice) -> Result<(Vec<u32>, Vec<Run>), CudaError> {
        let t = self
            .device_table
            .ok_or_else(|| CudaError::Mismatch("no device table".into()))?;
        let (row_start, runs) = &**self
            .table
            .as_ref()
            .ok_or_else(|| CudaError::Mismatch("no device table".into()))?;
        self.check_err(dev)?;
        let nq = self.n_q_blocks as usize;
        let mut ranges = dev.download(row_start)?;
        ranges.truncate(2 * t.maps() * nq);
        let words = dev.download(runs)?;
        let runs: Vec<Run> = words
            .chunks_exact(3)
            .map(|w| Run {
                start: w[0],
                end: w[1],
                full: w[2],
            })
            .collect();
        Ok((ranges, runs))
    }

    /// Waits, then reads back a table built on the device (for tests and tools).
    pub fn download_table(&self, dev: &CudaDevice) -> Result<BlockMaps, CudaError> {
        let t = self
            .device_table
            .ok_or_else(|| CudaError::Mismatch("no device table".into()))?;
        let (ranges, runs) = self.download_table_runs(dev)?;
        BlockMaps::from_pairs(
            &ranges,
            &runs,
            t.maps(),
            self.shape.lq,
            self.shape.lkv,
            t.q_block as usize,
            t.kv_block as usize,
            self.map_b_stride as usize,
            self.map_h_stride as usize,
        )
        .ok_or_else(|| CudaError::Mismatch("the device block table is malformed".into()))
    }
}

/// The `KvOffset` / `KvAllPartial` values of a block-table builder launch for the skip
/// bounds `skip` ([`DeviceProblem::skip_args`]; also the caller-stream path's).
pub(crate) fn builder_skip_args(
    builder: &KernelSpec,
    skip: Option<&[Bound]>,
) -> Result<LaunchArgs, CudaError> {
    let mut a = LaunchArgs::new();
    let Some(cf) = &builder.table_skip else {
        return Ok(a);
    };
    let offsets = match skip {
        None => {
            a.i32(KernelParam::KvAllPartial, 1);
            vec![0; cf.constraints.len()]
        }
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
            a.i32(KernelParam::KvAllPartial, 0);
            kernel_offsets(b)
        }
    };
    for (i, k) in offsets.into_iter().enumerate() {
        a.i64(KernelParam::KvOffset(i as u32), k);
    }
    Ok(a)
}
