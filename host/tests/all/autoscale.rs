//! `taskhost autoscale` (issue 18 item 7) and its SaladCloud API client, against a local
//! stand-in of SaladCloud's public API (`support::salad_api`: checks each request's method,
//! path, `Salad-Api-Key` header, content type and JSON body against `salad-cloud.yaml`). The
//! decision itself is table-tested beside its code (`salad::autoscale`).

use crate::support;

use std::time::Duration;

use support::cli::CliEnv;
use support::salad_api::{GROUP, KEY, ORG, PROJECT, SaladApi as StandIn};
use taskhost::salad::api::{ApiConfig, ApiError, ApiKey, Name, SaladApi};

fn client(url: &str, key: &str) -> SaladApi {
    SaladApi::new(&ApiConfig {
        base_url: url.to_owned(),
        organization: Name::parse("org", ORG).unwrap(),
        project: Name::parse("project", PROJECT).unwrap(),
        container_group: Name::parse("group", GROUP).unwrap(),
        api_key: ApiKey::new(key.to_owned()).unwrap(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

#[tokio::test]
async fn the_client_speaks_the_published_api() {
    let api = StandIn::start(2, "running");
    let c = client(&api.url(), KEY);
    let g = c.group().await.unwrap();
    assert_eq!((g.replicas, g.started), (2, true));
    c.set_replicas(5).await.unwrap();
    c.stop().await.unwrap();
    let g = c.group().await.unwrap();
    assert_eq!((g.replicas, g.started), (5, false));
    c.start().await.unwrap();
    c.set_replicas(0).await.unwrap();
    assert_eq!(api.calls(), ["replicas=5", "stop", "start", "replicas=0"]);
    // Over SaladCloud's limit: refused before any request.
    let before = api.requests();
    assert!(c.set_replicas(501).await.is_err());
    assert_eq!(api.requests(), before);
    assert_eq!(api.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_key_is_an_error_that_never_shows_it() {
    let api = StandIn::start(1, "running");
    let wrong = "salad_cloud_user_WRONGKEY987";
    let err = client(&api.url(), wrong).group().await.unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 401, .. }), "{err}");
    let said = format!("{err} {err:?}");
    assert!(said.contains("SALAD_API_KEY"), "{said}");
    assert!(!said.contains(wrong), "{said}");
    // Nothing listening: an error, not a hang.
    let err = client("http://127.0.0.1:1/api/public", KEY)
        .group()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unreachable(_)), "{err}");
    assert!(!format!("{err:?}").contains(KEY));
}

/// A redirect is not followed: the key (a custom header, which an HTTP client would send on
/// to the host a redirect names) never leaves for another server; the call is an error.
#[tokio::test]
async fn a_redirect_is_not_followed_with_the_key() {
    use std::io::{BufRead as _, Write as _};
    let api = StandIn::start(1, "running");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector = format!("http://{}/api/public", listener.local_addr().unwrap());
    let location = api.url();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}/organizations/{ORG}/projects/{PROJECT}/containers/{GROUP}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let err = client(&redirector, KEY).group().await.unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 307, .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains(KEY));
    assert_eq!(api.requests(), 0, "the redirect was followed");
}

/// `CliEnv` for the command: the embedded store, the stand-in's URL and names, the key in
/// the environment, 2 slots per replica, at most 5 replicas.
fn env(api: &StandIn, name: &str) -> CliEnv {
    CliEnv::embedded(name)
        .set("SALAD_API_URL", api.url())
        .set("SALAD_ORGANIZATION", ORG)
        .set("SALAD_PROJECT", PROJECT)
        .set("SALAD_CONTAINER_GROUP", GROUP)
        .set("SALAD_API_KEY", KEY)
        .set("WORKER_SLOTS", "2")
        .set("AUTOSCALE_MAX", "5")
}

async fn submit(cli: &CliEnv, jobs: usize) {
    let lines: String = (0..jobs)
        .map(|i| format!("{{\"job_id\":\"as-{i}\",\"steps\":1}}\n"))
        .collect();
    let module = cli.push_guest("step_counter").await;
    cli.submit_file(&module, "jobs.jsonl", &lines)
        .await
        .success();
}

