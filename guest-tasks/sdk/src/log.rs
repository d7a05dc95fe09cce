//! Log lines in the host's log, tagged with the job id.
//!
//! Each function writes one line at its level. The host truncates long messages. Anything
//! the task prints to stdout or stderr also lands in the host's log, but without a level;
//! prefer these functions.

use crate::bindings::taskhost::task::log::{Level, write};

/// Writes `message` at level `trace`.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Writes `message` at level `debug`.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Writes `message` at level `info`.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Writes `message` at level `warn`.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Writes `message` at level `error`.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}
