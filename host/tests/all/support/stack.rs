//! One test's view of the shared servers (the official Pub/Sub emulator and the S3 test
//! server, started by the first test of a binary that needs them and stopped with the last),
//! and the helpers the end-to-end tests share: running `taskhost` commands, waiting for jobs,
//! reading logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use taskhost::queue::{IncomingMessage, Pubsub, Queue, Settle};
use taskhost::store::s3::S3Store;

use super::cli::{CliEnv, Output, Proc};
use super::pubsub::PubsubEmulator;
use super::s3::S3Server;

/// The lease of every test subscription (the minimum Pub/Sub allows).
pub const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// How long a worker may take to start (connect, subscribe).
pub const WORKER_START: Duration = Duration::from_secs(60);
/// How long a worker may take to exit after SIGTERM.
pub const WORKER_STOP: Duration = Duration::from_secs(30);

/// The servers the tests share.
pub struct Servers {
    pub emulator: PubsubEmulator,
    pub s3: S3Server,
}

/// The running servers while any test holds them (no test holds them: none run).
static SERVERS: tokio::sync::Mutex<Weak<Servers>> = tokio::sync::Mutex::const_new(Weak::new());

/// The shared servers, started if no running test holds them. They stop (their `Drop` kills
/// them) when the last test holding them ends, pass or fail.
pub async fn servers() -> Arc<Servers> {
    let mut slot = SERVERS.lock().await;
    if let Some(servers) = slot.upgrade() {
        return servers;
    }
    let emulator = tokio::task::spawn_blocking(PubsubEmulator::start);
    let s3 = S3Server::start().await;
    let servers = Arc::new(Servers {
        emulator: emulator.await.unwrap(),
        s3,
    });
    *slot = Arc::downgrade(&servers);
    servers
}

/// One test's view of the shared servers: its own project, its own key prefix, a library
/// client for each, and the CLI environment for its topic.
pub struct Stack {
    pub cli: CliEnv,
    pub pubsub: Pubsub,
    pub store: S3Store,
    pub topic: String,
    /// Dropped last: the servers may stop with it.
    _servers: Arc<Servers>,
}

impl Stack {
    /// Project `e2e-<name>`, key prefix `<name>`, topic `<name>` (subscription
    /// `<name>-sub`, dead-letter topic `<name>-dead-letter`), ACK_DEADLINE_SECONDS=10.
    /// Nothing created.
    pub async fn start(name: &str) -> Stack {
        let servers = servers().await;
        let project = format!("e2e-{name}");
        let pubsub = Pubsub::connect(&servers.emulator.config(&project))
            .await
            .expect("connect to the emulator");
        let cli = CliEnv::new(&servers.emulator, &servers.s3, &project, name)
            .set("ACK_DEADLINE_SECONDS", ACK_DEADLINE.as_secs().to_string())
            .set("R2_KEY_PREFIX", name);
        Stack {
            cli,
            pubsub,
            store: servers.s3.store(name),
            topic: name.to_string(),
            _servers: servers,
        }
    }

    /// [`Stack::start`], then `taskhost setup`.
    pub async fn setup(topic: &str) -> Stack {
        Stack::setup_with(topic, ACK_DEADLINE).await
    }

    /// [`Stack::setup`] with another `ACK_DEADLINE_SECONDS` (the emulator takes any from 1 s).
    pub async fn setup_with(topic: &str, ack_deadline: Duration) -> Stack {
        let mut stack = Stack::start(topic).await;
        stack.cli = stack
            .cli
            .set("ACK_DEADLINE_SECONDS", ack_deadline.as_secs().to_string());
        stack.cli.run(&["setup"]).await.success();
        stack
    }

    pub fn subscription(&self) -> String {
        self.cli.var("SUBSCRIPTION_ID").to_string()
    }

    pub fn dead_letter_subscription(&self) -> String {
        format!("{}-dead-letter-sub", self.topic)
    }

    /// `taskhost module push` of a built guest; returns the `sha256:<hex>` it printed.
    pub async fn push(&self, guest: &str) -> String {
        self.cli.push_guest(guest).await
    }

    /// `taskhost submit --module MODULE FILE` with `text` written to `file_name`.
    pub async fn submit(&self, module: &str, file_name: &str, text: &str) -> Output {
        self.cli.submit_file(module, file_name, text).await
    }

    /// `taskhost status --json IDS`, by job id.
    pub async fn status(&self, ids: &[String]) -> BTreeMap<String, Value> {
        status(&self.cli, ids).await
    }

