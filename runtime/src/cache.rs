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
//! Kinds stored by the CUDA JIT (`crate::cuda::JitCache`): `ptx` under the kernel key
//! (program text, options, compiler build), and `cubin` (the driver's compiled machine
//! code) under [`cubin_key`], which adds the device's compute capability, the driver
//! version and build, and the `ptxas` optimization level: a cubin compiled for another
//! GPU or by another driver is never found, so it is never loaded.
//!
//! Directory: `ATTNC_CACHE_DIR`, else `$XDG_CACHE_HOME/attnc`, else `~/.cache/attnc`.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8] = b"ATTNCACHE1\n";

/// The build of this compiler, for cache keys: the runtime's version, the compiler's source
/// hash (computed at build time over every file of the compiler crate and the grammar,
/// [`attnc_compiler::build_info::SOURCE_HASH`]) and the LLVM version it links. Built once
/// per process.
pub fn compiler_build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let (major, minor, patch) = attnc_compiler::backend::llvm::llvm_version();
        format!(
            "attnc-{}-src{}-llvm{major}.{minor}.{patch}",
            env!("CARGO_PKG_VERSION"),
            attnc_compiler::build_info::SOURCE_HASH
        )
    })
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

/// What a cubin is valid for besides its PTX: the GPU and the driver that compiled it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CubinTarget {
    /// Compute capability (major, minor) of the device.
    pub capability: (i32, i32),
    /// `cuDriverGetVersion` (e.g. 12080).
    pub driver_version: i32,
    /// The driver build (first line of `/proc/driver/nvidia/version` where readable, else
    /// empty): two drivers of one CUDA version can carry different PTX compilers.
    pub driver_build: String,
}

