//! The GPU backward pass: loads the three kernels of `backend::llvm::backward` and runs
//! them on one stream: pre (Delta, LSE in log2 units), dK/dV, dQ.
//!
//! In: the three [`PtxKernel`]s ([`emit_backward_kernels`]), a [`Shape`], Q/K/V/O/dO as
//! 16-bit bit patterns of the kernels' input type, LSE (f32, natural log, as the forward
//! writes it), an optional dLSE, the scale, [`Bindings`] and the launch's blocks
//! ([`BwdBlocks`]): the closed form's bounds (kernels whose mask has a closed form;
//! `None` when it cannot be trusted for the launch: every block is then visited as
//! partial), or the block maps of the kernels' Br x Bc tiles, from which the host makes
//! the per-row ranges the kernels read ([`q_ranges`], and the transposed [`kv_ranges`]);
//! kernels on document kv tiles (`PtxOptions::bwd_doc_tiles`) take the maps with the
//! call's entry list and its ranges per (batch, q block) (`BwdBlocks::Documents`).
//! Out: dQ, dK, dV (16-bit, the input type) and, when the score reads captured float
//! tensors or f32 params differentiably, their gradients (f32; the dQ kernel accumulates
//! them in fixed point, `backend::llvm::backward` "Capture gradients"), or a
//! [`CudaError`].
//!
//! The kernels come from the process's [`JitCache`] under their [`KernelKind`]s
//! ([`CudaBackward::from_jit`]) and launch through [`CudaKernel::launch_args`], like every
//! other kind; [`CudaBackward::load`] loads generated kernels directly (tests).
//!
//! With dQ fused into the dK/dV kernel (`PtxOptions::bwd_dq` `Ordered`, the default on
//! sm_90: `backend::llvm::backward::fused`) the three kernels are pre, dK/dV + dQ (adding
//! into an f32 workspace, `DqAccum`, in an order fixed by per-tile semaphores, `DqSem`,
//! zeroed here before it) and the dQ conversion; the capture gradients are then summed
//! by the dK/dV kernel. `BwdDq::OrderedBulk` (the same order, the additions made by a
//! writer warpgroup with bulk reductions; 384 threads) needs nothing else here.
//!
//! With `PtxOptions::bwd_pdl` (fused; the default for bands and block tables) the fused
//! kernel and the dQ conversion are launched with programmatic stream serialization
//! ([`CudaKernel::launch_args_overlapped`], sm_90; each waits in the kernel for what it
//! reads), and the fused scheme's zeroing always comes before the pre kernel; with
//! `PtxOptions::bwd_convert_early` `DqSem` has two more words (the fused writers' done
//! count, [`dq_workspace`], and the count of conversion CTAs that waited for the whole
//! fused grid because their tile's flag did not come in time,
//! [`CudaBackward::early_fallbacks`]).
//!
//! Deterministic (all but `BwdDq::Atomic`): every dK/dV element is summed by one thread
//! in a fixed order, every dQ element by one thread (separate) or by the kv blocks in
//! descending order (fused, `Ordered`), and capture gradients are sums of integers
//! (exact, in any order), so the same inputs give bit-identical gradients.

use super::problem::{KvBlocks, Qkv};
use super::{CudaDevice, CudaError, CudaKernel, DeviceProblem, JitCache, JitTiers, LaunchArgs};
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::documents::tile_in_sequence;
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::backward::{
    BackwardKind, convert_early, emit_backward, fixed_to_f32, pdl, pre_rows_per_cta,
};
use attnc_compiler::backend::llvm::{
    BwdDq, KernelParam, KvBounds, LlvmError, PtxKernel, PtxOptions,
};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// Generates the pre, dK/dV and dQ kernels of `plan`'s program.
pub fn emit_backward_kernels(plan: &Plan, opts: &PtxOptions) -> Result<[PtxKernel; 3], LlvmError> {
    Ok([
        emit_backward(plan, opts, BackwardKind::Pre)?,
        emit_backward(plan, opts, BackwardKind::DkDv)?,
        emit_backward(plan, opts, BackwardKind::Dq)?,
    ])
}

/// The three loaded backward kernels of one program and options (shared with the
/// process's [`JitCache`] when they come from it, [`CudaBackward::from_jit`]).
pub struct CudaBackward {
    pre: Arc<CudaKernel>,
    dkdv: Arc<CudaKernel>,
    dq: Arc<CudaKernel>,
}

/// Inputs, intermediates and outputs of one backward problem, on the device.
pub struct BackwardProblem {
    /// Q, K, V, O, LSE, params, captured tensors, error words, closed-form offsets.
    fwd: DeviceProblem,
    d_o: CudaSlice<u16>,
    dlse: Option<CudaSlice<f32>>,
    delta: CudaSlice<f32>,
    lse2: CudaSlice<f32>,
    pub dq: CudaSlice<u16>,
    pub dk: CudaSlice<u16>,
    pub dv: CudaSlice<u16>,
    /// Table kernels: the (dK/dV, dQ) ranges with their (b, head) map strides (kernels on
    /// document kv tiles: the dQ ranges are the list's, per (batch, q block), in entries).
    ranges: Option<[Ranges; 2]>,
    /// Kernels on document kv tiles (`PtxOptions::bwd_doc_tiles`): the entry list
    /// (`KernelParam::DocTiles`) and its length in entries (`NumDocTiles`).
    docs: Option<(CudaSlice<i32>, u32)>,
    /// Per captured tensor: its gradient's fixed-point words (three u64 per element),
    /// for the tensors whose gradient the dQ kernel computes.
    tensor_grads: Vec<Option<CudaSlice<u64>>>,
    /// The params' gradient words (three u64 per param), when the dQ kernel computes any.
    param_grads: Option<CudaSlice<u64>>,
    /// Elements per captured tensor, and the number of params.
    tensor_counts: Vec<usize>,
    n_params: usize,
    /// Fused dQ: the f32 workspace and the per-tile semaphores (`KernelParam::DqAccum`,
    /// `DqSem`).
    dq_work: Option<(CudaSlice<f32>, CudaSlice<u32>)>,
}

/// Per-row block ranges on the device with their (b, head) map strides.
type Ranges = (CudaSlice<i32>, (i32, i32));

