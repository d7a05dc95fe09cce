//! The directory backend: each key is a file under a root directory.
//!
//! Conditional writes hold an exclusive `flock` on a per-key lock file while they compare
//! the current tag and rename a fully written temporary file into place, so they are atomic
//! across threads and processes on one machine. Readers never lock: `rename` is atomic, so a
//! reader sees the old or the new bytes, never a mix. The tag is a hash of the bytes, like
//! an S3 ETag (the MD5 of the body): identical bytes give an identical tag.
//!
//! A key component that starts with `.` (a job id may) is stored as `%2E...`: names that
//! start with `.` are this backend's own lock and temporary files, and `%` is in no key.
//! Multipart uploads keep their parts under `<root>/.uploads/<id>/` until they are put
//! together into the object (a temporary file renamed into place, like a write).
//!
//! What this backend keeps besides the objects is bounded: a key's lock file is removed
//! whenever its key is left without an object (after a delete, or a conditional write that
//! failed on an absent key), so lock files never outnumber objects, and a directory left
//! empty by a delete is removed; an upload's directory is removed when it is completed or
//! aborted, and one left alone for [`ABANDONED_UPLOAD_AGE`] (its writer died) by the next
//! upload's start, as R2 aborts incomplete uploads after 7 days.
//!
//! Errors get their [`ErrorKind`] from the `io::ErrorKind` (`io_kind`); the store's clock is
//! this host's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::{ClockReading, ETag, ErrorKind, Object, ObjectStore, Precondition, StoreError};

/// A bucket kept in a local directory.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the store directory {}", root.display()))?;
        Ok(DirStore { root })
    }

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

fn read(path: &Path) -> io::Result<Option<Object>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(Object {
            etag: etag_of(&bytes),
            bytes,
        })),
        // A key prefix (a directory here) is no object, as on S3.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
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

/// How long an upload's parts are kept after its last part was written, if it is neither
/// completed nor aborted (R2's rule for incomplete multipart uploads: 7 days).
pub const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A key's exclusive lock, held until [`KeyLock::release`]d (or dropped).
///
/// The holder removes the lock file when it leaves the key without an object. Whoever was
/// waiting for the lock then holds the lock of a file that no longer has the name, which a
/// newcomer would not see: so a lock counts only when the file it is on still has the name
/// once the lock is held; else it is taken again.
struct KeyLock {
    file: File,
    path: PathBuf,
    key: PathBuf,
}

