//! Bad input, end to end, on both backends: a table of poison messages, unusable modules and
//! misbehaving tasks, all published at once to ONE real `taskhost worker` process, each
//! checked against docs/design.md's failure classes (section 6):
//!
//! - poison (not UTF-8 / not a JSON object / bad `job_id` / bad or no module): dead-lettered
//!   with the parse error as its `error` attribute, acked, nothing stored for the job;
//! - an unusable module (tampered, not wasm, a core module, another world, not in the store):
//!   dead-lettered with the reason, `jobs/<id>/error` written, the job never started;
//! - a task error or a trap (with `MAX_FAILURES=1`): dead-lettered after exactly one run,
//!   `jobs/<id>/error` holds the reason;
//! - a flood of output or an attempt to escape the sandbox: the job simply finishes.
//!
//! Afterwards the worker must still be running, and a good job must still complete.
//!
//! Backends: (a) the official Pub/Sub emulator + the S3 test server ([`Stack`]); (b) the
//! embedded default (no `PROJECT_ID`, no `R2_BUCKET_NAME`: a SQLite queue file and a
//! directory store in the test's temp dir). The two tests run concurrently.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::stack::*;
use taskhost::queue::{IncomingMessage, LocalQueue, OutgoingMessage, Queue, Settle};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};

/// Longest wait for every case to reach its expected outcome.
const ALL_OUTCOMES: Duration = Duration::from_secs(180);
/// The worker's per-run fuel: stops the infinite loop within ~0.1 s (measured), far more
/// than any other task here needs; `TASK_TIMEOUT_SECONDS=5` is only the backstop.
const TASK_FUEL: u64 = 1_000_000_000;
/// The worker's memory limit per task: the memory bomb hits it; a checkpoint just above
/// the 16 MiB limit still fits.
const TASK_MEMORY_MB: u64 = 32;
/// `DEFAULT_MAX_CHECKPOINT_BYTES` (host/src/checkpoint.rs).
const MAX_CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
/// What `misbehave` floods each of stdout and stderr with: 16 times what the log keeps.
/// (Its default, 64 MiB, takes ~4 s in the debug host of the tests, too close to the 5 s
/// timeout on a loaded machine.)
const FLOOD_BYTES: u64 = 16 * 1024 * 1024;
/// The host keeps at most this much of each output stream in its log (1 MiB).
const MAX_LOGGED_BYTES: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_emulator_and_s3() {
    let stack = Stack::setup("badin").await;
    let backend = Backend {
        label: "emulator+s3",
        cli: stack.cli.clone(),
        queue: Queue::PubSub(stack.pubsub.clone()),
        store: AnyStore::S3(stack.store.clone()),
        topic: stack.topic.clone(),
    };
    run_table(&backend).await;
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_embedded_default() {
    let cli = CliEnv::embedded("badin").set("ACK_DEADLINE_SECONDS", "10");
    let queue = LocalQueue::open(cli.var("QUEUE_FILE"))
        .await
        .expect("open the embedded queue");
    let store = DirStore::open(cli.var("STORE_DIR")).unwrap();
    let backend = Backend {
        label: "embedded",
        cli: cli.clone(),
        queue: Queue::Local(queue),
        store: AnyStore::Dir(store),
        topic: "badin".to_string(),
    };
    run_table(&backend).await;
}

/// One backend: the CLI environment of its `taskhost` processes, and library clients of the
/// same queue and store.
struct Backend {
    label: &'static str,
    cli: CliEnv,
    queue: Queue,
    store: AnyStore,
    topic: String,
}

impl Backend {
    fn dead_letter_subscription(&self) -> String {
        format!("{}-dead-letter-sub", self.topic)
    }

    fn subscription(&self) -> String {
        self.cli.var("SUBSCRIPTION_ID").to_string()
    }

    async fn push(&self, guest: &str) -> String {
        let path = support::guests::wasm(guest);
        let out = self
            .cli
            .run(&["module", "push", path.to_str().unwrap()])
            .await
            .success();
        out.last_line().to_string()
    }

    /// Puts `bytes` at `modules/<hex>.wasm` behind `module push`'s back (on the directory
    /// store: the file `STORE_DIR/modules/<hex>.wasm`); returns `sha256:<hex>`.
    async fn plant(&self, hex: &str, bytes: Vec<u8>) -> String {
        self.store
            .put(&format!("modules/{hex}.wasm"), bytes, Precondition::None)
            .await
            .unwrap();
        format!("sha256:{hex}")
    }

    async fn text(&self, key: &str) -> Option<String> {
        self.store
            .get(key)
            .await
            .unwrap()
            .map(|o| String::from_utf8_lossy(&o.bytes).into_owned())
    }

    /// `taskhost status --json IDS`, by job id.
    async fn status(&self, ids: &[&str]) -> BTreeMap<String, Value> {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        status(&self.cli, &ids).await
    }
}

/// What must become of a message.
enum Expect {
    /// Poison: dead-lettered with a reason containing every one of these; acked; nothing
    /// stored for the job (docs/design.md section 6: "no error object").
    Poison(Vec<String>),
    /// An unusable module: dead-lettered with the reason; `jobs/<id>/error` holds it; the
    /// job was never started (no checkpoint), no result.
    Unusable(Vec<String>),
    /// The task ran exactly once and failed (a task error, or a trap with MAX_FAILURES=1):
    /// dead-lettered with the reason; `jobs/<id>/error` holds it; `failures` in the header.
    Failed { says: Vec<String>, failures: u64 },
    /// Finished: a result, which passes this check; not dead-lettered, no error.
    Finished(fn(&Value) -> Result<(), String>),
}

impl Expect {
    fn says(&self) -> &[String] {
        match self {
            Expect::Poison(s) | Expect::Unusable(s) | Expect::Failed { says: s, .. } => s,
            Expect::Finished(_) => &[],
        }
    }

    fn dead_lettered(&self) -> bool {
        !matches!(self, Expect::Finished(_))
    }
}

struct Case {
    name: &'static str,
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
    /// The message's job id when it is a valid one (its `jobs/<id>/...` keys).
    job: Option<&'static str>,
    expect: Expect,
}

fn says(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn module_attr(module: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("module".to_string(), module.to_string())])
}

