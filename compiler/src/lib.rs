//! attnc-compiler
