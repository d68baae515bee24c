//! The CUDA JIT's driver side: PTX -> cubin with the driver's linker, cubins in the disk
//! cache, and tiered compilation (a quickly compiled module first, the fully optimized
//! one swapped in when a background thread has compiled it).
//!
//! In: PTX text (from `backend::llvm` or the disk cache), the device, a [`JitTiers`]
//! policy. Out: a [`JitKernel`], whose [`JitKernel::current`] is the best loaded
//! [`CudaKernel`] at the moment of the call, and the timings of each step.
//!
//! - [`link_ptx`]: `cuLinkCreate_v2` / `cuLinkAddData_v2` / `cuLinkComplete` with
//!   `CU_JIT_OPTIMIZATION_LEVEL` (0..=4): the cubin bytes, or the driver's error log.
//! - [`cubin_target`]: compute capability + driver version and build, the part of a
//!   cubin's cache key ([`crate::cache::cubin_key`]) that the PTX key lacks.
//! - [`Tiered`]: the swap, independent of CUDA (unit-tested on the CPU). The current
//!   kernel is an `Arc`: a call that took it keeps it to its end, whatever is swapped in
//!   meanwhile. A replaced kernel is retired, not dropped, and unloaded
//!   ([`JitKernel::release_retired`]) only after a stream synchronization, when no
//!   caller holds it any more, so an asynchronous launch never outlives its module.
//! - [`JitTiers`]: `off` (the default: compile the optimized cubin before returning), `on` (low level
//!   [`JitTiers::DEFAULT_LOW`]) or a low level `0`..`3`; from [`crate::BindOptions`],
//!   the CLI's `--jit-tiers`, or the environment variable `ATTNC_JIT_TIERS`.
//!
//! Failures degrade, never break: a quick compile that fails falls back to compiling the
//! optimized module before returning; a background compile that fails leaves the quick
//! module in use (and [`JitKernel::wait_optimized`] reports why).
//!
//! Only optimized cubins are stored on disk; a low-tier cubin is a stopgap and is never
//! stored, so a second process always starts with the optimized kernel. Kernels that
//! move registers between warpgroups with `setmaxnreg` (`KernelSpec::reallocates_registers`:
//! the warp-specialized forward, the fused backward with a dQ writer) are the exception:
//! `setmaxnreg` needs a whole-program compile, which only the driver's own PTX load does
//! (`cuLink*` compiles relocatably), so they are loaded from PTX (cached by the driver)
//! and have no cubin.

use super::{CudaDevice, CudaError, CudaKernel};
use crate::cache::{CubinTarget, DiskCache};
use attnc_compiler::backend::llvm::KernelSpec;
use cudarc::driver::CudaContext;
use cudarc::driver::sys::{self, CUjit_option, CUjitInputType, CUlinkState, CUresult};
use std::ffi::{CString, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The `ptxas` level of the optimized tier (the driver's default for PTX).
pub const OPTIMIZED_LEVEL: u8 = 4;

/// When to compile a quick low-optimization module first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JitTiers {
    /// One compile at [`OPTIMIZED_LEVEL`]; `get` returns when it is loaded.
    Off,
    /// Load a module compiled at `low` (0..=3) first, compile the optimized one on a
    /// background thread and swap it in.
    On { low: u8 },
}

/// Off: measured on an H200 (CUDA 13, `CUDA_CACHE_DISABLE=1`, causal D128), the driver
/// compiles our PTX in about the same time at `ptxas` levels 1 to 4 (103-111 ms) and level
/// 0 is barely faster (118 ms with the link) but runs 20x slower, so a quick tier makes
/// no kernel usable sooner; it stays available (`on`, `0`-`3`) for other drivers.
impl Default for JitTiers {
    fn default() -> Self {
        JitTiers::Off
    }
}

impl JitTiers {
    /// The low level of `on`.
    pub const DEFAULT_LOW: u8 = 1;
    /// The environment variable read when no policy is given.
    pub const ENV: &'static str = "ATTNC_JIT_TIERS";

    /// Parses `off`, `on` or a low level `0`..`3`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" => Ok(JitTiers::Off),
            "on" | "true" | "yes" => Ok(JitTiers::On {
                low: Self::DEFAULT_LOW,
            }),
            "" => Ok(JitTiers::default()),
            n => match n.parse::<u8>() {
                Ok(low) if low < OPTIMIZED_LEVEL => Ok(JitTiers::On { low }),
                _ => Err(format!(
                    "`{s}` is not a JIT tier setting: expected off, on, or the low tier's ptxas level 0-{}",
                    OPTIMIZED_LEVEL - 1
                )),
            },
        }
    }

    /// `ATTNC_JIT_TIERS` when set (and valid), else the default.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(Self::ENV) {
            Ok(v) => Self::parse(&v).map_err(|e| format!("{}: {e}", Self::ENV)),
            Err(_) => Ok(Self::default()),
        }
    }
}

