//! Stopping a worker: SIGTERM hands its job to another worker at once, and a drain that
//! cannot flush is still bounded.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use support::cli::CliEnv;
use support::s3::S3Server;
use taskhost::checkpoint;
use taskhost::ids::JobId;
use taskhost::queue::{LocalQueue, Queue};
use taskhost::store::dir::DirStore;
use taskhost::worker::heartbeat::STOP_WAIT;

use super::*;
use crate::support;

/// SIGTERM: the job is released and runs on another worker within 2 s; the stopped worker
/// exits 0.
/// The lease of the hand-over test: the job could only move sooner by being handed back.
const HANDOVER_LEASE: Duration = Duration::from_secs(30);
/// How soon after SIGTERM the job must start on the other worker: half the lease, far below
/// a lapse and far above the hand-over itself (a nack, a redelivery, and the other worker's
/// module fetch and compile, ~1.5 s in the debug build).
const HANDOVER_BOUND: Duration = Duration::from_secs(HANDOVER_LEASE.as_secs() / 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_to_another_worker_before_its_lease_could_lapse() {
    let stack = Stack::setup_with("handover", HANDOVER_LEASE).await;
    let module = stack.push("step_counter").await;
    let cli = stack.cli.set("WORKER_SLOTS", "1");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let id = "handover-job".to_string();
    stack
        .submit(&module, "handover.jsonl", &(job(&id, 80, 100) + "\n"))
        .await
        .success();
    a.wait_for_log("job started", WORKER_START).await;
    wait_progress(&stack, &id, 5).await;
    let mut b = cli.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;

    let signalled = Instant::now();
    a.signal(libc::SIGTERM);
    b.wait_for_log("job started", HANDOVER_LEASE).await;
    let handed = signalled.elapsed();
    assert!(
        handed < HANDOVER_BOUND,
        "ran elsewhere {handed:?} after SIGTERM: not handed over, the lease lapsed"
    );
    eprintln!("handed over in {handed:?}");
    let status = a.wait_exit(WORKER_STOP).await;
    assert_eq!(status.code(), Some(0), "{}", a.log());
    assert!(b.log().contains("resumed=true"), "{}", b.log());
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&id),
            Duration::from_secs(60),
            &mut [&mut b],
        )
        .await;
    assert_sum(&id, 80, &statuses[&id]);
    stop(&mut b).await;
    assert_nothing_left(&stack).await;
}

/// With storage frozen, a drain cannot flush: the worker still exits within
/// SHUTDOWN_TIMEOUT_SECONDS, and a second signal makes it exit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_a_second_signal_exits_at_once() {
    let stack = Stack::setup_with("bounded", LEASE).await;
    // This test's own S3 server: it freezes it.
    let s3 = S3Server::start().await;
    let servers = servers().await;
    let cli = CliEnv::new(&servers.emulator, &s3, "e2e-bounded", "bounded")
        .set("ACK_DEADLINE_SECONDS", LEASE.as_secs().to_string())
        .set("WORKER_SLOTS", "1");
    let module = cli.push_guest("step_counter").await;
    for (timeout, second_signal) in [("2", false), ("60", true)] {
        let id = format!("bounded-{timeout}");
        let path = cli.write_file(&format!("{id}.jsonl"), job(&id, 200, 100) + "\n");
        cli.run(&[
            "submit",
            "--quiet",
            "--module",
            &module,
            path.to_str().unwrap(),
        ])
        .await
        .success();
        let mut w = cli
            .set("SHUTDOWN_TIMEOUT_SECONDS", timeout)
            .spawn(&format!("worker-{timeout}"), &["worker"]);
        w.wait_for_log(&format!("job started job={id}"), WORKER_START)
            .await;
        // The job has saved a step: its drain has a checkpoint to flush.
        wait_progress_of(&cli, &id, 1).await;
        s3.freeze(true);
        let signalled = Instant::now();
        w.signal(libc::SIGTERM);
        let status = if second_signal {
            // The drain has begun (and cannot end: the store is frozen).
            w.wait_for_log("worker stopping", WORKER_STOP).await;
            w.assert_running();
            let again = Instant::now();
            w.signal(libc::SIGTERM);
            let status = w.wait_exit(Duration::from_secs(30)).await;
            let took = again.elapsed();
            // At once: without waiting for the drain (up to 60 s here) or the frozen store.
            // 3 s is room for a loaded machine to deliver the signal and run the exit.
            assert!(
                took < Duration::from_secs(3),
                "second signal: exit took {took:?}"
            );
            assert_eq!(status.code(), Some(130), "{}", w.log());
            status
        } else {
            let status = w.wait_exit(Duration::from_secs(60)).await;
            let took = signalled.elapsed();
            // The drain's 2 s, then the heartbeat's last delete (at most STOP_WAIT, the store
            // being frozen), and 5 s of room for a loaded machine (stopping the receive
            // loop, exiting). A drain that waited on the frozen store would take the store
            // client's retries (minutes) or the job's 20 s, well past it.
            let bound = Duration::from_secs(2) + STOP_WAIT + Duration::from_secs(5);
            assert!(
                took < bound,
                "SHUTDOWN_TIMEOUT 2 s, exit took {took:?} (bound {bound:?})"
            );
            assert_eq!(status.code(), Some(0), "{}", w.log());
            status
        };
        assert!(status.signal().is_none(), "{status}");
        s3.freeze(false);
    }
    drop(stack);
}

