//! Compiled task modules: in memory (ready to instantiate) and on disk (serialized code).
//!
//! The disk cache is keyed by the module's sha256 and the engine's compatibility hash, so a
//! host upgrade or a different CPU never loads incompatible code. Files are written by this
//! module only, into a directory created with mode 700, through a temporary file of a unique
//! name (workers that share the directory all run as PID 1 in their containers), made
//! durable, then renamed into place; bytes that came from outside (R2, a user's file) are
//! never deserialized: they are always compiled. Each file carries its code's length and
//! CRC-32, checked before it is loaded (a cut or damaged file is removed and the module
//! recompiled); the file is opened once, checked through that handle and that same file then
//! mapped, not copied (`Component::deserialize_file`: its code pages and memory images come
//! from the page cache). Where mapping fails (a `noexec` mount) files are read into memory,
//! checked there and deserialized from the copy instead.
//!
//! Both caches are bounded: memory by [`MAX_MODULES_IN_MEMORY`] modules and
//! [`MAX_BYTES_IN_MEMORY`] of code, disk by a budget of bytes (`CACHE_MAX_MB`,
//! [`DEFAULT_CACHE_MAX_BYTES`]); each evicts the least recently used first, and the disk
//! cache never a module a running job of this process uses (`disk.rs`).

mod disk;
mod lru;

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::TaskPre;
use super::host::HostState;
use crate::ids::ModuleHash;
use disk::Disk;
use lru::Lru;

/// Whether this process warned that the disk cache's files cannot be mapped.
static MAP_WARNED: AtomicBool = AtomicBool::new(false);

/// A module compiled, linked against the host and ready to instantiate.
pub type Prepared = Arc<TaskPre<HostState>>;

/// Most compiled modules kept in memory: a worker that runs jobs of thousands of modules
/// keeps the recently used ones (a job holds its own reference to the module it runs, so
/// evicting one never stops a job; the next job of it loads it from the disk cache).
pub const MAX_MODULES_IN_MEMORY: usize = 32;
/// Most bytes of compiled code kept in memory (the modules' code images together): 512 MiB.
/// A single module larger than that is still kept, alone.
pub const MAX_BYTES_IN_MEMORY: u64 = 512 << 20;
/// The default disk budget of the compiled-module cache (`CACHE_MAX_MB`): 2048 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2048 << 20;

pub(super) struct ModuleCache {
    engine: Engine,
    disk: Option<Disk>,
    /// Why the directory could not be created at start (`raw OS error`, or kind and text).
    disk_error: Option<(Option<i32>, std::io::ErrorKind, String)>,
    mem: Mutex<Lru<Prepared>>,
    /// Map files of the disk cache (off once a mapping failed where reading worked).
    mapping: AtomicBool,
    /// Every module handed out, to tell one a running job holds.
    handed: Mutex<HashMap<ModuleHash, Weak<TaskPre<HostState>>>>,
}

/// The memory cache as the disk cache's room-maker sees it.
struct MemUsers<'a>(&'a ModuleCache);

impl disk::Users for MemUsers<'_> {
    fn in_use(&self, hash: &ModuleHash) -> bool {
        self.0.in_use(hash)
    }
    fn used_at(&self, hash: &ModuleHash) -> Option<SystemTime> {
        self.0.lock_mem().used_at(hash)
    }
}

impl ModuleCache {
    /// The caches; a directory that cannot be created leaves the disk cache off (logged;
    /// [`ModuleCache::check_dir`] reports why).
    pub(super) fn new(engine: &Engine, dir: Option<PathBuf>, max_bytes: Option<u64>) -> Self {
        // The file format's magic too: a host of another format (during a rollout, on one
        // node) gets a directory of its own rather than removing this one's files as damaged.
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        disk::MAGIC.hash(&mut h);
        let engine_name = format!("{:016x}", h.finish());
        let (disk, disk_error) = match dir
            .as_ref()
            .map(|base| (base, Disk::open(base, &engine_name, max_bytes)))
        {
            None => (None, None),
            Some((_, Ok(d))) => (Some(d), None),
            Some((base, Err(e))) => {
                tracing::warn!(dir = %base.display(), error = %e, "cannot create the module cache directory: compiled modules are kept in memory only");
                (None, Some((e.raw_os_error(), e.kind(), e.to_string())))
            }
        };
        let cache = ModuleCache {
            engine: engine.clone(),
            disk,
            disk_error,
            mem: Mutex::new(Lru::new(MAX_MODULES_IN_MEMORY, MAX_BYTES_IN_MEMORY)),
            mapping: AtomicBool::new(true),
            handed: Mutex::default(),
        };
        if let Some(d) = &cache.disk
            && let Err(e) = d.trim(&MemUsers(&cache))
        {
            tracing::warn!(error = %e, "the module cache is over its budget");
        }
        cache
    }

