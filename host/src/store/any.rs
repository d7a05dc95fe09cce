//! The store chosen by configuration: R2/S3 when a bucket is configured, else a directory.

use super::dir::DirStore;
use super::s3::S3Store;
use super::{ETag, Object, ObjectStore, Precondition, StoreError};

#[derive(Clone, Debug)]
pub enum AnyStore {
    Dir(DirStore),
    S3(S3Store),
}

impl ObjectStore for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.get(key).await,
            AnyStore::S3(s) => s.get(key).await,
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, pre: Precondition) -> Result<ETag, StoreError> {
        match self {
            AnyStore::Dir(s) => s.put(key, bytes, pre).await,
            AnyStore::S3(s) => s.put(key, bytes, pre).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.head(key).await,
            AnyStore::S3(s) => s.head(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Dir(s) => s.delete(key).await,
            AnyStore::S3(s) => s.delete(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.list(prefix).await,
            AnyStore::S3(s) => s.list(prefix).await,
        }
    }
}
