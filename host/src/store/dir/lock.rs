//! A key's exclusive lock (a `flock` on the directory that holds it) and the atomic replace
//! of objects (temporary siblings written and made durable first, renamed into place under
//! the lock).
//!
//! The lock is the directory's: every key of one directory shares it, and no file is created
//! for it. Nothing holds two directories' locks at once (a release that removes empty
//! directories lets go of each before it takes its parent's), so locks never wait on each
//! other in a cycle. A directory is removed only by the holder of its lock, and only when
//! empty; a writer's temporary file is in it before the writer takes the lock, so the
//! directory a writer holds is never removed under it.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::hidden_sibling;

/// How often a lock or a temporary file is tried again when a delete removed the directory
/// in between (a race, which ends); past it the error is there to stay.
const RACE_TRIES: u32 = 1000;

/// The exclusive lock of one directory: of every key in it, held until dropped.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
    dir: PathBuf,
}

/// Takes `dir`'s exclusive lock. `None`: there is no such directory (so no key in it).
///
/// A delete removes a directory it leaves empty, under its lock. Whoever waited for that lock
/// then holds the lock of a directory that no longer has the name, which a newcomer would not
/// see: so a lock counts only when `dir` still names the locked directory once the lock is
/// held; else it is taken again.
pub(super) fn lock_dir(dir: &Path) -> io::Result<Option<DirLock>> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..RACE_TRIES {
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        file.lock()?;
        let held = file.metadata()?;
        match fs::metadata(dir) {
            Ok(named) if (named.dev(), named.ino()) == (held.dev(), held.ino()) => {
                return Ok(Some(DirLock {
                    _file: file,
                    dir: dir.to_owned(),
                }));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{} kept being replaced while it was locked",
        dir.display()
    )))
}

/// A key's exclusive lock (its directory's), held until [`KeyLock::release`]d (or dropped).
#[derive(Debug)]
pub(super) struct KeyLock {
    dir: DirLock,
    key: PathBuf,
}

/// Takes the lock of the key at `path`. `None`: its directory does not exist, so neither does
/// the key (and no writer is at work there: a writer's temporary file would be in it).
pub(super) fn lock_key(path: &Path) -> io::Result<Option<KeyLock>> {
    let dir = path.parent().expect("keys always have a parent");
    Ok(lock_dir(dir)?.map(|dir| KeyLock {
        dir,
        key: path.to_owned(),
    }))
}

/// [`lock_key`] for a writer whose temporary file is in the key's directory already (so the
/// directory exists).
pub(super) fn lock_for_write(path: &Path) -> io::Result<KeyLock> {
    lock_key(path)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the directory of a staged write is gone",
        )
    })
}

impl KeyLock {
    /// Lets go of the lock. If the key is left without an object, the directories this leaves
    /// empty go, up to the store's `root` (each under its own lock), and with them the lock
    /// file an older version kept beside the key (`.<name>.lock`), which would keep its
    /// directory.
    pub(super) fn release(self, root: &Path) {
        match fs::symlink_metadata(&self.key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => return,
        }
        let _ = fs::remove_file(hidden_sibling(&self.key, "lock"));
        let mut held = self.dir;
        loop {
            if held.dir == root || !held.dir.starts_with(root) || fs::remove_dir(&held.dir).is_err()
            {
                return;
            }
            let Some(parent) = held.dir.parent().map(Path::to_owned) else {
                return;
            };
            // Let go before taking the parent's lock: never two at once.
            drop(held);
            if parent == root {
                return;
            }
            match lock_dir(&parent) {
                Ok(Some(lock)) => held = lock,
                _ => return,
            }
        }
    }
}

/// Files written to temporary siblings and made durable, waiting to be renamed into place
/// ([`Staged::rename_all`], under the key's lock). The temporary files not renamed are
/// removed when this is dropped.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// (temporary file, where it goes), in the order of the renames.
    files: Vec<(PathBuf, PathBuf)>,
    /// Whether a directory was made for them: its entry, and those of any directories made
    /// with it, are new in the directories above.
    made_dir: bool,
}

