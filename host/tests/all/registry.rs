//! Task modules as a registry (issue 17), on the directory store and on the S3 test server:
//! tags, a tag resolved once at submit (jobs keep their hash when it moves while they run)
//! and at a worker's start, `module list` / `inspect` output, two moves racing on one tag
//! (exactly one wins), and `rm` / `prune` never deleting a module a job still needs.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Output, Proc};
use support::embedded::Embedded;
use taskhost::ids::{JobId, ModuleHash, ModuleTag};
use taskhost::registry::{self, RegistryError, Stamp};
use taskhost::store::ObjectStore;

/// How long the jobs of one test may take in the debug build.
const TIMEOUT: Duration = Duration::from_secs(120);
const KINDS: [&str; 2] = ["dir", "s3"];
/// The exit codes these commands use (`cli::exit`).
const CONFLICT: i32 = 5;
const ERROR: i32 = 7;

type Env = Embedded;

/// The embedded queue with the directory store (`dir`) or the S3 test server (`s3`).
async fn env(kind: &str, topic: &str) -> Env {
    let cli = CliEnv::embedded(topic)
        .set("ACK_DEADLINE_SECONDS", "4")
        .set("HOSTNAME", "pusher-1");
    Embedded::start(kind, cli).await
}

impl Env {
    async fn run(&self, args: &[&str]) -> Output {
        self.cli.run(args).await
    }

    /// `module push GUEST [--tag T]...`; the hash it printed.
    async fn push(&self, guest: &str, tags: &[&str]) -> String {
        let path = support::guests::wasm(guest);
        let mut args = vec!["module", "push", path.to_str().unwrap()];
        for t in tags {
            args.extend(["--tag", t]);
        }
        let out = self.run(&args).await.success();
        out.last_line().to_string()
    }

