//! A job's files: the input objects its message names ([`Inputs`]) and the artifacts its
//! task writes ([`Artifacts`]), behind the WIT interfaces `inputs` and `artifacts`
//! (docs/design.md "Inputs and artifacts").
//!
//! **Invariants:** a task sees input names only, never keys or the bucket (errors it sees
//! name the input, and the host logs the store's own message); every artifact write is fenced
//! like a checkpoint write: nothing is uploaded once the job's checkpoint conflicted or the
//! lease it records is ending ([`Fence::confirm_owned`], the only part of the job's
//! checkpointer `files` sees); an artifact becomes part of the job's
//! outputs only through the manifest written just before the result.
//!
//! **API boundary:** the runtime calls these types from its host functions; they speak
//! [`AnyStore`] and know nothing of wasmtime.

mod artifacts;
mod inputs;
pub mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use artifacts::{ArtifactError, ArtifactHandle, Artifacts};
/// Public only for the fuzz targets (host/fuzz); not part of the API.
#[doc(hidden)]
pub use inputs::window_range;
pub use inputs::{InputError, Inputs};
// Where they are defined: the checkpoint header records artifacts; names are ids.
pub use crate::checkpoint::ArtifactRecord;
pub use crate::ids::check_name;

use crate::checkpoint::Fence;
use crate::ids::{InputName, JobId};
use crate::store::any::AnyStore;

/// Bytes of one artifact part (all parts but the last are this size, as R2 requires).
pub const PART_BYTES: usize = 8 << 20;
/// Most bytes one `inputs.read` returns (and the host's read-ahead window per input).
pub const MAX_READ_BYTES: usize = 8 << 20;
/// Most parts of one multipart upload (S3 and R2).
const MAX_PARTS: u64 = 10_000;
/// Largest artifact the part size allows: 10,000 parts of [`PART_BYTES`] (78 GiB).
pub const MAX_ARTIFACT_BYTES: u64 = MAX_PARTS * PART_BYTES as u64;
/// Most artifacts open at once in one run (each buffers up to a part in host memory).
pub const MAX_OPEN_ARTIFACTS: usize = 8;

/// Default limit of input bytes one run may read: 100 GiB.
pub const DEFAULT_INPUT_READ_BYTES: u64 = 100 << 30;
/// Default largest artifact: 10 GiB.
pub const DEFAULT_ARTIFACT_BYTES: u64 = 10 << 30;
/// Default limit of a job's artifacts together: 20 GiB.
pub const DEFAULT_ARTIFACTS_TOTAL_BYTES: u64 = 20 << 30;
/// Default most artifacts of one job.
pub const DEFAULT_MAX_ARTIFACTS: u32 = 1000;

/// Limits of a job's files.
#[derive(Clone, Debug)]
pub struct FileLimits {
    /// Input bytes one run may read.
    pub input_read_bytes: u64,
    /// Largest artifact (bytes).
    pub artifact_bytes: u64,
    /// All the job's artifacts together (bytes).
    pub artifacts_total_bytes: u64,
    /// Most artifacts of one job.
    pub max_artifacts: u32,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            input_read_bytes: DEFAULT_INPUT_READ_BYTES,
            artifact_bytes: DEFAULT_ARTIFACT_BYTES,
            artifacts_total_bytes: DEFAULT_ARTIFACTS_TOTAL_BYTES,
            max_artifacts: DEFAULT_MAX_ARTIFACTS,
        }
    }
}

/// One artifact of a finished job, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The artifact's name (its key is `jobs/<id>/artifacts/<name>`).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// The store's tag of the object written.
    pub etag: String,
}

/// `jobs/<id>/manifest`: the artifacts of a finished job, written just before its result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every finished artifact, one entry per name.
    pub artifacts: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads a finished job's manifest; a job without one has no artifacts.
    pub async fn read(store: &AnyStore, job: &JobId) -> anyhow::Result<Manifest> {
        use crate::store::ObjectStore;
        match store.get(&crate::keys::manifest(job)).await? {
            None => Ok(Manifest::default()),
            Some(obj) => Manifest::decode(&obj.bytes),
        }
    }

    /// The stored form of a manifest (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }

    /// Reads what [`Manifest::encode`] wrote; any other bytes are an error, never a panic.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Manifest> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Bytes of all the artifacts listed.
    pub fn total_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

/// A job's inputs and artifacts for one run.
#[derive(Clone)]
pub struct JobFiles {
    /// The input objects the job's message names.
    pub inputs: Inputs,
    /// The artifacts the run writes.
    pub artifacts: Artifacts,
    /// Time the task's input and artifact calls spent in the host (waiting on the store).
    pub store_wait: StoreWait,
}

/// Time a run's input and artifact calls spent in the host, the call in progress included:
/// a slow store's time, which the task's wall-clock limit does not count (a slow store is
/// not the task's failure) up to a credit as long as the limit itself ([`StoreWait::credit`]).
#[derive(Clone, Debug, Default)]
pub struct StoreWait(Arc<std::sync::Mutex<(Duration, Option<Instant>)>>);

