//! Attention against a KV cache (decoding, chunked prefill): [`KvCache`] and
//! `Bound::forward_with_cache`.
//!
//! In: `q[B, Hq, Lq, D]` new rows, a contiguous (`[B, Hkv, Lkv_max, D]`) or paged
//! (`[num_pages, page_size, Hkv, D]` + `page_table: i32[B, max_pages]`) cache,
//! `seq_lens: i32[B]`, captures. Out: `O[B, Hq, Lq, Dv]`, `LSE[B, Hq, Lq]`, or an
//! `Error::Cache` naming the input (codes E0320..E0324).
//!
//! Semantics (logical positions; `attnc_compiler::decode`): row `i` of sequence `b` sits
//! at position `seq_lens[b] - Lq + i` and sees keys `0..seq_lens[b]`; rows at negative
//! positions give O = 0, LSE = -inf. A binding for caches is made with
//! `Shape::lkv` = the cache's capacity in positions (`Lkv_max`, or `max_pages *
//! page_size`): captured tensors with dims `Q` or `KV` are indexed by position and have
//! that size. Per backend: the reference runs the f64 oracle; the CPU splits each
//! sequence's kv range (only the blocks its mask can reach) across threads, a kv head's
//! query heads packed into one tile, contiguous f32 caches read in place (`cpu`). CUDA
//! runs the split-KV kernels (`gpu`) or the prefill kernel of the position-offset
//! program over runs of sequences (`cuda`: what the split-KV kernels do not take, and
//! chunked prefill where batched runs of equal sequences win; `cuda_route`).

mod cpu;
mod cuda;
mod gpu;

pub(crate) use cuda::Run as PrefillRun;
pub(crate) use gpu::{
    MAX_LQ as SPLIT_KV_MAX_LQ, applies as split_kv_applies, geometry as split_kv_geometry,
};

use crate::api::{Backend, BindOptions, Bound, Captures, Output};
use crate::error::{Error, Result};
use crate::head_pad::HeadPad;
use crate::tensor::{DType, Tensor};
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::cranelift::{CpuKernel, CpuOptions};
use attnc_compiler::decode::{
    CacheError, CacheLayout, DecodeShape, KvView, offset_program, packed_offset_program,
};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;

/// The KV cache of a [`Bound::forward_with_cache`] call.
#[derive(Clone, Copy, Debug)]
pub enum KvCache<'a> {
    /// `k: [B, Hkv, Lkv_max, D]`, `v: [B, Hkv, Lkv_max, Dv]`, `seq_lens: i32[B]`.
    Contiguous {
        k: &'a Tensor,
        v: &'a Tensor,
        seq_lens: &'a Tensor,
    },
    /// `k_cache: [num_pages, page_size, Hkv, D]`, `v_cache: [.., Dv]`,
    /// `page_table: i32[B, max_pages]`, `seq_lens: i32[B]`.
    Paged {
        k_cache: &'a Tensor,
        v_cache: &'a Tensor,
        page_table: &'a Tensor,
        seq_lens: &'a Tensor,
    },
}

impl<'a> KvCache<'a> {
    /// The paged cache when `page_table` is given (`k`, `v` then `[num_pages,
    /// page_size, Hkv, D]`), else the contiguous one.
    pub fn new(
        k: &'a Tensor,
        v: &'a Tensor,
        page_table: Option<&'a Tensor>,
        seq_lens: &'a Tensor,
    ) -> Self {
        match page_table {
            None => KvCache::Contiguous { k, v, seq_lens },
            Some(page_table) => KvCache::Paged {
                k_cache: k,
                v_cache: v,
                page_table,
                seq_lens,
            },
        }
    }

    fn kv(&self) -> (&Tensor, &Tensor) {
        match self {
            KvCache::Contiguous { k, v, .. } => (k, v),
            KvCache::Paged {
                k_cache, v_cache, ..
            } => (k_cache, v_cache),
        }
    }
    fn seq_lens(&self) -> &Tensor {
        match self {
            KvCache::Contiguous { seq_lens, .. } | KvCache::Paged { seq_lens, .. } => seq_lens,
        }
    }
    fn page_table(&self) -> Option<&Tensor> {
        match self {
            KvCache::Contiguous { .. } => None,
            KvCache::Paged { page_table, .. } => Some(page_table),
        }
    }
    /// The same cache (layout, lengths, page table) over other K/V tensors.
    fn with_kv<'b>(&self, k: &'b Tensor, v: &'b Tensor) -> KvCache<'b>
    where
        'a: 'b,
    {
        match *self {
            KvCache::Contiguous { seq_lens, .. } => KvCache::Contiguous { k, v, seq_lens },
            KvCache::Paged {
                page_table,
                seq_lens,
                ..
            } => KvCache::Paged {
                k_cache: k,
                v_cache: v,
                page_table,
                seq_lens,
            },
        }
    }
}

