//! CUDA attention against a cache on the prefill kernel of the position-offset program
//! (`attnc_compiler::decode::offset_program`; the mask and score see logical positions
//! through the `__b0/__q0/__kv0` params): the live rows of each run of sequences against
//! the kv range their mask can reach, gathered on the host through the page table (raw
//! elements, any dtype), one launch per run. Two uses:
//!
//! - the path of what the split-KV kernels do not take (checked mode, Lq > 16 at D 32 /
//!   256, other head dims): correct, not fast — every sequence its own run;
//! - **batched runs** for chunked prefill (session 25): consecutive sequences with the
//!   same live rows and reachable range (a batch of chunks of one length: the common
//!   case of a chunked prefill step, or one long prompt) share one launch of B' sequences,
//!   so the warp-specialized prefill kernel (TMA, wgmma, ping-pong: 600-700 TFLOP/s on an
//!   H200) runs the chunk instead of the split-KV kernel's 64-row tiles (~410 TFLOP/s).
//!   [`prefill_runs_win`] decides from the runs' tiles (each launch must fill the GPU).
//!
//! In: the checked decode shape, host tensors, captures of the original program, the
//! reachable range of each live sequence. Out: `O` and `LSE` as f32 in the decode
//! layouts, or the device time of the runs' launches (inputs gathered and uploaded once).

use crate::api::{Backend, BindOptions, Bound, Captures, ParamValue, Variant};
use crate::error::Result;
use crate::tensor::Tensor;
use attnc_compiler::decode::{DecodeShape, OFFSET_PARAMS, live_rows};
use attnc_compiler::shape::Shape;
use std::collections::HashMap;

/// Most bindings (one per rows, heads and head dims of a run; reshaped to each call's
/// sequences and length) a state keeps; beyond it the map starts over.
const MAX_BOUND: usize = 32;
/// Query rows per tile of the warp-specialized prefill kernel (its q blocks at D 64/128).
const PREFILL_ROWS: usize = 128;
/// Least new rows per sequence for the batched runs' rule: below, the prefill kernel's
/// 128-row tiles are mostly padding with GQA's few heads per launch.
const PREFILL_MIN_LQ: usize = 128;

/// Consecutive live sequences `b0 .. b0 + count` that share their live rows
/// (`first..Lq`, the first at position `pos`) and reachable positions `lo..hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub b0: usize,
    pub count: usize,
    pub first: usize,
    pub pos: usize,
    pub lo: usize,
    pub hi: usize,
}

/// The runs of `live` (batch index, reachable range; ascending `b`): with `batched`,
/// maximal runs of consecutive batch indices with equal lengths and ranges; else one
/// per sequence.
pub(crate) fn runs(
    lq: usize,
    seq_lens: &[i32],
    live: &[(usize, (usize, usize))],
    batched: bool,
) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &(b, (lo, hi)) in live {
        let (first, pos) = live_rows(lq, seq_lens[b].max(0) as usize);
        let run = Run {
            b0: b,
            count: 1,
            first,
            pos,
            lo,
            hi,
        };
        match out.last_mut() {
            Some(r)
                if batched
                    && r.b0 + r.count == b
                    && (r.first, r.pos, r.lo, r.hi) == (first, pos, lo, hi) =>
            {
                r.count += 1
            }
            _ => out.push(run),
        }
    }
    out
}

/// Whether chunked prefill's batched runs beat the split-KV kernel (the rule; the
/// binding's `DecodeTuning::prefill` overrides it): Lq >= [`PREFILL_MIN_LQ`] and every
/// run's launch holds at least half as many tiles of 128 rows as the GPU has SMs (a run
/// of fewer leaves most SMs idle for its whole launch, which the split-KV kernel's splits
/// do not; at half a wave the prefill kernel's ~700 TFLOP/s per busy SM is still ahead
/// of the split-KV kernel's ~410 over all SMs).
pub(crate) fn prefill_runs_win(shape: &DecodeShape, runs: &[Run], sms: usize) -> bool {
    shape.lq >= PREFILL_MIN_LQ
        && !runs.is_empty()
        && runs
            .iter()
            .all(|r| fills_half(shape, shape.lq - r.first, r.count, sms))
}

