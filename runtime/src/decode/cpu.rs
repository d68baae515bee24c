//! CPU decoding: split-KV over the worker pool's threads with an exact (O, LSE) combine.
//!
//! In: the Cranelift kernel of the packed position-offset program
//! (`attnc_compiler::decode::packed_offset_program`), the plan of the position-offset
//! program (`offset_program`: the mask analysis over positions), a checked [`KvView`],
//! `q` (f32), bindings of the original program. Out: `O`, `LSE` (f32, layouts of
//! `attnc_compiler::decode`), or the first out-of-range read (checked mode).
//!
//! Per sequence, the block map of its live rows over positions `0..seq_len` is built
//! once (closed form / params / summaries, as for prefill, with the offsets bound), and
//! the kv range is cut to the blocks the map visits: a sliding window reads only its
//! window. That range is cut into chunks (multiples of the kernel's kv block, sized so
//! that there are about eight items per thread, capped where the keys are read twice and,
//! in a paged cache, at 4 MB of K/V over every kv head: [`chunk_len`]); a work
//! item is one kv head's chunk (session 8's items held a chunk
//! of every kv head: at 16 threads, B1 Lq16 L8192, 32 items of 256 keys each wrote a
//! 256 KB partial O of all query heads, and a row merged 32 partials). The query rows of
//! a sequence are gathered once, before the items run. In an item,
//! its kv head runs the prefill kernel once, single-threaded, on a packed tile (GQA
//! packing): the `G x rows` rows of its query heads as one head's rows (row `r` is query
//! head `hk G + r / rows` at position `pos + r % rows`, which the packed program
//! computes from `__h0` and `__rows`), against the chunk's K/V of that kv head read once,
//! in place from either cache: the kernel is compiled with `CpuOptions::kv_rows` and its
//! micro-kernels walk the chunk's pages (`DecodeShape::pages`: one pointer a page, rows of
//! a kv head `Hkv x D` apart within it; a contiguous cache is one page). Session 6-7 copied
//! a paged chunk's rows of every kv head first (4 MB a work item at D128 Hkv8, 512 keys):
//! at 16 threads that copy, written out and read back, took paged caches to 1.6-2.6x the
//! contiguous time. The packed map ([`pack_map`]) makes a packed block full only where it is
//! full for every row it holds. Partials (per head and row) merge exactly ([`combine`]),
//! in split order (deterministic), one task per (sequence, query head) on the pool.
//! Checked mode: every block partial, and the reported read is the one of the lowest
//! failing work item (items ascend in (b, position, kv head) order).
use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMapBuilder, BlockMaps};
use attnc_compiler::backend::cranelift::workers::{Scoped, Workers};
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, KvPages};
use attnc_compiler::decode::{
    CacheLayout, DecodeShape, KvView, combine, gather_rows, live_rows, set_offsets,
    set_packed_offsets,
};
use attnc_compiler::interp::{Bindings, EvalError};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub(crate) struct Call<'a> {
    /// Compiled from the packed offset program.
    pub kernel: &'a CpuKernel,
    /// The plan of the (unpacked) offset program: the block maps over positions.
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

/// One sequence's packed maps: one per kv head, or one for all when the mask does not
/// depend on the head.
struct Packed(Vec<BlockMap>);

impl Packed {
    fn of(&self, hk: usize) -> &BlockMap {
        &self.0[hk.min(self.0.len() - 1)]
    }
}

/// The live sequences and the positions `(start, end)` each can reach.
pub(crate) type SeqPlan = (Vec<Seq>, Vec<(usize, usize)>);

/// A chunk of a sequence's keys: positions `start..end`.
struct Item {
    seq: usize,
    hk: usize,
    start: usize,
    end: usize,
}

/// Smallest chunk of keys worth a work item.
const MIN_CHUNK: usize = 256;

/// Largest K + V of one kv head per work item (f32 bytes): half a typical L2, so that a
/// packed tile's keys stay in cache while the kernel walks them (and when G x rows spans
/// several q tiles, which re-read them). Measured before GQA packing, when each query
/// head re-read the chunk (2 threads, B1 Hq32 Hkv8 L32768 D128, causal): 256 KB 4.2,
/// 512 KB 4.6, 1 MB 4.0, 2 MB 3.5, unbounded 3.1 GB/s.
const MAX_CHUNK_BYTES: usize = 512 << 10;

/// Work items per thread: enough for the atomic counter to even out threads that run at
/// different speeds or start late (the last item bounds the call: at 16 threads, 2
/// items of ~1 ms each per thread left up to an item's time idle), few enough that the
/// per-item costs (a partial O of its kv head's query rows, one kernel call, the
/// combine) stay small.
const ITEMS_PER_THREAD: usize = 8;