/// The binding's padding and q and the cache's K and V at the kernels' head dim where
/// it pads (`head_pad`; `None` otherwise), and the call's shape at that dim.
fn widened(
    bound: &Bound,
    q: &Tensor,
    cache: &KvCache,
    shape: &mut DecodeShape,
) -> Option<(HeadPad, [Tensor; 3])> {
    let p = bound.head_pad()?;
    let (k, v) = cache.kv();
    (shape.d, shape.dv) = (p.to, p.to);
    Some((p, [p.widen(q), p.widen(k), p.widen(v)]))
}

/// An `Error::Cache` with the code of its kind.
pub(crate) fn cache_error(e: CacheError) -> Error {
    let code = match &e {
        CacheError::Shape { tensor, message } if message.contains("page size") => {
            let _ = tensor;
            "E0321"
        }
        CacheError::Shape { .. } => "E0320",
        CacheError::SeqLen { .. } => "E0322",
        CacheError::PageId { .. } => "E0323",
    };
    Error::Cache {
        code,
        tensor: e.tensor().to_string(),
        message: e.to_string(),
    }
}

fn shape_err(tensor: &'static str, message: String) -> Error {
    cache_error(CacheError::Shape { tensor, message })
}

/// The decode shape of a call, from the binding and the tensors; every dim and dtype
/// checked (E0320 naming the tensor, E0321 for a page size).
pub(crate) fn decode_shape(bound: &Bound, q: &Tensor, cache: &KvCache) -> Result<DecodeShape> {
    // the caller's head dims (`Bound::shape`): a padded binding widens after the checks
    let s = bound.shape();
    let dtype = bound.options().dtype;
    let (k, v) = cache.kv();
    let names = match cache {
        KvCache::Contiguous { .. } => ("k", "v"),
        KvCache::Paged { .. } => ("k_cache", "v_cache"),
    };
    for (name, t) in [("q", q), (names.0, k), (names.1, v)] {
        if t.dtype() != dtype {
            return Err(shape_err(
                static_name(name),
                format!("has dtype {}, the binding's is {}", t.dtype(), dtype),
            ));
        }
        if t.shape().len() != 4 {
            return Err(shape_err(
                static_name(name),
                format!("has rank {} ({:?}), expected 4", t.shape().len(), t.shape()),
            ));
        }
    }
    let int_tensor = |name: &'static str, t: &Tensor, rank: usize| -> Result<()> {
        if !matches!(t.dtype(), DType::I32 | DType::I64) {
            return Err(shape_err(
                name,
                format!("has dtype {}, expected i32 (or i64)", t.dtype()),
            ));
        }
        if t.shape().len() != rank {
            return Err(shape_err(
                name,
                format!("has shape {:?}, expected rank {rank}", t.shape()),
            ));
        }
        Ok(())
    };
    int_tensor("seq_lens", cache.seq_lens(), 1)?;
    let layout = match cache {
        KvCache::Contiguous { k, .. } => CacheLayout::Contiguous {
            lkv_max: k.shape()[2],
        },
        KvCache::Paged {
            k_cache,
            page_table,
            ..
        } => {
            int_tensor("page_table", page_table, 2)?;
            CacheLayout::Paged {
                num_pages: k_cache.shape()[0],
                page_size: k_cache.shape()[1],
                max_pages: page_table.shape()[1],
            }
        }
    };
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
    let pt_dims = shape.page_table_dims().map(|d| d.to_vec());
    let checks: [(&'static str, Vec<usize>, Option<&Tensor>); 5] = [
        ("q", shape.q_dims().to_vec(), Some(q)),
        (
            static_name(names.0),
            shape.cache_dims(false).to_vec(),
            Some(k),
        ),
        (
            static_name(names.1),
            shape.cache_dims(true).to_vec(),
            Some(v),
        ),
        (
            "page_table",
            pt_dims.unwrap_or_default(),
            cache.page_table(),
        ),
        ("seq_lens", vec![s.b], Some(cache.seq_lens())),
    ];
    for (name, want, t) in checks {
        if let Some(t) = t
            && t.shape() != want.as_slice()
        {
            return Err(shape_err(
                name,
                format!(
                    "has shape {:?}, expected {want:?} (the binding's B {} Hq {} Hkv {} Lq {} D {} Dv {})",
                    t.shape(),
                    s.b,
                    s.hq,
                    s.hkv,
                    s.lq,
                    s.d,
                    s.dv
                ),
            ));
        }
    }
    if shape.capacity() != s.lkv {
        let what = match layout {
            CacheLayout::Contiguous { .. } => "Lkv_max (dimension 2)",
            CacheLayout::Paged { .. } => "max_pages x page_size",
        };
        return Err(shape_err(
            match layout {
                CacheLayout::Contiguous { .. } => static_name(names.0),
                CacheLayout::Paged { .. } => "page_table",
            },
            format!(
                "the cache holds {} positions per sequence ({what}), but the binding's Lkv is {}; bind with Lkv = the cache's capacity",
                shape.capacity(),
                s.lkv
            ),
        ));
    }
    Ok(shape)
}

