//! A loaded kernel and the one launch every kernel kind goes through.
//!
//! In: a generated [`PtxKernel`] (or a cubin and its [`KernelSpec`]), the device, a
//! launch's named values ([`LaunchArgs`], e.g. from [`DeviceProblem::args`]). Out: the
//! kernel enqueued on the device's stream with its parameters bound in its spec's order
//! and its grid sized by the spec's rule.

use super::CudaError;
use super::args::{Arg, LaunchArgs};
use super::device::CudaDevice;
use super::problem::DeviceProblem;
use attnc_compiler::backend::llvm::{KernelParam, KernelSpec, PtxKernel};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use std::sync::Arc;
use std::time::Instant;

/// Whether bytes look like a cubin (an ELF image); checked before handing cached bytes
/// to the driver, on top of the cache's checksum.
pub fn is_cubin(b: &[u8]) -> bool {
    b.len() > 64 && b.starts_with(b"\x7fELF")
}

/// A loaded kernel.
pub struct CudaKernel {
    _module: Arc<CudaModule>,
    func: CudaFunction,
    spec: KernelSpec,
    /// Milliseconds `cuModuleLoadData` + function lookup took.
    pub load_ms: f64,
}

impl CudaKernel {
    /// Loads generated PTX (the driver compiles it).
    pub fn load(dev: &CudaDevice, k: &PtxKernel) -> Result<Self, CudaError> {
        Self::load_image(
            &dev.ctx,
            &k.spec,
            cudarc::nvrtc::Ptx::from_src(k.ptx.clone()),
        )
    }

    /// Loads PTX for the launch description `spec` (the driver compiles it as a whole
    /// program, at its default level).
    pub(crate) fn from_ptx(
        ctx: &Arc<CudaContext>,
        spec: &KernelSpec,
        ptx: String,
    ) -> Result<Self, CudaError> {
        Self::load_image(ctx, spec, cudarc::nvrtc::Ptx::from_src(ptx))
    }

    /// Loads a cubin (`cuModuleLoadData`) for the launch description `spec`.
    pub(crate) fn from_cubin(
        ctx: &Arc<CudaContext>,
        spec: &KernelSpec,
        cubin: &[u8],
    ) -> Result<Self, CudaError> {
        if !is_cubin(cubin) {
            return Err(CudaError::Driver("not a cubin image".into()));
        }
        Self::load_image(ctx, spec, cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
    }

    fn load_image(
        ctx: &Arc<CudaContext>,
        spec: &KernelSpec,
        image: cudarc::nvrtc::Ptx,
    ) -> Result<Self, CudaError> {
        let t = Instant::now();
        let module = ctx.load_module(image)?;
        let func = module.load_function(&spec.entry)?;
        if spec.smem_bytes > 48 * 1024 {
            // a clear error where the GPU's CTAs cannot hold the kernel's shared memory
            // (a head dim of 256 on an sm_86 / sm_89 GPU's 99 KiB), not the driver's code
            let most = ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?;
            if spec.smem_bytes as i64 > most as i64 {
                return Err(CudaError::Mismatch(format!(
                    "kernel {} needs {} bytes of shared memory per CTA; this GPU ({}) allows {most} (on such a GPU use smaller head dims or the cpu backend)",
                    spec.entry,
                    spec.smem_bytes,
                    ctx.name().unwrap_or_default()
                )));
            }
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                spec.smem_bytes as i32,
            )?;
        }
        Ok(CudaKernel {
            _module: module,
            func,
            spec: spec.clone(),
            load_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// What the kernel is and how it is launched.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// Uploads one attention call's buffers for this kernel (and the others of its plan
    /// and options, e.g. its block-table builder): see [`super::problem`].
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        dev: &CudaDevice,
        shape: &attnc_compiler::shape::Shape,
        qkv: super::problem::Qkv,
        scale: f32,
        bind: &attnc_compiler::interp::Bindings,
        blocks: super::problem::KvBlocks,
    ) -> Result<DeviceProblem, CudaError> {
        super::problem::upload(dev, &self.spec, shape, qkv, scale, bind, blocks)
    }

    /// Upload, launch, download (host data in and out; for tests and tools).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_host(
        &self,
        dev: &CudaDevice,
        shape: &attnc_compiler::shape::Shape,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        scale: f32,
        bind: &attnc_compiler::interp::Bindings,
        blocks: super::problem::KvBlocks,
    ) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        let p = self.upload(
            dev,
            shape,
            super::problem::Qkv::Host(q, k, v),
            scale,
            bind,
            blocks,
        )?;
        self.launch(dev, &p, &LaunchArgs::new())?;
        p.download(dev)
    }

    /// [`Self::spec`] (the older name).
    pub fn meta(&self) -> &KernelSpec {
        &self.spec
    }

    /// Enqueues this kernel on `p` (asynchronous): its parameters from `p`'s buffers and
    /// scalars ([`DeviceProblem::args`]), with `extra` replacing the launch's kv offsets
    /// (`KvOffset` / `KvAllPartial`: e.g. a block-table builder's skip bounds,
    /// `DeviceProblem::skip_args`). The problem must have been uploaded for kernels of
    /// this one's tiles and head dims (checked).
    pub fn launch(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        extra: &LaunchArgs,
    ) -> Result<(), CudaError> {
        if !extra.scalars_only()
            || extra
                .names()
                .any(|n| !matches!(n, KernelParam::KvOffset(_) | KernelParam::KvAllPartial))
        {
            return Err(CudaError::Mismatch(
                "a launch may only replace KvOffset / KvAllPartial values".into(),
            ));
        }
        p.check_fits(&self.spec)?;
        let mut args = p.args(dev);
        args.merge(extra);
        // SAFETY: every buffer of `args` belongs to `p`, which was uploaded (sizes
        // checked against the shape, the bindings and a kernel of these tiles and head
        // dims, `DeviceProblem::check_fits`); `extra` holds only kv offsets, which select
        // kv blocks inside 0..n_kv_blocks (clamped in the kernels).
        unsafe { self.launch_args(dev, &args) }
    }

