//! Command-line parsing (clap) and dispatch to one module per subcommand.
//!
//! In: `std::env::args`. Out: the process exit code.

/// `println!` for command output: a closed pipe (`attnc emit ptx F | head`) ends the
/// process quietly instead of panicking; any other write error exits 1 (see [`write_out`]).
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::write_out(&format!($($t)*), true) };
}
/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::write_out(&format!($($t)*), false) };
}

mod bench;
mod blockmask;
mod decode;
mod demo;
mod grad;
mod run;

use attnc::{Compiled, Error, ParamValue};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `attnc --version`: the crate version, the LLVM attnc generates PTX with and the CUDA
/// driver API it is built against (the driver itself is loaded at run time).
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let (major, minor, patch) = attnc_compiler::backend::llvm::llvm_version();
    format!(
        "{} (LLVM {major}.{minor}.{patch}; CUDA driver API 12.8, loaded at run time)",
        env!("CARGO_PKG_VERSION")
    )
});

#[derive(Parser)]
#[command(
    name = "attnc",
    version = VERSION.as_str(),
    about = "A compiler for attention variants: .attn score/mask functions to fused kernels"
)]
struct Cli {
    /// Colour diagnostics: auto (on a terminal, unless NO_COLOR is set), always or never
    #[arg(long, value_enum, default_value = "auto", global = true)]
    color: ColorArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

/// The GPU architectures `--arch` accepts (`Arch::parse`).
const ARCHS: [&str; 5] = ["sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"];

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum BackendArg {
    Reference,
    Cpu,
    Cuda,
}

impl BackendArg {
    pub(crate) fn backend(self) -> attnc::Backend {
        match self {
            BackendArg::Reference => attnc::Backend::Reference,
            BackendArg::Cpu => attnc::Backend::Cpu,
            BackendArg::Cuda => attnc::Backend::Cuda,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum EmitKind {
    /// The optimized IR in its textual form
    Ir,
    /// Cranelift IR of the CPU kernel
    Clif,
    /// PTX of the GPU kernel
    Ptx,
    /// LLVM IR of the GPU kernel
    Llvm,
}

#[derive(Subcommand)]
enum Command {
    /// Check files for errors; prints diagnostics, exits 1 if any file has an error
    Check {
        /// The .attn files to check
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the IR, CLIF, PTX or LLVM IR of an attention
    Emit {
        /// What to print
        kind: EmitKind,
        /// The .attn file
        file: PathBuf,
        /// The attention to emit (needed when the file defines several)
        #[arg(long)]
        attention: Option<String>,
        /// GPU architecture for ptx/llvm
        #[arg(long, default_value = "sm_90", value_parser = ARCHS)]
        arch: String,
        /// Head dimension the kernel is specialized for
        #[arg(long, default_value_t = 128)]
        d: usize,
        /// Input dtype for ptx/llvm
        #[arg(long, default_value = "bf16", value_parser = ["bf16", "f16"])]
        dtype: String,
        /// Print where code generation time went (ptx/llvm) on stderr
        #[arg(long)]
        time: bool,
        /// With `ir`: the score's derivative IR (score, d/ds, d/d each tensor read and f32 param)
        #[arg(long)]
        grad: bool,
    },
    /// Run an attention on tensors from a safetensors file (q, k, v and captures by name)
    Run {
        /// The .attn file
        file: PathBuf,
        /// The attention to run (needed when the file defines several)
        #[arg(long)]
        attention: Option<String>,
        /// Safetensors file with q, k, v ([B, H, L, D], f32/f16/bf16) and captured tensors by name
        #[arg(long)]
        inputs: PathBuf,
        /// Safetensors file to write o and lse to
        #[arg(long)]
        output: PathBuf,
        /// Backend to run on
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Softmax scale, a finite number (default 1/sqrt(D))
        #[arg(long, value_parser = parse_scale)]
        scale: Option<f32>,
        /// A runtime param value, NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = check_param)]
        params: Vec<String>,
        /// Report out-of-range tensor reads instead of clamping
        #[arg(long)]
        checked: bool,
        /// CPU threads (0 = all cores)
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// CUDA JIT tiers: off, on, or the quick tier's ptxas level 0-3 (default: $ATTNC_JIT_TIERS, else off)
        #[arg(long, value_parser = parse_tiers)]
        jit_tiers: Option<attnc::cuda::JitTiers>,
        /// Also run the backward: reads `do` (and `dlse` if present) from --inputs and writes
        /// dq, dk, dv and d<name> for every differentiable capture/param besides o and lse
        #[arg(long)]
        grad: bool,
        /// With --grad: allow the faster non-deterministic backward (cuda on sm_90: dQ's
        /// parts added in any order, q tiles of 80 at dense D128; dq then differs in its
        /// last bits from run to run). The cpu and reference backends are deterministic anyway
        #[arg(long, requires = "grad")]
        nondeterministic: bool,
        /// Attend against a KV cache: reads q, k_cache, v_cache, seq_lens (+ page_table when paged)
        #[arg(long, value_enum)]
        kv_cache: Option<decode::KvCacheArg>,
    },
    /// Show the block structure of an attention's mask (derived by analysis) as text and pictures
    Blockmask {
        /// The .attn file
        file: PathBuf,
        /// The attention whose mask to show (needed when the file defines several)
        #[arg(long)]
        attention: Option<String>,
        /// Query length
        #[arg(long)]
        lq: usize,
        /// Key/value length
        #[arg(long)]
        lkv: usize,
        /// Block sizes QxK (or one number for both), e.g. 128x64
        #[arg(long, default_value = "128x128", value_parser = check_block)]
        block: String,
        /// Batch size (captured tensors with a B dimension must match)
        #[arg(long, alias = "b", default_value_t = 1)]
        batch: usize,
        /// Number of heads (captured tensors with an H dimension must match)
        #[arg(long, alias = "h", default_value_t = 1)]
        heads: usize,
        /// Captured tensors (safetensors)
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// A runtime param value, NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = check_param)]
        params: Vec<String>,
        /// Also write the block map as a PNG picture to this file
        #[arg(long)]
        png: Option<PathBuf>,
        /// Also write the block map as an SVG picture to this file
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Also count partial blocks exactly by brute force (small lengths only)
        #[arg(long)]
        exact: bool,
    },
    /// Time an attention on a backend with random inputs
    Bench {
        /// The .attn file
        file: PathBuf,
        /// The attention to time (needed when the file defines several)
        #[arg(long)]
        attention: Option<String>,
        /// Backend to time
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Batch size
        #[arg(
            long = "batch",
            alias = "b",
            default_value_t = 1,
            conflicts_with = "decode"
        )]
        b: usize,
        /// Number of query heads
        #[arg(
            long = "heads",
            alias = "h",
            default_value_t = 8,
            conflicts_with = "decode"
        )]
        h: usize,
        /// Number of kv heads (default: = heads; GQA when fewer)
        #[arg(long, conflicts_with = "decode")]
        hkv: Option<usize>,
        /// Query length
        #[arg(long, default_value_t = 2048, conflicts_with = "decode")]
        lq: usize,
        /// Key/value length (default: = lq)
        #[arg(long, conflicts_with = "decode")]
        lkv: Option<usize>,
        /// Head dimension D = Dv
        #[arg(long, default_value_t = 64)]
        d: usize,
        /// Input dtype
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
        /// CPU threads (0 = all cores)
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Timed calls after the warm-up
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// A runtime param value, NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = check_param)]
        params: Vec<String>,
        /// Number of sorted ids (documents) in synthetic integer tensors
        #[arg(long, default_value_t = 8, conflicts_with = "decode")]
        docs: usize,
        /// CUDA JIT tiers: off, on, or the quick tier's ptxas level 0-3 (default: $ATTNC_JIT_TIERS, else off)
        #[arg(long, value_parser = parse_tiers, conflicts_with = "decode")]
        jit_tiers: Option<attnc::cuda::JitTiers>,
        /// Also time the backward (forward and backward timed separately; not with --decode)
        #[arg(long, conflicts_with = "decode")]
        grad: bool,
        /// With --grad: time the faster non-deterministic backward (cuda on sm_90: dQ's
        /// parts added in any order, q tiles of 80 at dense D128); cpu is deterministic anyway
        #[arg(long, requires = "grad")]
        nondeterministic: bool,
        /// Decoding against a KV cache over issue 12's shapes (or --decode-shape), D = --d;
        /// the prefill shape (--batch, --heads, --hkv, --lq, --lkv, --docs) does not apply
        #[arg(long)]
        decode: bool,
        /// --decode: cache layouts to run
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "contiguous,paged",
            requires = "decode"
        )]
        kv_cache: Vec<decode::KvCacheArg>,
        /// --decode: page sizes of the paged layout
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "16,128",
            requires = "decode"
        )]
        page_size: Vec<usize>,
        /// --decode: a shape B,HQ,HKV,LQ,LKV (repeatable; default: issue 12's list)
        #[arg(long = "decode-shape", value_parser = decode::parse_shape, requires = "decode")]
        decode_shapes: Vec<decode::DecodeShapeArg>,
    },
    /// Print the GPU the cuda backend would use (exit 1 when there is none)
    CudaInfo,
    /// Compile and run every example on random inputs; compare each backend with the oracle
    Demo {
        /// Folder of .attn files
        #[arg(default_value = "examples")]
        dir: PathBuf,
        /// Backends to run (reference is always the oracle)
        #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
        backends: Vec<BackendArg>,
        /// Head dim D = Dv of the demo shape (the CUDA kernel's path depends on it: on
        /// sm_90, 64 and 128 run the wgmma kernel, other sizes mma.sync)
        #[arg(long, default_value_t = 32)]
        d: usize,
    },
}

