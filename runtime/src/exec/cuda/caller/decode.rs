//! CUDA decoding over caller-owned device memory on the caller's stream:
//! [`CudaExec::decode_caller`], behind `Bound::decode_cuda_into` (module `external`), the
//! Python package's `Attention.decode` on CUDA tensors.
//!
//! In: the binding's split-KV kernels ([`DecodeModule`]: decode + combine), the launch
//! geometry (sized from the cache's capacity, so that no sequence length is needed on
//! the host), device pointers of q, the caches, `seq_lens` (i32), the page table (i32,
//! paged caches), o, lse and the caller's workspace (partials, and `ranges: i32[3 B]`),
//! the captured tensors (pointers, dims), the params, the bounds of the mask's implied
//! linear conjuncts for the logical shape, and a `CUstream` of the device's primary
//! context. Out: two launches enqueued on that stream and nothing else (no host round
//! trip, no synchronization, no allocation once the stream has served the binding, so a
//! warmed-up call can be captured in a CUDA graph):
//!
//! 1. the split-KV decode kernel, whose CTAs compute their sequence's reachable keys
//!    from its length on the device (`decode::COPY_DEVICE_RANGES`, the binding's
//!    caller-buffer kernels: `GpuDecode::caller_module`) and clamp the length into the
//!    cache (a sliding window reads only its window; a length beyond the capacity is the
//!    capacity, a negative one 0, so no read leaves the cache whatever `seq_lens` holds),
//!    over splits of the capacity (the splits past a sequence's range exit at once);
//! 2. the combine kernel.
//!
//! A module whose decode kernel reads the ranges instead (without the bit, the host
//! path's) is refused. The workspace keeps its `ranges` words (unused here).
//!
//! The params, error and zero words are the stream's state shared with the forward and
//! backward on caller buffers (see [`super`]).

use super::{StateBufs, words};
use crate::cuda::decode::{DecodeGeometry, DecodeModule, DecodePtrs, launch_values};
use crate::cuda::{Arg, LaunchArgs};
use crate::exec::ExecResult;
use crate::exec::cuda::{CudaExec, gpu_at};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::llvm::bounds::kernel_offsets;
use attnc_compiler::backend::llvm::{GridDim, KernelParam as P};
use attnc_compiler::interp::Bindings;
use cudarc::driver::DevicePtr;

/// Device pointers of one caller-buffer decode call.
#[derive(Clone, Copy, Debug)]
pub struct CallerDecodeBuffers {
    /// `q[B, Hq, Lq, D]` (16-bit).
    pub q: u64,
    /// The caches (16-bit): `[B, Hkv, Lkv_max, D]`, or `[num_pages, page_size, Hkv, D]`.
    pub k_cache: u64,
    pub v_cache: u64,
    /// `i32[B]`.
    pub seq_lens: u64,
    /// `i32[B, max_pages]` (paged caches).
    pub page_table: Option<u64>,
    /// Outputs: `o[B, Hq, Lq, Dv]` (16-bit), `lse[B, Hq, Lq]` (f32).
    pub o: u64,
    pub lse: u64,
    /// Workspace: the partials (f32, `DecodeModule::workspace`) and `ranges: i32[3 B]`
    /// (each sequence's `(lo, hi)`, then the lengths clamped into the cache).
    pub part_o: u64,
    pub part_lse: u64,
    pub ranges: u64,
}

/// The decode-ranges kernel's values: lengths, the capacity, and the implied conjuncts'
/// offsets (`None`: they bound nothing for this launch, every key of `0..n`).
/// `n`: the kernel's number of `KvOffset` params.
fn ranges_values(
    n: usize,
    geom: &DecodeGeometry,
    capacity: usize,
    bufs: &CallerDecodeBuffers,
    skip: Option<&[Bound]>,
) -> LaunchArgs {
    let mut a = LaunchArgs::new();
    a.scalar(P::SeqLens, Arg::Ptr(bufs.seq_lens));
    a.scalar(P::Ranges, Arg::Ptr(bufs.ranges));
    a.i32(P::Lq, geom.lq as i32);
    a.i32(P::Lkv, capacity as i32);
    match skip {
        Some(b) if b.len() == n => {
            for (i, k) in kernel_offsets(b).into_iter().enumerate() {
                a.i64(P::KvOffset(i as u32), k);
            }
            a.i32(P::KvAllPartial, 0);
        }
        _ => {
            for i in 0..n {
                a.i64(P::KvOffset(i as u32), 0);
            }
            a.i32(P::KvAllPartial, 1);
        }
    }
    a.extent(GridDim::Batches, geom.b);
    a
}

