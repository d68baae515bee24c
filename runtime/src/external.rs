//! Forward and backward over caller-owned buffers: the entry points of bindings to other
//! runtimes (the Python package), which hand attnc memory they own instead of host
//! [`Tensor`]s.
//!
//! In: a [`Bound`], q/k/v as slices (CPU) or device pointers (CUDA) in the layouts of
//! `attnc_compiler::shape` (`[B, H, L, D]`, contiguous), captures by name, and output
//! buffers the caller allocated (`o`/`lse`; for the CUDA backward dQ/dK/dV, two scratch
//! rows, the fused dQ's workspace where the kernels fuse dQ, and the capture gradients'
//! fixed-point words). Out: the outputs written in place
//! (CUDA: enqueued on the caller's stream, nothing synchronized), or an [`Error`] naming
//! the buffer; nothing is copied on the way in or out.
//!
//! [`Tensor`]: crate::Tensor

use crate::api::{Backend, Bound, Captures, ParamValue, Variant};
use crate::api::{bind_params, check_names, check_tensor};
use crate::backward::BackwardOptions;
use crate::error::{Error, Result};
use crate::tensor::DType;
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::Type;
use attnc_compiler::shape::Shape;
use std::collections::HashMap;

mod block_mask;
mod decode;
pub use block_mask::{
    BlockMaskTables, DeviceBlockMask, DeviceMaskRanges, DeviceWords, DocBackwardList, DocTileList,
    MaskRanges, MaskTable,
};
pub use decode::{
    CacheLayout, DECODE_RUNS_MIN_LQ, DecodeWorkspace, DeviceDecodeBuffers, decode_cuda_applies,
};

impl Bound {
    /// CPU backend, f32: runs attention on the caller's `q`, `k`, `v` and writes `o`
    /// (`[B, Hq, Lq, Dv]`) and `lse` (`[B, Hq, Lq]`, natural log, `-inf` for fully
    /// masked rows). Every length is checked against the bound shape.
    pub fn forward_f32_into(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        captures: &Captures,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        self.refuse_padded("Bound::forward_f32_into")?;
        let opts = self.options();
        if opts.backend != Backend::Cpu {
            return Err(Error::Usage(format!(
                "forward_f32_into runs CPU bindings; this one is bound to the {} backend",
                opts.backend.name()
            )));
        }
        if opts.dtype != DType::F32 {
            return Err(Error::InputDType {
                which: "q, k, v".into(),
                expected: opts.dtype.name().into(),
                got: DType::F32,
            });
        }
        let s = opts.shape;
        for (which, expected, got) in [
            ("q", s.q_len(), q.len()),
            ("k", s.k_len(), k.len()),
            ("v", s.v_len(), v.len()),
            ("o", s.o_len(), o.len()),
            ("lse", s.lse_len(), lse.len()),
        ] {
            if expected != got {
                return Err(Error::Usage(format!(
                    "buffer `{which}` holds {got} elements, the bound shape needs {expected}"
                )));
            }
        }
        let bindings = self.bindings(captures)?;
        let scale = self.scale();
        let (exec, plan, variant, opts) = self.parts_mut();
        let Some(cpu) = exec.cpu_mut() else {
            return Err(Error::Usage(format!(
                "this binding runs on the {} backend, not on the CPU",
                opts.backend.name()
            )));
        };
        cpu.forward_into(plan, opts, scale, q, k, v, &bindings, o, lse)
            .map_err(|e| variant.render(e))
    }
}

pub use crate::exec::cuda::caller::preserving_current_context;

/// Device pointers of one CUDA call's q, k, v (the binding's bf16/f16), o (same dtype)
/// and lse (f32), all contiguous in the layouts of `attnc_compiler::shape`.
pub use crate::exec::cuda::caller::CallerBuffers as DeviceBuffers;

/// A captured tensor in device memory, contiguous. `dtype` and `dims` are the caller's
/// tensor's (checked against the declaration as `Bound::forward` checks host tensors:
/// E0303-E0305); `ptr` points at its elements in the type the kernels read: i32 words
/// for integer tensors (an i64 tensor converted by the caller, wrapping as
/// `Tensor::to_i32`), f32 words for float ones (f16/bf16 converted). The Python package
/// converts on the device with torch.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    pub ptr: u64,
    pub dims: Vec<usize>,
    pub dtype: DType,
}

/// Alignment the kernels need of q, k, v, o and lse (16-byte vector loads and stores).
pub const DEVICE_ALIGN: u64 = 16;

impl Bound {
    /// The caller-buffer entries (`entry`) run CUDA bindings only: a usage error naming
    /// the bound backend otherwise.
    fn require_cuda(&self, entry: &str) -> Result<()> {
        let backend = self.options().backend;
        if backend != Backend::Cuda {
            return Err(Error::Usage(format!(
                "{entry} runs CUDA bindings; this one is bound to the {} backend",
                backend.name()
            )));
        }
        Ok(())
    }

    /// Checks a caller-buffer call's buffers ([`check_bufs`]: null, alignment, wrap,
    /// overlap) and, outside graph capture and unless the caller vouched for them
    /// ([`Self::vouch_for_device_pointers`]), that each non-empty one is device memory of
    /// the binding's device (`check_device_pointers`). Returns whether `stream` captures a
    /// graph (the launch takes the answer).
    fn check_call_buffers(&self, all: &[Buf], stream: u64) -> Result<bool> {
        check_bufs(all)?;
        if self.devices_vouched() {
            return crate::exec::cuda::caller::stream_capturing(self.options().device, stream)
                .map_err(|e| self.variant().render(e));
        }
        let live: Vec<(&str, u64)> = all
            .iter()
            .filter(|b| b.len > 0)
            .map(|b| (b.name, b.ptr))
            .collect();
        crate::exec::cuda::caller::check_device_pointers(self.options().device, stream, &live)
            .map_err(|e| self.variant().render(e))
    }

