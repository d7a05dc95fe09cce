//! The job's named output files (artifacts), stored next to its result.
//!
//! An artifact is written as a stream ([`ArtifactWriter`] implements [`Write`]) and
//! uploaded by the host in parts as it grows, so its size is not bounded by memory.
//! Artifacts become visible (`taskhost artifacts`) when the job's result is written: a
//! run that is stopped leaves nothing that looks final. [`ArtifactWriter::finish`] makes
//! an artifact one of the job's outputs; **dropping a writer without `finish` discards
//! the artifact**.
//!
//! # Resuming
//!
//! A [checkpoint save](crate::checkpoint::save) records how far each open artifact is
//! durable. A resumed run calls [`resume`]: it returns the artifact with its
//! [`size`](ArtifactWriter::size) set to the durable length (at most what had been
//! written when the checkpoint was saved), and the task writes on from there; or `None`
//! when the checkpoint recorded no open artifact of that name (start again with
//! [`create`]). The writer keeps no buffer in the guest: each `write` goes straight to
//! the host (which buffers the parts), so a save covers every byte written before it.
//!
//! # Conflicts
//!
//! [`ErrorKind::Conflict`] (also inside the [`io::Error`] of a [`Write`] call) means another
//! worker owns the job: stop at once. `?` into [`crate::Error`] keeps that
//! ([`crate::Error::is_conflict`]), and the host discards the task's output.
//!
//! ```ignore
//! let mut out = artifacts::create("report.txt")?;
//! writeln!(out, "{} lines", lines)?;
//! out.finish()?;
//! ```

use std::io::{self, Write};

use crate::bindings::taskhost::task::artifacts as raw;

/// The most one [`Write::write`] hands to the host; a longer buffer is written in part
/// (and `write_all` loops).
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;

/// Why an artifact operation failed, and on which artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    name: String,
    kind: ErrorKind,
}

/// What failed in an artifact operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Artifact names are 1..=200 characters from `[A-Za-z0-9._-]`, not starting with
    /// `.`.
    InvalidName,
    /// The artifact would exceed the per-artifact size limit (bytes); nothing of this
    /// write was written.
    TooLarge(u64),
    /// The job's artifacts together would exceed the per-job limit (bytes), or the job
    /// has as many artifacts (open or finished) as it may have.
    JobLimit(u64),
    /// The artifact was finished already; it takes no more writes.
    Finished,
    /// Another worker owns this job now. Stop at once: see the [module docs](self).
    Conflict,
    /// The object store failed, after the host's own retries. The message says why.
    Storage(String),
}

impl Error {
    /// The artifact's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What failed.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Whether this is [`ErrorKind::Conflict`]: the task must stop at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self.kind, ErrorKind::Conflict)
    }

    /// The artifact error inside an [`io::Error`] returned by an [`ArtifactWriter`], if
    /// it is one.
    pub fn from_io(error: &io::Error) -> Option<&Error> {
        error.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }

    fn new(name: &str, error: raw::ArtifactError) -> Error {
        let kind = match error {
            raw::ArtifactError::InvalidName(_) => ErrorKind::InvalidName,
            raw::ArtifactError::TooLarge(limit) => ErrorKind::TooLarge(limit),
            raw::ArtifactError::JobLimit(limit) => ErrorKind::JobLimit(limit),
            raw::ArtifactError::Finished => ErrorKind::Finished,
            raw::ArtifactError::Conflict => ErrorKind::Conflict,
            raw::ArtifactError::Storage(msg) => ErrorKind::Storage(msg),
        };
        Error {
            name: name.to_string(),
            kind,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.name;
        match &self.kind {
            ErrorKind::InvalidName => write!(
                f,
                "invalid artifact name \"{name}\": it must be 1 to 200 characters from \
                 [A-Za-z0-9._-], not starting with '.'"
            ),
            ErrorKind::TooLarge(limit) => write!(
                f,
                "artifact \"{name}\" is too large: the host's limit is {limit} bytes per \
                 artifact"
            ),
            ErrorKind::JobLimit(limit) => write!(
                f,
                "artifact \"{name}\": the job's artifact limit is reached ({limit} bytes in \
                 all, or the most artifacts a job may have)"
            ),
            ErrorKind::Finished => {
                write!(
                    f,
                    "artifact \"{name}\" is finished: it takes no more writes"
                )
            }
            ErrorKind::Conflict => write!(
                f,
                "artifact conflict: another worker owns this job (writing \"{name}\")"
            ),
            ErrorKind::Storage(msg) => {
                write!(f, "artifact \"{name}\": storage failed: {msg}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match error.kind {
            ErrorKind::InvalidName => io::ErrorKind::InvalidInput,
            ErrorKind::TooLarge(_) => io::ErrorKind::FileTooLarge,
            ErrorKind::JobLimit(_) => io::ErrorKind::QuotaExceeded,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Starts the artifact `name`, empty, replacing any artifact of that name this job
/// wrote before.
///
/// # Errors
///
/// [`ErrorKind::InvalidName`], [`ErrorKind::JobLimit`], [`ErrorKind::Conflict`],
/// [`ErrorKind::Storage`].
pub fn create(name: &str) -> Result<ArtifactWriter, Error> {
    let artifact = raw::create(name).map_err(|e| Error::new(name, e))?;
    Ok(ArtifactWriter {
        name: name.to_string(),
        artifact,
    })
}

/// Continues the artifact `name` as the job's last saved checkpoint recorded it: the
/// writer's [`size`](ArtifactWriter::size) is how many of its bytes are durable (at most
/// what had been written when that checkpoint was saved); write on from there, which
/// may mean writing again bytes written after that. `Ok(None)` when the checkpoint
/// recorded no open artifact of that name: start it again with [`create`].
///
/// # Errors
///
/// As [`create`].
pub fn resume(name: &str) -> Result<Option<ArtifactWriter>, Error> {
    let artifact = raw::resume(name).map_err(|e| Error::new(name, e))?;
    Ok(artifact.map(|artifact| ArtifactWriter {
        name: name.to_string(),
        artifact,
    }))
}

/// An artifact being written: [`Write`] straight to the host (no guest buffer; wrap it
/// in a [`std::io::BufWriter`] for many tiny writes, and flush that before each
/// checkpoint save).
///
/// Dropping it without [`finish`](ArtifactWriter::finish) discards the artifact. A host
/// error arrives from [`Write`] as an [`io::Error`] whose inner error is the [`Error`]
/// ([`Error::from_io`]).
#[derive(Debug)]
pub struct ArtifactWriter {
    name: String,
    artifact: raw::Artifact,
}

impl ArtifactWriter {
    /// The artifact's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of the artifact so far, those continued from an earlier run included.
    pub fn size(&self) -> u64 {
        self.artifact.size()
    }

    /// Ends the artifact: it will be one of the job's outputs, with its final size
    /// (returned), once the job's result is written.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conflict`] (stop), [`ErrorKind::Storage`], [`ErrorKind::Finished`].
    pub fn finish(self) -> Result<u64, Error> {
        self.artifact
            .finish()
            .map_err(|e| Error::new(&self.name, e))
    }
}

impl Write for ArtifactWriter {
    /// Hands `data` (at most [`MAX_WRITE_BYTES`] of it) to the host; may wait for a part
    /// upload.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let data = &data[..data.len().min(MAX_WRITE_BYTES)];
        self.artifact
            .write(data)
            .map_err(|e| Error::new(&self.name, e))?;
        Ok(data.len())
    }

    /// Nothing to do: the writer keeps no buffer.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