fn static_name(n: &str) -> &'static str {
    match n {
        "q" => "q",
        "k" => "k",
        "v" => "v",
        "k_cache" => "k_cache",
        "v_cache" => "v_cache",
        "page_table" => "page_table",
        _ => "seq_lens",
    }
}

/// What a binding keeps for cache calls, built at the first one.
pub(crate) enum DecodeState {
    Reference,
    Cpu(Box<CpuState>),
    Cuda {
        /// The prefill path (checked mode, Lq > 16 at D 32 / 256, other head dims, and
        /// chunked prefill's batched runs).
        state: Box<cuda::CudaState>,
        /// The split-KV decode kernels.
        gpu: Box<gpu::GpuDecode>,
        /// The plan of the position-offset program (reachable ranges).
        plan: Box<Plan>,
        /// The path of the last call: "split-kv" (SIMT kernel), "split-kv-mma" (tensor
        /// cores) or "prefill".
        path: Option<&'static str>,
    },
}

pub(crate) struct CpuState {
    /// The kernel of the packed position-offset program (GQA packing, `cpu.rs`).
    kernel: CpuKernel,
    /// The plan of the position-offset program (block maps over positions).
    plan: Plan,
    /// k, v as f32 when they are not f32 already, reused between calls.
    inputs: [Vec<f32>; 2],
}

impl DecodeState {
    fn new(
        variant: &crate::api::Variant,
        bound_plan: &Plan,
        backend: Backend,
        (lq, group): (usize, usize),
        checked: bool,
        tuning: crate::options::DecodeTuning,
    ) -> Result<Self> {
        let program = variant.program();
        match backend {
            Backend::Reference => Ok(DecodeState::Reference),
            Backend::Cpu => {
                // a tile holds the G x Lq packed rows of a kv head (up to 64)
                let opts = CpuOptions {
                    q_block: (group * lq).clamp(1, 64).div_ceil(16) * 16,
                    kv_block: 64,
                    checked,
                    isa: None,
                    // K/V read in place by a page walk (cpu.rs)
                    kv_rows: true,
                    doc_tiles: false,
                    // (finds none: the packed program's rows are not positions)
                    diagonal_tables: true,
                };
                let plan = Plan::new(&offset_program(program));
                let packed = Plan::new(&packed_offset_program(program));
                let kernel = attnc_compiler::backend::cranelift::compile(
                    &packed,
                    KernelKind::Forward,
                    &opts,
                )
                .map_err(|e| Error::Backend {
                    backend: "cpu",
                    message: e.to_string(),
                })?;
                Ok(DecodeState::Cpu(Box::new(CpuState {
                    kernel,
                    plan,
                    inputs: Default::default(),
                })))
            }
            Backend::Cuda => {
                let shifted = offset_program(program);
                let plan = Plan::new(&shifted);
                Ok(DecodeState::Cuda {
                    state: Box::new(cuda::CudaState::new(
                        variant.derived(shifted),
                        variant.derived(attnc_compiler::decode::device_offset_program(program)),
                    )),
                    gpu: Box::new(gpu::GpuDecode::new(bound_plan.clone(), tuning)),
                    plan: Box::new(plan),
                    path: None,
                })
            }
        }
    }
}

impl Bound {
    /// The binding's decode state (kernels, offset plan), made on first use.
    fn decode_state(&mut self) -> Result<&mut DecodeState> {
        if self.extension::<Option<DecodeState>>().is_none() {
            let opts = self.options().clone();
            let variant = self.variant().clone();
            let s = DecodeState::new(
                &variant,
                self.plan(),
                opts.backend,
                (opts.shape.lq, opts.shape.hq / opts.shape.hkv.max(1)),
                opts.checked,
                opts.decode,
            )?;
            *self.extension::<Option<DecodeState>>() = Some(s);
        }
        Ok(self
            .extension::<Option<DecodeState>>()
            .as_mut()
            .expect("the decode state was made above"))
    }

