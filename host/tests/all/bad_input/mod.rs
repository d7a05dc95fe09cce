//! Bad input, end to end, on both backends: a table of poison messages, unusable modules and
//! misbehaving tasks, all published at once to ONE real `taskhost worker` process, each
//! checked against docs/design.md's failure classes (section 6):
//!
//! - poison (not UTF-8 / not a JSON object / bad `job_id` / bad or no module): dead-lettered
//!   with the parse error as its `error` attribute, acked, nothing stored under `jobs/`; its
//!   `poison/` record (under its job id when the data names a valid one) holds the reason;
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

mod run;
mod table;

use crate::support;
use run::run_table;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::stack::*;
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::queue::{IncomingMessage, LocalQueue, OutgoingMessage, Queue, Settle};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};

/// How long the worker waits for a missing module after the job was published
/// (`MISSING_MODULE_RETRY_SECONDS`): long enough that the job is handed back at least once
/// first (its retries start at 1 s), short enough for the test.
const MISSING_MODULE_RETRY: Duration = Duration::from_secs(15);
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

/// A valid job id of the table.
fn job_id(job: &str) -> JobId {
    job.parse().unwrap()
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
        self.cli.push_guest(guest).await
    }

    /// Puts `bytes` at `modules/<hex>.wasm` behind `module push`'s back (on the directory
    /// store: the file `STORE_DIR/modules/<hex>.wasm`); returns `sha256:<hex>`.
    async fn plant(&self, hex: &str, bytes: Vec<u8>) -> String {
        let reference = format!("sha256:{hex}");
        self.store
            .put(
                &keys::module(&reference.parse().unwrap()),
                bytes,
                Precondition::None,
            )
            .await
            .unwrap();
        reference
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
