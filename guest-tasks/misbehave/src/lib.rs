//! `misbehave.wasm`: a task module that misbehaves on purpose, for the host's failure tests.
//!
//! Input: `{"mode": "..."}` plus the mode's fields:
//!
//! | mode | what it does | ends with |
//! |---|---|---|
//! | `loop` | spins forever, no host calls | never (fuel / timeout) |
//! | `membomb` | allocates and fills 1 MiB chunks forever, keeping them all | a trap once memory is exhausted (allocation failure aborts) |
//! | `flood` | writes `"bytes"` (default [`DEFAULT_FLOOD_BYTES`]) of text to stdout, then the same to stderr, in 64 KiB writes | `Ok({"flooded": N})` |
//! | `escape` | tries to read `/etc/passwd`, create `escape.txt`, list `/`, connect TCP to `"addr"` (default [`DEFAULT_ESCAPE_ADDR`]), count env vars and args | `Ok({"read": .., "create": .., "list": .., "connect": .., "env": N, "args": N})` |
//! | `panic` | panics | a trap |
//! | `fail` | fails | `Err("the task failed on purpose")` |
//! | `sleep` | sleeps `"ms"` milliseconds in 10 ms steps | `Ok({"slept_ms": ms})` |
//! | `forge` | writes text that would forge lines of the host's log if it were printed as it is (newlines, carriage returns, ANSI escapes, NUL, each followed by [`FORGED`]) through `log.write`, stdout and stderr | `Err` with such text |
//! | `save_loop` | saves `{"i": i}` for i = 0, 1, ... up to `"count"` (default: forever); with `"bytes"`, each checkpoint is padded to that many bytes; with `"every_ms"`, sleeps between saves; with `"ignore_errors": true`, keeps going after any failed save (a task that ignores `conflict`) | `Ok({"saved": count})`; `Err("conflict")` on a conflict; `Err(<the error>)` on any other checkpoint error (too large, storage) |
//!
//! In `escape`, each attempt is reported as `"ok: ..."` or `"error: ..."`; the mode never
//! panics. A missing or unknown mode is an `Err`. Results are compact JSON.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use taskhost_guest::input::Fields;
use taskhost_guest::{Error, Task, bail, checkpoint, log};

/// Bytes written to each of stdout and stderr by `flood` when the input has no `"bytes"`.
pub const DEFAULT_FLOOD_BYTES: u64 = 64 * 1024 * 1024;

/// Size of each write in `flood`.
pub const FLOOD_WRITE: usize = 64 * 1024;

/// Size of each allocation in `membomb`.
pub const MEMBOMB_CHUNK: usize = 1024 * 1024;

/// Address `escape` tries to connect to when the input has no `"addr"` (the discard port on
/// loopback).
pub const DEFAULT_ESCAPE_ADDR: &str = "127.0.0.1:9";

/// Step of the `sleep` mode, in milliseconds.
pub const SLEEP_STEP_MS: u64 = 10;

const MODES: &str = "loop, membomb, flood, escape, panic, fail, sleep, forge, save_loop";

/// What `forge` puts where a new line of the host's log would start if the host printed the
/// task's text as it is.
pub const FORGED: &str = "FORGED: job done; result stored";

/// The result document of the modes that end with `Ok`.
#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Flooded { flooded: u64 },
    Escape(Escape),
    Slept { slept_ms: u64 },
    Saved { saved: u64 },
}

struct Misbehave;

impl Task for Misbehave {
    type Input = Fields;
    type Output = Output;

    fn run(input: Fields) -> Result<Output, Error> {
        let Some(mode) = input.str("mode") else {
            bail!("the input has no \"mode\": it must be one of {MODES}");
        };
        match mode {
            "loop" => spin(),
            "membomb" => membomb(),
            "flood" => flood(input.u64_or("bytes", DEFAULT_FLOOD_BYTES)?),
            "escape" => Ok(Output::Escape(escape(
                input.str("addr").unwrap_or(DEFAULT_ESCAPE_ADDR),
            ))),
            "panic" => panic!("misbehave: panicking on purpose"),
            "fail" => bail!("the task failed on purpose"),
            "sleep" => sleep(input.u64("ms")?),
            "forge" => forge(),
            "save_loop" => {
                let count = input.u64_opt("count")?;
                let bytes = input.u64_opt("bytes")?;
                let ignore_errors =
                    input.get("ignore_errors") == Some(&serde_json::Value::Bool(true));
                let every_ms = input.u64_or("every_ms", 0)?;
                save_loop(count, bytes, ignore_errors, every_ms)
            }
            other => bail!("unknown mode \"{other}\": it must be one of {MODES}"),
        }
    }
}

/// Spins forever without calling the host. `black_box` keeps the optimizer from proving
/// the loop useless.
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks forever, writing every byte of each and keeping them all alive.
/// Ends in a trap when the allocator cannot grow memory (Rust aborts on allocation failure).
fn membomb() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let fill = black_box((chunks.len() % 251) as u8 | 1);
        let chunk = vec![fill; MEMBOMB_CHUNK];
        chunks.push(black_box(chunk));
        black_box(&chunks);
    }
}

