//! CUDA backward over caller-owned device memory on the caller's stream:
//! [`CudaExec::backward_caller`], behind `Bound::backward_cuda_into` (module `external`),
//! the Python package's autograd on CUDA.
//!
//! In: the binding's three backward kernels ([`CudaBackward`], from the JIT cache), device
//! pointers of q, k, v, o, lse, dO (and dLSE, or none) written by the forward, of dQ, dK,
//! dV and the two f32 scratch rows (Delta, LSE in log2 units) the caller allocated, with
//! dQ fused into the dK/dV kernel (sm_90, D128: `PtxOptions::backward`, as
//! `Bound::backward`) the fused dQ's workspace the caller allocated too (`DqAccum`,
//! `DqSem`: [`CallerDqWork`], sized by `CudaBackward::dq_workspace`), of the fixed-point
//! gradient words of the captured tensors (and params) the kernels sum into, the captured
//! tensors (pointers and dims), the params and a `CUstream` of the device's primary
//! context. Out: pre, dK/dV and dQ (fused: pre, dK/dV + dQ, the dQ conversion) enqueued on
//! that stream (the gradient words, and the fused dQ's semaphores, zeroed in stream order
//! before the kernel that sums into them) and nothing else: no host round trip, no
//! synchronization, no allocation once the stream has served the binding (the forward's
//! per-stream state: params, error and zero words; see [`super`]).
//!
//! Blocks: closed-form kernels get the launch's offsets as arguments; table kernels read
//! per-row block ranges (`cuda::backward::{q_ranges, kv_ranges}`), made on the host from
//! the block maps and uploaded once per shape (masks over indices) or per param values
//! (masks over params), kept per stream like the forward's maps. A mask over captured
//! tensors has block maps only from the tensors' data, which is on the device: every call
//! builds its table there at the backward kernels' tiles (the block-table kernel,
//! `backend::llvm::blocktable`, without `mask_kinds`) and turns it into the two range
//! arrays (the backward-ranges kernel, `backend::llvm::backward::ranges`: the values
//! `q_ranges` / `kv_ranges` would make from the same maps), both enqueued before the
//! backward's kernels on the caller's stream ([`BwdTableKernels`]). Where that cannot be
//! (`gpu_block_tables` off, a table beyond `DeviceTable::capacity`), its ranges visit
//! every block inside the kv range of the mask's linear conjuncts (the causal part of
//! document + causal) as partial — exact at any data, without the sparsity the tensors
//! themselves give ([`tensor_mask_ranges`]). A block mask made once supplies the ranges
//! instead; one that carries the backward's document kv tiles (`CallerRanges::docs`) runs
//! the kernels' document variant (`PtxOptions::bwd_doc_tiles`) on its list and ranges.

use super::{
    StateBufs, TableBufs, call_args, closed_form_args, needs_warmup, refuse_checked, table_args,
    words,
};
use crate::cuda::backward::{CudaBackward, kv_ranges, q_ranges};
use crate::cuda::problem::builder_skip_args;
use crate::cuda::{Arg, CudaError, LaunchArgs};
use crate::cuda::{CudaKernel, DeviceTable, JitTiers, LaunchArgs as Launch};
use crate::exec::ExecResult;
use crate::exec::cuda::Gpu;
use crate::exec::cuda::{CudaExec, gpu_at};
use crate::options::BindOptions;
use attnc_compiler::analysis::classify::MaskInfo;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::bounds::row_range;
use attnc_compiler::backend::llvm::{GridDim, PtxOptions};
use attnc_compiler::backend::llvm::{KernelParam as P, KvBounds};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::{MapRecipe, Plan};
use attnc_compiler::shape::Shape;
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// Device pointers of one backward call: the forward's inputs and outputs, the output
/// gradients, the input gradients, and two f32 scratch rows of `B * Hq * Lq` each.
#[derive(Clone, Copy, Debug)]
pub struct CallerBackwardBuffers {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
    pub d_o: u64,
    /// The gradient of lse (f32 `[B, Hq, Lq]`), or `None` (zero).
    pub dlse: Option<u64>,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    /// Scratch: Delta (`rowsum(dO o O) - dLSE`) per row.
    pub delta: u64,
    /// Scratch: LSE in log2 units per row.
    pub lse2: u64,
    /// The fused dQ's workspace, where the binding's backward fuses dQ into the dK/dV
    /// kernel (`CudaBackward::dq_workspace` is `Some`), else `None`.
    pub dq_work: Option<CallerDqWork>,
}

impl CallerBackwardBuffers {
    /// The forward's buffers among these (q, k, v, o, lse): what the forward-shaped launch
    /// values (`call_args`) take.
    fn forward(&self) -> super::CallerBuffers {
        super::CallerBuffers {
            q: self.q,
            k: self.k,
            v: self.v,
            o: self.o,
            lse: self.lse,
        }
    }
}

/// The fused dQ's workspace in caller memory: `DqAccum` (f32) and `DqSem` (u32, zeroed by
/// the call in stream order), of the lengths `CudaBackward::dq_workspace` gives.
#[derive(Clone, Copy, Debug)]
pub struct CallerDqWork {
    pub accum: u64,
    pub sem: u64,
}

/// Where the dQ kernel sums the capture gradients: per captured tensor (declaration
/// order) its fixed-point words (three u64 per element, at least three), for the
/// tensors the kernel differentiates; and the params' words (three per param, at least
/// three) when it differentiates params.
#[derive(Clone, Debug, Default)]
pub struct CallerGradWords {
    pub tensors: Vec<Option<u64>>,
    pub params: Option<u64>,
}

/// A stream's backward block ranges as the last call left them (tests:
/// `Bound::caller_backward_ranges`).
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardRangesSeen {
    /// The dK/dV kernel's ranges (`cuda::backward::kv_ranges`' layout).
    pub kv: Vec<i32>,
    /// The dQ kernel's (`cuda::backward::q_ranges`' layout).
    pub q: Vec<i32>,
    /// Made on the device from the captured tensors (module header).
    pub on_device: bool,
    /// The backward kernels' `(q_block, kv_block)`.
    pub tiles: (u32, u32),
}

