//! The worker's failure paths (docs/design.md §6), on the embedded queue and the directory
//! store, and on the emulator and the S3 server where only Pub/Sub can fail the way the path
//! needs: what happens to a message whose job cannot end well.

use std::time::{Duration, Instant};

use taskhost::checkpoint::{self, Header};
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::queue::{IncomingMessage, LocalQueue, Queue, Settle};
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use taskhost::worker::FIRST_RETRY_DELAY;

use crate::support;
use support::cli::{CliEnv, Proc};
use support::stack::{Stack, WORKER_START, job_lines, logged_at, number_after, stop};

/// How long a job may take to reach its end in these tests (a module compile, a run, the
/// dead-letter publish) on a loaded machine.
const JOB_END: Duration = Duration::from_secs(60);

/// One test's embedded queue and directory store, a guest module pushed to it, and one-slot
/// workers.
struct Embedded {
    cli: CliEnv,
    queue: Queue,
    store: DirStore,
    module: String,
}

impl Embedded {
    async fn new(name: &str, guest: &str) -> Embedded {
        let cli = CliEnv::embedded(name)
            .set("ACK_DEADLINE_SECONDS", "30")
            .set("WORKER_SLOTS", "1");
        let wasm = support::guests::wasm(guest);
        let pushed = cli.run(&["module", "push", wasm.to_str().unwrap()]).await;
        let module = pushed.success().last_line().to_string();
        let queue = LocalQueue::open(cli.var("QUEUE_FILE"))
            .await
            .expect("open the embedded queue");
        let store = DirStore::open(cli.var("STORE_DIR")).unwrap();
        Embedded {
            cli,
            queue: Queue::Local(queue),
            store,
            module,
        }
    }

    /// Submits one job: `{"job_id": id, ...fields}`.
    async fn submit(&self, id: &str, fields: &str) {
        let line = format!(r#"{{"job_id":"{id}",{fields}}}"#) + "\n";
        let path = self.cli.write_file(&format!("{id}.jsonl"), line);
        let args = ["submit", "--quiet", "--module", &self.module];
        let args: Vec<&str> = args.into_iter().chain([path.to_str().unwrap()]).collect();
        self.cli.run(&args).await.success();
    }

    /// Up to 10 messages of `sub` (the job subscription, or `dead`: its dead-letter one),
    /// pulled within `wait` and settled as told.
    async fn pull(&self, dead: bool, wait: Duration, settle: Settle) -> Vec<IncomingMessage> {
        let sub = if dead {
            format!("{}-dead-letter-sub", self.cli.var("TOPIC_ID"))
        } else {
            self.cli.var("SUBSCRIPTION_ID").to_string()
        };
        self.queue
            .pull_some(&sub, 10, wait, settle)
            .await
            .unwrap_or_else(|e| panic!("pull {sub}: {e:#}"))
    }

    /// Writes `bytes` as the stored checkpoint of `id`.
    async fn put_checkpoint(&self, id: &str, bytes: Vec<u8>) {
        let job: JobId = id.parse().unwrap();
        self.store
            .put(&keys::checkpoint(&job), bytes, Precondition::None)
            .await
            .unwrap();
    }
}

/// A checkpoint as this host writes it, but of the next format version.
fn newer_format_checkpoint() -> Vec<u8> {
    let mut bytes = checkpoint::encode(&Header::default(), Some(b"state"));
    // Magic (4 bytes), then the format version.
    bytes[4] += 1;
    bytes
}

/// A corrupt checkpoint and one of a newer format: each job is dead-lettered with the reason
/// (its error object and the dead-letter message's `error` attribute say why), never run,
/// and its checkpoint is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_is_dead_lettered_with_the_reason() {
    let e = Embedded::new("unreadable", "step_counter").await;
    let cases = [
        ("corrupt", b"not a checkpoint at all".to_vec(), "checkpoint"),
        ("newer", newer_format_checkpoint(), "not supported"),
    ];
    for (id, bytes, _) in &cases {
        e.put_checkpoint(id, bytes.clone()).await;
        e.submit(id, r#""steps":3,"step_ms":0"#).await;
    }
    let mut w = e.cli.spawn("worker", &["worker"]);
    let deadline = Instant::now() + JOB_END;
    while w.log().matches("dead-lettered").count() < cases.len() {
        w.assert_running();
        assert!(Instant::now() < deadline, "{}", w.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut w).await;
    let log = w.log();
    assert!(
        !log.contains("job started"),
        "an unreadable job ran:\n{log}"
    );
    let dead = e.pull(true, Duration::from_secs(2), Settle::Ack).await;
    assert_eq!(dead.len(), cases.len(), "{dead:?}");
    // (Read from the store: `taskhost status` cannot show a job whose checkpoint it cannot
    // read.)
    for (id, bytes, says) in &cases {
        let job: JobId = id.parse().unwrap();
        let error = e.store.get(&keys::error(&job)).await.unwrap();
        let error = String::from_utf8(error.expect("an error object").bytes).unwrap();
        assert!(
            error.contains("checkpoint cannot be used") && error.contains(says),
            "{id}: {error}"
        );
        let message = dead
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("\"{id}\"")))
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"));
        assert_eq!(message.attributes["error"], error, "{id}");
        let stored = e.store.get(&keys::checkpoint(&job)).await.unwrap();
        assert!(
            stored.unwrap().bytes == *bytes,
            "{id}: the checkpoint changed"
        );
    }
    let left = e.pull(false, Duration::from_secs(2), Settle::Nack).await;
    assert!(left.is_empty(), "left on the subscription: {left:?}");
}

