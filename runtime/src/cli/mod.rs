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

#[derive(Parser)]
#[command(
    name = "attnc",
    version,
    about = "A compiler for attention variants: .attn score/mask functions to fused kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the IR, CLIF, PTX or LLVM IR of an attention
    Emit {
        kind: EmitKind,
        file: PathBuf,
        #[arg(long)]
        attention: Option<String>,
        /// GPU architecture for ptx/llvm (sm_80 or sm_90)
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Head dimension the kernel is specialized for
        #[arg(long, default_value_t = 128)]
        d: usize,
        /// Input dtype for ptx/llvm (bf16 or f16)
        #[arg(long, default_value = "bf16")]
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
        file: PathBuf,
        #[arg(long)]
        attention: Option<String>,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Softmax scale (default 1/sqrt(D))
        #[arg(long)]
        scale: Option<f32>,
        /// A runtime param value, NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE")]
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
        /// Attend against a KV cache: reads q, k_cache, v_cache, seq_lens (+ page_table when paged)
        #[arg(long, value_enum)]
        kv_cache: Option<decode::KvCacheArg>,
    },
    /// Show the block structure of an attention's mask (derived by analysis) as text and pictures
    Blockmask {
        file: PathBuf,
        #[arg(long)]
        attention: Option<String>,
        #[arg(long)]
        lq: usize,
        #[arg(long)]
        lkv: usize,
        /// Block sizes QxK (or one number for both)
        #[arg(long, default_value = "128x128")]
        block: String,
        /// Batch size (captured tensors with a B dimension must match)
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Number of heads (captured tensors with an H dimension must match)
        #[arg(long, default_value_t = 1)]
        heads: usize,
        /// Captured tensors (safetensors)
        #[arg(long)]
        inputs: Option<PathBuf>,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[arg(long)]
        png: Option<PathBuf>,
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Also count partial blocks exactly by brute force (small lengths only)
        #[arg(long)]
        exact: bool,
    },
    /// Time an attention on a backend with random inputs
    Bench {
        file: PathBuf,
        #[arg(long)]
        attention: Option<String>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[arg(long, default_value_t = 1)]
        b: usize,
        #[arg(long, default_value_t = 8)]
        h: usize,
        /// kv heads (default: = h)
        #[arg(long)]
        hkv: Option<usize>,
        #[arg(long, default_value_t = 2048)]
        lq: usize,
        /// default: = lq
        #[arg(long)]
        lkv: Option<usize>,
        #[arg(long, default_value_t = 64)]
        d: usize,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Number of sorted ids (documents) in synthetic integer tensors
        #[arg(long, default_value_t = 8)]
        docs: usize,
        /// CUDA JIT tiers: off, on, or the quick tier's ptxas level 0-3 (default: $ATTNC_JIT_TIERS, else off)
        #[arg(long, value_parser = parse_tiers)]
        jit_tiers: Option<attnc::cuda::JitTiers>,
        /// Also time the backward (forward and backward timed separately)
        #[arg(long)]
        grad: bool,
        /// Decoding against a KV cache over issue 12's shapes (or --decode-shape), D = --d
        #[arg(long)]
        decode: bool,
        /// --decode: cache layouts to run
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "contiguous,paged"
        )]
        kv_cache: Vec<decode::KvCacheArg>,
        /// --decode: page sizes of the paged layout
        #[arg(long, value_delimiter = ',', default_value = "16,128")]
        page_size: Vec<usize>,
        /// --decode: a shape B,HQ,HKV,LQ,LKV (repeatable; default: issue 12's list)
        #[arg(long = "decode-shape", value_parser = decode::parse_shape)]
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

pub fn main() -> i32 {
    let cli = Cli::parse();
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
                (None, true) => grad::run(&args),
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
            grad: _,
        } if decode => decode::bench(&decode::BenchArgs {
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
        .map(|_| {
            let _ = (b, h, hkv, lq, lkv, docs, jit_tiers);
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
            grad,
            ..
        } => {
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
            bench::bench(&args).and_then(|_| if grad { grad::bench(&args) } else { Ok(()) })
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
            let text = attnc_compiler::backend::cranelift::emit_clif(variant.program(), &opts)
                .map_err(|e| Error::Backend {
                    backend: "cpu",
                    message: e.to_string(),
                })?;
            out!("{text}");
        }
        EmitKind::Ptx | EmitKind::Llvm => {
            use attnc_compiler::backend::llvm::{
                Arch, EmitText, InputType, PtxOptions, emit_timed,
            };
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
            let opts = PtxOptions::new(arch, d as u32, d as u32, input);
            let text = if kind == EmitKind::Ptx {
                EmitText::PtxOnly
            } else {
                EmitText::PtxAndLlvm
            };
            let (k, t) =
                emit_timed(variant.program(), &opts, text).map_err(|e| Error::Backend {
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
