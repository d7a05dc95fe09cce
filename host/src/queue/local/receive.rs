//! Receiving: `pull` leases ready deliveries under fresh lease tokens, `modify_ack_deadline`
//! and `acknowledge` change a delivery only while it carries the caller's token.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::publish::insert_message;
use super::{
    DEAD_LETTER_SOURCE_DELIVERY_COUNT, DEAD_LETTER_SOURCE_SUBSCRIPTION, DEAD_LETTERS_PER_PULL,
    Durability, Fail, LocalQueue, LocalQueueError, MIN_LOCAL_ACK_DEADLINE_SECS, new_token, now_ms,
    read_policy, resource_id,
};
use crate::queue::{IncomingMessage, MAX_ACK_DEADLINE_SECS, Received, Stamp};

/// A delivery leased by a pull: its message id and lease token (what its ack id encodes).
/// Not to be confused with a checkpoint claim (`checkpoint::claim`), which is ownership of a
/// job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LeasedDelivery {
    message_id: i64,
    token: i64,
}

impl LeasedDelivery {
    fn ack_id(self) -> String {
        format!("{}:{}", self.message_id, self.token)
    }

    fn parse(ack_id: &str) -> Option<LeasedDelivery> {
        let (m, t) = ack_id.split_once(':')?;
        Some(LeasedDelivery {
            message_id: m.parse().ok()?,
            token: t.parse().ok()?,
        })
    }
}

