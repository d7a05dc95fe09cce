//! The embedded queue (`taskhost::localqueue`): each semantic the worker relies on in Pub/Sub,
//! on a SQLite file in a temporary directory, including two OS processes racing for messages
//! and a killed process whose lease lapses.
//!
//! The two-process tests run this test binary again as the children: the same test function,
//! with `LOCALQUEUE_CHILD` set, plays the child's part.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskhost::localqueue::{
    Backlog, DEAD_LETTER_SOURCE_DELIVERY_COUNT, DEAD_LETTER_SOURCE_SUBSCRIPTION, LocalDelivery,
    LocalLease, LocalQueue, LocalSubscription,
};
use taskhost::pubsub::{
    DEFAULT_MESSAGE_RETENTION, Ensured, IncomingMessage, OutgoingMessage, Settle,
    SubscribeSettings, SubscriptionSettings,
};
use tokio::time::timeout;

/// Set in a child process: which part it plays.
const CHILD_ENV: &str = "LOCALQUEUE_CHILD";
const CHILD_PATH_ENV: &str = "LOCALQUEUE_CHILD_PATH";
/// A directory where racing children announce `ready-<pid>` and wait for `go`.
const CHILD_BARRIER_ENV: &str = "LOCALQUEUE_CHILD_BARRIER";

fn message(text: &str) -> OutgoingMessage {
    OutgoingMessage {
        data: text.as_bytes().to_vec(),
        attributes: BTreeMap::from([("module".to_string(), format!("m-{text}"))]),
    }
}

fn texts(n: usize) -> Vec<OutgoingMessage> {
    (0..n).map(|i| message(&format!("job-{i:04}"))).collect()
}

fn subscribe_settings(slots: usize, ack_deadline_secs: u32) -> SubscribeSettings {
    SubscribeSettings {
        max_outstanding_messages: slots,
        ack_deadline_secs,
        ..SubscribeSettings::default()
    }
}

/// The queue file in `dir` with topic `jobs`, subscription `worker` (ack deadline
/// `ack_deadline_secs`) and, with `max_attempts`, dead-letter topic `dead` with subscription
/// `dead-sub`.
async fn setup(dir: &Path, ack_deadline_secs: u32, max_attempts: Option<u32>) -> LocalQueue {
    let queue = LocalQueue::open(dir.join("queue.db")).await.unwrap();
    queue.ensure_topic("jobs").await.unwrap();
    let dead_letter_topic_id = max_attempts.map(|_| "dead".to_string());
    if max_attempts.is_some() {
        queue.ensure_topic("dead").await.unwrap();
        queue
            .ensure_subscription("dead-sub", "dead", &SubscriptionSettings::default())
            .await
            .unwrap();
    }
    let settings = SubscriptionSettings {
        ack_deadline_secs,
        dead_letter_topic_id,
        max_delivery_attempts: max_attempts.unwrap_or(100),
        message_retention: DEFAULT_MESSAGE_RETENTION,
    };
    queue
        .ensure_subscription("worker", "jobs", &settings)
        .await
        .unwrap();
    queue
}

/// The next delivery within `wait`, or `None`.
async fn next_within(sub: &mut LocalSubscription, wait: Duration) -> Option<LocalDelivery> {
    match timeout(wait, sub.next()).await {
        Ok(next) => Some(next.unwrap().expect("the subscription ended")),
        Err(_) => None,
    }
}

fn text(m: &IncomingMessage) -> String {
    String::from_utf8(m.data.clone()).unwrap()
}

