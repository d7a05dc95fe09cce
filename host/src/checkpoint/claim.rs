//! Taking a job: the claim (start or resume), and handing back one whose owner is known to
//! be dead. Both are conditional writes of the checkpoint object (docs/design.md "Ownership
//! in the checkpoint header").

use crate::ids::JobId;
use crate::job::Work;
use crate::queue::lease::LeaseView;
use crate::store::{ETag, ObjectStore, Precondition, StoreError};

use super::ownership::{self, Recorded};
use super::rewrite::{Edit, Rewritten, rewrite_header};
use super::{Header, decode, encode, key, nonce, now_ms};

/// What a successful claim found.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The header as written by the claim (attempts already incremented).
    pub header: Header,
    /// The task's bytes from the previous run, if it saved any.
    pub data: Option<Vec<u8>>,
    pub(super) etag: ETag,
}

/// Why a claim did not take the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Another worker holds the job under a live lease (or claimed it just now). Hand the
    /// message back for at least one lease period.
    Busy {
        /// The worker holding it, as its header names it (or a note that another worker
        /// claimed it just now).
        owner: String,
        /// Until when its lease holds (ms since the Unix epoch).
        until_ms: u64,
    },
    /// The job's result exists: nothing to run.
    AlreadyDone,
    /// The stored job was bound to other work (another module or input), and the message
    /// did not ask to start over or to upgrade: the reason names both.
    OtherWork(String),
    /// The checkpoint object is not one this host can read (corrupt, or a newer format).
    Unreadable(String),
    /// The store failed; retry later.
    Storage(String),
    /// A user cancelled or paused the job (`taskhost job cancel` / `pause`): not run.
    Stopped(super::Control),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Busy { owner, until_ms } => {
                write!(
                    f,
                    "worker `{owner}` holds the job (lease until {until_ms} ms)"
                )
            }
            ClaimError::AlreadyDone => f.write_str("the job's result exists"),
            ClaimError::Stopped(c) => write!(f, "{} by {}", c.action.as_str(), c.by),
            ClaimError::Unreadable(m) | ClaimError::Storage(m) | ClaimError::OtherWork(m) => {
                f.write_str(m)
            }
        }
    }
}

/// What a claim does with a job stored for other work than the message's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtherWork {
    /// [`ClaimError::OtherWork`] (the default).
    #[default]
    Refuse,
    /// Start over: delete the stored result and error, discard the checkpoint's data and
    /// counts (`"restart": true`).
    Restart,
    /// Same input, another module: resume from the checkpoint with the new module
    /// (`"upgrade_module": true`).
    UpgradeModule,
}

/// Claims the job's checkpoint for `owner` under `lease` (its guaranteed end now is recorded
/// as the owner's lease).
///
/// First a create-only write (`If-None-Match: *`): on a new job that one request is the whole
/// claim (no result can exist without a checkpoint). If a checkpoint exists, it is read and
/// `take_over` decides and writes.
///
/// The claim's writes need not be durable ([`ObjectStore::put_undoable`]): a power loss that
/// undoes one also killed every worker that could hold the claim (the directory store is
/// local), so the job only looks unclaimed again. What this run writes durably later (a
/// save, its result: same directory) makes the claim durable with it.
pub async fn claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    owner: &str,
    lease: &LeaseView,
    work: &Work,
    on_other_work: OtherWork,
) -> Result<Claimed, ClaimError> {
    let key = key(job);
    let claimer = Claimer { owner, lease, work };
    let header = claimer.fresh(Header::default());
    match store
        .put_undoable(&key, encode(&header, None), Precondition::Absent)
        .await
    {
        Ok(etag) => {
            return Ok(Claimed {
                header,
                data: None,
                etag,
            });
        }
        Err(StoreError::PreconditionFailed) => {}
        Err(e) => return Err(ClaimError::Storage(e.to_string())),
    }
    let Some(current) = store
        .get(&key)
        .await
        .map_err(|e| ClaimError::Storage(e.to_string()))?
    else {
        return Err(ClaimError::Storage(format!(
            "{key} vanished while being claimed"
        )));
    };
    take_over(store, job, &claimer, on_other_work, current).await
}

/// Who claims, under which lease, for which work.
struct Claimer<'a> {
    owner: &'a str,
    lease: &'a LeaseView,
    work: &'a Work,
}