/// Whether chunked prefill over a whole batch whose lengths stay on the device beats the
/// split-KV kernel ([`prefill_runs_win`]'s rule for one run of all `B` sequences, every
/// row taken live): Lq >= [`PREFILL_MIN_LQ`] and at least half as many 128-row tiles as
/// the GPU has SMs.
pub(crate) fn prefill_device_wins(shape: &DecodeShape, sms: usize) -> bool {
    shape.lq >= PREFILL_MIN_LQ && fills_half(shape, shape.lq, shape.b, sms)
}

/// Whether a launch of `count` sequences of `rows` live rows each holds at least half as
/// many tiles of [`PREFILL_ROWS`] rows as the GPU has SMs.
fn fills_half(shape: &DecodeShape, rows: usize, count: usize, sms: usize) -> bool {
    2 * rows.div_ceil(PREFILL_ROWS) * shape.hq * count >= sms.max(1)
}

/// One run's inputs: its shape (B' sequences of its live rows against its range), Q, K,
/// V gathered, and the captures with the offset params.
struct RunInputs {
    shape: Shape,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    caps: Captures,
}

pub(crate) struct CudaState {
    /// The position-offset program, as a variant of the same source.
    variant: Variant,
    /// Its form for a whole batch whose lengths stay on the device
    /// (`attnc_compiler::decode::device_offset_program`, `BindOptions::device_lens`).
    device: Variant,
    /// One binding per run shape (and whether it reads a paged cache in place: caller
    /// buffers), made on first use (the JIT's memory cache makes every binding after the
    /// first cheap).
    /// By the run's shape (rows, heads, head dims), and for a paged cache its producer
    /// threads (`DecodeTuning::paged_producers`, chosen by page size: [`producers_for`]).
    /// With whether it is a `device` binding.
    bound: HashMap<(Shape, u8, bool), Bound>,
    /// The device-lengths form's plan (made on first use) and whether it binds on the
    /// warp-specialized kernel, by shape and producer threads ([`Self::device_applies`]).
    device_plan: Option<attnc_compiler::plan::Plan>,
    device_ok: HashMap<(Shape, u8), bool>,
}

impl CudaState {
    pub(crate) fn new(variant: Variant, device: Variant) -> Self {
        CudaState {
            variant,
            device,
            bound: HashMap::new(),
            device_plan: None,
            device_ok: HashMap::new(),
        }
    }

    /// Whether the device-lengths form binds for `shape` (Lkv = the capacity) on the
    /// warp-specialized kernel (`exec::cuda::cache_forward_applies` on the options the
    /// binding would have: a closed-form mask, a head dim that kernel takes); the answer
    /// kept per shape.
    pub(crate) fn device_applies(
        &mut self,
        opts: &BindOptions,
        shape: Shape,
        page_shift: Option<u32>,
        arch: attnc_compiler::backend::llvm::Arch,
    ) -> bool {
        let key = (shape, producers_of(opts, page_shift));
        if let Some(&ok) = self.device_ok.get(&key) {
            return ok;
        }
        let plan = self
            .device_plan
            .get_or_insert_with(|| attnc_compiler::plan::Plan::new(self.device.program()));
        let o = bind_options(opts, shape, page_shift, true);
        let ok = crate::exec::cuda::cache_forward_applies(plan, &o, arch);
        self.device_ok.insert(key, ok);
        ok
    }

    /// Whether a binding for `shape` exists already (made by an earlier call: a stream
    /// capturing a graph cannot make one).
    pub(crate) fn has_bound(
        &self,
        opts: &BindOptions,
        shape: Shape,
        page_shift: Option<u32>,
        device_lens: bool,
    ) -> bool {
        self.bound
            .contains_key(&bound_key(opts, shape, page_shift, device_lens))
    }

