//! Inputs and artifacts (issue 9), in process, on the directory store and on the S3 server:
//! the digest task run by the executor (copies through multipart, limits and errors, a stale
//! worker fenced off after a takeover). The stores' own ranged reads and multipart uploads are
//! in `store_contract`.

use crate::support;
use support::bytes::data;
use support::exec::{binding, executor, live_lease, module, run, runtime, stores};

use std::time::Duration;

use taskhost::checkpoint::{self, Limits, OtherWork};
use taskhost::exec::{Executor, JobEnd};
use taskhost::files::{FileLimits, Manifest, PART_BYTES};
use taskhost::ids::JobId;
use taskhost::job::Work;
use taskhost::queue::Stamp;
use taskhost::queue::lease::LeaseView;
use taskhost::runtime::{JobLimits, Prepared, Runtime};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{Multipart as _, ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

async fn digest(rt: &Runtime) -> Prepared {
    module(rt, "digest").await
}

fn crc_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

async fn run_digest(
    ex: &Executor<AnyStore>,
    m: &Prepared,
    job: &str,
    input: &str,
    inputs: &[(&str, &str)],
    lease: LeaseView,
) -> JobEnd {
    run(ex, m, job, input, inputs, lease, CancellationToken::new()).await
}

#[tokio::test]
async fn a_50_mb_copy_goes_through_multipart_and_is_byte_identical() {
    let rt = runtime();
    let m = digest(&rt).await;
    let bytes = data(50 << 20, 7);
    for (kind, store, _guard) in stores().await {
        store
            .put("inputs/fifty", bytes.clone(), Precondition::None)
            .await
            .unwrap();
        let ex = executor(store.clone(), rt.clone(), FileLimits::default());
        let input = r#"{"job_id":"fifty","inputs":{"data":"inputs/fifty"},"copy":true}"#;
        let end = run_digest(
            &ex,
            &m,
            "fifty",
            input,
            &[("data", "inputs/fifty")],
            live_lease(),
        )
        .await;
        let JobEnd::Done { result, .. } = end else {
            panic!("{kind}: {end:?}")
        };
        let doc: serde_json::Value = serde_json::from_str(&result).unwrap();
        assert_eq!(doc["bytes"], bytes.len() as u64, "{kind}");
        assert_eq!(doc["crc32"], crc_hex(&bytes), "{kind}");

        let job: JobId = "fifty".parse().unwrap();
        let manifest = Manifest::read(&store, &job).await.unwrap();
        let names: Vec<_> = manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["copy.bin", "report.json"], "{kind}");
        let copy = store
            .get("jobs/fifty/artifacts/copy.bin")
            .await
            .unwrap()
            .unwrap();
        assert!(
            copy.bytes == bytes,
            "{kind}: copy.bin is the input, byte for byte"
        );
        assert_eq!(manifest.artifacts[0].size, bytes.len() as u64);
        let report = store
            .get("jobs/fifty/artifacts/report.json")
            .await
            .unwrap()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&report.bytes).unwrap();
        assert_eq!(report, doc, "{kind}: report.json is the result");
        if kind == "s3" {
            // A multipart object's ETag is "<md5 of the part md5s>-<parts>".
            let parts = (bytes.len()).div_ceil(PART_BYTES);
            assert!(
                copy.etag
                    .0
                    .trim_matches('"')
                    .ends_with(&format!("-{parts}")),
                "copy.bin was not uploaded in {parts} parts: ETag {}",
                copy.etag
            );
        }
        // Nothing is left of the uploads on the directory store.
        if let AnyStore::Dir(d) = &store {
            let uploads = d.root().join(".uploads");
            let left = std::fs::read_dir(&uploads).map_or(0, |r| r.count());
            assert_eq!(left, 0, "parts left in {}", uploads.display());
        }
    }
}

