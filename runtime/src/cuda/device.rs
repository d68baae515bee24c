//! A GPU: its context, the one stream every launch goes on, uploads and event timing;
//! or the same context on a stream another library owns ([`CudaDevice::with_borrowed_stream`]).
//!
//! In: a device ordinal. Out: a [`CudaDevice`] (or a clean [`CudaError`] without a
//! driver or device), device buffers from host data, milliseconds per launch.

use super::CudaError;
use attnc_compiler::backend::llvm::Arch;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;

/// A GPU with its context and the stream every launch uses.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    capability: (i32, i32),
    /// Streaming multiprocessors (the grid of persistent kernels).
    sms: u32,
}

impl CudaDevice {
    /// Opens device `ordinal`; a clean error (never a panic) without driver or device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen libcuda; no driver call is made without it.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|_| CudaError::NoDevice(ordinal))?;
        if ordinal as i32 >= count {
            return Err(CudaError::NoDevice(ordinal));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream, ordered launches: no per-buffer event tracking needed.
        // SAFETY: every buffer of this device is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let capability = ctx.compute_capability()?;
        let arch = Arch::for_capability(capability.0, capability.1)
            .ok_or(CudaError::UnsupportedGpu(capability.0, capability.1))?;
        let name = ctx.name()?;
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            arch,
            name,
            capability,
            sms: sms.max(1) as u32,
        })
    }
    /// The same device and context, launching on `stream`, a stream of this context that
    /// another library owns (e.g. torch's current stream, as `cudaStream_t` bits).
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context, kept alive by its
    /// owner while the returned device (or a buffer allocated through it) is used.
    pub unsafe fn with_borrowed_stream(&self, stream: u64) -> CudaDevice {
        // SAFETY: forwarded from the caller.
        let stream = unsafe {
            self.ctx
                .wrap_borrowed_stream(stream as cudarc::driver::sys::CUstream)
        };
        CudaDevice {
            ctx: self.ctx.clone(),
            stream,
            arch: self.arch,
            name: self.name.clone(),
            capability: self.capability,
            sms: self.sms,
        }
    }
    /// The same device and stream with persistent kernels sized as if it had `sms`
    /// multiprocessors (at least 1): tests run them with a few CTAs that each walk many
    /// tiles.
    pub fn with_sms(&self, sms: u32) -> CudaDevice {
        CudaDevice {
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            arch: self.arch,
            name: self.name.clone(),
            capability: self.capability,
            sms: sms.max(1),
        }
    }
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The number of streaming multiprocessors.
    pub fn sms(&self) -> u32 {
        self.sms
    }
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }
    /// Uploads 16-bit data (Q, K, V as bf16/f16 bits).
    pub fn upload_u16(&self, data: &[u16]) -> Result<CudaSlice<u16>, CudaError> {
        self.upload(data)
    }
    /// Copies host data into a new device buffer (on the stream).
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(data)?)
    }
    /// A zeroed device buffer of `n` elements (at least one).
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros(n.max(1))?)
    }
    /// Waits for the stream, then copies a device buffer back.
    pub fn download<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.synchronize()?;
        Ok(self.stream.clone_dtoh(buf)?)
    }

    /// Median milliseconds per call of `launch` over `reps` repetitions of `iters` calls,
    /// timed with CUDA events after `warmup` calls (`ATTNC_BENCH_STAT=min`: the minimum,
    /// the anchors' rule). `ATTNC_BENCH_WARM_MS=N`: after those, calls in rounds of
    /// `iters` until N ms have passed, so that the timing starts on a loaded GPU (its
    /// clocks dip under the power cap for 0.2-0.5 s after the load steps up; the anchors'
    /// script times FA4 right after FlexAttention's runs, on a loaded GPU).
    pub fn time(
        &self,
        warmup: usize,
        iters: usize,
        reps: usize,
        launch: impl Fn() -> Result<(), CudaError>,
    ) -> Result<f64, CudaError> {
        for _ in 0..warmup {
            launch()?;
        }
        self.synchronize()?;
        let warm_ms = std::env::var("ATTNC_BENCH_WARM_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let warm_start = std::time::Instant::now();
        while warm_start.elapsed() < std::time::Duration::from_millis(warm_ms) {
            for _ in 0..iters.max(1) {
                launch()?;
            }
            self.synchronize()?;
        }
        let mut ts = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = self.ctx.new_event(flags)?;
            let end = self.ctx.new_event(flags)?;
            start.record(&self.stream)?;
            for _ in 0..iters.max(1) {
                launch()?;
            }
            end.record(&self.stream)?;
            end.synchronize()?;
            ts.push(start.elapsed_ms(&end)? as f64 / iters.max(1) as f64);
        }
        ts.sort_by(|a, b| a.total_cmp(b));
        // ATTNC_BENCH_STAT=min: the fastest repetition, as the anchors' scripts report
        // (`fa4_anchors_lite.py`: min of 3 x 10 calls)
        if std::env::var("ATTNC_BENCH_STAT").is_ok_and(|v| v == "min") {
            return Ok(ts[0]);
        }
        Ok(ts[ts.len() / 2])
    }
}
