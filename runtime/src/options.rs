//! How to bind a variant: the backend and the bind options.
//!
//! In: nothing. Out: [`Backend`] and [`BindOptions`], read by the API (`api`), the
//! executors (`exec`) and the CLI. Depends on nothing else of the runtime but the tensor
//! dtype and the JIT tier policy.

use crate::tensor::DType;
use attnc_compiler::shape::Shape;

/// Where a bound variant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The f64 reference implementation (the oracle): slow, exact.
    Reference,
    /// Cranelift-generated CPU kernels.
    Cpu,
    /// LLVM-generated PTX on an NVIDIA GPU.
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// The most CPU threads a binding may ask for ([`BindOptions::threads`]; more is an
/// error): each distinct count makes a pool of that many OS threads kept for the
/// process, so a mistaken count (`1 << 20`) would try to spawn a million threads.
pub const MAX_THREADS: usize = 1024;

/// How to bind a variant.
#[derive(Clone, Debug)]
pub struct BindOptions {
    pub backend: Backend,
    pub shape: Shape,
    /// dtype of q, k, v and O.
    pub dtype: DType,
    /// Softmax scale; `None` means `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// CPU threads (0 = all available cores; at most [`MAX_THREADS`], more is an error).
    pub threads: usize,
    /// Report out-of-range tensor reads instead of clamping them.
    pub checked: bool,
    /// CUDA backend, masks over captured tensors: build the block table on the GPU
    /// (exact, from the device-resident tensors; `backend::llvm::blocktable`) rather than
    /// on the host from tensor summaries. Default true; the environment variable
    /// `ATTNC_BLOCK_TABLES=host` makes the default false. Other backends ignore it.
    pub gpu_block_tables: bool,
    /// CUDA: the tiered JIT policy (a quickly compiled module first, the optimized one
    /// swapped in when ready); `None` reads `ATTNC_JIT_TIERS`, default off.
    pub jit_tiers: Option<crate::cuda::JitTiers>,
    /// CUDA: the device ordinal the binding compiles for and launches on (its primary
    /// context; default 0). Other backends ignore it.
    pub device: usize,
    /// CUDA decoding (`Bound::forward_with_cache`, `decode_cuda_into`): overrides of the
    /// split-KV kernels' automatic choices (benchmarks, tests). Default: the `ATTNC_DECODE_*`
    /// environment variables, read once per process ([`DecodeTuning::from_env`]); none set
    /// means every choice automatic. Fixed for the binding's life.
    pub decode: DecodeTuning,
    /// CUDA: the forward reads K and V from a paged cache `[pages, P, Hkv, D]` through a
    /// page table (`PtxOptions::kv_cache` = `Paged`; the warp-specialized kernel only, an
    /// error elsewhere): the bindings of chunked prefill's runs on caller buffers
    /// (`Bound::decode_cuda_into_with_lengths`). Its calls go through
    /// `forward_cuda_into_kv` with the page table. Default false.
    pub kv_pages: bool,
    /// CUDA: the forward reads each sequence's length from the device (`seq_lens: i32[B]`,
    /// `PtxOptions::device_lens`) and the program is `decode::device_offset_program`'s
    /// form (the warp-specialized kernel only, closed-form masks, an error elsewhere):
    /// chunked prefill on caller buffers whose lengths the host does not know
    /// (`Bound::decode_cuda_into`), one launch of the whole batch. Its calls go through
    /// `forward_cuda_into_kv` with the lengths. Default false.
    pub device_lens: bool,
    /// Run the kernels at head dim `n` (at least D and Dv) with zero columns appended to
    /// q, k and v, the caller's D and Dv kept in every tensor the binding's host-tensor
    /// calls take and return (`crate::head_pad`). `None` (the default): only where the
    /// backend does not take the dims (CUDA at 72, 80, 96, 160, 192 with Dv 128, ...: the
    /// next of 16 / 32 / 64 / 128 / 256), any other backend never. Results and gradients
    /// are those of the unpadded problem; the cost is the padded dim's plus the copies.
    pub pad_head_dims: Option<usize>,
    /// CUDA and CPU, a document mask over packed sequences (`L && doc[b, q] == doc[b,
    /// kv]`, `Plan::doc_split`; `Lq == Lkv`, host inputs, fast mode): run each document on
    /// its own q tiles and kv blocks aligned to its first row, the kernel of `L` alone
    /// (`PtxOptions::doc_tiles`, `CpuOptions::doc_tiles`; a call whose ids do not form
    /// contiguous documents runs the binding's own kernel; so do CUDA calls on caller
    /// buffers). Default true; the environment variable `ATTNC_FWD_DOC_TILES=0` makes the
    /// default false. Measured on an H200 (document + causal, 8 documents per 8192 rows,
    /// D128): 1.25x the block-table kernel at B2 H16 L8192, 1.28x at B1 Hq32 Hkv8 L16384.
    /// The CUDA backward follows it too (`Bound::backward` on host tensors, and the block
    /// masks of the caller-buffer backward): where the binding's backward kernels have a
    /// document variant (sm_90, D64 and D128, `PtxOptions::bwd_doc_tiles`) and the call's
    /// ids form contiguous documents, its kv tiles are aligned to each document
    /// (`ATTNC_BWD_DOC_TILES=0` turns the backward's off alone). The reference backend
    /// ignores it.
    pub doc_tiles: bool,
    /// CPU: the forward kernel's query rows per work item and keys per inner tile
    /// (`CpuOptions::q_block` / `kv_block`; a multiple of 16 up to 256, and 1..=1024).
    /// `None` (the default): 64 x 64; the environment variable `ATTNC_CPU_TILES=QB,KB`
    /// sets it (benchmarks: the tile sizes by thread count and shape). Other backends
    /// ignore it.
    pub cpu_tiles: Option<(usize, usize)>,
}

