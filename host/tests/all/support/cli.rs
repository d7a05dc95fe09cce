//! The real `taskhost` binary as a child process, for end-to-end tests.
//!
//! ```text
//! let env = CliEnv::new(&emulator, &s3, "project", "topic");   // the servers' env vars
//! let out = env.run(&["setup"]).await.success();               // one command, bounded
//! let worker = env.set("WORKER_SLOTS", "2").spawn("w1", &["worker"]);  // killed on drop
//! ```
//!
//! Every process gets a clean environment (only `PATH`, `RUST_LOG=info` and the variables of
//! its [`CliEnv`]) and a private, fresh `TASKHOST_CACHE_DIR`, so no two processes share a
//! compiled-module cache (unless the env names one: [`CliEnv::node`], a node's disk). A
//! [`Proc`] is SIGKILLed and reaped when dropped; a one-shot
//! [`CliEnv::run`] is killed if it outlives [`RUN_TIMEOUT`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::pubsub::PubsubEmulator;
use super::s3::{ACCESS_KEY_ID, BUCKET, S3Server, SECRET_ACCESS_KEY};

/// The `taskhost` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_taskhost");
/// Longest a one-shot command (`setup`, `submit`, `status`, `module push`) may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment of the `taskhost` processes of one test, plus a private directory for
/// their caches, logs and files.
#[derive(Clone)]
pub struct CliEnv {
    vars: BTreeMap<String, String>,
    dir: Arc<tempfile::TempDir>,
    seq: Arc<AtomicUsize>,
}

