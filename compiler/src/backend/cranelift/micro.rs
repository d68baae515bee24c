//! Precompiled SIMD micro-kernels that the generated kernel calls for the dense parts of
//! a tile: packing `Qᵀ`, the score tile `Sᵀ = (scale·Q)·Kᵀ`, the online-softmax row update
//! fused with `O += P·V`, and the final normalization.
//!
//! In: a [`Tile`] (geometry and scratch pointers) plus the per-call K/V/O pointers and
//! counts. Out: the tile scratch (and O/LSE rows in [`end`]). The score and mask are NOT
//! here: the generated code applies them to `Sᵀ` between [`qk`] and [`softmax_pv`], so the
//! fusion (score/mask/softmax interleaved per tile) lives in generated code.
//!
//! Every entry point exists in three builds selected once per kernel by runtime feature
//! detection ([`Isa::detect`]): AVX-512F (hand-written intrinsics for the two products),
//! AVX2+FMA and portable (the same plain-Rust bodies, auto-vectorized for each target).
//!
//! Layouts (see `abi`): `qt[d][bq]`, `st[j][bq]` (query index fastest, so the softmax is
//! vectorized across queries), `acc[bq][dv]`. K and V rows are contiguous (`[j][d]`,
//! `[j][dv]`) for [`qk`] / [`softmax_pv`], or found by a page walk for [`qk_rows`] /
//! [`softmax_pv_rows`] (a decoding step reading a paged cache in place: the rows of one kv
//! head sit `Hkv x D` apart within a page, pages anywhere; `Paged`). The products reach
//! rows only through `Rows`, so both forms run the same code.
//! Rows `i >= nrows` of a tile are padding: computed on zeros, never written out.

use super::abi::Tile;

/// The instruction set the micro-kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best variant the running CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether the running CPU can execute this variant.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `(symbol, address)` of every micro-kernel of this variant, under the names the
    /// generated code imports.
    pub fn symbols(self) -> [(&'static str, *const u8); 6] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => [
                (BEGIN, x86::begin_avx512 as *const u8),
                (QK, x86::qk_avx512 as *const u8),
                (SOFTMAX_PV, x86::softmax_pv_avx512 as *const u8),
                (END, x86::end_avx512 as *const u8),
                (QK_ROWS, x86::qk_rows_avx512 as *const u8),
                (SOFTMAX_PV_ROWS, x86::softmax_pv_rows_avx512 as *const u8),
            ],
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => [
                (BEGIN, x86::begin_avx2 as *const u8),
                (QK, x86::qk_avx2 as *const u8),
                (SOFTMAX_PV, x86::softmax_pv_avx2 as *const u8),
                (END, x86::end_avx2 as *const u8),
                (QK_ROWS, x86::qk_rows_avx2 as *const u8),
                (SOFTMAX_PV_ROWS, x86::softmax_pv_rows_avx2 as *const u8),
            ],
            _ => [
                (BEGIN, begin as *const u8),
                (QK, qk as *const u8),
                (SOFTMAX_PV, softmax_pv as *const u8),
                (END, end as *const u8),
                (QK_ROWS, qk_rows as *const u8),
                (SOFTMAX_PV_ROWS, softmax_pv_rows as *const u8),
            ],
        }
    }
}

/// Symbol names the generated code imports.
pub const BEGIN: &str = "attnc_tile_begin";
pub const QK: &str = "attnc_tile_qk";
pub const SOFTMAX_PV: &str = "attnc_tile_softmax_pv";
pub const END: &str = "attnc_tile_end";
pub const QK_ROWS: &str = "attnc_tile_qk_rows";
pub const SOFTMAX_PV_ROWS: &str = "attnc_tile_softmax_pv_rows";

/// Where the products find row `j` (`0..ncols`) of a K or V block.
pub(crate) trait Rows: Copy {
    /// # Safety
    /// `j` is below the block's `ncols`; the pointer is valid for a row's floats.
    unsafe fn row(self, j: usize) -> *const f32;