#[tokio::test]
async fn input_and_artifact_errors_are_clear() {
    let rt = runtime();
    let m = digest(&rt).await;
    for (kind, store, _guard) in stores().await {
        store
            .put("inputs/two", data(2 << 20, 9), Precondition::None)
            .await
            .unwrap();
        let limits = FileLimits {
            artifact_bytes: 1 << 20,
            ..FileLimits::default()
        };
        let ex = executor(store.clone(), rt.clone(), limits);
        let failed = |end: JobEnd| match end {
            JobEnd::TaskFailed(m) => m,
            other => panic!("{kind}: expected a task failure, got {other:?}"),
        };

        // The message names no input `data`.
        let input = r#"{"job_id":"noname","inputs":{"other":"inputs/two"}}"#;
        let e = failed(
            run_digest(
                &ex,
                &m,
                "noname",
                input,
                &[("other", "inputs/two")],
                live_lease(),
            )
            .await,
        );
        assert!(e.contains("data") && e.contains("no input"), "{kind}: {e}");

        // It names one whose object does not exist.
        let input = r#"{"job_id":"gone","inputs":{"data":"inputs/gone"}}"#;
        let e = failed(
            run_digest(
                &ex,
                &m,
                "gone",
                input,
                &[("data", "inputs/gone")],
                live_lease(),
            )
            .await,
        );
        assert!(
            e.contains("data") && e.contains("does not exist"),
            "{kind}: {e}"
        );
        assert!(
            !e.contains("inputs/gone"),
            "{kind}: the key is not shown to the task: {e}"
        );

        // copy.bin would outgrow the 1 MiB artifact limit.
        let input = r#"{"job_id":"big","inputs":{"data":"inputs/two"},"copy":true}"#;
        let e = failed(
            run_digest(
                &ex,
                &m,
                "big",
                input,
                &[("data", "inputs/two")],
                live_lease(),
            )
            .await,
        );
        assert!(
            e.contains("copy.bin") && e.contains("1048576"),
            "{kind}: {e}"
        );
        let big: JobId = "big".parse().unwrap();
        assert!(
            Manifest::read(&store, &big)
                .await
                .unwrap()
                .artifacts
                .is_empty()
        );

        // The read limit.
        let ex = executor(
            store.clone(),
            rt.clone(),
            FileLimits {
                input_read_bytes: 1 << 20,
                ..FileLimits::default()
            },
        );
        let input = r#"{"job_id":"readlimit","inputs":{"data":"inputs/two"}}"#;
        let e = failed(
            run_digest(
                &ex,
                &m,
                "readlimit",
                input,
                &[("data", "inputs/two")],
                live_lease(),
            )
            .await,
        );
        assert!(e.contains("limit") && e.contains("1048576"), "{kind}: {e}");
    }
}

