//! Job control: recording a user's cancel or pause in the job's checkpoint header, and
//! clearing a pause (docs/design.md §5, "Job control").
//!
//! The record is written `If-Match` the tag read (create-only when the job has no checkpoint
//! yet; `checkpoint/rewrite.rs`), so the owner's next write of the header (after every lease extension, every half
//! ack deadline) is refused: it reads the header once, finds the record, stops the task and
//! writes nothing more. A claim that finds the record does not run the job. No request is
//! added to a job's steady state. A result always wins: a job whose result exists is done,
//! whatever its header says.

use crate::ids::JobId;
use crate::store::{ObjectStore, Precondition, StoreError};

use super::rewrite::{Edit, Rewritten, rewrite_header};
use super::{Action, Control, decode, key, now_ms};

/// What [`request`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    /// The record is written. `running`: a worker held the job under a live lease (it stops
    /// at its next write of the header); `done_since`: the job's result appeared while the
    /// record was being written (the job finished first: it is done).
    Recorded {
        /// A worker held the job under a live lease when the record was written.
        running: bool,
        /// The job's result appeared while the record was being written.
        done_since: bool,
    },
    /// The job's result exists: nothing was written (a finished job stays done).
    AlreadyDone,
    /// A record was already there (a cancel is not turned into a pause).
    AlreadyRecorded(Control),
}

/// Records `control` in `job`'s checkpoint header, then writes the listing's marker
/// ([`crate::keys::stopped`]). A cancel replaces a pause; a pause leaves a cancel.
pub async fn request<S: ObjectStore>(
    store: &S,
    job: &JobId,
    control: &Control,
) -> Result<Requested, StoreError> {
    let doing = format!("the {} was being recorded", control.action.as_str());
    let rewritten = rewrite_header(store, job, true, &doing, |header| {
        if let Some(existing) = &header.control
            && (existing.action == control.action || existing.action == Action::Cancel)
        {
            return Edit::Keep(existing.clone());
        }
        let running =
            super::ownership::recorded(header.lease_until_ms, header.lease_period_ms, now_ms())
                == super::ownership::Recorded::Live;
        header.control = Some(control.clone());
        Edit::Write((running, header.outputs_current()))
    })
    .await?;
    match rewritten {
        Rewritten::Done => Ok(Requested::AlreadyDone),
        Rewritten::Kept(existing) => {
            write_marker(store, job, &existing).await?;
            Ok(Requested::AlreadyRecorded(existing))
        }
        Rewritten::Written((running, current)) => {
            if control.action == Action::Cancel {
                store.delete(&crate::keys::stopped(job, "pause")).await?;
            }
            write_marker(store, job, control).await?;
            let done_since = current && store.exists(&crate::keys::result(job)).await?;
            Ok(Requested::Recorded {
                running,
                done_since,
            })
        }
    }
}

/// The listing's marker of `control` (its record as JSON, for a reader without the header).
pub(super) async fn write_marker<S: ObjectStore>(
    store: &S,
    job: &JobId,
    control: &Control,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(control).expect("a control record serializes");
    store
        .put(
            &crate::keys::stopped(job, control.action.as_str()),
            body,
            Precondition::None,
        )
        .await
        .map(|_| ())
}

/// Reads `job`'s control record, if any (for a worker whose write was refused: was it a
/// cancel or a pause?). `None` also when the checkpoint is gone or unreadable.
pub async fn read<S: ObjectStore>(store: &S, job: &JobId) -> Option<Control> {
    let object = store.get(&key(job)).await.ok()??;
    decode(&object.bytes).ok()?.0.control
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::DirStore;

    fn control(action: Action) -> Control {
        Control {
            action,
            by: "me@here".into(),
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_record_is_kept_in_the_header_and_a_result_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let job: JobId = "j".parse().unwrap();
        // No checkpoint yet: one is created holding the record.
        let got = request(&store, &job, &control(Action::Pause))
            .await
            .unwrap();
        assert_eq!(
            got,
            Requested::Recorded {
                running: false,
                done_since: false
            }
        );
        assert_eq!(read(&store, &job).await, Some(control(Action::Pause)));
        assert!(
            store
                .exists(&crate::keys::stopped(&job, "pause"))
                .await
                .unwrap()
        );
        // A cancel replaces the pause (and its marker); a pause leaves the cancel.
        request(&store, &job, &control(Action::Cancel))
            .await
            .unwrap();
        assert!(
            !store
                .exists(&crate::keys::stopped(&job, "pause"))
                .await
                .unwrap()
        );
        assert_eq!(
            request(&store, &job, &control(Action::Pause))
                .await
                .unwrap(),
            Requested::AlreadyRecorded(control(Action::Cancel))
        );
        // A finished job stays done.
        let done: JobId = "done".parse().unwrap();
        let result = crate::keys::result(&done);
        store
            .put(&result, b"{}".to_vec(), Precondition::None)
            .await
            .unwrap();
        assert_eq!(
            request(&store, &done, &control(Action::Cancel))
                .await
                .unwrap(),
            Requested::AlreadyDone
        );
        assert_eq!(read(&store, &done).await, None);
        // A result a start-over has yet to delete is the old work's: the cancel is recorded.
        let restarting: JobId = "restarting".parse().unwrap();
        let header = super::super::Header {
            old_outputs: true,
            ..Default::default()
        };
        let (checkpoint, result) = (key(&restarting), crate::keys::result(&restarting));
        let encoded = super::super::encode(&header, None);
        store
            .put(&checkpoint, encoded, Precondition::None)
            .await
            .unwrap();
        store
            .put(&result, b"{}".to_vec(), Precondition::None)
            .await
            .unwrap();
        let got = request(&store, &restarting, &control(Action::Cancel)).await;
        let recorded = Requested::Recorded {
            running: false,
            done_since: false,
        };
        assert_eq!(got.unwrap(), recorded);
        assert_eq!(
            read(&store, &restarting).await,
            Some(control(Action::Cancel))
        );
    }
}
