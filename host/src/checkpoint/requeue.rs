//! Making a paused or failed job runnable again, before its work is published again
//! (`job resume`, `job retry`, `dead-letter replay`; docs/design.md §5 "Job control").
//!
//! The order is what keeps a job from being lost: the header is changed first (the pause
//! record cleared, or the failure counters reset, `If-Match` the tag read), then the
//! listing's objects (the `paused` marker, the `error`, the poison records), and only then
//! does the caller publish. A message published before the pause is cleared would be acked
//! as paused by the first worker to claim it; a publish that fails after it leaves a job a
//! later `resume` or `retry` publishes again (neither requires a record to clear).

use crate::ids::JobId;
use crate::store::{ObjectStore, StoreError};

use super::ownership::{Recorded, recorded};
use super::rewrite::{Edit, Rewritten, rewrite_header};
use super::{Action, Control, Header, now_ms};

/// What to make runnable again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// A paused job (`job resume`): its pause record goes; its checkpoint stays.
    Resume,
    /// A failed job (`job retry`, `dead-letter replay`): its failure counters (`failures`,
    /// `crashes`, `storage_failed_runs`) go back to 0, its `error` and poison records are
    /// deleted, so it is not dead-lettered again at once; its checkpoint stays.
    Retry,
}

/// What [`requeue`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeued {
    /// Ready to be published again; `cleared` names what was cleared (empty: nothing was
    /// recorded against it).
    Ready {
        /// What was cleared: `pause`, `failures`, `error`, `poison`.
        cleared: Vec<&'static str>,
    },
    /// Its result exists: it is done; nothing was changed.
    Done,
    /// A user's request stops it (a cancel; or a pause, for a retry): nothing was changed.
    Stopped(Control),
    /// A worker holds it under a live lease: nothing was changed.
    Running {
        /// The worker.
        owner: String,
    },
}

/// Clears what `what` says in `job`'s stored state (see [`Requeue`]), in the order that
/// loses nothing (the module's doc).
pub async fn requeue<S: ObjectStore>(
    store: &S,
    job: &JobId,
    what: Requeue,
) -> Result<Requeued, StoreError> {
    let rewritten = rewrite_header(store, job, true, "it was being cleared", |header| {
        if let Some(control) = &header.control
            && (control.action == Action::Cancel || what == Requeue::Retry)
        {
            return Edit::Keep(Some(Requeued::Stopped(control.clone())));
        }
        let live = recorded(header.lease_until_ms, header.lease_period_ms, now_ms());
        if what == Requeue::Retry && live == Recorded::Live {
            return Edit::Keep(Some(Requeued::Running {
                owner: header.owner.clone(),
            }));
        }
        match clear(header, what) {
            changed if changed.is_empty() => Edit::Keep(None),
            changed => Edit::Write(changed),
        }
    })
    .await?;
    let mut cleared = match rewritten {
        Rewritten::Done => return Ok(Requeued::Done),
        Rewritten::Kept(Some(stopped)) => return Ok(stopped),
        Rewritten::Kept(None) => Vec::new(),
        Rewritten::Written(changed) => changed,
    };
    let listed: Vec<(&'static str, String)> = match what {
        Requeue::Resume => vec![("pause", crate::keys::stopped(job, "pause"))],
        Requeue::Retry => {
            let mut keys = vec![("error", crate::keys::error(job))];
            let poison = store.list(&crate::keys::poison_of(job)).await?;
            keys.extend(poison.into_iter().map(|k| ("poison", k)));
            keys
        }
    };
    for (what, key) in listed {
        if store.exists(&key).await? {
            store.delete(&key).await?;
            if !cleared.contains(&what) {
                cleared.push(what);
            }
        }
    }
    Ok(Requeued::Ready { cleared })
}