    /// The caller-buffer entries of this binding (`forward_cuda_into*`,
    /// `backward_cuda_into*`, `decode_cuda_into`) skip the driver query that each pointer
    /// is memory of the binding's device (`cuPointerGetAttribute`, about a microsecond
    /// per buffer, ~20 per backward): for callers that know the device of every buffer
    /// from its owner, as the Python package does from torch's tensors. The other checks
    /// (null, alignment, overlap) stay. Only CUDA bindings read it.
    ///
    /// # Safety
    /// Every device pointer passed to those entries of this binding afterwards must be
    /// memory of the binding's device (the entries' own safety contracts say so; this
    /// removes the check that would catch a caller breaking it).
    pub unsafe fn vouch_for_device_pointers(&mut self) {
        self.set_devices_vouched(true);
    }

    /// CUDA backend: enqueues attention on the caller's device buffers on the caller's
    /// stream (`stream`: a `CUstream` of the device's primary context, e.g. torch's
    /// `current_stream().cuda_stream`; 0 is the legacy default stream); writes `o` and
    /// `lse`. No synchronization, no host round trip, and after the first call on a
    /// stream no allocation (see `exec::cuda::caller`). Captures: `tensors` (device
    /// pointers, checked against the declarations like `forward`'s) and `params`.
    /// Pointers are checked for null and alignment (16 bytes for q/k/v/o/lse, 4 for
    /// tensors) and, outside a CUDA graph capture, with the driver: device memory of
    /// this binding's device (ordinal 0). Checked mode is refused (its error words are
    /// read back after a synchronization).
    ///
    /// # Safety
    /// The pointers must be live device allocations of the primary context of device 0
    /// holding the bound shape in the binding's dtype (tensors: the product of `dims`
    /// words), `o`/`lse` overlapping no input and written by no one else until the
    /// stream has run the call, and `stream` must stay alive while this binding exists.
    pub unsafe fn forward_cuda_into(
        &mut self,
        bufs: &DeviceBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        stream: u64,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.forward_cuda_into_masked(bufs, tensors, params, None, stream) }
    }

    /// [`Self::forward_cuda_into`] with a block mask made once for these captures
    /// (`external::block_mask`; `None`: the table is built on the GPU in the call, for
    /// masks over captured tensors). A block mask that does not fit the binding or was made
    /// from other captures is an error.
    ///
    /// # Safety
    /// As [`Self::forward_cuda_into`]; the block mask's tables must be the words
    /// [`Self::block_mask_tables`] made for this binding, in live device memory of its
    /// device, unchanged.
    pub unsafe fn forward_cuda_into_masked(
        &mut self,
        bufs: &DeviceBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        mask: Option<&DeviceBlockMask>,
        stream: u64,
    ) -> Result<()> {
        self.refuse_padded("Bound::forward_cuda_into_masked")?;
        self.require_cuda("forward_cuda_into")?;
        let opts = self.options();
        let shape = opts.shape;
        let dtype = opts.dtype;
        let (bindings, ptrs) = device_bindings(self.variant(), &shape, tensors, params)?;
        let table = match mask {
            Some(m) => Some(self.check_block_mask(m, tensors, params, false)?.0),
            None => None,
        };
        let mut all = named_buffers(&shape, dtype, bufs, tensors);
        if let Some(m) = mask {
            all.extend(mask_bufs(m, false));
        }
        let capture = self.check_call_buffers(&all, stream)?;
        // SAFETY: forwarded from the caller (see above).
        unsafe {
            self.enqueue_forward(
                bufs,
                &ptrs,
                &bindings,
                table.as_ref(),
                stream,
                capture,
                None,
            )
        }
    }

    /// The forward's launches on caller buffers (`CudaExec::forward_caller`), its errors
    /// rendered against the source.
    ///
    /// # Safety
    /// As [`Self::forward_cuda_into`]; the buffers checked by the caller of this function.
    #[allow(clippy::too_many_arguments)]
    unsafe fn enqueue_forward(
        &mut self,
        bufs: &DeviceBuffers,
        ptrs: &[u64],
        bindings: &attnc_compiler::interp::Bindings,
        table: Option<&crate::exec::cuda::caller::CallerTable>,
        stream: u64,
        capture: bool,
        kv: Option<crate::exec::cuda::caller::CallerCache>,
    ) -> Result<()> {
        let scale = self.scale();
        let (exec, plan, variant, opts) = self.parts_mut();
        let Some(cuda) = exec.cuda_mut() else {
            return Err(Error::Usage("this binding does not run on CUDA".into()));
        };
        // SAFETY: forwarded from the caller (see above).
        unsafe {
            cuda.forward_caller(
                plan, opts, scale, bufs, ptrs, bindings, table, stream, capture, kv,
            )
        }
        .map_err(|e| variant.render(e))
    }
}

