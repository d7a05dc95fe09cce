//! The worker's loaded graphs, keyed by the model's sha256: the next job with the same model
//! gets the loaded graph instead of loading it again. Bounded by bytes (each graph's estimated
//! host memory) and kept in least-recently-used order; a graph a job still holds stays loaded
//! after eviction until that job lets it go, and counts against the worker's budget until then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::budget::Charge;
use super::engine::Model;

/// A model's sha256.
pub type ModelHash = [u8; 32];

/// A loaded graph, shared by the jobs that use it and the cache.
pub struct LoadedGraph {
    /// The model's sha256.
    pub hash: ModelHash,
    /// The session and its inputs and outputs.
    pub model: Model,
    /// Estimated host memory (bytes): what a job using it is charged.
    pub cost: u64,
    /// The graph's bytes in the worker's budget, until the last holder drops it.
    pub(super) _worker: Charge,
}

/// Loaded graphs, most recently used last.
pub struct GraphCache {
    cap: u64,
    graphs: Mutex<VecDeque<Arc<LoadedGraph>>>,
}

impl GraphCache {
    /// A cache of at most `cap` bytes of graphs (0: keeps none).
    pub fn new(cap: u64) -> GraphCache {
        GraphCache {
            cap,
            graphs: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<LoadedGraph>>> {
        self.graphs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The graph of model `hash`, if loaded (now the most recently used).
    pub fn get(&self, hash: &ModelHash) -> Option<Arc<LoadedGraph>> {
        let mut graphs = self.lock();
        let i = graphs.iter().position(|g| &g.hash == hash)?;
        let g = graphs.remove(i)?;
        graphs.push_back(g.clone());
        Some(g)
    }

    /// Keeps `g`, evicting the least recently used graphs past the cap (`g` itself too, when
    /// it alone is larger).
    pub fn insert(&self, g: Arc<LoadedGraph>) {
        let mut graphs = self.lock();
        graphs.retain(|old| old.hash != g.hash);
        graphs.push_back(g);
        while graphs.iter().map(|g| g.cost).sum::<u64>() > self.cap {
            graphs.pop_front();
        }
    }

    /// Drops the least recently used graph that no job holds, so its bytes go back to the
    /// worker's budget; `false` when every cached graph is in use (or none is cached).
    pub fn evict_idle(&self) -> bool {
        let mut graphs = self.lock();
        match graphs.iter().position(|g| Arc::strong_count(g) == 1) {
            Some(i) => {
                graphs.remove(i);
                true
            }
            None => false,
        }
    }

    /// Graphs cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no graph is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
