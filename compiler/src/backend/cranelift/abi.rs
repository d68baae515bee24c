//! The binary interface between the launcher (Rust), the generated kernel (Cranelift) and
//! the micro-kernels (precompiled Rust).
//!
//! In: nothing (type definitions). Out: `#[repr(C)]` structs whose field offsets the code
//! generator reads with `offset_of!`, so the three sides cannot disagree.
//!
//! - [`Ctx`]: one per launch, read-only for the kernel: tensors, shape, block-map CSR
//!   table, params and captured tensors.
//! - [`Tile`]: one per worker thread, the tile-sized scratch of one work item
//!   (b, h, q-tile): the packed, pre-scaled `Qᵀ` tile, the `Sᵀ` tile, the output
//!   accumulator, the running max / sum, per-row precomputed mask/score values, and the
//!   checked-mode error record. Nothing here is `Lq x Lkv`-sized.

use std::mem::offset_of;

/// One captured tensor as the kernel sees it. `dims` are the true sizes (checked mode
/// compares against them); `cdims` are the sizes used to clamp and to compute flat
/// offsets (equal to `dims`, or all 1 for an empty tensor, whose `ptr` then points at a
/// zero word, so that the fast mode never reads outside an allocation).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TensorDesc {
    pub ptr: *const u32,
    pub dims: [i64; 4],
    pub cdims: [i64; 4],
}

/// Launch-wide, read-only data of one kernel call. All lengths are element counts.
#[repr(C)]
#[derive(Debug)]
pub struct Ctx {
    pub q: *const f32,
    /// `[B, Hkv, Lkv, D]` / `[B, Hkv, Lkv, Dv]`, or with `CpuOptions::kv_rows` tables of
    /// page pointers (`*const *const f32`, `kv_pages` per (b, kv head); see `Tile::k_ld`).
    pub k: *const f32,
    pub v: *const f32,
    pub o: *mut f32,
    pub lse: *mut f32,
    pub hq: i64,
    pub hkv: i64,
    pub lq: i64,
    pub lkv: i64,
    pub d: i64,
    pub dv: i64,
    /// `hq / hkv`
    pub group: i64,
    pub scale: f32,
    pub _pad: u32,
    /// The flattened block maps (CSR, see `BlockMaps::flatten_csr`).
    pub row_start: *const u32,
    pub runs: *const u32,
    pub map_b_stride: i64,
    pub map_h_stride: i64,
    pub n_q_blocks: i64,
    /// Param values as 32-bit words (i32, f32 bits, or bool as 0/1).
    pub params: *const u32,
    pub tensors: *const TensorDesc,
    /// With `CpuOptions::kv_rows`: page pointers per (b, kv head) in `k` / `v`.
    pub kv_pages: i64,
    /// With `CpuOptions::doc_tiles`: the tile list, i32 `(b, row0, rows, qi)` per tile
    /// (`analysis::documents::doc_tiles`); the block-map row of tile `t` is row `t`.
    pub doc_tiles: *const i32,
}

/// Per-thread scratch of one work item. The micro-kernels read the geometry from here.
#[repr(C)]
#[derive(Debug)]
pub struct Tile {
    /// `[d][bq]`: `scale * Qᵀ`, rows `>= nrows` zero.
    pub qt: *mut f32,
    /// `[bkv][bq]`: the score tile, transposed (`st[j * bq + i]` is query `i`, key `j`).
    pub st: *mut f32,
    /// `[bq][dv]`: the unnormalized output.
    pub acc: *mut f32,
    /// `[bq]` running max, running sum, last rescale factor.
    pub m: *mut f32,
    pub l: *mut f32,
    pub alpha: *mut f32,
    /// `[slots][bq]` values of the mask/score that depend on `q` only, precomputed per
    /// work item.
    pub qslots: *mut u32,
    pub bq: i64,
    pub bkv: i64,
    pub d: i64,
    pub dv: i64,
    pub nrows: i64,
    /// Checked mode: which load failed (`FnKind` in bits 32.., instruction index below)
    /// and its indices.
    pub err_site: i64,
    pub err_idx: [i64; 4],
    /// With `CpuOptions::kv_rows` (a paged cache read in place): key `kv0 + j` of a block
    /// is row `p % 2^page_shift` of page `p / 2^page_shift`, `p = row0 + kv0 + j`, and
    /// rows of a page are `k_ld` / `v_ld` floats apart.
    pub k_ld: i64,
    pub v_ld: i64,
    pub page_shift: i64,
    pub row0: i64,
}

/// Field offsets, as `i32`, for the code generator.
pub mod off {
    use super::*;

