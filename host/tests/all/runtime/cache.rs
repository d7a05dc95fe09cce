//! The compiled-module caches (issue 18 item 5, issue 17 item 3): the disk budget holds over
//! many distinct modules, the least recently used go first, a module a running job uses is
//! never removed, a file that vanished or is damaged is recompiled, a forgotten module is
//! gone from both caches. Distinct modules are the step-counter task with a custom section
//! of its own appended (a valid component of another hash).

use super::*;

use sha2::Digest as _;
use taskhost::ids::ModuleHash;
use taskhost::runtime::RuntimeConfig;

/// The step-counter task with a custom section `n` appended: a distinct, valid module.
fn variant(n: u32) -> Vec<u8> {
    let mut bytes = support::guests::bytes("step_counter");
    let name = b"taskhost-test-variant";
    let payload = n.to_le_bytes();
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    bytes.push(0); // a custom section
    bytes.push(body.len() as u8); // its size (one LEB128 byte: < 128)
    bytes.extend_from_slice(&body);
    bytes
}

fn cached_runtime(dir: &std::path::Path, budget: Option<u64>) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.to_owned()),
        cache_max_bytes: budget,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Compiles variant `n` (into both caches) and returns its hash.
async fn compile(rt: &Runtime, n: u32) -> ModuleHash {
    let bytes = variant(n);
    let hash = ModuleHash::of(&bytes);
    rt.prepare(bytes, Some(hash)).await.unwrap();
    hash
}

fn on_disk(rt: &Runtime, hash: &ModuleHash) -> bool {
    rt.disk_cache_file(hash).unwrap().exists()
}

/// The size of one variant's cache file.
async fn file_size() -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let rt = cached_runtime(tmp.path(), None);
    compile(&rt, 0).await;
    rt.disk_cache_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_holds_over_many_modules() {
    let size = file_size().await;
    assert!(size > 0);
    let budget = 3 * size + size / 2;
    let tmp = tempfile::tempdir().unwrap();
    let rt = cached_runtime(tmp.path(), Some(budget));
    let mut hashes = Vec::new();
    for n in 1..=10 {
        hashes.push(compile(&rt, n).await);
        let used = rt.disk_cache_bytes();
        assert!(
            used <= budget,
            "{used} bytes on disk over the budget {budget}"
        );
    }
    let kept: Vec<_> = hashes.iter().filter(|h| on_disk(&rt, h)).collect();
    assert_eq!(kept.len(), 3, "the budget holds three files");
    assert!(on_disk(&rt, &hashes[9]), "the newest is kept");
    // The memory cache is bounded too.
    let (count, _) = rt.memory_cache_size();
    assert!(count <= taskhost::runtime::MAX_MODULES_IN_MEMORY);
    // A budget lowered since the last start is applied at once.
    let smaller = cached_runtime(tmp.path(), Some(size + size / 2));
    assert!(smaller.disk_cache_bytes() <= size + size / 2);
}

/// A module loaded from disk or used from memory counts as used: the one used least
/// recently is removed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_go_first() {
    let size = file_size().await;
    let tmp = tempfile::tempdir().unwrap();
    let budget = 3 * size + size / 2;
    let rt = cached_runtime(tmp.path(), Some(budget));
    let a = compile(&rt, 1).await;
    let b = compile(&rt, 2).await;
    let c = compile(&rt, 3).await;
    // A use from memory.
    assert!(rt.load_cached(&a).is_some());
    let d = compile(&rt, 4).await;
    assert!(!on_disk(&rt, &b), "b was the least recently used");
    assert!([a, c, d].iter().all(|h| on_disk(&rt, h)));
    // A use from disk, by another process's worth of memory (a fresh runtime).
    let fresh = cached_runtime(tmp.path(), Some(budget));
    assert!(fresh.load_cached(&c).is_some(), "loaded from disk");
    compile(&fresh, 5).await;
    assert!(on_disk(&fresh, &c), "c was just loaded");
    assert!(
        !on_disk(&fresh, &a),
        "a was used before c was loaded and d written"
    );
}

/// A module a running job uses keeps its file, whatever the budget says; once the job has
/// ended it may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_in_use_by_a_running_job_is_never_removed() {
    let size = file_size().await;
    let tmp = tempfile::tempdir().unwrap();
    let budget = 2 * size + size / 2;
    let rt = cached_runtime(tmp.path(), Some(budget));
    let bytes = variant(1);
    let busy = ModuleHash::of(&bytes);
    let module = rt.prepare(bytes, Some(busy)).await.unwrap();
    // A job that runs until it is stopped (600 steps of 100 ms).
    let stop = CancellationToken::new();
    let job = {
        let (rt, module, stop) = (rt.clone(), module.clone(), stop.clone());
        tokio::spawn(async move {
            let store_dir = tempfile::tempdir().unwrap();
            let store = DirStore::open(store_dir.path()).unwrap();
            let job: JobId = "busy".parse().unwrap();
            let claimed = claim(&store, &job, "test").await;
            let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
            rt.run(
                &module,
                RunRequest {
                    job: &job,
                    attempt: 1,
                    input: r#"{"steps":600,"step_ms":100}"#,
                    limits: &JobLimits::default(),
                    checkpoint: ckpt.clone(),
                    files: JobFiles::plain(store.clone(), &job, ckpt),
                    cancel: stop,
                },
            )
            .await
        })
    };
    drop(module);
    for n in 2..=6 {
        compile(&rt, n).await;
        assert!(on_disk(&rt, &busy), "the running job's module was removed");
        assert!(rt.disk_cache_bytes() <= budget);
    }
    assert!(!job.is_finished(), "the job ran throughout");
    stop.cancel();
    let report = job.await.unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled);
    for n in 7..=9 {
        compile(&rt, n).await;
    }
    assert!(
        !on_disk(&rt, &busy),
        "once the job ended, its module may go"
    );
}

