//! Task modules in the bucket: `modules/<sha256-hex>.wasm`, written create-only, verified
//! against their name on every fetch, compiled (never deserialized) when fetched.

use std::sync::Arc;

use crate::ids::ModuleHash;
use crate::runtime::{ModuleError, Prepared, Runtime};
use crate::store::{ErrorKind, ObjectStore, Precondition, StoreError};

/// The most bytes a task module may have: 256 MiB (a component built with
/// `cargo build --target wasm32-wasip2` is well under 10 MiB; models for inference are files
/// of their own). Checked when a module is compiled (so `module push` refuses a larger one)
/// and when it is fetched (a larger object under its key is never read whole).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Why a module could not be made ready to run ([`resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No such module in the bucket.
    Missing(ModuleHash),
    /// The module exists but is unusable (tampered with, not a component, wrong world).
    Module(ModuleHash, ModuleError),
    /// The store failed; retry later.
    Storage(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Missing(h) => write!(f, "module {h} is not in the store"),
            ResolveError::Module(h, e) => write!(f, "module {h} is unusable: {e}"),
            ResolveError::Storage(m) => write!(f, "cannot fetch the module: {m}"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// The module named `hash`, from memory, else the disk cache, else the bucket (verified
/// against `hash`, then compiled and cached).
pub async fn resolve<S: ObjectStore>(
    runtime: &Runtime,
    store: &S,
    hash: &ModuleHash,
) -> Result<Prepared, ResolveError> {
    if let Some(p) = runtime.load_cached(hash) {
        runtime.metrics().module_cache_hit();
        return Ok(p);
    }
    // One fetch and compile per module at a time: the jobs that want it meanwhile wait for
    // it and then find it cached. A module's gate is dropped from the list once nobody
    // waits on it, so the list holds only the modules being loaded.
    static LOADING: std::sync::Mutex<Vec<(ModuleHash, Arc<tokio::sync::Mutex<()>>)>> =
        std::sync::Mutex::new(Vec::new());
    let loading = || LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let gate = {
        let mut loading = loading();
        match loading.iter().find(|(h, _)| h == hash) {
            Some((_, g)) => Arc::clone(g),
            None => {
                let g = Arc::new(tokio::sync::Mutex::new(()));
                loading.push((*hash, Arc::clone(&g)));
                g
            }
        }
    };
    let loaded = {
        let _turn = gate.lock().await;
        load(runtime, store, hash).await
    };
    // Only the list and this caller hold the gate: no other caller waits for it.
    loading().retain(|(h, g)| h != hash || Arc::strong_count(g) > 2);
    loaded
}

async fn load<S: ObjectStore>(
    runtime: &Runtime,
    store: &S,
    hash: &ModuleHash,
) -> Result<Prepared, ResolveError> {
    if let Some(p) = runtime.load_cached(hash) {
        runtime.metrics().module_cache_hit();
        return Ok(p);
    }
    let started = std::time::Instant::now();
    let obj = match store
        .get_at_most(&crate::keys::module(hash), MAX_MODULE_BYTES)
        .await
    {
        Ok(o) => o.ok_or(ResolveError::Missing(*hash))?,
        Err(e) if e.kind() == ErrorKind::TooLarge => {
            tracing::warn!(module = %hash, error = %e, "module too large to fetch");
            return Err(ResolveError::Module(
                *hash,
                ModuleError::TooLarge { bytes: None },
            ));
        }
        Err(e) => return Err(ResolveError::Storage(e.to_string())),
    };
    tracing::info!(module = %hash, bytes = obj.bytes.len(), "module fetched from the bucket");
    let prepared = runtime
        .prepare(obj.bytes, Some(*hash))
        .await
        .map_err(|e| ResolveError::Module(*hash, e))?;
    runtime.metrics().module_compiled(started.elapsed());
    Ok(prepared)
}

/// Checks that `bytes` is a task module of our world, then uploads it create-only.
/// Returns its hash and whether it was uploaded now (`false`: it was already there).
pub async fn push<S: ObjectStore>(
    runtime: &Runtime,
    store: &S,
    bytes: Vec<u8>,
) -> anyhow::Result<(ModuleHash, bool)> {
    let hash = ModuleHash::of(&bytes);
    runtime
        .prepare(bytes.clone(), Some(hash))
        .await
        .map_err(|e| match e {
            ModuleError::NodeFault(_) => anyhow::anyhow!("not uploaded: {e}"),
            e => anyhow::anyhow!("not uploaded: the file is {e}"),
        })?;
    match store
        .put(&crate::keys::module(&hash), bytes, Precondition::Absent)
        .await
    {
        Ok(_) => Ok((hash, true)),
        Err(StoreError::PreconditionFailed) => Ok((hash, false)),
        Err(e) => Err(anyhow::anyhow!(
            "uploading {}: {e}",
            crate::keys::module(&hash)
        )),
    }
}

/// How often a worker drops from its caches the modules the bucket no longer holds
/// (`CACHE_SWEEP_SECONDS`): every 10 min (one listing of `modules/` each time).
pub const DEFAULT_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Drops from `runtime`'s caches (memory and disk) every module the bucket no longer holds
/// (removed by `taskhost module rm` or `prune`), so their space is freed; a job of one of
/// them that still comes finds it missing the usual way. Returns how many were dropped.
/// `Err`: the bucket could not be listed (nothing dropped).
pub async fn sweep<S: ObjectStore>(runtime: &Runtime, store: &S) -> Result<usize, StoreError> {
    // Listed before the bucket, so every module counted was fetched (so pushed) before the
    // listing began: one missing from it was deleted.
    let cached = runtime.cached_modules();
    if cached.is_empty() {
        return Ok(0);
    }
    let listed: std::collections::HashSet<ModuleHash> = store
        .list(crate::keys::MODULES_PREFIX)
        .await?
        .iter()
        .filter_map(|k| crate::keys::module_of_key(k))
        .collect();
    let gone: Vec<_> = cached.into_iter().filter(|h| !listed.contains(h)).collect();
    for h in &gone {
        tracing::info!(module = %h, "module no longer in the bucket: dropped from the caches");
        runtime.forget(h);
    }
    Ok(gone.len())
}

/// [`sweep`] every `every` until `shutdown` (the first at once); a failed listing is
/// logged and tried again at the next round.
pub async fn keep_swept<S: ObjectStore>(
    runtime: Runtime,
    store: S,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = sweep(&runtime, &store).await {
            tracing::warn!(error = %e, "cannot list the modules to sweep the module caches");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeConfig;
    use crate::store::dir::DirStore;

    fn runtime() -> Runtime {
        Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap()
    }

    /// An object under a module's key larger than any module may be is never read whole:
    /// the fetch refuses it from its size, as an unusable module (the job is dead-lettered,
    /// not handed back forever), and the worker holds none of it.
    #[tokio::test]
    async fn a_module_object_too_large_is_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let hash = ModuleHash::of(b"a module too large to fetch");
        let path = tmp.path().join(crate::keys::module(&hash));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Sparse: no disk used, the size is what counts.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_MODULE_BYTES + 1).unwrap();
        let e = resolve(&runtime(), &store, &hash).await.err().unwrap();
        assert_eq!(
            e,
            ResolveError::Module(hash, ModuleError::TooLarge { bytes: None })
        );
        assert!(e.to_string().contains("larger than the"), "{e}");
        // Within the bound it is fetched (and found not to hash to its name).
        file.set_len(8).unwrap();
        let e = resolve(&runtime(), &store, &hash).await.err().unwrap();
        assert!(
            matches!(e, ResolveError::Module(_, ModuleError::HashMismatch { .. })),
            "{e}"
        );
    }

    /// Compiling refuses bytes over the bound before hashing or parsing them (so
    /// `module push` refuses them with a clear error).
    #[test]
    fn compiling_refuses_a_module_too_large() {
        let big = vec![0u8; MAX_MODULE_BYTES as usize + 1];
        let e = runtime().compile(&big, None).err().unwrap();
        assert_eq!(
            e,
            ModuleError::TooLarge {
                bytes: Some(MAX_MODULE_BYTES + 1)
            }
        );
        assert!(
            e.to_string()
                .starts_with("268435457 bytes, larger than the 268435456"),
            "{e}"
        );
    }
}
