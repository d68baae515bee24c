//! Decoding over caller-owned device buffers on the caller's stream (the Python package's
//! `Attention.decode` on CUDA tensors): [`Bound::decode_cuda_workspace`] says how much
//! workspace a call needs, [`Bound::decode_cuda_into`] enqueues it.
//!
//! In: a CUDA binding made for a cache (`Shape::lkv` = the cache's capacity), the cache's
//! [`CacheLayout`], device pointers ([`DeviceDecodeBuffers`]: q, the caches, `seq_lens`,
//! the page table, o, lse and the workspace), captures as device tensors and params, a
//! stream. Out: the split-KV and combine kernels enqueued on the stream (see
//! `exec::cuda::caller::decode`) — or, for chunked prefill where it fills the GPU, one
//! launch of the warp-specialized prefill kernel over the whole batch whose CTAs read
//! their sequence's length (`Bound::caller_prefill_device`, `PtxOptions::device_lens`) —
//! or an [`Error`] naming the buffer. Positions and
//! semantics are `Bound::forward_with_cache`'s; the difference: `seq_lens` and the page
//! table are never read on the host, so a length beyond the cache counts as the
//! capacity (a negative one as 0) and a page id outside the cache is clamped into it
//! (the host path reports both in checked mode), never read out of bounds.

use super::{Buf, DeviceBuffers, DeviceTensor, device_bindings, tensor_bufs};
use crate::api::{Bound, ParamValue};
use crate::cuda::decode::{DecodeGeometry, DecodeModule};
use crate::decode::{cache_error, split_kv_applies, split_kv_geometry};
use crate::error::{Error, Result};
use crate::exec::cuda::caller::{CallerCache, CallerKv};
use crate::host_trace::{Laps, Stage};
use attnc_compiler::decode::{CacheError, DecodeShape, OFFSET_PARAMS};
use attnc_compiler::shape::Shape;
use std::collections::HashMap;

pub use crate::exec::cuda::caller::decode::CallerDecodeBuffers as DeviceDecodeBuffers;
pub use attnc_compiler::decode::CacheLayout;

/// The workspace of one caller-buffer decode call, in elements: the partial O and LSE of
/// the splits (f32) and the reachable ranges with the clamped lengths (`i32[3 B]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeWorkspace {
    pub part_o: usize,
    pub part_lse: usize,
    pub ranges: usize,
}

/// The fewest new rows per sequence that chunked prefill's batched runs on the prefill
/// kernel take ([`Bound::decode_cuda_runs`]); fewer take the split-KV kernels.
pub const DECODE_RUNS_MIN_LQ: usize = crate::decode::SPLIT_KV_MAX_LQ + 1;

/// Whether the caller-buffer decode runs a call of this shape: the split-KV kernels take
/// `D = Dv` in {64, 128} at every Lq (Lq > 16: chunked prefill on the tensor-core kernel)
/// and in {32, 256} at `Lq <= 16`, bf16/f16, fast mode (else `Bound::forward_with_cache`
/// on host tensors runs it, through the prefill path).
pub fn decode_cuda_applies(lq: usize, d: usize, dv: usize) -> bool {
    let probe = DecodeShape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq,
        d,
        dv,
        layout: CacheLayout::Contiguous { lkv_max: 1 },
    };
    split_kv_applies(&probe, crate::DType::BF16, false)
}

/// Chunked prefill at head dim 256 (Lq > 16, `D = Dv = 256`, bf16/f16, fast mode): no
/// split-KV kernel takes it, the prefill kernel alone does on caller buffers — the
/// device-lengths launch (`Bound::caller_prefill_device`: sm_90, a closed-form mask) or,
/// with the lengths also on the host, the batched runs ([`Bound::decode_cuda_takes`]
/// says whether a binding can).
fn prefill_only(shape: &DecodeShape, dtype: crate::DType, checked: bool) -> bool {
    shape.lq > crate::decode::SPLIT_KV_MAX_LQ
        && shape.d == 256
        && shape.dv == 256
        && matches!(dtype, crate::DType::BF16 | crate::DType::F16)
        && !checked
}

