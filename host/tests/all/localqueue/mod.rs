//! The embedded queue (`taskhost::queue::local`), on a SQLite file in a temporary directory:
//! what only this backend does or promises (admin checks, fan-out order, lost-lease reports,
//! durability across reopening, retention, cancel-safe pulls, several threads and processes
//! on one file). The semantics both backends share (redelivery, delayed nacks, dead-lettering,
//! `max` per pull, leases kept alive and lost) are in `queue_contract.rs`.
//!
//! The concurrency cases (dropped pulls, threads, processes) are in `concurrency`; its
//! two-process tests run this test binary again as the children (`support/child.rs`): the
//! same test function, with `LOCALQUEUE_CHILD` set, plays the child's part.

mod concurrency;

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
    // Past the lease it had: still gone, for this opener and for a fresh one. (Time itself
    // is what is waited for: the 1 s lease ends.)
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
    // Time itself is what is waited for: the 1 s lease lapses.
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

/// The retention of the test that watches messages expire: long enough that the check right
/// after publishing falls inside it on a loaded machine (it takes milliseconds), short enough
/// to wait out.
const RETENTION: Duration = Duration::from_secs(2);
/// The queue's clock counts whole milliseconds: a message is past its retention one step
/// after it.
const CLOCK_STEP: Duration = Duration::from_millis(2);

#[tokio::test]
async fn messages_past_the_retention_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let settings = SubscriptionSettings {
        message_retention: RETENTION,
        ..SubscriptionSettings::default()
    };
    q.subscribe("short", &settings).await;
    let publishing = Instant::now();
    q.publish("jobs", texts(1)).await;
    let published = Instant::now();
    let within = q.backlog("short").await;
    assert!(
        publishing.elapsed() < RETENTION,
        "the check came {:?} after publishing, past the retention: the machine is too slow for RETENTION",
        publishing.elapsed()
    );
    assert_eq!(within, backlog(1, 0), "dropped within its retention");
    // The condition is a time: the queue stamped the message before `published`.
    tokio::time::sleep_until((published + RETENTION + CLOCK_STEP).into()).await;
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