    /// Attention of `q`'s new rows against a KV cache (see the module docs of
    /// `attnc::decode` for positions and layouts). The binding's shape gives B, Hq,
    /// Hkv, Lq, D, Dv, and `lkv` = the cache's capacity in positions.
    pub fn forward_with_cache(
        &mut self,
        q: &Tensor,
        cache: &KvCache,
        captures: &Captures,
    ) -> Result<Output> {
        let mut shape = decode_shape(self, q, cache)?;
        if let Some((p, [q, k, v])) = widened(self, q, cache, &mut shape) {
            let out = self.forward_with_cache_at(&q, &cache.with_kv(&k, &v), shape, captures)?;
            return Ok(Output {
                o: p.narrow_v(out.o),
                lse: out.lse,
            });
        }
        self.forward_with_cache_at(q, cache, shape, captures)
    }

    /// [`Self::forward_with_cache`] on tensors at the kernels' head dims, `shape` checked.
    fn forward_with_cache_at(
        &mut self,
        q: &Tensor,
        cache: &KvCache,
        shape: DecodeShape,
        captures: &Captures,
    ) -> Result<Output> {
        let bindings = crate::api::bind_captures(self.variant(), &shape.logical(), captures)?;
        let opts = self.options().clone();
        let scale = self.scale();
        let seq_lens = cache.seq_lens().to_i32();
        let page_table = cache.page_table().map(|t| t.to_i32()).unwrap_or_default();
        let variant = self.variant().clone();
        let state = self.decode_state()?;
        let (k, v) = cache.kv();
        let qf = if matches!(state, DecodeState::Cuda { .. }) {
            Vec::new()
        } else {
            q.to_f32()
        };
        let (o, lse) = match state {
            DecodeState::Reference => {
                let (kf, vf) = (k.to_f32(), v.to_f32());
                let view = KvView {
                    k: &kf,
                    v: &vf,
                    page_table: &page_table,
                    seq_lens: &seq_lens,
                };
                shape
                    .check(&view, qf.len(), opts.checked)
                    .map_err(cache_error)?;
                let out = attnc_compiler::decode::reference(
                    variant.program(),
                    &shape,
                    &qf,
                    &view,
                    scale,
                    &bindings,
                )
                .map_err(|e| crate::api::out_of_bounds(&variant, &e))?;
                (out.o, out.lse)
            }
            DecodeState::Cpu(st) => {
                let CpuState {
                    kernel,
                    plan,
                    inputs,
                } = &mut **st;
                // f32 caches are read in place; others converted once per call
                let [kbuf, vbuf] = inputs;
                for (t, buf) in [(k, &mut *kbuf), (v, &mut *vbuf)] {
                    if t.f32_slice().is_none() {
                        t.read_f32_into(buf);
                    }
                }
                let view = KvView {
                    k: k.f32_slice().unwrap_or(kbuf.as_slice()),
                    v: v.f32_slice().unwrap_or(vbuf.as_slice()),
                    page_table: &page_table,
                    seq_lens: &seq_lens,
                };
                shape
                    .check(&view, qf.len(), opts.checked)
                    .map_err(cache_error)?;
                // the pool's count (0: all cores, resolved once per process)
                let threads = {
                    use attnc_compiler::backend::cranelift::workers::Workers;
                    crate::exec::pool::pool(opts.threads).threads()
                };
                cpu::forward(cpu::Call {
                    kernel,
                    plan,
                    shape: &shape,
                    q: &qf,
                    view: &view,
                    scale,
                    bind: &bindings,
                    threads,
                    checked: opts.checked,
                })
                .map_err(|e| match e {
                    cpu::Failure::Eval(e) => crate::api::out_of_bounds(&variant, &e),
                    cpu::Failure::Other(message) => Error::Backend {
                        backend: "cpu",
                        message,
                    },
                })?
            }
            DecodeState::Cuda {
                state,
                gpu,
                plan,
                path,
            } => {
                // the dims of every input were checked by `decode_shape`
                shape
                    .check_ids(&page_table, &seq_lens, opts.checked)
                    .map_err(cache_error)?;
                let (live, ranges) = reachable(plan, &shape, &seq_lens, &bindings, opts.checked)?;
                let (prefill, runs) = cuda_route(&opts, &shape, &seq_lens, &live)?;
                if !prefill {
                    *path = Some(match gpu.kernel(&shape) {
                        gpu::Kernel::Simt => "split-kv",
                        gpu::Kernel::Mma => "split-kv-mma",
                    });
                    gpu.forward(
                        crate::exec::cuda::cuda_device_at(opts.device)?,
                        &shape,
                        scale,
                        q,
                        k,
                        v,
                        &page_table,
                        &seq_lens,
                        &ranges,
                        &bindings,
                    )?
                } else {
                    *path = Some("prefill");
                    let call = cuda::HostCall {
                        opts: &opts,
                        scale,
                        shape: &shape,
                        q,
                        k,
                        v,
                        page_table: &page_table,
                        captures,
                    };
                    state.forward(&call, &runs)?
                }
            }
        };
        let s = shape;
        Ok(Output {
            o: Tensor::from_f32_vec_as(vec![s.b, s.hq, s.lq, s.dv], o, opts.dtype),
            lse: Tensor::from_f32_vec(vec![s.b, s.hq, s.lq], lse),
        })
    }
}

