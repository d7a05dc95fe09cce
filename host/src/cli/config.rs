//! Settings shared by several commands, from flags or the guide's environment names
//! (`worker.env`, `submitter.env`).

use std::path::PathBuf;

use clap::Args;

use taskhost::queue::lanes::{Lane, LaneError, LaneName, Lanes};
use taskhost::queue::pubsub::PubsubConfig;
use taskhost::queue::{
    DEFAULT_ACK_DEADLINE_SECS, DEFAULT_MAX_DELIVERY_ATTEMPTS, Ensured, LocalQueue, Pubsub, Queue,
    SubscriptionSettings,
};
use taskhost::runtime::sandbox::{self, LimitError};
use taskhost::runtime::{DEFAULT_MEMORY_LIMIT, DEFAULT_TASK_TIMEOUT, JobLimits, RuntimeConfig};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::s3::{S3Config, S3Store};

/// A secret setting (a secret key, an API key): its `Debug` shows `<redacted>`, so no debug
/// print of the settings that hold it (a `{:?}` of the parsed command line) shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where objects live: R2 (any S3 server) when `R2_BUCKET_NAME` is set, else a directory.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// R2/S3 bucket; when unset, the directory `--store-dir` is the store.
    #[arg(long, env = "R2_BUCKET_NAME")]
    pub bucket: Option<String>,
    /// R2/S3 endpoint, e.g. <https://ACCOUNT_ID.r2.cloudflarestorage.com>.
    #[arg(long, env = "R2_S3_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// R2 access key id.
    #[arg(long, env = "R2_AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
    /// R2 secret access key (prefer the environment: flags show up in `ps`).
    #[arg(long, env = "R2_AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<Secret>,
    /// Optional key prefix inside the bucket (several deployments in one bucket).
    #[arg(long, env = "R2_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    #[command(flatten)]
    pub dir: StoreDirArgs,
}

/// The directory store (used by `run`, and by every command when no bucket is configured).
#[derive(Args, Debug, Clone)]
pub struct StoreDirArgs {
    /// The directory used as the object store (checkpoints, results, modules) when no
    /// bucket is configured.
    #[arg(
        long = "store-dir",
        visible_alias = "store",
        env = "STORE_DIR",
        value_name = "DIR",
        default_value = ".taskhost/store"
    )]
    pub store_dir: PathBuf,
}

impl StoreArgs {
    pub fn open(&self) -> anyhow::Result<AnyStore> {
        let Some(bucket) = &self.bucket else {
            return Ok(AnyStore::Dir(DirStore::open(&self.dir.store_dir)?));
        };
        let need = |v: &Option<String>, name: &str| {
            v.clone()
                .ok_or_else(|| anyhow::anyhow!("R2_BUCKET_NAME is set but {name} is not"))
        };
        Ok(AnyStore::S3(S3Store::new(S3Config {
            endpoint_url: need(&self.endpoint_url, "R2_S3_ENDPOINT_URL")?,
            bucket: bucket.clone(),
            access_key_id: need(&self.access_key_id, "R2_AWS_ACCESS_KEY_ID")?,
            secret_access_key: need(
                &self
                    .secret_access_key
                    .as_ref()
                    .map(|s| s.expose().to_owned()),
                "R2_AWS_SECRET_ACCESS_KEY",
            )?,
            prefix: self.key_prefix.clone(),
        })?))
    }
}

