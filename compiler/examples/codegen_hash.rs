//! Hashes the generated code of every example attention under every target and option
//! set: PTX (sm_80 mma.sync, sm_90 mma.sync, sm_90a wgmma; D 64 and 128; default,
//! `kv_table`, checked, checked + `kv_table`, no K prefetch, wgmma `overlap`), the
//! block-table kernel of every masked attention (plain and checked), and the CLIF of the
//! CPU kernel (plain and checked). Prints one line per artifact with `-v`, then the total.
//! Then, as a second total (so that the first stays comparable with earlier notes), the
//! split-KV decode and combine kernels (`KernelKind::Decode`/`DecodeCombine`) of every
//! attention for a few layouts, rows per CTA, head dims and archs; a third, the
//! tensor-core decode kernel (`DecodeMma`), and a fourth, that kernel with its combine
//! folded in (`DecodeMmaFused`, off by default), for three layouts.
//!
//! `cargo run --release -p attnc-compiler --example codegen_hash [-- -v]`: a refactoring
//! of the generators must leave the total unchanged.

use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::cranelift::{CpuOptions, emit_clif};
use attnc_compiler::backend::llvm::decode::DecodeOptions;
use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, PtxOptions, generate};
use attnc_compiler::plan::Plan;
use std::path::Path;

/// FNV-1a 64 (stable across runs and platforms).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// One total: FNV-1a over each artifact's name and the hash of its text.
struct Total {
    h: u64,
    n: usize,
    verbose: bool,
}

impl Total {
    fn new(verbose: bool) -> Self {
        Total {
            h: 0xcbf29ce484222325,
            n: 0,
            verbose,
        }
    }

    fn record(&mut self, name: &str, text: &str) {
        let mut h: u64 = 0xcbf29ce484222325;
        fnv(&mut h, text.as_bytes());
        if self.verbose {
            println!("{h:016x} {name}");
        }
        fnv(&mut self.h, name.as_bytes());
        fnv(&mut self.h, &h.to_le_bytes());
        self.n += 1;
    }
}