/// What a backward launch is told about its blocks (must match the kernels'
/// `kv_bounds`).
#[derive(Clone, Copy, Debug)]
pub enum BwdBlocks<'a> {
    /// Closed-form kernels: this launch's bounds, or `None` (every block partial).
    ClosedForm(Option<&'a [Bound]>),
    /// Table kernels: block maps built for the kernels' `q_block` x `kv_block` tiles.
    Maps(&'a BlockMaps),
    /// Table kernels on document kv tiles (`PtxOptions::bwd_doc_tiles`): the block maps
    /// (the dK/dV ranges, which the pre kernel's arguments carry), the entry list (four
    /// i32 words an entry, `(b, row0, rows, kj)`) and the entries' ranges per (batch, q
    /// block), as `backend::llvm::bounds::doc_kv_ranges` makes them for the kernels' tiles.
    Documents {
        maps: &'a BlockMaps,
        tiles: &'a [i32],
        ranges: &'a [i32],
    },
}

/// Checks a call's document kv tiles (`BwdBlocks::Documents`) against `shape` and the
/// kernels' tiles, so that no kernel reads outside its buffers: four words an entry `(b,
/// row0, rows, kj)` with `b < B`, the entry's keys `row0 + kj kv_block ..` inside the
/// document and the document inside the sequence (`Lq == Lkv`); the ranges four words per
/// (batch, q block), each `[first, end, full_first, full_end]` with `first <= end <= n`
/// and the full run inside it (or empty). Returns the entry count `n`.
pub fn check_doc_list(
    tiles: &[i32],
    ranges: &[i32],
    shape: &Shape,
    q_block: u32,
    kv_block: u32,
) -> Result<u32, CudaError> {
    let bad = |m: String| Err(CudaError::Mismatch(format!("document kv tiles: {m}")));
    let want = shape.b * shape.lq.div_ceil(q_block as usize) * 4;
    if shape.lq != shape.lkv || !tiles.len().is_multiple_of(4) || ranges.len() != want {
        return bad(format!(
            "{} list words and {} range words at Lq {} Lkv {}: the shape and tiles need Lq = Lkv, 4 words an entry and {want} range words",
            tiles.len(),
            ranges.len(),
            shape.lq,
            shape.lkv
        ));
    }
    let n = i64::try_from(tiles.len() / 4)
        .ok()
        .filter(|n| *n <= i32::MAX as i64)
        .ok_or_else(|| CudaError::Mismatch("too many document kv tiles".into()))?;
    for (i, t) in tiles.chunks(4).enumerate() {
        let t = [t[0], t[1], t[2], t[3]];
        if !tile_in_sequence(t, shape.b, shape.lkv, kv_block as usize) {
            return bad(format!("entry {i} {t:?} is outside its sequence"));
        }
    }
    for (i, r) in ranges.chunks(4).enumerate() {
        let [first, end, ff, fe] = [r[0], r[1], r[2], r[3]].map(|x| x as i64);
        let ok = 0 <= first && first <= end && end <= n && (ff >= fe || (first <= ff && fe <= end));
        if !ok {
            return bad(format!("range {i} {r:?} is outside the {n} entries"));
        }
    }
    Ok(n as u32)
}

/// Longest run of `true` in `f[lo..hi]` as `(start, end)`, or `(0, 0)`.
fn longest(f: impl Fn(usize) -> bool, lo: usize, hi: usize) -> (i32, i32) {
    let (mut best, mut cur) = ((0usize, 0usize), lo);
    for i in lo..=hi {
        if i == hi || !f(i) {
            if i - cur > best.1 - best.0 {
                best = (cur, i);
            }
            cur = i + 1;
        }
    }
    (best.0 as i32, best.1 as i32)
}

/// The dQ kernel's ranges: per map and q block, `[first, end, full_first, full_end]` of
/// its kv blocks (the span of its runs, and its longest full run); with the maps' (b, h)
/// strides.
pub fn q_ranges(maps: &BlockMaps) -> (Vec<i32>, (i32, i32)) {
    let mut out = Vec::new();
    for m in &maps.maps {
        for r in 0..m.n_q_blocks() {
            let runs = m.row(r);
            let (Some(a), Some(z)) = (runs.first(), runs.last()) else {
                out.extend([0; 4]);
                continue;
            };
            let mut full = (0, 0);
            for run in runs.iter().filter(|x| x.full != 0) {
                if run.end - run.start > (full.1 - full.0) as u32 {
                    full = (run.start as i32, run.end as i32);
                }
            }
            out.extend([a.start as i32, z.end as i32, full.0, full.1]);
        }
    }
    (out, (maps.b_stride as i32, maps.h_stride as i32))
}

/// The dK/dV kernel's ranges: per (b, kv head) and kv block, `[first, end, full_first,
/// full_end]` of the q blocks that any query head of the group reaches (the transposed
/// block maps), with a full range only where the block is full for every head of the
/// group; with (b, kv head) strides.
pub fn kv_ranges(maps: &BlockMaps, shape: &Shape) -> (Vec<i32>, (i32, i32)) {
    let group = shape.hq / shape.hkv.max(1);
    let nb = if maps.b_stride != 0 { shape.b } else { 1 };
    let nh = if maps.h_stride != 0 { shape.hkv } else { 1 };
    let mut out = Vec::new();
    for b in 0..nb {
        for hk in 0..nh {
            let heads: Vec<usize> = if maps.h_stride != 0 {
                (hk * group..(hk + 1) * group).collect()
            } else {
                vec![0]
            };
            let first = &maps.maps[b * maps.b_stride + heads[0] * maps.h_stride];
            let (nq, nkv) = (first.n_q_blocks(), first.n_kv_blocks());
            // per (kv block, q block): 0 empty, 1 partial somewhere, 2 full for every head
            let mut cls = vec![2u8; nq * nkv];
            let mut any = vec![false; nq * nkv];
            for h in &heads {
                let m = &maps.maps[b * maps.b_stride + h * maps.h_stride];
                let mut here = vec![0u8; nq * nkv];
                for r in 0..nq {
                    for run in m.row(r) {
                        for c in run.start as usize..run.end as usize {
                            here[c * nq + r] = if run.full != 0 { 2 } else { 1 };
                        }
                    }
                }
                for i in 0..nq * nkv {
                    any[i] |= here[i] != 0;
                    cls[i] = cls[i].min(here[i]);
                }
            }
            for c in 0..nkv {
                let col = |r: usize| c * nq + r;
                let lo = (0..nq).find(|r| any[col(*r)]);
                let Some(lo) = lo else {
                    out.extend([0; 4]);
                    continue;
                };
                let hi = (0..nq).rev().find(|r| any[col(*r)]).map_or(lo, |x| x) + 1;
                let full = longest(|r| cls[col(r)] == 2, lo, hi);
                out.extend([lo as i32, hi as i32, full.0, full.1]);
            }
        }
    }
    let strides = (
        if maps.b_stride != 0 { nh as i32 } else { 0 },
        if maps.h_stride != 0 { 1 } else { 0 },
    );
    (out, strides)
}

/// Gradients of Q, K and V (16-bit, the kernels' input type), and of the captures.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    pub dq: Vec<u16>,
    pub dk: Vec<u16>,
    pub dv: Vec<u16>,
    /// Per captured tensor (`Bindings::tensors` order): its gradient (f32, the tensor's
    /// element count) when the score reads it differentiably, else `None`.
    pub tensors: Vec<Option<Vec<f32>>>,
    /// Per param (`Bindings::params` order), when the score reads any f32 param
    /// differentiably: its gradient (0 for params it does not read so).
    pub params: Option<Vec<f32>>,
}

