//! [`ObjectStore`] on Cloudflare R2, or any S3 server, through the S3 API.
//!
//! Configuration (environment names of the guide's `worker.env`):
//!
//! | [`S3Config`] field   | environment                |
//! |----------------------|----------------------------|
//! | `endpoint_url`       | `R2_S3_ENDPOINT_URL`       |
//! | `bucket`             | `R2_BUCKET_NAME`           |
//! | `access_key_id`      | `R2_AWS_ACCESS_KEY_ID`     |
//! | `secret_access_key`  | `R2_AWS_SECRET_ACCESS_KEY` |
//! | `prefix` (optional)  | prepended to every key     |
//!
//! How the trait maps onto S3:
//! - [`Precondition::Absent`] sends `If-None-Match: *`, [`Precondition::Matches`] sends
//!   `If-Match: <etag>`. HTTP 412 becomes [`StoreError::PreconditionFailed`], and so does
//!   409 `ConditionalRequestConflict` (R2 and S3 answer it to the loser of two concurrent
//!   conditional writes) and 404 `NoSuchKey` to an `If-Match` write (the object it was
//!   conditional on is gone).
//! - `get` maps 404 `NoSuchKey` to `Ok(None)`; `exists` uses HEAD; `list` pages through
//!   ListObjectsV2. A missing bucket is an error ([`ErrorKind::NotFound`]), never `None` /
//!   `false`.
//! - Every other failure gets its [`ErrorKind`] from the answer (`classify`: the HTTP status
//!   and the S3 error code) or, without one, from the SDK's error (a timeout or a failed
//!   connection is transient).
//! - [`ObjectStore::clock`] reads the `Date` header (whole seconds) of a HEAD's answer.
//! - Tags are the server's `ETag` header exactly as sent (quotes included): S3 and R2
//!   accept it back verbatim in `If-Match`. S3 ETags of single-part uploads are the MD5
//!   of the bytes, so rewriting identical bytes keeps the tag: the checkpoint layer adds a
//!   nonce so that every write differs.
//!
//! Transport: region `auto`, path-style addressing, static credentials, checksums only
//! where an operation requires them (the SDK's default CRC32 checksums upset S3-compatible
//! servers), timeouts [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_ATTEMPT_TIMEOUT`] and
//! [`DEFAULT_OPERATION_TIMEOUT`], and the SDK's standard retry ([`DEFAULT_MAX_ATTEMPTS`]
//! attempts with jittered exponential backoff for 5xx, throttling, timeouts and connection
//! errors; 4xx answers, 412 included, are never retried).
//!
//! **Caveat (retries and conditional writes):** if a conditional write lands but its
//! response is lost (connection reset, timeout), the SDK's retry of the same request finds
//! its own object and gets 412, so the caller sees `PreconditionFailed` for a write that
//! happened. That errs on the safe side of fencing (a worker stops and the job is resumed
//! elsewhere from the checkpoint it just wrote); a caller that must tell the two apart can
//! read the object back and compare its bytes (the checkpoint nonce makes them unique).
//!
//! `client.rs`: the configuration, the client and the bucket, and the interceptor that reads
//! the `Date` header; `mod.rs`: the objects (conditional writes, reads, listing); `errors.rs`:
//! error classification; `multipart.rs`: uploads.
//!
//! **Invariant:** no error message and no `Debug` output contains the secret key.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::anyhow;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::{
    ClockReading, DATE_RESOLUTION_MS, ETag, ErrorKind, Listed, Object, ObjectStore, Precondition,
    StoreError, unix_ms,
};

mod client;
mod errors;
mod multipart;

use client::ReadDate;
pub use client::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_OPERATION_TIMEOUT, REGION, S3Config,
};
pub(crate) use errors::Asked;
use errors::{kind_of, status};

