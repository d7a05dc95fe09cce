//! Every metric a worker exports, in one [`Metrics`] (Prometheus text format, through the
//! official `prometheus-client` crate). Names follow Prometheus's conventions: the
//! `taskhost_` prefix, base units in the name, counters ending in `_total`. Labels are
//! small closed enums: never a job id, a key, an error text or a secret.
//!
//! Cheap enough to be always on: every count is an atomic add (a labelled one a lookup in a
//! family map of a handful of entries, each series created at start). Serving is what
//! `METRICS_ADDR` turns on.
//!
//! `mod.rs`: the families, their registration and the counting calls; `labels.rs`: the
//! label values and label sets.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod labels;

pub use labels::*;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one run of a job used, counted in one place per job (the executor, at the end of
/// the run) and added to the metrics then. Also what a job's own accounting records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobUsage {
    /// Wasm fuel (about one unit per instruction).
    pub fuel: u64,
    /// Bytes of input objects read.
    pub input_bytes_read: u64,
    /// Bytes of artifacts uploaded.
    pub artifact_bytes_written: u64,
    /// Bytes of checkpoint objects written (the claim not counted).
    pub checkpoint_bytes_written: u64,
}

/// Every metric family of a worker. Cheap to share (`Arc<Metrics>`); a fresh one counts
/// into a registry nobody reads.
pub struct Metrics {
    registry: Registry,
    jobs_ended: Family<OutcomeLabel, Counter>,
    messages_settled: Family<ActionLabel, Counter>,
    jobs_running: Gauge,
    jobs_committing: Gauge,
    slots: Gauge,
    pulls: Family<PullLabel, Counter>,
    lane_messages_pulled: Family<LaneLabel, Counter>,
    lease_extensions: Family<ExtensionLabel, Counter>,
    lease_extension_lateness: Histogram,
    checkpoint_writes: Family<WriteLabel, Counter>,
    checkpoint_write_bytes: Counter,
    checkpoint_write_seconds: Histogram,
    store_errors: Family<StoreKindLabel, Counter>,
    queue_errors: Family<QueueKindLabel, Counter>,
    module_cache: Family<CacheLabel, Counter>,
    module_compile_seconds: Histogram,
    fuel_used: Counter,
    input_bytes_read: Counter,
    artifact_bytes_written: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Creates every labelled series of `family` at 0, so a scrape shows them all from the start.
fn init<L: Clone + std::hash::Hash + Eq, T: Copy>(
    family: &Family<L, Counter>,
    values: &[T],
    label: impl Fn(T) -> L,
) {
    for &v in values {
        let _ = family.get_or_create(&label(v));
    }
}

impl Metrics {
    /// Every family registered, every labelled series at 0.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let seconds = || Histogram::new(exponential_buckets(0.001, 4.0, 9)); // 1 ms .. 65 s
        let m = Metrics {
            jobs_ended: Family::default(),
            messages_settled: Family::default(),
            jobs_running: Gauge::default(),
            jobs_committing: Gauge::default(),
            slots: Gauge::default(),
            pulls: Family::default(),
            lane_messages_pulled: Family::default(),
            lease_extensions: Family::default(),
            lease_extension_lateness: seconds(),
            checkpoint_writes: Family::default(),
            checkpoint_write_bytes: Counter::default(),
            checkpoint_write_seconds: seconds(),
            store_errors: Family::default(),
            queue_errors: Family::default(),
            module_cache: Family::default(),
            module_compile_seconds: seconds(),
            fuel_used: Counter::default(),
            input_bytes_read: Counter::default(),
            artifact_bytes_written: Counter::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the client appends it.
        r.register(
            "taskhost_jobs_ended",
            "Job deliveries ended, by outcome (one per failure class).",
            m.jobs_ended.clone(),
        );
        r.register(
            "taskhost_messages_settled",
            "Messages settled, by action: ack, hand back (nack, maybe delayed), dead-letter.",
            m.messages_settled.clone(),
        );
        r.register(
            "taskhost_jobs_running",
            "Messages being handled now that hold a slot (jobs running).",
            m.jobs_running.clone(),
        );
        r.register(
            "taskhost_jobs_committing",
            "Jobs whose run ended, holding a commit place until their result is durable and their message settled.",
            m.jobs_committing.clone(),
        );
        r.register(
            "taskhost_slots",
            "Jobs this worker runs at most at once (WORKER_SLOTS).",
            m.slots.clone(),
        );
        r.register(
            "taskhost_pulls",
            "Pulls from the subscription, by result.",
            m.pulls.clone(),
        );
        r.register(
            "taskhost_lane_messages_pulled",
            "Messages pulled, by lane (LANES; one series per lane from its first pull).",
            m.lane_messages_pulled.clone(),
        );
        r.register(
            "taskhost_lease_extensions",
            "Lease extensions (modify ack deadline) of running jobs, by result.",
            m.lease_extensions.clone(),
        );
        r.register(
            "taskhost_lease_extension_lateness_seconds",
            "How long after its schedule (half a deadline before the lease ends) each lease extension went through.",
            m.lease_extension_lateness.clone(),
        );
        r.register(
            "taskhost_checkpoint_writes",
            "Checkpoint writes, by result.",
            m.checkpoint_writes.clone(),
        );
        r.register(
            "taskhost_checkpoint_written_bytes",
            "Bytes of checkpoint objects written.",
            m.checkpoint_write_bytes.clone(),
        );
        r.register(
            "taskhost_checkpoint_write_seconds",
            "Latency of checkpoint writes, any result.",
            m.checkpoint_write_seconds.clone(),
        );
        r.register(
            "taskhost_store_errors",
            "Object store errors, by kind (after the client's own retries).",
            m.store_errors.clone(),
        );
        r.register(
            "taskhost_queue_errors",
            "Queue errors (pull, extension, ack, nack, publish), by kind.",
            m.queue_errors.clone(),
        );
        r.register(
            "taskhost_module_cache",
            "Module lookups, by result: hit (memory or disk cache) or miss (fetched and compiled).",
            m.module_cache.clone(),
        );
        r.register(
            "taskhost_module_compile_seconds",
            "Time to fetch, verify and compile a module missing from the caches.",
            m.module_compile_seconds.clone(),
        );
        r.register(
            "taskhost_fuel_used",
            "Wasm fuel used by tasks (about one unit per instruction).",
            m.fuel_used.clone(),
        );
        r.register(
            "taskhost_input_read_bytes",
            "Bytes of input objects read by tasks.",
            m.input_bytes_read.clone(),
        );
        r.register(
            "taskhost_artifact_written_bytes",
            "Bytes of artifacts uploaded by tasks.",
            m.artifact_bytes_written.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of this process.",
            m.resident_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of this process.",
            m.open_fds.clone(),
        );
        init(&m.jobs_ended, JobOutcome::ALL, |outcome| OutcomeLabel {
            outcome,
        });
        init(&m.messages_settled, Settle::ALL, |action| ActionLabel {
            action,
        });
        init(&m.pulls, PullResult::ALL, |result| PullLabel { result });
        init(&m.lease_extensions, ExtensionResult::ALL, |result| {
            ExtensionLabel { result }
        });
        init(&m.checkpoint_writes, WriteResult::ALL, |result| {
            WriteLabel { result }
        });
        init(&m.store_errors, StoreErrorKind::ALL, |kind| {
            StoreKindLabel { kind }
        });
        init(&m.queue_errors, QueueErrorKind::ALL, |kind| {
            QueueKindLabel { kind }
        });
        init(&m.module_cache, CacheResult::ALL, |result| CacheLabel {
            result,
        });
        Metrics { registry: r, ..m }
    }