/// The backward's block ranges on the device: (dK/dV ranges, dQ ranges).
pub(crate) type RangeBufs = (CudaSlice<i32>, CudaSlice<i32>);

/// A stream's backward block ranges and their (b, head) map strides; for a mask over
/// captured tensors with a table built on the device, that table's buffers and geometry
/// (the ranges are then rebuilt from the tensors by every call).
pub(crate) struct StreamRanges {
    key: RangesKey,
    bufs: Arc<RangeBufs>,
    strides: [(i32, i32); 2],
    table: Option<(Arc<TableBufs>, DeviceTable)>,
}

/// The kernels that make a backward's block ranges on the device for a mask over
/// captured tensors (module header): the block-table kernel at the backward kernels'
/// tiles and the backward-ranges kernel.
pub(crate) struct BwdTableKernels {
    /// The backward kernels' options they were made for.
    for_options: PtxOptions,
    builder: Arc<CudaKernel>,
    ranges: Arc<CudaKernel>,
}

/// [`BwdTableKernels`] for backward kernels of options `ko` (the JIT cache's; the builder
/// at their tiles, its run kinds 0 and 1 only: no `mask_kinds`, no lengths on the device,
/// fast mode).
fn bwd_table_kernels(g: &Gpu, plan: &Plan, ko: &PtxOptions) -> ExecResult<BwdTableKernels> {
    let bo = bwd_table_options(ko);
    let get = |kind| -> ExecResult<Arc<CudaKernel>> {
        Ok(g.jit
            .get(&g.device, plan, kind, &bo, JitTiers::Off)?
            .0
            .current()
            .0)
    };
    Ok(BwdTableKernels {
        for_options: *ko,
        builder: get(KernelKind::BlockTable)?,
        ranges: get(KernelKind::BackwardRanges)?,
    })
}

/// The options [`BwdTableKernels`] are generated with for backward kernels of options `ko`.
fn bwd_table_options(ko: &PtxOptions) -> PtxOptions {
    PtxOptions {
        mask_kinds: false,
        device_lens: None,
        checked: false,
        ..*ko
    }
}

/// The launch values of the two kernels that make a backward's ranges on the device: the
/// block-table kernel (`builder`, the forward's values for the caller's buffers, its
/// table's addresses and strides, the skip offsets of this call) filling `table`, then
/// the backward-ranges kernel reading it and writing `ranges` (dK/dV, dQ). `geom`: the
/// table's geometry at the backward's tiles; `group`: query heads per kv head where the
/// maps are per head, else 1.
#[allow(clippy::type_complexity)]
fn bwd_table_launches(
    plan: &Plan,
    builder: &attnc_compiler::backend::llvm::KernelSpec,
    (shape, scale, bindings): (&Shape, f32, &Bindings),
    (bufs, tensors, state): (&super::CallerBuffers, &[u64], StateBufs),
    (geom, group): (&DeviceTable, u32),
    table: (u64, u64),
    ranges: (u64, u64),
) -> ExecResult<(Launch, Launch)> {
    let mut b = call_args(builder, shape, scale, bufs, tensors, bindings, state);
    let [_, strides] = map_strides(plan.mask(), geom, group);
    table_args(&mut b, table, strides, Some(*geom));
    b.merge(&builder_skip_args(
        builder,
        plan.skip_bounds(shape, bindings)?.as_deref(),
    )?);
    Ok((b, bwd_ranges_args(shape, geom, table, ranges, group)))
}

/// The (b, head) map strides of the dK/dV ranges and of the table (and its dQ ranges) of
/// geometry `geom` for the mask `m`: per batch where it reads `b`, per head where it reads
/// `h` — the dK/dV ranges per kv head, `group` query heads' maps merged.
fn map_strides(m: &MaskInfo, geom: &DeviceTable, group: u32) -> [(i32, i32); 2] {
    let per_b = |maps: u32| if m.uses_b { maps as i32 } else { 0 };
    [
        (per_b(geom.h_maps / group), m.uses_h as i32),
        (per_b(geom.h_maps), m.uses_h as i32),
    ]
}

/// The launch values of the backward-ranges kernel: it reads `table` (of geometry `geom`,
/// built for `shape`) and writes `ranges` (dK/dV, dQ); `group` as [`bwd_table_launches`].
fn bwd_ranges_args(
    shape: &Shape,
    geom: &DeviceTable,
    (row_start, runs): (u64, u64),
    (kv, q): (u64, u64),
    group: u32,
) -> Launch {
    let nq = shape.lq.div_ceil(geom.q_block as usize) as u32;
    let nkv = shape.lkv.div_ceil(geom.kv_block as usize) as u32;
    let mut a = Launch::new();
    a.scalar(P::RowStart, Arg::Ptr(row_start));
    a.scalar(P::Runs, Arg::Ptr(runs));
    a.scalar(P::Ranges, Arg::Ptr(q));
    a.scalar(P::KvRanges, Arg::Ptr(kv));
    a.i32(P::Lq, shape.lq as i32);
    a.i32(P::Lkv, shape.lkv as i32);
    a.i32(P::Group, group as i32);
    a.extent(GridDim::TableBlocks, nq.max(nkv));
    a.extent(GridDim::MapKvHeads, geom.h_maps / group);
    a.extent(GridDim::MapBatches, geom.b_maps);
    a
}

/// What a stream's ranges were made for.
#[derive(Clone, Debug, PartialEq)]
struct RangesKey {
    shape: Shape,
    tiles: (u32, u32),
    /// The params words (masks over params), else empty.
    params: Vec<u32>,
    /// Every block partial (masks over captured tensors: [`tensor_mask_ranges`]).
    dense: bool,
}