impl CudaBackward {
    /// Loads the kernels of [`emit_backward_kernels`] (in that order).
    pub fn load(dev: &CudaDevice, k: &[PtxKernel; 3]) -> Result<Self, CudaError> {
        Ok(CudaBackward {
            pre: Arc::new(CudaKernel::load(dev, &k[0])?),
            dkdv: Arc::new(CudaKernel::load(dev, &k[1])?),
            dq: Arc::new(CudaKernel::load(dev, &k[2])?),
        })
    }

    /// The kernels of `plan` under `opts` from the process's JIT cache (one lookup per
    /// [`KernelKind`]: memory, the cubin or PTX on disk, or generated), so that a program's
    /// backward is generated and loaded once per process and kept on disk like the
    /// forward. Untiered: each kind's module as loaded (the optimized one).
    pub fn from_jit(
        jit: &JitCache,
        dev: &CudaDevice,
        plan: &Plan,
        opts: &PtxOptions,
    ) -> Result<Self, CudaError> {
        let get = |kind| -> Result<Arc<CudaKernel>, CudaError> {
            Ok(jit.get(dev, plan, kind, opts, JitTiers::Off)?.0.current().0)
        };
        Ok(CudaBackward {
            pre: get(KernelKind::BackwardPre)?,
            dkdv: get(KernelKind::BackwardDkDv)?,
            dq: get(KernelKind::BackwardDq)?,
        })
    }

    fn opts(&self) -> &PtxOptions {
        &self.dkdv.spec().options
    }

