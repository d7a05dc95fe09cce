//! `taskhost demo`: the whole system on the embedded default, on one machine, no cloud.
//!
//! In steps: [`setup`] pushes the module and submits the jobs, [`start_workers`] starts the
//! worker processes, [`supervise`] polls and draws the jobs and kills one worker mid-job
//! (whom to kill and which of its jobs resumed elsewhere: the pure [`decide::decide`]), and
//! [`summary::summarize`] verifies every result and says what the kill cost.

mod decide;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use taskhost::checkpoint::Header;
use taskhost::ids::{JobId, WorkerId};
use taskhost::queue::{LocalQueue, OutgoingMessage, Queue};
use taskhost::runtime::{Runtime, RuntimeConfig};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;

use self::decide::{Kill, Seen, decide};
use super::config::{SubscriptionArgs, TopicArgs, ensure_queue};
use super::status::{JobStatus, read_job};

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
    /// Where tests/build-guests.sh built the task modules: the default `--module` is
    /// `wasm32-wasip2/release/step_counter.wasm` under it.
    #[arg(
        long,
        env = "GUEST_TARGET_DIR",
        value_name = "DIR",
        default_value = "guest-tasks/target"
    )]
    pub guest_target_dir: PathBuf,
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
    let (store, jobs) = setup(&args, &dir).await?;
    let mut workers = start_workers(&args, &dir)?;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let watched = supervise(&args, &store, &jobs, &mut workers, deadline).await?;
    workers.terminate_all();
    let summary = summary::summarize(&jobs, &watched, args.step_ms, started.elapsed());
    for line in &summary.lines {
        println!("{line}");
    }
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::TASK_FAILED)
    })
}

/// The demo's jobs: each id and its steps (the first `--steps`, each next 5 more).
type Jobs = Vec<(JobId, u64)>;

/// Step 1: pushes the step-counter module and submits the jobs, on the embedded default in
/// `dir` (its store, queue and module cache).
async fn setup(args: &DemoArgs, dir: &Path) -> anyhow::Result<(AnyStore, Jobs)> {
    let module_path = args.module.clone().unwrap_or_else(|| {
        args.guest_target_dir
            .join("wasm32-wasip2/release/step_counter.wasm")
    });
    let bytes = std::fs::read(&module_path).with_context(|| {
        format!(
            "cannot read {} (build the task modules first: tests/build-guests.sh, or run ./demo.sh)",
            module_path.display()
        )
    })?;
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
        lanes: Vec::new(),
    };
    ensure_queue(&queue, &topics, &sub).await?;
    let jobs: Jobs = (0..args.jobs)
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
    Ok((store, jobs))
}

/// Step 2: the worker processes (at least two: one is killed), logging into `dir`.
fn start_workers(args: &DemoArgs, dir: &Path) -> anyhow::Result<Workers> {
    let mut workers = Workers(Vec::new());
    for n in 0..args.workers.max(2) {
        workers.0.push(spawn_worker(dir, n, args.slots)?);
    }
    println!(
        "started  {} workers x {} slots (logs in {})",
        workers.0.len(),
        args.slots,
        dir.display()
    );
    Ok(workers)
}

/// Kills the worker processes on every way out.
struct Workers(Vec<(u32, Child)>);

impl Workers {
    /// The worker processes' pids.
    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(|(pid, _)| *pid).collect()
    }

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

/// What the supervision saw: each job's last status (in job order), the kill, and the
/// killed jobs seen resuming elsewhere (job id -> the step it resumed from).
pub struct Watched {
    pub statuses: Vec<JobStatus>,
    pub kill: Option<Kill>,
    pub resumed: BTreeMap<String, u64>,
}

/// Step 3: polls every job (every 200 ms) until all are final or `deadline` passes, draws
/// them, kills the worker [`decide`] picks and records its jobs resuming elsewhere.
async fn supervise(
    args: &DemoArgs,
    store: &AnyStore,
    jobs: &Jobs,
    workers: &mut Workers,
    deadline: Instant,
) -> anyhow::Result<Watched> {
    let bars = Bars::new(jobs, args.quiet);
    let mut kill: Option<Kill> = None;
    let mut resumed: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let mut statuses = Vec::with_capacity(jobs.len());
        let mut seen = Vec::with_capacity(jobs.len());
        for (i, (id, _)) in jobs.iter().enumerate() {
            // One read of the result, error and checkpoint per job per poll.
            let (s, header) = read_job(store, id).await?;
            bars.show(i, &s, resumed.contains_key(id.as_str()));
            seen.push(seen_of(&s, &header));
            statuses.push(s);
        }
        let decision = decide(
            &seen,
            kill.as_ref(),
            &workers.pids(),
            taskhost::time::now_ms(),
        );
        resumed.extend(decision.resumed);
        if let Some(k) = decision.kill {
            workers.kill(k.pid);
            bars.println(format!(
                "killed   worker pid {} (SIGKILL) while it ran {}",
                k.pid,
                k.held.keys().cloned().collect::<Vec<_>>().join(", ")
            ))?;
            kill = Some(k);
        }
        let finished = statuses.iter().all(|s| s.state.is_final());
        if finished || Instant::now() > deadline {
            bars.finish();
            return Ok(Watched {
                statuses,
                kill,
                resumed,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`decide`] needs of a job's status and checkpoint header.
fn seen_of(s: &JobStatus, header: &Header) -> Seen {
    Seen {
        job: s.job_id.clone(),
        state: s.state,
        progress: s.progress,
        attempts: s.attempts,
        owner_pid: WorkerId::pid_of(&header.owner),
        updated_ms: header.updated_ms,
    }
}

/// One progress bar per job (hidden with `--quiet`).
struct Bars {
    multi: indicatif::MultiProgress,
    bars: Vec<indicatif::ProgressBar>,
    quiet: bool,
}

impl Bars {
    fn new(jobs: &Jobs, quiet: bool) -> Bars {
        let multi = if quiet {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            indicatif::MultiProgress::new()
        };
        let style =
            indicatif::ProgressStyle::with_template("{prefix:<8} {bar:40} {pos:>4}/{len:<4} {msg}")
                .expect("valid template");
        let bars = jobs
            .iter()
            .map(|(id, steps)| {
                let b = multi.add(indicatif::ProgressBar::new(*steps).with_style(style.clone()));
                b.set_prefix(id.to_string());
                b
            })
            .collect();
        Bars { multi, bars, quiet }
    }

    /// Job `i`'s durable progress, state and attempt.
    fn show(&self, i: usize, s: &JobStatus, resumed: bool) {
        let bar = &self.bars[i];
        if let Some((done, _)) = s.progress {
            bar.set_position(done);
        }
        let note = if resumed { ", resumed" } else { "" };
        bar.set_message(format!("{} (attempt {}{note})", s.state, s.attempts.max(1)));
    }

    /// A line above the bars (on stdout with `--quiet`).
    fn println(&self, line: String) -> anyhow::Result<()> {
        if self.quiet {
            println!("{line}");
        } else {
            self.multi.println(line)?;
        }
        Ok(())
    }

    fn finish(&self) {
        for b in &self.bars {
            b.finish();
        }
    }
}
