//! The CPU backward pass: dQ, dK, dV and the gradients of captured f32/f16/bf16 tensors
//! and f32 params, for one attention, by the formulas of issue 10 (see
//! `reference_grad`, the f64 oracle it is tested against).
//!
//! In: a [`Program`] (verified here), [`CpuOptions`] (tile sizes, ISA), then per call
//! the shape, f32 Q, K, V, the forward's O and LSE, dO, an optional dLSE, the scale,
//! [`Bindings`], the forward's [`BlockMaps`] (built for this kernel's tiles) or a
//! document tile table, and a thread count. Out: [`Gradients`], or a [`CpuError`] (bad lengths, maps or bindings:
//! never a panic or an out-of-bounds access).
//!
//! Structure (the forward's split: generated code for what the attention defines,
//! precompiled Rust for the dense products):
//! - [`elem`] generates, with Cranelift, the per-element part of a tile: mask, score and
//!   the score's derivative (`grad::differentiate`), read-site indices and partials;
//! - [`mod@mm`] holds the register-tiled tile products (AVX-512 intrinsics, AVX2+FMA and
//!   portable builds selected at run time);
//! - the tile code here computes `S = (scale·Q)·Kᵀ` and `dP = dO·Vᵀ` (over `Kᵀ`/`Vᵀ`
//!   packed by the work item that owns the kv tile), calls the element function (partial blocks, or every block
//!   when there is a score), then `P = exp(S' − LSE)` (0 where masked, −inf, or the row
//!   is fully masked), `dS' = P∘(dP − Δ)` with `Δ = rowsum(dO∘O) − dLSE`,
//!   `dS = dS'·∂score/∂s`.
//! - One pass, parallel over work items (b, kv head, chunk of consecutive kv tiles): for
//!   each query head of the group, each q tile whose row of the block map has kv tiles in
//!   the chunk, and each of those kv tiles: `dV += Pᵀ·dO`, `dK += dSᵀ·(scale·Q)`, the
//!   item's dQ partial `+= dS·K`, and the capture/param partials `Σ dS'·∂score/∂read`
//!   per element read, `Σ dS'·∂score/∂param`. Five tile products per tile (S and dP
//!   computed once); q tiles outer, so a q tile's rows stay in cache across the chunk.
//!
//! - Tiles (`Layout`): the grid's (`run_into`: q tiles and kv tiles from row 0, the
//!   runs of the forward's block maps), or a document mask's own (`run_docs_into`, a
//!   kernel compiled from the mask's linear part, `Plan::doc_split`: each document's q
//!   and kv tiles from its first row, cut at its end, the runs of the forward's document
//!   tile table, `DocTable`): no tile straddles two documents, the element function runs
//!   the linear part only, and a chunk's keys are still consecutive (the documents
//!   cover each sequence in order).
//!
//! Determinism: dK and dV rows belong to one item and are accumulated in a fixed order.
//! dQ and the capture/param gradients are per-item partials, summed over items in item
//! order (for each (b, kv head), chunks ascending). The dQ partials (`dS·(scale·K)`, so
//! the sum needs no scaling pass) are added while the other items still run: an item
//! that finds every earlier chunk of its (b, kv head) added adds its own partial and
//! then those of the later chunks that are already done (`Chain`), so each dQ row is
//! `((0 + p₀) + p₁) + …` over the chunks that reach it, whichever thread adds what. The
//! chunking (`chunks`) depends on the shape only, so the result is bit-identical for any
//! thread count.
//!
//! Memory: dQ, dK and dV are written in place into the caller's slices
//! ([`CpuBackward::run_into`]; the runtime passes its output tensors' memory, whose
//! first touch is then spread over the worker threads). The dQ partials (one `|Q|` per
//! chunk, at most 256 MiB), `scale·Q` and Δ are kept by the kernel between calls (no
//! fresh pages per call); per thread, a dense scratch as large as each differentiable
//! captured tensor.

pub mod elem;
pub mod mm;

use super::launch::{DocTable, check_docs, check_maps, param_words, tensor_descs};
use super::micro::exp_approx;
use super::workers::Workers;
use super::{CpuError, CpuOptions, Isa, JitCode, prepare};
use crate::analysis::blockmap::{BlockMaps, Run};
use crate::grad::{ScoreGrad, differentiate};
use crate::interp::{Bindings, TensorData};
use crate::ir::Program;
use crate::shape::Shape;
use cranelift_frontend::FunctionBuilderContext;
use elem::{ELEM_NAME, ElemCtx, ElemTile};
use mm::{Mm, mm};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

type ElemFn =
    unsafe extern "C" fn(*const ElemCtx, *mut ElemTile, i64, i64, i64, i64, i64, i64, i64);

/// The gradients of one backward call: the oracle's type, so that the kernel's result
/// and the reference's compare as they are.
pub use crate::reference_grad::Grads as Gradients;

/// The gradients of the captures and params of one [`CpuBackward::run_into`] call
/// (as in [`Gradients`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureGradients {
    pub tensors: Vec<Option<Vec<f32>>>,
    pub params: Vec<Option<f32>>,
}

/// A compiled backward kernel.
pub struct CpuBackward {
    /// Owns the executable memory of `entry`; freed on drop.
    _code: JitCode,
    entry: ElemFn,
    program: Program,
    grad: ScoreGrad,
    opts: CpuOptions,
    /// The tile bodies' build: 0 portable, 1 AVX2+FMA, 2 AVX-512F.
    simd: u8,
    /// The per-call buffers of the last call, kept for the next (a call that finds it
    /// busy allocates its own): reused memory instead of fresh pages on every call.
    ws: Mutex<Workspace>,
    /// Words of the element function's diagonal tables (`elem::Elem::table_words`).
    table_words: usize,
}

/// The buffers a call needs besides its outputs (module docs, Memory).
#[derive(Default)]
struct Workspace {
    /// The items' dQ partials (`part_len` floats each).
    parts: Vec<f32>,
    /// `scale·Q`.
    qs: Vec<f32>,
    /// `Δ = rowsum(dO∘O) − dLSE` per query row.
    delta: Vec<f32>,
}

/// The CLIF text of the generated element function (deterministic).
pub fn emit_backward_clif(program: &Program, opts: &CpuOptions) -> Result<String, CpuError> {
    let (_, mut module, _) = prepare(program, opts, ELEM_NAME, elem::elem_signature)?;
    let grad = differentiate(program);
    let mut fctx = FunctionBuilderContext::new();
    let f = elem::generate(program, &grad, opts, &mut module, &mut fctx)?.func;
    Ok(format!(
        "; backward elements of attention {}\n{}",
        program.name,
        f.display()
    ))
}