    /// Polls `status` until every job is "done"; panics (with the statuses and the workers'
    /// logs) when a job failed, a worker exited, or `timeout` passed.
    pub async fn wait_done(
        &self,
        ids: &[String],
        timeout: Duration,
        workers: &mut [&mut Proc],
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.status(ids).await;
            let open: Vec<&Value> = statuses.values().filter(|s| s["state"] != "done").collect();
            if open.is_empty() {
                return statuses;
            }
            let failed: Vec<&&Value> = open.iter().filter(|s| s["state"] == "failed").collect();
            assert!(
                failed.is_empty(),
                "jobs failed: {failed:#?}\n{}",
                logs(workers)
            );
            for w in workers.iter_mut() {
                w.assert_running();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} jobs not done within {timeout:?}: {open:#?}\n{}",
                open.len(),
                ids.len(),
                logs(workers)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asserts that `sub` holds no message: a pull of 3 s gets none (what it gets is handed
    /// back).
    pub async fn assert_empty(&self, sub: &str) {
        let left = self
            .pull(sub, 100, Duration::from_secs(3), Settle::Nack)
            .await;
        assert!(left.is_empty(), "{sub} still holds {left:?}");
    }

    /// Up to `max` messages of `sub` read within `wait`, settled as told.
    pub async fn pull(
        &self,
        sub: &str,
        max: usize,
        wait: Duration,
        settle: Settle,
    ) -> Vec<IncomingMessage> {
        Queue::PubSub(self.pubsub.clone())
            .pull_some(sub, max, wait, settle)
            .await
            .unwrap_or_else(|e| panic!("pull from {sub}: {e:#}"))
    }
}

/// Polls `status` of `id` until `done` holds of it (2 min at most, the worker running).
pub async fn wait_state(
    cli: &CliEnv,
    id: &str,
    worker: &mut Proc,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(cli, &[id.to_string()]).await.remove(id).unwrap();
        if done(&s) {
            return s;
        }
        worker.assert_running();
        assert!(Instant::now() < deadline, "{id}: {s:#}\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every worker's log, for failure messages.
/// `taskhost status --json IDS` in `cli`'s environment (either backend), by job id.
pub async fn status(cli: &CliEnv, ids: &[String]) -> BTreeMap<String, Value> {
    let mut args = vec!["status", "--json"];
    args.extend(ids.iter().map(String::as_str));
    let out = cli.run(&args).await.success();
    let statuses: BTreeMap<String, Value> = out
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("status printed {l:?}, not JSON: {e}\n{out}"));
            (v["job_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(statuses.len(), ids.len(), "{out}");
    statuses
}

pub fn logs(workers: &[&mut Proc]) -> String {
    workers
        .iter()
        .map(|w| format!("=== log of {}\n{}", w.name(), w.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends SIGTERM and asserts the worker exits 0.
pub async fn stop(worker: &mut Proc) {
    let status = worker.terminate(WORKER_STOP).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{} exited with {status} after SIGTERM; log:\n{}",
        worker.name(),
        worker.log()
    );
}

/// Lines of `log` that contain `what` and the field `job=<id>`.
pub fn job_lines<'a>(log: &'a str, what: &str, id: &str) -> Vec<&'a str> {
    let field = format!("job={id}");
    log.lines()
        .filter(|l| l.contains(what) && l.split_whitespace().any(|w| w == field))
        .collect()
}

/// What a worker logs when a job it started ends in its hands, one way or another.
const JOB_ENDS: [&str; 8] = [
    "job done; result stored",
    "handing the job back",
    "handing this copy back",
    "handing it back",
    "stopped without writing",
    "giving the job up",
    "not writing the result",
    "task trapped",
];

/// The jobs of `ids` that `log` (one worker's) shows in flight when it was read: started,
/// with no end logged since.
pub fn in_flight<'a>(log: &str, ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    ids.into_iter()
        .filter(|id| {
            let lines = job_lines(log, "", id);
            lines
                .iter()
                .rposition(|l| l.contains("job started"))
                .is_some_and(|started| {
                    !lines[started..]
                        .iter()
                        .any(|l| JOB_ENDS.iter().any(|end| l.contains(end)))
                })
        })
        .cloned()
        .collect()
}

/// When a worker's text log line was logged: its leading RFC 3339 UTC timestamp (e.g.
/// `2026-12-06T18:01:16.123456Z`), as time since the Unix epoch. Two lines' times compare
/// what the worker did, not when a test polling its log happened to see it.
pub fn logged_at(line: &str) -> Duration {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let parse = || -> Option<Duration> {
        let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
        let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
        let (h, min, s) = (t.next()??, t.next()??, t.next()??);
        let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
        // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
        Some(Duration::new(
            days * 86_400 + h * 3600 + min * 60 + s,
            nanos,
        ))
    };
    parse().unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"))
}

/// The integer after `prefix` in `line` (e.g. `elapsed_ms=` → 1234).
pub fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A job's result document (from `status --json`).
pub fn result_of(status: &Value) -> Value {
    let text = status["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no result: {status:#}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("result {text:?} is not JSON: {e}"))
}

/// The job is "done" with the step-counter result of `steps` steps.
pub fn assert_step_result(id: &str, steps: u64, status: &Value) {
    assert_eq!(status["state"], "done", "{status:#}");
    let result = result_of(status);
    assert_eq!(result["job_id"], id, "{status:#}");
    assert_eq!(result["steps"], steps, "{status:#}");
    assert_eq!(result["sum"], steps * (steps + 1) / 2, "{status:#}");
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whitespace-normalized non-empty lines.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}