/// The ranges of a mask over captured tensors, whose block maps need the tensors' data
/// (on the device): every block partial, within the kv range of the mask's linear
/// conjuncts where it has some (`Plan::table_skip`, e.g. the causal `q >= kv` of
/// document + causal, with this launch's bounds: what the forward's block-table kernel
/// skips by), else every block. Per dQ row `[first, end, 0, 0]` of its kv blocks, per
/// dK/dV column the span of the q blocks whose rows reach it; one map for all (b, head)
/// (the conjuncts read no b or h).
fn tensor_mask_ranges(
    plan: &Plan,
    shape: &Shape,
    tiles: (u32, u32),
    bindings: &Bindings,
) -> ExecResult<(Vec<i32>, Vec<i32>)> {
    let (qb, kb) = (tiles.0 as usize, tiles.1 as usize);
    let nq = shape.lq.div_ceil(qb);
    let nkv = shape.lkv.div_ceil(kb);
    let rows: Vec<(usize, usize)> =
        match (plan.table_skip(false), plan.skip_bounds(shape, bindings)?) {
            (Some(cf), Some(bounds)) => {
                let coefs = KvBounds::ClosedForm(cf.clone()).coefficients();
                (0..nq)
                    .map(|r| {
                        let q0 = (r * qb) as i64;
                        let q1 = ((r + 1) * qb).min(shape.lq) as i64 - 1;
                        let rr = row_range(&coefs, &bounds, q0, q1, shape.lkv, kb);
                        (rr.first.min(nkv), rr.end.min(nkv))
                    })
                    .collect()
            }
            _ => vec![(0, nkv); nq],
        };
    let q: Vec<i32> = rows
        .iter()
        .flat_map(|&(a, z)| {
            if a < z {
                [a as i32, z as i32, 0, 0]
            } else {
                [0; 4]
            }
        })
        .collect();
    let kv: Vec<i32> = (0..nkv)
        .flat_map(|c| {
            let reach = |r: &usize| rows[*r].0 <= c && c < rows[*r].1;
            match ((0..nq).find(reach), (0..nq).rev().find(reach)) {
                (Some(lo), Some(hi)) => [lo as i32, hi as i32 + 1, 0, 0],
                _ => [0; 4],
            }
        })
        .collect();
    Ok((kv, q))
}

/// The launch values of a backward on caller buffers, all but the kv source's: the
/// forward-shaped ones (q..lse, the state's params, error and zero words, the captured
/// tensors, lengths, heads, scale: [`call_args`]), then dO, dLSE (`HasDLse`), the
/// scratch rows, dQ, dK, dV, the gradient words and the fused dQ's workspace (`work`:
/// the lengths the kernels need, `dq_workspace`, and whether its additions are
/// unordered: `cuda::backward::dq_accum_zeroed`); with the byte ranges zeroed before the
/// kernel that sums into them (the gradient words; the semaphores, and the accumulator
/// under the unordered schemes, `BwdDq::Atomic` and `bwd_dq_free`). A workspace missing
/// where the kernels fuse dQ, or given where they do not, is an error.
#[allow(clippy::too_many_arguments)]
fn backward_args(
    dq_spec: &attnc_compiler::backend::llvm::KernelSpec,
    shape: &Shape,
    scale: f32,
    bufs: &CallerBackwardBuffers,
    tensors: &[u64],
    grads: &CallerGradWords,
    bindings: &Bindings,
    state: StateBufs,
    work: Option<((usize, usize), bool)>,
) -> Result<(LaunchArgs, Vec<(u64, usize)>), CudaError> {
    let mut a = call_args(
        dq_spec,
        shape,
        scale,
        &bufs.forward(),
        tensors,
        bindings,
        state,
    );
    a.scalar(P::DOut, Arg::Ptr(bufs.d_o));
    // without dLSE the pre kernel reads nothing there (`HasDLse` = 0)
    a.scalar(P::DLse, Arg::Ptr(bufs.dlse.unwrap_or(bufs.delta)));
    a.i32(P::HasDLse, bufs.dlse.is_some() as i32);
    a.scalar(P::Delta, Arg::Ptr(bufs.delta));
    a.scalar(P::Lse2, Arg::Ptr(bufs.lse2));
    a.scalar(P::DQ, Arg::Ptr(bufs.dq));
    a.scalar(P::DK, Arg::Ptr(bufs.dk));
    a.scalar(P::DV, Arg::Ptr(bufs.dv));
    let mut zero = Vec::new();
    for (t, gw) in grads.tensors.iter().enumerate() {
        if let Some(p) = gw {
            a.scalar(P::TensorGrad(t as u32), Arg::Ptr(*p));
            let n: usize = bindings.tensors[t].dims.iter().product();
            zero.push((*p, 24 * n.max(1)));
        }
    }
    if let Some(p) = grads.params {
        a.scalar(P::ParamGrad, Arg::Ptr(p));
        zero.push((p, 24 * bindings.params.len().max(1)));
    }
    match (work, bufs.dq_work) {
        (Some(((accum, sem), unordered)), Some(w)) => {
            a.scalar(P::DqAccum, Arg::Ptr(w.accum));
            a.scalar(P::DqSem, Arg::Ptr(w.sem));
            zero.push((w.sem, 4 * sem));
            if unordered {
                zero.push((w.accum, 4 * accum));
            }
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(CudaError::Mismatch(
                "the backward kernels fuse dQ into the dK/dV kernel: they need the dQ workspace (DqAccum, DqSem)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(CudaError::Mismatch(
                "a dQ workspace was given, but the backward kernels compute dQ in a second kernel (no workspace)".into(),
            ));
        }
    }
    Ok((a, zero))
}

