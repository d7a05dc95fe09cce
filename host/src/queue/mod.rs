//! The job queue as one capability: Google Cloud Pub/Sub (or its emulator), or the embedded
//! SQLite queue with the same lease / attempt / dead-letter semantics.
//!
//! Both backends offer the same small receive protocol, Pub/Sub's unary one:
//! [`Queue::pull`] (at most `max` messages, each under a fresh lease), [`Queue::modify_ack_deadline`]
//! (extend a lease, hand a message back now with 0, or later with a delay) and
//! [`Queue::acknowledge`]. Everything above that is written once, here: [`lease::Lease`] keeps
//! one message's lease alive and says when it is lost; [`Queue::pull_some`] reads a few
//! messages for tests and `status`.
//!
//! **Why unary pull and not the official crate's streaming subscriber:** the worker must hold
//! only the messages it can start at once, whatever the server does with flow control (the
//! emulator ignores streaming-pull flow control and sends every message to one stream), and
//! must extend each lease with margin (the crate in 1.7 extends only when ~5 s remain and keeps
//! unary `Pull` / `ModifyAckDeadline` crate-private). So `pubsub::receive` makes those gRPC
//! calls itself; the official crate stays for admin and publishing.
//!
//! **API boundary:** the worker and the CLI see only this module's types; only `pubsub` and
//! `local` know their wire protocols, and neither imports the other.

pub mod browse;
pub mod lanes;
pub mod lease;
pub mod local;
pub mod pubsub;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

pub use local::LocalQueue;
pub use pubsub::Pubsub;

/// Default ack deadline (`ACK_DEADLINE_SECONDS`), as in the guide's worker: 60 s.
pub const DEFAULT_ACK_DEADLINE_SECS: u32 = 60;
/// Largest ack deadline Pub/Sub accepts: 600 s (also the longest delayed nack).
pub const MAX_ACK_DEADLINE_SECS: u32 = 600;
/// Default `maxDeliveryAttempts` of the dead-letter policy: 100, the largest Pub/Sub allows.
/// Every delivery counts as an attempt, so the host counts real failures itself.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 100;
/// Default retention of unacked messages on a subscription: 7 days (the Pub/Sub maximum is 31).
pub const DEFAULT_MESSAGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an `ensure_*` call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The resource did not exist and was created.
    Created,
    /// The resource already existed; it was not changed.
    Found,
}

/// Settings of a subscription created by [`Queue::ensure_subscription`].
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    /// The subscription's ack deadline (Pub/Sub: 10..=600 s; local: 1..=600 s): the lease a
    /// pulled message starts with.
    pub ack_deadline_secs: u32,
    /// The dead-letter topic (it must exist). `None`: no dead-letter policy, and then Pub/Sub
    /// reports no delivery attempt count either.
    pub dead_letter_topic_id: Option<String>,
    /// Deliveries before a message goes to the dead-letter topic (Pub/Sub: 5..=100).
    pub max_delivery_attempts: u32,
    /// How long unacked messages are kept (Pub/Sub: 10 minutes..=31 days).
    pub message_retention: Duration,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self {
            ack_deadline_secs: DEFAULT_ACK_DEADLINE_SECS,
            dead_letter_topic_id: None,
            max_delivery_attempts: DEFAULT_MAX_DELIVERY_ATTEMPTS,
            message_retention: DEFAULT_MESSAGE_RETENTION,
        }
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload (the job's JSON document).
    pub data: Vec<u8>,
    /// Attributes (for example `module`).
    pub attributes: BTreeMap<String, String>,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The server-assigned message id (the same on every redelivery).
    pub message_id: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// 1 for the first delivery, n for the n-th; `None` when the subscription has no
    /// dead-letter policy (Pub/Sub counts attempts only when it has one).
    pub delivery_attempt: Option<u32>,
    /// When it was published (ms since the Unix epoch), if the server said.
    pub publish_time_ms: Option<u64>,
}

/// A pulled message under lease.
#[derive(Clone, Debug)]
pub struct Received {
    /// The message itself: data, attributes, delivery attempt.
    pub message: IncomingMessage,
    /// Names this delivery (not the message) in `modify_ack_deadline` and `acknowledge`.
    pub ack_id: String,
    /// Until when the lease is guaranteed: the send time of the request that set the deadline
    /// plus that deadline (the server counts from when it got the request, later).
    pub leased_until: Stamp,
}

/// A point in time, on the monotonic clock (for timers) and the wall clock (for headers that
/// other machines read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// On this process's monotonic clock.
    pub instant: Instant,
    /// On the wall clock, in ms since the Unix epoch.
    pub unix_ms: u64,
}

