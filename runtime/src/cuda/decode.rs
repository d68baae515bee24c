//! Loading and launching the split-KV decode kernel and its combine kernel
//! (`attnc_compiler::backend::llvm::decode`).
//!
//! In: [`DecodeKernels`] (PTX and parameter lists), host inputs (16-bit Q and caches, i32
//! page table, seq_lens and reachable ranges, bindings) and the launch geometry
//! ([`DecodeGeometry`]). Out: O (16-bit) and LSE (f32) downloaded, or the device time per
//! call. Every buffer is sized from the geometry and checked here, so the kernels index
//! inside their allocations: page ids are clamped in the kernel, key positions are
//! bounded by the ranges (which the host computes inside `0..seq_len`).

use super::{CudaDevice, CudaError};
use attnc_compiler::backend::llvm::decode::{DecodeKernels, DecodeParam};
use attnc_compiler::interp::{Bindings, TensorData};
use attnc_compiler::ir::Scalar;
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Both kernels, loaded.
pub struct DecodeModule {
    _modules: [Arc<CudaModule>; 2],
    decode: CudaFunction,
    combine: CudaFunction,
    decode_params: Vec<DecodeParam>,
    combine_params: Vec<DecodeParam>,
    smem_bytes: u32,
    threads: u32,
    rows: u32,
    d: u32,
}

/// The shape of one launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeGeometry {
    pub b: u32,
    pub hq: u32,
    pub hkv: u32,
    pub lq: u32,
    /// Row groups per kv head (`ceil(G * Lq / rows)`), splits per (b, kv head, group).
    pub row_groups: u32,
    pub splits: u32,
    /// Positions per split.
    pub chunk: u32,
    /// Contiguous: `Lkv_max`; paged: 0.
    pub lkv_max: u32,
    /// Paged: `log2(page_size)`, `max_pages`, `num_pages`; contiguous: 0.
    pub page_shift: u32,
    pub max_pages: u32,
    pub num_pages: u32,
    pub scale: f32,
}

/// Inputs, partials and outputs of one call, on the device.
pub struct DecodeProblem {
    pub geom: DecodeGeometry,
    q: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    page_table: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    ranges: CudaSlice<i32>,
    part_o: CudaSlice<f32>,
    part_lse: CudaSlice<f32>,
    o: CudaSlice<u16>,
    lse: CudaSlice<f32>,
    params: CudaSlice<u32>,
    err: CudaSlice<u32>,
    tensors: Vec<(CudaSlice<u32>, Vec<i32>)>,
}

