//! GPU tests of the JIT's driver side (run by the `gpu` runner, `runtime/tests/gpu.rs`):
//! cubins through the disk cache, and the tiered swap.
//!
//! In: the device. Out: panics with the reason on a failure.
//! - `gpu_jit_cubin_round_trip`: a cold JitCache compiles and stores the optimized
//!   cubin; a fresh JitCache on the same directory loads it with no codegen and no
//!   driver compile, and its kernel matches the oracle and the cold kernel bit for bit; a
//!   damaged cubin (flipped byte: checksum) and a well-formed entry that is no cubin are
//!   both detected and rebuilt.
//! - `gpu_jit_tiered_swap`: tiers on (ptxas O0 and the default low level): the first
//!   module is low-tier, the optimized one is swapped in, a kernel taken before the swap
//!   still runs after it with bit-identical results, both tiers match the oracle and
//!   each other (bit-identity across tiers is printed, not required: `compare_tiers`),
//!   and the retired module is released once nobody holds it.
//! - `gpu_jit_warp_specialized_loads_from_ptx`: the warp-specialized D128 default is
//!   loaded from PTX (no cubin, no quick tier) and matches the oracle.
//! - `gpu_jit_bound_forward_across_the_swap`: the same through the public API
//!   (`Variant::bind` with `jit_tiers`, `forward`, `wait_optimized`, `forward`).

use crate::gpu_util::{bindings, from_bits, interp_maps, random_input, rng};
use attnc::cache::{DiskCache, Lookup, cubin_key};
use attnc::cuda::{CudaDevice, CudaKernel, JitCache, JitTier, JitTiers, KvBlocks};
use attnc_compiler::backend::llvm::{InputType, PtxOptions, samples};
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::Program;
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use std::time::Duration;

struct Problem {
    p: Program,
    shape: Shape,
    opts: PtxOptions,
    bind: Bindings,
    q: (Vec<u16>, Vec<f32>),
    k: (Vec<u16>, Vec<f32>),
    v: (Vec<u16>, Vec<f32>),
}

fn problem(dev: &CudaDevice, d: usize) -> Problem {
    // odd lengths, Lq != Lkv, GQA, a captured tensor and a mask
    let shape = Shape {
        b: 2,
        hq: 4,
        hkv: 2,
        lq: 131,
        lkv: 197,
        d,
        dv: d,
    };
    let p = samples::document_causal();
    let mut r = rng(41 + d as u64);
    let bind = bindings(&p, &shape, &mut r, 37, 3);
    let ty = InputType::Bf16;
    // a kernel the driver's linker compiles (the warp-specialized default at D128 is
    // loaded from PTX instead: `gpu_jit_warp_specialized_loads_from_ptx`)
    let mut opts = PtxOptions::new(dev.arch(), d as u32, d as u32, ty);
    if opts.ws {
        opts = PtxOptions {
            kv_block: 64,
            ..opts.wgmma()
        };
    }
    Problem {
        opts,
        q: random_input(&mut r, shape.q_len(), 2.0, ty),
        k: random_input(&mut r, shape.k_len(), 2.0, ty),
        v: random_input(&mut r, shape.v_len(), 1.0, ty),
        p,
        shape,
        bind,
    }
}

/// Runs `kern`, checks it against the oracle; the raw O bits and LSE.
fn run_checked(dev: &CudaDevice, kern: &CudaKernel, pb: &Problem) -> (Vec<u16>, Vec<f32>) {
    let sh = &pb.shape;
    let m = kern.meta();
    let maps = interp_maps(&pb.p, sh, &pb.bind, m.q_block as usize, m.kv_block as usize);
    let scale = sh.default_scale();
    let (o, lse) = kern
        .forward_host(
            dev,
            sh,
            &pb.q.0,
            &pb.k.0,
            &pb.v.0,
            scale,
            &pb.bind,
            KvBlocks::Maps(&maps),
        )
        .unwrap_or_else(|e| panic!("launch: {e}"));
    let want = reference::attention(&pb.p, sh, &pb.q.1, &pb.k.1, &pb.v.1, scale, &pb.bind)
        .expect("oracle");
    for (i, (g, w)) in o.iter().zip(&want.o).enumerate() {
        let g = from_bits(*g, InputType::Bf16);
        assert!(
            !g.is_nan() && (g - w).abs() <= 0.03 + 0.02 * w.abs(),
            "O[{i}] = {g}, oracle {w}"
        );
    }
    for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 0.01 + 0.005 * w.abs()
        };
        assert!(ok && !g.is_nan(), "LSE[{i}] = {g}, oracle {w}");
    }
    (o, lse)
}