fn main() {
    let verbose = std::env::args().any(|a| a == "-v");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    let mut forward = Total::new(verbose);
    let mut record = |name: String, text: &str| forward.record(&name, text);
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            let plan = Plan::new(p);
            let gen_kind =
                |kind, o: &PtxOptions| generate(&plan, kind, o, EmitText::PtxOnly).map(|(k, _)| k);
            let mut sets: Vec<(String, PtxOptions)> = Vec::new();
            for d in [64u32, 128] {
                let bases = [
                    ("sm80", PtxOptions::new(Arch::Sm80, d, d, InputType::Bf16)),
                    ("sm90", PtxOptions::sync(Arch::Sm90, d, d, InputType::Bf16)),
                    (
                        "sm90a",
                        PtxOptions::new(Arch::Sm90, d, d, InputType::Bf16).wgmma(),
                    ),
                ];
                for (t, base) in bases {
                    sets.push((format!("{t} d{d}"), base));
                    if d == 64 {
                        sets.push((
                            format!("{t} d{d} kv_table"),
                            PtxOptions {
                                kv_table: true,
                                ..base
                            },
                        ));
                        sets.push((
                            format!("{t} d{d} checked"),
                            PtxOptions {
                                checked: true,
                                ..base
                            },
                        ));
                        sets.push((
                            format!("{t} d{d} checked kv_table"),
                            PtxOptions {
                                checked: true,
                                kv_table: true,
                                ..base
                            },
                        ));
                    }
                }
            }
            let sync64 = PtxOptions::sync(Arch::Sm90, 64, 64, InputType::F16);
            sets.push((
                "sm90 d64 f16 no-kpf".into(),
                PtxOptions {
                    k_prefetch: false,
                    ..sync64
                },
            ));
            let wg = PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16).wgmma();
            sets.push((
                "sm90a d128 overlap".into(),
                PtxOptions {
                    overlap: true,
                    ..wg
                },
            ));
            for (what, o) in &sets {
                let k = gen_kind(KernelKind::Forward, o)
                    .unwrap_or_else(|e| panic!("{} {what}: {e}", p.name));
                record(format!("{} ptx {what}", p.name), &k.ptx);
            }
            if p.mask.is_some() {
                for (what, o) in [
                    (
                        "sm90 128x64",
                        PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16),
                    ),
                    (
                        "sm80 64x64",
                        PtxOptions::sync(Arch::Sm80, 64, 64, InputType::Bf16),
                    ),
                    (
                        "sm90 checked",
                        PtxOptions {
                            checked: true,
                            ..PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16)
                        },
                    ),
                ] {
                    let k = gen_kind(KernelKind::BlockTable, &o)
                        .unwrap_or_else(|e| panic!("{} {what}: {e}", p.name));
                    record(format!("{} blocks {what}", p.name), &k.ptx);
                }
            }
            for checked in [false, true] {
                let o = CpuOptions {
                    checked,
                    ..CpuOptions::default()
                };
                let clif = emit_clif(&plan, KernelKind::Forward, &o)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.name));
                record(format!("{} clif checked={checked}", p.name), &clif);
            }
        }
    }
    println!(
        "codegen hash {:016x} over {} artifacts",
        forward.h, forward.n
    );

    let mut decode = Total::new(verbose);
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            let plan = Plan::new(p);
            for (arch, input, d, rows, paged) in [
                (Arch::Sm90, InputType::Bf16, 128, 4, false),
                (Arch::Sm90, InputType::Bf16, 64, 8, true),
                (Arch::Sm90, InputType::F16, 256, 1, false),
                (Arch::Sm80, InputType::F16, 32, 16, true),
            ] {
                let opts = DecodeOptions {
                    arch,
                    d,
                    input,
                    rows,
                    paged,
                    copy: 0,
                }
                .ptx_options();
                for kind in [KernelKind::Decode, KernelKind::DecodeCombine] {
                    let (k, _) = generate(&plan, kind, &opts, EmitText::PtxOnly)
                        .unwrap_or_else(|e| panic!("{} {kind}: {e}", p.name));
                    decode.record(&format!("{} {kind} {}", p.name, opts.key()), &k.ptx);
                }
            }
        }
    }
    println!(
        "decode codegen hash {:016x} over {} artifacts",
        decode.h, decode.n
    );

    // the tensor-core decode kernel (its combine kernel is the one hashed above)
    let (mut mma, mut fused) = (Total::new(verbose), Total::new(verbose));
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let module = attnc_compiler::compile_source(&src).expect("examples compile");
        for p in &module.programs {
            let plan = Plan::new(p);
            for (arch, input, d, rows, paged) in [
                (Arch::Sm90, InputType::Bf16, 128, 16, false),
                (Arch::Sm90, InputType::Bf16, 128, 64, true),
                (Arch::Sm80, InputType::F16, 64, 32, true),
            ] {
                let opts = DecodeOptions {
                    arch,
                    d,
                    input,
                    rows,
                    paged,
                    copy: 0,
                }
                .ptx_options();
                // the kernel with its combine folded in (off by default) hashed apart, so
                // that the decode-mma hash keeps its meaning
                for (kind, total) in [
                    (KernelKind::DecodeMma, &mut mma),
                    (KernelKind::DecodeMmaFused, &mut fused),
                ] {
                    let (k, _) = generate(&plan, kind, &opts, EmitText::PtxOnly)
                        .unwrap_or_else(|e| panic!("{} {kind}: {e}", p.name));
                    total.record(&format!("{} {kind} {}", p.name, opts.key()), &k.ptx);
                }
            }
        }
    }
    println!(
        "decode-mma codegen hash {:016x} over {} artifacts",
        mma.h, mma.n
    );
    println!(
        "decode-mma-fused codegen hash {:016x} over {} artifacts",
        fused.h, fused.n
    );
}