/// Differentiates the score and JIT-compiles the backward's element function.
pub fn compile_backward(program: &Program, opts: &CpuOptions) -> Result<CpuBackward, CpuError> {
    let (isa, mut module, id) = prepare(program, opts, ELEM_NAME, elem::elem_signature)?;
    let grad = differentiate(program);
    grad.verify(program)?;
    let mut fctx = FunctionBuilderContext::new();
    let elem::Elem { func, table_words } =
        elem::generate(program, &grad, opts, &mut module, &mut fctx)?;
    let (code, ptr) = JitCode::define(module, id, func)?;
    // SAFETY: `ptr` is the finalized code of a function with `elem_signature`, the C ABI
    // of `ElemFn` on this host.
    let entry = unsafe { std::mem::transmute::<*const u8, ElemFn>(ptr) };
    Ok(CpuBackward {
        _code: code,
        entry,
        program: program.clone(),
        grad,
        opts: opts.clone(),
        simd: match isa {
            Isa::Portable => 0,
            _ if !avx2_fma() => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        },
        ws: Mutex::new(Workspace::default()),
        table_words,
    })
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `ElemCtx` shared by the workers.
struct SharedCtx(ElemCtx);
// SAFETY: the pointers are read-only views of `params`/`tensors` (and the tensors'
// data), which outlive the scoped worker threads.
unsafe impl Sync for SharedCtx {}

impl SharedCtx {
    fn ptr(&self) -> *const ElemCtx {
        &self.0
    }
}

/// One float tensor's per-item gradient: dense partial sums, touched marks, touch order.
type CapScratch = (Vec<f32>, Vec<bool>, Vec<u32>);

/// Per-thread scratch.
struct Scratch {
    /// `Kᵀ`, `Vᵀ` of the item's kv tiles (`[tile][d][bkv]`, `[tile][dv][bkv]`).
    kt: Vec<f32>,
    vt: Vec<f32>,
    /// `scale·K` of the item's kv tiles, row-major (`[tile][bkv][d]`): the B operand of
    /// the dQ partials, which then need no scaling when they are summed.
    ks: Vec<f32>,
    s: Vec<f32>,
    dp: Vec<f32>,
    ds: Vec<f32>,
    flat: Vec<i64>,
    part: Vec<f32>,
    /// The element function's diagonal tables (`ElemTile::diag`).
    diag: Vec<u32>,
    /// Per program tensor (float ones): dense partial gradient, touched marks, touch order.
    cap: Vec<Option<CapScratch>>,
}

/// What one work item (b, kv head, chunk of kv tiles) produces besides the dK, dV rows
/// of the chunk's keys (written in place).
struct KvItem {
    caps: Vec<Vec<(u32, f32)>>,
    /// The item's sum of each f32 param's partials, in f64: a param's gradient sums
    /// every (b, h, q, kv) term of the call, which cancel (Σ_kv dS' = 0 per row); an f32
    /// accumulator's rounding then swamped a small result (fuzz seed
    /// 13890949824896489788: 1.1e-3 relative over 266k terms).
    params: Vec<f64>,
}

/// The order of one (b, kv head)'s dQ partials: the next chunk to add, whether an item
/// is adding, and per chunk, once its item is done, `(first row, rows)` of its partial
/// (`dS·(scale·K)` of the chunk's keys for those rows of each of the group's query heads,
/// `[group][rows][d]` in the workspace at `item · group · lq · d`).
struct Chain {
    next: usize,
    busy: bool,
    ready: Vec<Option<(usize, usize)>>,
}

fn lock_chain(m: &Mutex<Chain>) -> MutexGuard<'_, Chain> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The most memory the per-item dQ partials may take (bytes).
const DQ_PARTIALS_BYTES: usize = 256 << 20;

/// Work items the chunking aims at (four per thread on 16 threads). Measured on a
/// 16-core Xeon at B1 H8 L2048 (docs/performance.md): 64 items ran the backward 14-22%
/// faster than 32 at 16 threads (dense D64 13.3 vs 17.2 ms), within 3% at 2 threads.
const ITEMS: usize = 64;

/// [`ITEMS`], or `ATTNC_CPU_BWD_ITEMS` (a benchmark knob, read once per process: more
/// items balance better and keep fewer kv tiles per item in cache, but add dQ partials).
fn items_target() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("ATTNC_CPU_BWD_ITEMS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(ITEMS)
    })
}

/// How many chunks the kv tiles of each (b, kv head) are split into: enough for
/// [`items_target`] work items, at most one per tile, and at most
/// [`DQ_PARTIALS_BYTES`] of dQ partials (one `|Q|` per chunk). A function of the shape
/// (and that process-wide setting) only, never of the thread count, so the reduction
/// order (and every bit of the result) is the same on any number of threads.
fn chunks(kv_heads: usize, nkvb: usize, q_len: usize) -> usize {
    let want = items_target()
        .div_ceil(kv_heads.max(1))
        .clamp(1, nkvb.max(1));
    let cap = (DQ_PARTIALS_BYTES / (4 * q_len).max(1)).max(1);
    want.min(cap)
}

impl CpuBackward {
    /// Whether the element function reads the score's relative-position values from
    /// per-tile tables (`elem::Elem::table_words`).
    pub fn has_diagonal_tables(&self) -> bool {
        self.table_words > 0
    }

    pub fn q_block(&self) -> usize {
        self.opts.q_block
    }
    pub fn kv_block(&self) -> usize {
        self.opts.kv_block
    }
    pub fn program(&self) -> &Program {
        &self.program
    }
    /// The derivative the element function computes.
    pub fn score_grad(&self) -> &ScoreGrad {
        &self.grad
    }

