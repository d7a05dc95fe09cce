//! A real S3 server for tests: moto's S3 backend behind `tests/s3/serve.py`, which handles
//! one request at a time (so conditional writes are atomic, as on R2) and checks SigV4
//! signatures against [`ACCESS_KEY_ID`] / [`SECRET_ACCESS_KEY`] (and the read-only
//! [`READONLY_ACCESS_KEY_ID`] / [`READONLY_SECRET_ACCESS_KEY`]: GET and HEAD only).
//!
//! ```text
//! let s3 = S3Server::start().await;      // fresh server, fresh bucket
//! let store = s3.store("");              // S3Store on it, no key prefix
//! ```
//!
//! The Python venv comes from `tests/s3/setup-venv.sh` (run once per test process; it
//! reuses `${TASKHOST_VENV:-$HOME/.cache/taskhost/venv}`). A server that does not answer
//! within [`START_TIMEOUT`] fails the test with its log: tests never skip. The process is
//! killed by PID on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use taskhost::store::s3::{S3Config, S3Store};

/// The key pair `serve.py` accepts (passed to it explicitly).
pub const ACCESS_KEY_ID: &str = "taskhost-test";
pub const SECRET_ACCESS_KEY: &str = "taskhost-test-secret";
/// A key pair `serve.py` accepts for GET and HEAD only (403 AccessDenied to anything else).
pub const READONLY_ACCESS_KEY_ID: &str = "taskhost-test-readonly";
pub const READONLY_SECRET_ACCESS_KEY: &str = "taskhost-test-readonly-secret";
/// The bucket [`S3Server::start`] creates.
pub const BUCKET: &str = "taskhost-test";
/// How long a server may take to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The file in the server's directory where it logs each request it answered
/// (`serve.py --request-log`).
const REQUEST_LOG: &str = "requests.log";

/// A running `serve.py` with a fresh bucket.
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python, after running `setup-venv.sh` once per process.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = repo_root().join("tests/s3/setup-venv.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}\n{}",
            script.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let venv = stdout.lines().last().unwrap_or_default().trim().to_string();
        let python = Path::new(&venv).join("bin/python");
        assert!(
            python.exists(),
            "{} printed {venv:?}, which has no bin/python",
            script.display()
        );
        python
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn health_ok(port: u16) -> bool {
    let Ok(mut conn) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /_taskhost/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl S3Server {
    /// Starts a server on a free port, waits until it answers, creates [`BUCKET`].
    /// Panics (with the server's log) if any of that fails.
    pub async fn start() -> S3Server {
        let server = tokio::task::spawn_blocking(Self::spawn).await.unwrap();
        let created = server.store("").ensure_bucket().await.unwrap_or_else(|e| {
            panic!(
                "creating the test bucket failed: {e:#}\n{}",
                server.log_text()
            )
        });
        assert!(created, "a fresh server already had bucket {BUCKET}");
        server
    }

    fn spawn() -> S3Server {
        let python = python();
        let serve = repo_root().join("tests/s3/serve.py");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        // A free port may be taken between our probe and the server's bind: try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(python)
                .arg(&serve)
                .arg(port.to_string())
                .arg("--request-log")
                .arg(dir.path().join(REQUEST_LOG))
                .env("S3_TEST_ACCESS_KEY_ID", ACCESS_KEY_ID)
                .env("S3_TEST_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
                .env("S3_TEST_READONLY_ACCESS_KEY_ID", READONLY_ACCESS_KEY_ID)
                .env(
                    "S3_TEST_READONLY_SECRET_ACCESS_KEY",
                    READONLY_SECRET_ACCESS_KEY,
                )
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {} {}: {e}", python.display(), serve.display())
                });
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    if last_log.contains("Address already in use") {
                        break; // lost the port race: try another
                    }
                    panic!("the S3 test server exited ({status}) before answering:\n{last_log}");
                }
                if health_ok(port) {
                    return S3Server {
                        child,
                        port,
                        log,
                        _dir: dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the S3 test server did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("the S3 test server could not bind a free port in 3 tries:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A config for [`BUCKET`] on this server with the right keys; `prefix` "" = none.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint_url: self.endpoint(),
            bucket: BUCKET.to_string(),
            access_key_id: ACCESS_KEY_ID.to_string(),
            secret_access_key: SECRET_ACCESS_KEY.to_string(),
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        }
    }

    /// An [`S3Store`] on [`BUCKET`]; `prefix` "" = none.
    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix)).unwrap()
    }

    /// An [`S3Store`] on [`BUCKET`] with the read-only key; `prefix` "" = none.
    pub fn read_only_store(&self, prefix: &str) -> S3Store {
        S3Store::new(S3Config {
            access_key_id: READONLY_ACCESS_KEY_ID.to_string(),
            secret_access_key: READONLY_SECRET_ACCESS_KEY.to_string(),
            ..self.config(prefix)
        })
        .unwrap()
    }

    /// Every request answered so far (health checks aside), in order, one line each:
    /// `METHOD <tab> RAW-URI <tab> STATUS <tab> USER-AGENT`.
    pub fn requests(&self) -> Vec<String> {
        let log = self.log.with_file_name(REQUEST_LOG);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    /// What the server has written to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl S3Server {
    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: it then accepts connections and
    /// answers nothing, like an unreachable R2.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = self.child.id();
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the child is
        // not reaped (that happens in Drop), so its PID cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
        // A signal is delivered asynchronously: frozen only once the kernel says every thread
        // of the process is stopped (state `T`), so that nothing the caller sends next is
        // answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while frozen && !all_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the S3 test server (pid {pid}) did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether every thread of process `pid` is stopped: each `/proc/<pid>/task/<tid>/stat`'s
/// state letter (after the command's parentheses) is `T`.
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
                Some(state == 'T')
            })
            .unwrap_or(false)
    })
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