/// The optimized tier's `ptxas` level: `ATTNC_JIT_OPT_LEVEL` (0..=4, for measuring what
/// each level costs and gives), else [`OPTIMIZED_LEVEL`].
pub fn opt_level_from_env() -> Result<u8, String> {
    match std::env::var("ATTNC_JIT_OPT_LEVEL") {
        Err(_) => Ok(OPTIMIZED_LEVEL),
        Ok(v) => match v.trim().parse::<u8>() {
            Ok(l) if l <= OPTIMIZED_LEVEL => Ok(l),
            _ => Err(format!(
                "ATTNC_JIT_OPT_LEVEL: `{v}` is not a ptxas level 0-{OPTIMIZED_LEVEL}"
            )),
        },
    }
}

/// Which compile a loaded module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JitTier {
    /// Compiled at this `ptxas` level; the optimized module may replace it.
    Low(u8),
    /// Compiled at [`OPTIMIZED_LEVEL`] (or the level asked for with tiers off).
    Optimized,
}

impl std::fmt::Display for JitTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JitTier::Low(l) => write!(f, "O{l}"),
            JitTier::Optimized => f.write_str("optimized"),
        }
    }
}

/// How the optimized tier became ready (background compile or the first load).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReadyStats {
    /// Milliseconds the driver spent compiling PTX to the cubin (0 for a cubin from disk).
    pub driver_ms: f64,
    /// Milliseconds loading the cubin (`cuModuleLoadData`) and looking up the function.
    pub load_ms: f64,
    /// Milliseconds from the start of the `get` that created the kernel until the
    /// optimized module was installed.
    pub ready_ms: f64,
}

struct State<K> {
    current: Arc<K>,
    tier: JitTier,
    /// A background compile is running.
    pending: bool,
    /// Why the background compile failed (the low tier stays in use).
    error: Option<String>,
    ready: Option<ReadyStats>,
    retired: Vec<Arc<K>>,
}

/// A kernel that can be replaced by a better one while it is in use.
pub struct Tiered<K> {
    state: Mutex<State<K>>,
    cv: Condvar,
}

