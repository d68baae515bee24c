//! attnc runtime
pub mod cache;
pub mod cuda;
