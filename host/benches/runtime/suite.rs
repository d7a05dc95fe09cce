//! The workload suite: each workload native and as wasm (unmetered, fuel-metered, epoch),
//! best of interleaved rounds, with the ratios and their geometric means.

use std::time::Duration;

use taskhost::runtime::{Outcome, Prepared, Runtime, RuntimeConfig};
use taskhost::store::dir::DirStore;
use workloads_core::Workload;

/// The default scale of each workload: about 0.3 to 1 s natively on this class of machine.
fn default_scale(w: Workload) -> u64 {
    match w {
        Workload::Md => 12,
        Workload::Sha256 => 64,
        Workload::Sort => 20,
        Workload::Json => 40,
        Workload::Compress => 6,
    }
}

/// Primes below this for prime-count.
const PRIMES_BELOW: u64 = 3_000_000;

/// One row: a workload and how to run it natively and as a job.
struct Row {
    name: String,
    native: Box<dyn Fn() -> u64>,
    input: String,
    /// Whether the row runs on the workloads module (else prime-count).
    suite: bool,
}

/// A runtime and the module prepared on it.
struct Variant {
    label: String,
    rt: Runtime,
    workloads: Prepared,
    prime: Prepared,
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn rows(quick: bool) -> Vec<Row> {
    let only = env_list("BENCH_ONLY");
    let scales: Vec<(String, u64)> = env_list("BENCH_SCALE")
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("BENCH_SCALE=name=N,..");
            (k.to_owned(), v.parse().expect("a scale is a number"))
        })
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let scale_of = |name: &str, default: u64| {
        scales
            .iter()
            .find(|(k, _)| k == name)
            .map_or(default, |(_, v)| *v)
    };
    let mut rows = Vec::new();
    for w in Workload::ALL {
        if !wanted(w.name()) {
            continue;
        }
        let scale = scale_of(w.name(), if quick { 1 } else { default_scale(w) });
        rows.push(Row {
            name: format!("{} {scale}", w.name()),
            native: Box::new(move || w.run(std::hint::black_box(scale))),
            input: format!(
                r#"{{"job_id":"b","workload":"{}","scale":{scale}}}"#,
                w.name()
            ),
            suite: true,
        });
    }
    if wanted("prime") {
        let n = scale_of("prime", if quick { 100_000 } else { PRIMES_BELOW });
        rows.push(Row {
            name: format!("prime {n}"),
            native: Box::new(move || prime_core::count_primes(0, std::hint::black_box(n))),
            // One chunk: the checkpoint machinery is not what this measures.
            input: format!(r#"{{"job_id":"b","n":{n},"chunk":{n}}}"#),
            suite: false,
        });
    }
    rows
}