    pub const fn c(o: usize) -> i32 {
        o as i32
    }
    pub const CTX_Q: i32 = c(offset_of!(Ctx, q));
    pub const CTX_K: i32 = c(offset_of!(Ctx, k));
    pub const CTX_V: i32 = c(offset_of!(Ctx, v));
    pub const CTX_O: i32 = c(offset_of!(Ctx, o));
    pub const CTX_LSE: i32 = c(offset_of!(Ctx, lse));
    pub const CTX_HQ: i32 = c(offset_of!(Ctx, hq));
    pub const CTX_HKV: i32 = c(offset_of!(Ctx, hkv));
    pub const CTX_LQ: i32 = c(offset_of!(Ctx, lq));
    pub const CTX_LKV: i32 = c(offset_of!(Ctx, lkv));
    pub const CTX_D: i32 = c(offset_of!(Ctx, d));
    pub const CTX_DV: i32 = c(offset_of!(Ctx, dv));
    pub const CTX_GROUP: i32 = c(offset_of!(Ctx, group));
    pub const CTX_SCALE: i32 = c(offset_of!(Ctx, scale));
    pub const CTX_ROW_START: i32 = c(offset_of!(Ctx, row_start));
    pub const CTX_RUNS: i32 = c(offset_of!(Ctx, runs));
    pub const CTX_MAP_B: i32 = c(offset_of!(Ctx, map_b_stride));
    pub const CTX_MAP_H: i32 = c(offset_of!(Ctx, map_h_stride));
    pub const CTX_NQB: i32 = c(offset_of!(Ctx, n_q_blocks));
    pub const CTX_PARAMS: i32 = c(offset_of!(Ctx, params));
    pub const CTX_TENSORS: i32 = c(offset_of!(Ctx, tensors));
    pub const CTX_KV_PAGES: i32 = c(offset_of!(Ctx, kv_pages));
    pub const CTX_DOC_TILES: i32 = c(offset_of!(Ctx, doc_tiles));

    pub const TD_SIZE: i32 = c(size_of::<TensorDesc>());
    pub const TD_PTR: i32 = c(offset_of!(TensorDesc, ptr));
    pub const TD_DIMS: i32 = c(offset_of!(TensorDesc, dims));
    pub const TD_CDIMS: i32 = c(offset_of!(TensorDesc, cdims));

    pub const TILE_ST: i32 = c(offset_of!(Tile, st));
    pub const TILE_QSLOTS: i32 = c(offset_of!(Tile, qslots));
    pub const TILE_ERR_SITE: i32 = c(offset_of!(Tile, err_site));
    pub const TILE_ERR_IDX: i32 = c(offset_of!(Tile, err_idx));

    /// A block-map run is three `u32`s: start, end, full.
    pub const RUN_SIZE: i32 = 12;
}

/// Heap scratch for one [`Tile`], 64-byte aligned.
pub struct TileBuf {
    _mem: Vec<Align64>,
    pub tile: Tile,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Align64([f32; 16]);

// SAFETY: the raw pointers in `tile` point into `_mem`, owned by the same value; a
// `TileBuf` is used by one thread at a time.
unsafe impl Send for TileBuf {}

impl TileBuf {
    pub fn new(bq: usize, bkv: usize, d: usize, dv: usize, slots: usize) -> TileBuf {
        let r = |n: usize| n.div_ceil(16) * 16;
        let sizes = [
            r(d * bq),
            r(bkv * bq),
            r(bq * dv),
            r(bq),
            r(bq),
            r(bq),
            r(slots * bq).max(16),
        ];
        let total: usize = sizes.iter().sum();
        let mut mem = vec![Align64([0.0; 16]); total / 16];
        let base = mem.as_mut_ptr() as *mut f32;
        let mut ptrs = [std::ptr::null_mut::<f32>(); 7];
        let mut at = 0;
        for (p, n) in ptrs.iter_mut().zip(sizes) {
            // SAFETY: `at + n <= total` floats, all inside `mem`.
            *p = unsafe { base.add(at) };
            at += n;
        }
        let tile = Tile {
            qt: ptrs[0],
            st: ptrs[1],
            acc: ptrs[2],
            m: ptrs[3],
            l: ptrs[4],
            alpha: ptrs[5],
            qslots: ptrs[6] as *mut u32,
            bq: bq as i64,
            bkv: bkv as i64,
            d: d as i64,
            dv: dv as i64,
            nrows: 0,
            err_site: -1,
            err_idx: [0; 4],
            k_ld: d as i64,
            v_ld: dv as i64,
            page_shift: 0,
            row0: 0,
        };
        TileBuf { _mem: mem, tile }
    }
}