    /// The text exposition of every metric, with the process's memory and descriptors read
    /// now.
    pub fn encode(&self) -> String {
        if let Some(rss) = process::resident_bytes() {
            self.resident_memory.set(rss as i64);
        }
        if let Some(fds) = process::open_fds() {
            self.open_fds.set(fds as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// A job's delivery ended with `outcome`.
    pub fn job_ended(&self, outcome: JobOutcome) {
        self.jobs_ended
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A message was settled with `action` (counted whether the call went through or not;
    /// a failed one is also a queue error).
    pub fn settled(&self, action: Settle) {
        self.messages_settled
            .get_or_create(&ActionLabel { action })
            .inc();
    }

    /// One more (`change` 1) or one fewer (-1) message being handled holds `what`.
    pub fn holding(&self, what: Holding, change: i64) {
        match what {
            Holding::Slot => &self.jobs_running,
            Holding::CommitPlace => &self.jobs_committing,
        }
        .inc_by(change);
    }

    /// This worker's slots.
    pub fn set_slots(&self, slots: usize) {
        self.slots.set(slots as i64);
    }

    /// A pull ended with `result`.
    pub fn pulled(&self, result: PullResult) {
        self.pulls.get_or_create(&PullLabel { result }).inc();
    }

    /// A pull from the lane `lane` returned `messages` messages (0 creates the series).
    pub fn pulled_from_lane(&self, lane: &str, messages: usize) {
        self.lane_messages_pulled
            .get_or_create(&LaneLabel {
                lane: lane.to_owned(),
            })
            .inc_by(messages as u64);
    }

    /// A lease extension ended with `result`; `lateness`: how long after its schedule it went
    /// through (for `Ok` only).
    pub fn lease_extended(&self, result: ExtensionResult, lateness: Option<Duration>) {
        self.lease_extensions
            .get_or_create(&ExtensionLabel { result })
            .inc();
        if let Some(late) = lateness {
            self.lease_extension_lateness.observe(late.as_secs_f64());
        }
    }

    /// A checkpoint write of `bytes` took `took` and ended with `result`.
    pub fn checkpoint_written(&self, result: WriteResult, bytes: usize, took: Duration) {
        self.checkpoint_writes
            .get_or_create(&WriteLabel { result })
            .inc();
        if result == WriteResult::Ok {
            self.checkpoint_write_bytes.inc_by(bytes as u64);
        }
        self.checkpoint_write_seconds.observe(took.as_secs_f64());
    }

    /// A store call failed with `kind` (a failed precondition is not counted).
    pub fn store_error(&self, kind: crate::store::ErrorKind) {
        use crate::store::ErrorKind as K;
        let kind = match kind {
            K::PreconditionFailed => return,
            K::Transient => StoreErrorKind::Transient,
            K::Throttled => StoreErrorKind::Throttled,
            K::NotFound => StoreErrorKind::NotFound,
            K::AccessDenied => StoreErrorKind::AccessDenied,
            K::BadRequest => StoreErrorKind::BadRequest,
            K::TooLarge => StoreErrorKind::TooLarge,
        };
        self.store_errors
            .get_or_create(&StoreKindLabel { kind })
            .inc();
    }

    /// A queue call failed with `kind`.
    pub fn queue_error(&self, kind: crate::queue::ErrorKind) {
        use crate::queue::ErrorKind as K;
        let kind = match kind {
            K::Transient => QueueErrorKind::Transient,
            K::NotFound => QueueErrorKind::NotFound,
            K::Permanent => QueueErrorKind::Permanent,
        };
        self.queue_errors
            .get_or_create(&QueueKindLabel { kind })
            .inc();
    }

    /// A module was found in a cache.
    pub fn module_cache_hit(&self) {
        let result = CacheResult::Hit;
        self.module_cache
            .get_or_create(&CacheLabel { result })
            .inc();
    }

    /// A module was fetched and compiled, in `took`.
    pub fn module_compiled(&self, took: Duration) {
        let result = CacheResult::Miss;
        self.module_cache
            .get_or_create(&CacheLabel { result })
            .inc();
        self.module_compile_seconds.observe(took.as_secs_f64());
    }

    /// What one run of a job used (checkpoint bytes are counted per write instead).
    pub fn job_usage(&self, usage: &JobUsage) {
        self.fuel_used.inc_by(usage.fuel);
        self.input_bytes_read.inc_by(usage.input_bytes_read);
        self.artifact_bytes_written
            .inc_by(usage.artifact_bytes_written);
    }
}

/// What a message being handled holds (the gauges `taskhost_jobs_running` and
/// `taskhost_jobs_committing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// A slot: the job runs.
    Slot,
    /// A commit place: its run ended, its result is being made durable and its message settled.
    CommitPlace,
}

/// The process's own numbers, from `/proc` (Linux; `None` elsewhere).
mod process {
    pub fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size())
    }

    pub fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }

    #[allow(unsafe_code)]
    fn page_size() -> u64 {
        // SAFETY: sysconf only reads a configuration value.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size > 0 { size as u64 } else { 4096 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_from_the_start_with_prometheus_names() {
        let m = Metrics::new();
        m.job_ended(JobOutcome::Done);
        m.job_ended(JobOutcome::Done);
        m.store_error(crate::store::ErrorKind::PreconditionFailed);
        m.store_error(crate::store::ErrorKind::Throttled);
        m.checkpoint_written(WriteResult::Ok, 100, Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("taskhost_jobs_ended_total{outcome=\"done\"} 2"),
            "{text}"
        );
        for o in JobOutcome::ALL {
            let line = format!("taskhost_jobs_ended_total{{outcome=\"{}\"}}", o.as_str());
            assert!(text.contains(&line), "{line} missing");
        }
        assert!(text.contains("taskhost_store_errors_total{kind=\"throttled\"} 1"));
        assert!(!text.contains("precondition"));
        assert!(text.contains("taskhost_checkpoint_written_bytes_total 100"));
        assert!(text.contains("taskhost_checkpoint_write_seconds_count 1"));
        assert!(text.contains("process_resident_memory_bytes "));
        // Every metric name has the prefix and the unit conventions.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                name.starts_with("taskhost_") || name.starts_with("process_"),
                "{name}"
            );
        }
    }
}
