//! The second half of a claim that starts a job over (`"restart": true`, or a start-over
//! its claimer did not finish): the claim is written with [`Header::old_outputs`] set, and
//! only then does its winner delete the old work's outputs and clear the flag
//! (docs/design.md "A job is bound to its work").

use crate::ids::JobId;
use crate::store::{ETag, ObjectStore, Precondition, StoreError};

use super::claim::{ClaimError, lost};
use super::ownership;
use super::{Header, decode, encode, key, nonce, now_ms};

/// Deletes the old work's outputs and clears the flag of `header`, the start-over claim just
/// written with tag `etag`; returns the new tag. A store failure or a lease that runs out
/// releases the claim (best effort, so the next delivery need not wait out the lease); a
/// refused clearing write is [`after_refused_clear`]'s to end.
pub(super) async fn finish<S: ObjectStore>(
    store: &S,
    job: &JobId,
    header: &mut Header,
    etag: ETag,
) -> Result<ETag, ClaimError> {
    let claimed_at = tokio::time::Instant::now();
    match delete_old_outputs(store, job, header, etag.clone(), claimed_at).await {
        Ok(etag) => Ok(etag),
        Err(Unfinished::Refused) => Err(after_refused_clear(store, job, header).await),
        Err(Unfinished::Failed(e)) => {
            header.lease_until_ms = 0;
            header.nonce = nonce();
            let released = encode(header, None);
            let _ = store
                .put(&key(job), released, Precondition::Matches(etag))
                .await;
            Err(e)
        }
    }
}

/// Why a start-over's claim did not finish ([`delete_old_outputs`]).
enum Unfinished {
    /// The write that clears the flag was refused: someone wrote the checkpoint since.
    Refused,
    /// The store failed, or the claim's lease ran out first.
    Failed(ClaimError),
}

/// The winner of a start-over's claim (`header`, written with tag `etag` at `claimed_at`):
/// deletes the old work's result, manifest, error and the listing's markers of a cancel or
/// pause (its artifact objects stay until the new run replaces them; no manifest lists
/// them), each while the claim's lease still lets it write and bounded by the time left,
/// then clears [`Header::old_outputs`] `If-Match` `etag`, [`DEFAULT_MIN_WRITE_INTERVAL`]
/// after the claim (R2: one write per second per key). Returns the new tag.
///
/// [`DEFAULT_MIN_WRITE_INTERVAL`]: super::DEFAULT_MIN_WRITE_INTERVAL
async fn delete_old_outputs<S: ObjectStore>(
    store: &S,
    job: &JobId,
    header: &mut Header,
    etag: ETag,
    claimed_at: tokio::time::Instant,
) -> Result<ETag, Unfinished> {
    let ran_out = || {
        Unfinished::Failed(ClaimError::Busy {
            owner:
                "this worker's claim, whose lease ran out while it deleted the old work's outputs"
                    .into(),
            until_ms: header.lease_until_ms,
        })
    };
    let failed = |e: StoreError| Unfinished::Failed(ClaimError::Storage(e.to_string()));
    for stale in [
        crate::keys::result(job),
        crate::keys::manifest(job),
        crate::keys::error(job),
        crate::keys::stopped(job, "cancel"),
        crate::keys::stopped(job, "pause"),
    ] {
        let left = ownership::writable_for(header.lease_until_ms, header.lease_period_ms, now_ms())
            .ok_or_else(ran_out)?;
        match tokio::time::timeout(left, store.delete(&stale)).await {
            Ok(answer) => answer.map_err(failed)?,
            Err(_) => return Err(ran_out()),
        }
    }
    tokio::time::sleep_until(claimed_at + super::DEFAULT_MIN_WRITE_INTERVAL).await;
    if ownership::writable_for(header.lease_until_ms, header.lease_period_ms, now_ms()).is_none() {
        return Err(ran_out());
    }
    header.old_outputs = false;
    header.updated_ms = now_ms();
    header.nonce = nonce();
    match store
        .put_undoable(&key(job), encode(header, None), Precondition::Matches(etag))
        .await
    {
        Ok(etag) => Ok(etag),
        Err(StoreError::PreconditionFailed) => Err(Unfinished::Refused),
        Err(e) => Err(failed(e)),
    }
}