    fn lock_mem(&self) -> std::sync::MutexGuard<'_, Lru<Prepared>> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_handed(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ModuleHash, Weak<TaskPre<HostState>>>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `p` leaves the cache for a job.
    fn hand(&self, hash: ModuleHash, p: Prepared) -> Prepared {
        let mut handed = self.lock_handed();
        if handed.len() >= 4 * MAX_MODULES_IN_MEMORY {
            handed.retain(|_, w| w.strong_count() > 0);
        }
        handed.insert(hash, Arc::downgrade(&p));
        p
    }

    /// A job of this process holds `hash`'s module (beyond the memory cache's own reference).
    fn in_use(&self, hash: &ModuleHash) -> bool {
        let cached = usize::from(self.lock_mem().contains(hash));
        self.lock_handed()
            .get(hash)
            .is_some_and(|w| w.strong_count() > cached)
    }

    pub(super) fn memory(&self, hash: &ModuleHash) -> Option<Prepared> {
        let p = self.lock_mem().get(hash)?;
        Some(self.hand(*hash, p))
    }

    /// Keeps `p` (compiled from `component`) in memory; returns the one kept.
    pub(super) fn insert(&self, hash: ModuleHash, p: Prepared, component: &Component) -> Prepared {
        let range = component.image_range();
        let bytes = (range.end as usize).saturating_sub(range.start as usize) as u64;
        let (kept, evicted) = self.lock_mem().insert(hash, p, bytes);
        if let Some(d) = &self.disk {
            for (h, used_at) in evicted {
                d.used(&h, used_at);
            }
        }
        self.hand(hash, kept)
    }

