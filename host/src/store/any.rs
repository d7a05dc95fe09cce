//! The store chosen by configuration: R2/S3 when a bucket is configured, else a directory.

use super::dir::DirStore;
use super::s3::S3Store;
use super::{ClockReading, ETag, Listed, Object, ObjectStore, Precondition, StoreError};

#[derive(Clone, Debug)]
pub enum AnyStore {
    Dir(DirStore),
    S3(S3Store),
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

    async fn list_entries(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.list_entries(prefix).await,
            AnyStore::S3(s) => s.list_entries(prefix).await,
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.size(key).await,
            AnyStore::S3(s) => s.size(key).await,
        }
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.get_range(key, offset, len).await,
            AnyStore::S3(s) => s.get_range(key, offset, len).await,
        }
    }

    async fn upload_start(&self, key: &str) -> Result<String, StoreError> {
        match self {
            AnyStore::Dir(s) => s.upload_start(key).await,
            AnyStore::S3(s) => s.upload_start(key).await,
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> Result<String, StoreError> {
        match self {
            AnyStore::Dir(s) => s.upload_part(key, upload, number, bytes).await,
            AnyStore::S3(s) => s.upload_part(key, upload, number, bytes).await,
        }
    }

    async fn upload_complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> Result<ETag, StoreError> {
        match self {
            AnyStore::Dir(s) => s.upload_complete(key, upload, parts).await,
            AnyStore::S3(s) => s.upload_complete(key, upload, parts).await,
        }
    }

    async fn upload_exists(&self, key: &str, upload: &str) -> Result<bool, StoreError> {
        match self {
            AnyStore::Dir(s) => s.upload_exists(key, upload).await,
            AnyStore::S3(s) => s.upload_exists(key, upload).await,
        }
    }

    async fn upload_abort(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Dir(s) => s.upload_abort(key, upload).await,
            AnyStore::S3(s) => s.upload_abort(key, upload).await,
        }
    }

    async fn clock(&self, key: &str) -> Result<Option<ClockReading>, StoreError> {
        match self {
            AnyStore::Dir(s) => s.clock(key).await,
            AnyStore::S3(s) => s.clock(key).await,
        }
    }
}
