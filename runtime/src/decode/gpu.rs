//! CUDA decoding with the split-KV kernel: when it applies, how the launch is shaped,
//! and the host side of one call.
//!
//! In: the binding's options, the checked decode shape, host tensors, the reachable
//! range of each sequence (`cpu::sequences`, from the mask's block structure over logical
//! positions: closed form, params or summaries; a sliding window reaches only its window)
//! and the bindings of the original program. Out: `O`, `LSE` (f32), or the device time.
//!
//! The kernel applies in fast mode to Lq <= [`MAX_LQ`], D = Dv in {32, 64, 128, 256},
//! bf16/f16; everything else (checked mode, larger Lq: chunked prefill) takes the
//! prefill path (`cuda.rs`). Rows per CTA: all `G * Lq` rows of a kv head when they are
//! at most [`MAX_ROWS`] (K/V read once), else groups of [`MAX_ROWS`]. Splits per
//! (sequence, kv head, row group): enough CTAs for [`TARGET_CTAS`], each at least
//! [`MIN_CHUNK`] positions.

use crate::cuda::CudaDevice;
use crate::cuda::decode::{DecodeGeometry, DecodeModule};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use attnc_compiler::backend::llvm::InputType;
use attnc_compiler::backend::llvm::decode::DecodeOptions;
use attnc_compiler::decode::{CacheLayout, DecodeShape};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;

/// Largest Lq the decode kernel takes.
pub(crate) const MAX_LQ: usize = 16;
/// Largest number of rows one CTA holds in registers.
pub(crate) const MAX_ROWS: usize = 8;
/// CTAs a launch aims for (an H200 has 132 SMs; several CTAs per SM hide latency).
const TARGET_CTAS: usize = 132 * 8;
/// Fewest positions per split.
const MIN_CHUNK: usize = 256;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        message: e.to_string(),
    }
}

/// Whether the split-KV kernel runs this call.
pub(crate) fn applies(shape: &DecodeShape, dtype: DType, checked: bool) -> bool {
    !checked
        && shape.lq <= MAX_LQ
        && shape.d == shape.dv
        && [32, 64, 128, 256].contains(&shape.d)
        && matches!(dtype, DType::BF16 | DType::F16)
}

/// The kernels of a binding: one module per layout, taken from the JIT cache on first use.
pub(crate) struct GpuDecode {
    /// The binding's plan (of the original program: the kernels evaluate the mask and
    /// score at logical positions themselves).
    plan: Plan,
    modules: [Option<DecodeModule>; 2],
}

impl GpuDecode {
    pub(crate) fn new(plan: Plan) -> Self {
        GpuDecode {
            plan,
            modules: [None, None],
        }
    }

    pub(crate) fn module(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        dtype: DType,
    ) -> Result<&DecodeModule> {
        let paged = matches!(shape.layout, CacheLayout::Paged { .. });
        let slot = &mut self.modules[paged as usize];
        if slot.is_none() {
            let opts = DecodeOptions {
                arch: dev.arch(),
                d: shape.d as u32,
                input: if dtype == DType::F16 {
                    InputType::F16
                } else {
                    InputType::Bf16
                },
                rows: rows_per_cta(shape) as u32,
                paged,
            };
            let jit = crate::exec::cuda::cuda_jit_of(dev)?;
            *slot = Some(DecodeModule::load(dev, jit, &self.plan, &opts).map_err(backend)?);
        }
        slot.as_ref().ok_or_else(|| backend("decode module"))
    }

    /// Uploads one call; `ranges` has one `(lo, hi)` per sequence.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<(&DecodeModule, crate::cuda::decode::DecodeProblem)> {
        let geom = geometry(shape, ranges, scale);
        let m = self.module(dev, shape, q.dtype())?;
        let bits = |t: &Tensor| {
            t.to_u16_bits()
                .ok_or_else(|| backend("16-bit inputs expected"))
        };
        let p = m
            .upload(
                dev,
                geom,
                &bits(q)?,
                &bits(k)?,
                &bits(v)?,
                page_table,
                seq_lens,
                ranges,
                bind,
            )
            .map_err(backend)?;
        Ok((m, p))
    }

    /// Runs one call: O (as f32) and LSE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let dtype = q.dtype();
        let (m, p) = self.upload(
            dev, shape, scale, q, k, v, page_table, seq_lens, ranges, bind,
        )?;
        m.launch(dev, &p).map_err(backend)?;
        let (o, lse) = m.download(dev, &p).map_err(backend)?;
        let bytes: Vec<u8> = o.iter().flat_map(|x| x.to_le_bytes()).collect();
        let o = Tensor::from_bytes(vec![o.len()], dtype, bytes)
            .ok_or_else(|| backend("output size"))?
            .to_f32();
        Ok((o, lse))
    }

    /// Device milliseconds per call (inputs uploaded once).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn time_ms(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
        iters: usize,
    ) -> Result<f64> {
        let (m, p) = self.upload(
            dev, shape, scale, q, k, v, page_table, seq_lens, ranges, bind,
        )?;
        m.time(dev, &p, iters).map_err(backend)
    }
}

/// Rows per CTA: every row of a kv head up to [`MAX_ROWS`].
fn rows_per_cta(shape: &DecodeShape) -> usize {
    ((shape.hq / shape.hkv) * shape.lq).min(MAX_ROWS)
}

/// The launch geometry of a call.
pub(crate) fn geometry(shape: &DecodeShape, ranges: &[i32], scale: f32) -> DecodeGeometry {
    let rows = (shape.hq / shape.hkv) * shape.lq;
    let rpc = rows_per_cta(shape);
    let row_groups = rows.div_ceil(rpc);
    let span = ranges
        .chunks(2)
        .map(|r| (r[1] - r[0]).max(0) as usize)
        .max()
        .unwrap_or(0);
    let ctas = shape.b * shape.hkv * row_groups;
    let splits = TARGET_CTAS
        .div_ceil(ctas.max(1))
        .min(span.div_ceil(MIN_CHUNK))
        .max(1);
    let chunk = span.div_ceil(splits).div_ceil(64) * 64;
    let chunk = chunk.max(64);
    let splits = span.div_ceil(chunk).max(1);
    let (lkv_max, page_shift, max_pages, num_pages) = match shape.layout {
        CacheLayout::Contiguous { lkv_max } => (lkv_max, 0, 0, 0),
        CacheLayout::Paged {
            num_pages,
            page_size,
            max_pages,
        } => (0, page_size.trailing_zeros(), max_pages, num_pages),
    };
    DecodeGeometry {
        b: shape.b as u32,
        hq: shape.hq as u32,
        hkv: shape.hkv as u32,
        lq: shape.lq as u32,
        row_groups: row_groups as u32,
        splits: splits as u32,
        chunk: chunk as u32,
        lkv_max: lkv_max as u32,
        page_shift,
        max_pages: max_pages as u32,
        num_pages: num_pages as u32,
        scale,
    }
}
