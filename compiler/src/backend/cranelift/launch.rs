//! Launching a [`CpuKernel`]: validation of one call, the launch context, and the thread
//! pool over work items.
//!
//! In: shape, f32 tensors, bindings, block maps, thread count. Out: O and LSE written,
//! or a [`CpuError`] (bad input is an error, never a panic or an out-of-bounds access:
//! everything the generated code indexes with is checked here first).
//!
//! Work items are (b, h, q-tile), claimed from an atomic counter (work stealing), heavy
//! tiles first (the last q-tiles of a causal mask visit the most blocks); with document
//! tiles (`CpuOptions::doc_tiles`, [`DocTable`]) (tile, h), every head of the list's first
//! (heaviest) tile first. In checked
//! mode the reported read is the one of the lowest-numbered failing work item, which is
//! independent of the thread count: items are claimed in increasing order and no item
//! is claimed after a failure, so every lower item has run to completion.
//!
//! Threads come from the [`Workers`] the caller hands in (the runtime's persistent
//! pool: spawning 15 threads per call cost milliseconds on the benchmark host, more than
//! a sparse attention takes); a panicking worker makes the call an error.

use super::abi::{Ctx, TensorDesc, TileBuf};
use super::workers::Workers;
use super::{CpuError, CpuKernel};
use crate::analysis::blockmap::{BlockMaps, Run};
use crate::analysis::documents::tile_in_sequence;
use crate::interp::{Bindings, EvalError, TensorData};
use crate::ir::{DimSpec, FnKind, Program, Scalar, Type};
use crate::shape::Shape;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `Ctx` shared by the worker threads.
struct Shared(Ctx);

// SAFETY: the pointers in `Ctx` are read-only inputs that outlive the scoped threads,
// plus `o`/`lse`, to which each work item writes its own disjoint rows.
unsafe impl Sync for Shared {}

impl Shared {
    fn ptr(&self) -> *const Ctx {
        &self.0
    }
}

static ZERO_WORD: u32 = 0;

/// K and V of a paged cache read in place, for a kernel compiled with
/// `CpuOptions::kv_rows`. Key `j` of kv head `hk` of sequence `b` is, with `p = row0 + j`,
/// row `p % page_size` of entry `(b Hkv + hk) P + p / page_size` of the page lists
/// (`P = ceil((row0 + Lkv) / page_size)` pages per (b, kv head)): the floats
/// `k[k_pages[e] + (p % page_size) k_ld..][..D]` and `v[v_pages[e] + (p % page_size) v_ld..][..Dv]`.
/// A contiguous cache is one page of a power of two `>= row0 + Lkv` rows.
#[derive(Clone, Copy, Debug)]
pub struct KvPages<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub k_pages: &'a [usize],
    pub v_pages: &'a [usize],
    /// A power of two.
    pub page_size: usize,
    /// Below `page_size`: where key 0 sits in the first page.
    pub row0: usize,
    pub k_ld: usize,
    pub v_ld: usize,
}

/// The K and V of one call, as the kernel was compiled to read them.
#[derive(Clone, Copy, Debug)]
pub enum KvInput<'a> {
    /// `k[B, Hkv, Lkv, D]`, `v[B, Hkv, Lkv, Dv]`.
    Dense {
        k: &'a [f32],
        v: &'a [f32],
    },
    Paged(KvPages<'a>),
}

/// How the kernel finds K/V rows: `Ctx`'s `k`, `v` and `kv_pages`, and the page geometry
/// each tile gets (`k_ld`, `v_ld`, `page_shift`, `row0`; `None` for dense tensors).
struct KvPointers {
    k: *const f32,
    v: *const f32,
    kv_pages: i64,
    geometry: Option<[i64; 4]>,
}

