//! `taskhost demo`: the whole system on the embedded default, on one machine, no cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::config::{SubscriptionArgs, TopicArgs, ensure_queue};
use super::status::{JobStatus, read_job};
use taskhost::ids::{JobId, JobState};
use taskhost::inert::Inert;
use taskhost::queue::LocalQueue;
use taskhost::queue::OutgoingMessage;
use taskhost::queue::Queue;
use taskhost::runtime::{Runtime, RuntimeConfig};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;

/// Run a demo of taskhost on the embedded default (local queue + directory store).
///
/// Pushes the step-counter task module, submits jobs, starts several worker processes,
/// SIGKILLs one of them mid-job, shows its jobs resume on another worker from their
/// checkpoints, draws progress bars, then verifies every result and prints a summary.
/// Exits non-zero if any result is wrong or missing.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of jobs.
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// Steps of the first job (each next job has 5 more).
    #[arg(long, default_value_t = 150)]
    pub steps: u64,
    /// Sleep per step in ms (the task's "step_ms").
    #[arg(long, default_value_t = 20)]
    pub step_ms: u64,
    /// Worker processes (one is killed mid-job).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Job slots per worker.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// The step-counter module; default: the one tests/build-guests.sh builds.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Working directory (queue, store, logs); default: a fresh temporary one, removed after.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// No progress bars (for logs and tests).
    #[arg(long)]
    pub quiet: bool,
}

