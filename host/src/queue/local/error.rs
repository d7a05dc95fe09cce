//! The embedded queue's errors: [`LocalQueueError`] (what callers see) and `Fail` (an
//! internal step's failure, before it is labelled with the operation).

use std::fmt;

use rusqlite::ErrorCode;

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Why an internal step failed, before it is labelled with the operation.
#[derive(Debug)]
pub(super) enum Fail {
    Sql(Box<rusqlite::Error>),
    NotFound(String),
    Invalid(String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(Box::new(e))
    }
}

impl Fail {
    pub(super) fn into_error(self, operation: &'static str, resource: &str) -> LocalQueueError {
        let (kind, detail, source) = match self {
            Fail::Sql(e) => {
                let kind = if is_busy(&e) {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Storage
                };
                (kind, e.to_string(), Some(e))
            }
            Fail::NotFound(d) => (ErrorKind::NotFound, d, None),
            Fail::Invalid(d) => (ErrorKind::Invalid, d, None),
        };
        LocalQueueError {
            operation,
            resource: resource.to_string(),
            detail,
            kind,
            source,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    NotFound,
    Invalid,
    Transient,
    Storage,
}

/// A failed local-queue operation: which operation, on which resource, and why.
///
/// `Display` is one line: ``local queue <operation> `<resource>`: <detail>``; the SQLite
/// error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct LocalQueueError {
    operation: &'static str,
    resource: String,
    detail: String,
    kind: ErrorKind,
    source: Option<Box<rusqlite::Error>>,
}

impl LocalQueueError {
    /// The operation that failed (`open`, `publish`, `pull`...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The topic, subscription or file concerned.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The topic or subscription (or one it refers to) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// A setting or id was refused, or the file is not a queue this build can use.
    pub fn is_invalid(&self) -> bool {
        self.kind == ErrorKind::Invalid
    }

    /// Worth retrying: another connection held the write lock longer than [`BUSY_TIMEOUT`](super::BUSY_TIMEOUT).
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for LocalQueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource.is_empty() {
            write!(f, "local queue {}: {}", self.operation, self.detail)
        } else {
            write!(
                f,
                "local queue {} `{}`: {}",
                self.operation, self.resource, self.detail
            )
        }
    }
}

impl std::error::Error for LocalQueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