impl Bound {
    /// The batched runs of a caller-buffer call whose lengths the caller also gave on the
    /// host (`external::decode`, `decode_cuda_into_with_lengths`), when chunked prefill
    /// takes the prefill kernel: a contiguous cache, or (unless
    /// `DecodeTuning::paged_split_kv`) a paged one with pages of at least [`PAGED_RUN_MIN_PAGE`] rows on sm_90 (the
    /// warp-specialized kernel reads a kv tile per page), every sequence at least Lq long and within the cache (so every row is
    /// live and its keys are the sequence's first `seq_lens[b]` positions, read in place),
    /// and the runs win ([`cuda_route`]'s rule, or `DecodeTuning::prefill`); records the
    /// path "prefill". `None`: the split-KV kernels.
    pub(crate) fn caller_prefill_runs(
        &mut self,
        shape: &DecodeShape,
        seq_lens: &[i32],
    ) -> Result<Option<Vec<PrefillRun>>> {
        let opts = self.options().clone();
        let lkv_max = shape.capacity();
        if let CacheLayout::Paged { page_size, .. } = shape.layout {
            let dev = crate::exec::cuda::cuda_device_at(opts.device)?;
            if opts.decode.paged_split_kv
                || page_size < PAGED_RUN_MIN_PAGE
                || dev.arch() != attnc_compiler::backend::llvm::Arch::Sm90
            {
                return Ok(None);
            }
        }
        if opts.checked
            || seq_lens.len() != shape.b
            || shape.lq <= gpu::MAX_LQ
            || seq_lens
                .iter()
                .any(|&n| n < 0 || (n as usize) < shape.lq || n as usize > lkv_max)
        {
            return Ok(None);
        }
        let live: Vec<(usize, (usize, usize))> = seq_lens
            .iter()
            .enumerate()
            .map(|(b, &n)| (b, (0, n as usize)))
            .collect();
        let (prefill, runs) = cuda_route(&opts, shape, seq_lens, &live)?;
        if !prefill {
            return Ok(None);
        }
        // the caller's cache is read in place (a pitch, or pages) by the warp-specialized
        // forward only: runs whose shape the plan gives another kernel (at D64 bands and
        // block tables) go to the split-KV kernels
        {
            let dev = crate::exec::cuda::cuda_device_at(opts.device)?;
            let DecodeState::Cuda { plan, .. } = self.decode_state()? else {
                return Ok(None);
            };
            let refused = runs.iter().any(|run| {
                let run_shape = Shape {
                    b: run.count,
                    hq: shape.hq,
                    hkv: shape.hkv,
                    lq: shape.lq,
                    lkv: run.hi - run.lo,
                    d: shape.d,
                    dv: shape.dv,
                };
                let o = BindOptions::new(Backend::Cuda, run_shape, opts.dtype);
                !crate::exec::cuda::cache_forward_applies(plan, &o, dev.arch())
            });
            if refused {
                return Ok(None);
            }
        }
        if let DecodeState::Cuda { path, .. } = self.decode_state()? {
            *path = Some("prefill");
        }
        Ok(Some(runs))
    }

