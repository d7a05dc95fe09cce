//! The Pub/Sub adapter (`taskhost::pubsub`) against the real official emulator: one emulator
//! per test, on a free port, killed at the end.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::pubsub::{PubsubEmulator, free_port};
use taskhost::pubsub::{
    DEFAULT_MESSAGE_RETENTION, Delivery, Ensured, MessageValidity, OutgoingMessage, Pubsub,
    PubsubConfig, SchemaOnTopic, Settle, SubscribeSettings, Subscription, SubscriptionSettings,
    TopicSchema,
};
use tokio::time::{Instant, timeout, timeout_at};

const PROJECT: &str = "taskhost-test";
const MODULE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

async fn connect(emulator: &PubsubEmulator) -> Pubsub {
    Pubsub::connect(&emulator.config(PROJECT))
        .await
        .expect("connect to the emulator")
}

/// Topic `<name>` with subscription `<name>-worker` (ack deadline `ack_deadline_secs`), and, if
/// asked, dead-letter topic `<name>-dead` with subscription `<name>-dead-sub`.
async fn queue(pubsub: &Pubsub, name: &str, ack_deadline_secs: u32, max_attempts: Option<u32>) {
    pubsub.ensure_topic(name).await.unwrap();
    let dead_letter_topic_id = match max_attempts {
        Some(_) => {
            let dead = format!("{name}-dead");
            pubsub.ensure_topic(&dead).await.unwrap();
            let settings = SubscriptionSettings::default();
            let sub = format!("{dead}-sub");
            pubsub
                .ensure_subscription(&sub, &dead, &settings)
                .await
                .unwrap();
            Some(dead)
        }
        None => None,
    };
    let settings = SubscriptionSettings {
        ack_deadline_secs,
        dead_letter_topic_id,
        max_delivery_attempts: max_attempts.unwrap_or(100),
        message_retention: DEFAULT_MESSAGE_RETENTION,
    };
    let sub = format!("{name}-worker");
    pubsub
        .ensure_subscription(&sub, name, &settings)
        .await
        .unwrap();
}