/// A lease that ends `for_ms` from now and is never extended (deadline 10 s).
fn ending_lease(for_ms: u64) -> LeaseView {
    let (_, until) = tokio::sync::watch::channel(Stamp::now().plus(Duration::from_millis(for_ms)));
    LeaseView {
        lost: CancellationToken::new(),
        until,
        deadline: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_stale_worker_writes_no_artifact_after_a_takeover() {
    let rt = runtime();
    let m = digest(&rt).await;
    let bytes = data(20 << 20, 11);
    for (kind, store, _guard) in stores().await {
        store
            .put("inputs/x", bytes.clone(), Precondition::None)
            .await
            .unwrap();
        let job: JobId = "stale".parse().unwrap();
        let input = r#"{"job_id":"stale","inputs":{"data":"inputs/x"},"copy":true}"#;
        let b = binding(input, &[("data", "inputs/x")]);
        // Worker A claims under a lease that is about to end; worker B takes the job over
        // once it has and runs it to its end.
        let stale_lease = ending_lease(100);
        let a = checkpoint::claim(&store, &job, "a", &stale_lease, &b.work, OtherWork::Refuse)
            .await
            .unwrap();
        // Time itself is what is waited for: A's 100 ms lease ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ex = executor(store.clone(), rt.clone(), FileLimits::default());
        let end = run_digest(
            &ex,
            &m,
            "stale",
            input,
            &[("data", "inputs/x")],
            live_lease(),
        )
        .await;
        assert!(matches!(end, JobEnd::Done { .. }), "{kind}: {end:?}");
        let copy_tag = store.head("jobs/stale/artifacts/copy.bin").await.unwrap();
        let manifest = store.get("jobs/stale/manifest").await.unwrap().unwrap();

        // Worker A wakes up and runs its task on the checkpoint it claimed, over other bytes
        // (so any copy it wrote would show): every artifact write is refused, the task
        // stops, and B's objects are untouched.
        store
            .put("inputs/x", data(20 << 20, 12), Precondition::None)
            .await
            .unwrap();
        let ckpt = checkpoint::Checkpointer::start(
            store.clone(),
            &job,
            a,
            Limits::default(),
            stale_lease.clone(),
        );
        let files = taskhost::files::JobFiles::new(
            store.clone(),
            &job,
            b.inputs.clone(),
            vec![],
            ckpt.clone(),
            &FileLimits::default(),
        );
        let report = rt
            .run(
                &m,
                taskhost::runtime::RunRequest {
                    job: &job,
                    attempt: 1,
                    input,
                    limits: &JobLimits::default(),
                    checkpoint: ckpt.clone(),
                    files,
                    cancel: CancellationToken::new(),
                },
            )
            .await;
        assert_eq!(
            report.outcome,
            taskhost::runtime::Outcome::Conflict,
            "{kind}: the stale run must end as a conflict"
        );
        assert_eq!(
            store.head("jobs/stale/artifacts/copy.bin").await.unwrap(),
            copy_tag,
            "{kind}: the stale worker rewrote copy.bin"
        );
        assert_eq!(
            store
                .get("jobs/stale/manifest")
                .await
                .unwrap()
                .unwrap()
                .etag,
            manifest.etag,
            "{kind}"
        );
        let copy = store
            .get("jobs/stale/artifacts/copy.bin")
            .await
            .unwrap()
            .unwrap();
        assert!(copy.bytes == bytes, "{kind}: copy.bin is still the input");
    }
}

/// A task that fails because the store failed it (here: an input read the directory store
/// cannot serve) is not charged with the failure: the job goes back for a retry, with no
/// error recorded and nothing counted.
#[tokio::test]
async fn a_task_failing_after_a_storage_error_is_retried_not_failed() {
    let rt = runtime();
    let m = digest(&rt).await;
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(dir.path()).unwrap());
    // `inputs/broken` is a directory: its size reads, its bytes do not.
    store
        .put("inputs/broken/inside", b"x".to_vec(), Precondition::None)
        .await
        .unwrap();
    let ex = executor(store.clone(), rt, FileLimits::default());
    let input = r#"{"job_id":"flaky","inputs":{"data":"inputs/broken"}}"#;
    let end = run_digest(
        &ex,
        &m,
        "flaky",
        input,
        &[("data", "inputs/broken")],
        live_lease(),
    )
    .await;
    assert!(matches!(end, JobEnd::Storage(_)), "{end:?}");
    assert!(store.get("jobs/flaky/error").await.unwrap().is_none());
    let job: JobId = "flaky".parse().unwrap();
    let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!(
        (header.failures, header.lease_until_ms),
        (0, 0),
        "nothing counted, released"
    );
}

/// A save's data and the artifacts' records saved with it reach the store together: no
/// checkpoint write holds one save's data with another save's records (the writer
/// uploads as fast as it can while saves keep coming; a reader checks the versions it sees,
/// until it has seen 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_save_and_its_artifact_records_are_written_together() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const VERSIONS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let job: JobId = "together".parse().unwrap();
    let lease = live_lease();
    let claimed = checkpoint::claim(
        &store,
        &job,
        "w",
        &lease,
        &Work::default(),
        OtherWork::Refuse,
    )
    .await
    .unwrap();
    let limits = Limits {
        min_write_interval: Duration::ZERO,
        ..Limits::default()
    };
    let ckpt = checkpoint::Checkpointer::start(store.clone(), &job, claimed, limits, lease);
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, key, seen) = (
            store.clone(),
            taskhost::keys::checkpoint(&job),
            seen.clone(),
        );
        tokio::spawn(async move {
            let (mut last, mut torn) = (None, Vec::new());
            while seen.load(Ordering::Relaxed) < VERSIONS {
                let obj = store.get(&key).await.unwrap().unwrap();
                if last.replace(obj.etag.clone()) == Some(obj.etag.clone()) {
                    continue;
                }
                let (header, data) = checkpoint::decode(&obj.bytes).unwrap();
                let Some(data) = data else { continue };
                let i: u64 = String::from_utf8(data).unwrap().parse().unwrap();
                let recorded = header.artifacts.first().map(|a| a.size);
                if recorded != Some(i) {
                    torn.push((i, recorded));
                }
                seen.fetch_add(1, Ordering::Relaxed);
            }
            torn
        })
    };
    let started = std::time::Instant::now();
    let mut i = 0u64;
    while seen.load(Ordering::Relaxed) < VERSIONS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reader saw only {} versions",
            seen.load(Ordering::Relaxed)
        );
        let record = taskhost::files::ArtifactRecord {
            name: "out.bin".into(),
            size: i,
            ..Default::default()
        };
        ckpt.save_with(i.to_string().into_bytes(), vec![record])
            .unwrap();
        i += 1;
        if i.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
    }
    let torn = reader.await.unwrap();
    assert!(
        torn.is_empty(),
        "{} of {VERSIONS} versions torn: {torn:?}",
        torn.len()
    );
}