/// Table kernels: the dK/dV and dQ kernels read their own ranges under the same names
/// (`Ranges`, `MapBStride`, `MapHStride`): sets the dQ kernel's in `a` and returns the
/// dK/dV kernel's values (a copy of `a` with its ranges).
fn ranges_args(
    a: &mut LaunchArgs,
    (kv_ptr, q_ptr): (u64, u64),
    strides: [(i32, i32); 2],
) -> LaunchArgs {
    let mut kv = a.clone();
    kv.scalar(P::Ranges, Arg::Ptr(kv_ptr));
    kv.i32(P::MapBStride, strides[0].0);
    kv.i32(P::MapHStride, strides[0].1);
    a.scalar(P::Ranges, Arg::Ptr(q_ptr));
    a.i32(P::MapBStride, strides[1].0);
    a.i32(P::MapHStride, strides[1].1);
    kv
}

impl CudaExec {
    /// Enqueues one backward on the caller's stream (module header). `bindings` holds the
    /// params and the captured tensors' dims (no data); `tensors` their device pointers,
    /// in declaration order; `capture`: whether `stream` captures a graph (as
    /// `check_device_pointers` returned it for this call).
    ///
    /// # Safety
    /// Every pointer of `bufs`, `tensors` and `grads` must be live device memory of this
    /// device's primary context holding what the kernels index for the bound shape (q,
    /// k, v, o, dO, dQ, dK, dV in the binding's 16-bit dtype; lse, dLSE, Delta, LSE2 f32
    /// rows; tensors the product of their dims in i32/f32 words; gradient words as
    /// [`CallerGradWords`] says), the outputs (dQ, dK, dV, Delta, LSE2, gradient words)
    /// overlapping no input and used by no one else until the stream has run the call;
    /// `stream` a live stream of that context, kept alive while this binding exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn backward_caller(
        &mut self,
        kernels: &CudaBackward,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        bufs: &CallerBackwardBuffers,
        tensors: &[u64],
        grads: &CallerGradWords,
        bindings: &Bindings,
        mask: Option<&super::CallerRanges>,
        stream: u64,
        capture: bool,
    ) -> ExecResult<()> {
        let mut laps = crate::host_trace::Laps::start();
        let g = gpu_at(self.ordinal)?;
        let shape = opts.shape;
        refuse_checked(opts)?;
        let ko = kernels.options();
        if shape.d != ko.d as usize || shape.dv != ko.dv as usize {
            return Err(CudaError::Mismatch(format!(
                "backward kernels built for D={} Dv={}, called with D={} Dv={}",
                ko.d, ko.dv, shape.d, shape.dv
            ))
            .into());
        }
        if tensors.len() != bindings.tensors.len() || grads.tensors.len() != tensors.len() {
            return Err(CudaError::Mismatch(
                "one device pointer (and one gradient slot) per captured tensor".into(),
            )
            .into());
        }
        let (want_tensors, want_params) = kernels.grad_outputs();
        for (t, gw) in grads.tensors.iter().enumerate() {
            if gw.is_some() != want_tensors.contains(&(t as u32)) {
                return Err(CudaError::Mismatch(format!(
                    "gradient words for captured tensor #{t}: {} given, the dQ kernel {} them",
                    if gw.is_some() { "some" } else { "none" },
                    if gw.is_some() {
                        "writes none of"
                    } else {
                        "writes"
                    }
                ))
                .into());
            }
        }
        if grads.params.is_some() != want_params {
            return Err(CudaError::Mismatch(format!(
                "params gradient words: the dQ kernel {} them",
                if want_params {
                    "needs"
                } else {
                    "writes none of"
                }
            ))
            .into());
        }
        // a mask over captured tensors: its ranges made on the device where its table
        // at the backward's tiles fits (module header)
        let group = if plan.mask().uses_h {
            (shape.hq / shape.hkv.max(1)) as u32
        } else {
            1
        };
        let device_table = if matches!(kernels.kv_bounds(), KvBounds::Table)
            && mask.is_none()
            && super::super::builds_tables(plan, opts, ko)
        {
            let m = plan.mask();
            let geom = DeviceTable::new(&shape, ko.q_block, ko.kv_block, m.uses_b, m.uses_h);
            match geom.capacity(&shape) {
                Some(cap) => {
                    if self
                        .bwd_tables
                        .as_ref()
                        .is_none_or(|k| k.for_options != *ko)
                    {
                        self.bwd_tables = Some(Arc::new(bwd_table_kernels(g, plan, ko)?));
                    }
                    let k = self.bwd_tables.clone().expect("made above");
                    Some((k, geom, cap))
                }
                None => None,
            }
        } else {
            None
        };
        laps.lap(crate::host_trace::Stage::Skip);
        let nq = |qb: u32| shape.lq.div_ceil(qb as usize);
        let nkv = |kb: u32| shape.lkv.div_ceil(kb as usize);
        // SAFETY: the caller vouches for `stream` (see above).
        let st = unsafe { self.caller.get(g, stream, capture, bindings.params.len()) }?;
        st.set_params(&words(bindings), capture)?;
        let s = st.dev.stream.clone();
        let ptr = |b: &CudaSlice<u32>| b.device_ptr(&s).0;
        let state = StateBufs {
            params: ptr(&st.params),
            err: ptr(&st.err),
            zero: ptr(&st.zero),
            tiles: ptr(&st.tiles),
        };
        let dq_spec = kernels.dq_spec();
        let work = kernels
            .dq_workspace(&shape)
            .map(|n| (n, crate::cuda::backward::dq_accum_zeroed(ko)));
        let (mut a, zero) = backward_args(
            dq_spec, &shape, scale, bufs, tensors, grads, bindings, state, work,
        )?;
        match kernels.kv_bounds() {
            KvBounds::ClosedForm(cf) => {
                let bounds = plan.closed_form_bounds(cf, &shape, bindings)?;
                closed_form_args(&mut a, kernels.kv_bounds(), bounds.as_deref());
            }
            KvBounds::Table if mask.is_some() => {
                let m = mask.expect("matched");
                let kv = match m.docs {
                    // the backward's document kv tiles (`PtxOptions::bwd_doc_tiles`): the
                    // list, its length (the tiles per kv head) and the ranges per (batch,
                    // q block), in entries; the pre kernel reads no ranges
                    Some(d) if ko.bwd_doc_tiles => {
                        let kv = ranges_args(&mut a, (m.kv, d.ranges), [m.strides[0], (1, 0)]);
                        a.scalar(P::DocTiles, Arg::Ptr(d.tiles));
                        a.i32(P::NumDocTiles, d.n as i32);
                        a.extent(GridDim::DocTiles, d.n);
                        kv
                    }
                    None if !ko.bwd_doc_tiles => ranges_args(&mut a, (m.kv, m.q), m.strides),
                    _ => {
                        return Err(CudaError::Mismatch(
                            "backward kernels on document kv tiles run with a block mask's document kv tiles only".into(),
                        )
                        .into());
                    }
                };
                // SAFETY: the caller vouches for its buffers and the block mask's ranges
                // (checked against these kernels' tiles and map layout by
                // `Bound::check_block_mask`); params, error and zero words are this
                // stream state's.
                unsafe { kernels.launch_args(&st.dev, &shape, (&kv, &a), &zero) }?;
                return Ok(());
            }
            KvBounds::Table => {
                let tiles = (ko.q_block, ko.kv_block);
                let recipe = plan.map_recipe();
                let key = RangesKey {
                    shape,
                    tiles,
                    // masks over params, and the linear conjuncts of masks over tensors
                    params: if recipe == MapRecipe::PerShape {
                        Vec::new()
                    } else {
                        words(bindings)
                    },
                    dense: recipe == MapRecipe::Tensors,
                };
                if st.ranges.as_ref().map(|r| &r.key) != Some(&key) {
                    if capture {
                        return Err(needs_warmup(
                            "upload the backward's block ranges for this shape and these param values",
                        )
                        .into());
                    }
                    let nonempty = |v: Vec<i32>| if v.is_empty() { vec![0] } else { v };
                    st.ranges = Some(match (key.dense, &device_table) {
                        // made on the device by every call (below)
                        (true, Some((_, geom, cap))) => {
                            let (geom, cap) = (*geom, *cap);
                            let rows = geom.b_maps as usize * geom.h_maps as usize * nq(tiles.0);
                            let kv_maps = geom.b_maps as usize * (geom.h_maps / group) as usize;
                            let table = Arc::new((
                                st.dev.zeros::<u32>((2 * rows).max(1))?,
                                st.dev.zeros::<u32>((3 * cap).max(1))?,
                            ));
                            let bufs = Arc::new((
                                st.dev.zeros::<i32>((4 * kv_maps * nkv(tiles.1)).max(1))?,
                                st.dev.zeros::<i32>((4 * rows).max(1))?,
                            ));
                            StreamRanges {
                                key,
                                bufs,
                                strides: map_strides(plan.mask(), &geom, group),
                                table: Some((table, geom)),
                            }
                        }
                        (true, None) => {
                            let (kr, qr) = tensor_mask_ranges(plan, &shape, tiles, bindings)?;
                            StreamRanges {
                                key,
                                bufs: Arc::new((
                                    st.dev.upload(&nonempty(kr))?,
                                    st.dev.upload(&nonempty(qr))?,
                                )),
                                strides: [(0, 0), (0, 0)],
                                table: None,
                            }
                        }
                        (false, _) => {
                            let maps = plan.block_maps(
                                &shape,
                                tiles.0 as usize,
                                tiles.1 as usize,
                                bindings,
                            )?;
                            let ((kr, ks), (qr, qs)) = (kv_ranges(&maps, &shape), q_ranges(&maps));
                            StreamRanges {
                                key,
                                bufs: Arc::new((
                                    st.dev.upload(&nonempty(kr))?,
                                    st.dev.upload(&nonempty(qr))?,
                                )),
                                strides: [ks, qs],
                                table: None,
                            }
                        }
                    });
                    // (the replaced buffers are freed in stream order, unless a captured
                    // graph may read them: pinned)
                }
                laps.lap(crate::host_trace::Stage::Prefill);
                let r = st.ranges.as_ref().expect("made above");
                if capture && !st.pinned_ranges.iter().any(|p| Arc::ptr_eq(p, &r.bufs)) {
                    st.pinned_ranges.push(r.bufs.clone());
                }
                if let (Some((table, geom)), Some((tk, _, _))) = (&r.table, &device_table) {
                    if capture && !st.pinned.iter().any(|p| Arc::ptr_eq(p, table)) {
                        st.pinned.push(table.clone());
                    }
                    let (b, c) = bwd_table_launches(
                        plan,
                        tk.builder.spec(),
                        (&shape, scale, bindings),
                        (&bufs.forward(), tensors, state),
                        (geom, group),
                        (table.0.device_ptr(&s).0, table.1.device_ptr(&s).0),
                        (r.bufs.0.device_ptr(&s).0, r.bufs.1.device_ptr(&s).0),
                    )?;
                    // SAFETY: the table and range buffers are this stream state's, sized
                    // for this shape at the builder's tiles (`DeviceTable::capacity`, the
                    // geometry above); the params, error and zero words are this state's;
                    // the caller vouches for the tensors' pointers and dims. The builder
                    // writes only the table, the ranges kernel reads it and writes only
                    // the ranges, which only this stream's backward kernels read, in
                    // stream order.
                    unsafe {
                        tk.builder.launch_args(&st.dev, &b)?;
                        tk.ranges.launch_args(&st.dev, &c)?;
                    }
                }
                let kv = ranges_args(
                    &mut a,
                    (r.bufs.0.device_ptr(&s).0, r.bufs.1.device_ptr(&s).0),
                    r.strides,
                );
                laps.lap(crate::host_trace::Stage::Ranges);
                // SAFETY: the caller vouches for its buffers (see above); the ranges,
                // params, error and zero words are this stream state's, made for this
                // shape and the kernels' tiles.
                unsafe { kernels.launch_args(&st.dev, &shape, (&kv, &a), &zero) }?;
                laps.lap(crate::host_trace::Stage::Launch);
                return Ok(());
            }
        }
        // SAFETY: as above (no ranges: closed-form kernels).
        unsafe { kernels.launch_args(&st.dev, &shape, (&a, &a), &zero) }?;
        Ok(())
    }
}