/// An [`ObjectStore`] on one S3 bucket (R2 in production, moto in tests).
///
/// Cheap to clone: clones share the HTTP connection pool.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    endpoint_url: String,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    /// Set once the bucket is known to exist, so that a 404 without an error code (HEAD has
    /// no body) can be told from a missing bucket with one request, once.
    bucket_seen: Arc<AtomicBool>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint_url", &self.endpoint_url)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn etag_of(op: &str, key: &str, etag: Option<&str>) -> Result<ETag, StoreError> {
    match etag {
        Some(t) if !t.is_empty() => Ok(ETag(t.to_string())),
        _ => Err(StoreError::new(
            ErrorKind::BadRequest,
            anyhow!("S3 {op} of `{key}`: the response has no ETag"),
        )),
    }
}

/// What a GetObject found.
enum Fetched {
    Found(Box<aws_sdk_s3::operation::get_object::GetObjectOutput>),
    Missing,
    /// The range starts at or past the object's end (416; an empty object has no
    /// satisfiable range at all).
    PastEnd,
}

/// Most bytes a GetObject's body is given room for before they arrive.
const PREALLOCATE_MAX: u64 = 64 << 20;

/// What a GetObject's body was asked for: the object whole (bounded by what the read takes)
/// or a range of it.
#[derive(Clone, Copy)]
enum Wanted {
    Whole(u64),
    Range(u64),
}

/// The body of a GetObject, of at most the bytes `wanted`: a longer answer (an object larger
/// than the read takes, a server that ignored `Range` and sent the whole object, or one
/// that sends more than it announced) is refused as `TooLarge`, from its
/// `Content-Length` before any of it is read, else as soon as more arrived, so what is
/// held never passes the bound by more than one chunk.
async fn body(
    full: &str,
    resp: Box<aws_sdk_s3::operation::get_object::GetObjectOutput>,
    wanted: Wanted,
) -> Result<Vec<u8>, StoreError> {
    let max = match wanted {
        Wanted::Whole(max) | Wanted::Range(max) => max,
    };
    let too_long = |len: u64| {
        let why = match wanted {
            Wanted::Whole(_) => format!("more than the {max} a read of it may hold"),
            Wanted::Range(_) => {
                format!("more than the {max} asked for (does the server ignore Range?)")
            }
        };
        StoreError::new(
            ErrorKind::TooLarge,
            anyhow!("S3 GetObject of `{full}`: the answer is {len} bytes, {why} [too large]"),
        )
    };
    let announced = resp.content_length().map_or(0, |n| n.max(0) as u64);
    if announced > max {
        return Err(too_long(announced));
    }
    let broke_off = |e| {
        StoreError::new(
            ErrorKind::Transient,
            anyhow::Error::new(e).context(format!(
                "S3 GetObject of `{full}`: reading the body failed [transient]"
            )),
        )
    };
    let mut stream = resp.body;
    // Room for what was announced, but never more than asked, nor on a header's word alone
    // more than `PREALLOCATE_MAX`.
    let room = announced.min(max).min(PREALLOCATE_MAX);
    let mut out = Vec::with_capacity(room as usize);
    while let Some(chunk) = stream.try_next().await.map_err(broke_off)? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > max {
            return Err(too_long(out.len() as u64));
        }
    }
    Ok(out)
}

impl S3Store {
    /// GetObject of `full`, of `range` if given; a 404 is `Missing` once the bucket is known
    /// to exist.
    async fn get_object(&self, full: &str, range: Option<String>) -> Result<Fetched, StoreError> {
        let req = self.client.get_object().bucket(&self.bucket).key(full);
        match req.set_range(range).send().await {
            Ok(resp) => Ok(Fetched::Found(Box::new(resp))),
            Err(e) if status(&e) == Some(416) => Ok(Fetched::PastEnd),
            Err(e) if status(&e) == Some(404) => match e.code() {
                Some("NoSuchKey") => Ok(Fetched::Missing),
                None => {
                    self.confirm_bucket("GetObject", full).await?;
                    Ok(Fetched::Missing)
                }
                Some(_) => Err(self.fail("GetObject", full, &e)),
            },
            Err(e) => Err(self.fail("GetObject", full, &e)),
        }
    }

