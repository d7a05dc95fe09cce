//! Durable progress of the job: one checkpoint per job, stored by the host.
//!
//! The checkpoint is the task's own state, serialized as JSON (`serde_json`). It survives
//! interruptions: when the job runs again (a resume after a node vanished, a lost lease, a
//! failure), [`load`] returns the last checkpoint that was saved. Save often enough that a
//! resume loses little work, and put in it everything the task needs to continue
//! *deterministically*.
//!
//! A save also records how far each open [artifact](crate::artifacts) is durable, so a
//! resumed run can continue it ([`artifacts::resume`](crate::artifacts::resume)). The
//! SDK's artifact writer keeps no buffer of its own, so everything written before a
//! save is covered by it.
//!
//! # Conflicts
//!
//! [`Error::Conflict`] means another worker owns this job now (this worker's lease lapsed
//! and the job was handed to someone else). The task **must stop at once**: return
//! `Err(..)` from [`Task::run`](crate::Task::run) without doing any further work or host
//! call. The host discards whatever the task returns. `?` does exactly that (the
//! [`crate::Error`] it makes says [`is_conflict`](crate::Error::is_conflict)):
//!
//! ```ignore
//! checkpoint::save(&state)?;
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::taskhost::task::checkpoint as raw;

/// Why a checkpoint operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The serialized checkpoint is larger than the host's limit (the payload, in
    /// bytes); nothing was saved. Save less state.
    TooLarge(u64),
    /// Another worker owns this job now. The task must stop at once and return `Err`;
    /// the host discards the result. See the [module docs](self).
    Conflict,
    /// The object store failed, after the host's own retries. The message says why.
    /// [`load`] never hides such a failure as "no checkpoint".
    Storage(String),
    /// The stored checkpoint is not valid JSON for the requested type (a task whose
    /// state type changed, or a checkpoint written by another task module).
    Decode(String),
    /// The state could not be serialized to JSON (for example a map whose keys are
    /// not strings); nothing was saved.
    Encode(String),
}

impl Error {
    /// Whether this is [`Error::Conflict`]: the task must stop at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TooLarge(limit) => {
                write!(f, "checkpoint too large: the host's limit is {limit} bytes")
            }
            Error::Conflict => f.write_str("checkpoint conflict: another worker owns this job"),
            Error::Storage(msg) => write!(f, "checkpoint storage failed: {msg}"),
            Error::Decode(msg) => write!(f, "checkpoint could not be decoded: {msg}"),
            Error::Encode(msg) => write!(f, "checkpoint could not be encoded: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<raw::CheckpointError> for Error {
    fn from(error: raw::CheckpointError) -> Error {
        match error {
            raw::CheckpointError::TooLarge(limit) => Error::TooLarge(limit),
            raw::CheckpointError::Conflict => Error::Conflict,
            raw::CheckpointError::Storage(msg) => Error::Storage(msg),
        }
    }
}

/// Saves `state` (as JSON) as the job's checkpoint, replacing the previous one.
///
/// Returns once the host has accepted the data; the upload happens in the background
/// (coalesced, at most about one write per second) and the host makes the last saved
/// checkpoint durable before it releases or finishes the job. So saving on every step
/// is cheap. A later [`load`] in this run returns `state`. The save also records how far
/// each open artifact is durable (see the [module docs](self)).
///
/// # Errors
///
/// - [`Error::TooLarge`]: the JSON is over the host's limit; nothing was saved.
/// - [`Error::Conflict`]: another worker owns the job: stop at once (return `Err`).
/// - [`Error::Storage`]: the object store failed.
/// - [`Error::Encode`]: `state` could not be serialized; nothing was saved.
pub fn save<T: Serialize + ?Sized>(state: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(state).map_err(|e| Error::Encode(e.to_string()))?;
    save_bytes(&bytes)
}

/// Loads the job's last checkpoint and deserializes it from JSON.
///
/// - `Ok(None)`: the job has no checkpoint yet: start from the beginning.
/// - `Ok(Some(state))`: resume from `state`.
///
/// # Errors
///
/// - [`Error::Storage`]: the object store failed. Never reported as `Ok(None)`, so an
///   outage cannot silently restart a job from zero.
/// - [`Error::Conflict`]: another worker owns the job: stop at once (return `Err`).
/// - [`Error::Decode`]: the checkpoint is not JSON of type `T`.
pub fn load<T: DeserializeOwned>() -> Result<Option<T>, Error> {
    match load_bytes()? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Decode(e.to_string())),
    }
}

/// [`load`], with `T::default()` when the job has no checkpoint yet.
///
/// # Errors
///
/// As [`load`].
pub fn load_or_default<T: DeserializeOwned + Default>() -> Result<T, Error> {
    Ok(load()?.unwrap_or_default())
}

/// Saves raw bytes as the job's checkpoint: [`save`] without the JSON encoding, for a
/// task that encodes its state itself. The host treats the bytes as opaque.
///
/// # Errors
///
/// As [`save`], except that it never returns [`Error::Encode`].
pub fn save_bytes(bytes: &[u8]) -> Result<(), Error> {
    raw::save(bytes).map_err(Error::from)
}

/// Loads the job's last checkpoint as raw bytes: [`load`] without the JSON decoding.
///
/// # Errors
///
/// As [`load`], except that it never returns [`Error::Decode`].
pub fn load_bytes() -> Result<Option<Vec<u8>>, Error> {
    raw::load().map_err(Error::from)
}
