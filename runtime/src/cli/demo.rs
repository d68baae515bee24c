//! `attnc demo`: the main job of the quick start. Compiles every example, runs each
//! attention on random inputs through the requested backends, and compares each with
//! the reference oracle.
//!
//! In: a folder of `.attn` files, a list of backends. Out: one line per (attention,
//! backend) with timing and max errors; exit 1 when any comparison fails.

use super::BackendArg;
use attnc::synth;
use attnc::{BindOptions, Compiled, DType, Error, Shape};
use std::path::Path;

/// Max |O - O_ref| and |LSE - LSE_ref| allowed for the f32 CPU kernel: f32 accumulation
/// over at most ~100 keys of O(1) values against the f64 oracle stays near 1e-6; 2e-4
/// leaves room for the vectorized exp without hiding a wrong mask (errors of O(0.1)).
const TOL_CPU: (f32, f32) = (2e-4, 2e-4);
/// For the GPU (bf16 in and out, P rounded to bf16 for the P·V product): O carries a
/// relative rounding of 2^-8 and P's rounding adds about as much; LSE stays f32.
const TOL_GPU: (f32, f32) = (3e-2, 1e-2);

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x == y || (x.is_infinite() && y.is_infinite() && x.signum() == y.signum()) {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(
            0.0,
            |m: f32, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

pub(crate) fn demo(dir: &Path, backends: &[BackendArg], d: usize) -> Result<(), Error> {
    if d == 0 || d > 256 {
        return Err(Error::Usage(format!(
            "--d {d}: the demo takes a head dim from 1 to 256"
        )));
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 77,
        lkv: 77,
        d,
        dv: d,
    };
    outln!(
        "attnc demo: {} files, shape {}, f32, vs the f64 reference",
        files.len(),
        super::shape_words(&shape)
    );
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for f in &files {
        let compiled = match Compiled::from_file(f) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}", super::render_error(&e));
                failed += 1;
                continue;
            }
        };
        for name in compiled.names() {
            let variant = compiled.attention(name)?;
            let caps = synth::captures(variant.program(), &shape, 7);
            // bf16-representable inputs: the CPU and the oracle read them as f32, the GPU as bf16
            let (qb, kb, vb) = synth::qkv(&shape, DType::BF16, 11);
            let f32_of =
                |t: &attnc::Tensor| attnc::Tensor::from_f32(t.shape().to_vec(), &t.to_f32());
            let (q, k, v) = (f32_of(&qb), f32_of(&kb), f32_of(&vb));
            let mut reference = variant.bind(BindOptions::new(
                attnc::Backend::Reference,
                shape,
                DType::F32,
            ))?;
            let want = match reference.forward(&q, &k, &v, &caps) {
                Ok(o) => o,
                Err(e) => {
                    outln!("FAIL {:<28} reference: {e}", name);
                    failed += 1;
                    continue;
                }
            };
            let masked = want.lse.to_f32().iter().filter(|x| x.is_infinite()).count();
            for b in backends {
                if *b == BackendArg::Reference {
                    continue;
                }
                let t0 = std::time::Instant::now();
                let gpu = *b == BackendArg::Cuda;
                let dtype = if gpu { DType::BF16 } else { DType::F32 };
                let bound = variant.bind(BindOptions::new(b.backend(), shape, dtype));
                let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut bound = match bound {
                    Ok(x) => x,
                    Err(Error::BackendUnavailable { backend, reason }) => {
                        outln!("SKIP {:<28} {backend}: {reason}", name);
                        skipped += 1;
                        continue;
                    }
                    Err(e) => {
                        outln!("FAIL {:<28} {}: {e}", name, b.backend().name());
                        failed += 1;
                        continue;
                    }
                };
                let t0 = std::time::Instant::now();
                let got = if gpu {
                    bound.forward(&qb, &kb, &vb, &caps)
                } else {
                    bound.forward(&q, &k, &v, &caps)
                };
                let run_ms = t0.elapsed().as_secs_f64() * 1e3;
                match got {
                    Ok(got) => {
                        let eo = max_err(&got.o.to_f32(), &want.o.to_f32());
                        let el = max_err(&got.lse.to_f32(), &want.lse.to_f32());
                        let (tol_o, tol_lse) = if gpu { TOL_GPU } else { TOL_CPU };
                        let ok = eo <= tol_o && el <= tol_lse;
                        outln!(
                            "{} {:<28} {:<5} compile {compile_ms:7.2} ms  run {run_ms:7.2} ms  max|dO| {eo:.1e}  max|dLSE| {el:.1e}  masked rows {masked}",
                            if ok { "PASS" } else { "FAIL" },
                            name,
                            b.backend().name()
                        );
                        if ok { passed += 1 } else { failed += 1 }
                    }
                    Err(e) => {
                        outln!("FAIL {:<28} {}: {e}", name, b.backend().name());
                        failed += 1;
                    }
                }
            }
            if backends.iter().all(|b| *b == BackendArg::Reference) {
                outln!("PASS {:<28} reference ran; masked rows {masked}", name);
                passed += 1;
            }
        }
    }
    outln!("demo: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        Err(Error::Usage(format!("{failed} comparison(s) failed")))
    } else {
        Ok(())
    }
}
