//! The embedded queue: Pub/Sub's lease, delivery-attempt and dead-letter semantics in one
//! SQLite file, for `taskhost demo` and single-machine use (no server, no cloud, no Java).
//!
//! It mirrors [`crate::pubsub`] call for call, with that module's types
//! ([`OutgoingMessage`], [`IncomingMessage`], [`Ensured`], [`SubscriptionSettings`],
//! [`SubscribeSettings`], [`Settle`]), so the worker can run on either:
//!
//! | `pubsub`                     | `localqueue`                         |
//! |------------------------------|--------------------------------------|
//! | `Pubsub::connect(&config)`   | [`LocalQueue::open`]`(path)`         |
//! | `ensure_topic`, `ensure_subscription`, `publish`, `subscribe`, `pull_some` | the same names on [`LocalQueue`] |
//! | `Subscription::{next, shutdown}` | [`LocalSubscription::next`], [`LocalSubscription::shutdown`] |
//! | `Delivery { message, handle }` | [`LocalDelivery`] `{ message, handle }` |
//! | `LeaseHandle::{ack, nack}`, drop = nack | [`LocalLease::ack`], [`LocalLease::nack`], drop = nack |
//!
//! Several processes (and several [`LocalQueue`]s in one process) may use one file at once:
//! SQLite in WAL mode, every write a `BEGIN IMMEDIATE` transaction, a [`BUSY_TIMEOUT`] for the
//! write lock. The file must be on a local filesystem (WAL needs shared memory between the
//! processes: not NFS).
//!
//! # Invariants
//! - **A message is leased to at most one [`LocalLease`] at a time**, across threads and
//!   processes. A claim is one `BEGIN IMMEDIATE` transaction that picks a ready row and stamps
//!   it with a fresh random lease token; extensions, acks and nacks change the row only while
//!   it still carries that token. A holder whose lease lapsed and was claimed by someone else
//!   changes nothing any more (its ack or nack is a no-op, like an expired ack ID on Pub/Sub).
//! - **Every hand-out is a delivery attempt**: the claim's transaction increments `attempts`,
//!   and [`IncomingMessage::delivery_attempt`] is its new value (1 for the first delivery).
//!   A nack, a dropped [`LocalLease`] and a lapsed lease all lead to one more attempt; a
//!   [`LocalSubscription::next`] future cancelled while it was claiming hands its message back
//!   uncounted.
//! - **With a dead-letter topic, a message is handed out at most `max_delivery_attempts`
//!   times.** Then, instead of an (n+1)-th delivery, it is published to the dead-letter topic
//!   (fanned out to that topic's subscriptions, under a new message id) and removed from the
//!   subscription, in one transaction: never lost, never in both.
//! - **An acked message never comes back** once the ack's write committed (its row is
//!   deleted), unless its lease had already been lost when the ack ran. [`LocalLease::ack`]
//!   returns before that write; [`LocalSubscription::shutdown`] waits for it.
//! - SQLite is only called on blocking threads (`spawn_blocking`), never on the async threads.
//!
//! **API boundary:** only this module knows the file's schema. Callers see ids, the `pubsub`
//! message types and [`LocalLease`].
//!
//! # Schema (`PRAGMA user_version` = 1)
//! ```sql
//! topics        (name PK)
//! subscriptions (name PK, topic, ack_deadline_secs, dead_letter_topic NULL,
//!                max_delivery_attempts, retention_ms)
//! messages      (id INTEGER PK AUTOINCREMENT, topic, data BLOB, attributes TEXT (JSON object),
//!                published_ms)
//! deliveries    (subscription, message_id, attempts, visible_at_ms, lease_token NULL,
//!                lease_pid NULL, published_ms;  PK (subscription, message_id))
//! ```
//! `publish` inserts one `messages` row and one `deliveries` row per subscription of the topic
//! (a topic without subscriptions drops the message, as Pub/Sub does). A delivery is *ready*
//! when `visible_at_ms <= now`; a claim sets `visible_at_ms = now + ack deadline` and a new
//! `lease_token`; an extension moves `visible_at_ms`; a nack sets it to 0 and clears the token;
//! an ack deletes the row. A `messages` row goes when its last delivery does. Message ids are
//! the `messages` row ids (never reused), as decimal strings. Times are wall-clock
//! milliseconds since the Unix epoch, shared by every process on the machine (a clock step
//! moves every lease's deadline by as much).
//!
//! # Durability
//! `ensure_*`, `publish` and acks are on disk when they return (`synchronous = FULL`).
//! Claims, extensions and nacks are committed without waiting for the disk
//! (`synchronous = NORMAL`; the next fsynced commit or checkpoint takes them along): a
//! process crash loses none of them, a power loss may undo the last few, which only hands a
//! message out again, never loses one. Every write is one transaction: all of it or nothing.
//!
//! # Leases and their extension
//! Each [`LocalSubscription`] has one tokio task that, every third of the ack deadline, moves
//! the deadline of every live lease of that subscription to `now + ack deadline`, without
//! limit: a job can hold its message for hours. The task (and so the lease) lives as long as
//! the subscription or any of its [`LocalLease`]s does. A process that dies sends nothing: its
//! leases lapse at most one ack deadline after their last extension, and the messages are
//! handed to the next claimer with the attempt count incremented. A lease that lapsed but was
//! not claimed again is simply extended again (its token still matches). The task must keep
//! being polled (the task runtime yields to tokio every ~1 ms for exactly this reason).
//!
//! # Differences from Pub/Sub
//! - Ack deadlines from [`MIN_LOCAL_ACK_DEADLINE_SECS`] (1 s) are accepted, below Pub/Sub's
//!   10 s minimum, so tests of lapsed leases are fast; the maximum is Pub/Sub's 600 s.
//!   `max_delivery_attempts` may be any value from 1 (Pub/Sub: 5..=100), and
//!   `message_retention` any non-zero duration (Pub/Sub: 10 minutes..=31 days).
//! - [`IncomingMessage::delivery_attempt`] is always `Some`: the count is kept with or
//!   without a dead-letter policy (Pub/Sub reports `None` without one).
//! - Acks and nacks are reliable (a transaction, retried on a busy database), not best
//!   effort; an ack is fsynced.
//! - `publish` is atomic: all messages or none.
//! - Nothing is prefetched, so there is no inbox and [`SubscribeSettings::hand_back_after`]
//!   has nothing to act on: a message is claimed only for a free slot.
//! - Subscribers poll the file every [`POLL_INTERVAL`] (a cheap read; the write lock is taken
//!   only when a message is ready); a publish, nack or ack in the same [`LocalQueue`] wakes its
//!   subscribers at once.
//! - Unacked messages older than the subscription's retention are dropped when the
//!   subscription is next pulled from, not on a timer.
//! - Dead-lettered copies carry the attributes `CloudPubSubDeadLetterSourceSubscription` and
//!   `CloudPubSubDeadLetterSourceDeliveryCount`, as Pub/Sub's do (not the other
//!   `CloudPubSubDeadLetterSource*` ones).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::pubsub::{
    Ensured, IncomingMessage, MAX_ACK_DEADLINE_SECS, OutgoingMessage, Settle, SubscribeSettings,
    SubscriptionSettings,
};

