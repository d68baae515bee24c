//! Which cases a code-generation test runs: its programs × its settings.
//!
//! In: the two lists of a test (programs, settings: option sets, head dims, layouts).
//! Out: the pairs the test checks. The test command runs a *rotation* — case `i` pairs
//! program `i mod P` with setting `i mod S`, `max(P, S)` cases, so every program and every
//! setting is generated and checked at least once; `ATTNC_LONG_TESTS=1` runs the whole
//! product (the long check, README "Long checks"). Each kernel costs LLVM 0.1–1 s on the
//! CI machine's cores, and the settings' products made the compiler crate's tests
//! take 9 minutes of the test command.

/// Whether the whole product runs (`ATTNC_LONG_TESTS` set to anything but `0`).
pub fn long_tests() -> bool {
    std::env::var("ATTNC_LONG_TESTS").is_ok_and(|v| v != "0")
}

/// The (program, setting) pairs a test checks: the rotation, or the whole product
/// under [`long_tests`]. Empty when either list is.
pub fn cases<P: Clone, S: Clone>(programs: &[P], settings: &[S]) -> Vec<(P, S)> {
    if long_tests() {
        programs
            .iter()
            .flat_map(|p| settings.iter().map(move |s| (p.clone(), s.clone())))
            .collect()
    } else {
        rotation(programs, settings)
    }
}

/// Case `i` of `max(P, S)`: program `i mod P`, setting `i mod S`.
fn rotation<P: Clone, S: Clone>(programs: &[P], settings: &[S]) -> Vec<(P, S)> {
    if programs.is_empty() || settings.is_empty() {
        return Vec::new();
    }
    (0..programs.len().max(settings.len()))
        .map(|i| {
            (
                programs[i % programs.len()].clone(),
                settings[i % settings.len()].clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::rotation;

    #[test]
    fn rotation_covers_every_program_and_every_setting() {
        for (np, ns) in [(7, 3), (3, 7), (4, 4), (4, 8), (1, 5), (5, 1)] {
            let p: Vec<usize> = (0..np).collect();
            let s: Vec<usize> = (0..ns).collect();
            let r = rotation(&p, &s);
            assert_eq!(r.len(), np.max(ns));
            for i in 0..np {
                assert!(r.iter().any(|c| c.0 == i), "{np}x{ns}: program {i}");
            }
            for j in 0..ns {
                assert!(r.iter().any(|c| c.1 == j), "{np}x{ns}: setting {j}");
            }
        }
        assert!(rotation::<u8, u8>(&[], &[1]).is_empty());
    }
}
