//! Workers' heartbeats (`workers/<worker id>`, docs/design.md §3): the record a worker
//! writes every `HEARTBEAT_SECONDS`, and how `status --workers` reads them.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::store::ObjectStore;

/// A worker's heartbeat record (JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    /// The worker's id (also its record's key, `workers/<worker id>`).
    pub worker_id: String,
    /// `SALAD_MACHINE_ID` when set, else the host name.
    pub machine: String,
    /// Jobs it runs at most at once (`WORKER_SLOTS`).
    pub slots: usize,
    /// The jobs it runs now (each holding a slot).
    pub running: usize,
    /// Jobs whose run ended, holding a commit place (no slot) until their result is durable
    /// and their message settled (the directory store's group commit); 0 in records of
    /// workers before this field.
    #[serde(default)]
    pub committing: usize,
    /// Its counters since it started, by name (`done`, `dead_lettered`, ...).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// taskhost's version.
    pub version: String,
    /// When it started and when it wrote this record (its clock, ms since the Unix epoch).
    pub started_ms: u64,
    /// When it wrote this record (its clock, ms since the Unix epoch).
    pub updated_ms: u64,
    /// How often it writes this record (ms): a record older than about two of these is a
    /// dead worker's.
    pub interval_ms: u64,
}

/// A heartbeat as shown: live or recently dead.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WorkerView {
    /// The record as read (flattened into the view's JSON).
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Written within [`live_for`] of the store's time (the store's clock).
    pub live: bool,
    /// The record's age by the store's clock (ms).
    pub age_ms: u64,
}

/// How old a heartbeat record may be while its worker is live: 2.5 of its intervals, and
/// 2 s for the listing's whole-second `LastModified` and a slow write.
pub fn live_for(interval_ms: u64) -> u64 {
    interval_ms.saturating_mul(5) / 2 + 2000
}

/// A dead worker's record is shown for a day after its last heartbeat.
pub const RECENTLY_DEAD_MS: u64 = 24 * 3600 * 1000;

/// Every worker's heartbeat written within [`RECENTLY_DEAD_MS`]: one listing and one read
/// per worker.
pub async fn read_all<S: ObjectStore>(store: &S, now_ms: u64) -> anyhow::Result<Vec<WorkerView>> {
    let mut listed = store.list_entries(keys::WORKERS_PREFIX).await?;
    listed.retain(|l| now_ms.saturating_sub(l.modified_ms) <= RECENTLY_DEAD_MS);
    let mut reads = futures_util::stream::iter(listed)
        .map(|l| async move { (store.get(&l.key).await, l.modified_ms) })
        .buffered(16);
    let mut out = Vec::new();
    while let Some((read, modified_ms)) = reads.next().await {
        let Some(object) = read? else { continue };
        // A record that does not parse is not a worker's (or a newer version's): skipped.
        let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&object.bytes) else {
            continue;
        };
        let age_ms = now_ms.saturating_sub(modified_ms);
        let live = age_ms <= live_for(heartbeat.interval_ms);
        out.push(WorkerView {
            heartbeat,
            live,
            age_ms,
        });
    }
    out.sort_by(|a, b| (!a.live, &a.heartbeat.worker_id).cmp(&(!b.live, &b.heartbeat.worker_id)));
    Ok(out)
}
