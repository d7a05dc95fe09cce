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
//! **Invariant:** no error message and no `Debug` output contains the secret key.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::create_bucket::CreateBucketError;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};

use super::{
    ClockReading, DATE_RESOLUTION_MS, ETag, ErrorKind, Listed, Object, ObjectStore, Precondition,
    StoreError, unix_ms,
};

/// Time allowed to open a TCP/TLS connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one attempt, from sending the request (body included) to the response
/// headers. Large enough for a module upload of tens of MB on a slow node.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a whole operation, retries and backoff included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts per operation (first try included) of the SDK's standard retry.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The only region R2 has. S3-compatible servers that care are mapped by their own setup.
pub const REGION: &str = "auto";

/// Where the bucket is and how to reach it.
///
/// `Debug` shows everything but the secret key.
#[derive(Clone)]
pub struct S3Config {
    /// `R2_S3_ENDPOINT_URL`, e.g. `https://<account>.r2.cloudflarestorage.com`.
    pub endpoint_url: String,
    /// `R2_BUCKET_NAME`.
    pub bucket: String,
    /// `R2_AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `R2_AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Prepended to every key, so that several deployments can share one bucket.
    /// `Some("team-a")` and `Some("team-a/")` both put keys under `team-a/`;
    /// `None` and `Some("")` mean no prefix.
    pub prefix: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint_url", &self.endpoint_url)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

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
    /// Builds the client. Makes no request: a wrong endpoint or key shows on first use
    /// (or call [`S3Store::ensure_bucket`] to check at once).
    ///
    /// Errors if the endpoint, the bucket or the access key id is empty.
    pub fn new(config: S3Config) -> anyhow::Result<S3Store> {
        let S3Config {
            endpoint_url,
            bucket,
            access_key_id,
            secret_access_key,
            prefix,
        } = config;
        anyhow::ensure!(
            !endpoint_url.trim().is_empty(),
            "the S3 endpoint URL (R2_S3_ENDPOINT_URL) is empty"
        );
        anyhow::ensure!(
            !bucket.trim().is_empty(),
            "the bucket name (R2_BUCKET_NAME) is empty"
        );
        anyhow::ensure!(
            !access_key_id.is_empty(),
            "the access key id (R2_AWS_ACCESS_KEY_ID) is empty"
        );

        let credentials =
            Credentials::new(access_key_id, secret_access_key, None, None, "taskhost");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url.clone())
            .region(Region::new(REGION))
            .force_path_style(true)
            .credentials_provider(credentials)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
                    .operation_attempt_timeout(DEFAULT_ATTEMPT_TIMEOUT)
                    .operation_timeout(DEFAULT_OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(DEFAULT_MAX_ATTEMPTS))
            .build();

        let prefix = match prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("{p}/"),
        };
        Ok(S3Store {
            client: Client::from_conf(conf),
            endpoint_url,
            bucket,
            prefix,
            bucket_seen: Default::default(),
        })
    }

    /// The bucket this store writes to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Makes sure the bucket exists, for `taskhost setup`. `Ok(true)` if this call created
    /// it, `Ok(false)` if it was there already (HeadBucket succeeds, or CreateBucket answers
    /// `BucketAlreadyOwnedByYou`). A key scoped to one bucket may not create buckets: that
    /// is fine as long as the bucket exists and the key can reach it.
    pub async fn ensure_bucket(&self) -> anyhow::Result<bool> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            self.bucket_seen.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                Ok(true)
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), CreateBucketError::BucketAlreadyOwnedByYou(_)) =>
            {
                self.bucket_seen.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(anyhow!(
                "S3 CreateBucket of bucket `{}` at {} failed: {}",
                self.bucket,
                self.endpoint_url,
                describe(&e, kind_of(&e, Asked::Plain))
            )),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The error of a request that asked nothing conditional.
    fn fail<E>(&self, op: &str, key: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.fail_as(op, key, err, kind_of(err, Asked::Plain))
    }

    fn fail_as<E>(
        &self,
        op: &str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
        kind: ErrorKind,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::new(
            kind,
            anyhow!(
                "S3 {op} of `{key}` in bucket `{}` failed: {}",
                self.bucket,
                describe(err, kind)
            ),
        )
    }

    /// Called on a 404 that may mean "no such key" or "no such bucket": errors unless the
    /// bucket exists (checked with one HeadBucket per store, then remembered).
    async fn confirm_bucket(&self, op: &str, key: &str) -> Result<(), StoreError> {
        if self.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // HeadBucket answers a missing bucket with a bare 404: NotFound.
                let kind = kind_of(&e, Asked::Plain);
                Err(StoreError::new(
                    kind,
                    anyhow!(
                        "S3 {op} of `{key}` failed: bucket `{}` is not reachable (check R2_BUCKET_NAME): {}",
                        self.bucket,
                        describe(&e, kind)
                    ),
                ))
            }
        }
    }
}