impl CudaExec {
    /// Enqueues one decode on the caller's stream (module header). `bindings` holds the
    /// params and the captured tensors' dims (no data); `tensors` their device pointers in
    /// declaration order; `skip` the implied conjuncts' bounds for the logical shape;
    /// `capture`: whether `stream` is capturing a graph.
    ///
    /// # Safety
    /// Every pointer of `bufs` and `tensors` must be live device memory of this binding's
    /// device holding what `geom` and the binding's shape give it (the partials as
    /// `module.workspace(geom)` says, `ranges` `2 B` i32), the outputs and workspace written
    /// by no one else until the stream has run the call; `stream` a live stream of the
    /// device's primary context, alive while this binding exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn decode_caller(
        &mut self,
        module: &DecodeModule,
        geom: &DecodeGeometry,
        capacity: usize,
        bufs: &CallerDecodeBuffers,
        tensors: &[u64],
        bindings: &Bindings,
        skip: Option<&[Bound]>,
        stream: u64,
        capture: bool,
        laps: &mut crate::host_trace::Laps,
    ) -> ExecResult<()> {
        let g = gpu_at(self.ordinal)?;
        if tensors.len() != bindings.tensors.len() {
            return Err(crate::cuda::CudaError::Mismatch(
                "one device pointer per captured tensor".into(),
            )
            .into());
        }
        // (the binding's caller-buffer kernels compute each sequence's range themselves)
        let Some(n_offsets) = module.device_ranges() else {
            return Err(crate::cuda::CudaError::Mismatch(
                "the caller-buffer decode runs kernels that compute their ranges (decode::COPY_DEVICE_RANGES)".into(),
            )
            .into());
        };
        // SAFETY: the caller vouches for `stream` (see above).
        let st = unsafe { self.caller.get(g, stream, capture, bindings.params.len()) }?;
        st.set_params(&words(bindings), capture)?;
        let s = st.dev.stream.clone();
        let ptr = |b: &cudarc::driver::CudaSlice<u32>| b.device_ptr(&s).0;
        let state = StateBufs {
            params: ptr(&st.params),
            err: ptr(&st.err),
            zero: ptr(&st.zero),
            tiles: ptr(&st.tiles),
        };
        laps.lap(crate::host_trace::Stage::Ranges);
        let ptrs = DecodePtrs {
            q: bufs.q,
            k: bufs.k_cache,
            v: bufs.v_cache,
            // a contiguous cache reads no page table: any one-word buffer
            page_table: bufs.page_table.unwrap_or(state.zero),
            // the caller's lengths (the kernel clamps them into `0..=capacity`)
            seq_lens: bufs.seq_lens,
            ranges: bufs.ranges,
            part_o: bufs.part_o,
            part_lse: bufs.part_lse,
            o: bufs.o,
            lse: bufs.lse,
            params: state.params,
            err: state.err,
            tensors: tensors
                .iter()
                .zip(&bindings.tensors)
                .map(|(p, t)| {
                    let empty = t.dims.iter().product::<usize>() == 0;
                    let dims = t
                        .dims
                        .iter()
                        .map(|d| (*d).clamp(1, i32::MAX as usize) as i32)
                        .collect();
                    (if empty { state.zero } else { *p }, dims)
                })
                .collect(),
        };
        let mut args = launch_values(geom, &ptrs);
        // the decode-ranges kernel's values: capacity, offsets (`SeqLens` the caller's)
        args.merge(&ranges_values(n_offsets, geom, capacity, bufs, skip));
        // SAFETY: the caller's buffers are sized for `geom` (vouched for above); the kernel
        // computes each range from `seq_lens` inside `0..min(seq_lens[b], capacity)`, and
        // the splits x chunk of `geom` cover the capacity, hence every range; params, error
        // and zero words are this stream state's.
        unsafe { module.launch_values(&st.dev, geom, &args) }?;
        laps.lap(crate::host_trace::Stage::Launch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions, spec};
    use attnc_compiler::plan::Plan;

    /// Every parameter and grid axis of the decode-ranges kernel gets a value, with and
    /// without usable bounds, for masks with and without linear conjuncts.
    #[test]
    fn ranges_args_bind_every_parameter() {
        for src in [
            "attention a {}",
            "param w: i32;\nmask m(b, h, q, kv) { q >= kv && q - kv < w }\nattention a { mask = m; }",
            "tensor doc: i32[B, KV];\nmask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\nattention a { mask = m; }",
        ] {
            let prog = attnc_compiler::compile_source(src)
                .unwrap()
                .programs
                .remove(0);
            let plan = Plan::new(&prog);
            let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
            let sp = spec(&plan, KernelKind::DecodeRanges, &opts).unwrap();
            let geom = DecodeGeometry {
                b: 3,
                hq: 8,
                hkv: 2,
                lq: 4,
                row_groups: 1,
                splits: 2,
                chunk: 64,
                split_ctas: 2,
                steal_chunk: 0,
                balanced: false,
                stream: false,
                lkv_max: 100,
                page_shift: 0,
                max_pages: 0,
                num_pages: 0,
                scale: 0.1,
            };
            let bufs = CallerDecodeBuffers {
                q: 0x1000,
                k_cache: 0x2000,
                v_cache: 0x3000,
                seq_lens: 0x4000,
                page_table: None,
                o: 0x5000,
                lse: 0x6000,
                part_o: 0x7000,
                part_lse: 0x8000,
                ranges: 0x9000,
            };
            let n = sp
                .params
                .iter()
                .filter(|p| matches!(p, P::KvOffset(_)))
                .count();
            let bounds: Vec<Bound> = Vec::new();
            for skip in [None, Some(bounds.as_slice())] {
                let a = ranges_values(n, &geom, 100, &bufs, skip);
                assert_eq!(a.bind(&sp).unwrap().len(), sp.params.len());
                assert_eq!(a.grid(&sp).unwrap(), (3, 1, 1));
            }
        }
    }
}
