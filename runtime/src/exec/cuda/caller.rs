//! CUDA forward over caller-owned device memory on the caller's stream:
//! [`CudaExec::forward_caller`], behind `Bound::forward_cuda_into` (module `external`),
//! the Python package's CUDA path.
//!
//! In: device pointers of q, k, v (bf16/f16, the binding's dtype), o (same dtype) and lse
//! (f32) allocated by the caller, captured tensors as device pointers to i32/f32 words
//! (contiguous) with their dims, the params, and a raw `CUstream` of the device's primary
//! context (torch's current stream: cudarc's context is the primary context, which the
//! CUDA runtime, hence torch, uses too, so torch's pointers are valid here).
//! Out: the launches enqueued on that stream and nothing else: no host round trip, no
//! synchronization, and no allocation once a stream has served the binding (so a
//! warmed-up call can be captured into a CUDA graph).
//!
//! Per stream a binding keeps a [`StreamState`], allocated on that stream: the params
//! words (rewritten on the device with `cuMemsetD32Async`, in stream order, where they
//! changed; see [`ParamWords`] for graph capture), the checked-mode error words (checked
//! mode is refused here: reading them needs a synchronization), one zero word (what an
//! empty captured tensor reads), and the kv source's buffers: a block table rebuilt every
//! call by the block-table kernel from the device tensors (masks over captured tensors;
//! unlike the host path, no table is kept between calls, since comparing what the mask
//! reads would need the tensors on the host), or host block maps uploaded once per shape
//! (masks over indices) or when the params change (masks over params). Closed-form
//! kernels get their offsets as launch arguments. A mask over captured tensors whose
//! table cannot be built on the device is an error here (its host maps would need the
//! tensors' data on the host). A block mask made once by the caller replaces the table
//! ([`CallerTable`]); one that carries a document tile list runs the binding's
//! document-tiled kernel (`super::documents`) on it instead of the table kernel.
//!
//! While the stream is capturing a CUDA graph, nothing is allocated or uploaded (a call
//! that would need to is an error asking for a warm-up call first), every params word is
//! written (the graph replays the writes), and table buffers a graph may read are kept
//! alive as long as the stream state.

pub(crate) mod backward;
pub(crate) mod decode;

use super::{CudaExec, Gpu, gpu_at};
use crate::cuda::problem::builder_skip_args;
use crate::cuda::{Arg, CudaDevice, CudaError, DeviceTable, LaunchArgs};
use crate::exec::ExecResult;
use crate::options::BindOptions;
use crate::policy;
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::llvm::bounds::kernel_offsets;
use attnc_compiler::backend::llvm::{GridDim, KernelParam as P, KernelSpec, KvBounds, PtxOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::{MapRecipe, Plan};
use attnc_compiler::shape::Shape;
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaSlice, DevicePtr};
use std::collections::HashMap;
use std::sync::Arc;

/// Where a forward on caller buffers reads K and V when not from packed `[B, Hkv, Lkv,
/// D]` tensors (chunked prefill's runs, `Bound::decode_cuda_into_with_lengths`; the
/// warp-specialized kernel only, which reads them through tensor maps alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerKv {
    /// A contiguous cache read in place: the (batch, kv head) slices `rows` apart
    /// (`Lkv_max`), their first `Lkv` rows read.
    Pitch(usize),
    /// A paged cache `[num_pages, 2^shift, Hkv, D]` through the page table `table`
    /// (`i32[B, max_pages]`, device memory; ids clamped into the cache); the binding must
    /// have been made with `BindOptions::kv_pages`.
    Paged {
        table: u64,
        shift: u32,
        max_pages: u32,
        num_pages: u32,
    },
}

/// A cache a forward on caller buffers reads in place: its K/V ([`CallerKv`]) and, for a
/// kernel bound with `BindOptions::device_lens`, the sequences' lengths (`i32[B]`, device
/// memory; each clamped into `0..=Lkv` by the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerCache {
    pub kv: CallerKv,
    pub seq_lens: Option<u64>,
}

/// Device pointers of one call's q, k, v, o and lse.
#[derive(Clone, Copy, Debug)]
pub struct CallerBuffers {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
}

/// The addresses the forward kernel reads a block mask's table from (a block mask made
/// once by the caller, `external::block_mask`), and its map strides.
pub(crate) struct CallerTable {
    pub row_start: u64,
    pub runs: u64,
    pub strides: (i32, i32),
    /// The block mask's document tile list (`DocExec::tiles`, four i32 words a tile):
    /// address and number of tiles, where it has one the binding's kernel can run.
    pub doc_tiles: Option<(u64, u32)>,
}

/// The addresses the backward kernels read a block mask's ranges from: (dK/dV, dQ), and
/// their strides; and its backward document kv tiles, if any.
pub(crate) struct CallerRanges {
    pub kv: u64,
    pub q: u64,
    pub strides: [(i32, i32); 2],
    pub docs: Option<CallerDocs>,
}

