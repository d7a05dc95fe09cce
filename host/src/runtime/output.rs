//! Guest stdout/stderr into `tracing`, bounded, and the one shape of every event that
//! carries task text (`task_event`).
//!
//! Each stream is cut into lines (a line longer than [`MAX_OUTPUT_LINE_BYTES`] is split, never inside a
//! character) and each line is logged as one event with the job id. After
//! [`MAX_OUTPUT_BYTES_PER_STREAM`] per stream the rest is counted and dropped, so a task that floods its
//! output cannot grow host memory or the log without bound. Writes always succeed from the
//! guest's side: a guest must never trap because its log is full.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::bindings::taskhost::task::log::Level;
use super::sandbox::{MAX_OUTPUT_BYTES_PER_STREAM, MAX_OUTPUT_LINE_BYTES};
use crate::inert::{Inert, cut_bytes};

/// The `tracing` target of the events that carry a task's text (`RUST_LOG` can filter it:
/// `info,taskhost::task=warn`).
pub const TASK_TARGET: &str = "taskhost::task";

/// Logs one piece of a task's text (a `log.write` message, or one line of its stdout or
/// stderr) as one event: target [`TASK_TARGET`], `source = "task"`, the job, the stream
/// (`log`, `stdout` or `stderr`), and the text, escaped by [`Inert`], in the last field,
/// `text`. The text is never the event's format string: whatever it holds, it stays inside
/// one line of the host's log, after the fields the host wrote.
pub(super) fn task_event(level: Level, job: &str, stream: &str, text: &str) {
    let text = Inert(text);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(target: TASK_TARGET, $level, job = %job, source = "task", stream, text = %text, "task text")
        };
    }
    match level {
        Level::Trace => event!(tracing::Level::TRACE),
        Level::Debug => event!(tracing::Level::DEBUG),
        Level::Info => event!(tracing::Level::INFO),
        Level::Warn => event!(tracing::Level::WARN),
        Level::Error => event!(tracing::Level::ERROR),
    }
}

#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    logged: u64,
    dropped: u64,
    last_line: Option<String>,
}

/// One of a job's output streams. Clones share the same buffer.
#[derive(Clone, Debug)]
pub struct LogPipe {
    job: Arc<str>,
    stream: &'static str,
    lines: Arc<Mutex<Lines>>,
}

impl LogPipe {
    /// An empty pipe for `job`'s `stream` (`"stdout"` or `"stderr"`, as logged).
    pub fn new(job: Arc<str>, stream: &'static str) -> Self {
        LogPipe {
            job,
            stream,
            lines: Arc::default(),
        }
    }

    /// The last complete line written (for example a panic message on stderr), not counting
    /// Rust's `RUST_BACKTRACE` hint.
    pub fn last_line(&self) -> Option<String> {
        let l = self.lines.lock().unwrap();
        if l.buf.is_empty() {
            l.last_line.clone()
        } else {
            Some(String::from_utf8_lossy(&l.buf).into_owned())
        }
    }

    /// Bytes the guest wrote that did not reach the log.
    pub fn dropped(&self) -> u64 {
        self.lines.lock().unwrap().dropped
    }

    /// Bytes held in memory right now (at most [`MAX_OUTPUT_LINE_BYTES`]).
    pub fn buffered(&self) -> usize {
        self.lines.lock().unwrap().buf.len()
    }

    fn write(&self, mut data: &[u8]) {
        let mut l = self.lines.lock().unwrap();
        while !data.is_empty() {
            let room = MAX_OUTPUT_LINE_BYTES - l.buf.len();
            let (take, newline) = match data.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => (i + 1, true),
                _ => (data.len().min(room), false),
            };
            let (chunk, rest) = data.split_at(take);
            data = rest;
            l.buf
                .extend_from_slice(if newline { &chunk[..take - 1] } else { chunk });
            if newline || l.buf.len() >= MAX_OUTPUT_LINE_BYTES {
                // A full line is split between characters: a character it would cut in
                // two starts the next line.
                let end = if newline {
                    l.buf.len()
                } else {
                    cut_bytes(&l.buf, MAX_OUTPUT_LINE_BYTES)
                };
                let line = String::from_utf8_lossy(&l.buf[..end]).into_owned();
                l.buf.drain(..end);
                let size = line.len() as u64 + 1;
                if l.logged < MAX_OUTPUT_BYTES_PER_STREAM {
                    l.logged += size;
                    task_event(Level::Info, &self.job, self.stream, &line);
                    if l.logged >= MAX_OUTPUT_BYTES_PER_STREAM {
                        tracing::warn!(
                            job = %self.job,
                            stream = self.stream,
                            "task output exceeds {MAX_OUTPUT_BYTES_PER_STREAM} bytes; dropping the rest"
                        );
                    }
                } else {
                    l.dropped += size;
                }
                // Rust's panic hook ends with a hint about RUST_BACKTRACE: the line that
                // says what happened is the one before it.
                if !line.starts_with("note: run with `RUST_BACKTRACE") {
                    l.last_line = Some(line);
                }
            }
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_counted() {
        let p = LogPipe::new("j".into(), "stdout");
        p.write(b"hello\nwor");
        assert_eq!(p.buffered(), 3);
        p.write(b"ld\n");
        assert_eq!(p.last_line().as_deref(), Some("world"));
        p.write(&vec![b'x'; MAX_OUTPUT_LINE_BYTES * 3]);
        assert!(p.buffered() < MAX_OUTPUT_LINE_BYTES);
        let flood = vec![b'y'; 4096];
        for _ in 0..(2 * MAX_OUTPUT_BYTES_PER_STREAM as usize / 4096) {
            p.write(&flood);
            assert!(p.buffered() <= MAX_OUTPUT_LINE_BYTES);
        }
        assert!(p.dropped() > MAX_OUTPUT_BYTES_PER_STREAM / 2);
    }

    #[test]
    fn a_long_line_is_split_between_characters() {
        let p = LogPipe::new("j".into(), "stdout");
        // 日 would straddle the line's cap: it starts the next line, whole.
        let mut line = vec![b'x'; MAX_OUTPUT_LINE_BYTES - 1];
        line.extend_from_slice("日本\n".as_bytes());
        p.write(&line);
        assert_eq!(p.last_line().as_deref(), Some("日本"));
        assert_eq!(p.buffered(), 0);
        // Written a byte at a time, the same.
        for b in line {
            p.write(&[b]);
        }
        assert_eq!(p.last_line().as_deref(), Some("日本"));
    }
}
