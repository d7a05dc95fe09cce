//! What dead writers left behind: a writer killed between its temporary file's creation and
//! its rename leaves that file (`.<name>.tmp.<pid>.<n>.<random>`, hidden: no read or
//! listing sees it). A write renames its temporary file within moments of making it, so one
//! older than [`STALE_TEMPORARY_AGE`] is a dead writer's: [`DirStore::sweep_temporaries`]
//! removes those, under their key's lock, and the directories that leaves empty.
//! Multipart uploads' parts have their own rule (`multipart.rs`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::lock::lock_key;
use super::{DirStore, io_err, join_err, walk_files};
use crate::store::StoreError;

/// How old a temporary file must be to be taken as a dead writer's (the compiled-module
/// cache's rule too).
pub const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(3600);

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Temporary files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl DirStore {
    /// Removes the temporary files last modified more than `older_than` ago, anywhere in the
    /// store but under its uploads, and the directories that leaves empty. A file or a
    /// directory that goes away meanwhile is skipped; the first other error ends the sweep.
    pub async fn sweep_temporaries(&self, older_than: Duration) -> Result<Swept, StoreError> {
        let root = self.root.clone();
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        tokio::task::spawn_blocking(move || {
            sweep_blocking(&root, cutoff)
                .map_err(|e| io_err(e, || format!("sweeping {}", root.display())))
        })
        .await
        .map_err(join_err)?
    }
}

fn sweep_blocking(root: &Path, cutoff: SystemTime) -> io::Result<Swept> {
    let mut swept = Swept::default();
    // The uploads (a hidden directory, not walked) have their own rule.
    walk_files(root, |dir, entry, name| {
        let Some(key_name) = temporary_of(name) else {
            return Ok(());
        };
        if entry.file_type()?.is_file()
            && let Some(bytes) = remove_if_older(&entry.path(), &dir.join(key_name), root, cutoff)?
        {
            swept.files += 1;
            swept.bytes += bytes;
        }
        Ok(())
    })?;
    Ok(swept)
}

/// Removes the temporary file at `tmp` (beside the key at `key`) if it was last modified
/// before `cutoff`, holding the key's lock; its size if it was removed.
fn remove_if_older(
    tmp: &Path,
    key: &Path,
    root: &Path,
    cutoff: SystemTime,
) -> io::Result<Option<u64>> {
    let Some(lock) = lock_key(key)? else {
        return Ok(None);
    };
    let removed = match fs::symlink_metadata(tmp) {
        Ok(meta) if meta.modified()? < cutoff => match fs::remove_file(tmp) {
            Ok(()) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    lock.release(root);
    removed
}

/// The name of the key whose temporary file is called `name`
/// (`.<name>.tmp.<pid>.<n>.<16 hex digits>`), if it is one.
fn temporary_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let mut parts = rest.rsplitn(4, '.');
    let (random, n, pid) = (parts.next()?, parts.next()?, parts.next()?);
    let key = parts.next()?.strip_suffix(".tmp")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && digits(n) && digits(pid) && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_told_from_the_rest() {
        assert_eq!(
            temporary_of(".result.tmp.42.7.0123456789abcdef"),
            Some("result")
        );
        assert_eq!(temporary_of(".a.b.tmp.1.0.ffffffffffffffff"), Some("a.b"));
        for other in [
            "result",
            ".result.note",
            ".result.lock",
            ".result.tmp.42.7.0123456789abcde",
            ".result.tmp.42.x.0123456789abcdef",
            ".result.tmp..7.0123456789abcdef",
            "..tmp.1.2.0123456789abcdef",
            ".result.tmpx.1.2.0123456789abcdef",
            "result.tmp.1.2.0123456789abcdef",
        ] {
            assert_eq!(temporary_of(other), None, "{other}");
        }
    }
}