/// How the prefill kernel reads a caller's cache of `layout` from sequence `b0` on:
/// contiguous slices `Lkv_max` rows apart (the K/V pointers point at `b0`'s), or pages
/// through the page table's rows from `b0`'s (`page_table`: its device address).
fn caller_kv(layout: CacheLayout, page_table: Option<u64>, b0: usize) -> CallerKv {
    match layout {
        CacheLayout::Contiguous { lkv_max } => CallerKv::Pitch(lkv_max),
        CacheLayout::Paged {
            num_pages,
            page_size,
            max_pages,
        } => CallerKv::Paged {
            table: page_table.unwrap_or(0) + 4 * (b0 * max_pages) as u64,
            shift: page_size.trailing_zeros(),
            max_pages: max_pages as u32,
            num_pages: num_pages as u32,
        },
    }
}

impl Bound {
    /// The decode shape of a caller-buffer decode call with `layout`, checked against the
    /// binding (capacity, head dims, mode).
    fn caller_decode_shape(&self, layout: CacheLayout) -> Result<DecodeShape> {
        self.require_cuda("decode_cuda_into")?;
        let opts = self.options().clone();
        let s = opts.shape;
        let shape = DecodeShape {
            b: s.b,
            hq: s.hq,
            hkv: s.hkv,
            lq: s.lq,
            d: s.d,
            dv: s.dv,
            layout,
        };
        shape.validate().map_err(cache_error)?;
        if shape.capacity() != s.lkv {
            let (tensor, what) = match layout {
                CacheLayout::Contiguous { .. } => ("k_cache", "Lkv_max (dimension 2)"),
                CacheLayout::Paged { .. } => ("page_table", "max_pages x page_size"),
            };
            return Err(cache_error(CacheError::Shape {
                tensor,
                message: format!(
                    "the cache holds {} positions per sequence ({what}), but the binding's Lkv is {}; bind with Lkv = the cache's capacity",
                    shape.capacity(),
                    s.lkv
                ),
            }));
        }
        if !split_kv_applies(&shape, opts.dtype, opts.checked)
            && !prefill_only(&shape, opts.dtype, opts.checked)
        {
            return Err(Error::Usage(format!(
                "decoding on caller buffers runs the split-KV kernels: D = Dv in {{64, 128}} (any Lq) or {{32, 256}} (Lq <= 16), bf16/f16, fast mode, or the prefill kernel at D = Dv = 256 above 16 rows (this binding: Lq {} D {} Dv {} {}{}); use forward_with_cache",
                s.lq,
                s.d,
                s.dv,
                opts.dtype,
                if opts.checked { ", checked" } else { "" }
            )));
        }
        Ok(shape)
    }

    /// The decode shape, and the launch geometry and kernels of the split-KV kernels
    /// (`None` for a shape only the prefill kernel takes: [`prefill_only`]) of a
    /// caller-buffer decode call.
    fn decode_setup(
        &mut self,
        layout: CacheLayout,
    ) -> Result<(DecodeShape, Option<(DecodeGeometry, DecodeModule)>)> {
        let shape = self.caller_decode_shape(layout)?;
        let opts = self.options().clone();
        if !split_kv_applies(&shape, opts.dtype, opts.checked) {
            return Ok((shape, None));
        }
        let s = opts.shape;
        let module = self.split_kv_module(&shape)?;
        // sized from the capacity: the sequences' lengths stay on the device
        let full: Vec<i32> = (0..s.b).flat_map(|_| [0, s.lkv as i32]).collect();
        let geom = split_kv_geometry(&shape, &full, self.scale(), &opts.decode);
        Ok((shape, Some((geom, module))))
    }

    /// CUDA backend, a binding for a cache: the workspace a [`Self::decode_cuda_into`]
    /// call with this layout needs (it depends on the shape and layout only; none for
    /// the split-KV kernels' partials where only the prefill kernel takes the shape:
    /// chunked prefill at head dim 256). Loads the decode kernels on first use.
    pub fn decode_cuda_workspace(&mut self, layout: CacheLayout) -> Result<DecodeWorkspace> {
        self.refuse_padded("Bound::decode_cuda_workspace")?;
        let (shape, split) = self.decode_setup(layout)?;
        let (part_o, part_lse) = split.map_or((0, 0), |(geom, module)| module.workspace(&geom));
        Ok(DecodeWorkspace {
            part_o,
            part_lse,
            ranges: 3 * shape.b,
        })
    }