/// Claims one message of `worker` in a thread with its own runtime, then "dies": the runtime
/// (and with it the lease-extension task) is dropped without acking or nacking. Returns the
/// message and the orphaned lease, now outside any runtime: `mem::forget` it for a dead
/// process, or settle it to play a stale worker.
fn claim_and_die(path: &Path, ack_deadline_secs: u32) -> (IncomingMessage, LocalLease) {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let delivery = runtime.block_on(async {
            let queue = LocalQueue::open(&path).await.unwrap();
            let mut sub = queue
                .subscribe("worker", &subscribe_settings(1, ack_deadline_secs))
                .await
                .unwrap();
            next_within(&mut sub, Duration::from_secs(5))
                .await
                .expect("a message to claim")
        });
        drop(runtime);
        (delivery.message, delivery.handle)
    })
    .join()
    .unwrap()
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
    assert_eq!(
        queue
            .ensure_subscription("worker", "jobs", &settings)
            .await
            .unwrap(),
        Ensured::Created
    );
    assert_eq!(
        queue
            .ensure_subscription("worker", "jobs", &settings)
            .await
            .unwrap(),
        Ensured::Found
    );

    let err = queue
        .ensure_subscription("s", "missing", &settings)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let dead_lettered = SubscriptionSettings {
        dead_letter_topic_id: Some("missing-dead".into()),
        ..SubscriptionSettings::default()
    };
    let err = queue
        .ensure_subscription("s", "jobs", &dead_lettered)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("missing-dead"), "{err}");

    queue.ensure_topic("other").await.unwrap();
    let err = queue
        .ensure_subscription("worker", "other", &settings)
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err}");
    assert!(err.to_string().contains("exists on topic `jobs`"), "{err}");

    for (ack_deadline_secs, max_delivery_attempts, retention, ok) in [
        (1, 1, Duration::from_secs(1), true),
        (600, 100, DEFAULT_MESSAGE_RETENTION, true),
        (0, 5, DEFAULT_MESSAGE_RETENTION, false),
        (601, 5, DEFAULT_MESSAGE_RETENTION, false),
        (10, 0, DEFAULT_MESSAGE_RETENTION, false),
        (10, 5, Duration::ZERO, false),
    ] {
        queue.ensure_topic("dead").await.unwrap();
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
    let err = queue
        .subscribe("missing", &SubscribeSettings::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = queue.backlog("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn publish_fans_out_to_every_subscription_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    queue
        .ensure_subscription("audit", "jobs", &SubscriptionSettings::default())
        .await
        .unwrap();
    let mut ids = queue.publish("jobs", texts(5)).await.unwrap();
    ids.extend(
        queue
            .publish("jobs", texts(10)[5..].to_vec())
            .await
            .unwrap(),
    );
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10, "{ids:?}");
    // Created after the publish: receives none of it, like Pub/Sub.
    queue
        .ensure_subscription("late", "jobs", &SubscriptionSettings::default())
        .await
        .unwrap();

    for name in ["worker", "audit"] {
        let mut sub = queue
            .subscribe(name, &subscribe_settings(100, 60))
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(d) = next_within(&mut sub, Duration::from_millis(300)).await {
            assert_eq!(d.message.delivery_attempt, Some(1));
            let t = text(&d.message);
            assert_eq!(d.message.attributes["module"], format!("m-{t}"));
            got.push((d.message.message_id.clone(), t));
            d.handle.ack();
        }
        let want: Vec<_> = ids
            .iter()
            .cloned()
            .zip((0..10).map(|i| format!("job-{i:04}")))
            .collect();
        assert_eq!(got, want, "{name}: every message once, oldest first");
        sub.shutdown().await;
    }
    let late = queue
        .pull_some("late", 10, Duration::from_millis(200), Settle::Ack)
        .await
        .unwrap();
    assert!(late.is_empty(), "{late:?}");

    // A topic without subscriptions accepts messages and drops them.
    queue.ensure_topic("nobody").await.unwrap();
    assert_eq!(queue.publish("nobody", texts(2)).await.unwrap().len(), 2);
    assert!(
        queue
            .publish("nobody", Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_acked_message_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 1, None).await;
    queue.publish("jobs", texts(1)).await.unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 1))
        .await
        .unwrap();
    let d = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    d.handle.ack();
    sub.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = queue
        .pull_some("worker", 1, Duration::from_millis(500), Settle::Nack)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(queue.backlog("worker").await.unwrap(), Backlog::default());
}

