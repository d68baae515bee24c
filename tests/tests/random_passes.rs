//! Generated programs through every CPU pass against the f64 oracle (`attnc_tests::passes`):
//! the backward (dQ, dK, dV, gradients of f32 tensors and of the f32 param, with and
//! without dLSE) and decoding against contiguous and paged KV caches. The forward on
//! generated programs is `random_programs.rs`.
//!
//! A failure prints the seed, the program and the shape; rerun one case with
//! `ATTNC_SEED=<seed>`. Default 30 cases per pass; `ATTNC_CASES=N` runs more.

use attnc_tests::passes::{Target, backward_case, decode_case};

fn cases(f: fn(u64, &Target) -> Result<(), String>) {
    let t = Target::cpu();
    if let Ok(s) = std::env::var("ATTNC_SEED") {
        f(s.parse().expect("ATTNC_SEED is a u64"), &t).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let n: u64 =
        std::env::var("ATTNC_CASES").map_or(30, |s| s.parse().expect("ATTNC_CASES is a number"));
    let failed: Vec<String> = (0..n).filter_map(|seed| f(seed, &t).err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed; the first:\n{}",
        failed.len(),
        failed[0]
    );
}

#[test]
fn random_programs_cpu_backward_vs_oracle() {
    cases(backward_case);
}

#[test]
fn random_programs_cpu_decode_vs_cache_oracle() {
    cases(decode_case);
}