    /// Uploads everything one backward needs.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        (q, k, v, o): (&[u16], &[u16], &[u16], &[u16]),
        lse: &[f32],
        d_o: &[u16],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        blocks: BwdBlocks,
    ) -> Result<BackwardProblem, CudaError> {
        shape
            .validate()
            .map_err(|e| CudaError::Mismatch(e.to_string()))?;
        let opts = self.opts();
        if shape.d != opts.d as usize || shape.dv != opts.dv as usize {
            return Err(CudaError::Mismatch(format!(
                "backward kernels built for D={} Dv={}, called with D={} Dv={}",
                opts.d, opts.dv, shape.d, shape.dv
            )));
        }
        let lens = [
            ("q", q.len(), shape.q_len()),
            ("k", k.len(), shape.k_len()),
            ("v", v.len(), shape.v_len()),
            ("o", o.len(), shape.o_len()),
            ("do", d_o.len(), shape.o_len()),
            ("lse", lse.len(), shape.lse_len()),
            (
                "dlse",
                dlse.map_or(shape.lse_len(), |x| x.len()),
                shape.lse_len(),
            ),
        ];
        for (name, got, want) in lens {
            if got != want {
                return Err(CudaError::Mismatch(format!(
                    "`{name}` has {got} elements, the shape needs {want}"
                )));
            }
        }
        let n_tensors = self
            .dkdv
            .spec()
            .params
            .iter()
            .filter(|p| matches!(p, KernelParam::Tensor(_)))
            .count();
        if bind.tensors.len() != n_tensors {
            return Err(CudaError::Mismatch(format!(
                "{} captured tensors bound, the kernels read {n_tensors}",
                bind.tensors.len()
            )));
        }
        let s = &dev.stream;
        let up_i32 = |x: Vec<i32>| -> Result<CudaSlice<i32>, CudaError> {
            Ok(s.clone_htod(&if x.is_empty() { vec![0] } else { x })?)
        };
        let (mut ranges, mut docs) = (None, None);
        let fwd_blocks = match (&self.dkdv.spec().kv_bounds, blocks) {
            (KvBounds::ClosedForm(_), BwdBlocks::ClosedForm(bounds)) => {
                let n = self.dkdv.spec().kv_bounds.coefficients().len();
                if let Some(b) = bounds
                    && b.len() != n
                {
                    return Err(CudaError::Mismatch(format!(
                        "{} closed-form bounds given, the kernels have {n} constraints",
                        b.len()
                    )));
                }
                KvBlocks::ClosedForm(bounds)
            }
            (KvBounds::Table, BwdBlocks::Maps(maps)) if !opts.bwd_doc_tiles => {
                let (kr, ks) = kv_ranges(maps, shape);
                let (qr, qs) = q_ranges(maps);
                ranges = Some([(up_i32(kr)?, ks), (up_i32(qr)?, qs)]);
                KvBlocks::Maps(maps)
            }
            (
                KvBounds::Table,
                BwdBlocks::Documents {
                    maps,
                    tiles,
                    ranges: dr,
                },
            ) if opts.bwd_doc_tiles => {
                let n = check_doc_list(tiles, dr, shape, opts.q_block, opts.kv_block)?;
                let (kr, ks) = kv_ranges(maps, shape);
                // the ranges of the entries per (batch, q block): one map per batch
                ranges = Some([(up_i32(kr)?, ks), (up_i32(dr.to_vec())?, (1, 0))]);
                docs = Some((up_i32(tiles.to_vec())?, n));
                KvBlocks::Maps(maps)
            }
            (KvBounds::Table, BwdBlocks::Documents { .. }) => {
                return Err(CudaError::Mismatch(
                    "these backward kernels read block ranges, not document kv tiles: pass block maps"
                        .into(),
                ));
            }
            (KvBounds::Table, BwdBlocks::Maps(_)) => {
                return Err(CudaError::Mismatch(
                    "these backward kernels run on document kv tiles: pass the tiles and their ranges"
                        .into(),
                ));
            }
            (KvBounds::ClosedForm(_), BwdBlocks::Maps(_) | BwdBlocks::Documents { .. }) => {
                return Err(CudaError::Mismatch(
                    "these backward kernels use the closed form of the mask: pass its bounds"
                        .into(),
                ));
            }
            (KvBounds::Table, BwdBlocks::ClosedForm(_)) => {
                return Err(CudaError::Mismatch(
                    "these backward kernels read block ranges: pass block maps".into(),
                ));
            }
        };
        let up16 =
            |x: &[u16]| -> Result<CudaSlice<u16>, CudaError> { Ok(s.clone_htod(&nonempty16(x))?) };
        let up32 = |x: &[f32]| -> Result<CudaSlice<f32>, CudaError> {
            Ok(s.clone_htod(if x.is_empty() { &[0.0f32][..] } else { x })?)
        };
        let mut fwd = self.dkdv.upload(
            dev,
            shape,
            Qkv::Device(up16(q)?, up16(k)?, up16(v)?),
            scale,
            bind,
            fwd_blocks,
        )?;
        fwd.o = up16(o)?;
        fwd.lse = up32(lse)?;
        let rows = shape.lse_len().max(1);
        let mut tensor_grads = vec![None; bind.tensors.len()];
        let mut param_grads = None;
        for kp in self.grad_kernel().spec().params.iter() {
            match kp {
                KernelParam::TensorGrad(t) => {
                    let t = *t as usize;
                    let n: usize = bind.tensors[t].dims.iter().product();
                    tensor_grads[t] = Some(s.alloc_zeros::<u64>(3 * n.max(1))?);
                }
                KernelParam::ParamGrad => {
                    param_grads = Some(s.alloc_zeros::<u64>(3 * bind.params.len().max(1))?);
                }
                _ => {}
            }
        }
        Ok(BackwardProblem {
            fwd,
            d_o: up16(d_o)?,
            dlse: dlse.map(up32).transpose()?,
            delta: s.alloc_zeros(rows)?,
            lse2: s.alloc_zeros(rows)?,
            dq: s.alloc_zeros(shape.q_len().max(1))?,
            dk: s.alloc_zeros(shape.k_len().max(1))?,
            dv: s.alloc_zeros(shape.v_len().max(1))?,
            ranges,
            docs,
            tensor_grads,
            param_grads,
            tensor_counts: bind
                .tensors
                .iter()
                .map(|t| t.dims.iter().product())
                .collect(),
            n_params: bind.params.len(),
            dq_work: match self.dq_workspace(shape) {
                None => None,
                Some((accum, sem)) => Some((s.alloc_zeros(accum)?, s.alloc_zeros(sem)?)),
            },
        })
    }

    /// The kernel that sums the capture gradients: dQ, or the fused dK/dV + dQ kernel.
    fn grad_kernel(&self) -> &CudaKernel {
        if self.opts().bwd_dq == BwdDq::Separate {
            &self.dq
        } else {
            &self.dkdv
        }
    }

    fn fused(&self) -> bool {
        self.opts().bwd_dq != BwdDq::Separate
    }

    /// The fused kernel's workspace for `shape`, in elements: (`DqAccum`: f32, one
    /// `q_block` x D tile per (b, query head, q block); `DqSem`: u32, one per tile, and
    /// with `PtxOptions::bwd_convert_early` the writers' done count and the conversions'
    /// fallback count after them), at least one of each; `None` where dQ is a second kernel (no workspace). What
    /// [`Self::upload`] allocates and a caller of [`Self::launch_args`] passes.
    pub fn dq_workspace(&self, shape: &Shape) -> Option<(usize, usize)> {
        dq_workspace(self.opts(), shape)
    }

    /// Launches pre, dK/dV and dQ (asynchronous, in stream order).
    pub fn launch(&self, dev: &CudaDevice, p: &BackwardProblem) -> Result<(), CudaError> {
        self.launch_parts(dev, p, [true; 3])
    }

    /// Launches the kernels `parts` selects (pre, dK/dV, dQ), in stream order: one
    /// alone times that kernel (the benchmark's per-kernel split).
    pub fn launch_parts(
        &self,
        dev: &CudaDevice,
        p: &BackwardProblem,
        parts: [bool; 3],
    ) -> Result<(), CudaError> {
        let s = &dev.stream;
        let sh = &p.fwd.shape;
        let o = self.opts();
        let rows = sh.b * sh.hq * sh.lq;
        // the capture gradients are sums over one launch (dQ, or the fused dK/dV): zero
        // them first, so that every launch (timing loops too) leaves the gradients of one
        // backward; the fused kernel's semaphores likewise (and its workspace when the
        // additions are unordered: the ordered first adder stores)
        let zero = |ptr: u64, bytes: usize| -> Result<(), CudaError> {
            // SAFETY: `ptr` is the start of a live allocation of at least `bytes` bytes
            // of `p`; the memset is ordered on `s` before the kernel that reads it.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, s.cu_stream()) }?;
            Ok(())
        };
        let mut words: Vec<(u64, usize)> = p
            .tensor_grads
            .iter()
            .flatten()
            .chain(&p.param_grads)
            .map(|x| (x.device_ptr(s).0, x.num_bytes()))
            .collect();
        let fused = self.fused();
        if let Some((accum, sem)) = &p.dq_work {
            words.push((sem.device_ptr(s).0, sem.num_bytes()));
            if dq_accum_zeroed(o) {
                words.push((accum.device_ptr(s).0, accum.num_bytes()));
            }
        }
        let sums_here = |kernel: usize| parts[kernel] && (kernel == 1) == fused;
        let zero_words = || -> Result<(), CudaError> {
            if (sums_here(1) || sums_here(2)) && !words.is_empty() {
                // the raw memset needs the context current on this thread
                s.context().bind_to_thread()?;
                for (ptr, bytes) in &words {
                    zero(*ptr, *bytes)?;
                }
            }
            Ok(())
        };
        // fused: zeroed before the pre kernel (nothing it reads), so that the fused kernel
        // follows the pre kernel directly (bwd_pdl: under its tail)
        if fused {
            zero_words()?;
        }
        if parts[0] && rows > 0 {
            let per = pre_rows_per_cta(o.dv) as usize;
            let grid = u32::try_from(rows.div_ceil(per))
                .map_err(|_| CudaError::Mismatch("too many rows for one launch".into()))?;
            launch_one(dev, &self.pre, p, (grid, 1, 1), rows as i64, None, false)?;
        }
        if !fused {
            zero_words()?;
        }
        // bwd_pdl (sm_90): the fused kernel and the conversion by programmatic dependent
        // launch (each waits for what it reads)
        let chained = pdl(o) && dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90;
        // each grid by its spec's rule, as on the caller-buffer path (`sized_args`): the
        // fused kernel's `bwd_lpt` puts kv heads on x, `bwd_persist` one CTA per SM at most,
        // `bwd_dq_pair` pairs of q tiles
        let mut extents = LaunchArgs::new();
        if let Some((_, n)) = &p.docs {
            // (the persistent grid of the document kv tiles: entries per kv head)
            extents.extent(attnc_compiler::backend::llvm::GridDim::DocTiles, *n);
        }
        let sized = sized_args(o, sh, &extents)?;
        if parts[1] && sh.lkv > 0 {
            let g = sized.grid_on(self.dkdv.spec(), dev.sms())?;
            // the fused kernel visits the q blocks whose kv range holds its block: the dQ
            // kernel's (q-major) ranges
            let r = p.ranges.as_ref().map(|r| &r[if fused { 1 } else { 0 }]);
            launch_one(dev, &self.dkdv, p, g, 0, r, chained)?;
        }
        if parts[2] && sh.lq > 0 {
            let g = sized.grid_on(self.dq.spec(), dev.sms())?;
            let r = p.ranges.as_ref().map(|r| &r[1]);
            launch_one(dev, &self.dq, p, g, 0, r, chained)?;
        }
        Ok(())
    }

    /// Waits, checks the error words (checked mode) and copies dQ, dK, dV back.
    pub fn download(&self, dev: &CudaDevice, p: &BackwardProblem) -> Result<Grads, CudaError> {
        let s = &dev.stream;
        s.synchronize()?;
        p.fwd.check_err(dev)?;
        let sh = &p.fwd.shape;
        let get = |x: &CudaSlice<u16>, n: usize| -> Result<Vec<u16>, CudaError> {
            let mut v = s.clone_dtoh(x)?;
            v.truncate(n);
            Ok(v)
        };
        let fixed = |x: &CudaSlice<u64>, n: usize| -> Result<Vec<f32>, CudaError> {
            let w = s.clone_dtoh(x)?;
            Ok(w.chunks_exact(3)
                .take(n)
                .map(|c| fixed_to_f32([c[0], c[1], c[2]]))
                .collect())
        };
        let tensors = p
            .tensor_grads
            .iter()
            .zip(&p.tensor_counts)
            .map(|(x, n)| x.as_ref().map(|x| fixed(x, *n)).transpose())
            .collect::<Result<_, _>>()?;
        Ok(Grads {
            dq: get(&p.dq, sh.q_len())?,
            dk: get(&p.dk, sh.k_len())?,
            dv: get(&p.dv, sh.v_len())?,
            tensors,
            params: p
                .param_grads
                .as_ref()
                .map(|x| fixed(x, p.n_params))
                .transpose()?,
        })
    }

    /// After [`Self::download`] (or another synchronization of the stream) of a launch of
    /// kernels with `PtxOptions::bwd_convert_early`: how many dQ conversion CTAs did not
    /// see their tile's flag within their spin budget and waited for the whole fused grid
    /// instead (`DqSem[tiles + 1]`; the same dQ, later), `None` for other kernels. A
    /// nonzero count on an ordinary launch means the flags came late (or not at all).
    pub fn early_fallbacks(
        &self,
        dev: &CudaDevice,
        p: &BackwardProblem,
    ) -> Result<Option<u32>, CudaError> {
        if !convert_early(self.opts()) {
            return Ok(None);
        }
        let Some((_, sem)) = &p.dq_work else {
            return Ok(None);
        };
        let words = dev.download(sem)?;
        Ok(early_fallback_count(self.opts(), &p.fwd.shape, &words))
    }

    /// Upload, launch, download.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_host(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        qkvo: (&[u16], &[u16], &[u16], &[u16]),
        lse: &[f32],
        d_o: &[u16],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        blocks: BwdBlocks,
    ) -> Result<Grads, CudaError> {
        let p = self.upload(dev, shape, qkvo, lse, d_o, dlse, scale, bind, blocks)?;
        self.launch(dev, &p)?;
        self.download(dev, &p)
    }

    /// Median milliseconds of one whole backward (three launches).
    pub fn time(
        &self,
        dev: &CudaDevice,
        p: &BackwardProblem,
        warmup: usize,
        iters: usize,
        reps: usize,
    ) -> Result<f64, CudaError> {
        dev.time(warmup, iters, reps, || self.launch(dev, p))
    }
}

