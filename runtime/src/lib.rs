//! attnc runtime
