//! Register-tiled small matrix products for the CPU backward's tiles: `C (+)= A·B` with
//! `A` read through two strides (so `A`, `Aᵀ` and the tiles' planes need no copy) and
//! `B`, `C` row-major.
//!
//! In: an [`Mm`] (sizes, strides, overwrite or accumulate), the build to use (`simd`:
//! 2 AVX-512F, 1 AVX2+FMA, 0 portable, chosen once per kernel by runtime feature
//! detection) and the three slices. Out: `C`.
//!
//! Blocking (the forward's `qk`/`pv` micro-kernels, generalized): a block of `MR` rows
//! of `C` by one panel of columns stays in registers for the whole `t` loop; per `t`,
//! the panel's `B` row is loaded once as vectors and each row's `A` element is
//! broadcast and multiply-added into it, so every loaded vector serves `MR` rows. AVX-512:
//! 6 rows x 64 columns (24 zmm accumulators; the last vector of a panel narrower than 64
//! is masked). AVX2+FMA and portable: the same loops in plain Rust, 6 rows x 16 columns,
//! auto-vectorized per target; columns past the last full 16 are done one by one.
//!
//! Order of operations: every element is `c = a_t·b_t + c` over `t` ascending (one FMA
//! each in the AVX-512 and AVX2 builds, multiply then add in the portable one), starting
//! from 0 or from `C`, in every block path: a result depends only on the inputs and the
//! build, never on where a row or column falls in a block.

/// One product `C[r][c] (+)= Σ_t A[r·ars + t·ats] · B[t·brs + c]`, `r < m`, `c < n`,
/// `t < k`; `C[r][c]` is `c[r·crs + c]`.
#[derive(Clone, Copy, Debug)]
pub struct Mm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `A`'s row and `t` strides.
    pub ars: usize,
    pub ats: usize,
    /// `B`'s and `C`'s row strides.
    pub brs: usize,
    pub crs: usize,
    /// Add to `C` (else overwrite it).
    pub accumulate: bool,
}