#[tokio::test]
async fn nack_and_drop_hand_the_message_back_at_once_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    let ids = queue.publish("jobs", texts(1)).await.unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    let first = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.message.message_id, ids[0]);
    assert_eq!(first.message.delivery_attempt, Some(1));
    let started = Instant::now();
    first.handle.nack();
    let second = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(second.message.message_id, ids[0]);
    assert_eq!(second.message.delivery_attempt, Some(2));
    assert_eq!(second.message.data, first.message.data);
    assert_eq!(second.message.attributes, first.message.attributes);
    drop(second);
    let third = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    assert_eq!(third.message.message_id, ids[0]);
    assert_eq!(third.message.delivery_attempt, Some(3), "drop = nack");
    third.handle.ack();
    sub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_is_extended_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 2, Some(2)).await;
    queue.publish("jobs", texts(1)).await.unwrap();
    let mut holder = queue
        .subscribe("worker", &subscribe_settings(1, 2))
        .await
        .unwrap();
    let held = next_within(&mut holder, Duration::from_secs(2))
        .await
        .unwrap();
    // Another opener of the file, polling all along: gets nothing for 2.5 deadlines.
    let other = LocalQueue::open(queue.path()).await.unwrap();
    let mut rival = other
        .subscribe("worker", &subscribe_settings(1, 2))
        .await
        .unwrap();
    assert!(
        next_within(&mut rival, Duration::from_secs(5))
            .await
            .is_none(),
        "the lease lapsed although its holder is alive"
    );
    assert_eq!(
        other.backlog("worker").await.unwrap(),
        Backlog {
            ready: 0,
            leased: 1
        }
    );
    held.handle.ack();
    holder.shutdown().await;
    assert!(
        next_within(&mut rival, Duration::from_millis(2500))
            .await
            .is_none(),
        "an acked message came back"
    );
    let dead = other
        .pull_some("dead-sub", 1, Duration::from_millis(200), Settle::Ack)
        .await
        .unwrap();
    assert!(dead.is_empty(), "an extension is not an attempt: {dead:?}");
}

#[tokio::test]
async fn a_dead_holders_lease_lapses_and_the_message_comes_back_counted() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 1, None).await;
    let ids = queue.publish("jobs", texts(1)).await.unwrap();
    let (first, lease) = claim_and_die(queue.path(), 1);
    let died = Instant::now();
    std::mem::forget(lease);
    assert_eq!(first.delivery_attempt, Some(1));
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    let again = next_within(&mut sub, Duration::from_secs(3)).await.unwrap();
    let waited = died.elapsed();
    assert!(
        waited > Duration::from_millis(700),
        "came back after {waited:?}, before the deadline"
    );
    assert_eq!(again.message.message_id, ids[0]);
    assert_eq!(again.message.delivery_attempt, Some(2));
    again.handle.ack();
    sub.shutdown().await;
}

#[tokio::test]
async fn a_stale_holder_cannot_settle_a_message_claimed_since() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 1, None).await;
    queue.publish("jobs", texts(1)).await.unwrap();
    let (_, stale) = claim_and_die(queue.path(), 1);
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    let current = next_within(&mut sub, Duration::from_secs(3)).await.unwrap();
    assert_eq!(current.message.delivery_attempt, Some(2));
    // The stale ack runs here, outside any runtime, and must change nothing.
    std::thread::spawn(move || stale.ack()).join().unwrap();
    assert_eq!(
        queue.backlog("worker").await.unwrap(),
        Backlog {
            ready: 0,
            leased: 1
        }
    );
    current.handle.ack();
    sub.shutdown().await;
    assert_eq!(queue.backlog("worker").await.unwrap(), Backlog::default());
}

#[tokio::test]
async fn nacked_max_attempts_times_the_message_goes_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, Some(3)).await;
    let ids = queue
        .publish("jobs", vec![message("poison")])
        .await
        .unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let d = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
        assert_eq!(d.message.message_id, ids[0]);
        assert_eq!(d.message.delivery_attempt, Some(attempt));
        d.handle.nack();
    }
    assert!(
        next_within(&mut sub, Duration::from_millis(500))
            .await
            .is_none(),
        "delivered a 4th time"
    );
    sub.shutdown().await;
    assert_eq!(queue.backlog("worker").await.unwrap(), Backlog::default());
    let dead = queue
        .pull_some("dead-sub", 10, Duration::from_secs(1), Settle::Ack)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let copy = &dead[0];
    assert_eq!(text(copy), "poison");
    assert_ne!(
        copy.message_id, ids[0],
        "a dead-lettered copy is a new message"
    );
    assert_eq!(copy.attributes["module"], "m-poison");
    assert_eq!(copy.attributes[DEAD_LETTER_SOURCE_SUBSCRIPTION], "worker");
    assert_eq!(copy.attributes[DEAD_LETTER_SOURCE_DELIVERY_COUNT], "3");
    assert_eq!(copy.delivery_attempt, Some(1));
}

