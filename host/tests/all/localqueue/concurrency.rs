//! Concurrency on one queue file: a pull dropped mid-flight, several threads and several
//! processes leasing from one file, a killed process's lease lapsing.

use super::*;

fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_dropped_mid_flight_loses_no_message_and_counts_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(10)).await;

    // Hold the file's write lock, so that the pulls' claims wait for it while we drop them.
    let lock = rusqlite::Connection::open(q.path()).unwrap();
    let before = data_version(&lock);
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..3 {
        let mut pull = std::pin::pin!(q.queue.pull("worker", 5, LONG));
        let pending = std::future::poll_fn(|cx| Poll::Ready(pull.as_mut().poll(cx).is_pending()));
        assert!(
            pending.await,
            "a pull finished while the write lock was held"
        );
    }
    // Part of the scenario: the write lock stays held a while before it is let go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.execute_batch("ROLLBACK").unwrap();
    // Another connection's commit: the orphaned claims ran (we are the only other writer).
    let started = Instant::now();
    while data_version(&lock) == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claims never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every message is handed back, uncounted: well before the 60 s lease they were claimed
    // under, each comes with its first attempt.
    let mut got = Vec::new();
    while got.len() < ids.len() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {got:?} of {ids:?} came back"
        );
        let batch = q.pull("worker", 10, LONG).await;
        for r in &batch {
            assert_eq!(r.message.delivery_attempt, Some(1), "{:?}", r.message);
            got.push(r.message.message_id.clone());
        }
        q.ack("worker", &batch).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(got, ids);
    assert_eq!(q.backlog("worker").await, Backlog::default());
}

/// Pulls `worker` on a fresh opener of `path`, five at a time, acking each batch, until the
/// subscription is empty; calls `leased` with each message id. Returns the ids.
async fn pull_until_empty(path: &Path, mut leased: impl FnMut(&str)) -> Vec<String> {
    let q = open(path).await;
    let mut ids = Vec::new();
    let started = Instant::now();
    loop {
        let got = q.pull("worker", 5, LONG).await;
        if got.is_empty() {
            let left = q.backlog("worker").await;
            if left == Backlog::default() {
                return ids;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "stuck at {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for r in &got {
            let m = &r.message;
            assert_eq!(m.delivery_attempt, Some(1), "handed out twice: {m:?}");
            leased(&m.message_id);
            ids.push(m.message_id.clone());
        }
        q.ack("worker", &got).await;
    }
}

/// Every id of `all` is in exactly one of `parts`.
fn assert_partition(all: &[String], parts: &[Vec<String>]) {
    let mut seen = HashSet::new();
    for part in parts {
        for id in part {
            assert!(seen.insert(id.clone()), "message {id} leased twice");
        }
    }
    let all: HashSet<_> = all.iter().cloned().collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    let unknown: Vec<_> = seen.difference(&all).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "never leased: {missing:?}; not published: {unknown:?}"
    );
}

#[test]
fn two_queues_in_threads_never_lease_one_message_twice() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (path, ids) = runtime.block_on(async {
        let q = setup(dir.path()).await;
        let ids = q.publish("jobs", texts(200)).await;
        (q.path().to_path_buf(), ids)
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                runtime.block_on(pull_until_empty(&path, |_| {}))
            })
        })
        .collect();
    let parts: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Which thread got which message is the scheduler's business; none got one twice.
    assert_partition(&ids, &parts);
}

/// This module's path in the test binary (`localqueue::concurrency`), for a child's test name.
fn area() -> &'static str {
    module_path!().trim_start_matches("all::")
}