    /// Asks for the `n` rows of `floats` floats after the block's `ncols` (the next
    /// block) to be brought to L2 while this one is computed. Dense rows stream and the
    /// hardware prefetcher finds them: nothing to do.
    ///
    /// # Safety
    /// For a table, entries `ncols..ncols + n` exist (`launch` pads every table by a
    /// kv block); a prefetch itself never faults.
    #[inline(always)]
    unsafe fn prefetch_next(self, ncols: usize, n: usize, floats: usize) {
        for j in ncols..ncols + n {
            // SAFETY: forwarded contract.
            unsafe { self.prefetch_row(j, floats) }
        }
    }

    /// Asks for row `j` (of `floats` floats; `j` may lie past the block, up to a kv block
    /// past its `ncols`) to be brought to L2. Nothing for rows that stream.
    ///
    /// # Safety
    /// As [`Rows::prefetch_next`].
    #[inline(always)]
    unsafe fn prefetch_row(self, _j: usize, _floats: usize) {}
}

/// Rows `ld` floats apart from the block's first.
#[derive(Clone, Copy)]
pub(crate) struct Strided(pub *const f32, pub usize);

impl Rows for Strided {
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const f32 {
        // SAFETY: the caller keeps `j` inside the block.
        unsafe { self.0.add(j * self.1) }
    }
}

/// Row `j` of a block whose first key is `kv0`, in a paged cache: with `p = row0 + kv0 +
/// j`, row `p % 2^shift` of page `p / 2^shift`, rows of a page `ld` floats apart (a
/// contiguous cache is one page).
#[derive(Clone, Copy)]
pub(crate) struct Paged {
    pages: *const *const f32,
    first: usize,
    shift: u32,
    ld: usize,
}

impl Paged {
    /// The block at key `kv0` of the pages at `pages`, with the tile's page geometry.
    ///
    /// # Safety
    /// `t` is valid.
    #[inline(always)]
    unsafe fn of(t: *const Tile, pages: *const *const f32, kv0: i64, ld: i64) -> Paged {
        // SAFETY: `t` is valid (the caller's contract).
        let t = unsafe { &*t };
        Paged {
            pages,
            first: (t.row0 + kv0) as usize,
            shift: t.page_shift as u32,
            ld: ld as usize,
        }
    }
}

impl Rows for Paged {
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const f32 {
        let p = self.first + j;
        let mask = (1usize << self.shift) - 1;
        // SAFETY: the caller keeps `j` inside the block; `launch` checked that every row
        // of every page it lists lies inside its tensor.
        unsafe { (*self.pages.add(p >> self.shift)).add((p & mask) * self.ld) }
    }

    /// A paged cache's rows of one kv head are `Hkv x D` floats apart (each in its own
    /// 4 KB page at D128 Hkv8), which the hardware prefetchers do not follow: each row
    /// would wait for memory when the products reach it. Rows that follow each other
    /// (`ld` = the row's floats: a contiguous cache, or one kv head) stream: no prefetch,
    /// which costs ~10% of a one-row tile's time when the data is in cache.
    #[inline(always)]
    unsafe fn prefetch_row(self, j: usize, floats: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.ld != floats {
            let p = self.first + j;
            let mask = (1usize << self.shift) - 1;
            // SAFETY: page entries past the last exist (`launch` pads the table by a kv
            // block); the row address is only prefetched, which never faults.
            let row = unsafe { *self.pages.add(p >> self.shift) } as *const i8;
            let row = row.wrapping_add((p & mask) * self.ld * 4);
            for line in (0..floats * 4).step_by(64) {
                // SAFETY: a prefetch does not fault, whatever the address.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                        row.wrapping_add(line),
                    )
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (j, floats);
    }
}

/// `exp` for the softmax: Cephes' minimax polynomial after range reduction, about 2 ulp
/// on its range. Returns exactly 0 below -87.33 (so `exp(-inf) = 0`: masked entries
/// contribute nothing, and a fully masked row keeps a zero sum). Branch-free so that it
/// vectorizes.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    exp_poly::<false>(x)
}

