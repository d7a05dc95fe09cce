//! The directory backend: each key is a file under a root directory.
//!
//! A write first writes its bytes to a temporary file beside the key and makes it durable;
//! then, holding an exclusive `flock` on the key's directory (`lock.rs`), it compares the
//! current object with its precondition and renames the temporary file into place, so
//! conditional writes are atomic across threads and processes on one machine. Readers never
//! lock: `rename` is atomic, so a reader sees the old or the new bytes, never a mix. The tag
//! is a hash of the bytes, like an S3 ETag (the MD5 of the body): identical bytes give an
//! identical tag. An object's note is an extended attribute of its file, or a hidden file
//! beside it where the filesystem refuses those (`note.rs`).
//!
//! A key component that starts with `.` (a job id may) is stored as `%2E...`: names that
//! start with `.` are this backend's own temporary and note files, and `%` is in no key.
//! Multipart uploads keep their parts under `<root>/.uploads/<id>/` until they are put
//! together into the object (a temporary file renamed into place, like a write).
//!
//! What this backend keeps besides the objects is bounded: a directory left empty by a delete
//! (or by a conditional write that failed on an absent key) is removed, and an object's
//! hidden note goes with it; an upload's directory is removed when it is completed or
//! aborted, and one left alone for [`ABANDONED_UPLOAD_AGE`] (its writer died) by the next
//! upload's start, as R2 aborts incomplete uploads after 7 days; a dead writer's temporary
//! file by [`DirStore::sweep_temporaries`] (a worker's start).
//!
//! A write's file is made durable before its rename (so a crash never tears an object); the
//! rename is made durable by the group commit (`commit.rs`): a write waits for a flush of
//! its directory that many writes share, except [`ObjectStore::put_undoable`]'s, which
//! returns at once and is made durable by the next flush.
//!
//! `mod.rs`: the store, its keys and the object operations; `lock.rs`: a key's lock and the
//! staged temporary files; `note.rs`: notes; `commit.rs`: the group commit; `multipart.rs`:
//! uploads; `sweep.rs`: the temporary files of dead writers. Errors get their [`ErrorKind`] from the `io::ErrorKind` (`io_kind`); the store's
//! clock is this host's.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::{ClockReading, ETag, ErrorKind, Listed, Object, ObjectStore, Precondition, StoreError};

mod commit;
mod lock;
mod multipart;
mod note;
mod sweep;
#[cfg(test)]
mod tests;

use lock::{changed_dirs, lock_key, stage_then_lock};
pub use multipart::ABANDONED_UPLOAD_AGE;
pub use sweep::{STALE_TEMPORARY_AGE, Swept};

/// A bucket kept in a local directory. Clones share one group commit.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
    commit: std::sync::Arc<commit::GroupCommit>,
    xattrs: std::sync::Arc<note::Xattrs>,
}

impl DirStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the store directory {}", root.display()))?;
        Ok(DirStore {
            root,
            commit: Default::default(),
            xattrs: Default::default(),
        })
    }

    /// This store as on a filesystem that refuses extended attributes: notes in hidden files.
    #[cfg(test)]
    pub(crate) fn without_xattrs(mut self) -> Self {
        self.xattrs = std::sync::Arc::new(note::Xattrs::refused());
        self
    }

    /// How many group-commit flushes this store (and its clones) ran: fewer than its
    /// durable writes when writes shared them.
    pub fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    /// Whether every write of `key` this store (or a clone) returned from is durable: false
    /// after a [`put_undoable`](ObjectStore::put_undoable) until the next flush of its
    /// directory. An invalid key is never written, so durable.
    pub fn is_durable(&self, key: &str) -> bool {
        self.path(key)
            .ok()
            .and_then(|p| p.parent().map(|d| self.commit.is_flushed(d)))
            .unwrap_or(true)
    }

    /// Writes `key` (see [`ObjectStore::put_with_note`]); `durable`: returns once the write
    /// is durable, else once it is visible.
    async fn write(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
        note: Option<String>,
        durable: bool,
    ) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        let dir = path.parent().expect("keys always have a parent").to_owned();
        let commit = std::sync::Arc::clone(&self.commit);
        let xattrs = std::sync::Arc::clone(&self.xattrs);
        // Recorded on the blocking thread: a caller dropped meanwhile leaves no rename unrecorded.
        let (tag, recorded) = tokio::task::spawn_blocking(move || {
            let (tag, made_dir) =
                put_blocking(&root, &path, &bytes, &pre, note.as_deref(), &xattrs)?;
            Ok::<_, StoreError>((tag, commit.dirty(changed_dirs(&root, &dir, made_dir))))
        })
        .await
        .map_err(join_err)??;
        if durable {
            self.commit.sync(&recorded).await?;
        }
        Ok(tag)
    }

    /// The directory under which every key is a file.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !ok {
            return Err(StoreError::new(
                ErrorKind::BadRequest,
                anyhow::anyhow!("invalid object key {key:?}"),
            ));
        }
        Ok(self.root.join(encode(key)))
    }
}

