//! The checkpoint object and the fencing protocol (DESIGN.md "Lease, yield and fencing").
//!
//! `jobs/<job_id>/checkpoint` holds a small versioned [`Header`] (attempts, failures,
//! progress, fuel used, a per-write nonce) and the task's own bytes. It is also the job's
//! fence: a worker [`claim`]s it with a conditional write, and every later write is
//! conditional on the tag it last wrote. A worker whose lease lapsed and whose job was
//! claimed by another gets `PreconditionFailed`, learns it lost the job, and never writes
//! again.
//!
//! Saves from the task do not wait for the upload: [`Checkpointer::save`] keeps the newest
//! bytes in memory and a background writer uploads them, coalescing saves so that a key is
//! written at most once per [`Limits::min_write_interval`] (R2 allows one write per second
//! per key). [`Checkpointer::finish`] makes the last save durable.
//!
//! **Invariant:** after a conflict, nothing is written by this worker for this job.
//! **API boundary:** this module speaks only [`ObjectStore`]; it works the same on R2 and on
//! a directory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::ids::JobId;
use crate::store::{ETag, ObjectStore, Precondition, StoreError};

const MAGIC: &[u8; 4] = b"THCP";
const FORMAT_VERSION: u8 = 1;

/// Default largest checkpoint a task may save (bytes of task data).
pub const DEFAULT_MAX_CHECKPOINT_BYTES: usize = 16 * 1024 * 1024;
/// Default least time between two writes of one checkpoint object (R2: 1 write/s/key).
pub const DEFAULT_MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The storage key of a job's checkpoint.
pub fn key(job: &JobId) -> String {
    format!("jobs/{job}/checkpoint")
}

/// The bookkeeping the host keeps beside the task's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Runs started (1 = the first run). Incremented by every claim.
    pub attempts: u32,
    /// Runs that ended in a trap (panic, fuel, memory, timeout). Interruptions don't count.
    pub failures: u32,
    /// Last progress the task reported: (done, total).
    #[serde(default)]
    pub progress: Option<(u64, u64)>,
    /// Fuel consumed over all runs.
    #[serde(default)]
    pub fuel_used: u64,
    /// The reason of the last failure, if any.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Which worker wrote this version (for `status`).
    #[serde(default)]
    pub owner: String,
    /// Milliseconds since the Unix epoch at this write.
    #[serde(default)]
    pub updated_ms: u64,
    /// Random per write, so every write changes the ETag even when nothing else changed.
    pub nonce: String,
}

/// Encodes a checkpoint object: magic, version, header length, JSON header, task bytes.
pub fn encode(header: &Header, data: Option<&[u8]>) -> Vec<u8> {
    let head = serde_json::to_vec(header).expect("header serializes");
    let mut out = Vec::with_capacity(10 + head.len() + data.map_or(0, |d| d.len()));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(data.is_some() as u8);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    if let Some(d) = data {
        out.extend_from_slice(d);
    }
    out
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> anyhow::Result<(Header, Option<Vec<u8>>)> {
    anyhow::ensure!(
        bytes.len() >= 10 && &bytes[..4] == MAGIC,
        "not a taskhost checkpoint object"
    );
    anyhow::ensure!(
        bytes[4] == FORMAT_VERSION,
        "checkpoint format version {} is not supported (this host reads {FORMAT_VERSION})",
        bytes[4]
    );
    let has_data = bytes[5] == 1;
    let len = u32::from_be_bytes(bytes[6..10].try_into().unwrap()) as usize;
    let rest = &bytes[10..];
    anyhow::ensure!(rest.len() >= len, "checkpoint header is truncated");
    let header: Header = serde_json::from_slice(&rest[..len])?;
    let data = has_data.then(|| rest[len..].to_vec());
    Ok((header, data))
}

fn nonce() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex::encode(b)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a checkpoint operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// Another worker owns the job now. Stop; write nothing.
    Conflict,
    /// Data larger than the limit (bytes).
    TooLarge(u64),
    /// The store failed (after retries).
    Storage(String),
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::Conflict => {
                f.write_str("another worker took over this job (checkpoint changed under us)")
            }
            CheckpointError::TooLarge(limit) => write!(f, "checkpoint larger than {limit} bytes"),
            CheckpointError::Storage(m) => write!(f, "checkpoint storage failed: {m}"),
        }
    }
}

