//! Compiled task modules: in memory (ready to instantiate) and on disk (serialized code).
//!
//! The disk cache is keyed by the module's sha256 and the engine's compatibility hash, so a
//! host upgrade or a different CPU never loads incompatible code. Files are written by this
//! module only, into a directory created with mode 700, through a temporary file of a unique
//! name (workers that share the directory all run as PID 1 in their containers), made
//! durable, then renamed into place; bytes that came from outside (R2, a user's file) are
//! never deserialized: they are always compiled.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::TaskPre;
use super::host::HostState;
use crate::ids::ModuleHash;

/// A module compiled, linked against the host and ready to instantiate.
pub type Prepared = Arc<TaskPre<HostState>>;

/// Most compiled modules kept in memory: a worker that runs jobs of thousands of modules
/// keeps the recently used ones (a job holds its own reference to the module it runs, so
/// evicting one never stops a job; the next job of it loads it from the disk cache).
pub const MAX_MODULES_IN_MEMORY: usize = 32;

pub(super) struct ModuleCache {
    engine: Engine,
    dir: Option<PathBuf>,
    mem: Mutex<Lru<Prepared>>,
}

/// At most `cap` values by module, the least recently used evicted first.
struct Lru<V> {
    cap: usize,
    map: HashMap<ModuleHash, (V, u64)>,
    tick: u64,
}

impl<V: Clone> Lru<V> {
    fn new(cap: usize) -> Self {
        Lru {
            cap: cap.max(1),
            map: HashMap::new(),
            tick: 0,
        }
    }

    fn get(&mut self, hash: &ModuleHash) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(hash).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    /// The value kept for `hash`: `v`, or the one another caller inserted first.
    fn insert(&mut self, hash: ModuleHash, v: V) -> V {
        if let Some(kept) = self.get(&hash) {
            return kept;
        }
        if self.map.len() >= self.cap
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| *h)
        {
            self.map.remove(&oldest);
        }
        self.map.insert(hash, (v.clone(), self.tick));
        v
    }
}

impl ModuleCache {
    pub(super) fn new(engine: &Engine, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match dir {
            None => None,
            Some(base) => {
                let mut h = DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut h);
                let dir = base.join(format!("compiled-{:016x}", h.finish()));
                create_private_dir(&dir)?;
                Some(dir)
            }
        };
        Ok(ModuleCache {
            engine: engine.clone(),
            dir,
            mem: Mutex::new(Lru::new(MAX_MODULES_IN_MEMORY)),
        })
    }

    pub(super) fn memory(&self, hash: &ModuleHash) -> Option<Prepared> {
        self.mem.lock().unwrap().get(hash)
    }

    pub(super) fn insert(&self, hash: ModuleHash, p: Prepared) -> Prepared {
        self.mem.lock().unwrap().insert(hash, p)
    }

    fn path(&self, hash: &ModuleHash) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}.cwasm", hash.hex())))
    }

    // Deserializing compiled code is unsafe in wasmtime: see the SAFETY comment below.
    #[allow(unsafe_code)]
    pub(super) fn disk(&self, hash: &ModuleHash) -> Option<Component> {
        let path = self.path(hash)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: `path` lies in our private cache directory (mode 700) and is only ever
        // written by `store_disk` below, from `Component::serialize` of a component this
        // engine compiled from bytes whose sha256 is the file name; it is written to a
        // temporary file and renamed into place, so it is never partial. wasmtime checks
        // the engine compatibility header again on load.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled module");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Best effort: a failure only costs a recompile later.
    pub(super) fn store_disk(&self, hash: &ModuleHash, component: &Component) {
        let Some(path) = self.path(hash) else { return };
        let written = match component.serialize() {
            Ok(bytes) => write_file(&path, &bytes),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the compiled-module cache");
        }
    }
}

/// Writes `bytes` to a new temporary file beside `path` (a name no other writer, process or
/// thread can have; mode 600), makes it durable, then renames it over `path`: a reader (or
/// a crash) sees the old file or the whole new one, never part of one. A temporary file of a
/// failed write is removed.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .expect("a cache file is in the cache directory");
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the module cache {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cache_keeps_the_recently_used_modules() {
        let h = |n: u8| ModuleHash::of(&[n]);
        let mut lru = Lru::new(2);
        assert_eq!(lru.insert(h(1), 1), 1);
        assert_eq!(lru.insert(h(2), 2), 2);
        assert_eq!(lru.insert(h(2), 20), 2, "the first one inserted is kept");
        assert_eq!(lru.get(&h(1)), Some(1));
        lru.insert(h(3), 3);
        assert_eq!(lru.get(&h(2)), None, "the least recently used went");
        assert_eq!((lru.get(&h(1)), lru.get(&h(3))), (Some(1), Some(3)));
        for n in 0..100 {
            lru.insert(h(n), n);
        }
        assert_eq!(lru.map.len(), 2);
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
                        write_file(path, b)
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