    /// Whether a caller-buffer call whose lengths stay on the device (`decode_cuda_into`)
    /// runs chunked prefill on the prefill kernel, the whole batch in one launch of the
    /// device-lengths form (`BindOptions::device_lens`: each CTA reads its sequence's
    /// length): `Some((shape, page_shift))` of that binding (Lkv = the capacity) when
    /// Lq is above 16 on sm_90 in fast mode, the cache contiguous or (unless
    /// `DecodeTuning::paged_split_kv`) paged in pages of at least [`PAGED_RUN_MIN_PAGE`]
    /// rows, the mask a closed form the warp-specialized kernel takes, and the launch
    /// fills the GPU ([`cuda::prefill_device_wins`], or `DecodeTuning::prefill`); a
    /// stream capturing a graph only where an earlier call made the binding. Records the
    /// path "prefill". `None`: the split-KV kernels.
    pub(crate) fn caller_prefill_device(
        &mut self,
        shape: &DecodeShape,
        capture: bool,
        only: bool,
    ) -> Result<Option<(Shape, Option<u32>)>> {
        let plan = self.device_prefill_plan(shape, capture, only)?;
        if plan.is_some()
            && let DecodeState::Cuda { path, .. } = self.decode_state()?
        {
            *path = Some("prefill");
        }
        Ok(plan)
    }

    /// [`Self::caller_prefill_device`]'s decision without recording the path; `only`: no
    /// split-KV kernel takes the shape (chunked prefill at head dim 256), so neither the
    /// rule nor `DecodeTuning::prefill` can send it elsewhere.
    pub(crate) fn device_prefill_plan(
        &mut self,
        shape: &DecodeShape,
        capture: bool,
        only: bool,
    ) -> Result<Option<(Shape, Option<u32>)>> {
        let opts = self.options().clone();
        if opts.checked || shape.lq <= gpu::MAX_LQ || (!only && opts.decode.prefill == Some(false))
        {
            return Ok(None);
        }
        let dev = crate::exec::cuda::cuda_device_at(opts.device)?;
        let arch = dev.arch();
        if arch != attnc_compiler::backend::llvm::Arch::Sm90 {
            return Ok(None);
        }
        let page_shift = match shape.layout {
            CacheLayout::Paged { page_size, .. } => {
                if opts.decode.paged_split_kv || page_size < PAGED_RUN_MIN_PAGE {
                    return Ok(None);
                }
                Some(page_size.trailing_zeros())
            }
            CacheLayout::Contiguous { .. } => None,
        };
        if !only
            && opts.decode.prefill.is_none()
            && !cuda::prefill_device_wins(shape, dev.sms() as usize)
        {
            return Ok(None);
        }
        let bshape = Shape {
            b: shape.b,
            hq: shape.hq,
            hkv: shape.hkv,
            lq: shape.lq,
            lkv: shape.capacity(),
            d: shape.d,
            dv: shape.dv,
        };
        let DecodeState::Cuda { state, .. } = self.decode_state()? else {
            return Ok(None);
        };
        if !state.has_bound(&opts, bshape, page_shift, true) {
            if capture {
                return Ok(None);
            }
            if !state.device_applies(&opts, bshape, page_shift, arch) {
                return Ok(None);
            }
        }
        Ok(Some((bshape, page_shift)))
    }

    /// The prefill kernel's binding of the position-offset program for a run of `shape`,
    /// or with `device_lens` of its device-lengths form for a whole batch
    /// ([`Self::caller_prefill_device`]); made on first use, kept per shape
    /// (`cuda::CudaState::bound`); `page_shift`: it reads a paged cache of pages of
    /// `2^page_shift` rows in place (`BindOptions::kv_pages`).
    pub(crate) fn prefill_bound(
        &mut self,
        shape: Shape,
        page_shift: Option<u32>,
        device_lens: bool,
    ) -> Result<&mut Bound> {
        let opts = self.options().clone();
        let scale = self.scale();
        match self.decode_state()? {
            DecodeState::Cuda { state, .. } => {
                state.bound(&opts, scale, shape, page_shift, device_lens)
            }
            _ => Err(Error::Usage("the prefill runs run CUDA bindings".into())),
        }
    }
}

impl Bound {
    /// The split-KV kernels of this CUDA binding for `shape`'s layout (loaded on first
    /// use), for the caller-buffer decode (`external`; records the path "split-kv").
    pub(crate) fn split_kv_module(
        &mut self,
        shape: &DecodeShape,
    ) -> Result<crate::cuda::decode::DecodeModule> {
        let opts = self.options().clone();
        let dev = crate::exec::cuda::cuda_device_at(opts.device)?;
        let DecodeState::Cuda { gpu, path, .. } = self.decode_state()? else {
            return Err(Error::Usage(
                "the split-KV decode kernels run CUDA bindings".into(),
            ));
        };
        *path = Some(match gpu.kernel(shape) {
            gpu::Kernel::Simt => "split-kv",
            gpu::Kernel::Mma => "split-kv-mma",
        });
        Ok(gpu.caller_module(dev, shape, opts.dtype)?.clone())
    }
}