impl CudaBackward {
    /// The kernels' options (tiles, head dims, input type).
    pub fn options(&self) -> &PtxOptions {
        self.opts()
    }

    /// The dQ kernel's launch description.
    pub fn dq_spec(&self) -> &attnc_compiler::backend::llvm::KernelSpec {
        self.dq.spec()
    }

    /// Where the dK/dV and dQ kernels find their blocks (closed form or block ranges).
    pub fn kv_bounds(&self) -> &KvBounds {
        &self.dkdv.spec().kv_bounds
    }

    /// What the backward accumulates besides dQ, dK, dV (in the dQ kernel, or the fused
    /// dK/dV kernel): the ids of the captured tensors whose gradient words it writes
    /// (`KernelParam::TensorGrad`), and whether it writes the params' gradient words
    /// (`KernelParam::ParamGrad`).
    pub fn grad_outputs(&self) -> (Vec<u32>, bool) {
        let params = &self.grad_kernel().spec().params;
        let tensors = params
            .iter()
            .filter_map(|p| match p {
                KernelParam::TensorGrad(t) => Some(*t),
                _ => None,
            })
            .collect();
        (tensors, params.contains(&KernelParam::ParamGrad))
    }

    /// Enqueues pre, dK/dV and dQ on `dev`'s stream, every parameter bound by name from
    /// `kv_args` (pre, dK/dV) and `q_args` (dQ): the caller's buffers and scalars, which
    /// differ only in the block ranges each kernel reads (`Ranges` and its strides;
    /// fused kernels: the dK/dV kernel reads the dQ kernel's, `q_args`, and both need
    /// `DqAccum` and `DqSem`);
    /// each grid sized by its
    /// spec's rule from `shape` (`PreRows`, `KvBlocks`/`KvHeads`, `QBlocks`/`Heads`,
    /// `Batches`; `Rows` set here); `zero`: device byte ranges (the capture gradients'
    /// fixed-point words; fused: also `DqSem`'s, and `DqAccum`'s under `BwdDq::Atomic`)
    /// zeroed in stream order before the kernel that sums into them (dQ, or the fused
    /// dK/dV).
    ///
    /// # Safety
    /// As [`CudaKernel::launch_args`] for each of the three kernels: every buffer of
    /// `args` and of `zero` is live device memory of `dev`'s context holding what the
    /// kernels index for `shape` (and the tensors' dims in `args`); the outputs (dQ, dK,
    /// dV, Delta, LSE2, the gradient words) overlap no input and no one else uses them
    /// until the stream has run the launches.
    pub unsafe fn launch_args(
        &self,
        dev: &CudaDevice,
        shape: &Shape,
        (kv_args, q_args): (&LaunchArgs, &LaunchArgs),
        zero: &[(u64, usize)],
    ) -> Result<(), CudaError> {
        let o = self.opts();
        let (kv, q) = (
            sized_args(o, shape, kv_args)?,
            sized_args(o, shape, q_args)?,
        );
        let fused = self.fused();
        let zero_all = || -> Result<(), CudaError> {
            if !zero.is_empty() {
                // the raw memset needs the context current on this thread
                dev.stream.context().bind_to_thread()?;
            }
            for &(ptr, bytes) in zero {
                // SAFETY: the caller vouches that `ptr` starts `bytes` bytes of live
                // device memory that only this backward writes; the memset is ordered on
                // the stream before the kernel that sums into it.
                unsafe {
                    cudarc::driver::result::memset_d8_async(ptr, 0, bytes, dev.stream.cu_stream())
                }?;
            }
            Ok(())
        };
        // bwd_pdl (sm_90): the fused kernel and the conversion by programmatic dependent
        // launch (each waits for what it reads); the zeroing before the pre kernel
        let chained = pdl(o) && dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90;
        if fused {
            zero_all()?;
            // SAFETY: forwarded from the caller (see above); each launch binds only the
            // names its spec lists; chained kernels wait for the grid before them.
            unsafe {
                self.pre.launch_args(dev, &kv)?;
                if chained {
                    self.dkdv.launch_args_overlapped(dev, &q)?;
                    return self.dq.launch_args_overlapped(dev, &q);
                }
                self.dkdv.launch_args(dev, &q)?;
            }
        } else {
            // SAFETY: as above.
            unsafe {
                self.pre.launch_args(dev, &kv)?;
                self.dkdv.launch_args(dev, &kv)?;
            }
            zero_all()?;
        }
        // SAFETY: as above.
        unsafe { self.dq.launch_args(dev, &q) }
    }
}

