//! Topics and subscriptions in the file, and a subscription's backlog.

use rusqlite::params;

use super::{
    Backlog, Fail, LocalQueue, LocalQueueError, MIN_LOCAL_ACK_DEADLINE_SECS, Policy, now_ms,
    read_policy, require_topic, resource_id,
};
use crate::queue::{Ensured, MAX_ACK_DEADLINE_SECS, SubscriptionSettings};

impl LocalQueue {
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
}