/// The queue: Google Cloud Pub/Sub when `PROJECT_ID` is set, else the embedded queue file.
#[derive(Args, Debug, Clone)]
pub struct PubsubArgs {
    /// Google Cloud project id; when unset, the embedded queue (`--queue-file`) is used.
    #[arg(long, env = "PROJECT_ID")]
    pub project_id: Option<String>,
    /// The embedded queue (SQLite; several processes on one machine may share it), used when
    /// no PROJECT_ID is set.
    #[arg(long, env = "QUEUE_FILE", default_value = ".taskhost/queue.sqlite")]
    pub queue_file: PathBuf,
    /// host:port of the Pub/Sub emulator (plain HTTP, no credentials).
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
    /// Google credentials: a service-account key file, or an `external_account` configuration
    /// (workload identity federation: no key; docs/saladcloud.md); default: application
    /// default credentials.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

impl PubsubArgs {
    /// Connects to Pub/Sub, or opens the embedded queue when no project is configured.
    pub async fn connect(&self) -> anyhow::Result<Queue> {
        let Some(project) = self.project_id.clone().filter(|p| !p.is_empty()) else {
            let q = LocalQueue::open(&self.queue_file).await.map_err(|e| {
                anyhow::anyhow!("cannot open the queue {}: {e}", self.queue_file.display())
            })?;
            return Ok(Queue::Local(q));
        };
        let mut cfg = PubsubConfig::new(project);
        cfg.emulator_host = self.emulator_host.clone().filter(|h| !h.is_empty());
        cfg.credentials_file = self.credentials.clone();
        Ok(Queue::PubSub(Pubsub::connect(&cfg).await?))
    }
}

/// The jobs topic and its dead-letter topic.
#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    /// The jobs topic.
    #[arg(long, env = "TOPIC_ID", default_value = "jobs")]
    pub topic_id: String,
    /// The dead-letter topic; default: "<TOPIC_ID>-dead-letter".
    #[arg(long, env = "DEAD_LETTER_TOPIC_ID")]
    pub dead_letter_topic_id: Option<String>,
}

impl TopicArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic_id
            .clone()
            .unwrap_or_else(|| format!("{}-dead-letter", self.topic_id))
    }
}

/// The pull subscription.
#[derive(Args, Debug, Clone)]
pub struct SubscriptionArgs {
    /// The jobs subscription.
    #[arg(long, env = "SUBSCRIPTION_ID", default_value = "jobs-sub")]
    pub subscription_id: String,
    /// Lease length in seconds (Pub/Sub: 10..=600; the embedded queue and the emulator:
    /// 1..=600; a worker given another waits, not ready, as for any misconfiguration). The worker extends each lease every half of it for as long as a job runs;
    /// a dead worker's jobs come back at most this long after its last extension.
    #[arg(long, env = "ACK_DEADLINE_SECONDS", default_value_t = DEFAULT_ACK_DEADLINE_SECS)]
    pub ack_deadline_seconds: u32,
    /// Priority lanes, highest first, comma-separated (e.g. `urgent,default`; at most 8).
    /// The lane `default` is TOPIC_ID / SUBSCRIPTION_ID; a lane NAME is the topic
    /// `<TOPIC_ID>-NAME` and the subscription `<SUBSCRIPTION_ID>-NAME`. `setup` creates them
    /// (and `default`); a worker takes work from the first lane that has any. Unset: the one
    /// lane `default`.
    #[arg(long, env = "LANES", value_name = "NAME,...", value_delimiter = ',', value_parser = parse_lane)]
    pub lanes: Vec<LaneName>,
}

/// One name of `LANES` or `--lane` (spaces around it ignored).
pub fn parse_lane(s: &str) -> Result<LaneName, LaneError> {
    s.trim().parse()
}

impl SubscriptionArgs {
    /// The lanes a worker reads, in order: `LANES`, else the one lane `default`.
    pub fn lanes(&self, topics: &TopicArgs) -> anyhow::Result<Lanes> {
        let (topic, sub) = (&topics.topic_id, &self.subscription_id);
        if self.lanes.is_empty() {
            return Ok(Lanes::one(topic, sub));
        }
        Lanes::new(&self.lanes, topic, sub).map_err(|e| anyhow::anyhow!("LANES (--lanes): {e}"))
    }

    /// The dead-letter topic's own subscription (read by `status` and by operators).
    pub fn dead_letter_subscription(topic: &TopicArgs) -> String {
        format!("{}-sub", topic.dead_letter_topic())
    }
}

