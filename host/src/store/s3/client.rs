//! The S3 client: configuration, transport settings, the bucket, the interceptor that bounds
//! the answers the SDK reads whole (`BoundedAnswers`) and the one that reads the `Date`
//! header of an answer (the store's clock).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeDeserializationInterceptorContextRef,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, SdkError};
use aws_sdk_s3::operation::create_bucket::CreateBucketError;
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat, SdkBody};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};

use super::{ClockReading, DATE_RESOLUTION_MS, unix_ms};

use super::S3Store;
use super::errors::{Asked, describe, kind_of};

/// Time allowed to open a TCP/TLS connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one attempt, from sending the request (body included) to the response
/// headers. Large enough for a module upload of tens of MB on a slow node.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a whole operation, retries and backoff included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts per operation (first try included) of the SDK's standard retry.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The most bytes of an answer the SDK reads whole (an error's body, a listing's page, a
/// multipart upload's part list): a page of 1,000 keys of 1 KiB each is about 1.3 MB. A
/// longer answer fails once this much arrived, as [`super::ErrorKind::TooLarge`]; an
/// object's bytes (a GetObject that succeeded) are streamed and bounded by their reader.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;
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
            .interceptor(BoundedAnswers)
            .retry_classifier(NoRetryOfTooLong)
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
}

/// What one request saw of time: this host's clock when its last attempt was sent and when
/// the answer came, and the answer's `Date` header.
#[derive(Debug, Default)]
struct Seen {
    sent_ms: u64,
    received_ms: u64,
    date: Option<String>,
}

/// Bounds every answer the SDK reads whole to [`MAX_ANSWER_BYTES`]: a sick server or proxy
/// that sends an endless error body or listing would otherwise have the SDK collect it
/// until the attempt's timeout, in memory. The one answer it leaves alone is a GetObject's
/// success, whose body is the object, streamed to a reader that bounds it (`body` in
/// `mod.rs`).
#[derive(Debug)]
struct BoundedAnswers;

impl Intercept for BoundedAnswers {
    fn name(&self) -> &'static str {
        "taskhost::BoundedAnswers"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let object = cfg
            .load::<Metadata>()
            .is_some_and(|m| m.name() == "GetObject");
        let response = context.response_mut();
        if object && response.status().is_success() {
            return Ok(());
        }
        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
        *response.body_mut() =
            body.map(|b| SdkBody::from_body_1_x(http_body_util::Limited::new(b, MAX_ANSWER_BYTES)));
        Ok(())
    }
}

/// An answer cut by [`BoundedAnswers`] is not retried: the SDK counts an answer it could not
/// read as transient, but the same server sends the same answer again.
#[derive(Debug)]
struct NoRetryOfTooLong;

impl ClassifyRetry for NoRetryOfTooLong {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(e)) if super::errors::answer_too_long(e) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "taskhost::NoRetryOfTooLong"
    }

    fn priority(&self) -> RetryClassifierPriority {
        // After the SDK's own, which call an unreadable answer transient: this one has the
        // last word.
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// An interceptor for one request that records what it saw of time ([`Seen`]).
#[derive(Clone, Debug, Default)]
pub(super) struct ReadDate(Arc<Mutex<Seen>>);

impl ReadDate {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reading, if an answer came with a `Date` header the server's clock can be read from.
    pub(super) fn reading(&self) -> Option<ClockReading> {
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
