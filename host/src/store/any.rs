//! The store chosen by configuration: R2/S3 when a bucket is configured, else a directory;
//! either one observed ([`AnyStore::observed`]): its errors counted by kind in the metrics,
//! its answers reported to the readiness probe.

use std::sync::Arc;

use super::dir::DirStore;
use super::s3::S3Store;
use super::{ClockReading, ETag, Listed, Multipart, Object, ObjectStore, Precondition, StoreError};
use crate::observe::{Health, Metrics};

/// One [`ObjectStore`] of either backend, chosen at run time. Cheap to clone.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// A local directory.
    Dir(DirStore),
    /// An S3 bucket (R2 in production).
    S3(S3Store),
    /// A backend whose calls are observed.
    Observed(Arc<Observed>),
}

/// A backend and what observes its calls.
#[derive(Debug)]
pub struct Observed {
    backend: Backend,
    metrics: Arc<Metrics>,
    health: Option<Arc<Health>>,
}

#[derive(Debug)]
enum Backend {
    Dir(DirStore),
    S3(S3Store),
}

impl Observed {
    /// A call starts: the probe checks a store whose calls wait too long
    /// ([`crate::observe::health::next_check`]).
    fn calling(&self) {
        if let Some(h) = &self.health {
            h.store_called();
        }
    }

    /// Counts an error by kind; any answer (a failed precondition too) tells the probe the
    /// store answers.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(e) if e.kind() != super::ErrorKind::PreconditionFailed => {
                self.metrics.store_error(e.kind())
            }
            _ => {
                if let Some(h) = &self.health {
                    h.store_answered();
                }
            }
        }
        result
    }
}

impl AnyStore {
    /// Whether durable writes share flushes (the directory store's group commit): then a
    /// job's slot is freed before its outputs are made durable, so that they can share one
    /// (docs/design.md section 5, "Receiving").
    pub fn group_commits(&self) -> bool {
        self.dir().is_some()
    }

    /// The directory store this is, if it is one.
    pub fn dir(&self) -> Option<&DirStore> {
        match self {
            AnyStore::Dir(s) => Some(s),
            AnyStore::S3(_) => None,
            AnyStore::Observed(o) => match &o.backend {
                Backend::Dir(s) => Some(s),
                Backend::S3(_) => None,
            },
        }
    }

    /// This store, each call's error counted by kind in `metrics` and each answer reported
    /// to `health`.
    pub fn observed(self, metrics: Arc<Metrics>, health: Option<Arc<Health>>) -> AnyStore {
        let backend = match self {
            AnyStore::Dir(s) => Backend::Dir(s),
            AnyStore::S3(s) => Backend::S3(s),
            AnyStore::Observed(o) => match &o.backend {
                Backend::Dir(s) => Backend::Dir(s.clone()),
                Backend::S3(s) => Backend::S3(s.clone()),
            },
        };
        AnyStore::Observed(Arc::new(Observed {
            backend,
            metrics,
            health,
        }))
    }
}

/// `$call` on whichever backend `$store` is, with `$s` bound to it.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            AnyStore::Dir($s) => $call,
            AnyStore::S3($s) => $call,
            AnyStore::Observed(o) => {
                o.calling();
                o.note(match &o.backend {
                    Backend::Dir($s) => $call,
                    Backend::S3($s) => $call,
                })
            }
        }
    };
}

impl From<DirStore> for AnyStore {
    fn from(s: DirStore) -> Self {
        AnyStore::Dir(s)
    }
}

impl From<S3Store> for AnyStore {
    fn from(s: S3Store) -> Self {
        AnyStore::S3(s)
    }
}

impl ObjectStore for AnyStore {
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        each!(self, s => s.get_at_most(key, max).await)
    }

    async fn put_with_note(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
        note: Option<String>,
    ) -> Result<ETag, StoreError> {
        each!(self, s => s.put_with_note(key, bytes, pre, note).await)
    }

    async fn put_undoable(
        &self,
        key: &str,
        bytes: Vec<u8>,
        pre: Precondition,
    ) -> Result<ETag, StoreError> {
        each!(self, s => s.put_undoable(key, bytes, pre).await)
    }

    async fn make_durable(&self, key: &str) -> Result<(), StoreError> {
        each!(self, s => s.make_durable(key).await)
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        each!(self, s => s.head(key).await)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        each!(self, s => s.delete(key).await)
    }

    async fn list_entries(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        each!(self, s => s.list_entries(prefix).await)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.size(key).await)
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => s.get_range(key, offset, len).await)
    }

    async fn clock(&self, key: &str) -> Result<Option<ClockReading>, StoreError> {
        each!(self, s => s.clock(key).await)
    }
}

impl Multipart for AnyStore {
    async fn upload_start(&self, key: &str) -> Result<String, StoreError> {
        each!(self, s => s.upload_start(key).await)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> Result<String, StoreError> {
        each!(self, s => s.upload_part(key, upload, number, bytes).await)
    }

    async fn upload_complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> Result<ETag, StoreError> {
        each!(self, s => s.upload_complete(key, upload, parts).await)
    }

    async fn upload_exists(&self, key: &str, upload: &str) -> Result<bool, StoreError> {
        each!(self, s => s.upload_exists(key, upload).await)
    }

    async fn upload_abort(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        each!(self, s => s.upload_abort(key, upload).await)
    }
}
