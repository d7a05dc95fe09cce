//! The job's input objects, read by name in ranges through a read-ahead window per input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

use super::MAX_READ_BYTES;

/// Bytes fetched ahead per input: one GET serves several of a task's reads.
const WINDOW_BYTES: usize = 4 << 20;
use crate::ids::InputName;
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
    names: Arc<BTreeMap<InputName, String>>,
    /// Bytes `read` may fetch from the store in this run (`State::fetched` counts them).
    limit: u64,
    /// Bytes fetched from the store in this run, `read_whole`'s too: the job's input bytes.
    read: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
    /// A store failure was reported to the task in this run.
    storage_failed: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct State {
    sizes: HashMap<String, u64>,
    /// Bytes `read` fetched into its windows in this run: what counts against `limit`.
    fetched: u64,
    /// The last range fetched.
    window: Option<Window>,
}

impl Inputs {
    /// The inputs `names` (input name → store key) of one run, which may read at most
    /// `limit` bytes of them in all.
    pub fn new(store: AnyStore, names: BTreeMap<InputName, String>, limit: u64) -> Inputs {
        Inputs {
            store,
            names: Arc::new(names),
            limit,
            read: Arc::default(),
            state: Arc::default(),
            storage_failed: Arc::default(),
        }
    }

    /// Input bytes fetched from the store for the task so far in this run (a byte read
    /// twice through two windows counts twice; a read served from the window costs nothing).
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// `NoSuchInput` echoes at most a cut prefix of the name ([`crate::ids::shown_name`]):
    /// the task's string may be up to `MAX_CALL_BYTES` long, and no input has a name over
    /// `MAX_NAME_LEN` anyway.
    fn key(&self, name: &str) -> Result<&str, InputError> {
        self.names
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| InputError::NoSuchInput(crate::ids::shown_name(name)))
    }

    /// The sha256 of input `name`'s bytes when its key names it (a content-addressed input,
    /// `inputs/<sha256 hex>`, as `submit --input` stores it): what a reader may use instead of
    /// the bytes when it already has them by that hash. `None` for a plain key or no input.
    pub fn named_sha256(&self, name: &str) -> Option<[u8; 32]> {
        crate::keys::input_sha256(self.key(name).ok()?)
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
            out.push((name.to_string(), self.size(name.as_str()).await?));
        }
        Ok(out)
    }

    /// The size of input `name`'s object (asked of the store once per run).
    pub async fn size(&self, name: &str) -> Result<u64, InputError> {
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
    /// the end, none at or past it. Served from the window when it covers the range, else
    /// fetched from `offset` into a new window: of `WINDOW_BYTES` (or `len`, if larger) when
    /// the read starts where the last window of this input ended (a sequential reader),
    /// else of `len` alone; never past the object's end, nor past what is left of the read
    /// limit. Every byte fetched counts against the run's limit (`LimitReached` before a
    /// fetch that would pass it; a read served from the window costs nothing more), so no
    /// pattern of reads makes the node fetch more than the limit. Total for every `offset`
    /// and `len` a task can pass: the range is checked against the object's size before any
    /// arithmetic on it.
    pub async fn read(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>, InputError> {
        let key = self.key(name)?.to_owned();
        let size = self.size(name).await?;
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        // Both fit in usize now: `len` is at most MAX_READ_BYTES.
        let until_end = usize::try_from(size - offset).unwrap_or(usize::MAX);
        let len = (len as usize).min(MAX_READ_BYTES).min(until_end);
        let mut st = self.state.lock().await;
        let out = match st.window.as_ref().and_then(|w| w.serve(name, offset, len)) {
            Some(out) => out,
            None => {
                let left =
                    usize::try_from(self.limit.saturating_sub(st.fetched)).unwrap_or(usize::MAX);
                if len > left {
                    return Err(InputError::LimitReached(self.limit));
                }
                let sequential = st.window.as_ref().is_some_and(|w| w.ends_at(name, offset));
                let ahead = if sequential {
                    WINDOW_BYTES.min(left)
                } else {
                    0
                };
                let want = ahead.max(len).min(until_end);
                let bytes = self
                    .store
                    .get_range(&key, offset, want as u64)
                    .await
                    .map_err(|e| self.storage(name, e))?
                    .ok_or_else(|| InputError::Missing(name.to_owned()))?;
                let window = Window {
                    name: name.to_owned(),
                    start: offset,
                    bytes,
                    asked: want,
                };
                let fetched = window.bytes.len() as u64;
                st.fetched = st.fetched.saturating_add(fetched);
                self.read.fetch_add(fetched, Ordering::Relaxed);
                let out = window.serve(name, offset, len).unwrap_or_default();
                st.window = Some(window);
                out
            }
        };
        Ok(out)
    }
}

impl Inputs {
    /// The whole input `name` in one read, if it is at most `max` bytes (`LimitReached(its
    /// size)` else, before anything is fetched): a model for wasi-nn, which the host reads for
    /// the task. Its bytes count in the job's input bytes, not against the run's read limit:
    /// the model's host memory is capped instead.
    pub async fn read_whole(&self, name: &str, max: u64) -> Result<Vec<u8>, InputError> {
        let key = self.key(name)?.to_owned();
        let size = self.size(name).await?;
        if size > max {
            return Err(InputError::LimitReached(size));
        }
        let bytes = self
            .store
            .get_range(&key, 0, size)
            .await
            .map_err(|e| self.storage(name, e))?
            .ok_or_else(|| InputError::Missing(name.to_owned()))?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

/// The last range fetched of one input.
struct Window {
    name: String,
    /// Its offset in the object.
    start: u64,
    bytes: Vec<u8>,
    /// Bytes asked for: fewer came only because the object ends there.
    asked: usize,
}

impl Window {
    /// Whether this window is of `name` and ends at `offset`.
    fn ends_at(&self, name: &str, offset: u64) -> bool {
        self.name == name && self.start.checked_add(self.bytes.len() as u64) == Some(offset)
    }

    /// The bytes of a read of `len` at `offset`, if this window covers it.
    fn serve(&self, name: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        if self.name != name {
            return None;
        }
        let range = window_range(self.start, self.bytes.len(), self.asked, offset, len)?;
        Some(self.bytes[range].to_vec())
    }
}

/// The part of a window (`have` bytes fetched from object offset `start`, `asked` asked
/// for) that serves a read of `len` bytes at `offset`: `None` when the window does not cover
/// it. A window shorter than asked ends at the object's end, so it serves reads running past
/// it with what it has. Never panics and never wraps, whatever the numbers.
///
/// `pub` (re-exported `#[doc(hidden)]` by `files`) only for the fuzz targets (host/fuzz).
pub fn window_range(
    start: u64,
    have: usize,
    asked: usize,
    offset: u64,
    len: usize,
) -> Option<std::ops::Range<usize>> {
    let from = usize::try_from(offset.checked_sub(start)?).ok()?;
    if from > have {
        return None;
    }
    match from.checked_add(len) {
        Some(end) if end <= have => Some(from..end),
        _ if have < asked => Some(from..have),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{InputError, Inputs, window_range};
    use crate::store::any::AnyStore;
    use crate::store::dir::DirStore;
    use crate::store::{ObjectStore, Precondition};

    /// Inputs `a` and `b` of `size` bytes each on a directory store, under `limit`.
    async fn two_inputs(size: usize, limit: u64) -> (tempfile::TempDir, Inputs) {
        let tmp = tempfile::tempdir().unwrap();
        let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
        let mut names = std::collections::BTreeMap::new();
        for name in ["a", "b"] {
            let key = format!("inputs/{name}");
            store
                .put(&key, vec![7; size], Precondition::None)
                .await
                .unwrap();
            names.insert(name.parse().unwrap(), key);
        }
        (tmp, Inputs::new(store, names, limit))
    }

    /// Bytes fetched into the window count against the limit, not only bytes returned:
    /// two sequential reads of each 1 MiB input make the host fetch both whole (2 MiB, the
    /// limit), so the next read that needs the store is refused though the task got 4
    /// bytes. (Before the fix it counted the 4 bytes, and alternating reads made every
    /// call a 4 MiB fetch counted as 1 byte.)
    #[tokio::test]
    async fn fetched_bytes_count_against_the_read_limit() {
        let (_tmp, inputs) = two_inputs(1 << 20, 2 << 20).await;
        for (name, offset) in [("a", 0), ("a", 1), ("b", 0), ("b", 1)] {
            assert_eq!(inputs.read(name, offset, 1).await.unwrap(), [7]);
        }
        assert_eq!(inputs.bytes_read(), 2 << 20);
        // Served from the window (b is whole in it): nothing more fetched.
        assert_eq!(inputs.read("b", 1000, 1).await.unwrap(), [7]);
        assert_eq!(
            inputs.read("a", 0, 1).await,
            Err(InputError::LimitReached(2 << 20))
        );
        assert_eq!(inputs.bytes_read(), 2 << 20);
    }

    /// A read that does not continue the last window fetches only what it returns:
    /// alternating reads make the node fetch no more than the task gets.
    #[tokio::test]
    async fn alternating_reads_fetch_what_they_return() {
        let (_tmp, inputs) = two_inputs(1 << 20, 1 << 30).await;
        for i in 0..200 {
            let name = if i % 2 == 0 { "a" } else { "b" };
            assert_eq!(inputs.read(name, 0, 1).await.unwrap(), [7]);
        }
        assert_eq!(inputs.bytes_read(), 200);
    }

    /// A name the task made huge is echoed cut, as every name in an error.
    #[tokio::test]
    async fn a_huge_unknown_name_makes_a_short_error() {
        let (_tmp, inputs) = two_inputs(1, 1 << 20).await;
        let name = "\x01".repeat(1 << 20);
        let Err(InputError::NoSuchInput(shown)) = inputs.read(&name, 0, 1).await else {
            panic!("no such input expected");
        };
        assert!(shown.len() < 1024, "{} bytes", shown.len());
    }

    #[test]
    fn window_ranges() {
        // (start, have, asked, offset, len) -> range
        let cases = [
            ((0, 10, 10, 0, 4), Some(0..4)),
            ((0, 10, 10, 6, 4), Some(6..10)),
            ((0, 10, 10, 8, 4), None), // runs past a whole window: fetch again
            ((0, 6, 10, 4, 4), Some(4..6)), // a short window ends at the object's end
            ((0, 6, 10, 6, 4), Some(6..6)), // at the end: nothing
            ((0, 6, 10, 7, 4), None),  // past what it has: ask the store
            ((5, 10, 10, 4, 1), None), // before the window
            ((0, 10, 10, u64::MAX, 1), None), // the read that panicked the host
            ((0, 10, 10, 0, usize::MAX), None),
            ((0, 6, 10, 0, usize::MAX), Some(0..6)),
            ((u64::MAX, 0, 1, u64::MAX, 1), Some(0..0)),
        ];
        for ((start, have, asked, offset, len), want) in cases {
            assert_eq!(
                window_range(start, have, asked, offset, len),
                want,
                "{start} {have} {asked} {offset} {len}"
            );
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::window_range;

    /// Numbers that meet: mostly small ones (so windows and reads overlap), some anywhere.
    fn small_or_any_u64() -> impl Strategy<Value = u64> {
        prop_oneof![6 => 0..64u64, 1 => any::<u64>(), 1 => (u64::MAX - 64)..=u64::MAX]
    }

    fn small_or_any_usize() -> impl Strategy<Value = usize> {
        prop_oneof![6 => 0..64usize, 1 => any::<usize>(), 1 => (usize::MAX - 64)..=usize::MAX]
    }

    /// (start, have, asked, offset, len), the offset often in or near the window.
    fn windows() -> impl Strategy<Value = (u64, usize, usize, u64, usize)> {
        #[derive(Debug, Clone)]
        enum At {
            Anywhere(u64),
            After(u64),
            Inside(prop::sample::Index),
        }
        let at = prop_oneof![
            1 => small_or_any_u64().prop_map(At::Anywhere),
            1 => (0..80u64).prop_map(At::After),
            2 => any::<prop::sample::Index>().prop_map(At::Inside),
        ];
        (
            small_or_any_u64(),
            small_or_any_usize(),
            small_or_any_usize(),
            at,
            small_or_any_usize(),
        )
            .prop_map(|(start, have, asked, at, len)| {
                // Counted from the start wrapping, to reach the top of the range too.
                let offset = match at {
                    At::Anywhere(o) => o,
                    At::After(d) => start.wrapping_add(d),
                    At::Inside(i) => start.wrapping_add(i.index(have.saturating_add(1)) as u64),
                };
                (start, have, asked, offset, len)
            })
    }

    proptest! {
        /// Whatever the numbers: no panic, and a range it returns is the read's part of the
        /// window, whole unless the window ends at the object's end.
        #[test]
        fn a_range_is_the_reads_part_of_the_window((start, have, asked, offset, len) in windows()) {
            let Some(r) = window_range(start, have, asked, offset, len) else {
                // It covers every read that lies inside what it has.
                let inside = offset
                    .checked_sub(start)
                    .and_then(|from| usize::try_from(from).ok())
                    .and_then(|from| from.checked_add(len))
                    .is_some_and(|end| end <= have);
                prop_assert!(!inside, "a read inside the window was refused");
                return Ok(());
            };
            prop_assert!(r.start <= r.end && r.end <= have, "{r:?} outside 0..{have}");
            prop_assert_eq!(offset.checked_sub(start), Some(r.start as u64));
            prop_assert!(r.len() <= len);
            if r.len() < len {
                prop_assert!(have < asked, "short ({r:?} of {len}) from a whole window");
            }
        }
    }
}
