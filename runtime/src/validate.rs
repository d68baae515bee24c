//! Checks on what a caller asks for before anything is compiled or allocated: the bind
//! options (a float dtype for q/k/v, a finite softmax scale, a valid shape, a CPU thread
//! count of at most [`MAX_THREADS`]).
//!
//! In: [`BindOptions`]. Out: `Ok(())` or the [`Error`] a user sees, naming the value and
//! what is allowed.

use crate::error::{Error, Result};
use crate::options::{BindOptions, MAX_THREADS};

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
