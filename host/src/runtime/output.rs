//! Guest stdout/stderr into `tracing`, bounded.
//!
//! Each stream is cut into lines (a line longer than [`MAX_LINE`] is split) and logged with
//! the job id. After [`MAX_LOGGED_BYTES`] per stream the rest is counted and dropped, so a
//! task that floods its output cannot grow host memory or the log without bound. Writes
//! always succeed from the guest's side: a guest must never trap because its log is full.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept (bytes); longer lines are split.
pub const MAX_LINE: usize = 4096;
/// Bytes per stream that reach the log; the rest is dropped and counted.
pub const MAX_LOGGED_BYTES: u64 = 1 << 20;

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

    /// Bytes held in memory right now (at most [`MAX_LINE`]).
    pub fn buffered(&self) -> usize {
        self.lines.lock().unwrap().buf.len()
    }

    fn write(&self, mut data: &[u8]) {
        let mut l = self.lines.lock().unwrap();
        while !data.is_empty() {
            let room = MAX_LINE - l.buf.len();
            let (take, newline) = match data.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => (i + 1, true),
                _ => (data.len().min(room), false),
            };
            let (chunk, rest) = data.split_at(take);
            data = rest;
            l.buf
                .extend_from_slice(if newline { &chunk[..take - 1] } else { chunk });
            if newline || l.buf.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&l.buf).into_owned();
                l.buf.clear();
                let size = line.len() as u64 + 1;
                if l.logged < MAX_LOGGED_BYTES {
                    l.logged += size;
                    tracing::info!(job = %self.job, stream = self.stream, "{line}");
                    if l.logged >= MAX_LOGGED_BYTES {
                        tracing::warn!(
                            job = %self.job,
                            stream = self.stream,
                            "task output exceeds {MAX_LOGGED_BYTES} bytes; dropping the rest"
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
        p.write(&vec![b'x'; MAX_LINE * 3]);
        assert!(p.buffered() < MAX_LINE);
        let flood = vec![b'y'; 4096];
        for _ in 0..(2 * MAX_LOGGED_BYTES as usize / 4096) {
            p.write(&flood);
            assert!(p.buffered() <= MAX_LINE);
        }
        assert!(p.dropped() > MAX_LOGGED_BYTES / 2);
    }
}