/// The fused dQ's workspace of kernels built with `o` for `shape` (elements of `DqAccum`,
/// f32, and of `DqSem`, u32; [`CudaBackward::dq_workspace`]), `None` for `BwdDq::Separate`.
pub fn dq_workspace(o: &PtxOptions, shape: &Shape) -> Option<(usize, usize)> {
    if o.bwd_dq == BwdDq::Separate {
        return None;
    }
    let tiles = (shape.b * shape.hq * shape.lq.div_ceil(o.q_block as usize)).max(1);
    // bwd_convert_early: the writers' done count after the tiles' semaphores, then the
    // conversions' fallback count (`CudaBackward::early_fallbacks`)
    // (bwd_persist_dyn: then the tile counter, `DQ_TILE_COUNTER`)
    let extra = if attnc_compiler::backend::llvm::backward::persist_dyn(o) {
        attnc_compiler::backend::llvm::backward::DQ_TILE_COUNTER as usize + 1
    } else {
        2 * usize::from(convert_early(o))
    };
    Some((tiles * (o.q_block * o.d) as usize, tiles + extra))
}

/// The conversions' fallback count in `words`, the `DqSem` of a launch of kernels built
/// with `o` for `shape` ([`CudaBackward::early_fallbacks`]): the word after the writers'
/// done count, `DqSem[tiles + 1]` (`convert.rs`' `wait_for_tile`) — not the workspace's
/// last word, which under `bwd_persist_dyn` is the tile counter (`DQ_TILE_COUNTER`,
/// whose final value is the number of kv tiles); `None` without the early conversion.
pub fn early_fallback_count(o: &PtxOptions, shape: &Shape, words: &[u32]) -> Option<u32> {
    if !convert_early(o) {
        return None;
    }
    let tiles = shape.b * shape.hq * shape.lq.div_ceil(o.q_block as usize);
    words.get(tiles + 1).copied()
}

/// Whether kernels built with `o` add every dQ part into a zeroed `DqAccum` (the caller
/// zeroes it before the fused kernel): the unordered schemes, `BwdDq::Atomic` and
/// `OrderedBulk` with `PtxOptions::bwd_dq_free`; the ordered ones store their first part.
pub fn dq_accum_zeroed(o: &PtxOptions) -> bool {
    o.bwd_dq == BwdDq::Atomic || (o.bwd_dq == BwdDq::OrderedBulk && o.bwd_dq_free)
}

