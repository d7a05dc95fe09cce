//! Multipart uploads: parts under `<root>/.uploads/<id>/` until they are put together into
//! the object (a temporary file renamed into place, like a write); uploads left alone for
//! [`ABANDONED_UPLOAD_AGE`] are removed by the next upload's start.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::lock::{changed_dirs, stage_then_lock};
use super::{DirStore, etag_of, io_err, join_err, note};
use crate::store::{ETag, ErrorKind, Multipart, StoreError};

/// How long an upload's parts are kept after its last part was written, if it is neither
/// completed nor aborted (R2's rule for incomplete multipart uploads: 7 days).
pub const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Puts an upload's parts together under `path` (renamed into place holding the key's lock),
/// then removes them. A failed completion keeps them: it may be tried again, or aborted.
fn complete_blocking(
    root: &Path,
    path: &Path,
    parts_dir: &Path,
    parts: usize,
) -> Result<(ETag, bool), StoreError> {
    let ctx = || format!("completing the upload of {}", path.display());
    let mut hash = Sha256::new();
    let (staged, (), lock) = stage_then_lock(root, path, |staged| {
        staged.stage(path, |out| {
            for n in 1..=parts {
                let bytes = fs::read(parts_dir.join(n.to_string()))?;
                hash.update(&bytes);
                out.write_all(&bytes)?;
            }
            Ok(())
        })
    })
    .map_err(|e| io_err(e, ctx))?;
    let made_dir = staged.made_dir();
    // The object has no note: an older one's goes.
    let written = note::remove_hidden(path)
        .and_then(|()| staged.rename_all())
        .map_err(|e| io_err(e, ctx));
    lock.release(root);
    written?;
    let _ = fs::remove_dir_all(parts_dir);
    Ok((ETag(hex::encode(&hash.finalize()[..16])), made_dir))
}

impl Multipart for DirStore {
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
        let parent = path.parent().expect("keys always have a parent").to_owned();
        let commit = std::sync::Arc::clone(&self.commit);
        let (tag, recorded) = tokio::task::spawn_blocking(move || {
            let (tag, made_dir) = complete_blocking(&root, &path, &dir, count)?;
            Ok::<_, StoreError>((tag, commit.dirty(changed_dirs(&root, &parent, made_dir))))
        })
        .await
        .map_err(join_err)??;
        self.commit.sync(&recorded).await?;
        Ok(tag)
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
    pub(super) fn uploads(&self) -> PathBuf {
        self.root.join(".uploads")
    }

    pub(super) fn upload_dir(&self, upload: &str) -> Result<PathBuf, StoreError> {
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