    /// CUDA backend: whether [`Self::decode_cuda_into`] runs calls with this layout on
    /// this binding — every shape the split-KV kernels take; chunked prefill at head dim
    /// 256 only where the prefill kernel reads the cache in place with the lengths on the
    /// device (sm_90, a closed-form mask, the warp-specialized kernel). `false` for
    /// other shapes (checked mode, other head dims, masks over captured tensors at D256):
    /// `forward_with_cache` on host tensors runs those. Binds the kernels' variant on
    /// first use.
    pub fn decode_cuda_takes(&mut self, layout: CacheLayout) -> Result<bool> {
        let Ok(shape) = self.caller_decode_shape(layout) else {
            return Ok(false);
        };
        let opts = self.options().clone();
        if split_kv_applies(&shape, opts.dtype, opts.checked) {
            return Ok(true);
        }
        Ok(self.device_prefill_plan(&shape, false, true)?.is_some())
    }

    /// CUDA backend: enqueues attention of q's new rows against a KV cache in the
    /// caller's device memory on the caller's stream (positions as
    /// `Bound::forward_with_cache`'s; the binding's shape gives B, Hq, Hkv, Lq, D, Dv and
    /// `lkv` = the capacity of `layout`); writes o, lse and the workspace. No host round
    /// trip, no synchronization, no allocation after the stream's first call: a
    /// warmed-up call can be captured in a CUDA graph. Pointers are checked for null,
    /// alignment (16 bytes for q, caches, o and the partial O), overlap of outputs and,
    /// outside a graph capture, with the driver (memory of this binding's device).
    /// `seq_lens` and the page table are read only on the device: lengths beyond the
    /// capacity count as the capacity (negative ones as 0), page ids are clamped into
    /// the cache. Chunked prefill (Lq >= 128 on sm_90, a closed-form mask, a launch that
    /// fills the GPU: `Bound::caller_prefill_device`) runs the whole batch in one launch
    /// of the prefill kernel whose CTAs read their lengths (path "prefill", the workspace
    /// unused); the rest the split-KV kernels ("split-kv-mma" / "split-kv").
    ///
    /// # Safety
    /// The pointers must be live device allocations of the binding's device holding:
    /// q `[B, Hq, Lq, D]`, the caches in `layout` (16-bit, the binding's dtype), `seq_lens`
    /// `i32[B]`, the page table `i32[B, max_pages]` (paged), o `[B, Hq, Lq, Dv]`, lse f32
    /// `[B, Hq, Lq]`, the workspace as [`Self::decode_cuda_workspace`] says; tensors the
    /// product of their dims in i32/f32 words. Outputs and workspace written by no one
    /// else until the stream has run the call; `stream` alive while this binding exists.
    pub unsafe fn decode_cuda_into(
        &mut self,
        layout: CacheLayout,
        bufs: &DeviceDecodeBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        stream: u64,
    ) -> Result<()> {
        self.refuse_padded("Bound::decode_cuda_into")?;
        let mut laps = Laps::start();
        let (shape, split) = self.decode_setup(layout)?;
        laps.lap(Stage::Setup);
        let logical = shape.logical();
        let (bindings, ptrs) = device_bindings(self.variant(), &logical, tensors, params)?;
        let e = self.options().dtype.size();
        let (part_o, part_lse) = split
            .as_ref()
            .map_or((0, 0), |(geom, module)| module.workspace(geom));
        let cache_rows = match layout {
            CacheLayout::Contiguous { lkv_max } => shape.b * lkv_max,
            CacheLayout::Paged {
                num_pages,
                page_size,
                ..
            } => num_pages * page_size,
        };
        let rows = shape.b * shape.hq * shape.lq;
        let words = |b: Buf<'static>, align: u64| Buf { align, ..b };
        let mut all = vec![
            Buf::input("q", bufs.q, rows * shape.d * e),
            Buf::input(
                "k_cache",
                bufs.k_cache,
                cache_rows * shape.hkv * shape.d * e,
            ),
            Buf::input(
                "v_cache",
                bufs.v_cache,
                cache_rows * shape.hkv * shape.dv * e,
            ),
            words(Buf::input("seq_lens", bufs.seq_lens, 4 * shape.b), 4),
            Buf::output("o", bufs.o, rows * shape.dv * e),
            words(Buf::output("lse", bufs.lse, 4 * rows), 4),
        ];
        // (the split-KV kernels' workspace; unread where the prefill kernel alone runs)
        if split.is_some() {
            all.extend([
                Buf::output("part_o", bufs.part_o, 4 * part_o),
                words(Buf::output("part_lse", bufs.part_lse, 4 * part_lse), 4),
                words(Buf::output("ranges", bufs.ranges, 12 * shape.b), 8),
            ]);
        }
        match (layout, bufs.page_table) {
            (CacheLayout::Paged { max_pages, .. }, Some(t)) => {
                all.push(words(
                    Buf::input("page_table", t, 4 * shape.b * max_pages),
                    4,
                ));
            }
            (CacheLayout::Paged { .. }, None) => {
                return Err(Error::Usage(
                    "a paged cache needs its page table (device buffer `page_table`)".into(),
                ));
            }
            (CacheLayout::Contiguous { .. }, Some(_)) => {
                return Err(Error::Usage(
                    "a page table was given for a contiguous cache".into(),
                ));
            }
            (CacheLayout::Contiguous { .. }, None) => {}
        }
        all.extend(tensor_bufs(tensors));
        let capture = self.check_call_buffers(&all, stream)?;
        laps.lap(Stage::Buffers);
        // chunked prefill: the whole batch in one launch of the prefill kernel, which
        // reads the lengths on the device (`Bound::caller_prefill_device`)
        if let Some((bshape, page_shift)) =
            self.caller_prefill_device(&shape, capture, split.is_none())?
        {
            let mut p = params.clone();
            for name in OFFSET_PARAMS {
                p.insert(name.to_string(), ParamValue::I32(0));
            }
            let kv = caller_kv(layout, bufs.page_table, 0);
            let whole = DeviceBuffers {
                q: bufs.q,
                k: bufs.k_cache,
                v: bufs.v_cache,
                o: bufs.o,
                lse: bufs.lse,
            };
            let cache = CallerCache {
                kv,
                seq_lens: Some(bufs.seq_lens),
            };
            let bound = self.prefill_bound(bshape, page_shift, true)?;
            laps.lap(Stage::Prefill);
            // SAFETY: q, o and lse are the call's whole buffers, the caches and page table
            // the caller's (checked above as a whole: `B x Hkv` slices of `Lkv_max` rows,
            // or `B x max_pages` page ids, each clamped into the cache by the kernel), and
            // `seq_lens` its `i32[B]`, each clamped into `0..=capacity` by the kernel; the
            // captures and stream are the caller's (forwarded).
            let r =
                unsafe { bound.forward_cuda_into_kv(&whole, tensors, &p, stream, capture, cache) };
            laps.lap(Stage::Enqueue);
            return r;
        }
        let Some((geom, module)) = split else {
            return Err(Error::Usage(format!(
                "chunked prefill at head dim 256 on caller buffers runs the prefill kernel with the lengths on the device, which needs sm_90, a closed-form mask (not one over captured tensors), a contiguous cache or pages of at least 16 rows{}; use forward_with_cache (decode_cuda_takes says which calls run here)",
                if capture {
                    ", and outside a graph capture a first call that made its binding"
                } else {
                    ""
                }
            )));
        };
        let skip = self
            .plan()
            .skip_bounds(&logical, &bindings)
            .map_err(|e| Error::Backend {
                backend: "blocks",
                message: e.to_string(),
            })?;
        laps.lap(Stage::Skip);
        let capacity = shape.capacity();
        let (exec, _, variant, _) = self.parts_mut();
        let Some(cuda) = exec.cuda_mut() else {
            return Err(Error::Usage("this binding does not run on CUDA".into()));
        };
        // SAFETY: forwarded from the caller (see above); the workspace sizes are
        // `module.workspace(&geom)`'s, checked above as buffer lengths.
        unsafe {
            cuda.decode_caller(
                &module,
                &geom,
                capacity,
                bufs,
                &ptrs,
                &bindings,
                skip.as_deref(),
                stream,
                capture,
                &mut laps,
            )
        }
        .map_err(|e| variant.render(e))
    }
}