/// Paged caches: largest K + V of a chunk's keys over *every* kv head (f32 bytes). The kv
/// heads' items of one chunk are taken one after another ((chunk, kv head) order), and a
/// position's kv heads share its rows (`[page, Hkv, D]`: one kv head's keys are 512 bytes
/// 4 KB apart at D128 Hkv8, each in its own 4 KB page): with a chunk's rows of every kv
/// head in L3 (and its pages in the TLB), the items of its other kv heads find the lines
/// that the first ones' reads brought in, where chunks of 16384 keys walked a 64 MB span
/// once per kv head. A contiguous cache streams each kv head's keys and keeps the longer
/// chunks (512-key chunks cost it 5-15% on the build machine: more items). Measured on
/// the 2-core build machine (2 threads, B1 Hq32 Hkv8 Lkv32768 D128 f32 causal, pages of
/// 16, interleaved, noisy): Lq4 paged 126-158 ms with 16384-key chunks, 73-109 at 512 keys
/// (this cap), 78-119 at 1024, 122-130 at 4096 (docs/performance.md, "Session 10
/// (decode)").
const PAGED_CHUNK_SPAN_BYTES: usize = 4 << 20;

/// The keys of one work item (one kv head's chunk): about [`ITEMS_PER_THREAD`] items per
/// thread over `work` = keys x kv heads, at least [`MIN_CHUNK`], a multiple of the kv block
/// `kb`; for a paged cache (`paged_heads` = Hkv) at most [`PAGED_CHUNK_SPAN_BYTES`] of K
/// and V over its kv heads (`dsum = D + Dv` floats a key and kv head; where that cap cuts,
/// a paged cache's chunks are shorter than a contiguous one's and the combine's sums, so
/// the last bits, differ between the layouts). An item holds at most [`MAX_CHUNK_BYTES`]
/// of its kv head's K and V when its keys are read more than once: when a packed tile spans
/// several q blocks (`tile_rows > qb`: each q block walks them again). A tile of one q
/// block reads each kv block once (the score tile, then the PV product), in place from
/// either cache (B1 Hq32 Hkv8 Lq16 Lkv8192 D128: two chunks of 4096 keys per kv head at
/// 2 threads when contiguous, 512 keys paged; 512 at 16 threads).
fn chunk_len(
    work: usize,
    threads: usize,
    tile_rows: usize,
    (qb, kb): (usize, usize),
    dsum: usize,
    paged_heads: Option<usize>,
) -> usize {
    let span = match paged_heads {
        Some(hkv) => (PAGED_CHUNK_SPAN_BYTES / (4 * hkv.max(1) * dsum.max(1))).max(MIN_CHUNK),
        None => usize::MAX,
    };
    let max = if tile_rows > qb {
        (MAX_CHUNK_BYTES / (4 * dsum.max(1)))
            .max(MIN_CHUNK)
            .min(span)
    } else {
        span
    };
    (work / (ITEMS_PER_THREAD * threads.max(1)))
        .clamp(MIN_CHUNK, max)
        .div_ceil(kb)
        * kb
}