/// The modules the table refers to.
struct Modules {
    step: String,
    misbehave: String,
    /// Named by a hash its bytes (step_counter's) do not have.
    tampered: String,
    /// Planted under their real sha256 (`module push` refuses them).
    garbage: String,
    core: String,
    other_world: String,
    /// A well-formed name with nothing in the store.
    absent: String,
}

async fn modules(b: &Backend) -> Modules {
    let step = b.push("step_counter").await;
    let misbehave = b.push("misbehave").await;
    let fake = sha256_hex(format!("the module the submitter meant ({})", b.label).as_bytes());
    let tampered = b.plant(&fake, support::guests::bytes("step_counter")).await;
    let garbage_bytes = b"this is not webassembly at all".to_vec();
    let garbage = b.plant(&sha256_hex(&garbage_bytes), garbage_bytes).await;
    let core_bytes = b"\0asm\x01\0\0\0".to_vec();
    let core = b.plant(&sha256_hex(&core_bytes), core_bytes).await;
    let other_bytes = support::guests::bytes("other_world");
    let other_world = b.plant(&sha256_hex(&other_bytes), other_bytes).await;
    let absent = format!("sha256:{}", sha256_hex(b"a module nobody ever pushed"));
    Modules {
        step,
        misbehave,
        tampered,
        garbage,
        core,
        other_world,
        absent,
    }
}

