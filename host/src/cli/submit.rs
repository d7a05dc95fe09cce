//! `taskhost submit --module sha256:<hex>|NAME[:TAG] [--input NAME=PATH ...] FILE`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue};
use taskhost::ids::{BatchId, JobId, ModuleHash, ModuleRef};
use taskhost::queue::OutgoingMessage;
use taskhost::queue::Queue;
use taskhost::queue::lanes::{Lane, LaneName};
use taskhost::store::ObjectStore;

/// Messages per publish call (the client batches them further).
const BATCH: usize = 500;
/// Job ids per `submitted/` record: one write per 1,000 jobs published.
const RECORD_BATCH: usize = 1000;
/// Work records (`jobs/<id>/work`) written at once: 10,000 jobs take about 10,000 / 32
/// round trips.
const WORK_WRITES: usize = 32;

/// Writes the record of a batch (`keys::submitted`, `status::batch`): its job ids and the
/// module they name; `batch` names a record to rewrite (deleted when `jobs` is empty).
/// Returns its id.
async fn record_batch(
    store: &taskhost::store::any::AnyStore,
    batch: Option<&BatchId>,
    module: &ModuleHash,
    jobs: &[(JobId, String)],
) -> anyhow::Result<BatchId> {
    let (batch, pre) = match batch {
        Some(b) => (b.clone(), taskhost::store::Precondition::None),
        None => (BatchId::new(), taskhost::store::Precondition::Absent),
    };
    if jobs.is_empty() {
        store.delete(&taskhost::keys::submitted(&batch)).await?;
        return Ok(batch);
    }
    write_record(store, &batch, pre, module, jobs.iter().map(|(id, _)| id)).await?;
    Ok(batch)
}

/// Records that the jobs `ids` run `module` from now on: a new batch record, the newest that
/// names them, so `status` and the module's usage (`module rm`, `module prune`) credit it.
/// What `job retry --module` and `dead-letter replay --module` publish them on.
pub(super) async fn record_module(
    store: &taskhost::store::any::AnyStore,
    module: &ModuleHash,
    ids: &[&JobId],
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let pre = taskhost::store::Precondition::Absent;
    write_record(store, &BatchId::new(), pre, module, ids.iter().copied()).await
}

async fn write_record<'a>(
    store: &taskhost::store::any::AnyStore,
    batch: &BatchId,
    pre: taskhost::store::Precondition,
    module: &ModuleHash,
    ids: impl Iterator<Item = &'a JobId>,
) -> anyhow::Result<()> {
    let record = taskhost::status::batch::encode(module, ids);
    match store
        .put(&taskhost::keys::submitted(batch), record.into_bytes(), pre)
        .await
    {
        // A fresh random id: only our own write, retried after its answer was lost, is there.
        Err(taskhost::store::StoreError::PreconditionFailed) => Ok(()),
        written => written
            .map(drop)
            .context("cannot record the batch's job ids and module (submitted/)"),
    }
}

/// Whether every job's work can be stored ([`taskhost::job::StoredWork::new`]).
fn check_works(module: &ModuleHash, jobs: &[(JobId, String)]) -> anyhow::Result<()> {
    for (id, doc) in jobs {
        taskhost::job::StoredWork::new(module, doc)
            .map_err(|e| anyhow::anyhow!("job {id}: {e}"))?;
    }
    Ok(())
}

/// Writes each job's work (`keys::work`: its module, document and lane, as published), up
/// to [`WORK_WRITES`] at a time.
async fn store_works(
    store: &taskhost::store::any::AnyStore,
    module: &ModuleHash,
    lane: &LaneName,
    jobs: &[(JobId, String)],
) -> anyhow::Result<()> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(jobs)
        .map(|(id, doc)| async move {
            let work = taskhost::job::StoredWork::new(module, doc)
                .map_err(|e| anyhow::anyhow!("job {id}: {e}"))?
                .on_lane(lane);
            store
                .put(
                    &taskhost::keys::work(id),
                    work.encode(),
                    taskhost::store::Precondition::None,
                )
                .await
                .with_context(|| format!("cannot store the work of job {id} (jobs/{id}/work)"))?;
            Ok::<(), anyhow::Error>(())
        })
        .buffer_unordered(WORK_WRITES)
        .try_collect::<()>()
        .await
}