fn same_bits(a: &(Vec<u16>, Vec<f32>), b: &(Vec<u16>, Vec<f32>), what: &str) {
    assert_eq!(a.0, b.0, "{what}: O differs");
    let la: Vec<u32> = a.1.iter().map(|x| x.to_bits()).collect();
    let lb: Vec<u32> = b.1.iter().map(|x| x.to_bits()).collect();
    assert_eq!(la, lb, "{what}: LSE differs");
}

/// Two tiers compile the same PTX, but its plain `mul.f32` / `add.f32` let `ptxas`
/// contract them into FMAs, possibly differently per optimization level: results of
/// two tiers are each checked against the oracle (by `run_checked`); here they must be
/// close to each other (well inside the oracle tolerance), and whether they are
/// bit-identical is printed.
fn compare_tiers(a: &(Vec<u16>, Vec<f32>), b: &(Vec<u16>, Vec<f32>), what: &str) {
    let mut worst = 0f32;
    for (x, y) in a.0.iter().zip(&b.0) {
        let (x, y) = (
            from_bits(*x, InputType::Bf16),
            from_bits(*y, InputType::Bf16),
        );
        let d = (x - y).abs();
        assert!(d <= 0.02 + 0.01 * y.abs(), "{what}: O {x} vs {y}");
        worst = worst.max(d);
    }
    for (x, y) in a.1.iter().zip(&b.1) {
        assert!(
            (x.is_infinite() && x == y) || (x - y).abs() <= 1e-3 + 1e-4 * y.abs(),
            "{what}: LSE {x} vs {y}"
        );
    }
    let identical = a.0 == b.0
        && a.1
            .iter()
            .zip(&b.1)
            .all(|(x, y)| x.to_bits() == y.to_bits());
    println!("  {what}: bit-identical {identical}, max |dO| {worst:.2e}");
}

