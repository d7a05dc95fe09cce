//! The job's artifacts: streamed into `jobs/<id>/artifacts/<name>` in parts of
//! [`PART_BYTES`] (a multipart upload once an artifact outgrows one part, else one write at
//! `finish`), fenced like checkpoint writes, recorded in the checkpoint header so a resumed
//! run can continue them, and listed in the job's manifest when its result is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{ArtifactRecord, FileLimits, MAX_OPEN_ARTIFACTS, Manifest, ManifestEntry, PART_BYTES};
use crate::checkpoint::Checkpointer;
use crate::ids::JobId;
use crate::keys;
use crate::store::any::AnyStore;
use crate::store::{ObjectStore, Precondition};

/// Why an artifact operation failed (the WIT `artifact-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactError {
    InvalidName(String),
    TooLarge(u64),
    JobLimit(u64),
    Finished,
    Conflict,
    Storage(String),
}

/// The guest's handle on an open artifact (the WIT resource `artifact`).
#[derive(Debug)]
pub struct ArtifactHandle(u64);

/// The job's artifacts in this run. Cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    store: AnyStore,
    job: JobId,
    checkpoint: Checkpointer,
    limits: FileLimits,
    state: Arc<Mutex<State>>,
    /// A store failure was reported to the task in this run.
    storage_failed: Arc<AtomicBool>,
}

struct State {
    next_id: u64,
    open: HashMap<u64, Open>,
    /// Finished artifacts (this run's, and earlier runs' that the checkpoint recorded).
    finished: BTreeMap<String, ManifestEntry>,
    /// Open artifacts an earlier run recorded, until resumed.
    resumable: BTreeMap<String, ArtifactRecord>,
}

struct Open {
    name: String,
    upload: Option<String>,
    parts: Vec<String>,
    /// Bytes in uploaded parts.
    durable: u64,
    /// Bytes not yet uploaded (less than a part after every write).
    buf: Vec<u8>,
    done: bool,
}

impl Open {
    fn size(&self) -> u64 {
        self.durable + self.buf.len() as u64
    }

    fn record(&self) -> ArtifactRecord {
        ArtifactRecord {
            name: self.name.clone(),
            size: self.durable,
            finished: false,
            etag: None,
            upload: self.upload.clone(),
            parts: self.parts.clone(),
        }
    }
}