/// Creates (idempotently) the topics and subscriptions of `topics`/`sub`, each lane's (the
/// lane `default` always, then those of `LANES`) with the same dead-letter policy: what
/// `taskhost setup` does, and what the embedded queue does by itself so that it needs no
/// setup step. Returns each resource's name and what happened to it.
pub async fn ensure_queue(
    queue: &Queue,
    topics: &TopicArgs,
    sub: &SubscriptionArgs,
) -> anyhow::Result<Vec<(&'static str, String, Ensured)>> {
    let mut said = Vec::new();
    let topic = &topics.topic_id;
    let dlt = topics.dead_letter_topic();
    let mut lanes = vec![Lane::named(
        &LaneName::default_lane(),
        topic,
        &sub.subscription_id,
    )];
    lanes.extend(
        sub.lanes(topics)?
            .iter()
            .filter(|l| !l.name.is_default())
            .cloned(),
    );
    said.push(("topic", topic.clone(), queue.ensure_topic(topic).await?));
    said.push(("topic", dlt.clone(), queue.ensure_topic(&dlt).await?));
    let settings = SubscriptionSettings {
        ack_deadline_secs: sub.ack_deadline_seconds,
        dead_letter_topic_id: Some(dlt.clone()),
        max_delivery_attempts: DEFAULT_MAX_DELIVERY_ATTEMPTS,
        ..SubscriptionSettings::default()
    };
    for lane in &lanes {
        if !lane.name.is_default() {
            let t = &lane.topic;
            said.push(("topic", t.clone(), queue.ensure_topic(t).await?));
        }
        said.push((
            "subscription",
            lane.subscription.clone(),
            queue
                .ensure_subscription(&lane.subscription, &lane.topic, &settings)
                .await?,
        ));
    }
    let dls = SubscriptionArgs::dead_letter_subscription(topics);
    said.push((
        "subscription",
        dls.clone(),
        queue
            .ensure_subscription(&dls, &dlt, &SubscriptionSettings::default())
            .await?,
    ));
    Ok(said)
}

/// The setting (`NAME=value (--flag)`) named in a [`LimitError`]'s message.
fn named(setting: String) -> impl Fn(LimitError) -> anyhow::Error {
    move |e| anyhow::anyhow!("{setting}: {e}")
}

/// The limits of one run of a task (a worker's every run, or `taskhost run`).
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Memory limit per task in MiB (all its linear memories together), 1..=4096.
    #[arg(long, env = "TASK_MEMORY_MB", default_value_t = (DEFAULT_MEMORY_LIMIT >> 20) as u64)]
    pub memory_mb: u64,
    /// Fuel budget per run (a CPU cap; about one unit per wasm instruction); unlimited if unset.
    #[arg(long, env = "TASK_FUEL")]
    pub fuel: Option<u64>,
    /// Wall-clock limit per run in seconds (default 24 h; 0: none). Time the task's input and
    /// artifact calls wait on the store is not counted, up to as long again (a run ends
    /// within twice the limit). A run that hits it counts as a failure; the job resumes from
    /// its checkpoint on the next run.
    #[arg(long, env = "TASK_TIMEOUT_SECONDS", default_value_t = DEFAULT_TASK_TIMEOUT.as_secs_f64())]
    pub timeout_secs: f64,
}

impl LimitArgs {
    /// The limits, checked by [`JobLimits::new`] (a memory limit of 1..=4096 MiB) and
    /// [`sandbox::timeout_from_secs`] (a finite number of seconds, 0: none).
    pub fn job_limits(&self) -> anyhow::Result<JobLimits> {
        let timeout = sandbox::timeout_from_secs(self.timeout_secs).map_err(named(format!(
            "TASK_TIMEOUT_SECONDS={} (--timeout-secs)",
            self.timeout_secs
        )))?;
        let memory_bytes =
            usize::try_from(self.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        JobLimits::new(memory_bytes, self.fuel, timeout).map_err(named(format!(
            "TASK_MEMORY_MB={} (--memory-mb)",
            self.memory_mb
        )))
    }
}

/// The compiled-module cache on this machine's disk.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Where compiled modules are cached; a worker also records there (`workers/`) the jobs
    /// it holds, so keep it on the node's disk across restarts. Default:
    /// `$XDG_CACHE_HOME/taskhost`, else `$HOME/.cache/taskhost`; no disk cache when neither
    /// is set.
    #[arg(long = "cache-dir", env = "TASKHOST_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the compiled-module cache, in MiB (default 2048): the least recently
    /// used modules are removed to stay within it, never one a running job uses (a module
    /// that cannot fit is kept in memory only). Keep it well under the disk the machine
    /// gives the container. 0: unbounded.
    #[arg(long = "cache-max-mb", env = "CACHE_MAX_MB", value_name = "MIB", default_value_t = taskhost::runtime::DEFAULT_CACHE_MAX_BYTES >> 20)]
    pub cache_max_mb: u64,
}

impl CacheArgs {
    /// `--cache-dir`, else the user's cache directory (`$XDG_CACHE_HOME`, else
    /// `$HOME/.cache`) + `taskhost`, else none.
    pub fn dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.cache_dir {
            return Some(d.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("taskhost"))
    }

