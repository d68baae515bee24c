//! `attnc run --kv-cache` and `attnc bench --decode`: attention of new rows against a
//! KV cache (`Bound::forward_with_cache`).
//!
//! In (run): a safetensors file with `q`, `k_cache`, `v_cache`, `seq_lens` (+
//! `page_table` for a paged cache) and captures by name. Out: `o`, `lse` in a
//! safetensors file and a summary line.
//! In (bench): the .attn file, cache layouts and page sizes, shapes (default: issue 12's
//! list, D 128). Out: one line per (shape, layout): time per call and GB/s of K/V read
//! (the positions the mask can reach, all kv heads, K and V, in the input dtype).

use super::parse_params;
use attnc::io::read_safetensors;
use attnc::{BindOptions, Compiled, DType, DecodeTuning, Error, KvCache, Shape, Tensor, synth};
use clap::ValueEnum;
use std::path::Path;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum KvCacheArg {
    Contiguous,
    Paged,
}

impl KvCacheArg {
    /// The layout's name as the flag spells it (`contiguous`, `paged`).
    fn name(self) -> &'static str {
        match self {
            KvCacheArg::Contiguous => "contiguous",
            KvCacheArg::Paged => "paged",
        }
    }
}

fn usage(m: String) -> Error {
    Error::Usage(m)
}

/// `attnc run --kv-cache LAYOUT`.
pub(crate) fn run(a: &super::run::RunArgs, layout: KvCacheArg) -> Result<(), Error> {
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let mut tensors = read_safetensors(&a.inputs)?;
    let mut take = |name: &str| {
        tensors.remove(name).ok_or_else(|| {
            usage(format!(
                "{} has no tensor `{name}` (a {} cache needs q, k_cache, v_cache, seq_lens{})",
                a.inputs.display(),
                layout.name(),
                if layout == KvCacheArg::Paged {
                    ", page_table"
                } else {
                    ""
                }
            ))
        })
    };
    let (q, k, v, seq_lens) = (
        take("q")?,
        take("k_cache")?,
        take("v_cache")?,
        take("seq_lens")?,
    );
    let page_table = match layout {
        KvCacheArg::Paged => Some(take("page_table")?),
        KvCacheArg::Contiguous => None,
    };
    for (name, t, rank) in [("q", &q, 4), ("k_cache", &k, 4), ("v_cache", &v, 4)]
        .into_iter()
        .chain(page_table.as_ref().map(|t| ("page_table", t, 2)))
    {
        if t.shape().len() != rank {
            return Err(Error::InputShape {
                which: name.into(),
                expected: format!("rank {rank}"),
                got: t.shape().to_vec(),
            });
        }
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (hkv, lkv) = match &page_table {
        None => (ks[1], ks[2]),
        // (a page table with no rows may declare any number of pages per row)
        Some(pt) => (
            ks[2],
            pt.shape()[1]
                .checked_mul(ks[1])
                .ok_or_else(|| Error::InputShape {
                    which: "page_table".into(),
                    expected: format!(
                        "at most {} pages per sequence",
                        i32::MAX as usize / ks[1].max(1)
                    ),
                    got: pt.shape().to_vec(),
                })?,
        ),
    };
    let shape = Shape {
        b: qs[0],
        hq: qs[1],
        hkv,
        lq: qs[2],
        lkv,
        d: qs[3],
        dv: vs[3],
    };
    let (mut bound, captures) = super::run::bind_shape(a, &variant, shape, q.dtype(), tensors)?;
    let cache = KvCache::new(&k, &v, page_table.as_ref(), &seq_lens);
    let t0 = std::time::Instant::now();
    let out = bound.forward_with_cache(&q, &cache, &captures)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let what = format!(
        "{} against a {} cache, {shape}",
        variant.name(),
        layout.name()
    );
    super::run::write_result(a, out, &what, q.dtype(), ms)
}

/// One shape of `bench --decode`: B, Hq, Hkv, Lq, Lkv.
pub(crate) type DecodeShapeArg = (usize, usize, usize, usize, usize);

/// Issue 12's benchmark shapes (D = 128).
pub(crate) const ISSUE_SHAPES: [DecodeShapeArg; 5] = [
    (8, 32, 8, 1, 32768),
    (8, 32, 8, 4, 32768),
    (8, 32, 8, 16, 32768),
    (64, 32, 8, 1, 8192),
    (1, 32, 8, 1, 131072),
];

pub(crate) fn parse_shape(s: &str) -> Result<DecodeShapeArg, String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| format!("`{x}`: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [b, hq, hkv, lq, lkv] => Ok((b, hq, hkv, lq, lkv)),
        _ => Err("expected B,HQ,HKV,LQ,LKV".into()),
    }
}

