//! Benchmark of block-mask construction at long sequence lengths (single core).
//!
//! In: nothing (masks are compiled from source here; document ids are generated).
//! Out: a table on stdout: for causal, sliding window 1024 and document masks (sorted
//! ids, 64 documents) at L = 131072 (override with `--len N`), block 128 — the time and
//! peak heap memory of building the block maps by analysis, next to brute-force
//! evaluation of the mask at every point (FlexAttention's method) measured in the same
//! run on a sub-range of query rows and extrapolated (`--full` runs the native brute
//! force over every point instead). Brute force is measured two ways: a native Rust
//! closure (what a compiled mask_mod costs) and the IR interpreter.
//!
//! Run: `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p attnc-compiler --example blockmask_bench`
//! (or `cargo run --release ...`).

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMaps};
use attnc_compiler::analysis::classify::{MaskInfo, analyze, build_block_maps};
use attnc_compiler::compile_source;
use attnc_compiler::interp::{Args, Bindings, BoundTensor, TensorData, eval};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::shape::Shape;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged; `p` came from `alloc` with layout `l`.
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SRC: &str = r#"
tensor doc: i32[B, KV];
param window: i32;
mask causal(b, h, q, kv)   { q >= kv }
mask local(b, h, q, kv)    { q - kv < window }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
attention causal_a { mask = causal; }
attention sliding { mask = causal & local; }
attention document { mask = same_doc; }
attention document_causal { mask = same_doc & causal; }
"#;

const WINDOW: i32 = 1024;
const DOCS: usize = 64;

fn sorted_docs(l: usize) -> Vec<i32> {
    // 64 documents with pseudo-random boundaries (not aligned to blocks).
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut cuts: Vec<usize> = (0..DOCS - 1)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize % l
        })
        .collect();
    cuts.sort();
    let mut out = Vec::with_capacity(l);
    let mut d = 0;
    for i in 0..l {
        while d < cuts.len() && cuts[d] <= i {
            d += 1;
        }
        out.push(d as i32);
    }
    out
}

/// Median of `reps` timings (ms) and the peak extra heap bytes of one run.
fn measure(reps: usize, mut f: impl FnMut() -> BlockMaps) -> (f64, usize, BlockMaps) {
    let mut times = Vec::new();
    let mut out = None;
    let mut peak = 0;
    for _ in 0..reps {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let m = f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        peak = PEAK.load(Ordering::Relaxed) - base;
        out = Some(m);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], peak, out.unwrap())
}

