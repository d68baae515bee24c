//! Fuzz target: the differential check of `attnc_tests::fuzzdiff` — a float builtin over
//! f32 bit patterns from the input and a random program from the grammar, each on the
//! CPU backend against the oracle; any disagreement beyond the documented bounds panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = attnc_tests::fuzzdiff::check(data) {
        panic!("{e}");
    }
});