impl Claimer<'_> {
    /// `header` as this claim writes it: one more attempt, this owner and lease and work.
    fn fresh(&self, mut header: Header) -> Header {
        header.attempts = header.attempts.saturating_add(1);
        // The run before did not end cleanly.
        if header.crashes > 0 {
            header.crashed_runs = header.crashed_runs.saturating_add(1);
        }
        // Until it ends cleanly, this run counts as one that crashed.
        header.crashes = header.crashes.saturating_add(1);
        header.owner = self.owner.to_owned();
        header.lease_until_ms = self.lease.until().unix_ms;
        header.lease_period_ms = self.lease.deadline.as_millis() as u64;
        header.module = self.work.module.clone();
        header.input_sha256 = self.work.input_sha256.clone();
        header.updated_ms = now_ms();
        header.nonce = nonce();
        header
    }
}

/// The claim of a job whose checkpoint exists (`current`, as read): the result is checked
/// for ([`ClaimError::AlreadyDone`]), and the job is taken over only if its lease is
/// released, expired or skewed ([`ownership::recorded`]), with a write `If-Match` on the tag
/// read, incrementing `attempts`. A live lease, or a claim that loses the race for the
/// write, is [`ClaimError::Busy`].
///
/// Starting over (`"restart": true`), or finding a start-over that its claimer did not
/// finish, the winner of the write deletes the old work's outputs only after it
/// (`start_over.rs`): a claim that loses deletes nothing, so it never deletes what the
/// winner's run wrote meanwhile. Until they are gone the header says so
/// ([`Header::old_outputs`]); it is cleared, `If-Match` again, before the run.
async fn take_over<S: ObjectStore>(
    store: &S,
    job: &JobId,
    claimer: &Claimer<'_>,
    on_other_work: OtherWork,
    current: crate::store::Object,
) -> Result<Claimed, ClaimError> {
    let (key, result_key) = (key(job), crate::keys::result(job));
    let work = claimer.work;
    let (header, data) = decode(&current.bytes)
        .map_err(|e| ClaimError::Unreadable(format!("{key} is unreadable: {e:#}")))?;
    let stored = Work {
        module: header.module.clone(),
        input_sha256: header.input_sha256.clone(),
    };
    let same = stored.is_unbound() || work.is_unbound() || stored == *work;
    let start_over = match (same, on_other_work) {
        (true, _) => false,
        (false, OtherWork::Restart) => true,
        (false, OtherWork::UpgradeModule) if stored.input_sha256 == work.input_sha256 => false,
        (false, _) => {
            return Err(ClaimError::OtherWork(format!(
                "job {job} is stored for other work (module {}, input sha256 {}) than this \
                 message asks for (module {}, input sha256 {}): resubmit it with \
                 \"restart\": true to start over, or \"upgrade_module\": true to resume \
                 with the new module on the same input, or run `taskhost job reset {job}`",
                stored.module, stored.input_sha256, work.module, work.input_sha256
            )));
        }
    };
    // A result under the key while a start-over is unfinished may be the old work's.
    let done = header.outputs_current()
        && store
            .exists(&result_key)
            .await
            .map_err(|e| ClaimError::Storage(e.to_string()))?;
    if done && !start_over {
        // Written by another process, maybe not durable yet (the directory store's group
        // commit): durable before the job is acked as done.
        store
            .make_durable(&result_key)
            .await
            .map_err(|e| ClaimError::Storage(e.to_string()))?;
        return Err(ClaimError::AlreadyDone);
    }
    // A cancel or pause: the job is not run (a result, above, always wins; a message that
    // asks to start over drops the record with the rest of the old state).
    if let Some(control) = header.control.clone().filter(|_| !start_over) {
        return Err(ClaimError::Stopped(control));
    }
    // A finished job's last lease is left to expire: it holds nothing once the result exists.
    let now = now_ms();
    if !done {
        match ownership::recorded(header.lease_until_ms, header.lease_period_ms, now) {
            Recorded::Ended => {}
            Recorded::Live => {
                return Err(ClaimError::Busy {
                    owner: header.owner,
                    until_ms: header.lease_until_ms,
                });
            }
            Recorded::Skewed => tracing::warn!(
                job = %job,
                owner = %header.owner,
                ahead_s = (header.lease_until_ms - now) / 1000,
                "the owner's lease ends further ahead than a whole lease period, so its clock is ahead of ours: not honouring it; taking the job over"
            ),
        }
    }
    // A start-over, or one whose claimer did not finish it: nothing has run under the flag,
    // so its counts start from nothing each time (a store that keeps refusing the deletes
    // never adds up crashes that no run had).
    let (mut header, data) = if start_over || header.old_outputs {
        let old_outputs = Header {
            old_outputs: true,
            ..Header::default()
        };
        (claimer.fresh(old_outputs), None)
    } else {
        (claimer.fresh(header), data)
    };
    let etag = match store
        .put_undoable(
            &key,
            encode(&header, data.as_deref()),
            Precondition::Matches(current.etag),
        )
        .await
    {
        Ok(etag) => etag,
        Err(StoreError::PreconditionFailed) => return Err(lost(header.lease_until_ms)),
        Err(e) => return Err(ClaimError::Storage(e.to_string())),
    };
    if !header.old_outputs {
        return Ok(Claimed { header, data, etag });
    }
    let etag = super::start_over::finish(store, job, &mut header, etag).await?;
    Ok(Claimed { header, data, etag })
}

