//! Analyses of the IR. They read the IR and produce side tables; they never mutate it.
pub mod blockmap;
