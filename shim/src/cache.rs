//! The node's compile cache for Wasm read from a container's rootfs (plain
//! images: a `FROM scratch` image with one `.wasm`). Wasm-layer images have
//! containerd's content store for that (`compiler.rs`); a plain image would
//! otherwise be compiled again at every start and every scale-out.
//!
//! The folder (`/var/lib/wasmtime-custom/cache`, or
//! `WASMTIME_CUSTOM_CACHE_DIR` in the shim's own environment, which is
//! containerd's) is created root-only and opened by `main` before anything
//! else runs: the container's process is a clone of the shim that has
//! entered the container's mount namespace, where the node's paths are
//! gone, so it reaches the folder through that inherited descriptor
//! (`/proc/self/fd/N`), and closes it once its Wasm is loaded, before any
//! guest code runs.
//!
//! An entry is `<wasm sha256>-<engine>.<artifact sha256>.cwasm`:
//! - the Wasm's content hash and the engine's compatibility (shim version,
//!   wasmtime's own precompile hash: same wasmtime, same settings, same CPU
//!   features) make the key;
//! - the artifact's own checksum in the name finds a truncated or corrupt
//!   entry before it is loaded; wasmtime checks its header and engine
//!   again when loading, so a foreign entry is refused too. Either way the
//!   entry is removed and the Wasm compiled again;
//! - it is written to a temporary file and renamed: readers see whole
//!   entries or none;
//! - a `<key>.lock` file (`flock`) makes the containers that start the same
//!   new Wasm at once wait for the first one's compile instead of each
//!   compiling;
//! - the folder is bounded (`WASMTIME_CUSTOM_CACHE_MAX_MB`, 1024): after a
//!   store, the least recently used entries go (a hit renews an entry's
//!   modification time);
//! - entries are loaded with `deserialize_file`: the compiled code is
//!   mapped from the file, so containers of one image share its pages.
//!
//! The cache never fails a start: when it cannot be used (not root, no
//! `/proc` in the container, a full disk) the Wasm is compiled as before and
//! the reason is said once in the container's log.

use std::fs::{self, File, TryLockError};
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::Engine;

use crate::engine::{self, Workload};
use crate::output;

/// The shim process's variable naming the cache folder.
pub const DIR_ENV: &str = "WASMTIME_CUSTOM_CACHE_DIR";
/// The shim process's variable bounding the cache, in MiB.
pub const MAX_MB_ENV: &str = "WASMTIME_CUSTOM_CACHE_MAX_MB";
/// Where the cache lives on a node unless [`DIR_ENV`] says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmtime-custom/cache";
const DEFAULT_MAX_MB: u64 = 1024;
const ENTRY_SUFFIX: &str = ".cwasm";
const LOCK_SUFFIX: &str = ".lock";
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file this old was left by a process that died mid-write.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// How long a start waits for another container's compile of the same
/// Wasm before compiling it itself (a frozen or throttled container).
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The folder as `main` opened it, before the process could be cloned into
/// a container: `Err` holds why there is no cache. A container's process
/// takes it out ([`inherited`]) and closes it once its Wasm is loaded.
static OPENED: Mutex<Option<Result<(OwnedFd, u64), String>>> = Mutex::new(None);

/// Opens (creating it root-only if needed) the cache folder named by the
/// environment. Called first thing in `main`; a failure only disables the
/// cache, and is reported by the container that would have used it.
pub fn open_at_start() {
    let opened = (|| {
        let dir = std::env::var_os(DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
        let max_bytes = match std::env::var(MAX_MB_ENV) {
            Ok(value) => {
                value.trim().parse::<u64>().ok().and_then(|mb| mb.checked_mul(1 << 20)).ok_or_else(|| {
                    format!("{MAX_MB_ENV}={value:?} in containerd's environment is not a number of MiB")
                })?
            }
            Err(_) => DEFAULT_MAX_MB << 20,
        };
        let folder = open_dir(&dir).map_err(|e| format!("{e:#}"))?;
        Ok((folder, max_bytes))
    })();
    *OPENED.lock().unwrap_or_else(PoisonError::into_inner) = Some(opened);
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create the compile cache folder {}", dir.display()))?;
    let folder = File::open(dir).with_context(|| format!("could not open {}", dir.display()))?;
    // Entries are mapped as code: from a noexec mount that fails at every
    // start, so the cache is off there, with the reason.
    // SAFETY: fstatvfs fills the struct it is given for an open descriptor.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(folder.as_raw_fd(), &mut stats) } == 0 && stats.f_flag & libc::ST_NOEXEC != 0 {
        bail!(
            "{} is on a filesystem mounted noexec, where compiled code cannot be mapped; set {DIR_ENV} in \
             containerd's environment to a folder of an exec mount",
            dir.display()
        );
    }
    Ok(folder.into())
}