/// Brute force over rows `q_rows` (all kv): classifies each block touched by those rows
/// from per-point evaluations. Returns (ms, points, per-row kinds for checking).
fn brute_rows(
    l: usize,
    blk: usize,
    q_rows: std::ops::Range<usize>,
    mut mask: impl FnMut(usize, usize) -> bool,
) -> (f64, u64, Vec<Vec<(bool, bool)>>) {
    let nkv = l.div_ceil(blk);
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut seen = vec![(false, false); nkv];
    for q in q_rows.clone() {
        for (j, s) in seen.iter_mut().enumerate() {
            let (mut any, mut all) = (false, true);
            for kv in j * blk..((j + 1) * blk).min(l) {
                let v = mask(q, kv);
                any |= v;
                all &= v;
            }
            s.0 |= any;
            s.1 |= !all;
        }
        if (q + 1) % blk == 0 || q + 1 == q_rows.end {
            rows.push(std::mem::replace(&mut seen, vec![(false, false); nkv]));
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (ms, (q_rows.len() * l) as u64, rows)
}

fn kind((t, f): (bool, bool)) -> BlockKind {
    match (t, f) {
        (true, false) => BlockKind::Full,
        (false, _) => BlockKind::Empty,
        _ => BlockKind::Partial,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let l: usize = args
        .iter()
        .position(|a| a == "--len")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(131072);
    let blk = 128;
    let module = compile_source(SRC).expect("benchmark source compiles");
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: l,
        lkv: l,
        d: 128,
        dv: 128,
    };
    let docs = sorted_docs(l);
    let nblocks = l.div_ceil(blk).pow(2);
    println!("L = {l}, block {blk}x{blk}, {nblocks} blocks, single core");
    println!(
        "{:<16} {:>10} {:>12} {:>8} {:>8} {:>8} | {:>14} {:>14} {:>8}",
        "mask",
        "build ms",
        "peak heap",
        "empty",
        "partial",
        "full",
        "native brute",
        "interp brute",
        "check"
    );
    for name in ["causal_a", "sliding", "document", "document_causal"] {
        let p: &Program = module.attention(name).unwrap();
        let info = analyze(p);
        let params: Vec<Scalar> = p.params.iter().map(|_| Scalar::I32(WINDOW)).collect();
        let tensors: Vec<BoundTensor> = p
            .tensors
            .iter()
            .map(|_| BoundTensor {
                dims: vec![1, l],
                data: TensorData::I32(docs.clone()),
            })
            .collect();
        let bind = Bindings { params, tensors };
        let run = |info: &MaskInfo| build_block_maps(p, info, &shape, blk, blk, &bind).unwrap();
        let (ms, peak, maps) = measure(9, || run(&info));
        report(name, &info, ms, peak, &maps, l, blk, full, &bind, p, &docs);
        if info.closed_form.is_some() {
            let mut quad = info.clone();
            quad.closed_form = None;
            let (ms, peak, maps2) = measure(9, || run(&quad));
            assert_eq!(maps, maps2, "closed form and quadtree disagree");
            report(
                &format!("{name} (quadtree)"),
                &quad,
                ms,
                peak,
                &maps2,
                l,
                blk,
                false,
                &bind,
                p,
                &docs,
            );
        }
    }
    println!(
        "brute-force rows: native = 1/16 of the rows (or all with --full), interp = 1 block row; \
         extrapolated to all {} points",
        (l as u64) * (l as u64)
    );
    println!(
        "FlexAttention-style eager brute force materializes the dense mask: {:.1} GiB as bools",
        (l as f64) * (l as f64) / (1u64 << 30) as f64
    );
}

#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    _info: &MaskInfo,
    ms: f64,
    peak: usize,
    maps: &BlockMaps,
    l: usize,
    blk: usize,
    full: bool,
    bind: &Bindings,
    p: &Program,
    docs: &[i32],
) {
    let m: &BlockMap = maps.get(0, 0);
    let (e, pa, fu) = m.counts();
    let base = name.split(' ').next().unwrap();
    let native = |q: usize, kv: usize| -> bool {
        match base {
            "causal_a" => q >= kv,
            "sliding" => q >= kv && (q as i32 - kv as i32) < WINDOW,
            "document" => docs[q] == docs[kv],
            _ => docs[q] == docs[kv] && q >= kv,
        }
    };
    let mut brute = String::from("-");
    let mut ibrute = String::from("-");
    let mut check = String::from("-");
    if !name.contains("quadtree") {
        // Native closure over 1/16 of the rows (a multiple of the block size), spread
        // evenly: block rows 0, 16, 32, ...
        let nqb = l.div_ceil(blk);
        let step = if full { 1 } else { 16 };
        let (mut ms_n, mut pts, mut ok) = (0.0, 0u64, true);
        for i in (0..nqb).step_by(step) {
            let rows = i * blk..((i + 1) * blk).min(l);
            let (t, n, kinds) = brute_rows(l, blk, rows, native);
            ms_n += t;
            pts += n;
            for (j, k) in kinds[0].iter().enumerate() {
                ok &= m.kind(i, j) == kind(*k);
            }
        }
        let all = (l as f64) * (l as f64);
        brute = format!(
            "{:.2} s{}",
            ms_n / 1e3 * all / pts as f64,
            if full { "" } else { "*" }
        );
        check = if ok { "exact".into() } else { "DIFFERS".into() };
        // Interpreter over one block row.
        let f = p.mask.as_ref().unwrap();
        let mut scratch = Vec::new();
        let (ti, ni, _) = brute_rows(l, blk, 0..blk, |q, kv| {
            let a = Args {
                s: 0.0,
                b: 0,
                h: 0,
                q: q as i32,
                kv: kv as i32,
            };
            eval(f, p, a, bind, &mut scratch).unwrap().as_bool()
        });
        ibrute = format!("{:.0} s*", ti / 1e3 * all / ni as f64);
    }
    println!(
        "{:<16} {:>10.3} {:>9.1} KiB {:>8} {:>8} {:>8} | {:>14} {:>14} {:>8}",
        name,
        ms,
        peak as f64 / 1024.0,
        e,
        pa,
        fu,
        brute,
        ibrute,
        check
    );
}