    /// The inputs of `run`: its sequences' live rows of q and reachable K/V rows of every
    /// kv head, gathered through the page table.
    fn gather(
        s: &DecodeShape,
        run: &Run,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        captures: &Captures,
    ) -> Result<RunInputs> {
        let esize = q.dtype().size();
        let rows = s.lq - run.first;
        let len = run.hi - run.lo;
        let bs = run.b0..run.b0 + run.count;
        let mut qb = Vec::with_capacity(run.count * s.hq * rows * s.d * esize);
        for b in bs.clone() {
            for h in 0..s.hq {
                let at = ((b * s.hq + h) * s.lq + run.first) * s.d * esize;
                qb.extend_from_slice(&q.bytes()[at..at + rows * s.d * esize]);
            }
        }
        let gather = |t: &Tensor, d: usize| {
            let mut out = Vec::with_capacity(run.count * s.hkv * len * d * esize);
            for b in bs.clone() {
                for hk in 0..s.hkv {
                    for p in run.lo..run.hi {
                        let at = s.row_offset(page_table, b, hk, p, d) * esize;
                        out.extend_from_slice(&t.bytes()[at..at + d * esize]);
                    }
                }
            }
            out
        };
        let shape = Shape {
            b: run.count,
            hq: s.hq,
            hkv: s.hkv,
            lq: rows,
            lkv: len,
            d: s.d,
            dv: s.dv,
        };
        let tensor = |dims: Vec<usize>, bytes: Vec<u8>| {
            Tensor::from_bytes(dims, q.dtype(), bytes).expect("sizes computed from the shape")
        };
        let mut caps = captures.clone();
        for (name, x) in OFFSET_PARAMS.iter().zip([run.b0, run.pos, run.lo]) {
            caps.params
                .insert(name.to_string(), ParamValue::I32(x as i32));
        }
        Ok(RunInputs {
            shape,
            q: tensor(vec![run.count, s.hq, rows, s.d], qb),
            k: tensor(vec![run.count, s.hkv, len, s.d], gather(k, s.d)),
            v: tensor(vec![run.count, s.hkv, len, s.dv], gather(v, s.dv)),
            caps,
        })
    }

    /// The binding of a run's shape (`page_shift`: `BindOptions::kv_pages`, a paged cache
    /// of pages of `2^page_shift` rows read in place by the caller-buffer runs): one per
    /// rows, heads and head dims (and producer threads, [`producers_for`]), pointed at
    /// each call's sequences and length (`Bound::reshape`: a serving loop's lengths grow
    /// every step, and the kernel does not depend on them) or bound anew where the new
    /// shape selects another kernel.
    pub(crate) fn bound(
        &mut self,
        opts: &BindOptions,
        scale: f32,
        shape: Shape,
        page_shift: Option<u32>,
        device_lens: bool,
    ) -> Result<&mut Bound> {
        let key = bound_key(opts, shape, page_shift, device_lens);
        if let Some(b) = self.bound.get_mut(&key)
            && !b.reshape(shape)?
        {
            self.bound.remove(&key);
        }
        if !self.bound.contains_key(&key) && self.bound.len() >= MAX_BOUND {
            self.bound.clear();
        }
        Ok(match self.bound.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut o = bind_options(opts, shape, page_shift, device_lens);
                o.scale = Some(scale);
                let variant = if device_lens {
                    &self.device
                } else {
                    &self.variant
                };
                e.insert(variant.bind(o)?)
            }
        })
    }

    /// `f` on each run's binding and gathered inputs, in order.
    fn each_run(
        &mut self,
        call: &HostCall<'_>,
        runs: &[Run],
        mut f: impl FnMut(&mut Bound, &RunInputs, &Run) -> Result<()>,
    ) -> Result<()> {
        for run in runs {
            let c = call;
            let x = Self::gather(c.shape, run, c.q, c.k, c.v, c.page_table, c.captures)?;
            f(self.bound(c.opts, c.scale, x.shape, None, false)?, &x, run)?;
        }
        Ok(())
    }

    /// Runs one call, one launch per run (`runs` of the call's live sequences).
    pub(crate) fn forward(
        &mut self,
        call: &HostCall<'_>,
        runs: &[Run],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = call.shape;
        let mut o = vec![0f32; s.o_len()];
        let mut lse = vec![f32::NEG_INFINITY; s.lse_len()];
        self.each_run(call, runs, |bound, x, run| {
            let out = bound.forward(&x.q, &x.k, &x.v, &x.caps)?;
            let (po, pl) = (out.o.to_f32(), out.lse.to_f32());
            let rows = s.lq - run.first;
            let (ro, rl) = (s.hq * rows * s.dv, s.hq * rows);
            for i in 0..run.count {
                let (po, pl) = (&po[i * ro..(i + 1) * ro], &pl[i * rl..(i + 1) * rl]);
                let b = run.b0 + i;
                attnc_compiler::decode::scatter_rows(s, b, run.first, po, pl, &mut o, &mut lse);
            }
            Ok(())
        })?;
        Ok((o, lse))
    }

    /// Device milliseconds per call: the sum over the runs of each launch's time (its
    /// inputs gathered and uploaded once, as `Bound::device_time_ms`); `None` where a
    /// binding has no device time.
    pub(crate) fn time_ms(
        &mut self,
        call: &HostCall<'_>,
        runs: &[Run],
        iters: usize,
    ) -> Result<Option<f64>> {
        let mut total = Some(0.0);
        self.each_run(call, runs, |bound, x, _| {
            let ms = bound.device_time_ms(&x.q, &x.k, &x.v, &x.caps, iters)?;
            total = total.zip(ms).map(|(t, ms)| t + ms);
            Ok(())
        })?;
        Ok(total)
    }
}