/// HTTP status of the server's answer, if there was one.
fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// What a request asked of the object, which decides what some answers mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Nothing conditional.
    Plain,
    /// A write `If-None-Match: *` (create-only).
    IfNoneMatch,
    /// A write `If-Match: <etag>`.
    IfMatch,
}

/// The kind of an S3 error answer, from its HTTP status and error code alone (HEAD answers
/// have no body, hence no code). A pure function: the one place the mapping is decided.
///
/// - 412, and 409 `ConditionalRequestConflict` (the loser of two concurrent conditional
///   writes), to a conditional write; 404 `NoSuchKey` to an `If-Match` write (the object it
///   was conditional on is gone): the precondition failed.
/// - 429, and `SlowDown` (503 on S3): throttled. 408, 400 `RequestTimeout`, 409
///   `ConditionalRequestConflict` / `OperationAborted` otherwise, and 5xx but 501: transient.
/// - 404 `NoSuchBucket`, and a HEAD's 404 (no body: no code, or the SDK's `NotFound`; a
///   HeadBucket's, as an object's HEAD 404 is handled before this): not found, a missing
///   bucket.
/// - 401 and 403: access denied. Any other 4xx, 501 (the server lacks the feature), a
///   redirect: bad request. A 2xx here is an answer that broke off: transient.
pub(crate) fn classify(status: u16, code: Option<&str>, asked: Asked) -> ErrorKind {
    let conditional = asked != Asked::Plain;
    match (status, code) {
        (412, _) if conditional => ErrorKind::PreconditionFailed,
        (409, Some("ConditionalRequestConflict")) if conditional => ErrorKind::PreconditionFailed,
        (404, Some("NoSuchKey")) if asked == Asked::IfMatch => ErrorKind::PreconditionFailed,
        (429, _) | (_, Some("SlowDown")) => ErrorKind::Throttled,
        (408, _) | (400, Some("RequestTimeout")) => ErrorKind::Transient,
        (409, Some("ConditionalRequestConflict" | "OperationAborted")) => ErrorKind::Transient,
        (404, Some("NoSuchBucket" | "NotFound") | None) => ErrorKind::NotFound,
        (401 | 403, _) => ErrorKind::AccessDenied,
        (501, _) => ErrorKind::BadRequest,
        (500..=599, _) => ErrorKind::Transient,
        (200..=299, _) => ErrorKind::Transient,
        _ => ErrorKind::BadRequest,
    }
}

/// The kind of an SDK error: [`classify`] when the server answered, else transient (a
/// timeout, a connection that failed or broke off), or bad request (a request the SDK
/// could not build).
fn kind_of<E>(err: &SdkError<E, HttpResponse>, asked: Asked) -> ErrorKind
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ConstructionFailure(_) => ErrorKind::BadRequest,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
        _ => match status(err) {
            Some(status) => classify(status, err.code(), asked),
            None => ErrorKind::Transient,
        },
    }
}