impl Bound {
    /// [`Self::forward_cuda_into`] with k and v a cache read in place (`kv`: a contiguous
    /// one's slices `Lkv_max` rows apart, or a paged one through its page table, and for a
    /// binding made with `device_lens` the sequences' lengths; chunked prefill's runs,
    /// `decode_cuda_into_with_lengths`, and its launch of a whole batch whose lengths stay
    /// on the device, `decode_cuda_into`, which checked the buffers as a whole, and says
    /// whether `stream` is capturing a graph); the warp-specialized kernel only.
    ///
    /// # Safety
    /// As [`Self::forward_cuda_into`], with k and v the cache `kv` describes (each
    /// sequence's first `Lkv` positions read) and a paged cache's table live device memory
    /// of `B x max_pages` i32.
    pub(crate) unsafe fn forward_cuda_into_kv(
        &mut self,
        bufs: &DeviceBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        stream: u64,
        capture: bool,
        kv: crate::exec::cuda::caller::CallerCache,
    ) -> Result<()> {
        self.require_cuda("forward_cuda_into")?;
        let shape = self.options().shape;
        let (bindings, ptrs) = device_bindings(self.variant(), &shape, tensors, params)?;
        // SAFETY: forwarded from the caller (see above).
        unsafe { self.enqueue_forward(bufs, &ptrs, &bindings, None, stream, capture, Some(kv)) }
    }
}

/// Device pointers of one CUDA backward call (see [`Bound::backward_cuda_into`]).
pub use crate::exec::cuda::caller::backward::CallerBackwardBuffers as DeviceBackwardBuffers;

/// The fused dQ's workspace of a CUDA backward call (`DqAccum`, `DqSem`), of the lengths
/// [`Bound::backward_cuda_workspace`] gives.
pub use crate::exec::cuda::caller::backward::CallerDqWork as DeviceDqWorkspace;

/// What [`Bound::caller_backward_ranges`] downloads (tests).
#[doc(hidden)]
pub use crate::exec::cuda::caller::backward::BackwardRangesSeen;

/// One capture gradient element from its three fixed-point words `[hi, lo, flags]`, as
/// [`Bound::backward_cuda_into`] leaves them (sums of integers: exact in any order).
pub use attnc_compiler::backend::llvm::backward::fixed_to_f32;

/// Where [`Bound::backward_cuda_into`] sums the capture gradients, as fixed-point words
/// (three u64 per element, `[hi, lo, flags]`: [`fixed_to_f32`] gives the f32 gradient;
/// the Python package converts on the device with torch): by captured tensor name, one
/// buffer of `3 * max(1, numel)` u64 words for each tensor named by
/// [`Bound::backward_cuda_grad_words`]; and, when it says so, one buffer of
/// `3 * max(1, params)` words for the params (declaration order).
#[derive(Clone, Debug, Default)]
pub struct DeviceGradWords {
    pub tensors: HashMap<String, u64>,
    pub params: Option<u64>,
}

impl Bound {
    /// CUDA backend: which gradients the backward sums in fixed point besides dQ, dK,
    /// dV: the names of the captured tensors the score reads differentiably, and whether
    /// it reads f32 params differentiably. Looks the backward kernels up on first use.
    pub fn backward_cuda_grad_words(&mut self) -> Result<(Vec<String>, bool)> {
        // (the same for both variants: `BackwardOptions` changes only how dQ is added)
        let kernels = self.cuda_backward_kernels(true)?;
        let (ids, params) = kernels.grad_outputs();
        let p = self.variant().program();
        Ok((
            ids.iter()
                .map(|t| p.tensors[*t as usize].name.clone())
                .collect(),
            params,
        ))
    }

    /// CUDA backend: the workspace of the fused dQ that [`Self::backward_cuda_into`]
    /// needs in `DeviceBackwardBuffers::dq_work` — `Some((accum, sem))`: f32 elements of
    /// `DqAccum` and u32 elements of `DqSem` — where the binding's backward fuses dQ into
    /// the dK/dV kernel (the kernels `Bound::backward` runs: sm_90 at D64 and D128), `None` where
    /// dQ is a second kernel. `ATTNC_BWD_DQ=separate` in the environment when the
    /// binding's backward is first looked up keeps this binding's caller-buffer backward
    /// on the two-kernel path (a comparison for benchmarks). Looks the backward kernels up
    /// on first use.
    pub fn backward_cuda_workspace(&mut self) -> Result<Option<(usize, usize)>> {
        self.backward_cuda_workspace_with(&BackwardOptions::default())
    }

    /// [`Self::backward_cuda_workspace`] of the kernels [`Self::backward_cuda_into_with`]
    /// runs under `bwd` (the non-deterministic kernels' workspace differs: q tiles of 80 at
    /// dense D128, no early conversion's counters).
    pub fn backward_cuda_workspace_with(
        &mut self,
        bwd: &BackwardOptions,
    ) -> Result<Option<(usize, usize)>> {
        self.refuse_padded("Bound::backward_cuda_workspace_with")?;
        let shape = self.options().shape;
        Ok(self
            .cuda_backward_kernels(bwd.deterministic)?
            .dq_workspace(&shape))
    }