/// Publish jobs to the jobs topic.
///
/// FILE is the guide's data.csv (a header `job_id,steps`; other columns become fields too,
/// numbers as numbers) or JSON lines (one job document per line); `-` reads standard input.
/// Every job gets the message attribute `module` (so the guide's Avro schema stays valid).
/// The module must already be in the bucket (`taskhost module push`). A tag (`NAME:TAG`) is
/// resolved once, now: every message names the hash it points at (printed), so moving the
/// tag later changes no job submitted here. Prints how many jobs were published.
///
/// `--input NAME=PATH` uploads PATH once, content-addressed (`inputs/<sha256>`, skipped when
/// the bucket has it already), and adds `"inputs": {"NAME": "inputs/<sha256>"}` to every job;
/// the task reads it by NAME. JSON-lines jobs may also carry their own `"inputs"` (keys of
/// objects already in the bucket, outside `jobs/` and `modules/`).
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Jobs file: .csv, or JSON lines; `-` for standard input.
    pub file: PathBuf,
    /// The task module every job runs: `sha256:<hex>` (as `taskhost module push` prints
    /// it) or a tag `NAME[:TAG]`, resolved once, now.
    #[arg(long, env = "DEFAULT_MODULE")]
    pub module: ModuleRef,
    #[command(flatten)]
    pub pubsub: PubsubArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Used only by the embedded queue, which creates its subscription on first use.
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// An input file for every job: NAME=PATH (repeatable).
    #[arg(long = "input", value_name = "NAME=PATH", value_parser = parse_input_arg)]
    pub inputs: Vec<(String, PathBuf)>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Publish to this priority lane's topic (`default`: TOPIC_ID; NAME: `<TOPIC_ID>-NAME`,
    /// created by `setup` with LANES naming it).
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = super::config::parse_lane)]
    pub lane: LaneName,
}