/// `ATTNC_CPU_TILES=QB,KB` as a pair (`None` when unset or not two numbers: the kernel's
/// own options check the values).
fn cpu_tiles_from_env() -> Option<(usize, usize)> {
    let v = std::env::var("ATTNC_CPU_TILES").ok()?;
    let (q, k) = v.split_once(',')?;
    Some((q.trim().parse().ok()?, k.trim().parse().ok()?))
}

impl BindOptions {
    pub fn new(backend: Backend, shape: Shape, dtype: DType) -> Self {
        BindOptions {
            backend,
            shape,
            dtype,
            scale: None,
            threads: 0,
            checked: false,
            gpu_block_tables: std::env::var("ATTNC_BLOCK_TABLES").map_or(true, |v| v != "host"),
            jit_tiers: None,
            device: 0,
            decode: DecodeTuning::from_env(),
            kv_pages: false,
            device_lens: false,
            pad_head_dims: None,
            doc_tiles: std::env::var("ATTNC_FWD_DOC_TILES").map_or(true, |v| v != "0"),
            cpu_tiles: cpu_tiles_from_env(),
        }
    }
}

/// Which split-KV decode kernel runs a CUDA call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeKernel {
    /// `KernelKind::Decode`: SIMT, registers only (every head dim of the kernels).
    Simt,
    /// `KernelKind::DecodeMma`: tensor cores, K/V through shared memory (D 64 and 128).
    Mma,
}

