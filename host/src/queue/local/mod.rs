//! The embedded queue: Pub/Sub's lease, delivery-attempt and dead-letter semantics in one
//! SQLite file, for `taskhost demo` and single-machine use (no server, no cloud, no Java).
//!
//! It offers the calls of `crate::queue::Queue` with the same meaning as on Pub/Sub:
//! - `mod.rs`: the file (open, schema, connection pool, transactions) and [`LocalQueueError`];
//! - `admin.rs`: `ensure_topic`, `ensure_subscription`, `backlog`;
//! - `publish.rs`: `publish` (fan-out to the topic's subscriptions, all or none);
//! - `receive.rs`: `pull`, `modify_ack_deadline`, `acknowledge`, and dead-lettering.
//!
//! Several processes (and several [`LocalQueue`]s in one process) may use one file at once:
//! SQLite in WAL mode, every write a `BEGIN IMMEDIATE` transaction, a [`BUSY_TIMEOUT`] for the
//! write lock. The file must be on a local filesystem (WAL needs shared memory between the
//! processes: not NFS).
//!
//! # Invariants
//! - **A message is leased to at most one puller at a time**, across threads and processes. A
//!   pull is one `BEGIN IMMEDIATE` transaction that picks ready rows and stamps each with a
//!   fresh random lease token; the ack id is `<message id>:<token>`. Extensions, acks and
//!   nacks change a row only while it still carries that token: a holder whose lease lapsed
//!   and was pulled by someone else changes nothing any more, and `modify_ack_deadline` says
//!   so (its lease is reported lost).
//! - **Every hand-out is a delivery attempt**: the pull's transaction increments `attempts`,
//!   and `IncomingMessage::delivery_attempt` is its new value (1 for the first delivery).
//! - **With a dead-letter topic, a message is handed out at most `max_delivery_attempts`
//!   times.** Then, instead of an (n+1)-th delivery, it is published to the dead-letter topic
//!   (fanned out to that topic's subscriptions, under a new message id) and removed from the
//!   subscription, in one transaction: never lost, never in both.
//! - **An acked message never comes back** once the ack's write committed (its row is
//!   deleted), unless its lease had already been lost when the ack ran, or a power loss
//!   undid the commit before it reached the disk (see "Durability").
//! - SQLite is only called on blocking threads (`spawn_blocking`), never on the async threads.
//!
//! **API boundary:** only this module knows the file's schema. It imports nothing from the
//! Pub/Sub backend.
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
//! indexes       deliveries(message_id), deliveries(subscription, published_ms) (the second
//!                made on open where missing: files of version 1 made before it get it)
//! ```
//! `publish` inserts one `messages` row and one `deliveries` row per subscription of the topic
//! (a topic without subscriptions drops the message, as Pub/Sub does). A delivery is *ready*
//! when `visible_at_ms <= now`; a pull sets `visible_at_ms = now + ack deadline` and a new
//! `lease_token`; an extension or a delayed nack moves `visible_at_ms`; a nack now sets it to 0
//! and clears the token; an ack deletes the row. A `messages` row goes when its last delivery
//! does. Message ids are the `messages` row ids (never reused), as decimal strings. Times are
//! wall-clock milliseconds since the Unix epoch, shared by every process on the machine.
//!
//! # Durability
//! `ensure_*` and `publish` are on disk when they return (`synchronous = FULL`).
//! Pulls, extensions, nacks and acks are committed without waiting for the disk
//! (`synchronous = NORMAL`; the next fsynced commit or checkpoint takes them along): a
//! process crash loses none of them, a power loss may undo the last few, which only hands a
//! message out again, never loses one. An undone ack is a redelivery, as Pub/Sub's
//! at-least-once delivery allows: the worker acks a job only once its result is durable, so
//! the copy finds the result and is acked as "already done" without running (a dead-lettered
//! message may be dead-lettered twice). Every write is one transaction: all of it or
//! nothing.
//!
//! # Differences from Pub/Sub
//! - Ack deadlines from [`MIN_LOCAL_ACK_DEADLINE_SECS`] (1 s) are accepted, below Pub/Sub's
//!   10 s minimum, so tests of lapsed leases are fast; the maximum is Pub/Sub's 600 s.
//!   `max_delivery_attempts` may be any value from 1 (Pub/Sub: 5..=100), and
//!   `message_retention` any non-zero duration (Pub/Sub: 10 minutes..=31 days).
//! - `IncomingMessage::delivery_attempt` is always `Some`: the count is kept with or
//!   without a dead-letter policy (Pub/Sub reports `None` without one).
//! - A lost lease is reported by `modify_ack_deadline` (Pub/Sub at-least-once: never).
//! - `publish` is atomic: all messages or none.
//! - Unacked messages older than the subscription's retention are dropped when the
//!   subscription is next pulled from, not on a timer.
//! - Dead-lettered copies carry the attributes `CloudPubSubDeadLetterSourceSubscription` and
//!   `CloudPubSubDeadLetterSourceDeliveryCount`, as Pub/Sub's do (not the other
//!   `CloudPubSubDeadLetterSource*` ones).

mod admin;
mod error;
mod publish;
mod receive;

pub use error::LocalQueueError;
use error::{Fail, is_busy};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::Notify;

/// Smallest ack deadline the local queue accepts: 1 s (Pub/Sub's is 10 s).
pub const MIN_LOCAL_ACK_DEADLINE_SECS: u32 = 1;
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
/// Dead-letterings done by one pull before it gives up the write lock for a while.
const DEAD_LETTERS_PER_PULL: usize = 100;

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

/// Indexes added since version 1, made on every open (where missing): they change no
/// answer, so a file with them stays version 1 and an older taskhost still opens it.
const LATER_INDEXES: &str = "
-- Every pull first drops the subscription's messages past their retention: without this
-- index that scanned all its deliveries, a pull's cost growing with the backlog.
CREATE INDEX IF NOT EXISTS deliveries_by_age ON deliveries(subscription, published_ms);
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

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on a blocking thread; commits if it is
    /// `Ok`, on disk before this returns.
    async fn write<T: Send + 'static>(
        &self,
        operation: &'static str,
        resource: &str,
        f: impl FnOnce(&Connection) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, LocalQueueError> {
        self.write_with(operation, resource, Durability::Fsync, f)
            .await
    }

    /// [`LocalQueue::write`] with the given durability.
    async fn write_with<T: Send + 'static>(
        &self,
        operation: &'static str,
        resource: &str,
        durability: Durability,
        f: impl FnOnce(&Connection) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, LocalQueueError> {
        let queue = self.clone();
        let resource = resource.to_string();
        blocking(move || queue.write_now(operation, &resource, durability, f)).await
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
                    tx.execute_batch(LATER_INDEXES)?;
                    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                }
                SCHEMA_VERSION => tx.execute_batch(LATER_INDEXES)?,
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

/// When a committed write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Before the commit returns (`synchronous = FULL`): publishes, admin calls.
    Fsync,
    /// At the next fsynced commit or checkpoint (`synchronous = NORMAL`, still atomic and
    /// safe from corruption): leases, extensions, nacks, releases, acks. A power loss can
    /// undo the last of them, which only hands a message out again, never loses one (an
    /// acked job's result is durable before its ack).
    Lazy,
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

/// Wall-clock milliseconds since the Unix epoch, as SQLite stores them.
fn now_ms() -> i64 {
    i64::try_from(crate::time::now_ms()).unwrap_or(i64::MAX)
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

#[cfg(test)]
mod tests;
