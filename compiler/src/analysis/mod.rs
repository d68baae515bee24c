//! Analyses of the IR. They read the IR and produce side tables; they never mutate it.
pub mod blockmap;
pub mod classify;
pub mod density;
pub mod diagonal;
pub mod documents;
pub mod interval;
pub mod linear;
pub mod summaries;

use std::cell::Cell;

thread_local! {
    /// Calls of `classify::analyze` and `ClosedForm::derive_implied` on this thread.
    static COUNTS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// `(analyze, derive_implied)` calls made on this thread so far: what the tests that
/// prove the analyses run once per bind (`plan::Plan`) count.
#[doc(hidden)]
pub fn counts() -> (u64, u64) {
    COUNTS.with(|c| c.get())
}

pub(crate) fn count(analyze: u64, implied: u64) {
    COUNTS.with(|c| {
        let (a, i) = c.get();
        c.set((a + analyze, i + implied));
    });
}
