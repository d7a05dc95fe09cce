//! A worker's HTTP endpoints (`/metrics` and the probes) seen from outside: a plain GET,
//! polling until an answer is as expected, and reading a series of the metrics text.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::cli::Proc;

/// A free local address for a worker's `METRICS_ADDR`.
pub fn metrics_addr() -> String {
    format!("127.0.0.1:{}", super::pubsub::free_port())
}

/// `GET path` on `addr`: the status and the body, or `None` when nothing answers in time.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let sock = addr.parse().ok()?;
    let mut conn = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// `GET path`, asynchronously (the blocking client on a blocking thread).
pub async fn fetch(addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || get(&addr, &path))
        .await
        .unwrap()
}

/// Polls `path` until `ok` holds for its answer; panics after `timeout` (with the worker's
/// log) or as soon as `worker` exits.
pub async fn until(
    addr: &str,
    path: &str,
    timeout: Duration,
    worker: &mut Proc,
    ok: impl Fn(&(u16, String)) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = fetch(addr, path).await;
        if let Some(answer) = got.filter(|a| ok(a)) {
            return answer;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "{path} not as expected within {timeout:?}; log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the series `series` (name and labels exactly as exported) in `text`.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