/// Overrides of the CUDA decode path's automatic choices (`decode::gpu`): `None`/`false`
/// leaves a choice to the runtime. For benchmarks and tests; a binding keeps the value
/// it was made with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecodeTuning {
    /// The kernel (`ATTNC_DECODE_KERNEL=simt|mma`); `Mma` only where the tensor-core
    /// kernel takes the head dim (elsewhere the SIMT kernel runs), `Simt` only for Lq <= 16
    /// (chunked prefill runs the tensor-core kernel).
    pub kernel: Option<DecodeKernel>,
    /// The tensor-core kernel's split count per (sequence, kv head, row group)
    /// (`ATTNC_DECODE_SPLITS=N`, N >= 1; tiles per split rounded up).
    pub splits: Option<usize>,
    /// A cap on the tensor-core kernel's rows per CTA: 16, 32 or 64
    /// (`ATTNC_DECODE_ROWS`; more row groups, each reading K/V).
    pub max_rows: Option<usize>,
    /// The tensor-core kernel with the combine folded in (`KernelKind::DecodeMmaFused`)
    /// instead of decode + combine kernels, for host-tensor calls
    /// (`ATTNC_DECODE_COMBINE=fused`; the caller-buffer path keeps two kernels).
    pub fused_combine: bool,
    /// The combine kernel launched after the decode kernel has completed
    /// (`ATTNC_DECODE_COMBINE=serial`) instead of under its tail by programmatic
    /// dependent launch (the default on sm_90).
    pub serial_combine: bool,
    /// The decode kernel launched after the previous kernel on the stream has completed
    /// (`ATTNC_DECODE_CHAIN=0`) instead of by programmatic dependent launch (the default
    /// on sm_90 for host-tensor calls: scheduled under the previous kernel's tail, when
    /// that kernel lets it, as a previous call's combine kernel does; waiting on the SMs
    /// for that grid's completion before it touches memory).
    pub serial_decode: bool,
    /// The tensor-core kernel's K/V copy variant, `decode_mma::COPY_*` bits
    /// (`ATTNC_DECODE_COPY`: letters `a` full tiles without per-row bounds checks, `b`
    /// 32-bit shared-memory destinations, `c` paged: one page id per 16-row pass, `d`
    /// the L2 asked for 256 bytes per copy, `e` the prologue's reads before
    /// `griddepcontrol.wait`, `f` a call with one split writes O and LSE from the
    /// kernel (no combine kernel), `g` paged: per-pass page bases in lanes, `h` paged:
    /// full tiles by TMA boxes of one page each (`decode_mma::COPY_TMA`), `i` paged: the
    /// page ids loaded a tile ahead clamped where the copy uses them
    /// (`decode_mma::COPY_IDS_LATE`), `j` the combine kernel lets the next call's decode
    /// kernel launch before its wait (`decode_mma::COPY_COMBINE_TRIGGER`), `k` whole kept
    /// tiles without the per-element tests (`decode_mma::COPY_FULL_TILE`), `l` each CTA
    /// of the plain kind records its SM and times (a diagnostic, `decode_mma::COPY_TRACE`),
    /// `m` the combine kernel merges up to 16 splits per warp and round
    /// (`decode_mma::COPY_COMBINE_WIDE`), `n` host-tensor calls with several splits
    /// steal work (`decode_mma::COPY_STEAL`), `o` balanced splits (every split of a range
    /// `floor(T / splits)` tiles or one more, `decode_mma::COPY_BALANCED`), `p` host-tensor
    /// calls with several splits continue each split's stream into chunks taken from a
    /// counter (`decode_mma::COPY_STREAM`; results not bit-reproducible), any combination
    /// such as `abc`, or `0` for the default copy; unset: the runtime's choice,
    /// `decode::gpu`).
    pub copy: Option<u32>,
    /// Chunked prefill (Lq > 16, fast mode) on the prefill kernel, runs of sequences of one
    /// length per launch (`decode::cuda`, "Batched runs"): `Some(true)` whenever it
    /// applies (`ATTNC_DECODE_PREFILL=1`), `Some(false)` never (`=0`: the split-KV kernel);
    /// unset: the runtime's rule (`decode::cuda::prefill_runs_win`).
    pub prefill: Option<bool>,
    /// Keep chunked prefill over a paged cache on caller buffers on the split-KV kernel
    /// (`ATTNC_DECODE_PAGED_RUNS=0`). By default (since session 26) its runs read the
    /// cache (pages >= 16 rows) in place on the warp-specialized forward's
    /// `KvCache::Paged`, which reads each kv tile whole from its page and zeroes the rows
    /// past a sequence's length (the unused slots of its last page, which may hold NaN)
    /// before P V.
    pub paged_split_kv: bool,
    /// Bind chunked prefill's runs anew for every new shape (`ATTNC_DECODE_REBIND=1`; for
    /// measuring what `Bound::reshape` saves) instead of pointing the binding of their rows
    /// and heads at the call's length.
    pub rebind_runs: bool,
    /// The producer threads that issue the copies of chunked prefill's runs on a paged
    /// cache (`PtxOptions::producers`, `ATTNC_DECODE_PRODUCERS=1|2|4`; for measuring): 0
    /// for the default, 2 (V's copies from a second thread: pages smaller than the kv
    /// tile take a box per page, which one thread issues at a limited rate).
    pub paged_producers: u8,
    /// Work stealing's split (`decode_mma::COPY_STEAL`, `ATTNC_DECODE_STEAL=pct,tiles`; and
    /// `decode_mma::COPY_STREAM`'s own splits and chunks):
    /// the static splits take `pct`% (1..=100) of the longest range's tiles, the rest
    /// goes in stolen splits of `tiles` (>= 1) tiles; unset: `decode::gpu`'s choice.
    pub steal: Option<(u16, u16)>,
}

