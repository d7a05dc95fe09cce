//! The in-memory cache's order: at most a count of entries and a sum of their sizes, the
//! least recently used evicted first.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::ids::ModuleHash;

/// One kept value.
struct Entry<V> {
    value: V,
    bytes: u64,
    /// The order of use (larger: more recent).
    tick: u64,
    /// When it was last used, for the disk cache's order.
    used_at: SystemTime,
}

/// At most `max_count` values and `max_bytes` of them by module (a single value larger than
/// `max_bytes` is still kept, alone), the least recently used evicted first.
pub(super) struct Lru<V> {
    max_count: usize,
    max_bytes: u64,
    map: HashMap<ModuleHash, Entry<V>>,
    bytes: u64,
    tick: u64,
}

impl<V: Clone> Lru<V> {
    pub(super) fn new(max_count: usize, max_bytes: u64) -> Self {
        Lru {
            max_count: max_count.max(1),
            max_bytes,
            map: HashMap::new(),
            bytes: 0,
            tick: 0,
        }
    }

    pub(super) fn get(&mut self, hash: &ModuleHash) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(hash).map(|e| {
            e.tick = tick;
            e.used_at = SystemTime::now();
            e.value.clone()
        })
    }

    /// The value kept for `hash`: `v`, or the one another caller inserted first; and the
    /// entries evicted to make room, with when each was last used.
    pub(super) fn insert(
        &mut self,
        hash: ModuleHash,
        v: V,
        bytes: u64,
    ) -> (V, Vec<(ModuleHash, SystemTime)>) {
        if let Some(kept) = self.get(&hash) {
            return (kept, Vec::new());
        }
        let mut evicted = Vec::new();
        while !self.map.is_empty()
            && (self.map.len() >= self.max_count
                || self.bytes.saturating_add(bytes) > self.max_bytes)
        {
            let oldest = *self
                .map
                .iter()
                .min_by_key(|(_, e)| e.tick)
                .map(|(h, _)| h)
                .expect("not empty");
            let e = self.remove(&oldest).expect("present");
            evicted.push((oldest, e));
        }
        self.bytes += bytes;
        self.map.insert(
            hash,
            Entry {
                value: v.clone(),
                bytes,
                tick: self.tick,
                used_at: SystemTime::now(),
            },
        );
        (v, evicted)
    }

    /// Drops `hash`; when it was last used, if it was kept.
    pub(super) fn remove(&mut self, hash: &ModuleHash) -> Option<SystemTime> {
        let e = self.map.remove(hash)?;
        self.bytes -= e.bytes;
        Some(e.used_at)
    }

    /// When `hash` was last used, if it is kept.
    pub(super) fn used_at(&self, hash: &ModuleHash) -> Option<SystemTime> {
        self.map.get(hash).map(|e| e.used_at)
    }

    pub(super) fn contains(&self, hash: &ModuleHash) -> bool {
        self.map.contains_key(hash)
    }

    /// The modules kept.
    pub(super) fn keys(&self) -> Vec<ModuleHash> {
        self.map.keys().copied().collect()
    }

    /// (entries, bytes) kept.
    pub(super) fn size(&self) -> (usize, u64) {
        (self.map.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ModuleHash {
        ModuleHash::of(&[n])
    }

    #[test]
    fn keeps_the_recently_used_modules_by_count() {
        let mut lru = Lru::new(2, u64::MAX);
        assert_eq!(lru.insert(h(1), 1, 1).0, 1);
        assert_eq!(lru.insert(h(2), 2, 1).0, 2);
        assert_eq!(
            lru.insert(h(2), 20, 1).0,
            2,
            "the first one inserted is kept"
        );
        assert_eq!(lru.get(&h(1)), Some(1));
        let (_, evicted) = lru.insert(h(3), 3, 1);
        assert_eq!(evicted.iter().map(|e| e.0).collect::<Vec<_>>(), [h(2)]);
        assert_eq!(lru.get(&h(2)), None, "the least recently used went");
        assert_eq!((lru.get(&h(1)), lru.get(&h(3))), (Some(1), Some(3)));
        for n in 0..100 {
            lru.insert(h(n), n, 1);
        }
        assert_eq!(lru.size(), (2, 2));
    }

    #[test]
    fn keeps_the_recently_used_modules_by_bytes() {
        let mut lru = Lru::new(100, 10);
        lru.insert(h(1), 1, 4);
        lru.insert(h(2), 2, 4);
        lru.get(&h(1));
        let (_, evicted) = lru.insert(h(3), 3, 4);
        assert_eq!(evicted.iter().map(|e| e.0).collect::<Vec<_>>(), [h(2)]);
        assert_eq!(lru.size(), (2, 8));
        // Larger than the bound: kept alone.
        let (_, evicted) = lru.insert(h(4), 4, 50);
        assert_eq!(evicted.len(), 2);
        assert_eq!(lru.size(), (1, 50));
        assert!(lru.remove(&h(4)).is_some());
        assert_eq!(lru.size(), (0, 0));
    }
}
