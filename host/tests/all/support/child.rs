//! Child processes that are this very test binary: a test runs itself again (`--exact`) with
//! an environment variable telling the copy which part to play, and reads what the copy
//! [`report`]s on stdout.
//!
//! ```text
//! if std::env::var("MY_CHILD").is_ok() { report("id", "42"); return; }   // the child
//! let ids = ChildProcess::spawn("area::my_test", &[("MY_CHILD", "1".into())]).values("id");
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process of this test binary, killed (SIGKILL) and reaped when dropped.
pub struct ChildProcess(Child);

impl ChildProcess {
    /// Runs the test `test` of this binary alone, with `env` added to the environment; its
    /// stdout is piped to us, its stderr goes to ours. `test` is the test's full name in the
    /// binary, with its area's module: `localqueue::some_test`.
    pub fn spawn(test: &str, env: &[(&str, String)]) -> Self {
        // This process's own executable, not the file at its path: the shared target directory
        // may have been rebuilt under the running test (the file replaced, its path gone).
        let mut command = Command::new("/proc/self/exe");
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Self(command.spawn().unwrap())
    }

    /// The values the child reports under `key`, until it exits; panics unless it exits 0.
    pub fn values(mut self, key: &str) -> Vec<String> {
        let values = reported(self.stdout(), key).collect();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        values
    }

    /// The child's stdout (once).
    pub fn stdout(&mut self) -> ChildStdout {
        self.0.stdout.take().expect("stdout already taken")
    }

    /// Kills the child (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The values reported under `key` on `stdout`, as they come. libtest may have written
/// `test <name> ... ` on the same line first.
pub fn reported(stdout: ChildStdout, key: &str) -> impl Iterator<Item = String> {
    let prefix = format!("CHILD {key} ");
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(move |l| l.split_once(&prefix).map(|(_, v)| v.trim().to_string()))
}

/// In a child: reports `value` under `key` to the parent (one line, flushed at once).
pub fn report(key: &str, value: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "CHILD {key} {value}").unwrap();
    out.flush().unwrap();
}

/// Polls `done` every 10 ms for up to 60 s; panics naming `what` on timeout.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
