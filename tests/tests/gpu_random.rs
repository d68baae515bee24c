//! Generated programs through every GPU pass against the f64 oracle
//! (`attnc_tests::passes`): the forward, the backward (dQ, dK, dV, gradients of f32
//! tensors and of the f32 param, with and without dLSE), the caller-buffer backward
//! (Python's path: captures on the device, against `Bound::backward` bit for bit and its
//! device-made block ranges against the host's) and decoding against contiguous and paged
//! KV caches, in bf16 and f16, head dims 64 and 128 (even and odd seeds), random shapes up
//! to 300 rows; the forward, the backward and decoding of generated document masks
//! (`Gen::documents`), each test's line saying how many ran on document tiles.
//!
//! `harness = false` (libtest-mimic): without a CUDA device every test prints
//! `test NAME ... ignored` after a `SKIPPED NAME: no CUDA device` line. On the GPU
//! machine: `gpu_random` (all), `gpu_random backward` (a filter); `ATTNC_CASES=N` cases
//! per test (default 40); a failure prints the seed, the program and the shape, and
//! `ATTNC_SEED=<seed> gpu_random <test>` reruns that case alone.

use attnc::DType;
use attnc::cuda::{CudaDevice, CudaError};
use attnc_tests::passes::{
    DOC_TILED, Target, backward_case, caller_backward_case, decode_case, doc_backward_case,
    doc_decode_case, doc_forward_case, forward_case,
};
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::atomic::Ordering;

type Case = fn(u64, &Target) -> Result<(), String>;

fn run(f: Case, dtype: DType) -> Result<(), Failed> {
    let t = Target::cuda(dtype);
    let seeds: Vec<u64> = match std::env::var("ATTNC_SEED") {
        Ok(s) => vec![s.parse().map_err(|_| "ATTNC_SEED is a u64")?],
        Err(_) => {
            let n = std::env::var("ATTNC_CASES").map_or(Ok(40), |s| s.parse::<u64>());
            (0..n.map_err(|_| "ATTNC_CASES is a number")?).collect()
        }
    };
    let before = DOC_TILED.each_ref().map(|c| c.load(Ordering::Relaxed));
    let failed: Vec<String> = seeds.iter().filter_map(|&s| f(s, &t).err()).collect();
    let tiled = [0, 1].map(|i| DOC_TILED[i].load(Ordering::Relaxed) - before[i]);
    if failed.is_empty() {
        println!(
            "  {} cases passed ({} forward / {} backward calls on document tiles, counted \
             for the whole process: the tests run in parallel)",
            seeds.len(),
            tiled[0],
            tiled[1]
        );
        Ok(())
    } else {
        let shown: Vec<&str> = failed.iter().take(3).map(String::as_str).collect();
        Err(format!(
            "{} of {} cases failed; the first:\n{}",
            failed.len(),
            seeds.len(),
            shown.join("\n---\n")
        )
        .into())
    }
}

fn main() {
    let args = Arguments::from_args();
    let device = if args.list {
        false
    } else {
        match CudaDevice::new(0) {
            Ok(_) => true,
            Err(e @ (CudaError::NoDriver | CudaError::NoDevice(_))) => {
                println!("SKIPPED gpu_random: no CUDA device ({e})");
                false
            }
            Err(e) => panic!("opening the CUDA device failed: {e}"),
        }
    };
    let tests: [(&str, Case, DType); 14] = [
        ("gpu_random_forward_bf16", forward_case, DType::BF16),
        ("gpu_random_forward_f16", forward_case, DType::F16),
        ("gpu_random_backward_bf16", backward_case, DType::BF16),
        ("gpu_random_backward_f16", backward_case, DType::F16),
        // the caller-buffer backward (Python's path), captures on the device
        (
            "gpu_random_caller_backward_bf16",
            caller_backward_case,
            DType::BF16,
        ),
        (
            "gpu_random_caller_backward_f16",
            caller_backward_case,
            DType::F16,
        ),
        (
            "gpu_random_documents_forward_bf16",
            doc_forward_case,
            DType::BF16,
        ),
        (
            "gpu_random_documents_forward_f16",
            doc_forward_case,
            DType::F16,
        ),
        (
            "gpu_random_documents_backward_bf16",
            doc_backward_case,
            DType::BF16,
        ),
        (
            "gpu_random_documents_backward_f16",
            doc_backward_case,
            DType::F16,
        ),
        (
            "gpu_random_documents_decode_bf16",
            doc_decode_case,
            DType::BF16,
        ),
        (
            "gpu_random_documents_decode_f16",
            doc_decode_case,
            DType::F16,
        ),
        ("gpu_random_decode_bf16", decode_case, DType::BF16),
        ("gpu_random_decode_f16", decode_case, DType::F16),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f, dtype)| Trial::test(name, move || run(f, dtype)).with_ignored_flag(!device))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
