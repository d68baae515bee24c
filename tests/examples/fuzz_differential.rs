//! Runs the differential fuzz check (`attnc_tests::fuzzdiff`) without libFuzzer: random
//! inputs from a seeded SplitMix64, for a given number of executions or seconds.
//!
//! `cargo run -p attnc-tests --example fuzz_differential -- [--mode both|builtins|programs|backward|decode|documents|mutate|ptx] [--execs N] [--secs S] [--seed X]`
//!
//! Prints progress every 10 s and a final `fuzz_differential: N executions (B builtin
//! sweeps, P programs), 0 failures in S s`; on a failure prints the input (hex) and the
//! message and exits 1. The same check runs under libFuzzer as `fuzz/fuzz_targets/differential.rs`.
//!
//! `ptx` runs generated programs through the PTX generator with a binding's options for
//! every kernel kind (`attnc_tests::fuzzdiff::ptx_kernels`; no GPU needed): an error or
//! an LLVM abort (the process dies) is a failure; each case's seed goes to stderr first
//! (`\r`-separated), so an abort's last one names the program
//! (`attnc_tests::fuzzdiff::ptx_kernels(seed)` reruns it).
//!
//! `backward` and `decode` run the other passes on generated programs instead
//! (`attnc_tests::passes::{backward_case, decode_case}` on the CPU target, as
//! `tests/tests/random_passes.rs` does for seeds 0..30): each execution draws a case
//! seed; a failure prints it, and `ATTNC_SEED=<seed> cargo test -p attnc-tests --test
//! random_passes` reruns that one case. `documents` runs the forward, the backward and decoding of
//! generated document masks (`attnc_tests::passes::{doc_forward_case, doc_backward_case,
//! doc_decode_case}`), most on document tiles (the final line counts them); a failure's
//! seed reruns with `ATTNC_SEED=<seed> cargo test -p attnc-tests --test random_passes
//! random_documents`. `mutate` takes mutated example files and generated programs
//! through the compiler, both CPU backends and the kernel generators
//! (`attnc_tests::mutate::case`): a panic is a failure (stderr names the case's seed;
//! `ATTNC_SEED=<seed> cargo test -p attnc-tests --test mutated_programs` reruns it).

use attnc::synth::Rng;
use attnc_tests::fuzzdiff;
use attnc_tests::passes::{
    DOC_TILED, Target, backward_case, decode_case, doc_backward_case, doc_decode_case,
    doc_forward_case,
};
use std::time::{Duration, Instant};

fn main() {
    let mut mode = "both".to_string();
    let mut execs = u64::MAX;
    let mut secs = u64::MAX;
    let mut seed = 1u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--mode" => mode = val(),
            "--execs" => execs = val().parse().expect("--execs N"),
            "--secs" => secs = val().parse().expect("--secs S"),
            "--seed" => seed = val().parse().expect("--seed X"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        matches!(
            mode.as_str(),
            "both"
                | "builtins"
                | "programs"
                | "backward"
                | "decode"
                | "documents"
                | "mutate"
                | "ptx"
        ),
        "--mode both|builtins|programs|backward|decode|documents|mutate|ptx"
    );
    let target = Target::cpu();
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut last = t0;
    let (mut n, mut sweeps, mut progs) = (0u64, 0u64, 0u64);
    let (mut mutants, mut ran) = (0u64, 0u64);
    while n < execs && t0.elapsed() < Duration::from_secs(secs) {
        let len = 4 + 4 * fuzzdiff::SWEEP + 8;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let r = match mode.as_str() {
            "builtins" => {
                sweeps += 1;
                fuzzdiff::builtins(&data)
            }
            "programs" => {
                progs += 1;
                fuzzdiff::programs(&data)
            }
            "ptx" => {
                progs += 1;
                let case = rng.next_u64();
                eprint!("\rptx case seed {case} ");
                fuzzdiff::ptx_kernels(case)
            }
            "mutate" => {
                progs += 1;
                let case = rng.next_u64();
                eprint!("\rmutate case seed {case} ");
                attnc_tests::mutate::case(case, true).map(|r| {
                    mutants += r.rejected as u64 + u64::from(r.compiled);
                    ran += u64::from(r.ran);
                })
            }
            "documents" => {
                progs += 1;
                let case = rng.next_u64();
                doc_forward_case(case, &target)
                    .and_then(|()| doc_backward_case(case, &target))
                    .and_then(|()| doc_decode_case(case, &target))
                    .map_err(|e| format!("case seed {case} (ATTNC_SEED={case})\n{e}"))
            }
            "backward" | "decode" => {
                progs += 1;
                let case = rng.next_u64();
                let pass = if mode == "backward" {
                    backward_case
                } else {
                    decode_case
                };
                pass(case, &target)
                    .map_err(|e| format!("case seed {case} (ATTNC_SEED={case})\n{e}"))
            }
            _ => {
                sweeps += 1;
                progs += 1;
                fuzzdiff::check(&data)
            }
        };
        n += 1;
        if let Err(e) = r {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            println!("FAILURE after {n} executions\ninput: {hex}\n{e}");
            std::process::exit(1);
        }
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            println!(
                "{n} executions ({sweeps} builtin sweeps, {progs} programs) in {:.0} s",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let nudged = attnc_tests::passes::NUDGED.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "fuzz_differential: {n} executions ({sweeps} builtin sweeps, {progs} programs), 0 failures in {:.1} s (mode {mode}, seed {seed}){}{}",
        t0.elapsed().as_secs_f64(),
        if mode == "backward" || mode == "documents" {
            format!(
                "; {nudged} judged with q nudged (a kink of the score within rounding: passes::backward_case)"
            )
        } else {
            String::new()
        },
        if mode == "mutate" {
            format!("; {mutants} mutants compiled or rejected, {ran} ran on the CPU")
        } else if mode == "ptx" {
            let k = fuzzdiff::DOC_KERNELS.load(std::sync::atomic::Ordering::Relaxed);
            format!("; {k} document-tiled kernels among them")
        } else if mode == "documents" {
            let [f, b] = DOC_TILED
                .each_ref()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
            format!("; on document tiles: {f} forward, {b} backward")
        } else {
            String::new()
        }
    );
}
