//! `classify.wasm`: runs an ONNX classifier over the records of an input, in batches, through
//! the host's inference (`taskhost_guest::nn`), and writes the predictions as an artifact.
//!
//! Input: `{"job_id": .., "inputs": {"model": KEY, "records": KEY}}`, plus optional
//! `"batch"` (records per inference, default [`DEFAULT_BATCH`]), `"input"` and `"output"`
//! (the model's input and output names, default `"x"` and `"probs"`) and `"batch_ms"` (a real
//! sleep after each batch, default 0: lets the tests stop it midway).
//!
//! - `model`: an ONNX model taking one f32 tensor `[N, F]` (N records of F features) and
//!   giving one f32 tensor `[N, C]` (a score per class).
//! - `records`: text, one record per line, F numbers separated by commas (blank lines are
//!   skipped).
//!
//! Artifact `predictions.csv`: a line per record, `RECORD,LABEL,S0,S1,...`: the record's
//! number (from 0), the class of the highest score (the first on a tie) and the C scores as
//! Rust prints an f32 (the shortest text that reads back as the same f32).
//!
//! Resuming: after each batch the task writes its lines, then saves a checkpoint (records
//! done, input offset, bytes written, and up to [`MAX_MARKS`] earlier batch boundaries).
//! A resumed run continues the artifact from what is durable, running again the batches from
//! the last boundary at or before that point and writing only the bytes missing, so a job
//! killed and resumed writes the same predictions as one that was not.
//!
//! Output: `{"records": N, "batches": B, "classes": C, "bytes": <artifact size>}`.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskhost_guest::artifacts::{self, ArtifactWriter};
use taskhost_guest::nn::{Context, Graph, Tensor};
use taskhost_guest::{Error, Task, bail, checkpoint, ensure, inputs, log, progress};

/// Records per inference when the input has no `"batch"`.
pub const DEFAULT_BATCH: u32 = 64;
/// The largest `"batch"` accepted.
pub const MAX_BATCH: u32 = 65_536;
/// Batch boundaries kept in the checkpoint (halved when full, the first always kept).
pub const MAX_MARKS: usize = 64;
/// The artifact of predictions.
pub const PREDICTIONS: &str = "predictions.csv";

/// The job document (other fields are ignored).
#[derive(Deserialize)]
struct Input {
    batch: Option<u32>,
    input: Option<String>,
    output: Option<String>,
    #[serde(default)]
    batch_ms: u64,
}

/// A batch boundary: `records` done, at input byte `offset`, `bytes` of predictions written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    records: u64,
    offset: u64,
    bytes: u64,
}

/// The checkpoint: where the last batch ended, and earlier boundaries to replay from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    at: Mark,
    batches: u64,
    classes: u32,
    marks: Vec<Mark>,
}

impl State {
    /// Records `at` as a boundary, keeping at most [`MAX_MARKS`] (every other one dropped
    /// when full: they stay spread over the whole run).
    fn mark(&mut self) {
        self.marks.push(self.at);
        if self.marks.len() > MAX_MARKS {
            let mut i = 0;
            self.marks.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
    }
}

/// The result document.
#[derive(Serialize)]
struct Report {
    records: u64,
    batches: u64,
    classes: u32,
    bytes: u64,
}

struct Classify;

impl Task for Classify {
    type Input = Input;
    type Output = Report;