fn table(m: &Modules, escape_addr: &str) -> Vec<Case> {
    let step = || module_attr(&m.step);
    let mis = || module_attr(&m.misbehave);
    let json = |v: Value| v.to_string().into_bytes();
    let long_id = "a".repeat(201);
    let upper_ref = format!("sha256:{}", m.step["sha256:".len()..].to_uppercase());
    let trap = |kind: &str, more: &[&str]| {
        let mut s = says(&["failed 1 times (limit 1)", &format!("last: {kind}: ")]);
        s.extend(says(more));
        s
    };
    vec![
        // --- poison: the message itself is unusable.
        Case {
            name: "not JSON",
            data: b"this is not json".to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not JSON"])),
        },
        Case {
            name: "JSON but not an object",
            data: br#"["job_id", "bad-array"]"#.to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not a JSON object"])),
        },
        Case {
            name: "a JSON string, not an object",
            data: br#""bad-string""#.to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not a JSON object"])),
        },
        Case {
            name: "not UTF-8",
            data: b"{\"job_id\":\"bad-\xff\xfe\",\"steps\":1}".to_vec(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not UTF-8"])),
        },
        Case {
            name: "empty data",
            data: Vec::new(),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message data is not JSON", "EOF"])),
        },
        Case {
            name: "job_id missing",
            data: json(serde_json::json!({"steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["message has no job_id"])),
        },
        Case {
            name: "job_id not a string",
            data: json(serde_json::json!({"job_id": 7, "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be a string"])),
        },
        Case {
            name: "job_id empty",
            data: json(serde_json::json!({"job_id": "", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be 1 to 200 characters long (got 0)"])),
        },
        Case {
            name: "job_id too long (201)",
            data: json(serde_json::json!({"job_id": long_id, "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&["job_id must be 1 to 200 characters long (got 201)"])),
        },
        Case {
            name: "job_id with '/'",
            data: json(serde_json::json!({"job_id": "bad/slash", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&[
                "job_id may only contain A-Z a-z 0-9 . _ -",
                "(found '/')",
            ])),
        },
        Case {
            name: "job_id '..'",
            data: json(serde_json::json!({"job_id": "..", "steps": 3})),
            attributes: step(),
            job: None,
            expect: Expect::Poison(says(&[r#"job_id may not be "." or "..""#])),
        },
        Case {
            name: "module malformed (attribute)",
            data: json(serde_json::json!({"job_id": "bad-module-ref", "steps": 3})),
            attributes: module_attr("sha256:xyz"),
            job: Some("bad-module-ref"),
            expect: Expect::Poison(says(&[
                r#"module reference "sha256:xyz""#,
                "must look like sha256:<64 lowercase hex digits>",
            ])),
        },
        Case {
            name: "module field malformed (it wins over a valid attribute)",
            data: json(
                serde_json::json!({"job_id": "bad-module-field", "module": upper_ref, "steps": 3}),
            ),
            attributes: step(),
            job: Some("bad-module-field"),
            expect: Expect::Poison(says(&[
                &format!("module reference {upper_ref:?}"),
                "must look like sha256:<64 lowercase hex digits>",
            ])),
        },
        Case {
            name: "an input key under the host's own jobs/ prefix",
            data: json(serde_json::json!({
                "job_id": "bad-input-key",
                "inputs": {"data": "jobs/victim/checkpoint"},
            })),
            attributes: step(),
            job: Some("bad-input-key"),
            expect: Expect::Poison(says(&[
                "input `data`",
                "under the host's own prefix `jobs/`",
            ])),
        },
        Case {
            name: "an input key that climbs out of its prefix",
            data: json(serde_json::json!({
                "job_id": "bad-input-dots",
                "inputs": {"data": "inputs/../modules/x.wasm"},
            })),
            attributes: step(),
            job: Some("bad-input-dots"),
            expect: Expect::Poison(says(&["input `data`", "not a valid object key"])),
        },
        Case {
            name: "module not a string",
            data: json(serde_json::json!({"job_id": "bad-module-type", "module": 42, "steps": 3})),
            attributes: step(),
            job: Some("bad-module-type"),
            expect: Expect::Poison(says(&[r#"module must be a string "sha256:<hex>""#])),
        },
        Case {
            name: "module missing (no field, no attribute, no DEFAULT_MODULE)",
            data: json(serde_json::json!({"job_id": "bad-no-module", "steps": 3})),
            attributes: BTreeMap::new(),
            job: Some("bad-no-module"),
            expect: Expect::Poison(says(&[
                "message names no module",
                "the worker has no DEFAULT_MODULE",
            ])),
        },
        // --- unusable modules: the message is fine, the module it names is not.
        Case {
            name: "module tampered (bytes do not hash to its name)",
            data: json(serde_json::json!({"job_id": "bad-tampered", "steps": 3})),
            attributes: module_attr(&m.tampered),
            job: Some("bad-tampered"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.tampered),
                &format!("hash to {}, not {}", m.step, m.tampered),
                "tampered with",
            ])),
        },
        Case {
            name: "module garbage (not wasm)",
            data: json(serde_json::json!({"job_id": "bad-garbage", "steps": 3})),
            attributes: module_attr(&m.garbage),
            job: Some("bad-garbage"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.garbage),
                "not a WebAssembly file",
            ])),
        },
        Case {
            name: "a core module, not a component",
            data: json(serde_json::json!({"job_id": "bad-core", "steps": 3})),
            attributes: module_attr(&m.core),
            job: Some("bad-core"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.core),
                "a core WebAssembly module, not a component",
            ])),
        },
        Case {
            name: "a component of another world",
            data: json(serde_json::json!({"job_id": "bad-other-world", "steps": 3})),
            attributes: module_attr(&m.other_world),
            job: Some("bad-other-world"),
            expect: Expect::Unusable(says(&[
                &format!("module {} is unusable", m.other_world),
                "a component of another world, not of taskhost:task/task@0.2.0 or taskhost:task/task@0.1.0",
            ])),
        },
        Case {
            name: "module not in the store (after MISSING_MODULE_RETRY_SECONDS)",
            data: json(serde_json::json!({"job_id": "bad-absent", "steps": 3})),
            attributes: module_attr(&m.absent),
            job: Some("bad-absent"),
            expect: Expect::Unusable(says(&[&format!("module {} is not in the store", m.absent)])),
        },
        // --- misbehaving tasks.
        Case {
            name: "task error",
            data: json(serde_json::json!({"job_id": "bad-fail", "mode": "fail"})),
            attributes: mis(),
            job: Some("bad-fail"),
            expect: Expect::Failed {
                says: says(&["the task failed: the task failed on purpose"]),
                failures: 0,
            },
        },
        Case {
            name: "panic",
            data: json(serde_json::json!({"job_id": "bad-panic", "mode": "panic"})),
            attributes: mis(),
            job: Some("bad-panic"),
            expect: Expect::Failed {
                says: trap(
                    "Panic",
                    &["task panicked", "misbehave: panicking on purpose"],
                ),
                failures: 1,
            },
        },
        Case {
            name: "infinite loop",
            data: json(serde_json::json!({"job_id": "bad-loop", "mode": "loop"})),
            attributes: mis(),
            job: Some("bad-loop"),
            expect: Expect::Failed {
                says: trap("Fuel", &["fuel budget exhausted"]),
                failures: 1,
            },
        },
        Case {
            name: "memory bomb",
            data: json(serde_json::json!({"job_id": "bad-membomb", "mode": "membomb"})),
            attributes: mis(),
            job: Some("bad-membomb"),
            expect: Expect::Failed {
                // One line, the cause itself (no wasm backtrace).
                says: trap(
                    "Memory",
                    &[&format!(
                        "memory limit of {} bytes reached",
                        TASK_MEMORY_MB << 20
                    )],
                ),
                failures: 1,
            },
        },
        Case {
            name: "checkpoint too large",
            data: json(serde_json::json!({
                "job_id": "bad-big-checkpoint",
                "mode": "save_loop",
                "count": 1,
                "bytes": MAX_CHECKPOINT_BYTES + 1,
            })),
            attributes: mis(),
            job: Some("bad-big-checkpoint"),
            expect: Expect::Failed {
                says: says(&[&format!(
                    "the task failed: checkpoint too large: the host's limit is {MAX_CHECKPOINT_BYTES} bytes"
                )]),
                failures: 0,
            },
        },
        Case {
            name: "output flood",
            data: json(
                serde_json::json!({"job_id": "bad-flood", "mode": "flood", "bytes": FLOOD_BYTES}),
            ),
            attributes: mis(),
            job: Some("bad-flood"),
            expect: Expect::Finished(|r| {
                (r["flooded"] == FLOOD_BYTES)
                    .then_some(())
                    .ok_or_else(|| format!("not {FLOOD_BYTES} bytes flooded"))
            }),
        },
        Case {
            name: "escape attempt",
            data: json(
                serde_json::json!({"job_id": "bad-escape", "mode": "escape", "addr": escape_addr}),
            ),
            attributes: mis(),
            job: Some("bad-escape"),
            expect: Expect::Finished(|r| {
                for k in ["read", "create", "list", "connect"] {
                    let s = r[k].as_str().unwrap_or_default();
                    if !s.starts_with("error: ") {
                        return Err(format!("{k} was not refused: {s:?}"));
                    }
                }
                if r["env"] != 0 {
                    return Err("the task saw environment variables".into());
                }
                if r["args"].as_u64().is_none_or(|n| n > 1) {
                    return Err("the task saw arguments".into());
                }
                Ok(())
            }),
        },
    ]
}

async fn run_table(b: &Backend) {
    let started = Instant::now();
    let m = modules(b).await;
    // The escape attempt's target: a port we own, so we can tell whether it connected.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let escape_addr = listener.local_addr().unwrap().to_string();
    let cases = table(&m, &escape_addr);
    assert!(cases.len() >= 20);

    let mut worker = b
        .cli
        .set("WORKER_SLOTS", "2")
        .set("MAX_FAILURES", "1")
        // A missing module is waited for this long after the job was published.
        .set("MISSING_MODULE_RETRY_SECONDS", "15")
        .set("TASK_TIMEOUT_SECONDS", "5")
        .set("TASK_FUEL", TASK_FUEL.to_string())
        .set("TASK_MEMORY_MB", TASK_MEMORY_MB.to_string())
        .set("ACK_DEADLINE_SECONDS", "10")
        .spawn("worker", &["worker"]);
    // The embedded queue's topics and subscriptions are created by the worker at start.
    worker.wait_for_log("worker started", WORKER_START).await;

    let ids = b
        .queue
        .publish(
            &b.topic,
            cases
                .iter()
                .map(|c| OutgoingMessage {
                    data: c.data.clone(),
                    attributes: c.attributes.clone(),
                })
                .collect(),
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] publish the table: {e:#}", b.label));
    assert_eq!(ids.len(), cases.len());

    let dead = wait_for_outcomes(b, &cases, &ids, &mut worker).await;
    eprintln!(
        "[{}] all {} outcomes after {:?}",
        b.label,
        cases.len(),
        started.elapsed()
    );
    for (case, id) in cases.iter().zip(&ids) {
        check(b, case, dead.get(id), &worker).await;
    }

    // Nothing else was stored: poison left no trace, unusable modules never started a job.
    let mut want: BTreeSet<String> = BTreeSet::new();
    for c in &cases {
        let Some(job) = c.job else { continue };
        let keys: &[&str] = match c.expect {
            Expect::Poison(_) => &[],
            Expect::Unusable(_) => &["error"],
            Expect::Failed { .. } => &["checkpoint", "error"],
            Expect::Finished(_) => &["checkpoint", "result"],
        };
        want.extend(keys.iter().map(|k| format!("jobs/{job}/{k}")));
    }
    let got: BTreeSet<String> = b.store.list("jobs/").await.unwrap().into_iter().collect();
    assert_eq!(got, want, "[{}] keys under jobs/", b.label);

    // `status` agrees: failed jobs with their reason, finished ones done.
    let job_ids: Vec<&str> = cases
        .iter()
        .filter(|c| !matches!(c.expect, Expect::Poison(_)))
        .filter_map(|c| c.job)
        .collect();
    let statuses = b.status(&job_ids).await;
    for c in &cases {
        let Some(job) = c.job else { continue };
        let Some(s) = statuses.get(job) else { continue };
        let want_state = if c.expect.dead_lettered() {
            "failed"
        } else {
            "done"
        };
        assert_eq!(s["state"], want_state, "[{}] {}: {s:#}", b.label, c.name);
        if let Expect::Failed { failures, .. } = c.expect {
            assert_eq!(
                s["attempts"], 1,
                "[{}] {}: run more than once: {s:#}",
                b.label, c.name
            );
            assert_eq!(s["failures"], failures, "[{}] {}: {s:#}", b.label, c.name);
        }
        if let Expect::Unusable(_) = c.expect {
            assert_eq!(s["attempts"], 0, "[{}] {}: started: {s:#}", b.label, c.name);
        }
    }

    // The sandbox held: no connection reached our port, no file appeared.
    assert!(
        listener.accept().is_err(),
        "[{}] the escape attempt connected to the host",
        b.label
    );
    assert!(!b.cli.dir().join("escape.txt").exists());
    // The flood reached the log only up to its bound (1 MiB per stream), the rest dropped.
    let log = worker.log();
    let flood_lines = job_lines(&log, "flood flood", "bad-flood");
    let bound = 2 * MAX_LOGGED_BYTES / 65 + 2;
    assert!(
        !flood_lines.is_empty() && flood_lines.len() <= bound,
        "[{}] {} flood lines in the log (bound {bound})",
        b.label,
        flood_lines.len()
    );
    assert_eq!(
        job_lines(&log, "dropping the rest", "bad-flood").len(),
        2,
        "[{}] the flood's drop is not logged once per stream",
        b.label
    );

    // The worker kept serving: still running, and a good job still completes.
    worker.assert_running();
    let good = b.cli.write_file(
        "good.jsonl",
        "{\"job_id\":\"after-bad-input\",\"steps\":20}\n",
    );
    b.cli
        .run(&[
            "submit",
            "--quiet",
            "--module",
            &m.step,
            good.to_str().unwrap(),
        ])
        .await
        .success();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = b
            .status(&["after-bad-input"])
            .await
            .remove("after-bad-input")
            .unwrap();
        if s["state"] == "done" {
            break s;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "[{}] the good job did not finish: {s:#}\n{}",
            b.label,
            log_tail(&worker)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_step_result("after-bad-input", 20, &status);

    stop(&mut worker).await;
    // Every message was settled: nothing left on the jobs subscription, no extra dead letter.
    let left = b
        .queue
        .pull_some(&b.subscription(), 50, Duration::from_secs(3), Settle::Nack)
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "[{}] left on the subscription: {left:?}",
        b.label
    );
    let extra = b
        .queue
        .pull_some(
            &b.dead_letter_subscription(),
            50,
            Duration::from_secs(2),
            Settle::Ack,
        )
        .await
        .unwrap();
    assert!(
        extra.is_empty(),
        "[{}] more dead letters: {extra:?}",
        b.label
    );
}

/// Reads the dead-letter subscription (acking) until every case has its expected outcome;
/// returns the dead letters by original message id. Fails fast on a wrong outcome.
async fn wait_for_outcomes(
    b: &Backend,
    cases: &[Case],
    ids: &[String],
    worker: &mut Proc,
) -> BTreeMap<String, IncomingMessage> {
    let deadline = Instant::now() + ALL_OUTCOMES;
    let mut dead: BTreeMap<String, IncomingMessage> = BTreeMap::new();
    loop {
        let got = b
            .queue
            .pull_some(
                &b.dead_letter_subscription(),
                100,
                Duration::from_secs(1),
                Settle::Ack,
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] read the dead letters: {e:#}", b.label));
        for msg in got {
            let orig = msg
                .attributes
                .get("original_message_id")
                .unwrap_or_else(|| {
                    panic!(
                        "[{}] a dead letter without original_message_id: {msg:?}",
                        b.label
                    )
                })
                .clone();
            let reason = msg.attributes.get("error").cloned().unwrap_or_default();
            let case = ids.iter().position(|id| *id == orig).map(|i| cases[i].name);
            eprintln!("[{}] dead-lettered {case:?}: {reason}", b.label);
            assert!(
                dead.insert(orig.clone(), msg).is_none(),
                "[{}] {case:?} dead-lettered twice",
                b.label
            );
        }
        let mut pending = Vec::new();
        for (c, id) in cases.iter().zip(ids) {
            match (&c.expect, dead.get(id)) {
                (Expect::Finished(_), Some(msg)) => panic!(
                    "[{}] {}: dead-lettered instead of finishing: {:?}",
                    b.label,
                    c.name,
                    msg.attributes.get("error")
                ),
                (Expect::Finished(_), None) => {
                    // Only finished cases are read from the store while waiting (the S3
                    // test server serves one request at a time); the others' keys are
                    // checked once at the end.
                    let job = c.job.expect("a finished case has a job id");
                    if !b.store.exists(&format!("jobs/{job}/result")).await.unwrap() {
                        pending.push(c);
                    }
                }
                (_, None) => pending.push(c),
                (_, Some(_)) => {}
            }
        }
        if pending.is_empty() {
            return dead;
        }
        worker.assert_running();
        if Instant::now() > deadline {
            let mut report = String::new();
            for c in &pending {
                report.push_str(&format!("- {} (job {:?})\n", c.name, c.job));
                if let Some(job) = c.job {
                    for l in job_lines(&worker.log(), "", job) {
                        report.push_str(&format!("    {l}\n"));
                    }
                }
            }
            panic!(
                "[{}] {} of {} cases without their outcome within {ALL_OUTCOMES:?}:\n{report}\n{}",
                b.label,
                pending.len(),
                cases.len(),
                log_tail(worker)
            );
        }
    }
}

/// Checks one case's outcome in full.
async fn check(b: &Backend, c: &Case, dead: Option<&IncomingMessage>, worker: &Proc) {
    let what = format!("[{}] {}", b.label, c.name);
    if let Some(job) = c.job {
        // How long each run took (a diagnostic for the limits chosen above).
        let log = worker.log();
        let runs: Vec<u64> = job_lines(&log, "task run ended", job)
            .iter()
            .filter_map(|l| number_after(l, "elapsed_ms="))
            .collect();
        if !runs.is_empty() {
            eprintln!("{what}: runs took {runs:?} ms");
        }
    }
    let Expect::Finished(ok) = &c.expect else {
        let msg = dead.unwrap_or_else(|| panic!("{what}: not dead-lettered"));
        assert_eq!(msg.data, c.data, "{what}: the dead letter's data changed");
        let reason = msg
            .attributes
            .get("error")
            .unwrap_or_else(|| panic!("{what}: no error attribute: {msg:?}"));
        for s in c.expect.says() {
            assert!(
                reason.contains(s.as_str()),
                "{what}: the reason {reason:?} does not say {s:?}"
            );
        }
        // The original attributes, plus `error` and `original_message_id`, nothing else.
        let mut want = c.attributes.clone();
        want.insert("error".into(), reason.clone());
        want.insert(
            "original_message_id".into(),
            msg.attributes["original_message_id"].clone(),
        );
        assert_eq!(msg.attributes, want, "{what}: the dead letter's attributes");
        if let Some(job) = c.job {
            let error = b.text(&format!("jobs/{job}/error")).await;
            let checkpoint = b
                .store
                .exists(&format!("jobs/{job}/checkpoint"))
                .await
                .unwrap();
            match c.expect {
                Expect::Poison(_) => {
                    assert_eq!(error, None, "{what}: poison got an error object");
                    assert!(!checkpoint, "{what}: poison was started");
                }
                Expect::Unusable(_) => {
                    assert_eq!(error.as_ref(), Some(reason), "{what}: jobs/{job}/error");
                    assert!(
                        !checkpoint,
                        "{what}: a job of an unusable module was started"
                    );
                }
                Expect::Failed { .. } => {
                    assert_eq!(error.as_ref(), Some(reason), "{what}: jobs/{job}/error");
                    assert!(checkpoint, "{what}: no checkpoint");
                }
                Expect::Finished(_) => unreachable!(),
            }
        }
        return;
    };
    assert!(dead.is_none(), "{what}: dead-lettered");
    let job = c.job.expect("a finished case has a job id");
    let text = b
        .text(&format!("jobs/{job}/result"))
        .await
        .unwrap_or_else(|| panic!("{what}: no result"));
    let result: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the result {text:?} is not JSON: {e}"));
    if let Err(e) = ok(&result) {
        panic!("{what}: {e}: {text}\n{}", log_tail(worker));
    }
    assert_eq!(
        b.text(&format!("jobs/{job}/error")).await,
        None,
        "{what}: an error object"
    );
    eprintln!("[{}] finished {:?}: {text}", b.label, c.name);
}

/// The worker's last log lines, without the flood's.
fn log_tail(worker: &Proc) -> String {
    let log = worker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("flood flood")).collect();
    let from = lines.len().saturating_sub(150);
    format!(
        "=== last lines of the worker's log\n{}",
        lines[from..].join("\n")
    )
}
