//! Publishing: one `messages` row per message, fanned out to the topic's subscriptions.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::{Fail, LocalQueue, LocalQueueError, now_ms, require_topic, resource_id};
use crate::queue::OutgoingMessage;

impl LocalQueue {
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
}

/// Inserts a message and fans it out to the topic's subscriptions; drops it if there are
/// none. Returns its id.
pub(super) fn insert_message(
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
