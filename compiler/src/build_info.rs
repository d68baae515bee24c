//! The identity of this compiler build, for cache keys: computed at build time, once.
//!
//! In: nothing at run time; `build.rs` hashes the crate version and every file under
//! `src/` (and the grammar's `src/` where the workspace has it) into `$OUT_DIR`.
//! Out: [`SOURCE_HASH`] (hex SHA-256) and [`SOURCE_FILES`] (what it covers). Any change
//! to any source file of the compiler gives a new hash, so a cache keyed by it never
//! serves an artifact of another generator: no list of "generating modules" to keep up
//! to date (the tests below fail if a file under `src/` is not covered or the hash is
//! stale).

include!(concat!(env!("OUT_DIR"), "/source_hash.rs"));

#[cfg(test)]
mod tests {
    use super::{SOURCE_FILES, SOURCE_HASH};
    use std::path::{Path, PathBuf};

    mod shared {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/build/source_hash.rs"));
    }

    /// Every file under `dir` (any extension, any depth), written as `prefix/relative`.
    /// Written here on its own (not shared with build.rs), so a walk that skips something
    /// cannot hide itself.
    fn all_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p: PathBuf = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                all_files(&p, &format!("{prefix}/{name}"), out);
            } else {
                out.push(format!("{prefix}/{name}"));
            }
        }
    }

    fn manifest() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn every_compiler_source_file_is_hashed() {
        assert!(shared::SOURCE_ROOTS.contains(&"src"));
        let mut on_disk = Vec::new();
        for root in shared::SOURCE_ROOTS {
            if manifest().join(root).is_dir() {
                all_files(&manifest().join(root), root, &mut on_disk);
            }
        }
        on_disk.sort();
        let hashed: Vec<String> = SOURCE_FILES.iter().map(|s| s.to_string()).collect();
        let missing: Vec<&String> = on_disk.iter().filter(|f| !hashed.contains(f)).collect();
        let gone: Vec<&String> = hashed.iter().filter(|f| !on_disk.contains(f)).collect();
        assert!(
            missing.is_empty() && gone.is_empty(),
            "build.rs hashed a different file set than the tree holds: not hashed {missing:?}, \
             hashed but gone {gone:?}"
        );
        // the generating modules are among them (the old hand-picked list left out
        // analysis/classify.rs and interval.rs, which choose closed form vs table)
        for f in [
            "src/backend/llvm/kernel.rs",
            "src/backend/llvm/decode.rs",
            "src/backend/cranelift/codegen.rs",
            "src/analysis/classify.rs",
            "src/analysis/interval.rs",
            "src/plan.rs",
            "../grammar/src/grammar.lalrpop",
        ] {
            assert!(SOURCE_FILES.contains(&f), "{f} is not hashed");
        }
    }

    #[test]
    fn source_hash_matches_the_files_on_disk() {
        let files: Vec<String> = SOURCE_FILES.iter().map(|s| s.to_string()).collect();
        let now = shared::source_hash(manifest(), env!("CARGO_PKG_VERSION"), &files).unwrap();
        assert_eq!(
            now, SOURCE_HASH,
            "SOURCE_HASH is stale: build.rs did not rerun after a source change"
        );
        assert_eq!(SOURCE_HASH.len(), 64);
    }

    #[test]
    fn source_hash_covers_contents_and_names() {
        // any byte of any file, a file's name and the version change the hash
        let dir = std::env::temp_dir().join(format!("attnc-srchash-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/a.rs"), "fn a() {}").unwrap();
        let one = |files: &[&str]| {
            let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
            shared::source_hash(&dir, "0.1.0", &files).unwrap()
        };
        let base = one(&["src/a.rs"]);
        std::fs::write(dir.join("src/a.rs"), "fn a() { }").unwrap();
        assert_ne!(one(&["src/a.rs"]), base);
        std::fs::write(dir.join("src/b.rs"), "fn a() { }").unwrap();
        let moved = one(&["src/b.rs"]);
        assert_ne!(moved, one(&["src/a.rs"]));
        assert_ne!(
            shared::source_hash(&dir, "0.1.1", &["src/b.rs".to_string()]).unwrap(),
            moved,
            "the version is hashed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
