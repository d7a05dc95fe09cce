//! The embedded queue (`taskhost::queue::local`), on a SQLite file in a temporary directory:
//! what only this backend does or promises (admin checks, fan-out order, lost-lease reports,
//! durability across reopening, retention, cancel-safe pulls, several threads and processes
//! on one file). The semantics both backends share (redelivery, delayed nacks, dead-lettering,
//! `max` per pull, leases kept alive and lost) are in `queue_contract.rs`.
//!
//! The two-process tests run this test binary again as the children (`support/child.rs`): the
//! same test function, with `LOCALQUEUE_CHILD` set, plays the child's part.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::support::child::{ChildProcess, report, reported, wait_for};
use taskhost::queue::lease::Lease;
use taskhost::queue::local::{Backlog, LocalQueue};
use taskhost::queue::{
    DEFAULT_MESSAGE_RETENTION, Ensured, IncomingMessage, OutgoingMessage, Queue, Received, Settle,
    SubscriptionSettings,
};

/// Set in a child process: which part it plays (`race`, `hold`).
const CHILD_ENV: &str = "LOCALQUEUE_CHILD";
const CHILD_PATH_ENV: &str = "LOCALQUEUE_CHILD_PATH";
/// A directory where racing children announce `ready-<pid>` and wait for `go`.
const CHILD_BARRIER_ENV: &str = "LOCALQUEUE_CHILD_BARRIER";
/// A lease no test outlives: a message under it comes back only if the queue hands it out
/// twice.
const LONG: Duration = Duration::from_secs(60);

fn message(text: &str) -> OutgoingMessage {
    OutgoingMessage {
        data: text.as_bytes().to_vec(),
        attributes: BTreeMap::from([("module".to_string(), format!("m-{text}"))]),
    }
}

fn texts(n: usize) -> Vec<OutgoingMessage> {
    (0..n).map(|i| message(&format!("job-{i:04}"))).collect()
}

fn text(m: &IncomingMessage) -> String {
    String::from_utf8(m.data.clone()).unwrap()
}

/// Each message's text and delivery attempt.
fn seen(got: &[IncomingMessage]) -> Vec<(String, u32)> {
    let attempt = |m: &IncomingMessage| m.delivery_attempt.expect("always counted here");
    got.iter().map(|m| (text(m), attempt(m))).collect()
}

/// `(text, attempt)` for `job-<i>` in `range`.
fn jobs(range: std::ops::Range<usize>, attempt: u32) -> Vec<(String, u32)> {
    range.map(|i| (format!("job-{i:04}"), attempt)).collect()
}

fn ack_ids(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| r.ack_id.clone()).collect()
}

/// One opener of a queue file: the backend itself (for `backlog`) and the same queue as the
/// worker sees it.
struct Opened {
    local: LocalQueue,
    queue: Queue,
}

async fn open(path: &Path) -> Opened {
    let local = LocalQueue::open(path).await.unwrap();
    let queue = Queue::Local(local.clone());
    Opened { local, queue }
}

/// `queue.db` in `dir` with topic `jobs` and its subscription `worker`.
async fn setup(dir: &Path) -> Opened {
    let q = open(&dir.join("queue.db")).await;
    q.queue.ensure_topic("jobs").await.unwrap();
    q.subscribe("worker", &SubscriptionSettings::default())
        .await;
    q
}

impl Opened {
    fn path(&self) -> &Path {
        self.local.path()
    }

    async fn publish(&self, topic: &str, messages: Vec<OutgoingMessage>) -> Vec<String> {
        self.queue.publish(topic, messages).await.unwrap()
    }

    /// A new subscription `sub` of `jobs`.
    async fn subscribe(&self, sub: &str, settings: &SubscriptionSettings) {
        let ensured = self.queue.ensure_subscription(sub, "jobs", settings).await;
        assert_eq!(ensured.unwrap(), Ensured::Created);
    }

    async fn backlog(&self, sub: &str) -> Backlog {
        self.local.backlog(sub).await.unwrap()
    }

    async fn pull(&self, sub: &str, max: usize, lease: Duration) -> Vec<Received> {
        self.queue.pull(sub, max, lease).await.unwrap()
    }