/// With `MAX_FAILURES=2` a task that traps is handed back after its first trap (later, not
/// at once) and dead-lettered after its second; the checkpoint counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_task_is_retried_until_max_failures() {
    let e = Embedded::new("traps", "misbehave").await;
    let id = "trapper";
    e.submit(id, r#""mode":"panic""#).await;
    let mut w = e.cli.set("MAX_FAILURES", "2").spawn("worker", &["worker"]);
    w.wait_for_log("task trapped", JOB_END).await;
    let trapped = job_lines(&w.log(), "task trapped", id).join("\n");
    assert_eq!(number_after(&trapped, "failures="), Some(1), "{trapped}");
    assert!(!w.log().contains("dead-lettered"), "{}", w.log());
    wait_for_lines(&mut w, "job started", id, 2).await;
    w.wait_for_log("dead-lettered", JOB_END).await;
    stop(&mut w).await;
    let log = w.log();
    let traps = job_lines(&log, "task trapped", id);
    let started = job_lines(&log, "job started", id);
    // The hand-back waited its retry delay, by the worker's own log times (the nack that
    // sets it is sent a moment after the trap is logged, so the full delay; a second of
    // room for the queue's whole milliseconds and the log's stamping).
    let again = logged_at(started[1]).saturating_sub(logged_at(traps[0]));
    let least = FIRST_RETRY_DELAY - Duration::from_secs(1);
    assert!(
        again >= least,
        "ran again {again:?} after the first trap:\n{log}"
    );
    assert_eq!(traps.len(), 2, "{log}");
    assert_eq!(number_after(traps[1], "failures="), Some(2), "{log}");
    let job: JobId = id.parse().unwrap();
    let header = checkpoint::peek(&e.store, &job).await.unwrap().unwrap();
    assert_eq!((header.failures, header.attempts), (2, 2), "{header:?}");
    let dead = e.pull(true, Duration::from_secs(2), Settle::Ack).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].attributes["error"].contains("failed 2 times (limit 2)"),
        "{:?}",
        dead[0].attributes
    );
    let left = e.pull(false, Duration::from_secs(2), Settle::Nack).await;
    assert!(left.is_empty(), "left on the subscription: {left:?}");
}