/// A block mask's backward document kv tiles on the device (`PtxOptions::bwd_doc_tiles`):
/// the list's address and entries, and the per-(batch, q block) ranges' address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallerDocs {
    pub tiles: u64,
    pub n: u32,
    pub ranges: u64,
}

/// A block table on the device: (one (begin, end) pair per row, runs as u32 triples).
type TableBufs = (CudaSlice<u32>, CudaSlice<u32>);

/// What the params buffer of a stream holds, as enqueued on the stream: which words a
/// call must write.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParamWords {
    words: Vec<u32>,
    /// Set once a graph captured writes of this buffer: a replay may write it at any
    /// later point, so what it holds is never known again and every call writes all.
    unknown: bool,
}

impl ParamWords {
    /// A buffer of `n` zero words.
    pub(crate) fn new(n: usize) -> Self {
        ParamWords {
            words: vec![0; n],
            unknown: false,
        }
    }
    /// The `(index, word)` writes a call with `new` must enqueue: the changed words, or
    /// every word while capturing (the graph must hold the writes) and after a capture.
    pub(crate) fn writes(&mut self, new: &[u32], capturing: bool) -> Vec<(usize, u32)> {
        debug_assert_eq!(new.len(), self.words.len());
        if capturing {
            self.unknown = true;
        }
        let all = self.unknown;
        let out = new
            .iter()
            .zip(&self.words)
            .enumerate()
            .filter(|(_, (n, o))| all || n != o)
            .map(|(i, (n, _))| (i, *n))
            .collect();
        self.words.copy_from_slice(new);
        out
    }
}

/// What a binding keeps per caller stream.
pub(crate) struct StreamState {
    dev: CudaDevice,
    params: CudaSlice<u32>,
    words: ParamWords,
    err: CudaSlice<u32>,
    /// One zero word: what an empty captured tensor reads.
    zero: CudaSlice<u32>,
    /// The persistent kernels' counters (`KernelParam::TileCounter`,
    /// `PtxOptions::tile_counter_words`: zero, and left zero by each launch in stream
    /// order).
    tiles: CudaSlice<u32>,
    /// `PtxOptions::tail_split`'s workspace (`KernelParam::TailWork`), made by the first
    /// call whose kernel reads one.
    tail: Option<CudaSlice<f32>>,
    /// The kv source's buffers and what they were made for.
    table: Option<StreamTable>,
    /// Table buffers a captured graph may read (kept while this state lives).
    pinned: Vec<Arc<TableBufs>>,
    /// The backward's block ranges ([`backward`]), and those a captured graph may read.
    ranges: Option<backward::StreamRanges>,
    pinned_ranges: Vec<Arc<backward::RangeBufs>>,
}

/// A stream's block-table buffers.
struct StreamTable {
    source: TableSource,
    bufs: Arc<TableBufs>,
    /// (map b stride, map h stride).
    strides: (i32, i32),
    /// The geometry of a table the block-table kernel fills.
    device: Option<DeviceTable>,
}

/// What a stream's table buffers hold.
#[derive(Clone, Debug, PartialEq)]
enum TableSource {
    /// Filled by the block-table kernel each call (a shape's capacity).
    Device(Shape),
    /// Host block maps for a shape (and these params words, for masks over params).
    Host(Shape, Vec<u32>),
}

/// Per-stream states of a binding.
#[derive(Default)]
pub(crate) struct CallerStates(HashMap<u64, StreamState>);

impl CallerStates {
    /// The state this binding keeps for `stream`, made (allocated on it) on the stream's
    /// first call; an error asking for a warm-up call while the stream captures a graph.
    ///
    /// # Safety
    /// `stream` is a live stream of the device's primary context, kept alive by its
    /// owner while this binding exists.
    unsafe fn get(
        &mut self,
        g: &Gpu,
        stream: u64,
        capture: bool,
        n_params: usize,
    ) -> ExecResult<&mut StreamState> {
        Ok(match self.0.entry(stream) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if capture {
                    return Err(needs_warmup("allocate its parameter buffers").into());
                }
                // SAFETY: forwarded from the caller.
                let dev = unsafe { g.device.with_borrowed_stream(stream) };
                e.insert(StreamState::new(dev, n_params)?)
            }
        })
    }
}

fn words(bind: &Bindings) -> Vec<u32> {
    bind.params.iter().map(policy::scalar_bits).collect()
}

/// Checked mode reads its error words back after the launch, which synchronizes: the
/// caller-stream entries refuse a checked binding.
fn refuse_checked(opts: &BindOptions) -> Result<(), CudaError> {
    if opts.checked {
        return Err(CudaError::Mismatch(
            "checked mode reads its error words back after the launch, which synchronizes: bind without `checked` for calls on the caller's stream".into(),
        ));
    }
    Ok(())
}

