//! A hostile task or a sick store never takes a worker down or a wrong result up (issue 14):
//! the `hostile` module calls the imports with the values no honest task passes; the digest
//! task meets an upload the store lost; a stale owner's result lands late; a frozen store
//! holds a result write past the ownership proof; a task writes huge buffers (`memory.rs`);
//! a task pushes past the host's limits (`limits.rs`).

mod limits;
mod memory;

use crate::support;
use support::exec::{live_lease, module, run, runtime, stores};

use std::time::{Duration, Instant};

use support::cli::CliEnv;
use support::s3::S3Server;
use support::stack::Stack;
use taskhost::checkpoint;
use taskhost::exec::{Executor, JobEnd};
use taskhost::files::FileLimits;
use taskhost::ids::JobId;
use taskhost::queue::lease::LeaseView;
use taskhost::queue::{LocalQueue, Queue, Settle, Stamp};
use taskhost::runtime::Runtime;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{Multipart, ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

fn executor(store: AnyStore, rt: Runtime) -> Executor<AnyStore> {
    support::exec::executor(store, rt, FileLimits::default())
}

fn result_doc(end: &JobEnd) -> serde_json::Value {
    match end {
        JobEnd::Done { result, .. } => serde_json::from_str(result).unwrap(),
        other => panic!("expected the job done, got {other:?}"),
    }
}

/// `inputs.read` at offsets and lengths at the integer limits returns what the object has
/// there (nothing past its end), on both stores: before the fix the second call panicked
/// the host ("range start index 18446744073709551615 out of range").
#[tokio::test]
async fn input_reads_at_the_integer_limits_are_answered() {
    let rt = runtime();
    let m = module(&rt, "hostile").await;
    for (kind, store, _guard) in stores().await {
        store
            .put("inputs/ten", b"0123456789".to_vec(), Precondition::None)
            .await
            .unwrap();
        let ex = executor(store.clone(), rt.clone());
        let input = r#"{"mode":"read_far","inputs":{"data":"inputs/ten"}}"#;
        let stop = CancellationToken::new();
        let inputs = [("data", "inputs/ten")];
        let end = run(&ex, &m, "far", input, &inputs, live_lease(), stop).await;
        let reads = result_doc(&end)["reads"].clone();
        let want = [
            "1 bytes", "0 bytes", "0 bytes", "0 bytes", "0 bytes", "1 bytes", "10 bytes", "0 bytes",
        ];
        assert_eq!(reads, serde_json::json!(want), "{kind}");
    }
}

/// Every misuse of artifact handles and names is an error the task sees, never a trap or
/// a host panic; an over-large checkpoint and a 1 MiB log line are refused or cut.
#[tokio::test]
async fn artifact_misuse_gets_errors_the_task_sees() {
    let rt = runtime();
    let m = module(&rt, "hostile").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    let ex = executor(store, rt);
    let stop = CancellationToken::new();
    let input = r#"{"mode":"abuse_handles"}"#;
    let end = run(&ex, &m, "abuse", input, &[], live_lease(), stop).await;
    let calls: Vec<String> = serde_json::from_value(result_doc(&end)["calls"].clone()).unwrap();
    let has = |prefix: &str, want: &str| {
        let call = calls
            .iter()
            .find(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"));
        assert!(call.contains(want), "{call:?} should say {want:?}");
    };
    has("write:", "ok");
    has("finish:", "5 bytes");
    has("write after finish:", "Finished");
    has("size after finish:", "0");
    has("finish again:", "Finished");
    for name in [
        "\"\"",
        "\".hidden\"",
        "\"../up\"",
        "\"a/b\"",
        "\"nul\\0byte\"",
        "\"xxxx",
    ] {
        has(&format!("create {name}"), "InvalidName");
    }
    has("open #9:", "JobLimit(8)");
    has("resume never recorded:", "none");
    has("save 64 MiB:", "TooLarge");
    has("log 1 MiB:", "returned");
}

/// An upload the store no longer knows (R2 aborts incomplete uploads after 7 days) makes
/// `resume` answer nothing: the task writes the artifact again and the job ends, instead of
/// failing on the dead upload on every delivery.
#[tokio::test]
async fn a_vanished_upload_is_started_again_not_looped_on() {
    let rt = runtime();
    let m = module(&rt, "digest").await;
    let bytes: Vec<u8> = (0..(20u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    for (kind, store, _guard) in stores().await {
        store
            .put("inputs/twenty", bytes.clone(), Precondition::None)
            .await
            .unwrap();
        let ex = executor(store.clone(), rt.clone());
        // 20 chunks, 100 ms apart: about 2 s in which the watcher can see an open upload.
        let input = r#"{"job_id":"gone","inputs":{"data":"inputs/twenty"},"copy":true,"chunk_bytes":1048576,"chunk_ms":100}"#;
        let inputs = [("data", "inputs/twenty")];
        let job: JobId = "gone".parse().unwrap();
        // The first run stops (as at a shutdown) once its checkpoint records an open upload.
        let stop = CancellationToken::new();
        let first = run(&ex, &m, "gone", input, &inputs, live_lease(), stop.clone());
        let watch = async {
            loop {
                let h = checkpoint::peek(&store, &job).await.unwrap();
                if let Some(a) = h.and_then(|h| {
                    h.artifacts
                        .into_iter()
                        .find(|a| a.upload.is_some() && !a.parts.is_empty())
                }) {
                    stop.cancel();
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // The watcher against the run: a run that ends before an open upload was seen fails
        // the test here, instead of leaving the watcher waiting for one forever.
        tokio::pin!(first);
        let open = tokio::select! {
            open = watch => open,
            end = &mut first => panic!(
                "{kind}: the first run ended ({end:?}) before its checkpoint was seen with an \
                 open upload"
            ),
        };
        let end = first.await;
        assert_eq!(end, JobEnd::Cancelled, "{kind}");
        // The store forgets the upload.
        let key = "jobs/gone/artifacts/copy.bin";
        let upload = open.upload.unwrap();
        assert!(store.upload_exists(key, &upload).await.unwrap(), "{kind}");
        store.upload_abort(key, &upload).await.unwrap();
        assert!(!store.upload_exists(key, &upload).await.unwrap(), "{kind}");
        let end = run(
            &ex,
            &m,
            "gone",
            input,
            &inputs,
            live_lease(),
            CancellationToken::new(),
        )
        .await;
        let doc = result_doc(&end);
        assert_eq!(doc["bytes"], bytes.len() as u64, "{kind}");
        let copy = store.get(key).await.unwrap().unwrap();
        assert!(
            copy.bytes == bytes,
            "{kind}: copy.bin is the input, byte for byte"
        );
    }
}

/// A result that a stale owner wrote while this worker owned the job (its create-only write
/// landed late) is replaced by the owner's; one with the owner's very bytes is taken as done.
#[tokio::test]
async fn a_stale_owners_late_result_does_not_stand() {
    let rt = runtime();
    let m = module(&rt, "misbehave").await;
    for (kind, store, _guard) in stores().await {
        let ex = executor(store.clone(), rt.clone());
        let input = r#"{"mode":"sleep","ms":100}"#;
        let job: JobId = "late".parse().unwrap();
        let binding = support::exec::binding(input, &[]);
        // Between the task's end and the owner's result write (the executor's own hook).
        let stale = async {
            let key = taskhost::keys::result(&job);
            store
                .put(&key, b"{\"stale\":true}".to_vec(), Precondition::Absent)
                .await
                .unwrap();
        };
        let (end, _, wrote) = ex
            .execute_counted(
                &job,
                &m,
                input,
                &binding,
                live_lease(),
                CancellationToken::new(),
                stale,
            )
            .await;
        assert_eq!(wrote, Some(()), "{kind}: the task never ran: {end:?}");
        let doc = result_doc(&end);
        assert_eq!(doc["slept_ms"], 100, "{kind}");
        let stored = store
            .get(&taskhost::keys::result(&job))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&stored.bytes).unwrap(),
            doc,
            "{kind}: the owner's result replaced the stale one"
        );
    }
}

/// How long the frozen result write may hold the job up at most: a quarter of the S3
/// client's attempt timeout. A write waited for through the client would hang for at least
/// one attempt timeout (120 s); one given up when the proof runs out (the task's sleep and
/// [`PROOF_MARGIN`] less twice the skew allowance after the claim: under 6 s) ends far below
/// it, whatever the machine's load adds.
const GIVEN_UP_WITHIN: Duration =
    Duration::from_secs(taskhost::store::s3::DEFAULT_ATTEMPT_TIMEOUT.as_secs() / 4);
/// How much longer than its task's sleep the lease of the job whose result write hangs lasts
/// (never extended): the proof still holds when the result is written, for 5 s less twice
/// the skew allowance (a fifth of the lease, at most 2 s).
const PROOF_MARGIN: Duration = Duration::from_secs(5);

/// A result write that hangs (a frozen store) is given up once the ownership proof runs out,
/// never waited for through the client's retries: the job ends as lost, not done.
///
/// The store is frozen from the executor's own hook between the task's end and the job's
/// outputs: after the claim was answered, before the result is written. (Freezing once the
/// checkpoint can be read is not that: the test server may have stored the claim without
/// yet having sent its answer, and a claim left waiting is not the scenario.)
#[tokio::test]
async fn a_result_write_never_outlives_the_ownership_proof() {
    let rt = runtime();
    let m = module(&rt, "misbehave").await;
    let s3 = S3Server::start().await;
    let store = AnyStore::S3(s3.store(""));
    let ex = executor(store.clone(), rt);
    let sleep_ms = 200;
    let job: JobId = "frozen".parse().unwrap();
    let length = Duration::from_millis(sleep_ms) + PROOF_MARGIN;
    let (_, until) = tokio::sync::watch::channel(Stamp::now().plus(length));
    let lease = LeaseView {
        lost: CancellationToken::new(),
        until,
        deadline: length,
    };
    let input = format!(r#"{{"mode":"sleep","ms":{sleep_ms}}}"#);
    let binding = support::exec::binding(&input, &[]);
    let started = Instant::now();
    let freeze = async { s3.freeze(true) };
    let (end, _, frozen) = ex
        .execute_counted(
            &job,
            &m,
            &input,
            &binding,
            lease,
            CancellationToken::new(),
            freeze,
        )
        .await;
    let took = started.elapsed();
    s3.freeze(false);
    assert_eq!(frozen, Some(()), "the task never ran: {end:?}");
    assert_eq!(end, JobEnd::LeaseLost);
    assert!(
        took < GIVEN_UP_WITHIN,
        "took {took:?}: the write was waited for"
    );
}

/// A job that takes down every worker it lands on (here: SIGKILLed as soon as it starts,
/// as the OOM killer would) is not redelivered forever: each start without a clean end is
/// counted in its checkpoint, and past `MAX_CRASHES` the next worker dead-letters it with
/// the reason instead of running it.
async fn a_job_that_kills_its_workers(cli: CliEnv, queue: Queue, label: &str) {
    let node = cli
        .set("WORKER_SLOTS", "1")
        .set("MAX_CRASHES", "3")
        .node("node");
    let wasm = support::guests::wasm("misbehave");
    let pushed = node.run(&["module", "push", wasm.to_str().unwrap()]).await;
    let module = pushed.success().last_line().to_string();
    let id = format!("{label}-killer");
    let text = format!(r#"{{"job_id":"{id}","mode":"sleep","ms":600000}}"#) + "\n";
    let jobs = node.write_file("killer.jsonl", text);
    let args = [
        "submit",
        "--quiet",
        "--module",
        &module,
        jobs.to_str().unwrap(),
    ];
    node.run(&args).await.success();
    for i in 0..3 {
        let mut w = node.spawn(&format!("worker-{i}"), &["worker"]);
        w.wait_for_log("job started", Duration::from_secs(60)).await;
        w.kill9();
    }
    let mut last = node.spawn("worker-last", &["worker"]);
    last.wait_for_log("dead-lettered", Duration::from_secs(60))
        .await;
    let log = last.log();
    assert!(log.contains("without a clean end"), "{log}");
    assert!(!log.contains("job started"), "it ran the job again:\n{log}");
    let statuses = support::stack::status(&node, std::slice::from_ref(&id)).await;
    let s = &statuses[&id];
    assert_eq!(s["state"], "failed", "{s:#}");
    assert!(
        s["error"].as_str().unwrap_or("").contains("MAX_CRASHES"),
        "{s:#}"
    );
    assert_eq!(
        s["attempts"], 4,
        "three killed runs and the one that refused: {s:#}"
    );
    support::stack::stop(&mut last).await;
    let dead_sub = format!("{}-dead-letter-sub", node.var("TOPIC_ID"));
    let dead = queue
        .pull_some(&dead_sub, 10, Duration::from_secs(2), Settle::Ack)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].attributes["error"].contains("without a clean end"));
    let sub = node.var("SUBSCRIPTION_ID").to_string();
    let left = queue
        .pull_some(&sub, 10, Duration::from_secs(2), Settle::Nack)
        .await
        .unwrap();
    assert!(left.is_empty(), "left on {sub}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_workers_is_dead_lettered_on_the_emulator() {
    let stack = Stack::setup_with("killer", Duration::from_secs(30)).await;
    let queue = Queue::PubSub(stack.pubsub.clone());
    a_job_that_kills_its_workers(stack.cli.clone(), queue, "emulator").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_workers_is_dead_lettered_on_the_embedded_queue() {
    let cli = CliEnv::embedded("killer").set("ACK_DEADLINE_SECONDS", "30");
    let queue = LocalQueue::open(cli.var("QUEUE_FILE"))
        .await
        .expect("open the embedded queue");
    a_job_that_kills_its_workers(cli, Queue::Local(queue), "embedded").await;
}

/// A slow store is not the task's failure: the time its input reads spend waiting on a
/// frozen store is not counted against the task's wall-clock limit (up to the limit itself:
/// the 5 s freeze is more than the 4 s limit, less than the 4 s credit and the task's own
/// second together).
#[tokio::test]
async fn a_frozen_store_does_not_run_out_the_tasks_clock() {
    let rt = runtime();
    let m = module(&rt, "digest").await;
    let s3 = S3Server::start().await;
    let store = AnyStore::S3(s3.store(""));
    let bytes: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 253) as u8).collect();
    store
        .put("inputs/slow", bytes.clone(), Precondition::None)
        .await
        .unwrap();
    let mut ex = executor(store.clone(), rt);
    ex.limits.timeout = Some(Duration::from_secs(4));
    let job: JobId = "slow".parse().unwrap();
    let input =
        r#"{"job_id":"slow","inputs":{"data":"inputs/slow"},"chunk_bytes":1048576,"chunk_ms":50}"#;
    let inputs = [("data", "inputs/slow")];
    let ended = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    // The run alone is timed: it ends past its limit only if the freeze held it up.
    let running = async {
        let end = run(
            &ex,
            &m,
            "slow",
            input,
            &inputs,
            live_lease(),
            CancellationToken::new(),
        )
        .await;
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        (end, started.elapsed())
    };
    let freeze = async {
        // The reads have begun (the checkpoint records some progress; 15 of the 16 chunks,
        // 50 ms apart, and the result's write are still to come), then the store is frozen
        // for longer than the task's 4 s limit.
        loop {
            let h = checkpoint::peek(&store, &job).await.unwrap();
            if h.and_then(|h| h.progress).is_some_and(|(done, _)| done > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !ended.load(std::sync::atomic::Ordering::SeqCst),
            "the run ended before the store was frozen"
        );
        s3.freeze(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        s3.freeze(false);
    };
    let ((end, took), ()) = tokio::join!(running, freeze);
    let doc = result_doc(&end);
    assert_eq!(doc["bytes"], bytes.len() as u64);
    // Frozen while the run went on, the run waited out the freeze (its next store call, at
    // the latest the result's write, answered only after it): past the task's limit,
    // which it was not held to.
    assert!(
        took > Duration::from_secs(4),
        "the run did not outlast its limit ({took:?}): the freeze never held it up"
    );
}

/// A job whose own input calls keep failing while the store answers its checkpoint writes
/// (a broken object, not an outage) is dead-lettered after a bounded number of runs, not
/// retried forever.
#[tokio::test]
async fn a_job_whose_own_objects_keep_failing_is_bounded() {
    let rt = runtime();
    let m = module(&rt, "digest").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    // `inputs/broken` is a directory on disk: it has a size, but reading it fails.
    store
        .put("inputs/broken/x", b"x".to_vec(), Precondition::None)
        .await
        .unwrap();
    let ex = executor(store, rt);
    let input = r#"{"job_id":"broken","inputs":{"data":"inputs/broken"}}"#;
    let inputs = [("data", "inputs/broken")];
    let mut ends = Vec::new();
    for _ in 0..taskhost::exec::MAX_STORAGE_FAILED_RUNS {
        let stop = CancellationToken::new();
        ends.push(run(&ex, &m, "broken", input, &inputs, live_lease(), stop).await);
    }
    let (last, retried) = ends.split_last().unwrap();
    assert!(
        retried.iter().all(|e| matches!(e, JobEnd::Storage(_))),
        "{ends:?}"
    );
    assert!(
        matches!(last, JobEnd::StorageRepeated { runs, .. } if *runs == taskhost::exec::MAX_STORAGE_FAILED_RUNS),
        "{last:?}"
    );
}

/// A worker whose hold on the job ran out before its task finished writes nothing, and
/// aborts none of the uploads the job's checkpoint records: the job's next owner continues
/// them (before the fix, the end of the run aborted them before the ownership proof).
#[tokio::test]
async fn a_worker_that_lost_the_job_aborts_none_of_its_uploads() {
    let rt = runtime();
    let m = module(&rt, "misbehave").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    let job: JobId = "kept".parse().unwrap();
    let key = "jobs/kept/artifacts/copy.bin";
    let upload = store.upload_start(key).await.unwrap();
    let part = store
        .upload_part(key, &upload, 1, vec![1; 8 << 20])
        .await
        .unwrap();
    // A released checkpoint recording the open upload, as a run that was stopped leaves it.
    let header = checkpoint::Header {
        artifacts: vec![taskhost::files::ArtifactRecord {
            name: "copy.bin".into(),
            size: 8 << 20,
            upload: Some(upload.clone()),
            parts: vec![part],
            ..Default::default()
        }],
        ..Default::default()
    };
    store
        .put(
            &checkpoint::key(&job),
            checkpoint::encode(&header, Some(b"{}")),
            Precondition::None,
        )
        .await
        .unwrap();
    // A lease that is never extended: it is over (less the allowance) before the task ends.
    let (_, until) = tokio::sync::watch::channel(Stamp::now().plus(Duration::from_secs(3)));
    let lease = LeaseView {
        lost: CancellationToken::new(),
        until,
        deadline: Duration::from_secs(3),
    };
    let ex = executor(store.clone(), rt);
    let input = r#"{"mode":"sleep","ms":2500}"#;
    let end = run(&ex, &m, "kept", input, &[], lease, CancellationToken::new()).await;
    assert_eq!(end, JobEnd::LeaseLost);
    assert!(store.upload_exists(key, &upload).await.unwrap());
    assert!(
        store
            .get(&taskhost::keys::result(&job))
            .await
            .unwrap()
            .is_none()
    );
}

/// One import call may pass at most `MAX_CALL_BYTES` (128 MiB) to the host: a larger
/// argument traps the task with a clear message, before the host copies it.
#[tokio::test]
async fn an_import_call_over_the_per_call_cap_traps_the_task() {
    let rt = runtime();
    let m = module(&rt, "hostile").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    let ex = executor(store, rt);
    let input = r#"{"mode":"big_writes","artifacts":1,"call_mb":200,"calls":1}"#;
    let end = run(
        &ex,
        &m,
        "huge-call",
        input,
        &[],
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    let JobEnd::Trapped { message, .. } = &end else {
        panic!("{end:?}")
    };
    assert!(message.contains("MAX_CALL_BYTES"), "{message}");
}