    fn run(input: Input) -> Result<Report, Error> {
        let batch = input.batch.unwrap_or(DEFAULT_BATCH);
        ensure!(
            (1..=MAX_BATCH).contains(&batch),
            "\"batch\" must be 1 to {MAX_BATCH}, not {batch}"
        );
        let in_name = input.input.unwrap_or_else(|| "x".to_owned());
        let out_name = input.output.unwrap_or_else(|| "probs".to_owned());
        let ctx = Graph::from_input("model")?.context()?;

        let saved: State = checkpoint::load_or_default()?;
        let (mut out, mut state) = open_predictions(saved)?;
        let mut records = BufReader::new(inputs::reader("records")?);
        let size = records.get_ref().size();
        records.seek(SeekFrom::Start(state.at.offset))?;
        log::info(format!(
            "classifying from record {} (attempt {}), predictions durable to {} bytes",
            state.at.records,
            taskhost_guest::job::attempt(),
            out.size()
        ));

        loop {
            let (rows, features, read) = read_batch(&mut records, batch, state.at.records)?;
            if rows.is_empty() {
                break;
            }
            let n = (rows.len() / features) as u32;
            let x = Tensor::f32(&[n, features as u32], &rows)?;
            let scores = infer(&ctx, &in_name, &out_name, x, n)?;
            let classes = scores.len() / n as usize;
            state.classes = classes as u32;
            let text = lines(state.at.records, &scores, classes);
            write_from(&mut out, state.at.bytes, text.as_bytes())?;
            state.at = Mark {
                records: state.at.records + u64::from(n),
                offset: state.at.offset + read,
                bytes: state.at.bytes + text.len() as u64,
            };
            state.batches += 1;
            state.mark();
            checkpoint::save(&state)?;
            progress::report(state.at.offset, size);
            if input.batch_ms > 0 {
                std::thread::sleep(Duration::from_millis(input.batch_ms));
            }
        }
        let bytes = out.finish()?;
        Ok(Report {
            records: state.at.records,
            batches: state.batches,
            classes: state.classes,
            bytes,
        })
    }
}

/// Opens the predictions for a run starting from `saved`: a fresh artifact and state when
/// nothing was saved (or the artifact was not recorded), else the artifact resumed and the
/// state at the last boundary at or before its durable length (that batch and the following
/// ones run again; [`write_from`] writes only what is missing).
fn open_predictions(saved: State) -> Result<(ArtifactWriter, State), Error> {
    if saved.at.records > 0
        && let Some(out) = artifacts::resume(PREDICTIONS)?
    {
        let durable = out.size();
        let from = saved
            .marks
            .iter()
            .rev()
            .find(|m| m.bytes <= durable)
            .copied()
            .unwrap_or_default();
        let mut state = saved;
        state.at = from;
        state.marks.retain(|m| m.records <= from.records);
        return Ok((out, state));
    }
    Ok((artifacts::create(PREDICTIONS)?, State::default()))
}

/// Reads up to `batch` records: their features in a row, the features per record, and the
/// input bytes consumed. `first` numbers the first record (for messages).
fn read_batch(
    records: &mut impl BufRead,
    batch: u32,
    first: u64,
) -> Result<(Vec<f32>, usize, u64), Error> {
    let mut rows = Vec::new();
    let mut features = 0;
    let mut read = 0u64;
    let mut line = String::new();
    let mut n = 0;
    while n < batch {
        line.clear();
        let got = records.read_line(&mut line)?;
        if got == 0 {
            break;
        }
        read += got as u64;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let record = first + u64::from(n);
        let before = rows.len();
        for field in text.split(',') {
            match field.trim().parse::<f32>() {
                Ok(v) => rows.push(v),
                Err(_) => bail!("record {record}: `{field}` is not a number"),
            }
        }
        let count = rows.len() - before;
        if features == 0 {
            features = count;
        }
        ensure!(
            count == features,
            "record {record} has {count} features, not {features}"
        );
        n += 1;
    }
    Ok((rows, features.max(1), read))
}

/// The scores of `n` records: output `out_name` of the model on input `in_name` = `x`.
fn infer(
    ctx: &Context,
    in_name: &str,
    out_name: &str,
    x: Tensor,
    n: u32,
) -> Result<Vec<f32>, Error> {
    let outputs = ctx.compute(&[(in_name, x)])?;
    let scores = outputs.get(out_name)?;
    ensure!(
        scores.dims().len() == 2 && scores.dims()[0] == n && scores.dims()[1] > 0,
        "output `{out_name}` has dimensions {:?}, not [{n}, classes]",
        scores.dims()
    );
    Ok(scores.to_f32()?)
}

/// The prediction lines of a batch whose first record is number `first`.
fn lines(first: u64, scores: &[f32], classes: usize) -> String {
    let mut text = String::new();
    for (i, row) in scores.chunks_exact(classes).enumerate() {
        let label = row
            .iter()
            .enumerate()
            .fold(0, |best, (j, &s)| if s > row[best] { j } else { best });
        text.push_str(&format!("{},{label}", first + i as u64));
        for s in row {
            text.push_str(&format!(",{s}"));
        }
        text.push('\n');
    }
    text
}

/// Writes the part of `text` (which starts at byte `at` of the predictions) that `out` does
/// not have yet: all of it in a first run, the missing tail of a replayed batch after a resume.
fn write_from(out: &mut ArtifactWriter, at: u64, text: &[u8]) -> Result<(), Error> {
    let have = out.size();
    ensure!(
        have >= at,
        "the predictions have {have} bytes, fewer than the {at} already accounted for"
    );
    let skip = usize::try_from(have - at)
        .unwrap_or(usize::MAX)
        .min(text.len());
    out.write_all(&text[skip..])?;
    Ok(())
}

taskhost_guest::export_task!(Classify);
