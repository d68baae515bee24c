//! The JIT cache: `(plan, kernel kind, options)` -> a loaded kernel, for every kind.
//!
//! In: a [`Plan`], a [`KernelKind`], [`PtxOptions`], the device and a tier policy. Out:
//! a [`JitKernel`] (the best module loaded so far) and how the lookup was served
//! ([`JitStats`]). One key per kernel ([`JitCache::key`]: the kind, the plan key, the
//! options and the compiler build) serves the in-memory map, the PTX on disk and (with
//! the device and driver) the optimized cubin on disk; a miss generates the kind with
//! `backend::llvm::generate` and compiles it with the driver ([`super::jit`]).

use super::CudaError;
use super::device::CudaDevice;
use super::jit::{self, JitKernel, JitTier, JitTiers, OPTIMIZED_LEVEL};
use crate::cache::{DiskCache, Lookup, cache_key, compiler_build_id, cubin_key};
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{self, EmitText, EmitTimes, PtxOptions};
use attnc_compiler::plan::Plan;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a [`JitCache::get`] was served, with its timings (milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct JitStats {
    /// Found loaded in memory.
    pub memory_hit: bool,
    /// The optimized cubin on disk (`None` without a disk cache or on a memory hit).
    pub cubin: Option<Lookup>,
    /// The PTX on disk (`None` without a disk cache, or when the cubin was found).
    pub disk: Option<Lookup>,
    /// Generating PTX (0 when it came from disk or a cubin was found).
    pub codegen_ms: f64,
    /// The stages of [`Self::codegen_ms`].
    pub codegen: EmitTimes,
    /// The driver compiling PTX to the first usable module's cubin (0 for a cubin from disk).
    pub driver_ms: f64,
    /// Loading the first usable module (`cuModuleLoadData` of the cubin + function lookup).
    pub load_ms: f64,
    /// From the call to a usable kernel.
    pub total_ms: f64,
    /// The tier of the first usable module.
    pub tier: JitTier,
}

/// Program + options -> loaded kernel, cached in memory (per device) and on disk (PTX,
/// and the optimized cubin per device and driver).
pub struct JitCache {
    disk: Option<DiskCache>,
    mem: Mutex<HashMap<String, Arc<JitKernel>>>,
    /// `ptxas` level of the optimized tier.
    opt_level: u8,
}

impl JitCache {
    pub fn new(disk: Option<DiskCache>) -> Self {
        JitCache {
            disk,
            mem: Mutex::new(HashMap::new()),
            opt_level: OPTIMIZED_LEVEL,
        }
    }

    /// A cache whose optimized tier is compiled at `ptxas` level `level` (0..=4) instead
    /// of [`OPTIMIZED_LEVEL`] (for measuring the levels; the level is part of the cubin key).
    pub fn with_opt_level(mut self, level: u8) -> Self {
        self.opt_level = level.min(OPTIMIZED_LEVEL);
        self
    }

    /// The cache key of a kernel (its PTX): the kind, the plan key (the program's name
    /// and IR text), the options and the compiler build.
    pub fn key(plan: &Plan, kind: KernelKind, opts: &PtxOptions) -> String {
        cache_key(&[
            kind.name().as_bytes(),
            plan.key().as_bytes(),
            opts.key().as_bytes(),
            compiler_build_id().as_bytes(),
        ])
    }

    /// The kernel `kind` of `plan` under `opts`, loaded under the tier policy `tiers`
    /// (`JitTiers::Off`: blocks until the optimized module is loaded, or takes the one in
    /// memory, which may still be low; [`JitKernel::current`] is the module to launch).
    pub fn get(
        &self,
        dev: &CudaDevice,
        plan: &Plan,
        kind: KernelKind,
        opts: &PtxOptions,
        tiers: JitTiers,
    ) -> Result<(Arc<JitKernel>, JitStats), CudaError> {
        let t0 = Instant::now();
        let key = Self::key(plan, kind, opts);
        let lock_err = || CudaError::Driver("JIT cache lock poisoned".into());
        if let Some(k) = self.mem.lock().map_err(|_| lock_err())?.get(&key) {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            return Ok((
                k.clone(),
                JitStats {
                    memory_hit: true,
                    cubin: None,
                    disk: None,
                    codegen_ms: 0.0,
                    codegen: EmitTimes::default(),
                    driver_ms: 0.0,
                    load_ms: 0.0,
                    total_ms: ms,
                    tier: k.tier(),
                },
            ));
        }
        let spec = llvm::spec(plan, kind, opts)?;
        let target = jit::cubin_target(dev)?;
        let ckey = cubin_key(&key, &target, self.opt_level as u32);
        let mut cubin_lookup = None;
        if let Some(d) = &self.disk {
            let (found, how) = jit::load_cached_cubin(dev, d, &ckey, &spec, t0);
            cubin_lookup = Some(how);
            if let Some(first) = found {
                return Ok(self.finish(key, first, None, EmitTimes::default(), t0));
            }
        }
        let mut codegen = EmitTimes::default();
        let mut gen_ptx = || -> Result<Vec<u8>, CudaError> {
            let (k, t) = llvm::generate(plan, kind, opts, EmitText::PtxOnly)?;
            codegen = t;
            Ok(k.ptx.into_bytes())
        };
        let (ptx, disk) = match &self.disk {
            Some(d) => {
                let (b, how) = d.get_or_insert_with(&key, "ptx", &mut gen_ptx)?;
                (b, Some(how))
            }
            None => (gen_ptx()?, None),
        };
        let ptx = String::from_utf8(ptx)
            .map_err(|_| CudaError::Driver("cached PTX is not UTF-8".into()))?;
        let mut first = jit::compile_and_load(
            dev,
            ptx,
            &spec,
            tiers,
            self.opt_level,
            self.disk.clone(),
            ckey,
            t0,
        )?;
        first.cubin = cubin_lookup;
        Ok(self.finish(key, first, disk, codegen, t0))
    }

    /// Waits (at most `timeout` in all) until no kernel of this cache has a background
    /// compile pending.
    pub fn wait_pending(&self, timeout: std::time::Duration) {
        let deadline = Instant::now() + timeout;
        let kernels: Vec<Arc<JitKernel>> = match self.mem.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for k in kernels {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = k.wait_optimized(left);
        }
    }

    fn finish(
        &self,
        key: String,
        first: jit::FirstLoad,
        disk: Option<Lookup>,
        codegen: EmitTimes,
        t0: Instant,
    ) -> (Arc<JitKernel>, JitStats) {
        let k = Arc::new(first.kernel);
        // two threads may compile one kernel at once; the first to finish is kept
        let k = match self.mem.lock() {
            Ok(mut m) => m.entry(key).or_insert(k).clone(),
            Err(_) => k,
        };
        let stats = JitStats {
            memory_hit: false,
            cubin: first.cubin,
            disk,
            codegen_ms: codegen.total_ms,
            codegen,
            driver_ms: first.driver_ms,
            load_ms: first.load_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            tier: first.tier,
        };
        (k, stats)
    }
}