impl std::error::Error for CheckpointError {}

/// Limits of the checkpoint writer.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    pub min_write_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_CHECKPOINT_BYTES,
            min_write_interval: DEFAULT_MIN_WRITE_INTERVAL,
        }
    }
}

/// What a successful claim found.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The header as written by the claim (attempts already incremented).
    pub header: Header,
    /// The task's bytes from the previous run, if it saved any.
    pub data: Option<Vec<u8>>,
    etag: ETag,
}

/// Claims the job's checkpoint for this worker: reads it, increments `attempts`, and writes
/// it back conditionally (`If-None-Match: *` when there is none, `If-Match` otherwise).
///
/// `Err(Conflict)` means another worker claimed it between our read and our write.
pub async fn claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    owner: &str,
) -> Result<Claimed, CheckpointError> {
    let key = key(job);
    let current = store.get(&key).await.map_err(storage)?;
    let (mut header, data, pre) = match current {
        None => (Header::default(), None, Precondition::Absent),
        Some(obj) => {
            let (h, d) = decode(&obj.bytes)
                .map_err(|e| CheckpointError::Storage(format!("{key} is unreadable: {e:#}")))?;
            (h, d, Precondition::Matches(obj.etag))
        }
    };
    header.attempts += 1;
    header.owner = owner.to_owned();
    header.updated_ms = now_ms();
    header.nonce = nonce();
    let etag = store
        .put(&key, encode(&header, data.as_deref()), pre)
        .await
        .map_err(write_error)?;
    Ok(Claimed { header, data, etag })
}

/// Reads a job's checkpoint header without claiming it (for `status`).
pub async fn peek<S: ObjectStore>(store: &S, job: &JobId) -> anyhow::Result<Option<Header>> {
    match store.get(&key(job)).await? {
        None => Ok(None),
        Some(obj) => Ok(Some(decode(&obj.bytes)?.0)),
    }
}

fn storage(e: StoreError) -> CheckpointError {
    CheckpointError::Storage(e.to_string())
}

fn write_error(e: StoreError) -> CheckpointError {
    match e {
        StoreError::PreconditionFailed => CheckpointError::Conflict,
        other => storage(other),
    }
}

/// State shared between the task's host calls and the background writer.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    header: Header,
    /// The newest data the task saved (what `load` returns).
    latest: Option<Arc<Vec<u8>>>,
    /// Whether `latest` or the header changed since the last write.
    dirty: bool,
    conflict: bool,
    /// The last write's error, cleared by a successful write.
    error: Option<String>,
    writes: u64,
}

enum Cmd {
    /// Write now if anything is dirty (still honouring the interval), then answer.
    Flush(oneshot::Sender<Result<(), CheckpointError>>),
}

/// The task's view of its checkpoint, and the host's handle on the background writer.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Cmd>,
    max_bytes: usize,
}

