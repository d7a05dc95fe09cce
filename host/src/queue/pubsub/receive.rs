//! Receiving from Pub/Sub with the unary calls `Pull`, `ModifyAckDeadline` and
//! `Acknowledge` (gRPC, [`super::grpc`]; Pub/Sub and the emulator both serve them).
//!
//! Pulls return at once (`returnImmediately`): a pull that waited on the server could not be
//! abandoned without stranding whatever it was about to return (those messages would come
//! back only when their lease lapsed), and the worker must be able to stop receiving at once.
//! The worker waits between empty pulls instead.

use std::sync::Arc;
use std::time::Duration;

use super::grpc::{AcknowledgeRequest, Empty, ModifyAckDeadlineRequest, PullRequest, PullResponse};
use super::{MIN_ACK_DEADLINE_SECS, Pubsub, PubsubError};
use crate::queue::{IncomingMessage, MAX_ACK_DEADLINE_SECS, Received, Stamp};

/// At most this many ack ids per `ModifyAckDeadline` / `Acknowledge` call (Pub/Sub's request
/// size limit is 512 KB; an ack id is ~200 bytes).
const MAX_ACK_IDS_PER_CALL: usize = 1000;

impl Pubsub {
    /// The ack deadlines (seconds) this server accepts: Pub/Sub's 10..=600, the emulator's
    /// 1..=600.
    pub fn ack_deadlines(&self) -> std::ops::RangeInclusive<u32> {
        let min = if self.emulator {
            1
        } else {
            MIN_ACK_DEADLINE_SECS
        };
        min..=MAX_ACK_DEADLINE_SECS
    }

    /// The deadline a pull or an extension asking for `d` sets: whole seconds within
    /// [`Pubsub::ack_deadlines`].
    pub fn deadline_set(&self, d: Duration) -> Duration {
        let range = self.ack_deadlines();
        Duration::from_secs(
            d.as_secs()
                .clamp((*range.start()).into(), (*range.end()).into()),
        )
    }

    fn clamp_deadline(&self, d: Duration) -> u64 {
        self.deadline_set(d).as_secs()
    }

    pub(super) fn remember_deadline(&self, subscription: &str, secs: u64) {
        let mut known = self
            .known_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.insert(subscription.to_owned(), secs);
    }

    /// Leases at most `max` messages and sets their deadline to `ack_deadline` from now. The
    /// pull itself starts the subscription's deadline: when that is known to be
    /// `ack_deadline` (see `lookup_subscription`), nothing more is sent; else one
    /// `modifyAckDeadline` follows the pull.
    pub async fn pull(
        &self,
        sub_id: &str,
        max: usize,
        ack_deadline: Duration,
    ) -> Result<Vec<Received>, PubsubError> {
        let name = self.subscription_path(sub_id);
        let pulled_at = Stamp::now();
        let answer: PullResponse = self
            .grpc
            .call(
                "pull",
                &name,
                "Pull",
                PullRequest {
                    subscription: name.clone(),
                    return_immediately: true,
                    max_messages: max.min(i32::MAX as usize) as i32,
                },
            )
            .await?;
        if answer.received_messages.is_empty() {
            return Ok(Vec::new());
        }
        let ack_ids: Vec<String> = answer
            .received_messages
            .iter()
            .map(|r| r.ack_id.clone())
            .collect();
        let extended_at = Stamp::now();
        let deadline_secs = self.clamp_deadline(ack_deadline);
        let known = {
            let known = self
                .known_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.get(&name).copied()
        };
        let leased_until = if known == Some(deadline_secs) {
            pulled_at.plus(Duration::from_secs(deadline_secs))
        } else {
            self.extend_pulled(
                sub_id,
                &name,
                &ack_ids,
                ack_deadline,
                pulled_at,
                extended_at,
            )
            .await
        };

        Ok(answer
            .received_messages
            .into_iter()
            .map(|r| {
                let m = r.message.unwrap_or_default();
                Received {
                    message: IncomingMessage {
                        message_id: m.message_id,
                        data: m.data,
                        attributes: m.attributes,
                        delivery_attempt: u32::try_from(r.delivery_attempt).ok().filter(|&n| n > 0),
                        publish_time_ms: m.publish_time.and_then(|t| {
                            let ms = t.seconds.checked_mul(1000)? + i64::from(t.nanos / 1_000_000);
                            u64::try_from(ms).ok()
                        }),
                    },
                    ack_id: r.ack_id,
                    leased_until,
                }
            })
            .collect())
    }

    /// Sets the deadline of just-pulled messages; returns their guaranteed end.
    async fn extend_pulled(
        &self,
        sub_id: &str,
        name: &str,
        ack_ids: &[String],
        ack_deadline: Duration,
        pulled_at: Stamp,
        extended_at: Stamp,
    ) -> Stamp {
        let secs = self.clamp_deadline(ack_deadline);
        match self
            .modify_ack_deadline(sub_id, ack_ids, ack_deadline)
            .await
        {
            Ok(_) => extended_at.plus(Duration::from_secs(secs)),
            Err(e) => {
                // The subscription's own deadline still holds, at least Pub/Sub's minimum;
                // the lease keeper retries the extension at once.
                tracing::warn!(subscription = %name, error = %e, "could not set the deadline of pulled messages");
                pulled_at.plus(Duration::from_secs(MIN_ACK_DEADLINE_SECS.into()).min(ack_deadline))
            }
        }
    }

    /// Sets the deadline of `ack_ids` to `deadline` from now (zero: hand back now). Pub/Sub's
    /// at-least-once subscriptions accept expired ack ids silently, so no lease is ever
    /// reported lost here (an empty list).
    pub async fn modify_ack_deadline(
        &self,
        sub_id: &str,
        ack_ids: &[String],
        deadline: Duration,
    ) -> Result<Vec<String>, PubsubError> {
        let name = self.subscription_path(sub_id);
        let secs = if deadline.is_zero() {
            0
        } else {
            self.clamp_deadline(deadline)
        };
        for chunk in ack_ids.chunks(MAX_ACK_IDS_PER_CALL) {
            let _: Empty = self
                .grpc
                .call(
                    "modify ack deadline",
                    &name,
                    "ModifyAckDeadline",
                    ModifyAckDeadlineRequest {
                        subscription: name.clone(),
                        ack_deadline_seconds: secs as i32,
                        ack_ids: chunk.to_vec(),
                    },
                )
                .await?;
        }
        Ok(Vec::new())
    }

    /// Acknowledges `ack_ids` with the next `Acknowledge` call of `sub_id`: at once when none
    /// is in flight, else together with every ack that arrives before it returns (`acks.rs`).
    pub async fn acknowledge(&self, sub_id: &str, ack_ids: &[String]) -> Result<(), PubsubError> {
        let name = self.subscription_path(sub_id);
        let (grpc, called) = (Arc::clone(&self.grpc), name.clone());
        let send = move |ids: Vec<String>| {
            let (grpc, name) = (Arc::clone(&grpc), called.clone());
            async move {
                for chunk in ids.chunks(MAX_ACK_IDS_PER_CALL) {
                    let _: Empty = grpc
                        .call(
                            "acknowledge",
                            &name,
                            "Acknowledge",
                            AcknowledgeRequest {
                                subscription: name.clone(),
                                ack_ids: chunk.to_vec(),
                            },
                        )
                        .await?;
                }
                Ok(())
            }
        };
        self.acks.acknowledge(&name, ack_ids, send).await
    }

    /// `Acknowledge` calls this client made: fewer than the acks when they were grouped.
    pub fn acknowledge_calls(&self) -> u64 {
        self.acks.calls()
    }
}