/// The kind of a failed file operation: a missing directory is [`ErrorKind::NotFound`] (a
/// missing object is never an error), one we may not write [`ErrorKind::AccessDenied`], a
/// path that cannot hold the object (a directory, a file where a directory should be) or
/// any other refusal that would repeat [`ErrorKind::BadRequest`]; the rest (I/O errors, a
/// full disk, too many open files, interruptions) [`ErrorKind::Transient`].
pub(crate) fn io_kind(kind: io::ErrorKind) -> ErrorKind {
    use io::ErrorKind as K;
    match kind {
        K::NotFound => ErrorKind::NotFound,
        K::PermissionDenied | K::ReadOnlyFilesystem => ErrorKind::AccessDenied,
        K::InvalidInput
        | K::InvalidData
        | K::InvalidFilename
        | K::IsADirectory
        | K::NotADirectory
        | K::DirectoryNotEmpty
        | K::AlreadyExists
        | K::FileTooLarge
        | K::TooManyLinks
        | K::Unsupported => ErrorKind::BadRequest,
        _ => ErrorKind::Transient,
    }
}

/// A failed file operation as a [`StoreError`] of its kind, saying what was being done.
fn io_err(e: io::Error, doing: impl FnOnce() -> String) -> StoreError {
    StoreError::new(io_kind(e.kind()), anyhow::Error::new(e).context(doing()))
}

