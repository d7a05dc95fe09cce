//! Multipart uploads: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
//! ListParts (does the upload still exist) and AbortMultipartUpload.

use anyhow::anyhow;
use aws_sdk_s3::primitives::ByteStream;

use super::errors::status;
use super::{ETag, ErrorKind, S3Store, StoreError, etag_of};
use crate::store::Multipart;

impl Multipart for S3Store {
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
}
