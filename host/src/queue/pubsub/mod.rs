//! Google Cloud Pub/Sub: the production queue backend.
//!
//! - `mod.rs`: connecting (the endpoint; the emulator with anonymous credentials) and
//!   [`PubsubError`];
//! - `credentials.rs`: a service-account key, an `external_account` configuration (workload
//!   identity federation: no key), or Application Default Credentials;
//! - `admin.rs`: idempotent `ensure_*` for topics, subscriptions and the guide's Avro schema,
//!   on the official `google-cloud-pubsub` crate;
//! - `publish.rs`: batched publishing, on the official crate;
//! - `receive.rs`: unary `Pull`, `ModifyAckDeadline` and `Acknowledge` (the crate keeps them
//!   private in 1.7; see `crate::queue` for why the worker needs them), over
//! - `grpc.rs`: those three gRPC calls on a tonic channel, with the crate's credentials;
//! - `acks.rs`: acks grouped per subscription, one `Acknowledge` call for all that arrived
//!   while the last one was in flight.
//!
//! **Invariant:** only this module knows Pub/Sub's wire formats, resource names and the
//! official crate. **API boundary:** callers see ids (`"jobs"`, not
//! `"projects/p/topics/jobs"`; a full `projects/...` name is accepted too) and the types of
//! `crate::queue`.
//!
//! # The emulator
//! The crate does not read `PUBSUB_EMULATOR_HOST`; [`PubsubConfig::emulator_host`] maps it to an
//! `http://host:port` endpoint with anonymous credentials. Checked against the official
//! emulator (`tests/all/queue_contract.rs`, `tests/all/pubsub_emulator.rs`): topics,
//! subscriptions, dead-letter policy, delivery attempts, schemas, `ValidateMessage`, unary pull
//! (which honours `maxMessages`), deadlines and nacks work. Its gaps: it accepts ack deadlines
//! outside 10..=600 s (so tests may use short ones), ignores retry-policy backoff, keeps state in
//! memory; `GetSchema` never answers (an existing schema is recognized with `ValidateMessage`).

mod acks;
mod admin;
pub mod credentials;
mod grpc;
mod publish;
mod receive;

pub use admin::{MessageValidity, SchemaOnTopic, SubscriptionFacts, TopicSchema};
pub use credentials::load_credentials;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_auth::credentials::{self as gcp_credentials, Credentials};
use google_cloud_gax::client_builder::ClientBuilder;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{BasePublisher, SchemaService, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::retry_policy::RetryableErrors;

/// Smallest ack deadline Pub/Sub accepts: 10 s (the emulator accepts less).
pub const MIN_ACK_DEADLINE_SECS: u32 = 10;
/// Default time limit of one admin or publish call, retries included: 60 s.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// The guide's Avro schema for the job message (`{job_id, steps}`), used with JSON encoding.
pub const JOB_SCHEMA_AVRO: &str = r#"{"type":"record","name":"Job","fields":[{"name":"job_id","type":"string"},{"name":"steps","type":"int"}]}"#;

/// A job message the guide's schema accepts, and one it refuses (`steps` is not an int): how
/// [`Pubsub::ensure_schema_on_topic`] recognizes an existing schema.
const JOB_SAMPLE_VALID: &str = r#"{"job_id":"sample-1","steps":1}"#;
const JOB_SAMPLE_INVALID: &str = r#"{"job_id":"sample-1","steps":"one"}"#;

const PRODUCTION_ENDPOINT: &str = "https://pubsub.googleapis.com";

/// Where and how to reach Pub/Sub.
#[derive(Clone, Debug)]
pub struct PubsubConfig {
    /// `PROJECT_ID`.
    pub project_id: String,
    /// `PUBSUB_EMULATOR_HOST` (`host:port`). When set, the emulator is used at
    /// `http://host:port` with anonymous credentials, and `credentials_file` is ignored.
    pub emulator_host: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a service-account key (or authorized-user) JSON
    /// file, or an `external_account` configuration (workload identity federation,
    /// [`credentials`]). `None`: Application Default Credentials (the well-known gcloud file, then the metadata
    /// server).
    pub credentials_file: Option<PathBuf>,
    /// Time limit of one admin or publish call, retries of transient errors included
    /// ([`DEFAULT_RPC_TIMEOUT`]). Receive calls have their own, shorter limits (`receive.rs`).
    pub rpc_timeout: Duration,
}

impl PubsubConfig {
    /// A configuration for `project_id` on production Pub/Sub with Application Default
    /// Credentials and [`DEFAULT_RPC_TIMEOUT`].
    pub fn new(project_id: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            emulator_host: None,
            credentials_file: None,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }
}
/// A connection to Pub/Sub (or the emulator): the admin clients, a publisher and a gRPC
/// client for receiving, sharing one set of credentials. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pubsub {
    project_id: String,
    endpoint: String,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    schemas: SchemaService,
    publisher: BasePublisher,
    grpc: Arc<grpc::Grpc>,
    emulator: bool,
    /// The ack deadline of subscriptions looked up with `lookup_subscription`: a pull from
    /// one whose deadline is the one wanted needs no extension right after it.
    known_deadlines: Arc<Mutex<HashMap<String, u64>>>,
    /// Acks waiting for their subscription's next `Acknowledge` call.
    acks: Arc<acks::AckGroups>,
}