impl Artifacts {
    pub fn new(
        store: AnyStore,
        job: JobId,
        recorded: Vec<ArtifactRecord>,
        checkpoint: Checkpointer,
        limits: FileLimits,
    ) -> Artifacts {
        let mut finished = BTreeMap::new();
        let mut resumable = BTreeMap::new();
        for r in recorded {
            if r.finished {
                finished.insert(
                    r.name.clone(),
                    ManifestEntry {
                        name: r.name,
                        size: r.size,
                        etag: r.etag.unwrap_or_default(),
                    },
                );
            } else {
                resumable.insert(r.name.clone(), r);
            }
        }
        Artifacts {
            store,
            job,
            checkpoint,
            limits,
            storage_failed: Arc::default(),
            state: Arc::new(Mutex::new(State {
                next_id: 0,
                open: HashMap::new(),
                finished,
                resumable,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a checkpoint saved now records: finished artifacts and how far open ones are
    /// durable.
    pub fn snapshot(&self) -> Vec<ArtifactRecord> {
        let st = self.lock();
        let finished = st.finished.values().map(|e| ArtifactRecord {
            name: e.name.clone(),
            size: e.size,
            finished: true,
            etag: Some(e.etag.clone()),
            upload: None,
            parts: Vec::new(),
        });
        let open = st.open.values().filter(|o| !o.done).map(Open::record);
        let resumable = st.resumable.values().cloned();
        let mut all: Vec<_> = finished.chain(open).chain(resumable).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn check_new(&self, st: &State, name: &str) -> Result<(), ArtifactError> {
        super::check_name(name).map_err(ArtifactError::InvalidName)?;
        if st.open.values().any(|o| o.name == name && !o.done) {
            return Err(ArtifactError::InvalidName(format!(
                "artifact `{name}` is open already"
            )));
        }
        if st.open.values().filter(|o| !o.done).count() >= MAX_OPEN_ARTIFACTS {
            return Err(ArtifactError::JobLimit(MAX_OPEN_ARTIFACTS as u64));
        }
        let count = st.finished.len() + st.open.values().filter(|o| !o.done).count();
        if !st.finished.contains_key(name) && count >= self.limits.max_artifacts as usize {
            return Err(ArtifactError::JobLimit(self.limits.max_artifacts as u64));
        }
        Ok(())
    }

    fn insert(&self, st: &mut State, open: Open) -> ArtifactHandle {
        let id = st.next_id;
        st.next_id += 1;
        st.open.insert(id, open);
        ArtifactHandle(id)
    }

    /// Starts `name` empty; a finished artifact of that name is replaced when this one
    /// finishes.
    pub fn create(&self, name: &str) -> Result<ArtifactHandle, ArtifactError> {
        let mut st = self.lock();
        self.check_new(&st, name)?;
        if let Some(old) = st.resumable.remove(name) {
            self.abort_later(name, old.upload);
        }
        let open = Open {
            name: name.to_owned(),
            upload: None,
            parts: Vec::new(),
            durable: 0,
            buf: Vec::new(),
            done: false,
        };
        Ok(self.insert(&mut st, open))
    }

    /// Continues `name` as the checkpoint recorded it; `None` if it recorded no open one.
    pub fn resume(&self, name: &str) -> Result<Option<ArtifactHandle>, ArtifactError> {
        let mut st = self.lock();
        self.check_new(&st, name)?;
        let Some(rec) = st.resumable.remove(name) else {
            return Ok(None);
        };
        let open = Open {
            name: rec.name,
            upload: rec.upload,
            parts: rec.parts,
            durable: rec.size,
            buf: Vec::new(),
            done: false,
        };
        Ok(Some(self.insert(&mut st, open)))
    }

    /// Whether a store failure was reported to the task in this run.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    pub fn size(&self, h: &ArtifactHandle) -> u64 {
        self.lock().open.get(&h.0).map_or(0, Open::size)
    }

    /// Bytes of all artifacts, finished and open, but `except` (a name being replaced).
    fn total(st: &State, except: &str) -> u64 {
        let finished: u64 = st
            .finished
            .values()
            .filter(|e| e.name != except)
            .map(|e| e.size)
            .sum();
        finished
            + st.open
                .values()
                .filter(|o| !o.done)
                .map(Open::size)
                .sum::<u64>()
    }

    /// The fence: `Conflict` (and the job marked lost) unless this worker still owns it.
    async fn fence(&self) -> Result<(), ArtifactError> {
        if self.checkpoint.confirm_owned().await {
            Ok(())
        } else {
            tracing::warn!(job = %self.job, "artifact write refused: this worker no longer owns the job");
            self.checkpoint.lose();
            Err(ArtifactError::Conflict)
        }
    }

    fn storage(&self, name: &str, e: impl std::fmt::Display) -> ArtifactError {
        self.storage_failed.store(true, Ordering::Relaxed);
        tracing::warn!(job = %self.job, artifact = name, error = %e, "artifact upload failed");
        ArtifactError::Storage(format!(
            "the object store failed writing artifact `{name}` (the worker's log says why)"
        ))
    }

    /// Appends `data`, uploading every whole part.
    pub async fn write(&self, h: &ArtifactHandle, data: Vec<u8>) -> Result<(), ArtifactError> {
        let (name, key) = {
            let mut st = self.lock();
            let total = Self::total(&st, "");
            let Some(open) = st.open.get_mut(&h.0) else {
                return Err(ArtifactError::Finished);
            };
            if open.done {
                return Err(ArtifactError::Finished);
            }
            let size = open.size() + data.len() as u64;
            if size > self.limits.artifact_bytes {
                return Err(ArtifactError::TooLarge(self.limits.artifact_bytes));
            }
            if total + data.len() as u64 > self.limits.artifacts_total_bytes {
                return Err(ArtifactError::JobLimit(self.limits.artifacts_total_bytes));
            }
            open.buf.extend_from_slice(&data);
            if open.buf.len() < PART_BYTES {
                return Ok(());
            }
            (open.name.clone(), keys::artifact(&self.job, &open.name))
        };
        loop {
            let (upload, number, part) = {
                let mut st = self.lock();
                let open = st.open.get_mut(&h.0).expect("the artifact is open");
                if open.buf.len() < PART_BYTES {
                    return Ok(());
                }
                let part: Vec<u8> = open.buf.drain(..PART_BYTES).collect();
                (open.upload.clone(), open.parts.len() as u32 + 1, part)
            };
            self.fence().await?;
            let upload = match upload {
                Some(u) => u,
                None => {
                    let u = self
                        .store
                        .upload_start(&key)
                        .await
                        .map_err(|e| self.storage(&name, e))?;
                    self.lock().open.get_mut(&h.0).expect("open").upload = Some(u.clone());
                    u
                }
            };
            let tag = match self.store.upload_part(&key, &upload, number, part).await {
                Ok(tag) => tag,
                Err(e) => {
                    // The part's bytes are lost with the call: the artifact cannot go on.
                    self.lock().open.get_mut(&h.0).expect("open").done = true;
                    return Err(self.storage(&name, e));
                }
            };
            let mut st = self.lock();
            let open = st.open.get_mut(&h.0).expect("the artifact is open");
            open.parts.push(tag);
            open.durable += PART_BYTES as u64;
        }
    }

    /// Ends the artifact: uploads what is left and makes it the object under its key.
    pub async fn finish(&self, h: &ArtifactHandle) -> Result<u64, ArtifactError> {
        let (name, upload, parts, tail, size) = {
            let mut st = self.lock();
            let Some(open) = st.open.get_mut(&h.0) else {
                return Err(ArtifactError::Finished);
            };
            if open.done {
                return Err(ArtifactError::Finished);
            }
            open.done = true;
            let size = open.size();
            (
                open.name.clone(),
                open.upload.take(),
                std::mem::take(&mut open.parts),
                std::mem::take(&mut open.buf),
                size,
            )
        };
        let key = keys::artifact(&self.job, &name);
        self.fence().await?;
        let etag = match upload {
            None => self.store.put(&key, tail, Precondition::None).await,
            Some(upload) => {
                let mut parts = parts;
                if !tail.is_empty() {
                    let number = parts.len() as u32 + 1;
                    match self.store.upload_part(&key, &upload, number, tail).await {
                        Ok(tag) => parts.push(tag),
                        Err(e) => return Err(self.storage(&name, e)),
                    }
                    self.fence().await?;
                }
                self.store.upload_complete(&key, &upload, &parts).await
            }
        }
        .map_err(|e| self.storage(&name, e))?;
        let mut st = self.lock();
        st.open.remove(&h.0);
        st.finished.insert(
            name.clone(),
            ManifestEntry {
                name,
                size,
                etag: etag.0,
            },
        );
        Ok(size)
    }

    /// The guest dropped its handle: an unfinished artifact is discarded.
    pub fn drop_handle(&self, h: ArtifactHandle) {
        let open = self.lock().open.remove(&h.0);
        if let Some(open) = open
            && !open.done
        {
            self.abort_later(&open.name, open.upload);
        }
    }

    fn abort_later(&self, name: &str, upload: Option<String>) {
        let Some(upload) = upload else { return };
        let (store, key) = (self.store.clone(), keys::artifact(&self.job, name));
        tokio::spawn(async move {
            let _ = store.upload_abort(&key, &upload).await;
        });
    }

    /// At the end of a finished run: discards what was never finished and returns the
    /// manifest of the finished artifacts (empty if there are none).
    pub fn close(&self) -> Manifest {
        let mut st = self.lock();
        let open: Vec<_> = st.open.drain().map(|(_, o)| (o.name, o.upload)).collect();
        let resumable: Vec<_> = std::mem::take(&mut st.resumable)
            .into_values()
            .map(|r| (r.name, r.upload))
            .collect();
        let artifacts = st.finished.values().cloned().collect();
        drop(st);
        for (name, upload) in open.into_iter().chain(resumable) {
            self.abort_later(&name, upload);
        }
        Manifest { artifacts }
    }
}
