//! `hostile.wasm`: a task module that calls the host's imports with the values a hostile
//! task would pass (raw bindings, not the SDK's checked wrappers), for the host's hardening
//! tests. Every call's outcome is reported; the module itself never panics.
//!
//! Input: `{"mode": "..."}` plus the mode's fields:
//!
//! | mode | what it does | ends with |
//! |---|---|---|
//! | `read_far` | reads input `"input"` (default `data`) at 0, then at offsets and lengths at the integer limits | `Ok({"reads": ["<n> bytes" or "error: ..."]})` |
//! | `big_writes` | opens `"artifacts"` (default 8) artifacts and writes each `"calls"` (default 1) buffers of `"call_mb"` MiB (default 64) in single calls, then finishes them | `Ok({"written": bytes})` |
//! | `id` | asks the host for the job id (the unit tests make that host call panic) | `Ok({"id": ".."})` |
//! | `nn_dims` | makes `"tensors"` (default 24) wasi-nn tensors of `"rank"` (default 4 M) dimensions of 1 and one byte of data, keeping every one | `Ok({"made": n})` (a host that refuses such a tensor traps the task) |
//! | `ping_pong_reads` | reads 1 byte at offset 0 of inputs `"a"` and `"b"` in turn (default `a`, `b`) until a read fails: every call needs the store, nearly all its time is store wait | `Ok({"reads": n, "error": "..."})` |
//! | `many_resources` | makes `"count"` (default 100,000) 1-element wasi-nn tensors and holds them all: one host resource each | `Ok({"made": count})` |
//! | `abuse_handles` | writes to, sizes and finishes a finished artifact; creates artifacts with invalid names and more than may be open; resumes one never recorded; saves an over-large checkpoint; logs a huge message | `Ok({"calls": ["...", ...]})` |

use serde::Serialize;
use taskhost_guest::bindings::taskhost::task::{artifacts, checkpoint, inputs, log};
use taskhost_guest::bindings::wasi::nn::tensor;
use taskhost_guest::input::Fields;
use taskhost_guest::{Error, Task, bail};

const MODES: &str =
    "read_far, big_writes, ping_pong_reads, many_resources, nn_dims, abuse_handles, id";

/// The result document.
#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Reads { reads: Vec<String> },
    Written { written: u64 },
    Calls { calls: Vec<String> },
    Id { id: String },
    PingPong { reads: u64, error: String },
    Made { made: u64 },
}

struct Hostile;

impl Task for Hostile {
    type Input = Fields;
    type Output = Output;

    fn run(input: Fields) -> Result<Output, Error> {
        let Some(mode) = input.str("mode") else {
            bail!("the input has no \"mode\": it must be one of {MODES}");
        };
        match mode {
            "read_far" => Ok(read_far(input.str("input").unwrap_or("data"))),
            "big_writes" => big_writes(
                input.u64_or("artifacts", 8)?,
                input.u64_or("calls", 1)?,
                input.u64_or("call_mb", 64)?,
            ),
            "ping_pong_reads" => Ok(ping_pong_reads(
                input.str("a").unwrap_or("a"),
                input.str("b").unwrap_or("b"),
            )),
            "many_resources" => Ok(many_resources(input.u64_or("count", 100_000)?)),
            "nn_dims" => nn_dims(input.u64_or("rank", 4 << 20)?, input.u64_or("tensors", 24)?),
            "abuse_handles" => Ok(abuse_handles()),
            "id" => Ok(Output::Id {
                id: taskhost_guest::job::id(),
            }),
            other => bail!("unknown mode \"{other}\": it must be one of {MODES}"),
        }
    }
}

fn describe<T, E: std::fmt::Debug>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("error: {e:?}"),
    }
}

/// Reads `name` at its start (so the host holds a window), then at offsets and lengths no
/// honest task would pass.
fn read_far(name: &str) -> Output {
    let size = inputs::list()
        .ok()
        .and_then(|l| l.into_iter().find(|i| i.name == name).map(|i| i.size))
        .unwrap_or(0);
    let calls: [(u64, u32); 8] = [
        (0, 1),
        (u64::MAX, 1),
        (u64::MAX - 1, u32::MAX),
        (u64::MAX, u32::MAX),
        (size, u32::MAX),
        (size.saturating_sub(1), u32::MAX),
        (0, u32::MAX),
        (1 << 63, 0),
    ];
    let reads = calls
        .iter()
        .map(|&(offset, len)| {
            describe(inputs::read(name, offset, len), |b| {
                format!("{} bytes", b.len())
            })
        })
        .collect();
    Output::Reads { reads }
}