impl<K> Tiered<K> {
    /// An optimized kernel: nothing will replace it.
    pub fn optimized(k: K, ready: ReadyStats) -> Self {
        Self::with(k, JitTier::Optimized, false, Some(ready))
    }
    /// A low-tier kernel whose replacement is being compiled.
    pub fn low(k: K, level: u8) -> Self {
        Self::with(k, JitTier::Low(level), true, None)
    }
    fn with(k: K, tier: JitTier, pending: bool, ready: Option<ReadyStats>) -> Self {
        Tiered {
            state: Mutex::new(State {
                current: Arc::new(k),
                tier,
                pending,
                error: None,
                ready,
                retired: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // a panic while holding the lock leaves the state consistent (every update is a
        // plain assignment), so a poisoned lock is still usable
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The kernel to use now and its tier; the caller keeps it for the whole call.
    pub fn current(&self) -> (Arc<K>, JitTier) {
        let s = self.lock();
        (s.current.clone(), s.tier)
    }
    pub fn tier(&self) -> JitTier {
        self.lock().tier
    }
    /// Installs the optimized kernel; the one it replaces is retired (kept alive).
    pub fn install(&self, k: K, ready: ReadyStats) {
        let mut s = self.lock();
        let old = std::mem::replace(&mut s.current, Arc::new(k));
        s.retired.push(old);
        s.tier = JitTier::Optimized;
        s.pending = false;
        s.ready = Some(ready);
        drop(s);
        self.cv.notify_all();
    }
    /// Records that the background compile failed; the current kernel stays.
    pub fn fail(&self, why: String) {
        let mut s = self.lock();
        s.pending = false;
        s.error = Some(why);
        drop(s);
        self.cv.notify_all();
    }
    /// Waits until no background compile is pending (at most `timeout`). Ok with the
    /// optimized tier's stats, or Err with the failure (or a timeout note); the current
    /// kernel stays usable either way.
    pub fn wait_optimized(&self, timeout: Duration) -> Result<ReadyStats, String> {
        let s = self.lock();
        let (s, res) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.pending)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() && s.pending {
            return Err(format!(
                "the optimized kernel was not ready after {:.1} s",
                timeout.as_secs_f64()
            ));
        }
        match (&s.ready, &s.error) {
            (Some(r), _) => Ok(*r),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err("no optimized kernel was compiled".into()),
        }
    }
    /// The failure of the background compile, if it failed.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }
    /// Whether retired kernels are waiting to be released.
    pub fn has_retired(&self) -> bool {
        !self.lock().retired.is_empty()
    }
    /// Takes the retired kernels that nobody holds any more. The caller must make sure
    /// that no work launched from them is still queued (synchronize first), then drop them.
    pub fn take_unused_retired(&self) -> Vec<Arc<K>> {
        let mut s = self.lock();
        let (free, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut s.retired)
            .into_iter()
            .partition(|k| Arc::strong_count(k) == 1);
        s.retired = keep;
        free
    }
}

/// A JIT-compiled kernel: the best module loaded so far (see [`Tiered`]).
pub struct JitKernel {
    tiers: Arc<Tiered<CudaKernel>>,
}

impl JitKernel {
    /// The kernel to launch now and its tier.
    pub fn current(&self) -> (Arc<CudaKernel>, JitTier) {
        self.tiers.current()
    }
    pub fn tier(&self) -> JitTier {
        self.tiers.tier()
    }
    /// Blocks until the optimized module is installed (or its compile failed, or
    /// `timeout` passed).
    pub fn wait_optimized(&self, timeout: Duration) -> Result<ReadyStats, CudaError> {
        self.tiers
            .wait_optimized(timeout)
            .map_err(CudaError::Driver)
    }
    /// Unloads replaced modules that nobody holds, after synchronizing the device's
    /// stream (every launch goes on it), so no queued launch loses its module.
    pub fn release_retired(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        if !self.tiers.has_retired() {
            return Ok(());
        }
        dev.synchronize()?;
        drop(self.tiers.take_unused_retired());
        Ok(())
    }
}

/// The target part of a cubin's cache key for `dev`.
pub fn cubin_target(dev: &CudaDevice) -> Result<CubinTarget, CudaError> {
    let mut version: i32 = 0;
    // SAFETY: `version` is a valid out-pointer; the driver library is loaded (a
    // `CudaDevice` exists only when it is).
    check(
        unsafe { sys::cuDriverGetVersion(&mut version) },
        "cuDriverGetVersion",
    )?;
    let driver_build = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_default();
    Ok(CubinTarget {
        capability: dev.capability(),
        driver_version: version,
        driver_build,
    })
}

fn check(r: CUresult, what: &str) -> Result<(), CudaError> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Driver(format!("{what}: {r:?}")))
    }
}

/// A linker state, destroyed on drop.
struct Linker(CUlinkState);

impl Drop for Linker {
    fn drop(&mut self) {
        // SAFETY: the state came from a successful cuLinkCreate_v2 and is destroyed once.
        unsafe { sys::cuLinkDestroy(self.0) };
    }
}