/// An artifact handle dropped unfinished discards its upload only while this worker owns the
/// job: one that lost it (its lease taken over) leaves the upload to the new owner, which may
/// be continuing it from the checkpoint that records it.
#[tokio::test]
async fn a_worker_that_lost_the_job_aborts_no_upload() {
    for (kind, store, _guard) in stores().await {
        let job: JobId = "abort".parse().unwrap();
        let claimed = checkpoint::claim(
            &store,
            &job,
            "a",
            &live_lease(),
            &Work::default(),
            OtherWork::Refuse,
        )
        .await
        .unwrap();
        let ckpt = checkpoint::Checkpointer::start(
            store.clone(),
            &job,
            claimed,
            Limits::default(),
            live_lease(),
        );
        let artifacts = taskhost::files::Artifacts::new(
            store.clone(),
            job.clone(),
            vec![],
            ckpt.fence(),
            FileLimits::default(),
        );
        // Two artifacts, each with a part uploaded: an upload each.
        let mut open = Vec::new();
        for name in ["kept", "discarded"] {
            let h = artifacts.create(name).unwrap();
            artifacts.write(&h, data(PART_BYTES + 1, 3)).await.unwrap();
            let upload = artifacts
                .snapshot()
                .into_iter()
                .find(|r| r.name == name)
                .and_then(|r| r.upload)
                .expect("an upload started");
            open.push((h, taskhost::keys::artifact(&job, name), upload));
        }
        let (discarded, kept) = (open.pop().unwrap(), open.pop().unwrap());
        // Owned: dropped, its upload is aborted.
        artifacts.drop_handle(discarded.0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store
            .upload_exists(&discarded.1, &discarded.2)
            .await
            .unwrap()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind}: never aborted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Lost: dropped, its upload stays for the new owner.
        ckpt.lose();
        artifacts.drop_handle(kept.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            store.upload_exists(&kept.1, &kept.2).await.unwrap(),
            "{kind}: a worker that lost the job aborted its upload"
        );
    }
}
