//! Moving whole files between the local disk and the store in parts, for the CLI
//! (`submit --input`, `artifacts --get`): memory stays at one part whatever the file's size.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::PART_BYTES;
use crate::store::any::AnyStore;
use crate::store::{Multipart, ObjectStore, Precondition};

/// Reads `path` in parts, calling `f` on each.
fn each_part(path: &Path, mut f: impl FnMut(Vec<u8>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    loop {
        let mut part = Vec::with_capacity(PART_BYTES);
        (&mut file)
            .take(PART_BYTES as u64)
            .read_to_end(&mut part)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if part.is_empty() {
            return Ok(());
        }
        f(part)?;
    }
}

/// The sha256 (hex) and size of a local file.
pub fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut hash = Sha256::new();
    let mut size = 0u64;
    each_part(path, |part| {
        size += part.len() as u64;
        hash.update(&part);
        Ok(())
    })?;
    Ok((hex::encode(hash.finalize()), size))
}

/// Uploads `path` to `key` (in parts when larger than one), calling `progress` with the
/// bytes sent so far. A file of at most one part is written create-only.
pub async fn upload(
    store: &AnyStore,
    path: &Path,
    key: &str,
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size <= PART_BYTES as u64 {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        match store.put(key, bytes, Precondition::Absent).await {
            Ok(_) | Err(crate::store::StoreError::PreconditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
        progress(size);
        return Ok(());
    }
    let upload = store.upload_start(key).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let reader = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            each_part(&path, |part| {
                tx.blocking_send(part)
                    .map_err(|_| anyhow::anyhow!("the upload stopped"))
            })
        })
    };
    let mut parts = Vec::new();
    let mut sent = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(part) = rx.recv().await {
            let len = part.len() as u64;
            let tag = store
                .upload_part(key, &upload, parts.len() as u32 + 1, part)
                .await?;
            parts.push(tag);
            sent += len;
            progress(sent);
        }
        reader.await.context("the file reader failed")??;
        store.upload_complete(key, &upload, &parts).await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = store.upload_abort(key, &upload).await;
    }
    result
}

/// Downloads `key` (of `size` bytes) to `path` in parts, calling `progress` with the bytes
/// received so far. Written to a temporary file renamed into place, so `path` is complete
/// or absent.
pub async fn download(
    store: &AnyStore,
    key: &str,
    size: u64,
    path: &Path,
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut done = 0u64;
    while done < size {
        let bytes = store
            .get_range(key, done, PART_BYTES as u64)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{key} does not exist"))?;
        anyhow::ensure!(
            !bytes.is_empty(),
            "{key} is {done} bytes, shorter than its recorded size {size}"
        );
        tmp.write_all(&bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        done += bytes.len() as u64;
        progress(done);
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