/// [`exp_approx`], with fused multiply-adds when `FMA` (only in builds for CPUs with FMA:
/// elsewhere `mul_add` is a slow library call).
#[inline(always)]
fn exp_poly<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let ma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let xc = x.clamp(-87.33654, 88.37626);
    let tm = ma(xc, LOG2E, MAGIC);
    let n = tm - MAGIC;
    let ni = (tm.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = ma(n, -LN2_HI, xc);
    let r = ma(n, -LN2_LO, r);
    let mut p = 1.987_569_1e-4f32;
    p = ma(p, r, 1.398_199_9e-3);
    p = ma(p, r, 8.333_452e-3);
    p = ma(p, r, 4.166_579_6e-2);
    p = ma(p, r, 1.666_666_5e-1);
    p = ma(p, r, 5e-1);
    p = ma(p * r, r, r) + 1.0;
    let e = f32::from_bits(((ni + 127) << 23) as u32);
    if x < -87.33654 { 0.0 } else { p * e }
}

// ---------------------------------------------------------------------------------------
// Plain-Rust bodies (auto-vectorized per target by the wrappers below).

/// # Safety
/// `t` describes valid scratch; `q` points at `nrows` rows of `d` floats.
#[inline(always)]
unsafe fn begin_body(t: *mut Tile, q: *const f32, nrows: i64, scale: f32) {
    // SAFETY: the caller guarantees `t` is a valid tile and `q` holds `nrows * d` floats.
    unsafe {
        let t = &mut *t;
        let (bq, d, dv) = (t.bq as usize, t.d as usize, t.dv as usize);
        let nrows = nrows as usize;
        t.nrows = nrows as i64;
        let qt = std::slice::from_raw_parts_mut(t.qt, d * bq);
        let q = std::slice::from_raw_parts(q, nrows * d);
        for i in 0..bq {
            if i < nrows {
                let row = &q[i * d..][..d];
                for (dd, x) in row.iter().enumerate() {
                    qt[dd * bq + i] = scale * *x;
                }
            } else {
                for dd in 0..d {
                    qt[dd * bq + i] = 0.0;
                }
            }
        }
        std::slice::from_raw_parts_mut(t.acc, bq * dv).fill(0.0);
        std::slice::from_raw_parts_mut(t.m, bq).fill(f32::NEG_INFINITY);
        std::slice::from_raw_parts_mut(t.l, bq).fill(0.0);
    }
}

/// The rows of `Sᵀ` that the products and the softmax compute: the live rows rounded up
/// to 16 (a short last tile, or a decoding step with `Lq = 1`, does not pay for `bq`).
/// The per-element pass of the generated code stays below this bound (it rounds to 4).
#[inline(always)]
fn live_rows(t: &Tile) -> usize {
    ((t.nrows as usize).div_ceil(16) * 16).min(t.bq as usize)
}

/// # Safety
/// `t` is valid; `k` gives `ncols` rows of `d` floats; `ncols <= bkv`.
#[inline(always)]
unsafe fn qk_body<R: Rows>(t: *mut Tile, k: R, ncols: i64) {
    // SAFETY: as documented above.
    unsafe {
        let t = &*t;
        let (bq, d) = (t.bq as usize, t.d as usize);
        let ncols = ncols as usize;
        let qt = std::slice::from_raw_parts(t.qt, d * bq);
        let st = std::slice::from_raw_parts_mut(t.st, ncols * bq);
        let nr = live_rows(t);
        k.prefetch_next(ncols, t.bkv as usize, d);
        for j in 0..ncols {
            let srow = &mut st[j * bq..][..nr];
            srow.fill(0.0);
            let krow = std::slice::from_raw_parts(k.row(j), d);
            for (dd, kx) in krow.iter().enumerate() {
                let qrow = &qt[dd * bq..][..nr];
                for (s, x) in srow.iter_mut().zip(qrow) {
                    *s += *kx * *x;
                }
            }
        }
    }
}

