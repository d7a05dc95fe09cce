//! `cargo bench -p taskhost --bench runtime`: the runtime's costs, measured side by side in
//! one run so that the ratios hold on a noisy shared machine.
//!
//! Prints: for each workload (the `workloads` task module's five and `prime-count`), the
//! very same code native, as wasm unmetered, fuel-metered (as the worker runs it) and with
//! epoch interruption (the CPU time of the thread running it, best of interleaved rounds), ending with the line
//! `geomean: wasm-fuel/native X.XX, fuel/unmetered Y.YY`; cold compile time; warm start
//! p50/p99 from memory and from the disk cache, each as the start's CPU time and as wall
//! time (from the disk: a fresh runtime's creation, the load and the first start apart, and
//! wasmtime's own deserialization alone, of step-counter and of the smallest component). Needs the task modules:
//! `tests/build-guests.sh --bench`.
//!
//! Knobs (environment): `BENCH_ROUNDS` (default 3), `BENCH_ONLY=md,sort` (a subset of the
//! workloads; `prime` is prime-count), `BENCH_SCALE=md=5,sort=8` (other scales),
//! `BENCH_MODULES=label=path.wasm,..` (more builds of the workloads module, run
//! fuel-metered in the same rounds: guest build profiles side by side; with
//! `BENCH_MODULES_PLAIN=1` each also unmetered, and a geomean line of its own),
//! `BENCH_FUEL_INTERVALS=100000,..` (more fuel-metered runtimes with these yield intervals),
//! `BENCH_SKIP_STARTS=1` (workloads only), `BENCH_SKIP_SUITE=1` (compile and starts only),
//! `BENCH_STARTS=N` and `BENCH_DISK_STARTS=N` (starts from memory, default 2,000, and from
//! the disk cache, default 50: more for a profile).
//! Run by `cargo test` (no `--bench` argument), the suite runs once at small scales, and
//! only if `workloads.wasm` was built.

#[path = "runtime/suite.rs"]
mod suite;

/// The allocator the `taskhost` binary runs with (its main.rs), so the starts measure what
/// the worker does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use taskhost::checkpoint::{self, Checkpointer, Limits};
use taskhost::ids::{JobId, ModuleHash};
use taskhost::runtime::{
    JobLimits, Outcome, Prepared, RunReport, RunRequest, Runtime, RuntimeConfig,
};
use taskhost::store::dir::DirStore;
use tokio_util::sync::CancellationToken;

const STARTS: usize = 2000;
const DISK_STARTS: usize = 50;

fn wasm_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/target"),
    };
    dir.join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

fn read_wasm(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the task modules with tests/build-guests.sh --bench",
            path.display()
        )
    })
}