/// Computes `p` (module docs) with the build `simd` selects.
///
/// # Panics
/// When a slice is shorter than `p` reads or writes (a bug of the caller).
pub fn mm(simd: u8, p: Mm, a: &[f32], b: &[f32], c: &mut [f32]) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    assert!(
        c.len() >= (p.m - 1) * p.crs + p.n,
        "C too short for {p:?}: {}",
        c.len()
    );
    if p.k == 0 {
        if !p.accumulate {
            for r in 0..p.m {
                c[r * p.crs..][..p.n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        a.len() > (p.m - 1) * p.ars + (p.k - 1) * p.ats,
        "A too short for {p:?}: {}",
        a.len()
    );
    assert!(
        b.len() >= (p.k - 1) * p.brs + p.n,
        "B too short for {p:?}: {}",
        b.len()
    );
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: 2 only when the CPU has AVX-512F; the asserts above bound every
        // element `p` reads and writes inside `a`, `b` and `c`.
        2 => return unsafe { x86::mm512(&p, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) },
        // SAFETY: 1 only when the CPU has AVX2 and FMA.
        1 => return unsafe { x86::mm_avx2(&p, a, b, c) },
        _ => {}
    }
    let _ = simd;
    mm_rust::<false>(&p, a, b, c)
}

/// `a·b + c`, fused when `FMA` (only in builds for CPUs with FMA: elsewhere `mul_add`
/// is a slow library call).
#[inline(always)]
fn ma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Rows per block and columns per panel of the plain-Rust build.
const MR: usize = 6;
const NW: usize = 16;

#[inline(always)]
fn mm_rust<const FMA: bool>(p: &Mm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let mut c0 = 0;
    while c0 + NW <= p.n {
        let mut r0 = 0;
        while r0 + MR <= p.m {
            block_rust::<FMA, MR>(p, a, b, c, r0, c0);
            r0 += MR;
        }
        while r0 < p.m {
            block_rust::<FMA, 1>(p, a, b, c, r0, c0);
            r0 += 1;
        }
        c0 += NW;
    }
    for r in 0..p.m {
        for col in c0..p.n {
            let e = r * p.crs + col;
            let mut x = if p.accumulate { c[e] } else { 0.0 };
            for t in 0..p.k {
                x = ma::<FMA>(a[r * p.ars + t * p.ats], b[t * p.brs + col], x);
            }
            c[e] = x;
        }
    }
}

#[inline(always)]
fn block_rust<const FMA: bool, const R: usize>(
    p: &Mm,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    r0: usize,
    c0: usize,
) {
    let mut acc = [[0f32; NW]; R];
    if p.accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&c[(r0 + r) * p.crs + c0..][..NW]);
        }
    }
    for t in 0..p.k {
        let bv: &[f32; NW] = b[t * p.brs + c0..][..NW].try_into().expect("NW wide");
        for (r, row) in acc.iter_mut().enumerate() {
            let x = a[(r0 + r) * p.ars + t * p.ats];
            for (y, bb) in row.iter_mut().zip(bv) {
                *y = ma::<FMA>(x, *bb, *y);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        c[(r0 + r) * p.crs + c0..][..NW].copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2+FMA build of the plain-Rust body and the AVX-512F intrinsics.
    use super::Mm;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mm_avx2(p: &Mm, a: &[f32], b: &[f32], c: &mut [f32]) {
        super::mm_rust::<true>(p, a, b, c)
    }

    /// # Safety
    /// The CPU has AVX-512F; `a`, `b`, `c` hold every element `p` reads or writes
    /// (`mm`'s asserts); `p.m, p.n, p.k > 0`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn mm512(p: &Mm, a: *const f32, b: *const f32, c: *mut f32) {
        let mut c0 = 0;
        while c0 < p.n {
            let w = (p.n - c0).min(64);
            let nv = w.div_ceil(16);
            let rem = w - 16 * (nv - 1);
            let mask: __mmask16 = if rem == 16 { 0xffff } else { (1u16 << rem) - 1 };
            // SAFETY: columns c0..c0 + w are inside `p.n`; the last vector is masked to
            // them (masked-off lanes are neither read nor written).
            unsafe {
                match nv {
                    4 => rows::<4>(p, a, b, c, c0, mask),
                    3 => rows::<3>(p, a, b, c, c0, mask),
                    2 => rows::<2>(p, a, b, c, c0, mask),
                    _ => rows::<1>(p, a, b, c, c0, mask),
                }
            }
            c0 += 64;
        }
    }

    /// Every row block of one panel of `NV` vectors at column `c0`.
    ///
    /// # Safety
    /// As `mm512`; columns `c0..c0 + 16·NV`, the last vector masked by `mask`, lie
    /// inside `p.n`.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const NV: usize>(
        p: &Mm,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        c0: usize,
        mask: __mmask16,
    ) {
        // SAFETY: row blocks r0..r0 + R stay below `p.m`.
        unsafe {
            let mut r0 = 0;
            while r0 + 6 <= p.m {
                block::<6, NV>(p, a, b, c, r0, c0, mask);
                r0 += 6;
            }
            match p.m - r0 {
                5 => block::<5, NV>(p, a, b, c, r0, c0, mask),
                4 => block::<4, NV>(p, a, b, c, r0, c0, mask),
                3 => block::<3, NV>(p, a, b, c, r0, c0, mask),
                2 => block::<2, NV>(p, a, b, c, r0, c0, mask),
                1 => block::<1, NV>(p, a, b, c, r0, c0, mask),
                _ => {}
            }
        }
    }

    /// `R` rows by `NV` vectors of `C` in registers over the whole `t` loop.
    ///
    /// # Safety
    /// As `rows`; rows `r0..r0 + R` lie below `p.m`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const NV: usize>(
        p: &Mm,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        r0: usize,
        c0: usize,
        mask: __mmask16,
    ) {
        // SAFETY: rows r0..r0 + R < p.m, `t` < p.k, and the columns c0..c0 + 16·NV with
        // the last vector masked to `p.n`: every address is inside the slices `mm`
        // checked.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; R];
            if p.accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    let cp = c.add((r0 + r) * p.crs + c0);
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = if v + 1 == NV {
                            _mm512_maskz_loadu_ps(mask, cp.add(16 * v))
                        } else {
                            _mm512_loadu_ps(cp.add(16 * v))
                        };
                    }
                }
            }
            for t in 0..p.k {
                let bp = b.add(t * p.brs + c0);
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if v + 1 == NV {
                        _mm512_maskz_loadu_ps(mask, bp.add(16 * v))
                    } else {
                        _mm512_loadu_ps(bp.add(16 * v))
                    };
                }
                let ap = a.add(r0 * p.ars + t * p.ats);
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap.add(r * p.ars));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(x, bv[v], row[v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let cp = c.add((r0 + r) * p.crs + c0);
                for (v, x) in row.iter().enumerate() {
                    if v + 1 == NV {
                        _mm512_mask_storeu_ps(cp.add(16 * v), mask, *x);
                    } else {
                        _mm512_storeu_ps(cp.add(16 * v), *x);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build against an f64 loop, on sizes around the block edges, with strided
    /// and transposed `A`.
    #[test]
    fn every_build_matches_a_plain_product() {
        let mut builds = vec![0u8];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                builds.push(1);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                builds.push(2);
            }
        }
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 17, 3),
            (6, 16, 64),
            (7, 63, 5),
            (13, 64, 9),
            (64, 64, 64),
            (11, 130, 7),
            (3, 15, 0),
        ] {
            for trans in [false, true] {
                for accumulate in [false, true] {
                    let (ars, ats) = if trans { (1, m + 2) } else { (k + 1, 1) };
                    let alen = if trans {
                        (m + 2) * k.max(1)
                    } else {
                        (k + 1) * m
                    };
                    let a: Vec<f32> = (0..alen).map(|_| rnd()).collect();
                    let brs = n + 3;
                    let b: Vec<f32> = (0..brs * k.max(1)).map(|_| rnd()).collect();
                    let crs = n + 1;
                    let c0: Vec<f32> = (0..crs * m).map(|_| rnd()).collect();
                    let p = Mm {
                        m,
                        n,
                        k,
                        ars,
                        ats,
                        brs,
                        crs,
                        accumulate,
                    };
                    for &s in &builds {
                        let mut c = c0.clone();
                        mm(s, p, &a, &b, &mut c);
                        for r in 0..m {
                            for col in 0..crs {
                                let e = r * crs + col;
                                if col >= n {
                                    assert_eq!(c[e], c0[e], "padding written");
                                    continue;
                                }
                                let mut want = if accumulate { c0[e] as f64 } else { 0.0 };
                                for t in 0..k {
                                    want += a[r * ars + t * ats] as f64 * b[t * brs + col] as f64;
                                }
                                assert!(
                                    (c[e] as f64 - want).abs() < 1e-5,
                                    "build {s} {p:?} at {r},{col}: {} vs {want}",
                                    c[e]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