    /// `modify_ack_deadline`: the ack ids reported lost.
    async fn modify(&self, sub: &str, ack_ids: &[String], deadline: Duration) -> Vec<String> {
        let lost = self.queue.modify_ack_deadline(sub, ack_ids, deadline).await;
        lost.unwrap()
    }

    /// The first message of `sub` pulled within `wait` (polling every 50 ms), if any.
    async fn pull_within(&self, sub: &str, wait: Duration) -> Option<Received> {
        let started = Instant::now();
        while started.elapsed() < wait {
            if let Some(r) = self.pull(sub, 1, LONG).await.pop() {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn ack(&self, sub: &str, got: &[Received]) {
        self.queue.acknowledge(sub, &ack_ids(got)).await.unwrap();
    }

    /// Pulls `sub` three at a time, acking each batch, until a pull comes back empty.
    async fn drain(&self, sub: &str) -> Vec<IncomingMessage> {
        let mut all = Vec::new();
        loop {
            let got = self.pull(sub, 3, LONG).await;
            if got.is_empty() {
                return all;
            }
            self.ack(sub, &got).await;
            all.extend(got.into_iter().map(|r| r.message));
        }
    }
}

const fn backlog(ready: u64, leased: u64) -> Backlog {
    Backlog { ready, leased }
}

#[tokio::test]
async fn admin_calls_are_idempotent_and_check_what_they_refer_to() {
    let dir = tempfile::tempdir().unwrap();
    let queue = LocalQueue::open(dir.path().join("queue.db")).await.unwrap();
    assert_eq!(queue.ensure_topic("jobs").await.unwrap(), Ensured::Created);
    assert_eq!(queue.ensure_topic("jobs").await.unwrap(), Ensured::Found);
    assert_eq!(
        queue.ensure_topic("projects/p/topics/jobs").await.unwrap(),
        Ensured::Found,
        "a full Pub/Sub name means the same topic"
    );
    let settings = SubscriptionSettings::default();
    let ensure = |sub: &'static str, topic: &'static str, s: SubscriptionSettings| {
        let queue = queue.clone();
        async move { queue.ensure_subscription(sub, topic, &s).await }
    };
    assert_eq!(
        ensure("worker", "jobs", settings.clone()).await.unwrap(),
        Ensured::Created
    );
    assert_eq!(
        ensure("projects/p/subscriptions/worker", "jobs", settings.clone())
            .await
            .unwrap(),
        Ensured::Found
    );

    let err = ensure("s", "missing", settings.clone()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let dead_lettered = SubscriptionSettings {
        dead_letter_topic_id: Some("missing-dead".into()),
        ..SubscriptionSettings::default()
    };
    let err = ensure("s", "jobs", dead_lettered).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("missing-dead"), "{err}");

    queue.ensure_topic("other").await.unwrap();
    let err = ensure("worker", "other", settings.clone())
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err}");
    assert!(err.to_string().contains("exists on topic `jobs`"), "{err}");

    queue.ensure_topic("dead").await.unwrap();
    for (ack_deadline_secs, max_delivery_attempts, retention, ok) in [
        (1, 1, Duration::from_secs(1), true),
        (600, 100, DEFAULT_MESSAGE_RETENTION, true),
        (0, 5, DEFAULT_MESSAGE_RETENTION, false),
        (601, 5, DEFAULT_MESSAGE_RETENTION, false),
        (10, 0, DEFAULT_MESSAGE_RETENTION, false),
        (10, 5, Duration::ZERO, false),
    ] {
        let settings = SubscriptionSettings {
            ack_deadline_secs,
            dead_letter_topic_id: Some("dead".into()),
            max_delivery_attempts,
            message_retention: retention,
        };
        let name = format!("s-{ack_deadline_secs}-{max_delivery_attempts}-{retention:?}");
        let result = queue.ensure_subscription(&name, "jobs", &settings).await;
        assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
        if let Err(e) = result {
            assert!(e.is_invalid(), "{e}");
        }
    }

    let err = queue.publish("missing", texts(1)).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = queue.backlog("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = queue
        .acknowledge("worker", &["not-an-ack-id".to_string()])
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err}");
}

#[tokio::test]
async fn publish_fans_out_to_every_subscription_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let settings = SubscriptionSettings::default();
    q.subscribe("audit", &settings).await;
    let mut ids = q.publish("jobs", texts(5)).await;
    ids.extend(q.publish("jobs", texts(10)[5..].to_vec()).await);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10, "{ids:?}");
    // Created after the publish: receives none of it, like Pub/Sub.
    q.subscribe("late", &settings).await;