/// Smallest ack deadline the local queue accepts: 1 s (Pub/Sub's is 10 s).
pub const MIN_LOCAL_ACK_DEADLINE_SECS: u32 = 1;
/// How often a waiting [`LocalSubscription::next`] looks for a ready message: 50 ms.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one SQLite call waits for another connection's write lock before failing with a
/// transient error: 10 s.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attribute of a dead-lettered copy: the subscription it was dead-lettered from.
pub const DEAD_LETTER_SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
/// Attribute of a dead-lettered copy: how many times it had been delivered.
pub const DEAD_LETTER_SOURCE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// The schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Connections kept open for reuse per [`LocalQueue`].
const MAX_POOLED_CONNECTIONS: usize = 4;
/// Dead-letterings done by one claim before it gives up the write lock for a while.
const DEAD_LETTERS_PER_CLAIM: usize = 100;
/// Tries of an ack, nack or release that fails with a busy database.
const SETTLE_TRIES: u32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY NOT NULL,
    topic TEXT NOT NULL REFERENCES topics(name),
    ack_deadline_secs INTEGER NOT NULL,
    dead_letter_topic TEXT REFERENCES topics(name),
    max_delivery_attempts INTEGER NOT NULL,
    retention_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    published_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    subscription TEXT NOT NULL REFERENCES subscriptions(name),
    message_id INTEGER NOT NULL REFERENCES messages(id),
    attempts INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    lease_token INTEGER,
    lease_pid INTEGER,
    published_ms INTEGER NOT NULL,
    PRIMARY KEY (subscription, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries(message_id);
";

/// A queue in one SQLite file: topics, subscriptions, messages and their leases. Cheap to
/// clone (the clones share a small connection pool).
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    /// Signalled after every publish, ack, nack and dead-lettering through this queue: wakes
    /// this queue's waiting subscribers before their next poll.
    changed: Notify,
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// How many messages of a subscription wait, and how many are leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Ready to be handed out now (new, nacked, or whose lease lapsed).
    pub ready: u64,
    /// Under a lease that has not lapsed.
    pub leased: u64,
}

impl LocalQueue {
    /// Opens the queue file at `path`, creating it (and its parent directories) and the schema
    /// if need be, and switches it to WAL mode.
    ///
    /// Errors: the file cannot be created or opened, is not a SQLite database, or holds a
    /// schema version this build does not know (a newer taskhost made it).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, LocalQueueError> {
        let path = path.as_ref().to_path_buf();
        let queue = Self {
            inner: Arc::new(Inner {
                path,
                pool: Mutex::new(Vec::new()),
                changed: Notify::new(),
            }),
        };
        let q = queue.clone();
        blocking(move || {
            let shown = q.inner.path.display().to_string();
            q.init().map_err(|f| f.into_error("open", &shown))
        })
        .await?;
        Ok(queue)
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, LocalQueueError> {
        let topic = resource_id("create topic", "topics", topic_id)?;
        let name = topic.clone();
        let ensured = self
            .write("create topic", &topic, move |tx| {
                let created = tx.execute(
                    "INSERT OR IGNORE INTO topics (name) VALUES (?1)",
                    params![name],
                )?;
                Ok(if created == 1 {
                    Ensured::Created
                } else {
                    Ensured::Found
                })
            })
            .await?;
        if ensured == Ensured::Created {
            tracing::info!(%topic, queue = %self.inner.path.display(), "created local topic");
        }
        Ok(ensured)
    }