/// `ATTNC_DECODE_COPY`'s value as `decode_mma::COPY_*` bits: `0`, or letters of
/// `abcdefghijklmnopqrstuvw` (anything else: `None`).
pub fn parse_decode_copy(v: &str) -> Option<u32> {
    use attnc_compiler::backend::llvm::decode_mma::{
        COPY_BALANCED, COPY_COMBINE_ROWS, COPY_COMBINE_TRIGGER, COPY_COMBINE_WIDE, COPY_DIRECT,
        COPY_EARLY, COPY_FULL, COPY_FULL_TILE, COPY_IDS_LATE, COPY_L2_256, COPY_PAGE_BASE,
        COPY_PAGE_PASS, COPY_SMEM32, COPY_STEAL, COPY_STREAM, COPY_TMA, COPY_TRACE, COPY_WGMMA,
        COPY_WGMMA_DEEP, COPY_WGMMA_DEFER, COPY_WGMMA_ROWS32, COPY_WGMMA_WG2, COPY_WGMMA_WG2_REGS,
    };
    let v = v.trim();
    if v == "0" {
        return Some(0);
    }
    if v.is_empty() {
        return None;
    }
    v.chars().try_fold(0u32, |bits, c| match c {
        'a' => Some(bits | COPY_FULL),
        'b' => Some(bits | COPY_SMEM32),
        'c' => Some(bits | COPY_PAGE_PASS),
        'd' => Some(bits | COPY_L2_256),
        'e' => Some(bits | COPY_EARLY),
        'f' => Some(bits | COPY_DIRECT),
        'g' => Some(bits | COPY_PAGE_BASE),
        'h' => Some(bits | COPY_TMA),
        'i' => Some(bits | COPY_IDS_LATE),
        'j' => Some(bits | COPY_COMBINE_TRIGGER),
        'k' => Some(bits | COPY_FULL_TILE),
        'l' => Some(bits | COPY_TRACE),
        'm' => Some(bits | COPY_COMBINE_WIDE),
        'n' => Some(bits | COPY_STEAL),
        'o' => Some(bits | COPY_BALANCED),
        'p' => Some(bits | COPY_STREAM),
        'q' => Some(bits | COPY_WGMMA),
        'r' => Some(bits | COPY_WGMMA_ROWS32),
        's' => Some(bits | COPY_WGMMA_DEEP),
        't' => Some(bits | COPY_WGMMA_DEFER),
        'u' => Some(bits | COPY_COMBINE_ROWS),
        'v' => Some(bits | COPY_WGMMA_WG2),
        'w' => Some(bits | COPY_WGMMA_WG2_REGS),
        _ => None,
    })
}

impl DecodeTuning {
    /// The `ATTNC_DECODE_*` variables as [`Self::parse`] reads them, read from the
    /// environment once per process (later changes to the environment are not seen).
    pub fn from_env() -> Self {
        static ENV: std::sync::OnceLock<DecodeTuning> = std::sync::OnceLock::new();
        *ENV.get_or_init(|| DecodeTuning::parse(|k| std::env::var(k).ok()))
    }