fn parse_input_arg(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PATH"))?;
    taskhost::ids::check_name(name).map_err(|e| format!("input name {e}"))?;
    if path.is_empty() {
        return Err(format!("{s:?}: the PATH is empty"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// Refuses an input name `--input` gives twice (the last would silently win).
fn distinct_input_names(inputs: &[(String, PathBuf)]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in inputs {
        anyhow::ensure!(seen.insert(name), "--input names `{name}` twice");
    }
    Ok(())
}

/// Uploads each input file once (content-addressed) and returns name → key.
async fn upload_inputs(
    store: &taskhost::store::any::AnyStore,
    inputs: &[(String, PathBuf)],
    quiet: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    distinct_input_names(inputs)?;
    let mut keys = BTreeMap::new();
    for (name, path) in inputs {
        let (sha, size) = taskhost::files::transfer::hash_file(path)?;
        let key = taskhost::keys::input(&sha);
        if store.size(&key).await? != Some(size) {
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(size).with_style(
                    indicatif::ProgressStyle::with_template(
                        "uploading {msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template"),
                )
            };
            bar.set_message(name.clone());
            taskhost::files::transfer::upload(store, path, &key, |n| bar.set_position(n)).await?;
            bar.finish_and_clear();
        }
        if !quiet {
            eprintln!("input {name}: {} ({size} bytes) -> {key}", path.display());
        }
        keys.insert(name.clone(), key);
    }
    Ok(keys)
}

/// Adds `inputs` to every job document, and checks each document's inputs as a worker will.
fn add_inputs(
    jobs: &mut [(JobId, String)],
    inputs: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for (id, doc) in jobs.iter_mut() {
        let mut v: serde_json::Value = serde_json::from_str(doc)?;
        let obj = v.as_object_mut().expect("jobs are JSON objects");
        if !inputs.is_empty() {
            let entry = obj
                .entry("inputs")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            let map = entry
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("job {id}: \"inputs\" must be an object"))?;
            for (name, key) in inputs {
                anyhow::ensure!(
                    !map.contains_key(name),
                    "job {id} names input `{name}` itself and --input names it too"
                );
                map.insert(name.clone(), key.clone().into());
            }
        }
        taskhost::job::parse_inputs(obj).map_err(|e| anyhow::anyhow!("job {id}: {e}"))?;
        *doc = serde_json::to_string(&v)?;
    }
    Ok(())
}

/// Reads jobs from CSV (when the text's first line has no `{`) or JSON lines (a leading
/// byte-order mark skipped); a job id named twice for different work is refused (each id
/// runs once: the second would be acked as done, or refused as other work, and its work
/// lost). The same job twice is published twice, as asked: the copy is absorbed.
pub fn parse_jobs(text: &str) -> anyhow::Result<Vec<(JobId, String)>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let jobs = if first.trim_start().starts_with('{') {
        parse_json_lines(text)?
    } else {
        parse_csv(text)?
    };
    let mut seen = std::collections::HashMap::with_capacity(jobs.len());
    for (n, (id, doc)) in jobs.iter().enumerate() {
        match seen.insert(id, (n, doc)) {
            Some((first, same)) if same != doc => anyhow::bail!(
                "job id {id} is named twice for different work (the file's jobs {} and {}): \
                 each job id runs once, so give each job its own id",
                first + 1,
                n + 1
            ),
            _ => {}
        }
    }
    Ok(jobs)
}

/// Refuses a job whose document names a module of its own (a `module` field: a worker runs
/// that one, before the message's attribute) other than `module`, the one `--module`
/// resolved to and every record of the batch names.
fn same_module(jobs: &[(JobId, String)], module: &ModuleHash) -> anyhow::Result<()> {
    for (id, doc) in jobs {
        let own = serde_json::from_str::<serde_json::Value>(doc)?
            .get("module")
            .cloned();
        let Some(own) = own else { continue };
        let same = own
            .as_str()
            .and_then(|s| s.parse::<ModuleHash>().ok())
            .is_some_and(|m| m == *module);
        anyhow::ensure!(
            same,
            "job {id}: its \"module\" field ({}) is not the module submitted ({module}, from \
             --module), and a worker would run the field's: drop the field, or submit the job \
             with that module",
            taskhost::inert::Inert(taskhost::inert::cut(&own.to_string(), 80))
        );
    }
    Ok(())
}

fn parse_json_lines(text: &str) -> anyhow::Result<Vec<(JobId, String)>> {
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let id = v
            .get("job_id")
            .and_then(|j| j.as_str())
            .ok_or_else(|| anyhow::anyhow!("line {}: no \"job_id\" string", i + 1))?;
        let id: JobId = id
            .parse()
            .map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        jobs.push((id, serde_json::to_string(&v)?));
    }
    Ok(jobs)
}

fn parse_csv(text: &str) -> anyhow::Result<Vec<(JobId, String)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr.headers()?.clone();
    anyhow::ensure!(
        headers.iter().any(|h| h == "job_id"),
        "the CSV header has no job_id column (expected job_id,steps)"
    );
    let mut jobs = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.with_context(|| format!("CSV row {}", i + 2))?;
        let mut doc = serde_json::Map::new();
        for (h, v) in headers.iter().zip(row.iter()) {
            let value = match v.parse::<i64>() {
                Ok(n) if h != "job_id" => serde_json::Value::from(n),
                _ => serde_json::Value::from(v),
            };
            doc.insert(h.to_owned(), value);
        }
        let id: JobId = doc["job_id"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("CSV row {}: {e}", i + 2))?;
        jobs.push((id, serde_json::Value::Object(doc).to_string()));
    }
    Ok(jobs)
}