/// A cache file that vanished (removed by another process's budget, or by hand) or that is
/// damaged is recompiled, never fatal, never loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_or_damaged_file_is_recompiled() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = cached_runtime(tmp.path(), None);
    let hash = compile(&rt, 1).await;
    let file = rt.disk_cache_file(&hash).unwrap();
    let intact = std::fs::read(&file).unwrap();

    std::fs::remove_file(&file).unwrap();
    let fresh = cached_runtime(tmp.path(), None);
    assert!(fresh.load_cached(&hash).is_none());
    let module = fresh.prepare(variant(1), Some(hash)).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), intact, "written again");
    let report = run_once(&fresh, &module, r#"{"steps":2}"#, JobLimits::default()).await;
    assert!(matches!(report.outcome, Outcome::Finished(_)));

    // Damaged: one byte of the code flipped (the length and the engine header intact),
    // cut short, one byte of the code cut out (the trailer intact), the trailer's CRC-32
    // changed, the code alone (no trailer: the file is still a valid compiled module, which
    // `deserialize_file` would load), an older host's format (the code and its sha256),
    // garbage, empty.
    let mut flipped = intact.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let code = &intact[..intact.len() - 16];
    let mut one_cut = intact.clone();
    one_cut.remove(mid);
    let mut crc_changed = intact.clone();
    crc_changed[code.len() + 8] ^= 1;
    let mut old_format = code.to_vec();
    old_format.extend_from_slice(&sha2::Sha256::digest(code));
    let damaged = [
        flipped,
        intact[..intact.len() / 2].to_vec(),
        one_cut,
        crc_changed,
        code.to_vec(),
        old_format,
        b"not compiled code".to_vec(),
        Vec::new(),
    ];
    for bad in damaged {
        std::fs::write(&file, &bad).unwrap();
        let fresh = cached_runtime(tmp.path(), None);
        assert!(
            fresh.load_cached(&hash).is_none(),
            "a damaged file was loaded"
        );
        assert!(!file.exists(), "the damaged file is removed");
        let module = fresh.prepare(variant(1), Some(hash)).await.unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            intact,
            "recompiled and written"
        );
        let report = run_once(&fresh, &module, r#"{"steps":2}"#, JobLimits::default()).await;
        assert!(matches!(report.outcome, Outcome::Finished(_)));
    }
}

/// A forgotten module (the worker's answer to a module the bucket no longer holds) is gone
/// from memory and disk, unless a job of this process runs it (then only from memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_module_leaves_both_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = cached_runtime(tmp.path(), None);
    let a = compile(&rt, 1).await;
    let b = compile(&rt, 2).await;
    assert_eq!(rt.cached_modules().len(), 2);
    rt.forget(&a);
    assert!(!on_disk(&rt, &a) && rt.cached(&a).is_none());
    assert_eq!(rt.cached_modules(), vec![b]);
    let held = rt.cached(&b).unwrap();
    rt.forget(&b);
    assert!(rt.cached(&b).is_none());
    assert!(on_disk(&rt, &b), "a running job's module keeps its file");
    drop(held);
    rt.forget(&b);
    assert!(!on_disk(&rt, &b));
    assert!(rt.cached_modules().is_empty());
}

/// A compiled file that cannot fit the budget beside the files no eviction may remove is not
/// written, and evicts nothing for it: the node's other modules stay cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_fit_evicts_nothing() {
    let small = file_size().await;
    let big_bytes = support::guests::bytes("classify");
    let big = {
        let tmp = tempfile::tempdir().unwrap();
        let rt = cached_runtime(tmp.path(), None);
        rt.prepare(big_bytes.clone(), None).await.unwrap();
        rt.disk_cache_bytes()
    };
    assert!(big > small, "classify compiles larger: {big} vs {small}");
    // Room for the small file, not for the big one.
    let budget = small + (big - small) / 2;
    let tmp = tempfile::tempdir().unwrap();
    let rt = cached_runtime(tmp.path(), Some(budget));
    let kept = compile(&rt, 1).await;
    let hash = ModuleHash::of(&big_bytes);
    rt.prepare(big_bytes, Some(hash)).await.unwrap();
    assert!(!on_disk(&rt, &hash), "written past the budget");
    assert!(on_disk(&rt, &kept), "evicted for a file that could not fit");
}
