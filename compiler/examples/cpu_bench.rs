//! Benchmark of the Cranelift CPU kernel alone (no runtime API) on the issue-4 variants.
//!
//! In: command-line options. Out: one line per (variant, L, D) on stdout: kernel time
//! (median of the repetitions), GFLOP/s counting only unmasked pairs
//! (4·B·H·Lq·Lkv·D·density) and the compile time (IR -> callable kernel).
//!
//! ```text
//! cargo run --release -p attnc-compiler --example cpu_bench -- --threads 2 --l 2048,4096 --d 64,128
//! ```
//!
//! The variants are `.attn` source compiled by the front end; block maps come from the
//! block-sparsity analysis and the pair counts from `analysis::density`, exactly as the
//! runtime does. Document ids are `docs` equal runs per sequence.

use attnc_compiler::analysis::classify::{analyze, build_block_maps};
use attnc_compiler::analysis::density::unmasked_pairs;
use attnc_compiler::backend::cranelift::{CpuOptions, compile};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::Scalar;
use attnc_compiler::shape::Shape;
use std::time::Instant;

/// The variants: (name, source). Params and tensors are bound in `bindings`.
const VARIANTS: &[(&str, &str)] = &[
    ("dense", "attention a {}"),
    ("causal", "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }"),
    (
        "sliding 1024",
        "param window: i32; mask c(b, h, q, kv) { q >= kv } mask w(b, h, q, kv) { q - kv <= window }
         attention a { mask = c & w; }",
    ),
    (
        "alibi+causal",
        "mask c(b, h, q, kv) { q >= kv }
         score al(s, b, h, q, kv) { s + exp2(-8.0 * (h + 1) as f32 / 8.0) * (kv - q) as f32 }
         attention a { mask = c; score = al; }",
    ),
    (
        "softcap+causal",
        "mask c(b, h, q, kv) { q >= kv } score sc(s, b, h, q, kv) { 20.0 * tanh(s / 20.0) }
         attention a { mask = c; score = sc; }",
    ),
    (
        "document+causal (8 docs)",
        "tensor doc: i32[B, KV]; mask c(b, h, q, kv) { q >= kv }
         mask d(b, h, q, kv) { doc[b, q] == doc[b, kv] } attention a { mask = c & d; }",
    ),
];

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(args: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// `window` = 1024 for the params; `doc` = 8 equal documents per batch for the tensors.
fn bindings(p: &attnc_compiler::ir::Program, b: usize, l: usize) -> Bindings {
    let params = p.params.iter().map(|_| Scalar::I32(1024)).collect();
    let tensors = p
        .tensors
        .iter()
        .map(|_| BoundTensor {
            dims: vec![b, l],
            data: TensorData::I32((0..b * l).map(|i| ((i % l) * 8 / l) as i32).collect()),
        })
        .collect();
    Bindings { params, tensors }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads", 2);
    let reps: usize = arg(&args, "--reps", 3);
    let (b, h) = (arg(&args, "--b", 1usize), arg(&args, "--h", 8usize));
    let ls = list(&args, "--l", &[2048, 4096]);
    let ds = list(&args, "--d", &[64, 128]);
    let only: String = arg(&args, "--only", String::new());
    let opts = CpuOptions::default();
    println!("# attnc CPU kernel, f32, B{b} H{h}, {threads} threads, median of {reps}");
    println!(
        "{:<28} {:>6} {:>4} {:>10} {:>9} {:>8} {:>11}",
        "variant", "L", "D", "ms", "GFLOP/s", "density", "compile ms"
    );
    for &l in &ls {
        for &d in &ds {
            let shape = Shape {
                b,
                hq: h,
                hkv: h,
                lq: l,
                lkv: l,
                d,
                dv: d,
            };
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rnd = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                    })
                    .collect()
            };
            let (q, k, v) = (rnd(shape.q_len()), rnd(shape.k_len()), rnd(shape.v_len()));
            let mut o = vec![0f32; shape.o_len()];
            let mut lse = vec![0f32; shape.lse_len()];
            for (name, src) in VARIANTS {
                if !only.is_empty() && !name.contains(&only) {
                    continue;
                }
                let module = attnc_compiler::compile_source(src).expect("variant compiles");
                let p = &module.programs[0];
                let t0 = Instant::now();
                let kern = compile(p, &opts).expect("compile");
                let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
                let bind = bindings(p, b, l);
                let maps = build_block_maps(
                    p,
                    &analyze(p),
                    &shape,
                    kern.q_block(),
                    kern.kv_block(),
                    &bind,
                )
                .expect("block maps");
                let pairs = unmasked_pairs(p, &shape, &maps, &bind);
                let density = pairs as f64 / (b * h * l * l) as f64;
                let scale = shape.default_scale();
                let mut times = Vec::new();
                for _ in 0..reps + 1 {
                    let t = Instant::now();
                    kern.run(
                        &shape, &q, &k, &v, scale, &bind, &maps, threads, &mut o, &mut lse,
                    )
                    .expect("run");
                    times.push(t.elapsed().as_secs_f64());
                }
                times.remove(0); // warm-up
                times.sort_by(f64::total_cmp);
                let t = times[times.len() / 2];
                let flops = 4.0 * pairs as f64 * d as f64;
                println!(
                    "{:<28} {:>6} {:>4} {:>10.2} {:>9.1} {:>8.3} {:>11.2}",
                    name,
                    l,
                    d,
                    t * 1e3,
                    flops / t / 1e9,
                    density,
                    compile_ms
                );
            }
        }
    }
}
