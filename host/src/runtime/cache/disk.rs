//! The disk cache: `<cache dir>/compiled-<engine>/<sha256 hex>.cwasm`, each file the
//! serialized code followed by a trailer of 16 bytes: the code's length (u64, little-endian),
//! its CRC-32 (u32, little-endian) and the magic `thc1`, so a cut, damaged or foreign file
//! (an older host's format included) is found and recompiled, never loaded. The check sits in
//! the same private file as the code, so it guards against accidental damage only (as the
//! sha256 it replaced did: a writer could rewrite either); it reads the file in small chunks
//! (no copy of it kept) and costs about 10 µs for 500 KiB, where the sha256 cost 280 µs.
//! The files of every `compiled-*` directory (older hosts' engines
//! too) together stay within a budget of bytes: to make room for a new file the least
//! recently used go first (a file's modification time is its last use: a load touches it,
//! and a module leaving the memory cache sets it to its last use there), never the file of
//! a module a running job of this process uses. A file that cannot fit is not written (the
//! module then lives in memory only). A removed file that a process still has mapped keeps
//! its space until that process drops the module (docs/design.md section 4 bounds it).
//!
//! Writers that share the directory (workers on one node, a `taskhost module push`) make
//! room and write under one `flock` (`compiled.lock`), so the budget holds across processes.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::ids::ModuleHash;

/// A temporary file older than this is a dead writer's leftover, removed when room is made.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// The trailer after the code: its length, its CRC-32 and [`MAGIC`].
const TRAILER_LEN: usize = 16;
/// Part of the engine directory's name too (`ModuleCache::new`): a host of another format
/// never shares a directory with this one.
pub(super) const MAGIC: &[u8; 4] = b"thc1";
/// The chunk the check reads the file in.
const CHECK_CHUNK: usize = 64 << 10;

/// One file of the cache, as room-making sees it.
#[derive(Debug)]
struct Entry {
    path: PathBuf,
    /// The module, for a file of this engine's directory (`None`: another engine's, never
    /// loaded by this process).
    hash: Option<ModuleHash>,
    bytes: u64,
    used: SystemTime,
}

/// What the room-maker asks of the memory cache.
pub(super) trait Users {
    /// A running job of this process uses `hash`'s module.
    fn in_use(&self, hash: &ModuleHash) -> bool;
    /// When this process last used `hash`'s module, if it still holds it.
    fn used_at(&self, hash: &ModuleHash) -> Option<SystemTime>;
}

