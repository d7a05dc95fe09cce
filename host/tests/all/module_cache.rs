//! Issue 17 item 3: a worker's compiled-module caches drop the modules the bucket no longer
//! holds (`taskhost module rm`), through the real binary: the module's file leaves the
//! worker's disk cache while the worker keeps running the others.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cli::CliEnv;

/// The compiled files (`compiled-*/<hex>.cwasm`) under a cache directory.
fn compiled(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        if d.file_name().to_string_lossy().starts_with("compiled-") {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|e| e == "cwasm") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

fn holds(cache: &Path, module: &str) -> bool {
    let hex = module.trim_start_matches("sha256:");
    compiled(cache)
        .iter()
        .any(|p| p.file_stem().is_some_and(|s| s == hex))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_removed_from_the_bucket_leaves_the_workers_caches() {
    let cli = CliEnv::embedded("cache-sweep").set("CACHE_SWEEP_SECONDS", "1");
    let cache = cli.dir().join("worker-cache");
    let worker_cli = cli.set("TASKHOST_CACHE_DIR", cache.display().to_string());
    let steps = cli.push_guest("step_counter").await;
    let primes = cli.push_guest("prime_count").await;
    let mut worker = worker_cli.spawn("worker", &["worker"]);
    worker
        .wait_for_log("worker started", Duration::from_secs(60))
        .await;
    let submit = |module: &str, line: &str, name: &str| {
        let (cli, module, name, text) = (
            cli.clone(),
            module.to_owned(),
            name.to_owned(),
            format!("{line}\n"),
        );
        async move {
            cli.submit_file(&module, &name, &text).await.success();
        }
    };
    submit(&steps, r#"{"job_id":"sweep-1","steps":3}"#, "a.jsonl").await;
    submit(&primes, r#"{"job_id":"sweep-2","n":1000}"#, "b.jsonl").await;
    support::child::wait_for("both modules compiled into the worker's cache", || {
        holds(&cache, &steps) && holds(&cache, &primes)
    });
    worker
        .wait_for_log("job done", Duration::from_secs(60))
        .await;
    support::child::wait_for("both jobs done", || {
        worker.log().matches("job done").count() >= 2
    });
    // Their jobs are done: `module rm` may delete the step counter.
    cli.run(&["module", "rm", "--yes", &steps]).await.success();
    support::child::wait_for("the removed module leaves the worker's disk cache", || {
        !holds(&cache, &steps)
    });
    assert!(
        holds(&cache, &primes),
        "the module still in the bucket stays"
    );
    assert!(
        worker.log().contains("module no longer in the bucket"),
        "{}",
        worker.log()
    );
    worker.assert_running();
    worker.terminate(Duration::from_secs(15)).await;
}
