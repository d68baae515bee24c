//! Command-line parsing (clap) and dispatch to one module per subcommand.
//!
//! In: `std::env::args`. Out: the process exit code.

mod demo;
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
    },
    /// Compile and run every example on random inputs; compare each backend with the oracle
    Demo {
        /// Folder of .attn files
        #[arg(default_value = "examples")]
        dir: PathBuf,
        /// Backends to run (reference is always the oracle)
        #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
        backends: Vec<BackendArg>,
    },
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
        } => emit(kind, &file, attention.as_deref(), &arch, d, &dtype),
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
        } => run::run(&run::RunArgs {
            file,
            attention,
            inputs,
            output,
            backend,
            scale,
            params,
            checked,
            threads,
        }),
        Command::Demo { dir, backends } => demo::demo(&dir, &backends),
    };
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
            Ok(c) => println!("ok: {} ({})", f.display(), c.names().join(", ")),
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

fn emit(
    kind: EmitKind,
    file: &std::path::Path,
    attention: Option<&str>,
    _arch: &str,
    _d: usize,
    _dtype: &str,
) -> Result<(), Error> {
    let compiled = Compiled::from_file(file)?;
    let variant = compiled.select(attention)?;
    match kind {
        EmitKind::Ir => print!("{}", attnc_compiler::ir::write_program(variant.program())),
        EmitKind::Clif | EmitKind::Ptx | EmitKind::Llvm => {
            return Err(Error::BackendUnavailable {
                backend: "emit",
                reason: format!("{kind:?} output is not built into this version"),
            });
        }
    }
    Ok(())
}
