//! The job's input objects, read by name in ranges through a read-ahead window per input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

use super::MAX_READ_BYTES;

/// Bytes fetched ahead per input: one GET serves several of a task's reads.
const WINDOW_BYTES: usize = 4 << 20;
use crate::store::ObjectStore;
use crate::store::any::AnyStore;

/// Why an input operation failed (the WIT `input-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputError {
    /// The message names no input of this name.
    NoSuchInput(String),
    /// The message names it but the object does not exist.
    Missing(String),
    /// The run read its limit of input bytes.
    LimitReached(u64),
    /// The store failed; the text names the input, not the key.
    Storage(String),
}

/// The job's inputs (name → key). Cheap to clone.
#[derive(Clone)]
pub struct Inputs {
    store: AnyStore,
    names: Arc<BTreeMap<String, String>>,
    limit: u64,
    read: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
    /// A store failure was reported to the task in this run.
    storage_failed: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct State {
    sizes: HashMap<String, u64>,
    /// The last range fetched: (name, offset, bytes, bytes asked for).
    window: Option<(String, u64, Vec<u8>, usize)>,
}

impl Inputs {
    pub fn new(store: AnyStore, names: BTreeMap<String, String>, limit: u64) -> Inputs {
        Inputs {
            store,
            names: Arc::new(names),
            limit,
            read: Arc::default(),
            state: Arc::default(),
            storage_failed: Arc::default(),
        }
    }

    /// Input bytes returned to the task so far in this run.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn key(&self, name: &str) -> Result<&str, InputError> {
        self.names
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| InputError::NoSuchInput(name.to_owned()))
    }

    /// Whether a store failure was reported to the task in this run.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    fn storage(&self, name: &str, e: impl std::fmt::Display) -> InputError {
        self.storage_failed.store(true, Ordering::Relaxed);
        tracing::warn!(input = name, error = %e, "reading a task input failed");
        InputError::Storage(format!(
            "the object store failed reading input `{name}` (the worker's log says why)"
        ))
    }

    /// The inputs in name order with their sizes.
    pub async fn list(&self) -> Result<Vec<(String, u64)>, InputError> {
        let mut out = Vec::with_capacity(self.names.len());
        for name in self.names.keys() {
            out.push((name.clone(), self.size(name).await?));
        }
        Ok(out)
    }

    async fn size(&self, name: &str) -> Result<u64, InputError> {
        let key = self.key(name)?;
        if let Some(size) = self.state.lock().await.sizes.get(name) {
            return Ok(*size);
        }
        let size = self
            .store
            .size(key)
            .await
            .map_err(|e| self.storage(name, e))?
            .ok_or_else(|| InputError::Missing(name.to_owned()))?;
        self.state.lock().await.sizes.insert(name.to_owned(), size);
        Ok(size)
    }

    /// Up to `len` (at most [`MAX_READ_BYTES`]) bytes of `name` from `offset`; fewer only at
    /// the end. Served from the window when it covers the range, else a new window of
    /// [`WINDOW_BYTES`] (or `len`, if larger) is fetched from `offset`.
    pub async fn read(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>, InputError> {
        let key = self.key(name)?.to_owned();
        let len = (len as usize).min(MAX_READ_BYTES);
        let mut st = self.state.lock().await;
        let want = len.max(WINDOW_BYTES);
        let covered = |st: &State| match &st.window {
            Some((n, start, bytes, asked)) if n == name && offset >= *start => {
                let from = (offset - start) as usize;
                // The window ends at the object's end if it is short.
                let whole = bytes.len() == *asked;
                (from + len <= bytes.len() || (!whole && from <= bytes.len()))
                    .then(|| bytes[from..(from + len).min(bytes.len())].to_vec())
            }
            _ => None,
        };
        let out = match covered(&st) {
            Some(out) => out,
            None => {
                let bytes = self
                    .store
                    .get_range(&key, offset, want as u64)
                    .await
                    .map_err(|e| self.storage(name, e))?
                    .ok_or_else(|| InputError::Missing(name.to_owned()))?;
                st.window = Some((name.to_owned(), offset, bytes, want));
                covered(&st).unwrap_or_default()
            }
        };
        drop(st);
        let total = self.read.load(Ordering::Relaxed) + out.len() as u64;
        if total > self.limit {
            return Err(InputError::LimitReached(self.limit));
        }
        self.read.store(total, Ordering::Relaxed);
        Ok(out)
    }
}