fn wasm(name: &str) -> Vec<u8> {
    read_wasm(&wasm_path(name))
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
    let metered = Runtime::new(RuntimeConfig::default()).unwrap();

    if std::env::var_os("BENCH_SKIP_SUITE").is_none() {
        // `cargo test --all-targets` runs this too (without `--bench`): then a quick check at
        // small scales, and only if the workloads module was built.
        let quick = !std::env::args().any(|a| a == "--bench");
        suite::run_suite(&store, &prime_bytes, quick).await;
    }
    if std::env::var_os("BENCH_SKIP_STARTS").is_some() {
        return;
    }

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

    // Warm start from memory: store + instantiate until `run` is entered (the job store's
    // claim and checkpoint around it are outside): its CPU time (the thread's clock around
    // the start's own work) and its wall time.
    let tiny = r#"{"job_id":"s","steps":1}"#;
    let m_step = metered.prepare(step_bytes.clone(), None).await.unwrap();
    let starts = std::env::var("BENCH_STARTS")
        .map_or(STARTS, |v| v.parse().expect("BENCH_STARTS is a number"));
    let mut cpu = Vec::with_capacity(starts);
    let mut wall = Vec::with_capacity(starts);
    for i in 0..starts {
        let r = run(&metered, &m_step, &store, &format!("s{i}"), tiny).await;
        cpu.push(r.startup_cpu);
        wall.push(r.startup);
    }
    // The mean too: rare slow starts (the allocator's, the kernel's) move it, not the p50.
    let cpu_mean = us(cpu.iter().sum::<Duration>()) / cpu.len().max(1) as f64;
    println!(
        "warm start from memory ({starts} runs): CPU {} (mean {cpu_mean:.1} us), wall {} (goal p50 <= 10 us)",
        p50_p99(&mut cpu),
        p50_p99(&mut wall)
    );

    // Warm start from the disk cache: a fresh runtime (empty memory cache, fresh pool) each
    // time; the runtime's creation, the load (read, check, deserialize, link) and the first
    // start measured apart.
    let cache = tmp.path().join("cache");
    let hash = ModuleHash::of(&step_bytes);
    let first = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..Default::default()
    })
    .unwrap();
    first.prepare(step_bytes.clone(), Some(hash)).await.unwrap();
    let file = first.disk_cache_file(&hash).unwrap();
    let file_kib = std::fs::metadata(&file).unwrap().len() / 1024;
    drop(first);
    let (mut new_cpu, mut new_wall) = (Vec::new(), Vec::new());
    let (mut load_cpu, mut load_wall) = (Vec::new(), Vec::new());
    let (mut start_cpu, mut start_wall) = (Vec::new(), Vec::new());
    let (mut total_cpu, mut total_wall) = (Vec::new(), Vec::new());
    let disk_starts = std::env::var("BENCH_DISK_STARTS").map_or(DISK_STARTS, |v| {
        v.parse().expect("BENCH_DISK_STARTS is a number")
    });
    for i in 0..disk_starts {
        let (t, c) = (Instant::now(), suite::thread_cpu());
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..Default::default()
        })
        .unwrap();
        new_cpu.push(suite::thread_cpu() - c);
        new_wall.push(t.elapsed());
        let (t, c) = (Instant::now(), suite::thread_cpu());
        let m = rt.load_cached(&hash).expect("in the disk cache");
        let (lc, lw) = (suite::thread_cpu() - c, t.elapsed());
        let r = run(&rt, &m, &store, &format!("d{i}"), tiny).await;
        load_cpu.push(lc);
        load_wall.push(lw);
        start_cpu.push(r.startup_cpu);
        start_wall.push(r.startup);
        total_cpu.push(lc + r.startup_cpu);
        total_wall.push(lw + r.startup);
    }
    println!(
        "  (a fresh runtime: CPU {}, wall {}; the load of {file_kib} KiB: CPU {}, wall {}; its first start: CPU {}, wall {})",
        p50_p99(&mut new_cpu),
        p50_p99(&mut new_wall),
        p50_p99(&mut load_cpu),
        p50_p99(&mut load_wall),
        p50_p99(&mut start_cpu),
        p50_p99(&mut start_wall),
    );
    println!(
        "warm start from the disk cache ({disk_starts} runs, load + first start): CPU {}, wall {} (goal p50 <= 100 us)",
        p50_p99(&mut total_cpu),
        p50_p99(&mut total_wall)
    );

    // Wasmtime's own part of a load, alone: `Component::deserialize_file` on a fresh runtime's
    // engine, of step-counter and of the smallest wasip2 component we build (other-world: no
    // taskhost import, 43 KiB), with neither our file check nor the link. What no change of
    // ours can take below.
    let mut floors = Vec::new();
    for name in ["step_counter", "other_world"] {
        let bytes = wasm(name);
        let path = tmp.path().join(format!("{name}.cwasm"));
        let code = wasmtime::component::Component::new(metered.engine(), &bytes)
            .and_then(|c| c.serialize())
            .unwrap();
        std::fs::write(&path, code).unwrap();
        let mut cpu = Vec::with_capacity(disk_starts);
        for _ in 0..disk_starts {
            let rt = Runtime::new(RuntimeConfig::default()).unwrap();
            let c = suite::thread_cpu();
            let component = deserialize_file(rt.engine(), &path);
            cpu.push(suite::thread_cpu() - c);
            drop(component);
        }
        floors.push(format!(
            "{name} ({} KiB) CPU {}",
            bytes.len() / 1024,
            p50_p99(&mut cpu)
        ));
    }
    println!(
        "  (wasmtime's deserialize_file alone, on a fresh runtime: {})",
        floors.join("; ")
    );
}

/// `path`, written by `Component::serialize` on an engine of the same configuration.
// Deserializing compiled code is unsafe in wasmtime: see the SAFETY comment.
#[allow(unsafe_code)]
fn deserialize_file(
    engine: &wasmtime::Engine,
    path: &std::path::Path,
) -> wasmtime::component::Component {
    // SAFETY: the benchmark wrote `path` just before, from `Component::serialize` of a
    // component compiled by an engine of this very configuration, in its own temporary
    // directory, and nothing writes it since; wasmtime checks the compatibility header.
    unsafe { wasmtime::component::Component::deserialize_file(engine, path) }.unwrap()
}

/// "p50 X us, p99 Y us" of `xs`.
fn p50_p99(xs: &mut [Duration]) -> String {
    xs.sort();
    format!(
        "p50 {:.1} us, p99 {:.1} us",
        us(percentile(xs, 0.5)),
        us(percentile(xs, 0.99))
    )
}