/// The error of a call that would allocate or upload while its stream captures a graph.
fn needs_warmup(what: &str) -> CudaError {
    CudaError::Mismatch(format!(
        "this call needs to {what} on its stream, which is capturing a CUDA graph: run the same call once outside the capture first (warm-up)"
    ))
}

/// Whether `stream` is capturing a CUDA graph.
fn capturing(dev: &CudaDevice, stream: u64) -> Result<bool, CudaError> {
    dev.ctx.bind_to_thread()?;
    let mut status = CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: `stream` is a live stream of this context (the caller of `forward_caller`
    // vouches for it); the driver writes one enum value into `status`.
    unsafe {
        cudarc::driver::sys::cuStreamIsCapturing(
            stream as cudarc::driver::sys::CUstream,
            &mut status,
        )
    }
    .result()?;
    Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// Runs `f`, then makes the context that was current on this thread before current
/// again if `f` changed it: cudarc binds the primary context of the binding's device to the thread,
/// which would also move the CUDA runtime's (torch's) current device of a caller whose
/// current device is another one. Without a driver, just runs `f`.
pub fn preserving_current_context<T>(f: impl FnOnce() -> T) -> T {
    use cudarc::driver::sys::{CUresult, cuCtxGetCurrent, cuCtxSetCurrent};
    if !driver_present() {
        return f();
    }
    let mut before = std::ptr::null_mut();
    // SAFETY: the driver writes one context handle (or null) into `before`; before
    // `cuInit` it returns an error and writes nothing.
    let known = unsafe { cuCtxGetCurrent(&mut before) } == CUresult::CUDA_SUCCESS;
    let out = f();
    if known && !before.is_null() {
        let mut now = std::ptr::null_mut();
        // SAFETY: as above; `before` was current on this thread when `f` started and
        // its owner (the CUDA runtime, for torch) keeps it retained, so it is alive.
        unsafe {
            if cuCtxGetCurrent(&mut now) == CUresult::CUDA_SUCCESS && now != before {
                let _ = cuCtxSetCurrent(before);
            }
        }
    }
    out
}

/// Whether libcuda can be loaded, asked once per process: cudarc's
/// `is_culib_present` dlopens (and closes) each of its library name candidates in turn,
/// a file-system search per failed name, which `preserving_current_context` would
/// otherwise pay on every call of the Python package (session 18).
fn driver_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: only tries to dlopen libcuda; no driver call is made.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// Whether `stream` of device `ordinal` (the binding's) captures a CUDA graph.
pub(crate) fn stream_capturing(ordinal: usize, stream: u64) -> ExecResult<bool> {
    let g = gpu_at(ordinal)?;
    Ok(capturing(&g.device, stream)?)
}

/// Each `(name, pointer)` is device memory of device `ordinal` (the binding's), asked
/// of the driver (`cuPointerGetAttribute`: a host-side query, no synchronization);
/// skipped while `stream` captures a graph (a capture admits only stream work). Returns
/// whether it captures (asked once per call: the launch takes the answer).
pub(crate) fn check_device_pointers(
    ordinal: usize,
    stream: u64,
    bufs: &[(&str, u64)],
) -> ExecResult<bool> {
    if stream_capturing(ordinal, stream)? {
        return Ok(true);
    }
    for &(name, ptr) in bufs {
        let mut at: i32 = -1;
        // SAFETY: the driver writes one i32 (the attribute's documented type) into
        // `at`; any `ptr` value may be asked about (an unknown one is an error).
        let r = unsafe {
            cudarc::driver::sys::cuPointerGetAttribute(
                (&mut at as *mut i32).cast(),
                cudarc::driver::sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        };
        if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            return Err(CudaError::Mismatch(format!(
                "`{name}` ({ptr:#x}) is not CUDA device memory of this process ({r:?})"
            ))
            .into());
        }
        if at != ordinal as i32 {
            return Err(CudaError::Mismatch(format!(
                "`{name}` is memory of CUDA device {at}, but this call runs on device {ordinal}; every tensor of a call must be on one device"
            ))
            .into());
        }
    }
    Ok(false)
}

impl StreamState {
    fn new(dev: CudaDevice, n_params: usize) -> Result<Self, CudaError> {
        Ok(StreamState {
            params: dev.zeros(n_params)?,
            words: ParamWords::new(n_params),
            err: dev.zeros(8)?,
            zero: dev.zeros(1)?,
            tiles: dev.zeros(PtxOptions::tile_counter_words(dev.sms()))?,
            tail: None,
            table: None,
            pinned: Vec::new(),
            ranges: None,
            pinned_ranges: Vec::new(),
            dev,
        })
    }

    /// Enqueues the params writes this call needs (see [`ParamWords::writes`]).
    fn set_params(&mut self, w: &[u32], capturing: bool) -> Result<(), CudaError> {
        let writes = self.words.writes(w, capturing);
        if writes.is_empty() {
            return Ok(());
        }
        let (base, _guard) = self.params.device_ptr(&self.dev.stream);
        for (i, word) in writes {
            // SAFETY: `params` holds `max(1, n_params)` u32s (allocated for the binding's
            // params; `ParamWords` has one word per param) and `i < n_params`; the write
            // is ordered on the stream that every launch reading the buffer uses.
            unsafe {
                cudarc::driver::sys::cuMemsetD32Async(
                    base + 4 * i as u64,
                    word,
                    1,
                    self.dev.stream.cu_stream(),
                )
            }
            .result()?;
        }
        Ok(())
    }
}

/// Device addresses of a stream state's own buffers.
#[derive(Clone, Copy, Debug)]
struct StateBufs {
    params: u64,
    err: u64,
    zero: u64,
    tiles: u64,
}

/// The launch values of a forward on caller buffers (and of its block-table builder),
/// all but the kv source's: q/k/v/o/lse, the state's params and error words, the
/// captured tensors (an empty one reads the state's zero word, dims raised to 1, as on
/// the host path), lengths, heads, scale and the grid.
fn call_args(
    spec: &KernelSpec,
    shape: &Shape,
    scale: f32,
    bufs: &CallerBuffers,
    tensors: &[u64],
    bindings: &Bindings,
    state: StateBufs,
) -> LaunchArgs {
    let nq = shape.lq.div_ceil(spec.q_block as usize) as u32;
    let mut a = LaunchArgs::new();
    a.scalar(P::Q, Arg::Ptr(bufs.q));
    a.scalar(P::K, Arg::Ptr(bufs.k));
    a.scalar(P::V, Arg::Ptr(bufs.v));
    a.scalar(P::O, Arg::Ptr(bufs.o));
    a.scalar(P::Lse, Arg::Ptr(bufs.lse));
    a.scalar(P::Params, Arg::Ptr(state.params));
    a.scalar(P::Err, Arg::Ptr(state.err));
    a.scalar(P::TileCounter, Arg::Ptr(state.tiles));
    for (i, (ptr, t)) in tensors.iter().zip(&bindings.tensors).enumerate() {
        let empty = t.dims.iter().product::<usize>() == 0;
        a.scalar(
            P::Tensor(i as u32),
            Arg::Ptr(if empty { state.zero } else { *ptr }),
        );
        for (d, n) in t.dims.iter().enumerate() {
            let dim = P::TensorDim {
                tensor: i as u32,
                dim: d as u32,
            };
            a.i32(dim, (*n).clamp(1, i32::MAX as usize) as i32);
        }
    }
    a.i32(P::Lq, shape.lq as i32);
    a.i32(P::Lkv, shape.lkv as i32);
    a.i32(P::Hq, shape.hq as i32);
    a.i32(P::Hkv, shape.hkv as i32);
    a.i32(P::NumQBlocks, nq as i32);
    a.i32(P::Batch, shape.b as i32);
    a.i32(P::KvAllPartial, 0);
    a.scalar(P::Scale, Arg::F32(scale));
    a.extent(
        GridDim::QBlocks,
        if shape.b == 0 || shape.hq == 0 { 0 } else { nq },
    );
    a.extent(GridDim::Heads, shape.hq as u32);
    a.extent(GridDim::Batches, shape.b as u32);
    a
}

/// A closed-form kernel's kv offsets for this call (`None`: every block partial).
fn closed_form_args(a: &mut LaunchArgs, kv: &KvBounds, bounds: Option<&[Bound]>) {
    match bounds {
        Some(b) => {
            for (i, k) in kernel_offsets(b).into_iter().enumerate() {
                a.i64(P::KvOffset(i as u32), k);
            }
        }
        None => {
            for i in 0..kv.coefficients().len() {
                a.i64(P::KvOffset(i as u32), 0);
            }
            a.i32(P::KvAllPartial, 1);
        }
    }
}

/// `bindings` with the position-offset param `pi` of a device-lengths launch
/// (`PtxOptions::device_lens`) at each end of the values its sequences give it, `-Lq` and
/// `Lkv - Lq`: where a linear mask's i32 arithmetic is checked (monotone in the param, so
/// the two ends decide).
fn offset_ends(shape: &Shape, bindings: &Bindings, pi: u32) -> [Bindings; 2] {
    [-(shape.lq as i64), shape.lkv as i64 - shape.lq as i64].map(|end| {
        let mut at = bindings.clone();
        if let Some(x) = at.params.get_mut(pi as usize) {
            *x = attnc_compiler::ir::Scalar::I32(end as i32);
        }
        at
    })
}

/// A table kernel's table: `(row_start, runs)` addresses, map strides, and the
/// geometry of a table built on the device (its builder's grid).
fn table_args(
    a: &mut LaunchArgs,
    (row_start, runs): (u64, u64),
    strides: (i32, i32),
    device: Option<DeviceTable>,
) {
    a.scalar(P::RowStart, Arg::Ptr(row_start));
    a.scalar(P::Runs, Arg::Ptr(runs));
    a.i32(P::MapBStride, strides.0);
    a.i32(P::MapHStride, strides.1);
    if let Some(t) = device {
        a.extent(GridDim::MapHeads, t.h_maps);
        a.extent(GridDim::MapBatches, t.b_maps);
    }
}

impl CudaExec {
    /// Enqueues one forward on the caller's stream (module header). `bindings` holds the
    /// params and the captured tensors' dims (no data: nothing here reads it); `tensors`
    /// their device pointers, in declaration order; `capture`: whether `stream` is
    /// capturing a graph (what [`check_device_pointers`] returned for this call);
    /// `kv`: K and V of a cache read in place ([`CallerKv`]) instead of packed tensors.
    ///
    /// # Safety
    /// `bufs` and `tensors` must point to live device memory of this device's primary
    /// context holding the binding's shape in its dtype (q, k, v, o: 16-bit; lse: f32;
    /// each tensor the product of its dims in i32/f32 words), o and lse written by no one
    /// else until the stream has run the launch; `stream` a live stream of that context,
    /// kept alive by its owner while this binding exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn forward_caller(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        bufs: &CallerBuffers,
        tensors: &[u64],
        bindings: &Bindings,
        mask: Option<&CallerTable>,
        stream: u64,
        capture: bool,
        cache: Option<CallerCache>,
    ) -> ExecResult<()> {
        let kv = cache.map(|c| c.kv);
        let g = gpu_at(self.ordinal)?;
        let shape = opts.shape;
        refuse_checked(opts)?;
        // this call keeps the module it starts with (a retired module of a tiered JIT is
        // released only by host-path calls, after they synchronize; the Python package
        // binds with tiers off); a block mask's document tiles run the document-tiled
        // kernel, compiled when the mask was made
        let doc_tiles = mask.and_then(|t| t.doc_tiles);
        let kernel = match (doc_tiles, self.doc.as_mut(), plan.doc_split()) {
            (None, _, _) => self.kernel.current().0,
            (Some(_), Some(doc), Some((dplan, _))) => doc.kernel(g, dplan)?,
            (Some(_), _, _) => {
                return Err(CudaError::Mismatch(
                    "a block mask's document tiles are run by a binding of a document mask with document tiles".into(),
                )
                .into());
            }
        };
        let spec = kernel.spec();
        if shape.d != spec.options.d as usize || shape.dv != spec.options.dv as usize {
            return Err(CudaError::Mismatch(format!(
                "kernel built for D={} Dv={}, called with D={} Dv={}",
                spec.options.d, spec.options.dv, shape.d, shape.dv
            ))
            .into());
        }
        if tensors.len() != bindings.tensors.len() {
            return Err(
                CudaError::Mismatch("one device pointer per captured tensor".into()).into(),
            );
        }
        // SAFETY: the caller vouches for `stream` (see above).
        let st = unsafe { self.caller.get(g, stream, capture, bindings.params.len()) }?;
        st.set_params(&words(bindings), capture)?;
        let s = st.dev.stream.clone();
        let s = &s;
        let ptr = |b: &CudaSlice<u32>| b.device_ptr(s).0;
        let state = StateBufs {
            params: ptr(&st.params),
            err: ptr(&st.err),
            zero: ptr(&st.zero),
            tiles: ptr(&st.tiles),
        };
        let nq = shape.lq.div_ceil(spec.q_block as usize) as u32;
        let mut a = call_args(spec, &shape, scale, bufs, tensors, bindings, state);
        let paged_kernel = spec.params.contains(&P::PageTable);
        match kv {
            Some(CallerKv::Pitch(p)) => {
                if !spec.options.ws || paged_kernel || p < shape.lkv {
                    return Err(CudaError::Mismatch(format!(
                        "k and v {p} rows apart need the warp-specialized kernel on packed K/V and at least Lkv = {} rows (kernel {})",
                        shape.lkv, spec.entry
                    ))
                    .into());
                }
                a.set_kv_pitch(p as u64);
            }
            Some(CallerKv::Paged {
                table,
                shift,
                max_pages,
                num_pages,
            }) => {
                if !paged_kernel || num_pages == 0 || shift > 30 {
                    return Err(CudaError::Mismatch(format!(
                        "a paged cache of {num_pages} pages of 2^{shift} rows needs a kernel bound with kv_pages (kernel {})",
                        spec.entry
                    ))
                    .into());
                }
                a.scalar(P::PageTable, Arg::Ptr(table));
                a.i32(P::PageShift, shift as i32);
                a.i32(P::MaxPages, max_pages.min(i32::MAX as u32) as i32);
                a.i32(P::NumPages, num_pages.min(i32::MAX as u32) as i32);
            }
            None if paged_kernel => {
                return Err(CudaError::Mismatch(format!(
                    "kernel {} reads a paged cache: call it with its page table",
                    spec.entry
                ))
                .into());
            }
            None => {}
        }
        // (lengths on the device: the kernel of a `device_lens` binding reads them, no
        // other does)
        match (
            spec.params.contains(&P::SeqLens),
            cache.and_then(|c| c.seq_lens),
        ) {
            (true, Some(p)) => a.scalar(P::SeqLens, Arg::Ptr(p)),
            (false, None) => {}
            (true, None) => {
                return Err(CudaError::Mismatch(format!(
                    "kernel {} reads the sequences' lengths on the device: call it with seq_lens",
                    spec.entry
                ))
                .into());
            }
            (false, Some(_)) => {
                return Err(CudaError::Mismatch(format!(
                    "kernel {} does not read lengths on the device (bind with device_lens)",
                    spec.entry
                ))
                .into());
            }
        }
        if spec.params.contains(&P::TailWork) {
            let need = spec.options.tail_work_floats(st.dev.sms());
            if st.tail.as_ref().is_none_or(|t| t.len() < need) {
                if capture {
                    return Err(needs_warmup("allocate its tail workspace").into());
                }
                st.tail = Some(st.dev.zeros(need)?);
            }
            if let Some(t) = &st.tail {
                a.scalar(P::TailWork, Arg::Ptr(t.device_ptr(s).0));
            }
        }
        // a block mask the caller made once (`external::block_mask`): its document tiles
        // on the document-tiled kernel, or its table
        if let (Some((tiles, n)), Some((dplan, _))) = (doc_tiles, plan.doc_split()) {
            let KvBounds::ClosedForm(cf) = &spec.kv_bounds else {
                return Err(CudaError::Mismatch(
                    "the document-tiled kernel reads the closed form of its mask's linear part"
                        .into(),
                )
                .into());
            };
            let bounds = dplan.closed_form_bounds(cf, &shape, bindings)?;
            closed_form_args(&mut a, &spec.kv_bounds, bounds.as_deref());
            a.doc_tiles(tiles, n, shape.hq);
            // SAFETY: as the launch below; the tile list is the block mask's, made by
            // `DocExec::tiles` for this binding's shape and these captures
            // (`Bound::check_block_mask` checked its kernel's tile height and length; the
            // caller vouches for its words), every tile inside its sequence.
            unsafe { kernel.launch_args(&st.dev, &a) }?;
            self.doc_calls += 1;
            return Ok(());
        }
        if let Some(t) = mask {
            if !matches!(spec.kv_bounds, KvBounds::Table) {
                return Err(CudaError::Mismatch(
                    "a block mask is read by table kernels only".into(),
                )
                .into());
            }
            table_args(&mut a, (t.row_start, t.runs), t.strides, None);
            // SAFETY: as below; the block mask's table is the caller's, checked against
            // this kernel's tiles, map layout and row count (`Bound::check_block_mask`).
            unsafe { kernel.launch_args(&st.dev, &a) }?;
            return Ok(());
        }
        // the kv source, as the host path chooses it (`CudaExec::problem`)
        let m = plan.mask();
        // (`device_lens`: one map per sequence, each built at its own lengths)
        let device_lens = spec.options.device_lens;
        let uses_b = m.uses_b || device_lens.is_some();
        let device_geom = self.table.as_ref().and_then(|_| {
            let t = DeviceTable::new(&shape, spec.q_block, spec.kv_block, uses_b, m.uses_h);
            t.capacity(&shape).map(|cap| (t, cap))
        });
        if device_lens.is_some()
            && device_geom.is_none()
            && matches!(spec.kv_bounds, KvBounds::Table)
        {
            return Err(CudaError::Mismatch(
                "lengths on the device with a mask without a closed form need its block table built on the GPU (the table of these shapes is too large, or ATTNC_BLOCK_TABLES=host)".into(),
            )
            .into());
        }
        let mut builder_args = None;
        if let (Some(builder), Some((geom, cap))) = (&self.table, device_geom) {
            let src = TableSource::Device(shape);
            if st.table.as_ref().map(|t| &t.source) != Some(&src) {
                if capture {
                    return Err(needs_warmup("allocate its block table").into());
                }
                let rows = 2 * geom.b_maps as usize * geom.h_maps as usize * nq as usize;
                let bufs = Arc::new((st.dev.zeros::<u32>(rows)?, st.dev.zeros::<u32>(3 * cap)?));
                let strides = (
                    if uses_b { geom.h_maps as i32 } else { 0 },
                    if m.uses_h { 1 } else { 0 },
                );
                st.table = Some(StreamTable {
                    source: src,
                    bufs,
                    strides,
                    device: Some(geom),
                });
            }
            let mut skip = plan.skip_bounds(&shape, bindings)?;
            // (`device_lens`: as the closed form below, the offsets at the param's value
            // 0, which the builder shifts per sequence, usable only if valid at both ends
            // of its values)
            if let (Some(pi), Some(_)) = (device_lens, &skip) {
                for at in offset_ends(&shape, bindings, pi) {
                    if plan.skip_bounds(&shape, &at)?.is_none() {
                        skip = None;
                    }
                }
            }
            builder_args = Some((
                builder.clone(),
                builder_skip_args(builder.spec(), skip.as_deref())?,
            ));
        } else if let KvBounds::ClosedForm(cf) = &spec.kv_bounds {
            let mut bounds = plan.closed_form_bounds(cf, &shape, bindings)?;
            // (`device_lens`: the offsets at the param's value 0, which the kernel shifts
            // per sequence; usable only if the mask's i32 arithmetic cannot wrap at any of
            // its values, `-Lq ..= Lkv - Lq`: a linear mask is monotone in it, so its two
            // ends decide)
            if let Some(pi) = spec.options.device_lens {
                for at in offset_ends(&shape, bindings, pi) {
                    if plan.closed_form_bounds(cf, &shape, &at)?.is_none() {
                        bounds = None;
                    }
                }
            }
            closed_form_args(&mut a, &spec.kv_bounds, bounds.as_deref());
        } else {
            let recipe = plan.map_recipe();
            if recipe == MapRecipe::Tensors {
                return Err(CudaError::Mismatch(
                    "this mask reads captured tensors and its block table cannot be built on the GPU here (too large, or ATTNC_BLOCK_TABLES=host): its host block maps would need the tensors' data on the host; call with host tensors instead".into(),
                )
                .into());
            }
            let key_words = if recipe == MapRecipe::PerShape {
                Vec::new()
            } else {
                words(bindings)
            };
            let src = TableSource::Host(shape, key_words);
            if st.table.as_ref().map(|t| &t.source) != Some(&src) {
                if capture {
                    return Err(needs_warmup(
                        "upload the block maps of these param values (a mask over params)",
                    )
                    .into());
                }
                let mut scratch = None;
                let maps = policy::maps_for(
                    &mut self.maps,
                    &mut scratch,
                    plan,
                    opts,
                    spec.q_block as usize,
                    spec.kv_block as usize,
                    bindings,
                )?;
                let (row_start, runs) = maps.flatten();
                let runs: Vec<u32> = runs.iter().flat_map(|r| [r.start, r.end, r.full]).collect();
                let nonempty = |v: Vec<u32>| if v.is_empty() { vec![0] } else { v };
                let bufs = Arc::new((
                    st.dev.upload(&nonempty(row_start))?,
                    st.dev.upload(&nonempty(runs))?,
                ));
                let strides = (maps.b_stride as i32, maps.h_stride as i32);
                // the replaced buffers are freed in stream order (after the launches
                // that read them), unless a captured graph may read them
                st.table = Some(StreamTable {
                    source: src,
                    bufs,
                    strides,
                    device: None,
                });
            }
        }
        if let Some(t) = &st.table
            && matches!(spec.kv_bounds, KvBounds::Table)
        {
            if capture && !st.pinned.iter().any(|p| Arc::ptr_eq(p, &t.bufs)) {
                st.pinned.push(t.bufs.clone());
            }
            table_args(
                &mut a,
                (ptr(&t.bufs.0), ptr(&t.bufs.1)),
                t.strides,
                t.device,
            );
        }
        if let Some((builder, skip)) = builder_args {
            let mut b = a.clone();
            b.merge(&skip);
            // SAFETY: the table buffers were allocated for this shape and the builder's
            // tiles (`DeviceTable::capacity`, the geometry above); the params, error and
            // zero words are this stream state's; the caller vouches for the tensors'
            // pointers and dims (see above). The builder writes only the table, which
            // only this stream's launches read, in stream order.
            unsafe { builder.launch_args(&st.dev, &b) }?;
        }
        // SAFETY: q, k, v, o, lse and the tensors are the caller's (vouched for above:
        // the bound shape in the kernel's dtypes, which is what the kernel indexes for the
        // lengths and heads set above); every other buffer is this stream state's, sized
        // for the shape and the kernel's tiles (table) or the params (params words).
        unsafe { kernel.launch_args(&st.dev, &a) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::problem::builder_skip_args;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions, spec};
    use attnc_compiler::interp::{BoundTensor, TensorData};

    /// Every parameter and grid axis of the forward kernel (and of the block-table
    /// builder) gets a value from the caller path's assembly, for each kv source (a
    /// missing one would only show on a GPU): closed form, host maps of a param mask,
    /// a table built on the device; with an empty captured tensor.
    #[test]
    fn caller_args_bind_every_kernel_parameter() {
        let sources = [
            "param w: i32;\nmask m(b, h, q, kv) { q >= kv && q - kv < w }\nattention a { mask = m; }",
            "param w: i32;\nmask m(b, h, q, kv) { (q - kv) % w == 0 }\nattention a { mask = m; }",
            "param w: i32;\ntensor doc: i32[B, KV];\ntensor t: f32[N];\nmask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\nscore s(s, b, h, q, kv) { s + t[0] * w as f32 }\nattention a { mask = m; score = s; }",
        ];
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 77,
            lkv: 65,
            d: 64,
            dv: 64,
        };
        let bufs = CallerBuffers {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            o: 0x4000,
            lse: 0x5000,
        };
        let state = StateBufs {
            params: 0x6000,
            err: 0x7000,
            zero: 0x8000,
            tiles: 0xa1000,
        };
        for (i, src) in sources.iter().enumerate() {
            let prog = attnc_compiler::compile_source(src)
                .unwrap()
                .programs
                .remove(0);
            let plan = Plan::new(&prog);
            for arch in [Arch::Sm80, Arch::Sm90] {
                let opts = PtxOptions::new(arch, 64, 64, InputType::Bf16);
                let fwd = spec(&plan, KernelKind::Forward, &opts).unwrap();
                let bindings = Bindings {
                    params: vec![attnc_compiler::ir::Scalar::I32(5)],
                    tensors: prog
                        .tensors
                        .iter()
                        .map(|t| BoundTensor {
                            dims: if t.name == "doc" {
                                vec![2, 65]
                            } else {
                                vec![0]
                            },
                            data: TensorData::I32(Vec::new()),
                        })
                        .collect(),
                };
                let ptrs: Vec<u64> = (0..bindings.tensors.len() as u64)
                    .map(|j| 0x9000 + j)
                    .collect();
                let mut a = call_args(&fwd, &shape, 0.125, &bufs, &ptrs, &bindings, state);
                match &fwd.kv_bounds {
                    KvBounds::ClosedForm(cf) => {
                        assert_eq!(i, 0, "source {i} has a closed form");
                        let b = plan.closed_form_bounds(cf, &shape, &bindings).unwrap();
                        closed_form_args(&mut a, &fwd.kv_bounds, b.as_deref());
                    }
                    KvBounds::Table => {
                        let m = plan.mask();
                        let device = (plan.map_recipe() == MapRecipe::Tensors).then(|| {
                            DeviceTable::new(&shape, fwd.q_block, fwd.kv_block, m.uses_b, m.uses_h)
                        });
                        table_args(&mut a, (0xa000, 0xb000), (1, 0), device);
                        if device.is_some() {
                            let builder = spec(&plan, KernelKind::BlockTable, &opts).unwrap();
                            let skip = plan.skip_bounds(&shape, &bindings).unwrap();
                            let mut b = a.clone();
                            b.merge(&builder_skip_args(&builder, skip.as_deref()).unwrap());
                            b.bind(&builder).unwrap();
                            b.grid(&builder).unwrap();
                        }
                    }
                }
                let args = a.bind(&fwd).unwrap();
                assert_eq!(args.len(), fwd.params.len());
                assert_eq!(a.grid(&fwd).unwrap().0, 77u32.div_ceil(fwd.q_block));
                // an empty tensor reads the zero word
                if i == 2 {
                    let t = fwd.params.iter().position(|p| *p == P::Tensor(1)).unwrap();
                    assert_eq!(args[t], Arg::Ptr(0x8000));
                }
            }
        }
    }

    #[test]
    fn preserving_the_context_returns_what_f_returns() {
        assert_eq!(preserving_current_context(|| 7), 7);
    }

    #[test]
    fn params_words_written_when_changed_and_always_after_a_capture() {
        let mut w = ParamWords::new(3);
        // a fresh buffer holds zeros: only the nonzero words are written
        assert_eq!(w.writes(&[0, 5, 0], false), vec![(1, 5)]);
        assert_eq!(w.writes(&[0, 5, 0], false), vec![]);
        assert_eq!(w.writes(&[1, 5, 7], false), vec![(0, 1), (2, 7)]);
        // a capture writes every word (the graph replays them) ...
        assert_eq!(w.writes(&[1, 5, 7], true), vec![(0, 1), (1, 5), (2, 7)]);
        // ... and afterwards a replay may have changed the buffer at any time
        assert_eq!(w.writes(&[1, 5, 7], false), vec![(0, 1), (1, 5), (2, 7)]);
        let mut none = ParamWords::new(0);
        assert_eq!(none.writes(&[], true), vec![]);
    }
}
