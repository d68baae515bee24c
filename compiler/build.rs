//! Build script: every file under `src/` (and the grammar's `src/`, which shapes the IR)
//! in, `$OUT_DIR/source_hash.rs` out: `SOURCE_HASH` (SHA-256 of the crate version and
//! those files) and `SOURCE_FILES` (the list hashed), read by `src/build_info.rs`. The
//! runtime's cache keys carry the hash, so any change to the compiler's source gives new
//! keys. The rule is deliberately "every file", not a list of generating modules: no
//! module can be left out (`build_info::tests` walks the tree and compares).

include!("build/source_hash.rs");

use std::path::{Path, PathBuf};

/// Every regular file under `dir`, as paths relative to `base` with `/` separators.
fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let ty = std::fs::symlink_metadata(&p)
            .expect("file metadata")
            .file_type();
        if ty.is_dir() {
            walk(base, &p, out);
        } else {
            let rel = p.strip_prefix(base).expect("under the manifest directory");
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets it");
    let mut files = Vec::new();
    for root in SOURCE_ROOTS {
        let dir = manifest.join(root);
        if dir.is_dir() {
            // a directory: cargo reruns this script when anything under it changes
            println!("cargo:rerun-if-changed={root}");
            let mut found = Vec::new();
            walk(&manifest.join(root), &dir, &mut found);
            files.extend(found.into_iter().map(|f| format!("{root}/{f}")));
        }
    }
    println!("cargo:rerun-if-changed=build/source_hash.rs");
    files.sort();
    let hash = source_hash(&manifest, &version, &files).expect("reading the compiler's sources");
    let mut out = String::new();
    out.push_str(
        "/// SHA-256 of the compiler crate's version and every file in [`SOURCE_FILES`].\n",
    );
    out.push_str(&format!("pub const SOURCE_HASH: &str = {hash:?};\n"));
    out.push_str(
        "/// The files hashed into [`SOURCE_HASH`], relative to the compiler's manifest \
         directory, sorted.\n",
    );
    out.push_str("pub const SOURCE_FILES: &[&str] = &[\n");
    for f in &files {
        out.push_str(&format!("    {f:?},\n"));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("source_hash.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
