//! Error classification: each failed request gets its [`ErrorKind`] from the answer (the
//! HTTP status and the S3 error code, `classify`) or, without one, from the SDK's error.

use std::sync::atomic::Ordering;

use anyhow::anyhow;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::{ErrorKind, StoreError};

use super::S3Store;

impl S3Store {
    /// The error of a request that asked nothing conditional.
    pub(super) fn fail<E>(&self, op: &str, key: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.fail_as(op, key, err, kind_of(err, Asked::Plain))
    }

    pub(super) fn fail_as<E>(
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
    pub(super) async fn confirm_bucket(&self, op: &str, key: &str) -> Result<(), StoreError> {
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
pub(super) fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
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
pub(super) fn kind_of<E>(err: &SdkError<E, HttpResponse>, asked: Asked) -> ErrorKind
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if answer_too_long(err) {
        return ErrorKind::TooLarge;
    }
    match err {
        SdkError::ConstructionFailure(_) => ErrorKind::BadRequest,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
        _ => match status(err) {
            Some(status) => classify(status, err.code(), asked),
            None => ErrorKind::Transient,
        },
    }
}

/// Whether `err` is an answer cut at [`super::client::MAX_ANSWER_BYTES`] (`BoundedAnswers`).
pub(super) fn answer_too_long(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(err);
    while let Some(cause) = e {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        e = cause.source();
    }
    false
}

/// One line that says what went wrong, its kind, and what to check.
/// Never contains credentials: the SDK's errors carry none.
pub(super) fn describe<E>(err: &SdkError<E, HttpResponse>, kind: ErrorKind) -> String
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
        _ if answer_too_long(err) => format!(
            "the answer is longer than the {} bytes this client reads whole (a sick server or \
             proxy?) [{class}]",
            super::client::MAX_ANSWER_BYTES
        ),
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