    /// HeadObject of `full`; `None` when there is no such object (and the bucket exists).
    async fn head_object(
        &self,
        full: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(resp) => Ok(Some(resp)),
            Err(e) if status(&e) == Some(404) => match e.code() {
                Some("NoSuchBucket") => Err(self.fail("HeadObject", full, &e)),
                _ => {
                    self.confirm_bucket("HeadObject", full).await?;
                    Ok(None)
                }
            },
            Err(e) => Err(self.fail("HeadObject", full, &e)),
        }
    }
}

/// The user metadata that holds an object's note (`x-amz-meta-taskhost`).
const NOTE_METADATA: &str = "taskhost";

impl ObjectStore for S3Store {
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let full = self.full_key(key);
        let Fetched::Found(resp) = self.get_object(&full, None).await? else {
            return Ok(None);
        };
        let etag = etag_of("GetObject", &full, resp.e_tag())?;
        let note = resp.metadata().and_then(|m| m.get(NOTE_METADATA)).cloned();
        let bytes = body(&full, resp, Wanted::Whole(max)).await?;
        Ok(Some(Object { bytes, etag, note }))
    }

    async fn put_with_note(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
        note: Option<String>,
    ) -> Result<ETag, StoreError> {
        let full = self.full_key(key);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes));
        if let Some(note) = note {
            req = req.metadata(NOTE_METADATA, note);
        }
        req = match &pre {
            Precondition::None => req,
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(tag) => req.if_match(tag.0.clone()),
        };
        match req.send().await {
            Ok(resp) => etag_of("PutObject", &full, resp.e_tag()),
            Err(e) => {
                let asked = match pre {
                    Precondition::None => Asked::Plain,
                    Precondition::Absent => Asked::IfNoneMatch,
                    Precondition::Matches(_) => Asked::IfMatch,
                };
                let kind = kind_of(&e, asked);
                if kind == ErrorKind::PreconditionFailed {
                    tracing::debug!(key = %full, precondition = ?pre, "S3 conditional write lost");
                }
                Err(self.fail_as("PutObject", &full, &e, kind))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        let full = self.full_key(key);
        match self.head_object(&full).await? {
            Some(resp) => Ok(Some(etag_of("HeadObject", &full, resp.e_tag())?)),
            None => Ok(None),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            // S3 answers 204 whether or not the object existed.
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail("DeleteObject", &full, &e)),
        }
    }

    async fn list_entries(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let full = self.full_key(prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.fail("ListObjectsV2", &format!("{full}*"), &e))?;
            keys.extend(resp.contents().iter().filter_map(|o| {
                Some(Listed {
                    key: o.key()?.strip_prefix(self.prefix.as_str())?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified_ms: o
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0)
                        .max(0) as u64,
                })
            }));
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(keys)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let full = self.full_key(key);
        let resp = self.head_object(&full).await?;
        Ok(resp.map(|r| r.content_length().unwrap_or(0).max(0) as u64))
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if len == 0 {
            return Ok(self.size(key).await?.map(|_| Vec::new()));
        }
        let full = self.full_key(key);
        let last = offset.saturating_add(len - 1);
        let resp = match self
            .get_object(&full, Some(format!("bytes={offset}-{last}")))
            .await?
        {
            Fetched::Found(resp) => resp,
            Fetched::Missing => return Ok(None),
            Fetched::PastEnd => return Ok(Some(Vec::new())),
        };
        let ranged = resp.content_range.is_some();
        // More than asked is refused (a server that ignores Range sends the whole object:
        // a multi-GB input would be held whole); an unranged answer within it is the whole
        // object, which starts at 0.
        let mut bytes = body(&full, resp, Wanted::Range(len)).await?;
        if !ranged && offset > 0 {
            bytes = bytes.get(offset as usize..).unwrap_or_default().to_vec();
        }
        Ok(Some(bytes))
    }

    /// A HeadObject of `key`: any answer (a 404 too) carries the server's `Date`.
    async fn clock(&self, key: &str) -> Result<Option<ClockReading>, StoreError> {
        let full = self.full_key(key);
        let read = ReadDate::default();
        let answer = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .customize()
            .interceptor(read.clone())
            .send()
            .await;
        match answer {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(self.fail("HeadObject", &full, &e)),
        }
        Ok(read.reading())
    }
}
