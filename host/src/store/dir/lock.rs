//! A key's exclusive lock (a `flock` on a hidden lock file beside the object) and the atomic
//! replace of an object (a temporary sibling renamed into place).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::hidden_sibling;

/// A key's exclusive lock, held until [`KeyLock::release`]d (or dropped).
///
/// The holder removes the lock file when it leaves the key without an object. Whoever was
/// waiting for the lock then holds the lock of a file that no longer has the name, which a
/// newcomer would not see: so a lock counts only when the file it is on still has the name
/// once the lock is held; else it is taken again.
pub(super) struct KeyLock {
    file: File,
    path: PathBuf,
    key: PathBuf,
}

/// Takes the key's exclusive lock, creating its directory if needed.
pub(super) fn lock_key(path: &Path) -> io::Result<KeyLock> {
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
    pub(super) fn release(self, root: &Path) {
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
/// The rename is durable once the directory is flushed (the caller records it as dirty in
/// the store's group commit).
pub(super) fn replace(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut write = Some(write);
    replace_all(&mut [(path, &mut |f: &mut File| {
        (write.take().expect("called once"))(f)
    })])
}

/// A file to write: its path and what writes its bytes.
pub(super) type FileWrite<'a> = (&'a Path, &'a mut dyn FnMut(&mut File) -> io::Result<()>);

/// [`replace`] for files of one directory at once: each is written to a temporary sibling
/// and made durable, then they are renamed into place in order (the directory is made
/// durable by the caller, once for all of them).
pub(super) fn replace_all(files: &mut [FileWrite<'_>]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut tmps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let result = (|| {
        for (path, write) in files.iter_mut() {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = hidden_sibling(path, &format!("tmp.{}.{seq}", std::process::id()));
            let mut f = File::create(&tmp)?;
            tmps.push(tmp);
            write(&mut f)?;
            f.sync_all()?;
        }
        for ((path, _), tmp) in files.iter().zip(&tmps) {
            fs::rename(tmp, path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &tmps {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}