impl Pubsub {
    /// Builds the clients. Connections are opened lazily: this does not contact the server, so
    /// an unreachable server shows up at the first call (bounded by `rpc_timeout`).
    ///
    /// Errors: an empty project id, a malformed emulator host, or a credentials file that cannot
    /// be read or is not a service-account / authorized-user key (the error names the file,
    /// never its content).
    pub async fn connect(config: &PubsubConfig) -> Result<Self, PubsubError> {
        if config.project_id.is_empty() {
            return Err(PubsubError::new(
                "connect",
                "",
                "PROJECT_ID is empty".to_string(),
            ));
        }
        let (endpoint, credentials) = match &config.emulator_host {
            Some(host) => (
                Some(emulator_endpoint(host)?),
                gcp_credentials::anonymous::Builder::new().build(),
            ),
            None => (None, load_credentials(config.credentials_file.as_deref())?),
        };
        let shown_endpoint = endpoint
            .clone()
            .unwrap_or_else(|| PRODUCTION_ENDPOINT.to_string());
        let build_error = |client: &'static str| {
            let endpoint = shown_endpoint.clone();
            move |e: google_cloud_gax::client_builder::Error| {
                PubsubError::new("build client", endpoint, format!("{client}: {e}")).with_source(e)
            }
        };

        let admin = AdminSettings {
            endpoint: endpoint.clone(),
            credentials: credentials.clone(),
            rpc_timeout: config.rpc_timeout,
        };
        let topics = admin
            .apply(TopicAdmin::builder())
            .build()
            .await
            .map_err(build_error("topic admin"))?;
        let subscriptions = admin
            .apply(SubscriptionAdmin::builder())
            .build()
            .await
            .map_err(build_error("subscription admin"))?;
        let schemas = admin
            .apply(SchemaService::builder())
            .build()
            .await
            .map_err(build_error("schema service"))?;

        // The publisher retries what the service documents as retryable, for `rpc_timeout`
        // (the crate's default is 10 minutes).
        let mut publisher = BasePublisher::builder()
            .with_credentials(credentials.clone())
            .with_retry_policy(RetryableErrors.with_time_limit(config.rpc_timeout));
        if let Some(e) = &endpoint {
            publisher = publisher.with_endpoint(e.clone());
        }
        let publisher = publisher.build().await.map_err(build_error("publisher"))?;

        let grpc = grpc::Grpc::new(
            endpoint
                .clone()
                .unwrap_or_else(|| PRODUCTION_ENDPOINT.to_string()),
            credentials.clone(),
        )
        .map_err(|e| PubsubError::new("build client", shown_endpoint.clone(), e))?;

        let grpc = Arc::new(grpc);
        Ok(Self {
            project_id: config.project_id.clone(),
            endpoint: shown_endpoint,
            topics,
            subscriptions,
            schemas,
            publisher,
            grpc,
            emulator: config.emulator_host.is_some(),
            known_deadlines: Arc::default(),
            acks: Arc::default(),
        })
    }

    /// The endpoint in use (`http://host:port` for the emulator).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `projects/<project>/topics/<id>`, or `id` itself if it is already a full name.
    pub fn topic_path(&self, topic_id: &str) -> String {
        self.path("topics", topic_id)
    }

    /// `projects/<project>/subscriptions/<id>`, or `id` itself if it is already a full name.
    pub fn subscription_path(&self, sub_id: &str) -> String {
        self.path("subscriptions", sub_id)
    }

    /// `projects/<project>/schemas/<id>`, or `id` itself if it is already a full name.
    pub fn schema_path(&self, schema_id: &str) -> String {
        self.path("schemas", schema_id)
    }

    fn path(&self, kind: &str, id: &str) -> String {
        if id.starts_with("projects/") {
            id.to_string()
        } else {
            format!("projects/{}/{kind}/{id}", self.project_id)
        }
    }

    fn rpc_error(
        &self,
        operation: &'static str,
        resource: &str,
        error: google_cloud_pubsub::Error,
    ) -> PubsubError {
        let described = self.describe_rpc_error(operation, resource, &error);
        if error.is_authentication() {
            // The auth library's errors may quote what a token endpoint answered: only the
            // redacted text goes on (`describe_rpc_error` put it in the detail).
            described
        } else {
            described.with_source(error)
        }
    }

    /// The error's summary; the caller attaches the source.
    fn describe_rpc_error(
        &self,
        operation: &'static str,
        resource: &str,
        error: &google_cloud_pubsub::Error,
    ) -> PubsubError {
        let (detail, transient) = match error.status() {
            Some(s) if s.code == Code::Unimplemented => (
                format!(
                    "not supported by the server at {} (UNIMPLEMENTED: {})",
                    self.endpoint, s.message
                ),
                false,
            ),
            Some(s) => (
                format!("{}: {}", s.code.name(), s.message),
                matches!(
                    s.code,
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Internal
                ),
            ),
            None if error.is_authentication() => (credentials::describe_error(error), true),
            None => (
                format!(
                    "no answer from {} (is the server running and reachable?)",
                    self.endpoint
                ),
                true,
            ),
        };
        let mut err = PubsubError::new(operation, resource, detail);
        err.code = error.status().map(|s| s.code);
        err.transient = transient;
        err
    }
}
/// The settings shared by the three admin clients.
struct AdminSettings {
    endpoint: Option<String>,
    credentials: Credentials,
    rpc_timeout: Duration,
}

