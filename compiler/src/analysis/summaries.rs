//! Min/max summaries of captured tensors for the block-sparsity analysis.
//!
//! In: a [`BoundTensor`] (host data converted to i32/f32). Out: [`TensorSummary`], which
//! answers "what values can `t[i0, i1, ...]` take for indices in these ranges?" in
//! O(1) per contiguous row-major run.
//!
//! Built in one O(N) pass: the min and max of every chunk of [`CHUNK`] consecutive
//! elements, then a sparse table over the chunks (O(N/CHUNK · log) entries). A query
//! reads whole chunks from the table and the ragged ends from the data itself.
//! Reads that may fall outside the tensor are answered with the range of the whole
//! tensor joined with 0 (the fast kernels never read outside a tensor).

use crate::interp::{BoundTensor, TensorData};

/// Elements per summarized chunk.
pub const CHUNK: usize = 16;
/// A query decomposing into more contiguous runs than this uses the global range.
const MAX_RUNS: u64 = 4096;

/// Value ranges of one captured tensor.
#[derive(Clone, Debug)]
pub struct TensorSummary<'a> {
    dims: Vec<usize>,
    data: &'a TensorData,
    /// `table[k][c]` = (min, max) over chunks `c .. c + 2^k`.
    table: Vec<Vec<(f64, f64)>>,
    global: Option<(f64, f64)>,
    nan: bool,
}

fn value(data: &TensorData, i: usize) -> f64 {
    match data {
        TensorData::I32(v) => v[i] as f64,
        TensorData::F32(v) => v[i] as f64,
    }
}