impl Stamp {
    /// Now, read on both clocks.
    pub fn now() -> Stamp {
        Stamp {
            instant: Instant::now(),
            unix_ms: crate::time::now_ms(),
        }
    }

    /// `d` later on both clocks (the wall clock saturating at `u64::MAX` ms).
    pub fn plus(self, d: Duration) -> Stamp {
        Stamp {
            instant: self.instant + d,
            unix_ms: self.unix_ms.saturating_add(d.as_millis() as u64),
        }
    }
}

/// An RFC 3339 UTC timestamp as Pub/Sub writes it (`2026-12-01T09:22:13.976Z`, up to 9
/// fraction digits) in ms since the Unix epoch; `None` for anything else.
pub fn parse_rfc3339_utc_ms(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<3}")[..3].parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + ms).ok()
}

/// What [`Queue::pull_some`] does with each message it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledge: the message is consumed.
    Ack,
    /// Hand back at once: the message stays, with one more delivery attempt counted.
    Nack,
}

/// Whether a failed queue call is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unreachable or overloaded server, timeout, busy database: retry with backoff.
    Transient,
    /// The topic or subscription (or one it refers to) does not exist.
    NotFound,
    /// Anything else (permission denied, invalid argument, unusable file): retrying the same
    /// call will not help.
    Permanent,
}

/// A failed queue call, from either backend. `Display` is one line naming the operation, the
/// resource and the reason; never a credential.
#[derive(Debug)]
pub struct QueueError {
    kind: ErrorKind,
    message: String,
    published: Option<usize>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_timestamps() {
        use super::parse_rfc3339_utc_ms as p;
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("2026-12-01T09:22:13.976Z"), Some(1_796_116_933_976));
        assert_eq!(p("2000-02-29T23:59:59.5Z"), Some(951_868_799_500));
        assert_eq!(p("2026-12-01T09:22:13.123456789Z"), Some(1_796_116_933_123));
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T09:22:13+01:00",
            "x",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}

impl QueueError {
    /// A call that got no answer within `limit`.
    pub fn timeout(limit: Duration) -> Self {
        QueueError {
            kind: ErrorKind::Transient,
            message: format!("queue call got no answer within {limit:?}"),
            published: None,
            source: None,
        }
    }

    /// Whether retrying may help, and why not.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// [`ErrorKind::Transient`]: retry with backoff.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// [`ErrorKind::NotFound`]: the topic or subscription does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// For [`Queue::publish`]: how many of the messages were published before the error.
    pub fn published(&self) -> Option<usize> {
        self.published
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl QueueError {
    /// A backend's error, classified by what the backend says of it.
    fn wrap(
        e: impl std::error::Error + Send + Sync + 'static,
        transient: bool,
        not_found: bool,
        published: Option<usize>,
    ) -> Self {
        let kind = match (transient, not_found) {
            (true, _) => ErrorKind::Transient,
            (false, true) => ErrorKind::NotFound,
            (false, false) => ErrorKind::Permanent,
        };
        QueueError {
            kind,
            message: e.to_string(),
            published,
            source: Some(Box::new(e)),
        }
    }
}

impl From<pubsub::PubsubError> for QueueError {
    fn from(e: pubsub::PubsubError) -> Self {
        let (transient, not_found, published) = (e.is_transient(), e.is_not_found(), e.published());
        QueueError::wrap(e, transient, not_found, published)
    }
}

impl From<local::LocalQueueError> for QueueError {
    fn from(e: local::LocalQueueError) -> Self {
        let (transient, not_found) = (e.is_transient(), e.is_not_found());
        QueueError::wrap(e, transient, not_found, None)
    }
}

/// The queue, chosen by configuration (`PROJECT_ID` set or not). Cheap to clone.
#[derive(Clone, Debug)]
pub enum Queue {
    /// Google Cloud Pub/Sub, or its emulator.
    PubSub(Pubsub),
    /// The embedded SQLite queue.
    Local(LocalQueue),
}

impl Queue {
    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic: &str) -> Result<Ensured, QueueError> {
        Ok(match self {
            Queue::PubSub(q) => q.ensure_topic(topic).await?,
            Queue::Local(q) => q.ensure_topic(topic).await?,
        })
    }

    /// Creates the subscription unless it exists (see each backend for what it checks).
    pub async fn ensure_subscription(
        &self,
        sub: &str,
        topic: &str,
        settings: &SubscriptionSettings,
    ) -> Result<Ensured, QueueError> {
        Ok(match self {
            Queue::PubSub(q) => q.ensure_subscription(sub, topic, settings).await?,
            Queue::Local(q) => q.ensure_subscription(sub, topic, settings).await?,
        })
    }

    /// Publishes `messages`; returns their ids in order.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, QueueError> {
        Ok(match self {
            Queue::PubSub(q) => q.publish(topic, messages).await?,
            Queue::Local(q) => q.publish(topic, messages).await?,
        })
    }