/// The way out has one timeout: a pull hung on a queue that does not answer and a drain hung
/// on a store that does not answer share SHUTDOWN_TIMEOUT_SECONDS, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_pull_and_a_hung_drain_share_the_shutdown_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(8);
    // This test's own servers: it freezes both.
    let emulator = support::pubsub::PubsubEmulator::start();
    let s3 = S3Server::start().await;
    let cli = CliEnv::new(&emulator, &s3, "e2e-one-out", "one-out")
        .set("ACK_DEADLINE_SECONDS", LEASE.as_secs().to_string())
        .set("WORKER_SLOTS", "2")
        .set("SHUTDOWN_TIMEOUT_SECONDS", TIMEOUT.as_secs().to_string());
    cli.run(&["setup"]).await.success();
    let module = cli.push_guest("step_counter").await;
    let id = "one-out";
    let path = cli.write_file("one-out.jsonl", job(id, 200, 100) + "\n");
    let args = ["submit", "--quiet", "--module", &module];
    cli.run(&[&args[..], &[path.to_str().unwrap()]].concat())
        .await
        .success();
    let mut w = cli.spawn("worker", &["worker"]);
    w.wait_for_log(&format!("job started job={id}"), WORKER_START)
        .await;
    wait_progress_of(&cli, id, 1).await;
    // The job's drain has a checkpoint to flush (the store frozen), and its free slot's next
    // pull hangs (the queue frozen; pulls come every 0.5 s at most while idle).
    s3.freeze(true);
    emulator.freeze(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    // One timeout, the heartbeat's last delete (at most STOP_WAIT) and 4 s of room for a
    // loaded machine; a pull's wait and then the drain's, each the whole timeout, is 16 s.
    let bound = TIMEOUT + STOP_WAIT + Duration::from_secs(4);
    assert!(took < bound, "exit took {took:?} (bound {bound:?})");
    assert_eq!(status.code(), Some(0), "{}", w.log());
    s3.freeze(false);
    emulator.freeze(false);
}