/// Makes `count` tensors of `rank` dimensions (each 1: one element) and keeps them all: each
/// call hands the host `rank` × 4 bytes of dimensions.
fn nn_dims(rank: u64, count: u64) -> Result<Output, Error> {
    let dims = vec![1_u32; usize::try_from(rank).map_err(Error::msg)?];
    let held: Vec<_> = (0..count)
        .map(|_| tensor::Tensor::new(&dims, tensor::TensorType::U8, &[0]))
        .collect();
    Ok(Output::Made {
        made: held.len() as u64,
    })
}

/// Writes `calls` buffers of `call_mb` MiB to each of `count` artifacts, each buffer in one
/// call, then finishes them.
fn big_writes(count: u64, calls: u64, call_mb: u64) -> Result<Output, Error> {
    let len = usize::try_from(call_mb << 20).map_err(Error::msg)?;
    let buf = vec![0x5a_u8; len];
    let mut open = Vec::new();
    for i in 0..count {
        let name = format!("big-{i}.bin");
        open.push(artifacts::create(&name).map_err(|e| Error::msg(format!("{e:?}")))?);
    }
    let mut written = 0u64;
    for _ in 0..calls {
        for a in &open {
            a.write(&buf).map_err(|e| Error::msg(format!("{e:?}")))?;
            written += len as u64;
        }
    }
    for a in &open {
        a.finish().map_err(|e| Error::msg(format!("{e:?}")))?;
    }
    Ok(Output::Written { written })
}

/// Reads one byte at the start of `a`, then of `b`, and so on until a read fails.
fn ping_pong_reads(a: &str, b: &str) -> Output {
    let mut reads = 0u64;
    loop {
        let name = if reads.is_multiple_of(2) { a } else { b };
        if let Err(e) = inputs::read(name, 0, 1) {
            return Output::PingPong {
                reads,
                error: format!("{e:?}"),
            };
        }
        reads += 1;
    }
}

/// Makes `count` tensors of one element and holds them all until the end.
fn many_resources(count: u64) -> Output {
    let held: Vec<tensor::Tensor> = (0..count)
        .map(|_| tensor::Tensor::new(&[1], tensor::TensorType::Fp32, &[0; 4]))
        .collect();
    Output::Made {
        made: held.len() as u64,
    }
}

/// Every misuse of the artifact handles and names the WIT allows a task to attempt.
fn abuse_handles() -> Output {
    let mut calls = Vec::new();
    let mut note = |what: &str, outcome: String| calls.push(format!("{what}: {outcome}"));
    match artifacts::create("once.txt") {
        Ok(a) => {
            note("write", describe(a.write(b"hello"), |()| "ok".into()));
            note("finish", describe(a.finish(), |n| format!("{n} bytes")));
            note(
                "write after finish",
                describe(a.write(b"more"), |()| "ok".into()),
            );
            note("size after finish", format!("{}", a.size()));
            note(
                "finish again",
                describe(a.finish(), |n| format!("{n} bytes")),
            );
        }
        Err(e) => note("create", format!("error: {e:?}")),
    }
    let long = "x".repeat(10_000);
    for name in ["", ".hidden", "../up", "a/b", "nul\0byte", long.as_str()] {
        let shown: String = name.chars().take(20).collect();
        note(
            &format!("create {shown:?}"),
            describe(artifacts::create(name), |_| "ok".into()),
        );
    }
    let mut held = Vec::new();
    for i in 0..9 {
        match artifacts::create(&format!("open-{i}")) {
            Ok(a) => held.push(a),
            Err(e) => note(&format!("open #{}", i + 1), format!("error: {e:?}")),
        }
    }
    drop(held);
    note(
        "resume never recorded",
        describe(artifacts::resume("never"), |a| {
            if a.is_some() { "some" } else { "none" }.into()
        }),
    );
    note(
        "save 64 MiB",
        describe(checkpoint::save(&vec![1u8; 64 << 20]), |()| "ok".into()),
    );
    log::write(log::Level::Info, &"y".repeat(1 << 20));
    note("log 1 MiB", "returned".into());
    Output::Calls { calls }
}

taskhost_guest::export_task!(Hostile);