/// The cache this process inherited from `main`, or why there is none. It
/// is taken out: dropping the cache closes the folder's descriptor, so the
/// container's process holds no handle on the node's filesystem once its
/// Wasm is loaded.
pub fn inherited() -> Result<CompileCache, String> {
    let taken = OPENED.lock().unwrap_or_else(PoisonError::into_inner).take();
    let (folder, max_bytes) = match taken {
        Some(Ok(opened)) => opened,
        Some(Err(reason)) => return Err(reason),
        None => return Err("the cache folder was not opened at start (or is already used)".into()),
    };
    let dir = PathBuf::from(format!("/proc/self/fd/{}", folder.as_raw_fd()));
    if !dir.is_dir() {
        return Err("the container has no /proc to reach the cache folder through".into());
    }
    Ok(CompileCache { dir, max_bytes, _folder: Some(folder) })
}

/// A compile cache in one folder.
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
    /// The inherited descriptor `dir` goes through, closed with the cache.
    _folder: Option<OwnedFd>,
}

/// How a [`CompileCache::load`] went, for the container's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The compiled code came from the cache.
    Hit,
    /// Compiled here and stored for the next containers.
    Stored,
    /// Compiled here; storing it failed (the reason).
    NotStored(String),
}

impl CompileCache {
    /// A cache in `dir` (the tests'; containers use [`inherited`]).
    #[cfg(test)]
    fn new(dir: PathBuf, max_bytes: u64) -> CompileCache {
        CompileCache { dir, max_bytes, _folder: None }
    }

    /// The workload of `wasm` for `engine`: from the cache, or compiled,
    /// stored and then loaded from the cache. Errors are the Wasm's own
    /// (not Wasm, does not compile, no known export), never the cache's.
    pub fn load(&self, engine: &Engine, wasm: &[u8], origin: &str) -> Result<(Workload, Outcome)> {
        let key = key(engine, wasm);
        if let Some(workload) = self.lookup(engine, &key, origin)? {
            return Ok((workload, Outcome::Hit));
        }
        let lock = match self.lock(&key, LOCK_WAIT) {
            Ok(lock) => lock,
            Err(e) => return self.compile_uncached(engine, wasm, origin, e),
        };
        // Another container may have compiled it while this one waited.
        if let Some(workload) = self.lookup(engine, &key, origin)? {
            return Ok((workload, Outcome::Hit));
        }
        let artifact = engine::precompile(engine, wasm, origin)?;
        let stored = match self.store(&key, &artifact) {
            Ok(path) => path,
            Err(e) => {
                let workload = engine::workload(engine, engine::load_artifact(engine, &artifact)?, origin)?;
                return Ok((workload, Outcome::NotStored(format!("{e:#}"))));
            }
        };
        drop(lock);
        // Mapped from the entry (shared with the next containers) unless it
        // went in between (another container's eviction, an uninstall):
        // then from the copy still in memory.
        let (compiled, outcome) = match engine::load_file(engine, &stored) {
            Ok(compiled) => (compiled, Outcome::Stored),
            Err(e) => (engine::load_artifact(engine, &artifact)?, Outcome::NotStored(format!("{e:#}"))),
        };
        let workload = engine::workload(engine, compiled, origin)?;
        if let Err(e) = self.evict(&stored) {
            log::warn!("compile cache: eviction failed: {e:#}");
        }
        Ok((workload, outcome))
    }

    fn compile_uncached(
        &self,
        engine: &Engine,
        wasm: &[u8],
        origin: &str,
        why: anyhow::Error,
    ) -> Result<(Workload, Outcome)> {
        Ok((engine::load(engine, wasm, false, origin)?, Outcome::NotStored(format!("{why:#}"))))
    }

