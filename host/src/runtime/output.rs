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
use super::sandbox::{
    LOG_EVENT_COST, MAX_LOG_BYTES_PER_RUN, MAX_LOG_MESSAGE_BYTES, MAX_OUTPUT_BYTES_PER_STREAM,
    MAX_OUTPUT_LINE_BYTES,
};
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

/// What a run's `log.write` messages may still put in the log: [`MAX_LOG_BYTES_PER_RUN`],
/// each event charged its message and [`LOG_EVENT_COST`]; past it messages are counted and
/// dropped, with one warning.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    logged: usize,
    dropped: u64,
    warned: bool,
}

impl LogBudget {
    /// Logs `message` (cut to [`MAX_LOG_MESSAGE_BYTES`]) as `job`'s task text at `level`,
    /// if the budget allows; else counts it as dropped.
    pub(super) fn log(&mut self, job: &str, level: Level, mut message: String) {
        if self.logged >= MAX_LOG_BYTES_PER_RUN {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    job,
                    "the task logged over {MAX_LOG_BYTES_PER_RUN} bytes; dropping the rest"
                );
            }
            self.dropped += message.len() as u64;
            return;
        }
        self.logged = self
            .logged
            .saturating_add(message.len())
            .saturating_add(LOG_EVENT_COST);
        if message.len() > MAX_LOG_MESSAGE_BYTES {
            message.truncate(crate::inert::cut(&message, MAX_LOG_MESSAGE_BYTES).len());
            message.push_str("...");
        }
        task_event(level, job, "log", &message);
    }

    /// Bytes of messages dropped.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
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
                    l.logged += size + LOG_EVENT_COST as u64;
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Counts the events of task text and the others at `WARN`.
    #[derive(Clone, Default)]
    struct Count {
        task: Arc<AtomicUsize>,
        warnings: Arc<AtomicUsize>,
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            if meta.target() == TASK_TARGET {
                self.task.fetch_add(1, Ordering::Relaxed);
            } else if *meta.level() == tracing::Level::WARN {
                self.warnings.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A global subscriber that takes an interest in every callsite "sometimes" and enables
    /// nothing. tracing caches each callsite's interest when the callsite is first hit: one
    /// that a test on another thread hits first, while this test's subscriber is being
    /// installed, could be cached as "never" and its events never reach the counting
    /// subscriber (a CI run lost the warning so). With this one among the dispatchers no
    /// interest is ever "never", and each event asks the thread's own subscriber.
    struct Sometimes;

    impl tracing::Subscriber for Sometimes {
        fn register_callsite(
            &self,
            _: &'static tracing::Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Runs `f` with a subscriber that counts; (task events, warnings).
    fn counted(f: impl FnOnce()) -> (usize, usize) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(Sometimes);
        });
        let count = Count::default();
        let subscriber = tracing_subscriber::registry().with(count.clone());
        tracing::subscriber::with_default(subscriber, f);
        let get = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        (get(&count.task), get(&count.warnings))
    }

    /// Empty messages are charged too: a loop of them logs at most cap / 128 + 1 events
    /// and warns once (before the fix it logged every one, warning on each past the cap
    /// of the non-empty ones).
    #[test]
    fn empty_log_messages_cannot_flood_the_log() {
        let calls = 4 * MAX_LOG_BYTES_PER_RUN / LOG_EVENT_COST;
        let (events, warnings) = counted(|| {
            let mut budget = LogBudget::default();
            budget.log("j", Level::Info, "x".repeat(100));
            for _ in 0..calls {
                budget.log("j", Level::Error, String::new());
            }
        });
        assert!(
            events <= MAX_LOG_BYTES_PER_RUN / LOG_EVENT_COST + 1,
            "{events}"
        );
        assert!(
            events > MAX_LOG_BYTES_PER_RUN / LOG_EVENT_COST / 2,
            "{events}"
        );
        assert_eq!(warnings, 1);
    }

    /// The same for empty lines on stdout.
    #[test]
    fn empty_output_lines_cannot_flood_the_log() {
        let max = MAX_OUTPUT_BYTES_PER_STREAM as usize / (LOG_EVENT_COST + 1) + 1;
        let (events, warnings) = counted(|| {
            let p = LogPipe::new("j".into(), "stdout");
            for _ in 0..4 * max {
                p.write(b"\n");
            }
            assert!(p.dropped() > 0);
        });
        assert!(events <= max, "{events}");
        assert_eq!(warnings, 1);
    }

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
