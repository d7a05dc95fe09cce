//! SaladCloud (issue 18): the IMDS client and the deletion cost, against a local stand-in of
//! SaladCloud's instance metadata service (`support::imds`, which checks every request
//! against the service's published OpenAPI shapes).

use crate::support;

use std::time::{Duration, Instant};

use support::cli::CliEnv;
use support::imds::{Imds as StandIn, JWT};
use taskhost::salad::imds::{MAX_DELETION_COST, MAX_REASON_CHARS};
use taskhost::salad::{Imds, ImdsConfig, ImdsError};

fn client(url: &str) -> Imds {
    Imds::new(&ImdsConfig {
        base_url: url.to_owned(),
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test]
async fn the_client_speaks_the_documented_operations() {
    let imds = StandIn::start();
    let c = client(imds.url());
    let status = c.status().await.unwrap();
    assert!(status.ready && status.started);
    assert_eq!(c.token().await.unwrap(), JWT);
    c.set_deletion_cost(0).await.unwrap();
    c.set_deletion_cost(MAX_DELETION_COST).await.unwrap();
    assert_eq!(c.deletion_cost().await.unwrap(), MAX_DELETION_COST);
    c.reallocate("the clock is off").await.unwrap();
    // Too long for the service: cut to what it accepts, still sent.
    c.reallocate(&"x".repeat(5000)).await.unwrap();
    // Empty: the service wants at least one character.
    c.reallocate("").await.unwrap();
    assert_eq!(imds.deletion_costs(), [0, MAX_DELETION_COST]);
    let reasons = imds.reallocations();
    assert_eq!(reasons.len(), 3);
    assert_eq!(reasons[0], "the clock is off");
    assert_eq!(reasons[1].chars().count(), MAX_REASON_CHARS);
    assert!(!reasons[2].is_empty());
    assert_eq!(imds.violations(), Vec::<String>::new());
}

/// Every call is bounded: a service that accepts and never answers, and one that is not
/// there, are errors within the timeout, never a hang.
#[tokio::test]
async fn calls_are_bounded_and_fail_softly() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let c = Imds::new(&ImdsConfig {
        base_url: format!("http://{addr}"),
        timeout: Duration::from_millis(300),
    })
    .unwrap();
    let started = Instant::now();
    let err = c.set_deletion_cost(1).await.unwrap_err();
    assert!(matches!(err, ImdsError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(silent);
    let err = c.status().await.unwrap_err();
    assert!(
        matches!(err, ImdsError::Unreachable(_) | ImdsError::Timeout(_)),
        "{err}"
    );
    // Nothing listening: refused at once.
    let err = client("http://127.0.0.1:1").token().await.unwrap_err();
    assert!(matches!(err, ImdsError::Unreachable(_)), "{err}");
}

/// The deletion cost across a job's life, as the worker sets it on SaladCloud: 0 when idle,
/// positive (below the maximum) while the job runs, the maximum while its result is written,
/// 0 again after. A proxy setting in the environment is never used.
///
/// The worker sends the latest value only (a value that changed back before its sender got
/// to it is never sent): the result's write takes milliseconds, so the maximum may be
/// skipped, and what is asserted is what holds whatever the timing: the values sent are
/// the load's in its order (idle; running, growing with the job's age, with the maximum
/// at most once after the first; idle). The running value is sent: the job runs 5 s, and
/// the sender is idle when it starts. (The maximum during a write: `salad::cost`'s unit
/// tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_the_deletion_cost_current() {
    let imds = StandIn::start();
    let cli = CliEnv::embedded("salad-cost")
        .set("SALAD_MACHINE_ID", "machine-1")
        .set("SALAD_IMDS_URL", imds.url())
        .set("HTTP_PROXY", "http://127.0.0.1:1")
        .set("http_proxy", "http://127.0.0.1:1")
        .set("WORKER_SLOTS", "1");
    let module = cli.push_guest("step_counter").await;
    let mut worker = cli.spawn("worker", &["worker"]);
    // Idle first.
    support::child::wait_for("the idle cost", || {
        imds.deletion_costs().first() == Some(&0)
    });
    cli.submit_file(
        &module,
        "jobs.jsonl",
        "{\"job_id\":\"cost-1\",\"steps\":20,\"step_ms\":250}\n",
    )
    .await
    .success();
    worker
        .wait_for_log("job done", Duration::from_secs(60))
        .await;
    support::child::wait_for("the cost back to 0 after the job", || {
        imds.deletion_costs().len() >= 3 && imds.deletion_costs().last() == Some(&0)
    });
    let costs = imds.deletion_costs();
    assert_eq!(costs[0], 0, "idle first: {costs:?}");
    // Then the job's life, 0 at the end: a running value first (the job ran 5 s before its
    // result was written), the maximum at most once (one write of outputs), the running
    // values growing with the job's age.
    let life = &costs[1..costs.len() - 1];
    assert!(
        life.first()
            .is_some_and(|c| (1..MAX_DELETION_COST).contains(c)),
        "no running cost first in {costs:?}"
    );
    let running: Vec<i32> = life
        .iter()
        .copied()
        .filter(|c| *c != MAX_DELETION_COST)
        .collect();
    assert!(
        running.iter().all(|c| (1..MAX_DELETION_COST).contains(c)) && running.is_sorted(),
        "{costs:?}"
    );
    assert!(
        life.len() - running.len() <= 1,
        "the maximum twice: {costs:?}"
    );
    assert_eq!(imds.violations(), Vec::<String>::new());
    worker.terminate(Duration::from_secs(15)).await;
}

/// Off SaladCloud (no SALAD_MACHINE_ID) the worker never calls the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_saladcloud_the_service_is_never_called() {
    let imds = StandIn::start();
    let cli = CliEnv::embedded("salad-off").set("SALAD_IMDS_URL", imds.url());
    let mut worker = cli.spawn("worker", &["worker"]);
    worker
        .wait_for_log("worker started", Duration::from_secs(30))
        .await;
    worker.terminate(Duration::from_secs(15)).await;
    assert_eq!(imds.requests(), 0);
}

/// A reallocator that asks `imds` after `after_host_faults` host faults in a row.
fn reallocator(imds: &StandIn, after_host_faults: u32) -> taskhost::salad::Reallocator {
    taskhost::salad::Reallocator::new(
        client(imds.url()),
        taskhost::salad::ReallocateConfig {
            after_host_faults,
            ..Default::default()
        },
    )
}

/// Reallocation asks once, with its reason, after the configured host faults in a row, and
/// never for faults a done job separated.
#[tokio::test]
async fn repeated_host_faults_reallocate_once() {
    let imds = StandIn::start();
    let r = reallocator(&imds, 3);
    r.host_fault("instantiate failed").await;
    r.host_fault("instantiate failed").await;
    r.job_done();
    r.host_fault("instantiate failed").await;
    r.host_fault("instantiate failed").await;
    r.clock(false).await;
    assert_eq!(imds.reallocations(), Vec::<String>::new());
    r.host_fault("the pool is exhausted").await;
    r.host_fault("the pool is exhausted").await;
    let reasons = imds.reallocations();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("3 host faults") && reasons[0].contains("the pool is exhausted"),
        "{reasons:?}"
    );
    assert_eq!(imds.violations(), Vec::<String>::new());
}