#[tokio::test]
async fn lapsed_max_attempts_times_the_message_goes_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 1, Some(2)).await;
    queue
        .publish("jobs", vec![message("crashy")])
        .await
        .unwrap();
    for attempt in 1..=2 {
        let (m, lease) = claim_and_die(queue.path(), 1);
        std::mem::forget(lease);
        assert_eq!(m.delivery_attempt, Some(attempt));
    }
    // The second lease lapses; the next claim dead-letters instead of delivering.
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    assert!(
        next_within(&mut sub, Duration::from_millis(2500))
            .await
            .is_none(),
        "delivered a 3rd time"
    );
    sub.shutdown().await;
    let dead = queue
        .pull_some("dead-sub", 10, Duration::from_secs(1), Settle::Ack)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(text(&dead[0]), "crashy");
    assert_eq!(dead[0].attributes[DEAD_LETTER_SOURCE_DELIVERY_COUNT], "2");
}

#[tokio::test]
async fn at_most_max_outstanding_messages_are_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    queue.publish("jobs", texts(4)).await.unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(2, 60))
        .await
        .unwrap();
    let a = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    let b = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    assert!(
        next_within(&mut sub, Duration::from_millis(300))
            .await
            .is_none(),
        "a third message with two slots"
    );
    assert_eq!(
        queue.backlog("worker").await.unwrap(),
        Backlog {
            ready: 2,
            leased: 2
        }
    );
    a.handle.ack();
    let c = next_within(&mut sub, Duration::from_secs(1)).await.unwrap();
    assert_eq!(text(&c.message), "job-0002");
    // A drop (= nack) frees its slot too. The nack is written in the background, so job-0003
    // may be claimed before job-0001 is back.
    drop(b);
    c.handle.ack();
    let mut rest = Vec::new();
    for _ in 0..2 {
        let d = next_within(&mut sub, Duration::from_secs(1)).await.unwrap();
        rest.push((text(&d.message), d.message.delivery_attempt));
        d.handle.ack();
    }
    rest.sort();
    assert_eq!(
        rest,
        [
            ("job-0001".to_string(), Some(2)),
            ("job-0003".to_string(), Some(1))
        ]
    );
    sub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_loses_no_message_and_counts_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    let ids: BTreeSet<String> = queue
        .publish("jobs", texts(30))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    let started = Instant::now();
    let mut cancelled = 0;
    let mut patience = 0u64;
    // Timeouts from 0 µs up: many fire while a claim is in flight. A message claimed for a
    // cancelled call must be handed back uncounted, not held for the 60 s deadline.
    while got.len() < ids.len() && started.elapsed() < Duration::from_secs(20) {
        match timeout(Duration::from_micros(patience % 3000), sub.next()).await {
            Ok(next) => {
                let d = next.unwrap().unwrap();
                assert_eq!(d.message.delivery_attempt, Some(1), "{}", text(&d.message));
                assert!(got.insert(d.message.message_id.clone()), "delivered twice");
                d.handle.ack();
            }
            Err(_) => cancelled += 1,
        }
        patience += 97;
    }
    assert_eq!(got, ids, "after {cancelled} cancelled calls");
    sub.shutdown().await;
    assert_eq!(queue.backlog("worker").await.unwrap(), Backlog::default());
}

#[tokio::test]
async fn shutdown_waits_for_open_leases_and_their_acks() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    queue.publish("jobs", texts(1)).await.unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    let d = next_within(&mut sub, Duration::from_secs(2)).await.unwrap();
    let started = Instant::now();
    let job = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.handle.ack();
    });
    sub.shutdown().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    job.await.unwrap();
    // The ack is on disk: a fresh opener sees an empty subscription.
    let reopened = LocalQueue::open(queue.path()).await.unwrap();
    assert_eq!(
        reopened.backlog("worker").await.unwrap(),
        Backlog::default()
    );
}