impl Bound {
    /// [`Self::decode_cuda_into`] for a caller that also knows each sequence's length on
    /// the host (`seq_lens_host`, what the device buffer `seq_lens` holds): chunked
    /// prefill (Lq > 16) over a contiguous cache, or (unless `DecodeTuning::paged_split_kv`)
    /// a paged one with pages of at least 16 rows (each kv tile read by TMA, one box per page it spans,
    /// page ids clamped into the cache, the rows past a sequence's length in its last page
    /// zeroed in shared memory before P V), whose sequences are each at least Lq long runs on the warp-specialized prefill kernel where its batched runs win (session 25:
    /// 1.5-1.8x the split-KV kernel on an H200 at Lq 128-512; consecutive sequences of one
    /// length share a launch of the position-offset program, K and V read in place through
    /// tensor maps whose slices are `Lkv_max` rows apart; `DecodeTuning::prefill`
    /// overrides the rule). No synchronization either way; a stream capturing a graph,
    /// other shapes, smaller pages and lengths that do not fit take the split-KV kernels
    /// (`decode_cuda_into`, which reads `seq_lens` and the workspace). The path taken is
    /// [`Self::cache_path`]'s: "prefill" or "split-kv-mma".
    ///
    /// # Safety
    /// As [`Self::decode_cuda_into`]; `seq_lens_host` must equal what `seq_lens` holds
    /// when the stream runs the call (the runs are cut from it on the host).
    pub unsafe fn decode_cuda_into_with_lengths(
        &mut self,
        layout: CacheLayout,
        bufs: &DeviceDecodeBuffers,
        seq_lens_host: &[i32],
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        stream: u64,
    ) -> Result<()> {
        self.refuse_padded("Bound::decode_cuda_into_with_lengths")?;
        // SAFETY: forwarded from the caller (the runs read a subset of its buffers).
        if unsafe { self.decode_cuda_runs(layout, bufs, seq_lens_host, tensors, params, stream) }? {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.decode_cuda_into(layout, bufs, tensors, params, stream) }
    }