    /// CUDA backend: enqueues the backward pass on the caller's device buffers on the
    /// caller's stream: reads q, k, v, o, lse (the forward's, for the same captures), dO
    /// and dLSE (or none: zero), writes dQ, dK, dV (the binding's dtype, the layouts of
    /// q, k, v), the two scratch rows, the fused dQ's workspace where the kernels fuse dQ
    /// ([`Self::backward_cuda_workspace`]) and the capture gradients' fixed-point words
    /// ([`DeviceGradWords`], zeroed here in stream order first). No synchronization, no
    /// host round trip, and after the first call on a stream no allocation: a warmed-up
    /// call can be captured in a CUDA graph. Pointers are checked as in
    /// [`Bound::forward_cuda_into`] (null, alignment, outputs overlapping inputs, device
    /// 0 outside a capture); checked mode is refused.
    ///
    /// # Safety
    /// The pointers must be live device allocations of the primary context of device 0
    /// holding the bound shape in the binding's dtype (q, k, v, o, dO, dQ, dK, dV) or f32
    /// (lse, dLSE, Delta, LSE2: `B * Hq * Lq` each), tensors the product of their dims
    /// words, gradient words as [`DeviceGradWords`] says, the dQ workspace as
    /// [`Self::backward_cuda_workspace`] says; the outputs written by no one
    /// else until the stream has run the call; `stream` alive while this binding exists.
    pub unsafe fn backward_cuda_into(
        &mut self,
        bufs: &DeviceBackwardBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        grads: &DeviceGradWords,
        stream: u64,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.backward_cuda_into_masked(bufs, tensors, params, grads, None, stream) }
    }

    /// [`Self::backward_cuda_into`] with a block mask made once for these captures, with
    /// the backward's ranges (`None`: a mask over captured tensors visits every block of
    /// its linear conjuncts' range). A block mask that does not fit the binding or was made
    /// from other captures is an error.
    ///
    /// # Safety
    /// As [`Self::backward_cuda_into`] and [`Self::forward_cuda_into_masked`].
    pub unsafe fn backward_cuda_into_masked(
        &mut self,
        bufs: &DeviceBackwardBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        grads: &DeviceGradWords,
        mask: Option<&DeviceBlockMask>,
        stream: u64,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.backward_cuda_into_with(
                bufs,
                tensors,
                params,
                grads,
                mask,
                &BackwardOptions::default(),
                stream,
            )
        }
    }

    /// [`Self::backward_cuda_into_masked`] under `bwd` ([`BackwardOptions`]:
    /// `deterministic: false` runs the binding's non-deterministic kernels, whose dQ
    /// workspace [`Self::backward_cuda_workspace_with`] gives for the same `bwd`).
    ///
    /// # Safety
    /// As [`Self::backward_cuda_into_masked`], the dQ workspace as
    /// [`Self::backward_cuda_workspace_with`] says for `bwd`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn backward_cuda_into_with(
        &mut self,
        bufs: &DeviceBackwardBuffers,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        grads: &DeviceGradWords,
        mask: Option<&DeviceBlockMask>,
        bwd: &BackwardOptions,
        stream: u64,
    ) -> Result<()> {
        self.refuse_padded("Bound::backward_cuda_into_with")?;
        self.require_cuda("backward_cuda_into")?;
        let mut laps = crate::host_trace::Laps::start();
        let mut ranges = match mask {
            Some(m) => self.check_block_mask(m, tensors, params, true)?.1,
            None => None,
        };
        let opts = self.options();
        let shape = opts.shape;
        let dtype = opts.dtype;
        let (bindings, ptrs) = device_bindings(self.variant(), &shape, tensors, params)?;
        // a block mask's backward document kv tiles run the kernels' document variant
        // (`backward::doc_backward_options`); without one for `bwd`, its ranges
        let doc_kernels = match ranges.as_ref().and_then(|r| r.docs) {
            Some(_) => self.cuda_doc_backward_kernels(bwd.deterministic)?,
            None => None,
        };
        let kernels = match doc_kernels {
            Some(k) => k,
            None => {
                if let Some(r) = ranges.as_mut() {
                    r.docs = None;
                }
                self.cuda_backward_kernels(bwd.deterministic)?
            }
        };
        if mask.is_some() && !bwd.deterministic {
            // the block mask's ranges were checked against the deterministic kernels'
            // tiles, which the non-deterministic ones keep where a mask exists (q tiles of
            // 80 only without one)
            let (ko, kd) = (kernels.options(), self.cuda_backward_kernels(true)?);
            if (ko.q_block, ko.kv_block) != (kd.options().q_block, kd.options().kv_block) {
                return Err(Error::Usage(
                    "this binding's non-deterministic backward kernels take other tiles than its block mask's ranges".into(),
                ));
            }
        }
        // the gradient words by declaration order, each named one a differentiated tensor
        let p = self.variant().program();
        let (want, want_params) = kernels.grad_outputs();
        let mut words = vec![None; p.tensors.len()];
        let mut names: Vec<&String> = grads.tensors.keys().collect();
        names.sort();
        for name in names {
            let Some(id) = p.tensors.iter().position(|t| &t.name == name) else {
                return Err(Error::Usage(format!(
                    "gradient words given for `{name}`, which is not a captured tensor of `{}`",
                    p.name
                )));
            };
            if !want.contains(&(id as u32)) {
                return Err(Error::Usage(format!(
                    "gradient words given for `{name}`, which the score does not read differentiably (its gradient is zero)"
                )));
            }
            words[id] = Some(grads.tensors[name]);
        }
        for id in &want {
            if words[*id as usize].is_none() {
                return Err(Error::Usage(format!(
                    "no gradient words for `{}`: the backward sums its gradient (3 * max(1, numel) u64 words)",
                    p.tensors[*id as usize].name
                )));
            }
        }
        if grads.params.is_some() != want_params {
            return Err(Error::Usage(if want_params {
                "no gradient words for the params: the score reads f32 params differentiably (3 * max(1, params) u64 words)".into()
            } else {
                "gradient words given for the params, which the score does not read differentiably"
                    .into()
            }));
        }
        let e = dtype.size();
        let rows = shape.lse_len() * 4;
        let mut all = vec![
            Buf::input("q", bufs.q, shape.q_len() * e),
            Buf::input("k", bufs.k, shape.k_len() * e),
            Buf::input("v", bufs.v, shape.v_len() * e),
            Buf::input("o", bufs.o, shape.o_len() * e),
            Buf::input("lse", bufs.lse, rows),
            Buf::input("do", bufs.d_o, shape.o_len() * e),
            Buf::output("dq", bufs.dq, shape.q_len() * e),
            Buf::output("dk", bufs.dk, shape.k_len() * e),
            Buf::output("dv", bufs.dv, shape.v_len() * e),
            Buf::output("delta", bufs.delta, rows),
            Buf::output("lse2", bufs.lse2, rows),
        ];
        if let Some(d) = bufs.dlse {
            all.push(Buf::input("dlse", d, rows));
        }
        match (kernels.dq_workspace(&shape), bufs.dq_work) {
            (Some((accum, sem)), Some(w)) => {
                all.push(Buf::output("dq accumulator", w.accum, 4 * accum));
                all.push(Buf {
                    align: 4,
                    ..Buf::output("dq semaphores", w.sem, 4 * sem)
                });
            }
            (None, None) => {}
            (Some((accum, sem)), None) => {
                return Err(Error::Usage(format!(
                    "this binding's backward fuses dQ into the dK/dV kernel: it needs the dQ workspace (`dq_work`: {accum} f32 and {sem} u32 elements, Bound::backward_cuda_workspace)"
                )));
            }
            (None, Some(_)) => {
                return Err(Error::Usage(
                    "a dQ workspace was given, but this binding's backward computes dQ in a second kernel (Bound::backward_cuda_workspace is None)".into(),
                ));
            }
        }
        all.extend(tensor_bufs(tensors));
        if let Some(m) = mask {
            all.extend(mask_bufs(m, true));
        }
        for (id, w) in words.iter().enumerate() {
            if let Some(w) = w {
                let n: usize = bindings.tensors[id].dims.iter().product();
                all.push(Buf {
                    align: 8,
                    ..Buf::output("gradient words", *w, 24 * n.max(1))
                });
            }
        }
        if let Some(w) = grads.params {
            all.push(Buf {
                align: 8,
                ..Buf::output(
                    "params gradient words",
                    w,
                    24 * bindings.params.len().max(1),
                )
            });
        }
        laps.lap(crate::host_trace::Stage::Setup);
        let capture = self.check_call_buffers(&all, stream)?;
        laps.lap(crate::host_trace::Stage::Buffers);
        let grad_words = crate::exec::cuda::caller::backward::CallerGradWords {
            tensors: words,
            params: grads.params,
        };
        let scale = self.scale();
        let (exec, plan, variant, opts) = self.parts_mut();
        let Some(cuda) = exec.cuda_mut() else {
            return Err(Error::Usage("this binding does not run on CUDA".into()));
        };
        // SAFETY: forwarded from the caller (see above).
        let r = unsafe {
            cuda.backward_caller(
                &kernels,
                plan,
                opts,
                scale,
                bufs,
                &ptrs,
                &grad_words,
                &bindings,
                ranges.as_ref(),
                stream,
                capture,
            )
        }
        .map_err(|e| variant.render(e));
        laps.lap(crate::host_trace::Stage::Call);
        r
    }

    /// The block ranges the last caller-buffer backward on `stream` read, downloaded (the
    /// stream synchronized); `None` where that stream ran none with ranges (closed-form
    /// masks, block masks). For tests that
    /// compare the ranges made on the device from captured tensors with the host's.
    #[doc(hidden)]
    pub fn caller_backward_ranges(&mut self, stream: u64) -> Result<Option<BackwardRangesSeen>> {
        let (exec, _, variant, _) = self.parts_mut();
        let Some(cuda) = exec.cuda_mut() else {
            return Err(Error::Usage("this binding does not run on CUDA".into()));
        };
        cuda.caller_backward_ranges(stream)
            .map_err(|e| variant.render(e))
    }
}

