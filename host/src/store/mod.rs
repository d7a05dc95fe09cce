//! Object storage: one bucket (or directory) of keyed blobs with the conditional writes the
//! fencing protocol needs.
//!
//! Two backends implement [`ObjectStore`]: [`dir::DirStore`] (a local directory, the embedded
//! default and tests) and [`s3::S3Store`] (Cloudflare R2 or any S3 server). Code above this
//! trait (checkpoints, modules, results) never knows which one it runs on.
//!
//! **Invariants:** a conditional write either fully happens or returns
//! [`StoreError::PreconditionFailed`]; two writers racing on the same precondition never
//! both succeed. A write is visible to every reader when it returns, and durable too
//! (survives a power loss), except [`ObjectStore::put_undoable`]'s.

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
    /// The whole object.
    pub bytes: Vec<u8>,
    /// The version read: the tag a later `IfMatch` write must name.
    pub etag: ETag,
    /// The note written with this version ([`ObjectStore::put_with_note`]), if any.
    pub note: Option<String>,
}

/// The most bytes a note ([`ObjectStore::put_with_note`]) may have: S3 allows 2 KiB of user
/// metadata per object.
pub const MAX_NOTE_BYTES: usize = 1024;

/// The most bytes [`ObjectStore::get`] reads: every object taskhost reads whole (a
/// checkpoint of at most 16 MiB with its header, a result, an error, a record) but a module
/// ([`crate::modules::MAX_MODULE_BYTES`]) fits in it many times over. A larger object, or a
/// server that sends more than it announced, is refused before more than this is held.
pub const MAX_OBJECT_BYTES: u64 = 64 << 20;

/// One object as a listing shows it: its key, size and last write (the store's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The object's full key.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
    /// When the object was last written, ms since the Unix epoch by the store's clock (S3:
    /// `LastModified`, whole seconds; a directory: the file's mtime).
    pub modified_ms: u64,
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

/// What kind of failure a store error is, decided where the store's answer was seen (an
/// HTTP status and error code, an SDK error kind, an `io::ErrorKind`), never from message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The precondition did not hold: the object exists (create-only) or changed (if-match).
    PreconditionFailed,
    /// No answer (timeout, connection failure), a 5xx, or a body that broke off, after the
    /// client's own retries: worth retrying later.
    Transient,
    /// The server asked us to slow down (429, 503 `SlowDown`): worth retrying later.
    Throttled,
    /// The bucket (or the store's directory) does not exist: a misconfiguration, never
    /// "absent".
    NotFound,
    /// The credentials may not do this (401, 403; a directory we may not write).
    AccessDenied,
    /// Any other refusal (another 4xx, a 501, a response we cannot use, an invalid key):
    /// retrying the same request would fail the same way.
    BadRequest,
    /// The object is larger than the read may hold ([`ObjectStore::get_at_most`]), or the
    /// server sent more than asked: retrying would fail the same way.
    TooLarge,
}

impl ErrorKind {
    /// Worth retrying later: transient or throttled.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Throttled)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::PreconditionFailed => "precondition failed",
            ErrorKind::Transient => "transient",
            ErrorKind::Throttled => "throttled",
            ErrorKind::NotFound => "not found",
            ErrorKind::AccessDenied => "access denied",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::TooLarge => "too large",
        })
    }
}

/// A failed store call: a precondition that did not hold (an answer of the protocol), or a
/// failure of one [`ErrorKind`]. `Display` never shows a secret.
#[derive(Debug)]
pub enum StoreError {
    /// The precondition did not hold: the object exists (create-only) or changed (if-match).
    PreconditionFailed,
    /// Any other failure: its kind (never [`ErrorKind::PreconditionFailed`]; build it with
    /// [`StoreError::new`]) and what happened, without secrets.
    Failed(ErrorKind, anyhow::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::PreconditionFailed => {
                f.write_str("precondition failed (object changed or exists)")
            }
            StoreError::Failed(_, e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// An error of `kind`; [`ErrorKind::PreconditionFailed`] gives
    /// [`StoreError::PreconditionFailed`].
    pub fn new(kind: ErrorKind, error: anyhow::Error) -> StoreError {
        match kind {
            ErrorKind::PreconditionFailed => StoreError::PreconditionFailed,
            kind => StoreError::Failed(kind, error),
        }
    }

    /// What went wrong, as [`ErrorKind`] (which decides retry or not).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::PreconditionFailed => ErrorKind::PreconditionFailed,
            StoreError::Failed(kind, _) => *kind,
        }
    }

    /// Worth retrying later: the server was unreachable, timed out, answered 5xx or asked
    /// us to slow down (after the client's own retries).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }
}

/// A reading of the store's clock: what the store said its time was, and this host's clock
/// when the request was sent and when its answer came (the store read its clock in between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    /// The store's time, ms since the Unix epoch, cut down to `resolution_ms`.
    pub store_ms: u64,
    /// How coarse `store_ms` is: [`DATE_RESOLUTION_MS`] for an HTTP `Date` header, 0 for
    /// this host's own clock.
    pub resolution_ms: u64,
    /// This host's time when the request was sent, ms since the Unix epoch.
    pub sent_ms: u64,
    /// This host's time when the answer came, ms since the Unix epoch.
    pub received_ms: u64,
}

