//! The job queue chosen by configuration: Google Cloud Pub/Sub (or its emulator), or the
//! embedded SQLite queue with the same lease / attempt / dead-letter semantics.
//!
//! **API boundary:** the worker, `submit`, `setup` and `status` see only this enum; only
//! `pubsub` and `localqueue` know their wire protocols.

use std::time::Duration;

use crate::localqueue::{LocalLease, LocalQueue, LocalSubscription};
use crate::pubsub::{
    Ensured, IncomingMessage, LeaseHandle, OutgoingMessage, Pubsub, Settle, SubscribeSettings,
    Subscription, SubscriptionSettings,
};

#[derive(Clone, Debug)]
pub enum Queue {
    PubSub(Pubsub),
    Local(LocalQueue),
}

pub enum QueueSubscription {
    PubSub(Subscription),
    Local(LocalSubscription),
}

/// A leased message: ack, nack, or drop (= nack).
pub struct QueueDelivery {
    pub message: IncomingMessage,
    pub handle: Lease,
}

pub enum Lease {
    PubSub(LeaseHandle),
    Local(LocalLease),
}

impl Lease {
    pub fn ack(self) {
        match self {
            Lease::PubSub(h) => h.ack(),
            Lease::Local(h) => h.ack(),
        }
    }

    pub fn nack(self) {
        match self {
            Lease::PubSub(h) => h.nack(),
            Lease::Local(h) => h.nack(),
        }
    }
}

impl Queue {
    pub async fn ensure_topic(&self, topic: &str) -> anyhow::Result<Ensured> {
        Ok(match self {
            Queue::PubSub(q) => q.ensure_topic(topic).await?,
            Queue::Local(q) => q.ensure_topic(topic).await?,
        })
    }

    pub async fn ensure_subscription(
        &self,
        sub: &str,
        topic: &str,
        settings: &SubscriptionSettings,
    ) -> anyhow::Result<Ensured> {
        Ok(match self {
            Queue::PubSub(q) => q.ensure_subscription(sub, topic, settings).await?,
            Queue::Local(q) => q.ensure_subscription(sub, topic, settings).await?,
        })
    }

    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Queue::PubSub(q) => q.publish(topic, messages).await?,
            Queue::Local(q) => q.publish(topic, messages).await?,
        })
    }

    pub async fn subscribe(
        &self,
        sub: &str,
        settings: &SubscribeSettings,
    ) -> anyhow::Result<QueueSubscription> {
        Ok(match self {
            Queue::PubSub(q) => QueueSubscription::PubSub(q.subscribe(sub, settings).await?),
            Queue::Local(q) => QueueSubscription::Local(q.subscribe(sub, settings).await?),
        })
    }

    pub async fn pull_some(
        &self,
        sub: &str,
        max: usize,
        wait: Duration,
        settle: Settle,
    ) -> anyhow::Result<Vec<IncomingMessage>> {
        Ok(match self {
            Queue::PubSub(q) => q.pull_some(sub, max, wait, settle).await?,
            Queue::Local(q) => q.pull_some(sub, max, wait, settle).await?,
        })
    }
}

impl QueueSubscription {
    /// Waits for a free slot, then for the next message; `Ok(None)` when shut down.
    pub async fn next(&mut self) -> anyhow::Result<Option<QueueDelivery>> {
        Ok(match self {
            QueueSubscription::PubSub(s) => s.next().await?.map(|d| QueueDelivery {
                message: d.message,
                handle: Lease::PubSub(d.handle),
            }),
            QueueSubscription::Local(s) => s.next().await?.map(|d| QueueDelivery {
                message: d.message,
                handle: Lease::Local(d.handle),
            }),
        })
    }

    /// Stops pulling; waits for handed-out messages to be settled.
    pub async fn shutdown(self) {
        match self {
            QueueSubscription::PubSub(s) => s.shutdown().await,
            QueueSubscription::Local(s) => s.shutdown().await,
        }
    }
}
