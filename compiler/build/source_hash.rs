// The compiler's source hash, shared by `build.rs` (which computes it at build time) and
// the coverage test in `src/build_info.rs` (which recomputes it from the files on disk).
// Plain `//` comments: this file is `include!`d, where inner doc comments are not allowed.

/// The directories whose every file is hashed, relative to the compiler's manifest
/// directory. `../grammar/src` is absent from a packaged crate (then the grammar is
/// pinned by its version requirement); everything else is always there.
pub const SOURCE_ROOTS: &[&str] = &["src", "../grammar/src"];

/// SHA-256 over the crate version and, in the order given, each file's path (relative to
/// `manifest_dir`) and contents, each part length-prefixed so that boundaries matter.
pub fn source_hash(
    manifest_dir: &std::path::Path,
    version: &str,
    files: &[String],
) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    fn part(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    part(&mut h, b"attnc-compiler source hash v1");
    part(&mut h, version.as_bytes());
    for f in files {
        part(&mut h, f.as_bytes());
        part(&mut h, &std::fs::read(manifest_dir.join(f))?);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
