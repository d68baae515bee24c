//! Where a caller-buffer call's host time goes: wall-clock laps of its steps, summed per
//! [`Stage`] across calls, for `python/bench/decode_host.py` (the Python package's
//! `_attnc.host_trace`).
//!
//! In: [`Laps`] made at a call's start ([`Laps::start`]) and lapped after each step
//! ([`Laps::lap`]) by the Python extension's zero-copy decode entry (read, captures,
//! enter, call, leave) and, on their own clock, the runtime's `decode_cuda_into` and
//! `decode_caller` (setup, buffers, then prefill and enqueue where chunked prefill runs
//! the prefill kernel, else skip, ranges, launch: together "call"); and the caller-buffer
//! backward's (`backward_cuda_into_with`: setup, buffers, call; `backward_caller` within
//! call: skip = its kernels and the device-table kernels found, prefill = the stream's
//! ranges key and buffers, ranges = the device ranges' launches, launch = the backward
//! kernels' — a mask over captured tensors without a block mask, the others lap only the
//! outer three; for `python/bench/doc_bwd_host.py`). Out: [`take`], each stage's summed nanoseconds and
//! lap count since the last `take`. Off by default: a lap is then one relaxed atomic load;
//! [`enable`] turns the clock on for the whole process (the sums are process-wide, so
//! time one call path at a time).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The steps of a zero-copy decode call, in call order (the discriminant indexes the sums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The extension reads and checks the tensors (shapes, dtypes, devices).
    Read,
    /// The extension reads the captures.
    Captures,
    /// The GIL released, the device's context made current, the binding found and locked.
    Enter,
    /// The extension's work under the binding's lock: the workspace's size check (a
    /// `decode_setup` of its own) and the runtime's `decode_cuda_into`, whose own steps
    /// follow.
    Call,
    /// `decode_cuda_into`: the decode shape, launch geometry and kernels (`decode_setup`).
    Setup,
    /// The captures' bindings and the buffers' checks (null, alignment, overlap, capture).
    Buffers,
    /// Chunked prefill with the lengths on the device: the prefill kernel's binding
    /// found (`caller_prefill_device`, `prefill_bound`).
    Prefill,
    /// Chunked prefill: the captures' bindings, the block-table builder's and the prefill
    /// kernel's launches (`forward_cuda_into_kv`).
    Enqueue,
    /// The block-skip bounds of the call's captures and params.
    Skip,
    /// `decode_caller`: the stream's state and params, the ranges kernel's launch.
    Ranges,
    /// The split-KV kernel's launch (and its combine's).
    Launch,
    /// The extension's return: the context restored, the GIL taken back.
    Leave,
}

const STAGES: [Stage; 12] = [
    Stage::Read,
    Stage::Captures,
    Stage::Enter,
    Stage::Call,
    Stage::Setup,
    Stage::Buffers,
    Stage::Prefill,
    Stage::Enqueue,
    Stage::Skip,
    Stage::Ranges,
    Stage::Launch,
    Stage::Leave,
];

// every stage at its discriminant's place (`Laps::lap` indexes the sums by it)
const _: () = {
    let mut i = 0;
    while i < STAGES.len() {
        assert!(STAGES[i] as usize == i);
        i += 1;
    }
};

impl Stage {
    /// The stage's name as [`take`] reports it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Captures => "captures",
            Stage::Enter => "enter",
            Stage::Call => "call",
            Stage::Setup => "setup",
            Stage::Buffers => "buffers",
            Stage::Prefill => "prefill",
            Stage::Enqueue => "enqueue",
            Stage::Skip => "skip",
            Stage::Ranges => "ranges",
            Stage::Launch => "launch",
            Stage::Leave => "leave",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];
static LAPS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// Turns the laps' clock on or off for the process (off: laps record nothing).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Each stage's summed nanoseconds and lap count since the last call (then zeroed), in
/// call order.
pub fn take() -> Vec<(&'static str, u64, u64)> {
    STAGES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ns = NANOS[i].swap(0, Ordering::Relaxed);
            (s.name(), ns, LAPS[i].swap(0, Ordering::Relaxed))
        })
        .collect()
}

/// The clock of one call: each [`Laps::lap`] adds the time since the previous lap (or
/// the start) to its stage. Carried across the runtime's functions by reference; `None`
/// inside while tracing is off.
#[derive(Debug)]
pub struct Laps(Option<Instant>);

impl Laps {
    /// A call's clock, started now if tracing is on.
    pub fn start() -> Laps {
        Laps(ON.load(Ordering::Relaxed).then(Instant::now))
    }

    /// Adds the time since the last lap to `stage` and starts the next lap.
    pub fn lap(&mut self, stage: Stage) {
        if let Some(t) = self.0 {
            let now = Instant::now();
            let i = stage as usize;
            NANOS[i].fetch_add((now - t).as_nanos() as u64, Ordering::Relaxed);
            LAPS[i].fetch_add(1, Ordering::Relaxed);
            self.0 = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off, laps record nothing; on, each lap counts once into its stage with the time
    /// since the previous one, and `take` zeroes the sums. (One test: the sums are
    /// process-wide.)
    #[test]
    fn laps_sum_per_stage_only_while_on() {
        let _ = take();
        let mut l = Laps::start();
        l.lap(Stage::Read);
        assert!(take().iter().all(|&(_, ns, n)| ns == 0 && n == 0));
        enable(true);
        let mut l = Laps::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        l.lap(Stage::Setup);
        l.lap(Stage::Launch);
        l.lap(Stage::Launch);
        enable(false);
        let t = take();
        let get = |name: &str| t.iter().find(|s| s.0 == name).copied().unwrap();
        assert_eq!(get("setup").2, 1);
        assert!(get("setup").1 >= 2_000_000, "{t:?}");
        assert_eq!(get("launch").2, 2);
        assert!(get("launch").1 < get("setup").1, "{t:?}");
        assert_eq!(get("read"), ("read", 0, 0));
        assert!(take().iter().all(|&(_, ns, n)| ns == 0 && n == 0));
        assert_eq!(STAGES.len(), 12);
    }
}