#[tokio::test]
async fn messages_and_counts_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let queue = setup(dir.path(), 60, None).await;
        queue.publish("jobs", texts(2)).await.unwrap();
        let got = queue
            .pull_some("worker", 1, Duration::from_secs(2), Settle::Nack)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        queue.path().to_path_buf()
    };
    let queue = LocalQueue::open(&path).await.unwrap();
    let got = queue
        .pull_some("worker", 5, Duration::from_millis(500), Settle::Ack)
        .await
        .unwrap();
    let seen: Vec<_> = got.iter().map(|m| (text(m), m.delivery_attempt)).collect();
    assert_eq!(
        seen,
        [
            ("job-0000".to_string(), Some(2)),
            ("job-0001".to_string(), Some(1))
        ]
    );
}

#[tokio::test]
async fn messages_past_the_retention_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    let settings = SubscriptionSettings {
        message_retention: Duration::from_millis(300),
        ..SubscriptionSettings::default()
    };
    queue
        .ensure_subscription("short", "jobs", &settings)
        .await
        .unwrap();
    queue.publish("jobs", texts(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = queue
        .pull_some("short", 1, Duration::from_millis(300), Settle::Ack)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(queue.backlog("short").await.unwrap(), Backlog::default());
    // The default retention keeps it.
    let got = queue
        .pull_some("worker", 1, Duration::from_secs(1), Settle::Ack)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn pull_some_acks_or_leaves_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    queue.publish("jobs", texts(3)).await.unwrap();
    let wait = Duration::from_millis(300);
    let kept = queue
        .pull_some("worker", 5, wait, Settle::Nack)
        .await
        .unwrap();
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|m| m.delivery_attempt == Some(1)));
    let taken = queue
        .pull_some("worker", 2, wait, Settle::Ack)
        .await
        .unwrap();
    let seen: Vec<_> = taken.iter().map(text).collect();
    assert_eq!(seen, ["job-0000", "job-0001"]);
    assert!(taken.iter().all(|m| m.delivery_attempt == Some(2)));
    let rest = queue
        .pull_some("worker", 5, wait, Settle::Ack)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(text).collect::<Vec<_>>(), ["job-0002"]);
    assert!(
        queue
            .pull_some("worker", 5, wait, Settle::Ack)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Claims messages of `worker` on its own [`LocalQueue`], holding every lease (so a second
/// claim of the same message would be a double lease, not a redelivery), until all `total`
/// messages are leased by someone; then creates `all_leased` and acks its messages. (Racers
/// ack only after `all_leased` exists, so until then the backlog's `leased` counts every
/// claim.) Returns the message ids in claim order.
async fn claim_all(
    path: &Path,
    total: u64,
    all_leased: &Path,
    mut claimed: impl FnMut(&str),
) -> Vec<String> {
    let queue = LocalQueue::open(path).await.unwrap();
    let mut sub = queue
        .subscribe("worker", &subscribe_settings(10_000, 60))
        .await
        .unwrap();
    let mut held = Vec::new();
    let started = Instant::now();
    loop {
        if let Some(d) = next_within(&mut sub, Duration::from_millis(200)).await {
            assert_eq!(d.message.delivery_attempt, Some(1));
            claimed(&d.message.message_id);
            held.push(d);
            continue;
        }
        let backlog = queue.backlog("worker").await.unwrap();
        if all_leased.exists() || backlog.leased == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stuck at {backlog:?} of {total}"
        );
    }
    std::fs::write(all_leased, b"").unwrap();
    let ids = held.iter().map(|d| d.message.message_id.clone()).collect();
    held.into_iter().for_each(|d| d.handle.ack());
    sub.shutdown().await;
    ids
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
        "never delivered: {missing:?}; not published: {unknown:?}"
    );
}

#[test]
fn two_queues_in_threads_never_lease_one_message_twice() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (path, ids) = runtime.block_on(async {
        let queue = setup(dir.path(), 60, None).await;
        let ids = queue.publish("jobs", texts(200)).await.unwrap();
        (queue.path().to_path_buf(), ids)
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
                let all_leased = path.with_file_name("all-leased");
                runtime.block_on(claim_all(&path, 200, &all_leased, |_| {}))
            })
        })
        .collect();
    let parts: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_partition(&ids, &parts);
    assert!(
        parts.iter().all(|p| !p.is_empty()),
        "no contention: {:?}",
        parts.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// A child process of this test binary, killed (SIGKILL) when dropped.
struct ChildProcess(Child);

impl ChildProcess {
    /// Runs the test `test` of this binary with `CHILD_ENV=part` and `env`.
    fn spawn(test: &str, part: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, part)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        Self(command.spawn().unwrap())
    }

    /// The values of the child's stdout lines `LQ <key> <value>`, until it exits.
    fn values(mut self, key: &str) -> Vec<String> {
        let stdout = self.0.stdout.take().unwrap();
        let prefix = format!("LQ {key} ");
        let values = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| value_of(&l, &prefix))
            .collect();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        values
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `prefix` in a child's output line. libtest may have written `test <name>
/// ... ` on the same line first.
fn value_of(line: &str, prefix: &str) -> Option<String> {
    line.split_once(prefix)
        .map(|(_, value)| value.trim().to_string())
}

/// A line the parent reads: `LQ <key> <value>`.
fn report(key: &str, value: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "LQ {key} {value}").unwrap();
    out.flush().unwrap();
}