/// Jobs appear while the group is stopped: `--dry-run` says what it would do and changes
/// nothing; `--once` sets the replicas the backlog needs and starts the group.
#[tokio::test]
async fn jobs_start_a_stopped_group_with_the_replicas_they_need() {
    let api = StandIn::start(0, "stopped");
    let cli = env(&api, "autoscale-start");
    submit(&cli, 5).await;

    let dry = cli
        .run(&["autoscale", "--once", "--dry-run"])
        .await
        .success();
    assert!(dry.stdout.contains("backlog 5"), "{dry}");
    assert!(dry.stdout.contains("need 3"), "{dry}");
    assert!(dry.stdout.contains("start with 3"), "{dry}");
    assert!(dry.stdout.contains("dry run"), "{dry}");
    assert_eq!(api.calls(), Vec::<String>::new());

    let out = cli.run(&["autoscale", "--once"]).await.success();
    assert!(out.stdout.contains("start with 3"), "{out}");
    assert_eq!(api.calls(), ["replicas=3", "start"]);
    assert_eq!(api.group(), (3, "running".to_owned()));
    // Again: nothing more to do.
    cli.run(&["autoscale", "--once"]).await.success();
    assert_eq!(api.calls(), ["replicas=3", "start"]);
    for o in [&dry, &out] {
        assert!(!o.stdout.contains(KEY) && !o.stderr.contains(KEY), "{o}");
    }
    assert_eq!(api.violations(), Vec::<String>::new());
}

/// No work: the group shrinks only after the quiet period (remembered between `--once` runs
/// in the state file), then stops.
#[tokio::test]
async fn no_work_stops_the_group_after_the_quiet_period() {
    let api = StandIn::start(3, "running");
    let cli = env(&api, "autoscale-stop");
    let state = cli.dir().join("autoscale-state.json");
    let state_arg = state.to_str().unwrap();
    let long = [
        "autoscale",
        "--once",
        "--quiet-period",
        "3600",
        "--state-file",
        state_arg,
    ];
    let first = cli.run(&long).await.success();
    assert!(first.stdout.contains("hold"), "{first}");
    assert!(state.exists(), "the quiet period's start is kept");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let since = kept["below_since_ms"].as_u64().expect("a start time");
    cli.run(&long).await.success();
    let again: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        again["below_since_ms"].as_u64(),
        Some(since),
        "not restarted"
    );
    assert_eq!(
        api.calls(),
        Vec::<String>::new(),
        "nothing before the quiet period"
    );

    let done = cli
        .run(&[
            "autoscale",
            "--once",
            "--quiet-period",
            "0",
            "--state-file",
            state_arg,
        ])
        .await
        .success();
    assert!(done.stdout.contains("stop"), "{done}");
    assert_eq!(api.calls(), ["stop"]);
    assert_eq!(api.violations(), Vec::<String>::new());
}

/// Settings that cannot work fail at once, with the setting named and the key not shown; an
/// API that refuses the key is exit 7 with `--once`.
#[tokio::test]
async fn bad_settings_and_a_refused_key_exit_7() {
    let api = StandIn::start(1, "running");
    let cli = env(&api, "autoscale-bad");
    for (args, says) in [
        (vec!["autoscale", "--once", "--max", "0"], "--max"),
        (vec!["autoscale", "--once", "--min", "6"], "--min"),
        (
            vec!["autoscale", "--once", "--container-group", "Bad_Name"],
            "SALAD_CONTAINER_GROUP",
        ),
    ] {
        let out = cli.run(&args).await.failure();
        assert_eq!(out.status.code(), Some(7), "{out}");
        assert!(out.stderr.contains(says), "{out}");
    }
    let wrong = "salad_cloud_user_WRONGKEY987";
    let out = cli
        .set("SALAD_API_KEY", wrong)
        .run(&["autoscale", "--once"])
        .await
        .failure();
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert!(out.stderr.contains("401"), "{out}");
    assert!(
        !out.stderr.contains(wrong) && !out.stdout.contains(wrong),
        "{out}"
    );
    assert_eq!(api.calls(), Vec::<String>::new());
    // A state file that cannot be written: a later `--once` run would start its quiet
    // period over and never scale down, so this one says so and fails.
    let blocker = cli.write_file("not-a-dir", "a file");
    let out = cli
        .set(
            "AUTOSCALE_STATE_FILE",
            blocker.join("state.json").to_str().unwrap(),
        )
        .run(&["autoscale", "--once"])
        .await
        .failure();
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert!(
        out.stderr.contains("cannot keep the autoscaling state"),
        "{out}"
    );
}