/// A node that cannot compile (its kernel refuses to make memory executable: ENOMEM, as
/// when it is out of memory) hands a valid module's job back as a host fault, never
/// dead-letters it as a bad module, and says the node itself cannot compile (its check
/// module fails too); once `MISSING_MODULE_RETRY_SECONDS` has passed since the job was
/// published, the job is dead-lettered with the reason. The worker stays up throughout.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_compile_hands_the_job_back_until_the_window_ends() {
    const WINDOW: Duration = Duration::from_secs(6);
    let e = Embedded::new("uncompiled", "step_counter").await;
    let id = "uncompiled";
    let mut w = e
        .cli
        .set("MISSING_MODULE_RETRY_SECONDS", WINDOW.as_secs().to_string())
        .spawn_refusing_executable_memory("worker", &["worker"]);
    w.wait_for_log("worker started", WORKER_START).await;
    let published = Instant::now();
    e.submit(id, r#""steps":3,"step_ms":0"#).await;
    w.wait_for_log(
        "this node cannot compile modules, not even its check module",
        JOB_END,
    )
    .await;
    let job: JobId = id.parse().unwrap();
    let first = w.log();
    assert!(
        !job_lines(&first, "cannot compile modules", id).is_empty(),
        "{first}"
    );
    w.wait_for_log("dead-lettered", JOB_END).await;
    // Not before the window: a bad module would have been dead-lettered at its first try.
    assert!(published.elapsed() >= WINDOW, "{}", w.log());
    w.assert_running();
    stop(&mut w).await;
    let log = w.log();
    assert!(!log.contains("job started"), "{log}");
    assert!(!log.contains("unusable module"), "{log}");
    let error = e.store.get(&keys::error(&job)).await.unwrap();
    let error = String::from_utf8(error.expect("an error object").bytes).unwrap();
    assert!(
        error.contains("could not be compiled on the nodes that took the job")
            && error.contains("MISSING_MODULE_RETRY_SECONDS=6"),
        "{error}"
    );
    let dead = e.pull(true, Duration::from_secs(2), Settle::Ack).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
}