fn temp_cache(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("attnc-gpu-jit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn gpu_jit_cubin_round_trip(dev: &CudaDevice) {
    let dir = temp_cache("cubin");
    for d in [64, 128] {
        let pb = problem(dev, d);
        let cold = JitCache::new(Some(DiskCache::new(&dir)));
        let (k_cold, s) = crate::gpu_util::jit_forward(&cold, dev, &pb.p, &pb.opts).unwrap();
        assert!(!s.memory_hit && s.tier == JitTier::Optimized, "{s:?}");
        assert_eq!((s.cubin, s.disk), (Some(Lookup::Miss), Some(Lookup::Miss)));
        assert!(s.codegen_ms > 0.0 && s.driver_ms > 0.0, "{s:?}");
        let r_cold = run_checked(dev, &k_cold, &pb);
        // the cubin is on disk under the device + driver key
        let target = attnc::cuda::jit::cubin_target(dev).unwrap();
        let ckey = cubin_key(
            &JitCache::key(
                &attnc_compiler::plan::Plan::new(&pb.p),
                attnc_compiler::backend::KernelKind::Forward,
                &pb.opts,
            ),
            &target,
            4,
        );
        let disk = DiskCache::new(&dir);
        let (bytes, how) = disk.get(&ckey, "cubin");
        assert_eq!(how, Lookup::Hit);
        assert!(attnc::cuda::jit::is_cubin(&bytes.unwrap()));
        // a second "process": a fresh in-memory cache on the same directory
        let warm = JitCache::new(Some(DiskCache::new(&dir)));
        let (k_warm, s) = crate::gpu_util::jit_forward(&warm, dev, &pb.p, &pb.opts).unwrap();
        println!(
            "  D{d}: warm (cubin from disk) {:.3} ms (load {:.3} ms)",
            s.total_ms, s.load_ms
        );
        assert_eq!(s.cubin, Some(Lookup::Hit), "{s:?}");
        assert_eq!(s.disk, None, "the PTX is not needed: {s:?}");
        assert_eq!((s.codegen_ms, s.driver_ms), (0.0, 0.0), "{s:?}");
        let r_warm = run_checked(dev, &k_warm, &pb);
        same_bits(&r_cold, &r_warm, "cubin from disk vs freshly compiled");
        // a flipped byte fails the checksum: rebuilt, and correct
        let path = disk.path(&ckey, "cubin");
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n / 2] ^= 0x10;
        std::fs::write(&path, &data).unwrap();
        let again = JitCache::new(Some(DiskCache::new(&dir)));
        let (k, s) = crate::gpu_util::jit_forward(&again, dev, &pb.p, &pb.opts).unwrap();
        assert_eq!(s.cubin, Some(Lookup::Corrupt), "{s:?}");
        assert_eq!(s.disk, Some(Lookup::Hit), "PTX reused: {s:?}");
        assert!(s.driver_ms > 0.0);
        same_bits(&r_cold, &run_checked(dev, &k, &pb), "rebuilt cubin");
        assert_eq!(
            disk.get(&ckey, "cubin").1,
            Lookup::Hit,
            "rebuilt entry stored"
        );
        // an intact entry that is not a cubin is rejected before the driver sees it
        disk.put(&ckey, "cubin", b"\x7fELF but not really a cubin")
            .unwrap();
        let again = JitCache::new(Some(DiskCache::new(&dir)));
        let (k, s) = crate::gpu_util::jit_forward(&again, dev, &pb.p, &pb.opts).unwrap();
        assert_eq!(s.cubin, Some(Lookup::Corrupt), "{s:?}");
        same_bits(
            &r_cold,
            &run_checked(dev, &k, &pb),
            "cubin rebuilt after garbage",
        );
        // another opt level is another key (its results match the oracle; they may differ
        // from O4's in the last bits: see `compare_tiers`)
        let o1 = JitCache::new(Some(DiskCache::new(&dir))).with_opt_level(1);
        let (k, s) = crate::gpu_util::jit_forward(&o1, dev, &pb.p, &pb.opts).unwrap();
        assert_eq!(s.cubin, Some(Lookup::Miss), "{s:?}");
        compare_tiers(
            &r_cold,
            &run_checked(dev, &k, &pb),
            &format!("D{d} O4 vs O1"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warp-specialized kernel (`PtxOptions::ws`, the D128 default on sm_90) skips the
/// linker (whose relocatable compile ignores `setmaxnreg`): no cubin is stored (a second
/// cache on the same directory misses it again), it loads optimized at once, even with
/// tiers on, and matches the oracle.
pub fn gpu_jit_warp_specialized_loads_from_ptx(dev: &CudaDevice) {
    if dev.arch() != attnc_compiler::backend::llvm::Arch::Sm90 {
        println!("  not sm_90: no warp-specialized kernel");
        return;
    }
    let dir = temp_cache("ws");
    let mut pb = problem(dev, 128);
    pb.opts = PtxOptions::new(dev.arch(), 128, 128, InputType::Bf16);
    assert!(pb.opts.ws, "{:?}", pb.opts);
    for tiers in [JitTiers::Off, JitTiers::On { low: 0 }] {
        let cache = JitCache::new(Some(DiskCache::new(&dir)));
        let (jk, s) = cache
            .get(
                dev,
                &attnc_compiler::plan::Plan::new(&pb.p),
                attnc_compiler::backend::KernelKind::Forward,
                &pb.opts,
                tiers,
            )
            .unwrap();
        // never a cubin on disk (the second cache finds the first's PTX there)
        assert_eq!(
            (s.tier, s.cubin),
            (JitTier::Optimized, Some(Lookup::Miss)),
            "{s:?}"
        );
        run_checked(dev, &jk.current().0, &pb);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn gpu_jit_tiered_swap(dev: &CudaDevice) {
    for (d, low) in [(128, 0u8), (64, JitTiers::DEFAULT_LOW)] {
        let pb = problem(dev, d);
        let cache = JitCache::new(None);
        let (jk, s) = cache
            .get(
                dev,
                &attnc_compiler::plan::Plan::new(&pb.p),
                attnc_compiler::backend::KernelKind::Forward,
                &pb.opts,
                JitTiers::On { low },
            )
            .unwrap();
        assert_eq!(s.tier, JitTier::Low(low), "{s:?}");
        let (held, tier) = jk.current();
        let r_low = run_checked(dev, &held, &pb);
        let ready = jk.wait_optimized(Duration::from_secs(120)).unwrap();
        println!(
            "  D{d}: first usable {:.1} ms (O{low}: driver {:.1} ms), optimized ready {:.1} ms (driver {:.1} ms)",
            s.total_ms, s.driver_ms, ready.ready_ms, ready.driver_ms
        );
        assert_eq!(tier, JitTier::Low(low));
        assert!(ready.driver_ms > 0.0 && ready.ready_ms >= s.total_ms);
        let (opt, tier) = jk.current();
        assert_eq!(tier, JitTier::Optimized);
        assert!(!std::ptr::eq(&*opt, &*held), "a new module was swapped in");
        // the module taken before the swap still works after it, with the same results
        same_bits(
            &r_low,
            &run_checked(dev, &held, &pb),
            "low tier after the swap",
        );
        let r_opt = run_checked(dev, &opt, &pb);
        compare_tiers(&r_low, &r_opt, &format!("D{d} O{low} vs optimized"));
        // a memory hit returns the swapped kernel
        let (again, s) = cache
            .get(
                dev,
                &attnc_compiler::plan::Plan::new(&pb.p),
                attnc_compiler::backend::KernelKind::Forward,
                &pb.opts,
                JitTiers::On { low },
            )
            .unwrap();
        assert!(s.memory_hit && s.tier == JitTier::Optimized, "{s:?}");
        assert!(std::ptr::eq(&*again.current().0, &*opt));
        drop(held);
        jk.release_retired(dev).unwrap();
        same_bits(&r_opt, &run_checked(dev, &opt, &pb), "after the release");
    }
}

pub fn gpu_jit_bound_forward_across_the_swap(dev: &CudaDevice) {
    let _ = dev;
    // a name of its own, so that no cubin from an earlier run is found on disk (the
    // process-wide JIT cache of the API uses the default cache directory)
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos())
        .unwrap_or(0);
    let name = format!("softcap_jit_{}_{nanos}", std::process::id());
    let src = format!(
        "const SOFT_CAP: f32 = 50.0;\n\
         score tanh_softcap(s, b, h, q, kv) {{ SOFT_CAP * tanh(s / SOFT_CAP) }}\n\
         mask band(b, h, q, kv) {{ q >= kv && q - kv < 200 }}\n\
         attention {name} {{ mask = band; score = tanh_softcap; }}\n"
    );
    let compiled = attnc::Compiled::from_source("softcap_jit.attn", &src).unwrap();
    let variant = compiled.select(None).unwrap();
    // D64 and a band: a kernel with tiers (the warp-specialized kernels, the default at
    // D128 and at D64 for closed forms that are not bands, load from PTX and have none)
    let shape = Shape {
        b: 1,
        hq: 4,
        hkv: 1,
        lq: 257,
        lkv: 300,
        d: 64,
        dv: 64,
    };
    let (q, k, v) = attnc::synth::qkv(&shape, attnc::DType::BF16, 5);
    let caps = attnc::synth::captures_with_ids(variant.program(), &shape, 7, 4);
    let mut reference = variant
        .bind(attnc::BindOptions::new(
            attnc::Backend::Reference,
            shape,
            attnc::DType::BF16,
        ))
        .unwrap();
    let want = reference.forward(&q, &k, &v, &caps).unwrap();
    let mut opts = attnc::BindOptions::new(attnc::Backend::Cuda, shape, attnc::DType::BF16);
    opts.jit_tiers = Some(JitTiers::On { low: 0 });
    let mut bound = variant.bind(opts).unwrap();
    let stats = bound.jit_stats().expect("cuda binding has JIT stats");
    assert_eq!(stats.tier, JitTier::Low(0), "{stats:?}");
    let first = bound.forward(&q, &k, &v, &caps).unwrap();
    let ready = bound.wait_optimized(Duration::from_secs(120)).unwrap();
    assert!(ready.is_some());
    let second = bound.forward(&q, &k, &v, &caps).unwrap();
    let ow = want.o.to_f32();
    for (which, out) in [("before the swap", &first), ("after the swap", &second)] {
        for (i, (g, w)) in out.o.to_f32().iter().zip(&ow).enumerate() {
            assert!(
                !g.is_nan() && (g - w).abs() <= 0.03 + 0.02 * w.abs(),
                "{which}: O[{i}] = {g}, oracle {w}"
            );
        }
        for (i, (g, w)) in out.lse.to_f32().iter().zip(&want.lse.to_f32()).enumerate() {
            let ok = if w.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= 0.01 + 0.005 * w.abs()
            };
            assert!(ok && !g.is_nan(), "{which}: LSE[{i}] = {g}, oracle {w}");
        }
    }
    // a third call on the optimized module gives what the second gave
    let third = bound.forward(&q, &k, &v, &caps).unwrap();
    assert_eq!(second.o.to_f32(), third.o.to_f32());
    println!(
        "  softcap via the API: O0 vs optimized bit-identical {}",
        first.o.to_f32() == second.o.to_f32()
    );
}