/// `args` with what the backward kernels' grid rules and the pre kernel's row count
/// need for `shape` under the kernels' options `o`: `Rows`, and the extents `PreRows`,
/// `KvBlocks`, `KvHeads`, `QBlocks`, `QBlockPairs`, `Heads`, `Batches` (`LaunchArgs::grid_on`
/// turns them into each kernel's grid, on both launch paths).
pub fn sized_args(
    o: &PtxOptions,
    shape: &Shape,
    args: &LaunchArgs,
) -> Result<LaunchArgs, CudaError> {
    use attnc_compiler::backend::llvm::GridDim as G;
    let rows = shape.b * shape.hq * shape.lq;
    let per = pre_rows_per_cta(o.dv) as usize;
    let n32 = |x: usize| {
        u32::try_from(x).map_err(|_| CudaError::Mismatch("too many blocks for one launch".into()))
    };
    let mut a = args.clone();
    a.i64(KernelParam::Rows, rows as i64);
    a.extent(G::PreRows, n32(rows.div_ceil(per))?);
    a.extent(G::KvBlocks, n32(shape.lkv.div_ceil(o.kv_block as usize))?);
    a.extent(G::KvHeads, n32(shape.hkv)?);
    a.extent(G::QBlocks, n32(shape.lq.div_ceil(o.q_block as usize))?);
    a.extent(
        G::QBlockPairs,
        n32(shape.lq.div_ceil(2 * o.q_block as usize))?,
    );
    a.extent(G::Heads, n32(shape.hq)?);
    a.extent(G::Batches, n32(shape.b)?);
    Ok(a)
}

fn nonempty16(x: &[u16]) -> Vec<u16> {
    if x.is_empty() { vec![0] } else { x.to_vec() }
}

/// Launches one backward kernel with its parameters (`meta.params`) taken from `p`.
fn launch_one(
    dev: &CudaDevice,
    k: &CudaKernel,
    p: &BackwardProblem,
    grid: (u32, u32, u32),
    rows: i64,
    ranges: Option<&Ranges>,
    chained: bool,
) -> Result<(), CudaError> {
    use KernelParam as P;
    let s = &dev.stream;
    // the forward problem's buffers and scalars, then the backward's own
    let mut a = p.fwd.args(dev);
    a.buffer(P::DOut, &p.d_o, s);
    a.buffer(P::DLse, p.dlse.as_ref().unwrap_or(&p.delta), s);
    a.i32(P::HasDLse, p.dlse.is_some() as i32);
    a.buffer(P::Delta, &p.delta, s);
    a.buffer(P::Lse2, &p.lse2, s);
    a.buffer(P::DQ, &p.dq, s);
    a.buffer(P::DK, &p.dk, s);
    a.buffer(P::DV, &p.dv, s);
    for (t, x) in p.tensor_grads.iter().enumerate() {
        if let Some(x) = x {
            a.buffer(P::TensorGrad(t as u32), x, s);
        }
    }
    if let Some(x) = &p.param_grads {
        a.buffer(P::ParamGrad, x, s);
    }
    if let Some((accum, sem)) = &p.dq_work {
        a.buffer(P::DqAccum, accum, s);
        a.buffer(P::DqSem, sem, s);
    }
    if let Some((list, n)) = &p.docs {
        a.buffer(P::DocTiles, list, s);
        a.i32(P::NumDocTiles, *n as i32);
    }
    a.i64(P::Rows, rows);
    if let Some((t, (bs, hs))) = ranges {
        a.buffer(P::Ranges, t, s);
        a.i32(P::MapBStride, *bs);
        a.i32(P::MapHStride, *hs);
    } else if k.spec().params.contains(&P::Ranges) {
        return Err(CudaError::Mismatch(
            "a table kernel launched without block ranges".into(),
        ));
    }
    a.set_grid(grid);
    // SAFETY: every buffer has the size the kernel indexes (lengths checked in `upload`,
    // outputs allocated for the shape; the forward problem's buffers as its `upload`
    // makes them); the ranges were built for this shape and the kernels' tiles; a
    // chained launch (bwd_pdl) is of a kernel that waits for the grid before it.
    unsafe {
        if chained {
            k.launch_args_overlapped(dev, &a)
        } else {
            k.launch_args(dev, &a)
        }
    }
}

/// What one launch of `kernels` needs to know about its blocks, made on the host: the
/// closed form's bounds (`None` inside: the mask's i32 arithmetic may wrap for this
/// launch, every block is visited as partial), or the block maps of the kernels' tiles.
pub enum LaunchBlocks {
    ClosedForm(Option<Vec<Bound>>),
    Maps(BlockMaps),
}

