//! CPU decoding: split-KV over the worker pool's threads with an exact (O, LSE) combine.
//!
//! In: the Cranelift kernel of the position-offset program
//! (`attnc_compiler::decode::offset_program`), its mask analysis, a checked [`KvView`],
//! `q` (f32), bindings of the original program. Out: `O`, `LSE` (f32, layouts of
//! `attnc_compiler::decode`), or the first out-of-range read (checked mode).
//!
//! Per sequence, the block map of its live rows over positions `0..seq_len` is built
//! once (closed form / params / summaries, as for prefill, with the offsets bound), and
//! the kv range is cut to the blocks the map visits: a sliding window reads only its
//! window. That range is cut into chunks (multiples of the kernel's kv block, sized so
//! that there are about four per thread); each chunk is a work item: its K/V rows are
//! gathered (through the page table) into a `[Hkv, len, D]` slice, the map is sliced to
//! it, and the prefill kernel runs on it single-threaded with `__kv0` = the chunk's
//! start, giving a partial (O, LSE) per (head, row). Partials merge exactly
//! ([`combine`]). Checked mode: every block partial, and the reported read is the one of
//! the lowest failing work item (items ascend in (b, position) order).

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMapBuilder, BlockMaps};
use attnc_compiler::backend::cranelift::workers::{Scoped, Workers};
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel};
use attnc_compiler::decode::{DecodeShape, KvView, combine, gather_rows, live_rows, set_offsets};
use attnc_compiler::interp::{Bindings, EvalError};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub(crate) struct Call<'a> {
    pub kernel: &'a CpuKernel,
    /// The plan of the offset program the kernel was compiled from.
    pub plan: &'a Plan,
    pub shape: &'a DecodeShape,
    pub q: &'a [f32],
    pub view: &'a KvView<'a>,
    pub scale: f32,
    /// For the original program (the offsets are appended here).
    pub bind: &'a Bindings,
    pub threads: usize,
    pub checked: bool,
}

pub(crate) enum Failure {
    Eval(EvalError),
    Other(String),
}