    /// The loaded entry of `key`, if a sound one exists; unsound ones are
    /// removed on the way.
    fn lookup(&self, engine: &Engine, key: &str, origin: &str) -> Result<Option<Workload>> {
        for (name, path) in self.entries_of(key) {
            let Some(expected) = name.strip_prefix(key).and_then(|rest| rest.strip_prefix('.')) else {
                continue;
            };
            let expected = expected.trim_end_matches(ENTRY_SUFFIX);
            // Opened once: the file checked is the file mapped, whatever
            // happens to the name meanwhile.
            let file = match File::open(&path) {
                Ok(file) => file,
                // Evicted since the folder was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    self.discard(&path, &format!("it cannot be opened ({e})"));
                    continue;
                }
            };
            match checksum(&file) {
                Ok(actual) if actual == expected => {}
                Ok(_) => {
                    self.discard(&path, "its content does not match its checksum (truncated or corrupt)");
                    continue;
                }
                Err(e) => {
                    self.discard(&path, &format!("it cannot be read ({e:#})"));
                    continue;
                }
            }
            let opened = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            match engine::load_file(engine, &opened) {
                Ok(compiled) => {
                    // Renews the entry for the least-recently-used eviction;
                    // failing that only makes it an earlier candidate.
                    let _ = file.set_modified(SystemTime::now());
                    // The Wasm's own faults (no known export) would be the
                    // same after a fresh compile: they are reported as such.
                    return engine::workload(engine, compiled, origin).map(Some);
                }
                Err(e) => self.discard(&path, &format!("wasmtime refused it ({e:#})")),
            }
        }
        Ok(None)
    }

    fn discard(&self, path: &Path, why: &str) {
        // The folder's path in this process (`/proc/self/fd/N`) means
        // nothing to the reader: the entry's name does.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        output::message(
            log::Level::Warn,
            format!("wasmtime-custom: compile cache entry {name} discarded: {why}; compiling again"),
        );
        if let Err(e) = fs::remove_file(path) {
            log::warn!("compile cache: could not remove {}: {e}", path.display());
        }
    }

    /// Entries whose name starts with `key` (normally one).
    fn entries_of(&self, key: &str) -> Vec<(String, PathBuf)> {
        self.names().filter(|(name, _)| name.starts_with(key) && name.ends_with(ENTRY_SUFFIX)).collect()
    }

    fn names(&self) -> impl Iterator<Item = (String, PathBuf)> {
        fs::read_dir(&self.dir).into_iter().flatten().filter_map(|entry| {
            let entry = entry.ok()?;
            Some((entry.file_name().into_string().ok()?, entry.path()))
        })
    }

    /// Waits up to `wait` for the exclusive lock of `key` (another
    /// container compiling the same Wasm); released when dropped.
    fn lock(&self, key: &str, wait: Duration) -> Result<File> {
        let path = self.dir.join(format!("{key}{LOCK_SUFFIX}"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("could not open the lock {}", path.display()))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    bail!("another container has been compiling this Wasm for over {} s", wait.as_secs())
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("could not lock {}", path.display()));
                }
            }
        }
    }

    /// Writes `artifact` as `key`'s entry (temporary file, then rename).
    fn store(&self, key: &str, artifact: &[u8]) -> Result<PathBuf> {
        let name = format!("{key}.{}{ENTRY_SUFFIX}", hex(&Sha256::digest(artifact)));
        // The process id is 1 in every container's PID namespace: the name
        // is unique because only the holder of the key's lock writes it.
        let temp = self.dir.join(format!("{TEMP_PREFIX}{key}-{}", std::process::id()));
        let path = self.dir.join(name);
        // No fsync: an entry that a crash left short or empty fails its
        // checksum and is compiled again, and a large component's first
        // start would otherwise wait for the disk.
        let write = || -> std::io::Result<()> {
            let mut file =
                fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temp)?;
            file.write_all(artifact)?;
            fs::rename(&temp, &path)
        };
        write()
            .inspect_err(|_| {
                let _ = fs::remove_file(&temp);
            })
            .with_context(|| format!("could not write {}", path.display()))?;
        Ok(path)
    }

    /// Removes the least recently used entries (never `keep`) until the
    /// folder is within its bound, and temporary files of dead writers.
    fn evict(&self, keep: &Path) -> Result<()> {
        let mut entries = Vec::new();
        let now = SystemTime::now();
        for (name, path) in self.names() {
            let Ok(meta) = fs::metadata(&path) else { continue };
            let modified = meta.modified().unwrap_or(now);
            if name.starts_with(TEMP_PREFIX) {
                if now.duration_since(modified).is_ok_and(|age| age > STALE_TEMP) {
                    let _ = fs::remove_file(&path);
                }
            } else if name.ends_with(ENTRY_SUFFIX) {
                entries.push((modified, meta.len(), path));
            }
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            // A container that mapped the entry keeps its pages; the next
            // start of that Wasm compiles it again.
            match fs::remove_file(&path) {
                Ok(()) => log::info!("compile cache: evicted {} ({len} bytes)", path.display()),
                // Another container evicted it first.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("could not remove {}", path.display())),
            }
            total -= len;
        }
        Ok(())
    }
}