    let want: Vec<_> = ids
        .iter()
        .cloned()
        .zip((0..10).map(|i| format!("job-{i:04}")))
        .collect();
    for name in ["worker", "audit"] {
        let got = q.drain(name).await;
        for m in &got {
            assert_eq!(m.delivery_attempt, Some(1), "{m:?}");
            assert_eq!(m.attributes["module"], format!("m-{}", text(m)));
        }
        let got: Vec<_> = got
            .iter()
            .map(|m| (m.message_id.clone(), text(m)))
            .collect();
        assert_eq!(got, want, "{name}: every message once, oldest first");
    }
    assert!(q.drain("late").await.is_empty());

    // A topic without subscriptions accepts messages and drops them.
    q.queue.ensure_topic("nobody").await.unwrap();
    assert_eq!(q.publish("nobody", texts(2)).await.len(), 2);
    assert!(q.publish("nobody", Vec::new()).await.is_empty());
}

#[tokio::test]
async fn an_acked_message_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    q.publish("jobs", texts(1)).await;
    let got = q.pull("worker", 1, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1);
    q.ack("worker", &got).await;
    // Past the lease it had: still gone, for this opener and for a fresh one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.pull("worker", 1, LONG).await.is_empty());
    assert_eq!(q.backlog("worker").await, Backlog::default());
    let reopened = open(q.path()).await;
    assert_eq!(reopened.backlog("worker").await, Backlog::default());
    assert!(reopened.pull("worker", 1, LONG).await.is_empty());
}

#[tokio::test]
async fn a_stale_holder_cannot_settle_a_message_pulled_since() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    q.publish("jobs", texts(1)).await;
    let stale = q.pull("worker", 1, Duration::from_secs(1)).await.remove(0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let current = q.pull("worker", 1, LONG).await.remove(0);
    assert_eq!(current.message.message_id, stale.message.message_id);
    assert_eq!(current.message.delivery_attempt, Some(2));
    assert_ne!(current.ack_id, stale.ack_id);

    // The stale holder's extension and nack are refused and reported lost, its ack changes
    // nothing; the current holder's lease is untouched.
    let (stale_id, current_id) = ([stale.ack_id.clone()], [current.ack_id.clone()]);
    let both = [stale.ack_id.clone(), current.ack_id.clone()];
    assert_eq!(q.modify("worker", &both, LONG).await, stale_id);
    assert_eq!(
        q.modify("worker", &stale_id, Duration::ZERO).await,
        stale_id
    );
    q.ack("worker", &[stale]).await;
    assert_eq!(q.backlog("worker").await, backlog(0, 1));
    assert!(
        q.pull("worker", 1, LONG).await.is_empty(),
        "the stale nack went through"
    );

    q.ack("worker", &[current]).await;
    assert_eq!(q.backlog("worker").await, Backlog::default());
    // Once acked, the current holder's lease is reported lost too.
    assert_eq!(q.modify("worker", &current_id, LONG).await, current_id);
}

#[tokio::test]
async fn messages_leases_and_counts_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, held) = {
        let q = setup(dir.path()).await;
        q.publish("jobs", texts(3)).await;
        let mut got = q.pull("worker", 2, LONG).await;
        let nacked = got.split_off(1);
        let lost = q.modify("worker", &ack_ids(&nacked), Duration::ZERO).await;
        assert!(lost.is_empty(), "{lost:?}");
        (q.path().to_path_buf(), got.remove(0))
    };
    assert_eq!(text(&held.message), "job-0000");

    let q = open(&path).await;
    assert_eq!(q.backlog("worker").await, backlog(2, 1));
    assert_eq!(
        seen(&q.drain("worker").await),
        [jobs(1..2, 2), jobs(2..3, 1)].concat(),
        "the nacked message counted, the held one still leased"
    );
    // The lease taken before reopening is still the holder's.
    let held_id = std::slice::from_ref(&held.ack_id);
    assert!(q.modify("worker", held_id, LONG).await.is_empty());
    q.ack("worker", &[held]).await;
    drop(q);
    assert_eq!(
        open(&path).await.backlog("worker").await,
        Backlog::default()
    );
}