/// Host faults of several slots at once ask once: the first request is made while the
/// others wait, and they find it made.
#[tokio::test]
async fn host_faults_at_once_reallocate_once() {
    let imds = StandIn::start();
    let r = reallocator(&imds, 1);
    let faults = (0..8).map(|i| {
        let r = &r;
        async move {
            r.host_fault(&format!("slot {i}: the pool is exhausted"))
                .await
        }
    });
    futures_util::future::join_all(faults).await;
    let reasons = imds.reallocations();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(imds.violations(), Vec::<String>::new());
}

/// A node that fails the startup self-check (here: compiling far beyond the limit, the
/// limit set absurdly low) asks for another node once, with its reason, says so on
/// `/readyz`, takes no job and stays up (a non-zero exit would keep the node from the
/// workload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fails_its_self_check_asks_for_another() {
    let imds = StandIn::start();
    let cli = CliEnv::embedded("salad-selfcheck")
        .set("SALAD_MACHINE_ID", "machine-slow")
        .set("SALAD_IMDS_URL", imds.url())
        .set("REALLOCATE_AFTER_COMPILE_SECONDS", "0.000001");
    asks_for_another(
        &imds,
        cli,
        |cli| cli.spawn("worker", &["worker"]),
        "compiling",
    )
    .await;
}

