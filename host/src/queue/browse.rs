//! Reading every message of a subscription without consuming it (`taskhost dead-letter
//! list`), then settling the chosen ones (`dead-letter replay`): the messages are pulled
//! and held under one lease until the caller acks some and hands the rest back at once.
//! Nothing is acked unless asked for, so a reader that stops anywhere loses no message
//! (what it holds comes back when [`BROWSE_LEASE`] lapses, or at once after
//! [`Browse::release`]). While it is held, the lease is extended every half of it, so a
//! reader may take as long as it needs (a person answering a prompt, a long replay).

use std::sync::Arc;
use std::time::Duration;

use super::{IncomingMessage, Queue, QueueError, Received};

/// The lease the messages are read under, extended every half of it while they are held; a
/// reader that dies holds them this long at most.
pub const BROWSE_LEASE: Duration = Duration::from_secs(120);
/// Empty pulls in a row that end the reading (a pull returns at once, and a server may
/// answer empty while it still holds messages: the emulator does now and then).
const EMPTY_PULLS: u32 = 5;
/// The wait between two empty pulls.
const EMPTY_WAIT: Duration = Duration::from_millis(100);
/// Messages asked for per pull.
const PULL: usize = 100;

/// The messages of a subscription, held (not consumed) until acked or released.
#[derive(Debug)]
pub struct Browse {
    queue: Queue,
    sub: String,
    held: Vec<Received>,
    /// The ack ids still held, which the keeper extends; locked for each extension, ack and
    /// release, so that none of them lands out of order.
    leased: Arc<tokio::sync::Mutex<Vec<String>>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Queue {
    /// Reads the messages of `sub` (at most `limit`), holding each under [`BROWSE_LEASE`]
    /// (extended while held); each read counts a delivery attempt, as every pull does. A
    /// message delivered twice while held (at-least-once) is shown once.
    pub async fn browse(&self, sub: &str, limit: usize) -> Result<Browse, QueueError> {
        self.browse_leased(sub, limit, BROWSE_LEASE).await
    }

    /// [`Queue::browse`] under a lease of `lease` (at least the queue's shortest deadline).
    pub async fn browse_leased(
        &self,
        sub: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Browse, QueueError> {
        let leased = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let keeper = tokio::spawn(keep(
            self.clone(),
            sub.to_owned(),
            Arc::clone(&leased),
            lease,
        ));
        let mut browse = Browse {
            queue: self.clone(),
            sub: sub.to_owned(),
            held: Vec::new(),
            leased,
            keeper,
        };
        let mut empty = 0;
        while browse.held.len() < limit && empty < EMPTY_PULLS {
            let want = PULL.min(limit - browse.held.len());
            let got = match self.pull(sub, want, lease).await {
                Ok(got) => got,
                Err(e) => {
                    // Hand back what was read before failing.
                    let _ = browse.release().await;
                    return Err(e);
                }
            };
            if got.is_empty() {
                empty += 1;
                tokio::time::sleep(EMPTY_WAIT).await;
            } else {
                empty = 0;
                let mut leased = browse.leased.lock().await;
                leased.extend(got.iter().map(|r| r.ack_id.clone()));
                browse.held.extend(got);
            }
        }
        Ok(browse)
    }
}

/// Extends the lease of every ack id in `leased` every half `lease`, for as long as the
/// [`Browse`] lives. A failed extension is tried again at the next turn (the lease then
/// holds at least half of it: the queue may hand some back meanwhile, which only means a
/// message is read again, never lost).
async fn keep(
    queue: Queue,
    sub: String,
    leased: Arc<tokio::sync::Mutex<Vec<String>>>,
    lease: Duration,
) {
    let mut turns = tokio::time::interval_at(tokio::time::Instant::now() + lease / 2, lease / 2);
    turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        turns.tick().await;
        let held = leased.lock().await;
        if held.is_empty() {
            continue;
        }
        if let Err(e) = queue.modify_ack_deadline(&sub, &held, lease).await {
            tracing::warn!(subscription = %sub, error = %e, "could not extend the lease of the messages read; retrying");
        }
    }
}

impl Drop for Browse {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Browse {
    /// The messages read, each once, oldest publish first.
    pub fn messages(&self) -> Vec<&IncomingMessage> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out: Vec<&IncomingMessage> = self
            .held
            .iter()
            .map(|r| &r.message)
            .filter(|m| seen.insert(m.message_id.clone()))
            .collect();
        out.sort_by_key(|m| m.publish_time_ms);
        out
    }

    /// Acks the messages with these ids (every delivery of each held): they are consumed.
    /// Until the ack has answered they stay held (and extended), so an ack that fails, or
    /// that its caller gives up, leaves them to be released with the rest.
    pub async fn ack(&mut self, message_ids: &[&str]) -> Result<(), QueueError> {
        let chosen = |r: &Received| message_ids.contains(&r.message.message_id.as_str());
        let ack_ids: Vec<String> = (self.held.iter().filter(|r| chosen(r)))
            .map(|r| r.ack_id.clone())
            .collect();
        let mut leased = self.leased.lock().await;
        self.queue.acknowledge(&self.sub, &ack_ids).await?;
        self.held.retain(|r| !chosen(r));
        *leased = self.held.iter().map(|r| r.ack_id.clone()).collect();
        Ok(())
    }

    /// Hands every message still held back at once (the subscription delivers it again).
    pub async fn release(&mut self) -> Result<(), QueueError> {
        let ack_ids: Vec<String> = self.held.iter().map(|r| r.ack_id.clone()).collect();
        let mut leased = self.leased.lock().await;
        self.queue
            .modify_ack_deadline(&self.sub, &ack_ids, Duration::ZERO)
            .await?;
        self.held.clear();
        leased.clear();
        Ok(())
    }
}