/// Checks the K/V of a call against the shape and the kernel's form; the caller keeps
/// `tables` (the page pointers) alive while the kernel runs.
fn kv_pointers(
    kern: &CpuKernel,
    shape: &Shape,
    kv: KvInput,
    tables: &mut [Vec<*const f32>; 2],
) -> Result<KvPointers, CpuError> {
    match (kv, kern.opts.kv_rows) {
        (KvInput::Dense { k, v }, false) => {
            for (what, expected, got) in
                [("k", shape.k_len(), k.len()), ("v", shape.v_len(), v.len())]
            {
                if expected != got {
                    return Err(CpuError::Length {
                        what,
                        expected,
                        got,
                    });
                }
            }
            Ok(KvPointers {
                k: k.as_ptr(),
                v: v.as_ptr(),
                kv_pages: 0,
                geometry: None,
            })
        }
        (KvInput::Paged(r), true) => {
            let ps = r.page_size;
            if !ps.is_power_of_two() || r.row0 >= ps {
                return Err(CpuError::Options(format!(
                    "page size {ps} must be a power of two above the first row {}",
                    r.row0
                )));
            }
            let per = (r.row0 + shape.lkv).div_ceil(ps);
            let geo = Pages {
                per,
                size: ps,
                row0: r.row0,
                lkv: shape.lkv,
                lists: shape.b * shape.hkv,
                pad: kern.opts.kv_block.div_ceil(ps) + 1,
            };
            let [kt, vt] = tables;
            geo.table("k_pages", r.k_pages, (r.k, r.k_ld, shape.d), kt)?;
            geo.table("v_pages", r.v_pages, (r.v, r.v_ld, shape.dv), vt)?;
            Ok(KvPointers {
                k: kt.as_ptr() as *const f32,
                v: vt.as_ptr() as *const f32,
                kv_pages: per as i64,
                geometry: Some([
                    r.k_ld as i64,
                    r.v_ld as i64,
                    ps.trailing_zeros() as i64,
                    r.row0 as i64,
                ]),
            })
        }
        (_, paged) => Err(CpuError::Options(format!(
            "the kernel reads K/V {}, the call gives {}",
            if paged {
                "from pages"
            } else {
                "as dense tensors"
            },
            if paged { "dense tensors" } else { "pages" }
        ))),
    }
}

/// The page lists of one call: `lists` lists (one per (b, kv head)) of `per` pages of
/// `size` rows, holding keys `0..lkv` from row `row0` of the first.
struct Pages {
    per: usize,
    size: usize,
    row0: usize,
    lkv: usize,
    lists: usize,
    /// Entries after the last (the start of the tensor), read to prefetch past the end.
    pad: usize,
}

impl Pages {
    /// `out[e]` = the page at `offs[e]` of `x`, after checking that there are `lists x per`
    /// entries and that every row the keys use (`n` floats, `ld` apart) lies inside `x`.
    fn table(
        &self,
        what: &'static str,
        offs: &[usize],
        (x, ld, n): (&[f32], usize, usize),
        out: &mut Vec<*const f32>,
    ) -> Result<(), CpuError> {
        if offs.len() != self.lists * self.per {
            return Err(CpuError::Length {
                what,
                expected: self.lists * self.per,
                got: offs.len(),
            });
        }
        out.clear();
        out.reserve(offs.len() + self.pad);
        for (index, &at) in offs.iter().enumerate() {
            // the last slot of this page that holds a key
            let first = (index % self.per) * self.size;
            let last = (self.row0 + self.lkv).min(first + self.size) - 1 - first;
            let end = last
                .checked_mul(ld)
                .and_then(|r| r.checked_add(at))
                .and_then(|r| r.checked_add(n));
            if end.is_none_or(|e| e > x.len()) {
                return Err(CpuError::Row {
                    what,
                    index,
                    at: at.saturating_add(last.saturating_mul(ld)),
                    len: n,
                    size: x.len(),
                });
            }
            // SAFETY: `at <= end <= x.len()`: inside `x` (or one past its end).
            out.push(unsafe { x.as_ptr().add(at) });
        }
        out.extend(std::iter::repeat_n(x.as_ptr(), self.pad));
        Ok(())
    }
}