/// Takes the key's exclusive lock, creating its directory if needed.
fn lock_key(path: &Path) -> io::Result<KeyLock> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().expect("keys always have a parent");
    let lock_path = hidden_sibling(path, "lock");
    let mut tries = 0;
    loop {
        tries += 1;
        // A delete may remove the directory between these steps: then they run again
        // (bounded, in case the error is not a race but there to stay).
        let opened = fs::create_dir_all(dir).and_then(|()| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
        });
        let file = match opened {
            Ok(file) => file,
            Err(e)
                if tries < 1000
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                    ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        file.lock()?;
        let held = file.metadata()?;
        match fs::metadata(&lock_path) {
            Ok(named) if (named.dev(), named.ino()) == (held.dev(), held.ino()) => {
                return Ok(KeyLock {
                    file,
                    path: lock_path,
                    key: path.to_owned(),
                });
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

impl KeyLock {
    /// Lets go of the lock. If the key is left without an object, its lock file goes first,
    /// and then the directories this leaves empty, up to the store's `root`.
    fn release(self, root: &Path) {
        match fs::symlink_metadata(&self.key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => return,
        }
        let _ = fs::remove_file(&self.path);
        drop(self.file);
        let mut dir = self.path.parent();
        while let Some(d) = dir {
            if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// Writes a temporary sibling with `write`, makes it durable, then renames it over `path`
/// (the caller holds the key's lock). A crash never leaves a truncated object behind the key.
fn replace(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = hidden_sibling(path, &format!("tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(path.parent().expect("keys always have a parent"))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn put_blocking(
    root: &Path,
    path: &Path,
    bytes: &[u8],
    pre: &Precondition,
) -> Result<ETag, StoreError> {
    let ctx = || format!("writing {}", path.display());
    let lock = lock_key(path).map_err(|e| io_err(e, ctx))?;
    let result = (|| {
        let current = read(path).map_err(|e| io_err(e, ctx))?;
        let holds = match (pre, &current) {
            (Precondition::None, _) => true,
            (Precondition::Absent, cur) => cur.is_none(),
            (Precondition::Matches(tag), Some(cur)) => &cur.etag == tag,
            (Precondition::Matches(_), None) => false,
        };
        if !holds {
            return Err(StoreError::PreconditionFailed);
        }
        replace(path, |f| f.write_all(bytes)).map_err(|e| io_err(e, ctx))?;
        Ok(etag_of(bytes))
    })();
    // After the rename.
    lock.release(root);
    result
}

fn list_blocking(root: &Path, prefix: &str) -> io::Result<Vec<String>> {
    // Walk only the directory that can hold matches.
    let start = match prefix.rfind('/') {
        Some(i) => root.join(encode(&prefix[..i])),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                let key = decode(&rel.to_string_lossy().replace('\\', "/"));
                if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Puts an upload's parts together under `path` (holding the key's lock), then removes them.
/// A failed completion keeps them: it may be tried again, or aborted.
fn complete_blocking(
    root: &Path,
    path: &Path,
    parts_dir: &Path,
    parts: usize,
) -> Result<ETag, StoreError> {
    let ctx = || format!("completing the upload of {}", path.display());
    let lock = lock_key(path).map_err(|e| io_err(e, ctx))?;
    let mut hash = Sha256::new();
    let written = replace(path, |out| {
        for n in 1..=parts {
            let bytes = fs::read(parts_dir.join(n.to_string()))?;
            hash.update(&bytes);
            out.write_all(&bytes)?;
        }
        Ok(())
    })
    .map_err(|e| io_err(e, ctx));
    lock.release(root);
    written?;
    let _ = fs::remove_dir_all(parts_dir);
    Ok(ETag(hex::encode(&hash.finalize()[..16])))
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::new(
        ErrorKind::Transient,
        anyhow::anyhow!("store worker thread failed: {e}"),
    )
}

impl ObjectStore for DirStore {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            read(&path).map_err(|e| io_err(e, || format!("reading {}", path.display())))
        })
        .await
        .map_err(join_err)?
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, pre: Precondition) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || put_blocking(&root, &path, &bytes, &pre))
            .await
            .map_err(join_err)?
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        Ok(self.get(key).await?.map(|obj| obj.etag))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let ctx = || format!("deleting {}", path.display());
            // Under the key's lock, so that its lock file can go too.
            let lock = lock_key(&path).map_err(|e| io_err(e, ctx))?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e, ctx)),
            }
            lock.release(&root);
            Ok(())
        })
        .await
        .map_err(join_err)?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
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
            Ok(m) if m.is_dir() => Ok(None), // a key prefix: no object, as on S3
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
            // A key prefix (a directory opens as a file) is no object, as on S3.
            if file.metadata().map_err(|e| io_err(e, ctx))?.is_dir() {
                return Ok(None);
            }
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

    async fn upload_start(&self, key: &str) -> Result<String, StoreError> {
        self.path(key)?;
        let mut b = [0u8; 12];
        getrandom::fill(&mut b)
            .map_err(|e| StoreError::new(ErrorKind::Transient, anyhow::anyhow!("random: {e}")))?;
        let id = hex::encode(b);
        let uploads = self.uploads();
        let dir = uploads.join(&id);
        tokio::task::spawn_blocking(move || {
            remove_abandoned_uploads(&uploads);
            fs::create_dir_all(&dir)
                .map_err(|e| io_err(e, || format!("creating {}", dir.display())))
        })
        .await
        .map_err(join_err)??;
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> Result<String, StoreError> {
        self.path(key)?;
        let dir = self.upload_dir(upload)?;
        let tag = etag_of(&bytes).0;
        tokio::task::spawn_blocking(move || {
            let part = dir.join(number.to_string());
            let tmp = dir.join(format!(".{number}.tmp"));
            fs::write(&tmp, &bytes)
                .and_then(|()| fs::rename(&tmp, &part))
                .map_err(|e| io_err(e, || format!("writing {}", part.display())))
        })
        .await
        .map_err(join_err)??;
        Ok(tag)
    }

    async fn upload_complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        let dir = self.upload_dir(upload)?;
        let count = parts.len();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || complete_blocking(&root, &path, &dir, count))
            .await
            .map_err(join_err)?
    }

    async fn upload_exists(&self, key: &str, upload: &str) -> Result<bool, StoreError> {
        self.path(key)?;
        Ok(self.upload_dir(upload).is_ok())
    }

    async fn upload_abort(&self, _key: &str, upload: &str) -> Result<(), StoreError> {
        if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        let dir = self.uploads().join(upload);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, || format!("removing {}", dir.display()))),
        }
    }

    /// This host's clock: the directory is on this host.
    async fn clock(&self, _key: &str) -> Result<Option<ClockReading>, StoreError> {
        Ok(Some(ClockReading::local()))
    }
}