impl<'a> TensorSummary<'a> {
    /// Summarizes `t`. `t.data.len()` must equal the product of `t.dims` (checked by the
    /// caller); a shorter buffer is treated as absent data (every read unknown).
    pub fn new(t: &'a BoundTensor) -> Self {
        let n = t.data.len();
        let expected: Option<usize> = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let usable = expected == Some(n);
        let mut nan = false;
        let nchunks = if usable { n.div_ceil(CHUNK) } else { 0 };
        let mut base = Vec::with_capacity(nchunks);
        for c in 0..nchunks {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for i in c * CHUNK..((c + 1) * CHUNK).min(n) {
                let v = value(&t.data, i);
                if v.is_nan() {
                    nan = true;
                } else {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
            base.push((lo, hi));
        }
        let mut table = vec![base];
        let mut width = 1;
        while width * 2 <= nchunks {
            let prev = table.last().unwrap();
            let next: Vec<(f64, f64)> = (0..=nchunks - width * 2)
                .map(|c| {
                    let (a, b) = (prev[c], prev[c + width]);
                    (a.0.min(b.0), a.1.max(b.1))
                })
                .collect();
            table.push(next);
            width *= 2;
        }
        let global = if nchunks > 0 {
            let all = Self::table_query(&table, 0, nchunks - 1);
            (all.0 <= all.1).then_some(all)
        } else {
            None
        };
        TensorSummary {
            dims: t.dims.clone(),
            data: &t.data,
            table,
            global,
            nan: nan || !usable,
        }
    }

    /// Whether the tensor holds a NaN (or its data is unusable).
    pub fn has_nan(&self) -> bool {
        self.nan
    }

    /// Bytes held by the summary (not counting the tensor).
    pub fn heap_bytes(&self) -> usize {
        self.table.iter().map(|l| l.len() * 16).sum()
    }

    fn table_query(table: &[Vec<(f64, f64)>], c0: usize, c1: usize) -> (f64, f64) {
        let len = c1 - c0 + 1;
        let k = (usize::BITS - 1 - len.leading_zeros()) as usize;
        let (a, b) = (table[k][c0], table[k][c1 + 1 - (1 << k)]);
        (a.0.min(b.0), a.1.max(b.1))
    }

    /// (min, max) of the non-NaN values at flat indices `lo..=hi`.
    fn flat_range(&self, lo: usize, hi: usize) -> (f64, f64) {
        let (c0, c1) = (lo / CHUNK, hi / CHUNK);
        let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut scan = |a: usize, b: usize| {
            for i in a..=b {
                let v = value(self.data, i);
                if !v.is_nan() {
                    mn = mn.min(v);
                    mx = mx.max(v);
                }
            }
        };
        if c0 == c1 {
            scan(lo, hi);
            return (mn, mx);
        }
        let first_full = if lo.is_multiple_of(CHUNK) { c0 } else { c0 + 1 };
        let last_full = if (hi + 1).is_multiple_of(CHUNK) || hi + 1 == self.data.len() {
            c1
        } else {
            c1 - 1
        };
        if !lo.is_multiple_of(CHUNK) {
            scan(lo, (c0 + 1) * CHUNK - 1);
        }
        if last_full != c1 {
            scan(c1 * CHUNK, hi);
        }
        if first_full <= last_full {
            let (a, b) = Self::table_query(&self.table, first_full, last_full);
            mn = mn.min(a);
            mx = mx.max(b);
        }
        (mn, mx)
    }

    /// The range of `t[idx]` for every index in `idx[k].0..=idx[k].1`, as (min, max) of
    /// the non-NaN values (possibly min > max when only NaNs are read). `None` when
    /// nothing is known (no data).
    pub fn range(&self, idx: &[(i64, i64)]) -> Option<(f64, f64)> {
        let global = self.global.or(if self.nan {
            Some((f64::INFINITY, f64::NEG_INFINITY))
        } else {
            None
        });
        if idx.len() != self.dims.len() || self.table[0].is_empty() {
            return None;
        }
        let in_bounds = idx
            .iter()
            .zip(&self.dims)
            .all(|(&(lo, hi), &d)| lo >= 0 && hi < d as i64 && lo <= hi);
        if !in_bounds {
            let (lo, hi) = global?;
            return Some((lo.min(0.0), hi.max(0.0)));
        }
        // Dims after `p` are fully covered, so each combination of indices of dims
        // before `p` names one contiguous run.
        let r = idx.len();
        let mut p = r - 1;
        while p > 0 && idx[p].0 == 0 && idx[p].1 == self.dims[p] as i64 - 1 {
            p -= 1;
        }
        let mut runs: u64 = 1;
        for &(lo, hi) in &idx[..p] {
            runs = runs.saturating_mul((hi - lo + 1) as u64);
        }
        if runs > MAX_RUNS {
            return global;
        }
        let inner: usize = self.dims[p + 1..].iter().product();
        if p > 8 {
            return global;
        }
        let mut buf = [0i64; 8];
        for (k, x) in idx[..p].iter().enumerate() {
            buf[k] = x.0;
        }
        let cur = &mut buf[..p];
        let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
        loop {
            let mut flat = 0usize;
            for (k, &c) in cur.iter().enumerate() {
                flat = flat * self.dims[k] + c as usize;
            }
            let lo = (flat * self.dims[p] + idx[p].0 as usize) * inner;
            let hi = (flat * self.dims[p] + idx[p].1 as usize + 1) * inner - 1;
            let (a, b) = self.flat_range(lo, hi);
            mn = mn.min(a);
            mx = mx.max(b);
            // next combination
            let mut k = cur.len();
            loop {
                if k == 0 {
                    return Some((mn, mx));
                }
                k -= 1;
                if cur[k] < idx[k].1 {
                    cur[k] += 1;
                    break;
                }
                cur[k] = idx[k].0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_scan() {
        let dims = vec![3, 37];
        let data: Vec<i32> = (0..111).map(|i| ((i * 7919) % 101) - 50).collect();
        let t = BoundTensor {
            dims: dims.clone(),
            data: TensorData::I32(data.clone()),
        };
        let s = TensorSummary::new(&t);
        for r0 in 0..3i64 {
            for r1 in r0..3 {
                for c0 in 0..37i64 {
                    for c1 in c0..37 {
                        let got = s.range(&[(r0, r1), (c0, c1)]).unwrap();
                        let mut mn = i32::MAX;
                        let mut mx = i32::MIN;
                        for r in r0..=r1 {
                            for c in c0..=c1 {
                                let v = data[(r * 37 + c) as usize];
                                mn = mn.min(v);
                                mx = mx.max(v);
                            }
                        }
                        assert_eq!(got, (mn as f64, mx as f64), "{r0}..{r1} x {c0}..{c1}");
                    }
                }
            }
        }
        let oob = s.range(&[(0, 0), (30, 40)]).unwrap();
        assert!(oob.0 <= -50.0 && oob.1 >= 50.0);
    }
}