    /// The runtime's settings with this cache and the library's defaults otherwise.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: self.dir(),
            cache_max_bytes: (self.cache_max_mb > 0)
                .then(|| self.cache_max_mb.saturating_mul(1 << 20)),
            ..RuntimeConfig::default()
        }
    }
}

/// Limits of a job's input reads and artifacts.
#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    /// Input bytes one run of a job may read (fetched from the store for its reads), in MiB
    /// (default 100 GiB); past it the task's read fails with `limit-reached`.
    #[arg(long = "input-read-mb", env = "TASK_INPUT_READ_MB", default_value_t = taskhost::files::DEFAULT_INPUT_READ_BYTES >> 20)]
    pub input_read_mb: u64,
    /// Largest artifact, in MiB (default 10 GiB; at most 80,000 MiB, 10,000 parts of 8 MiB);
    /// a write past it fails with `too-large`.
    #[arg(long = "artifact-mb", env = "TASK_ARTIFACT_MB", default_value_t = taskhost::files::DEFAULT_ARTIFACT_BYTES >> 20)]
    pub artifact_mb: u64,
    /// A job's artifacts together, in MiB (default 20 GiB); a write past it fails with
    /// `job-limit`.
    #[arg(long = "artifacts-total-mb", env = "TASK_ARTIFACTS_TOTAL_MB", default_value_t = taskhost::files::DEFAULT_ARTIFACTS_TOTAL_BYTES >> 20)]
    pub artifacts_total_mb: u64,
    /// Most artifacts of one job.
    #[arg(long = "max-artifacts", env = "TASK_MAX_ARTIFACTS", default_value_t = taskhost::files::DEFAULT_MAX_ARTIFACTS)]
    pub max_artifacts: u32,
}

/// [`FileArgs`], checked by [`FileLimits::check`](taskhost::files::FileLimits::check).
pub fn file_limits(args: &FileArgs) -> anyhow::Result<taskhost::files::FileLimits> {
    let limits = taskhost::files::FileLimits {
        input_read_bytes: args.input_read_mb.saturating_mul(1 << 20),
        artifact_bytes: args.artifact_mb.saturating_mul(1 << 20),
        artifacts_total_bytes: args.artifacts_total_mb.saturating_mul(1 << 20),
        max_artifacts: args.max_artifacts,
    };
    limits.check().map_err(|e| {
        let setting = match e {
            LimitError::ArtifactsTotal => format!(
                "TASK_ARTIFACTS_TOTAL_MB={} (--artifacts-total-mb)",
                args.artifacts_total_mb
            ),
            _ => format!("TASK_ARTIFACT_MB={} (--artifact-mb)", args.artifact_mb),
        };
        named(setting)(e)
    })?;
    Ok(limits)
}

/// This host's name: `flag` (`--host-name`, `HOSTNAME`), else the contents of
/// /etc/hostname, else empty. Worker ids start with it; `module push` and `module tag`
/// record it.
pub fn host_name(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::StoreArgs;
    use crate::cli::autoscale::AutoscaleArgs;

    #[derive(Parser, Debug)]
    struct Store {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[derive(Parser, Debug)]
    struct Autoscale {
        #[command(flatten)]
        autoscale: AutoscaleArgs,
    }

    /// A debug print of the parsed settings shows no secret (before the fix `StoreArgs`
    /// and `AutoscaleArgs` derived `Debug` over the plain keys).
    #[test]
    fn debug_output_hides_the_secrets() {
        let secret = "s3cr3t-7f2a9c";
        let store =
            Store::try_parse_from(["t", "--bucket", "b", "--secret-access-key", secret]).unwrap();
        let shown = format!("{store:?} {store:#?}");
        assert!(
            !shown.contains(secret) && shown.contains("<redacted>"),
            "{shown}"
        );
        let key = store.store.secret_access_key.as_ref().map(|s| s.expose());
        assert_eq!(key, Some(secret));

        let args = [
            "t",
            "--organization=o",
            "--project=p",
            "--container-group=g",
            "--slots-per-replica=2",
            "--max=3",
            "--api-key",
            secret,
        ];
        let autoscale = Autoscale::try_parse_from(args).unwrap();
        let shown = format!("{autoscale:?}");
        assert!(
            !shown.contains(secret) && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