/// Compiles PTX to a cubin for the context's device with `ptxas` at `level` (0..=4),
/// through the driver's linker (binding the context to the calling thread).
pub fn link_ptx(ctx: &CudaContext, ptx: &str, level: u8) -> Result<Vec<u8>, CudaError> {
    let _span = tracing::info_span!("ptxas", level, ptx_bytes = ptx.len()).entered();
    ctx.bind_to_thread()?;
    let src =
        CString::new(ptx).map_err(|_| CudaError::Driver("PTX text contains a NUL byte".into()))?;
    const LOG: usize = 16 * 1024;
    let mut log = vec![0u8; LOG];
    let mut opts = [
        CUjit_option::CU_JIT_OPTIMIZATION_LEVEL,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // option values are passed as pointer-sized integers or pointers (the driver API's
    // convention for cuLinkCreate)
    let mut vals: [*mut c_void; 3] = [
        level.min(OPTIMIZED_LEVEL) as usize as *mut c_void,
        log.as_mut_ptr() as *mut c_void,
        LOG as *mut c_void,
    ];
    let mut state: CUlinkState = std::ptr::null_mut();
    // SAFETY: `opts` and `vals` have 3 entries each and outlive the linker (declared
    // before it, so dropped after it: the driver may write the error log until
    // cuLinkDestroy); `state` is a valid out-pointer.
    check(
        unsafe {
            sys::cuLinkCreate_v2(
                opts.len() as u32,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
                &mut state,
            )
        },
        "cuLinkCreate",
    )?;
    let linker = Linker(state);
    let name = c"attnc.ptx";
    let log_text = |log: &[u8]| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        String::from_utf8_lossy(&log[..end]).trim().to_string()
    };
    // SAFETY: `src` is a NUL-terminated PTX image of `len + 1` bytes that lives until the
    // end of this function; no per-input options are passed.
    let r = unsafe {
        sys::cuLinkAddData_v2(
            linker.0,
            CUjitInputType::CU_JIT_INPUT_PTX,
            src.as_ptr() as *mut c_void,
            src.as_bytes_with_nul().len(),
            name.as_ptr(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if r != CUresult::CUDA_SUCCESS {
        return Err(CudaError::Driver(format!(
            "PTX compile (ptxas O{level}): {r:?}: {}",
            log_text(&log)
        )));
    }
    let mut cubin: *mut c_void = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid out-pointers; the cubin they receive belongs to the linker and stays
    // valid until cuLinkDestroy, so it is copied out before `linker` is dropped.
    let r = unsafe { sys::cuLinkComplete(linker.0, &mut cubin, &mut size) };
    if r != CUresult::CUDA_SUCCESS || cubin.is_null() {
        return Err(CudaError::Driver(format!(
            "cuLinkComplete: {r:?}: {}",
            log_text(&log)
        )));
    }
    // SAFETY: the driver returned `size` readable bytes at `cubin` (checked non-null).
    let bytes = unsafe { std::slice::from_raw_parts(cubin as *const u8, size) }.to_vec();
    drop(linker);
    Ok(bytes)
}

pub use super::kernel::is_cubin;

/// The first module of a kernel: what `JitCache::get` returns, with the timings of the
/// driver compile and the load.
pub(crate) struct FirstLoad {
    pub kernel: JitKernel,
    pub tier: JitTier,
    pub driver_ms: f64,
    pub load_ms: f64,
    pub cubin: Option<crate::cache::Lookup>,
}

impl FirstLoad {
    /// The optimized module alone, no quick tier: `k` compiled by the driver in
    /// `driver_ms` (0 for a cubin from disk), ready since `t0`; `cubin`: the disk cache's
    /// answer, if one was asked.
    fn optimized(
        k: CudaKernel,
        driver_ms: f64,
        t0: Instant,
        cubin: Option<crate::cache::Lookup>,
    ) -> FirstLoad {
        let load_ms = k.load_ms;
        let ready = ReadyStats {
            driver_ms,
            load_ms,
            ready_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        FirstLoad {
            kernel: JitKernel {
                tiers: Arc::new(Tiered::optimized(k, ready)),
            },
            tier: JitTier::Optimized,
            driver_ms,
            load_ms,
            cubin,
        }
    }
}

/// A cubin for `ckey` from the disk cache, if an intact one is there. A stored entry that
/// passes the checksum but is no cubin, or that the driver refuses, is deleted.
pub(crate) fn load_cached_cubin(
    dev: &CudaDevice,
    disk: &DiskCache,
    ckey: &str,
    meta: &KernelSpec,
    t0: Instant,
) -> (Option<FirstLoad>, crate::cache::Lookup) {
    use crate::cache::Lookup;
    if meta.reallocates_registers() {
        // loaded from PTX only (`compile_and_load`); a cubin stored for it by an older
        // build is a relocatable compile that spills: never loaded
        return (None, Lookup::Miss);
    }
    let (bytes, how) = disk.get(ckey, "cubin");
    let Some(bytes) = bytes else {
        return (None, how);
    };
    match CudaKernel::from_cubin(&dev.ctx, meta, &bytes) {
        Ok(k) => (
            Some(FirstLoad::optimized(k, 0.0, t0, Some(Lookup::Hit))),
            Lookup::Hit,
        ),
        Err(_) => {
            disk.remove(ckey, "cubin");
            (None, Lookup::Corrupt)
        }
    }
}

/// The optimized cubin of `ptx`: compiled by ptxas at `level`, or, with a disk cache,
/// under the entry's file lock and stored there, so that two processes (or threads)
/// missing the same kernel compile it once and the later one loads the earlier's cubin.
fn optimized_cubin(
    ctx: &CudaContext,
    ptx: &str,
    level: u8,
    disk: Option<&DiskCache>,
    ckey: &str,
) -> Result<Vec<u8>, CudaError> {
    match disk {
        Some(d) => d
            .get_or_insert_with(ckey, "cubin", || link_ptx(ctx, ptx, level))
            .map(|(cubin, _)| cubin),
        None => link_ptx(ctx, ptx, level),
    }
}

/// Compiles `ptx` under `tiers` and loads the first usable module. With tiers on, the
/// optimized cubin is compiled on a background thread (the context bound to it), stored
/// under `ckey` and swapped in; with tiers off it is compiled here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compile_and_load(
    dev: &CudaDevice,
    ptx: String,
    meta: &KernelSpec,
    tiers: JitTiers,
    opt_level: u8,
    disk: Option<DiskCache>,
    ckey: String,
    t0: Instant,
) -> Result<FirstLoad, CudaError> {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    if meta.reallocates_registers() {
        // the warp-specialized forward and the fused backward's dQ writer move registers
        // between warpgroups with `setmaxnreg`, which ptxas ignores in the linker's
        // relocatable compile (C7504: the raised warpgroups then spill; the fused D128
        // backward ran 4.4x slower, the forward's consumers at half speed): the driver
        // compiles the PTX as a whole program when loading it (its own compute cache
        // keeps the result across processes); no cubin is stored and there is no quick
        // tier
        let t = Instant::now();
        let k = CudaKernel::from_ptx(&dev.ctx, meta, ptx)?;
        return Ok(FirstLoad::optimized(k, ms(t), t0, None));
    }
    let low = match tiers {
        JitTiers::On { low } if low < opt_level => Some(low),
        _ => None,
    };
    // the quick module; should its compile fail, the optimized one is compiled here
    let quick = low.and_then(|low| {
        let t = Instant::now();
        let cubin = link_ptx(&dev.ctx, &ptx, low).ok()?;
        let driver_ms = ms(t);
        let k = CudaKernel::from_cubin(&dev.ctx, meta, &cubin).ok()?;
        Some((low, k, driver_ms))
    });
    let Some((low, k, driver_ms)) = quick else {
        let t = Instant::now();
        let cubin = optimized_cubin(&dev.ctx, &ptx, opt_level, disk.as_ref(), &ckey)?;
        let driver_ms = ms(t);
        let k = CudaKernel::from_cubin(&dev.ctx, meta, &cubin)?;
        return Ok(FirstLoad::optimized(
            k,
            driver_ms,
            t0,
            disk.as_ref().map(|_| crate::cache::Lookup::Miss),
        ));
    };
    let load_ms = k.load_ms;
    let tiers = Arc::new(Tiered::low(k, low));
    let bg = tiers.clone();
    let ctx = dev.ctx.clone();
    let meta = meta.clone();
    let has_disk = disk.is_some();
    let spawned = std::thread::Builder::new()
        .name("attnc-jit-optimize".into())
        .spawn(move || {
            let t = Instant::now();
            let res =
                optimized_cubin(&ctx, &ptx, opt_level, disk.as_ref(), &ckey).and_then(|cubin| {
                    let driver_ms = ms(t);
                    CudaKernel::from_cubin(&ctx, &meta, &cubin).map(|k| (k, driver_ms))
                });
            match res {
                Ok((k, driver_ms)) => {
                    let load_ms = k.load_ms;
                    bg.install(
                        k,
                        ReadyStats {
                            driver_ms,
                            load_ms,
                            ready_ms: ms(t0),
                        },
                    )
                }
                Err(e) => bg.fail(format!("optimized compile: {e}")),
            }
        });
    if let Err(e) = spawned {
        tiers.fail(format!("cannot start the background compile: {e}"));
    }
    Ok(FirstLoad {
        kernel: JitKernel { tiers },
        tier: JitTier::Low(low),
        driver_ms,
        load_ms,
        cubin: has_disk.then_some(crate::cache::Lookup::Miss),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Fake(u32);

    /// Counts its drops (the unload of a module).
    struct Counted(u32, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn tier_policy_parsing() {
        assert_eq!(JitTiers::parse("off"), Ok(JitTiers::Off));
        assert_eq!(JitTiers::parse(" OFF "), Ok(JitTiers::Off));
        assert_eq!(
            JitTiers::parse("on"),
            Ok(JitTiers::On {
                low: JitTiers::DEFAULT_LOW
            })
        );
        assert_eq!(JitTiers::default(), JitTiers::Off);
        assert_eq!(JitTiers::parse(""), Ok(JitTiers::Off));
        for l in 0..OPTIMIZED_LEVEL {
            assert_eq!(JitTiers::parse(&l.to_string()), Ok(JitTiers::On { low: l }));
        }
        for bad in ["4", "9", "-1", "fast", "1.5", "256"] {
            let e = JitTiers::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("off, on"), "{e}");
        }
    }

    #[test]
    fn swap_keeps_in_flight_kernels_alive_until_released() {
        let drops = Arc::new(AtomicUsize::new(0));
        let t = Tiered::low(Counted(0, drops.clone()), 1);
        let (held, tier) = t.current();
        assert_eq!((held.0, tier), (0, JitTier::Low(1)));
        let e = t.wait_optimized(Duration::from_millis(10)).unwrap_err();
        assert!(e.contains("not ready"), "{e}");
        t.install(
            Counted(1, drops.clone()),
            ReadyStats {
                driver_ms: 3.0,
                load_ms: 0.5,
                ready_ms: 9.0,
            },
        );
        let (now, tier) = t.current();
        assert_eq!((now.0, tier), (1, JitTier::Optimized));
        assert_eq!(
            held.0, 0,
            "a call in flight keeps the module it started with"
        );
        assert!(t.has_retired());
        // still held: not released
        assert!(t.take_unused_retired().is_empty());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(held);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "retired, not unloaded");
        let freed = t.take_unused_retired();
        assert_eq!(freed.len(), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "released by the caller");
        drop(freed);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(!t.has_retired());
        assert_eq!(t.wait_optimized(Duration::ZERO).unwrap().driver_ms, 3.0);
        drop(now);
        drop(t);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn wait_blocks_until_a_background_install_and_readers_never_see_a_gap() {
        let t = Arc::new(Tiered::low(Fake(10), 0));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    // read until the new kernel shows up (bounded, so a bug cannot hang)
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut reads = 0u64;
                    while Instant::now() < deadline {
                        let (k, tier) = t.current();
                        reads += 1;
                        match (k.0, tier) {
                            (10, JitTier::Low(0)) => {}
                            (11, JitTier::Optimized) => {
                                // and never goes back
                                for _ in 0..1000 {
                                    let (k, tier) = t.current();
                                    assert_eq!((k.0, tier), (11, JitTier::Optimized));
                                }
                                return reads;
                            }
                            other => panic!("inconsistent kernel/tier pair {other:?}"),
                        }
                    }
                    panic!("the new kernel never showed up");
                })
            })
            .collect();
        let bg = t.clone();
        let installer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            bg.install(Fake(11), ReadyStats::default());
        });
        let r = t.wait_optimized(Duration::from_secs(20));
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(t.tier(), JitTier::Optimized);
        installer.join().unwrap();
        for r in readers {
            assert!(r.join().unwrap() >= 1);
        }
    }

    #[test]
    fn a_failed_background_compile_keeps_the_low_tier() {
        let t = Arc::new(Tiered::low(Fake(20), 2));
        let bg = t.clone();
        std::thread::spawn(move || bg.fail("ptxas: out of memory".into()));
        let e = t.wait_optimized(Duration::from_secs(20)).unwrap_err();
        assert_eq!(e, "ptxas: out of memory");
        assert_eq!(t.error().as_deref(), Some("ptxas: out of memory"));
        let (k, tier) = t.current();
        assert_eq!((k.0, tier), (20, JitTier::Low(2)));
        assert!(!t.has_retired());
        // an optimized kernel from the start never waits
        let o = Tiered::optimized(Fake(21), ReadyStats::default());
        assert_eq!(o.wait_optimized(Duration::ZERO), Ok(ReadyStats::default()));
    }

    #[test]
    fn cubin_check_rejects_non_elf_bytes() {
        assert!(!is_cubin(b".version 8.0\n.target sm_90"));
        assert!(!is_cubin(b"\x7fELF"));
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(200, 0);
        assert!(is_cubin(&elf));
    }
}
