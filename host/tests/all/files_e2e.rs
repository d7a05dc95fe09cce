//! Inputs and artifacts end to end, with the real `taskhost` binary on the embedded queue,
//! once on the directory store and once on the S3 server: `submit --input` uploads a file
//! content-addressed, the digest task reads it, `artifacts` lists and downloads what it wrote,
//! `status` counts it; a 200 MB input is hashed in bounded memory; a worker SIGKILLed
//! mid-input is resumed at its offset with the same result and a complete artifact.

use crate::support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use support::cli::{CliEnv, Proc};
use support::embedded::Embedded;
use taskhost::checkpoint;
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::store::ObjectStore;

/// How long one digest job may take end to end in the debug build.
const JOB_TIMEOUT: Duration = Duration::from_secs(180);
/// The workers' ack deadline: an artifact part (8 MiB) must be uploaded within the hold it
/// leaves, or the worker gives the job up and it starts over elsewhere; 4 s was not enough
/// for the S3 test server on a loaded machine (every run of the job gave it up), 20 s is.
/// A killed worker's job waits at most this long for its lease to lapse.
const ACK_DEADLINE_SECS: u64 = 20;
/// How far the hashing of the killed worker's input must be (by its checkpoint) when it is
/// killed: a quarter of the 48 MiB input, so that the resumed run provably starts past 0.
const KILL_AFTER: u64 = 12 << 20;
/// How much a worker's peak RSS may grow while it hashes a 200 MB input: under half of it
/// (it is read in 4 MiB windows, never held whole). Measured alone 5 to 30 MiB; with the
/// whole suite beside it the directory store's once grew 64 MiB (likely its windows read on
/// whichever blocking thread is free, freed pages kept per thread by the allocator).
const RSS_GROWTH_LIMIT: u64 = 96 << 20;

type Env = Embedded;

async fn env(kind: &str, topic: &str) -> Env {
    let cli = CliEnv::embedded(topic).set("ACK_DEADLINE_SECONDS", ACK_DEADLINE_SECS.to_string());
    Embedded::start(kind, cli).await
}

/// Writes `size` pseudo-random bytes to `path` a MiB at a time; returns their CRC-32.
fn write_input(path: &Path, size: usize, seed: u32) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut crc = crc32fast::Hasher::new();
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len());
        for b in &mut buf[..n] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        crc.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
    format!("{:08x}", crc.finalize())
}

impl Env {
    async fn push_digest(&self) -> String {
        self.cli.push_guest("digest").await
    }

    async fn submit_inputs(&self, module: &str, jobs: &str, inputs: &[(&str, &Path)]) {
        let file = self.cli.write_file("jobs.jsonl", jobs);
        let specs: Vec<String> = inputs
            .iter()
            .map(|(n, p)| format!("{n}={}", p.display()))
            .collect();
        let mut args = vec!["submit", "--quiet", "--module", module];
        for s in &specs {
            args.extend(["--input", s]);
        }
        args.push(file.to_str().unwrap());
        self.cli.run(&args).await.success();
    }

    fn worker(&self, name: &str) -> Proc {
        self.cli.set("WORKER_SLOTS", "1").spawn(name, &["worker"])
    }