/// `<wasm sha256>-<engine>`: the Wasm's content and what makes compiled
/// code loadable by `engine` (this shim's version and wasmtime's hash of
/// its settings and the CPU's features).
fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    (env!("CARGO_PKG_VERSION"), engine.precompile_compatibility_hash()).hash(&mut hasher);
    let engine_hash = hex(&hasher.0.finalize());
    format!("{}-{}", hex(&Sha256::digest(wasm)), &engine_hash[..16])
}

/// Feeds `Hash` values into SHA-256 (std's hashers are not stable across
/// Rust versions; this one's output only depends on the bytes).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }
}

fn checksum(mut file: &File) -> Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).context("read the entry")?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the container's Wasm through the node's cache when there is one,
/// telling the container's log what happened.
pub fn load_with_cache(
    cache: Result<CompileCache, String>,
    engine: &Engine,
    wasm: &[u8],
    origin: &str,
) -> Result<Workload> {
    let started = Instant::now();
    let cache = match cache {
        Ok(cache) => cache,
        Err(reason) => {
            output::message(
                log::Level::Warn,
                format!(
                    "wasmtime-custom: compile cache unavailable ({reason}); compiling {origin} at every start"
                ),
            );
            return engine::load(engine, wasm, false, origin);
        }
    };
    let (workload, outcome) = cache.load(engine, wasm, origin)?;
    let took = started.elapsed().as_secs_f64();
    let line = match outcome {
        Outcome::Hit => {
            format!("wasmtime-custom: {origin} loaded from the node's compile cache in {took:.3} s")
        }
        Outcome::Stored => format!(
            "wasmtime-custom: {origin} compiled in {took:.3} s and kept in the node's compile cache for the \
             next containers"
        ),
        Outcome::NotStored(why) => {
            format!("wasmtime-custom: {origin} compiled in {took:.3} s; not kept in the compile cache: {why}")
        }
    };
    output::message(log::Level::Info, line);
    Ok(workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "_start")) (memory 1))"#;

    fn engine() -> Engine {
        engine::new(16 << 20).unwrap()
    }

    fn wasm(n: u32) -> Vec<u8> {
        wat::parse_str(format!("(module (func (export \"_start\")) (global i32 (i32.const {n})))")).unwrap()
    }

    fn cache(dir: &tempfile::TempDir) -> CompileCache {
        CompileCache::new(dir.path().to_path_buf(), 1 << 30)
    }

    fn outcome(cache: &CompileCache, engine: &Engine, wasm: &[u8]) -> Outcome {
        let (workload, outcome) = cache.load(engine, wasm, "/app.wasm").unwrap();
        assert!(matches!(workload, Workload::Module(_)));
        outcome
    }

    fn entries(dir: &tempfile::TempDir) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(ENTRY_SUFFIX))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn the_second_load_of_a_wasm_comes_from_the_cache() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let wasm = wat::parse_str(WAT).unwrap();
        assert_eq!(outcome(&cache(&dir), &engine, &wasm), Outcome::Stored);
        assert_eq!(outcome(&cache(&dir), &engine, &wasm), Outcome::Hit);
        let entry = &entries(&dir)[0];
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&key(&engine, &wasm)), "{name}");
        assert_eq!(
            name,
            format!(
                "{}.{}{ENTRY_SUFFIX}",
                key(&engine, &wasm),
                checksum(&File::open(entry).unwrap()).unwrap()
            )
        );
    }

    #[test]
    fn truncated_and_corrupt_entries_are_discarded_and_compiled_again() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let wasm = wat::parse_str(WAT).unwrap();
        let cache = cache(&dir);
        assert_eq!(outcome(&cache, &engine, &wasm), Outcome::Stored);
        let entry = entries(&dir)[0].clone();
        let artifact = fs::read(&entry).unwrap();

        fs::write(&entry, &artifact[..artifact.len() / 2]).unwrap();
        assert_eq!(outcome(&cache, &engine, &wasm), Outcome::Stored);
        assert_eq!(fs::read(&entry).unwrap(), artifact, "the entry is whole again");

        let mut corrupt = artifact.clone();
        corrupt[artifact.len() / 3] ^= 0xff;
        fs::write(&entry, &corrupt).unwrap();
        assert_eq!(outcome(&cache, &engine, &wasm), Outcome::Stored);
        assert_eq!(fs::read(&entry).unwrap(), artifact);
        assert_eq!(outcome(&cache, &engine, &wasm), Outcome::Hit);
    }

    #[test]
    fn an_entry_of_another_engine_is_refused_even_with_a_matching_checksum() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let wasm = wat::parse_str(WAT).unwrap();
        // An engine configured otherwise (no epoch checks, no pool): its
        // code must never run under ours.
        let foreign = Engine::new(&wasmtime::Config::new()).unwrap().precompile_module(&wasm).unwrap();
        let planted = dir.path().join(format!(
            "{}.{}{ENTRY_SUFFIX}",
            key(&engine, &wasm),
            hex(&Sha256::digest(&foreign))
        ));
        fs::write(&planted, &foreign).unwrap();
        assert_eq!(outcome(&cache(&dir), &engine, &wasm), Outcome::Stored);
        assert!(!planted.exists(), "the foreign entry is removed");
        assert_eq!(entries(&dir).len(), 1);
    }

    #[test]
    fn what_is_not_wasm_fails_as_before_and_leaves_no_entry() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let err = cache(&dir).load(&engine, b"#!/bin/sh\n", "/app.wasm").err().unwrap();
        assert!(format!("{err:#}").contains("/app.wasm is not WebAssembly: it is a script"), "{err:#}");
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn containers_starting_one_new_wasm_at_once_compile_it_once() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let wasm = wat::parse_str(WAT).unwrap();
        let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
            let starts: Vec<_> =
                (0..8).map(|_| scope.spawn(|| outcome(&cache(&dir), &engine, &wasm))).collect();
            starts.into_iter().map(|start| start.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Stored).count(), 1, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Hit).count(), 7, "{outcomes:?}");
        assert_eq!(entries(&dir).len(), 1);
    }

    #[test]
    fn the_least_recently_used_entries_go_when_the_bound_is_passed() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), engine());
        let probe = tempfile::tempdir().unwrap();
        outcome(&cache(&probe), &engine, &wasm(0));
        let entry_len = fs::metadata(&entries(&probe)[0]).unwrap().len();
        // Room for two entries, not three.
        let cache = CompileCache::new(dir.path().to_path_buf(), entry_len * 2 + entry_len / 2);
        let age = |wasm: &[u8], seconds_ago: u64| {
            let path = cache.entries_of(&key(&engine, wasm)).pop().unwrap().1;
            let when = SystemTime::now() - Duration::from_secs(seconds_ago);
            File::open(path).unwrap().set_modified(when).unwrap();
        };
        let (a, b, c) = (wasm(1), wasm(2), wasm(3));
        outcome(&cache, &engine, &a);
        age(&a, 30);
        outcome(&cache, &engine, &b);
        age(&b, 20);
        // A hit renews `a`: `b` is now the least recently used.
        assert_eq!(outcome(&cache, &engine, &a), Outcome::Hit);
        outcome(&cache, &engine, &c);
        assert_eq!(entries(&dir).len(), 2);
        assert_eq!(outcome(&cache, &engine, &a), Outcome::Hit);
        assert_eq!(outcome(&cache, &engine, &c), Outcome::Hit);
        assert!(cache.entries_of(&key(&engine, &b)).is_empty(), "b was evicted");
    }

    #[test]
    fn a_start_stops_waiting_for_another_containers_compile_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir);
        let _compiling = cache.lock("k", Duration::ZERO).unwrap();
        let err = cache.lock("k", Duration::from_millis(50)).err().unwrap();
        assert!(format!("{err:#}").contains("another container has been compiling this Wasm"), "{err:#}");
    }

    #[test]
    fn a_folder_that_cannot_be_written_still_gives_a_workload() {
        let engine = engine();
        let cache = CompileCache::new(PathBuf::from("/proc/self/no-such-folder"), 1 << 30);
        let (workload, outcome) = cache.load(&engine, &wat::parse_str(WAT).unwrap(), "/app.wasm").unwrap();
        assert!(matches!(workload, Workload::Module(_)));
        assert!(matches!(outcome, Outcome::NotStored(_)), "{outcome:?}");
    }
}