/// SIGTERM on the embedded queue: the running job's checkpoint is flushed released (its
/// lease ended, `lease_until_ms` 0) and its message is ready for another worker at once (not
/// leased, nothing to wait out), which resumes the job from the checkpoint well before the
/// lease could have lapsed; the stopped worker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_embedded_queue_releases_the_job_and_redelivers_it_at_once() {
    let cli = CliEnv::embedded("handover")
        .set("ACK_DEADLINE_SECONDS", HANDOVER_LEASE.as_secs().to_string())
        .set("WORKER_SLOTS", "1");
    let wasm = support::guests::wasm("step_counter");
    let pushed = cli.run(&["module", "push", wasm.to_str().unwrap()]).await;
    let module = pushed.success().last_line().to_string();
    let id = "handover-job".to_string();
    let path = cli.write_file("handover.jsonl", job(&id, 80, 100) + "\n");
    let args = [
        "submit",
        "--quiet",
        "--module",
        &module,
        path.to_str().unwrap(),
    ];
    cli.run(&args).await.success();
    let mut a = cli.spawn("worker-a", &["worker"]);
    wait_progress_of(&cli, &id, 5).await;

    let signalled = Instant::now();
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(WORKER_STOP).await;
    assert_eq!(status.code(), Some(0), "{}", a.log());
    let store = DirStore::open(cli.var("STORE_DIR")).unwrap();
    let job_id: JobId = id.parse().unwrap();
    let header = checkpoint::peek(&store, &job_id).await.unwrap().unwrap();
    assert_eq!(
        header.lease_until_ms,
        0,
        "not released: {header:?}\n{}",
        a.log()
    );
    let queue = LocalQueue::open(cli.var("QUEUE_FILE")).await.unwrap();
    let backlog = queue.backlog(cli.var("SUBSCRIPTION_ID")).await.unwrap();
    assert_eq!(
        (backlog.ready, backlog.leased),
        (1, 0),
        "not handed back at once"
    );

    let mut b = cli.spawn("worker-b", &["worker"]);
    b.wait_for_log("job started", HANDOVER_LEASE).await;
    let handed = signalled.elapsed();
    assert!(
        handed < HANDOVER_BOUND,
        "ran elsewhere {handed:?} after SIGTERM: not handed over, the lease lapsed"
    );
    assert!(b.log().contains("resumed=true"), "{}", b.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    let statuses = loop {
        let statuses = status_of(&cli, &id).await;
        if statuses["state"] == "done" {
            break statuses;
        }
        b.assert_running();
        assert!(Instant::now() < deadline, "{statuses:#}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_sum(&id, 80, &statuses);
    assert_eq!(statuses["attempts"], 2, "{statuses:#}");
    stop(&mut b).await;
    let queue = Queue::Local(queue);
    let dead_sub = format!("{}-dead-letter-sub", cli.var("TOPIC_ID"));
    for sub in [cli.var("SUBSCRIPTION_ID").to_string(), dead_sub] {
        let left = queue
            .pull_some(
                &sub,
                10,
                Duration::from_secs(2),
                taskhost::queue::Settle::Nack,
            )
            .await
            .unwrap();
        assert!(left.is_empty(), "left on {sub}: {left:?}");
    }
}

/// `status --json` of one job.
async fn status_of(cli: &CliEnv, id: &str) -> serde_json::Value {
    let mut statuses = status(cli, &[id.to_string()]).await;
    statuses.remove(id).unwrap()
}

/// Blocking work in flight does not hold up the exit: SIGTERM while the worker's read of a
/// job's module from the directory store never returns (the module's file is a FIFO no one
/// writes, as a read on a hung network filesystem would hang), and the worker exits 0
/// within the shutdown timeout and its grace (the job's message comes back when its lease
/// lapses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_read_that_never_returns_does_not_hold_up_the_exit() {
    use taskhost::queue::OutgoingMessage;
    let cli = CliEnv::embedded("hung-read")
        .set("WORKER_SLOTS", "1")
        .set("SHUTDOWN_TIMEOUT_SECONDS", "2")
        // For "message received" (the handler's first line).
        .set("RUST_LOG", "info,taskhost::worker::handle=debug");
    let hash = taskhost::ids::ModuleHash::of(b"a module never read");
    let fifo = std::path::Path::new(cli.var("STORE_DIR")).join(taskhost::keys::module(&hash));
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, alive for the call.
    #[allow(unsafe_code)]
    let made = unsafe { libc::mkfifo(path.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let mut w = cli.spawn("worker", &["worker"]);
    w.wait_for_log("worker started", WORKER_START).await;
    let queue = Queue::Local(LocalQueue::open(cli.var("QUEUE_FILE")).await.unwrap());
    let data = format!(r#"{{"job_id":"hung-read","module":"{hash}","steps":3}}"#);
    let message = OutgoingMessage {
        data: data.into_bytes(),
        attributes: Default::default(),
    };
    queue
        .publish(cli.var("TOPIC_ID"), vec![message])
        .await
        .unwrap();
    w.wait_for_log("message received", WORKER_START).await;
    // Its handler is in the read now (nothing else is between the two).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    let log = w.log();
    assert!(!log.contains("module fetched"), "{log}");
    // The drain waited on the hung read until its timeout: the read was in flight.
    assert!(log.contains("shutdown timeout"), "{log}");
    // The timeout, the grace and 4 s of room for a loaded machine.
    let bound = Duration::from_secs(2 + 1 + 4);
    assert!(took < bound, "exit took {took:?} (bound {bound:?}):\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
}
