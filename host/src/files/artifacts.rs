//! The job's artifacts: streamed into `jobs/<id>/artifacts/<name>` in parts of
//! [`PART_BYTES`] (a multipart upload once an artifact outgrows one part, else one write at
//! `finish`), fenced like checkpoint writes, recorded in the checkpoint header so a resumed
//! run can continue them, and listed in the job's manifest when its result is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ArtifactRecord, FileLimits, MAX_OPEN_ARTIFACTS, Manifest, ManifestEntry, PART_BYTES};
use crate::checkpoint::Fence;
use crate::ids::JobId;
use crate::keys;
use crate::store::any::AnyStore;
use crate::store::{ETag, Multipart, ObjectStore, Precondition, StoreError};

/// Why an artifact operation failed (the WIT `artifact-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactError {
    /// The name is not a valid artifact name, or an artifact of that name is open in this
    /// run; the text says which.
    InvalidName(String),
    /// The artifact would exceed the per-artifact limit (bytes, given); nothing was written.
    TooLarge(u64),
    /// The job's artifacts would exceed the per-job total (bytes, given), or the job has as
    /// many artifacts as it may (the count, given).
    JobLimit(u64),
    /// The artifact was finished already; it takes no more writes.
    Finished,
    /// Another worker owns the job now, or this worker's hold on it ran out: the task should
    /// stop.
    Conflict,
    /// The store failed (after retries); the text names the artifact, the worker's log
    /// has the store's error.
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
    fence: Fence,
    limits: FileLimits,
    state: Arc<Mutex<State>>,
    /// A store failure was reported to the task in this run.
    storage_failed: Arc<AtomicBool>,
    /// Bytes uploaded in this run (the job's accounting).
    uploaded: Arc<AtomicU64>,
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
    /// The artifacts of `job`'s run, starting from those `recorded` in its checkpoint:
    /// finished ones are kept, unfinished ones may be continued by a `create` of the same
    /// name. Every write is fenced by `fence` and capped by `limits`.
    pub fn new(
        store: AnyStore,
        job: JobId,
        recorded: Vec<ArtifactRecord>,
        fence: Fence,
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
            fence,
            limits,
            storage_failed: Arc::default(),
            uploaded: Arc::default(),
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
            self.abort_if_owned(name, old.upload);
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

    /// Continues `name` as the checkpoint recorded it; `None` if it recorded no open one, or
    /// if the store no longer knows its upload (it aborts incomplete uploads by itself
    /// after a while): the task then starts the artifact again, and the job never loops on
    /// an upload that is gone.
    pub async fn resume(&self, name: &str) -> Result<Option<ArtifactHandle>, ArtifactError> {
        let rec = {
            let mut st = self.lock();
            self.check_new(&st, name)?;
            match st.resumable.remove(name) {
                Some(rec) => rec,
                None => return Ok(None),
            }
        };
        if let Some(upload) = &rec.upload {
            let key = keys::artifact(&self.job, name);
            match self.store.upload_exists(&key, upload).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job = %self.job, artifact = name, "the store no longer knows this artifact's upload; the task starts it again");
                    return Ok(None);
                }
                Err(e) => {
                    self.lock().resumable.insert(name.to_owned(), rec);
                    return Err(self.storage(name, e));
                }
            }
        }
        let mut st = self.lock();
        self.check_new(&st, name)?;
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

    /// Bytes of artifacts uploaded in this run.
    pub fn bytes_written(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Whether a store failure was reported to the task in this run.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    /// Bytes of the open artifact `h` so far (those continued from an earlier run
    /// included); 0 for a handle no longer open.
    pub fn size(&self, h: &ArtifactHandle) -> u64 {
        self.lock().open.get(&h.0).map_or(0, Open::size)
    }

    /// Bytes of all artifacts, finished and open, but `except` (a name being replaced).
    fn total(st: &State, except: &str) -> u64 {
        // Saturating: sizes recorded in a (damaged) checkpoint are not trusted to add up.
        let finished = st
            .finished
            .values()
            .filter(|e| e.name != except)
            .fold(0u64, |sum, e| sum.saturating_add(e.size));
        st.open
            .values()
            .filter(|o| !o.done)
            .fold(finished, |sum, o| sum.saturating_add(o.size()))
    }

    /// The fence: `Conflict` (and the job marked lost) unless this worker still owns the
    /// job; else how long it still does (what a write may take).
    async fn fence(&self) -> Result<Duration, ArtifactError> {
        match self.fence.confirm_owned().await {
            Some(left) => Ok(left),
            None => {
                tracing::warn!(job = %self.job, "artifact write refused: this worker no longer owns the job");
                Err(self.lost())
            }
        }
    }

    fn lost(&self) -> ArtifactError {
        self.fence.lose();
        ArtifactError::Conflict
    }

    /// One store call of an artifact write, made after the fence and bounded by the time the
    /// fence said this worker still owns the job: a call still running then may land after
    /// another worker claimed the job, so the job is given up (`Conflict`: handed back, not
    /// the task's failure) rather than waited for.
    async fn fenced<T>(
        &self,
        name: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ArtifactError> {
        let left = self.fence().await?;
        match tokio::time::timeout(left, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.storage(name, e)),
            Err(_) => {
                tracing::warn!(job = %self.job, artifact = name, "an artifact upload outlasted this worker's hold on the job; giving the job up");
                Err(self.lost())
            }
        }
    }

    fn storage(&self, name: &str, e: impl std::fmt::Display) -> ArtifactError {
        self.storage_failed.store(true, Ordering::Relaxed);
        tracing::warn!(job = %self.job, artifact = name, error = %e, "artifact upload failed");
        ArtifactError::Storage(format!(
            "the object store failed writing artifact `{name}` (the worker's log says why)"
        ))
    }

    /// Appends `data`, uploading every part it fills as it fills it: the host holds at most
    /// one part per open artifact besides the call's own `data`, however large that is.
    pub async fn write(&self, h: &ArtifactHandle, data: Vec<u8>) -> Result<(), ArtifactError> {
        let (name, key) = {
            let st = self.lock();
            let total = Self::total(&st, "");
            let open = st.open.get(&h.0).filter(|o| !o.done);
            let Some(open) = open else {
                return Err(ArtifactError::Finished);
            };
            let len = data.len() as u64;
            if open.size().saturating_add(len) > self.limits.artifact_bytes {
                return Err(ArtifactError::TooLarge(self.limits.artifact_bytes));
            }
            if total.saturating_add(len) > self.limits.artifacts_total_bytes {
                return Err(ArtifactError::JobLimit(self.limits.artifacts_total_bytes));
            }
            (open.name.clone(), keys::artifact(&self.job, &open.name))
        };
        let mut rest: &[u8] = &data;
        loop {
            let (upload, number, part) = {
                let mut st = self.lock();
                let Some(open) = st.open.get_mut(&h.0).filter(|o| !o.done) else {
                    return Err(ArtifactError::Finished);
                };
                let take = (PART_BYTES - open.buf.len()).min(rest.len());
                grow_within_part(&mut open.buf, take);
                open.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if open.buf.len() < PART_BYTES {
                    return Ok(());
                }
                let part = std::mem::take(&mut open.buf);
                (open.upload.clone(), open.parts.len() as u32 + 1, part)
            };
            let upload = match upload {
                Some(u) => u,
                None => {
                    let u = self.fenced(&name, self.store.upload_start(&key)).await;
                    let u = u.inspect_err(|_| self.give_up(h))?;
                    if let Some(open) = self.lock().open.get_mut(&h.0) {
                        open.upload = Some(u.clone());
                    }
                    u
                }
            };
            let tag = self
                .fenced(&name, self.store.upload_part(&key, &upload, number, part))
                .await
                // The part's bytes are lost with the call: the artifact cannot go on.
                .inspect_err(|_| self.give_up(h))?;
            let mut st = self.lock();
            let Some(open) = st.open.get_mut(&h.0) else {
                return Err(ArtifactError::Finished);
            };
            open.parts.push(tag);
            open.durable += PART_BYTES as u64;
            self.uploaded
                .fetch_add(PART_BYTES as u64, Ordering::Relaxed);
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// An artifact whose write failed part-way cannot go on: later calls get `Finished`.
    fn give_up(&self, h: &ArtifactHandle) {
        if let Some(open) = self.lock().open.get_mut(&h.0) {
            open.done = true;
            open.buf = Vec::new();
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
        let tail_bytes = tail.len() as u64;
        let etag = match upload {
            None => {
                let tag = self
                    .fenced(&name, self.store.put(&key, tail, Precondition::None))
                    .await?;
                self.uploaded.fetch_add(tail_bytes, Ordering::Relaxed);
                tag
            }
            Some(upload) => {
                let mut parts = parts;
                if !tail.is_empty() {
                    let number = parts.len() as u32 + 1;
                    let part = self.store.upload_part(&key, &upload, number, tail);
                    parts.push(self.fenced(&name, part).await?);
                    self.uploaded.fetch_add(tail_bytes, Ordering::Relaxed);
                }
                let left = self.fence().await?;
                let complete = self.store.upload_complete(&key, &upload, &parts);
                match tokio::time::timeout(left, complete).await {
                    Ok(Ok(tag)) => tag,
                    Ok(Err(e)) => match self.completed_anyway(&key, &upload, size).await {
                        Some(tag) => tag,
                        None => return Err(self.storage(&name, e)),
                    },
                    Err(_) => {
                        tracing::warn!(job = %self.job, artifact = %name, "an artifact's completion outlasted this worker's hold on the job; giving the job up");
                        return Err(self.lost());
                    }
                }
            }
        };
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

    async fn completed_anyway(&self, key: &str, upload: &str, size: u64) -> Option<ETag> {
        let tag = completed_anyway(&self.store, key, upload, size).await?;
        tracing::info!(job = %self.job, key, "the upload's completion answered with an error but happened");
        Some(tag)
    }

    /// The guest dropped its handle: an unfinished artifact is discarded.
    pub fn drop_handle(&self, h: ArtifactHandle) {
        let open = self.lock().open.remove(&h.0);
        if let Some(open) = open
            && !open.done
        {
            self.abort_if_owned(&open.name, open.upload);
        }
    }

    /// Aborts `upload` of `name` in the background, if this worker still owns the job then
    /// (the fence, as for a write): one that lost it never aborts an upload its new owner
    /// may be continuing from the checkpoint that records it.
    fn abort_if_owned(&self, name: &str, upload: Option<String>) {
        self.abort(name, upload, Some(self.fence.clone()));
    }

    /// Aborts `upload` of `name` in the background; with `fence`, only while it holds (and
    /// bounded by the time it still holds).
    fn abort(&self, name: &str, upload: Option<String>, fence: Option<Fence>) {
        let Some(upload) = upload else { return };
        let (store, key) = (self.store.clone(), keys::artifact(&self.job, name));
        tokio::spawn(async move {
            let left = match fence {
                Some(fence) => match fence.confirm_owned().await {
                    Some(left) => left,
                    None => return,
                },
                None => Duration::MAX,
            };
            let _ = tokio::time::timeout(left, store.upload_abort(&key, &upload)).await;
        });
    }

    /// The manifest of the finished artifacts (empty if there are none), at the end of a
    /// finished run. Changes nothing: what was never finished is discarded by
    /// [`Artifacts::discard_unfinished`], once the result is written.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            artifacts: self.lock().finished.values().cloned().collect(),
        }
    }

    /// Aborts the uploads of what was never finished: called only once this worker's result
    /// is durable, so a worker that lost the job never aborts the uploads its new owner is
    /// continuing.
    pub fn discard_unfinished(&self) {
        let mut st = self.lock();
        let open: Vec<_> = st.open.drain().map(|(_, o)| (o.name, o.upload)).collect();
        let resumable: Vec<_> = std::mem::take(&mut st.resumable)
            .into_values()
            .map(|r| (r.name, r.upload))
            .collect();
        drop(st);
        for (name, upload) in open.into_iter().chain(resumable) {
            // Our result is durable: no fence left to ask.
            self.abort(&name, upload, None);
        }
    }
}

/// Whether a completion that answered with an error (or an error inside a 200, which S3
/// documents) happened all the same: the upload is gone and an object of the artifact's
/// size is under its key. Its tag if so.
async fn completed_anyway(store: &AnyStore, key: &str, upload: &str, size: u64) -> Option<ETag> {
    if store.upload_exists(key, upload).await.ok()? {
        return None;
    }
    if store.size(key).await.ok()?? != size {
        return None;
    }
    store.head(key).await.ok()?
}

/// Makes room for `more` bytes in a part buffer without ever holding more than one part:
/// grows by doubling (amortized copies for small writes) but never past [`PART_BYTES`].
fn grow_within_part(buf: &mut Vec<u8>, more: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() {
        let want = need.max(buf.capacity() * 2).min(PART_BYTES);
        buf.reserve_exact(want - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::DirStore;

    #[tokio::test]
    async fn a_completion_is_known_by_the_upload_gone_and_the_object_there() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
        let key = "jobs/j/artifacts/a";
        let upload = store.upload_start(key).await.unwrap();
        let part = store
            .upload_part(key, &upload, 1, vec![7; 10])
            .await
            .unwrap();
        // Not completed: the upload is still there.
        assert_eq!(completed_anyway(&store, key, &upload, 10).await, None);
        let tag = store.upload_complete(key, &upload, &[part]).await.unwrap();
        // Completed (whatever the answer said): the upload is gone and the object is there.
        assert_eq!(completed_anyway(&store, key, &upload, 10).await, Some(tag));
        // An object of another size is not this upload's.
        assert_eq!(completed_anyway(&store, key, &upload, 11).await, None);
        // Neither upload nor object: it did not happen.
        assert_eq!(
            completed_anyway(&store, "jobs/j/artifacts/b", &upload, 10).await,
            None
        );
    }

    #[test]
    fn a_part_buffer_never_outgrows_a_part() {
        let mut buf = Vec::new();
        for _ in 0..(PART_BYTES / 1000) {
            grow_within_part(&mut buf, 1000);
            buf.extend_from_slice(&[0; 1000]);
            assert!(buf.capacity() <= PART_BYTES);
        }
        let room = PART_BYTES - buf.len();
        grow_within_part(&mut buf, room);
        buf.resize(PART_BYTES, 0);
        assert_eq!(buf.capacity(), PART_BYTES);
    }
}
