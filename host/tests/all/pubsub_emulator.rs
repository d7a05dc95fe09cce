//! The Pub/Sub backend (`taskhost::queue::pubsub`) against the real official emulator, one
//! per test, on a free port, killed at the end: what only this backend does (admin calls on
//! the official crate, the guide's Avro schema, unary REST pull honouring `max`, errors of an
//! unreachable server). The semantics both backends share (redelivery, delayed nacks,
//! dead-lettering, leases kept alive and lost) are in `queue_contract.rs`.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use support::pubsub::{PubsubEmulator, free_port};
use taskhost::queue::pubsub::{MessageValidity, Pubsub, PubsubConfig, SchemaOnTopic, TopicSchema};
use taskhost::queue::{Ensured, OutgoingMessage, Queue, Received, Settle, SubscriptionSettings};
use tokio::time::{Instant, timeout};

const PROJECT: &str = "taskhost-test";
const MODULE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

async fn connect(emulator: &PubsubEmulator) -> Pubsub {
    Pubsub::connect(&emulator.config(PROJECT))
        .await
        .expect("connect to the emulator")
}

/// Topic `<name>` with subscription `<name>-worker` (no dead-letter policy).
async fn topic_with_worker(pubsub: &Pubsub, name: &str) {
    assert_eq!(pubsub.ensure_topic(name).await.unwrap(), Ensured::Created);
    let sub = format!("{name}-worker");
    let settings = SubscriptionSettings {
        ack_deadline_secs: 10,
        ..SubscriptionSettings::default()
    };
    let ensured = pubsub.ensure_subscription(&sub, name, &settings).await;
    assert_eq!(ensured.unwrap(), Ensured::Created);
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

fn ack_ids(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| r.ack_id.clone()).collect()
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
    // Receiving from a missing subscription is reported as such.
    let err = pubsub
        .pull("no-such-worker", 1, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:#}");
    assert!(err.to_string().contains("no-such-worker"), "{err}");
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
async fn thirty_messages_are_pulled_at_most_four_at_a_time_and_acked_for_good() {
    /// The lease each pull asks for (the emulator takes deadlines under Pub/Sub's 10 s).
    const LEASE: Duration = Duration::from_secs(3);
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    topic_with_worker(&pubsub, "batch").await;

    let jobs: Vec<OutgoingMessage> = (0..30).map(job).collect();
    let ids = pubsub.publish("batch", jobs.clone()).await.unwrap();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30, "{ids:?}");

    let mut seen = HashSet::new();
    let started = Instant::now();
    while seen.len() < 30 {
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(60),
            "{seen:?} after {elapsed:?}"
        );
        let got = pubsub.pull("batch-worker", 4, LEASE).await.unwrap();
        assert!(got.len() <= 4, "a pull of at most 4 returned {}", got.len());
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for Received { message, .. } in &got {
            assert!(
                seen.insert(message.message_id.clone()),
                "twice: {message:?}"
            );
            let n: usize = message.attributes["n"].parse().unwrap();
            assert_eq!(message.message_id, ids[n]);
            assert_eq!(message.data, jobs[n].data);
            assert_eq!(message.attributes, jobs[n].attributes);
            assert_eq!(
                message.delivery_attempt, None,
                "no dead-letter policy, no count"
            );
        }
        pubsub
            .acknowledge("batch-worker", &ack_ids(&got))
            .await
            .unwrap();
    }

    // Acked for good: nothing comes back, even well past the lease the messages had.
    let quiet_until = Instant::now() + LEASE * 3;
    while Instant::now() < quiet_until {
        let got = pubsub.pull("batch-worker", 30, LEASE).await.unwrap();
        let back: Vec<_> = got.iter().map(|r| &r.message).collect();
        assert!(back.is_empty(), "acked messages came back: {back:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Acks made at once (1,200: past the 1,000 a call may carry), one per message as the
/// worker's jobs make them, go out in a few
/// `Acknowledge` calls (each waits for the call in flight and goes with the next), and every
/// one of them holds: nothing comes back. An ack on a subscription that is gone is an error
/// for each of its callers, and the next ack is sent again (no group is left without a sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_made_at_once_share_calls_and_every_one_holds() {
    const LEASE: Duration = Duration::from_secs(3);
    // Past the 1,000 ack ids one call may carry: a grouped call of more goes in parts.
    const N: usize = 1_200;
    let emulator = PubsubEmulator::start();
    let pubsub = connect(&emulator).await;
    topic_with_worker(&pubsub, "grouped").await;
    pubsub
        .publish("grouped", (0..N).map(job).collect())
        .await
        .unwrap();
    let mut pulled = Vec::new();
    let started = Instant::now();
    while pulled.len() < N {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} pulled",
            pulled.len()
        );
        pulled.extend(pubsub.pull("grouped-worker", N, LEASE).await.unwrap());
    }

    let calls_before = pubsub.acknowledge_calls();
    let acks: Vec<_> = pulled
        .iter()
        .map(|r| {
            let (pubsub, id) = (pubsub.clone(), r.ack_id.clone());
            tokio::spawn(async move { pubsub.acknowledge("grouped-worker", &[id]).await })
        })
        .collect();
    for ack in acks {
        ack.await.unwrap().expect("every ack goes through");
    }
    let calls = pubsub.acknowledge_calls() - calls_before;
    // At most one call per ack, whatever the schedule; acks started together share
    // calls (each waits while one is in flight), so far fewer are made.
    assert!((1..=N as u64).contains(&calls), "{calls} calls");
    assert!(
        calls < N as u64 / 4,
        "{N} acks made at once took {calls} calls"
    );

    let quiet_until = Instant::now() + LEASE * 2;
    while Instant::now() < quiet_until {
        let back = pubsub.pull("grouped-worker", N, LEASE).await.unwrap();
        assert!(back.is_empty(), "{} acked messages came back", back.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A subscription that is gone: every caller of the grouped call hears the error.
    pubsub.publish("grouped", vec![job(0)]).await.unwrap();
    let got = loop {
        let got = pubsub.pull("grouped-worker", 1, LEASE).await.unwrap();
        if !got.is_empty() {
            break got;
        }
    };
    let deleted = emulator.delete_subscription(PROJECT, "grouped-worker");
    assert!(deleted.contains("200"), "{deleted}");
    let failed: Vec<_> = (0..5)
        .map(|_| {
            let (pubsub, id) = (pubsub.clone(), got[0].ack_id.clone());
            tokio::spawn(async move { pubsub.acknowledge("grouped-worker", &[id]).await })
        })
        .collect();
    for ack in failed {
        let e = ack.await.unwrap().expect_err("the subscription is gone");
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("grouped-worker"), "{e}");
    }
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
    let queue = Queue::PubSub(pubsub.clone());

    // Each failure: within the bound, transient (worth retrying), naming the server.
    let check = |what: &str, started: Instant, transient: bool, text: String| {
        let elapsed = started.elapsed();
        assert!(
            elapsed < bound,
            "{what}: failed only after {elapsed:?}: {text}"
        );
        assert!(transient, "{what}: not transient: {text}");
        let server = format!("127.0.0.1:{port}");
        assert!(
            text.contains(&server),
            "{what}: does not name {server}: {text}"
        );
        eprintln!("{what}: {elapsed:?}: {text}");
    };
    let started = Instant::now();
    let err = timeout(bound, pubsub.ensure_topic("jobs"))
        .await
        .expect("ensure_topic hangs")
        .unwrap_err();
    check("ensure_topic", started, err.is_transient(), err.to_string());

    let started = Instant::now();
    let err = timeout(bound, pubsub.publish("jobs", vec![job(1)]))
        .await
        .expect("publish hangs")
        .unwrap_err();
    assert_eq!(err.published(), Some(0));
    check("publish", started, err.is_transient(), err.to_string());

    let started = Instant::now();
    let err = timeout(
        bound,
        pubsub.pull("jobs-worker", 1, Duration::from_secs(10)),
    )
    .await
    .expect("pull hangs")
    .unwrap_err();
    check("pull", started, err.is_transient(), err.to_string());

    // What a lease keeper and a worker's ack would run into.
    let ack_id = ["an-ack-id".to_string()];
    let started = Instant::now();
    let deadline = Duration::from_secs(10);
    let err = timeout(
        bound,
        pubsub.modify_ack_deadline("jobs-worker", &ack_id, deadline),
    )
    .await
    .expect("modify_ack_deadline hangs")
    .unwrap_err();
    check(
        "modify_ack_deadline",
        started,
        err.is_transient(),
        err.to_string(),
    );

    let started = Instant::now();
    let err = timeout(bound, pubsub.acknowledge("jobs-worker", &ack_id))
        .await
        .expect("acknowledge hangs")
        .unwrap_err();
    check("acknowledge", started, err.is_transient(), err.to_string());

    let started = Instant::now();
    let err = timeout(
        bound,
        queue.pull_some("jobs-dead-sub", 1, bound, Settle::Ack),
    )
    .await
    .expect("pull_some hangs")
    .unwrap_err();
    check("pull_some", started, err.is_transient(), err.to_string());
}
