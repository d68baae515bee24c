//! Shared helpers of the decoding tests (CPU and GPU): KV-cache cases (contiguous, or
//! paged with a shuffled table and garbage in unused pages / past each sequence), runs
//! through `Bound::forward_with_cache`, tolerant comparison, the examples.
#![allow(dead_code)]

use attnc::{Backend, BindOptions, Captures, Compiled, DType, KvCache, Shape, Tensor};
use attnc_compiler::decode::{CacheLayout, DecodeShape};

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn normal(&mut self) -> f32 {
        // sum of uniforms: good enough for test data
        (0..4)
            .map(|_| (self.next() % 10_000) as f32 / 10_000.0)
            .sum::<f32>()
            - 2.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// A cache test case: the logical K/V of each sequence, laid out contiguously or paged.
pub struct Case {
    pub dtype: DType,
    pub shape: DecodeShape,
    pub seq_lens: Vec<i32>,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub page_table: Option<Tensor>,
    /// logical `[B, Hkv, cap, D]` / `Dv` (what the sequences hold)
    pub logical_k: Vec<f32>,
    pub logical_v: Vec<f32>,
}

impl Case {
    pub fn cache(&self) -> KvCache<'_> {
        let seq_lens = Box::leak(Box::new(Tensor::from_i32(
            vec![self.seq_lens.len()],
            &self.seq_lens,
        )));
        match &self.page_table {
            None => KvCache::Contiguous {
                k: &self.k,
                v: &self.v,
                seq_lens,
            },
            Some(pt) => KvCache::Paged {
                k_cache: &self.k,
                v_cache: &self.v,
                page_table: pt,
                seq_lens,
            },
        }
    }
    pub fn bind_shape(&self) -> Shape {
        let s = self.shape;
        Shape {
            b: s.b,
            hq: s.hq,
            hkv: s.hkv,
            lq: s.lq,
            lkv: s.capacity(),
            d: s.d,
            dv: s.dv,
        }
    }
}

/// Builds a case; `page` = None for contiguous. Pages are shuffled, spare pages hold
/// garbage that must never be read, and every slot past a sequence's length holds NaN
/// (either layout): a kernel that reads it must not let it reach O.
#[allow(clippy::too_many_arguments)]
pub fn case(
    rng: &mut Rng,
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    d: usize,
    cap: usize,
    seq_lens: Vec<i32>,
    page: Option<usize>,
) -> Case {
    case_as(DType::F32, rng, b, hq, hkv, lq, d, cap, seq_lens, page)
}