pub async fn main(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let mut jobs = parse_jobs(&text)?;
    anyhow::ensure!(!jobs.is_empty(), "no jobs in {}", args.file.display());

    let store = args.store.open()?;
    let module = super::module::resolve_ref(&store, &args.module).await?;
    same_module(&jobs, &module)?;
    add_inputs(&mut jobs, &Default::default())?;
    let inputs = upload_inputs(&store, &args.inputs, args.quiet).await?;
    add_inputs(&mut jobs, &inputs)?;
    // Every job's work as it will be stored, checked before anything is published.
    check_works(&module, &jobs)?;
    let ps = args.pubsub.connect().await?;
    let mut subscription = args.subscription.clone();
    if let Queue::Local(_) = ps {
        // The lane published to exists too, whatever LANES says.
        if !subscription.lanes.contains(&args.lane) {
            subscription.lanes.push(args.lane.clone());
        }
        ensure_queue(&ps, &args.topics, &subscription).await?;
    }
    let topic = Lane::named(
        &args.lane,
        &args.topics.topic_id,
        &subscription.subscription_id,
    )
    .topic;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(jobs.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("publishing {bar:40} {pos}/{len} jobs")
                .expect("valid template"),
        )
    };
    let mut published = 0usize;
    for record in jobs.chunks(RECORD_BATCH) {
        // Each job's work, then the batch's ids, are stored before its messages go out, so
        // `status` shows every job as queued from the moment it is published, and `job
        // resume` / `job retry` find what to publish again.
        let midway = || format!("{published} jobs were published before this");
        store_works(&store, &module, &args.lane, record)
            .await
            .with_context(midway)?;
        let batch = record_batch(&store, None, &module, record)
            .await
            .with_context(midway)?;
        let mut sent = 0usize;
        for chunk in record.chunks(BATCH) {
            let messages = chunk
                .iter()
                .map(|(_, doc)| OutgoingMessage {
                    data: doc.clone().into_bytes(),
                    attributes: BTreeMap::from([("module".to_owned(), module.to_string())]),
                })
                .collect();
            match ps.publish(&topic, messages).await {
                Ok(ids) => {
                    published += ids.len();
                    sent += chunk.len();
                }
                Err(e) => {
                    bar.abandon();
                    // The record names what may have gone out (best effort): this group
                    // may have been published in part, and a queued job that no record
                    // names would not keep its module from `module rm` / `prune`.
                    let maybe = &record[..sent + chunk.len()];
                    let _ = record_batch(&store, Some(&batch), &module, maybe).await;
                    anyhow::bail!(
                        "{e}; {published} jobs were published before the group of {} that \
                         failed, which may have gone out in part (resubmitting is safe: a \
                         job whose result exists is not run again)",
                        chunk.len()
                    );
                }
            }
            bar.set_position(published as u64);
        }
    }
    bar.finish_and_clear();
    println!("published {published} jobs to {topic}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_csv_and_json_lines() {
        let csv = "job_id,steps\njob-0,600\njob-1, 10\n";
        let jobs = parse_jobs(csv).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].1, r#"{"job_id":"job-0","steps":600}"#);
        assert_eq!(jobs[1].1, r#"{"job_id":"job-1","steps":10}"#);
        let jl = "{\"job_id\":\"a\",\"steps\":3}\n\n{\"job_id\":\"b\",\"n\":5}\n";
        let jobs = parse_jobs(jl).unwrap();
        assert_eq!(jobs[1].0.as_str(), "b");
        let mut jobs = parse_jobs(jl).unwrap();
        let inputs = BTreeMap::from([("data".to_owned(), "inputs/abc".to_owned())]);
        add_inputs(&mut jobs, &inputs).unwrap();
        assert_eq!(
            jobs[0].1,
            r#"{"inputs":{"data":"inputs/abc"},"job_id":"a","steps":3}"#
        );
        let mut own = parse_jobs("{\"job_id\":\"a\",\"inputs\":{\"data\":\"x\"}}\n").unwrap();
        assert!(
            add_inputs(&mut own, &inputs).is_err(),
            "the same name twice"
        );
        let mut reserved =
            parse_jobs("{\"job_id\":\"a\",\"inputs\":{\"d\":\"jobs/b/result\"}}\n").unwrap();
        assert!(add_inputs(&mut reserved, &BTreeMap::new()).is_err());
        assert!(parse_input_arg("data=/tmp/x").is_ok());
        let twice = [("d".to_owned(), "a".into()), ("d".to_owned(), "b".into())];
        assert!(distinct_input_names(&twice).is_err());
        assert!(distinct_input_names(&twice[..1]).is_ok());
        assert!(parse_input_arg("data").is_err() && parse_input_arg(".d=x").is_err());
        let m = ModuleHash::of(b"m");
        let other = ModuleHash::of(b"other");
        let same = format!("{{\"job_id\":\"a\",\"module\":\"{m}\"}}\n{{\"job_id\":\"b\"}}\n");
        assert!(same_module(&parse_jobs(&same).unwrap(), &m).is_ok());
        for bad in [
            format!("{{\"job_id\":\"a\"}}\n{{\"job_id\":\"b\",\"module\":\"{other}\"}}\n"),
            "{\"job_id\":\"a\",\"module\":7}\n".to_owned(),
            "{\"job_id\":\"a\",\"module\":\"name:tag\"}\n".to_owned(),
        ] {
            let e = same_module(&parse_jobs(&bad).unwrap(), &m).unwrap_err();
            assert!(
                e.to_string().contains("is not the module submitted"),
                "{bad}: {e}"
            );
        }
        for bad in [
            "steps\n5\n",
            "job_id,steps\na/b,1\n",
            "{\"steps\":1}\n",
            "{nope\n",
        ] {
            assert!(parse_jobs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_job_id_named_twice_for_different_work_is_refused_naming_both() {
        for text in [
            "job_id,steps\nj-1,1\nj-2,2\nj-1,3\n",
            "{\"job_id\":\"j-1\"}\n{\"job_id\":\"j-2\"}\n{\"job_id\":\"j-1\",\"steps\":3}\n",
        ] {
            let e = parse_jobs(text).unwrap_err().to_string();
            assert!(
                e.contains("j-1 is named twice") && e.contains("jobs 1 and 3"),
                "{e}"
            );
        }
        // The very same job twice: both published, as asked.
        let twice = parse_jobs("job_id,steps\nj-1,1\nj-1,1\n").unwrap();
        assert_eq!(twice.len(), 2);
    }

    #[test]
    fn json_lines_after_a_byte_order_mark_are_json_lines() {
        let jobs = parse_jobs("\u{feff}{\"job_id\":\"a\",\"steps\":3}\n").unwrap();
        assert_eq!(jobs[0].0.as_str(), "a");
        let csv = parse_jobs("\u{feff}job_id,steps\nb,1\n").unwrap();
        assert_eq!(csv[0].0.as_str(), "b");
    }

    #[test]
    fn every_work_is_checked_before_anything_is_published() {
        let m = ModuleHash::of(b"m");
        let mut jobs =
            parse_jobs("{\"job_id\":\"a\"}\n{\"job_id\":\"b\",\"restart\":\"yes\"}\n").unwrap();
        add_inputs(&mut jobs, &Default::default()).unwrap();
        let e = check_works(&m, &jobs).unwrap_err().to_string();
        assert!(e.starts_with("job b:"), "{e}");
        assert!(check_works(&m, &jobs[..1]).is_ok());
    }
}
