//! [`Error`]: the error of a task, and the [`bail!`](crate::bail) and
//! [`ensure!`](crate::ensure) macros that make one.

use std::fmt;

use crate::{artifacts, checkpoint};

/// The error of a task: a message, and what caused it.
///
/// `?` converts any `std::error::Error + Send + Sync + 'static` into it (an
/// [`checkpoint::Error`], [`inputs::Error`](crate::inputs::Error), [`artifacts::Error`],
/// [`std::io::Error`],
/// `serde_json::Error`, ...); [`Error::msg`], [`bail!`] and [`ensure!`] make one from a
/// sentence. Its [`Display`](fmt::Display) is the message the host records as the job's
/// failure.
///
/// It remembers a *conflict* (a checkpoint or artifact operation that found another worker
/// owns the job, also when it arrives wrapped in an [`std::io::Error`] from an
/// [`artifacts::ArtifactWriter`]): [`Error::is_conflict`]. Return it at once: the host
/// discards whatever a task returns after a conflict.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that would
/// conflict with the blanket conversion), so `From<String>` and `From<&str>` cannot exist
/// either: use [`Error::msg`] or [`bail!`].
pub struct Error {
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
    conflict: bool,
}

/// The error behind [`Error::msg`].
struct Message(String);

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl Error {
    /// An error with the message `message` and no cause.
    pub fn msg(message: impl fmt::Display) -> Error {
        Error {
            inner: Box::new(Message(message.to_string())),
            conflict: false,
        }
    }

    /// Whether the error is (or wraps) a conflict: another worker owns the job now. The task
    /// must stop at once; the host discards its output.
    pub fn is_conflict(&self) -> bool {
        self.conflict
    }

    /// The error this one was converted from, if it is an `E` (for example
    /// `error.downcast_ref::<inputs::Error>()`).
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.inner.downcast_ref::<E>()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Error {
        let conflict = is_conflict(&error);
        Error {
            inner: Box::new(error),
            conflict,
        }
    }
}

/// Whether `error`, or an error it wraps, is a checkpoint or artifact conflict.
fn is_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(
            error.downcast_ref::<checkpoint::Error>(),
            Some(checkpoint::Error::Conflict)
        ) || error
            .downcast_ref::<artifacts::Error>()
            .is_some_and(artifacts::Error::is_conflict)
        {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look at that one too.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            && is_conflict(inner)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The message. With `{:#}`, followed by the causes: `message: cause: cause`.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)?;
        if f.alternate() {
            let mut next = self.inner.source();
            while let Some(cause) = next {
                write!(f, ": {cause}")?;
                next = cause.source();
            }
        }
        Ok(())
    }
}

/// The message and its causes (so a `main` or a test that unwraps shows a sentence).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#}")
    }
}

/// Returns `Err(Error::msg(format!(...)))` from the enclosing function.
///
/// ```ignore
/// if every == 0 {
///     taskhost_guest::bail!("\"checkpoint_every\" must be at least 1");
/// }
/// ```
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return ::std::result::Result::Err($crate::Error::msg(::std::format!($($arg)+)))
    };
}

/// Returns `Err(Error::msg(format!(...)))` from the enclosing function unless `cond` holds.
///
/// ```ignore
/// taskhost_guest::ensure!(chunk > 0, "\"chunk\" must be at least 1");
/// ```
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($($arg)+);
        }
    };
}
