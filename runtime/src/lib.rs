//! attnc: the library users depend on. Compile `.attn` source once, bind it to shapes,
//! dtypes and a backend, and run `forward` many times (see [`api`]).
//!
//! Modules: [`api`] (compile/bind/forward), [`tensor`] (host tensors), [`io`]
//! (safetensors), [`external`] (forward over caller-owned buffers), [`decode`] (KV-cache
//! decoding), [`options`] (backend, bind options), `exec` (the executors per backend:
//! what `bind` prepares and how `forward` runs it), `policy` (kv paths, table reuse),
//! [`cuda`] (device, kernels, launches, the JIT cache), [`blockview`]
//! (block-mask pictures), [`synth`] (deterministic inputs), [`error`].
pub mod api;
pub mod backward;
pub mod bench;
pub mod blockview;
pub mod cache;
pub mod cuda;
pub mod decode;
pub mod error;
mod exec;
pub mod external;
pub mod head_pad;
pub mod host_trace;
pub mod io;
pub mod options;
mod policy;
pub mod synth;
pub mod tensor;
mod validate;

pub use api::{
    Backend, BindOptions, Bound, Captures, Compiled, DecodeKernel, DecodeTuning, Output,
    ParamValue, Variant,
};
pub use attnc_compiler::shape::Shape;
pub use backward::{BackwardOptions, Gradients};
pub use decode::KvCache;
pub use error::{Error, Result};
pub use exec::{cuda_device_info, wait_for_background_jit};
pub use tensor::{DType, Tensor};