/// One host-tensor call against a cache: the binding's options and scale, the checked
/// shape, q, the caches (either layout), the page table (empty for a contiguous cache)
/// and the captures of the original program.
pub(crate) struct HostCall<'a> {
    pub opts: &'a BindOptions,
    pub scale: f32,
    pub shape: &'a DecodeShape,
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub page_table: &'a [i32],
    pub captures: &'a Captures,
}

/// The options of a binding of `shape` made for the parent binding's `opts` (its dtype,
/// mode, block tables, JIT tiers, device and decode tuning, with the producer threads for
/// this page size: [`producers_of`]); `page_shift`: a paged cache read in place;
/// `device_lens`: the device-lengths form. The scale is the caller's to set.
fn bind_options(
    opts: &BindOptions,
    shape: Shape,
    page_shift: Option<u32>,
    device_lens: bool,
) -> BindOptions {
    let mut o = BindOptions::new(Backend::Cuda, shape, opts.dtype);
    o.checked = opts.checked;
    o.gpu_block_tables = opts.gpu_block_tables;
    o.jit_tiers = opts.jit_tiers;
    o.device = opts.device;
    o.kv_pages = page_shift.is_some();
    o.device_lens = device_lens;
    o.decode = opts.decode;
    o.decode.paged_producers = producers_of(opts, page_shift);
    o
}

/// The key of a binding in [`CudaState`]'s map: its shape without B and Lkv (which a
/// binding is pointed at per call, `Bound::reshape`) unless `DecodeTuning::rebind_runs`,
/// its producer threads, and whether it reads the lengths on the device.
fn bound_key(
    opts: &BindOptions,
    shape: Shape,
    page_shift: Option<u32>,
    device_lens: bool,
) -> (Shape, u8, bool) {
    let shape = if opts.decode.rebind_runs {
        shape
    } else {
        Shape {
            b: 0,
            lkv: 0,
            ..shape
        }
    };
    (shape, producers_of(opts, page_shift), device_lens)
}

/// The producer threads of a binding's kernel: 0 for a contiguous cache, else the
/// tuning's count or [`producers_for`] the page size.
pub(crate) fn producers_of(opts: &BindOptions, page_shift: Option<u32>) -> u8 {
    match (page_shift, opts.decode.paged_producers) {
        (None, _) => 0,
        (Some(_), n) if n != 0 => n,
        (Some(shift), _) => producers_for(shift),
    }
}