/// Where a launch's kv blocks come from: block maps per (b, h), or (a kernel compiled
/// with `CpuOptions::doc_tiles`) a document tile list with one row of runs per tile.
#[derive(Clone, Copy)]
pub enum Blocks<'a> {
    Maps(&'a BlockMaps),
    Docs(DocTable<'a>),
}

/// A document tile list (`analysis::documents::doc_tiles`: i32 `(b, row0, rows, qi)` per
/// tile) and its runs of kv blocks counted from each tile's `row0`, CSR: tile `t`'s runs
/// are `runs[row_start[t] .. row_start[t + 1]]` (`backend::llvm::bounds::doc_tile_runs`).
#[derive(Clone, Copy, Debug)]
pub struct DocTable<'a> {
    pub tiles: &'a [i32],
    pub row_start: &'a [u32],
    pub runs: &'a [Run],
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    kern: &CpuKernel,
    shape: &Shape,
    q: &[f32],
    kv: KvInput,
    scale: f32,
    bind: &Bindings,
    blocks: Blocks,
    workers: &dyn Workers,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), CpuError> {
    shape.validate()?;
    for (what, expected, got) in [
        ("q", shape.q_len(), q.len()),
        ("o", shape.o_len(), o.len()),
        ("lse", shape.lse_len(), lse.len()),
    ] {
        if expected != got {
            return Err(CpuError::Length {
                what,
                expected,
                got,
            });
        }
    }
    let (bq, bkv) = (kern.opts.q_block, kern.opts.kv_block);
    let nqb = shape.lq.div_ceil(bq);
    // the CSR table, its map strides and rows per map, and the work items
    let flat;
    let (row_start, runs, strides, rows, items, docs): (&[u32], &[Run], _, _, _, _) =
        match (blocks, kern.opts.doc_tiles) {
            (Blocks::Maps(maps), false) => {
                check_maps(maps, shape, bq, bkv)?;
                flat = maps.flatten_csr();
                let strides = (maps.b_stride as i64, maps.h_stride as i64);
                (
                    &flat.0,
                    &flat.1,
                    strides,
                    nqb,
                    shape.b * shape.hq * nqb,
                    None,
                )
            }
            (Blocks::Docs(t), true) => {
                check_docs(&t, shape, bq, bkv)?;
                let n = t.tiles.len() / 4;
                (t.row_start, t.runs, (0, 0), n, n * shape.hq, Some(t.tiles))
            }
            (_, compiled) => {
                return Err(CpuError::Options(format!(
                    "the kernel was compiled {} document tiles; the call gives {}",
                    if compiled { "for" } else { "without" },
                    if compiled {
                        "block maps"
                    } else {
                        "a tile list"
                    }
                )));
            }
        };
    let params = param_words(&kern.program, bind)?;
    let tensors = tensor_descs(&kern.program, shape, bind)?;
    let mut tables = [Vec::new(), Vec::new()];
    let kvp = kv_pointers(kern, shape, kv, &mut tables)?;
    let ctx = Shared(Ctx {
        q: q.as_ptr(),
        k: kvp.k,
        v: kvp.v,
        o: o.as_mut_ptr(),
        lse: lse.as_mut_ptr(),
        hq: shape.hq as i64,
        hkv: shape.hkv as i64,
        lq: shape.lq as i64,
        lkv: shape.lkv as i64,
        d: shape.d as i64,
        dv: shape.dv as i64,
        group: (shape.hq / shape.hkv) as i64,
        scale,
        _pad: 0,
        row_start: row_start.as_ptr(),
        runs: runs.as_ptr() as *const u32,
        map_b_stride: strides.0,
        map_h_stride: strides.1,
        n_q_blocks: rows as i64,
        params: params.as_ptr(),
        tensors: tensors.as_ptr(),
        kv_pages: kvp.kv_pages,
        doc_tiles: docs.map_or(std::ptr::null(), |t| t.as_ptr()),
    });
    if items == 0 {
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<(usize, i64, [i64; 4])>> = Mutex::new(None);
    let worker = || {
        let mut buf = TileBuf::new(bq, bkv, shape.d, shape.dv, kern.slots as usize);
        if let Some([k_ld, v_ld, shift, row0]) = kvp.geometry {
            let t = &mut buf.tile;
            (t.k_ld, t.v_ld, t.page_shift, t.row0) = (k_ld, v_ld, shift, row0);
        }
        loop {
            let it = next.fetch_add(1, Ordering::Relaxed);
            if it >= items || stop.load(Ordering::Relaxed) {
                break;
            }
            let (b, h, qt) = match docs {
                // (every head of the list's first, heaviest, tile first)
                Some(t) => (
                    t[4 * (it / shape.hq)] as usize,
                    it % shape.hq,
                    it / shape.hq,
                ),
                None => {
                    let bh = it / nqb;
                    (bh / shape.hq, bh % shape.hq, nqb - 1 - it % nqb)
                }
            };
            // SAFETY: `ctx` was validated above (lengths, block maps or the document tiles
            // and their runs, bindings), so the generated code's reads and writes stay
            // inside the caller's slices and the tile's scratch; `buf` was sized for this
            // kernel and shape.
            let rc =
                unsafe { (kern.entry)(ctx.ptr(), &mut buf.tile, b as i64, h as i64, qt as i64) };
            if rc != 0 {
                stop.store(true, Ordering::Relaxed);
                let mut e = first_err.lock().unwrap_or_else(|p| p.into_inner());
                if e.is_none_or(|(i, _, _)| it < i) {
                    *e = Some((it, buf.tile.err_site, buf.tile.err_idx));
                }
            }
        }
    };
    let n = workers.threads().clamp(1, items);
    workers.run(n, &worker)?;
    let err = first_err.into_inner().unwrap_or_else(|p| p.into_inner());
    match err {
        None => Ok(()),
        Some((_, site, idx)) => Err(out_of_bounds(kern, bind, site, idx)),
    }
}

fn out_of_bounds(kern: &CpuKernel, bind: &Bindings, site: i64, idx: [i64; 4]) -> CpuError {
    let p = &kern.program;
    let (kind, inst) = (site >> 32, (site & 0xffff_ffff) as usize);
    let f = match kind {
        0 => p.mask.as_ref(),
        _ => p.score.as_ref(),
    };
    let Some(f) = f.filter(|f| inst < f.insts.len()) else {
        return CpuError::Jit(format!("bad error site {site:#x}"));
    };
    let crate::ir::Inst::Load {
        tensor, indices, ..
    } = &f.insts[inst]
    else {
        return CpuError::Jit(format!("error site {site:#x} is not a load"));
    };
    debug_assert!(matches!(f.kind, FnKind::Mask | FnKind::Score));
    let t = tensor.0 as usize;
    CpuError::Eval(EvalError::OutOfBounds {
        tensor: p.tensors[t].name.clone(),
        index: idx[..indices.len()].to_vec(),
        dims: bind.tensors[t].dims.clone(),
        span: f.spans[inst],
    })
}

/// A document tile list fits the call: `Lq == Lkv`, every tile `(b, row0, rows, qi)`
/// inside its sequence (`b < B`, `rows >= 1`, `row0 + rows <= Lq`, `qi q_block < rows`),
/// one ascending row of runs per tile, each run inside `0..ceil(rows / kv_block)`.
pub(super) fn check_docs(
    t: &DocTable,
    shape: &Shape,
    bq: usize,
    bkv: usize,
) -> Result<(), CpuError> {
    let bad = |s: String| Err(CpuError::BlockMap(s));
    if shape.lq != shape.lkv || !t.tiles.len().is_multiple_of(4) {
        return bad("document tiles need Lq = Lkv and four words a tile".into());
    }
    let n = t.tiles.len() / 4;
    if t.row_start.len() != n + 1 || t.row_start[n] as usize > t.runs.len() {
        return bad(format!("{} row starts for {n} tiles", t.row_start.len()));
    }
    for (i, w) in t.tiles.chunks(4).enumerate() {
        let w = [w[0], w[1], w[2], w[3]];
        if !tile_in_sequence(w, shape.b, shape.lq, bq) {
            return bad(format!("document tile {i} {w:?} is outside its sequence"));
        }
        let (s, e) = (t.row_start[i], t.row_start[i + 1]);
        let nkv = (w[2] as usize).div_ceil(bkv) as u32;
        if s > e {
            return bad(format!("document tile {i}: row starts are not ascending"));
        }
        for r in &t.runs[s as usize..e as usize] {
            if r.start > r.end || r.end > nkv || r.full > 1 {
                return bad(format!(
                    "document tile {i}: run {}..{} (full {}) is outside 0..{nkv}",
                    r.start, r.end, r.full
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn check_maps(
    maps: &BlockMaps,
    shape: &Shape,
    bq: usize,
    bkv: usize,
) -> Result<(), CpuError> {
    let bad = |s: String| Err(CpuError::BlockMap(s));
    if maps.maps.is_empty() {
        return bad("no maps".into());
    }
    let last = (shape.b - 1).checked_mul(maps.b_stride).and_then(|x| {
        (shape.hq - 1)
            .checked_mul(maps.h_stride)
            .and_then(|y| x.checked_add(y))
    });
    if last.is_none_or(|l| l >= maps.maps.len()) {
        return bad(format!(
            "{} maps with strides (b {}, h {}) do not cover B = {}, H = {}",
            maps.maps.len(),
            maps.b_stride,
            maps.h_stride,
            shape.b,
            shape.hq
        ));
    }
    let nqb = shape.lq.div_ceil(bq);
    let nkv = shape.lkv.div_ceil(bkv) as u32;
    for (i, m) in maps.maps.iter().enumerate() {
        if (m.lq, m.lkv, m.q_block, m.kv_block) != (shape.lq, shape.lkv, bq, bkv) {
            return bad(format!(
                "map {i} is for Lq {} Lkv {} blocks {}x{}; the call needs Lq {} Lkv {} blocks {bq}x{bkv}",
                m.lq, m.lkv, m.q_block, m.kv_block, shape.lq, shape.lkv
            ));
        }
        if m.row_start.len() != nqb + 1 {
            return bad(format!(
                "map {i} has {} row starts, expected {}",
                m.row_start.len(),
                nqb + 1
            ));
        }
        let mut prev = m.row_start[0];
        for &r in &m.row_start[1..] {
            if r < prev || r as usize > m.runs.len() {
                return bad(format!(
                    "map {i}: row starts are not ascending within the runs"
                ));
            }
            prev = r;
        }
        for r in &m.runs {
            let Run { start, end, full } = *r;
            if start > end || end > nkv || full > 1 {
                return bad(format!(
                    "map {i}: run {start}..{end} (full {full}) is outside 0..{nkv}"
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn param_words(program: &Program, bind: &Bindings) -> Result<Vec<u32>, CpuError> {
    let ps = &program.params;
    if bind.params.len() != ps.len() {
        return Err(CpuError::Bindings(format!(
            "{} param values for {} params",
            bind.params.len(),
            ps.len()
        )));
    }
    let mut words: Vec<u32> = ps
        .iter()
        .zip(&bind.params)
        .map(|(info, v)| match (info.ty, v) {
            (Type::Bool, Scalar::Bool(b)) => Ok(*b as u32),
            (Type::I32, Scalar::I32(x)) => Ok(*x as u32),
            (Type::F32, Scalar::F32(x)) => Ok(x.to_bits()),
            _ => Err(CpuError::Bindings(format!(
                "param `{}` is {}, got {v:?}",
                info.name, info.ty
            ))),
        })
        .collect::<Result<_, _>>()?;
    words.push(0); // never empty
    Ok(words)
}

pub(super) fn tensor_descs(
    program: &Program,
    shape: &Shape,
    bind: &Bindings,
) -> Result<Vec<TensorDesc>, CpuError> {
    let ts = &program.tensors;
    if bind.tensors.len() != ts.len() {
        return Err(CpuError::Bindings(format!(
            "{} tensors bound for {} declared",
            bind.tensors.len(),
            ts.len()
        )));
    }
    let mut symbols: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(ts.len() + 1);
    for (info, t) in ts.iter().zip(&bind.tensors) {
        let err = |s: String| Err(CpuError::Bindings(format!("tensor `{}`: {s}", info.name)));
        if t.dims.len() != info.dims.len() || t.dims.len() > 4 || t.dims.is_empty() {
            return err(format!(
                "bound with rank {}, declared rank {} (1..=4)",
                t.dims.len(),
                info.dims.len()
            ));
        }
        for (k, (spec, &n)) in info.dims.iter().zip(&t.dims).enumerate() {
            let want = match spec {
                DimSpec::B => Some(shape.b),
                DimSpec::H => Some(shape.hq),
                DimSpec::Q => Some(shape.lq),
                DimSpec::Kv => Some(shape.lkv),
                DimSpec::Fixed(f) => Some(*f),
                DimSpec::Symbol(s) => symbols.insert(s, n).filter(|m| *m != n),
            };
            if want.is_some_and(|w| w != n) {
                return err(format!(
                    "dimension {k} ({spec}) is {n}, expected {}",
                    want.unwrap_or(0)
                ));
            }
            if n > i32::MAX as usize {
                return err(format!("dimension {k} is too large"));
            }
        }
        let numel = t.dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        if numel != Some(t.data.len()) {
            return err(format!("dims {:?} but {} elements", t.dims, t.data.len()));
        }
        let (ptr, ty) = match &t.data {
            TensorData::I32(v) => (v.as_ptr() as *const u32, Type::I32),
            TensorData::F32(v) => (v.as_ptr() as *const u32, Type::F32),
        };
        if ty != info.elem.read_type() {
            return err(format!("data is {ty}, declared {}", info.elem.name()));
        }
        let mut d = TensorDesc {
            ptr,
            dims: [1; 4],
            cdims: [1; 4],
        };
        for (k, n) in t.dims.iter().enumerate() {
            d.dims[k] = *n as i64;
            d.cdims[k] = *n as i64;
        }
        if t.data.is_empty() {
            d.ptr = &ZERO_WORD;
            d.cdims = [1; 4];
        }
        out.push(d);
    }
    out.push(TensorDesc {
        ptr: &ZERO_WORD,
        dims: [1; 4],
        cdims: [1; 4],
    });
    Ok(out)
}
