//! The queue contract, run once per backend: the embedded SQLite queue and the official
//! Pub/Sub emulator. Every case is one async fn over a `Queue`; `contract!` makes a test of
//! it for each backend.
//!
//! The emulator tests share one emulator (started by the first, stopped with the last) and
//! are isolated by project. Short ack deadlines (2 s) are fine on both: the embedded queue
//! and the emulator accept them (Pub/Sub's minimum is 10 s).

use crate::support;

use std::sync::{Arc, Weak};
use std::time::Duration;

use support::pubsub::PubsubEmulator;
use taskhost::queue::lease::{FIRST_RETRY, Lease};
use taskhost::queue::{
    IncomingMessage, LocalQueue, MAX_ACK_DEADLINE_SECS, OutgoingMessage, Pubsub, Queue, Received,
    Stamp, SubscriptionSettings,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease of the tests that watch one lapse.
const SHORT: Duration = Duration::from_secs(2);
/// A lease that does not lapse during a test.
const LONG: Duration = Duration::from_secs(60);

/// The backend under test, kept alive for the test's length.
enum Backend {
    Local(#[allow(dead_code)] tempfile::TempDir),
    Emulator(Arc<PubsubEmulator>),
}

static EMULATOR: tokio::sync::Mutex<Weak<PubsubEmulator>> =
    tokio::sync::Mutex::const_new(Weak::new());

async fn shared_emulator() -> Arc<PubsubEmulator> {
    let mut slot = EMULATOR.lock().await;
    if let Some(e) = slot.upgrade() {
        return e;
    }
    let e = Arc::new(
        tokio::task::spawn_blocking(PubsubEmulator::start)
            .await
            .unwrap(),
    );
    *slot = Arc::downgrade(&e);
    e
}

/// A queue with the topic [`TOPIC`], its dead-letter topic [`DEAD_TOPIC`] (subscription
/// [`DEAD_SUB`]) and the subscription [`SUB`] (ack deadline `deadline`, dead-lettering after
/// `max_attempts`).
struct Setup {
    queue: Queue,
    backend: Backend,
}

const TOPIC: &str = "jobs";
const DEAD_TOPIC: &str = "jobs-dl";
const SUB: &str = "jobs-sub";
const DEAD_SUB: &str = "jobs-dl-sub";

impl Setup {
    async fn new(local: bool, name: &str, deadline: Duration, max_attempts: u32) -> Setup {
        Setup::with(local, false, name, deadline, max_attempts).await
    }

    /// With `private`, the emulator is this test's own (a test that freezes it must not
    /// freeze the others).
    async fn with(
        local: bool,
        private: bool,
        name: &str,
        deadline: Duration,
        max_attempts: u32,
    ) -> Setup {
        let (queue, backend) = if local {
            let dir = tempfile::tempdir().unwrap();
            let q = LocalQueue::open(dir.path().join("q.sqlite")).await.unwrap();
            (Queue::Local(q), Backend::Local(dir))
        } else {
            let emulator = if private {
                Arc::new(
                    tokio::task::spawn_blocking(PubsubEmulator::start)
                        .await
                        .unwrap(),
                )
            } else {
                shared_emulator().await
            };
            let config = emulator.config(&format!("contract-{name}"));
            let q = Pubsub::connect(&config).await.unwrap();
            (Queue::PubSub(q), Backend::Emulator(emulator))
        };
        queue.ensure_topic(TOPIC).await.unwrap();
        queue.ensure_topic(DEAD_TOPIC).await.unwrap();
        let settings = SubscriptionSettings {
            ack_deadline_secs: deadline.as_secs() as u32,
            dead_letter_topic_id: Some(DEAD_TOPIC.into()),
            max_delivery_attempts: max_attempts,
            ..SubscriptionSettings::default()
        };
        queue
            .ensure_subscription(SUB, TOPIC, &settings)
            .await
            .unwrap();
        queue
            .ensure_subscription(DEAD_SUB, DEAD_TOPIC, &SubscriptionSettings::default())
            .await
            .unwrap();
        Setup { queue, backend }
    }

    async fn publish(&self, texts: &[&str]) {
        let messages = texts
            .iter()
            .map(|t| OutgoingMessage {
                data: t.as_bytes().to_vec(),
                ..OutgoingMessage::default()
            })
            .collect();
        self.queue.publish(TOPIC, messages).await.unwrap();
    }

    /// Pulls (at most `max`, each for `deadline`) until something comes or `wait` passes.
    async fn pull_within(
        &self,
        sub: &str,
        max: usize,
        deadline: Duration,
        wait: Duration,
    ) -> Vec<Received> {
        let until = Instant::now() + wait;
        loop {
            let got = self.queue.pull(sub, max, deadline).await.unwrap();
            assert!(got.len() <= max, "asked for {max}, got {}", got.len());
            if !got.is_empty() || Instant::now() >= until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pulls `sub` (each for [`LONG`]) until something comes, within `wait`; asserts that
    /// no pull answered before `not_before` brings anything. A server that hands the
    /// message out when it got the pull answers after that, so an answer before
    /// `not_before` (a time the server's own deadline cannot precede) came too soon,
    /// however slow the calls are.
    async fn pull_back(
        &self,
        sub: &str,
        not_before: Instant,
        wait: Duration,
        why: &str,
    ) -> Vec<Received> {
        let until = Instant::now() + wait;
        loop {
            let got = self.queue.pull(sub, 1, LONG).await.unwrap();
            let answered = Instant::now();
            if !got.is_empty() {
                assert!(
                    answered >= not_before,
                    "{why}: handed out {:?} too soon: {:?}",
                    not_before - answered,
                    texts(&got)
                );
                return got;
            }
            assert!(answered < until, "{why}: nothing came back within {wait:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that no message of `sub` can be pulled for `span`.
    async fn nothing_for(&self, sub: &str, span: Duration, why: &str) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            let got = self.queue.pull(sub, 10, LONG).await.unwrap();
            assert!(got.is_empty(), "{why}: got {:?}", texts(&got));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn nack(&self, r: &Received, delay: Duration) {
        let lost = self
            .queue
            .modify_ack_deadline(SUB, std::slice::from_ref(&r.ack_id), delay)
            .await
            .unwrap();
        assert!(lost.is_empty(), "{lost:?}");
    }
}

fn text(m: &IncomingMessage) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

fn texts(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| text(&r.message)).collect()
}

/// One test per backend for each case: `contract!(case)` makes `local::case` and
/// `emulator::case`, each calling `case(local: bool)`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(true).await })*
        }
        mod emulator {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(false).await })*
        }
    };
}

contract!(
    a_nacked_message_comes_back_at_once_with_the_next_attempt,
    a_lapsed_lease_brings_the_message_back,
    a_delayed_nack_brings_it_back_after_the_delay,
    a_lease_dropped_unsettled_hands_its_message_back_after_its_delay,
    after_max_attempts_the_message_is_dead_lettered,
    a_pull_leases_at_most_what_it_asks_for,
    a_kept_lease_outlives_several_deadlines_and_its_ack_is_final,
    a_lost_lease_is_noticed,
    a_lease_asking_past_the_longest_deadline_ends_no_later_than_the_servers,
    a_browse_holds_what_it_read_until_it_settles_it,
);

async fn a_nacked_message_comes_back_at_once_with_the_next_attempt(local: bool) {
    let s = Setup::new(local, "nack", LONG, 100).await;
    s.publish(&["one"]).await;
    let first = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(texts(&first), ["one"]);
    assert_eq!(first[0].message.delivery_attempt, Some(1));
    let nacked = Instant::now();
    s.nack(&first[0], Duration::ZERO).await;
    let again = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(texts(&again), ["one"], "not redelivered after a nack");
    assert!(
        nacked.elapsed() < Duration::from_secs(5),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!(again[0].message.message_id, first[0].message.message_id);
    assert_eq!(again[0].message.delivery_attempt, Some(2));
    assert_ne!(
        again[0].ack_id, first[0].ack_id,
        "an ack id names one delivery"
    );
}

async fn a_lapsed_lease_brings_the_message_back(local: bool) {
    let s = Setup::new(local, "lapse", SHORT, 100).await;
    s.publish(&["one"]).await;
    let first = s.pull_within(SUB, 1, SHORT, Duration::from_secs(10)).await;
    assert_eq!(texts(&first), ["one"]);
    // Not extended: nobody else gets it while the lease holds (its guaranteed end is
    // stamped before the pull was sent: a slow answer only shortens what is checked), then
    // it comes back.
    let again = s
        .pull_back(
            SUB,
            first[0].leased_until.instant,
            Duration::from_secs(15),
            "the lapsed lease",
        )
        .await;
    assert_eq!(texts(&again), ["one"]);
    assert_eq!(again[0].message.delivery_attempt, Some(2));
    // The first holder's ack is stale: the message stays leased to the second one, and
    // comes back once that lease is handed back.
    let _ = s
        .queue
        .acknowledge(SUB, std::slice::from_ref(&first[0].ack_id))
        .await;
    s.nack(&again[0], Duration::ZERO).await;
    let third = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(texts(&third), ["one"], "a stale ack consumed the message");
}

async fn a_delayed_nack_brings_it_back_after_the_delay(local: bool) {
    let s = Setup::new(local, "delayed", LONG, 100).await;
    s.publish(&["one"]).await;
    let first = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    let delay = Duration::from_secs(3);
    // Stamped before the nack is sent: the server counts the delay from when it got it.
    let nacked = Instant::now();
    s.nack(&first[0], delay).await;
    let again = s
        .pull_back(
            SUB,
            nacked + delay,
            Duration::from_secs(15),
            "the delayed nack",
        )
        .await;
    assert_eq!(texts(&again), ["one"]);
    assert_eq!(again[0].message.delivery_attempt, Some(2));
}

/// A lease dropped without being settled (its handler panicked) nacks its message with the
/// delay it was given: it comes back after it, not at once.
async fn a_lease_dropped_unsettled_hands_its_message_back_after_its_delay(local: bool) {
    let s = Setup::new(local, "dropped", LONG, 100).await;
    s.publish(&["one"]).await;
    let first = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    let delay = Duration::from_secs(3);
    let dropped = Instant::now();
    let shutdown = CancellationToken::new();
    drop(
        Lease::start(s.queue.clone(), SUB, &first[0], LONG)
            .handed_back_on_drop_after(delay, shutdown.clone()),
    );
    let again = s
        .pull_back(
            SUB,
            dropped + delay,
            Duration::from_secs(15),
            "the dropped lease",
        )
        .await;
    assert_eq!(texts(&again), ["one"]);
    // Dropped once its shutdown began: back at once.
    shutdown.cancel();
    let nacked = Instant::now();
    drop(
        Lease::start(s.queue.clone(), SUB, &again[0], LONG)
            .handed_back_on_drop_after(delay, shutdown.clone()),
    );
    let third = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(texts(&third), ["one"]);
    assert!(nacked.elapsed() < delay, "{:?}", nacked.elapsed());
}

async fn after_max_attempts_the_message_is_dead_lettered(local: bool) {
    let max = 5;
    let s = Setup::new(local, "dead", LONG, max).await;
    s.publish(&["poison"]).await;
    for attempt in 1..=max {
        let got = s.pull_within(SUB, 1, LONG, Duration::from_secs(15)).await;
        assert_eq!(texts(&got), ["poison"], "delivery {attempt}");
        assert_eq!(got[0].message.delivery_attempt, Some(attempt));
        s.nack(&got[0], Duration::ZERO).await;
    }
    // (The emulator moves it when the next delivery is due: these pulls are that.)
    s.nothing_for(SUB, Duration::from_secs(2), "delivered past its limit")
        .await;
    let dead = s
        .queue
        .pull_some(
            DEAD_SUB,
            10,
            Duration::from_secs(15),
            taskhost::queue::Settle::Ack,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(text(&dead[0]), "poison");
    if local {
        use taskhost::queue::local::{
            DEAD_LETTER_SOURCE_DELIVERY_COUNT, DEAD_LETTER_SOURCE_SUBSCRIPTION,
        };
        assert_eq!(dead[0].attributes[DEAD_LETTER_SOURCE_SUBSCRIPTION], SUB);
        assert_eq!(
            dead[0].attributes[DEAD_LETTER_SOURCE_DELIVERY_COUNT],
            max.to_string()
        );
    }
}

async fn a_pull_leases_at_most_what_it_asks_for(local: bool) {
    let s = Setup::new(local, "max", LONG, 100).await;
    let all: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    s.publish(&all.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while seen.len() < all.len() && Instant::now() < until {
        // `pull_within` asserts that no pull returns more than 3.
        let got = s.pull_within(SUB, 3, LONG, Duration::from_secs(5)).await;
        seen.extend(texts(&got));
    }
    seen.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(seen, want, "every message once while all leases hold");
}

async fn a_kept_lease_outlives_several_deadlines_and_its_ack_is_final(local: bool) {
    // 5 s: each extension is sent half a deadline (2.5 s) before the lease ends, room for
    // a loaded machine's late timer and slow call.
    let deadline = Duration::from_secs(5);
    let s = Setup::new(local, "keep", deadline, 100).await;
    s.publish(&["long job"]).await;
    let got = s
        .pull_within(SUB, 1, deadline, Duration::from_secs(10))
        .await;
    let lease = Lease::start(s.queue.clone(), SUB, &got[0], deadline);
    // Past two deadlines of the pull: the lease keeper extends it every half deadline.
    let past = got[0].leased_until.instant + deadline + Duration::from_secs(1);
    let span = past.saturating_duration_since(Instant::now());
    s.nothing_for(SUB, span, "a kept lease lapsed").await;
    assert!(!lease.is_lost());
    assert!(lease.view().until().instant > Instant::now());
    let acked = lease.view().until().instant;
    lease.ack().await.unwrap();
    // Past the end the lease had at the ack (and half a deadline: the server's end is a
    // little later): an ack that did not take would bring it back.
    let span = (acked + deadline / 2).saturating_duration_since(Instant::now());
    s.nothing_for(SUB, span, "an acked message came back").await;
}

/// `dead-letter replay` reads the messages under a browse: they stay held past several
/// leases while the reader takes its time (a person at a prompt), an acked one is gone, and
/// the rest come back at once when released.
async fn a_browse_holds_what_it_read_until_it_settles_it(local: bool) {
    // 5 s: extended every 2.5 s, room for a loaded machine's late timer and slow call.
    let lease = Duration::from_secs(5);
    let s = Setup::new(local, "browse", lease, 100).await;
    s.publish(&["one", "two", "three"]).await;
    let mut browse = s.queue.browse_leased(SUB, 10, lease).await.unwrap();
    let read: Vec<String> = browse.messages().iter().map(|m| text(m)).collect();
    assert_eq!(read.len(), 3, "{read:?}");
    s.nothing_for(
        SUB,
        lease * 2 + Duration::from_secs(1),
        "a browsed message lapsed",
    )
    .await;
    let first = browse.messages()[0].message_id.clone();
    browse.ack(&[&first]).await.unwrap();
    s.nothing_for(SUB, lease, "a browsed message lapsed after an ack")
        .await;
    browse.release().await.unwrap();
    let mut back = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while back.len() < 2 && Instant::now() < until {
        back.extend(texts(
            &s.pull_within(SUB, 10, LONG, Duration::from_secs(1)).await,
        ));
    }
    back.sort();
    let mut want: Vec<String> = read[1..].to_vec();
    want.sort();
    assert_eq!(
        back, want,
        "released: not back at once, or the acked one came back"
    );
}

async fn a_lost_lease_is_noticed(local: bool) {
    let s = Setup::with(local, true, "lost", SHORT, 100).await;
    s.publish(&["one"]).await;
    let got = s.pull_within(SUB, 1, SHORT, Duration::from_secs(10)).await;
    let lease = Lease::start(s.queue.clone(), SUB, &got[0], SHORT);
    let view = lease.view();
    let started = Instant::now();
    match &s.backend {
        // The message is handed to someone else: the next extension is refused.
        Backend::Local(_) => {
            s.nack(&got[0], Duration::ZERO).await;
            let other = s.pull_within(SUB, 1, LONG, Duration::from_secs(5)).await;
            assert_eq!(texts(&other), ["one"]);
        }
        // Pub/Sub never refuses an extension: make it unreachable past the deadline.
        Backend::Emulator(emulator) => emulator.freeze(true),
    }
    let noticed = tokio::time::timeout(Duration::from_secs(15), view.lost.cancelled()).await;
    let noticed_at = Instant::now();
    if let Backend::Emulator(emulator) = &s.backend {
        emulator.freeze(false);
    }
    assert!(
        noticed.is_ok(),
        "the lost lease went unnoticed for {:?}",
        started.elapsed()
    );
    // Noticed soon after the lease's guaranteed end: 3 s is room for a loaded machine's
    // timers; a keeper that waited out a hung call (CALL_TIMEOUT, 10 s) or another
    // extension's schedule would be later.
    assert!(
        noticed_at <= view.until().instant + Duration::from_secs(3),
        "noticed {:?} after the lease ended",
        noticed_at - view.until().instant
    );
    assert!(lease.is_lost());
}

async fn a_lease_asking_past_the_longest_deadline_ends_no_later_than_the_servers(local: bool) {
    let s = Setup::new(local, "longest", LONG, 100).await;
    s.publish(&["one"]).await;
    let mut got = s.pull_within(SUB, 1, LONG, Duration::from_secs(10)).await;
    // A lease that ends soon: its first extension is due at once.
    got[0].leased_until = Stamp::now().plus(Duration::from_secs(5));
    let lease = Lease::start(s.queue.clone(), SUB, &got[0], Duration::from_secs(900));
    let mut until = lease.view().until;
    tokio::time::timeout(Duration::from_secs(5), until.changed())
        .await
        .expect("extended within 5 s")
        .unwrap();
    let answered = Instant::now();
    assert!(!lease.is_lost());
    // Both servers set at most 600 s (Pub/Sub's longest deadline), counted from when they got
    // the extension, before it was answered: the end recorded is no later than that.
    let longest = Duration::from_secs(MAX_ACK_DEADLINE_SECS.into());
    let end = lease.view().until();
    assert!(
        end.instant <= answered + longest,
        "the lease's end is {:?} past the longest deadline the server sets",
        end.instant - (answered + longest)
    );
    assert_eq!(lease.view().deadline, longest);
    lease.ack().await.unwrap();
}

/// The ack deadline of the outage case.
const SURVIVE_DEADLINE: Duration = Duration::from_secs(10);
/// When Pub/Sub answers again there, after the first extension was due (half a deadline
/// after the pull, +5 s, so half a deadline is left; it is frozen from just before). The
/// extension is retried with tries of at most a fifth of the deadline (2 s: the first ends
/// at +7 s), then after `FIRST_RETRY` (0.5 s) a second try runs from +7.5 s to +9.5 s; a
/// call pending when the emulator thaws is answered then. Thawing halfway between the end
/// of the first try and the end of the second (+8.25 s, on the clock, not counted from the
/// freeze, which may come late) leaves 1.25 s on each side: before it, the first try has
/// failed (the case is a retry, not a slow answer); after it, the second try has time to
/// be answered by a thawing emulator on a loaded machine, 1.75 s before the lease ends.
fn survive_thaw_after_due() -> Duration {
    let tr = SURVIVE_DEADLINE / 5;
    (tr + (tr * 2 + FIRST_RETRY)) / 2
}

/// Pub/Sub unreachable until [`survive_thaw_after_due`], from just before an extension is due:
/// the lease survives (the retries are short enough to land once it answers again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_a_lease_survives_pubsub_unreachable_for_part_of_its_deadline() {
    let deadline = SURVIVE_DEADLINE;
    let s = Setup::with(false, true, "survive", deadline, 100).await;
    let Backend::Emulator(emulator) = &s.backend else {
        unreachable!()
    };
    s.publish(&["one"]).await;
    let got = s
        .pull_within(SUB, 1, deadline, Duration::from_secs(10))
        .await;
    let lease = Lease::start(s.queue.clone(), SUB, &got[0], deadline);
    let view = lease.view();
    // The first extension is due half a deadline after the pull.
    let due = got[0].leased_until.instant - deadline / 2;
    tokio::time::sleep_until(due - Duration::from_millis(100)).await;
    emulator.freeze(true);
    tokio::time::sleep_until(due + survive_thaw_after_due()).await; // the outage: the scenario
    emulator.freeze(false);
    // Past the deadline the first extension would have had: still held.
    tokio::time::sleep_until(got[0].leased_until.instant + Duration::from_secs(1)).await;
    assert!(!lease.is_lost(), "the lease was lost");
    assert!(view.until().instant > Instant::now());
    s.nothing_for(SUB, Duration::from_secs(2), "the lease lapsed")
        .await;
    lease.ack().await.unwrap();
}