pub(crate) fn forward(c: Call) -> Result<(Vec<f32>, Vec<f32>), Failure> {
    let s = c.shape;
    let (qb, kb) = (c.kernel.q_block(), c.kernel.kv_block());
    let base = c.bind.params.len();
    let (seqs, spans) = sequences(c.plan, s, c.view.seq_lens, c.bind, (qb, kb), c.checked)
        .map_err(Failure::Other)?;
    let total: usize = spans.iter().map(|(a, b)| b - a).sum();
    let group = s.hq / s.hkv;
    let tile_rows = seqs
        .iter()
        .map(|q| group * (s.lq - q.first))
        .max()
        .unwrap_or(0);
    // the work is every kv head's keys: an item is one kv head's chunk
    let chunk = chunk_len(
        total * s.hkv,
        c.threads,
        tile_rows,
        (qb, kb),
        s.d + s.dv,
        matches!(s.layout, CacheLayout::Paged { .. }).then_some(s.hkv),
    );
    // (sequence, position, kv head) order: the order the checked mode reports in
    let mut items = Vec::new();
    let mut chunks = Vec::with_capacity(seqs.len());
    for (i, (lo, hi)) in spans.iter().enumerate() {
        let mut at = *lo;
        let mut n = 0;
        while at < *hi {
            let end = (at + chunk).min(*hi);
            items.extend((0..s.hkv).map(|hk| Item {
                seq: i,
                hk,
                start: at,
                end,
            }));
            at = end;
            n += 1;
        }
        chunks.push(n);
    }
    let parts: Vec<OnceLock<(Vec<f32>, Vec<f32>)>> =
        (0..items.len()).map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<(usize, Failure)>> = Mutex::new(None);
    let packed: Vec<Packed> = seqs
        .iter()
        .map(|q| Packed(pack_maps(&q.maps, s, s.lq - q.first, qb)))
        .collect();
    // [Hq, rows, D] per sequence: the query heads of kv head hk are rows hk G rows ..
    let qs: Vec<Vec<f32>> = seqs
        .iter()
        .map(|q| {
            let mut buf = Vec::new();
            gather_rows(s, c.q, q.b, q.first, &mut buf);
            buf
        })
        .collect();
    let worker = || {
        let mut bind = c.bind.clone();
        let (mut k_pages, mut v_pages) = (Vec::new(), Vec::new());
        loop {
            let it = next.fetch_add(1, Ordering::Relaxed);
            if it >= items.len() || stop.load(Ordering::Relaxed) {
                break;
            }
            let item = &items[it];
            let (seq, hk) = (&seqs[item.seq], item.hk);
            let rows = s.lq - seq.first;
            let len = item.end - item.start;
            let tile = group * rows;
            let mut o = vec![0f32; tile * s.dv];
            let mut lse = vec![0f32; tile];
            // the chunk's K/V rows of kv head hk, read in place through the page table
            let span = (item.start, item.end);
            let walk = s.pages(c.view, (seq.b, hk), span, &mut k_pages, &mut v_pages);
            set_packed_offsets(
                &mut bind,
                base,
                [seq.b, seq.pos, item.start, hk * group, rows],
            );
            let maps = BlockMaps::single(slice_map(packed[item.seq].of(hk), item.start / kb, len));
            let kv = KvPages {
                k: c.view.k,
                v: c.view.v,
                k_pages: &k_pages,
                v_pages: &v_pages,
                page_size: walk.page_size,
                row0: walk.row0,
                k_ld: walk.k_ld,
                v_ld: walk.v_ld,
            };
            let r = c.kernel.run_rows(
                &packed_shape(s, tile, len),
                &qs[item.seq][hk * tile * s.d..][..tile * s.d],
                kv,
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
    // combine the partials of each sequence's chunks, row by row: one task per (sequence,
    // query head), on the pool
    let mut o = vec![0f32; s.o_len()];
    let mut lse = vec![f32::NEG_INFINITY; s.lse_len()];
    // per sequence: its items' partials, (chunk, kv head) order
    let mut mine = Vec::with_capacity(seqs.len());
    let mut at = 0;
    for &n in &chunks {
        let n = n * s.hkv;
        let p: Vec<&(Vec<f32>, Vec<f32>)> = parts[at..at + n]
            .iter()
            .map(|p| {
                p.get()
                    .ok_or_else(|| Failure::Other("a work item did not run".into()))
            })
            .collect::<Result<_, _>>()?;
        mine.push(p);
        at += n;
    }
    // the rows of (b, h): o[(b Hq + h) Lq .., Dv], lse[(b Hq + h) Lq ..]
    let slots: Vec<Mutex<(&mut [f32], &mut [f32])>> = o
        .chunks_mut(s.lq * s.dv)
        .zip(lse.chunks_mut(s.lq))
        .map(Mutex::new)
        .collect();
    let tasks = seqs.len() * s.hq;
    let next = AtomicUsize::new(0);
    let merge = || {
        loop {
            let t = next.fetch_add(1, Ordering::Relaxed);
            if t >= tasks {
                break;
            }
            let (i, h) = (t / s.hq, t % s.hq);
            let (seq, hk) = (&seqs[i], h / group);
            let rows = s.lq - seq.first;
            let mut slot = slots[seq.b * s.hq + h]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (o, lse) = &mut *slot;
            for r in 0..rows {
                // row r of query head h: row (h - hk G) rows + r of kv head hk's tile
                let local = (h % group) * rows + r;
                let row = seq.first + r;
                let parts = mine[i][hk..]
                    .iter()
                    .step_by(s.hkv)
                    .map(|(po, pl)| (&po[local * s.dv..][..s.dv], pl[local]));
                lse[row] = combine(parts, &mut o[row * s.dv..][..s.dv]);
            }
        }
    };
    crate::exec::pool::pool(c.threads)
        .run(c.threads.clamp(1, tasks.max(1)), &merge)
        .map_err(|p| Failure::Other(p.to_string()))?;
    drop(slots);
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

/// The kernel's shape of one packed tile: one head of `rows` rows against `lkv` keys.
fn packed_shape(s: &DecodeShape, rows: usize, lkv: usize) -> Shape {
    Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: rows,
        lkv,
        d: s.d,
        dv: s.dv,
    }
}

/// The block maps of the packed tiles of a sequence (`maps`: its maps per query head
/// over `rows` rows, q blocks of `qb`): one per kv head, or one when `maps` does not
/// depend on the head. Packed row `r` of kv head `hk` is row `r % rows` of query head
/// `hk G + r / rows`; a packed block is empty where every row it holds is, full where
/// every row's block is full, partial elsewhere (sound: full blocks skip the mask).
fn pack_maps(maps: &BlockMaps, s: &DecodeShape, rows: usize, qb: usize) -> Vec<BlockMap> {
    let group = s.hq / s.hkv;
    let heads = if maps.h_stride == 0 { 1 } else { s.hkv };
    let (lkv, kb) = (maps.maps[0].lkv, maps.maps[0].kv_block);
    let nkb = lkv.div_ceil(kb);
    let tile = group * rows;
    (0..heads)
        .map(|hk| {
            let mut out = BlockMapBuilder::new(tile, lkv, qb, kb);
            let (mut any, mut full) = (vec![false; nkb], vec![0usize; nkb]);
            for pq in 0..tile.div_ceil(qb) {
                // the (map, q block) pairs of the rows this packed block holds
                let mut srcs: Vec<(usize, usize)> = (pq * qb..((pq + 1) * qb).min(tile))
                    .map(|r| ((hk * group + r / rows) * maps.h_stride, (r % rows) / qb))
                    .collect();
                srcs.sort_unstable();
                srcs.dedup();
                any.fill(false);
                full.fill(0);
                for &(m, i) in &srcs {
                    for run in maps.maps[m].row(i) {
                        for j in run.start as usize..run.end as usize {
                            any[j] = true;
                            full[j] += run.full as usize;
                        }
                    }
                }
                for j in 0..nkb {
                    let kind = if !any[j] {
                        BlockKind::Empty
                    } else if full[j] == srcs.len() {
                        BlockKind::Full
                    } else {
                        BlockKind::Partial
                    };
                    out.push(j, kind);
                }
                out.end_row();
            }
            out.finish()
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks are whole kv blocks, at least `MIN_CHUNK`, about `ITEMS_PER_THREAD` items
    /// (kv head chunks) per thread; paged, at most `PAGED_CHUNK_SPAN_BYTES` over every kv
    /// head; capped where the keys are read twice (a tile over several q blocks).
    #[test]
    fn chunk_len_caps_paged_spans_and_keys_read_twice() {
        let (qb, kb, dsum) = (64, 64, 256);
        let cap = MAX_CHUNK_BYTES / (4 * dsum);
        // a paged cache's span over every kv head: 512 keys at Hkv8 D128 f32
        let span = PAGED_CHUNK_SPAN_BYTES / (4 * 8 * dsum);
        assert_eq!(span, 512);
        // B1 Lkv8192 Hkv8 Lq16 G4: two chunks per kv head at 2 threads (contiguous), the
        // span's 512 keys paged; 512 at 16 threads either way
        assert_eq!(chunk_len(8192 * 8, 2, 64, (qb, kb), dsum, None), 4096);
        assert_eq!(chunk_len(8192 * 8, 2, 64, (qb, kb), dsum, Some(8)), span);
        assert_eq!(chunk_len(8192 * 8, 16, 64, (qb, kb), dsum, None), 512);
        assert_eq!(chunk_len(8192 * 8, 16, 64, (qb, kb), dsum, Some(8)), 512);
        // one kv head: the span is 4096 keys
        assert_eq!(chunk_len(1 << 20, 2, 64, (qb, kb), dsum, Some(1)), 4096);
        assert_eq!(chunk_len(8192 * 8, 2, 128, (qb, kb), dsum, None), cap);
        assert_eq!(chunk_len(8192 * 8, 2, 128, (qb, kb), dsum, Some(1)), cap);
        // short: the minimum; odd: rounded up to whole blocks
        assert_eq!(chunk_len(300, 16, 4, (qb, kb), dsum, None), MIN_CHUNK);
        assert_eq!(chunk_len(10000, 4, 16, (qb, kb), dsum, Some(8)), 320);
        // a huge head dimension or many kv heads never take the caps below the minimum
        let huge = chunk_len(1 << 20, 1, 128, (qb, kb), 1 << 20, Some(8));
        assert_eq!(huge, MIN_CHUNK);
        let heads = chunk_len(1 << 20, 1, 4, (qb, kb), dsum, Some(1 << 12));
        assert_eq!(heads, MIN_CHUNK);
    }
}