    /// Waits for `job`'s result while `worker` runs; returns it as JSON.
    async fn wait_result(&self, job: &str, worker: &mut Proc) -> serde_json::Value {
        let key = keys::result(&job.parse().unwrap());
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            if let Some(r) = self.store.get(&key).await.unwrap() {
                return serde_json::from_slice(&r.bytes).unwrap();
            }
            worker.assert_running();
            assert!(
                Instant::now() < deadline,
                "job {job} not done within {JOB_TIMEOUT:?}; log:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The peak resident set (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

async fn a_200_mb_input_in_bounded_memory(kind: &str) {
    let env = env(kind, "bigin").await;
    let module = env.push_digest().await;
    let small = env.cli.dir().join("small.bin");
    let small_crc = write_input(&small, 4096, 1);
    let big = env.cli.dir().join("big.bin");
    let big_crc = write_input(&big, 200_000_000, 2);

    // Warm up: the worker compiles the module and runs a small job first.
    let mut worker = env.worker("w");
    env.submit_inputs(&module, "{\"job_id\":\"small\"}\n", &[("data", &small)])
        .await;
    let r = env.wait_result("small", &mut worker).await;
    assert_eq!(r["crc32"], small_crc.as_str(), "{kind}");
    let before = peak_rss(worker.pid());

    env.submit_inputs(&module, "{\"job_id\":\"big\"}\n", &[("data", &big)])
        .await;
    let r = env.wait_result("big", &mut worker).await;
    assert_eq!(r["bytes"], 200_000_000u64, "{kind}");
    assert_eq!(r["crc32"], big_crc.as_str(), "{kind}");
    let after = peak_rss(worker.pid());
    assert!(
        after.saturating_sub(before) < RSS_GROWTH_LIMIT,
        "{kind}: the worker's peak RSS grew by {} MiB (from {} MiB) hashing 200 MB",
        (after - before) >> 20,
        before >> 20
    );
    eprintln!(
        "{kind}: peak RSS {} MiB before, {} MiB after the 200 MB job",
        before >> 20,
        after >> 20
    );

    // The input was uploaded once, content-addressed.
    let key = keys::input(&support::stack::sha256_hex(&std::fs::read(&big).unwrap()));
    assert_eq!(
        env.store.size(&key).await.unwrap(),
        Some(200_000_000),
        "{kind}"
    );
}

#[tokio::test]
async fn a_200_mb_input_is_hashed_in_bounded_memory_on_the_dir_store() {
    a_200_mb_input_in_bounded_memory("dir").await;
}

#[tokio::test]
async fn a_200_mb_input_is_hashed_in_bounded_memory_on_s3() {
    a_200_mb_input_in_bounded_memory("s3").await;
}

/// The number after `prefix` in `line`.
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn killed_mid_input_resumes(kind: &str) {
    let env = env(kind, "killin").await;
    let module = env.push_digest().await;
    let size = 48usize << 20;
    let input = env.cli.dir().join("in.bin");
    let crc = write_input(&input, size, 3);
    env.submit_inputs(
        &module,
        "{\"job_id\":\"resume\",\"copy\":true,\"chunk_ms\":80}\n",
        &[("data", &input)],
    )
    .await;

    // Kill the first worker once its checkpoint records a part of copy.bin as durable and
    // the hashing is well past it. The worker is stopped (SIGSTOP) while the checkpoint is
    // read, so what is read is where it is when killed: it cannot run on to the end between
    // the read and the kill, however late this test is scheduled. It runs only while the
    // test sleeps between reads, a chunk per `chunk_ms` at most.
    let mut w1 = env.worker("w1");
    let job: JobId = "resume".parse().unwrap();
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        w1.signal(libc::SIGSTOP);
        if let Some(h) = checkpoint::peek(&env.store, &job).await.unwrap() {
            let durable = h
                .artifacts
                .iter()
                .any(|a| a.name == "copy.bin" && a.size > 0);
            if durable && h.progress.is_some_and(|(done, _)| done >= KILL_AFTER) {
                break;
            }
        }
        w1.signal(libc::SIGCONT);
        w1.assert_running();
        assert!(Instant::now() < deadline, "no progress; log:\n{}", w1.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w1.kill9();
    assert!(
        !env.store.exists("jobs/resume/result").await.unwrap(),
        "{kind}: the job finished before the kill; slow it down"
    );

    let mut w2 = env.worker("w2");
    let r = env.wait_result("resume", &mut w2).await;
    assert_eq!(r["bytes"], size as u64, "{kind}");
    assert_eq!(
        r["crc32"],
        crc.as_str(),
        "{kind}: the resumed result is the whole input's"
    );

    // Proof that it resumed: its first line names the offset (and copy.bin's durable
    // part), and the second run read less than the whole input.
    let log = w2.log();
    let line = log
        .lines()
        .find(|l| l.contains("resuming at offset"))
        .unwrap_or_else(|| panic!("{kind}: w2 did not resume; log:\n{log}"));
    let offset = number_after(line, "resuming at offset ").unwrap();
    let durable = number_after(line, "copy.bin durable to ").unwrap();
    assert!(
        offset >= KILL_AFTER && durable > 0 && durable <= offset,
        "{kind}: {line}"
    );
    let ended = log
        .lines()
        .find(|l| l.contains("task run ended") && l.contains("resume"))
        .unwrap_or_else(|| panic!("{kind}: no run end in w2's log:\n{log}"));
    let read = number_after(ended, "input_bytes_read=").unwrap();
    assert!(
        // Hashing reads [offset, size), the copy re-reads [durable, offset); the readers'
        // buffers may read up to a chunk more each.
        read < size as u64 && read <= size as u64 - durable + (2 << 20),
        "{kind}: the resumed run read {read} bytes of {size} (offset {offset}, copy durable to {durable})"
    );

    // The artifacts: listed, counted by status, and copy.bin downloads complete.
    let list = env.cli.run(&["artifacts", "resume"]).await.success();
    assert!(
        list.stdout.contains("copy.bin") && list.stdout.contains("report.json"),
        "{list}"
    );
    let status = env.cli.run(&["status", "--json", "resume"]).await.success();
    let status: serde_json::Value = serde_json::from_str(status.last_line()).unwrap();
    assert_eq!(status["artifacts"]["count"], 2, "{kind}: {status}");
    let out = env.cli.dir().join("out");
    env.cli
        .run(&["artifacts", "resume", "--all", "-o", out.to_str().unwrap()])
        .await
        .success();
    let copy = std::fs::read(out.join("copy.bin")).unwrap();
    assert_eq!(copy.len(), size, "{kind}");
    assert!(
        copy == std::fs::read(&input).unwrap(),
        "{kind}: copy.bin differs from the input"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report, r, "{kind}");
    let one = env.cli.dir().join("one");
    env.cli
        .run(&[
            "artifacts",
            "resume",
            "--get",
            "report.json",
            "-o",
            one.to_str().unwrap(),
        ])
        .await
        .success();
    assert!(one.join("report.json").exists() && !one.join("copy.bin").exists());

    // Clear errors: a job that is not done, an artifact it does not have.
    let e = env.cli.run(&["artifacts", "nosuchjob"]).await.failure();
    assert!(e.stderr.contains("not done"), "{e}");
    let e = env
        .cli
        .run(&["artifacts", "resume", "--get", "nope.txt"])
        .await
        .failure();
    assert!(e.stderr.contains("no artifact `nope.txt`"), "{e}");
}

#[tokio::test]
async fn a_worker_killed_mid_input_resumes_at_its_offset_on_the_dir_store() {
    killed_mid_input_resumes("dir").await;
}

#[tokio::test]
async fn a_worker_killed_mid_input_resumes_at_its_offset_on_s3() {
    killed_mid_input_resumes("s3").await;
}