    /// Runs the backward (module docs). `o`, `lse` are the forward's outputs for the
    /// same inputs; `dout` is `[B, Hq, Lq, Dv]`, `dlse` `[B, Hq, Lq]`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        shape: &Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &[f32],
        lse: &[f32],
        dout: &[f32],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        maps: &BlockMaps,
        workers: &dyn Workers,
    ) -> Result<Gradients, CpuError> {
        shape.validate()?;
        let mut dq = vec![0f32; shape.q_len()];
        let mut dk = vec![0f32; shape.k_len()];
        let mut dv = vec![0f32; shape.v_len()];
        let caps = self.run_into(
            shape,
            [q, k, v, o, lse, dout],
            dlse,
            scale,
            bind,
            maps,
            workers,
            [&mut dq, &mut dk, &mut dv],
        )?;
        Ok(Gradients {
            dq,
            dk,
            dv,
            tensors: caps.tensors,
            params: caps.params,
        })
    }

    /// [`run`](Self::run) writing dQ, dK, dV into `out` (`[dq, dk, dv]`, the lengths of
    /// Q, K, V; every element is written, whatever it held) — e.g. straight into the
    /// caller's output tensors, without a copy. `inputs` is `[q, k, v, o, lse, dout]`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_into(
        &self,
        shape: &Shape,
        inputs: [&[f32]; 6],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        maps: &BlockMaps,
        workers: &dyn Workers,
        out: [&mut [f32]; 3],
    ) -> Result<CaptureGradients, CpuError> {
        check_lengths(shape, inputs, dlse, &out)?;
        let (bq, bkv) = (self.opts.q_block, self.opts.kv_block);
        check_maps(maps, shape, bq, bkv)?;
        let layout = Layout::grid(shape, bq, bkv, maps);
        self.run_layout(shape, inputs, dlse, scale, bind, &layout, workers, out)
    }

    /// [`run_into`](Self::run_into) over document tiles (`DocTable`, as the forward's
    /// `CpuKernel::run_docs` takes it, made for this kernel's tiles): a kernel compiled
    /// from a document mask's linear part (`Plan::doc_split`) runs each document on its own
    /// q tiles and kv tiles, counted from the document's first row (no tile straddles two
    /// documents; the last of each is cut at the document's end), each q tile visiting its
    /// runs of the table; every key belongs to one document's kv tiles, so every dK / dV
    /// row is written. The tile list and its runs are checked against the shape first (an
    /// error, never an out-of-bounds access), and the documents must cover each sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn run_docs_into(
        &self,
        shape: &Shape,
        inputs: [&[f32]; 6],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        docs: DocTable,
        workers: &dyn Workers,
        out: [&mut [f32]; 3],
    ) -> Result<CaptureGradients, CpuError> {
        check_lengths(shape, inputs, dlse, &out)?;
        let (bq, bkv) = (self.opts.q_block, self.opts.kv_block);
        check_docs(&docs, shape, bq, bkv)?;
        let layout = Layout::docs(shape, bq, bkv, &docs)?;
        self.run_layout(shape, inputs, dlse, scale, bind, &layout, workers, out)
    }

    /// The backward over the tiles of `layout` (module docs); lengths and tiles checked by
    /// the callers.
    #[allow(clippy::too_many_arguments)]
    fn run_layout(
        &self,
        shape: &Shape,
        [q, k, v, o, lse, dout]: [&[f32]; 6],
        dlse: Option<&[f32]>,
        scale: f32,
        bind: &Bindings,
        layout: &Layout,
        workers: &dyn Workers,
        [gdq, gdk, gdv]: [&mut [f32]; 3],
    ) -> Result<CaptureGradients, CpuError> {
        let (bq, bkv) = (self.opts.q_block, self.opts.kv_block);
        if shape.lq == 0 || shape.lkv == 0 {
            // no (q, kv) pair: no query rows, or every row fully masked (O = 0 whatever
            // dO is), so every gradient is zero (the chunking below assumes tiles)
            gdq.fill(0.0);
            gdk.fill(0.0);
            gdv.fill(0.0);
            return Ok(self.zero_capture_gradients(bind));
        }
        let params = param_words(&self.program, bind)?;
        let tensors = tensor_descs(&self.program, shape, bind)?;
        let ctx = SharedCtx(ElemCtx {
            params: params.as_ptr(),
            tensors: tensors.as_ptr(),
        });
        let Shape {
            b: nb,
            hq,
            hkv,
            lq,
            lkv,
            d,
            dv,
        } = *shape;
        let group = hq / hkv;
        // the most kv tiles of a sequence (each sequence's chunks hold `tpc` of its own)
        let nkvb = layout.kv.iter().map(Vec::len).max().unwrap_or(0);
        let kv_heads = nb * hkv;
        let nchunks = chunks(kv_heads, nkvb, q.len());
        let tpc = nkvb.div_ceil(nchunks);
        let nchunks = nkvb.div_ceil(tpc);
        let items = kv_heads * nchunks;
        // the buffers: kept between calls unless another call holds them or the dQ
        // partials (`part_len` floats per item: `[group][rows][d]` for the rows its tiles
        // reach) would exceed DQ_PARTIALS_BYTES (then memory of this call only)
        let part_len = group * lq * d;
        let keep = items * part_len * 4 <= DQ_PARTIALS_BYTES;
        let mut ws_kept = if keep { self.ws.try_lock().ok() } else { None };
        let mut ws_fresh = Workspace::default();
        let ws: &mut Workspace = ws_kept.as_deref_mut().unwrap_or(&mut ws_fresh);
        let nrows = shape.lse_len();
        for (buf, n) in [
            (&mut ws.parts, items * part_len),
            (&mut ws.qs, q.len()),
            (&mut ws.delta, nrows),
        ] {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
        }
        let Workspace { parts, qs, delta } = ws;
        let (delta, qs) = (&mut delta[..nrows], &mut qs[..q.len()]);
        // Δ = rowsum(dO∘O) − dLSE, and scale·Q: the A operand of S (the forward's
        // `(scale·q)·k`) and the B operand of dK = dSᵀ·(scale·Q); dQ zeroed (the dQ
        // partials are added to it); blocks of rows in parallel
        {
            let dp = pieces(delta, ROWS);
            let qp = pieces(qs, ROWS * d);
            let zp = pieces(gdq, ROWS * d);
            par_for(nrows.div_ceil(ROWS), workers, &|blk| {
                let r0 = blk * ROWS;
                for (y, x) in lock(&qp[blk]).iter_mut().zip(&q[r0 * d..]) {
                    *y = scale * *x;
                }
                lock(&zp[blk]).fill(0.0);
                for (i, y) in lock(&dp[blk]).iter_mut().enumerate() {
                    let r = r0 + i;
                    let s: f32 = dout[r * dv..][..dv]
                        .iter()
                        .zip(&o[r * dv..][..dv])
                        .map(|(a, b)| a * b)
                        .sum();
                    *y = s - dlse.map_or(0.0, |x| x[r]);
                }
            })?;
        }
        let (qs, delta) = (&*qs, &*delta);
        let nreads = self.grad.reads.len();
        let nparts = nreads + self.grad.params.len();
        // tensors whose every element is read by at most one (b, h, q, kv): their
        // gradient is written, not summed (`direct_reads`)
        let direct_out: Vec<Option<Vec<AtomicU32>>> = direct_reads(&self.grad, shape, bind)
            .iter()
            .zip(&bind.tensors)
            .map(|(&on, t)| on.then(|| zeroed_words(t.data.len())))
            .collect();
        let direct = &direct_out;
        let has_score = self.program.score.is_some();
        let has_mask = self.program.mask.is_some();
        let make_scratch = || Scratch {
            kt: vec![0.0; tpc * d * bkv],
            vt: vec![0.0; tpc * dv * bkv],
            ks: vec![0.0; tpc * bkv * d],
            s: vec![0.0; bq * bkv],
            dp: vec![0.0; bq * bkv],
            ds: vec![0.0; bq * bkv],
            flat: vec![-1; nreads * bq * bkv],
            part: vec![0.0; nparts * bq * bkv],
            diag: vec![0; self.table_words],
            cap: bind
                .tensors
                .iter()
                .zip(direct)
                .map(|(t, direct)| match &t.data {
                    TensorData::F32(x) if nreads > 0 && direct.is_none() => {
                        Some((vec![0.0; x.len()], vec![false; x.len()], Vec::new()))
                    }
                    _ => None,
                })
                .collect(),
        };
        let simd = self.simd;
        // One tile: S, dP, the element function, P, dS', dS, with kv tile `jt` packed
        // in slot `slot` of the scratch. Returns whether the element function ran (then
        // `ds` holds dS, else dS = dS' in `dp`).
        let tile =
            |sc: &mut Scratch, [b, h, i0, nr, j0, nc, slot]: [usize; 7], full: bool| -> bool {
                let row0 = (b * hq + h) * lq + i0;
                // S = (scale·Q)·Kᵀ, dP = dO·Vᵀ over the packed Kᵀ, Vᵀ
                let prod = |kk: usize, ars: usize| Mm {
                    m: nr,
                    n: nc,
                    k: kk,
                    ars,
                    ats: 1,
                    brs: bkv,
                    crs: bkv,
                    accumulate: false,
                };
                mm(
                    simd,
                    prod(d, d),
                    &qs[row0 * d..][..nr * d],
                    &sc.kt[slot * d * bkv..][..d * bkv],
                    &mut sc.s,
                );
                mm(
                    simd,
                    prod(dv, dv),
                    &dout[row0 * dv..][..nr * dv],
                    &sc.vt[slot * dv * bkv..][..dv * bkv],
                    &mut sc.dp,
                );
                let call = has_score || (has_mask && !full);
                if call {
                    let mut et = ElemTile {
                        s: sc.s.as_mut_ptr(),
                        ds: sc.ds.as_mut_ptr(),
                        flat: sc.flat.as_mut_ptr(),
                        part: sc.part.as_mut_ptr(),
                        stride: bkv as i64,
                        plane: (bq * bkv) as i64,
                        diag: sc.diag.as_mut_ptr(),
                    };
                    // SAFETY: the bindings, params and maps were validated above; the
                    // planes hold bq x bkv elements (nparts / nreads planes), and
                    // nr <= bq, nc <= bkv; the generated code clamps every tensor read.
                    unsafe {
                        (self.entry)(
                            ctx.ptr(),
                            &mut et,
                            b as i64,
                            h as i64,
                            i0 as i64,
                            j0 as i64,
                            nr as i64,
                            nc as i64,
                            full as i64,
                        )
                    };
                }
                probs(
                    simd,
                    &mut sc.s,
                    &mut sc.dp,
                    &mut sc.ds,
                    &lse[row0..][..nr],
                    &delta[row0..][..nr],
                    [nr, nc, bkv],
                    call && has_score,
                );
                call && has_score
            };

        // ---- one pass over (b, kv head, chunk of kv tiles): dK, dV of the chunk's keys,
        // a partial dQ (the chunk's keys' share), capture/param partials
        let grad = &self.grad;
        let parts = pieces(&mut parts[..items * part_len], part_len);
        // dQ: the rows of each (b, kv head)'s query heads, and the order its chunks'
        // partials are added in
        let dq_p = pieces(gdq, part_len);
        let chain: Vec<Mutex<Chain>> = (0..kv_heads)
            .map(|_| {
                Mutex::new(Chain {
                    next: 0,
                    busy: false,
                    ready: vec![None; nchunks],
                })
            })
            .collect();
        // dK, dV: the rows of each (b, kv head, chunk), in memory order (each sequence's
        // kv tiles cover its keys in order)
        let chunk_tiles = |b: usize, ch: usize| {
            let n = layout.kv[b].len();
            (ch * tpc).min(n)..((ch + 1) * tpc).min(n)
        };
        let chunk_keys = |b: usize, ch: usize| {
            chunk_tiles(b, ch)
                .map(|jt| layout.kv[b][jt].1)
                .sum::<usize>()
        };
        let keys =
            || (0..kv_heads).flat_map(|bh| (0..nchunks).map(move |ch| chunk_keys(bh / hkv, ch)));
        let dk_p = split(gdk, keys().map(|n| n * d));
        let dv_p = split(gdv, keys().map(|n| n * dv));
        let out = par_items(
            items,
            workers,
            &make_scratch,
            &|sc: &mut Scratch, item: usize| {
                // chunk-major: the costliest chunks of causal maps (the first) go first
                let (ch, bh) = (item / kv_heads, item % kv_heads);
                let (b, hk) = (bh / hkv, bh % hkv);
                let tiles = chunk_tiles(b, ch);
                let (jt0, jt1) = (tiles.start, tiles.end);
                let (kvt, qt) = (&layout.kv[b], &layout.q[b]);
                let kv_lo = kvt.get(jt0).map_or(0, |t| t.0);
                let mut dk = lock(&dk_p[bh * nchunks + ch]);
                let mut dvv = lock(&dv_p[bh * nchunks + ch]);
                dk.fill(0.0);
                dvv.fill(0.0);
                // the kv tiles of row `it` of head `h`'s map inside the chunk: (range, full)
                let in_chunk = |h: usize, it: usize| {
                    layout.runs(b, h, it).iter().filter_map(move |run| {
                        let (lo, hi) = ((run.start as usize).max(jt0), (run.end as usize).min(jt1));
                        (lo < hi).then_some((lo..hi, run.full == 1))
                    })
                };
                // the query rows the chunk's tiles reach, over the group's heads
                let (mut it_lo, mut it_hi) = (usize::MAX, 0);
                for h in hk * group..(hk + 1) * group {
                    for it in 0..qt.len() {
                        if in_chunk(h, it).next().is_some() {
                            it_lo = it_lo.min(it);
                            it_hi = it_hi.max(it + 1);
                        }
                    }
                }
                let (row_lo, rows) = if it_lo < it_hi {
                    let last = qt[it_hi - 1];
                    (qt[it_lo].0, last.0 + last.1 - qt[it_lo].0)
                } else {
                    (0, 0)
                };
                // Kᵀ, Vᵀ, scale·K of the chunk's tiles (columns past the sequence are never
                // read)
                for (slot, &(j0, nc)) in kvt[jt0..jt1].iter().enumerate() {
                    let kv0 = bh * lkv + j0;
                    for (y, x) in sc.ks[slot * bkv * d..][..nc * d]
                        .iter_mut()
                        .zip(&k[kv0 * d..][..nc * d])
                    {
                        *y = scale * *x;
                    }
                    pack_t(
                        &k[kv0 * d..][..nc * d],
                        nc,
                        d,
                        bkv,
                        &mut sc.kt[slot * d * bkv..][..d * bkv],
                    );
                    pack_t(
                        &v[kv0 * dv..][..nc * dv],
                        nc,
                        dv,
                        bkv,
                        &mut sc.vt[slot * dv * bkv..][..dv * bkv],
                    );
                }
                let mut part = lock(&parts[item]);
                let dq = &mut part[..group * rows * d];
                dq.fill(0.0);
                let mut pparams = vec![0f64; grad.params.len()];
                // q tiles outer, the chunk's kv tiles inner: a q tile's Q, dO and dQ rows
                // stay in cache across the chunk; each dK/dV tile still sums its q tiles
                // in ascending order, each dQ tile its kv tiles
                for h in hk * group..(hk + 1) * group {
                    for (it, &(i0, nr)) in qt.iter().enumerate().take(it_hi).skip(it_lo) {
                        let row0 = (b * hq + h) * lq + i0;
                        for (range, full) in in_chunk(h, it) {
                            for jt in range {
                                let (j0, nc) = kvt[jt];
                                let dk_t = &mut dk[(j0 - kv_lo) * d..][..nc * d];
                                let dv_t = &mut dvv[(j0 - kv_lo) * dv..][..nc * dv];
                                let with_ds = tile(sc, [b, h, i0, nr, j0, nc, jt - jt0], full);
                                let dsf = if with_ds { &sc.ds } else { &sc.dp };
                                // dV += Pᵀ·dO, dK += dSᵀ·(scale·Q): A read transposed
                                let tr = |n: usize| Mm {
                                    m: nc,
                                    n,
                                    k: nr,
                                    ars: 1,
                                    ats: bkv,
                                    brs: n,
                                    crs: n,
                                    accumulate: true,
                                };
                                mm(simd, tr(dv), &sc.s, &dout[row0 * dv..][..nr * dv], dv_t);
                                mm(simd, tr(d), dsf, &qs[row0 * d..][..nr * d], dk_t);
                                // dQ += dS·(scale·K)
                                let dq_rows = ((h - hk * group) * rows + i0 - row_lo) * d;
                                mm(
                                    simd,
                                    Mm {
                                        m: nr,
                                        n: d,
                                        k: nc,
                                        ars: bkv,
                                        ats: 1,
                                        brs: d,
                                        crs: d,
                                        accumulate: true,
                                    },
                                    dsf,
                                    &sc.ks[(jt - jt0) * bkv * d..][..nc * d],
                                    &mut dq[dq_rows..][..nr * d],
                                );
                                if nparts > 0 {
                                    capture_partials(
                                        sc,
                                        grad,
                                        direct,
                                        [nr, nc, bq, bkv],
                                        &mut pparams,
                                    );
                                }
                            }
                        }
                    }
                }
                let caps = sc
                    .cap
                    .iter_mut()
                    .map(|c| match c {
                        Some((acc, seen, touched)) => touched
                            .drain(..)
                            .map(|f| {
                                let x = std::mem::take(&mut acc[f as usize]);
                                seen[f as usize] = false;
                                (f, x)
                            })
                            .collect(),
                        None => Vec::new(),
                    })
                    .collect();
                drop(part);
                // dQ += the partials of (b, kv head) in chunk order, each added by the
                // item that completes the sequence so far (while the other items run)
                let mut st = lock_chain(&chain[bh]);
                st.ready[ch] = Some((row_lo, rows));
                if !st.busy && st.next == ch {
                    st.busy = true;
                    let mut dst = lock(&dq_p[bh]);
                    loop {
                        let c = st.next;
                        let (lo, n) = st.ready[c].expect("the chain adds ready partials only");
                        drop(st);
                        let src = lock(&parts[c * kv_heads + bh]);
                        for g in 0..group {
                            let y = &mut dst[(g * lq + lo) * d..][..n * d];
                            for (y, x) in y.iter_mut().zip(&src[g * n * d..][..n * d]) {
                                *y += *x;
                            }
                        }
                        drop(src);
                        st = lock_chain(&chain[bh]);
                        st.next += 1;
                        if st.next == nchunks || st.ready[st.next].is_none() {
                            st.busy = false;
                            break;
                        }
                    }
                }
                KvItem {
                    caps,
                    params: pparams,
                }
            },
        )?;
        drop((parts, dk_p, dv_p, dq_p));
        let CaptureGradients {
            tensors: mut tgrads,
            params: mut pgrads,
        } = self.zero_capture_gradients(bind);
        for (g, d) in tgrads.iter_mut().zip(direct_out) {
            if let Some(d) = d {
                *g = Some(words_as_f32s(d));
            }
        }
        // capture and param partials, reduced in item order (params in f64, rounded once)
        let mut psums = vec![0f64; grad.params.len()];
        for ki in &out {
            for (t, list) in ki.caps.iter().enumerate() {
                if let Some(g) = &mut tgrads[t] {
                    for (f, x) in list {
                        g[*f as usize] += *x;
                    }
                }
            }
            for (sum, x) in psums.iter_mut().zip(&ki.params) {
                *sum += *x;
            }
        }
        for (kk, sum) in psums.iter().enumerate() {
            if let Some(g) = &mut pgrads[grad.params[kk].param.0 as usize] {
                *g += *sum as f32;
            }
        }
        Ok(CaptureGradients {
            tensors: tgrads,
            params: pgrads,
        })
    }

    /// Zero gradients for every f32 tensor and f32 param of `bind` (`None` for the
    /// others): what a call with no (q, kv) pair adds up to.
    fn zero_capture_gradients(&self, bind: &Bindings) -> CaptureGradients {
        CaptureGradients {
            tensors: bind
                .tensors
                .iter()
                .map(|t| match &t.data {
                    TensorData::F32(x) => Some(vec![0f32; x.len()]),
                    TensorData::I32(_) => None,
                })
                .collect(),
            params: self
                .program
                .params
                .iter()
                .map(|p| (p.ty == crate::ir::Type::F32).then_some(0.0))
                .collect(),
        }
    }
}