impl Bound {
    /// The cache positions (summed over sequences, in whole blocks of 64) that the mask
    /// can reach in this call: what a kernel that skips unreachable kv blocks reads, per
    /// kv head. `attnc bench --decode` turns it into bytes of K/V read.
    pub fn cache_positions_reached(
        &self,
        q: &Tensor,
        cache: &KvCache,
        captures: &Captures,
    ) -> Result<usize> {
        let shape = decode_shape(self, q, cache)?;
        let bindings = crate::api::bind_captures(self.variant(), &shape.logical(), captures)?;
        let plan = Plan::new(&offset_program(self.variant().program()));
        let seq_lens = cache.seq_lens().to_i32();
        let (_, spans) = cpu::sequences(
            &plan,
            &shape,
            &seq_lens,
            &bindings,
            (shape.lq.div_ceil(16) * 16, 64),
            false,
        )
        .map_err(|message| Error::Backend {
            backend: "blocks",
            message,
        })?;
        Ok(spans.iter().map(|(a, b)| b - a).sum())
    }
}

/// One CTA of the last timed launch of a decode kernel that records where its time went
/// (`ATTNC_DECODE_COPY` letter `l`, `decode_mma::COPY_TRACE`; [`Bound::cache_device_trace`]).
/// Times are the low 32 bits of the GPU's `%globaltimer` (ns; compare them modulo 2^32).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtaTrace {
    pub b: u32,
    pub kv_head: u32,
    pub row_group: u32,
    pub split: u32,
    /// Positions of the split (its keys, before the mask).
    pub keys: u32,
    /// The SM it ran on.
    pub sm: u32,
    /// Its start, the return of its `griddepcontrol.wait`, its prologue's tiles landed,
    /// its loop's end, the end of its partial's stores.
    pub t: [u32; 5],
}

impl Bound {
    /// The per-CTA records of the last [`Self::cache_device_time_ms`] call's last launch,
    /// when its kernel records them (`ATTNC_DECODE_COPY` letter `l`: the tensor-core
    /// kernel's plain kind, partials with a padding row: G x Lq < 16); else `None`.
    pub fn cache_device_trace(&mut self) -> Option<Vec<CtaTrace>> {
        match self.extension::<Option<DecodeState>>() {
            Some(DecodeState::Cuda { gpu, .. }) => gpu.trace.clone(),
            _ => None,
        }
    }

    /// Device-side milliseconds per `forward_with_cache` (inputs uploaded once, launches
    /// timed with events; chunked prefill's batched runs: the sum of the runs' launches on
    /// K/V gathered once) for device backends; `None` for host backends. Records the path
    /// ([`Self::cache_path`]).
    pub fn cache_device_time_ms(
        &mut self,
        q: &Tensor,
        cache: &KvCache,
        captures: &Captures,
        iters: usize,
    ) -> Result<Option<f64>> {
        let mut shape = decode_shape(self, q, cache)?;
        if let Some((_, [q, k, v])) = widened(self, q, cache, &mut shape) {
            return self.cache_device_time_at(&q, &cache.with_kv(&k, &v), shape, captures, iters);
        }
        self.cache_device_time_at(q, cache, shape, captures, iters)
    }