fn default_module() -> PathBuf {
    let base = std::env::var_os("GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("guest-tasks/target"));
    base.join("wasm32-wasip2/release/step_counter.wasm")
}

/// The jobs a killed worker held: job id -> (durable step, ms since that checkpoint).
type Held = BTreeMap<String, (u64, u64)>;

/// Kills the worker processes on every way out.
struct Workers(Vec<(u32, Child)>);

impl Workers {
    fn kill(&mut self, pid: u32) {
        if let Some((_, c)) = self.0.iter_mut().find(|(p, _)| *p == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // kill(2) has no safe form in std.
    #[allow(unsafe_code)]
    fn terminate_all(&mut self) {
        for (pid, c) in &mut self.0 {
            if c.try_wait().ok().flatten().is_none() {
                // SAFETY: plain kill(2) on a child we spawned and have not reaped.
                unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
            }
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_worker(dir: &Path, n: usize, slots: usize) -> anyhow::Result<(u32, Child)> {
    let log = std::fs::File::create(dir.join(format!("worker-{n}.log")))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .env_remove("PROJECT_ID")
        .env_remove("R2_BUCKET_NAME")
        .env("QUEUE_FILE", dir.join("queue.sqlite"))
        .env("STORE_DIR", dir.join("store"))
        .env("TASKHOST_CACHE_DIR", dir.join("cache"))
        .env("ACK_DEADLINE_SECONDS", "2")
        .env("WORKER_SLOTS", slots.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start a worker process")?;
    Ok((child.id(), child))
}

/// The pid in a checkpoint owner "<host>-<pid>-<random>" (a worker's id).
fn owner_pid(owner: &str) -> Option<u32> {
    taskhost::ids::WorkerId::pid_of(owner)
}

/// A wrong or missing result, as a sentence; `None` if the result is right.
pub fn check_result(job: &str, steps: u64, result: Option<&str>) -> Option<String> {
    let Some(text) = result else {
        return Some(format!("{job}: no result"));
    };
    let want = serde_json::json!({"job_id": job, "steps": steps, "sum": steps * (steps + 1) / 2});
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v == want => None,
        _ => Some(format!(
            "{job}: wrong result {} (expected {want})",
            Inert(text)
        )),
    }
}

pub async fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let module_path = args.module.clone().unwrap_or_else(default_module);
    let bytes = std::fs::read(&module_path).with_context(|| {
        format!(
            "cannot read {} (build the task modules first: tests/build-guests.sh, or run ./demo.sh)",
            module_path.display()
        )
    })?;

    // 1. Push the module and submit the jobs, on the embedded default.
    let store = AnyStore::Dir(DirStore::open(dir.join("store"))?);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.join("cache")),
        ..RuntimeConfig::default()
    })?;
    let (hash, _) = taskhost::modules::push(&runtime, &store, bytes).await?;
    println!("pushed   step-counter as {hash}");
    let queue = Queue::Local(LocalQueue::open(dir.join("queue.sqlite")).await?);
    let topics = TopicArgs {
        topic_id: "jobs".into(),
        dead_letter_topic_id: None,
    };
    let sub = SubscriptionArgs {
        subscription_id: "jobs-sub".into(),
        ack_deadline_seconds: 2,
    };
    ensure_queue(&queue, &topics, &sub).await?;
    let jobs: Vec<(JobId, u64)> = (0..args.jobs)
        .map(|i| {
            let id = format!("demo-{i:02}").parse().expect("valid id");
            (id, args.steps + 5 * i as u64)
        })
        .collect();
    let messages = jobs
        .iter()
        .map(|(id, steps)| OutgoingMessage {
            data:
                serde_json::json!({"job_id": id.as_str(), "steps": steps, "step_ms": args.step_ms})
                    .to_string()
                    .into_bytes(),
            attributes: BTreeMap::from([("module".to_owned(), hash.to_string())]),
        })
        .collect();
    queue.publish(&topics.topic_id, messages).await?;
    println!(
        "submitted {} jobs ({} to {} steps, {} ms each)",
        jobs.len(),
        args.steps,
        jobs.last().map_or(0, |j| j.1),
        args.step_ms
    );

    // 2. Workers.
    let mut workers = Workers(Vec::new());
    for n in 0..args.workers.max(2) {
        workers.0.push(spawn_worker(&dir, n, args.slots)?);
    }
    println!(
        "started  {} workers x {} slots (logs in {})",
        workers.0.len(),
        args.slots,
        dir.display()
    );

    // 3. Watch, kill one worker mid-job, watch its jobs resume elsewhere.
    let multi = if args.quiet {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        indicatif::MultiProgress::new()
    };
    let style =
        indicatif::ProgressStyle::with_template("{prefix:<8} {bar:40} {pos:>4}/{len:<4} {msg}")
            .expect("valid template");
    let bars: Vec<_> = jobs
        .iter()
        .map(|(id, steps)| {
            let b = multi.add(indicatif::ProgressBar::new(*steps).with_style(style.clone()));
            b.set_prefix(id.to_string());
            b
        })
        .collect();
    let mut killed: Option<(u32, Held)> = None;
    let mut resumed: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let statuses = loop {
        let mut all = Vec::with_capacity(jobs.len());
        for ((id, _), bar) in jobs.iter().zip(&bars) {
            // One read of the result, error and checkpoint per job per poll.
            let (s, header) = read_job(&store, id).await?;
            if let Some((done, _)) = s.progress {
                bar.set_position(done);
            }
            let note = if resumed.contains_key(id.as_str()) {
                ", resumed"
            } else {
                ""
            };
            bar.set_message(format!("{} (attempt {}{note})", s.state, s.attempts.max(1)));
            if let Some((pid, held)) = &killed
                && held.contains_key(id.as_str())
                && s.attempts >= 2
                && owner_pid(&header.owner) != Some(*pid)
            {
                resumed.entry(id.to_string()).or_insert(held[id.as_str()].0);
            }
            all.push((s, header));
        }
        if killed.is_none() {
            // Kill the worker of the first job with durable progress past 10%.
            let victim = all.iter().find_map(|(s, h)| {
                let (done, total) = s.progress?;
                (s.state == JobState::Running && done * 10 >= total && done < total)
                    .then(|| owner_pid(&h.owner))
                    .flatten()
            });
            if let Some(pid) = victim.filter(|p| workers.0.iter().any(|(w, _)| w == p)) {
                let now_ms = taskhost::time::now_ms();
                let held: Held = all
                    .iter()
                    .filter(|(s, h)| owner_pid(&h.owner) == Some(pid) && s.state != JobState::Done)
                    .map(|(s, h)| {
                        (
                            s.job_id.clone(),
                            (
                                s.progress.map_or(0, |p| p.0),
                                now_ms.saturating_sub(h.updated_ms),
                            ),
                        )
                    })
                    .collect();
                workers.kill(pid);
                let line = format!(
                    "killed   worker pid {pid} (SIGKILL) while it ran {}",
                    held.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                if args.quiet {
                    println!("{line}");
                } else {
                    multi.println(line)?;
                }
                killed = Some((pid, held));
            }
        }
        let finished = all.iter().all(|(s, _)| s.state.is_final());
        if finished || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for b in &bars {
        b.finish();
    }
    workers.terminate_all();
    let elapsed = started.elapsed();

    // 4. Verify and summarize.
    let mut wrong = Vec::new();
    for ((id, steps), (s, _)) in jobs.iter().zip(&statuses) {
        if let Some(m) = check_result(id.as_str(), *steps, s.result.as_deref()) {
            wrong.push(m);
        }
    }
    let ok = jobs.len() - wrong.len();
    println!("\n== summary");
    println!(
        "jobs      {ok}/{} results verified (sum of 1..=steps)",
        jobs.len()
    );
    println!("time      {:.1} s", elapsed.as_secs_f64());
    let held: BTreeSet<String> = killed
        .as_ref()
        .map(|k| k.1.keys().cloned().collect())
        .unwrap_or_default();
    match &killed {
        None => println!("kill      none: every job finished before one had progress to lose"),
        Some((pid, held_jobs)) => {
            println!(
                "kill      worker pid {pid} was SIGKILLed while running {} job(s)",
                held_jobs.len()
            );
            for (job, (step, since_ms)) in held_jobs {
                let how = match resumed.get(job) {
                    Some(_) => format!("resumed on another worker from step {step}"),
                    None => "finished (resume not observed)".into(),
                };
                println!(
                    "          {job}: {how}; work lost: {} ms since its last checkpoint (~{} steps)",
                    since_ms,
                    since_ms / args.step_ms.max(1)
                );
            }
        }
    }
    println!(
        "resumes   {} of {} killed job(s)",
        resumed.len(),
        held.len()
    );
    let failed: Vec<&JobStatus> = statuses
        .iter()
        .map(|(s, _)| s)
        .filter(|s| s.state == JobState::Failed)
        .collect();
    for f in failed {
        println!(
            "failed    {}: {}",
            f.job_id,
            Inert(f.error.as_deref().unwrap_or("?"))
        );
    }
    for w in &wrong {
        println!("WRONG     {w}");
    }
    if !wrong.is_empty() {
        println!(
            "demo FAILED: {} of {} results wrong or missing",
            wrong.len(),
            jobs.len()
        );
        return Ok(ExitCode::from(1));
    }
    println!("demo ok");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_checked() {
        assert_eq!(
            check_result("a", 3, Some(r#"{"job_id":"a","steps":3,"sum":6}"#)),
            None
        );
        for bad in [
            Some(r#"{"job_id":"a","steps":3,"sum":7}"#),
            Some(r#"{"job_id":"b","steps":3,"sum":6}"#),
            Some("nonsense"),
            None,
        ] {
            assert!(check_result("a", 3, bad).is_some(), "{bad:?}");
        }
        assert_eq!(owner_pid("host-name-1234-a1b2c3"), Some(1234));
    }
}