/// Why a module was not written.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The budget cannot make room: the modules in use fill it, or the file alone is larger.
    OverBudget {
        need: u64,
        budget: u64,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::OverBudget { need, budget } => write!(
                f,
                "{need} bytes do not fit the disk budget of {budget} bytes (CACHE_MAX_MB) beside the modules in use"
            ),
            WriteError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

pub(super) struct Disk {
    /// The cache directory (`--cache-dir`): every engine's directory is in it.
    base: PathBuf,
    /// This engine's directory.
    dir: PathBuf,
    /// The budget in bytes; `None`: unbounded.
    max_bytes: Option<u64>,
    /// Room-making and writing of this process, one at a time (the flock is per file
    /// description, so threads need their own exclusion).
    turn: Mutex<()>,
}

impl Disk {
    /// This engine's directory (`engine`: its name) under `base`, created private (mode 700).
    pub(super) fn open(base: &Path, engine: &str, max_bytes: Option<u64>) -> std::io::Result<Disk> {
        let dir = base.join(format!("compiled-{engine}"));
        create_private_dir(&dir)?;
        Ok(Disk {
            base: base.to_owned(),
            dir,
            max_bytes,
            turn: Mutex::new(()),
        })
    }

    pub(super) fn path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hash.hex()))
    }

    /// `hash`'s file, opened for reading; `None`: there is none (or it cannot be opened:
    /// logged). Everything after this reads and maps this handle's file, never the path
    /// again, so what is loaded is what was checked even if another writer renames a new
    /// file over the name meanwhile.
    pub(super) fn open_file(&self, hash: &ModuleHash) -> Option<File> {
        let path = self.path(hash);
        match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the compiled module; recompiling");
                None
            }
        }
    }

    /// Whether `file` (`hash`'s, from [`Disk::open_file`]) is its code followed by the code's
    /// trailer (length and CRC-32), read in small chunks, no copy kept; a cut or damaged file
    /// is removed. The file holds the code followed by the trailer: wasmtime maps the whole
    /// file and reads the code's own ELF structure, which the trailer does not touch. A load
    /// counts as a use.
    pub(super) fn check(&self, hash: &ModuleHash, file: &mut File) -> bool {
        let checked = check_file(file);
        self.verdict(hash, file, checked.map(|ok| ok.then_some(())))
            .is_some()
    }

    /// `hash`'s code read whole from `file` (from [`Disk::open_file`]) and checked against its
    /// trailer in memory: the bytes returned are the bytes checked. `None`: cut or damaged
    /// (removed), or unreadable. A load counts as a use.
    pub(super) fn read_checked(&self, hash: &ModuleHash, file: &mut File) -> Option<Vec<u8>> {
        let read = read_code(file);
        self.verdict(hash, file, read)
    }

    /// Acts on a check of `file`, `hash`'s: `Ok(Some)` passed (the file's last use set to
    /// now), `Ok(None)` found it cut or damaged (removed, unless another file was renamed
    /// over its name since), `Err` could not read it (left as it is).
    fn verdict<T>(
        &self,
        hash: &ModuleHash,
        file: &File,
        checked: std::io::Result<Option<T>>,
    ) -> Option<T> {
        let path = self.path(hash);
        match checked {
            Ok(Some(v)) => {
                let _ = file.set_modified(SystemTime::now());
                Some(v)
            }
            Ok(None) => {
                tracing::warn!(path = %path.display(), "damaged compiled module removed; recompiling");
                if same_file(file, &path) {
                    let _ = std::fs::remove_file(&path);
                }
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the compiled module; recompiling");
                None
            }
        }
    }

    /// Writes `code` (with its digest) for `hash`, after making room for it within the
    /// budget (removing the least recently used files no running job uses).
    pub(super) fn write(
        &self,
        hash: &ModuleHash,
        code: &[u8],
        users: &dyn Users,
    ) -> Result<(), WriteError> {
        let need = (code.len() + TRAILER_LEN) as u64;
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock()?;
        self.make_room(need, Some(hash), users)?;
        let mut file = Vec::with_capacity(code.len() + TRAILER_LEN);
        file.extend_from_slice(code);
        file.extend_from_slice(&trailer(code));
        write_file(&self.path(hash), &file)?;
        Ok(())
    }

    /// Removes files until the cache is within the budget (after the budget was lowered).
    pub(super) fn trim(&self, users: &dyn Users) -> Result<(), WriteError> {
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock()?;
        self.make_room(0, None, users)
    }

    /// Removes `hash`'s file, if any.
    pub(super) fn remove(&self, hash: &ModuleHash) {
        match std::fs::remove_file(self.path(hash)) {
            Ok(()) => tracing::info!(module = %hash, "compiled module removed from the disk cache"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(module = %hash, error = %e, "cannot remove a compiled module"),
        }
    }

    /// Sets `hash`'s file's last use (a module leaving the memory cache).
    pub(super) fn used(&self, hash: &ModuleHash, at: SystemTime) {
        touch(&self.path(hash), at);
    }

    /// The modules this engine's directory holds.
    pub(super) fn modules(&self) -> Vec<ModuleHash> {
        self.scan()
            .into_iter()
            .filter(|e| e.path.parent() == Some(&*self.dir))
            .filter_map(|e| e.hash)
            .collect()
    }

    /// Bytes of every engine's files together.
    pub(super) fn bytes(&self) -> u64 {
        self.scan().iter().map(|e| e.bytes).sum()
    }

    /// Writes, makes durable and removes a small file: the directory can be written.
    pub(super) fn probe(&self) -> std::io::Result<()> {
        let mut f = tempfile::Builder::new()
            .prefix(".probe-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        f.write_all(&[0; 4096])?;
        f.as_file().sync_all()?;
        f.close()
    }

    fn lock(&self) -> std::io::Result<File> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.base.join("compiled.lock"))?;
        f.lock()?;
        Ok(f)
    }

    fn make_room(
        &self,
        need: u64,
        keep: Option<&ModuleHash>,
        users: &dyn Users,
    ) -> Result<(), WriteError> {
        let Some(budget) = self.max_bytes else {
            return Ok(());
        };
        let mut entries = self.scan();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        if keep.is_some() {
            // The file being replaced does not count.
            if let Some(old) = entries
                .iter()
                .find(|e| e.hash.as_ref() == keep && e.path.parent() == Some(&*self.dir))
            {
                total -= old.bytes;
            }
        }
        if total + need <= budget {
            return Ok(());
        }
        for e in &mut entries {
            if let Some(at) = e.hash.as_ref().and_then(|h| users.used_at(h)) {
                e.used = e.used.max(at);
            }
        }
        entries.sort_by_key(|e| e.used);
        let protected = |e: &Entry| {
            e.path.parent() == Some(&*self.dir)
                && e.hash
                    .as_ref()
                    .is_some_and(|h| Some(h) == keep || users.in_use(h))
        };
        // What no eviction can free (the file being replaced aside: it does not count): if the
        // new file does not fit beside it, nothing is evicted for nothing (the node's other
        // modules stay cached).
        let kept: u64 = entries
            .iter()
            .filter(|e| protected(e) && (keep.is_none() || e.hash.as_ref() != keep))
            .map(|e| e.bytes)
            .sum();
        if kept.saturating_add(need) > budget {
            return Err(WriteError::OverBudget { need, budget });
        }
        for e in entries {
            if total + need <= budget {
                break;
            }
            if protected(&e) {
                continue;
            }
            match std::fs::remove_file(&e.path) {
                Ok(()) => {
                    tracing::info!(path = %e.path.display(), bytes = e.bytes, "compiled module evicted (CACHE_MAX_MB)");
                    total -= e.bytes;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => total -= e.bytes,
                Err(err) => {
                    tracing::warn!(path = %e.path.display(), error = %err, "cannot evict a compiled module")
                }
            }
        }
        if total + need <= budget {
            Ok(())
        } else {
            Err(WriteError::OverBudget { need, budget })
        }
    }

    /// Every file of every engine's directory (a dead writer's temporary file removed).
    fn scan(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.base) else {
            return out;
        };
        for d in dirs.flatten() {
            let name = d.file_name();
            let is_engine_dir = name.to_str().is_some_and(|n| n.starts_with("compiled-"))
                && d.file_type().is_ok_and(|t| t.is_dir());
            if !is_engine_dir {
                continue;
            }
            let dir = d.path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for f in files.flatten() {
                let Ok(meta) = f.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".tmp") && used.elapsed().is_ok_and(|age| age > STALE_TEMPORARY) {
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let hash = (dir == self.dir)
                    .then(|| name.strip_suffix(".cwasm"))
                    .flatten()
                    .and_then(|hex| format!("sha256:{hex}").parse().ok());
                out.push(Entry {
                    path: f.path(),
                    hash,
                    bytes: meta.len(),
                    used,
                });
            }
        }
        out
    }
}

