//! The one read-change-write of a job's checkpoint header made by someone other than its
//! owner's writer: a user's cancel or pause ([`super::control`]), a resume or retry
//! ([`super::requeue`]), the release of a dead owner's lease ([`super::release_abandoned`]).
//!
//! The write is conditional on the tag read (create-only when the job has no checkpoint
//! yet), so it never overwrites a write it did not see: a race lost to the owner's own
//! write is read again and the change decided again, up to [`TRIES`] times. Every written
//! header gets a fresh `updated_ms` and `nonce`; the task's bytes are kept as they were.

use crate::ids::JobId;
use crate::store::{ErrorKind, ObjectStore, Precondition, StoreError};
use crate::time::now_ms;

use super::{Header, decode, encode, key, nonce};

/// Conditional writes that lose a race (to the owner's own write) before giving up.
pub const TRIES: u32 = 8;

/// What a change of the header decided.
pub enum Edit<K, W> {
    /// Write nothing; the rewrite ends with [`Rewritten::Kept`].
    Keep(K),
    /// Write the changed header; the rewrite ends with [`Rewritten::Written`] once it is.
    Write(W),
}

/// What [`rewrite_header`] did.
pub enum Rewritten<K, W> {
    /// The job's result exists (asked with `result_wins`): nothing was read or written.
    Done,
    /// The change kept the header as it was.
    Kept(K),
    /// The changed header is written.
    Written(W),
}

/// Reads `job`'s header (a default one when the job has no checkpoint), lets `change` decide
/// and change it, and writes it back conditionally (see the module's doc). With
/// `result_wins`, a job whose result exists is left alone, checked after every read: a
/// finished job stays done (but for a result a start-over has yet to delete: the header's
/// `old_outputs`). `doing` names the change in the error of a header that kept
/// changing ("the cancel was being recorded").
pub async fn rewrite_header<S: ObjectStore, K, W>(
    store: &S,
    job: &JobId,
    result_wins: bool,
    doing: &str,
    mut change: impl FnMut(&mut Header) -> Edit<K, W>,
) -> Result<Rewritten<K, W>, StoreError> {
    let key = key(job);
    for _ in 0..TRIES {
        let (mut header, data, precondition) = match store.get(&key).await? {
            None => (Header::default(), None, Precondition::Absent),
            Some(current) => {
                let (header, data) = decode(&current.bytes).map_err(|e| {
                    StoreError::new(
                        ErrorKind::BadRequest,
                        e.context(format!(
                            "{key} is unreadable (`taskhost job reset` clears it)"
                        )),
                    )
                })?;
                (header, data, Precondition::Matches(current.etag))
            }
        };
        if result_wins
            && header.outputs_current()
            && store.exists(&crate::keys::result(job)).await?
        {
            return Ok(Rewritten::Done);
        }
        let written = match change(&mut header) {
            Edit::Keep(kept) => return Ok(Rewritten::Kept(kept)),
            Edit::Write(written) => written,
        };
        header.updated_ms = now_ms();
        header.nonce = nonce();
        match store
            .put(&key, encode(&header, data.as_deref()), precondition)
            .await
        {
            Ok(_) => return Ok(Rewritten::Written(written)),
            Err(StoreError::PreconditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::new(
        ErrorKind::Transient,
        anyhow::anyhow!("{key} kept changing while {doing}"),
    ))
}