/// Rows per block of the row-parallel steps (Δ, scale·Q).
const ROWS: usize = 256;

/// The tiles one backward call runs on: per sequence its kv tiles and its q tiles, each
/// `(first row, rows)` in ascending order (the kv tiles covering `0..Lkv`), and the runs
/// of kv tiles (indices into the sequence's kv tiles) each q tile visits.
struct Layout<'a> {
    kv: Vec<Vec<(usize, usize)>>,
    q: Vec<Vec<(usize, usize)>>,
    runs: LayoutRuns<'a>,
}

enum LayoutRuns<'a> {
    /// The grid's tiles: row `it` of map `(b, h)`.
    Maps(&'a BlockMaps),
    /// Document tiles: per sequence and q tile, its runs (every head).
    Docs(Vec<Vec<Vec<Run>>>),
}

impl<'a> Layout<'a> {
    /// The grid of `bq` x `bkv` tiles from row 0, the runs of `maps`.
    fn grid(shape: &Shape, bq: usize, bkv: usize, maps: &'a BlockMaps) -> Self {
        let tiles = |len: usize, t: usize| -> Vec<(usize, usize)> {
            (0..len.div_ceil(t))
                .map(|i| (i * t, t.min(len - i * t)))
                .collect()
        };
        Layout {
            kv: vec![tiles(shape.lkv, bkv); shape.b],
            q: vec![tiles(shape.lq, bq); shape.b],
            runs: LayoutRuns::Maps(maps),
        }
    }