    /// Creates the subscription on `topic_id` with `settings` unless it exists.
    ///
    /// The topic and the dead-letter topic must exist ([`LocalQueueError::is_not_found`]).
    /// `settings.ack_deadline_secs` must be in
    /// [`MIN_LOCAL_ACK_DEADLINE_SECS`]..=[`MAX_ACK_DEADLINE_SECS`], `max_delivery_attempts` at
    /// least 1 when there is a dead-letter topic, and `message_retention` non-zero. The
    /// subscription receives only messages published after it was created. An existing
    /// subscription is left unchanged: attached to another topic it is an error; other
    /// differing settings are logged as warnings.
    pub async fn ensure_subscription(
        &self,
        sub_id: &str,
        topic_id: &str,
        settings: &SubscriptionSettings,
    ) -> Result<Ensured, LocalQueueError> {
        const OP: &str = "create subscription";
        let name = resource_id(OP, "subscriptions", sub_id)?;
        let topic = resource_id(OP, "topics", topic_id)?;
        let dead_letter = match &settings.dead_letter_topic_id {
            Some(t) => Some(resource_id(OP, "topics", t)?),
            None => None,
        };
        let invalid = |detail: String| Err(Fail::Invalid(detail).into_error(OP, &name));
        let ack = settings.ack_deadline_secs;
        if !(MIN_LOCAL_ACK_DEADLINE_SECS..=MAX_ACK_DEADLINE_SECS).contains(&ack) {
            return invalid(format!(
                "ack_deadline_secs must be in {MIN_LOCAL_ACK_DEADLINE_SECS}..={MAX_ACK_DEADLINE_SECS}, not {ack}"
            ));
        }
        let attempts = settings.max_delivery_attempts;
        if dead_letter.is_some() && attempts == 0 {
            return invalid("max_delivery_attempts must be at least 1".to_string());
        }
        let retention_ms =
            i64::try_from(settings.message_retention.as_millis()).unwrap_or(i64::MAX);
        if retention_ms == 0 {
            return invalid("message_retention must not be zero".to_string());
        }
        let wanted = Policy {
            topic,
            ack_deadline_secs: ack,
            dead_letter_topic: dead_letter,
            max_delivery_attempts: attempts,
            retention_ms,
        };
        let sub = name.clone();
        let ensured = self
            .write(OP, &name, move |tx| {
                require_topic(tx, &wanted.topic)?;
                if let Some(dlt) = &wanted.dead_letter_topic {
                    require_topic(tx, dlt).map_err(|f| match f {
                        Fail::NotFound(d) => Fail::NotFound(format!("dead-letter {d}")),
                        other => other,
                    })?;
                }
                if let Some(existing) = read_policy(tx, &sub)? {
                    existing.compare(&wanted, &sub)?;
                    return Ok(Ensured::Found);
                }
                tx.execute(
                    "INSERT INTO subscriptions (name, topic, ack_deadline_secs, dead_letter_topic,
                         max_delivery_attempts, retention_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        sub,
                        wanted.topic,
                        wanted.ack_deadline_secs,
                        wanted.dead_letter_topic,
                        wanted.max_delivery_attempts,
                        wanted.retention_ms
                    ],
                )?;
                Ok(Ensured::Created)
            })
            .await?;
        if ensured == Ensured::Created {
            tracing::info!(subscription = %name, topic = %topic_id, "created local subscription");
        }
        Ok(ensured)
    }

    /// Publishes `messages` to `topic_id`, all or none, and returns their message ids in order.
    ///
    /// Each message is delivered to every subscription the topic has now; with none, it is
    /// dropped (its id is still returned). Errors: the topic does not exist
    /// ([`LocalQueueError::is_not_found`]) or the write failed; then nothing was published.
    pub async fn publish(
        &self,
        topic_id: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, LocalQueueError> {
        let topic = resource_id("publish", "topics", topic_id)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let name = topic.clone();
        let ids = self
            .write("publish", &topic, move |tx| {
                require_topic(tx, &name)?;
                let now = now_ms();
                messages
                    .iter()
                    .map(|m| insert_message(tx, &name, &m.data, &m.attributes, now))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        self.inner.changed.notify_waiters();
        Ok(ids.into_iter().map(|id| id.to_string()).collect())
    }

    /// Opens a subscriber on `sub_id`: [`LocalSubscription::next`] claims messages one at a
    /// time, at most `settings.max_outstanding_messages` unsettled at once, each under a lease
    /// of `settings.ack_deadline_secs` (clamped to
    /// [`MIN_LOCAL_ACK_DEADLINE_SECS`]..=[`MAX_ACK_DEADLINE_SECS`]) extended for as long as its
    /// [`LocalLease`] lives. `hand_back_after` is not used (nothing is prefetched).
    ///
    /// Errors: the subscription does not exist ([`LocalQueueError::is_not_found`]).
    pub async fn subscribe(
        &self,
        sub_id: &str,
        settings: &SubscribeSettings,
    ) -> Result<LocalSubscription, LocalQueueError> {
        let name = resource_id("subscribe", "subscriptions", sub_id)?;
        let sub = name.clone();
        self.read("subscribe", &name, move |conn| {
            read_policy(conn, &sub)?
                .map(|_| ())
                .ok_or_else(|| Fail::NotFound(format!("subscription `{sub}` does not exist")))
        })
        .await?;
        let ack_deadline_secs = settings
            .ack_deadline_secs
            .clamp(MIN_LOCAL_ACK_DEADLINE_SECS, MAX_ACK_DEADLINE_SECS);
        let ack_deadline = Duration::from_secs(ack_deadline_secs.into());
        let slots = settings
            .max_outstanding_messages
            .clamp(1, Semaphore::MAX_PERMITS);
        let lessor = Arc::new(Lessor {
            queue: self.clone(),
            subscription: name.clone(),
            ack_deadline,
            live: Mutex::new(HashMap::new()),
        });
        tokio::spawn(extend_leases(Arc::downgrade(&lessor), ack_deadline / 3));
        let (tracker, settled) = mpsc::channel(1);
        Ok(LocalSubscription {
            lessor,
            slots: Arc::new(Semaphore::new(slots)),
            tracker: Some(tracker),
            settled,
            ended: false,
        })
    }

    /// Reads up to `max` messages from `sub_id` for at most `wait`, settles each one as told,
    /// and returns them. For short reads (tests, `taskhost status` on the dead-letter
    /// subscription), not for running jobs. Fewer than `max` (maybe none) when `wait` elapses.
    /// Each read counts a delivery attempt; with [`Settle::Nack`] the messages stay (and may
    /// reach their dead-letter limit). The acks and nacks are written before this returns.
    pub async fn pull_some(
        &self,
        sub_id: &str,
        max: usize,
        wait: Duration,
        settle: Settle,
    ) -> Result<Vec<IncomingMessage>, LocalQueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let settings = SubscribeSettings {
            max_outstanding_messages: max.max(1),
            ..SubscribeSettings::default()
        };
        let mut subscription = self.subscribe(sub_id, &settings).await?;
        let mut messages = Vec::new();
        // Nacked only at the end: a message nacked at once would come straight back.
        let mut to_nack = Vec::new();
        while messages.len() < max {
            let Ok(next) = tokio::time::timeout_at(deadline, subscription.next()).await else {
                break;
            };
            let Some(LocalDelivery { message, handle }) = next? else {
                break;
            };
            match settle {
                Settle::Ack => handle.ack(),
                Settle::Nack => to_nack.push(handle),
            }
            messages.push(message);
        }
        to_nack.into_iter().for_each(LocalLease::nack);
        subscription.shutdown().await;
        Ok(messages)
    }

    /// How many messages of `sub_id` are ready and how many are leased, now.
    pub async fn backlog(&self, sub_id: &str) -> Result<Backlog, LocalQueueError> {
        let name = resource_id("read backlog", "subscriptions", sub_id)?;
        let sub = name.clone();
        self.read("read backlog", &name, move |conn| {
            read_policy(conn, &sub)?
                .ok_or_else(|| Fail::NotFound(format!("subscription `{sub}` does not exist")))?;
            let (ready, leased): (i64, i64) = conn.query_row(
                "SELECT COALESCE(SUM(visible_at_ms <= ?2), 0), COALESCE(SUM(visible_at_ms > ?2), 0)
                 FROM deliveries WHERE subscription = ?1",
                params![sub, now_ms()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Backlog {
                ready: ready.try_into().unwrap_or(0),
                leased: leased.try_into().unwrap_or(0),
            })
        })
        .await
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on a blocking thread; commits if it is `Ok`.
    async fn write<T: Send + 'static>(
        &self,
        operation: &'static str,
        resource: &str,
        f: impl FnOnce(&Connection) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, LocalQueueError> {
        let queue = self.clone();
        let resource = resource.to_string();
        blocking(move || queue.write_now(operation, &resource, Durability::Fsync, f)).await
    }

    /// Runs `f` outside any explicit transaction on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        operation: &'static str,
        resource: &str,
        f: impl FnOnce(&Connection) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, LocalQueueError> {
        let queue = self.clone();
        let resource = resource.to_string();
        blocking(move || {
            queue
                .with_conn(|conn| f(conn))
                .map_err(|fail| fail.into_error(operation, &resource))
        })
        .await
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the current (blocking) thread; commits
    /// if it is `Ok`, with `durability`.
    fn write_now<T>(
        &self,
        operation: &'static str,
        resource: &str,
        durability: Durability,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, LocalQueueError> {
        self.with_conn(|conn| {
            let synchronous = match durability {
                Durability::Fsync => "FULL",
                Durability::Lazy => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", synchronous)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .map_err(|fail| fail.into_error(operation, resource))
    }

    /// Runs `f` with a pooled connection (a new one if none is free). Blocking.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Fail>) -> Result<T, Fail> {
        let pooled = self.lock_pool().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        let mut pool = self.lock_pool();
        if pool.len() < MAX_POOLED_CONNECTIONS {
            pool.push(conn);
        }
        result
    }

    fn lock_pool(&self) -> MutexGuard<'_, Vec<Connection>> {
        // A pool of idle connections stays consistent even if a holder panicked.
        self.inner.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection with the busy timeout, WAL, full sync and foreign keys. Blocking.
    fn connect(&self) -> Result<Connection, Fail> {
        let conn = Connection::open(&self.inner.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching to WAL needs a moment of exclusive access; the busy handler is not always
        // consulted for it, so a concurrent opener retries here. The mode is persistent: once
        // set on the file, this is a read.
        let mut tries = 0;
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
                Err(e) if is_busy(&e) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::Invalid(format!(
                "cannot switch the file to WAL mode (got `{mode}`): is it on a network filesystem?"
            )));
        }
        // `synchronous` is set per transaction (see `Durability`).
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(conn)
    }

    /// Creates the parent directory, the file and the schema. Blocking.
    fn init(&self) -> Result<(), Fail> {
        if let Some(parent) = self
            .inner
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Fail::Invalid(format!("cannot create {}: {e}", parent.display())))?;
        }
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            match version {
                0 => {
                    tx.execute_batch(SCHEMA)?;
                    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                }
                SCHEMA_VERSION => {}
                other => {
                    return Err(Fail::Invalid(format!(
                        "schema version {other}, this taskhost knows {SCHEMA_VERSION}: \
                         made by a newer taskhost?"
                    )));
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// An open subscriber: hands out at most `max_outstanding_messages` [`LocalDelivery`]s at a
/// time, claiming each from the file when a slot is free.
///
/// Dropping it stops pulling; the leases already handed out stay alive (and extended) until
/// their [`LocalLease`]s are acked, nacked or dropped.
#[derive(Debug)]
pub struct LocalSubscription {
    lessor: Arc<Lessor>,
    slots: Arc<Semaphore>,
    /// Cloned into every lease and every pending ack/nack write; [`LocalSubscription::shutdown`]
    /// drops this one and waits until `settled` reports that every clone is gone.
    tracker: Option<mpsc::Sender<()>>,
    settled: mpsc::Receiver<()>,
    /// A permanent error was returned: `next` answers `Ok(None)` from then on.
    ended: bool,
}

impl LocalSubscription {
    /// The subscription's id.
    pub fn name(&self) -> &str {
        &self.lessor.subscription
    }

    /// The ack deadline each claim and each extension sets, after clamping.
    pub fn ack_deadline(&self) -> Duration {
        self.lessor.ack_deadline
    }

    /// Waits for a free slot, then for the next ready message (oldest message id first), and
    /// claims it.
    ///
    /// `Ok(Some)`: a message under a fresh lease, its `delivery_attempt` counted. `Err`: a
    /// permanent error (the file became unreadable, the subscription vanished), returned once;
    /// `Ok(None)` from then on. A busy database is not an error: it is logged and retried.
    /// Cancel-safe: a message claimed for a `next()` that was dropped is handed back at once,
    /// and its attempt is not counted.
    pub async fn next(&mut self) -> Result<Option<LocalDelivery>, LocalQueueError> {
        if self.ended {
            return Ok(None);
        }
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        loop {
            // Enabled before the look, so a publish in this process between the look and the
            // wait still wakes us.
            let changed = self.lessor.queue.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.lessor.claim().await {
                Ok(Some(claimed)) => return Ok(Some(self.deliver(claimed, slot))),
                Ok(None) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(subscription = %self.name(), error = %e, "local queue busy; retrying");
                }
                Err(e) => {
                    self.ended = true;
                    return Err(e);
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Stops pulling, then waits until every handed-out message is acked, nacked or dropped
    /// and those writes are done. Call it before exiting so acks are not lost; it waits as
    /// long as any [`LocalLease`] of this subscription lives.
    pub async fn shutdown(mut self) {
        self.tracker = None;
        // `recv` answers `None` once every clone of the sender is gone; nothing is ever sent.
        while self.settled.recv().await.is_some() {}
    }

    fn deliver(&self, claimed: Claimed, slot: OwnedSemaphorePermit) -> LocalDelivery {
        self.lessor
            .lock_live()
            .insert(claimed.message_id, claimed.token);
        LocalDelivery {
            message: IncomingMessage {
                message_id: claimed.message_id.to_string(),
                data: claimed.data,
                attributes: claimed.attributes,
                delivery_attempt: Some(claimed.attempts),
            },
            handle: LocalLease {
                lessor: Arc::clone(&self.lessor),
                message_id: claimed.message_id,
                token: claimed.token,
                held: Some(Held {
                    slot,
                    tracker: self.tracker.clone(),
                }),
            },
        }
    }
}

/// A message handed out by a [`LocalSubscription`], with the lease on it.
#[derive(Debug)]
pub struct LocalDelivery {
    /// The message. `delivery_attempt` is always `Some`.
    pub message: IncomingMessage,
    /// The lease: kept and extended while this lives; ack, nack, or drop (= nack) it.
    pub handle: LocalLease,
}

/// The lease on one handed-out message, and one of the subscription's
/// `max_outstanding_messages` slots.
///
/// While it is alive its deadline is extended, without limit. `ack`, `nack` or dropping it
/// ends the lease and frees the slot at once; the write itself runs on a blocking thread (on
/// the current thread when called outside a tokio runtime), and
/// [`LocalSubscription::shutdown`] waits for it. Dropping it nacks the message, so a panicking
/// or cancelled job hands its message back at once. If the lease was lost in the meantime
/// (lapsed, then claimed by another subscriber), ack and nack change nothing.
#[derive(Debug)]
pub struct LocalLease {
    lessor: Arc<Lessor>,
    message_id: i64,
    token: i64,
    /// `None` once settled.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    slot: OwnedSemaphorePermit,
    tracker: Option<mpsc::Sender<()>>,
}

impl LocalLease {
    /// Acknowledges the message: it is deleted from the subscription and never delivered
    /// again.
    pub fn ack(mut self) {
        self.settle(Settlement::Ack);
    }

    /// Hands the message back now: it is ready for any subscriber at once, and its next
    /// delivery counts one more attempt. If it has been delivered `max_delivery_attempts`
    /// times and the subscription has a dead-letter topic, it goes there instead.
    pub fn nack(mut self) {
        self.settle(Settlement::Nack);
    }

    fn settle(&mut self, how: Settlement) {
        let Some(Held { slot, tracker }) = self.held.take() else {
            return;
        };
        self.lessor.lock_live().remove(&self.message_id);
        drop(slot);
        let lessor = Arc::clone(&self.lessor);
        let (message_id, token) = (self.message_id, self.token);
        run_detached(move || {
            lessor.settle_now(message_id, token, how);
            drop(tracker);
        });
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        self.settle(Settlement::Nack);
    }
}

/// When a committed write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Before the commit returns (`synchronous = FULL`): publishes, acks, admin calls.
    Fsync,
    /// At the next fsynced commit or checkpoint (`synchronous = NORMAL`, still atomic and
    /// safe from corruption): claims, extensions, nacks, releases. A power loss can undo the
    /// last of them, which only hands a message out again (sooner), never loses one.
    Lazy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    Ack,
    Nack,
    /// A claim nobody received: hand it back and uncount the attempt.
    Release,
}

/// One subscriber's leases: shared by the [`LocalSubscription`], its [`LocalLease`]s and its
/// extension task (which holds it weakly and stops when it is gone).
struct Lessor {
    queue: LocalQueue,
    subscription: String,
    ack_deadline: Duration,
    /// The live leases: message id → lease token.
    live: Mutex<HashMap<i64, i64>>,
}

impl fmt::Debug for Lessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lessor")
            .field("subscription", &self.subscription)
            .field("ack_deadline", &self.ack_deadline)
            .finish_non_exhaustive()
    }
}

/// A claim on its way to a [`LocalSubscription::next`] call: released (its attempt uncounted)
/// if it is dropped before that call took it, for example because the call was cancelled.
struct PendingClaim {
    claimed: Option<Claimed>,
    lessor: Arc<Lessor>,
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if let Some(orphan) = self.claimed.take() {
            let lessor = Arc::clone(&self.lessor);
            run_detached(move || {
                lessor.settle_now(orphan.message_id, orphan.token, Settlement::Release);
            });
        }
    }
}

/// A message claimed from the file.
struct Claimed {
    message_id: i64,
    token: i64,
    attempts: u32,
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

impl Lessor {
    fn lock_live(&self) -> MutexGuard<'_, HashMap<i64, i64>> {
        // Every update is one call: the map stays consistent even if a holder panicked.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline_ms(&self) -> i64 {
        i64::try_from(self.ack_deadline.as_millis()).unwrap_or(i64::MAX)
    }

    /// Claims the next ready message on a blocking thread. If the caller stops waiting (its
    /// future was dropped), the claim is released uncounted.
    async fn claim(self: &Arc<Self>) -> Result<Option<Claimed>, LocalQueueError> {
        let (tx, rx) = oneshot::channel();
        let lessor = Arc::clone(self);
        // Detached: it runs to the end even if this future is dropped.
        drop(tokio::task::spawn_blocking(move || {
            if tx.is_closed() {
                return;
            }
            let claimed = lessor.claim_now().map(|(claimed, dead_lettered)| {
                if dead_lettered > 0 {
                    lessor.queue.inner.changed.notify_waiters();
                }
                let pending = claimed.map(|c| PendingClaim {
                    claimed: Some(c),
                    lessor: Arc::clone(&lessor),
                });
                (pending, dead_lettered)
            });
            // If the receiver is gone, or goes before it takes the claim out, the claim's
            // drop releases it.
            let _ = tx.send(claimed);
        }));
        match rx.await {
            Ok(claimed) => claimed.map(|(pending, _)| pending.and_then(|mut p| p.claimed.take())),
            Err(_) => Err(Fail::Invalid("the claiming thread panicked".to_string())
                .into_error("claim", &self.subscription)),
        }
    }

    /// Claims the oldest ready message, dead-lettering on the way those that reached their
    /// limit. Returns the claim and how many were dead-lettered. Blocking.
    fn claim_now(&self) -> Result<(Option<Claimed>, usize), LocalQueueError> {
        let sub = &self.subscription;
        let to_error = |fail: Fail| fail.into_error("claim", sub);
        // A cheap read first: most polls find nothing and need no write lock.
        let ready = self
            .queue
            .with_conn(|conn| {
                Ok(conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM deliveries
                                    WHERE subscription = ?1 AND visible_at_ms <= ?2)",
                    params![sub, now_ms()],
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .map_err(to_error)?;
        if !ready {
            return Ok((None, 0));
        }
        let deadline_ms = self.deadline_ms();
        self.queue.write_now("claim", sub, Durability::Lazy, |tx| {
            let now = now_ms();
            let policy = read_policy(tx, sub)?
                .ok_or_else(|| Fail::NotFound(format!("subscription `{sub}` does not exist")))?;
            purge_expired(tx, sub, now.saturating_sub(policy.retention_ms))?;
            let mut dead_lettered = 0;
            loop {
                let next: Option<(i64, u32)> = tx
                    .prepare_cached(
                        "SELECT message_id, attempts FROM deliveries
                         WHERE subscription = ?1 AND visible_at_ms <= ?2
                         ORDER BY message_id LIMIT 1",
                    )?
                    .query_row(params![sub, now], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((message_id, attempts)) = next else {
                    return Ok((None, dead_lettered));
                };
                if let Some(dlt) = policy.dead_letter_due(attempts) {
                    if dead_lettered == DEAD_LETTERS_PER_CLAIM {
                        return Ok((None, dead_lettered));
                    }
                    dead_letter(tx, sub, message_id, attempts, dlt, now)?;
                    dead_lettered += 1;
                    continue;
                }
                let token = new_token();
                let attempts = attempts.saturating_add(1);
                tx.prepare_cached(
                    "UPDATE deliveries
                     SET attempts = ?3, visible_at_ms = ?4, lease_token = ?5, lease_pid = ?6
                     WHERE subscription = ?1 AND message_id = ?2",
                )?
                .execute(params![
                    sub,
                    message_id,
                    attempts,
                    now.saturating_add(deadline_ms),
                    token,
                    std::process::id()
                ])?;
                let (data, attributes) = read_message(tx, message_id)?;
                let claimed = Claimed {
                    message_id,
                    token,
                    attempts,
                    data,
                    attributes,
                };
                return Ok((Some(claimed), dead_lettered));
            }
        })
    }

    /// Moves the deadline of `leases` (message id, token) to now + the ack deadline. Returns
    /// the leases whose token no longer matches (lost). Blocking.
    fn extend_now(&self, leases: &[(i64, i64)]) -> Result<Vec<(i64, i64)>, LocalQueueError> {
        let sub = &self.subscription;
        let deadline_ms = self.deadline_ms();
        self.queue
            .write_now("extend leases", sub, Durability::Lazy, |tx| {
                let until = now_ms().saturating_add(deadline_ms);
                let mut extend = tx.prepare_cached(
                    "UPDATE deliveries SET visible_at_ms = ?1
                 WHERE subscription = ?2 AND message_id = ?3 AND lease_token = ?4",
                )?;
                let mut lost = Vec::new();
                for &(message_id, token) in leases {
                    if extend.execute(params![until, sub, message_id, token])? == 0 {
                        lost.push((message_id, token));
                    }
                }
                Ok(lost)
            })
    }

    /// Acks, nacks or releases one lease, retrying a busy database. Blocking; never fails:
    /// a lease that cannot be settled lapses by itself.
    fn settle_now(&self, message_id: i64, token: i64, how: Settlement) {
        let sub = &self.subscription;
        let operation = match how {
            Settlement::Ack => "ack",
            Settlement::Nack => "nack",
            Settlement::Release => "release",
        };
        for attempt in 1..=SETTLE_TRIES {
            let durability = match how {
                Settlement::Ack => Durability::Fsync,
                Settlement::Nack | Settlement::Release => Durability::Lazy,
            };
            let settled = self.queue.write_now(operation, sub, durability, |tx| {
                let attempts: Option<u32> = tx
                    .query_row(
                        "SELECT attempts FROM deliveries
                         WHERE subscription = ?1 AND message_id = ?2 AND lease_token = ?3",
                        params![sub, message_id, token],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(attempts) = attempts else {
                    return Ok(false);
                };
                match how {
                    Settlement::Ack => {
                        tx.execute(
                            "DELETE FROM deliveries WHERE subscription = ?1 AND message_id = ?2",
                            params![sub, message_id],
                        )?;
                        drop_orphan_message(tx, message_id)?;
                    }
                    Settlement::Nack => {
                        let policy = read_policy(tx, sub)?.ok_or_else(|| {
                            Fail::NotFound(format!("subscription `{sub}` does not exist"))
                        })?;
                        match policy.dead_letter_due(attempts) {
                            Some(dlt) => dead_letter(tx, sub, message_id, attempts, dlt, now_ms())?,
                            None => hand_back(tx, sub, message_id, attempts)?,
                        }
                    }
                    Settlement::Release => {
                        hand_back(tx, sub, message_id, attempts.saturating_sub(1))?;
                    }
                }
                Ok(true)
            });
            match settled {
                Ok(true) => break,
                Ok(false) => {
                    tracing::debug!(subscription = %sub, message_id, operation, "lease already lost; nothing to do");
                    break;
                }
                Err(e) if e.is_transient() && attempt < SETTLE_TRIES => {
                    tracing::debug!(error = %e, "retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the message will come back when its lease lapses");
                    break;
                }
            }
        }
        self.queue.inner.changed.notify_waiters();
    }
}

/// Every third of the ack deadline, extends the live leases of the [`Lessor`], until it is
/// gone (its subscription and all its leases dropped).
async fn extend_leases(lessor: Weak<Lessor>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(lessor) = lessor.upgrade() else {
            return;
        };
        let leases: Vec<(i64, i64)> = lessor.lock_live().iter().map(|(&m, &t)| (m, t)).collect();
        if leases.is_empty() {
            continue;
        }
        let extender = Arc::clone(&lessor);
        match blocking(move || extender.extend_now(&leases)).await {
            Ok(lost) => {
                let mut live = lessor.lock_live();
                for (message_id, token) in lost {
                    // Settled since the snapshot: not lost, just done.
                    if live.get(&message_id) != Some(&token) {
                        continue;
                    }
                    live.remove(&message_id);
                    tracing::warn!(
                        subscription = %lessor.subscription,
                        message_id,
                        "lease lost (it lapsed and another subscriber claimed the message); \
                         its ack or nack will change nothing"
                    );
                }
            }
            // Retried at the next tick; two more before the deadline passes.
            Err(e) => tracing::warn!(error = %e, "could not extend leases"),
        }
    }
}

/// A subscription's settings, as stored.
#[derive(Debug, PartialEq, Eq)]
struct Policy {
    topic: String,
    ack_deadline_secs: u32,
    dead_letter_topic: Option<String>,
    max_delivery_attempts: u32,
    retention_ms: i64,
}

impl Policy {
    /// The dead-letter topic, if a message delivered `attempts` times must go there instead of
    /// being delivered again.
    fn dead_letter_due(&self, attempts: u32) -> Option<&str> {
        self.dead_letter_topic
            .as_deref()
            .filter(|_| attempts >= self.max_delivery_attempts)
    }

    /// An existing subscription (`self`) against the wanted one: another topic is an error,
    /// other differences are warnings.
    fn compare(&self, wanted: &Policy, name: &str) -> Result<(), Fail> {
        if self.topic != wanted.topic {
            return Err(Fail::Invalid(format!(
                "exists on topic `{}`, not on `{}`; use another subscription id",
                self.topic, wanted.topic
            )));
        }
        if self != wanted {
            tracing::warn!(
                subscription = %name,
                existing = ?self,
                wanted = ?wanted,
                "existing local subscription has other settings; left unchanged"
            );
        }
        Ok(())
    }
}

fn read_policy(conn: &Connection, sub: &str) -> Result<Option<Policy>, Fail> {
    Ok(conn
        .prepare_cached(
            "SELECT topic, ack_deadline_secs, dead_letter_topic, max_delivery_attempts, retention_ms
             FROM subscriptions WHERE name = ?1",
        )?
        .query_row(params![sub], |r| {
            Ok(Policy {
                topic: r.get(0)?,
                ack_deadline_secs: r.get(1)?,
                dead_letter_topic: r.get(2)?,
                max_delivery_attempts: r.get(3)?,
                retention_ms: r.get(4)?,
            })
        })
        .optional()?)
}

fn require_topic(conn: &Connection, topic: &str) -> Result<(), Fail> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM topics WHERE name = ?1)",
        params![topic],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(Fail::NotFound(format!("topic `{topic}` does not exist")))
    }
}

/// Inserts a message and fans it out to the topic's subscriptions; drops it if there are
/// none. Returns its id.
fn insert_message(
    conn: &Connection,
    topic: &str,
    data: &[u8],
    attributes: &BTreeMap<String, String>,
    now: i64,
) -> Result<i64, Fail> {
    let attributes = serde_json::to_string(attributes)
        .map_err(|e| Fail::Invalid(format!("cannot encode attributes: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO messages (topic, data, attributes, published_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![topic, data, attributes, now])?;
    let id = conn.last_insert_rowid();
    let fanned_out = conn
        .prepare_cached(
            "INSERT INTO deliveries (subscription, message_id, attempts, visible_at_ms, published_ms)
             SELECT name, ?1, 0, 0, ?2 FROM subscriptions WHERE topic = ?3",
        )?
        .execute(params![id, now, topic])?;
    if fanned_out == 0 {
        conn.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
    }
    Ok(id)
}

fn read_message(
    conn: &Connection,
    message_id: i64,
) -> Result<(Vec<u8>, BTreeMap<String, String>), Fail> {
    let (data, attributes): (Vec<u8>, String) = conn
        .prepare_cached("SELECT data, attributes FROM messages WHERE id = ?1")?
        .query_row(params![message_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let attributes = serde_json::from_str(&attributes).map_err(|e| {
        Fail::Invalid(format!(
            "message {message_id} has unreadable attributes: {e}"
        ))
    })?;
    Ok((data, attributes))
}

/// Publishes a copy of the message to `dead_letter_topic` and removes it from `sub`.
fn dead_letter(
    conn: &Connection,
    sub: &str,
    message_id: i64,
    attempts: u32,
    dead_letter_topic: &str,
    now: i64,
) -> Result<(), Fail> {
    let (data, mut attributes) = read_message(conn, message_id)?;
    attributes.insert(DEAD_LETTER_SOURCE_SUBSCRIPTION.to_string(), sub.to_string());
    attributes.insert(
        DEAD_LETTER_SOURCE_DELIVERY_COUNT.to_string(),
        attempts.to_string(),
    );
    let copy = insert_message(conn, dead_letter_topic, &data, &attributes, now)?;
    conn.execute(
        "DELETE FROM deliveries WHERE subscription = ?1 AND message_id = ?2",
        params![sub, message_id],
    )?;
    drop_orphan_message(conn, message_id)?;
    tracing::info!(
        subscription = %sub,
        message_id,
        dead_letter_topic,
        dead_letter_message_id = copy,
        attempts,
        "moved a message to the dead-letter topic"
    );
    Ok(())
}

/// Makes a leased delivery ready now, with `attempts` delivery attempts counted.
fn hand_back(conn: &Connection, sub: &str, message_id: i64, attempts: u32) -> Result<(), Fail> {
    conn.execute(
        "UPDATE deliveries SET visible_at_ms = 0, lease_token = NULL, lease_pid = NULL,
             attempts = ?3
         WHERE subscription = ?1 AND message_id = ?2",
        params![sub, message_id, attempts],
    )?;
    Ok(())
}

/// Deletes the message if no subscription still holds it.
fn drop_orphan_message(conn: &Connection, message_id: i64) -> Result<(), Fail> {
    conn.prepare_cached(
        "DELETE FROM messages WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1)",
    )?
    .execute(params![message_id])?;
    Ok(())
}

/// Drops the deliveries of `sub` published before `published_before`.
fn purge_expired(conn: &Connection, sub: &str, published_before: i64) -> Result<(), Fail> {
    let expired: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE subscription = ?1 AND published_ms < ?2
             RETURNING message_id",
        )?
        .query_map(params![sub, published_before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !expired.is_empty() {
        tracing::info!(subscription = %sub, count = expired.len(), "dropped messages past their retention");
    }
    for message_id in expired {
        drop_orphan_message(conn, message_id)?;
    }
    Ok(())
}

/// A random lease token (nanoseconds, pid and a counter if the OS has no randomness).
fn new_token() -> i64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = getrandom::u64().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nanos ^ (u64::from(std::process::id()) << 32) ^ count.rotate_left(17)
    });
    token as i64
}

/// Wall-clock milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `id`, or the last segment of a full `projects/<p>/<kind>/<id>` name. Empty ids are refused.
fn resource_id(operation: &'static str, kind: &str, id: &str) -> Result<String, LocalQueueError> {
    let short = id
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_, rest)| rest.strip_prefix(kind))
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(id);
    if short.is_empty() {
        return Err(Fail::Invalid(format!("empty {kind} id")).into_error(operation, id));
    }
    Ok(short.to_string())
}

/// Runs `f` on tokio's blocking pool; a panic in `f` is resumed here.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LocalQueueError> + Send + 'static,
) -> Result<T, LocalQueueError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Fail::Invalid(format!("blocking task cancelled: {e}")).into_error("run", "")),
    }
}

/// Runs `f` on tokio's blocking pool without waiting, or right here outside a runtime.
fn run_detached(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(f)),
        Err(_) => f(),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Why an internal step failed, before it is labelled with the operation.
#[derive(Debug)]
enum Fail {
    Sql(Box<rusqlite::Error>),
    NotFound(String),
    Invalid(String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(Box::new(e))
    }
}

impl Fail {
    fn into_error(self, operation: &'static str, resource: &str) -> LocalQueueError {
        let (kind, detail, source) = match self {
            Fail::Sql(e) => {
                let kind = if is_busy(&e) {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Storage
                };
                (kind, e.to_string(), Some(e))
            }
            Fail::NotFound(d) => (ErrorKind::NotFound, d, None),
            Fail::Invalid(d) => (ErrorKind::Invalid, d, None),
        };
        LocalQueueError {
            operation,
            resource: resource.to_string(),
            detail,
            kind,
            source,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    NotFound,
    Invalid,
    Transient,
    Storage,
}

/// A failed local-queue operation: which operation, on which resource, and why.
///
/// `Display` is one line: ``local queue <operation> `<resource>`: <detail>``; the SQLite
/// error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct LocalQueueError {
    operation: &'static str,
    resource: String,
    detail: String,
    kind: ErrorKind,
    source: Option<Box<rusqlite::Error>>,
}

impl LocalQueueError {
    /// The operation that failed (`open`, `publish`, `claim`...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The topic, subscription or file concerned.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The topic or subscription (or one it refers to) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// A setting or id was refused, or the file is not a queue this build can use.
    pub fn is_invalid(&self) -> bool {
        self.kind == ErrorKind::Invalid
    }

    /// Worth retrying: another connection held the write lock longer than [`BUSY_TIMEOUT`].
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for LocalQueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource.is_empty() {
            write!(f, "local queue {}: {}", self.operation, self.detail)
        } else {
            write!(
                f,
                "local queue {} `{}`: {}",
                self.operation, self.resource, self.detail
            )
        }
    }
}

impl std::error::Error for LocalQueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads_and_errors_convert_to_anyhow() {
        fn shared<T: Send + Sync + 'static>() {}
        fn sent<T: Send + 'static>() {}
        shared::<LocalQueue>();
        shared::<LocalQueueError>();
        sent::<LocalSubscription>();
        sent::<LocalDelivery>();
        sent::<LocalLease>();
    }

    #[test]
    fn full_names_become_ids() {
        for (kind, name, want) in [
            ("topics", "jobs", Some("jobs")),
            ("topics", "projects/p/topics/jobs", Some("jobs")),
            ("subscriptions", "projects/p/subscriptions/w", Some("w")),
            // Another kind's path is kept whole: it is not a name of this kind.
            (
                "topics",
                "projects/p/subscriptions/w",
                Some("projects/p/subscriptions/w"),
            ),
            ("topics", "", None),
            ("topics", "projects/p/topics/", None),
        ] {
            let got = resource_id("test", kind, name).ok();
            assert_eq!(got.as_deref(), want, "{kind} {name}");
        }
    }

    #[test]
    fn dead_letter_is_due_at_the_limit_only_with_a_topic() {
        let mut policy = Policy {
            topic: "t".into(),
            ack_deadline_secs: 10,
            dead_letter_topic: Some("dead".into()),
            max_delivery_attempts: 3,
            retention_ms: 1,
        };
        assert_eq!(policy.dead_letter_due(2), None);
        assert_eq!(policy.dead_letter_due(3), Some("dead"));
        assert_eq!(policy.dead_letter_due(4), Some("dead"));
        policy.dead_letter_topic = None;
        assert_eq!(policy.dead_letter_due(100), None);
    }

    #[test]
    fn busy_errors_are_transient_others_are_not() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let err = Fail::from(busy).into_error("claim", "w");
        assert!(err.is_transient());
        assert_eq!(
            err.to_string().split(':').next(),
            Some("local queue claim `w`")
        );
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(!Fail::from(full).into_error("ack", "w").is_transient());
        assert!(
            Fail::NotFound("x".into())
                .into_error("a", "b")
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("queue.db");
        LocalQueue::open(&path).await.unwrap();
        // Reopening a current file is fine.
        LocalQueue::open(&path).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = LocalQueue::open(&path).await.unwrap_err();
        assert!(err.is_invalid(), "{err}");
        assert!(err.to_string().contains("newer taskhost"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = LocalQueue::open(&path).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("queue.db"), "{err}");
    }
}
