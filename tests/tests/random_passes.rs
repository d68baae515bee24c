//! Generated programs through every CPU pass against the f64 oracle (`attnc_tests::passes`):
//! the backward (dQ, dK, dV, gradients of f32 tensors and of the f32 param, with and
//! without dLSE) and decoding against contiguous and paged KV caches; the forward and
//! the backward of generated document masks (`Gen::documents`: random linear conjuncts,
//! scores and ids), most of them on document tiles, and their decoding against a KV
//! cache. The forward on other generated
//! programs is `random_programs.rs`.
//!
//! A failure prints the seed, the program and the shape; rerun one case with
//! `ATTNC_SEED=<seed>`. Default 30 cases per pass; `ATTNC_CASES=N` runs more.

use attnc_tests::passes::{
    DOC_TILED, Target, backward_case, decode_case, doc_backward_case, doc_decode_case,
    doc_forward_case,
};
use std::sync::atomic::Ordering;

/// Runs `f` on the cases (`ATTNC_SEED` alone, else `ATTNC_CASES` or `default` seeds from
/// 0); returns how many ran.
fn cases_of(f: fn(u64, &Target) -> Result<(), String>, default: u64) -> u64 {
    let t = Target::cpu();
    if let Ok(s) = std::env::var("ATTNC_SEED") {
        f(s.parse().expect("ATTNC_SEED is a u64"), &t).unwrap_or_else(|e| panic!("{e}"));
        return 1;
    }
    let n: u64 = std::env::var("ATTNC_CASES")
        .map_or(default, |s| s.parse().expect("ATTNC_CASES is a number"));
    let failed: Vec<String> = (0..n).filter_map(|seed| f(seed, &t).err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed; the first:\n{}",
        failed.len(),
        failed[0]
    );
    n
}

fn cases(f: fn(u64, &Target) -> Result<(), String>) {
    cases_of(f, 30);
}

#[test]
fn random_programs_cpu_backward_vs_oracle() {
    cases(backward_case);
}

#[test]
fn random_programs_cpu_decode_vs_cache_oracle() {
    cases(decode_case);
}

/// Generated document masks against a KV cache (chunked prefill and decoding of packed
/// documents, ids over the logical positions).
#[test]
fn random_documents_cpu_decode_vs_cache_oracle() {
    cases(doc_decode_case);
}

/// Generated document masks (the document test, linear conjuncts, now and then one that
/// is not, random scores with captures and params, ids sorted or not, `Lq <= Lkv`): the
/// forward and the backward against the oracle, and at least a third of each on document
/// tiles (the only test here that counts them: `DOC_TILED` is per process).
#[test]
fn random_documents_cpu_forward_and_backward_vs_oracle() {
    let before = DOC_TILED.each_ref().map(|c| c.load(Ordering::Relaxed));
    let n = cases_of(doc_forward_case, 40);
    cases_of(doc_backward_case, 40);
    let tiled = [0, 1].map(|i| DOC_TILED[i].load(Ordering::Relaxed) - before[i]);
    println!("{tiled:?} of {n} forward / backward cases on document tiles");
    if std::env::var("ATTNC_SEED").is_err() {
        assert!(
            tiled.iter().all(|&t| 3 * t >= n),
            "{tiled:?} of {n} forward / backward cases on document tiles"
        );
    }
}