/// `--scale`: a finite f32 (NaN and infinities are usage errors).
fn parse_scale(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(x) => Err(format!(
            "the softmax scale must be a finite number, got {x}"
        )),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

/// `--param`: checks the NAME=VALUE form and the value (kept as text; [`parse_params`]
/// decides the type when binding).
fn check_param(s: &str) -> Result<String, String> {
    parse_params(&[s.to_string()]).map_err(|e| match e {
        Error::Usage(m) => m,
        other => other.to_string(),
    })?;
    Ok(s.to_string())
}

/// `--block`: QxK or N, positive.
fn check_block(s: &str) -> Result<String, String> {
    blockmask::parse_block(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_tiers(s: &str) -> Result<attnc::cuda::JitTiers, String> {
    attnc::cuda::JitTiers::parse(s)
}

/// Parses `NAME=VALUE` params; the value's type is decided when binding (an integer
/// literal is accepted for an f32 param).
pub(crate) fn parse_params(items: &[String]) -> Result<Vec<(String, ParamValue)>, Error> {
    items
        .iter()
        .map(|s| {
            let (name, value) = s
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("--param expects NAME=VALUE, got `{s}`")))?;
            let v = if let Ok(i) = value.parse::<i32>() {
                ParamValue::I32(i)
            } else if let Ok(f) = value.parse::<f32>() {
                ParamValue::F32(f)
            } else if let Ok(b) = value.parse::<bool>() {
                ParamValue::Bool(b)
            } else {
                return Err(Error::Usage(format!(
                    "--param {name}: `{value}` is not a number or bool"
                )));
            };
            Ok((name.trim().to_string(), v))
        })
        .collect()
}

/// `ATTNC_LOG` (a `tracing` filter: `info`, `debug`, `attnc=debug`, ...) shows the spans
/// of the front end, analysis, codegen, ptxas (the driver's compile of PTX) and cache lookups on stderr, each closing with
/// its time; warnings (cache write errors, deleted corrupt entries) show by default.
fn init_tracing(color: bool) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATTNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_span_events(FmtSpan::CLOSE)
        .try_init();
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    let color = match cli.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    attnc_compiler::diag::set_color(color);
    init_tracing(color);
    let result = match cli.command {
        Command::Check { files } => return check(&files),
        Command::Emit {
            kind,
            file,
            attention,
            arch,
            d,
            dtype,
            time,
            grad,
        } => {
            if grad {
                emit_grad(kind, &file, attention.as_deref())
            } else {
                emit(kind, &file, attention.as_deref(), &arch, d, &dtype, time)
            }
        }
        Command::Run {
            file,
            attention,
            inputs,
            output,
            backend,
            scale,
            params,
            checked,
            threads,
            jit_tiers,
            kv_cache,
            grad,
            nondeterministic,
        } => {
            let args = run::RunArgs {
                file,
                attention,
                inputs,
                output,
                backend,
                scale,
                params,
                checked,
                threads,
                jit_tiers,
            };
            match (kv_cache, grad) {
                (Some(_), true) => Err(Error::Usage(
                    "--grad and --kv-cache do not combine (the backward takes whole sequences)"
                        .into(),
                )),
                (Some(layout), false) => decode::run(&args, layout),
                (None, true) => grad::run(&args, nondeterministic),
                (None, false) => run::run(&args),
            }
        }
        Command::Demo { dir, backends, d } => demo::demo(&dir, &backends, d),
        Command::CudaInfo => attnc::cuda_device_info().map(|s| outln!("{s}")),
        Command::Blockmask {
            file,
            attention,
            lq,
            lkv,
            block,
            batch,
            heads,
            inputs,
            params,
            png,
            svg,
            exact,
        } => blockmask::blockmask(&blockmask::BlockmaskArgs {
            file,
            attention,
            lq,
            lkv,
            block,
            batch,
            head: heads,
            inputs,
            params,
            png,
            svg,
            exact,
        }),
        Command::Bench {
            file,
            attention,
            backend,
            b,
            h,
            hkv,
            lq,
            lkv,
            d,
            dtype,
            threads,
            iters,
            params,
            docs,
            jit_tiers,
            decode,
            kv_cache,
            page_size,
            decode_shapes,
            grad,
            nondeterministic,
        } => {
            if decode {
                decode::bench(&decode::BenchArgs {
                    file: &file,
                    attention: attention.as_deref(),
                    backend: backend.backend(),
                    shapes: decode_shapes,
                    layouts: kv_cache,
                    page_sizes: page_size,
                    d,
                    dtype: &dtype,
                    threads,
                    iters,
                    params: &params,
                })
            } else {
                let shape = attnc::Shape {
                    b,
                    hq: h,
                    hkv: hkv.unwrap_or(h),
                    lq,
                    lkv: lkv.unwrap_or(lq),
                    d,
                    dv: d,
                };
                let args = bench::BenchArgs {
                    file,
                    attention,
                    backend,
                    shape,
                    dtype,
                    threads,
                    iters,
                    params,
                    docs,
                    jit_tiers,
                };
                bench::bench(&args).and_then(|_| {
                    if grad {
                        grad::bench(&args, nondeterministic)
                    } else {
                        Ok(())
                    }
                })
            }
        }
    };
    // let the tiered JIT's background compiles store their optimized cubins before the
    // process exits (no wait when the CUDA backend was not used)
    attnc::wait_for_background_jit(std::time::Duration::from_secs(60));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", render_error(&e));
            1
        }
    }
}