    /// The tiles of a document tile list (checked by `check_docs`): each document's kv
    /// tiles of `bkv` rows from its first row (the last cut at its end), its q tiles of
    /// `bq` rows likewise, each with its runs of the table counted from the document's
    /// first kv tile. An error where the documents do not cover each sequence exactly.
    fn docs(shape: &Shape, bq: usize, bkv: usize, t: &DocTable) -> Result<Self, CpuError> {
        let bad = |s: String| Err(CpuError::BlockMap(s));
        let tiles: Vec<[usize; 4]> = t
            .tiles
            .chunks(4)
            .map(|w| [w[0], w[1], w[2], w[3]].map(|x| x as usize))
            .collect();
        let mut kv = vec![Vec::new(); shape.b];
        let mut q = vec![Vec::new(); shape.b];
        let mut runs = vec![Vec::new(); shape.b];
        // the list's tiles by (sequence, document, q tile)
        let mut order: Vec<usize> = (0..tiles.len()).collect();
        order.sort_by_key(|&i| (tiles[i][0], tiles[i][1], tiles[i][3]));
        let mut base = 0;
        let mut doc: Option<(usize, usize, usize)> = None;
        for &i in &order {
            let [b, row0, rows, qi] = tiles[i];
            if doc.map(|(db, r0, _)| (db, r0)) != Some((b, row0)) {
                // a new document: it starts where the sequence's last one ended
                let end = kv[b].last().map_or(0, |&(j0, n): &(usize, usize)| j0 + n);
                if row0 != end {
                    return bad(format!(
                        "document tiles: the document at row {row0} of sequence {b} does not start where the one before ends ({end})"
                    ));
                }
                base = kv[b].len();
                kv[b].extend(
                    (0..rows.div_ceil(bkv)).map(|j| (row0 + j * bkv, bkv.min(rows - j * bkv))),
                );
                doc = Some((b, row0, rows));
            } else if doc.map(|x| x.2) != Some(rows) {
                return bad(format!(
                    "document tiles: the document at row {row0} of sequence {b} has two lengths"
                ));
            }
            if q[b]
                .last()
                .is_some_and(|&(i0, _): &(usize, usize)| i0 >= row0 + qi * bq)
            {
                return bad(format!(
                    "document tiles: tile {i} {:?} comes twice",
                    tiles[i]
                ));
            }
            q[b].push((row0 + qi * bq, bq.min(rows - qi * bq)));
            let (s, e) = (t.row_start[i] as usize, t.row_start[i + 1] as usize);
            runs[b].push(
                t.runs[s..e]
                    .iter()
                    .map(|r| Run {
                        start: r.start + base as u32,
                        end: r.end + base as u32,
                        full: r.full,
                    })
                    .collect(),
            );
        }
        for (b, k) in kv.iter().enumerate() {
            let end = k.last().map_or(0, |&(j0, n)| j0 + n);
            if end != shape.lkv {
                return bad(format!(
                    "document tiles: the documents of sequence {b} cover {end} of its {} rows",
                    shape.lkv
                ));
            }
        }
        Ok(Layout {
            kv,
            q,
            runs: LayoutRuns::Docs(runs),
        })
    }