pub(crate) struct BenchArgs<'a> {
    pub file: &'a Path,
    pub attention: Option<&'a str>,
    pub backend: attnc::Backend,
    pub shapes: Vec<DecodeShapeArg>,
    pub layouts: Vec<KvCacheArg>,
    pub page_sizes: Vec<usize>,
    pub d: usize,
    pub dtype: &'a str,
    pub threads: usize,
    pub iters: usize,
    pub params: &'a [String],
}

/// The decode tunings `attnc bench --decode` times, each with its label (see `bench`),
/// from the environment.
fn bench_tunings(backend: attnc::Backend) -> Result<Vec<(String, DecodeTuning)>, Error> {
    bench_tunings_from(backend, DecodeTuning::from_env(), |k| std::env::var(k).ok())
}

/// [`bench_tunings`] with `get` for the variables (`ATTNC_DECODE_BENCH_COMBINE`,
/// `_SPLITS`, `_COPY`; CUDA only, ignored elsewhere) and `base` the tuning they vary. An
/// entry of a list that names no mode, count or copy variant is an error naming the
/// variable and the entry (it used to be dropped: a list of only such entries timed
/// nothing, or the default under another label).
fn bench_tunings_from(
    backend: attnc::Backend,
    base: DecodeTuning,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, DecodeTuning)>, Error> {
    let mut out = vec![(String::new(), base)];
    if backend != attnc::Backend::Cuda {
        return Ok(out);
    }
    // the entries of a comma-separated variable (none when unset or blank)
    let entries = |name: &str| -> Vec<String> {
        get(name)
            .map(|v| {
                v.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let bad =
        |name: &str, entry: &str, want: &str| usage(format!("{name}: `{entry}` is not {want}"));
    // (label, fused, serial, chain): `chained` = the default launches; `both` and `all`
    // stand for the first lists below
    let named = [
        ("separate", false, true, false),
        ("overlapped", false, false, false),
        ("chained", false, false, true),
        ("fused", true, false, false),
        ("fused-chained", true, false, true),
    ];
    let combine = entries("ATTNC_DECODE_BENCH_COMBINE");
    if !combine.is_empty() {
        let mut modes = Vec::new();
        for x in &combine {
            match x.as_str() {
                "both" => modes.extend([named[0], named[3]]),
                "all" => modes.extend(named),
                _ => modes.push(*named.iter().find(|m| m.0 == x).ok_or_else(|| {
                    bad(
                        "ATTNC_DECODE_BENCH_COMBINE",
                        x,
                        "both, all, separate, overlapped, chained, fused or fused-chained",
                    )
                })?),
            }
        }
        out = modes
            .into_iter()
            .map(|(label, f, serial, chain)| {
                let t = DecodeTuning {
                    fused_combine: f,
                    serial_combine: serial,
                    serial_decode: !chain,
                    ..base
                };
                (format!(" {label}"), t)
            })
            .collect();
    }
    let splits = entries("ATTNC_DECODE_BENCH_SPLITS");
    if !splits.is_empty() {
        let counts = splits
            .iter()
            .map(|x| {
                x.parse::<usize>().map_err(|_| {
                    bad(
                        "ATTNC_DECODE_BENCH_SPLITS",
                        x,
                        "a split count (0 = the runtime's choice)",
                    )
                })
            })
            .collect::<Result<Vec<usize>, Error>>()?;
        out = out
            .iter()
            .flat_map(|(label, t)| {
                counts.iter().map(move |&n| {
                    let splits = (n > 0).then_some(n);
                    let label = format!(
                        "{label} splits {}",
                        if n > 0 { n.to_string() } else { "auto".into() }
                    );
                    (label, DecodeTuning { splits, ..*t })
                })
            })
            .collect();
    }
    let copy = entries("ATTNC_DECODE_BENCH_COPY");
    if !copy.is_empty() {
        // the tensor-core kernel's copy variants (`ATTNC_DECODE_COPY`'s values: 0, or
        // letters of abcdefghijklmnopqrstuvw)
        let copies = copy
            .iter()
            .map(|x| {
                attnc::options::parse_decode_copy(x)
                    .map(|c| (x.clone(), c))
                    .ok_or_else(|| {
                        bad(
                            "ATTNC_DECODE_BENCH_COPY",
                            x,
                            "0 or letters of abcdefghijklmnopqrstuvw (ATTNC_DECODE_COPY's values)",
                        )
                    })
            })
            .collect::<Result<Vec<(String, u32)>, Error>>()?;
        out = out
            .iter()
            .flat_map(|(label, t)| {
                copies.iter().map(move |(name, c)| {
                    (
                        format!("{label} copy {name}"),
                        DecodeTuning {
                            copy: Some(*c),
                            ..*t
                        },
                    )
                })
            })
            .collect();
    }
    let steal = entries("ATTNC_DECODE_BENCH_STEAL");
    if !steal.is_empty() {
        // work stealing's / streaming's split (`pct:tiles`), for the copies with letter
        // `n` or `p` only (the others once)
        use attnc_compiler::backend::llvm::decode_mma::{COPY_STEAL, COPY_STREAM};
        let splits = steal
            .iter()
            .map(|x| {
                let (p, t) = x.split_once(':').unwrap_or((x, ""));
                match (p.trim().parse::<u16>(), t.trim().parse::<u16>()) {
                    (Ok(p), Ok(t)) if (1..=100).contains(&p) && t >= 1 => Ok((x.clone(), (p, t))),
                    _ => Err(bad(
                        "ATTNC_DECODE_BENCH_STEAL",
                        x,
                        "pct:tiles (pct 1..=100, tiles >= 1)",
                    )),
                }
            })
            .collect::<Result<Vec<(String, (u16, u16))>, Error>>()?;
        out = out
            .iter()
            .flat_map(|(label, t)| {
                let takes = t.copy.unwrap_or(0) & (COPY_STEAL | COPY_STREAM) != 0;
                let one = [(label.clone(), *t)];
                let many = splits.iter().map(move |(name, st)| {
                    (
                        format!("{label} steal {name}"),
                        DecodeTuning {
                            steal: Some(*st),
                            ..*t
                        },
                    )
                });
                if takes {
                    many.collect::<Vec<_>>()
                } else {
                    one.to_vec()
                }
            })
            .collect();
    }
    Ok(out)
}

/// Before `bench --decode` allocates anything for one shape `(b, hq, hkv, lq, lkv, d)`:
/// a valid shape, q, k, v and the synthetic captures within the synthetic inputs' limit
/// (`synth::checked_inputs`), and for each layout (`None` contiguous, `Some(page size)`)
/// a positive page size and a cache (`lkv` rounded up to whole pages) and captures sized
/// by it within that limit too. (A page size of 0 divided by zero; a huge shape aborted
/// on a failed allocation.)
fn check_bench_sizes(
    p: &attnc_compiler::ir::Program,
    (b, hq, hkv, lq, lkv, d): (usize, usize, usize, usize, usize, usize),
    layouts: &[Option<usize>],
) -> Result<(), Error> {
    let shape = Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv: d,
    };
    synth::checked_inputs(p, &shape, true)?;
    for &page in layouts {
        let cap = match page {
            None => lkv,
            Some(0) => return Err(usage("--page-size: a page holds at least one row".into())),
            Some(ps) => lkv
                .div_ceil(ps)
                .checked_mul(ps)
                .filter(|&c| c <= i32::MAX as usize)
                .ok_or_else(|| {
                    usage(format!(
                        "--page-size {ps}: Lkv {lkv} in whole pages is more than the supported maximum of 2147483647 rows"
                    ))
                })?,
        };
        let cache = Shape {
            lq: cap,
            lkv: cap,
            ..shape
        };
        synth::checked_inputs(p, &cache, false)?;
        let n = attnc::tensor::elements(&[b, hkv, cap, d]);
        if n.is_none_or(|n| n > synth::MAX_SYNTH_ELEMENTS) {
            return Err(usage(format!(
                "the {} cache [B {b}, Hkv {hkv}, {cap} rows, D {d}] would have more than {} elements; the limit is 2^30: use smaller sizes",
                page.map_or("contiguous".to_string(), |ps| format!("paged (page {ps})")),
                synth::MAX_SYNTH_ELEMENTS
            )));
        }
    }
    Ok(())
}

/// `attnc bench --decode`.
pub(crate) fn bench(a: &BenchArgs) -> Result<(), Error> {
    let compiled = Compiled::from_file(a.file)?;
    let variant = compiled.select(a.attention)?;
    let dtype = DType::parse(a.dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| usage(format!("--dtype: `{}` is not f32, f16 or bf16", a.dtype)))?;
    if a.backend == attnc::Backend::Cuda {
        outln!("device: {}", attnc::cuda_device_info()?);
    }
    let shapes = if a.shapes.is_empty() {
        ISSUE_SHAPES.to_vec()
    } else {
        a.shapes.clone()
    };
    for &(b, hq, hkv, lq, lkv) in &shapes {
        let mut layouts: Vec<Option<usize>> = Vec::new();
        for l in &a.layouts {
            match l {
                KvCacheArg::Contiguous => layouts.push(None),
                KvCacheArg::Paged => layouts.extend(a.page_sizes.iter().map(|p| Some(*p))),
            }
        }
        let (d, dv) = (a.d, a.d);
        check_bench_sizes(variant.program(), (b, hq, hkv, lq, lkv, d), &layouts)?;
        // a block of random values tiled over the tensor: the values do not change
        // the timing, and drawing billions of normals would take minutes
        let mut rng = synth::Rng::new(17);
        let block = Tensor::from_f32_as(
            vec![1 << 16],
            &(0..1 << 16).map(|_| rng.normal()).collect::<Vec<f32>>(),
            dtype,
        );
        let random = |n: usize, dims: Vec<usize>| {
            let len = n * dtype.size();
            let mut bytes = block.bytes().repeat(len.div_ceil(block.bytes().len()));
            bytes.truncate(len);
            Tensor::from_bytes(dims, dtype, bytes).expect("sized from the dims")
        };
        let q = random(b * hq * lq * d, vec![b, hq, lq, d]);
        let seq_lens = Tensor::from_i32(vec![b], &vec![lkv as i32; b]);
        // every layout's cache at once: the layouts' bindings are timed in turn
        let mut inputs = Vec::new();
        for &page in &layouts {
            inputs.push(match page {
                None => (
                    random(b * hkv * lkv * d, vec![b, hkv, lkv, d]),
                    random(b * hkv * lkv * dv, vec![b, hkv, lkv, dv]),
                    None,
                    lkv,
                ),
                Some(ps) => {
                    let max_pages = lkv.div_ceil(ps);
                    let n = b * max_pages;
                    // a shuffled table, as a serving system's allocator leaves it
                    // (ATTNC_DECODE_BENCH_PAGES=ordered: page i of the table is page i
                    // of the cache, a diagnostic of the shuffle's cost)
                    let mut ids: Vec<i32> = (0..n as i32).collect();
                    let ordered = std::env::var("ATTNC_DECODE_BENCH_PAGES")
                        .is_ok_and(|v| v.trim() == "ordered");
                    let mut r = synth::Rng::new(3);
                    for i in (1..n).rev() {
                        if !ordered {
                            ids.swap(i, r.below(i as u64 + 1) as usize);
                        }
                    }
                    (
                        random(n * ps * hkv * d, vec![n, ps, hkv, d]),
                        random(n * ps * hkv * dv, vec![n, ps, hkv, dv]),
                        Some(Tensor::from_i32(vec![b, max_pages], &ids)),
                        max_pages * ps,
                    )
                }
            });
        }
        // each binding's decode tuning: the default, or (CUDA, benchmarks) one binding
        // per value on the same inputs: ATTNC_DECODE_BENCH_COMBINE=both (the combine
        // kernel after the decode kernel, then the fused kernel) or all (also the
        // combine under the decode kernel's tail, and that with the decode kernel
        // under the previous call's tail) or a list of those modes by name
        // (separate, overlapped, chained, fused, fused-chained), ATTNC_DECODE_BENCH_SPLITS=N,M,.. (split
        // counts of the tensor-core kernel, 0 = the runtime's choice),
        // ATTNC_DECODE_BENCH_COPY=0,a,b,c,abc,d,e (the tensor-core kernel's K/V copy
        // variants, `DecodeTuning::copy`), ATTNC_DECODE_BENCH_STEAL=80:8,70:4 (work
        // stealing's static percent and stolen split tiles, `DecodeTuning::steal`; with
        // copy letter `n`; and `p`'s own splits and chunks)
        // ATTNC_DECODE_BENCH_ROUNDS=N (default 1): every (layout, tuning) binding of the
        // shape timed N times in turn, each round starting one binding later than the
        // previous one (so that the GPU's drift and a binding's place in the round
        // cancel); the median shown, with the spread over the rounds (its low end is the
        // configuration's minimum), and for a paged cache the median and range of its
        // ratio to the contiguous cache's time of the same tuning in the same round, the
        // ratio of the two minima and of the two medians. A round's timing of a binding
        // is the median of ATTNC_DECODE_BENCH_REPS (default 5) event timings of --iters
        // calls: REPS=1 with many rounds interleaves the configurations finely (each
        // sees the GPU's clock phases as often as the others).
        // ATTNC_DECODE_BENCH_WARM_ROUNDS=N: N untimed rounds first (the GPU at its loaded
        // clocks before the first timed round). ATTNC_DECODE_BENCH_SAMPLES=1: every
        // round's time of each configuration, in round order.
        // ATTNC_DECODE_BENCH_TRACE=1: for a tuning whose copy records per-CTA times
        // (letter `l`), a summary of the last timed launch (`trace_summary`).
        let tunings = bench_tunings(a.backend)?;
        let env_n = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(default)
        };
        let rounds = env_n("ATTNC_DECODE_BENCH_ROUNDS", 1).max(1);
        let warm_rounds = env_n("ATTNC_DECODE_BENCH_WARM_ROUNDS", 0);
        let samples = env_n("ATTNC_DECODE_BENCH_SAMPLES", 0) > 0;
        let trace = env_n("ATTNC_DECODE_BENCH_TRACE", 0) > 0;
        let caches: Vec<KvCache> = inputs
            .iter()
            .map(|(k, v, pt, _)| KvCache::new(k, v, pt.as_ref(), &seq_lens))
            .collect();
        let mut bounds = Vec::new();
        let mut capsv = Vec::new();
        let mut bytes = Vec::new();
        let mut reached = Vec::new();
        for (li, (_, _, _, cap)) in inputs.iter().enumerate() {
            let shape = Shape {
                b,
                hq,
                hkv,
                lq,
                lkv: *cap,
                d,
                dv,
            };
            let mut caps = synth::captures(variant.program(), &Shape { lq: *cap, ..shape }, 7);
            for (name, v) in parse_params(a.params)? {
                caps.params.insert(name, v);
            }
            let first = bounds.len();
            for (_, tuning) in &tunings {
                let mut opts = BindOptions::new(a.backend, shape, dtype);
                opts.threads = a.threads;
                opts.decode = *tuning;
                bounds.push((li, variant.bind(opts)?));
            }
            let positions = bounds[first]
                .1
                .cache_positions_reached(&q, &caches[li], &caps)?;
            bytes.push((positions * hkv * (d + dv) * dtype.size()) as f64);
            reached.push(positions);
            capsv.push(caps);
        }
        let n = bounds.len();
        let mut times = vec![Vec::new(); n];
        for r in 0..warm_rounds + rounds {
            for j in 0..n {
                let i = (r + j) % n;
                let (li, bound) = &mut bounds[i];
                let (cache, caps) = (&caches[*li], &capsv[*li]);
                let ms = match bound.cache_device_time_ms(&q, cache, caps, a.iters)? {
                    Some(ms) => ms,
                    None => {
                        bound.forward_with_cache(&q, cache, caps)?; // warm-up
                        let t0 = std::time::Instant::now();
                        for _ in 0..a.iters.max(1) {
                            bound.forward_with_cache(&q, cache, caps)?;
                        }
                        t0.elapsed().as_secs_f64() * 1e3 / a.iters.max(1) as f64
                    }
                };
                if r >= warm_rounds {
                    times[i].push(ms);
                }
            }
        }
        let median = |t: &[f64]| {
            let mut t = t.to_vec();
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        };
        let nt = tunings.len();
        let contiguous = layouts.iter().position(|p| p.is_none());
        for (li, page) in layouts.iter().enumerate() {
            for (ti, (label, _)) in tunings.iter().enumerate() {
                let t = &times[li * nt + ti];
                let ms = median(t);
                let layout = match page {
                    None => "contiguous".to_string(),
                    Some(p) => format!("paged{p}"),
                };
                // chunked prefill (Lq > 16) is bound by compute: also the rate of the
                // products over the reachable keys (4 Lq D flops per query head and key)
                let flops = if lq > 16 {
                    let f = 4.0 * (reached[li] * hq * lq * d) as f64;
                    format!(" {:.1} TFLOP/s", f / (ms * 1e-3) / 1e12)
                } else {
                    String::new()
                };
                // the path the timed calls took (`Bound::cache_path`: "split-kv-mma",
                // "prefill" for chunked prefill's batched runs, ...)
                let path = bounds[li * nt + ti]
                    .1
                    .cache_path()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default();
                let mut spread = String::new();
                if rounds > 1 {
                    let (lo, hi) = t
                        .iter()
                        .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
                    spread = format!(" rounds {rounds} {:.1}-{:.1} us", lo * 1e3, hi * 1e3);
                    if let (Some(c), Some(_)) = (contiguous, page) {
                        let tc = &times[c * nt + ti];
                        let ratios: Vec<f64> = t.iter().zip(tc).map(|(p, c)| p / c - 1.0).collect();
                        let (lo, hi) = ratios
                            .iter()
                            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
                        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
                        spread += &format!(
                            " vs contiguous {:+.1}% ({:+.1}..{:+.1}%) min/min {:+.1}% med/med {:+.1}%",
                            median(&ratios) * 100.0,
                            lo * 100.0,
                            hi * 100.0,
                            (min(t) / min(tc) - 1.0) * 100.0,
                            (ms / median(tc) - 1.0) * 100.0,
                        );
                    }
                }
                outln!(
                    "decode {} B{b} Hq{hq} Hkv{hkv} Lq{lq} Lkv{lkv} D{d} {} {layout:<10} {:>10.1} us {:>8.1} GB/s (K/V read {:.1} MB) [{}{}{}]{flops}{spread}",
                    variant.name(),
                    dtype,
                    ms * 1e3,
                    bytes[li] / (ms * 1e-3) / 1e9,
                    bytes[li] / 1e6,
                    a.backend.name(),
                    label,
                    path,
                );
                if samples && rounds > 1 {
                    let all: Vec<String> = t.iter().map(|x| format!("{:.1}", x * 1e3)).collect();
                    outln!("  samples (us, round order): {}", all.join(" "));
                }
                if trace {
                    let bound = &mut bounds[li * nt + ti].1;
                    if let Some(recs) = bound.cache_device_trace() {
                        let per_key = ((d + dv) * dtype.size()) as f64;
                        for line in trace_summary(&recs, ms * 1e3, per_key) {
                            outln!("  trace: {line}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Where a traced decode launch's time went (`ATTNC_DECODE_BENCH_TRACE=1`, copy letter
/// `l`): from its CTAs' records (µs from the first CTA's start) the spread of their
/// starts, of their waits' returns (the previous grid's end, for a chained launch), of
/// their first tiles' arrival, loop ends and ends; each CTA's streaming rate (its keys'
/// K and V bytes, `per_key` per key, over its first tiles to its loop's end); the SMs'
/// last ends; and the call's time `call_us` against the grid's span from its first
/// wait's return to its last end (what is outside it: the previous call's tail and
/// combine, launches).
pub(crate) fn trace_summary(
    recs: &[attnc::decode::CtaTrace],
    call_us: f64,
    per_key: f64,
) -> Vec<String> {
    if recs.is_empty() {
        return vec!["no records (no partial with a padding row)".into()];
    }
    let t0 = recs[0].t[0];
    // µs relative to t0 (the words are the low 32 bits of the ns timer: differences
    // modulo 2^32)
    let rel = |x: u32| x.wrapping_sub(t0) as i32 as f64 * 1e-3;
    let at = |k: usize| -> Vec<f64> { recs.iter().map(|r| rel(r.t[k])).collect() };
    let base = at(0).into_iter().fold(f64::MAX, f64::min);
    let sorted = |k: usize| {
        let mut v: Vec<f64> = at(k).into_iter().map(|x| x - base).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let five = |v: &[f64]| {
        format!(
            "{:.2}/{:.2}/{:.2}/{:.2}/{:.2}",
            pct(v, 0.0),
            pct(v, 0.1),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0)
        )
    };
    let (start, wait, first, lend, end) = (sorted(0), sorted(1), sorted(2), sorted(3), sorted(4));
    let mut sms: std::collections::BTreeMap<u32, (usize, f64)> = Default::default();
    let mut rates = Vec::new();
    for r in recs {
        let e = rel(r.t[4]) - base;
        let s = sms.entry(r.sm).or_insert((0, f64::MIN));
        *s = (s.0 + 1, s.1.max(e));
        let dt = rel(r.t[3]) - rel(r.t[2]);
        if r.keys > 0 && dt > 0.0 {
            rates.push(r.keys as f64 * per_key / (dt * 1e-6) / 1e9);
        }
    }
    rates.sort_by(f64::total_cmp);
    let mut sm_end: Vec<f64> = sms.values().map(|x| x.1).collect();
    sm_end.sort_by(f64::total_cmp);
    let most = sms.values().map(|x| x.0).max().unwrap_or(0);
    let span = pct(&end, 1.0) - pct(&wait, 0.0);
    let mut out = vec![
        format!(
            "{} CTAs on {} SMs (at most {most} per SM); us from the first CTA's start, p0/p10/p50/p90/p100",
            recs.len(),
            sms.len()
        ),
        format!("start {}  wait returned {}", five(&start), five(&wait)),
        format!(
            "first tiles landed {}  loop end {}  end {}",
            five(&first),
            five(&lend),
            five(&end)
        ),
        format!("SMs' last end {}", five(&sm_end)),
        format!(
            "call {call_us:.1} us; first wait return to last end {span:.1} us; outside it {:.1} us; last end - p10 end (tail) {:.1} us",
            call_us - span,
            pct(&end, 1.0) - pct(&end, 0.1)
        ),
    ];
    if !rates.is_empty() {
        out.push(format!(
            "stream per CTA (first tiles to loop end) GB/s {}",
            five(&rates)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace summary from synthetic records: times relative to the first start across
    /// the timer's 32-bit wrap, the call's time outside the grid's span, the tail, the
    /// SMs, the per-CTA rate; no records: a line saying so.
    #[test]
    fn trace_summary_reads_the_records() {
        let rec = |sm: u32, t0: u32, end_us: u32, keys: u32| attnc::decode::CtaTrace {
            b: 0,
            kv_head: 0,
            row_group: 0,
            split: sm,
            keys,
            sm,
            // start, wait (+4 us), first tiles (+4 us), loop end, end (+2 us)
            t: [
                t0,
                t0.wrapping_add(4_000),
                t0.wrapping_add(4_000),
                t0.wrapping_add((end_us - 2) * 1000),
                t0.wrapping_add(end_us * 1000),
            ],
        };
        // the timer wraps between the records' starts: u32::MAX - 500 and 500 ns
        let base = u32::MAX - 499;
        let recs: Vec<_> = (0..10)
            .map(|i| rec(i % 4, base.wrapping_add(i * 100), 100 + i * 2, 6400))
            .collect();
        let lines = trace_summary(&recs, 126.0, 512.0);
        let all = lines.join("\n");
        assert!(all.contains("10 CTAs on 4 SMs (at most 3 per SM)"), "{all}");
        // starts 0..0.9 us; last end 0.9 + 118 = 118.9; first wait 4.0: span 114.9
        assert!(all.contains("start 0.00/0.10/0.50/0.80/0.90"), "{all}");
        assert!(
            all.contains("first wait return to last end 114.9 us; outside it 11.1 us"),
            "{all}"
        );
        // 6400 keys x 512 bytes over 112 us (the slowest CTA) = 29.26 GB/s, over 94 us
        // (the fastest) = 34.86
        assert!(all.contains("GB/s 29.26/"), "{all}");
        assert!(all.contains("/34.86"), "{all}");
        assert_eq!(trace_summary(&[], 1.0, 1.0).len(), 1);
    }

    /// The bench's tuning lists: names, counts and copy variants as given, and an entry
    /// that is none of them an error naming the variable and the entry (it was dropped:
    /// `ATTNC_DECODE_BENCH_SPLITS=x` timed nothing, `ATTNC_DECODE_BENCH_COMBINE=chaned`
    /// the default under no label); other backends ignore the variables.
    #[test]
    fn bench_tunings_name_a_bad_entry() {
        let base = DecodeTuning::default();
        let with = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            bench_tunings_from(attnc::Backend::Cuda, base, move |k| {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        let labels = |vars: &[(&str, &str)]| -> Vec<String> {
            with(vars)
                .unwrap()
                .into_iter()
                .map(|(l, _)| l.trim().to_string())
                .collect()
        };
        assert_eq!(labels(&[]), [""]);
        assert_eq!(labels(&[("ATTNC_DECODE_BENCH_COMBINE", " ")]), [""]);
        assert_eq!(
            labels(&[("ATTNC_DECODE_BENCH_COMBINE", "chained, fused-chained")]),
            ["chained", "fused-chained"]
        );
        assert_eq!(
            labels(&[("ATTNC_DECODE_BENCH_COMBINE", "both")]),
            ["separate", "fused"]
        );
        assert_eq!(labels(&[("ATTNC_DECODE_BENCH_COMBINE", "all")]).len(), 5);
        let t = with(&[("ATTNC_DECODE_BENCH_COMBINE", "fused")]).unwrap();
        assert!(t[0].1.fused_combine && t[0].1.serial_decode);
        assert_eq!(
            labels(&[
                ("ATTNC_DECODE_BENCH_SPLITS", "0,8"),
                ("ATTNC_DECODE_BENCH_COPY", "efi,0")
            ]),
            [
                "splits auto copy efi",
                "splits auto copy 0",
                "splits 8 copy efi",
                "splits 8 copy 0"
            ]
        );
        // the steal entries multiply the copies with `n` or `p` only
        assert_eq!(
            labels(&[
                ("ATTNC_DECODE_BENCH_COPY", "efik,efikp"),
                ("ATTNC_DECODE_BENCH_STEAL", "90:4,80:8")
            ]),
            [
                "copy efik",
                "copy efikp steal 90:4",
                "copy efikp steal 80:8"
            ]
        );
        let t = with(&[
            ("ATTNC_DECODE_BENCH_COPY", "efikn"),
            ("ATTNC_DECODE_BENCH_STEAL", "70:3"),
        ])
        .unwrap();
        assert_eq!(t[0].1.steal, Some((70, 3)));
        for (var, value, entry) in [
            ("ATTNC_DECODE_BENCH_COMBINE", "chained,chaned", "chaned"),
            ("ATTNC_DECODE_BENCH_SPLITS", "x", "x"),
            ("ATTNC_DECODE_BENCH_SPLITS", "4,-1", "-1"),
            ("ATTNC_DECODE_BENCH_COPY", "efi,efz", "efz"),
            ("ATTNC_DECODE_BENCH_STEAL", "80:8,0:4", "0:4"),
            ("ATTNC_DECODE_BENCH_STEAL", "80", "80"),
        ] {
            let e = with(&[(var, value)]).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains(&format!("`{entry}`")),
                "{var}={value}: {e}"
            );
        }
        // the CPU backend has one tuning whatever the variables say
        let cpu = bench_tunings_from(attnc::Backend::Cpu, base, |_| Some("x".into())).unwrap();
        assert_eq!(cpu.len(), 1);
    }
}