    /// `module list --json`, by hash.
    async fn list(&self) -> BTreeMap<String, Value> {
        let out = self.run(&["module", "list", "--json"]).await.success();
        out.stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["module"].as_str().unwrap().to_string(), v)
            })
            .collect()
    }

    async fn inspect(&self, module: &str) -> Value {
        let out = self
            .run(&["module", "inspect", module, "--json"])
            .await
            .success();
        serde_json::from_str(out.last_line()).unwrap()
    }

    /// Submits step-counter jobs `ids` (each `steps` steps of `step_ms`) naming `module`.
    async fn submit(&self, module: &str, ids: &[String], steps: u64, step_ms: u64) -> Output {
        let text: String = ids
            .iter()
            .map(|id| format!("{{\"job_id\":\"{id}\",\"steps\":{steps},\"step_ms\":{step_ms}}}\n"))
            .collect();
        let file = self.cli.write_file(&format!("{}.jsonl", ids[0]), text);
        self.run(&[
            "submit",
            "--quiet",
            "--module",
            module,
            file.to_str().unwrap(),
        ])
        .await
        .success()
    }

    /// Waits until `done(status of each job)` holds, while `worker` runs.
    async fn wait_jobs(&self, ids: &[String], worker: &mut Proc, done: impl Fn(&[&str]) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let statuses = support::stack::status(&self.cli, ids).await;
            let states: Vec<&str> = statuses
                .values()
                .map(|s| s["state"].as_str().unwrap())
                .collect();
            if done(&states) {
                return;
            }
            worker.assert_running();
            assert!(
                Instant::now() < deadline,
                "jobs not there within {TIMEOUT:?}: {statuses:#?}\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The module each job's checkpoint records (its work).
    async fn recorded_module(&self, id: &str) -> String {
        let job: JobId = id.parse().unwrap();
        taskhost::checkpoint::peek(&self.store, &job)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {id} has no checkpoint"))
            .module
    }
}

/// The guest SDK's version, from its Cargo.toml (what it records in the modules it builds).
fn sdk_version() -> String {
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/sdk/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let line = text.lines().find(|l| l.starts_with("version")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Push with tags, `module tag`, `list` and `inspect`; a tag resolved at submit (printed)
/// names the hash in every message: moved while the jobs run, they finish on the module
/// they were submitted with. A worker's `DEFAULT_MODULE` tag resolves once, at its start.
#[tokio::test(flavor = "multi_thread")]
async fn tags_resolve_once_and_jobs_keep_their_hash() {
    for kind in KINDS {
        let env = env(kind, "reg-tags").await;
        let started_ms = taskhost::time::now_ms();
        let a = env.push("step_counter", &["steps:v1"]).await;
        let b = env.push("prime_count", &["prime"]).await;
        assert_ne!(a, b);
        env.run(&["module", "tag", &a, "steps:stable"])
            .await
            .success();
        // Tag names are validated; a tag of a module not in the store is refused.
        let bad = env
            .run(&["module", "tag", &a, "steps/x:v1"])
            .await
            .failure();
        assert_eq!(bad.status.code(), Some(2), "{kind}: {bad}");
        let absent = ModuleHash::of(b"not pushed").to_string();
        let missing = env
            .run(&["module", "tag", &absent, "steps:v9"])
            .await
            .failure();
        assert_eq!(missing.status.code(), Some(ERROR), "{kind}: {missing}");

        let list = env.list().await;
        assert_eq!(list.len(), 2, "{kind}: {list:#?}");
        let row = &list[&a];
        assert_eq!(
            row["tags"],
            serde_json::json!(["steps:stable", "steps:v1"]),
            "{kind}"
        );
        assert_eq!(row["world"], "taskhost:task@0.3.0", "{kind}");
        assert_eq!(row["pushed_by"], "pusher-1", "{kind}");
        let size = std::fs::metadata(support::guests::wasm("step_counter"))
            .unwrap()
            .len();
        assert_eq!(row["size"], size, "{kind}");
        let pushed = row["pushed_ms"].as_u64().unwrap();
        assert!(
            (started_ms..=taskhost::time::now_ms()).contains(&pushed),
            "{kind}"
        );
        assert_eq!(
            list[&b]["tags"],
            serde_json::json!(["prime:latest"]),
            "{kind}"
        );
        let table = env.run(&["module", "list"]).await.success();
        assert!(
            table.stdout.contains(&a[..19]) && table.stdout.contains("steps:stable,steps:v1"),
            "{kind}: {table}"
        );

        // A worker whose DEFAULT_MODULE is a tag resolves it once and logs the hash.
        let mut worker = env
            .cli
            .set("WORKER_SLOTS", "2")
            .set("DEFAULT_MODULE", "steps:stable")
            .spawn("worker", &["worker"]);
        worker
            .wait_for_log("DEFAULT_MODULE resolved", Duration::from_secs(60))
            .await;
        assert!(worker.log().contains(&a), "{kind}: {}", worker.log());

        let jobs = ids("tagged", 3);
        let submitted = env.submit("steps:v1", &jobs, 60, 20).await;
        assert!(
            submitted.stderr.contains(&format!("steps:v1 is {a}")),
            "{kind}: {submitted}"
        );
        // Move the tag while the jobs run: they keep the hash they were submitted with.
        env.wait_jobs(&jobs, &mut worker, |s| s.contains(&"running"))
            .await;
        let moved = env
            .run(&["module", "tag", "prime", "steps:v1"])
            .await
            .success();
        assert!(
            moved.stderr.contains(&format!("(was {a})")),
            "{kind}: {moved}"
        );
        assert_eq!(
            env.inspect("steps:v1").await["module"],
            b.as_str(),
            "{kind}"
        );
        env.wait_jobs(&jobs, &mut worker, |s| s.iter().all(|s| *s == "done"))
            .await;
        for id in &jobs {
            assert_eq!(env.recorded_module(id).await, a, "{kind}: job {id}");
        }
        worker.terminate(Duration::from_secs(30)).await;

        let ia = env.inspect(&a).await;
        assert_eq!(ia["jobs"]["done"], 3, "{kind}: {ia}");
        assert_eq!(ia["jobs"]["running"], 0, "{kind}: {ia}");
        assert_eq!(
            ia["tags"],
            serde_json::json!(["steps:stable"]),
            "{kind}: {ia}"
        );
        let imports: Vec<&str> = ia["imports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            imports.contains(&"taskhost:task/checkpoint@0.3.0"),
            "{kind}: {ia}"
        );
        assert_eq!(ia["exports"], serde_json::json!(["run"]), "{kind}: {ia}");
        assert_eq!(ia["sdk"], sdk_version(), "{kind}: {ia}");
        assert_eq!(env.inspect(&b).await["jobs"]["done"], 0, "{kind}");
        let text = env
            .run(&["module", "inspect", "steps:stable"])
            .await
            .success();
        assert!(
            text.stdout.contains("3 done")
                && text.stdout.contains("world:     taskhost:task@0.3.0"),
            "{kind}: {text}"
        );

        // A worker whose DEFAULT_MODULE tag does not exist refuses to start with
        // `--exit-on-misconfig` (by default it waits for it: `outages.rs`).
        let no_tag = env
            .cli
            .set("DEFAULT_MODULE", "nosuch:v1")
            .run(&["worker", "--exit-on-misconfig"])
            .await
            .failure();
        assert!(
            no_tag.stderr.contains("no module is tagged nosuch:v1"),
            "{kind}: {no_tag}"
        );
    }
}

/// Two moves of one tag from the version both read, at the same time, on the real
/// servers: exactly one wins, the other is told and changes nothing (creating a tag, and
/// moving one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_moves_of_one_tag_exactly_one_wins() {
    let rt = support::exec::runtime();
    for (kind, store, _guard) in support::exec::stores().await {
        let by = |h: &str| Stamp::now(h);
        let a = registry::push(&rt, &store, support::guests::bytes("step_counter"), by("a"))
            .await
            .unwrap()
            .hash;
        let b = registry::push(&rt, &store, support::guests::bytes("prime_count"), by("b"))
            .await
            .unwrap()
            .hash;
        for round in 0..10 {
            let tag: ModuleTag = format!("race:r{round}").parse().unwrap();
            // Round 0..5 race to create the tag; the rest race to move it from `a`.
            if round >= 5 {
                registry::set_tag(&store, &tag, &a, by("setup"))
                    .await
                    .unwrap();
            }
            let seen = registry::read_tag(&store, &tag).await.unwrap();
            let racer = |hash: ModuleHash, host: &'static str| {
                let (store, tag, seen) = (store.clone(), tag.clone(), seen.clone());
                tokio::spawn(async move {
                    registry::move_tag(&store, &tag, &hash, Stamp::now(host), seen.as_ref()).await
                })
            };
            let (one, two) = (racer(a, "one"), racer(b, "two"));
            let (one, two) = (one.await.unwrap(), two.await.unwrap());
            let winner = match (&one, &two) {
                (Ok(_), Err(RegistryError::TagMoved(_))) => a,
                (Err(RegistryError::TagMoved(_)), Ok(_)) => b,
                other => panic!("{kind} round {round}: not exactly one winner: {other:?}"),
            };
            let (now, _) = registry::read_tag(&store, &tag).await.unwrap().unwrap();
            assert_eq!(now.hash().unwrap(), winner, "{kind} round {round}");
            let host = if winner == a { "one" } else { "two" };
            assert_eq!(now.tagged.host, host, "{kind} round {round}");
        }
    }
}

/// `rm` and `prune` delete what no job needs, ask first (refusing without a terminal), keep
/// tagged modules with `--keep-tagged`, and never delete a module a running or waiting
/// job names (also when the batch records name no module: its checkpoint does).
#[tokio::test(flavor = "multi_thread")]
async fn rm_and_prune_never_remove_a_needed_module() {
    for kind in KINDS {
        let env = env(kind, "reg-prune").await;
        let needed = env.push("step_counter", &[]).await;
        let tagged = env.push("prime_count", &["keep:me"]).await;
        let loose = env.push("digest", &[]).await;
        let loose2 = env.push("misbehave", &[]).await;

        let mut worker = env
            .cli
            .set("WORKER_SLOTS", "1")
            .spawn("worker", &["worker"]);
        let jobs = ids("long", 1);
        env.submit(&needed, &jobs, 100_000, 20).await;
        env.wait_jobs(&jobs, &mut worker, |s| s == ["running"])
            .await;
        assert_eq!(env.inspect(&needed).await["jobs"]["running"], 1, "{kind}");
        // Records from before they named modules (ids only): the job's checkpoint names its
        // module, and everything below holds the same.
        for key in env
            .store
            .list(taskhost::keys::SUBMITTED_PREFIX)
            .await
            .unwrap()
        {
            let ids = jobs.iter().map(|j| format!("{j}\n")).collect::<String>();
            let pre = taskhost::store::Precondition::None;
            env.store.put(&key, ids.into_bytes(), pre).await.unwrap();
        }
        assert_eq!(env.inspect(&needed).await["jobs"]["running"], 1, "{kind}");

        // Nothing is old enough; the dry run changes nothing.
        let dry = env
            .run(&[
                "module",
                "prune",
                "--keep-tagged",
                "--older-than",
                "30d",
                "--dry-run",
            ])
            .await
            .success();
        assert!(dry.stderr.contains("0 of 4 modules"), "{kind}: {dry}");
        let dry = env
            .run(&["module", "prune", "--keep-tagged", "--dry-run"])
            .await
            .success();
        assert_eq!(dry.stdout.lines().count(), 2, "{kind}: {dry}");
        // Without --yes and without a terminal, nothing is deleted.
        let asked = env
            .run(&["module", "prune", "--keep-tagged"])
            .await
            .failure();
        assert!(asked.stderr.contains("pass --yes"), "{kind}: {asked}");
        assert_eq!(env.list().await.len(), 4, "{kind}");

        env.run(&["module", "prune", "--keep-tagged", "--yes"])
            .await
            .success();
        let left = env.list().await;
        let mut want = vec![needed.clone(), tagged.clone()];
        want.sort();
        assert_eq!(left.keys().cloned().collect::<Vec<_>>(), want, "{kind}");
        for gone in [&loose, &loose2] {
            let key = taskhost::keys::module(&gone.parse().unwrap());
            assert!(!env.store.exists(&key).await.unwrap(), "{kind}: {key}");
        }

        // rm refuses a module a running job names, and deletes a tag's module with its tag.
        let refused = env.run(&["module", "rm", "--yes", &needed]).await.failure();
        assert_eq!(refused.status.code(), Some(CONFLICT), "{kind}: {refused}");
        env.run(&["module", "rm", "--yes", "keep:me"])
            .await
            .success();
        assert_eq!(
            env.list().await.keys().collect::<Vec<_>>(),
            [&needed],
            "{kind}"
        );
        let gone = env.run(&["module", "inspect", "keep:me"]).await.failure();
        assert!(
            gone.stderr.contains("no module is tagged keep:me"),
            "{kind}: {gone}"
        );

        // Stopped, the job waits for its next delivery: still needed, still kept.
        worker.terminate(Duration::from_secs(30)).await;
        let status = support::stack::status(&env.cli, &jobs).await;
        assert_eq!(status[&jobs[0]]["state"], "waiting", "{kind}: {status:#?}");
        let pruned = env.run(&["module", "prune", "--yes"]).await.success();
        assert!(pruned.stderr.contains("0 of 1 modules"), "{kind}: {pruned}");
        assert!(env.list().await.contains_key(&needed), "{kind}");
        let refused = env.run(&["module", "rm", "--yes", &needed]).await.failure();
        assert_eq!(refused.status.code(), Some(CONFLICT), "{kind}: {refused}");
    }
}

/// A module only queued jobs name (submitted, no worker started them: nothing is stored
/// under `jobs/`) is counted as queued by `inspect` from the batch records, refused by `rm`
/// and kept by `prune`, which deletes the module no job names.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_only_queued_jobs_name_is_kept() {
    for kind in KINDS {
        let env = env(kind, "reg-queued").await;
        let queued = env.push("step_counter", &["work:v1"]).await;
        let loose = env.push("digest", &[]).await;
        let jobs = ids("waiting-for-a-worker", 3);
        // Submitted by tag: the record names the hash the tag resolved to.
        env.submit("work:v1", &jobs, 1, 1).await;
        // Only each job's stored work (`submit` writes it): no job was started.
        let stored = env.store.list(taskhost::keys::JOBS_PREFIX).await.unwrap();
        let works: Vec<String> = jobs
            .iter()
            .map(|id| taskhost::keys::work(&id.parse().unwrap()))
            .collect();
        assert_eq!(
            stored.iter().collect::<std::collections::BTreeSet<_>>(),
            works.iter().collect(),
            "{kind}: no job was started"
        );

        let counts = &env.inspect(&queued).await["jobs"];
        assert_eq!(counts["queued"], 3, "{kind}: {counts}");
        for other in ["running", "waiting", "done", "failed"] {
            assert_eq!(counts[other], 0, "{kind}: {other}: {counts}");
        }
        assert_eq!(env.inspect(&loose).await["jobs"]["queued"], 0, "{kind}");

        let refused = env
            .run(&["module", "rm", "--yes", "work:v1"])
            .await
            .failure();
        assert_eq!(refused.status.code(), Some(CONFLICT), "{kind}: {refused}");
        assert!(refused.stderr.contains("3 queued"), "{kind}: {refused}");

        let pruned = env.run(&["module", "prune", "--yes"]).await.success();
        assert!(pruned.stderr.contains("1 of 2 modules"), "{kind}: {pruned}");
        let left = env.list().await;
        assert_eq!(left.keys().collect::<Vec<_>>(), [&queued], "{kind}");
        assert!(
            env.store
                .exists(&taskhost::keys::module(&queued.parse().unwrap()))
                .await
                .unwrap(),
            "{kind}"
        );
    }
}

/// A job moved to another module (`job retry --module`, as `dead-letter replay --module`)
/// names that module from then on (a batch record, the newest naming it): its usage counts
/// the job, and `module rm` refuses it while the job is queued.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_moved_to_another_module_keeps_that_module() {
    for kind in KINDS {
        let env = env(kind, "reg-moved").await;
        let first = env.push("step_counter", &[]).await;
        let moved = env.push("prime_count", &[]).await;
        let jobs = ids("moved", 1);
        env.submit(&first, &jobs, 10, 0).await;
        assert_eq!(env.inspect(&moved).await["jobs"]["queued"], 0, "{kind}");
        env.run(&["job", "retry", &jobs[0], "--module", &moved])
            .await
            .success();
        assert_eq!(env.inspect(&moved).await["jobs"]["queued"], 1, "{kind}");
        let refused = env.run(&["module", "rm", "--yes", &moved]).await.failure();
        assert_eq!(refused.status.code(), Some(CONFLICT), "{kind}: {refused}");
        assert!(env.list().await.contains_key(&moved), "{kind}");
    }
}
