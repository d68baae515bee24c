//! Checks on what a caller asks for before anything is compiled or allocated: the bind
//! options (a float dtype for q/k/v, a finite softmax scale, a valid shape, a CPU thread
//! count of at most [`MAX_THREADS`]).
//!
//! In: [`BindOptions`]. Out: `Ok(())` or the [`Error`] a user sees, naming the value and
//! what is allowed.

use crate::error::{Error, Result};
use crate::options::BindOptions;

/// The most CPU threads a binding may ask for (`BindOptions::threads`): each distinct
/// count makes a pool of that many OS threads kept for the process, so a mistaken count
/// (`1 << 20`) would try to spawn a million threads instead of failing.
pub(crate) const MAX_THREADS: usize = 1024;

/// Validates the options of [`crate::Variant::bind`].
pub(crate) fn bind_options(opts: &BindOptions) -> Result<()> {
    opts.shape.validate()?;
    if !opts.dtype.is_float() {
        return Err(Error::InputDType {
            which: "q, k and v".into(),
            expected: "f32, f16 or bf16".into(),
            got: opts.dtype,
        });
    }
    if let Some(s) = opts.scale
        && !s.is_finite()
    {
        return Err(Error::Usage(format!(
            "the softmax scale must be a finite number, got {s}"
        )));
    }
    if opts.threads > MAX_THREADS {
        return Err(Error::Usage(format!(
            "`threads` = {} exceeds the supported maximum {MAX_THREADS} (0 = all available cores)",
            opts.threads
        )));
    }
    Ok(())
}