    /// `hash`'s module from the disk cache: its file opened once, checked and mapped through
    /// that one handle; where mapping fails (a cache directory on a `noexec` mount: code
    /// pages need `PROT_EXEC`) read into memory, checked and deserialized from there instead,
    /// and every later load of this cache reads too (one warning per process). `None`: no
    /// usable file (a damaged or unusable one removed).
    pub(super) fn disk(&self, hash: &ModuleHash) -> Option<Component> {
        let disk = self.disk.as_ref()?;
        let mut file = disk.open_file(hash)?;
        let mut map_error = None;
        if self.mapping.load(Ordering::Relaxed) {
            if !disk.check(hash, &mut file) {
                return None;
            }
            match self.map(&file) {
                Ok(c) => return Some(c),
                Err(e) => map_error = Some(e),
            }
        }
        let code = disk.read_checked(hash, &mut file)?;
        match self.deserialize(&code) {
            Ok(c) => {
                if let Some(e) = map_error {
                    self.mapping.store(false, Ordering::Relaxed);
                    if !MAP_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot map compiled modules from the cache directory (a noexec mount?): reading them into memory instead");
                    }
                }
                Some(c)
            }
            Err(e) => {
                tracing::warn!(module = %hash, error = %format!("{e:#}"), "ignoring unusable compiled module");
                disk.remove(hash);
                None
            }
        }
    }

    /// Maps `file` (checked by [`Disk::check`] through this very handle).
    // Deserializing compiled code is unsafe in wasmtime: see the SAFETY comment below.
    #[allow(unsafe_code)]
    fn map(&self, file: &File) -> wasmtime::Result<Component> {
        #[cfg(test)]
        if tests::FAIL_MAP.with(|f| f.get()) {
            wasmtime::bail!("mapping failed (forced by a test)");
        }
        // wasmtime 48 takes a path only (`Module`, not `Component`, has
        // `deserialize_open_file`): `/proc/self/fd/<n>` opens the inode `file` is open on,
        // whatever the name now holds.
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // SAFETY: `file` was opened in our private cache directory (mode 700), whose files
        // are only ever written by `store_disk` below, from `Component::serialize` of a
        // component this engine compiled from bytes whose sha256 is the file name, followed
        // by the code's length and CRC-32, which `Disk::check` just matched reading through
        // `file` (a cut or damaged file is removed, never loaded). The path opens that same
        // inode (`file` stays open until this returns), not whatever the name holds now.
        // Files are written to a temporary file and renamed into place, never written in
        // place, so the inode stays unchanged while mapped (a rename over its name or a
        // removal of the name leaves it as it is). wasmtime checks the engine compatibility
        // header again on load.
        unsafe { Component::deserialize_file(&self.engine, path) }
    }

    /// Deserializes `code`, read into memory from a file of the cache and checked by
    /// [`Disk::read_checked`].
    // Deserializing compiled code is unsafe in wasmtime: see the SAFETY comment below.
    #[allow(unsafe_code)]
    fn deserialize(&self, code: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `code` was read from a file of our private cache directory (mode 700),
        // only ever written by `store_disk` below (see `map`), and its length and CRC-32
        // matched on these very bytes; wasmtime copies them and checks the engine
        // compatibility header again.
        unsafe { Component::deserialize(&self.engine, code) }
    }

    /// Best effort: a failure only costs a recompile later.
    pub(super) fn store_disk(&self, hash: &ModuleHash, component: &Component) {
        let Some(disk) = &self.disk else { return };
        let written = match component.serialize() {
            Ok(code) => disk
                .write(hash, &code, &MemUsers(self))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(e) = written {
            tracing::warn!(module = %hash, error = %e, "compiled module not written to the disk cache");
        }
    }

    /// Drops `hash`'s module from memory and disk (its file stays while a job of this
    /// process runs it; a job that holds the module keeps running it).
    pub(super) fn forget(&self, hash: &ModuleHash) {
        let in_use = self.in_use(hash);
        self.lock_mem().remove(hash);
        if let Some(d) = &self.disk
            && !in_use
        {
            d.remove(hash);
        }
    }

    /// The modules kept in memory or on disk.
    pub(super) fn modules(&self) -> Vec<ModuleHash> {
        let mut all = self.lock_mem().keys();
        if let Some(d) = &self.disk {
            all.extend(d.modules());
        }
        all.sort_by_key(|h| h.hex());
        all.dedup();
        all
    }
}

/// The module caches, as the worker and the tests see them.
impl Runtime {
    /// Drops the module `hash` from the caches: memory, and disk unless a running job of
    /// this process uses it (the worker does this for modules the bucket no longer holds).
    pub fn forget(&self, hash: &ModuleHash) {
        self.cache.forget(hash);
    }

    /// The modules this runtime keeps compiled, in memory or on disk.
    pub fn cached_modules(&self) -> Vec<ModuleHash> {
        self.cache.modules()
    }

    /// Bytes of the disk cache (every engine's compiled modules under the cache directory);
    /// 0 without one.
    pub fn disk_cache_bytes(&self) -> u64 {
        self.cache.disk.as_ref().map_or(0, Disk::bytes)
    }

    /// The file that holds `hash`'s compiled code on disk (whether or not it exists now);
    /// `None` without a disk cache.
    pub fn disk_cache_file(&self, hash: &ModuleHash) -> Option<PathBuf> {
        Some(self.cache.disk.as_ref()?.path(hash))
    }

    /// (modules, bytes of code) kept in memory.
    pub fn memory_cache_size(&self) -> (usize, u64) {
        self.cache.lock_mem().size()
    }