/// The trailer of `code`: its length, its CRC-32, [`MAGIC`].
fn trailer(code: &[u8]) -> [u8; TRAILER_LEN] {
    let mut t = [0; TRAILER_LEN];
    t[..8].copy_from_slice(&(code.len() as u64).to_le_bytes());
    t[8..12].copy_from_slice(&crc32fast::hash(code).to_le_bytes());
    t[12..].copy_from_slice(MAGIC);
    t
}

/// The length of the code `t` (a file's last [`TRAILER_LEN`] bytes, the file `len` bytes
/// long) is the trailer of, if it is one: the magic, and the length it states is the rest.
fn code_len(t: &[u8], len: u64) -> Option<u64> {
    let code_len = len.checked_sub(TRAILER_LEN as u64)?;
    (&t[12..] == MAGIC && t[..8] == code_len.to_le_bytes()).then_some(code_len)
}

/// Whether `f` is code followed by its own trailer ([`trailer`]): its length, then its
/// CRC-32, read in chunks of [`CHECK_CHUNK`].
fn check_file(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = f.metadata()?.len();
    if len < TRAILER_LEN as u64 {
        return Ok(false);
    }
    let mut t = [0; TRAILER_LEN];
    f.seek(SeekFrom::Start(len - TRAILER_LEN as u64))?;
    f.read_exact(&mut t)?;
    let Some(code_len) = code_len(&t, len) else {
        return Ok(false);
    };
    f.seek(SeekFrom::Start(0))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0; CHECK_CHUNK];
    let mut left = code_len;
    while left > 0 {
        let n = left.min(CHECK_CHUNK as u64) as usize;
        f.read_exact(&mut buf[..n])?;
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(crc.finalize().to_le_bytes() == t[8..12])
}

/// The code of `f` read whole, if it is followed by its own trailer (checked on the bytes
/// read); `Ok(None)`: cut or damaged.
fn read_code(f: &mut File) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    f.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let Some(code_len) = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .and_then(|at| code_len(&bytes[at..], bytes.len() as u64))
    else {
        return Ok(None);
    };
    let (code, t) = bytes.split_at(code_len as usize);
    if crc32fast::hash(code).to_le_bytes() != t[8..12] {
        return Ok(None);
    }
    bytes.truncate(code_len as usize);
    Ok(Some(bytes))
}

/// Whether `path` names the file `f` is open on (a file renamed over it since is not).
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Sets `path`'s modification time (its last use); best effort.
fn touch(path: &Path, at: SystemTime) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(at);
    }
}

/// Writes `bytes` to a new temporary file beside `path` (a name no other writer, process or
/// thread can have; mode 600), makes it durable, then renames it over `path`: a reader (or
/// a crash) sees the old file or the whole new one, never part of one. A temporary file of a
/// failed write is removed.
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("a cache file is in the cache directory");
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Creates `dir` (and its parents) with mode 700, and sets 700 on it if it existed.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
