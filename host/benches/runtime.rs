//! `cargo bench -p taskhost --bench runtime`: the runtime's costs, measured side by side in
//! one run so that the ratios hold on a noisy shared machine.
//!
//! Prints: the CPU-bound task native vs wasm unmetered vs wasm fuel-metered (best of
//! several interleaved rounds, with ratios); cold compile time; warm start p50/p99 from the
//! disk cache and from memory. Needs the task modules (tests/build-guests.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use taskhost::checkpoint::{self, Checkpointer, Limits};
use taskhost::ids::{JobId, ModuleHash};
use taskhost::runtime::{
    JobLimits, Outcome, Prepared, RunReport, RunRequest, Runtime, RuntimeConfig,
};
use taskhost::store::dir::DirStore;
use tokio_util::sync::CancellationToken;

/// Primes below this: ~1 s of work natively on this class of machine.
const N: u64 = 4_000_000;
const ROUNDS: usize = 5;
const STARTS: usize = 2000;
const DISK_STARTS: usize = 50;

fn wasm(name: &str) -> Vec<u8> {
    let dir = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/target"),
    };
    let path = dir
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the task modules with tests/build-guests.sh",
            path.display()
        )
    })
}

async fn run(
    rt: &Runtime,
    module: &Prepared,
    store: &DirStore,
    job: &str,
    input: &str,
) -> RunReport {
    let job: JobId = job.parse().unwrap();
    let lease = taskhost::queue::lease::LeaseView::detached(Duration::from_secs(60)).0;
    let unbound = taskhost::job::Work::default();
    let refuse = checkpoint::OtherWork::Refuse;
    let claimed = checkpoint::claim(store, &job, "bench", &lease, &unbound, refuse)
        .await
        .unwrap();
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, Limits::default(), lease);
    let r = rt
        .run(
            module,
            RunRequest {
                job: &job,
                attempt: 1,
                input,
                limits: &JobLimits::default(),
                checkpoint: ckpt.clone(),
                files: taskhost::files::JobFiles::plain(store.clone(), &job, ckpt),
                cancel: CancellationToken::new(),
            },
        )
        .await;
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path().join("store")).unwrap();
    let prime_bytes = wasm("prime_count");
    let step_bytes = wasm("step_counter");

    let metered = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..Default::default()
    })
    .unwrap();
    let unmetered = Runtime::new(RuntimeConfig {
        cache_dir: None,
        fuel_metering: false,
        ..Default::default()
    })
    .unwrap();
    let m_metered = metered.prepare(prime_bytes.clone(), None).await.unwrap();
    let m_unmetered = unmetered.prepare(prime_bytes.clone(), None).await.unwrap();

    // One chunk: the checkpoint machinery is not what this measures.
    let input = format!(r#"{{"job_id":"bench","n":{N},"chunk":{N}}}"#);
    let expected = prime_core::count_primes(0, N);
    let (mut native, mut plain, mut fuel) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..ROUNDS {
        let t = Instant::now();
        assert_eq!(
            std::hint::black_box(prime_core::count_primes(0, std::hint::black_box(N))),
            expected
        );
        native = native.min(t.elapsed());
        let r = run(
            &unmetered,
            &m_unmetered,
            &store,
            &format!("u{round}"),
            &input,
        )
        .await;
        plain = plain.min(r.elapsed);
        let r = run(&metered, &m_metered, &store, &format!("m{round}"), &input).await;
        if let Outcome::Finished(doc) = &r.outcome {
            assert!(doc.contains(&format!("\"primes\":{expected}")), "{doc}");
        }
        fuel = fuel.min(r.elapsed);
    }
    println!("CPU-bound task: primes below {N} (best of {ROUNDS} interleaved rounds)");
    println!("  native            {:>9.1} ms", native.as_secs_f64() * 1e3);
    println!("  wasm unmetered    {:>9.1} ms", plain.as_secs_f64() * 1e3);
    println!("  wasm fuel-metered {:>9.1} ms", fuel.as_secs_f64() * 1e3);
    println!(
        "  ratios: metered/unmetered {:.3} (goal <= 1.10), metered/native {:.3} (goal <= 1.6), unmetered/native {:.3}",
        fuel.as_secs_f64() / plain.as_secs_f64(),
        fuel.as_secs_f64() / native.as_secs_f64(),
        plain.as_secs_f64() / native.as_secs_f64()
    );

    // Cold compile (no cache anywhere).
    for (name, bytes) in [("step_counter", &step_bytes), ("prime_count", &prime_bytes)] {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        let b = bytes.clone();
        let rt2 = rt.clone();
        tokio::task::spawn_blocking(move || rt2.compile(&b, None).unwrap())
            .await
            .unwrap();
        println!(
            "cold compile {name} ({} KiB): {:.1} ms",
            bytes.len() / 1024,
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    // Warm start from memory: store + instantiate until `run` is entered.
    let tiny = r#"{"job_id":"s","steps":1}"#;
    let m_step = metered.prepare(step_bytes.clone(), None).await.unwrap();
    let mut starts = Vec::with_capacity(STARTS);
    for i in 0..STARTS {
        starts.push(
            run(&metered, &m_step, &store, &format!("s{i}"), tiny)
                .await
                .startup,
        );
    }
    starts.sort();
    println!(
        "warm start from memory ({STARTS} runs): p50 {:.1} us, p99 {:.1} us (goal p50 <= 100 us)",
        us(percentile(&starts, 0.5)),
        us(percentile(&starts, 0.99))
    );

    // Warm start from the disk cache: a fresh runtime (empty memory cache) each time.
    let cache = tmp.path().join("cache");
    let hash = ModuleHash::of(&step_bytes);
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..Default::default()
    })
    .unwrap()
    .prepare(step_bytes.clone(), Some(hash))
    .await
    .unwrap();
    let mut disk = Vec::with_capacity(DISK_STARTS);
    for i in 0..DISK_STARTS {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        let m = rt.load_cached(&hash).expect("in the disk cache");
        let load = t.elapsed();
        let r = run(&rt, &m, &store, &format!("d{i}"), tiny).await;
        disk.push(load + r.startup);
    }
    disk.sort();
    println!(
        "warm start from the disk cache ({DISK_STARTS} runs): p50 {:.1} us, p99 {:.1} us",
        us(percentile(&disk, 0.5)),
        us(percentile(&disk, 0.99))
    );
}