/// The result's checksum (`"checksum"` of workloads, `"primes"` of prime-count).
fn checksum(doc: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(doc).expect("a JSON result");
    v.get("checksum")
        .or_else(|| v.get("primes"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no checksum in {doc}"))
}

/// CPU time of the calling thread: what the work itself cost, whatever else the machine
/// runs (wall time on a shared, loaded machine is mostly noise).
#[allow(unsafe_code)]
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn geomean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp()
}

/// Runs the suite and prints its table and the geomean line; `quick`: one round at small
/// scales, skipped when the workloads module is not built (a test run).
pub async fn run_suite(store: &DirStore, prime_bytes: &[u8], quick: bool) {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .map_or(if quick { 1 } else { 3 }, |v| {
            v.parse().expect("BENCH_ROUNDS is a number")
        });
    let path = super::wasm_path("workloads");
    if quick && !path.exists() {
        println!(
            "workloads: skipped ({} not built: tests/build-guests.sh --bench)",
            path.display()
        );
        return;
    }
    let workloads_bytes = super::read_wasm(&path);
    let mut configs: Vec<(String, RuntimeConfig, Vec<u8>)> = vec![
        (
            "unmetered".into(),
            RuntimeConfig {
                fuel_metering: false,
                ..Default::default()
            },
            workloads_bytes.clone(),
        ),
        (
            "fuel".into(),
            RuntimeConfig::default(),
            workloads_bytes.clone(),
        ),
        (
            "epoch".into(),
            RuntimeConfig {
                fuel_metering: false,
                epoch_interruption: true,
                ..Default::default()
            },
            workloads_bytes.clone(),
        ),
    ];
    for interval in env_list("BENCH_FUEL_INTERVALS") {
        configs.push((
            format!("fuel/{interval}"),
            RuntimeConfig {
                fuel_yield_interval: interval.parse().expect("a fuel interval"),
                ..Default::default()
            },
            workloads_bytes.clone(),
        ));
    }
    // Each extra build fuel-metered, and unmetered too with BENCH_MODULES_PLAIN=1 (then
    // its own geomean line is printed as well): (label, unmetered column, fuel column).
    let plain = std::env::var_os("BENCH_MODULES_PLAIN").is_some();
    let mut pairs: Vec<(String, Option<usize>, usize)> = Vec::new();
    for module in env_list("BENCH_MODULES") {
        let (label, path) = module
            .split_once('=')
            .expect("BENCH_MODULES=label=path.wasm,..");
        let bytes = super::read_wasm(std::path::Path::new(path));
        let unmetered = plain.then(|| {
            configs.push((
                format!("plain:{label}"),
                RuntimeConfig {
                    fuel_metering: false,
                    ..Default::default()
                },
                bytes.clone(),
            ));
            configs.len() - 1
        });
        configs.push((format!("fuel:{label}"), RuntimeConfig::default(), bytes));
        pairs.push((label.to_owned(), unmetered, configs.len() - 1));
    }
    let mut variants = Vec::new();
    for (label, config, bytes) in configs {
        let rt = Runtime::new(config).unwrap();
        let workloads = rt.prepare(bytes, None).await.unwrap();
        let prime = rt.prepare(prime_bytes.to_vec(), None).await.unwrap();
        variants.push(Variant {
            label,
            rt,
            workloads,
            prime,
        });
    }

    println!(
        "workloads: CPU time of the thread running each (native call / wasm job), best of {rounds} interleaved rounds, ms (ratio to native)"
    );
    print!("  {:<14} {:>9}", "workload", "native");
    for v in &variants {
        print!(" {:>18}", v.label);
    }
    println!();
    let (mut fuel_native, mut fuel_plain) = (Vec::new(), Vec::new());
    let mut pair_ratios: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); pairs.len()];
    let mut job = 0u64;
    for row in rows(quick) {
        let expected = (row.native)();
        let mut native = Duration::MAX;
        let mut best = vec![Duration::MAX; variants.len()];
        for _ in 0..rounds {
            let t = thread_cpu();
            assert_eq!((row.native)(), expected, "{}: native", row.name);
            native = native.min(thread_cpu() - t);
            for (v, best) in variants.iter().zip(&mut best) {
                job += 1;
                let module = if row.suite { &v.workloads } else { &v.prime };
                let t = thread_cpu();
                let r = super::run(&v.rt, module, store, &format!("w{job}"), &row.input).await;
                let cpu = thread_cpu() - t;
                let Outcome::Finished(doc) = &r.outcome else {
                    unreachable!("run asserts it")
                };
                assert_eq!(checksum(doc), expected, "{} {}", row.name, v.label);
                *best = (*best).min(cpu);
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        print!("  {:<14} {:>9.1}", row.name, ms(native));
        for d in &best {
            print!(
                " {:>9.1} ({:>5.2})",
                ms(*d),
                d.as_secs_f64() / native.as_secs_f64()
            );
        }
        println!();
        fuel_native.push(best[1].as_secs_f64() / native.as_secs_f64());
        fuel_plain.push(best[1].as_secs_f64() / best[0].as_secs_f64());
        for ((_, unmetered, fuel), (vs_native, vs_plain)) in pairs.iter().zip(&mut pair_ratios) {
            vs_native.push(best[*fuel].as_secs_f64() / native.as_secs_f64());
            if let Some(u) = unmetered {
                vs_plain.push(best[*fuel].as_secs_f64() / best[*u].as_secs_f64());
            }
        }
    }
    for ((label, unmetered, _), (vs_native, vs_plain)) in pairs.iter().zip(&pair_ratios) {
        if !vs_native.is_empty() && unmetered.is_some() {
            println!(
                "geomean {label}: wasm-fuel/native {:.2}, fuel/unmetered {:.2}",
                geomean(vs_native),
                geomean(vs_plain)
            );
        }
    }
    if !fuel_native.is_empty() {
        println!(
            "geomean: wasm-fuel/native {:.2}, fuel/unmetered {:.2}",
            geomean(&fuel_native),
            geomean(&fuel_plain)
        );
    }
}