/// Waits until `w`'s log has `n` lines with `what` for job `id`.
async fn wait_for_lines(w: &mut Proc, what: &str, id: &str, n: usize) {
    let deadline = Instant::now() + JOB_END;
    while job_lines(&w.log(), what, id).len() < n {
        w.assert_running();
        assert!(Instant::now() < deadline, "{}", w.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job to dead-letter whose error object cannot be written (its key is taken by a
/// directory): the message is handed back, not acked, and nothing is published; once the
/// key can be written the next delivery is dead-lettered as it should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_error_write_fails_hands_the_message_back() {
    let e = Embedded::new("error-write", "step_counter").await;
    let id = "unwritable";
    e.put_checkpoint(id, b"corrupt".to_vec()).await;
    let job: JobId = id.parse().unwrap();
    let blocker = e.store.root().join(keys::error(&job)).join("blocker");
    std::fs::create_dir_all(&blocker).unwrap();
    e.submit(id, r#""steps":3,"step_ms":0"#).await;
    let mut a = e.cli.spawn("worker-a", &["worker"]);
    a.wait_for_log("cannot write the job's error", JOB_END)
        .await;
    stop(&mut a).await;
    assert!(!a.log().contains("dead-lettered"), "{}", a.log());
    let dead = e.pull(true, Duration::from_secs(2), Settle::Nack).await;
    assert!(dead.is_empty(), "published: {dead:?}");

    // Handed back, not acked: it is delivered again (after its retry delay).
    std::fs::remove_dir_all(blocker.parent().unwrap()).unwrap();
    let mut b = e.cli.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;
    b.wait_for_log("dead-lettered", FIRST_RETRY_DELAY + JOB_END)
        .await;
    stop(&mut b).await;
    let dead = e.pull(true, Duration::from_secs(2), Settle::Ack).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = e.store.get(&keys::error(&job)).await.unwrap().unwrap();
    let error = String::from_utf8(error.bytes).unwrap();
    assert!(error.contains("checkpoint cannot be used"), "{error}");
    let left = e.pull(false, Duration::from_secs(2), Settle::Nack).await;
    assert!(left.is_empty(), "left on the subscription: {left:?}");
}

/// A job to dead-letter whose dead-letter topic is gone (deleted after the worker checked it
/// at startup): the publish fails, so the message is handed back, not acked, and comes back
/// after its retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_publish_fails_hands_the_message_back() {
    let stack = Stack::setup_with("publish-fails", Duration::from_secs(30)).await;
    let module = stack.push("step_counter").await;
    let id = "unpublishable";
    let job: JobId = id.parse().unwrap();
    stack
        .store
        .put(
            &keys::checkpoint(&job),
            b"corrupt".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
    let mut w = stack
        .cli
        .set("WORKER_SLOTS", "1")
        .spawn("worker", &["worker"]);
    w.wait_for_log("worker started", WORKER_START).await;
    let servers = support::stack::servers().await;
    let project = stack.cli.var("PROJECT_ID").to_string();
    let dead_letter_topic = format!("{}-dead-letter", stack.topic);
    let deleted = servers.emulator.delete_topic(&project, &dead_letter_topic);
    assert!(
        deleted.contains(" 200 "),
        "delete {dead_letter_topic}: {deleted}"
    );
    let line = format!(r#"{{"job_id":"{id}","steps":3,"step_ms":0}}"#) + "\n";
    stack
        .submit(&module, "unpublishable.jsonl", &line)
        .await
        .success();
    w.wait_for_log("cannot publish to the dead-letter topic", JOB_END)
        .await;
    stop(&mut w).await;
    let log = w.log();
    assert!(!log.contains("dead-lettered"), "{log}");
    // The error object is written first: the reason is recorded either way.
    let error = stack.store.get(&keys::error(&job)).await.unwrap();
    let error = String::from_utf8(error.expect("the error object").bytes).unwrap();
    assert!(error.contains("checkpoint cannot be used"), "{error}");
    // Not acked: it comes back once its retry delay is over.
    let wait = FIRST_RETRY_DELAY + JOB_END;
    let back = stack
        .pull(&stack.subscription(), 1, wait, Settle::Ack)
        .await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(
        String::from_utf8_lossy(&back[0].data).contains(id),
        "{back:?}"
    );
    assert!(back[0].delivery_attempt >= Some(2), "{back:?}");
}

/// A copy of a done job's message whose module has gone since (a lost ack, a resubmission,
/// then `module prune`) is acked as already done: it is not dead-lettered, and no error is
/// written beside its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_jobs_copy_needs_no_module() {
    let e = Embedded::new("done-no-module", "step_counter").await;
    let id = "done-once";
    e.submit(id, r#""steps":1,"step_ms":0"#).await;
    let mut a = e.cli.spawn("worker-a", &["worker"]);
    a.wait_for_log("job done; result stored", JOB_END).await;
    stop(&mut a).await;
    // The copy, then the module gone (submit wants the module in the store).
    e.submit(id, r#""steps":1,"step_ms":0"#).await;
    let hash: taskhost::ids::ModuleHash = e.module.parse().unwrap();
    e.store.delete(&keys::module(&hash)).await.unwrap();

    let cli = e.cli.set("MISSING_MODULE_RETRY_SECONDS", "0");
    let mut b = cli.spawn("worker-b", &["worker"]);
    b.wait_for_log("result already exists; acking without running", JOB_END)
        .await;
    stop(&mut b).await;
    assert!(!b.log().contains("dead-lettered"), "{}", b.log());
    let job: JobId = id.parse().unwrap();
    assert!(!e.store.exists(&keys::error(&job)).await.unwrap());
    let dead = e.pull(true, Duration::from_secs(2), Settle::Nack).await;
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    let left = e.pull(false, Duration::from_secs(2), Settle::Nack).await;
    assert!(left.is_empty(), "left on the subscription: {left:?}");
}

/// What killed workers leave is cleared by a later worker's start: a writer killed between
/// its temporary file's creation and its rename leaves that file in the store directory
/// (removed once older than an hour, with the directories that leaves empty; a younger one
/// stays, a live writer may still rename it), and a killed worker leaves its heartbeat
/// record (deleted once older than a week; a recent one stays, `status` shows it as dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_start_clears_what_killed_workers_left() {
    let e = Embedded::new("sweep", "step_counter").await;
    let root = std::path::PathBuf::from(e.cli.var("STORE_DIR"));
    let plant = |rel: &str, age: Duration| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"half a write").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        path
    };
    let hours = Duration::from_secs(2 * 3600);
    let days = Duration::from_secs(8 * 24 * 3600);
    let old = plant("jobs/gone/.checkpoint.tmp.99.0.0123456789abcdef", hours);
    let young = plant(
        "jobs/alive/.result.tmp.99.1.0123456789abcdef",
        Duration::ZERO,
    );
    let dead = plant("workers/killed-long-ago", days);
    let recent = plant("workers/killed-lately", hours);
    let mut w = e.cli.spawn("worker", &["worker"]);
    w.wait_for_log(
        "removed the temporary files of writers that died",
        WORKER_START,
    )
    .await;
    w.wait_for_log("deleted dead workers' records", WORKER_START)
        .await;
    stop(&mut w).await;
    assert!(w.log().contains("files=1 bytes=12"), "{}", w.log());
    assert!(!old.exists() && !root.join("jobs/gone").exists());
    assert!(young.exists(), "a young temporary file stays");
    assert!(!dead.exists(), "a week-old record goes");
    assert!(recent.exists(), "a recent record stays");
}