/// One device buffer of a call: its name (for errors), address, byte length, the
/// alignment the kernels need, and whether the call writes it.
#[derive(Clone, Copy, Debug)]
struct Buf<'a> {
    name: &'a str,
    ptr: u64,
    len: usize,
    align: u64,
    output: bool,
}

impl<'a> Buf<'a> {
    fn input(name: &'a str, ptr: u64, len: usize) -> Self {
        Buf {
            name,
            ptr,
            len,
            align: DEVICE_ALIGN,
            output: false,
        }
    }
    fn output(name: &'a str, ptr: u64, len: usize) -> Self {
        Buf {
            output: true,
            ..Buf::input(name, ptr, len)
        }
    }
}

/// A block mask's tables as (read) buffers of 4-byte words: the forward's, or with
/// `backward` the backward's ranges.
fn mask_bufs(m: &DeviceBlockMask, backward: bool) -> Vec<Buf<'static>> {
    let words = |name: &'static str, (ptr, n): DeviceWords| Buf {
        align: 4,
        ..Buf::input(name, ptr, 4 * n)
    };
    match (backward, m.backward) {
        (false, _) => [
            words("block mask row starts", m.row_start),
            words("block mask runs", m.runs),
        ]
        .into_iter()
        .chain(
            m.documents
                .map(|(_, w)| words("block mask document tiles", w)),
        )
        .collect(),
        (true, Some((_, kv, _, q, _))) => [
            words("block mask kv ranges", kv),
            words("block mask q ranges", q),
        ]
        .into_iter()
        .chain(m.backward_documents.into_iter().flat_map(|(_, t, r)| {
            [
                words("block mask backward document tiles", t),
                words("block mask backward document ranges", r),
            ]
        }))
        .collect(),
        (true, None) => Vec::new(),
    }
}

