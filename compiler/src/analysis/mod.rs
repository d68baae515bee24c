//! Analyses of the IR. They read the IR and produce side tables; they never mutate it.
pub mod blockmap;
pub mod classify;
pub mod density;
pub mod interval;
pub mod linear;
pub mod summaries;