/// A claim that lost the race for the checkpoint's write.
pub(super) fn lost(until_ms: u64) -> ClaimError {
    ClaimError::Busy {
        owner: "another worker (claimed it just now)".into(),
        until_ms,
    }
}

/// Reads a job's checkpoint header without claiming it (for `status`).
pub async fn peek<S: ObjectStore>(store: &S, job: &JobId) -> anyhow::Result<Option<Header>> {
    match store.get(&key(job)).await? {
        None => Ok(None),
        Some(obj) => Ok(Some(decode(&obj.bytes)?.0)),
    }
}

/// What [`release_abandoned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abandoned {
    /// The dead owner held the job: its lease is now released (0), so the next claim takes
    /// the job over at once.
    Released,
    /// Nothing to release: no checkpoint, or one released, or held by another worker.
    NotHeld,
}

/// Releases the job's checkpoint if `dead_owner` still holds it, keeping everything else
/// (the task's bytes, counts, artifacts) as it was. Only for an owner known to be dead (its
/// process is gone: see `worker::node_record`): it is what that owner's SIGTERM handling would have
/// done. A conditional write on the tag read: a late write of the dead owner either landed
/// before it (it is read again) or is refused after it.
pub async fn release_abandoned<S: ObjectStore>(
    store: &S,
    job: &JobId,
    dead_owner: &str,
) -> Result<Abandoned, StoreError> {
    let doing = "its dead owner's lease was being released";
    let rewritten = rewrite_header(store, job, false, doing, |header| {
        // No checkpoint (a default header), one released, or one held by another worker.
        if header.owner != dead_owner || header.lease_until_ms == 0 {
            return Edit::Keep(());
        }
        header.lease_until_ms = 0;
        Edit::Write(())
    })
    .await?;
    Ok(match rewritten {
        Rewritten::Written(()) => Abandoned::Released,
        Rewritten::Kept(()) | Rewritten::Done => Abandoned::NotHeld,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::dir::DirStore;

    /// Writes a checkpoint held by `owner` until `until_ms` (lease period `period_ms`).
    async fn held(store: &DirStore, job: &JobId, owner: &str, until_ms: u64, period_ms: u64) {
        let header = Header {
            attempts: 1,
            owner: owner.into(),
            lease_until_ms: until_ms,
            lease_period_ms: period_ms,
            nonce: nonce(),
            ..Header::default()
        };
        store
            .put(
                &key(job),
                encode(&header, Some(b"saved")),
                Precondition::None,
            )
            .await
            .unwrap();
    }

    fn work(input: &str) -> Work {
        Work {
            module: format!("sha256:{}", "ab".repeat(32)),
            input_sha256: input.repeat(64),
        }
    }

    async fn put(store: &DirStore, key: &str, bytes: &[u8]) {
        store
            .put(key, bytes.to_vec(), Precondition::None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_restart_that_loses_its_claim_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let (lease, stop) = LeaseView::detached(Duration::from_secs(60));
        let job: JobId = "restarted".parse().unwrap();
        let (old, new) = (work("0"), work("1"));
        // The old work, done.
        let old_claimer = Claimer {
            owner: "old",
            lease: &lease,
            work: &old,
        };
        let mut header = old_claimer.fresh(Header::default());
        header.lease_until_ms = 0;
        put(&store, &key(&job), &encode(&header, None)).await;
        put(&store, &crate::keys::result(&job), b"old result").await;
        // Two restart messages: the loser read the old work's checkpoint before the winner
        // claimed, ran and stored its result.
        let read_by_loser = store.get(&key(&job)).await.unwrap().unwrap();
        let winner = claim(&store, &job, "winner", &lease, &new, OtherWork::Restart)
            .await
            .unwrap();
        assert!(!winner.header.old_outputs);
        assert!(!store.exists(&crate::keys::result(&job)).await.unwrap());
        put(&store, &crate::keys::result(&job), b"new result").await;
        let loser = Claimer {
            owner: "loser",
            lease: &lease,
            work: &new,
        };
        let lost = take_over(&store, &job, &loser, OtherWork::Restart, read_by_loser).await;
        assert!(matches!(lost, Err(ClaimError::Busy { .. })), "{lost:?}");
        let result = store.get(&crate::keys::result(&job)).await.unwrap();
        assert_eq!(result.unwrap().bytes, b"new result");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_start_over_left_unfinished_is_finished_by_the_next_claim() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let (lease, stop) = LeaseView::detached(Duration::from_secs(60));
        let job: JobId = "half-restarted".parse().unwrap();
        let new = work("1");
        // A restart's claim whose worker died before deleting the old work's outputs.
        let dead = Claimer {
            owner: "dead",
            lease: &lease,
            work: &new,
        };
        let mut header = dead.fresh(Header {
            old_outputs: true,
            ..Header::default()
        });
        let live_until = header.lease_until_ms;
        put(&store, &key(&job), &encode(&header, None)).await;
        for k in [crate::keys::result(&job), crate::keys::error(&job)] {
            put(&store, &k, b"the old work's").await;
        }
        let again = || claim(&store, &job, "next", &lease, &new, OtherWork::Refuse);
        // Its lease still holds: busy (its result is not taken for this work's).
        assert!(matches!(again().await, Err(ClaimError::Busy { owner, .. }) if owner == "dead"));
        header.lease_until_ms = 0;
        put(&store, &key(&job), &encode(&header, None)).await;
        let claimed = again().await.unwrap();
        assert_eq!(claimed.header.owner, "next");
        assert!(!claimed.header.old_outputs);
        // Nothing ran under the flag: the counts start from nothing again, not from the
        // dead claim's.
        assert_eq!((claimed.header.attempts, claimed.header.crashes), (1, 1));
        assert_eq!(claimed.header.crashed_runs, 0);
        for k in [crate::keys::result(&job), crate::keys::error(&job)] {
            assert!(!store.exists(&k).await.unwrap(), "{k} left");
        }
        let stored = peek(&store, &job).await.unwrap().unwrap();
        assert!(!stored.old_outputs && stored.lease_until_ms >= live_until);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_lease_recorded_too_far_ahead_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let (lease, stop) = LeaseView::detached(Duration::from_secs(60));
        let job = |n: &str| n.parse::<JobId>().unwrap();
        let claim_it = |job: JobId| {
            let (store, lease) = (store.clone(), &lease);
            async move {
                claim(
                    &store,
                    &job,
                    "me",
                    lease,
                    &Work::default(),
                    OtherWork::Refuse,
                )
                .await
            }
        };
        let now = now_ms();
        // A live owner (its lease a period ahead at most) is turned away...
        held(&store, &job("live"), "alive", now + 30_000, 60_000).await;
        match claim_it(job("live")).await {
            Err(ClaimError::Busy { owner, .. }) => assert_eq!(owner, "alive"),
            other => panic!("live: {other:?}"),
        }
        // ... as is one whose period is unknown (600 s then).
        held(&store, &job("old"), "old", now + 500_000, 0).await;
        assert!(matches!(
            claim_it(job("old")).await,
            Err(ClaimError::Busy { .. })
        ));
        // One whose clock is an hour ahead is not honoured: the job is taken over, with
        // the task's bytes.
        held(&store, &job("ahead"), "ahead", now + 3_600_000, 60_000).await;
        let claimed = claim_it(job("ahead")).await.unwrap();
        assert_eq!(claimed.header.owner, "me");
        assert_eq!(claimed.header.attempts, 2);
        assert_eq!(claimed.data.as_deref(), Some(&b"saved"[..]));
        held(&store, &job("far"), "far", now + 700_000, 0).await;
        assert_eq!(claim_it(job("far")).await.unwrap().header.owner, "me");
        stop.cancel();
    }
}