/// The captured tensors as (read) buffers of 4-byte words, by name.
fn tensor_bufs(tensors: &HashMap<String, DeviceTensor>) -> Vec<Buf<'_>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = &tensors[n];
            Buf {
                align: 4,
                ..Buf::input(n, t.ptr, t.dims.iter().product::<usize>() * 4)
            }
        })
        .collect()
}

/// The named device buffers of a forward: q, k, v, o, lse, then the captured tensors.
fn named_buffers<'a>(
    shape: &Shape,
    dtype: DType,
    bufs: &DeviceBuffers,
    tensors: &'a HashMap<String, DeviceTensor>,
) -> Vec<Buf<'a>> {
    let e = dtype.size();
    let mut out = vec![
        Buf::input("q", bufs.q, shape.q_len() * e),
        Buf::input("k", bufs.k, shape.k_len() * e),
        Buf::input("v", bufs.v, shape.v_len() * e),
        Buf::output("o", bufs.o, shape.o_len() * e),
        Buf::output("lse", bufs.lse, shape.lse_len() * 4),
    ];
    out.extend(tensor_bufs(tensors));
    out
}

/// Null pointers, misaligned pointers, address wrap and outputs overlapping any other
/// buffer are errors naming the buffer; empty buffers are not read (any pointer).
fn check_bufs(all: &[Buf]) -> Result<()> {
    for b in all {
        let (name, ptr, len, align) = (b.name, b.ptr, b.len, b.align);
        if len == 0 {
            continue;
        }
        if ptr == 0 {
            return Err(Error::Usage(format!(
                "device buffer `{name}` is a null pointer"
            )));
        }
        if ptr % align != 0 {
            return Err(Error::Usage(format!(
                "device buffer `{name}` at {ptr:#x} is not {align}-byte aligned (the kernels use {align}-byte accesses; copy it into a fresh tensor)"
            )));
        }
        if ptr.checked_add(len as u64).is_none() {
            return Err(Error::Usage(format!(
                "device buffer `{name}` at {ptr:#x} of {len} bytes wraps the address space"
            )));
        }
    }
    let overlaps = |a: &Buf, b: &Buf| {
        a.len > 0 && b.len > 0 && a.ptr < b.ptr + b.len as u64 && b.ptr < a.ptr + a.len as u64
    };
    for (i, out) in all.iter().enumerate().filter(|(_, b)| b.output) {
        for (_, other) in all.iter().enumerate().filter(|(j, _)| *j != i) {
            if overlaps(out, other) {
                return Err(Error::Usage(format!(
                    "output buffer `{}` overlaps `{}`",
                    out.name, other.name
                )));
            }
        }
    }
    Ok(())
}

/// [`check_bufs`] over a forward's buffers (the tests' entry to it).
#[cfg(test)]
fn check_pointers(
    shape: &Shape,
    dtype: DType,
    bufs: &DeviceBuffers,
    tensors: &HashMap<String, DeviceTensor>,
) -> Result<()> {
    check_bufs(&named_buffers(shape, dtype, bufs, tensors))
}

/// Checks device captures and params against the program's declarations (as
/// `api::bind_captures` does for host tensors, with the same diagnostics) and returns the
/// bindings (params; tensors' dims without data) and the tensors' pointers in
/// declaration order.
fn device_bindings(
    variant: &Variant,
    shape: &Shape,
    tensors: &HashMap<String, DeviceTensor>,
    params: &HashMap<String, ParamValue>,
) -> Result<(Bindings, Vec<u64>)> {
    let p = variant.program();
    check_names(variant, tensors.keys().chain(params.keys()))?;
    let params = bind_params(variant, params)?;
    let mut symbols = HashMap::new();
    let mut bound = Vec::new();
    let mut ptrs = Vec::new();
    for info in &p.tensors {
        let t = tensors.get(&info.name);
        check_tensor(
            variant,
            shape,
            info,
            t.map(|t| (t.dtype, t.dims.as_slice())),
            &mut symbols,
        )?;
        let t = t.expect("checked: present");
        bound.push(BoundTensor {
            dims: t.dims.clone(),
            data: match info.elem.read_type() {
                Type::I32 => TensorData::I32(Vec::new()),
                _ => TensorData::F32(Vec::new()),
            },
        });
        ptrs.push(t.ptr);
    }
    Ok((
        Bindings {
            params,
            tensors: bound,
        },
        ptrs,
    ))
}