/// One line that says what went wrong, its kind, and what to check.
/// Never contains credentials: the SDK's errors carry none.
fn describe<E>(err: &SdkError<E, HttpResponse>, kind: ErrorKind) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let class = if kind.is_transient() {
        format!("{kind}, retries exhausted")
    } else {
        kind.to_string()
    };
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            // HEAD answers have no body, hence no code.
            let code = se.err().code().map(|c| format!(" {c}")).unwrap_or_default();
            let message = se
                .err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let hint = match (kind, code.trim()) {
                (_, "RequestTimeTooSkewed") => " (check this node's clock)",
                (ErrorKind::AccessDenied, _) => {
                    " (check R2_AWS_ACCESS_KEY_ID and R2_AWS_SECRET_ACCESS_KEY, and what the key may do)"
                }
                (ErrorKind::NotFound, _) => " (check R2_BUCKET_NAME)",
                _ => "",
            };
            format!("HTTP {status}{code}{message}{hint} [{class}]")
        }
        SdkError::TimeoutError(_) => format!("timed out [{class}]"),
        SdkError::DispatchFailure(_) => {
            format!(
                "could not reach the server: {} [{class}]",
                DisplayErrorContext(err)
            )
        }
        _ => format!("{} [{class}]", DisplayErrorContext(err)),
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

/// The body of a GetObject, in one copy (the chunks straight into the vector).
async fn body(
    full: &str,
    resp: Box<aws_sdk_s3::operation::get_object::GetObjectOutput>,
) -> Result<Vec<u8>, StoreError> {
    match resp.body.collect().await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) => Err(StoreError::new(
            ErrorKind::Transient,
            anyhow::Error::new(e).context(format!(
                "S3 GetObject of `{full}`: reading the body failed [transient]"
            )),
        )),
    }
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

/// What one request saw of time: this host's clock when its last attempt was sent and when
/// the answer came, and the answer's `Date` header.
#[derive(Debug, Default)]
struct Seen {
    sent_ms: u64,
    received_ms: u64,
    date: Option<String>,
}

/// An interceptor for one request that records what it saw of time ([`Seen`]).
#[derive(Clone, Debug, Default)]
struct ReadDate(Arc<Mutex<Seen>>);

impl ReadDate {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reading, if an answer came with a `Date` header the server's clock can be read from.
    fn reading(&self) -> Option<ClockReading> {
        let seen = self.seen();
        let date =
            DateTime::from_str(seen.date.as_deref()?.trim(), DateTimeFormat::HttpDate).ok()?;
        Some(ClockReading {
            store_ms: u64::try_from(date.secs()).ok()?.checked_mul(1000)?,
            resolution_ms: DATE_RESOLUTION_MS,
            sent_ms: seen.sent_ms,
            received_ms: seen.received_ms,
        })
    }
}