impl LaunchBlocks {
    /// From the bind's `plan` (its analyses are not run again here).
    pub fn new(
        kernels: &CudaBackward,
        plan: &attnc_compiler::plan::Plan,
        shape: &Shape,
        bind: &Bindings,
    ) -> Result<Self, CudaError> {
        let err =
            |e: attnc_compiler::analysis::classify::BlockError| CudaError::Mismatch(e.to_string());
        Ok(match &kernels.dkdv.spec().kv_bounds {
            KvBounds::ClosedForm(cf) => {
                LaunchBlocks::ClosedForm(plan.closed_form_bounds(cf, shape, bind).map_err(err)?)
            }
            KvBounds::Table => {
                let o = kernels.opts();
                LaunchBlocks::Maps(
                    plan.block_maps(shape, o.q_block as usize, o.kv_block as usize, bind)
                        .map_err(err)?,
                )
            }
        })
    }
    pub fn as_blocks(&self) -> BwdBlocks<'_> {
        match self {
            LaunchBlocks::ClosedForm(b) => BwdBlocks::ClosedForm(b.as_deref()),
            LaunchBlocks::Maps(m) => BwdBlocks::Maps(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::analysis::blockmap::{BlockMap, Run};

    /// `check_doc_list` takes the lists `bounds::doc_kv_ranges` makes and refuses an entry
    /// outside its sequence or document, a range past the list, and wrong lengths.
    #[test]
    fn doc_lists_are_checked_before_upload() {
        use attnc_compiler::analysis::documents::Document;
        let sh = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 300,
            lkv: 300,
            d: 64,
            dv: 64,
        };
        let docs = vec![
            vec![
                Document { row0: 0, rows: 1 },
                Document { row0: 1, rows: 200 },
                Document {
                    row0: 201,
                    rows: 99,
                },
            ],
            vec![Document { row0: 0, rows: 300 }],
        ];
        let (tiles, ranges) = attnc_compiler::backend::llvm::bounds::doc_kv_ranges(
            &docs,
            &[],
            None,
            false,
            300,
            64,
            128,
        );
        let n = check_doc_list(&tiles, &ranges, &sh, 64, 128).unwrap();
        assert_eq!(n as usize, tiles.len() / 4);
        let mut t = tiles.clone();
        t[4 * 2 + 1] = 250; // an entry's document past the sequence
        assert!(check_doc_list(&t, &ranges, &sh, 64, 128).is_err());
        let mut t = tiles.clone();
        t[7] = 5; // entry 1: a kv tile past its document
        assert!(check_doc_list(&t, &ranges, &sh, 64, 128).is_err());
        let mut t = tiles.clone();
        t[0] = 2; // batch 2 of 2
        assert!(check_doc_list(&t, &ranges, &sh, 64, 128).is_err());
        let mut r = ranges.clone();
        r[1] = n as i32 + 1; // a range past the list
        assert!(check_doc_list(&tiles, &r, &sh, 64, 128).is_err());
        assert!(check_doc_list(&tiles, &ranges[4..], &sh, 64, 128).is_err());
        assert!(check_doc_list(&tiles[1..], &ranges, &sh, 64, 128).is_err());
        let cross = Shape { lkv: 333, ..sh };
        assert!(check_doc_list(&tiles, &ranges, &cross, 64, 128).is_err());
    }

    /// `DqSem`'s layout under the early conversion (no GPU): the fallback count is
    /// `DqSem[tiles + 1]` on the grid's order and under the tile counter
    /// (`bwd_persist_dyn`), whose counter word (`tiles + DQ_TILE_COUNTER`, the workspace's
    /// last) ends at the number of kv tiles (16 at B1 Hkv2 Lkv 1000, kv tiles of 128) and
    /// is no fallback count (session 23's "16 of 64 conversions fell back").
    #[test]
    fn early_fallbacks_word_under_tile_counter() {
        use attnc_compiler::backend::llvm::backward::{DQ_DONE_FLAG, DQ_TILE_COUNTER, persist_dyn};
        use attnc_compiler::backend::llvm::{Arch, InputType, samples};
        let sh = Shape {
            b: 1,
            hq: 4,
            hkv: 2,
            lq: 1000,
            lkv: 1000,
            d: 128,
            dv: 128,
        };
        // (the band's default has the counter since session 24: the grid's order beside it)
        let dyn_tiles = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16)
            .backward_for_binding(&Plan::new(&samples::sliding()), 1000);
        let base = dyn_tiles.static_tiles();
        assert!(convert_early(&base) && !persist_dyn(&base));
        assert!(convert_early(&dyn_tiles) && persist_dyn(&dyn_tiles));
        let tiles = 64;
        let kv_tiles = 16;
        for (o, extra) in [(base, 2), (dyn_tiles, DQ_TILE_COUNTER as usize + 1)] {
            let (_, n) = dq_workspace(&o, &sh).unwrap();
            assert_eq!(n, tiles + extra);
            // what a flagged launch leaves: every semaphore flagged, the writers' count,
            // no fallback, and under the counter its final value (one increment per tile)
            let mut words = vec![DQ_DONE_FLAG | 8; n];
            words[tiles] = kv_tiles;
            words[tiles + 1] = 0;
            if persist_dyn(&o) {
                words[tiles + DQ_TILE_COUNTER as usize] = kv_tiles;
            }
            assert_eq!(early_fallback_count(&o, &sh, &words), Some(0), "{o:?}");
            words[tiles + 1] = 3;
            assert_eq!(early_fallback_count(&o, &sh, &words), Some(3));
        }
    }

    /// Random block maps (one per (b, h)): the transposed ranges cover every non-empty
    /// block and call full only blocks full for every head of the group.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn kv_ranges_match_brute_force() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let shape = Shape {
                b: 2,
                hq: 4,
                hkv: 2,
                lq: (next() % 300 + 1) as usize,
                lkv: (next() % 300 + 1) as usize,
                d: 64,
                dv: 64,
            };
            let (qb, kb) = (64, 64);
            let nq = shape.lq.div_ceil(qb);
            let nkv = shape.lkv.div_ceil(kb);
            // class[map][r][c]: 0 empty, 1 partial, 2 full
            let mut class = vec![vec![vec![0u8; nkv]; nq]; 8];
            let mut maps = Vec::new();
            for cm in class.iter_mut() {
                let mut row_start = vec![0u32];
                let mut runs = Vec::new();
                for row in cm.iter_mut() {
                    for (c, x) in row.iter_mut().enumerate() {
                        *x = (next() % 3) as u8;
                        if *x != 0 {
                            runs.push(Run {
                                start: c as u32,
                                end: c as u32 + 1,
                                full: (*x == 2) as u32,
                            });
                        }
                    }
                    row_start.push(runs.len() as u32);
                }
                maps.push(BlockMap {
                    lq: shape.lq,
                    lkv: shape.lkv,
                    q_block: qb,
                    kv_block: kb,
                    row_start,
                    runs,
                });
            }
            let bm = BlockMaps {
                maps,
                b_stride: 4,
                h_stride: 1,
            };
            let (r, (bs, hs)) = kv_ranges(&bm, &shape);
            for b in 0..2 {
                for hk in 0..2 {
                    for c in 0..nkv {
                        let at = ((b * bs as usize + hk * hs as usize) * nkv + c) * 4;
                        let [first, end, ff, fe] = [r[at], r[at + 1], r[at + 2], r[at + 3]];
                        for q in 0..nq {
                            let cls: Vec<u8> =
                                (0..2).map(|i| class[b * 4 + hk * 2 + i][q][c]).collect();
                            let inside = (first..end).contains(&(q as i32));
                            if cls.iter().any(|x| *x != 0) {
                                assert!(inside, "non-empty block outside the range");
                            }
                            if (ff..fe).contains(&(q as i32)) {
                                assert!(cls.iter().all(|x| *x == 2), "full range not full");
                                assert!(inside);
                            }
                        }
                    }
                }
            }
            let (qr, _) = q_ranges(&bm);
            for (m, cm) in class.iter().enumerate() {
                for (q, row) in cm.iter().enumerate() {
                    let at = (m * nq + q) * 4;
                    for (c, x) in row.iter().enumerate() {
                        let c = c as i32;
                        if *x != 0 {
                            assert!((qr[at]..qr[at + 1]).contains(&c));
                        }
                        if (qr[at + 2]..qr[at + 3]).contains(&c) {
                            assert_eq!(*x, 2);
                        }
                    }
                }
            }
        }
    }
}