    /// Enqueues this kernel with its parameters bound from `args` by name and its grid
    /// sized by its spec's rule (nothing is launched for an empty grid).
    ///
    /// # Safety
    /// Every buffer in `args` must be a live allocation of this device holding at least
    /// what the kernel indexes for the scalars in `args` (lengths, strides, counts), and
    /// buffers the kernel writes must not be read by a concurrent launch.
    pub unsafe fn launch_args(&self, dev: &CudaDevice, args: &LaunchArgs) -> Result<(), CudaError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_args_as(dev, args, false) }
    }

    /// [`Self::launch_args`] with programmatic stream serialization
    /// (`CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`, sm_90): the kernel may start
    /// before the previous kernel on the stream has completed, once every CTA of that one
    /// has executed `griddepcontrol.launch_dependents` (or exited); it must execute
    /// `griddepcontrol.wait` before it reads anything the previous kernel writes (the
    /// decode combine kernel does, first).
    ///
    /// # Safety
    /// As [`Self::launch_args`]; and the kernel waits as said above.
    pub unsafe fn launch_args_overlapped(
        &self,
        dev: &CudaDevice,
        args: &LaunchArgs,
    ) -> Result<(), CudaError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_args_as(dev, args, true) }
    }

    /// [`Self::launch_args`], with programmatic stream serialization when `overlapped`.
    ///
    /// # Safety
    /// As [`Self::launch_args_overlapped`].
    unsafe fn launch_args_as(
        &self,
        dev: &CudaDevice,
        args: &LaunchArgs,
        overlapped: bool,
    ) -> Result<(), CudaError> {
        let (x, y, z) = args.grid_on(&self.spec, dev.sms())?;
        if x == 0 || y == 0 || z == 0 {
            return Ok(());
        }
        let with_maps;
        let args = if super::tma::needs_maps(&self.spec) {
            with_maps = super::tma::with_tensor_maps(args, &self.spec)?;
            &with_maps
        } else {
            args
        };
        let values = args.bind(&self.spec)?;
        if overlapped {
            // SAFETY: as below; `values` outlives the call, which copies the arguments.
            return unsafe { self.launch_ex(dev, (x, y, z), &values) };
        }
        let cfg = LaunchConfig {
            grid_dim: (x, y, z),
            block_dim: (self.spec.threads, 1, 1),
            shared_mem_bytes: self.spec.smem_bytes,
        };
        let mut b = dev.stream.launch_builder(&self.func);
        for v in &values {
            match v {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(x) => b.arg(x),
                Arg::I64(x) => b.arg(x),
                Arg::F32(x) => b.arg(x),
                Arg::Map(m) => b.arg(m),
            };
        }
        // SAFETY: the arguments follow the kernel's signature (`spec.params`, the order the
        // generator declared them in, each of the type its name stands for: pointers as
        // u64, `KvOffset` i64, `Scale` f32, tensor maps 128 bytes by value, other scalars
        // i32); the caller vouches for the buffers (see above), and the tensor maps span
        // exactly the Q/K/V extents of the launch's shape.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `cuLaunchKernelEx` of this kernel with `values` (bound in its spec's order) and the
    /// programmatic-stream-serialization attribute.
    ///
    /// # Safety
    /// As [`Self::launch_args_overlapped`], `values` bound from them.
    unsafe fn launch_ex(
        &self,
        dev: &CudaDevice,
        grid: (u32, u32, u32),
        values: &[Arg],
    ) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        use std::ffi::c_void;
        let mut ptrs: Vec<*mut c_void> = values
            .iter()
            .map(|v| match v {
                Arg::Ptr(p) => p as *const u64 as *mut c_void,
                Arg::I32(x) => x as *const i32 as *mut c_void,
                Arg::I64(x) => x as *const i64 as *mut c_void,
                Arg::F32(x) => x as *const f32 as *mut c_void,
                Arg::Map(m) => m as *const _ as *mut c_void,
            })
            .collect();
        // SAFETY: a zeroed launch-attribute value is valid (plain data); the field set
        // is the one the attribute's id selects.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: self.spec.threads,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: self.spec.smem_bytes,
            hStream: dev.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        dev.ctx.bind_to_thread()?;
        // SAFETY: `cfg` and `attr` live across the call; `ptrs` points at `values`, one
        // per kernel parameter in the spec's order, each of its parameter's type (see
        // `launch_args_as`); the function belongs to this device's context, bound above.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                self.func.cu_function(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    /// Median milliseconds per [`Self::launch`] over `reps` repetitions of `iters`
    /// back-to-back launches (CUDA events), after `warmup` launches.
    pub fn time(
        &self,
        dev: &CudaDevice,
        p: &DeviceProblem,
        extra: &LaunchArgs,
        warmup: usize,
        iters: usize,
        reps: usize,
    ) -> Result<f64, CudaError> {
        dev.time(warmup, iters, reps, || self.launch(dev, p, extra))
    }
}
