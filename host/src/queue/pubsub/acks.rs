//! Acknowledgements grouped per subscription: an ack that arrives while an `Acknowledge`
//! call of its subscription is in flight waits for it, then goes out with every other ack
//! that arrived meanwhile, in one call (the directory store's group commit, for acks). No
//! timer: a lone ack goes out at once, and under load one call carries many, so a worker
//! finishing hundreds of short jobs a second makes a few calls, not one per job. Each caller
//! learns the outcome of the call that carried its ack ids.
//!
//! The calls run on a task of their own: a caller that stops waiting leaves no group
//! without a sender.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::PubsubError;

/// Acks waiting for their subscription's next call, and whether a call is in flight.
#[derive(Debug, Default)]
pub(super) struct AckGroups {
    groups: Mutex<HashMap<String, Group>>,
    /// `Acknowledge` calls made (for the tests and the figures).
    calls: AtomicU64,
}

/// Where a caller hears the outcome of the call that carried its ack ids.
type Waiter = oneshot::Sender<Result<(), PubsubError>>;

#[derive(Debug, Default)]
struct Group {
    /// Ack ids not sent yet, each with the caller waiting for them.
    waiting: Vec<(Vec<String>, Waiter)>,
    /// Whether a sender task runs for this subscription.
    sending: bool,
}

impl AckGroups {
    /// `Acknowledge` calls made so far.
    pub(super) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Acknowledges `ack_ids` on `subscription` (its full name) with the next call of that
    /// subscription; `send` makes one call for a list of ack ids.
    pub(super) async fn acknowledge<F, Fut>(
        self: &Arc<Self>,
        subscription: &str,
        ack_ids: &[String],
        send: F,
    ) -> Result<(), PubsubError>
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), PubsubError>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let group = groups.entry(subscription.to_owned()).or_default();
            group.waiting.push((ack_ids.to_vec(), tx));
            !std::mem::replace(&mut group.sending, true)
        };
        if start {
            let (groups, subscription) = (Arc::clone(self), subscription.to_owned());
            tokio::spawn(async move { groups.send_until_empty(&subscription, send).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(PubsubError::transient(
                "acknowledge",
                subscription,
                "the call carrying this ack was abandoned (the worker is stopping)".into(),
            ))
        })
    }

    /// Sends what waits for `subscription`, one call per round, until nothing does.
    async fn send_until_empty<F, Fut>(&self, subscription: &str, send: F)
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<(), PubsubError>>,
    {
        // Clears the group if this task ends early (a panic, the runtime's shutdown): its
        // waiters hear of an error, and the next ack starts a sender again.
        let mut reset = Reset {
            groups: self,
            subscription,
            armed: true,
        };
        loop {
            let batch = {
                let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
                let Some(group) = groups.get_mut(subscription) else {
                    return;
                };
                if group.waiting.is_empty() {
                    groups.remove(subscription);
                    reset.armed = false;
                    return;
                }
                std::mem::take(&mut group.waiting)
            };
            // The ids are moved into the call, not copied.
            let (ids, waiters): (Vec<Vec<String>>, Vec<Waiter>) = batch.into_iter().unzip();
            self.calls.fetch_add(1, Ordering::Relaxed);
            let sent = send(ids.concat()).await;
            for waiter in waiters {
                let _ = waiter.send(sent.as_ref().map(|_| ()).map_err(PubsubError::copy));
            }
        }
    }
}

/// Removes a subscription's group when its sender task ends early (a panic, the runtime's
/// shutdown): its waiters' senders are dropped, an error for each.
struct Reset<'a> {
    groups: &'a AckGroups,
    subscription: &'a str,
    /// Whether dropping it removes the group (false once the task removed it itself).
    armed: bool,
}

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut groups = self.groups.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.remove(self.subscription);
    }
}