    /// The runs of kv tiles q tile `it` of sequence `b` visits for query head `h`.
    fn runs(&self, b: usize, h: usize, it: usize) -> &[Run] {
        match &self.runs {
            LayoutRuns::Maps(m) => m.get(b, h).row(it),
            LayoutRuns::Docs(d) => &d[b][it],
        }
    }
}

/// The lengths of one call's slices against `shape`.
fn check_lengths(
    shape: &Shape,
    [q, k, v, o, lse, dout]: [&[f32]; 6],
    dlse: Option<&[f32]>,
    [gdq, gdk, gdv]: &[&mut [f32]; 3],
) -> Result<(), CpuError> {
    shape.validate()?;
    for (what, expected, got) in [
        ("dq", shape.q_len(), gdq.len()),
        ("dk", shape.k_len(), gdk.len()),
        ("dv", shape.v_len(), gdv.len()),
        ("q", shape.q_len(), q.len()),
        ("k", shape.k_len(), k.len()),
        ("v", shape.v_len(), v.len()),
        ("o", shape.o_len(), o.len()),
        ("lse", shape.lse_len(), lse.len()),
        ("do", shape.o_len(), dout.len()),
        (
            "dlse",
            shape.lse_len(),
            dlse.map_or(shape.lse_len(), |x| x.len()),
        ),
    ] {
        if expected != got {
            return Err(CpuError::Length {
                what,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// Runs `f(i)` for every `i < n` on the threads of `workers` (claimed from a counter).
fn par_for(n: usize, workers: &dyn Workers, f: &(dyn Fn(usize) + Sync)) -> Result<(), CpuError> {
    if n == 0 {
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        }
    };
    workers.run(workers.threads().clamp(1, n), &work)?;
    Ok(())
}

/// `out` cut into consecutive pieces of `len` (the last may be shorter), each behind
/// its own lock: parallel work items write disjoint pieces, each locked once by the
/// one item that owns it.
fn pieces(out: &mut [f32], len: usize) -> Vec<Mutex<&mut [f32]>> {
    out.chunks_mut(len.max(1)).map(Mutex::new).collect()
}

/// `out` cut into consecutive pieces of the given lengths, each behind its own lock.
fn split(out: &mut [f32], lens: impl Iterator<Item = usize>) -> Vec<Mutex<&mut [f32]>> {
    let mut rest = out;
    lens.map(|n| {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(n);
        rest = b;
        Mutex::new(a)
    })
    .collect()
}

/// A piece's lock (a panicked holder's data is still what the next holder needs).
fn lock<'a, 'b>(m: &'a Mutex<&'b mut [f32]>) -> MutexGuard<'a, &'b mut [f32]> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f(scratch, item)` for every item on the threads of `workers` (items claimed
/// from an atomic counter); returns the results in item order.
fn par_items<T: Send>(
    n: usize,
    workers: &dyn Workers,
    make: &(dyn Fn() -> Scratch + Sync),
    f: &(dyn Fn(&mut Scratch, usize) -> T + Sync),
) -> Result<Vec<T>, CpuError> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    let work = || {
        let mut sc = make();
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            out.push((i, f(&mut sc, i)));
        }
        done.lock().unwrap_or_else(|p| p.into_inner()).extend(out);
    };
    workers.run(workers.threads().clamp(1, n.max(1)), &work)?;
    let mut all = done.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// `out[c][r] = x[r][c]` for `rows` rows of `cols`, output row stride `stride`.
fn pack_t(x: &[f32], rows: usize, cols: usize, stride: usize, out: &mut [f32]) {
    for (r, row) in x.chunks_exact(cols).take(rows).enumerate() {
        for (c, val) in row.iter().enumerate() {
            out[c * stride + r] = *val;
        }
    }
}

/// Selects the build of a body: AVX-512F (2), AVX2+FMA (1) or portable (0), as
/// detected when the kernel was compiled.
macro_rules! dispatch {
    ($simd:expr, $body:ident ( $($arg:expr),* $(,)? )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match $simd {
                // SAFETY: 2 only when the CPU has AVX-512F, AVX2 and FMA.
                2 => unsafe { avx512::$body($($arg),*) },
                // SAFETY: 1 only when the CPU has AVX2 and FMA.
                1 => unsafe { avx2::$body($($arg),*) },
                _ => $body($($arg),*),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $simd;
            $body($($arg),*)
        }
    }};
}

#[allow(clippy::too_many_arguments)]
fn probs(
    avx2: u8,
    s: &mut [f32],
    dp: &mut [f32],
    ds: &mut [f32],
    lse: &[f32],
    delta: &[f32],
    dims: [usize; 3],
    with_ds: bool,
) {
    dispatch!(avx2, probs_body(s, dp, ds, lse, delta, dims, with_ds))
}

/// In place: `s` becomes P, `dp` becomes dS' = P (dP − Δ), and with `with_ds` `ds`
/// (∂score/∂s) becomes dS = dS'·ds (0 where P = 0, whatever the derivative there).
#[inline(always)]
fn probs_body(
    s: &mut [f32],
    dp: &mut [f32],
    ds: &mut [f32],
    lse: &[f32],
    delta: &[f32],
    [nr, nc, bkv]: [usize; 3],
    with_ds: bool,
) {
    for i in 0..nr {
        let (l, dl) = (lse[i], delta[i]);
        let srow = &mut s[i * bkv..][..nc];
        let prow = &mut dp[i * bkv..][..nc];
        if l == f32::NEG_INFINITY {
            srow.fill(0.0);
            prow.fill(0.0);
            if with_ds {
                ds[i * bkv..][..nc].fill(0.0);
            }
            continue;
        }
        for (sx, px) in srow.iter_mut().zip(prow.iter_mut()) {
            let p = exp_approx(*sx - l);
            *sx = p;
            *px = p * (*px - dl);
        }
        if with_ds {
            for ((dsx, px), sx) in ds[i * bkv..][..nc]
                .iter_mut()
                .zip(prow.iter())
                .zip(srow.iter())
            {
                *dsx = if *sx == 0.0 { 0.0 } else { *px * *dsx };
            }
        }
    }
}

/// Adds one tile's capture and param partials (`Σ dS'·∂score/∂read` per element read,
/// `Σ dS'·∂score/∂param`) to the item's scratch and `pparams` (f64), elements in
/// row-major order; a read of a tensor in `direct` writes its element's gradient there
/// (its only term). `s` holds P and `dp` dS' (`probs`).
fn capture_partials(
    sc: &mut Scratch,
    grad: &ScoreGrad,
    direct: &[Option<Vec<AtomicU32>>],
    [nr, nc, bq, bkv]: [usize; 4],
    pparams: &mut [f64],
) {
    let plane = bq * bkv;
    let nreads = grad.reads.len();
    for (r, read) in grad.reads.iter().enumerate() {
        if let Some(out) = &direct[read.tensor.0 as usize] {
            for i in 0..nr {
                let e0 = i * bkv;
                let flat = &sc.flat[r * plane + e0..][..nc];
                let part = &sc.part[r * plane + e0..][..nc];
                for (((&f, &p), &dp), &s) in
                    flat.iter().zip(part).zip(&sc.dp[e0..]).zip(&sc.s[e0..])
                {
                    if s != 0.0 && f >= 0 {
                        out[f as usize].store((dp * p).to_bits(), Ordering::Relaxed);
                    }
                }
            }
            continue;
        }
        let Some((acc, seen, touched)) = &mut sc.cap[read.tensor.0 as usize] else {
            continue;
        };
        for i in 0..nr {
            let e0 = i * bkv;
            let flat = &sc.flat[r * plane + e0..][..nc];
            let part = &sc.part[r * plane + e0..][..nc];
            let (dp, s) = (&sc.dp[e0..][..nc], &sc.s[e0..][..nc]);
            // a row that reads one element (a relative-position table away from the
            // diagonal): its terms summed in a fixed order, added once
            if let Some(f) = one_element(flat) {
                acc[f] += row_terms(dp, part, s);
                if !seen[f] {
                    seen[f] = true;
                    touched.push(f as u32);
                }
                continue;
            }
            for (((&f, &p), &dp), &s) in flat.iter().zip(part).zip(dp).zip(s) {
                if s == 0.0 || f < 0 {
                    continue;
                }
                let f = f as usize;
                acc[f] += dp * p;
                if !seen[f] {
                    seen[f] = true;
                    touched.push(f as u32);
                }
            }
        }
    }
    for (kk, acc) in pparams.iter_mut().enumerate() {
        let pl = &sc.part[(nreads + kk) * plane..][..plane];
        for i in 0..nr {
            for j in 0..nc {
                let e = i * bkv + j;
                if sc.s[e] != 0.0 {
                    *acc += sc.dp[e] as f64 * pl[e] as f64;
                }
            }
        }
    }
}

/// The element every index of `flat` names, when they are all the same one (not -1).
fn one_element(flat: &[i64]) -> Option<usize> {
    let &f = flat.first()?;
    (f >= 0 && flat.iter().all(|&x| x == f)).then_some(f as usize)
}

/// Σ dp·part over the elements whose P (`s`) is not 0, in eight interleaved partial
/// sums added in a fixed order (the same bits on every call and thread count).
fn row_terms(dp: &[f32], part: &[f32], s: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = dp.len() / 8 * 8;
    for ((d, p), s) in dp[..n8]
        .chunks_exact(8)
        .zip(part[..n8].chunks_exact(8))
        .zip(s[..n8].chunks_exact(8))
    {
        for l in 0..8 {
            acc[l] += if s[l] != 0.0 { d[l] * p[l] } else { 0.0 };
        }
    }
    for ((&d, &p), &s) in dp[n8..].iter().zip(&part[n8..]).zip(&s[n8..]) {
        if s != 0.0 {
            acc[0] += d * p;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `n` zero words from zeroed pages (`calloc`): the workers that write them touch
/// them first, in parallel, and pages of elements nobody writes (masked) stay shared.
fn zeroed_words(n: usize) -> Vec<AtomicU32> {
    let mut v = std::mem::ManuallyDrop::new(vec![0u32; n]);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `AtomicU32` has the size, alignment and bit validity of `u32` (std docs;
    // the alignment of every `AtomicU32` is its size, 4, as `u32`'s on our targets:
    // checked below), so the allocation of `len` zero `u32`s with capacity `cap` is one
    // of `len` zero `AtomicU32`s; `v` is not dropped, so the memory has one owner.
    const _: () = assert!(std::mem::align_of::<AtomicU32>() == std::mem::align_of::<u32>());
    unsafe { Vec::from_raw_parts(ptr.cast::<AtomicU32>(), len, cap) }
}

/// The words written by the workers as the f32 values whose bits they hold, the same
/// allocation (no pass over the elements).
fn words_as_f32s(v: Vec<AtomicU32>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `AtomicU32` has the size, alignment and bit validity of `u32` (std docs;
    // the alignment asserted in `zeroed_words`), and every `u32` bit pattern is a valid
    // `f32` of the same size and alignment, so the allocation of `len` initialised
    // `AtomicU32`s with capacity `cap` is one of `len` `f32`s with the same layout; the
    // workers are done (no other reference exists: `v` was moved in) and `v` is not
    // dropped, so the memory has one owner.
    const _: () = assert!(std::mem::size_of::<AtomicU32>() == std::mem::size_of::<f32>());
    const _: () = assert!(std::mem::align_of::<AtomicU32>() == std::mem::align_of::<f32>());
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// Per tensor of `bind`: whether its gradient can be *written* element by element — an
/// f32 tensor read at one site of the score, indexed by distinct positions (`b`, `h`,
/// `q`, `kv`, one per dimension) that no dimension clamps (each at least the position's
/// range), every position that varies in the call among them. Then each element is read
/// by at most one (b, h, q, kv), whose work item alone writes it: no scratch, no
/// partial lists, no reduction (a `[B, H, Q, KV]` learned bias). Anything else sums.
/// (`bind` is indexed like the program's tensors: checked by `tensor_descs` before.)
fn direct_reads(grad: &ScoreGrad, shape: &Shape, bind: &Bindings) -> Vec<bool> {
    use crate::ir::{Arg, Inst};
    let range = |a: &Arg| match a {
        Arg::B => shape.b,
        Arg::H => shape.hq,
        Arg::Q => shape.lq,
        Arg::Kv => shape.lkv,
        Arg::S => usize::MAX,
    };
    let varying = [Arg::B, Arg::H, Arg::Q, Arg::Kv];
    (0..bind.tensors.len())
        .map(|t| {
            let mut sites = grad.reads.iter().filter(|r| r.tensor.0 as usize == t);
            let (Some(read), None) = (sites.next(), sites.next()) else {
                return false;
            };
            let bt = &bind.tensors[t];
            if !matches!(bt.data, TensorData::F32(_)) || read.indices.len() != bt.dims.len() {
                return false;
            }
            let mut axes = Vec::new();
            for (&v, &dim) in read.indices.iter().zip(&bt.dims) {
                match grad.func.inst(v) {
                    Inst::Arg(a) if *a != Arg::S && !axes.contains(a) && dim >= range(a) => {
                        axes.push(*a)
                    }
                    _ => return false,
                }
            }
            varying.iter().all(|a| range(a) <= 1 || axes.contains(a))
        })
        .collect()
}

/// One build of `probs_body` for a set of target features.
#[cfg(target_arch = "x86_64")]
macro_rules! build_probs {
    ($features:literal) => {
        /// # Safety
        /// The CPU supports the features this build is compiled for.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn probs_body(
            s: &mut [f32],
            dp: &mut [f32],
            ds: &mut [f32],
            lse: &[f32],
            delta: &[f32],
            dims: [usize; 3],
            with_ds: bool,
        ) {
            super::probs_body(s, dp, ds, lse, delta, dims, with_ds)
        }
    };
}

/// The AVX2+FMA build.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    build_probs!("avx2,fma");
}

/// The AVX-512F build.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    build_probs!("avx512f,avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::{direct_reads, one_element, row_terms};

    /// A row's terms summed at once: only rows that name one element (no -1) take it,
    /// masked elements (P = 0) add nothing, and the sum is the plain one within f32
    /// rounding for every length (the eight-lane body and the tail).
    #[test]
    fn rows_of_one_element_sum_their_terms() {
        assert_eq!(one_element(&[5, 5, 5]), Some(5));
        assert_eq!(one_element(&[5, 5, 6]), None);
        assert_eq!(one_element(&[-1, -1]), None);
        assert_eq!(one_element(&[]), None);
        for n in [1usize, 7, 8, 9, 64, 67] {
            let dp: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let part: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 16.0).collect();
            let s: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { 0.5 }).collect();
            let want: f64 = (0..n)
                .filter(|&i| s[i] != 0.0)
                .map(|i| dp[i] as f64 * part[i] as f64)
                .sum();
            let got = row_terms(&dp, &part, &s);
            assert!(
                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{n}: {got} vs {want}"
            );
            assert_eq!(got.to_bits(), row_terms(&dp, &part, &s).to_bits());
        }
    }
    use crate::grad::differentiate;
    use crate::interp::{Bindings, BoundTensor, TensorData};
    use crate::shape::Shape;

    /// Which reads write their gradient: one read of distinct unclamped positions that
    /// covers every varying position; a second read, a broadcast position, a clamped
    /// dimension or arithmetic in an index sums.
    #[test]
    fn direct_reads_are_the_one_to_one_reads() {
        let shape = |b, lq, lkv| Shape {
            b,
            hq: 4,
            hkv: 2,
            lq,
            lkv,
            d: 64,
            dv: 64,
        };
        for (src, dims, sh, want) in [
            (
                "tensor t: f32[B, H, Q, KV]; score f(s, b, h, q, kv) { s + t[b, h, q, kv] }",
                vec![2, 4, 9, 7],
                shape(2, 9, 7),
                true,
            ),
            // a permutation of the positions
            (
                "tensor t: f32[KV, H, Q, B]; score f(s, b, h, q, kv) { s * t[kv, h, q, b] }",
                vec![7, 4, 9, 2],
                shape(2, 9, 7),
                true,
            ),
            // b broadcast: every batch reads each element
            (
                "tensor t: f32[H, Q, KV]; score f(s, b, h, q, kv) { s + t[h, q, kv] }",
                vec![4, 9, 7],
                shape(2, 9, 7),
                false,
            ),
            // ... unless there is one batch
            (
                "tensor t: f32[H, Q, KV]; score f(s, b, h, q, kv) { s + t[h, q, kv] }",
                vec![4, 9, 7],
                shape(1, 9, 7),
                true,
            ),
            // a dimension shorter than its position's range clamps (fast mode)
            (
                "tensor t: f32[H, 8, KV]; score f(s, b, h, q, kv) { s + t[h, q, kv] }",
                vec![4, 8, 7],
                shape(1, 9, 7),
                false,
            ),
            // two read sites of one tensor
            (
                "tensor t: f32[H, 9, 9]; score f(s, b, h, q, kv) { s + t[h, q, kv] + t[h, kv, q] }",
                vec![4, 9, 9],
                shape(1, 9, 9),
                false,
            ),
            // arithmetic in an index
            (
                "tensor t: f32[H, 129]; score f(s, b, h, q, kv) { s + t[h, clamp(q - kv, -64, 64) + 64] }",
                vec![4, 129],
                shape(1, 9, 7),
                false,
            ),
        ] {
            let src = format!("{src}\nattention a {{ score = f; }}");
            let p = crate::compile_source(&src).unwrap().programs.swap_remove(0);
            let grad = differentiate(&p);
            let n = dims.iter().product();
            let bind = Bindings {
                params: vec![],
                tensors: vec![BoundTensor {
                    dims,
                    data: TensorData::F32(vec![0.0; n]),
                }],
            };
            assert_eq!(direct_reads(&grad, &sh, &bind), vec![want], "{src}");
        }
    }
}