/// An HTTP `Date` header gives whole seconds.
pub const DATE_RESOLUTION_MS: u64 = 1000;

impl ClockReading {
    /// This host's clock as its own reading (offset 0).
    pub fn local() -> ClockReading {
        let now = unix_ms();
        ClockReading {
            store_ms: now,
            resolution_ms: 0,
            sent_ms: now,
            received_ms: now,
        }
    }

    /// The least and the greatest offset (the store's clock minus this host's, ms) the
    /// reading allows: the store's time was in `store_ms .. store_ms + resolution_ms` at some
    /// moment between `sent_ms` and `received_ms`.
    pub fn offset_bounds_ms(&self) -> (i64, i64) {
        let store = self.store_ms as i64;
        (
            store - self.received_ms as i64,
            store + self.resolution_ms as i64 - self.sent_ms as i64,
        )
    }
}

use crate::time::now_ms as unix_ms;

/// Checks that the store can be written: writes a small object under `key`, then deletes
/// it. A key that may read but not write fails with [`ErrorKind::AccessDenied`].
pub async fn probe<S: ObjectStore>(store: &S, key: &str) -> Result<(), StoreError> {
    store
        .put(key, b"probe".to_vec(), Precondition::None)
        .await?;
    store.delete(key).await
}

/// A bucket of objects addressed by `/`-separated keys such as `jobs/job-1/checkpoint`.
///
/// Keys are produced by this crate only (`modules/<hex>.wasm`, `jobs/<job_id>/...`), never
/// taken raw from users, so backends may assume they are made of `[A-Za-z0-9._/-]`.
#[allow(async_fn_in_trait)]
pub trait ObjectStore: Multipart + Send + Sync + 'static {
    /// Reads an object of at most [`MAX_OBJECT_BYTES`] ([`get_at_most`](ObjectStore::get_at_most)).
    /// `Ok(None)` means it does not exist; an error is never `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send {
        self.get_at_most(key, MAX_OBJECT_BYTES)
    }

    /// Reads an object whole if it has at most `max` bytes. A longer one is refused as
    /// [`ErrorKind::TooLarge`] (its size named) from its announced length before any of it
    /// is read, or else as soon as more than `max` arrived: what a read holds never passes
    /// `max` by more than one chunk, whatever the server sends. `Ok(None)` means it does not
    /// exist.
    fn get_at_most(
        &self,
        key: &str,
        max: u64,
    ) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send;

    /// Writes an object if `pre` holds, atomically; returns the new tag.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
    ) -> impl Future<Output = Result<ETag, StoreError>> + Send {
        self.put_with_note(key, bytes, pre, None)
    }

    /// [`put`](ObjectStore::put) with a note kept beside this version's bytes (S3: the user
    /// metadata `x-amz-meta-taskhost`; a directory: a hidden file beside the object),
    /// returned by [`get`](ObjectStore::get) and replaced (or removed) by the next write. The
    /// note is printable ASCII of at most [`MAX_NOTE_BYTES`]; it costs no request of its own,
    /// and it is not part of the tag or the bytes.
    fn put_with_note(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
        note: Option<String>,
    ) -> impl Future<Output = Result<ETag, StoreError>> + Send;

    /// [`put`](ObjectStore::put) that returns once the write is visible, without waiting
    /// for it to be durable: a power loss before the store's next flush may undo it (the
    /// key then holds what it held before, never a torn object), a process crash never
    /// does. For writes whose loss a power loss makes harmless (a claim: every worker that
    /// could hold it died too). The directory store makes it durable with its next group
    /// commit; S3, whose writes are durable on return, just puts.
    fn put_undoable(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
    ) -> impl Future<Output = Result<ETag, StoreError>> + Send {
        self.put(key, bytes, pre)
    }

    /// Makes what is stored under `key` durable, whoever wrote it: a reader about to act on
    /// an object another process may have just written (a result found already there, then
    /// acked as done) calls it first. S3's objects are durable once visible; the directory
    /// store flushes the key's directory (its group commit).
    fn make_durable(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = key;
        async { Ok(()) }
    }

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
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        async move {
            Ok(self
                .list_entries(prefix)
                .await?
                .into_iter()
                .map(|l| l.key)
                .collect())
        }
    }

    /// The objects under `prefix` with their sizes and last writes, in lexical order of
    /// their keys (S3: ListObjectsV2, one request per 1,000 objects).
    fn list_entries(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Listed>, StoreError>> + Send;

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

    /// Reads the store's clock from the answer to a cheap read of `key` (which need not
    /// exist). `Ok(None)`: the store does not say its time.
    fn clock(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ClockReading>, StoreError>> + Send;
}

/// Multipart uploads: one object written in parts, each its own request, put together
/// atomically at the end (S3's CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
/// ListParts, AbortMultipartUpload). Every [`ObjectStore`] has them; each backend implements
/// them in its own `multipart.rs`.
#[allow(async_fn_in_trait)]
pub trait Multipart: Send + Sync + 'static {
    /// Starts a multipart upload to `key`; returns its id. Nothing is visible under `key`
    /// until [`upload_complete`](Multipart::upload_complete).
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