    /// The ack deadlines (seconds) this queue's server accepts, the one rule the worker's
    /// `ACK_DEADLINE_SECONDS` is checked by: Pub/Sub 10..=600, its emulator and the embedded
    /// queue 1..=600.
    pub fn ack_deadlines(&self) -> std::ops::RangeInclusive<u32> {
        match self {
            Queue::PubSub(q) => q.ack_deadlines(),
            Queue::Local(_) => LocalQueue::ack_deadlines(),
        }
    }

    /// The deadline [`Queue::modify_ack_deadline`] sets when asked for `deadline` (the
    /// server's bounds): what a lease counts its end from.
    pub fn deadline_set(&self, deadline: Duration) -> Duration {
        match self {
            Queue::PubSub(q) => q.deadline_set(deadline),
            Queue::Local(_) => LocalQueue::deadline_set(deadline),
        }
    }

    /// Leases at most `max` messages of `sub`, each for `ack_deadline`, without waiting: an
    /// empty list when nothing is ready. Every returned message counts a delivery attempt.
    pub async fn pull(
        &self,
        sub: &str,
        max: usize,
        ack_deadline: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        Ok(match self {
            Queue::PubSub(q) => q.pull(sub, max, ack_deadline).await?,
            Queue::Local(q) => q.pull(sub, max, ack_deadline).await?,
        })
    }

    /// Sets the deadline of each lease to `deadline` from now: an extension, a hand-back now
    /// (`Duration::ZERO`: redelivered at once) or later (a delayed nack: the message comes
    /// back when the deadline passes). Returns the ack ids the backend knows are no longer
    /// leased to us (the embedded queue knows; Pub/Sub's at-least-once subscriptions never
    /// say, so there it is always empty).
    pub async fn modify_ack_deadline(
        &self,
        sub: &str,
        ack_ids: &[String],
        deadline: Duration,
    ) -> Result<Vec<String>, QueueError> {
        if ack_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match self {
            Queue::PubSub(q) => q.modify_ack_deadline(sub, ack_ids, deadline).await?,
            Queue::Local(q) => q.modify_ack_deadline(sub, ack_ids, deadline).await?,
        })
    }

    /// Acknowledges: the messages are consumed. A lost lease's ack changes nothing.
    pub async fn acknowledge(&self, sub: &str, ack_ids: &[String]) -> Result<(), QueueError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        match self {
            Queue::PubSub(q) => q.acknowledge(sub, ack_ids).await?,
            Queue::Local(q) => q.acknowledge(sub, ack_ids).await?,
        }
        Ok(())
    }

    /// Reads up to `max` messages from `sub` for at most `wait`, settles each one as told,
    /// and returns them. For short reads (tests, `taskhost status` on the dead-letter
    /// subscription), not for running jobs. Fewer than `max` (maybe none) when `wait` elapses.
    /// Nacked messages are handed back only at the end, so none is read twice.
    pub async fn pull_some(
        &self,
        sub: &str,
        max: usize,
        wait: Duration,
        settle: Settle,
    ) -> Result<Vec<IncomingMessage>, QueueError> {
        /// Long enough that no message read here comes back before the end.
        const READ_LEASE: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        let mut to_nack = Vec::new();
        let result = loop {
            let want = max - messages.len();
            let batch = match self.pull(sub, want, READ_LEASE).await {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            let got = batch.len();
            let ack_ids: Vec<String> = batch.iter().map(|r| r.ack_id.clone()).collect();
            messages.extend(batch.into_iter().map(|r| r.message));
            match settle {
                Settle::Ack => {
                    if let Err(e) = self.acknowledge(sub, &ack_ids).await {
                        break Err(e);
                    }
                }
                Settle::Nack => to_nack.extend(ack_ids),
            }
            if messages.len() >= max || Instant::now() >= deadline {
                break Ok(());
            }
            if got == 0 {
                tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
            }
        };
        if let Err(e) = self
            .modify_ack_deadline(sub, &to_nack, Duration::ZERO)
            .await
        {
            tracing::warn!(subscription = sub, error = %e, "pull_some: could not hand messages back; they return when their lease lapses");
        }
        result.map(|()| messages)
    }
}
