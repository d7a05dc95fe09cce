//! `taskhost status` against real servers (issue 15, items 5, 6 and 8): jobs visible from
//! the moment they are published (queued), dead letters with their reason (poison at parse
//! time, and failed), the workers' heartbeats (live, dead after SIGKILL, gone after a clean
//! exit), and the status page in headless Chromium.

use crate::support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::stack::*;
use taskhost::queue::OutgoingMessage;
use taskhost::store::ObjectStore;

/// `taskhost status --json` (the overview) as one document.
async fn overview(cli: &CliEnv, extra: &[&str]) -> Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = cli.run(&args).await.success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

/// Polls the overview until `done` holds; panics with the last one after `timeout`.
async fn wait_overview(
    cli: &CliEnv,
    timeout: Duration,
    workers: &mut [&mut Proc],
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let o = overview(cli, &["--all"]).await;
        if done(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "not reached within {timeout:?}: {o:#}\n{}",
            logs(workers)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn by_id(o: &Value) -> BTreeMap<String, Value> {
    o["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap().to_owned(), j.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_and_dead_letters_are_visible() {
    let stack = Stack::setup("st-visible").await;
    let module = stack.push("step_counter").await;
    stack
        .submit(
            &module,
            "jobs.jsonl",
            "{\"job_id\":\"q1\",\"steps\":2}\n{\"job_id\":\"q2\",\"steps\":3}\n{\"job_id\":\"bad-steps\",\"steps\":\"x\"}\n",
        )
        .await
        .success();
    // Poison messages published by hand: one with a valid job id (its module is not a
    // hash), one without a job id.
    let poison = |data: &[u8]| OutgoingMessage {
        data: data.to_vec(),
        attributes: BTreeMap::new(),
    };
    stack
        .pubsub
        .publish(
            &stack.topic,
            vec![
                poison(br#"{"job_id":"poison","module":"not-a-hash"}"#),
                poison(br#"{"steps":3}"#),
            ],
        )
        .await
        .unwrap();

    // Submitted, no worker yet: every submitted job is queued, from one listing.
    let before = overview(&stack.cli, &[]).await;
    assert_eq!(before["counts"]["queued"], 3, "{before:#}");
    assert_eq!(before["counts"]["total"], 3, "{before:#}");
    assert!(
        by_id(&before).values().all(|j| j["state"] == "queued"),
        "{before:#}"
    );
    let queued = overview(&stack.cli, &["--state", "queued", "--page-size", "2"]).await;
    assert_eq!(queued["matching"], 3, "{queued:#}");
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 2, "{queued:#}");

    let mut worker = stack.cli.spawn("worker", &["worker", "--slots", "2"]);
    let after = wait_overview(
        &stack.cli,
        Duration::from_secs(90),
        &mut [&mut worker],
        |o| o["counts"]["done"] == 2 && o["counts"]["failed"] == 2 && o["poison_messages"] == 1,
    )
    .await;
    stop(&mut worker).await;
    assert_eq!(after["counts"]["total"], 4, "{after:#}");
    assert_eq!(after["counts"]["queued"], 0, "{after:#}");
    let jobs = by_id(&after);
    assert_step_result("q1", 2, &jobs["q1"]);
    assert_eq!(jobs["q2"]["state"], "done");
    // Failed by the task: with its reason.
    assert_eq!(jobs["bad-steps"]["state"], "failed");
    let failed = jobs["bad-steps"]["error"].as_str().unwrap();
    assert!(failed.contains("steps"), "{failed}");
    // Poison at parse time with a job id: failed, with the parse error (its `poison/`
    // record, docs/design.md §4); nothing of the job's own is stored.
    assert_eq!(jobs["poison"]["state"], "failed", "{after:#}");
    let why = jobs["poison"]["error"].as_str().unwrap();
    assert!(
        why.contains("poison message") && why.contains("sha256:<64"),
        "{why}"
    );
    assert!(stack.store.list("jobs/poison/").await.unwrap().is_empty());
    // Without a job id: in the list of its own, with its reason.
    let unnamed = &after["poison"][0];
    assert!(
        unnamed["reason"].as_str().unwrap().contains("job_id"),
        "{after:#}"
    );
    // Named, the poison job reads the same; the table shows all of it.
    let named = stack
        .cli
        .run(&["status", "poison", "--json"])
        .await
        .success();
    let named: Value = serde_json::from_str(named.stdout.trim()).unwrap();
    assert_eq!(named["state"], "failed", "{named:#}");
    assert_eq!(named["error"].as_str(), Some(why), "{named:#}");
    let table = stack.cli.run(&["status"]).await.success();
    assert!(
        table
            .stdout
            .starts_with("4 jobs: 0 queued, 0 running, 0 waiting, 2 done, 2 failed"),
        "{table}"
    );
    assert!(
        table.stdout.contains("1 messages without a valid job id"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_accounting_matches_what_its_worker_measured() {
    let stack = Stack::setup("st-acct").await;
    let module = stack.push("digest").await;
    const SIZE: u64 = 300_000;
    let input = stack.cli.write_file("data.bin", vec![7u8; SIZE as usize]);
    // Three chunks, 700 ms apart: the checkpoint is written during the run.
    let jobs = stack.cli.write_file(
        "jobs.jsonl",
        "{\"job_id\":\"acct\",\"copy\":true,\"chunk_bytes\":100000,\"chunk_ms\":700}\n",
    );
    let data = format!("data={}", input.display());
    stack
        .cli
        .run(&[
            "submit",
            "--quiet",
            "--module",
            &module,
            "--input",
            &data,
            jobs.to_str().unwrap(),
        ])
        .await
        .success();
    let addr = support::probes::metrics_addr();
    let mut worker = stack
        .cli
        .set("METRICS_ADDR", &addr)
        .spawn("worker", &["worker", "--slots", "1"]);
    let o = wait_overview(
        &stack.cli,
        Duration::from_secs(90),
        &mut [&mut worker],
        |o| o["counts"]["done"] == 1,
    )
    .await;
    // What the worker counted (its only job, one run).
    let (_, metrics) = support::probes::fetch(&addr, "/metrics").await.unwrap();
    stop(&mut worker).await;
    let counted = |series: &str| support::probes::value(&metrics, series) as u64;
    let a = &by_id(&o)["acct"]["accounting"];
    let artifacts: u64 = (stack
        .store
        .list_entries("jobs/acct/artifacts/")
        .await
        .unwrap())
    .iter()
    .map(|e| e.size)
    .sum();
    assert_eq!(a["input_bytes"], SIZE, "{o:#}");
    assert_eq!(a["input_bytes"], counted("taskhost_input_read_bytes_total"));
    assert!(artifacts > SIZE, "copy.bin and report.json: {artifacts}");
    assert_eq!(a["artifact_bytes"], artifacts, "{o:#}");
    assert_eq!(
        a["artifact_bytes"],
        counted("taskhost_artifact_written_bytes_total")
    );
    assert!(a["fuel"].as_u64().unwrap() > 0, "{o:#}");
    assert_eq!(a["fuel"], counted("taskhost_fuel_used_total"), "{metrics}");
    assert!(a["checkpoint_bytes"].as_u64().unwrap() > 0, "{o:#}");
    assert_eq!(
        a["checkpoint_bytes"],
        counted("taskhost_checkpoint_written_bytes_total"),
        "{metrics}"
    );
    assert!(a["wall_ms"].as_u64().unwrap() >= 3 * 700, "{o:#}");
    assert_eq!(a["attempts"], 1, "{o:#}");
    assert_eq!(a["crashes"], 0, "{o:#}");
    // The selection's totals (one job), the named job and the table say the same.
    assert_eq!(&o["totals"], a, "{o:#}");
    let named = stack.cli.run(&["status", "acct", "--json"]).await.success();
    let named: Value = serde_json::from_str(named.stdout.trim()).unwrap();
    assert_eq!(&named["accounting"], a, "{named:#}");
    let table = stack.cli.run(&["status"]).await.success();
    let fuel = format!("fuel {}", a["fuel"]);
    assert_eq!(
        table.stdout.matches(&fuel).count(),
        2,
        "the job and the total: {table}"
    );
}

/// `status --workers --json`, by worker id.
async fn workers(cli: &CliEnv) -> BTreeMap<String, Value> {
    let out = cli.run(&["status", "--workers", "--json"]).await.success();
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["worker_id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

async fn wait_workers(
    cli: &CliEnv,
    what: &str,
    procs: &mut [&mut Proc],
    done: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = workers(cli).await;
        if done(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "{what}: {w:#?}\n{}", logs(procs));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_show_live_and_dead_workers_and_a_clean_exit_removes_its_own() {
    let stack = Stack::setup("st-beat").await;
    let cli = stack
        .cli
        .set("HEARTBEAT_SECONDS", "1")
        .set("SALAD_MACHINE_ID", "machine-7");
    let mut killed = cli.spawn("killed", &["worker", "--slots", "3"]);
    let mut clean = cli.spawn("clean", &["worker", "--slots", "1"]);
    let live = wait_workers(
        &cli,
        "two live workers",
        &mut [&mut killed, &mut clean],
        |w| w.len() == 2 && w.values().all(|v| v["live"] == true),
    )
    .await;
    let slots: Vec<u64> = live
        .values()
        .map(|v| v["slots"].as_u64().unwrap())
        .collect();
    assert!(slots.contains(&3) && slots.contains(&1), "{live:#?}");
    for v in live.values() {
        assert_eq!(v["machine"], "machine-7");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["running"], 0);
        assert!(v["counters"]["done"].is_u64(), "{v}");
    }
    let killed_id = live
        .iter()
        .find(|(_, v)| v["slots"] == 3)
        .map(|(id, _)| id.clone())
        .unwrap();

    killed.kill9();
    // One read that shows the killed worker dead and the running one live (a read taken
    // while a loaded machine delays the running one's heartbeat may show it late; the
    // next one shows it live again).
    wait_workers(
        &cli,
        "the killed worker dead, the other live",
        &mut [&mut clean],
        |w| {
            w.len() == 2
                && w.iter().all(|(id, v)| {
                    let dead = *id == killed_id;
                    v["live"] == !dead
                })
        },
    )
    .await;
    let text = cli.run(&["status", "--workers"]).await.success();
    assert!(text.stdout.contains(&format!("{killed_id} dead")), "{text}");

    stop(&mut clean).await;
    // A clean exit deletes its record at once; the killed one's stays (recently dead).
    let left = workers(&cli).await;
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        vec![&killed_id],
        "{left:#?}"
    );
}

/// Debian's chromium (tests/setup-chromium.sh installs it).
fn chromium() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("chromium");
        if p.is_file() {
            return p;
        }
    }
    panic!("chromium is not installed: run tests/setup-chromium.sh (tests/run-all.sh does)");
}

/// Loads `url` in headless Chromium with a fresh profile, after its scripts ran, and
/// returns the DOM; with `screenshot`, also saves a PNG of the page there.
fn load(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd
            .arg(format!("--screenshot={}", p.display()))
            .arg("--window-size=1400,900"),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `<tr data-job="ID" ...>` row of the DOM, up to its end.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("data-job=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_real_run_in_chromium() {
    let browser = chromium();
    let cli = CliEnv::embedded("st-page").set("HEARTBEAT_SECONDS", "1");
    let module = cli.push_guest("step_counter").await;
    cli
        .submit_file(&module, "jobs.jsonl", "{\"job_id\":\"p1\",\"steps\":2}\n{\"job_id\":\"p2\",\"steps\":4}\n{\"job_id\":\"p-bad\",\"steps\":\"<img src=x onerror=alert(1)>\"}\n")
        .await
        .success();
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    wait_overview(&cli, Duration::from_secs(60), &mut [&mut worker], |o| {
        o["counts"]["done"] == 2 && o["counts"]["failed"] == 1
    })
    .await;
    // Two more jobs, submitted once no worker runs: one stays queued, one is cancelled.
    stop(&mut worker).await;
    cli.submit_file(
        &module,
        "later.jsonl",
        "{\"job_id\":\"p-later\",\"steps\":1}\n{\"job_id\":\"p-stop\",\"steps\":1}\n",
    )
    .await
    .success();
    cli.run(&["job", "cancel", "p-stop", "--yes"])
        .await
        .success();
    // A live worker for the workers' table, that takes no job (another subscription).
    let mut idle = cli
        .set("SUBSCRIPTION_ID", "st-page-idle-sub")
        .spawn("idle", &["worker", "--slots", "1"]);

    let mut server = cli.spawn("serve", &["status", "--serve", "127.0.0.1:0"]);
    server
        .wait_for_log("status page on http://", Duration::from_secs(30))
        .await;
    let log = server.log();
    let url = log
        .lines()
        .find_map(|l| l.strip_prefix("status page on "))
        .unwrap()
        .trim()
        .to_owned();
    wait_for_heartbeat(&cli, &mut idle).await;

    let (dom, shot) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let dom = load(&url, None);
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
            std::fs::create_dir_all(&dir).unwrap();
            let shot = dir.join("status-page.png");
            let _ = std::fs::remove_file(&shot);
            load(&url, Some(&shot));
            (dom, shot)
        }
    })
    .await
    .unwrap();
    println!("status page screenshot: {}", shot.display());
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{}",
        png.len()
    );

    assert!(
        dom.contains("data-loaded=\"yes\""),
        "the page's script did not run ({browser:?}):\n{dom}"
    );
    let count = |state: &str| {
        let start = dom.find(&format!("id=\"count-{state}\"")).unwrap();
        let b = dom[start..].find("<b>").unwrap() + start + 3;
        let e = dom[b..].find("</b>").unwrap() + b;
        dom[b..e].to_owned()
    };
    assert_eq!(count("total"), "5", "{dom}");
    // Every state has its total (a filter when clicked): the totals add up.
    assert_eq!(count("cancelled"), "1", "{dom}");
    assert_eq!(count("paused"), "0", "{dom}");
    assert!(row(&dom, "p-stop").contains("data-state=\"cancelled\""));
    assert_eq!(count("done"), "2", "{dom}");
    assert_eq!(count("failed"), "1", "{dom}");
    assert_eq!(count("queued"), "1", "{dom}");
    assert_eq!(count("running"), "0", "{dom}");
    let p2 = row(&dom, "p2");
    assert!(p2.contains("data-state=\"done\""), "{p2}");
    assert!(p2.contains("\"sum\":10"), "{p2}");
    assert!(p2.contains("class=\"attempts\">1<"), "{p2}");
    assert!(row(&dom, "p-later").contains("data-state=\"queued\""));
    // The failed job's error carries the task's text: shown as text, never as markup.
    let bad = row(&dom, "p-bad");
    assert!(bad.contains("data-state=\"failed\""), "{bad}");
    assert!(bad.contains("&lt;img src=x onerror=alert(1)&gt;"), "{bad}");
    assert!(!dom.contains("<img"), "{dom}");
    // The live worker.
    assert!(dom.contains("data-live=\"live\""), "{dom}");

    server.kill9();
    stop(&mut idle).await;
}

async fn wait_for_heartbeat(cli: &CliEnv, idle: &mut Proc) {
    wait_workers(cli, "the idle worker's heartbeat", &mut [idle], |w| {
        w.values().any(|v| v["live"] == true)
    })
    .await;
}