#[cfg(test)]
mod tests {
    use crate::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape, Tensor};

    /// The caller-buffer path gives the same bits as the host-tensor path.
    #[test]
    fn into_matches_forward() {
        let src = "param w: i32;\nmask m(b, h, q, kv) { q >= kv && q - kv < w }\nattention a { mask = m; }";
        let c = Compiled::from_source("t.attn", src).unwrap();
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 37,
            lkv: 37,
            d: 16,
            dv: 8,
        };
        let mut bound = c
            .attention("a")
            .unwrap()
            .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
            .unwrap();
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let (q, k, v) = (
            fill(shape.q_len(), 1),
            fill(shape.k_len(), 2),
            fill(shape.v_len(), 3),
        );
        let caps = Captures::default().param("w", ParamValue::I32(5));
        let out = bound
            .forward(
                &Tensor::from_f32(vec![2, 4, 37, 16], &q),
                &Tensor::from_f32(vec![2, 2, 37, 16], &k),
                &Tensor::from_f32(vec![2, 2, 37, 8], &v),
                &caps,
            )
            .unwrap();
        let mut o = vec![0f32; shape.o_len()];
        let mut lse = vec![0f32; shape.lse_len()];
        bound
            .forward_f32_into(&q, &k, &v, &caps, &mut o, &mut lse)
            .unwrap();
        assert_eq!(out.o.to_f32(), o);
        assert_eq!(out.lse.to_f32(), lse);
        // a wrong length is an error, not an out-of-bounds access
        let err = bound
            .forward_f32_into(&q[1..], &k, &v, &caps, &mut o, &mut lse)
            .unwrap_err()
            .to_string();
        assert!(err.contains("buffer `q` holds"), "{err}");
    }
}

/// The CUDA entry point's checks that need no device: captures and params against the
/// declarations (same codes as the host path), pointers.
#[cfg(test)]
mod device_tests {
    use super::{DeviceBuffers, DeviceTensor, check_pointers, device_bindings};
    use crate::{Compiled, DType, Error, ParamValue, Shape};
    use attnc_compiler::interp::TensorData;
    use std::collections::HashMap;

    const SRC: &str = "tensor doc: i64[B, KV];\ntensor bias: bf16[H, T];\nparam window: i32;\nparam slope: f32;\nmask m(b, h, q, kv) { q >= kv && q - kv < window && doc[b, q] == doc[b, kv] }\nscore s(s, b, h, q, kv) { s + slope * bias[h, 0] as f32 }\nattention a { mask = m; score = s; }";