    /// The batched runs of [`Self::decode_cuda_into_with_lengths`] alone: `Ok(true)` when
    /// they took the call (enqueued on `stream`), `Ok(false)` when the call is not theirs
    /// (Lq <= 16, small pages, a sequence shorter than Lq, checked mode, a stream that
    /// captures a graph, or the split-KV kernel's rule) and nothing was enqueued. Reads
    /// only `q`, `k_cache`, `v_cache`, `page_table`, `o` and `lse` of `bufs`: its
    /// `seq_lens`, `part_o`, `part_lse` and `ranges` may be 0 — so a caller that knows the
    /// lengths on the host allocates the split-KV kernels' workspace and copies the
    /// lengths to the device only when this says `false` (the Python package's per-call
    /// host time).
    ///
    /// # Safety
    /// As [`Self::decode_cuda_into_with_lengths`] for the buffers it reads.
    pub unsafe fn decode_cuda_runs(
        &mut self,
        layout: CacheLayout,
        bufs: &DeviceDecodeBuffers,
        seq_lens_host: &[i32],
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        stream: u64,
    ) -> Result<bool> {
        self.refuse_padded("Bound::decode_cuda_runs")?;
        let shape = self.caller_decode_shape(layout)?;
        let Some(runs) = self.caller_prefill_runs(&shape, seq_lens_host)? else {
            return Ok(false);
        };
        let e = self.options().dtype.size();
        let rows = shape.b * shape.hq * shape.lq;
        let cache = shape.hkv
            * match layout {
                CacheLayout::Contiguous { lkv_max } => shape.b * lkv_max,
                CacheLayout::Paged {
                    num_pages,
                    page_size,
                    ..
                } => num_pages * page_size,
            };
        let mut all = vec![
            Buf::input("q", bufs.q, rows * shape.d * e),
            Buf::input("k_cache", bufs.k_cache, cache * shape.d * e),
            Buf::input("v_cache", bufs.v_cache, cache * shape.dv * e),
            Buf::output("o", bufs.o, rows * shape.dv * e),
            Buf::output("lse", bufs.lse, 4 * rows),
        ];
        if let CacheLayout::Paged { max_pages, .. } = layout {
            let Some(t) = bufs.page_table else {
                return Err(Error::Usage(
                    "a paged cache needs its page table (device buffer `page_table`)".into(),
                ));
            };
            all.push(Buf {
                align: 4,
                ..Buf::input("page_table", t, 4 * shape.b * max_pages)
            });
        }
        all.extend(tensor_bufs(tensors));
        if self.check_call_buffers(&all, stream)? {
            // a graph capture: the runs' bindings may need allocations (new shapes)
            return Ok(false);
        }
        let lkv_max = shape.capacity();
        for run in runs {
            let n = run.hi - run.lo;
            let run_shape = Shape {
                b: run.count,
                hq: shape.hq,
                hkv: shape.hkv,
                lq: shape.lq,
                lkv: n,
                d: shape.d,
                dv: shape.dv,
            };
            let mut p = params.clone();
            for (name, x) in OFFSET_PARAMS.iter().zip([run.b0, run.pos, run.lo]) {
                p.insert(name.to_string(), ParamValue::I32(x as i32));
            }
            // every row of the run is live (first = 0): its q, o and lse are contiguous;
            // its keys start at position lo = 0
            let q_rows = (run.b0 * shape.hq * shape.lq) as u64;
            let kv = caller_kv(layout, bufs.page_table, run.b0);
            let kv_row = match layout {
                CacheLayout::Contiguous { .. } => (run.b0 * shape.hkv * lkv_max + run.lo) as u64,
                CacheLayout::Paged { .. } => 0,
            };
            let run_bufs = DeviceBuffers {
                q: bufs.q + q_rows * (shape.d * e) as u64,
                k: bufs.k_cache + kv_row * (shape.d * e) as u64,
                v: bufs.v_cache + kv_row * (shape.dv * e) as u64,
                o: bufs.o + q_rows * (shape.dv * e) as u64,
                lse: bufs.lse + q_rows * 4,
            };
            let page_shift = match kv {
                CallerKv::Paged { shift, .. } => Some(shift),
                _ => None,
            };
            let bound = self.prefill_bound(run_shape, page_shift, false)?;
            let cache = CallerCache { kv, seq_lens: None };
            // SAFETY: the run's q/o/lse rows, its sequences' cache slices (contiguous:
            // b0 + count <= B, lo + n <= Lkv_max, slices Lkv_max rows apart) or page-table
            // rows (paged: b0 + count <= B rows of max_pages ids, the kernel clamping each id
            // into the cache) lie inside the buffers checked above; the captures and stream
            // are the caller's (forwarded).
            unsafe { bound.forward_cuda_into_kv(&run_bufs, tensors, &p, stream, false, cache) }?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, BindOptions, Compiled, DType, Shape};

    /// The zero-copy decode runs the split-KV kernels' shapes only: chunked prefill (Lq >
    /// 16) at D 64 and 128 (the tensor-core kernel), not at D 32 and 256.
    #[test]
    fn applies_to_the_split_kv_shapes() {
        assert!(decode_cuda_applies(1, 128, 128));
        assert!(decode_cuda_applies(16, 64, 64));
        assert!(decode_cuda_applies(17, 64, 64));
        assert!(decode_cuda_applies(512, 128, 128));
        assert!(!decode_cuda_applies(17, 32, 32));
        assert!(!decode_cuda_applies(64, 256, 256));
        assert!(decode_cuda_applies(16, 256, 256));
        assert!(!decode_cuda_applies(4, 96, 96));
        assert!(!decode_cuda_applies(4, 128, 64));
    }

    /// The caller-buffer decode refuses other backends before touching any pointer.
    #[test]
    fn refuses_a_cpu_binding() {
        let c = Compiled::from_source("t.attn", "attention a {}").unwrap();
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 1,
            lkv: 64,
            d: 64,
            dv: 64,
        };
        let mut bound = c
            .attention("a")
            .unwrap()
            .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
            .unwrap();
        let layout = CacheLayout::Contiguous { lkv_max: 64 };
        let e = bound.decode_cuda_workspace(layout).unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("cpu backend")),
            "{e}"
        );
        let bufs = DeviceDecodeBuffers {
            q: 0,
            k_cache: 0,
            v_cache: 0,
            seq_lens: 0,
            page_table: None,
            o: 0,
            lse: 0,
            part_o: 0,
            part_lse: 0,
            ranges: 0,
        };
        // SAFETY: refused before any pointer is used (the binding is not CUDA's).
        let e =
            unsafe { bound.decode_cuda_into(layout, &bufs, &HashMap::new(), &HashMap::new(), 0) }
                .unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("cpu backend")),
            "{e}"
        );
    }
}