/// The producer threads of a paged run's kernel for pages of `2^shift` rows
/// (`PtxOptions::producers`): four below 64 rows (K's and V's boxes each split between two
/// threads), two from 64 rows on (V's copies on a second thread). Measured on an H200
/// (session 28, `scripts/device-final/s28-c2.sh`, `s28-c4.sh`; bf16 D128 B8 Hq32 Hkv8,
/// Lq 256 against 8192 keys, µs median, alternated in one call): one / two / four threads
/// at pages of 16 rows causal 700 / 451-468 / 422.7, dense 576 / 492 / 471; 32 rows causal
/// 491 / 415-423 / 415, dense 479 / 466 / 465; 128 rows causal 406 / 398.7 / 405.8, dense
/// 458 / 452 / 454.6 (contiguous 394.8 / 444.8).
pub(crate) fn producers_for(shift: u32) -> u8 {
    if shift < 6 { 4 } else { 2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::decode::CacheLayout;

    /// Four producer threads below pages of 64 rows, two from 64 rows on (the measured
    /// policy, [`producers_for`]).
    #[test]
    fn producers_by_page_size() {
        assert_eq!([4, 5, 6, 7, 8].map(producers_for), [4, 4, 2, 2, 2]);
    }

    fn shape(b: usize, hq: usize, lq: usize) -> DecodeShape {
        DecodeShape {
            b,
            hq,
            hkv: hq / 4,
            lq,
            d: 128,
            dv: 128,
            layout: CacheLayout::Contiguous { lkv_max: 8192 },
        }
    }

    /// Consecutive sequences of one length and range share a run; a gap in the batch
    /// (a sequence without live rows), another length or another range starts a new one;
    /// unbatched, one run per sequence.
    #[test]
    fn runs_group_consecutive_equal_sequences() {
        let lens = [300, 300, 300, 0, 300, 300, 500, 100];
        let live = [
            (0, (0, 300)),
            (1, (0, 300)),
            (2, (0, 300)),
            (4, (0, 300)),
            (5, (44, 300)),
            (6, (0, 500)),
            (7, (0, 100)),
        ];
        let r = runs(256, &lens, &live, true);
        let brief: Vec<_> = r
            .iter()
            .map(|r| (r.b0, r.count, r.first, r.pos, r.lo))
            .collect();
        assert_eq!(
            brief,
            vec![
                (0, 3, 0, 44, 0),
                (4, 1, 0, 44, 0),
                (5, 1, 0, 44, 44),
                (6, 1, 0, 244, 0),
                (7, 1, 156, 0, 0),
            ]
        );
        assert_eq!(r.iter().map(|r| r.count).sum::<usize>(), live.len());
        let one = runs(256, &lens, &live, false);
        assert_eq!(one.len(), live.len());
        assert!(one.iter().all(|r| r.count == 1));
    }

    /// The rule: Lq >= 128 and every run at least half a wave of 128-row tiles.
    #[test]
    fn batched_runs_win_only_when_every_launch_fills_the_gpu() {
        let live: Vec<_> = (0..8).map(|b| (b, (0, 8192))).collect();
        let same = runs(256, &[8192; 8], &live, true);
        assert_eq!(same.len(), 1);
        // 8 sequences x 32 heads x 2 tiles = 512 >= 66
        assert!(prefill_runs_win(&shape(8, 32, 256), &same, 132));
        // Lq 64: the split-KV kernel
        let s64 = runs(64, &[8192; 8], &live, true);
        assert!(!prefill_runs_win(&shape(8, 32, 64), &s64, 132));
        // eight lengths: 8 runs of 2 x 32 = 64 tiles each (< 66); of 2 x 64 at 64 heads
        let lens: Vec<i32> = (0..8).map(|b| 8000 + b).collect();
        let live: Vec<_> = (0..8).map(|b| (b, (0, 8000 + b))).collect();
        let apart = runs(256, &lens, &live, true);
        assert_eq!(apart.len(), 8);
        assert!(!prefill_runs_win(&shape(8, 32, 256), &apart, 132));
        assert!(prefill_runs_win(&shape(8, 64, 256), &apart, 132));
        // one long prompt of 512 rows: 4 tiles x 32 heads = 128
        let one = runs(512, &[32768], &[(0, (0, 32768))], true);
        assert!(prefill_runs_win(&shape(1, 32, 512), &one, 132));
        // a sequence shorter than Lq: only its live rows count (2 rows: 1 tile x 32)
        let short = runs(512, &[2], &[(0, (0, 2))], true);
        assert_eq!(short[0].first, 510);
        assert!(!prefill_runs_win(&shape(1, 32, 512), &short, 132));
        assert!(!prefill_runs_win(&shape(1, 64, 512), &[], 132));
    }
}