impl Staged {
    /// Writes a temporary sibling of `dest` with `write` and makes it durable, creating the
    /// directory if needed; it is renamed after the files staged before it.
    pub(super) fn stage(
        &mut self,
        dest: &Path,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let staged = self.write_temporary(dest, write)?;
        self.files.push(staged);
        Ok(())
    }

    /// Whether a directory was made for the staged files (see [`changed_dirs`]).
    pub(super) fn made_dir(&self) -> bool {
        self.made_dir
    }

    /// [`Staged::stage`], renamed before every file staged so far.
    pub(super) fn stage_first(
        &mut self,
        dest: &Path,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        self.stage(dest, write)?;
        self.files.rotate_right(1);
        Ok(())
    }

    fn write_temporary(
        &mut self,
        dest: &Path,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<(PathBuf, PathBuf)> {
        let dir = dest.parent().expect("keys always have a parent");
        let mut tries = 0;
        let (tmp, mut file) = loop {
            tries += 1;
            // A name of its own, created new: never a file another writer (of this process,
            // or of another with the same pid in another container) writes, nor a leftover
            // of a crash with its bytes or note.
            let tmp = temporary_name(dest)?;
            // The directory is made when missing; a delete may remove it again before the
            // file is made (not once our temporary file is in it).
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => break (tmp, file),
                Err(e) if tries < RACE_TRIES && e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if tries < RACE_TRIES && e.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir_all(dir) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => self.made_dir = true,
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let written = write(&mut file).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok((tmp, dest.to_owned()))
    }

    /// Renames the staged files into place, in order. A crash never leaves a truncated object
    /// behind a key. The renames are durable once the directory is flushed (the caller records
    /// it in the store's group commit). If one fails, the files renamed before it (a hidden
    /// note, staged first) are removed: none is left beside bytes it does not belong to.
    pub(super) fn rename_all(mut self) -> io::Result<()> {
        let mut renamed = Vec::new();
        while let Some((tmp, dest)) = self.files.first() {
            if let Err(e) = fs::rename(tmp, dest) {
                for dest in &renamed {
                    let _ = fs::remove_file(dest);
                }
                return Err(e);
            }
            renamed.push(self.files.remove(0).1);
        }
        Ok(())
    }
}

/// A fresh temporary name beside `dest`: `.<name>.tmp.<pid>.<seq>.<random>`.
fn temporary_name(dest: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(format!("random: {e}")))?;
    Ok(hidden_sibling(
        dest,
        &format!("tmp.{}.{seq}.{}", std::process::id(), hex::encode(random)),
    ))
}

/// The directories whose entries a write of a file into `dir` (under `root`) changes: `dir`,
/// and when the write made `dir` ([`Staged::made_dir`]), every directory above it up to
/// `root`, since the made directories' entries are new in them (`create_dir_all` may have
/// made several levels). A new entry is durable only once its directory is fsynced.
pub(super) fn changed_dirs(root: &Path, dir: &Path, made_dir: bool) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    if made_dir {
        dirs.extend(
            dir.ancestors()
                .skip(1)
                .take_while(|d| d.starts_with(root))
                .map(Path::to_path_buf),
        );
    }
    dirs
}

/// A write's first half: `stage` writes its temporary files (beside the key at `path`), then
/// the key's lock is taken. If either fails, the staged files are gone and so are the
/// directories made for them that are left empty (under their locks, as a release does).
pub(super) fn stage_then_lock<T>(
    root: &Path,
    path: &Path,
    stage: impl FnOnce(&mut Staged) -> io::Result<T>,
) -> io::Result<(Staged, T, KeyLock)> {
    let mut staged = Staged::default();
    match stage(&mut staged).and_then(|value| Ok((value, lock_for_write(path)?))) {
        Ok((value, lock)) => Ok((staged, value, lock)),
        Err(e) => {
            drop(staged);
            if let Ok(Some(lock)) = lock_key(path) {
                lock.release(root);
            }
            Err(e)
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
}
