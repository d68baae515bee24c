//! Mutated programs (`attnc_tests::mutate`): the example files and generated programs
//! with random token mutations, compiled, bound and run on the reference and CPU
//! backends (fast and checked mode, forward, backward and decoding) and, for some, through the PTX
//! generator's forward and backward kernels. Nothing may panic; a bad program is a
//! rendered compile error or an error from the call.
//!
//! A failure prints the seed and the source; rerun one case with `ATTNC_SEED=<seed>`.
//! Default 150 cases (every tenth with kernels); `ATTNC_CASES=N` runs more. The fuzz
//! driver's `--mode mutate` runs them for a given time.

use attnc_tests::mutate::{Reached, case};

#[test]
fn mutated_programs_never_panic() {
    if let Ok(s) = std::env::var("ATTNC_SEED") {
        let r = case(s.parse().expect("ATTNC_SEED is a u64"), true);
        println!("{r:?}");
        r.unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let n: u64 =
        std::env::var("ATTNC_CASES").map_or(150, |s| s.parse().expect("ATTNC_CASES is a number"));
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for seed in 0..n {
        match case(seed, seed % 10 == 0) {
            Ok(r) => all.push(r),
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed; the first:\n{}",
        failed.len(),
        failed[0]
    );
    // the mutations must leave enough programs valid to reach the backends and the
    // kernels, or the test checks only the front end
    let compiled = all.iter().filter(|r| r.compiled).count();
    let ran = all.iter().filter(|r| r.ran).count();
    let decoded = all.iter().filter(|r| r.decoded).count();
    let kernels: usize = all.iter().map(|r: &Reached| r.kernels).sum();
    println!(
        "{n} cases: {compiled} compiled, {ran} ran on the CPU, {decoded} decoded, {kernels} kernels"
    );
    assert!(
        5 * compiled >= n as usize
            && 10 * ran >= n as usize
            && 10 * decoded >= n as usize
            && kernels >= 4,
        "{compiled} compiled, {ran} ran, {decoded} decoded, {kernels} kernels of {n} cases"
    );
}