impl StoreWait {
    /// The time so far.
    pub fn total(&self) -> Duration {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.0 + st.1.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// What the wall-clock limit `limit` adds back for the store: the time so far, at most
    /// `limit` itself. So a run ends within twice its limit whatever it calls: a task whose
    /// calls are nearly all store wait (one-byte reads, empty artifacts, in a loop) cannot
    /// stay forever, and an honest one may wait on a slow store as long as it may run.
    pub fn credit(&self, limit: Duration) -> Duration {
        self.total().min(limit)
    }

    /// Counts the time until the returned guard is dropped.
    pub fn start(&self) -> Waiting {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(Instant::now());
        Waiting(self.clone())
    }
}

/// A call in progress (see [`StoreWait::start`]).
pub struct Waiting(StoreWait);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut st = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = st.1.take() {
            st.0 += since.elapsed();
        }
    }
}

impl JobFiles {
    /// The files of `job`: `inputs` (name → key) from its message, and the artifacts its
    /// checkpoint recorded (`recorded`).
    pub fn new(
        store: AnyStore,
        job: &JobId,
        inputs: BTreeMap<InputName, String>,
        recorded: Vec<ArtifactRecord>,
        fence: impl Into<Fence>,
        limits: &FileLimits,
    ) -> JobFiles {
        JobFiles {
            inputs: Inputs::new(store.clone(), inputs, limits.input_read_bytes),
            artifacts: Artifacts::new(store, job.clone(), recorded, fence.into(), limits.clone()),
            store_wait: StoreWait::default(),
        }
    }

    /// Whether the store failed for an input or artifact call of the task in this run: the
    /// task's own failure that may follow is then not to be believed (see `exec`).
    pub fn storage_failed(&self) -> bool {
        self.inputs.storage_failed() || self.artifacts.storage_failed()
    }

    /// The files of a job whose message names no inputs and whose checkpoint records no
    /// artifacts, under the default limits; `fence` is the job's [`Checkpointer`]'s
    /// ([`Checkpointer::fence`]), or the checkpointer itself.
    ///
    /// [`Checkpointer`]: crate::checkpoint::Checkpointer
    /// [`Checkpointer::fence`]: crate::checkpoint::Checkpointer::fence
    pub fn plain(store: impl Into<AnyStore>, job: &JobId, fence: impl Into<Fence>) -> JobFiles {
        let limits = FileLimits::default();
        JobFiles::new(
            store.into(),
            job,
            BTreeMap::new(),
            Vec::new(),
            fence,
            &limits,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::StoreWait;

    /// The store's time is added back up to the limit, never more.
    #[test]
    fn the_store_wait_credit_is_at_most_the_limit() {
        let limit = Duration::from_secs(10);
        for (waited, credit) in [(0, 0), (4, 4), (10, 10), (11, 10), (1_000_000, 10)] {
            let wait = StoreWait::default();
            wait.0.lock().unwrap().0 = Duration::from_secs(waited);
            assert_eq!(wait.credit(limit), Duration::from_secs(credit), "{waited}");
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::{Manifest, ManifestEntry};

    fn manifests() -> impl Strategy<Value = Manifest> {
        proptest::collection::vec(
            (any::<String>(), any::<u64>(), any::<String>())
                .prop_map(|(name, size, etag)| ManifestEntry { name, size, etag }),
            0..8,
        )
        .prop_map(|artifacts| Manifest { artifacts })
    }

    const KEYS: &[&str] = &["artifacts", "name", "size", "etag"];

    /// Bytes to decode: arbitrary ones, any JSON, or manifest-shaped JSON whose fields are
    /// mostly of the right type.
    fn texts() -> impl Strategy<Value = Vec<u8>> {
        use serde_json::Value;
        let any_json = || crate::props::json(KEYS, KEYS);
        let entry = (
            prop_oneof![3 => any::<String>().prop_map(Value::from), 1 => any_json()],
            prop_oneof![3 => any::<u64>().prop_map(Value::from), 1 => any_json()],
            prop_oneof![3 => any::<String>().prop_map(Value::from), 1 => any_json()],
            proptest::option::weighted(0.2, (any::<String>(), any_json())),
        )
            .prop_map(|(name, size, etag, extra)| {
                let mut e = serde_json::json!({"name": name, "size": size, "etag": etag});
                if let Some((k, v)) = extra {
                    e[k] = v;
                }
                e
            });
        let shaped = proptest::collection::vec(entry, 0..4)
            .prop_map(|a| serde_json::to_vec(&serde_json::json!({ "artifacts": a })).unwrap());
        prop_oneof![crate::props::bytes_or_json(KEYS, KEYS), shaped]
    }

    proptest! {
        #[test]
        fn decode_round_trips(m in manifests()) {
            prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        }

        /// Any bytes: no panic; what it accepts encodes back to the same manifest.
        #[test]
        fn decode_never_panics(bytes in texts()) {
            if let Ok(m) = Manifest::decode(&bytes) {
                prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
            }
        }
    }
}