impl Intercept for ReadDate {
    fn name(&self) -> &'static str {
        "taskhost::ReadDate"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.seen().sent_ms = unix_ms();
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut seen = self.seen();
        seen.received_ms = unix_ms();
        seen.date = context.response().headers().get("date").map(str::to_owned);
        Ok(())
    }
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let full = self.full_key(key);
        let Fetched::Found(resp) = self.get_object(&full, None).await? else {
            return Ok(None);
        };
        let etag = etag_of("GetObject", &full, resp.e_tag())?;
        let bytes = body(&full, resp).await?;
        Ok(Some(Object { bytes, etag }))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, pre: Precondition) -> Result<ETag, StoreError> {
        let full = self.full_key(key);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes));
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
        let mut bytes = body(&full, resp).await?;
        // A server that ignores Range sends the whole object.
        if !ranged && offset > 0 {
            bytes = bytes.get(offset as usize..).unwrap_or_default().to_vec();
        }
        bytes.truncate(len as usize);
        Ok(Some(bytes))
    }

    async fn upload_start(&self, key: &str) -> Result<String, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.fail("CreateMultipartUpload", &full, &e))?;
        match resp.upload_id() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(StoreError::new(
                ErrorKind::BadRequest,
                anyhow!("S3 CreateMultipartUpload of `{full}`: the response has no upload id"),
            )),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> Result<String, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .part_number(number as i32)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.fail("UploadPart", &full, &e))?;
        Ok(etag_of("UploadPart", &full, resp.e_tag())?.0)
    }

    async fn upload_complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> Result<ETag, StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let full = self.full_key(key);
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .e_tag(tag)
                    .build()
            })
            .collect();
        let resp = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail("CompleteMultipartUpload", &full, &e))?;
        etag_of("CompleteMultipartUpload", &full, resp.e_tag())
    }

    async fn upload_exists(&self, key: &str, upload: &str) -> Result<bool, StoreError> {
        let full = self.full_key(key);
        match self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .max_parts(1)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // The server answered 200 with a body the SDK could not read (moto's ListParts
            // does): the upload exists all the same.
            Err(e) if status(&e) == Some(200) => Ok(true),
            // NoSuchUpload. (A missing bucket is 404 too, but then the checkpoint's own
            // writes fail as well.)
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.fail("ListParts", &full, &e)),
        }
    }

    async fn upload_abort(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        let full = self.full_key(key);
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.fail("AbortMultipartUpload", &full, &e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_status_and_code() {
        use Asked::{IfMatch, IfNoneMatch, Plain};
        use ErrorKind::*;
        let table: &[(u16, Option<&str>, Asked, ErrorKind)] = &[
            // Conditional writes that lost.
            (
                412,
                Some("PreconditionFailed"),
                IfNoneMatch,
                PreconditionFailed,
            ),
            (412, Some("PreconditionFailed"), IfMatch, PreconditionFailed),
            (412, None, IfMatch, PreconditionFailed),
            (
                409,
                Some("ConditionalRequestConflict"),
                IfNoneMatch,
                PreconditionFailed,
            ),
            (
                409,
                Some("ConditionalRequestConflict"),
                IfMatch,
                PreconditionFailed,
            ),
            (404, Some("NoSuchKey"), IfMatch, PreconditionFailed),
            // ... and the same answers to requests that asked nothing conditional.
            (412, Some("PreconditionFailed"), Plain, BadRequest),
            (409, Some("ConditionalRequestConflict"), Plain, Transient),
            (404, Some("NoSuchKey"), Plain, BadRequest),
            (404, Some("NoSuchKey"), IfNoneMatch, BadRequest),
            // A missing bucket (HeadBucket's answer has no body) is never "absent".
            (404, Some("NoSuchBucket"), Plain, NotFound),
            (404, Some("NoSuchBucket"), IfMatch, NotFound),
            (404, None, Plain, NotFound),
            (404, Some("NotFound"), Plain, NotFound),
            (404, Some("NoSuchUpload"), Plain, BadRequest),
            // Slow down.
            (429, None, Plain, Throttled),
            (429, Some("TooManyRequests"), IfMatch, Throttled),
            (503, Some("SlowDown"), Plain, Throttled),
            (503, Some("SlowDown"), IfNoneMatch, Throttled),
            // Server trouble and timeouts.
            (500, Some("InternalError"), Plain, Transient),
            (502, None, Plain, Transient),
            (503, Some("ServiceUnavailable"), Plain, Transient),
            (503, None, IfMatch, Transient),
            (504, None, Plain, Transient),
            (408, None, Plain, Transient),
            (400, Some("RequestTimeout"), Plain, Transient),
            (409, Some("OperationAborted"), Plain, Transient),
            (200, None, Plain, Transient),
            // Permissions.
            (403, Some("AccessDenied"), Plain, AccessDenied),
            (
                403,
                Some("SignatureDoesNotMatch"),
                IfNoneMatch,
                AccessDenied,
            ),
            (403, Some("InvalidAccessKeyId"), Plain, AccessDenied),
            (403, None, Plain, AccessDenied),
            (401, Some("Unauthorized"), Plain, AccessDenied),
            // Everything else would fail again the same way.
            (400, Some("InvalidArgument"), Plain, BadRequest),
            (400, Some("EntityTooSmall"), Plain, BadRequest),
            (409, Some("BucketNotEmpty"), Plain, BadRequest),
            (411, None, Plain, BadRequest),
            (416, Some("InvalidRange"), Plain, BadRequest),
            (501, Some("NotImplemented"), IfNoneMatch, BadRequest),
            (301, Some("PermanentRedirect"), Plain, BadRequest),
        ];
        for &(status, code, asked, want) in table {
            assert_eq!(
                classify(status, code, asked),
                want,
                "{status} {code:?} to {asked:?}"
            );
        }
    }
}