    fn shape() -> Shape {
        Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 33,
            lkv: 33,
            d: 64,
            dv: 64,
        }
    }

    /// A CPU binding of a plain attention at [`shape`] (for the CUDA entries to refuse).
    fn cpu_binding() -> crate::Bound {
        Compiled::from_source("t.attn", "attention a {}")
            .unwrap()
            .attention("a")
            .unwrap()
            .bind(crate::BindOptions::new(
                crate::Backend::Cpu,
                shape(),
                DType::F32,
            ))
            .unwrap()
    }

    fn code(e: &Error) -> String {
        match e {
            Error::Capture { rendered, .. } => rendered.clone(),
            Error::UnknownCapture { name, .. } => format!("E0311 {name}"),
            other => other.to_string(),
        }
    }

    #[test]
    fn captures_checked_like_host_tensors() {
        let c = Compiled::from_source("t.attn", SRC).unwrap();
        let v = c.attention("a").unwrap();
        let s = shape();
        let t = |ptr, dims: Vec<usize>, dtype| DeviceTensor { ptr, dims, dtype };
        let good = || {
            HashMap::from([
                ("doc".to_string(), t(0x1000, vec![2, 33], DType::I64)),
                ("bias".to_string(), t(0x2000, vec![4, 7], DType::BF16)),
            ])
        };
        let params = HashMap::from([
            ("window".to_string(), ParamValue::I32(5)),
            ("slope".to_string(), ParamValue::I32(2)),
        ]);
        let (b, ptrs) = device_bindings(&v, &s, &good(), &params).unwrap();
        // declaration order; the kernels' read types (i64 -> i32 words, bf16 -> f32)
        assert_eq!(ptrs, vec![0x1000, 0x2000]);
        assert_eq!(b.tensors[0].dims, vec![2, 33]);
        assert!(matches!(b.tensors[0].data, TensorData::I32(_)));
        assert!(matches!(b.tensors[1].data, TensorData::F32(_)));
        assert_eq!(b.params.len(), 2);
        // every error of the host path, naming the capture
        let mut missing = good();
        missing.remove("doc");
        let e = device_bindings(&v, &s, &missing, &params).unwrap_err();
        assert!(
            code(&e).contains("E0303") && code(&e).contains("doc"),
            "{e}"
        );
        let mut wrong = good();
        wrong.get_mut("doc").unwrap().dtype = DType::I32;
        let e = device_bindings(&v, &s, &wrong, &params).unwrap_err();
        assert!(code(&e).contains("E0304"), "{}", code(&e));
        let mut wrong = good();
        wrong.get_mut("doc").unwrap().dims = vec![2, 32];
        let e = device_bindings(&v, &s, &wrong, &params).unwrap_err();
        assert!(
            code(&e).contains("E0305") && e.to_string().contains("doc"),
            "{e}"
        );
        let mut extra = good();
        extra.insert("dok".into(), t(0x3000, vec![1], DType::I32));
        let e = device_bindings(&v, &s, &extra, &params).unwrap_err();
        assert_eq!(code(&e), "E0311 dok");
        let mut p2 = params.clone();
        p2.remove("window");
        let e = device_bindings(&v, &s, &good(), &p2).unwrap_err();
        assert!(code(&e).contains("E0301"), "{}", code(&e));
        p2.insert("window".into(), ParamValue::F32(1.0));
        let e = device_bindings(&v, &s, &good(), &p2).unwrap_err();
        assert!(code(&e).contains("E0302"), "{}", code(&e));
    }

    /// The CUDA entry point refuses other backends before touching any pointer.
    #[test]
    fn cuda_entry_refuses_a_cpu_binding() {
        let mut bound = cpu_binding();
        let bufs = DeviceBuffers {
            q: 0,
            k: 0,
            v: 0,
            o: 0,
            lse: 0,
        };
        // SAFETY: refused before any pointer is used (the binding is not CUDA's).
        let e = unsafe { bound.forward_cuda_into(&bufs, &HashMap::new(), &HashMap::new(), 0) }
            .unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("cpu backend")),
            "{e}"
        );
    }

    #[test]
    fn pointers_null_misaligned_or_overlapping_are_named() {
        let s = shape();
        let mb = 1u64 << 20;
        let bufs = DeviceBuffers {
            q: mb,
            k: 2 * mb,
            v: 3 * mb,
            o: 4 * mb,
            lse: 5 * mb,
        };
        let caps = HashMap::from([(
            "doc".to_string(),
            DeviceTensor {
                ptr: 6 * mb,
                dims: vec![2, 33],
                dtype: DType::I32,
            },
        )]);
        check_pointers(&s, DType::BF16, &bufs, &caps).unwrap();
        let err = |b: DeviceBuffers, c: &HashMap<String, DeviceTensor>| {
            check_pointers(&s, DType::BF16, &b, c)
                .unwrap_err()
                .to_string()
        };
        let e = err(DeviceBuffers { k: 0, ..bufs }, &caps);
        assert!(e.contains("`k`") && e.contains("null"), "{e}");
        let e = err(
            DeviceBuffers {
                v: 3 * mb + 8,
                ..bufs
            },
            &caps,
        );
        assert!(e.contains("`v`") && e.contains("aligned"), "{e}");
        let e = err(
            DeviceBuffers {
                lse: 4 * mb + 64,
                ..bufs
            },
            &caps,
        );
        assert!(e.contains("`o` overlaps `lse`"), "{e}");
        let e = err(DeviceBuffers { o: mb + 16, ..bufs }, &caps);
        assert!(e.contains("`o` overlaps `q`"), "{e}");
        let mut c2 = caps.clone();
        c2.get_mut("doc").unwrap().ptr = 6 * mb + 2;
        let e = err(bufs, &c2);
        assert!(e.contains("`doc`") && e.contains("4-byte"), "{e}");
        let e = err(
            DeviceBuffers {
                q: u64::MAX - 15,
                ..bufs
            },
            &caps,
        );
        assert!(e.contains("`q`") && e.contains("wraps"), "{e}");
        // an empty buffer is never read: any pointer
        let empty = Shape { lq: 0, ..s };
        check_pointers(
            &empty,
            DType::BF16,
            &DeviceBuffers {
                o: 0,
                lse: 0,
                q: 0,
                ..bufs
            },
            &caps,
        )
        .unwrap();
    }

    /// The CUDA backward entry refuses other backends before touching any pointer.
    #[test]
    fn cuda_backward_entry_refuses_a_cpu_binding() {
        let mut bound = cpu_binding();
        let bufs = super::DeviceBackwardBuffers {
            q: 0,
            k: 0,
            v: 0,
            o: 0,
            lse: 0,
            d_o: 0,
            dlse: None,
            dq: 0,
            dk: 0,
            dv: 0,
            delta: 0,
            lse2: 0,
            dq_work: None,
        };
        // SAFETY: refused before any pointer is used (the binding is not CUDA's).
        let e = unsafe {
            bound.backward_cuda_into(
                &bufs,
                &HashMap::new(),
                &HashMap::new(),
                &super::DeviceGradWords::default(),
                0,
            )
        }
        .unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("cpu backend")),
            "{e}"
        );
    }

    /// Every output of a backward (dq, dk, dv, the scratch rows, gradient words) is
    /// checked against every other buffer, inputs and outputs, and named.
    #[test]
    fn backward_outputs_overlapping_anything_are_named() {
        use super::{Buf, check_bufs};
        let mb = 1u64 << 20;
        let all = |dk: u64, lse2: u64, words: u64| {
            vec![
                Buf::input("q", mb, 4096),
                Buf::input("do", 2 * mb, 4096),
                Buf::output("dq", 3 * mb, 4096),
                Buf::output("dk", dk, 4096),
                Buf::output("delta", 5 * mb, 256),
                Buf::output("lse2", lse2, 256),
                Buf {
                    align: 8,
                    ..Buf::output("gradient words", words, 24)
                },
            ]
        };
        check_bufs(&all(4 * mb, 5 * mb + 256, 6 * mb)).unwrap();
        let e = check_bufs(&all(2 * mb + 16, 5 * mb + 256, 6 * mb))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dk` overlaps `do`"), "{e}");
        let e = check_bufs(&all(4 * mb, 5 * mb + 128, 6 * mb))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`delta` overlaps `lse2`"), "{e}");
        let e = check_bufs(&all(4 * mb, 5 * mb + 256, 3 * mb + 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dq` overlaps `gradient words`"), "{e}");
        let e = check_bufs(&all(4 * mb, 5 * mb + 256, 6 * mb + 4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`gradient words`") && e.contains("8-byte"),
            "{e}"
        );
    }
}