fn job(n: usize) -> OutgoingMessage {
    OutgoingMessage {
        data: format!(r#"{{"job_id":"job-{n}","steps":{n}}}"#).into_bytes(),
        attributes: BTreeMap::from([
            ("module".to_string(), MODULE.to_string()),
            ("n".to_string(), n.to_string()),
        ]),
    }
}

fn settings(max_outstanding_messages: usize, ack_deadline_secs: u32) -> SubscribeSettings {
    SubscribeSettings {
        max_outstanding_messages,
        ack_deadline_secs,
        ..SubscribeSettings::default()
    }
}

/// The next delivery within `wait`; panics on timeout, error or end of stream.
async fn next_within(sub: &mut Subscription, wait: Duration) -> Delivery {
    match timeout(wait, sub.next()).await {
        Err(_) => panic!("no message on {} within {wait:?}", sub.name()),
        Ok(Err(e)) => panic!("streaming pull failed: {e:#}"),
        Ok(Ok(None)) => panic!("the stream of {} ended", sub.name()),
        Ok(Ok(Some(d))) => d,
    }
}

/// Panics if `sub` hands out anything before `until`.
async fn assert_nothing_until(sub: &mut Subscription, until: Instant, why: &str) {
    if let Ok(got) = timeout_at(until, sub.next()).await {
        let got = got.map(|d| d.map(|d| d.message));
        panic!("{why}: got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_calls_are_idempotent_and_the_schema_is_enforced() {
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;

    assert_eq!(pubsub.ensure_topic("jobs").await.unwrap(), Ensured::Created);
    assert_eq!(pubsub.ensure_topic("jobs").await.unwrap(), Ensured::Found);
    assert_eq!(
        pubsub.ensure_topic("jobs-dead").await.unwrap(),
        Ensured::Created
    );

    let worker = SubscriptionSettings {
        dead_letter_topic_id: Some("jobs-dead".to_string()),
        ..SubscriptionSettings::default()
    };
    let ensure = |sub: &'static str, topic: &'static str, s: SubscriptionSettings| {
        let pubsub = pubsub.clone();
        async move { pubsub.ensure_subscription(sub, topic, &s).await }
    };
    assert_eq!(
        ensure("jobs-worker", "jobs", worker.clone()).await.unwrap(),
        Ensured::Created
    );
    assert_eq!(
        ensure("jobs-worker", "jobs", worker.clone()).await.unwrap(),
        Ensured::Found
    );

    // The same subscription name on another topic is a configuration error, not "found".
    let err = ensure("jobs-worker", "jobs-dead", worker.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exists on topic"), "{err}");
    // A missing topic is reported as such, naming the subscription.
    let err = ensure(
        "orphan-worker",
        "no-such-topic",
        SubscriptionSettings::default(),
    )
    .await
    .unwrap_err();
    assert!(err.is_not_found(), "{err:#}");
    assert!(err.to_string().contains("orphan-worker"), "{err}");
    // maxDeliveryAttempts out of 5..=100 is refused before any call.
    let few = SubscriptionSettings {
        max_delivery_attempts: 3,
        ..worker.clone()
    };
    let err = ensure("few-worker", "jobs", few).await.unwrap_err();
    assert!(err.to_string().contains("5..=100"), "{err}");

    // The guide's Avro schema on a new topic, twice.
    let created = pubsub
        .ensure_schema_on_topic("jobs-avro", "job")
        .await
        .unwrap();
    assert_eq!(
        created,
        SchemaOnTopic {
            schema: Ensured::Created,
            topic: TopicSchema::Created
        }
    );
    let again = pubsub
        .ensure_schema_on_topic("jobs-avro", "job")
        .await
        .unwrap();
    assert_eq!(
        again,
        SchemaOnTopic {
            schema: Ensured::Found,
            topic: TopicSchema::Found
        }
    );
    // A topic that exists without a schema is reported, not changed.
    let plain = pubsub.ensure_schema_on_topic("jobs", "job").await.unwrap();
    assert_eq!(plain.topic, TopicSchema::ExistsWithoutSchema);

    // ValidateMessage.
    let valid = br#"{"job_id":"job-1","steps":3}"#;
    let invalid = br#"{"job_id":3}"#;
    assert_eq!(
        pubsub.validate_message("job", valid).await.unwrap(),
        MessageValidity::Valid
    );
    let verdict = pubsub.validate_message("job", invalid).await.unwrap();
    assert!(
        matches!(verdict, MessageValidity::Invalid(_)),
        "{verdict:?}"
    );
    let err = pubsub
        .validate_message("no-such-schema", valid)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:#}");

    // Publishing to the schema topic: conforming messages pass, others are refused.
    let ok = OutgoingMessage {
        data: valid.to_vec(),
        attributes: BTreeMap::from([("module".to_string(), MODULE.to_string())]),
    };
    assert_eq!(
        pubsub.publish("jobs-avro", vec![ok]).await.unwrap().len(),
        1
    );
    let bad = OutgoingMessage {
        data: invalid.to_vec(),
        ..OutgoingMessage::default()
    };
    let err = pubsub.publish("jobs-avro", vec![bad]).await.unwrap_err();
    assert_eq!(err.published(), Some(0), "{err:#}");
    assert!(
        err.to_string().contains("0 of 1 messages published"),
        "{err}"
    );
    assert!(!err.is_transient(), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_messages_are_delivered_four_at_a_time_and_acked_for_good() {
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    queue(&pubsub, "batch", 10, None).await;

    let jobs: Vec<OutgoingMessage> = (0..30).map(job).collect();
    let ids = pubsub.publish("batch", jobs.clone()).await.unwrap();
    assert_eq!(ids.len(), 30);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30, "{ids:?}");

    let mut sub = pubsub
        .subscribe("batch-worker", &settings(4, 10))
        .await
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let mut seen = HashSet::new();
    let mut acks = Vec::new();
    while seen.len() < 30 {
        let Delivery { message, handle } = next_within(&mut sub, Duration::from_secs(60)).await;
        assert!(
            seen.insert(message.message_id.clone()),
            "delivered twice: {message:?}"
        );
        let n: usize = message.attributes["n"].parse().unwrap();
        assert_eq!(message.message_id, ids[n]);
        assert_eq!(message.data, jobs[n].data);
        assert_eq!(message.attributes, jobs[n].attributes);
        assert_eq!(
            message.delivery_attempt, None,
            "no dead-letter policy, no count"
        );

        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        most_in_flight.fetch_max(now, Ordering::SeqCst);
        let in_flight = Arc::clone(&in_flight);
        acks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            handle.ack();
        }));
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let most = most_in_flight.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "{most} messages in flight at once");

    // Acked for good: nothing comes back, even past the ack deadline.
    let until = Instant::now() + Duration::from_secs(12);
    assert_nothing_until(&mut sub, until, "an acked message was redelivered").await;
    sub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_drop_redeliver_with_a_growing_attempt_then_dead_letter() {
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    queue(&pubsub, "retry", 10, Some(5)).await;
    let ids = pubsub.publish("retry", vec![job(7)]).await.unwrap();

    let mut sub = pubsub
        .subscribe("retry-worker", &settings(1, 10))
        .await
        .unwrap();
    let mut attempts = Vec::new();
    for i in 0..5 {
        let delivery = next_within(&mut sub, Duration::from_secs(30)).await;
        assert_eq!(delivery.message.message_id, ids[0]);
        assert_eq!(delivery.message.data, job(7).data);
        attempts.push(delivery.message.delivery_attempt);
        if i == 2 {
            drop(delivery); // dropping the handle nacks, like nack()
        } else {
            delivery.handle.nack();
        }
    }
    let expected: Vec<Option<u32>> = (1..=5).map(Some).collect();
    assert_eq!(attempts, expected);

    // After 5 attempts the message goes to the dead-letter topic, and not to the worker again.
    let quiet_until = Instant::now() + Duration::from_secs(15);
    let worker_stays_quiet =
        assert_nothing_until(&mut sub, quiet_until, "a dead-lettered message came back");
    let read_dead_letters = async {
        // Read without consuming (nack), then consume (ack). Nacked messages are not lost (the
        // emulator offers them again only after the 10 s ack deadline of pull_some's stream
        // has lapsed once or twice, see `Settle::Nack`).
        let peek = pubsub
            .pull_some("retry-dead-sub", 1, Duration::from_secs(30), Settle::Nack)
            .await
            .unwrap();
        assert_eq!(peek.len(), 1, "{peek:?}");
        let dead = pubsub
            .pull_some("retry-dead-sub", 1, Duration::from_secs(60), Settle::Ack)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].message_id, peek[0].message_id);
        dead
    };
    let ((), dead) = tokio::join!(worker_stays_quiet, read_dead_letters);
    assert_eq!(dead[0].data, job(7).data);
    assert_eq!(dead[0].attributes["module"], MODULE);
    // pull_some's ack held: the dead-letter subscription stays empty past the 10 s ack
    // deadline of pull_some's stream.
    let again = pubsub
        .pull_some("retry-dead-sub", 1, Duration::from_secs(12), Settle::Ack)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// Pulls one message over the emulator's REST API and never acks or extends it: a worker
/// without lease management, to show that the emulator does enforce the ack deadline.
/// Returns the response body.
fn rest_pull_without_lease(host: &str, subscription: &str) -> String {
    let body = r#"{"maxMessages":1}"#;
    let request = format!(
        "POST /v1/{subscription}:pull HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    // The emulator keeps the connection open: read the headers, then Content-Length bytes.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no content-length in\n{head}"));
            if body.len() >= length {
                return body.to_string();
            }
        }
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed early:\n{text}");
        answer.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_outlives_the_ack_deadline_many_times() {
    const ACK_DEADLINE: u32 = 10;
    const HOLD: Duration = Duration::from_secs(35);
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    queue(&pubsub, "long", ACK_DEADLINE, None).await;
    queue(&pubsub, "control", ACK_DEADLINE, None).await;
    let ids = pubsub.publish("long", vec![job(1)]).await.unwrap();
    pubsub.publish("control", vec![job(2)]).await.unwrap();

    // Control: a message pulled without lease extension comes back after the deadline.
    let host = emulator.host();
    let control_path = pubsub.subscription_path("control-worker");
    let pulled = tokio::task::spawn_blocking(move || rest_pull_without_lease(&host, &control_path))
        .await
        .unwrap();
    assert!(pulled.contains("ackId"), "REST pull got nothing:\n{pulled}");
    let control_pulled_at = Instant::now();
    let mut control = pubsub
        .subscribe("control-worker", &settings(1, ACK_DEADLINE))
        .await
        .unwrap();

    // The held message: one worker holds it while a second one (started after the first got
    // it: the emulator sends messages to any open stream) watches the subscription.
    let mut sub = pubsub
        .subscribe("long-worker", &settings(2, ACK_DEADLINE))
        .await
        .unwrap();
    let held = next_within(&mut sub, Duration::from_secs(30)).await;
    assert_eq!(held.message.message_id, ids[0]);
    let mut other = pubsub
        .subscribe("long-worker", &settings(2, ACK_DEADLINE))
        .await
        .unwrap();
    let hold_until = Instant::now() + HOLD;
    let watch_until = hold_until + Duration::from_secs(12);
    let other_watch = tokio::spawn(async move {
        assert_nothing_until(
            &mut other,
            watch_until,
            "another worker got the held message",
        )
        .await;
    });

    let back = next_within(&mut control, Duration::from_secs(30)).await;
    let lapsed_after = control_pulled_at.elapsed();
    assert!(
        lapsed_after >= Duration::from_secs(u64::from(ACK_DEADLINE) - 2),
        "the control message came back after only {lapsed_after:?}"
    );
    back.handle.ack();

    assert_nothing_until(&mut sub, hold_until, "the held message was redelivered").await;
    held.handle.ack();
    assert_nothing_until(&mut sub, watch_until, "the message came back after its ack").await;
    other_watch.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_hands_out_at_most_max_outstanding() {
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    queue(&pubsub, "flow", 10, None).await;
    pubsub
        .publish("flow", (0..5).map(job).collect())
        .await
        .unwrap();

    // The emulator ignores the stream's flow control and sends all five to the first stream;
    // the busy worker hands the three it has no slot for back after `hand_back_after`.
    let busy_settings = SubscribeSettings {
        hand_back_after: Duration::from_secs(2),
        ..settings(2, 10)
    };
    let mut busy = pubsub
        .subscribe("flow-worker", &busy_settings)
        .await
        .unwrap();
    let first = next_within(&mut busy, Duration::from_secs(30)).await;
    let second = next_within(&mut busy, Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(3);
    assert_nothing_until(&mut busy, until, "a third message with 2 slots").await;

    // A second worker gets the other three.
    let mut idle = pubsub
        .subscribe("flow-worker", &settings(5, 10))
        .await
        .unwrap();
    let mut ids: HashSet<String> = [&first, &second]
        .iter()
        .map(|d| d.message.message_id.clone())
        .collect();
    for _ in 0..3 {
        let d = next_within(&mut idle, Duration::from_secs(30)).await;
        assert!(ids.insert(d.message.message_id.clone()), "{:?}", d.message);
        d.handle.ack();
    }
    assert_eq!(ids.len(), 5);
    first.handle.ack();
    second.handle.ack();
    busy.shutdown().await;
    idle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error_in_bounded_time() {
    let port = free_port(); // nothing listens there
    let config = PubsubConfig {
        project_id: PROJECT.to_string(),
        emulator_host: Some(format!("127.0.0.1:{port}")),
        credentials_file: None,
        rpc_timeout: Duration::from_secs(3),
    };
    let bound = Duration::from_secs(12);
    let pubsub = timeout(bound, Pubsub::connect(&config))
        .await
        .expect("connect does not hang")
        .expect("connect does not contact the server");

    let check = |what: &str, err: taskhost::pubsub::PubsubError, started: Instant| {
        let elapsed = started.elapsed();
        let text = err.to_string();
        assert!(
            elapsed < bound,
            "{what}: failed only after {elapsed:?}: {text}"
        );
        assert!(err.is_transient(), "{what}: {err:#}");
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "{what}: {text}"
        );
        eprintln!("{what}: {elapsed:?}: {err:#}");
    };
    let started = Instant::now();
    let err = timeout(bound, pubsub.ensure_topic("jobs"))
        .await
        .expect("ensure_topic hangs");
    check("ensure_topic", err.unwrap_err(), started);

    let started = Instant::now();
    let err = timeout(bound, pubsub.publish("jobs", vec![job(1)]))
        .await
        .expect("publish hangs");
    let err = err.unwrap_err();
    assert_eq!(err.published(), Some(0));
    check("publish", err, started);

    let started = Instant::now();
    let err = timeout(bound, pubsub.subscribe("jobs-worker", &settings(1, 10)))
        .await
        .expect("subscribe hangs");
    check("subscribe", err.unwrap_err(), started);

    let started = Instant::now();
    let err = timeout(
        bound,
        pubsub.pull_some("jobs-dead-sub", 1, bound, Settle::Ack),
    )
    .await
    .expect("pull_some hangs");
    check("pull_some", err.unwrap_err(), started);
}
