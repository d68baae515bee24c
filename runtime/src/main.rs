//! The `attnc` command-line tool: check, emit, run, blockmask, bench, demo.
//!
//! In: `.attn` files, safetensors inputs, flags. Out: diagnostics, IR/CLIF/PTX text,
//! safetensors outputs, pictures and benchmark numbers on stdout. Exit code 1 on any
//! user error (printed as a diagnostic), 2 on bad usage (clap).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