impl From<CpuError> for Failure {
    fn from(e: CpuError) -> Self {
        match e {
            CpuError::Eval(e) => Failure::Eval(e),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// One sequence's live rows and the blocks its mask reaches.
pub(crate) struct Seq {
    pub b: usize,
    first: usize,
    pos: usize,
    maps: BlockMaps,
}

/// The live sequences and the positions `(start, end)` each can reach.
pub(crate) type SeqPlan = (Vec<Seq>, Vec<(usize, usize)>);

/// A chunk of a sequence's keys: positions `start..end`.
struct Item {
    seq: usize,
    start: usize,
    end: usize,
}

/// Smallest chunk of keys worth a work item.
const MIN_CHUNK: usize = 256;

/// Largest K + V of one kv head per work item (f32 bytes): half a typical L2, so the
/// query heads of a GQA group, which the kernel runs one after another, re-read the
/// chunk from L2. Measured at 2 threads (B1 Hq32 Hkv8 L32768 D128, causal): 256 KB 4.2,
/// 512 KB 4.6, 1 MB 4.0, 2 MB 3.5, unbounded 3.1 GB/s.
const MAX_CHUNK_BYTES: usize = 512 << 10;

pub(crate) fn forward(c: Call) -> Result<(Vec<f32>, Vec<f32>), Failure> {
    let s = c.shape;
    let (qb, kb) = (c.kernel.q_block(), c.kernel.kv_block());
    let base = c.bind.params.len();
    let (seqs, spans) = sequences(c.plan, s, c.view.seq_lens, c.bind, (qb, kb), c.checked)
        .map_err(Failure::Other)?;
    let total: usize = spans.iter().map(|(a, b)| b - a).sum();
    // at most ~MAX_CHUNK_BYTES of one kv head's K and V per item, so the query heads of
    // a GQA group (consecutive work items of the kernel) find them in cache
    let max_chunk = (MAX_CHUNK_BYTES / (4 * (s.d + s.dv))).max(MIN_CHUNK);
    let chunk = (total / (4 * c.threads.max(1)))
        .clamp(MIN_CHUNK, max_chunk)
        .div_ceil(kb)
        * kb;
    let mut items = Vec::new();
    for (i, (lo, hi)) in spans.iter().enumerate() {
        let mut at = *lo;
        while at < *hi {
            let end = (at + chunk).min(*hi);
            items.push(Item {
                seq: i,
                start: at,
                end,
            });
            at = end;
        }
    }
    let parts: Vec<OnceLock<(Vec<f32>, Vec<f32>)>> =
        (0..items.len()).map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<(usize, Failure)>> = Mutex::new(None);
    let worker = || {
        let mut bind = c.bind.clone();
        let (mut kbuf, mut vbuf, mut qbuf) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let it = next.fetch_add(1, Ordering::Relaxed);
            if it >= items.len() || stop.load(Ordering::Relaxed) {
                break;
            }
            let item = &items[it];
            let seq = &seqs[item.seq];
            let rows = s.lq - seq.first;
            let len = item.end - item.start;
            s.gather(c.view, seq.b, item.start, item.end, &mut kbuf, &mut vbuf);
            gather_rows(s, c.q, seq.b, seq.first, &mut qbuf);
            set_offsets(&mut bind, base, seq.b, seq.pos, item.start);
            let maps = slice_maps(&seq.maps, item.start / kb, len);
            let mut o = vec![0f32; s.hq * rows * s.dv];
            let mut lse = vec![0f32; s.hq * rows];
            let r = c.kernel.run(
                &seq_shape(s, rows, len),
                &qbuf,
                &kbuf,
                &vbuf,
                c.scale,
                &bind,
                &maps,
                &Scoped(1),
                &mut o,
                &mut lse,
            );
            match r {
                Ok(()) => {
                    let _ = parts[it].set((o, lse));
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    let mut fe = first_err.lock().unwrap_or_else(|p| p.into_inner());
                    if fe.as_ref().is_none_or(|(i, _)| it < *i) {
                        *fe = Some((it, e.into()));
                    }
                }
            }
        }
    };
    let n = c.threads.clamp(1, items.len().max(1));
    crate::exec::pool::pool(c.threads)
        .run(n, &worker)
        .map_err(|p| Failure::Other(p.to_string()))?;
    if let Some((_, e)) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // combine the partials of each sequence's chunks, row by row
    let mut o = vec![0f32; s.o_len()];
    let mut lse = vec![f32::NEG_INFINITY; s.lse_len()];
    let mut at = 0;
    for (i, seq) in seqs.iter().enumerate() {
        let mine: Vec<&(Vec<f32>, Vec<f32>)> = items[at..]
            .iter()
            .zip(&parts[at..])
            .take_while(|(it, _)| it.seq == i)
            .map(|(_, p)| {
                p.get()
                    .ok_or_else(|| Failure::Other("a work item did not run".into()))
            })
            .collect::<Result<_, _>>()?;
        at += mine.len();
        let rows = s.lq - seq.first;
        for h in 0..s.hq {
            for r in 0..rows {
                let local = h * rows + r;
                let row = (seq.b * s.hq + h) * s.lq + seq.first + r;
                let parts = mine
                    .iter()
                    .map(|(po, pl)| (&po[local * s.dv..][..s.dv], pl[local]));
                lse[row] = combine(parts, &mut o[row * s.dv..][..s.dv]);
            }
        }
    }
    Ok((o, lse))
}

/// Each sequence with live rows that reach at least one key, and the positions
/// `(start, end)` its mask can reach (whole kv blocks of `tiles.1`; every position in
/// checked mode). `bind` is for the original program.
pub(crate) fn sequences(
    plan: &Plan,
    s: &DecodeShape,
    seq_lens: &[i32],
    bind: &Bindings,
    (qb, kb): (usize, usize),
    checked: bool,
) -> Result<SeqPlan, String> {
    let base = bind.params.len();
    let mut bind = bind.clone();
    let mut seqs = Vec::new();
    let mut spans = Vec::new();
    for (b, &n) in seq_lens.iter().enumerate() {
        let n = n.max(0) as usize;
        let (first, pos) = live_rows(s.lq, n);
        let rows = s.lq - first;
        if rows == 0 {
            continue;
        }
        let one = seq_shape(s, rows, n);
        let maps = if checked && plan.program().mask.is_some() {
            BlockMaps::single(BlockMap::all_partial(rows, n, qb, kb))
        } else {
            set_offsets(&mut bind, base, b, pos, 0);
            plan.block_maps(&one, qb, kb, &bind)
                .map_err(|e| e.to_string())?
        };
        // the blocks any row of any head visits
        let (mut lo, mut hi) = (usize::MAX, 0);
        for m in &maps.maps {
            for r in &m.runs {
                lo = lo.min(r.start as usize);
                hi = hi.max(r.end as usize);
            }
        }
        if lo >= hi {
            continue; // every row fully masked: O = 0, LSE = -inf
        }
        spans.push((lo * kb, (hi * kb).min(n)));
        seqs.push(Seq {
            b,
            first,
            pos,
            maps,
        });
    }
    Ok((seqs, spans))
}

fn seq_shape(s: &DecodeShape, rows: usize, lkv: usize) -> Shape {
    Shape {
        b: 1,
        hq: s.hq,
        hkv: s.hkv,
        lq: rows,
        lkv,
        d: s.d,
        dv: s.dv,
    }
}

/// The maps of kv blocks `first..` covering `len` positions, renumbered from 0.
fn slice_maps(maps: &BlockMaps, first: usize, len: usize) -> BlockMaps {
    BlockMaps {
        b_stride: maps.b_stride,
        h_stride: maps.h_stride,
        maps: maps.maps.iter().map(|m| slice_map(m, first, len)).collect(),
    }
}

fn slice_map(m: &BlockMap, first: usize, len: usize) -> BlockMap {
    let last = first + len.div_ceil(m.kv_block);
    let mut out = BlockMapBuilder::new(m.lq, len, m.q_block, m.kv_block);
    for i in 0..m.n_q_blocks() {
        for r in m.row(i) {
            let (a, b) = ((r.start as usize).max(first), (r.end as usize).min(last));
            if a < b {
                let kind = if r.full == 1 {
                    BlockKind::Full
                } else {
                    BlockKind::Partial
                };
                out.push_run(a - first, b - first, kind);
            }
        }
        out.end_row();
    }
    out.finish()
}