    /// [`Self::cache_device_time_ms`] on tensors at the kernels' head dims.
    fn cache_device_time_at(
        &mut self,
        q: &Tensor,
        cache: &KvCache,
        shape: DecodeShape,
        captures: &Captures,
        iters: usize,
    ) -> Result<Option<f64>> {
        let bindings = crate::api::bind_captures(self.variant(), &shape.logical(), captures)?;
        let opts = self.options().clone();
        let scale = self.scale();
        if opts.backend != Backend::Cuda || !gpu::applies(&shape, opts.dtype, opts.checked) {
            return Ok(None);
        }
        let seq_lens = cache.seq_lens().to_i32();
        let page_table = cache.page_table().map(|t| t.to_i32()).unwrap_or_default();
        shape
            .check_ids(&page_table, &seq_lens, opts.checked)
            .map_err(cache_error)?;
        let DecodeState::Cuda {
            gpu,
            plan,
            state,
            path,
        } = self.decode_state()?
        else {
            return Ok(None);
        };
        let (live, ranges) = reachable(plan, &shape, &seq_lens, &bindings, false)?;
        let (k, v) = cache.kv();
        let (prefill, runs) = cuda_route(&opts, &shape, &seq_lens, &live)?;
        if prefill {
            *path = Some("prefill");
            let call = cuda::HostCall {
                opts: &opts,
                scale,
                shape: &shape,
                q,
                k,
                v,
                page_table: &page_table,
                captures,
            };
            return state.time_ms(&call, &runs, iters);
        }
        *path = Some(match gpu.kernel(&shape) {
            gpu::Kernel::Simt => "split-kv",
            gpu::Kernel::Mma => "split-kv-mma",
        });
        gpu.time_ms(
            crate::exec::cuda::cuda_device_at(opts.device)?,
            &shape,
            scale,
            q,
            k,
            v,
            &page_table,
            &seq_lens,
            &ranges,
            &bindings,
            iters,
        )
        .map(Some)
    }
}

impl Bound {
    /// Which path the last `forward_with_cache` took: "reference", "cpu", "split-kv"
    /// (the CUDA SIMT decode kernel), "split-kv-mma" (the CUDA tensor-core decode kernel)
    /// or "prefill" (CUDA, checked mode, other head dims, Lq > 16 at D 32 / 256, and
    /// chunked prefill in batched runs: `DecodeTuning::prefill`, `cuda::prefill_runs_win`); `None`
    /// before the first call.
    pub fn cache_path(&mut self) -> Option<&'static str> {
        match self.extension::<Option<DecodeState>>() {
            None => None,
            Some(DecodeState::Reference) => Some("reference"),
            Some(DecodeState::Cpu(_)) => Some("cpu"),
            Some(DecodeState::Cuda { path, .. }) => *path,
        }
    }
}

/// The smallest page of a paged cache that chunked prefill's runs read in place (each kv
/// tile one TMA box per page it spans: 8 boxes per 64-column slab of a 128-row tile at
/// this size, the most the kernel issues).
pub(crate) const PAGED_RUN_MIN_PAGE: usize = 16;

/// Which CUDA path runs a call: `(true, runs)` for the prefill kernel over `runs`
/// (`cuda.rs`: batched runs of consecutive equal sequences in fast mode, one run per
/// sequence in checked mode), `(false, _)` for the split-KV kernels. The prefill kernel
/// runs what the split-KV kernels do not take (`gpu::applies`) and chunked prefill (Lq >
/// 16) where its runs win (`cuda::prefill_runs_win`; `DecodeTuning::prefill` overrides
/// the rule).
fn cuda_route(
    opts: &BindOptions,
    shape: &DecodeShape,
    seq_lens: &[i32],
    live: &[(usize, (usize, usize))],
) -> Result<(bool, Vec<cuda::Run>)> {
    let runs = cuda::runs(shape.lq, seq_lens, live, !opts.checked);
    if !gpu::applies(shape, opts.dtype, opts.checked) {
        return Ok((true, runs));
    }
    if shape.lq <= gpu::MAX_LQ {
        return Ok((false, runs));
    }
    let prefill = match opts.decode.prefill {
        Some(p) => p,
        None => {
            let sms = crate::exec::cuda::cuda_device_at(opts.device)?.sms() as usize;
            cuda::prefill_runs_win(shape, &runs, sms)
        }
    };
    Ok((prefill, runs))
}

/// The sequences with live rows that reach a key, with their reachable positions, and
/// the `[B, 2]` ranges table the decode kernel reads ((0, 0) for the others).
type Reach = (Vec<(usize, (usize, usize))>, Vec<i32>);

fn reachable(
    plan: &Plan,
    shape: &DecodeShape,
    seq_lens: &[i32],
    bindings: &attnc_compiler::interp::Bindings,
    checked: bool,
) -> Result<Reach> {
    let (seqs, spans) = cpu::sequences(
        plan,
        shape,
        seq_lens,
        bindings,
        (shape.lq.div_ceil(16) * 16, 64),
        checked,
    )
    .map_err(|message| Error::Backend {
        backend: "blocks",
        message,
    })?;
    let live: Vec<(usize, (usize, usize))> = seqs.iter().map(|s| s.b).zip(spans).collect();
    let mut ranges = vec![0i32; 2 * shape.b];
    for (b, (lo, hi)) in &live {
        ranges[2 * b] = *lo as i32;
        ranges[2 * b + 1] = *hi as i32;
    }
    Ok((live, ranges))
}