impl DecodeModule {
    pub fn load(dev: &CudaDevice, k: &DecodeKernels) -> Result<Self, CudaError> {
        let load = |ptx: &str, entry: &str| -> Result<(Arc<CudaModule>, CudaFunction), CudaError> {
            let m = dev
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx.to_string()))?;
            let f = m.load_function(entry)?;
            Ok((m, f))
        };
        let (m1, decode) = load(&k.decode_ptx, &k.decode_entry)?;
        let (m2, combine) = load(&k.combine_ptx, &k.combine_entry)?;
        Ok(DecodeModule {
            _modules: [m1, m2],
            decode,
            combine,
            decode_params: k.decode_params.clone(),
            combine_params: k.combine_params.clone(),
            smem_bytes: k.smem_bytes,
            threads: k.threads,
            rows: k.options.rows,
            d: k.options.d,
        })
    }

    /// Uploads one call. `q`, `k`, `v` are 16-bit elements in the decode layouts;
    /// `ranges` is `[B, 2]` (lo, hi) with `0 <= lo <= hi <= seq_lens[b]`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        dev: &CudaDevice,
        geom: DecodeGeometry,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<DecodeProblem, CudaError> {
        let g = geom;
        let d = self.d as usize;
        let bad = |m: String| Err(CudaError::Mismatch(m));
        let (b, hq, hkv, lq) = (g.b as usize, g.hq as usize, g.hkv as usize, g.lq as usize);
        if hkv == 0 || hq % hkv != 0 {
            return bad(format!("Hq {hq} is not a multiple of Hkv {hkv}"));
        }
        let rows = (hq / hkv) * lq;
        if g.row_groups as usize != rows.div_ceil(self.rows as usize) {
            return bad("row groups do not match the kernel's rows per CTA".into());
        }
        let cache_rows = if g.max_pages > 0 {
            g.num_pages as usize * (1usize << g.page_shift)
        } else {
            b * g.lkv_max as usize
        };
        if q.len() != b * hq * lq * d
            || k.len() != cache_rows * hkv * d
            || v.len() != k.len()
            || seq_lens.len() != b
            || ranges.len() != 2 * b
            || (g.max_pages > 0
                && (page_table.len() != b * g.max_pages as usize || g.num_pages == 0))
        {
            return bad("decode inputs do not match the geometry".into());
        }
        let cap = if g.max_pages > 0 {
            (g.max_pages as usize) << g.page_shift
        } else {
            g.lkv_max as usize
        };
        for i in 0..b {
            let (lo, hi, n) = (ranges[2 * i], ranges[2 * i + 1], seq_lens[i]);
            if lo < 0 || lo > hi || hi > n || n as usize > cap {
                return bad(format!(
                    "range {lo}..{hi} of sequence {i} (length {n}) is invalid"
                ));
            }
            if (hi - lo) as usize > g.splits as usize * g.chunk as usize {
                return bad("splits x chunk do not cover a range".into());
            }
        }
        let s = &dev.stream;
        let words: Vec<u32> = bind
            .params
            .iter()
            .map(|p| match p {
                Scalar::Bool(b) => *b as u32,
                Scalar::I32(x) => *x as u32,
                Scalar::F32(x) => x.to_bits(),
            })
            .chain([0])
            .collect();
        let mut tensors = Vec::new();
        for t in &bind.tensors {
            let mut data: Vec<u32> = match &t.data {
                TensorData::I32(v) => v.iter().map(|x| *x as u32).collect(),
                TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            };
            let dims: Vec<i32> = t
                .dims
                .iter()
                .map(|d| (*d).clamp(1, i32::MAX as usize) as i32)
                .collect();
            let n: usize = dims.iter().map(|d| *d as usize).product();
            data.resize(n.max(data.len()).max(1), 0);
            tensors.push((s.clone_htod(&data)?, dims));
        }
        let parts = b * hkv * g.row_groups as usize * g.splits as usize * self.rows as usize;
        let nonempty_i = |v: &[i32]| if v.is_empty() { vec![0] } else { v.to_vec() };
        Ok(DecodeProblem {
            geom,
            q: s.clone_htod(q)?,
            k: s.clone_htod(k)?,
            v: s.clone_htod(v)?,
            page_table: s.clone_htod(&nonempty_i(page_table))?,
            seq_lens: s.clone_htod(&nonempty_i(seq_lens))?,
            ranges: s.clone_htod(&nonempty_i(ranges))?,
            part_o: s.alloc_zeros((parts * d).max(1))?,
            part_lse: s.alloc_zeros(parts.max(1))?,
            o: s.alloc_zeros((b * hq * lq * d).max(1))?,
            lse: s.alloc_zeros((b * hq * lq).max(1))?,
            params: s.clone_htod(&words)?,
            err: s.alloc_zeros(8)?,
            tensors,
        })
    }

    fn launch_one(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
        f: &CudaFunction,
        params: &[DecodeParam],
        grid: (u32, u32, u32),
        smem: u32,
    ) -> Result<(), CudaError> {
        let s = &dev.stream;
        let g = &p.geom;
        let mut ptrs: Vec<u64> = Vec::new();
        let mut ints: Vec<i32> = Vec::new();
        enum A {
            P(usize),
            I(usize),
            F,
        }
        let mut order = Vec::with_capacity(params.len());
        for kp in params {
            use DecodeParam::*;
            let ptr = match kp {
                Q => Some(p.q.device_ptr(s).0),
                K => Some(p.k.device_ptr(s).0),
                V => Some(p.v.device_ptr(s).0),
                PageTable => Some(p.page_table.device_ptr(s).0),
                SeqLens => Some(p.seq_lens.device_ptr(s).0),
                Ranges => Some(p.ranges.device_ptr(s).0),
                PartO => Some(p.part_o.device_ptr(s).0),
                PartLse => Some(p.part_lse.device_ptr(s).0),
                O => Some(p.o.device_ptr(s).0),
                Lse => Some(p.lse.device_ptr(s).0),
                Params => Some(p.params.device_ptr(s).0),
                Err => Some(p.err.device_ptr(s).0),
                Tensor(t) => Some(p.tensors[*t as usize].0.device_ptr(s).0),
                _ => None,
            };
            let a = match (ptr, kp) {
                (Some(x), _) => {
                    ptrs.push(x);
                    A::P(ptrs.len() - 1)
                }
                (None, Scale) => A::F,
                (None, other) => {
                    ints.push(match other {
                        Hq => g.hq as i32,
                        Hkv => g.hkv as i32,
                        Lq => g.lq as i32,
                        Group => (g.hq / g.hkv) as i32,
                        RowGroups => g.row_groups as i32,
                        Splits => g.splits as i32,
                        Chunk => g.chunk as i32,
                        LkvMax => g.lkv_max as i32,
                        PageShift => g.page_shift as i32,
                        MaxPages => g.max_pages as i32,
                        NumPages => g.num_pages as i32,
                        TensorDim { tensor, dim } => p.tensors[*tensor as usize].1[*dim as usize],
                        _ => {
                            return std::result::Result::Err(CudaError::Mismatch(format!(
                                "decode param {other:?}"
                            )));
                        }
                    });
                    A::I(ints.len() - 1)
                }
            };
            order.push(a);
        }
        let mut b = s.launch_builder(f);
        for a in &order {
            match a {
                A::P(i) => b.arg(&ptrs[*i]),
                A::I(i) => b.arg(&ints[*i]),
                A::F => b.arg(&g.scale),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: the arguments follow the kernel's parameter list; every buffer was sized
        // from the geometry in `upload`, which checked the inputs against it.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Enqueues the decode kernel and the combine kernel.
    pub fn launch(&self, dev: &CudaDevice, p: &DecodeProblem) -> Result<(), CudaError> {
        let g = &p.geom;
        if g.b == 0 {
            return Ok(());
        }
        self.launch_one(
            dev,
            p,
            &self.decode,
            &self.decode_params,
            (g.splits, g.hkv * g.row_groups, g.b),
            self.smem_bytes,
        )?;
        self.launch_one(
            dev,
            p,
            &self.combine,
            &self.combine_params,
            (g.lq, g.hq, g.b),
            0,
        )
    }

    /// Waits and copies O (16-bit) and LSE back.
    pub fn download(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
    ) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        dev.stream.synchronize()?;
        Ok((dev.stream.clone_dtoh(&p.o)?, dev.stream.clone_dtoh(&p.lse)?))
    }

    /// Device milliseconds per call (decode + combine), median of 5 timings of `iters`.
    pub fn time(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
        iters: usize,
    ) -> Result<f64, CudaError> {
        dev.time(3, iters, 5, || self.launch(dev, p))
    }
}