pub(crate) fn render_error(e: &Error) -> String {
    match e {
        Error::Compile { rendered, count } => format!(
            "{rendered}error: could not compile: {count} error{}",
            if *count == 1 { "" } else { "s" }
        ),
        other => format!("error: {other}"),
    }
}

fn check(files: &[PathBuf]) -> i32 {
    let mut failed = 0;
    for f in files {
        match Compiled::from_file(f) {
            Ok(c) => outln!("ok: {} ({})", f.display(), c.names().join(", ")),
            Err(e) => {
                eprintln!("{}", render_error(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} file{} failed",
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        );
        1
    } else {
        0
    }
}

/// `attnc emit ir --grad`: the derivative IR of the score (`attnc_compiler::grad`).
fn emit_grad(kind: EmitKind, file: &std::path::Path, attention: Option<&str>) -> Result<(), Error> {
    if kind != EmitKind::Ir {
        return Err(Error::Usage("--grad is only for `emit ir`".into()));
    }
    let compiled = Compiled::from_file(file)?;
    let variant = compiled.select(attention)?;
    let p = variant.program();
    let g = attnc_compiler::grad::differentiate(p);
    out!("{}", attnc_compiler::grad::write_score_grad(p, &g));
    Ok(())
}

fn emit(
    kind: EmitKind,
    file: &std::path::Path,
    attention: Option<&str>,
    arch: &str,
    d: usize,
    dtype: &str,
    time: bool,
) -> Result<(), Error> {
    let compiled = Compiled::from_file(file)?;
    let variant = compiled.select(attention)?;
    match kind {
        EmitKind::Ir => out!("{}", attnc_compiler::ir::write_program(variant.program())),
        EmitKind::Clif => {
            let opts = attnc_compiler::backend::cranelift::CpuOptions::default();
            let plan = attnc_compiler::plan::Plan::new(variant.program());
            let kind = attnc_compiler::backend::KernelKind::Forward;
            let text =
                attnc_compiler::backend::cranelift::emit_clif(&plan, kind, &opts).map_err(|e| {
                    Error::Backend {
                        backend: "cpu",
                        message: e.to_string(),
                    }
                })?;
            out!("{text}");
        }
        EmitKind::Ptx | EmitKind::Llvm => {
            use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, PtxOptions, generate};
            let arch = Arch::parse(arch)
                .ok_or_else(|| Error::Usage(format!("--arch: `{arch}` is not sm_80 or sm_90")))?;
            let input = match dtype {
                "bf16" => InputType::Bf16,
                "f16" => InputType::F16,
                other => {
                    return Err(Error::Usage(format!(
                        "--dtype: `{other}` is not bf16 or f16"
                    )));
                }
            };
            let max = attnc_compiler::shape::MAX_HEAD_DIM;
            if d == 0 || d > max {
                return Err(Error::Usage(format!(
                    "--d {d}: the head dimension must be between 1 and {max}"
                )));
            }
            let opts = PtxOptions::new(arch, d as u32, d as u32, input);
            let text = if kind == EmitKind::Ptx {
                EmitText::PtxOnly
            } else {
                EmitText::PtxAndLlvm
            };
            let plan = attnc_compiler::plan::Plan::new(variant.program());
            let forward = attnc_compiler::backend::KernelKind::Forward;
            let (k, t) = generate(&plan, forward, &opts, text).map_err(|e| Error::Backend {
                backend: "llvm",
                message: e.to_string(),
            })?;
            if time {
                eprintln!(
                    "codegen {:.1} ms (llvm build {:.1}, opt {:.1}, ptx {:.1})",
                    t.total_ms, t.build_ms, t.opt_ms, t.ptx_ms
                );
            }
            // which kv-bounds source the kernel takes, as a comment of the emitted language
            let (comment, text) = if kind == EmitKind::Ptx {
                ("//", &k.ptx)
            } else {
                (";", &k.llvm_ir)
            };
            out!("{comment} attnc: kv bounds: {}\n{text}", k.kv_bounds);
        }
    }
    Ok(())
}

/// A shape as the commands print it: `B2 Hq4 Hkv2 Lq77 Lkv77 D64` (`Dv` not shown).
pub(crate) fn shape_words(s: &attnc::Shape) -> String {
    format!(
        "B{} Hq{} Hkv{} Lq{} Lkv{} D{}",
        s.b, s.hq, s.hkv, s.lq, s.lkv, s.d
    )
}

/// Writes command output to stdout and flushes it. A closed pipe (`| head`) ends the
/// process quietly with status 0; any other write error (`> /dev/full`) is reported on
/// stderr and exits with status 1, so output is never lost silently.
pub(crate) fn write_out(text: &str, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let r = stdout
        .write_all(text.as_bytes())
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every argument of every subcommand has help text (issue 14).
    #[test]
    fn every_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
