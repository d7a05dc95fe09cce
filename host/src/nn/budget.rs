//! Host memory budgets for wasi-nn graphs and tensors: one per worker, one per job. A
//! [`Charge`] holds bytes of a budget until it is dropped, so whatever path frees a graph or a
//! tensor (the task dropping it, the run ending, a trap) gives its bytes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cap on bytes held at once, and how many are held.
#[derive(Debug)]
pub struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `cap` bytes, none held.
    pub fn new(cap: u64) -> Arc<Budget> {
        Arc::new(Budget {
            cap,
            used: AtomicU64::new(0),
        })
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Holds `bytes` more, or `None` (nothing held) when that would pass the cap.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.cap)
            })
            .ok()?;
        Some(Charge {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes held in a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Charge {
    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_cap_and_come_back_when_dropped() {
        let b = Budget::new(100);
        let a = b.charge(60).unwrap();
        assert!(b.charge(41).is_none(), "over the cap");
        assert_eq!(b.used(), 60, "a refused charge holds nothing");
        let c = b.charge(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.charge(u64::MAX).is_none(), "no overflow");
    }
}
