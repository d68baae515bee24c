//! The CPU executors' worker threads: one persistent rayon pool per thread count,
//! implementing the compiler's [`Workers`] seam.
//!
//! In: the thread count of a bind (`BindOptions::threads`, 0 = all cores) and a job from
//! the CPU launch code (forward, backward, decode). Out: the job run on the pool's
//! threads, or a [`WorkerPanic`] when a copy panicked.
//!
//! Why a pool: spawning 15 threads per call cost milliseconds on the benchmark host, more
//! than a sparse attention takes. Pools are made once per distinct thread count and live
//! for the process; a second caller running at the same time queues its copies on the
//! same threads (rayon's scope) instead of spawning fresh ones. No lifetimes are erased:
//! `rayon::ThreadPool::scope` borrows the job for the duration of the call.

use attnc_compiler::backend::cranelift::workers::{WorkerPanic, Workers};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A persistent pool of `threads` worker threads.
pub(crate) struct Pool {
    threads: usize,
    /// `None` when the OS refused threads: jobs then run on the caller's thread.
    pool: Option<rayon::ThreadPool>,
}

/// The pool for `threads` threads (0: the machine's available parallelism), made on
/// first use.
pub(crate) fn pool(threads: usize) -> &'static Pool {
    static POOLS: OnceLock<Mutex<HashMap<usize, &'static Pool>>> = OnceLock::new();
    // available_parallelism reads the cgroup limits (files): once per process
    static CORES: OnceLock<usize> = OnceLock::new();
    let threads = if threads == 0 {
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    } else {
        threads
    };
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pools.entry(threads).or_insert_with(|| {
        let pool = if threads > 1 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("attnc-cpu{threads}-{i}"))
                .build()
                .ok()
        } else {
            None
        };
        // made once per distinct thread count and kept for the process
        Box::leak(Box::new(Pool { threads, pool }))
    })
}

impl Workers for Pool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, copies: usize, job: &(dyn Fn() + Sync)) -> Result<(), WorkerPanic> {
        let call = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let Some(pool) = &self.pool else {
            // one thread (or none could be made): the copies run one after another,
            // which gives the same result (they share one work counter)
            for _ in 0..copies.max(1) {
                call().map_err(WorkerPanic::from_payload)?;
            }
            return Ok(());
        };
        let first: Mutex<Option<WorkerPanic>> = Mutex::new(None);
        pool.scope(|s| {
            for _ in 0..copies.max(1) {
                s.spawn(|_| {
                    if let Err(p) = call() {
                        first
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(WorkerPanic::from_payload(p));
                    }
                });
            }
        });
        match first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The OS threads of this process (Linux).
    fn os_threads() -> Option<usize> {
        std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
    }

    #[test]
    fn a_panicking_copy_is_an_error_and_the_pool_stays_usable() {
        let p = pool(3);
        let n = AtomicUsize::new(0);
        let e = p
            .run(3, &|| {
                if n.fetch_add(1, Ordering::Relaxed) == 1 {
                    panic!("tile 5 failed");
                }
            })
            .unwrap_err();
        assert_eq!(e.0, "tile 5 failed");
        assert_eq!(n.load(Ordering::Relaxed), 3, "every copy ran");
        p.run(3, &|| {
            n.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 6);
        // the single-thread path reports panics too
        let e = pool(1).run(2, &|| panic!("inline")).unwrap_err();
        assert_eq!(e.0, "inline");
    }

    #[test]
    fn concurrent_callers_share_the_pool_threads() {
        let p = pool(4);
        p.run(4, &|| {}).unwrap(); // threads made
        let Some(before) = os_threads() else { return };
        let total = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        // 6 callers at once (the test's own threads), 20 jobs each, on the same pool;
        // every copy samples the process's thread count while the others run
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..20 {
                        p.run(4, &|| {
                            total.fetch_add(1, Ordering::Relaxed);
                            most.fetch_max(os_threads().unwrap_or(0), Ordering::Relaxed);
                        })
                        .unwrap();
                    }
                });
            }
        });
        // only the 6 callers were added (other tests of this binary may run at once:
        // their pools are at most a few threads more, far below 6 callers x 3 spawns)
        let during = most.load(Ordering::Relaxed);
        assert!(
            during <= before + 6 + 4,
            "{during} threads while running, {before} before"
        );
        assert_eq!(total.load(Ordering::Relaxed), 6 * 20 * 4);
        assert!(std::ptr::eq(p, pool(4)), "one pool per thread count");
    }
}