impl AdminSettings {
    /// Endpoint, credentials, and a retry policy bounded by `rpc_timeout`: idempotent calls
    /// retry `UNAVAILABLE`, and any call retries errors that happened before it was sent
    /// (connection refused), with exponential backoff, until the time limit.
    fn apply<F>(&self, builder: ClientBuilder<F, Credentials>) -> ClientBuilder<F, Credentials> {
        let builder = builder
            .with_credentials(self.credentials.clone())
            .with_retry_policy(Aip194Strict.with_time_limit(self.rpc_timeout))
            .with_attempt_timeout(self.rpc_timeout);
        match &self.endpoint {
            Some(e) => builder.with_endpoint(e.clone()),
            None => builder,
        }
    }
}

/// `host:port` (as in `PUBSUB_EMULATOR_HOST`) to `http://host:port`; an explicit `http://` or
/// `https://` prefix is kept.
fn emulator_endpoint(host: &str) -> Result<String, PubsubError> {
    let host = host.trim();
    if host.starts_with("http://") || host.starts_with("https://") {
        return Ok(host.trim_end_matches('/').to_string());
    }
    let valid = host
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(PubsubError::new(
            "connect",
            host,
            "PUBSUB_EMULATOR_HOST must be host:port, for example 127.0.0.1:8085".to_string(),
        ));
    }
    Ok(format!("http://{host}"))
}

fn code(error: &google_cloud_pubsub::Error) -> Option<Code> {
    error.status().map(|s| s.code)
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed Pub/Sub operation: which operation, on which resource, and why.
///
/// `Display` is one line: `Pub/Sub <operation> <resource>: <detail>`; the underlying client
/// error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct PubsubError {
    operation: &'static str,
    resource: String,
    detail: String,
    code: Option<Code>,
    transient: bool,
    published: Option<usize>,
    source: Option<BoxError>,
}

impl PubsubError {
    fn new(operation: &'static str, resource: impl Into<String>, detail: String) -> Self {
        Self {
            operation,
            resource: resource.into(),
            detail,
            code: None,
            transient: false,
            published: None,
            source: None,
        }
    }

    /// A transient error (worth retrying) that no server answered.
    fn transient(operation: &'static str, resource: impl Into<String>, detail: String) -> Self {
        Self {
            transient: true,
            ..Self::new(operation, resource, detail)
        }
    }

    /// The same error for another caller: its source's text moves into the detail.
    fn copy(&self) -> Self {
        let detail = match &self.source {
            Some(source) => format!("{}: {source}", self.detail),
            None => self.detail.clone(),
        };
        Self {
            detail,
            resource: self.resource.clone(),
            source: None,
            ..*self
        }
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The operation that failed (`create topic`, `publish`, `pull`...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The resource's full name (or the endpoint / file for connection and credential errors).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The gRPC status code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The resource (or one it refers to, like the topic of a new subscription) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code == Some(Code::NotFound)
    }

    /// The server does not implement the call (the emulator lacks some features).
    pub fn is_unimplemented(&self) -> bool {
        self.code == Some(Code::Unimplemented)
    }

    /// Worth retrying later with backoff: unreachable or overloaded server, timeout, transient
    /// credential failure.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// For [`Pubsub::publish`]: how many of the messages were published before the error.
    pub fn published(&self) -> Option<usize> {
        self.published
    }
}

impl fmt::Display for PubsubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource.is_empty() {
            write!(f, "Pub/Sub {}: {}", self.operation, self.detail)
        } else {
            write!(
                f,
                "Pub/Sub {} `{}`: {}",
                self.operation, self.resource, self.detail
            )
        }
    }
}

impl std::error::Error for PubsubError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_host_becomes_http_endpoint() {
        for (host, want) in [
            ("127.0.0.1:8085", Some("http://127.0.0.1:8085")),
            ("localhost:8681", Some("http://localhost:8681")),
            ("http://10.0.0.1:8085/", Some("http://10.0.0.1:8085")),
            ("127.0.0.1", None),
            (":8085", None),
            ("host:port", None),
        ] {
            assert_eq!(emulator_endpoint(host).ok().as_deref(), want, "{host}");
        }
    }
}