/// [`case`] with q and the caches in `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn case_as(
    dtype: DType,
    rng: &mut Rng,
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    d: usize,
    cap: usize,
    seq_lens: Vec<i32>,
    page: Option<usize>,
) -> Case {
    let dv = d;
    let logical_k = rng.vec(b * hkv * cap * d);
    let logical_v = rng.vec(b * hkv * cap * dv);
    let q = Tensor::from_f32_as(vec![b, hq, lq, d], &rng.vec(b * hq * lq * d), dtype);
    let (layout, k, v, page_table) = match page {
        None => (
            CacheLayout::Contiguous { lkv_max: cap },
            Tensor::from_f32_as(vec![b, hkv, cap, d], &logical_k, dtype),
            Tensor::from_f32_as(vec![b, hkv, cap, dv], &logical_v, dtype),
            None,
        ),
        Some(ps) => {
            let max_pages = cap.div_ceil(ps);
            let num_pages = b * max_pages + 3;
            // a random permutation of physical pages
            let mut perm: Vec<usize> = (0..num_pages).collect();
            for i in (1..num_pages).rev() {
                perm.swap(i, rng.below(i + 1));
            }
            let mut kc = vec![f32::NAN; num_pages * ps * hkv * d];
            let mut vc = vec![f32::NAN; num_pages * ps * hkv * dv];
            let mut table = vec![0i32; b * max_pages];
            for bi in 0..b {
                for p in 0..max_pages {
                    let phys = perm[bi * max_pages + p];
                    table[bi * max_pages + p] = phys as i32;
                    for slot in 0..ps {
                        let pos = p * ps + slot;
                        // NaN past the sequence's length too (never to reach O)
                        if pos >= cap || pos >= seq_lens[bi].max(0) as usize {
                            continue;
                        }
                        for h in 0..hkv {
                            let src = ((bi * hkv + h) * cap + pos) * d;
                            let dst = ((phys * ps + slot) * hkv + h) * d;
                            kc[dst..dst + d].copy_from_slice(&logical_k[src..src + d]);
                            vc[dst..dst + dv].copy_from_slice(&logical_v[src..src + dv]);
                        }
                    }
                }
            }
            // unused table entries point at a garbage page or out of range
            for (bi, len) in seq_lens.iter().enumerate() {
                let used = (*len as usize).div_ceil(ps);
                for p in used..max_pages {
                    table[bi * max_pages + p] = if p % 2 == 0 { -5 } else { 1 << 20 };
                }
            }
            (
                CacheLayout::Paged {
                    num_pages,
                    page_size: ps,
                    max_pages,
                },
                Tensor::from_f32_as(vec![num_pages, ps, hkv, d], &kc, dtype),
                Tensor::from_f32_as(vec![num_pages, ps, hkv, dv], &vc, dtype),
                Some(Tensor::from_i32(vec![b, max_pages], &table)),
            )
        }
    };
    // NaN beyond each sequence's length in the contiguous layout: never read
    let (k, v) = match layout {
        CacheLayout::Contiguous { .. } => {
            let mut kk = logical_k.clone();
            let mut vv = logical_v.clone();
            for (bi, len) in seq_lens.iter().enumerate() {
                for h in 0..hkv {
                    for pos in *len as usize..cap {
                        let at = ((bi * hkv + h) * cap + pos) * d;
                        kk[at..at + d].fill(f32::NAN);
                        vv[at..at + dv].fill(f32::NAN);
                    }
                }
            }
            (
                Tensor::from_f32_as(vec![b, hkv, cap, d], &kk, dtype),
                Tensor::from_f32_as(vec![b, hkv, cap, dv], &vv, dtype),
            )
        }
        _ => (k, v),
    };
    Case {
        dtype,
        shape: DecodeShape {
            b,
            hq,
            hkv,
            lq,
            d,
            dv,
            layout,
        },
        seq_lens,
        q,
        k,
        v,
        page_table,
        logical_k,
        logical_v,
    }
}

pub fn run(
    compiled: &Compiled,
    name: &str,
    c: &Case,
    backend: Backend,
    threads: usize,
    captures: &Captures,
    checked: bool,
) -> attnc::Result<attnc::Output> {
    let variant = compiled.attention(name)?;
    let mut opts = BindOptions::new(backend, c.bind_shape(), c.dtype);
    opts.threads = threads;
    opts.checked = checked;
    let mut bound = variant.bind(opts)?;
    bound.forward_with_cache(&c.q, &c.cache(), captures)
}

/// [`close`] on both outputs of a call: `o` and `lse`, named `"{what} o"` / `"{what} lse"`.
pub fn close_o_lse(what: &str, got: &attnc::Output, want: &attnc::Output, tol: f32) {
    close(&format!("{what} o"), &got.o.to_f32(), &want.o.to_f32(), tol);
    close(
        &format!("{what} lse"),
        &got.lse.to_f32(),
        &want.lse.to_f32(),
        tol,
    );
}

/// |a - b| <= tol, -inf matching exactly, no NaN.
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * (1.0 + w.abs())
        };
        assert!(ok, "{what}[{i}]: got {g}, expected {w}");
    }
}

pub fn example(name: &str) -> Compiled {
    let path = format!("{}/{name}.attn", examples_dir());
    Compiled::from_file(path.as_ref()).unwrap()
}

pub fn examples() -> Vec<String> {
    let dir = examples_dir();
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "attn").then(|| p.file_stem().unwrap().to_string_lossy().into())
        })
        .collect();
    v.sort();
    v
}

/// The examples folder: the checkout's, or `examples/` under the current directory (a
/// test binary run on another machine from a checkout's root).
pub fn examples_dir() -> String {
    let built = format!("{}/../examples", env!("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&built).is_dir() {
        built
    } else {
        "examples".to_string()
    }
}
