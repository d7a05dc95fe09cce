//! `digest.wasm`: reads an input object in chunks, hashes it, and writes artifacts.
//!
//! Input: `{"job_id": .., "inputs": {"data": KEY}}`, plus optional `"copy"` (default
//! `false`), `"chunk_bytes"` (default [`DEFAULT_CHUNK_BYTES`], at most [`MAX_CHUNK_BYTES`])
//! and `"chunk_ms"` (a real sleep before each chunk, default [`DEFAULT_CHUNK_MS`]).
//!
//! The task reads input `data` `chunk_bytes` at a time, computes its CRC-32 (IEEE), and
//! after each chunk checkpoints `{"offset": .., "crc": ..}` (the bytes hashed and the CRC so
//! far) and reports progress (`done` = offset, `total` = the input's size). With `copy`, it
//! also writes artifact `copy.bin`, the input's bytes unchanged, writing each chunk before
//! the checkpoint of that chunk is saved. At the end it writes artifact `report.json`, the
//! same document as the result.
//!
//! On start it logs one line: `digesting N bytes of input "data" in chunks of C (attempt A)`,
//! or on a resume (checkpoint offset O > 0) `resuming at offset O (attempt A)`, followed by
//! `, copy.bin durable to L` with `copy` (L: the bytes of `copy.bin` the checkpoint recorded
//! as durable; `L (not recorded: created again)` when it recorded none). It continues hashing
//! at O and, with `copy`, first writes input bytes [L, O) to `copy.bin` again.
//!
//! Output: `{"bytes": N, "crc32": "<8 lowercase hex digits>"}`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskhost_guest::artifacts::{self, ArtifactWriter};
use taskhost_guest::inputs::{self, Reader};
use taskhost_guest::{Error, Task, bail, checkpoint, ensure, job, log, progress};

/// Bytes read (and checkpointed) per chunk when the input has no `"chunk_bytes"`.
pub const DEFAULT_CHUNK_BYTES: u64 = 1024 * 1024;

/// The largest `"chunk_bytes"` accepted (the chunk is one buffer in memory).
pub const MAX_CHUNK_BYTES: u64 = 64 * 1024 * 1024;

/// Milliseconds slept before each chunk when the input has no `"chunk_ms"`.
pub const DEFAULT_CHUNK_MS: u64 = 0;

/// The input object the task reads.
pub const INPUT: &str = "data";

/// The artifact holding a copy of the input (with `"copy": true`).
pub const COPY: &str = "copy.bin";

/// The artifact holding the result document.
pub const REPORT: &str = "report.json";

/// The job document (other fields, `job_id` and `inputs` among them, are ignored).
#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    copy: bool,
    chunk_bytes: Option<u64>,
    chunk_ms: Option<u64>,
}

/// The checkpoint: `offset` bytes are hashed, `crc` is their CRC-32.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct State {
    offset: u64,
    crc: u32,
}

/// The result document, also written as `report.json`.
#[derive(Serialize)]
struct Report {
    bytes: u64,
    crc32: String,
}

struct Digest;

impl Task for Digest {
    type Input = Input;
    type Output = Report;

    fn run(input: Input) -> Result<Report, Error> {
        let chunk = input.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        ensure!(
            (1..=MAX_CHUNK_BYTES).contains(&chunk),
            "\"chunk_bytes\" must be 1 to {MAX_CHUNK_BYTES}, not {chunk}"
        );
        let chunk_ms = input.chunk_ms.unwrap_or(DEFAULT_CHUNK_MS);

        let mut reader = inputs::reader(INPUT)?;
        let size = reader.size();
        let state: State = checkpoint::load_or_default()?;
        ensure!(
            state.offset <= size,
            "the checkpoint is at offset {} but input \"{INPUT}\" has only {size} bytes",
            state.offset
        );
        let mut buf = vec![0; chunk as usize];

        let mut copy = None;
        if input.copy {
            let (mut out, durable, resumed) = open_copy(state.offset)?;
            log_start(size, chunk, state.offset, Some((durable, resumed)));
            reader.seek(SeekFrom::Start(durable))?;
            copy_range(&mut reader, &mut out, state.offset - durable, &mut buf)?;
            copy = Some(out);
        } else {
            log_start(size, chunk, state.offset, None);
        }
        reader.seek(SeekFrom::Start(state.offset))?;

        let mut hasher = crc32fast::Hasher::new_with_initial(state.crc);
        let mut offset = state.offset;
        progress::report(offset, size);
        while offset < size {
            if chunk_ms > 0 {
                std::thread::sleep(Duration::from_millis(chunk_ms));
            }
            let data = &mut buf[..chunk.min(size - offset) as usize];
            reader.read_exact(data)?;
            hasher.update(data);
            // Written before the save, so the checkpoint covers this chunk of the copy.
            if let Some(out) = &mut copy {
                out.write_all(data)?;
            }
            offset += data.len() as u64;
            checkpoint::save(&State {
                offset,
                crc: hasher.clone().finalize(),
            })?;
            progress::report(offset, size);
        }

        if let Some(out) = copy {
            let copied = out.finish()?;
            ensure!(
                copied == size,
                "{COPY} has {copied} bytes but input \"{INPUT}\" has {size}"
            );
        }
        let report = Report {
            bytes: size,
            crc32: format!("{:08x}", hasher.finalize()),
        };
        let mut out = artifacts::create(REPORT)?;
        out.write_all(&serde_json::to_vec(&report)?)?;
        out.finish()?;
        Ok(report)
    }
}

/// Opens `copy.bin` for a run that starts at input offset `offset`: resumed when the
/// checkpoint recorded it, created otherwise. Returns the writer, how many of its bytes are
/// durable, and whether it was resumed.
fn open_copy(offset: u64) -> Result<(ArtifactWriter, u64, bool), Error> {
    if offset > 0
        && let Some(out) = artifacts::resume(COPY)?
    {
        let durable = out.size();
        if durable > offset {
            bail!("{COPY} is durable to {durable} bytes, past the checkpoint's offset {offset}");
        }
        return Ok((out, durable, true));
    }
    Ok((artifacts::create(COPY)?, 0, false))
}

/// Logs the line a run starts with (see the crate docs); `copy` is `copy.bin`'s durable
/// length and whether it was resumed.
fn log_start(size: u64, chunk: u64, offset: u64, copy: Option<(u64, bool)>) {
    let attempt = job::attempt();
    if offset == 0 {
        log::info(format!(
            "digesting {size} bytes of input \"{INPUT}\" in chunks of {chunk} (attempt {attempt})"
        ));
        return;
    }
    let copy = match copy {
        None => String::new(),
        Some((durable, true)) => format!(", {COPY} durable to {durable}"),
        Some((durable, false)) => {
            format!(", {COPY} durable to {durable} (not recorded: created again)")
        }
    };
    log::info(format!(
        "resuming at offset {offset} (attempt {attempt}){copy}"
    ));
}

/// Copies the next `len` bytes of `reader` to `out`, through `buf`.
fn copy_range(
    reader: &mut Reader,
    out: &mut ArtifactWriter,
    mut len: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    while len > 0 {
        let n = (buf.len() as u64).min(len) as usize;
        let data = &mut buf[..n];
        reader.read_exact(data)?;
        out.write_all(data)?;
        len -= data.len() as u64;
    }
    Ok(())
}

taskhost_guest::export_task!(Digest);