#[tokio::test]
async fn messages_past_the_retention_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let settings = SubscriptionSettings {
        message_retention: Duration::from_millis(300),
        ..SubscriptionSettings::default()
    };
    q.subscribe("short", &settings).await;
    q.publish("jobs", texts(1)).await;
    assert_eq!(q.backlog("short").await, backlog(1, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(q.pull("short", 1, LONG).await.is_empty());
    assert_eq!(q.backlog("short").await, Backlog::default());
    // The default retention keeps it.
    assert_eq!(q.drain("worker").await.len(), 1);
}

#[tokio::test]
async fn pull_some_acks_or_leaves_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    q.publish("jobs", texts(3)).await;
    let wait = Duration::from_millis(300);
    let pull_some = |max: usize, settle: Settle| {
        let queue = q.queue.clone();
        async move { queue.pull_some("worker", max, wait, settle).await.unwrap() }
    };
    assert_eq!(seen(&pull_some(5, Settle::Nack).await), jobs(0..3, 1));
    assert_eq!(q.backlog("worker").await, backlog(3, 0));
    assert_eq!(seen(&pull_some(2, Settle::Ack).await), jobs(0..2, 2));
    assert_eq!(seen(&pull_some(5, Settle::Ack).await), jobs(2..3, 2));
    assert!(pull_some(5, Settle::Ack).await.is_empty());
    assert_eq!(q.backlog("worker").await, Backlog::default());
}

fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_dropped_mid_flight_loses_no_message_and_counts_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(10)).await;

    // Hold the file's write lock, so that the pulls' claims wait for it while we drop them.
    let lock = rusqlite::Connection::open(q.path()).unwrap();
    let before = data_version(&lock);
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..3 {
        let mut pull = std::pin::pin!(q.queue.pull("worker", 5, LONG));
        let pending = std::future::poll_fn(|cx| Poll::Ready(pull.as_mut().poll(cx).is_pending()));
        assert!(
            pending.await,
            "a pull finished while the write lock was held"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.execute_batch("ROLLBACK").unwrap();
    // Another connection's commit: the orphaned claims ran (we are the only other writer).
    let started = Instant::now();
    while data_version(&lock) == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claims never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every message is handed back, uncounted: well before the 60 s lease they were claimed
    // under, each comes with its first attempt.
    let mut got = Vec::new();
    while got.len() < ids.len() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {got:?} of {ids:?} came back"
        );
        let batch = q.pull("worker", 10, LONG).await;
        for r in &batch {
            assert_eq!(r.message.delivery_attempt, Some(1), "{:?}", r.message);
            got.push(r.message.message_id.clone());
        }
        q.ack("worker", &batch).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(got, ids);
    assert_eq!(q.backlog("worker").await, Backlog::default());
}

/// Pulls `worker` on a fresh opener of `path`, five at a time, acking each batch, until the
/// subscription is empty; calls `leased` with each message id. Returns the ids.
async fn pull_until_empty(path: &Path, mut leased: impl FnMut(&str)) -> Vec<String> {
    let q = open(path).await;
    let mut ids = Vec::new();
    let started = Instant::now();
    loop {
        let got = q.pull("worker", 5, LONG).await;
        if got.is_empty() {
            let left = q.backlog("worker").await;
            if left == Backlog::default() {
                return ids;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "stuck at {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for r in &got {
            let m = &r.message;
            assert_eq!(m.delivery_attempt, Some(1), "handed out twice: {m:?}");
            leased(&m.message_id);
            ids.push(m.message_id.clone());
        }
        q.ack("worker", &got).await;
    }
}

/// Every id of `all` is in exactly one of `parts`.
fn assert_partition(all: &[String], parts: &[Vec<String>]) {
    let mut seen = HashSet::new();
    for part in parts {
        for id in part {
            assert!(seen.insert(id.clone()), "message {id} leased twice");
        }
    }
    let all: HashSet<_> = all.iter().cloned().collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    let unknown: Vec<_> = seen.difference(&all).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "never leased: {missing:?}; not published: {unknown:?}"
    );
}