    /// The tuning that `get` (a variable's value by name) describes: `ATTNC_DECODE_KERNEL`
    /// `simt|mma`, `ATTNC_DECODE_SPLITS` a count >= 1, `ATTNC_DECODE_ROWS` 16|32|64,
    /// `ATTNC_DECODE_COMBINE` `fused|serial`, `ATTNC_DECODE_CHAIN` `0`, `ATTNC_DECODE_COPY` `0` or letters of `abcdefghijklmnopqrstuvw`,
    /// `ATTNC_DECODE_PREFILL` `1|0`, `ATTNC_DECODE_PAGED_RUNS` `0` (off), `ATTNC_DECODE_REBIND` `1`,
    /// `ATTNC_DECODE_PRODUCERS` `1|2|4`; anything else (or unset) leaves the choice
    /// automatic.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
        DecodeTuning {
            kernel: match get("ATTNC_DECODE_KERNEL").as_deref() {
                Some("simt") => Some(DecodeKernel::Simt),
                Some("mma") => Some(DecodeKernel::Mma),
                _ => None,
            },
            splits: num("ATTNC_DECODE_SPLITS").filter(|&n| n > 0),
            max_rows: num("ATTNC_DECODE_ROWS").filter(|n| [16, 32, 64].contains(n)),
            fused_combine: get("ATTNC_DECODE_COMBINE").as_deref() == Some("fused"),
            serial_combine: get("ATTNC_DECODE_COMBINE").as_deref() == Some("serial"),
            serial_decode: get("ATTNC_DECODE_CHAIN").as_deref() == Some("0"),
            copy: get("ATTNC_DECODE_COPY").and_then(|v| parse_decode_copy(&v)),
            prefill: match get("ATTNC_DECODE_PREFILL").as_deref().map(str::trim) {
                Some("1") => Some(true),
                Some("0") => Some(false),
                _ => None,
            },
            paged_split_kv: get("ATTNC_DECODE_PAGED_RUNS").as_deref().map(str::trim) == Some("0"),
            rebind_runs: get("ATTNC_DECODE_REBIND").as_deref().map(str::trim) == Some("1"),
            paged_producers: match get("ATTNC_DECODE_PRODUCERS").as_deref().map(str::trim) {
                Some("1") => 1,
                Some("2") => 2,
                Some("4") => 4,
                _ => 0,
            },
            steal: get("ATTNC_DECODE_STEAL").and_then(|v| {
                let (a, b) = v.trim().split_once(',')?;
                let (pct, tiles) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
                ((1..=100).contains(&pct) && tiles >= 1).then_some((pct, tiles))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_tuning_parses_the_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(DecodeTuning::parse(env(&[])), DecodeTuning::default());
        let t = DecodeTuning::parse(env(&[
            ("ATTNC_DECODE_KERNEL", "simt"),
            ("ATTNC_DECODE_SPLITS", "44"),
            ("ATTNC_DECODE_ROWS", "32"),
            ("ATTNC_DECODE_COMBINE", "fused"),
        ]));
        assert_eq!(
            t,
            DecodeTuning {
                kernel: Some(DecodeKernel::Simt),
                splits: Some(44),
                max_rows: Some(32),
                fused_combine: true,
                serial_combine: false,
                serial_decode: false,
                copy: None,
                prefill: None,
                paged_split_kv: false,
                rebind_runs: false,
                paged_producers: 0,
                steal: None,
            }
        );
        let prefill = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| (k == "ATTNC_DECODE_PREFILL").then(|| v.to_string()))
                .prefill
        };
        assert_eq!(prefill("1"), Some(true));
        assert_eq!(prefill("0"), Some(false));
        assert_eq!(prefill("yes"), None);
        let paged = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| {
                (k == "ATTNC_DECODE_PAGED_RUNS").then(|| v.to_string())
            })
            .paged_split_kv
        };
        assert!(!paged("1") && paged("0") && !paged("yes"));
        let rebind = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| (k == "ATTNC_DECODE_REBIND").then(|| v.to_string()))
                .rebind_runs
        };
        assert!(rebind("1") && !rebind("0") && !rebind("yes"));
        let producers = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| {
                (k == "ATTNC_DECODE_PRODUCERS").then(|| v.to_string())
            })
            .paged_producers
        };
        assert_eq!(
            ["1", "2", "4", "3", "0", "yes"].map(producers),
            [1, 2, 4, 0, 0, 0]
        );
        let copy = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| (k == "ATTNC_DECODE_COPY").then(|| v.to_string()))
                .copy
        };
        assert_eq!(copy("abc"), Some(7));
        assert_eq!(copy("de"), Some(24));
        assert_eq!(copy("ef"), Some(48));
        assert_eq!(copy("efi"), Some(304));
        assert_eq!(copy("efij"), Some(816));
        assert_eq!(copy("a"), Some(1));
        assert_eq!(copy("bc"), Some(6));
        assert_eq!(copy("0"), Some(0));
        assert_eq!(copy("x"), None);
        assert_eq!(copy("efikn"), Some(1328 + 8192));
        // q and v: the wgmma path with two warpgroups (session 22)
        assert_eq!(copy("qv"), Some(65536 + 2097152));
        assert_eq!(copy("w"), Some(4194304));
        let steal = |v: &'static str| {
            DecodeTuning::parse(move |k: &str| (k == "ATTNC_DECODE_STEAL").then(|| v.to_string()))
                .steal
        };
        assert_eq!(steal("80,8"), Some((80, 8)));
        assert_eq!(steal(" 100 , 1 "), Some((100, 1)));
        assert_eq!(steal("0,8"), None);
        assert_eq!(steal("101,8"), None);
        assert_eq!(steal("80,0"), None);
        assert_eq!(steal("80"), None);
        assert!(DecodeTuning::parse(env(&[("ATTNC_DECODE_CHAIN", "0")])).serial_decode);
        assert!(DecodeTuning::parse(env(&[("ATTNC_DECODE_COMBINE", "serial")])).serial_combine);
        // values outside what the kernels take leave the choice automatic
        let t = DecodeTuning::parse(env(&[
            ("ATTNC_DECODE_KERNEL", "wgmma"),
            ("ATTNC_DECODE_SPLITS", "0"),
            ("ATTNC_DECODE_ROWS", "48"),
            ("ATTNC_DECODE_COMBINE", "separate"),
        ]));
        assert_eq!(t, DecodeTuning::default());
        assert_eq!(
            DecodeTuning::parse(env(&[("ATTNC_DECODE_KERNEL", "mma")])).kernel,
            Some(DecodeKernel::Mma)
        );
    }
}