/// Removes the uploads under `uploads` whose last part was written more than
/// [`ABANDONED_UPLOAD_AGE`] ago: their writer died without completing or aborting them.
fn remove_abandoned_uploads(uploads: &Path) {
    let Ok(entries) = fs::read_dir(uploads) else {
        return;
    };
    for entry in entries.flatten() {
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if idle.is_some_and(|idle| idle > ABANDONED_UPLOAD_AGE) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl DirStore {
    fn uploads(&self) -> PathBuf {
        self.root.join(".uploads")
    }

    fn upload_dir(&self, upload: &str) -> Result<PathBuf, StoreError> {
        let dir = self.uploads().join(upload);
        if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_hexdigit()) || !dir.is_dir() {
            return Err(StoreError::new(
                ErrorKind::BadRequest,
                anyhow::anyhow!("no multipart upload {upload:?} in {}", self.root.display()),
            ));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStore::open(tmp.path()).unwrap();
        assert!(s.get("jobs/a/checkpoint").await.unwrap().is_none());
        let t1 = s
            .put("jobs/a/checkpoint", b"one".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        assert!(matches!(
            s.put("jobs/a/checkpoint", b"two".to_vec(), Precondition::Absent)
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        let t2 = s
            .put(
                "jobs/a/checkpoint",
                b"two".to_vec(),
                Precondition::Matches(t1.clone()),
            )
            .await
            .unwrap();
        assert_ne!(t1, t2);
        // A stale writer (holding t1) loses.
        assert!(matches!(
            s.put(
                "jobs/a/checkpoint",
                b"three".to_vec(),
                Precondition::Matches(t1)
            )
            .await,
            Err(StoreError::PreconditionFailed)
        ));
        let got = s.get("jobs/a/checkpoint").await.unwrap().unwrap();
        assert_eq!(got.bytes, b"two");
        assert_eq!(got.etag, t2);
        assert!(matches!(
            s.put("jobs/b/x", b"x".to_vec(), Precondition::Matches(t2))
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        assert_eq!(s.list("jobs/").await.unwrap(), vec!["jobs/a/checkpoint"]);
        assert!(s.exists("jobs/a/checkpoint").await.unwrap());
        assert!(s.path("../etc/passwd").is_err());
        // A component may start with `.` (a job id may): stored under another name, listed
        // and read back under its own.
        s.put("jobs/.hidden/x", b"h".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(
            s.list("jobs/.hidden/").await.unwrap(),
            vec!["jobs/.hidden/x"]
        );
        assert_eq!(s.get("jobs/.hidden/x").await.unwrap().unwrap().bytes, b"h");
        s.delete("jobs/.hidden/x").await.unwrap();
        assert!(!s.exists("jobs/.hidden/x").await.unwrap());
        s.delete("jobs/.hidden/x").await.unwrap();
        assert!(s.path("jobs/../x").is_err());
    }

    #[test]
    fn io_errors_get_their_kind() {
        use io::ErrorKind as K;
        for (io, want) in [
            (K::NotFound, ErrorKind::NotFound),
            (K::PermissionDenied, ErrorKind::AccessDenied),
            (K::ReadOnlyFilesystem, ErrorKind::AccessDenied),
            (K::IsADirectory, ErrorKind::BadRequest),
            (K::NotADirectory, ErrorKind::BadRequest),
            (K::InvalidInput, ErrorKind::BadRequest),
            (K::StorageFull, ErrorKind::Transient),
            (K::TimedOut, ErrorKind::Transient),
            (K::Interrupted, ErrorKind::Transient),
            (K::Other, ErrorKind::Transient),
        ] {
            assert_eq!(io_kind(io), want, "{io:?}");
        }
    }

    /// The probe a worker writes fails where a write fails, even while reads work: here the
    /// probe's key is taken by a directory (tests run as root, which file modes do not stop).
    #[tokio::test]
    async fn the_probe_fails_where_writes_fail_while_reads_work() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStore::open(tmp.path()).unwrap();
        s.put("jobs/a/result", b"r".to_vec(), Precondition::None)
            .await
            .unwrap();
        let probe = crate::keys::probe("w");
        crate::store::probe(&s, &probe).await.unwrap();
        assert!(!s.exists(&probe).await.unwrap(), "the probe is deleted");
        fs::create_dir_all(tmp.path().join(&probe).join("x")).unwrap();
        let e = crate::store::probe(&s, &probe).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
        assert!(!e.is_transient());
        assert_eq!(s.get("jobs/a/result").await.unwrap().unwrap().bytes, b"r");
        // An invalid key is a bad request too.
        let e = s.get("../x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_create_only_has_one_winner() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStore::open(tmp.path()).unwrap();
        for key in ["k/1", "k/2", "k/3"] {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.put(
                            key,
                            format!("writer {i}").into_bytes(),
                            Precondition::Absent,
                        )
                        .await
                        .is_ok()
                    })
                })
                .collect();
            let mut wins = 0;
            for h in handles {
                wins += h.await.unwrap() as usize;
            }
            assert_eq!(wins, 1, "{key}");
        }
    }

    /// Everything under `root` but `.uploads`, as relative paths.
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == ".uploads" {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path.clone());
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn lock_files_and_directories_do_not_outlive_their_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStore::open(tmp.path()).unwrap();
        let t = s
            .put("jobs/a/checkpoint", b"1".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        s.put("jobs/a/result", b"r".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        // A lock file stays beside an object.
        assert!(files(tmp.path()).contains(&"jobs/a/.checkpoint.lock".into()));
        // A conditional write that fails on an absent key leaves nothing behind.
        assert!(matches!(
            s.put("jobs/b/checkpoint", b"2".to_vec(), Precondition::Matches(t))
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        assert!(matches!(
            s.put("jobs/a/checkpoint", b"2".to_vec(), Precondition::Absent)
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        assert_eq!(
            files(tmp.path()),
            vec![
                "jobs",
                "jobs/a",
                "jobs/a/.checkpoint.lock",
                "jobs/a/.result.lock",
                "jobs/a/checkpoint",
                "jobs/a/result"
            ]
        );
        // Deleting takes the lock file, and the directories left empty.
        s.delete("jobs/a/result").await.unwrap();
        s.delete("jobs/none/result").await.unwrap();
        assert_eq!(
            files(tmp.path()),
            vec![
                "jobs",
                "jobs/a",
                "jobs/a/.checkpoint.lock",
                "jobs/a/checkpoint"
            ]
        );
        s.delete("jobs/a/checkpoint").await.unwrap();
        assert_eq!(files(tmp.path()), Vec::<String>::new());
        assert!(tmp.path().is_dir());
        // The key works as before.
        s.put("jobs/a/checkpoint", b"3".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(s.list("jobs/").await.unwrap(), vec!["jobs/a/checkpoint"]);
    }

    /// Holders remove the lock file of a key they leave without an object while others wait
    /// for it: still one holder at a time.
    #[test]
    fn a_removed_lock_file_never_lets_two_writers_in() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let key = root.join("jobs/x/checkpoint");
        let inside = AtomicU64::new(0);
        let entries = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (key, inside, entries) = (&key, &inside, &entries);
                s.spawn(move || {
                    for i in 0..300u64 {
                        let lock = lock_key(key).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        entries.fetch_add(1, Ordering::Relaxed);
                        // Every other time the key is left without an object.
                        if (t + i) % 2 == 0 {
                            fs::write(key, b"x").unwrap();
                        } else {
                            let _ = fs::remove_file(key);
                        }
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        lock.release(root);
                    }
                });
            }
        });
        assert_eq!(entries.load(Ordering::Relaxed), 8 * 300);
    }

    #[tokio::test]
    async fn uploads_leave_nothing_once_completed_aborted_or_abandoned() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStore::open(tmp.path()).unwrap();
        let uploads = || -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(tmp.path().join(".uploads"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let done = s.upload_start("a/done").await.unwrap();
        let part = s
            .upload_part("a/done", &done, 1, b"part".to_vec())
            .await
            .unwrap();
        s.upload_complete("a/done", &done, &[part]).await.unwrap();
        assert_eq!(s.get("a/done").await.unwrap().unwrap().bytes, b"part");
        let aborted = s.upload_start("a/aborted").await.unwrap();
        s.upload_part("a/aborted", &aborted, 1, b"part".to_vec())
            .await
            .unwrap();
        s.upload_abort("a/aborted", &aborted).await.unwrap();
        assert_eq!(uploads(), Vec::<String>::new());

        // One whose writer died long ago, and one at work: the next start removes the first.
        let old = s.upload_start("a/old").await.unwrap();
        let long_ago =
            std::time::SystemTime::now() - ABANDONED_UPLOAD_AGE - Duration::from_secs(60);
        File::open(tmp.path().join(".uploads").join(&old))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let working = s.upload_start("a/working").await.unwrap();
        let next = s.upload_start("a/next").await.unwrap();
        let mut want = vec![working, next];
        want.sort();
        assert_eq!(uploads(), want);
    }
}