struct Pulled {
    leased: LeasedDelivery,
    attempts: u32,
    published_ms: i64,
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

fn deadline_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LocalQueue {
    /// The ack deadlines (seconds) the local queue accepts: 1..=600.
    pub fn ack_deadlines() -> std::ops::RangeInclusive<u32> {
        MIN_LOCAL_ACK_DEADLINE_SECS..=MAX_ACK_DEADLINE_SECS
    }

    /// The deadline an extension asking for `d` sets: `d`, at most 600 s.
    pub fn deadline_set(d: Duration) -> Duration {
        d.min(Duration::from_secs(MAX_ACK_DEADLINE_SECS.into()))
    }

    /// Leases at most `max` ready messages of `sub_id` (oldest message id first), each under
    /// a lease of `ack_deadline` (clamped to 1..=600 s), dead-lettering on the way those that
    /// reached their limit. Does not wait: an empty list when nothing is ready.
    ///
    /// Cancel-safe: if this future is dropped while the lease runs, the leased messages are
    /// handed back with their attempt uncounted.
    pub async fn pull(
        &self,
        sub_id: &str,
        max: usize,
        ack_deadline: Duration,
    ) -> Result<Vec<Received>, LocalQueueError> {
        let sub = resource_id("pull", "subscriptions", sub_id)?;
        let deadline = Duration::from_secs(ack_deadline.as_secs().clamp(
            MIN_LOCAL_ACK_DEADLINE_SECS.into(),
            MAX_ACK_DEADLINE_SECS.into(),
        ));
        let leased_until = Stamp::now().plus(deadline);
        let (tx, rx) = oneshot::channel();
        let queue = self.clone();
        let name = sub.clone();
        // Detached: it runs to the end even if this future is dropped, and then hands its
        // leases back if nobody took them.
        drop(tokio::task::spawn_blocking(move || {
            let leased = queue.lease_now(&name, max, deadline);
            if let Err(Ok(orphans)) = tx.send(leased) {
                queue.release_all(&name, orphans);
            }
        }));
        let mut pending = PendingPull {
            rx,
            queue: self.clone(),
            sub,
        };
        let leased = (&mut pending.rx).await.map_err(|_| {
            Fail::Invalid("the leasing thread panicked".into()).into_error("pull", sub_id)
        })??;
        Ok(leased
            .into_iter()
            .map(|c| Received {
                ack_id: c.leased.ack_id(),
                message: IncomingMessage {
                    message_id: c.leased.message_id.to_string(),
                    data: c.data,
                    attributes: c.attributes,
                    delivery_attempt: Some(c.attempts),
                    publish_time_ms: u64::try_from(c.published_ms).ok(),
                },
                leased_until,
            })
            .collect())
    }

    /// Moves the deadline of each lease to `deadline` from now (up to 600 s); zero hands the
    /// message back at once (or to the dead-letter topic, when it has reached its limit).
    /// Returns the ack ids whose lease is no longer ours (lapsed and pulled by someone else,
    /// acked, or handed back).
    pub async fn modify_ack_deadline(
        &self,
        sub_id: &str,
        ack_ids: &[String],
        deadline: Duration,
    ) -> Result<Vec<String>, LocalQueueError> {
        let sub = resource_id("modify ack deadline", "subscriptions", sub_id)?;
        let leased = parse_all("modify ack deadline", &sub, ack_ids)?;
        let deadline = LocalQueue::deadline_set(deadline);
        let name = sub.clone();
        let lost = self
            .write_with("modify ack deadline", &sub, Durability::Lazy, move |tx| {
                let now = now_ms();
                let mut lost = Vec::new();
                for c in leased {
                    let Some(attempts) = leased_attempts(tx, &name, c)? else {
                        lost.push(c.ack_id());
                        continue;
                    };
                    if !deadline.is_zero() {
                        tx.prepare_cached(
                            "UPDATE deliveries SET visible_at_ms = ?1
                             WHERE subscription = ?2 AND message_id = ?3",
                        )?
                        .execute(params![
                            now.saturating_add(deadline_ms(deadline)),
                            name,
                            c.message_id
                        ])?;
                        continue;
                    }
                    let policy = read_policy(tx, &name)?.ok_or_else(|| {
                        Fail::NotFound(format!("subscription `{name}` does not exist"))
                    })?;
                    match policy.dead_letter_due(attempts) {
                        Some(dlt) => dead_letter(tx, &name, c.message_id, attempts, dlt, now)?,
                        None => hand_back(tx, &name, c.message_id, attempts)?,
                    }
                }
                Ok(lost)
            })
            .await?;
        if deadline.is_zero() {
            self.inner.changed.notify_waiters();
        }
        Ok(lost)
    }

    /// Acknowledges: each delivery still leased under its token is deleted, for good once the
    /// next fsynced commit or checkpoint takes it to the disk (a process crash loses no ack;
    /// a power loss may undo the last few: see the module's "Durability"). A lost lease's ack
    /// changes nothing.
    pub async fn acknowledge(
        &self,
        sub_id: &str,
        ack_ids: &[String],
    ) -> Result<(), LocalQueueError> {
        let sub = resource_id("acknowledge", "subscriptions", sub_id)?;
        let leased = parse_all("acknowledge", &sub, ack_ids)?;
        let name = sub.clone();
        self.write_with("acknowledge", &sub, Durability::Lazy, move |tx| {
            for c in leased {
                let deleted = tx
                    .prepare_cached(
                        "DELETE FROM deliveries
                         WHERE subscription = ?1 AND message_id = ?2 AND lease_token = ?3",
                    )?
                    .execute(params![name, c.message_id, c.token])?;
                if deleted == 1 {
                    drop_orphan_message(tx, c.message_id)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Leases up to `max` ready messages. Blocking.
    fn lease_now(
        &self,
        sub: &str,
        max: usize,
        deadline: Duration,
    ) -> Result<Vec<Pulled>, LocalQueueError> {
        // A cheap read first: most polls find nothing and need no write lock.
        let ready = self
            .with_conn(|conn| {
                if read_policy(conn, sub)?.is_none() {
                    return Err(Fail::NotFound(format!(
                        "subscription `{sub}` does not exist"
                    )));
                }
                Ok(conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM deliveries
                                    WHERE subscription = ?1 AND visible_at_ms <= ?2)",
                    params![sub, now_ms()],
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .map_err(|f| f.into_error("pull", sub))?;
        if !ready {
            return Ok(Vec::new());
        }
        let leased = self.write_now("pull", sub, Durability::Lazy, |tx| {
            let now = now_ms();
            let policy = read_policy(tx, sub)?
                .ok_or_else(|| Fail::NotFound(format!("subscription `{sub}` does not exist")))?;
            purge_expired(tx, sub, now.saturating_sub(policy.retention_ms))?;
            let mut dead_lettered = 0;
            let mut leased = Vec::new();
            while leased.len() < max {
                let next: Option<(i64, u32, i64)> = tx
                    .prepare_cached(
                        "SELECT message_id, attempts, published_ms FROM deliveries
                         WHERE subscription = ?1 AND visible_at_ms <= ?2
                         ORDER BY message_id LIMIT 1",
                    )?
                    .query_row(params![sub, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((message_id, attempts, published_ms)) = next else {
                    break;
                };
                if let Some(dlt) = policy.dead_letter_due(attempts) {
                    if dead_lettered == DEAD_LETTERS_PER_PULL {
                        break;
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
                    now.saturating_add(deadline_ms(deadline)),
                    token,
                    std::process::id()
                ])?;
                let (data, attributes) = read_message(tx, message_id)?;
                leased.push(Pulled {
                    leased: LeasedDelivery { message_id, token },
                    attempts,
                    published_ms,
                    data,
                    attributes,
                });
            }
            Ok(leased)
        })?;
        Ok(leased)
    }

    /// Hands back leases nobody received, uncounting their attempt. Blocking; best effort (a
    /// lease that cannot be released lapses by itself).
    fn release_all(&self, sub: &str, orphans: Vec<Pulled>) {
        let released = self.write_now("release", sub, Durability::Lazy, |tx| {
            for c in &orphans {
                if let Some(attempts) = leased_attempts(tx, sub, c.leased)? {
                    hand_back(tx, sub, c.leased.message_id, attempts.saturating_sub(1))?;
                }
            }
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, "the messages will come back when their lease lapses");
        }
    }
}

/// The receiving end of a pull's leases: if the pull's future is dropped after the leasing
/// thread sent its leases but before they were taken, they are handed back here.
struct PendingPull {
    rx: oneshot::Receiver<Result<Vec<Pulled>, LocalQueueError>>,
    queue: LocalQueue,
    sub: String,
}

impl Drop for PendingPull {
    fn drop(&mut self) {
        // Closed first: a send after this fails and the leasing thread hands its leases back
        // itself; one before it is taken here. Without it, leases sent between the take and
        // the receiver's drop would be dropped with it, held by nobody until their deadline.
        self.rx.close();
        if let Ok(Ok(orphans)) = self.rx.try_recv()
            && !orphans.is_empty()
        {
            let (queue, sub) = (self.queue.clone(), std::mem::take(&mut self.sub));
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || queue.release_all(&sub, orphans))),
                Err(_) => queue.release_all(&sub, orphans),
            }
        }
    }
}

fn parse_all(
    operation: &'static str,
    sub: &str,
    ack_ids: &[String],
) -> Result<Vec<LeasedDelivery>, LocalQueueError> {
    ack_ids
        .iter()
        .map(|a| {
            LeasedDelivery::parse(a).ok_or_else(|| {
                Fail::Invalid(format!("`{a}` is not an ack id of this queue"))
                    .into_error(operation, sub)
            })
        })
        .collect()
}

/// The delivery's attempt count if it is still leased under `leased`'s token.
fn leased_attempts(
    conn: &Connection,
    sub: &str,
    leased: LeasedDelivery,
) -> Result<Option<u32>, Fail> {
    Ok(conn
        .prepare_cached(
            "SELECT attempts FROM deliveries
             WHERE subscription = ?1 AND message_id = ?2 AND lease_token = ?3",
        )?
        .query_row(params![sub, leased.message_id, leased.token], |r| r.get(0))
        .optional()?)
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
/// Drops a subscription's deliveries published before `?2` (every pull runs it: the index
/// `deliveries_by_age` keeps it from scanning the whole backlog).
pub(super) const PURGE_EXPIRED: &str =
    "DELETE FROM deliveries WHERE subscription = ?1 AND published_ms < ?2
     RETURNING message_id";

fn purge_expired(conn: &Connection, sub: &str, published_before: i64) -> Result<(), Fail> {
    let expired: Vec<i64> = conn
        .prepare_cached(PURGE_EXPIRED)?
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
