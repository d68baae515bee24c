//! The on-disk JIT cache: bytes in, bytes out, keyed by a SHA-256 of everything that
//! determines the artifact (source or IR text, options, target, compiler build).
//!
//! In: a key (from [`cache_key`]), a kind (file extension such as `ptx`), bytes to store.
//! Out: the stored bytes, only when they are intact.
//!
//! Entry format: `ATTNCACHE1\n`, the payload length (u64 LE), the payload's SHA-256
//! (32 bytes), the payload. An entry whose header, length or checksum does not match is
//! deleted and reported as a miss, so the caller rebuilds it. Entries are written to a
//! unique temporary file in the same directory and renamed into place, so a reader never
//! sees a half-written entry and concurrent writers (threads or processes) are safe: the
//! last rename wins and every candidate is complete.
//!
//! Directory: `ATTNC_CACHE_DIR`, else `$XDG_CACHE_HOME/attnc`, else `~/.cache/attnc`.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8] = b"ATTNCACHE1\n";

/// The build of this compiler, for cache keys: crate version plus a hash of the PTX generator.
pub fn compiler_build_id() -> String {
    format!(
        "attnc-{}-gen{:016x}",
        env!("CARGO_PKG_VERSION"),
        attnc_compiler::backend::llvm::generator_hash()
    )
}

/// A key from several parts (each length-prefixed, so part boundaries matter).
pub fn cache_key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A directory of cache entries.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

/// Whether a lookup found an intact entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// An entry existed but was corrupt; it was deleted.
    Corrupt,
}

impl DiskCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskCache { dir: dir.into() }
    }

    /// The cache at the default location, or None when no location can be determined.
    pub fn from_env() -> Option<Self> {
        if let Some(d) = std::env::var_os("ATTNC_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Some(Self::new(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(Self::new(Path::new(&d).join("attnc")));
        }
        std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|h| Self::new(Path::new(&h).join(".cache").join("attnc")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of an entry.
    pub fn path(&self, key: &str, kind: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("xx");
        self.dir.join(shard).join(format!("{key}.{kind}"))
    }

    /// Reads an entry; a corrupt one is deleted.
    pub fn get(&self, key: &str, kind: &str) -> (Option<Vec<u8>>, Lookup) {
        let path = self.path(key, kind);
        let Ok(data) = fs::read(&path) else {
            return (None, Lookup::Miss);
        };
        match decode(&data) {
            Some(payload) => (Some(payload.to_vec()), Lookup::Hit),
            None => {
                let _ = fs::remove_file(&path);
                (None, Lookup::Corrupt)
            }
        }
    }

    /// Writes an entry atomically (temporary file + rename).
    pub fn put(&self, key: &str, kind: &str, payload: &[u8]) -> io::Result<()> {
        let path = self.path(key, kind);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = parent.join(format!(
            ".tmp-{}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            key.get(..16).unwrap_or(key)
        ));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&encode(payload))?;
            f.sync_data()?;
            drop(f);
            fs::rename(&tmp, &path)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// The entry, or `make()`'s result stored as the entry. Returns the bytes and how the
    /// lookup went. Storage errors are ignored (the cache is an optimization).
    pub fn get_or_insert_with<E>(
        &self,
        key: &str,
        kind: &str,
        make: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(Vec<u8>, Lookup), E> {
        let (found, how) = self.get(key, kind);
        if let Some(b) = found {
            return Ok((b, how));
        }
        let b = make()?;
        let _ = self.put(key, kind, &b);
        Ok((b, how))
    }
}

fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 40 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

fn decode(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(MAGIC)?;
    if rest.len() < 40 {
        return None;
    }
    let len = u64::from_le_bytes(rest[..8].try_into().ok()?) as usize;
    let sum = &rest[8..40];
    let payload = &rest[40..];
    if payload.len() != len || Sha256::digest(payload).as_slice() != sum {
        return None;
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("attnc-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn roundtrip_and_keys() {
        let c = DiskCache::new(tmpdir("rt"));
        let k = cache_key(&[b"src", b"opts"]);
        assert_ne!(
            k,
            cache_key(&[b"srco", b"pts"]),
            "part boundaries must matter"
        );
        assert_eq!(c.get(&k, "ptx"), (None, Lookup::Miss));
        c.put(&k, "ptx", b"hello").unwrap();
        assert_eq!(c.get(&k, "ptx"), (Some(b"hello".to_vec()), Lookup::Hit));
        let _ = fs::remove_dir_all(c.dir());
    }

    #[test]
    fn corrupt_and_truncated_entries_are_deleted_and_rebuilt() {
        let c = DiskCache::new(tmpdir("corrupt"));
        let k = cache_key(&[b"x"]);
        let payload = vec![7u8; 1000];
        c.put(&k, "ptx", &payload).unwrap();
        let path = c.path(&k, "ptx");
        // flip one payload byte
        let mut data = fs::read(&path).unwrap();
        let n = data.len();
        data[n - 10] ^= 1;
        fs::write(&path, &data).unwrap();
        assert_eq!(c.get(&k, "ptx"), (None, Lookup::Corrupt));
        assert!(!path.exists(), "a corrupt entry must be deleted");
        // half-written entry
        c.put(&k, "ptx", &payload).unwrap();
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() / 2]).unwrap();
        let mut built = 0;
        let (b, how) = c
            .get_or_insert_with(&k, "ptx", || {
                built += 1;
                Ok::<_, ()>(payload.clone())
            })
            .unwrap();
        assert_eq!((b, how, built), (payload.clone(), Lookup::Corrupt, 1));
        assert_eq!(c.get(&k, "ptx").1, Lookup::Hit, "rebuilt entry is intact");
        // garbage header
        fs::write(&path, b"not a cache entry").unwrap();
        assert_eq!(c.get(&k, "ptx").1, Lookup::Corrupt);
        let _ = fs::remove_dir_all(c.dir());
    }

    #[test]
    fn concurrent_writers_and_readers_never_see_partial_entries() {
        let c = DiskCache::new(tmpdir("conc"));
        let k = cache_key(&[b"shared"]);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                let k = k.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        // every writer writes a different but self-consistent payload
                        let payload = vec![(t * 50 + i) as u8; 4096 + t * 17];
                        c.put(&k, "ptx", &payload).unwrap();
                        let (got, how) = c.get(&k, "ptx");
                        assert_ne!(how, Lookup::Corrupt, "a reader saw a partial entry");
                        let got = got.expect("an entry exists after a put");
                        assert!(got.iter().all(|x| *x == got[0]), "mixed payloads");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // no temporary files are left behind
        let shard = c.path(&k, "ptx").parent().unwrap().to_path_buf();
        let leftovers: Vec<_> = fs::read_dir(&shard)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = fs::remove_dir_all(c.dir());
    }
}
