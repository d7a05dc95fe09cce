//! Object storage: one bucket (or directory) of keyed blobs with the conditional writes the
//! fencing protocol needs.
//!
//! Two backends implement [`ObjectStore`]: [`dir::DirStore`] (a local directory, the embedded
//! default and tests) and [`s3::S3Store`] (Cloudflare R2 or any S3 server). Code above this
//! trait (checkpoints, modules, results) never knows which one it runs on.
//!
//! **Invariant:** a conditional write either fully happens or returns
//! [`StoreError::PreconditionFailed`]; two writers racing on the same precondition never
//! both succeed.

pub mod any;
pub mod dir;
pub mod s3;

use std::fmt;

/// An opaque version tag of an object. Changes on every write whose bytes differ
/// (the checkpoint protocol adds a nonce so that every write differs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object's bytes with the tag of the version they were read from.
#[derive(Clone, Debug)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: ETag,
}

/// When a write may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Always (plain overwrite).
    None,
    /// Only if no object exists under the key (`If-None-Match: *`).
    Absent,
    /// Only if the current object has this tag (`If-Match`).
    Matches(ETag),
}

#[derive(Debug)]
pub enum StoreError {
    /// The precondition did not hold: the object exists (create-only) or changed (if-match).
    PreconditionFailed,
    /// Anything else: network, permissions, disk. Transient or not, the message says.
    Other(anyhow::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::PreconditionFailed => {
                f.write_str("precondition failed (object changed or exists)")
            }
            StoreError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Worth retrying later: the server was unreachable, timed out or answered 5xx / 429
    /// (after the client's own retries).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::PreconditionFailed => false,
            StoreError::Other(e) => format!("{e:#}").contains("[transient"),
        }
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        StoreError::Other(e)
    }
}

/// A bucket of objects addressed by `/`-separated keys such as `jobs/job-1/checkpoint`.
///
/// Keys are produced by this crate only (`modules/<hex>.wasm`, `jobs/<job_id>/...`), never
/// taken raw from users, so backends may assume they are made of `[A-Za-z0-9._/-]`.
#[allow(async_fn_in_trait)]
pub trait ObjectStore: Send + Sync + 'static {
    /// Reads an object. `Ok(None)` means it does not exist; an error is never `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send;

    /// Writes an object if `pre` holds, atomically; returns the new tag.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
    ) -> impl Future<Output = Result<ETag, StoreError>> + Send;

    /// The tag of the object's current version, without its bytes (S3 `HeadObject`).
    /// `Ok(None)` means it does not exist.
    fn head(&self, key: &str) -> impl Future<Output = Result<Option<ETag>, StoreError>> + Send;

    /// Deletes an object; deleting one that does not exist is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether an object exists (a [`head`](ObjectStore::head)).
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move { Ok(self.head(key).await?.is_some()) }
    }

    /// Keys under `prefix`, in lexical order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The object's size in bytes; `Ok(None)` means it does not exist.
    fn size(&self, key: &str) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Up to `len` bytes of the object from byte `offset` (fewer only at its end; none at or
    /// past the end). `Ok(None)` means it does not exist.
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Starts a multipart upload to `key`; returns its id. Nothing is visible under `key`
    /// until [`upload_complete`](ObjectStore::upload_complete).
    fn upload_start(&self, key: &str) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads part `number` (1-based; every part but the last at least [`MIN_PART_BYTES`],
    /// all of one size on R2) and returns its tag. Uploading a number again replaces it.
    fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Puts the parts (their tags, part 1 first) together as the object under `key`,
    /// replacing any object there, atomically.
    fn upload_complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> impl Future<Output = Result<ETag, StoreError>> + Send;

    /// Whether the store still knows the upload (it may abort incomplete uploads by itself:
    /// R2 does after 7 days by default).
    fn upload_exists(
        &self,
        key: &str,
        upload: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Discards an upload and its parts; an unknown upload is not an error.
    fn upload_abort(
        &self,
        key: &str,
        upload: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Smallest part of a multipart upload but the last (S3 and R2: 5 MiB).
pub const MIN_PART_BYTES: usize = 5 << 20;
