//! The official Pub/Sub emulator for tests (`cloud-pubsub-emulator`, Java 17), one per test,
//! on a free port.
//!
//! ```text
//! let emulator = PubsubEmulator::start();                 // blocks until it answers
//! let pubsub = Pubsub::connect(&emulator.config("p")).await?;
//! ```
//!
//! An emulator that does not answer `GET /` within [`START_TIMEOUT`] fails the test with its
//! log: tests never skip. It runs in its own process group (the launcher script `exec`s
//! java), and the whole group is killed by PID on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskhost::queue::pubsub::PubsubConfig;

/// The emulator shipped with the machine image's Google Cloud SDK.
pub const EMULATOR_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// How long the emulator may take to answer (the JVM starts in ~4 s on an idle machine; much
/// slower while cargo builds).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The `rpc_timeout` of [`PubsubEmulator::config`]: a local server answers at once or not at
/// all.
pub const TEST_RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// A running emulator, killed (with its whole process group) on drop.
pub struct PubsubEmulator {
    child: Child,
    port: u16,
    log: PathBuf,
    /// The launcher has exited and been waited for: its PID may be reused, never signal it.
    reaped: bool,
    _dir: tempfile::TempDir,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /` answers 200 (the emulator's "Ok" page).
fn answers(port: u16) -> bool {
    let Ok(mut conn) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl PubsubEmulator {
    /// Starts an emulator on a free port and blocks until it answers. Panics with its output
    /// if it exits or does not answer within [`START_TIMEOUT`].
    pub fn start() -> PubsubEmulator {
        // A free port may be taken between our probe and the emulator's bind: try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("emulator.log");
            let port = free_port();
            let log_file = std::fs::File::create(&log).unwrap();
            let child = Command::new(EMULATOR_BIN)
                .arg("--host=127.0.0.1")
                .arg(format!("--port={port}"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                // Its own process group, so that Drop can kill everything it started.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {EMULATOR_BIN}: {e}"));
            // From here on, a panic drops (and so kills) it.
            let mut emulator = PubsubEmulator {
                child,
                port,
                log,
                reaped: false,
                _dir: dir,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = emulator.child.try_wait().unwrap() {
                    emulator.reaped = true;
                    last_log = emulator.log_text();
                    if !last_log.contains("Address already in use") {
                        panic!(
                            "the Pub/Sub emulator exited ({status}) before answering:\n{last_log}"
                        );
                    }
                    break; // lost the port race: try another one
                }
                if answers(port) {
                    return emulator;
                }
                if Instant::now() > deadline {
                    panic!(
                        "the Pub/Sub emulator did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                        emulator.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("the Pub/Sub emulator could not bind a free port in 3 tries:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, as `PUBSUB_EMULATOR_HOST` would say.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A config for `project` on this emulator, with [`TEST_RPC_TIMEOUT`].
    pub fn config(&self, project: &str) -> PubsubConfig {
        PubsubConfig {
            project_id: project.to_string(),
            emulator_host: Some(self.host()),
            credentials_file: None,
            rpc_timeout: TEST_RPC_TIMEOUT,
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the emulator's whole process group: a server
    /// that accepts connections and answers nothing, like an unreachable Pub/Sub.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the group's
        // leader is not reaped, so the id cannot have been reused.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), signal);
        }
    }

    /// Deletes topic `topic` of `project` through the emulator's REST interface (the
    /// library's client has no delete: taskhost never deletes a topic). Returns the HTTP
    /// status line.
    pub fn delete_topic(&self, project: &str, topic: &str) -> String {
        self.delete(&format!("/v1/projects/{project}/topics/{topic}"))
    }

    /// Deletes subscription `sub` of `project` the same way (taskhost never deletes one
    /// either). Returns the HTTP status line.
    pub fn delete_subscription(&self, project: &str, sub: &str) -> String {
        self.delete(&format!("/v1/projects/{project}/subscriptions/{sub}"))
    }

    /// `DELETE path` on the emulator's REST interface: the HTTP status line.
    fn delete(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.host()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "DELETE {path} HTTP/1.1\r\nHost: {}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.host()
        );
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.lines().next().unwrap_or_default().to_string()
    }

    /// What the emulator has written to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PubsubEmulator {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The negative
        // pid addresses the process group the emulator leads (process_group(0) above); its
        // leader is not reaped yet, so the id cannot have been reused.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Wait (briefly) until no process of the group is left.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: as above; signal 0 only checks whether the group still exists.
        while unsafe { libc::kill(-pgid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