/// Online-softmax update of the tile's rows over `ncols` new columns: new running max,
/// `alpha = exp(m_old - m_new)`, `P = exp(S - m_new)` in place of `Sᵀ`, `l = l·alpha + Σ P`.
/// A row whose max is still `-inf` uses 0 as its max, so `-inf - -inf` never happens.
///
/// # Safety
/// `t` is valid and `ncols <= bkv`.
#[inline(always)]
unsafe fn softmax_body<const FMA: bool>(t: *mut Tile, ncols: i64) {
    // SAFETY: as documented above.
    unsafe {
        let t = &*t;
        let bq = t.bq as usize;
        let nr = live_rows(t);
        let ncols = ncols as usize;
        let st = std::slice::from_raw_parts_mut(t.st, ncols * bq);
        let m = std::slice::from_raw_parts_mut(t.m, nr);
        let l = std::slice::from_raw_parts_mut(t.l, nr);
        let alpha = std::slice::from_raw_parts_mut(t.alpha, nr);
        // 16 rows at a time, keys inner: max and sum stay in registers
        for c in (0..nr).step_by(16) {
            let mut mx = [0f32; 16];
            mx.copy_from_slice(&m[c..c + 16]);
            let mut mnew = mx;
            for j in 0..ncols {
                let srow: &[f32; 16] = st[j * bq + c..][..16].try_into().unwrap();
                for (x, s) in mnew.iter_mut().zip(srow) {
                    *x = if *s > *x { *s } else { *x };
                }
            }
            let mut safe = [0f32; 16];
            let mut sum = [0f32; 16];
            for r in 0..16 {
                safe[r] = if mnew[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    mnew[r]
                };
                let a = exp_poly::<FMA>(mx[r] - safe[r]);
                alpha[c + r] = a;
                sum[r] = l[c + r] * a;
            }
            for j in 0..ncols {
                let srow: &mut [f32; 16] = (&mut st[j * bq + c..][..16]).try_into().unwrap();
                for r in 0..16 {
                    let p = exp_poly::<FMA>(srow[r] - safe[r]);
                    srow[r] = p;
                    sum[r] += p;
                }
            }
            m[c..c + 16].copy_from_slice(&mnew);
            l[c..c + 16].copy_from_slice(&sum);
        }
    }
}

/// `acc[i] = acc[i]·alpha[i] + Σ_j P[j][i]·V[j]` for the tile's live rows.
///
/// # Safety
/// `t` is valid; `v` gives `ncols` rows of `dv` floats.
#[inline(always)]
unsafe fn pv_body<R: Rows>(t: *mut Tile, v: R, ncols: i64) {
    // SAFETY: as documented above.
    unsafe {
        let t = &*t;
        let (bq, dv, nrows) = (t.bq as usize, t.dv as usize, t.nrows as usize);
        let ncols = ncols as usize;
        let st = std::slice::from_raw_parts(t.st, ncols * bq);
        let acc = std::slice::from_raw_parts_mut(t.acc, bq * dv);
        let alpha = std::slice::from_raw_parts(t.alpha, bq);
        v.prefetch_next(ncols, t.bkv as usize, dv);
        for i in 0..nrows {
            let arow = &mut acc[i * dv..][..dv];
            let a = alpha[i];
            arow.iter_mut().for_each(|x| *x *= a);
            for j in 0..ncols {
                let p = st[j * bq + i];
                if p != 0.0 {
                    let vrow = std::slice::from_raw_parts(v.row(j), dv);
                    for (x, y) in arow.iter_mut().zip(vrow) {
                        *x += p * *y;
                    }
                }
            }
        }
    }
}

