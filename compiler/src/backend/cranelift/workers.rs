//! Threads for the CPU kernels' launch code, as a seam: the launch code (forward,
//! backward) splits its work items over a [`Workers`] it is handed, and the runtime
//! supplies the thread pool (`runtime/src/exec/pool.rs`, rayon). [`Scoped`] is the
//! plain implementation for tests and tools: fresh scoped threads per call.
//!
//! In: a job (one closure, run once per copy; the copies claim work items from a shared
//! counter, so the result does not depend on how many copies run at once). Out: `Ok`
//! when every copy has returned, or a [`WorkerPanic`] naming the panic of a copy — a
//! panicking worker is an error of the call, never a silently unwritten tile.

use std::any::Any;

/// A job's copy panicked; its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a CPU worker thread panicked: {0}")]
pub struct WorkerPanic(pub String);

impl WorkerPanic {
    /// From a caught panic's payload.
    pub fn from_payload(p: Box<dyn Any + Send>) -> WorkerPanic {
        let msg = if let Some(s) = p.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else {
            "(a non-string panic payload)".to_string()
        };
        WorkerPanic(msg)
    }
}

/// Runs copies of a job on threads.
pub trait Workers: Sync {
    /// How many copies the launch code should ask for (at least 1).
    fn threads(&self) -> usize;
    /// Runs `job` `copies` times, concurrently as far as the implementation allows,
    /// and returns when every copy has returned; the first panic as an error.
    fn run(&self, copies: usize, job: &(dyn Fn() + Sync)) -> Result<(), WorkerPanic>;
}

/// Fresh scoped threads per call (`Scoped(1)` runs the job on the caller's thread).
#[derive(Debug, Clone, Copy)]
pub struct Scoped(pub usize);

impl Workers for Scoped {
    fn threads(&self) -> usize {
        self.0.max(1)
    }

    fn run(&self, copies: usize, job: &(dyn Fn() + Sync)) -> Result<(), WorkerPanic> {
        let call = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        if copies <= 1 {
            return call().map_err(WorkerPanic::from_payload);
        }
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (1..copies).map(|_| s.spawn(call)).collect();
            let mine = call();
            std::iter::once(mine)
                .chain(hs.into_iter().map(|h| h.join().unwrap_or_else(Err)))
                .collect()
        });
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), |p| Err(WorkerPanic::from_payload(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn scoped_runs_every_copy_and_reports_a_panic() {
        let n = AtomicUsize::new(0);
        Scoped(3)
            .run(3, &|| {
                n.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 3);
        let e = Scoped(3)
            .run(3, &|| {
                if n.fetch_add(1, Ordering::Relaxed) == 4 {
                    panic!("tile 7 went wrong");
                }
            })
            .unwrap_err();
        assert_eq!(e.0, "tile 7 went wrong");
        assert_eq!(n.load(Ordering::Relaxed), 6, "the other copies still ran");
        let e = Scoped(1).run(1, &|| panic!("inline {}", 1)).unwrap_err();
        assert_eq!(e.0, "inline 1");
    }
}