/// Clears in `header` what `what` says; returns what it changed.
fn clear(header: &mut Header, what: Requeue) -> Vec<&'static str> {
    match what {
        Requeue::Resume if header.control.take().is_some() => vec!["pause"],
        Requeue::Resume => vec![],
        Requeue::Retry => {
            // Any of them (a sum of a damaged header's counts could wrap to 0).
            let counted =
                header.failures > 0 || header.crashes > 0 || header.storage_failed_runs > 0;
            header.failures = 0;
            header.crashes = 0;
            header.storage_failed_runs = 0;
            if counted { vec!["failures"] } else { vec![] }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{decode, encode, key};
    use crate::store::Precondition;
    use crate::store::dir::DirStore;

    async fn put(store: &DirStore, key: &str, header: &Header) {
        store
            .put(key, encode(header, Some(b"state")), Precondition::None)
            .await
            .unwrap();
    }

    async fn stored(store: &DirStore, job: &JobId) -> Header {
        let o = store.get(&key(job)).await.unwrap().unwrap();
        let (h, data) = decode(&o.bytes).unwrap();
        assert_eq!(
            data.as_deref(),
            Some(&b"state"[..]),
            "the task's bytes are kept"
        );
        h
    }

    #[tokio::test]
    async fn a_resume_clears_a_pause_and_a_retry_the_failures() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let job: JobId = "j".parse().unwrap();
        let pause = Control {
            action: Action::Pause,
            by: "me".into(),
            at_ms: 1,
        };
        let header = Header {
            attempts: 4,
            failures: 3,
            crashes: 1,
            control: Some(pause.clone()),
            nonce: "n".into(),
            ..Header::default()
        };
        put(&store, &key(&job), &header).await;
        let marker = crate::keys::stopped(&job, "pause");
        store
            .put(&marker, b"{}".to_vec(), Precondition::None)
            .await
            .unwrap();
        // A retry does not undo a user's pause.
        assert_eq!(
            requeue(&store, &job, Requeue::Retry).await.unwrap(),
            Requeued::Stopped(pause)
        );
        assert_eq!(
            requeue(&store, &job, Requeue::Resume).await.unwrap(),
            Requeued::Ready {
                cleared: vec!["pause"]
            }
        );
        let h = stored(&store, &job).await;
        assert_eq!((h.control, h.attempts, h.failures), (None, 4, 3));
        assert!(!store.exists(&marker).await.unwrap());
        // Again: nothing left to clear, still ready (a publish that failed is redone).
        assert_eq!(
            requeue(&store, &job, Requeue::Resume).await.unwrap(),
            Requeued::Ready { cleared: vec![] }
        );

        let error = crate::keys::error(&job);
        let poison = crate::keys::poison(Some(&job), "m1");
        for k in [&error, &poison] {
            store
                .put(k, b"why".to_vec(), Precondition::None)
                .await
                .unwrap();
        }
        assert_eq!(
            requeue(&store, &job, Requeue::Retry).await.unwrap(),
            Requeued::Ready {
                cleared: vec!["failures", "error", "poison"]
            }
        );
        let h = stored(&store, &job).await;
        assert_eq!((h.attempts, h.failures, h.crashes), (4, 0, 0));
        assert!(!store.exists(&error).await.unwrap() && !store.exists(&poison).await.unwrap());

        // A live owner is left alone by a retry; a result wins over everything.
        let mut live = stored(&store, &job).await;
        live.owner = "w1".into();
        live.lease_until_ms = now_ms() + 60_000;
        live.lease_period_ms = 60_000;
        put(&store, &key(&job), &live).await;
        assert_eq!(
            requeue(&store, &job, Requeue::Retry).await.unwrap(),
            Requeued::Running { owner: "w1".into() }
        );
        store
            .put(
                &crate::keys::result(&job),
                b"{}".to_vec(),
                Precondition::None,
            )
            .await
            .unwrap();
        assert_eq!(
            requeue(&store, &job, Requeue::Resume).await.unwrap(),
            Requeued::Done
        );
        // A job with nothing stored (a poison message's) is ready as it is.
        let fresh: JobId = "fresh".parse().unwrap();
        assert_eq!(
            requeue(&store, &fresh, Requeue::Retry).await.unwrap(),
            Requeued::Ready { cleared: vec![] }
        );
    }

    /// Counts a damaged header holds, whose sum would wrap to 0, are still cleared and said.
    #[test]
    fn a_retry_clears_counts_whose_sum_wraps() {
        let mut h = Header {
            failures: 1 << 31,
            crashes: 1 << 31,
            ..Header::default()
        };
        assert_eq!(clear(&mut h, Requeue::Retry), vec!["failures"]);
        assert_eq!((h.failures, h.crashes, h.storage_failed_runs), (0, 0, 0));
    }
}