/// What a finished one-shot command printed.
#[derive(Debug)]
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics (with everything it printed) unless the command exited 0.
    pub fn success(self) -> Output {
        assert!(self.status.success(), "taskhost failed: {self}");
        self
    }

    /// Panics unless the command exited non-zero.
    pub fn failure(self) -> Output {
        assert!(
            !self.status.success(),
            "taskhost should have failed: {self}"
        );
        self
    }

    /// The last non-empty line of stdout.
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`taskhost {}` ({})\n--- stdout\n{}--- stderr\n{}---",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl CliEnv {
    /// The variables for the emulator and the S3 server (bucket [`BUCKET`], no key prefix),
    /// `PROJECT_ID` = `project`, `TOPIC_ID` = `topic`, `SUBSCRIPTION_ID` = `<topic>-sub`.
    pub fn new(emulator: &PubsubEmulator, s3: &S3Server, project: &str, topic: &str) -> CliEnv {
        let vars = [
            ("PROJECT_ID", project.to_string()),
            ("PUBSUB_EMULATOR_HOST", emulator.host()),
            ("TOPIC_ID", topic.to_string()),
            ("SUBSCRIPTION_ID", format!("{topic}-sub")),
            ("R2_BUCKET_NAME", BUCKET.to_string()),
            ("R2_S3_ENDPOINT_URL", s3.endpoint()),
            ("R2_AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("R2_AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        CliEnv {
            vars,
            dir: Arc::new(tempfile::tempdir().unwrap()),
            seq: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The variables for the embedded default (no `PROJECT_ID`, no `R2_BUCKET_NAME`):
    /// `QUEUE_FILE` = `<dir>/queue.sqlite` and `STORE_DIR` = `<dir>/store` in the private
    /// directory, `TOPIC_ID` = `topic`, `SUBSCRIPTION_ID` = `<topic>-sub`.
    pub fn embedded(topic: &str) -> CliEnv {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            (
                "QUEUE_FILE",
                dir.path().join("queue.sqlite").display().to_string(),
            ),
            ("STORE_DIR", dir.path().join("store").display().to_string()),
            ("TOPIC_ID", topic.to_string()),
            ("SUBSCRIPTION_ID", format!("{topic}-sub")),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        CliEnv {
            vars,
            dir: Arc::new(dir),
            seq: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A copy whose store is `s3`'s bucket [`BUCKET`] (no key prefix), with the right keys.
    pub fn on_s3(&self, s3: &S3Server) -> CliEnv {
        self.set("R2_BUCKET_NAME", BUCKET)
            .set("R2_S3_ENDPOINT_URL", s3.endpoint())
            .set("R2_AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .set("R2_AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    }

    /// `taskhost module push` of a built guest; returns the `sha256:<hex>` it printed.
    pub async fn push_guest(&self, guest: &str) -> String {
        let path = super::guests::wasm(guest);
        let out = self
            .run(&["module", "push", path.to_str().unwrap()])
            .await
            .success();
        out.last_line().to_string()
    }

    /// `taskhost submit --quiet --module MODULE FILE` with `text` written to `file_name`.
    pub async fn submit_file(&self, module: &str, file_name: &str, text: &str) -> Output {
        let path = self.write_file(file_name, text);
        self.run(&[
            "submit",
            "--quiet",
            "--module",
            module,
            path.to_str().unwrap(),
        ])
        .await
    }

    /// A copy with `name` set to `value` (same private directory).
    pub fn set(&self, name: &str, value: impl Into<String>) -> CliEnv {
        let mut env = self.clone();
        env.vars.insert(name.to_string(), value.into());
        env
    }

    /// The value of `name` in this environment.
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not set"))
    }

    /// The private directory of this test's processes (their working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` in [`CliEnv::dir`] and returns its path.
    pub fn write_file(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A fresh path in the private directory, `<n>-<label><ext>`.
    fn fresh(&self, label: &str, ext: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir().join(format!("{n}-{label}{ext}"))
    }

    fn command(&self, label: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.vars)
            .current_dir(self.dir())
            .stdin(Stdio::null());
        if !self.vars.contains_key("TASKHOST_CACHE_DIR") {
            let cache = self.fresh(label, ".cache");
            std::fs::create_dir(&cache).unwrap();
            cmd.env("TASKHOST_CACHE_DIR", &cache);
        }
        cmd
    }

    /// This environment with a cache directory of its own that every process started from
    /// it shares: a node's disk, kept across worker restarts.
    pub fn node(&self, name: &str) -> CliEnv {
        let cache = self.fresh(name, ".node-cache");
        std::fs::create_dir(&cache).unwrap();
        self.set("TASKHOST_CACHE_DIR", cache.to_str().unwrap())
    }

    /// Runs `taskhost ARGS` to its end (killed and failing the test after [`RUN_TIMEOUT`]).
    pub async fn run(&self, args: &[&str]) -> Output {
        let env = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || env.run_blocking(args))
            .await
            .unwrap()
    }

    fn run_blocking(&self, args: Vec<String>) -> Output {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let label = args.first().map_or("run", String::as_str);
        let out_path = self.fresh(label, ".stdout");
        let err_path = self.fresh(label, ".stderr");
        let child = self
            .command(label, &argv)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let mut proc = Proc {
            child,
            name: label.to_string(),
            log: err_path.clone(),
            reaped: false,
        };
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = proc.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "`taskhost {}` did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
                    args.join(" "),
                    proc.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            args,
            status,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Starts `taskhost ARGS` in the background (stdout and stderr into one log file).
    /// The returned [`Proc`] kills it on drop.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_with(name, args, |_| {})
    }

    /// [`CliEnv::spawn`] on a node whose kernel refuses to make memory executable
    /// ([`super::seccomp`]): wasmtime cannot publish compiled code there.
    #[cfg(target_arch = "x86_64")]
    pub fn spawn_refusing_executable_memory(&self, name: &str, args: &[&str]) -> Proc {
        use std::os::unix::process::CommandExt as _;
        self.spawn_with(name, args, |cmd| {
            // SAFETY: the closure only installs a seccomp filter (prctl), async-signal-safe.
            unsafe {
                cmd.pre_exec(super::seccomp::refuse_executable_memory);
            }
        })
    }

    fn spawn_with(&self, name: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Proc {
        let log = self.fresh(name, ".log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = self.command(name, args);
        configure(&mut command);
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
            reaped: false,
        }
    }
}

/// A background `taskhost` process, SIGKILLed and reaped on drop if still running.
pub struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
    /// Waited for: its PID may have been reused, never signal it again.
    reaped: bool,
}

impl Proc {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (while it has not been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        // Once reaped, std's handle answers from the status it kept.
        let status = self.child.try_wait().unwrap();
        if status.is_some() {
            self.reaped = true;
        }
        status
    }

    /// Panics (with its log) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "taskhost {} exited unexpectedly ({status}); log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Sends `signal` (unless it has been reaped).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.reaped {
            return;
        }
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The child has
        // not been waited for yet, so its PID cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`, then panics with its log) for its exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout).await
    }

    /// Sends SIGKILL (a node vanishing) and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().unwrap();
        self.reaped = true;
        status
    }

    /// Waits (at most `timeout`, then panics with its log) until it exits.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "taskhost {} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `timeout`) until its log contains `needle`; panics with the log if it
    /// exits or the time is up.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            self.assert_running();
            if Instant::now() > deadline {
                panic!(
                    "taskhost {} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // Child::kill sends SIGKILL to this PID only; wait reaps it.
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

/// Waits for `child` and returns its exit status and its peak resident set in bytes, read
/// from its own `VmHWM` while it runs (its rusage would count this test process's memory:
/// the child's accounting starts from the forking process's).
pub fn wait_with_peak_rss(mut child: std::process::Child) -> (i32, u64) {
    let status = format!("/proc/{}/status", child.id());
    let exe = format!("/proc/{}/exe", child.id());
    let bin = std::fs::canonicalize(BIN).unwrap();
    let mut peak = 0;
    loop {
        // Only once it runs the binary: until its exec, the child is a copy of this test
        // process (or shares its memory), whose size is that of whatever other tests run.
        let execed = std::fs::read_link(&exe).is_ok_and(|e| e == bin);
        if let Some(kb) = execed
            .then(|| std::fs::read_to_string(&status).ok())
            .flatten()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(exit) = child.try_wait().unwrap() {
            return (exit.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