/// The end of a start-over whose clearing write was refused. Only a user's cancel or pause
/// writes a checkpoint another worker holds: then the job is stopped (its listing's marker,
/// which the deletes may have removed, written again, and this claim's lease released);
/// anything else is [`ClaimError::Busy`].
async fn after_refused_clear<S: ObjectStore>(
    store: &S,
    job: &JobId,
    header: &Header,
) -> ClaimError {
    let busy = || lost(header.lease_until_ms);
    let Ok(Some(current)) = store.get(&key(job)).await else {
        return busy();
    };
    let Ok((mut now, data)) = decode(&current.bytes) else {
        return busy();
    };
    let Some(control) = now.control.clone() else {
        return busy();
    };
    if let Err(e) = super::control::write_marker(store, job, &control).await {
        tracing::warn!(job = %job, error = %e, "could not write the listing's marker of a cancel or pause again");
    }
    if now.owner == header.owner {
        now.lease_until_ms = 0;
        now.updated_ms = now_ms();
        now.nonce = nonce();
        let released = encode(&now, data.as_deref());
        let _ = store
            .put(&key(job), released, Precondition::Matches(current.etag))
            .await;
    }
    ClaimError::Stopped(control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::DirStore;

    async fn put(store: &DirStore, key: &str, bytes: &[u8]) {
        store
            .put(key, bytes.to_vec(), Precondition::None)
            .await
            .unwrap();
    }

    async fn peek(store: &DirStore, job: &JobId) -> Header {
        super::super::claim::peek(store, job)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_start_over_deletes_nothing_once_its_lease_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let job: JobId = "late".parse().unwrap();
        let mut header = Header {
            old_outputs: true,
            owner: "me".into(),
            lease_until_ms: now_ms() + 1_000,
            lease_period_ms: 60_000,
            ..Header::default()
        };
        let etag = store
            .put(&key(&job), encode(&header, None), Precondition::None)
            .await
            .unwrap();
        put(&store, &crate::keys::result(&job), b"someone's").await;
        // Less than twice the skew allowance left: no more writes for this claim.
        let got =
            delete_old_outputs(&store, &job, &mut header, etag, tokio::time::Instant::now()).await;
        assert!(matches!(
            got,
            Err(Unfinished::Failed(ClaimError::Busy { .. }))
        ));
        assert!(store.exists(&crate::keys::result(&job)).await.unwrap());
        assert!(peek(&store, &job).await.old_outputs);
    }

    #[tokio::test]
    async fn a_cancel_that_refused_a_start_overs_clearing_stops_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let job: JobId = "cancelled-meanwhile".parse().unwrap();
        let mine = Header {
            owner: "me".into(),
            lease_until_ms: now_ms() + 30_000,
            lease_period_ms: 60_000,
            ..Header::default()
        };
        // The user's cancel, written over this claim's header: its marker went with the
        // old work's outputs.
        let control = super::super::Control {
            action: super::super::Action::Cancel,
            by: "u@h".into(),
            at_ms: 1,
        };
        let cancelled = Header {
            control: Some(control.clone()),
            old_outputs: true,
            ..mine.clone()
        };
        put(&store, &key(&job), &encode(&cancelled, None)).await;
        assert_eq!(
            after_refused_clear(&store, &job, &mine).await,
            ClaimError::Stopped(control)
        );
        let marker = crate::keys::stopped(&job, "cancel");
        assert!(store.exists(&marker).await.unwrap());
        assert_eq!(peek(&store, &job).await.lease_until_ms, 0);
        // Written by anyone else (a takeover): busy, nothing written.
        let other = Header {
            owner: "other".into(),
            ..mine.clone()
        };
        put(&store, &key(&job), &encode(&other, None)).await;
        assert!(matches!(
            after_refused_clear(&store, &job, &mine).await,
            ClaimError::Busy { .. }
        ));
    }
}