fn child_path() -> PathBuf {
    PathBuf::from(std::env::var(CHILD_PATH_ENV).unwrap())
}

/// Polls `done` every 10 ms for up to 60 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_lease_one_message_twice() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("race") {
        // Child: say ready, wait for the go, claim all it can, report each id.
        let barrier = PathBuf::from(std::env::var(CHILD_BARRIER_ENV).unwrap());
        std::fs::write(barrier.join(format!("ready-{}", std::process::id())), b"").unwrap();
        wait_for("the go", || barrier.join("go").exists());
        let all_leased = barrier.join("all-leased");
        claim_all(&child_path(), 300, &all_leased, |id| report("id", id)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 60, None).await;
    let ids = queue.publish("jobs", texts(300)).await.unwrap();
    let barrier = dir.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let env = [
        (CHILD_PATH_ENV, queue.path().display().to_string()),
        (CHILD_BARRIER_ENV, barrier.display().to_string()),
    ];
    let children: Vec<_> = (0..2)
        .map(|_| ChildProcess::spawn("two_processes_never_lease_one_message_twice", "race", &env))
        .collect();
    let ready = barrier.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("two ready children", || {
            std::fs::read_dir(&ready)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("ready-")
                })
                .count()
                == 2
        });
        std::fs::write(ready.join("go"), b"").unwrap();
    })
    .await
    .unwrap();
    let parts: Vec<_> =
        tokio::task::spawn_blocking(move || children.into_iter().map(|c| c.values("id")).collect())
            .await
            .unwrap();
    assert_partition(&ids, &parts);
    assert!(
        parts.iter().all(|p| !p.is_empty()),
        "no contention: {:?}",
        parts.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(queue.backlog("worker").await.unwrap(), Backlog::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_lease_lapses_while_a_live_ones_holds() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("hold") {
        // Child: claim one message, report it, keep the lease (extended) until killed.
        let queue = LocalQueue::open(child_path()).await.unwrap();
        let mut sub = queue
            .subscribe("worker", &subscribe_settings(1, 2))
            .await
            .unwrap();
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap();
        report("claimed", &d.message.message_id);
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("the parent should have killed this child");
    }
    let dir = tempfile::tempdir().unwrap();
    let queue = setup(dir.path(), 2, None).await;
    let ids = queue.publish("jobs", texts(1)).await.unwrap();
    let env = [(CHILD_PATH_ENV, queue.path().display().to_string())];
    let mut child = ChildProcess::spawn(
        "a_killed_process_lease_lapses_while_a_live_ones_holds",
        "hold",
        &env,
    );
    let stdout = child.0.stdout.take().unwrap();
    let claimed = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| value_of(&l, "LQ claimed "))
    })
    .await
    .unwrap();
    assert_eq!(claimed.as_deref(), Some(ids[0].as_str()));

    let mut sub = queue
        .subscribe("worker", &subscribe_settings(1, 60))
        .await
        .unwrap();
    assert!(
        next_within(&mut sub, Duration::from_secs(5))
            .await
            .is_none(),
        "the live child's lease (2 s deadline) lapsed within 5 s"
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    let again = next_within(&mut sub, Duration::from_secs(6))
        .await
        .expect("the killed child's message came back");
    // At most one deadline after the child's last extension, plus a poll.
    assert!(
        killed.elapsed() < Duration::from_millis(3500),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(again.message.message_id, ids[0]);
    assert_eq!(again.message.delivery_attempt, Some(2));
    again.handle.ack();
    sub.shutdown().await;
}
