//! attnc runtime
pub mod blockview;