/// The same for a node that cannot compile at all (its kernel refuses to make memory
/// executable: ENOMEM, as when it is out of memory), with the default limit.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_compile_asks_for_another() {
    let imds = StandIn::start();
    let cli = CliEnv::embedded("salad-cannot-compile")
        .set("SALAD_MACHINE_ID", "machine-no-exec")
        .set("SALAD_IMDS_URL", imds.url());
    let spawn = |cli: &CliEnv| cli.spawn_refusing_executable_memory("worker", &["worker"]);
    asks_for_another(&imds, cli, spawn, "cannot compile modules").await;
}

/// Starts the worker (`spawn`, on `cli` with a metrics address added) and checks that it
/// fails its self-check, saying `says`, as a node should.
async fn asks_for_another(
    imds: &StandIn,
    cli: CliEnv,
    spawn: impl FnOnce(&CliEnv) -> support::cli::Proc,
    says: &str,
) {
    let port = support::pubsub::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = spawn(&cli.set("METRICS_ADDR", &addr));
    worker
        .wait_for_log("reallocation asked", Duration::from_secs(60))
        .await;
    let reasons = imds.reallocations();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("startup self-check") && reasons[0].contains(says),
        "{reasons:?}"
    );
    let body = http_get(&addr, "/readyz");
    assert!(
        body.starts_with("503") && body.contains("self-check"),
        "{body}"
    );
    worker.assert_running();
    assert!(!worker.log().contains("worker started"), "{}", worker.log());
    assert_eq!(imds.violations(), Vec::<String>::new());
    worker.terminate(Duration::from_secs(15)).await;
}

/// A cache directory that cannot be written because of the settings (every node alike) is
/// never a reason to reallocate: the worker says what to fix and runs its jobs with the
/// modules in memory only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_directory_every_node_shares_never_reallocates() {
    let imds = StandIn::start();
    let cli = CliEnv::embedded("salad-cachedir")
        .set("SALAD_MACHINE_ID", "machine-1")
        .set("SALAD_IMDS_URL", imds.url());
    // A directory below a regular file: it can never be created.
    let file = cli.write_file("not-a-dir", "");
    let cli = cli.set(
        "TASKHOST_CACHE_DIR",
        file.join("cache").display().to_string(),
    );
    let module = cli.push_guest("step_counter").await;
    let mut worker = cli.spawn("worker", &["worker"]);
    worker
        .wait_for_log("worker started", Duration::from_secs(60))
        .await;
    assert!(
        worker.log().contains("cannot be written") && worker.log().contains("TASKHOST_CACHE_DIR"),
        "{}",
        worker.log()
    );
    cli.submit_file(
        &module,
        "jobs.jsonl",
        "{\"job_id\":\"mem-1\",\"steps\":3}\n",
    )
    .await
    .success();
    worker
        .wait_for_log("job done", Duration::from_secs(60))
        .await;
    assert_eq!(imds.reallocations(), Vec::<String>::new());
    worker.terminate(Duration::from_secs(15)).await;
}

/// `GET path` on `addr`: the status line and body, as one string.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.split_once(' ')
        .map_or(text.clone(), |(_, rest)| rest.to_owned())
}