fn child_path() -> PathBuf {
    PathBuf::from(std::env::var(CHILD_PATH_ENV).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_lease_one_message_twice() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("race") {
        // Child: say ready, wait for the go, pull all it can, report each id.
        let barrier = PathBuf::from(std::env::var(CHILD_BARRIER_ENV).unwrap());
        std::fs::write(barrier.join(format!("ready-{}", std::process::id())), b"").unwrap();
        wait_for("the go", || barrier.join("go").exists());
        pull_until_empty(&child_path(), |id| report("id", id)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(300)).await;
    let barrier = dir.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let env = [
        (CHILD_ENV, "race".to_string()),
        (CHILD_PATH_ENV, q.path().display().to_string()),
        (CHILD_BARRIER_ENV, barrier.display().to_string()),
    ];
    let children: Vec<_> = (0..2)
        .map(|_| {
            ChildProcess::spawn(
                &format!("{}::two_processes_never_lease_one_message_twice", area()),
                &env,
            )
        })
        .collect();
    let parts: Vec<_> = tokio::task::spawn_blocking(move || {
        wait_for("two ready children", || {
            let entries = std::fs::read_dir(&barrier).unwrap();
            let names = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
            names.filter(|n| n.starts_with("ready-")).count() == 2
        });
        std::fs::write(barrier.join("go"), b"").unwrap();
        children.into_iter().map(|c| c.values("id")).collect()
    })
    .await
    .unwrap();
    // Which child got which message is the scheduler's business; none got one twice.
    assert_partition(&ids, &parts);
    assert_eq!(q.backlog("worker").await, Backlog::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_lease_lapses_while_a_live_ones_holds() {
    // 6 s: the live child extends half a deadline (3 s) before the end, room for a loaded
    // machine's late extension.
    const DEADLINE: Duration = Duration::from_secs(6);
    if std::env::var(CHILD_ENV).as_deref() == Ok("hold") {
        // Child: pull one message, keep its lease alive, report it, wait to be killed.
        let q = open(&child_path()).await;
        let got = q.pull("worker", 1, DEADLINE).await.remove(0);
        let lease = Lease::start(q.queue.clone(), "worker", &got, DEADLINE);
        report("leased", &got.message.message_id);
        let lost = lease.view().lost;
        tokio::select! {
            _ = lost.cancelled() => panic!("the live lease was lost"),
            _ = tokio::time::sleep(LONG) => panic!("the parent should have killed this child"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let q = setup(dir.path()).await;
    let ids = q.publish("jobs", texts(1)).await;
    let env = [
        (CHILD_ENV, "hold".to_string()),
        (CHILD_PATH_ENV, q.path().display().to_string()),
    ];
    let test = &format!(
        "{}::a_killed_process_lease_lapses_while_a_live_ones_holds",
        area()
    );
    let mut child = ChildProcess::spawn(test, &env);
    let stdout = child.stdout();
    let leased = tokio::task::spawn_blocking(move || reported(stdout, "leased").next())
        .await
        .unwrap();
    assert_eq!(leased.as_deref(), Some(ids[0].as_str()));
    let file = rusqlite::Connection::open(q.path()).unwrap();
    let lease_end = || -> u64 {
        let ms: i64 = file
            .query_row(
                "SELECT visible_at_ms FROM deliveries WHERE message_id = ?1",
                [ids[0].parse::<i64>().unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        ms as u64
    };

    // Past the end of the lease the child pulled under (a second after it, as the file
    // had it then): the live child extended it, so nobody else gets the message.
    let first_end = lease_end();
    while now_ms() < first_end + 1000 {
        let got = q.pull("worker", 1, LONG).await;
        assert!(got.is_empty(), "the live child's lease lapsed: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lease_end() > first_end,
        "the live child never extended its lease"
    );
    child.kill();
    // The killed child's lease as it left it: the message comes back when it ends, neither
    // sooner (a pull answered before it must come back empty) nor much later (half a
    // deadline of room for a loaded machine's pulls; a lease that waited for anything more
    // than its end, say one more deadline, would be later).
    let end = lease_end();
    let again = loop {
        let got = q.pull("worker", 1, LONG).await.pop();
        let answered = now_ms();
        if let Some(r) = got {
            assert!(
                answered >= end,
                "back {} ms before the killed child's lease ended",
                end - answered
            );
            break r;
        }
        assert!(
            answered < end + DEADLINE.as_millis() as u64 / 2,
            "not back {} ms after the killed child's lease ended",
            answered - end
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.message.message_id, ids[0]);
    assert_eq!(again.message.delivery_attempt, Some(2));
    q.ack("worker", &[again]).await;
}

/// Now on the wall clock, in ms since the Unix epoch (the queue file's clock).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