    /// The startup check of the cache directory: it exists (created now if need be) and a
    /// file can be written and made durable in it. `Ok` without a cache directory.
    pub fn check_cache_dir(&self) -> std::io::Result<()> {
        if let Some(d) = &self.cache.disk {
            return d.probe();
        }
        match &self.cache.disk_error {
            None => Ok(()),
            Some((Some(code), _, _)) => Err(std::io::Error::from_raw_os_error(*code)),
            Some((None, kind, text)) => Err(std::io::Error::new(*kind, text.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes [`ModuleCache::map`] fail on this thread, as on a `noexec` mount.
        pub(super) static FAIL_MAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A component with some code, and a cache in a fresh directory holding it on disk.
    fn cached_component() -> (tempfile::TempDir, ModuleCache, ModuleHash) {
        let engine = Engine::default();
        let wat = r#"(component (core module (func (export "f") (result i32) i32.const 42)))"#;
        let component = Component::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cache = ModuleCache::new(&engine, Some(tmp.path().to_owned()), None);
        let hash = ModuleHash::of(wat.as_bytes());
        cache.store_disk(&hash, &component);
        (tmp, cache, hash)
    }

    /// Where mapping a file fails (a `noexec` mount), the module is read into memory and
    /// loaded from there: the file is kept, later loads read at once, and a damaged file is
    /// still never loaded.
    #[test]
    fn a_file_that_cannot_be_mapped_is_read() {
        let (_tmp, cache, hash) = cached_component();
        let file = cache.disk.as_ref().unwrap().path(&hash);
        assert!(cache.disk(&hash).is_some(), "mapped");
        assert!(cache.mapping.load(Ordering::Relaxed));

        FAIL_MAP.with(|f| f.set(true));
        assert!(cache.disk(&hash).is_some(), "read after the mapping failed");
        assert!(file.exists(), "the file is kept");
        assert!(!cache.mapping.load(Ordering::Relaxed), "later loads read");
        FAIL_MAP.with(|f| f.set(false));
        assert!(cache.disk(&hash).is_some(), "read");

        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        assert!(cache.disk(&hash).is_none(), "a damaged file was read");
        assert!(!file.exists(), "the damaged file is removed");
    }

    /// What is checked is what is loaded: a file renamed over the name after it was opened
    /// is not the one loaded, nor removed for the opened one's damage.
    #[test]
    fn the_file_checked_is_the_file_loaded() {
        let (_tmp, cache, hash) = cached_component();
        let disk = cache.disk.as_ref().unwrap();
        let path = disk.path(&hash);
        let good = std::fs::read(&path).unwrap();
        let mut opened = disk.open_file(&hash).unwrap();
        // Another writer replaces the file with a damaged one after it was opened.
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x40;
        disk::write_file(&path, &bad).unwrap();
        assert!(disk.check(&hash, &mut opened), "the opened file is intact");
        assert!(cache.map(&opened).is_ok(), "and it is the one mapped");
        assert_eq!(
            disk.read_checked(&hash, &mut opened).as_deref(),
            Some(&good[..good.len() - 16])
        );
        // The other way round: the opened file is damaged, a good one is renamed in.
        let mut damaged = disk.open_file(&hash).unwrap();
        disk::write_file(&path, &good).unwrap();
        assert!(!disk.check(&hash, &mut damaged));
        assert!(path.exists(), "the good file renamed in since is kept");
        assert!(cache.disk(&hash).is_some());
    }

    /// The engine directory's name covers the file format: a host of another format never
    /// shares it.
    #[test]
    fn the_engine_directory_is_the_formats_own() {
        let (tmp, cache, hash) = cached_component();
        let dir = cache.disk.as_ref().unwrap().path(&hash);
        let name = dir
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let mut h = DefaultHasher::new();
        cache.engine.precompile_compatibility_hash().hash(&mut h);
        let without_format = format!("compiled-{:016x}", h.finish());
        assert!(name.starts_with("compiled-"));
        assert_ne!(
            name, without_format,
            "the format's magic is not in the name"
        );
        assert!(!tmp.path().join(without_format).exists());
    }

    /// Writers sharing the cache directory (threads here; processes that are all PID 1 in
    /// their containers in production) never share a temporary file: every write succeeds,
    /// the file is whole, and no temporary file is left.
    #[test]
    fn concurrent_writers_never_share_a_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("module.cwasm");
        let bytes: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 4 << 20]).collect();
        let start = std::sync::Barrier::new(bytes.len());
        std::thread::scope(|s| {
            let writers: Vec<_> = bytes
                .iter()
                .map(|b| {
                    let (path, start) = (&path, &start);
                    s.spawn(move || {
                        start.wait();
                        disk::write_file(path, b)
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap().unwrap();
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(bytes.contains(&got), "a mix of writes");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["module.cwasm"]);
    }
}