/// The key of the cubin compiled from the PTX stored under `ptx_key`, for `target`, by
/// `ptxas` at optimization level `opt_level`.
pub fn cubin_key(ptx_key: &str, target: &CubinTarget, opt_level: u32) -> String {
    cache_key(&[
        b"cubin",
        ptx_key.as_bytes(),
        format!("sm_{}.{}", target.capability.0, target.capability.1).as_bytes(),
        &target.driver_version.to_le_bytes(),
        target.driver_build.as_bytes(),
        &opt_level.to_le_bytes(),
    ])
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
        let _span = tracing::debug_span!("cache_lookup", kind, key).entered();
        let path = self.path(key, kind);
        let Ok(data) = fs::read(&path) else {
            tracing::debug!("miss");
            return (None, Lookup::Miss);
        };
        match decode(&data) {
            Some(payload) => {
                tracing::debug!("hit");
                (Some(payload.to_vec()), Lookup::Hit)
            }
            None => {
                match fs::remove_file(&path) {
                    Ok(()) => tracing::warn!(path = %path.display(), "corrupt cache entry deleted"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "corrupt cache entry could not be deleted")
                    }
                }
                (None, Lookup::Corrupt)
            }
        }
    }

    /// Deletes an entry (one whose payload the caller found unusable); a missing entry is
    /// not an error.
    pub fn remove(&self, key: &str, kind: &str) {
        let _ = fs::remove_file(self.path(key, kind));
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
    /// lookup went. On a miss the entry's lock file (`<entry>.lock`, an exclusive file
    /// lock) is held while `make()` runs, and the entry is looked up again under it, so
    /// two processes missing the same entry build it once. Storage errors do not fail the
    /// call (the cache is an optimization); they are reported as `tracing` warnings.
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
        let lock = self.lock(key, kind);
        if lock.is_some() {
            // another process may have built it while this one waited
            if let (Some(b), Lookup::Hit) = self.get(key, kind) {
                return Ok((b, Lookup::Hit));
            }
        }
        let b = make()?;
        if let Err(e) = self.put(key, kind, &b) {
            tracing::warn!(dir = %self.dir.display(), key, kind, error = %e, "cache entry not written");
        }
        drop(lock);
        Ok((b, how))
    }

    /// Takes the exclusive lock of an entry (blocking); `None` (with a warning) when the
    /// lock file cannot be created or locked, and the caller goes on without it.
    fn lock(&self, key: &str, kind: &str) -> Option<fs::File> {
        let path = self.path(key, kind).with_extension(format!("{kind}.lock"));
        let file = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| {
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
            })
            .and_then(|f| f.lock().map(|()| f));
        match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache lock not taken");
                None
            }
        }
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

    #[test]
    fn build_id_carries_the_compiler_source_hash_and_is_built_once() {
        let id = compiler_build_id();
        assert!(id.contains(attnc_compiler::build_info::SOURCE_HASH), "{id}");
        assert!(id.contains("-llvm"), "{id}");
        assert!(
            std::ptr::eq(id, compiler_build_id()),
            "computed once per process"
        );
    }

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

    fn target(cc: (i32, i32), ver: i32, build: &str) -> CubinTarget {
        CubinTarget {
            capability: cc,
            driver_version: ver,
            driver_build: build.to_string(),
        }
    }

    #[test]
    fn cubin_keys_separate_devices_drivers_and_levels() {
        let ptx = cache_key(&[b"program", b"opts"]);
        let t = target((9, 0), 12080, "NVRM 570.124");
        let k = cubin_key(&ptx, &t, 4);
        assert_eq!(k, cubin_key(&ptx, &t.clone(), 4), "keys are deterministic");
        let others = [
            cubin_key(&cache_key(&[b"program2", b"opts"]), &t, 4),
            cubin_key(&ptx, &target((8, 0), 12080, "NVRM 570.124"), 4),
            cubin_key(&ptx, &target((9, 1), 12080, "NVRM 570.124"), 4),
            cubin_key(&ptx, &target((9, 0), 12090, "NVRM 570.124"), 4),
            cubin_key(&ptx, &target((9, 0), 12080, "NVRM 570.133"), 4),
            cubin_key(&ptx, &t, 3),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(&k, o, "variation {i} must change the cubin key");
        }
        // sm_9,10 and sm_91,0 must not collide either
        assert_ne!(
            cubin_key(&ptx, &target((9, 10), 1, ""), 4),
            cubin_key(&ptx, &target((91, 0), 1, ""), 4),
        );
        assert_ne!(k, ptx, "a cubin key is not its PTX key");
    }

    #[test]
    fn cubin_entries_live_next_to_ptx_and_detect_corruption() {
        let c = DiskCache::new(tmpdir("cubin"));
        let ptx_key = cache_key(&[b"kernel"]);
        let ckey = cubin_key(&ptx_key, &target((9, 0), 12080, "b"), 4);
        // binary payload with NUL bytes, like a real ELF cubin
        let cubin: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..5000u32).map(|i| (i * 7 % 256) as u8))
            .collect();
        c.put(&ptx_key, "ptx", b".version 8.0").unwrap();
        c.put(&ckey, "cubin", &cubin).unwrap();
        assert_eq!(c.get(&ckey, "cubin"), (Some(cubin.clone()), Lookup::Hit));
        assert_eq!(c.get(&ptx_key, "ptx").1, Lookup::Hit);
        // another device never sees it
        let other = cubin_key(&ptx_key, &target((8, 6), 12080, "b"), 4);
        assert_eq!(c.get(&other, "cubin"), (None, Lookup::Miss));
        // each kind of damage is detected and the entry rebuilt; the PTX entry is untouched
        let path = c.path(&ckey, "cubin");
        let good = fs::read(&path).unwrap();
        let damages: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),   // truncated payload
            good[..MAGIC.len() + 20].to_vec(), // truncated header
            Vec::new(),                        // empty file (crash before the first write)
            {
                let mut d = good.clone();
                d[MAGIC.len() + 8] ^= 0x80; // checksum byte
                d
            },
            {
                let mut d = good.clone();
                d[MAGIC.len()] ^= 1; // length field
                d
            },
            {
                let mut d = good.clone();
                d.push(0); // trailing garbage
                d
            },
        ];
        for (i, bad) in damages.iter().enumerate() {
            fs::write(&path, bad).unwrap();
            let mut built = 0;
            let (b, how) = c
                .get_or_insert_with(&ckey, "cubin", || {
                    built += 1;
                    Ok::<_, ()>(cubin.clone())
                })
                .unwrap();
            assert_eq!((how, built), (Lookup::Corrupt, 1), "damage {i}");
            assert_eq!(b, cubin);
            assert_eq!(c.get(&ckey, "cubin").1, Lookup::Hit, "damage {i}: rebuilt");
        }
        assert_eq!(c.get(&ptx_key, "ptx").1, Lookup::Hit);
        c.remove(&ckey, "cubin");
        assert_eq!(c.get(&ckey, "cubin").1, Lookup::Miss);
        c.remove(&ckey, "cubin"); // removing a missing entry is fine
        let _ = fs::remove_dir_all(c.dir());
    }

    /// The child half of [`two_processes_fill_one_cache`]: writes and reads one cubin
    /// entry in a loop; does nothing unless started by that test.
    #[test]
    #[ignore = "the child process of two_processes_fill_one_cache, started by that test"]
    fn cache_child_writer() {
        let Some(dir) = std::env::var_os("ATTNC_CACHE_TEST_CHILD") else {
            return;
        };
        let id: u8 = std::env::var("ATTNC_CACHE_TEST_ID")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let c = DiskCache::new(dir);
        let k = cubin_key(&cache_key(&[b"shared"]), &target((9, 0), 1, ""), 4);
        for i in 0..200u32 {
            let payload = vec![id.wrapping_mul(31).wrapping_add(i as u8); 20_000 + id as usize];
            c.put(&k, "cubin", &payload).unwrap();
            let (got, how) = c.get(&k, "cubin");
            assert_ne!(how, Lookup::Corrupt, "process {id} saw a partial entry");
            let got = got.expect("an entry exists after a put");
            assert!(got.iter().all(|x| *x == got[0]), "mixed payloads");
        }
    }

    #[test]
    fn two_processes_fill_one_cache() {
        let dir = tmpdir("procs");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..3)
            .map(|id| {
                std::process::Command::new(&exe)
                    .args([
                        "cache::tests::cache_child_writer",
                        "--exact",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env("ATTNC_CACHE_TEST_CHILD", &dir)
                    .env("ATTNC_CACHE_TEST_ID", id.to_string())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for ch in children {
            let out = ch.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "child failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let c = DiskCache::new(&dir);
        let k = cubin_key(&cache_key(&[b"shared"]), &target((9, 0), 1, ""), 4);
        let (got, how) = c.get(&k, "cubin");
        assert_eq!(how, Lookup::Hit);
        assert!(got.unwrap().len() >= 20_000);
        let shard = c.path(&k, "cubin").parent().unwrap().to_path_buf();
        assert!(
            fs::read_dir(&shard)
                .unwrap()
                .filter_map(|e| e.ok())
                .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")),
            "temporary files left behind"
        );
        let _ = fs::remove_dir_all(&dir);
    }
    #[test]
    fn one_build_under_the_entry_lock_and_warnings_for_corrupt_entries() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let c = DiskCache::new(tmpdir("lock"));
        // eight threads miss the same entry at once: make() runs once (file lock + re-check)
        let builds = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (c, builds) = (c.clone(), builds.clone());
                s.spawn(move || {
                    let (b, _) = c
                        .get_or_insert_with("ab12", "ptx", || {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok::<_, ()>(b"kernel".to_vec())
                        })
                        .unwrap();
                    assert_eq!(b, b"kernel");
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        // a corrupt entry is deleted with a tracing warning
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        let bad = c.path("cd34", "ptx");
        fs::create_dir_all(bad.parent().unwrap()).unwrap();
        fs::write(&bad, b"not an entry").unwrap();
        let how = tracing::subscriber::with_default(sub, || c.get("cd34", "ptx").1);
        assert_eq!(how, Lookup::Corrupt);
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("WARN") && log.contains("corrupt cache entry deleted"),
            "{log}"
        );
        let _ = fs::remove_dir_all(c.dir());
    }
}
