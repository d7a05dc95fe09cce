//! The worker's heartbeat: `workers/<worker id>` rewritten every `HEARTBEAT_SECONDS` (its
//! id, machine, slots, running and committing jobs, counters, version), deleted when it exits cleanly, so
//! `taskhost status --workers` lists live and recently dead workers without a metrics stack.
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