impl Checkpointer {
    /// Starts the background writer for a claimed checkpoint. The writer stops when every
    /// `Checkpointer` clone is dropped, or at the first conflict.
    pub fn start<S: ObjectStore + Clone>(
        store: S,
        job: &JobId,
        claimed: Claimed,
        limits: Limits,
    ) -> Checkpointer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                header: claimed.header,
                latest: claimed.data.map(Arc::new),
                dirty: false,
                conflict: false,
                error: None,
                writes: 0,
            }),
            wake: Notify::new(),
        });
        let (cmds, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(
            store,
            key(job),
            claimed.etag,
            shared.clone(),
            rx,
            limits.min_write_interval,
        ));
        Checkpointer {
            shared,
            cmds,
            max_bytes: limits.max_bytes,
        }
    }

    /// Accepts `data` as the newest checkpoint; the upload happens in the background.
    pub fn save(&self, data: Vec<u8>) -> Result<(), CheckpointError> {
        if data.len() > self.max_bytes {
            return Err(CheckpointError::TooLarge(self.max_bytes as u64));
        }
        {
            let mut st = self.shared.state.lock().unwrap();
            if st.conflict {
                return Err(CheckpointError::Conflict);
            }
            st.latest = Some(Arc::new(data));
            st.dirty = true;
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The newest checkpoint data (saved in this run or loaded by the claim).
    pub fn load(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        let st = self.shared.state.lock().unwrap();
        if st.conflict {
            return Err(CheckpointError::Conflict);
        }
        Ok(st.latest.as_ref().map(|d| d.to_vec()))
    }

    /// Records progress; stored with the next write.
    pub fn report_progress(&self, done: u64, total: u64) {
        self.shared.state.lock().unwrap().header.progress = Some((done, total));
    }

    /// Changes the header (failures, fuel, ...); stored with the next write or [`finish`].
    ///
    /// [`finish`]: Checkpointer::finish
    pub fn update_header(&self, f: impl FnOnce(&mut Header)) {
        let mut st = self.shared.state.lock().unwrap();
        f(&mut st.header);
        st.dirty = true;
    }

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        self.shared.state.lock().unwrap().header.clone()
    }

    /// Whether another worker took the job over.
    pub fn is_conflicted(&self) -> bool {
        self.shared.state.lock().unwrap().conflict
    }

    /// Number of completed writes (excluding the claim).
    pub fn writes(&self) -> u64 {
        self.shared.state.lock().unwrap().writes
    }

    /// Makes everything saved so far durable (waiting out the write interval if needed).
    /// `Err(Conflict)` if the job was taken over; `Err(Storage)` if the store keeps failing.
    pub async fn flush(&self) -> Result<(), CheckpointError> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Flush(tx)).is_err() {
            return self.final_state();
        }
        rx.await.unwrap_or_else(|_| self.final_state())
    }

    fn final_state(&self) -> Result<(), CheckpointError> {
        let st = self.shared.state.lock().unwrap();
        if st.conflict {
            Err(CheckpointError::Conflict)
        } else if st.dirty {
            Err(CheckpointError::Storage(
                st.error
                    .clone()
                    .unwrap_or_else(|| "checkpoint writer stopped".into()),
            ))
        } else {
            Ok(())
        }
    }
}

/// Attempts of one flush before it reports a storage error (the SDK retries inside each).
const FLUSH_TRIES: u32 = 5;

async fn writer<S: ObjectStore>(
    store: S,
    key: String,
    mut etag: ETag,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    interval: Duration,
) {
    let mut last_write = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let flush = tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Flush(tx)) => Some(tx),
                None => return,
            },
            _ = shared.wake.notified() => None,
        };
        let mut tries = 0;
        let result = loop {
            // One write per interval per key; saves that arrive meanwhile are coalesced.
            tokio::time::sleep_until(last_write + interval).await;
            let bytes = {
                let mut st = shared.state.lock().unwrap();
                if st.conflict {
                    break Err(CheckpointError::Conflict);
                }
                if !st.dirty {
                    break Ok(());
                }
                st.header.nonce = nonce();
                st.header.updated_ms = now_ms();
                st.dirty = false;
                encode(&st.header, st.latest.as_deref().map(|v| v.as_slice()))
            };
            last_write = Instant::now();
            match store
                .put(&key, bytes, Precondition::Matches(etag.clone()))
                .await
            {
                Ok(tag) => {
                    etag = tag;
                    backoff = Duration::from_millis(200);
                    let mut st = shared.state.lock().unwrap();
                    st.error = None;
                    st.writes += 1;
                    if !st.dirty {
                        break Ok(());
                    }
                }
                Err(StoreError::PreconditionFailed) => {
                    tracing::warn!(
                        key,
                        "checkpoint changed under us: another worker owns the job; stopping writes"
                    );
                    shared.state.lock().unwrap().conflict = true;
                    break Err(CheckpointError::Conflict);
                }
                Err(StoreError::Other(e)) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(key, error = %msg, "checkpoint write failed; will retry");
                    {
                        let mut st = shared.state.lock().unwrap();
                        st.dirty = true;
                        st.error = Some(msg.clone());
                    }
                    tries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if flush.is_none() {
                        // Retry from the top of the outer loop, so that a flush waiting
                        // in the channel is not starved by background retries.
                        shared.wake.notify_one();
                        break Err(CheckpointError::Storage(msg));
                    }
                    if tries >= FLUSH_TRIES {
                        break Err(CheckpointError::Storage(msg));
                    }
                }
            }
        };
        if let Some(tx) = flush {
            let _ = tx.send(result);
        }
        if shared.state.lock().unwrap().conflict {
            // Answer any further flushes with the conflict, write nothing more.
            while let Some(Cmd::Flush(tx)) = cmds.recv().await {
                let _ = tx.send(Err(CheckpointError::Conflict));
            }
            return;
        }
    }
}