/// The on-disk form of a key (or key prefix): each component that starts with `.` gets `%2E`
/// instead.
fn encode(key: &str) -> String {
    key.split('/')
        .map(|part| match part.strip_prefix('.') {
            Some(rest) => format!("%2E{rest}"),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The key of an on-disk relative path.
fn decode(rel: &str) -> String {
    rel.split('/')
        .map(|part| match part.strip_prefix("%2E") {
            Some(rest) => format!(".{rest}"),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn etag_of(bytes: &[u8]) -> ETag {
    ETag(hex::encode(&Sha256::digest(bytes)[..16]))
}

/// The object at `path`, with its note, if it has at most `max` bytes; a longer one is
/// refused ([`ErrorKind::TooLarge`]) with no more than `max + 1` bytes read (the file may
/// grow while it is read: another process's).
fn read(path: &Path, max: u64) -> Result<Option<Object>, StoreError> {
    let ctx = || format!("reading {}", path.display());
    let too_large = |len: u64| {
        StoreError::new(
            ErrorKind::TooLarge,
            anyhow::anyhow!(
                "{} is {len} bytes, more than the {max} a read of it may hold [too large]",
                path.display()
            ),
        )
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(e, ctx)),
    };
    let meta = file.metadata().map_err(|e| io_err(e, ctx))?;
    if meta.is_dir() {
        return Ok(None); // a key prefix: no object, as on S3
    }
    let len = meta.len();
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    match (&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
    {
        Ok(_) => {}
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(e, ctx)),
    }
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(Object {
        etag: etag_of(&bytes),
        note: note::read(&file, path).map_err(|e| io_err(e, ctx))?,
        bytes,
    }))
}

/// A missing file, or a key prefix (a directory here): no object, as on S3.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
    )
}

/// Whether `pre` holds for the object at `path` (read only as far as `pre` needs).
fn precondition_holds(path: &Path, pre: &Precondition) -> io::Result<bool> {
    match pre {
        Precondition::None => Ok(true),
        Precondition::Absent => match fs::metadata(path) {
            Ok(meta) => Ok(meta.is_dir()),
            Err(e) if is_absent(&e) => Ok(true),
            Err(e) => Err(e),
        },
        Precondition::Matches(tag) => match fs::read(path) {
            Ok(bytes) => Ok(etag_of(&bytes) == *tag),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// A name in the same directory that no `list` returns and no key can take.
fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    path.with_file_name(format!(".{name}.{suffix}"))
}

fn put_blocking(
    root: &Path,
    path: &Path,
    bytes: &[u8],
    pre: &Precondition,
    note: Option<&str>,
    xattrs: &note::Xattrs,
) -> Result<(ETag, bool), StoreError> {
    let ctx = || format!("writing {}", path.display());
    // A create-only write that finds the key taken fails at once, before it writes a file
    // (a claim of a job claimed already): the answer holds at this read, and a write that
    // finds it free checks again under the lock.
    if matches!(pre, Precondition::Absent)
        && !precondition_holds(path, pre).map_err(|e| io_err(e, ctx))?
    {
        return Err(StoreError::PreconditionFailed);
    }
    // Written and made durable before the lock: its holders wait only for the compare and
    // the renames.
    let (staged, hidden_note, lock) = stage_then_lock(root, path, |staged| {
        let mut note_in_file = false;
        staged.stage(path, |f| {
            f.write_all(bytes)?;
            if let Some(note) = note {
                note_in_file = xattrs.set(f, note)?;
            }
            Ok(())
        })?;
        let hidden_note = note.filter(|_| !note_in_file);
        if let Some(note) = hidden_note {
            // Renamed before the object, both made durable with one flush of their directory
            // (the caller's).
            staged.stage_first(&note::hidden_path(path), |f| f.write_all(note.as_bytes()))?;
        }
        Ok(hidden_note)
    })
    .map_err(|e| io_err(e, ctx))?;
    let made_dir = staged.made_dir();
    let result = (|| {
        if !precondition_holds(path, pre).map_err(|e| io_err(e, ctx))? {
            return Err(StoreError::PreconditionFailed);
        }
        let renamed = if hidden_note.is_some() {
            staged.rename_all()
        } else {
            note::remove_hidden(path).and_then(|()| staged.rename_all())
        };
        renamed.map_err(|e| io_err(e, ctx))?;
        Ok((etag_of(bytes), made_dir))
    })();
    // After the renames (a failed write's temporary files are gone by now).
    lock.release(root);
    result
}

fn list_blocking(root: &Path, prefix: &str) -> io::Result<Vec<Listed>> {
    // Walk only the directory that can hold matches.
    let start = match prefix.rfind('/') {
        Some(i) => root.join(encode(&prefix[..i])),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    walk_files(&start, |_, entry, name| {
        if name.starts_with('.') {
            return Ok(());
        }
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            return Ok(());
        };
        let key = decode(&rel.to_string_lossy().replace('\\', "/"));
        if key.starts_with(prefix) {
            let meta = entry.metadata()?;
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            out.push(Listed {
                key,
                size: meta.len(),
                modified_ms,
            });
        }
        Ok(())
    })?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Calls `visit(dir, entry, name)` for every entry under `start` that is not a directory,
/// hidden ones (`.`: the store's temporary and note files) included; directories whose
/// names start with `.` are the store's own (the uploads) and are not walked. A directory
/// that goes away meanwhile is skipped; names that are not UTF-8 are none of the store's.
fn walk_files(
    start: &Path,
    mut visit: impl FnMut(&Path, &fs::DirEntry, &str) -> io::Result<()>,
) -> io::Result<()> {
    let mut dirs = vec![start.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !entry.file_type()?.is_dir() {
                visit(&dir, &entry, name)?;
            } else if !name.starts_with('.') {
                dirs.push(entry.path());
            }
        }
    }
    Ok(())
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::new(
        ErrorKind::Transient,
        anyhow::anyhow!("store worker thread failed: {e}"),
    )
}

impl ObjectStore for DirStore {
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || read(&path, max))
            .await
            .map_err(join_err)?
    }

    async fn put_with_note(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
        note: Option<String>,
    ) -> Result<ETag, StoreError> {
        self.write(key, bytes, pre, note, true).await
    }

    async fn make_durable(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys always have a parent").to_owned();
        let recorded = self.commit.dirty(vec![dir]);
        self.commit.sync(&recorded).await
    }

    async fn put_undoable(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
    ) -> Result<ETag, StoreError> {
        self.write(key, bytes, pre, None, false).await
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        // The tag is the bytes' digest: a local file of any size is read whole.
        Ok(self.get_at_most(key, u64::MAX).await?.map(|obj| obj.etag))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let ctx = || format!("deleting {}", path.display());
            // Under the key's lock, so that its directory can go too if left empty.
            let Some(lock) = lock_key(&path).map_err(|e| io_err(e, ctx))? else {
                return Ok(());
            };
            let removed = match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => note::remove_hidden(&path),
            };
            lock.release(&root);
            removed.map_err(|e| io_err(e, ctx))
        })
        .await
        .map_err(join_err)?
    }

    async fn list_entries(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            list_blocking(&root, &prefix).map_err(|e| io_err(e, || format!("listing {prefix:?}")))
        })
        .await
        .map_err(join_err)?
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e, || format!("reading {}", path.display()))),
        }
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            let ctx = || format!("reading {}", path.display());
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(e, ctx)),
            };
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err(e, ctx))?;
            let mut bytes = Vec::new();
            file.take(len)
                .read_to_end(&mut bytes)
                .map_err(|e| io_err(e, ctx))?;
            Ok(Some(bytes))
        })
        .await
        .map_err(join_err)?
    }

    /// This host's clock: the directory is on this host.
    async fn clock(&self, _key: &str) -> Result<Option<ClockReading>, StoreError> {
        Ok(Some(ClockReading::local()))
    }
}