impl CudaExec {
    /// [`StreamRanges`] of `stream`, downloaded; `None` where the stream has none.
    pub(crate) fn caller_backward_ranges(
        &self,
        stream: u64,
    ) -> ExecResult<Option<BackwardRangesSeen>> {
        let Some((st, r)) = self
            .caller
            .0
            .get(&stream)
            .and_then(|st| st.ranges.as_ref().map(|r| (st, r)))
        else {
            return Ok(None);
        };
        Ok(Some(BackwardRangesSeen {
            kv: st.dev.download(&r.bufs.0)?,
            q: st.dev.download(&r.bufs.1)?,
            on_device: r.table.is_some(),
            tiles: r.key.tiles,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::backward::sized_args;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, BwdDq, InputType, PtxOptions, spec};
    use attnc_compiler::interp::{BoundTensor, TensorData};

    /// The kernels that make a backward's ranges on the device (a mask over a captured
    /// tensor, per batch; one that reads `h` too, with GQA) get a value for every
    /// parameter and grid axis from [`bwd_table_launches`], at the tiles of the backward
    /// kernels of both matrix paths: the builder writes the table the ranges kernel
    /// reads, and the ranges kernel writes the two range buffers given.
    #[test]
    fn backward_table_launches_bind_every_kernel_parameter() {
        let sources = [
            "tensor doc: i32[B, KV];\nmask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\nattention a { mask = m; }",
            "tensor t: i32[H, KV];\nmask m(b, h, q, kv) { t[h, q] == t[h, kv] }\nattention a { mask = m; }",
        ];
        let shape = Shape {
            b: 2,
            hq: 8,
            hkv: 2,
            lq: 300,
            lkv: 77,
            d: 64,
            dv: 64,
        };
        let state = StateBufs {
            params: 0x100,
            err: 0x200,
            zero: 0x300,
            tiles: 0x400,
        };
        let fwd = crate::exec::cuda::caller::CallerBuffers {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            o: 0x4000,
            lse: 0x5000,
        };
        for src in sources {
            let prog = attnc_compiler::compile_source(src)
                .unwrap()
                .programs
                .remove(0);
            let plan = Plan::new(&prog);
            assert_eq!(plan.map_recipe(), MapRecipe::Tensors);
            let m = plan.mask();
            for (d, arch) in [(64, Arch::Sm80), (128, Arch::Sm90), (64, Arch::Sm90)] {
                let ko = PtxOptions::backward(arch, d, d, InputType::Bf16);
                let bo = bwd_table_options(&ko);
                let builder = spec(&plan, KernelKind::BlockTable, &bo).unwrap();
                let ranges = spec(&plan, KernelKind::BackwardRanges, &bo).unwrap();
                assert_eq!(
                    (builder.q_block, builder.kv_block),
                    (ko.q_block, ko.kv_block)
                );
                let geom = DeviceTable::new(&shape, ko.q_block, ko.kv_block, m.uses_b, m.uses_h);
                let group = if m.uses_h { 4 } else { 1 };
                let bindings = Bindings {
                    params: vec![],
                    tensors: prog
                        .tensors
                        .iter()
                        .map(|_| BoundTensor {
                            dims: vec![8, 77],
                            data: TensorData::I32(Vec::new()),
                        })
                        .collect(),
                };
                let (b, c) = bwd_table_launches(
                    &plan,
                    &builder,
                    (&shape, 0.125, &bindings),
                    (&fwd, &[0xf000], state),
                    (&geom, group),
                    (0xa000, 0xb000),
                    (0xc000, 0xd000),
                )
                .unwrap();
                for (s, args) in [(&builder, &b), (&ranges, &c)] {
                    let bound = args.bind(s).unwrap();
                    assert_eq!(bound.len(), s.params.len(), "{:?}", s.kind);
                    let g = args.grid(s).unwrap();
                    assert!(g.0 > 0 && g.1 > 0 && g.2 > 0, "{:?}", s.kind);
                    let at = |p: P| bound[s.params.iter().position(|x| *x == p).unwrap()];
                    assert_eq!(at(P::RowStart), Arg::Ptr(0xa000));
                    assert_eq!(at(P::Runs), Arg::Ptr(0xb000));
                }
                let nq = 300u32.div_ceil(ko.q_block);
                let bg = b.grid(&builder).unwrap();
                assert_eq!(bg, (nq, geom.h_maps, geom.b_maps));
                let cg = c.grid(&ranges).unwrap();
                let want = (
                    nq.max(77u32.div_ceil(ko.kv_block)),
                    geom.h_maps / group,
                    geom.b_maps,
                );
                assert_eq!(cg, want);
                let bound = c.bind(&ranges).unwrap();
                assert_eq!(bound[2], Arg::Ptr(0xd000), "Ranges: the dQ kernel's");
                assert_eq!(bound[3], Arg::Ptr(0xc000), "KvRanges: the dK/dV kernel's");
                assert_eq!(bound[6], Arg::I32(group as i32));
            }
        }
    }

    /// Every parameter and grid axis of the three backward kernels gets a value from the
    /// caller path's assembly (a missing one would only show on a GPU), for closed-form
    /// and table kernels (a param mask, a mask over a captured tensor), with the capture
    /// gradients of a score over a float tensor and an f32 param, on both matrix paths
    /// with dQ by a second kernel (D64) and with dQ fused (sm_90 D128, ordered and
    /// atomic: the caller's workspace bound, its semaphores zeroed, its accumulator too
    /// when unordered); the dK/dV and dQ kernels read their own ranges (fused: the dK/dV
    /// kernel the dQ kernel's, as `CudaBackward::launch_args` launches it).
    #[test]
    fn backward_args_bind_every_kernel_parameter() {
        let sources = [
            "mask m(b, h, q, kv) { q >= kv }\nattention a { mask = m; }",
            "param w: i32;\nmask m(b, h, q, kv) { (q - kv) % w == 0 }\nattention a { mask = m; }",
            "param w: i32;\nparam c: f32;\ntensor doc: i32[B, KV];\ntensor t: f32[H, 4];\nmask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\nscore s(s, b, h, q, kv) { s * c + t[h, 0] * w as f32 }\nattention a { mask = m; score = s; }",
        ];
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 77,
            lkv: 77,
            d: 64,
            dv: 64,
        };
        let bufs = CallerBackwardBuffers {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            o: 0x4000,
            lse: 0x5000,
            d_o: 0x6000,
            dlse: None,
            dq: 0x7000,
            dk: 0x8000,
            dv: 0x9000,
            delta: 0xa000,
            lse2: 0xb000,
            dq_work: None,
        };
        let work_bufs = CallerDqWork {
            accum: 0x60000,
            sem: 0x70000,
        };
        let state = StateBufs {
            params: 0xc000,
            err: 0xd000,
            zero: 0xe000,
            tiles: 0xa2000,
        };
        for (i, src) in sources.iter().enumerate() {
            let prog = attnc_compiler::compile_source(src)
                .unwrap()
                .programs
                .remove(0);
            let plan = Plan::new(&prog);
            let fused = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
            assert_eq!(
                fused.bwd_dq,
                BwdDq::OrderedBulk,
                "Bound::backward's kernels at D128"
            );
            for opts in [
                PtxOptions::backward(Arch::Sm80, 64, 64, InputType::Bf16),
                PtxOptions::backward(Arch::Sm90, 64, 64, InputType::Bf16),
                fused,
                fused.backward_fused(BwdDq::Ordered),
                fused.backward_fused(BwdDq::Atomic),
                // the non-deterministic variant of the bulk scheme (`bwd_dq_free`:
                // `BackwardOptions { deterministic: false }`)
                PtxOptions {
                    bwd_dq_free: true,
                    ..fused
                },
            ] {
                let shape = Shape {
                    d: opts.d as usize,
                    dv: opts.dv as usize,
                    ..shape
                };
                let work = crate::cuda::backward::dq_workspace(&opts, &shape);
                let is_fused = opts.bwd_dq != BwdDq::Separate;
                assert_eq!(work.is_some(), is_fused);
                let bufs = CallerBackwardBuffers {
                    dq_work: is_fused.then_some(work_bufs),
                    ..bufs
                };
                let specs: Vec<_> = [
                    KernelKind::BackwardPre,
                    KernelKind::BackwardDkDv,
                    KernelKind::BackwardDq,
                ]
                .iter()
                .map(|k| spec(&plan, *k, &opts).unwrap())
                .collect();
                let dq_spec = &specs[2];
                let bindings = Bindings {
                    params: prog
                        .params
                        .iter()
                        .map(|p| match p.ty {
                            attnc_compiler::ir::Type::F32 => attnc_compiler::ir::Scalar::F32(0.5),
                            _ => attnc_compiler::ir::Scalar::I32(5),
                        })
                        .collect(),
                    tensors: prog
                        .tensors
                        .iter()
                        .map(|t| BoundTensor {
                            dims: if t.name == "doc" {
                                vec![2, 77]
                            } else {
                                vec![4, 4]
                            },
                            data: TensorData::I32(Vec::new()),
                        })
                        .collect(),
                };
                let ptrs: Vec<u64> = (0..bindings.tensors.len() as u64)
                    .map(|j| 0xf000 + 16 * j)
                    .collect();
                let (want, want_params) = {
                    // the kernel that sums the capture gradients (fused: the dK/dV one)
                    let ps = &specs[if is_fused { 1 } else { 2 }].params;
                    let t: Vec<u32> = ps
                        .iter()
                        .filter_map(|p| match p {
                            P::TensorGrad(t) => Some(*t),
                            _ => None,
                        })
                        .collect();
                    (t, ps.contains(&P::ParamGrad))
                };
                if i == 2 {
                    assert_eq!(want, vec![1], "the score reads `t` differentiably");
                    assert!(want_params, "and the f32 param `c`");
                }
                let grads = CallerGradWords {
                    tensors: (0..bindings.tensors.len() as u32)
                        .map(|t| want.contains(&t).then_some(0x20000 + 0x1000 * t as u64))
                        .collect(),
                    params: want_params.then_some(0x30000),
                };
                let work = work.map(|n| (n, crate::cuda::backward::dq_accum_zeroed(&opts)));
                // a workspace missing, or given to kernels without one: an error
                let other = CallerBackwardBuffers {
                    dq_work: (!is_fused).then_some(work_bufs),
                    ..bufs
                };
                let e = backward_args(
                    dq_spec, &shape, 0.125, &other, &ptrs, &grads, &bindings, state, work,
                )
                .unwrap_err();
                assert!(e.to_string().contains("workspace"), "{e}");
                let (mut a, zero) = backward_args(
                    dq_spec, &shape, 0.125, &bufs, &ptrs, &grads, &bindings, state, work,
                )
                .unwrap();
                let words = want.len() + want_params as usize;
                match work {
                    None => assert_eq!(zero.len(), words),
                    Some(((accum, sem), unordered)) => {
                        // B2 Hq4 Lq77: 2 x 4 x 2 tiles of 64 x D f32 (D64 fused too since
                        // session 9)
                        assert_eq!((accum, sem), (16 * 64 * opts.d as usize, 16));
                        assert_eq!(zero[words], (work_bufs.sem, 4 * sem));
                        assert_eq!(
                            unordered,
                            opts.bwd_dq == BwdDq::Atomic || opts.bwd_dq_free,
                            "{:?} free {}",
                            opts.bwd_dq,
                            opts.bwd_dq_free
                        );
                        if unordered {
                            assert_eq!(zero[words + 1], (work_bufs.accum, 4 * accum));
                            assert_eq!(zero.len(), words + 2);
                        } else {
                            assert_eq!(zero.len(), words + 1, "the first ordered adder stores");
                        }
                    }
                }
                let kv = match &dq_spec.kv_bounds {
                    KvBounds::ClosedForm(cf) => {
                        assert_eq!(i, 0, "source {i} has a closed form");
                        let b = plan.closed_form_bounds(cf, &shape, &bindings).unwrap();
                        closed_form_args(&mut a, &specs[1].kv_bounds, b.as_deref());
                        a.clone()
                    }
                    KvBounds::Table => ranges_args(&mut a, (0x40000, 0x50000), [(2, 1), (4, 1)]),
                };
                for (k, s) in specs.iter().enumerate() {
                    // fused: the dK/dV kernel gets the dQ kernel's values
                    let q_side = k == 2 || (k == 1 && is_fused);
                    let mut args =
                        sized_args(&opts, &shape, if q_side { &a } else { &kv }).unwrap();
                    // the fused kernel's TMA maps (`bwd_tma`, the default at D128) are made
                    // at launch (`cuda::tma::with_tensor_maps`, by the driver) from Q, dO,
                    // the lengths, heads and the batch extent: those are here
                    for map in [P::TmaQ, P::TmaDo] {
                        if s.params.contains(&map) {
                            assert!(opts.bwd_tma && k == 1, "{:?} takes {map:?}", s.kind);
                            for from in [P::Q, P::DOut] {
                                assert!(matches!(args.value(from), Some(Arg::Ptr(_))));
                            }
                            for from in [P::Lq, P::Hq] {
                                assert!(matches!(args.value(from), Some(Arg::I32(_))));
                            }
                            let batches = attnc_compiler::backend::llvm::GridDim::Batches;
                            assert_eq!(args.extent_of(batches), Some(shape.b as u32));
                            args.scalar(map, Arg::Map(crate::cuda::args::TensorMap([0; 16])));
                        }
                    }
                    assert_eq!(s.params.contains(&P::TmaQ), opts.bwd_tma && k == 1);
                    let bound = args.bind(s).unwrap();
                    assert_eq!(bound.len(), s.params.len());
                    let g = args.grid(s).unwrap();
                    assert!(g.0 > 0 && g.1 > 0 && g.2 > 0, "{:?}", s.kind);
                    for (p, want) in [(P::DqAccum, work_bufs.accum), (P::DqSem, work_bufs.sem)] {
                        if let Some(r) = s.params.iter().position(|x| *x == p) {
                            assert!(is_fused, "{:?} reads {p:?}", s.kind);
                            assert_eq!(bound[r], Arg::Ptr(want));
                        }
                    }
                    if let Some(r) = s.params.iter().position(|p| *p == P::Ranges) {
                        let want = if q_side { 0x50000 } else { 0x40000 };
                        assert_eq!(
                            bound[r],
                            Arg::Ptr(want),
                            "{:?} reads its own ranges",
                            s.kind
                        );
                    }
                }
            }
        }
    }

    /// A mask over a captured tensor: the causal conjunct bounds the ranges (no block
    /// above the diagonal, none full); without a linear conjunct every block is partial.
    /// Checked against brute force over the conjunct: every (q, kv) pair it admits lies in
    /// a visited block of both kernels.
    #[test]
    fn tensor_mask_ranges_cover_the_linear_conjuncts() {
        let causal_doc = "tensor doc: i32[B, KV];\nmask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\nattention a { mask = m; }";
        let doc_only = "tensor doc: i32[B, KV];\nmask m(b, h, q, kv) { doc[b, q] == doc[b, kv] }\nattention a { mask = m; }";
        for (src, lq, lkv) in [
            (causal_doc, 130, 130),
            (causal_doc, 200, 77),
            (doc_only, 130, 65),
        ] {
            let prog = attnc_compiler::compile_source(src)
                .unwrap()
                .programs
                .remove(0);
            let plan = Plan::new(&prog);
            let shape = Shape {
                b: 1,
                hq: 1,
                hkv: 1,
                lq,
                lkv,
                d: 64,
                dv: 64,
            };
            let bind = Bindings {
                params: vec![],
                tensors: vec![BoundTensor {
                    dims: vec![1, lkv],
                    data: TensorData::I32(Vec::new()),
                }],
            };
            let (kv, q) = tensor_mask_ranges(&plan, &shape, (64, 64), &bind).unwrap();
            let (nq, nkv) = (lq.div_ceil(64), lkv.div_ceil(64));
            assert_eq!((q.len(), kv.len()), (4 * nq, 4 * nkv));
            assert!(
                q.chunks(4).chain(kv.chunks(4)).all(|r| r[2] == r[3]),
                "no full range"
            );
            for qi in 0..lq {
                for ki in 0..lkv {
                    let admitted = src == doc_only || qi >= ki;
                    let (r, c) = ((qi / 64) as i32, (ki / 64) as i32);
                    let qr = &q[4 * r as usize..][..4];
                    let kr = &kv[4 * c as usize..][..4];
                    if admitted {
                        assert!(
                            (qr[0]..qr[1]).contains(&c),
                            "{src}: ({qi}, {ki}) outside dQ row {r}"
                        );
                        assert!(
                            (kr[0]..kr[1]).contains(&r),
                            "{src}: ({qi}, {ki}) outside dK/dV column {c}"
                        );
                    }
                }
            }
            if src == causal_doc && lq == lkv {
                // the first q block reaches only the first kv block
                assert_eq!(&q[..4], &[0, 1, 0, 0]);
                assert_eq!(&kv[4..8], &[1, 3, 0, 0]);
            }
        }
    }
}