/// Writes `bytes` of text to stdout, then to stderr, in [`FLOOD_WRITE`]-byte writes.
/// A failed write stops that stream (logged), never the task.
fn flood(bytes: u64) -> Result<Output, Error> {
    // 64-byte lines, so every full write ends on a line boundary.
    let line = b"flood flood flood flood flood flood flood flood flood flood floo\n";
    let block: Vec<u8> = line.iter().copied().cycle().take(FLOOD_WRITE).collect();

    flood_stream("stdout", &mut std::io::stdout().lock(), &block, bytes);
    flood_stream("stderr", &mut std::io::stderr().lock(), &block, bytes);
    Ok(Output::Flooded { flooded: bytes })
}

fn flood_stream(name: &str, out: &mut dyn Write, block: &[u8], bytes: u64) {
    let mut written: u64 = 0;
    while written < bytes {
        let n = (bytes - written).min(block.len() as u64) as usize;
        if let Err(e) = out.write_all(&block[..n]) {
            log::warn(format!("flood: {name} failed after {written} bytes: {e}"));
            return;
        }
        written += n as u64;
    }
    if let Err(e) = out.flush() {
        log::warn(format!("flood: flushing {name} failed: {e}"));
    }
}

/// What `escape` found: each attempt as `"ok: ..."` or `"error: ..."`.
#[derive(Serialize)]
struct Escape {
    read: String,
    create: String,
    list: String,
    connect: String,
    env: usize,
    args: usize,
}

/// Tries to leave the sandbox in every way a task could; reports each attempt.
fn escape(addr: &str) -> Escape {
    let read =
        describe(std::fs::read("/etc/passwd").map(|data| format!("read {} bytes", data.len())));
    let create = describe(std::fs::File::create("escape.txt").map(|_| "created".to_string()));
    let list = describe(std::fs::read_dir("/").map(|entries| {
        let names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        format!("{} entries: {}", names.len(), names.join(", "))
    }));
    let connect = describe(
        std::net::TcpStream::connect(addr).map(|s| match s.peer_addr() {
            Ok(peer) => format!("connected to {peer}"),
            Err(_) => format!("connected to {addr}"),
        }),
    );
    // The `_os` variants: a non-UTF-8 variable must not panic the probe.
    let env = std::env::vars_os().count();
    let args = std::env::args_os().count();

    Escape {
        read,
        create,
        list,
        connect,
        env,
        args,
    }
}

fn describe(result: std::io::Result<String>) -> String {
    match result {
        Ok(what) => format!("ok: {what}"),
        Err(e) => format!("error: {e}"),
    }
}

/// Writes [`FORGED`] after every kind of line break and terminal control, through every
/// channel a task's text reaches the host's log by, then fails with it.
fn forge() -> Result<Output, Error> {
    log::info(format!("innocent\n{FORGED}"));
    log::warn(format!("innocent\r{FORGED}"));
    log::error(format!("\x1b[1A\x1b[2K\r{FORGED} \x1b[31mred\x1b[0m"));
    println!("innocent\r{FORGED}");
    println!("\x1b[2K\x1b[0G{FORGED}\0 日本語");
    eprintln!("innocent\r{FORGED}\u{2028}{FORGED}\u{202e}{FORGED}");
    bail!("innocent\n{FORGED}\r{FORGED}")
}

/// Sleeps `ms` milliseconds in [`SLEEP_STEP_MS`] steps (the last one shorter).
fn sleep(ms: u64) -> Result<Output, Error> {
    let mut left = ms;
    while left > 0 {
        let step = left.min(SLEEP_STEP_MS);
        std::thread::sleep(Duration::from_millis(step));
        left -= step;
    }
    Ok(Output::Slept { slept_ms: ms })
}

/// Saves `{"i": i}` for i = 0, 1, ... (`count` times, or forever). With `bytes`, each
/// checkpoint is `{"i": i, "pad": "xx..."}` padded to exactly `bytes` bytes (or the
/// shortest such document, if `bytes` is smaller than that). With `ignore_errors`, a failed
/// save (even a conflict) does not stop it; with `every_ms`, it sleeps that long between saves.
fn save_loop(
    count: Option<u64>,
    bytes: Option<u64>,
    ignore_errors: bool,
    every_ms: u64,
) -> Result<Output, Error> {
    let mut i: u64 = 0;
    while count.is_none_or(|count| i < count) {
        if every_ms > 0 {
            std::thread::sleep(Duration::from_millis(every_ms));
        }
        let result = match bytes {
            None => checkpoint::save(&serde_json::json!({ "i": i })),
            Some(bytes) => checkpoint::save_bytes(&padded(i, bytes)),
        };
        match result {
            Ok(()) => {}
            Err(_) if ignore_errors => {}
            Err(e) if e.is_conflict() => bail!("conflict"),
            Err(e) => bail!("{e}"),
        }
        i += 1;
    }
    Ok(Output::Saved { saved: i })
}

fn padded(i: u64, bytes: u64) -> Vec<u8> {
    let head = format!("{{\"i\":{i},\"pad\":\"");
    let tail = "\"}";
    let pad = usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(head.len() + tail.len());
    let mut doc = Vec::with_capacity(head.len() + pad + tail.len());
    doc.extend_from_slice(head.as_bytes());
    doc.resize(head.len() + pad, b'x');
    doc.extend_from_slice(tail.as_bytes());
    doc
}

taskhost_guest::export_task!(Misbehave);
