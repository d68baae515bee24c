//! The kinds of kernel a backend generates from a plan.
//!
//! In: nothing. Out: [`KernelKind`], the one value that selects what a backend generates
//! (`backend::llvm::spec` / `backend::llvm::generate`, `backend::cranelift::compile`),
//! what the runtime's JIT cache keys a kernel by (with the plan key and the options) and
//! which launch description ([`crate::backend::llvm::KernelSpec`]) a launch binds.
//!
//! Adding a kind (backward, decode, ...) touches this enum, its generator module and its
//! arm in `backend/llvm/spec.rs` (spec and build); the cache, the launch and the API
//! plumbing take any kind.

use std::fmt;

/// What a generated kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// The fused attention forward pass: O and LSE from Q, K, V (`llvm/kernel.rs`,
    /// `cranelift/codegen.rs`).
    Forward,
    /// The block table of a mask over captured tensors, built on the GPU
    /// (`llvm/blocktable.rs`).
    BlockTable,
    /// The backward's pre pass: `Delta = rowsum(dO ∘ O) - dLSE` (`llvm/backward.rs`).
    BackwardPre,
    /// dK and dV over kv blocks (`llvm/backward.rs`).
    BackwardDkDv,
    /// dQ over q blocks (`llvm/backward.rs`).
    BackwardDq,
    /// The backward kernels' per-row block ranges from a block table built on the GPU
    /// (masks over captured tensors; `llvm/backward/ranges.rs`).
    BackwardRanges,
    /// Split-KV decoding: a few new query rows of every head against a contiguous or
    /// paged KV cache, one CTA per (split, kv head x row group, batch), partial O and LSE
    /// per split (`llvm/decode.rs`).
    Decode,
    /// Split-KV decoding on tensor cores: the rows of a kv head packed into m16 tiles, K/V
    /// through a `cp.async` ring, `mma.sync` products; same grid, parameters and partials
    /// as [`KernelKind::Decode`] (`llvm/decode_mma.rs`).
    DecodeMma,
    /// [`KernelKind::DecodeMma`] with the combine folded in: the last CTA of each (b, kv
    /// head, row group) to finish (an atomic counter, `DecodeSem`) merges the splits'
    /// partials into O and LSE in split order (`llvm/decode_mma.rs`); no combine launch.
    DecodeMmaFused,
    /// The exact merge of a decode call's splits into O and LSE (`llvm/decode.rs`).
    DecodeCombine,
    /// The key positions each sequence of a decode call can reach, from `seq_lens` on the
    /// device (`llvm/decode_ranges.rs`): the caller-buffer decode's `Ranges`.
    DecodeRanges,
}

impl KernelKind {
    /// Every kind, in a stable order.
    pub const ALL: [KernelKind; 11] = [
        KernelKind::Forward,
        KernelKind::BlockTable,
        KernelKind::BackwardPre,
        KernelKind::BackwardDkDv,
        KernelKind::BackwardDq,
        KernelKind::BackwardRanges,
        KernelKind::Decode,
        KernelKind::DecodeMma,
        KernelKind::DecodeMmaFused,
        KernelKind::DecodeCombine,
        KernelKind::DecodeRanges,
    ];

    /// A stable name (cache keys, messages).
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Forward => "forward",
            KernelKind::BlockTable => "block-table",
            KernelKind::BackwardPre => "backward-pre",
            KernelKind::BackwardDkDv => "backward-dkdv",
            KernelKind::BackwardDq => "backward-dq",
            KernelKind::BackwardRanges => "backward-ranges",
            KernelKind::Decode => "decode",
            KernelKind::DecodeMma => "decode-mma",
            KernelKind::DecodeMmaFused => "decode-mma-fused",
            KernelKind::DecodeCombine => "decode-combine",
            KernelKind::DecodeRanges => "decode-ranges",
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