/// Writes the tile's `nrows` output rows: `O = acc / l`, `LSE = m + ln l`. A row with
/// no score above `-inf` (fully masked) gets `O = 0`, `LSE = -inf`; a row where a NaN
/// score met a real one gets NaN (both as the oracle does).
///
/// # Safety
/// `t` is valid; `o` holds `nrows * dv` floats and `lse` `nrows` floats.
#[inline(always)]
unsafe fn end_body(t: *mut Tile, o: *mut f32, lse: *mut f32) {
    // SAFETY: as documented above.
    unsafe {
        let t = &*t;
        let (dv, nrows) = (t.dv as usize, t.nrows as usize);
        let acc = std::slice::from_raw_parts(t.acc, nrows * dv);
        let o = std::slice::from_raw_parts_mut(o, nrows * dv);
        let lse = std::slice::from_raw_parts_mut(lse, nrows);
        for i in 0..nrows {
            let l = *t.l.add(i);
            let orow = &mut o[i * dv..][..dv];
            let m = *t.m.add(i);
            if m == f32::NEG_INFINITY {
                // no score above -inf (all masked, or all NaN as the oracle treats it)
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
            } else if l > 0.0 {
                let inv = 1.0 / l;
                for (x, a) in orow.iter_mut().zip(&acc[i * dv..][..dv]) {
                    *x = *a * inv;
                }
                lse[i] = m + l.ln();
            } else if l.is_nan() {
                // a NaN score reached this row (PyTorch propagates it)
                orow.fill(f32::NAN);
                lse[i] = f32::NAN;
            } else {
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Portable entry points.

/// Packs `scale·Qᵀ` and resets the accumulators.
///
/// # Safety
/// See `begin_body`.
pub unsafe extern "C" fn begin(t: *mut Tile, q: *const f32, nrows: i64, scale: f32) {
    // SAFETY: forwarded contract.
    unsafe { begin_body(t, q, nrows, scale) }
}

/// `Sᵀ = K·(scale·Qᵀ)` on `ncols` keys.
///
/// # Safety
/// See `qk_body`.
pub unsafe extern "C" fn qk(t: *mut Tile, k: *const f32, ncols: i64) {
    // SAFETY: forwarded contract; the tile's `d` is the row length.
    unsafe { qk_body(t, Strided(k, (*t).d as usize), ncols) }
}

/// Softmax update then `acc += P·V`.
///
/// # Safety
/// See `softmax_body` and `pv_body`.
pub unsafe extern "C" fn softmax_pv(t: *mut Tile, v: *const f32, ncols: i64) {
    // SAFETY: forwarded contract.
    unsafe {
        softmax_body::<false>(t, ncols);
        pv_body(t, Strided(v, (*t).dv as usize), ncols)
    }
}

/// [`qk`] on keys `kv0..kv0 + ncols` of the pages `k` lists (the tile's `page_shift`,
/// `row0`, `k_ld`).
///
/// # Safety
/// See `qk_body`: the pages hold those keys' rows of `d` floats.
pub unsafe extern "C" fn qk_rows(t: *mut Tile, k: *const *const f32, kv0: i64, ncols: i64) {
    // SAFETY: forwarded contract.
    unsafe { qk_body(t, Paged::of(t, k, kv0, (*t).k_ld), ncols) }
}

/// [`softmax_pv`] on keys `kv0..kv0 + ncols` of the pages `v` lists.
///
/// # Safety
/// See `softmax_body` and `pv_body`: the pages hold those keys' rows of `dv` floats.
pub unsafe extern "C" fn softmax_pv_rows(t: *mut Tile, v: *const *const f32, kv0: i64, ncols: i64) {
    // SAFETY: forwarded contract.
    unsafe {
        softmax_body::<false>(t, ncols);
        pv_body(t, Paged::of(t, v, kv0, (*t).v_ld), ncols)
    }
}

/// Normalizes and writes O and LSE.
///
/// # Safety
/// See `end_body`.
pub unsafe extern "C" fn end(t: *mut Tile, o: *mut f32, lse: *mut f32) {
    // SAFETY: forwarded contract.
    unsafe { end_body(t, o, lse) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 builds. The AVX-512 products keep a 6 x 64 register tile of
    //! accumulators (24 zmm) and stream one operand with broadcasts.
    use super::*;
    use std::arch::x86_64::*;

    macro_rules! wrap {
        ($feat:literal, $begin:ident, $qk:ident, $spv:ident, $end:ident, $qkr:ident, $spvr:ident,
         $qkb:ident, $pvb:ident) => {
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $begin(t: *mut Tile, q: *const f32, nrows: i64, scale: f32) {
                // SAFETY: forwarded contract.
                unsafe { begin_body(t, q, nrows, scale) }
            }
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $qk(t: *mut Tile, k: *const f32, ncols: i64) {
                // SAFETY: forwarded contract; the tile's `d` is the row length.
                unsafe { $qkb(t, Strided(k, (*t).d as usize), ncols) }
            }
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $qkr(
                t: *mut Tile,
                k: *const *const f32,
                kv0: i64,
                ncols: i64,
            ) {
                // SAFETY: forwarded contract.
                unsafe { $qkb(t, Paged::of(t, k, kv0, (*t).k_ld), ncols) }
            }
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $spvr(
                t: *mut Tile,
                v: *const *const f32,
                kv0: i64,
                ncols: i64,
            ) {
                // SAFETY: forwarded contract.
                unsafe {
                    softmax_body::<true>(t, ncols);
                    $pvb(t, Paged::of(t, v, kv0, (*t).v_ld), ncols)
                }
            }
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $spv(t: *mut Tile, v: *const f32, ncols: i64) {
                // SAFETY: forwarded contract.
                unsafe {
                    softmax_body::<true>(t, ncols);
                    $pvb(t, Strided(v, (*t).dv as usize), ncols)
                }
            }
            /// # Safety
            /// The CPU supports the features; see the portable entry point.
            #[target_feature(enable = $feat)]
            pub unsafe extern "C" fn $end(t: *mut Tile, o: *mut f32, lse: *mut f32) {
                // SAFETY: forwarded contract.
                unsafe { end_body(t, o, lse) }
            }
        };
    }

    wrap!(
        "avx2,fma",
        begin_avx2,
        qk_avx2,
        softmax_pv_avx2,
        end_avx2,
        qk_rows_avx2,
        softmax_pv_rows_avx2,
        qk_body,
        pv_body
    );
    wrap!(
        "avx512f",
        begin_avx512,
        qk_avx512,
        softmax_pv_avx512,
        end_avx512,
        qk_rows_avx512,
        softmax_pv_rows_avx512,
        qk512,
        pv512
    );

    /// # Safety
    /// See `qk_body`; `bq % 16 == 0`.
    #[target_feature(enable = "avx512f")]
    unsafe fn qk512<R: Rows>(t: *mut Tile, k: R, ncols: i64) {
        // SAFETY: as documented; every access below is inside `qt[d][bq]`, the `ncols`
        // rows of `k` and `st[ncols][bq]`.
        unsafe {
            let t = &*t;
            let (bq, d) = (t.bq as usize, t.d as usize);
            let ncols = ncols as usize;
            let nr = live_rows(t);
            // the next block's rows are prefetched along the first column pass, a few per
            // group of keys, not in one burst ahead of it (a paged cache on the device
            // host's Xeon, 2 threads, B1 Lq1 L32768: 39.3 -> 26.9 ms, Lq4 40.4 -> 34.2;
            // the suspect: a burst of 512 line prefetches holds the fill buffers that the
            // products' own loads wait for)
            let pf = (ncols, t.bkv as usize);
            let mut i0 = 0;
            while i0 + 64 <= nr {
                qk_cols::<4, _>(t.qt, bq, k, d, t.st, i0, ncols, (i0 == 0).then_some(pf));
                i0 += 64;
            }
            while i0 < nr {
                qk_cols::<1, _>(t.qt, bq, k, d, t.st, i0, ncols, (i0 == 0).then_some(pf));
                i0 += 16;
            }
        }
    }

    /// `pf`: `(ncols, bkv)` when this pass prefetches the next block's `bkv` rows.
    ///
    /// # Safety
    /// As `qk512`: `qt[d][bq]`, the `ncols` rows of `k` and `st[ncols][bq]` are valid,
    /// columns `i0..i0 + 16·NV` lie inside `bq`; prefetched rows as
    /// `Rows::prefetch_row` allows.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn qk_cols<const NV: usize, R: Rows>(
        qt: *const f32,
        bq: usize,
        k: R,
        d: usize,
        st: *mut f32,
        i0: usize,
        ncols: usize,
        pf: Option<(usize, usize)>,
    ) {
        // SAFETY: bounds as in `qk512`; prefetched rows as `Rows::prefetch_row` allows.
        unsafe {
            // rows of the next block per group of 6 keys: all `bkv` by the last group
            let per = pf.map_or(0, |(_, bkv)| bkv.div_ceil(ncols.div_ceil(6).max(1)));
            let (mut next, end) = pf.map_or((0, 0), |(n, bkv)| (n, n + bkv));
            let mut j = 0;
            while j + 6 <= ncols {
                for r in next..(next + per).min(end) {
                    k.prefetch_row(r, d);
                }
                next += per;
                qk_block::<6, NV, _>(qt, bq, k, d, st, i0, j);
                j += 6;
            }
            for r in next..end {
                k.prefetch_row(r, d);
            }
            match ncols - j {
                5 => qk_block::<5, NV, _>(qt, bq, k, d, st, i0, j),
                4 => qk_block::<4, NV, _>(qt, bq, k, d, st, i0, j),
                3 => qk_block::<3, NV, _>(qt, bq, k, d, st, i0, j),
                2 => qk_block::<2, NV, _>(qt, bq, k, d, st, i0, j),
                1 => qk_block::<1, NV, _>(qt, bq, k, d, st, i0, j),
                _ => {}
            }
        }
    }

    /// # Safety
    /// As `qk_cols`; rows `j..j + JR` lie below `ncols`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn qk_block<const JR: usize, const NV: usize, R: Rows>(
        qt: *const f32,
        bq: usize,
        k: R,
        d: usize,
        st: *mut f32,
        i0: usize,
        j: usize,
    ) {
        // SAFETY: rows j..j+JR < ncols and columns i0..i0+16·NV <= bq.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; JR];
            let krows: [*const f32; JR] = std::array::from_fn(|r| k.row(j + r));
            for dd in 0..d {
                let qrow = qt.add(dd * bq + i0);
                let mut qv = [_mm512_setzero_ps(); NV];
                for (v, x) in qv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(qrow.add(16 * v));
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let kb = _mm512_set1_ps(*krows[r].add(dd));
                    for v in 0..NV {
                        a[v] = _mm512_fmadd_ps(kb, qv[v], a[v]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (v, x) in a.iter().enumerate() {
                    _mm512_storeu_ps(st.add((j + r) * bq + i0 + 16 * v), *x);
                }
            }
        }
    }

    /// # Safety
    /// See `pv_body`.
    #[target_feature(enable = "avx512f")]
    unsafe fn pv512<R: Rows>(t: *mut Tile, v: R, ncols: i64) {
        // SAFETY: as documented; accesses stay inside `acc[nrows][dv]`, the rows of `v`,
        // `st[ncols][bq]` and `alpha[bq]`.
        unsafe {
            let tt = &*t;
            let dv = tt.dv as usize;
            if !dv.is_multiple_of(16) {
                return pv_body(t, v, ncols);
            }
            let (bq, nrows) = (tt.bq as usize, tt.nrows as usize);
            let ncols = ncols as usize;
            let mut c0 = 0;
            while c0 < dv {
                let a = PvArgs {
                    st: tt.st,
                    bq,
                    v,
                    dv,
                    acc: tt.acc,
                    alpha: tt.alpha,
                    ncols,
                    c0,
                    // the first pass prefetches the next block's rows, one per key
                    pf: if c0 == 0 { tt.bkv as usize } else { 0 },
                };
                let nv = ((dv - c0) / 16).min(4);
                match nv {
                    4 => pv_cols::<4, _>(&a, nrows),
                    3 => pv_cols::<3, _>(&a, nrows),
                    2 => pv_cols::<2, _>(&a, nrows),
                    _ => pv_cols::<1, _>(&a, nrows),
                }
                c0 += 16 * nv;
            }
        }
    }

    struct PvArgs<R> {
        st: *const f32,
        bq: usize,
        v: R,
        dv: usize,
        acc: *mut f32,
        alpha: *const f32,
        ncols: usize,
        c0: usize,
        /// Rows of the next block that the first row group prefetches, one per key.
        pf: usize,
    }

    /// # Safety
    /// As `pv512`: the pointers of `a` are valid for `nrows` rows, its `ncols` keys and
    /// columns `c0..c0 + 16·NV` inside `dv`; prefetched rows as `Rows::prefetch_row`
    /// allows.
    #[target_feature(enable = "avx512f")]
    unsafe fn pv_cols<const NV: usize, R: Rows>(a: &PvArgs<R>, nrows: usize) {
        // SAFETY: bounds as in `pv512`.
        unsafe {
            // the rows the first group's key loop does not reach (a short block)
            for j in a.ncols.min(a.pf)..a.pf {
                a.v.prefetch_row(a.ncols + j, a.dv);
            }
            let rest = PvArgs { pf: 0, ..*a };
            let mut i = 0;
            while i + 6 <= nrows {
                pv_block::<6, NV, _>(if i == 0 { a } else { &rest }, i);
                i += 6;
            }
            let b = if i == 0 { a } else { &rest };
            match nrows - i {
                5 => pv_block::<5, NV, _>(b, i),
                4 => pv_block::<4, NV, _>(b, i),
                3 => pv_block::<3, NV, _>(b, i),
                2 => pv_block::<2, NV, _>(b, i),
                1 => pv_block::<1, NV, _>(b, i),
                _ => {}
            }
        }
    }

    /// # Safety
    /// As `pv_cols`; rows `i..i + RB` lie below `nrows`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pv_block<const RB: usize, const NV: usize, R: Rows>(a: &PvArgs<R>, i: usize) {
        // SAFETY: rows i..i+RB < nrows, columns c0..c0+16·NV <= dv, keys < ncols.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; RB];
            for (r, row) in acc.iter_mut().enumerate() {
                let al = _mm512_set1_ps(*a.alpha.add(i + r));
                let p = a.acc.add((i + r) * a.dv + a.c0);
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_mul_ps(_mm512_loadu_ps(p.add(16 * v)), al);
                }
            }
            for j in 0..a.ncols {
                if j < a.pf {
                    a.v.prefetch_row(a.ncols + j, a.dv);
                }
                let vrow = a.v.row(j).add(a.c0);
                let mut vv = [_mm512_setzero_ps(); NV];
                for (v, x) in vv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(vrow.add(16 * v));
                }
                let prow = a.st.add(j * a.bq + i);
                for (r, row) in acc.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*prow.add(r));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(p, vv[v], row[v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let p = a.acc.add((i + r) * a.dv + a.c0);
                for (v, x) in row.iter().enumerate() {
                    _mm512_storeu_ps(p.add(16 * v), *x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_is_close_and_exact_at_the_ends() {
        let mut x = -90.0f32;
        while x < 5.0 {
            let (a, e) = (exp_approx(x), x.exp());
            if x > -87.0 {
                assert!(((a - e) / e).abs() < 4e-7, "exp({x}) = {a}, want {e}");
            }
            x += 0.0137;
        }
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }
}
