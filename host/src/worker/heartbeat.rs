//! The worker's heartbeat: `workers/<worker id>` rewritten every `HEARTBEAT_SECONDS` (its
//! id, machine, slots, running and committing jobs, counters, version), deleted when it exits cleanly, so
//! `taskhost status --workers` lists live and recently dead workers without a metrics stack.
//! A killed worker's record (and a probe object it left) is deleted by a later worker's
//! start once it is [`DEAD_RECORD_KEPT`] old ([`prune_dead`]).
//! One key per worker written at most once per interval (≥ 1 s): R2's one write per second
//! per key always holds. A failed write is logged and retried at the next beat; it never
//! stops the worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::status::workers::Heartbeat;
use crate::store::{ObjectStore, Precondition};

/// Default interval between heartbeats: 60 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Longest wait for the record's delete at exit.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// How long a dead worker's heartbeat record, and a probe object a killed worker left, are
/// kept after their last write: a week (`status` shows a dead worker for a day).
pub const DEAD_RECORD_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes the heartbeat records and probe objects last written more than
/// [`DEAD_RECORD_KEPT`] before `now_ms`: their workers were killed (a clean exit deletes its
/// own), and on nodes that come and go they would pile up. One listing per prefix; a failure
/// is logged and never stops the worker. Returns how many were deleted.
pub async fn prune_dead<S: ObjectStore>(store: &S, now_ms: u64) -> usize {
    let kept_ms = DEAD_RECORD_KEPT.as_millis() as u64;
    let mut deleted = 0;
    for prefix in [crate::keys::WORKERS_PREFIX, crate::keys::PROBE_PREFIX] {
        let listed = match store.list_entries(prefix).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "cannot list dead workers' records to prune them");
                continue;
            }
        };
        for old in listed
            .iter()
            .filter(|l| now_ms.saturating_sub(l.modified_ms) > kept_ms)
        {
            match store.delete(&old.key).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(key = %old.key, error = %e, "cannot delete a dead worker's record")
                }
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted dead workers' records older than a week");
    }
    deleted
}

/// What the heartbeat says about its worker, besides what it reads live.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Between two writes (at least 1 s).
    pub interval: Duration,
    /// `SALAD_MACHINE_ID` when set, else the host name.
    pub machine: String,
    /// taskhost's version (the binary's).
    pub version: String,
}

/// A running heartbeat; [`Beating::stop`] deletes the record.
pub struct Beating {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts writing `workers/<worker_id>` every interval (the first at once).
pub fn start<S: ObjectStore + Clone>(
    store: &S,
    worker_id: &str,
    slots: usize,
    stats: &Arc<Stats>,
    config: Option<&HeartbeatConfig>,
) -> Option<Beating> {
    let config = config?.clone();
    let Some(key) = crate::keys::worker(worker_id) else {
        tracing::warn!(
            worker = worker_id,
            "the worker id cannot name a heartbeat record; no heartbeat"
        );
        return None;
    };
    let interval = config.interval.max(Duration::from_secs(1));
    let started_ms = crate::time::now_ms();
    let record = {
        let (stats, worker_id) = (stats.clone(), worker_id.to_owned());
        move || Heartbeat {
            worker_id: worker_id.clone(),
            machine: config.machine.clone(),
            slots,
            running: stats.running.load(Ordering::Relaxed) as usize,
            committing: stats.committing.load(Ordering::Relaxed) as usize,
            counters: counters(&stats),
            version: config.version.clone(),
            started_ms,
            updated_ms: crate::time::now_ms(),
            interval_ms: interval.as_millis() as u64,
        }
    };
    let stop = CancellationToken::new();
    let store = store.clone();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let bytes = serde_json::to_vec(&record()).expect("a heartbeat serializes");
            if let Err(e) = store.put(&key, bytes, Precondition::None).await {
                tracing::warn!(error = %e, "cannot write the heartbeat; trying again at the next");
            }
        }
        if let Err(e) = store.delete(&key).await {
            tracing::warn!(error = %e, "cannot delete the heartbeat record; it will show this worker as dead");
        }
    });
    Some(Beating { stop, task })
}

impl Beating {
    /// Stops the heartbeat and deletes its record (a clean exit), waiting at most
    /// [`STOP_WAIT`]: a store that does not answer never holds the exit up.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(STOP_WAIT, self.task).await;
    }
}

fn counters(stats: &Stats) -> BTreeMap<String, u64> {
    let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    BTreeMap::from([
        ("done".into(), read(&stats.done)),
        ("already_done".into(), read(&stats.already_done)),
        ("dead_lettered".into(), read(&stats.dead_lettered)),
        ("retried".into(), read(&stats.retried)),
        ("busy".into(), read(&stats.busy)),
        ("conflicts".into(), read(&stats.conflicts)),
        ("leases_lost".into(), read(&stats.leases_lost)),
        ("interrupted".into(), read(&stats.interrupted)),
        ("host_faults".into(), read(&stats.host_faults)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::DirStore;

    /// Records and probe objects older than a week go; a recent record stays.
    #[tokio::test]
    async fn only_records_older_than_a_week_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        for key in ["workers/killed", "workers/live", "taskhost-probe/killed"] {
            store
                .put(key, b"{}".to_vec(), Precondition::None)
                .await
                .unwrap();
        }
        let week_and_a_day = DEAD_RECORD_KEPT + Duration::from_secs(24 * 3600);
        for key in ["workers/killed", "taskhost-probe/killed"] {
            let file = std::fs::File::options()
                .write(true)
                .open(tmp.path().join(key))
                .unwrap();
            file.set_modified(std::time::SystemTime::now() - week_and_a_day)
                .unwrap();
        }
        assert_eq!(prune_dead(&store, crate::time::now_ms()).await, 2);
        assert!(store.exists("workers/live").await.unwrap());
        assert!(!store.exists("workers/killed").await.unwrap());
        assert!(!store.exists("taskhost-probe/killed").await.unwrap());
        assert_eq!(prune_dead(&store, crate::time::now_ms()).await, 0);
    }
}