#[test]
fn two_queues_in_threads_never_lease_one_message_twice() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (path, ids) = runtime.block_on(async {
        let q = setup(dir.path()).await;
        let ids = q.publish("jobs", texts(200)).await;
        (q.path().to_path_buf(), ids)
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                runtime.block_on(pull_until_empty(&path, |_| {}))
            })
        })
        .collect();
    let parts: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Which thread got which message is the scheduler's business; none got one twice.
    assert_partition(&ids, &parts);
}

fn child_path() -> PathBuf {
    PathBuf::from(std::env::var(CHILD_PATH_ENV).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_lease_one_message_twice() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("race") {
        // Child: say ready, wait for the go, pull all it can, report each id.
        let barrier = PathBuf::from(std::env::var(CHILD_BARRIER_ENV).unwrap());
        std::fs::write(barrier.join(format!("ready-{}", std::process::id())), b"").unwrap();
        wait_for("the go", || barrier.join("go").exists());
        pull_until_empty(&child_path(), |id| report("id", id)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(300)).await;
    let barrier = dir.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let env = [
        (CHILD_ENV, "race".to_string()),
        (CHILD_PATH_ENV, q.path().display().to_string()),
        (CHILD_BARRIER_ENV, barrier.display().to_string()),
    ];
    let children: Vec<_> = (0..2)
        .map(|_| {
            ChildProcess::spawn(
                "localqueue::two_processes_never_lease_one_message_twice",
                &env,
            )
        })
        .collect();
    let parts: Vec<_> = tokio::task::spawn_blocking(move || {
        wait_for("two ready children", || {
            let entries = std::fs::read_dir(&barrier).unwrap();
            let names = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
            names.filter(|n| n.starts_with("ready-")).count() == 2
        });
        std::fs::write(barrier.join("go"), b"").unwrap();
        children.into_iter().map(|c| c.values("id")).collect()
    })
    .await
    .unwrap();
    // Which child got which message is the scheduler's business; none got one twice.
    assert_partition(&ids, &parts);
    assert_eq!(q.backlog("worker").await, Backlog::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_lease_lapses_while_a_live_ones_holds() {
    const DEADLINE: Duration = Duration::from_secs(2);
    if std::env::var(CHILD_ENV).as_deref() == Ok("hold") {
        // Child: pull one message, keep its lease alive, report it, wait to be killed.
        let q = open(&child_path()).await;
        let got = q.pull("worker", 1, DEADLINE).await.remove(0);
        let lease = Lease::start(q.queue.clone(), "worker", &got, DEADLINE);
        report("leased", &got.message.message_id);
        let lost = lease.view().lost;
        tokio::select! {
            _ = lost.cancelled() => panic!("the live lease was lost"),
            _ = tokio::time::sleep(LONG) => panic!("the parent should have killed this child"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(1)).await;
    let env = [
        (CHILD_ENV, "hold".to_string()),
        (CHILD_PATH_ENV, q.path().display().to_string()),
    ];
    let test = "localqueue::a_killed_process_lease_lapses_while_a_live_ones_holds";
    let mut child = ChildProcess::spawn(test, &env);
    let stdout = child.stdout();
    let leased = tokio::task::spawn_blocking(move || reported(stdout, "leased").next())
        .await
        .unwrap();
    assert_eq!(leased.as_deref(), Some(ids[0].as_str()));

    // 2.5 deadlines: the live child keeps its lease.
    let got = q.pull_within("worker", Duration::from_secs(5)).await;
    assert!(got.is_none(), "the live child's lease lapsed: {got:?}");
    child.kill();
    let killed = Instant::now();
    let again = q.pull_within("worker", Duration::from_secs(6)).await;
    let again = again.expect("the killed child's message came back");
    // At most one deadline after the child's last extension, plus a poll.
    let waited = killed.elapsed();
    assert!(
        waited < Duration::from_millis(3500),
        "back after {waited:?}"
    );
    assert_eq!(again.message.message_id, ids[0]);
    assert_eq!(again.message.delivery_attempt, Some(2));
    q.ack("worker", &[again]).await;
}
