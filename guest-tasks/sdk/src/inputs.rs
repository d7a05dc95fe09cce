//! The job's input objects, named by its message (`"inputs": {"NAME": "KEY", ...}`).
//!
//! A task sees the names only, never the bucket or the keys. [`reader`] gives a
//! [`Reader`] that implements [`Read`] and [`Seek`] over ranged reads, so an input of any
//! size needs little memory, and a resumed run can [`Seek`] to an offset saved in its
//! checkpoint. Every byte read counts toward the job's read limit
//! ([`Error::LimitReached`]).
//!
//! ```ignore
//! let mut reader = inputs::reader("data")?;
//! reader.seek(SeekFrom::Start(state.offset))?;
//! let mut chunk = vec![0; 64 * 1024];
//! let n = reader.read(&mut chunk)?;
//! ```

use std::io::{self, Read, Seek, SeekFrom};

use crate::bindings::taskhost::task::inputs as raw;

/// The [`Reader`]'s buffer: each host call asks for at least this many bytes.
pub const BUFFER_BYTES: usize = 1024 * 1024;

/// The most the host returns per call ([`read_at`]), whatever the length asked for.
pub const MAX_READ_BYTES: u32 = 8 * 1024 * 1024;

/// One input of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputInfo {
    /// Its name in the job's message.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why an input operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The job's message names no input of this name.
    NoSuchInput(String),
    /// The message names it, but its object does not exist (the input's name).
    Missing(String),
    /// This run has read the job's limit of input bytes (the limit, in bytes).
    LimitReached(u64),
    /// The object store failed, after the host's own retries. The message says why.
    Storage(String),
}

impl Error {
    /// The input error inside an [`io::Error`] returned by a [`Reader`], if it is one.
    pub fn from_io(error: &io::Error) -> Option<&Error> {
        error.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }

    /// The [`io::ErrorKind`] a [`Reader`] reports this error with.
    fn kind(&self) -> io::ErrorKind {
        match self {
            Error::NoSuchInput(_) | Error::Missing(_) => io::ErrorKind::NotFound,
            Error::LimitReached(_) => io::ErrorKind::QuotaExceeded,
            Error::Storage(_) => io::ErrorKind::Other,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoSuchInput(name) => {
                write!(f, "the job's message names no input \"{name}\"")
            }
            Error::Missing(name) => write!(
                f,
                "input \"{name}\" is missing: the object the job's message names for it does not exist"
            ),
            Error::LimitReached(limit) => write!(
                f,
                "input read limit reached: this run has read the job's limit of {limit} bytes"
            ),
            Error::Storage(msg) => write!(f, "input storage failed: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<raw::InputError> for Error {
    fn from(error: raw::InputError) -> Error {
        match error {
            raw::InputError::NoSuchInput(name) => Error::NoSuchInput(name),
            raw::InputError::Missing(name) => Error::Missing(name),
            raw::InputError::LimitReached(limit) => Error::LimitReached(limit),
            raw::InputError::Storage(msg) => Error::Storage(msg),
        }
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        io::Error::new(error.kind(), error)
    }
}

/// The job's inputs, in name order, with their sizes.
///
/// # Errors
///
/// [`Error::Storage`] (the sizes come from the object store), [`Error::Missing`].
pub fn list() -> Result<Vec<InputInfo>, Error> {
    let inputs = raw::list()?;
    Ok(inputs
        .into_iter()
        .map(|i| InputInfo {
            name: i.name,
            size: i.size,
        })
        .collect())
}

/// Reads up to `len` bytes of input `name` from byte `offset`: one host call, no
/// buffering. Returns fewer bytes only at the end of the input (none at or past it), and
/// at most [`MAX_READ_BYTES`] whatever `len` asks for.
///
/// # Errors
///
/// Any [`Error`].
pub fn read_at(name: &str, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
    Ok(raw::read(name, offset, len)?)
}

/// A reader of input `name`, at offset 0, with a buffer of [`BUFFER_BYTES`].
///
/// # Errors
///
/// [`Error::NoSuchInput`] when the job names no such input, or an error of [`list`]
/// (which gives the input's size).
pub fn reader(name: &str) -> Result<Reader, Error> {
    let Some(info) = list()?.into_iter().find(|i| i.name == name) else {
        return Err(Error::NoSuchInput(name.to_string()));
    };
    Ok(Reader {
        name: info.name,
        size: info.size,
        pos: 0,
        buf: Vec::new(),
        buf_pos: 0,
    })
}

/// An input read through ranged host calls: [`Read`] + [`Seek`], buffered.
///
/// Each refill asks the host for [`BUFFER_BYTES`] (or the caller's buffer's length, up
/// to [`MAX_READ_BYTES`]). An [`Error`] of the host arrives as an [`io::Error`] whose
/// message is the error's and whose inner error is the [`Error`] ([`Error::from_io`]).
/// Seeking past the end is allowed; reads there return 0 bytes.
#[derive(Debug)]
pub struct Reader {
    name: String,
    size: u64,
    /// The position of the next byte `read` returns.
    pos: u64,
    /// Bytes from `pos - buf_pos` on.
    buf: Vec<u8>,
    buf_pos: usize,
}

impl Reader {
    /// The input's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The offset of the next byte a read returns.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.buf_pos == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let want = out.len().max(BUFFER_BYTES) as u64;
            let len = want
                .min(self.size - self.pos)
                .min(u64::from(MAX_READ_BYTES)) as u32;
            self.buf = raw::read(&self.name, self.pos, len).map_err(Error::from)?;
            self.buf_pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Reader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot seek input \"{}\" before byte 0", self.name),
            ));
        };
        // Keep the buffer when the target is inside it.
        let start = self.pos - self.buf_pos as u64;
        let end = start + self.buf.len() as u64;
        if (start..=end).contains(&target) {
            self.buf_pos = (target - start) as usize;
        } else {
            self.buf.clear();
            self.buf_pos = 0;
        }
        self.pos = target;
        Ok(target)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}
